"""What the relay keeps to resume a conversation when the upstream session ends.

When the service ends a session (``session_expired`` at its maximum duration, or a connection
that drops), the relay opens a new upstream session for the same page and carries the
conversation over (see ``docs/middle-tier.md``). For that it keeps, per page connection:

* :class:`ConversationLog`: the upstream's events folded into a
  :class:`~aoai_realtime.protocol.Conversation` (text, transcripts, function calls; audio is
  counted in bytes, never kept), across upstream sessions;
* :class:`SessionTracker`: the session configuration the upstream accepted (every
  ``session.update`` the relay sent, the page's after the policy and the operator's own, merged
  once the upstream acknowledged it with ``session.updated``);
* :class:`HeldEvents`: the page's events that arrive while the new session is being set up,
  sent once it is (audio appends bounded to the last ``held_audio_ms``).

All of it is plain data; :class:`~.relay.Relay` does the I/O.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..protocol.conversation import Conversation
from ..protocol.events import parse_server_event
from ..protocol.restore import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_ITEMS,
    ResumeBudget,
    restore_events,
)

__all__ = ["ConversationLog", "HeldEvents", "ResumeOptions", "SessionTracker", "merge_session"]

_ITEM_ID_RE = re.compile(r'"item_id"\s*:\s*"([^"\\]+)"')
_CONTENT_INDEX_RE = re.compile(r'"content_index"\s*:\s*(\d+)')
_BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


@dataclass(frozen=True)
class ResumeOptions:
    """How the middle tier resumes a conversation when the upstream session ends.

    ``max_attempts`` resume attempts per page connection within ``window_s`` seconds, waiting
    ``backoff_s[n]`` before the attempt that has ``n`` others before it in the window (the last
    entry repeats). A failed handshake of a resume attempt ends the page's session, except an
    unreachable upstream or a 5xx, which count as an attempt and are tried again. ``max_items`` and
    ``max_chars`` bound the history carried over; a session with fewer than ``min_items`` items to
    carry over is not resumed (the page is told as before, one ``relay_error``). Page audio that
    arrives while the new session is set up is kept up to the last ``held_audio_ms``
    milliseconds; other page events (at most ``max_held_events``) are all kept, in order.
    ``restore_timeout_s`` bounds the wait for the new session to acknowledge the restored items.
    """

    max_attempts: int = 3
    window_s: float = 600.0
    backoff_s: tuple[float, ...] = (0.0, 1.0, 3.0)
    max_items: int = DEFAULT_MAX_ITEMS
    max_chars: int = DEFAULT_MAX_CHARS
    min_items: int = 1
    held_audio_ms: int = 2000
    max_held_events: int = 1000
    restore_timeout_s: float = 10.0

    def budget(self) -> ResumeBudget:
        return ResumeBudget(self.max_attempts, self.window_s, tuple(self.backoff_s))


# ------------------------------------------------------------------------------ the conversation


def _b64_field(text: str, key: str) -> tuple[int, int] | None:
    """Start and end of the string value of ``key`` in a JSON text, without decoding it (base64
    holds no quote or backslash)."""
    at = text.find(f'"{key}"')
    if at < 0:
        return None
    i = at + len(key) + 2
    n = len(text)
    while i < n and text[i] in " \t\r\n:":
        i += 1
    if i >= n or text[i] != '"':
        return None
    end = text.find('"', i + 1)
    return (i + 1, end) if end >= 0 else None


def _b64_len(text: str, span: tuple[int, int]) -> int:
    start, end = span
    n = end - start
    if n <= 0:
        return 0
    pad = (1 if text[end - 1] == "=" else 0) + (1 if n > 1 and text[end - 2] == "=" else 0)
    return n * 3 // 4 - pad


class ConversationLog:
    """One page connection's conversation, folded from its upstream sessions' events (GA
    vocabulary), across resumes. Bounded: only the newest ``keep_items`` items are kept."""

    def __init__(self, *, keep_items: int = 2 * DEFAULT_MAX_ITEMS + 50) -> None:
        self.conversation = Conversation()
        self.keep_items = max(1, keep_items)

    def fold(self, event: dict[str, Any]) -> None:
        """A decoded upstream event."""
        self.conversation.apply(parse_server_event(event))
        kind = event.get("type")
        if kind in ("response.done", "conversation.item.added"):
            self._prune()

    def fold_hot(self, kind: str, text: str) -> None:
        """An event of the hot path, without decoding the whole message: audio deltas are
        counted (truncation needs the milliseconds produced), transcript deltas appended."""
        if kind == "response.output_audio.delta":
            match = _ITEM_ID_RE.search(text)
            span = _b64_field(text, "delta")
            if match is None or span is None:
                return
            item = self.conversation.items.get(match.group(1))
            if item is None:
                return
            index = _CONTENT_INDEX_RE.search(text)
            part = item.part(int(index.group(1)) if index else 0, "output_audio")
            part.audio_bytes += _b64_len(text, span)
        elif kind == "response.output_audio_transcript.delta":
            event = json.loads(text)
            item = self.conversation.items.get(event.get("item_id") or "")
            if item is None or item.truncated_at_ms is not None:
                return
            part = item.part(int(event.get("content_index") or 0), "output_audio")
            part.transcript += event.get("delta") or ""

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> bool:
        """Apply a truncation locally (an item of an earlier session, which the upstream no longer
        holds as audio); True if the item is known."""
        if item_id not in self.conversation.items:
            return False
        self.conversation.apply(
            parse_server_event(
                {
                    "type": "conversation.item.truncated",
                    "item_id": item_id,
                    "content_index": content_index,
                    "audio_end_ms": audio_end_ms,
                }
            )
        )
        return True

    def end_responses(self) -> dict[str, list[dict[str, Any]]]:
        """Mark the responses still in progress as cancelled (their session ended); returns their
        ids with their output items as far as they went (ids, roles, calls; ``incomplete``)."""
        ended: dict[str, list[dict[str, Any]]] = {}
        for rid, response in self.conversation.responses.items():
            if response.status != "in_progress":
                continue
            response.status = "cancelled"
            response.status_details = {"type": "cancelled", "reason": "session_ended"}
            output: list[dict[str, Any]] = []
            for item_id in response.item_ids:
                state = self.conversation.items.get(item_id)
                if state is None:
                    continue
                item: dict[str, Any] = {
                    "id": state.id,
                    "object": "realtime.item",
                    "type": state.type,
                    "status": "incomplete",
                }
                if state.type == "message":
                    item.update(role=state.role or "assistant", content=[])
                elif state.type == "function_call":
                    item.update(
                        call_id=state.call_id, name=state.name or "", arguments=state.arguments
                    )
                output.append(item)
            ended[rid] = output
        self.conversation.active_response_id = None
        self.conversation.speaking = False
        return ended

    def restore_events(self, *, max_items: int, max_chars: int) -> list[dict[str, Any]]:
        return restore_events(self.conversation, max_items=max_items, max_chars=max_chars)

    @property
    def input_bytes_per_ms(self) -> int:
        fmt = ((self.conversation.session.get("audio") or {}).get("input") or {}).get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        return _BYTES_PER_MS.get(kind or "audio/pcm", 48)

    def _prune(self) -> None:
        conv = self.conversation
        excess = len(conv.order) - self.keep_items
        if excess > 0:
            for item_id in conv.order[:excess]:
                conv.items.pop(item_id, None)
            del conv.order[:excess]
        if len(conv.responses) > 64:
            for rid in [r for r, s in conv.responses.items() if s.done][: len(conv.responses) - 64]:
                del conv.responses[rid]
        if len(conv.errors) > 64:
            del conv.errors[:-64]


# ------------------------------------------------------------------------------ the session


def merge_session(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` applied to ``base`` as the service applies a ``session.update``: top-level
    fields replace, ``audio.input`` / ``audio.output`` fields replace one by one (a new
    ``turn_detection`` replaces the old one whole)."""
    out = dict(base)
    for key, value in update.items():
        if key == "audio" and isinstance(value, dict) and isinstance(out.get("audio"), dict):
            audio = dict(out["audio"])
            for side, fields in value.items():
                if isinstance(fields, dict) and isinstance(audio.get(side), dict):
                    audio[side] = {**audio[side], **fields}
                else:
                    audio[side] = fields
            out["audio"] = audio
        else:
            out[key] = value
    return out


