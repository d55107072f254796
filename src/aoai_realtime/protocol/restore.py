"""Carrying a conversation over to a new session: plain data in, client events out.

The service never carries a conversation over to a new connection. When a session ends (the
service's maximum duration, ``session_expired``, or a dropped connection), the SDK client and the
middle tier open a new one and re-create the context from what they folded into a
:class:`~.conversation.Conversation`:

* user (and system) messages as ``input_text`` parts: typed text, or the transcript of a spoken
  turn (audio is never sent again; a spoken turn without a transcript is left out);
* assistant messages as ``output_text`` parts (their text, or the transcript of their audio as
  far as it was heard: a truncated item keeps only what was played). The dialect layer renames
  ``output_text`` to the preview's ``text``;
* ``function_call`` items with their ``function_call_output``, always as a pair: a call without
  an output, or an output whose call is not restored, is left out.

Only finished items are restored (status ``completed`` or ``incomplete``); the item a response
was still producing when the session ended is not. The history is bounded: the newest items that
fit in ``max_items`` and ``max_chars`` (characters of text, transcripts, arguments and outputs)
are kept, in their original order, as one contiguous stretch of the conversation.

:class:`ResumeBudget` bounds how often a session is resumed (attempts per time window, with
backoff), for the SDK and the middle tier alike.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .conversation import Conversation, ItemState

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_ITEMS",
    "RESUMABLE_CLOSE_CODES",
    "ResumeBudget",
    "restorable_items",
    "restore_events",
]

DEFAULT_MAX_ITEMS = 50
"""Restore at most this many items (a function call and its output count as two)."""
DEFAULT_MAX_CHARS = 20_000
"""Restore at most this many characters of text (about 5,000 tokens)."""
MAX_ITEM_ID = 32
"""Longer ids are not sent (the service limits client-chosen item ids to 32 characters)."""

RESUMABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
"""WebSocket close codes after which a session is resumed: going away, abnormal closure (no close
frame), internal error, service restart, try again later, bad gateway. A 1000 close without
``session_expired`` is deliberate and is not resumed; no code at all counts as 1006."""


def _finished(state: ItemState) -> bool:
    return state.status != "in_progress"


def _message_item(state: ItemState) -> dict[str, Any] | None:
    if state.role in ("user", "system"):
        texts = [p.text if p.type == "input_text" else p.transcript for p in state.parts]
        content = [{"type": "input_text", "text": t} for t in texts if t and t.strip()]
    elif state.role == "assistant":
        # what was said (the transcript, cut at the truncation point) or written
        texts = [p.transcript or p.text for p in state.parts]
        content = [{"type": "output_text", "text": t} for t in texts if t and t.strip()]
    else:
        return None
    if not content:
        return None
    return {"type": "message", "role": state.role, "content": content}


def _chars(item: dict[str, Any]) -> int:
    if item["type"] == "message":
        return sum(len(p["text"]) for p in item["content"])
    if item["type"] == "function_call":
        return len(item["name"]) + len(item["arguments"])
    return len(item["output"])


def restorable_items(conversation: Conversation, *, keep_ids: bool = True) -> list[dict[str, Any]]:
    """Every finished item of ``conversation`` that can be re-created, as GA items, in order
    (no history bound). Function calls come only with their outputs and vice versa.

    ``keep_ids`` gives each item its original id (when it fits the service's 32 characters), so
    the new session's events name the items the application already knows.
    """
    history = [s for s in conversation.history() if _finished(s)]
    outputs = {s.call_id for s in history if s.type == "function_call_output" and s.call_id}
    calls: set[str] = set()
    out: list[dict[str, Any]] = []
    for state in history:
        item: dict[str, Any] | None = None
        if state.type == "message":
            item = _message_item(state)
        elif state.type == "function_call":
            if state.call_id and state.call_id in outputs and state.call_id not in calls:
                calls.add(state.call_id)
                item = {
                    "type": "function_call",
                    "call_id": state.call_id,
                    "name": state.name or "",
                    "arguments": state.arguments or "{}",
                }
        elif state.type == "function_call_output" and state.call_id in calls:
            calls.discard(state.call_id)  # one output per call
            item = {
                "type": "function_call_output",
                "call_id": state.call_id,
                "output": state.output or "",
            }
        if item is None:
            continue
        if keep_ids and state.id and len(state.id) <= MAX_ITEM_ID:
            item = {"id": state.id, **item}
        out.append(item)
    answered = {i["call_id"] for i in out if i["type"] == "function_call_output"}
    return [i for i in out if i["type"] != "function_call" or i["call_id"] in answered]


def bound_history(
    items: Sequence[dict[str, Any]],
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[dict[str, Any]]:
    """The newest contiguous stretch of ``items`` within both bounds, pairs kept whole.

    Walking back from the newest item, items are taken while both bounds hold; the first item
    that does not fit ends the stretch (an older item is never taken over a newer one). A
    function output whose call fell outside the stretch is dropped with it.
    """
    if max_items <= 0 or max_chars <= 0:
        return []
    kept: list[dict[str, Any]] = []
    used = 0
    for item in reversed(items):
        size = _chars(item)
        if len(kept) + 1 > max_items or used + size > max_chars:
            break
        kept.append(item)
        used += size
    kept.reverse()
    calls = {i["call_id"] for i in kept if i["type"] == "function_call"}
    return [i for i in kept if i["type"] != "function_call_output" or i["call_id"] in calls]


def restore_events(
    conversation: Conversation,
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_chars: int = DEFAULT_MAX_CHARS,
    keep_ids: bool = True,
) -> list[dict[str, Any]]:
    """GA ``conversation.item.create`` events that re-create the recent, finished history of
    ``conversation`` in a new session, oldest first (see the module's docstring for what is
    kept). Send them in order after the session's ``session.update``."""
    items = bound_history(
        restorable_items(conversation, keep_ids=keep_ids),
        max_items=max_items,
        max_chars=max_chars,
    )
    return [{"type": "conversation.item.create", "item": item} for item in items]


@dataclass
class ResumeBudget:
    """At most ``max_attempts`` resume attempts within ``window_s`` seconds, with backoff.

    ``next_delay(now)`` records an attempt and returns how long to wait before making it (the
    ``backoff_s`` entry for the number of attempts already in the window, the last one repeated),
    or ``None`` when the budget is spent: then give up and report the failure once. Time is
    passed in (``time.monotonic()``), so this stays plain data.
    """

    max_attempts: int = 3
    window_s: float = 600.0
    backoff_s: tuple[float, ...] = (0.0, 1.0, 3.0)
    _attempts: deque[float] = field(default_factory=deque, repr=False)

    def _prune(self, now: float) -> None:
        while self._attempts and now - self._attempts[0] >= self.window_s:
            self._attempts.popleft()

    def recent(self, now: float) -> int:
        """Attempts made within the window before ``now``."""
        self._prune(now)
        return len(self._attempts)

    def next_delay(self, now: float) -> float | None:
        self._prune(now)
        n = len(self._attempts)
        if n >= self.max_attempts:
            return None
        self._attempts.append(now)
        if not self.backoff_s:
            return 0.0
        return max(0.0, self.backoff_s[min(n, len(self.backoff_s) - 1)])
