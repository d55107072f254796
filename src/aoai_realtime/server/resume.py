"""What the relay keeps to resume a conversation when the upstream session ends.

When the service ends a session (``session_expired`` at its maximum duration, or a connection
that drops), the relay opens a new upstream session for the same page and carries the
conversation over (see ``docs/middle-tier.md``). For that it keeps, per page connection:

* a :class:`~aoai_realtime.protocol.Conversation` (in the relay) that folds the upstream's events
  (text, transcripts, function calls; audio is counted in bytes, never kept), across upstream
  sessions;
* :class:`SessionTracker`: the session configuration the upstream accepted (every
  ``session.update`` the relay sent, the page's after the policy and the operator's own, merged
  once the upstream acknowledged it with ``session.updated``);
* :class:`HeldEvents`: the page's events that arrive while the new session is being set up,
  sent once it is (audio appends bounded to the last ``held_audio_ms``).

All of it is plain data; :class:`~.relay.Relay` does the I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..protocol.conversation import b64_field_len
from ..protocol.restore import DEFAULT_MAX_CHARS, DEFAULT_MAX_ITEMS, ResumeBudget

__all__ = ["HeldEvents", "ResumeOptions", "SessionTracker", "merge_session"]


@dataclass(frozen=True)
class ResumeOptions:
    """How the middle tier resumes a conversation when the upstream session ends.

    ``max_attempts`` resume attempts per page connection within ``window_s`` seconds, waiting
    ``backoff_s[n]`` before the attempt that has ``n`` others before it in the window (the last
    entry repeats). Whether a failed handshake of a resume attempt is tried again is the protocol's
    one rule (:func:`~aoai_realtime.protocol.handshake.classify`): the network or a 5xx is
    retried within the budget, a 401 gets one more try with a fresh token when the credential
    can fetch one, anything else ends the page's session. ``max_items`` and
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


MAX_UNANSWERED_UPDATES = 64
"""A page's ``session.update`` is refused (``too_many_pending_updates``) while this many are
unanswered: each is kept until its answer (for a resume), so a page flooding updates into an
upstream that does not answer would otherwise grow the middle tier without bound."""


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

    @property
    def unanswered(self) -> int:
        """Updates sent (or held) that the upstream has not answered yet."""
        return len(self._pending)

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
            ms = (b64_field_len(text, "audio") or 0) / bytes_per_ms
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