@dataclass
class _PendingUpdate:
    event_id: str
    session: dict[str, Any]
    held: bool = False


@dataclass
class SessionTracker:
    """The session as the upstream accepted it.

    Every ``session.update`` the relay sends (GA vocabulary, after the policy) is noted with
    :meth:`sent`; the upstream answers them in order, each with ``session.updated``
    (:meth:`answered`: merged into :attr:`confirmed`) or an ``error`` naming its ``event_id``
    (:meth:`refused`: dropped). A refused update therefore never spoils the restored session.
    """

    confirmed: dict[str, Any] = field(default_factory=dict)
    _pending: deque[_PendingUpdate] = field(default_factory=deque)

    def sent(self, event_id: str, session: dict[str, Any]) -> _PendingUpdate:
        entry = _PendingUpdate(event_id, session)
        self._pending.append(entry)
        return entry

    def answered(self) -> None:
        if self._pending:
            self.confirmed = merge_session(self.confirmed, self._pending.popleft().session)

    def refused(self, event_id: str | None) -> None:
        for entry in self._pending:
            if entry.event_id == event_id:
                self._pending.remove(entry)
                return

    def forget_unanswered(self) -> int:
        """At the end of a session: updates it received but never answered are dropped (whether
        they took effect is unknown); those still held for the next session stay. Returns how
        many were dropped."""
        before = len(self._pending)
        self._pending = deque(e for e in self._pending if e.held)
        return before - len(self._pending)

    def restore_session(self, base: dict[str, Any] | None) -> dict[str, Any]:
        """The ``session`` of the update that sets up a new session: ``base`` (the operator's
        initial update) with everything confirmed since."""
        return merge_session(base or {}, self.confirmed)


