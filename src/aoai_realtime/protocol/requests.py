"""Requests and their acknowledgements, without I/O: which server event answers which call.

A client sends an event with a fresh ``event_id`` and waits for the event that acknowledges it
(``session.updated`` for ``session.update``, ``conversation.item.added`` with the item's id for
``conversation.item.create``, ...) or for an ``error`` naming that ``event_id``. :class:`Requests`
keeps the open ones and, per server event, says what it settles:

* :class:`Answered`: the oldest open request the event acknowledges (one event answers one);
* :class:`Refused`: the request an ``error`` names (the error goes to that call, once, and
  never to a later one);
* :class:`Excused`: a refusal the caller said it does not mind (``excuse_codes``), e.g. a
  ``response.cancel`` refused because the response had just ended; a late refusal of a request
  already answered that way is excused too, so it never surfaces as news.

The caller keeps its own handle (a future, a stream) in :attr:`Request.handle`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import events as ev

__all__ = ["Answered", "Excused", "Refused", "Request", "Requests"]

_REMEMBER = 64  # answered requests whose late refusal is still excused


@dataclass(eq=False)
class Request:
    """One sent event waiting for its acknowledgement."""

    event_id: str
    kind: str
    match: Callable[[ev.ServerEvent], bool]
    excuse_codes: tuple[str, ...] = ()
    handle: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answered:
    request: Request
    event: ev.ServerEvent


@dataclass(frozen=True)
class Refused:
    request: Request
    error: ev.ErrorDetail


@dataclass(frozen=True)
class Excused:
    request: Request | None
    error: ev.ErrorDetail


class Requests:
    """The open requests of one connection, oldest first."""

    def __init__(self) -> None:
        self._open: dict[str, Request] = {}
        self._answered_excusing: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._open.values()))

    def __len__(self) -> int:
        return len(self._open)

    def get(self, event_id: str) -> Request | None:
        return self._open.get(event_id)

    def add(self, request: Request) -> Request:
        self._open[request.event_id] = request
        return request

    def drop(self, request: Request) -> None:
        """Forget a request (timed out, cancelled, or its send failed)."""
        if self._open.get(request.event_id) is request:
            del self._open[request.event_id]

    def clear(self) -> list[Request]:
        """The connection ended: every open request, now unanswerable."""
        pending = list(self._open.values())
        self._open.clear()
        return pending

    def on_event(self, event: ev.ServerEvent) -> Answered | Refused | Excused | None:
        """What ``event`` settles, if anything (an ``error`` first looks for its request)."""
        if isinstance(event, ev.ErrorEvent):
            return self._on_error(event.error)
        for request in self._open.values():
            if request.match(event):
                del self._open[request.event_id]
                if request.excuse_codes:
                    self._answered_excusing[request.event_id] = request.excuse_codes
                    while len(self._answered_excusing) > _REMEMBER:
                        self._answered_excusing.popitem(last=False)
                return Answered(request, event)
        return None

    def _on_error(self, error: ev.ErrorDetail) -> Refused | Excused | None:
        event_id = error.event_id or ""
        request = self._open.pop(event_id, None)
        if request is None:
            codes = self._answered_excusing.get(event_id)
            if codes is not None and error.code in codes:
                return Excused(None, error)
            return None
        if error.code in request.excuse_codes:
            return Excused(request, error)
        return Refused(request, error)