# ------------------------------------------------------------------------------ held events


class HeldEvents:
    """Page events held while the new upstream session is set up, in order.

    Audio appends are kept up to the last ``max_audio_ms`` milliseconds (older ones are dropped:
    speech from longer ago would be answered late); other events up to ``max_events``."""

    def __init__(self, *, max_audio_ms: int = 2000, max_events: int = 1000) -> None:
        self.max_audio_ms = max_audio_ms
        self.max_events = max_events
        self._items: deque[tuple[str, float]] = deque()  # (text, audio ms or 0)
        self._audio_ms = 0.0
        self.dropped_audio_ms = 0.0
        self.dropped_events = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def audio_ms(self) -> float:
        return self._audio_ms

    def add(self, text: str, *, audio: bool, bytes_per_ms: int = 48) -> None:
        if audio:
            span = _b64_field(text, "audio")
            ms = _b64_len(text, span) / bytes_per_ms if span else 0.0
            self._items.append((text, ms))
            self._audio_ms += ms
            while self._audio_ms > self.max_audio_ms:
                self._drop_oldest_audio()
            return
        if sum(1 for _, ms in self._items if not ms) >= self.max_events:
            self.dropped_events += 1
            return
        self._items.append((text, 0.0))

    def _drop_oldest_audio(self) -> None:
        for i, (_, ms) in enumerate(self._items):
            if ms:
                del self._items[i]
                self._audio_ms -= ms
                self.dropped_audio_ms += ms
                return
        self._audio_ms = 0.0  # pragma: no cover - bookkeeping safety

    def take(self) -> list[str]:
        texts = [text for text, _ in self._items]
        self._items.clear()
        self._audio_ms = 0.0
        return texts

    def put_back(self, texts: list[str]) -> None:
        """Texts taken but not sent (the new session ended too): first in line again."""
        for text in reversed(texts):
            self._items.appendleft((text, 0.0))
