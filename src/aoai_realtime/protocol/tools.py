"""The function-tool turn, without I/O: which calls to run, and what to send once they are done.

The SDK's automatic tools and the middle tier's server tools both run on :class:`ToolTurn`:

1. the model calls a function (``response.function_call_arguments.done``, or the call item in
   ``response.output_item.done``): if the tool is ours and the ``call_id`` is new, the turn says
   :class:`RunCall` (a repeated call, e.g. seen in both events, is ignored);
2. the caller runs it (with a timeout per call) and hands the output to :meth:`ToolTurn.completed`;
3. once the response that made the calls is done (``response.done``) *and* every call has its
   output, the turn says :class:`TurnEnd`: the ``function_call_output`` items to send, in the
   order of the calls, then one ``response.create`` if that response completed (a cancelled or
   failed response gets the outputs, which keep the conversation consistent, but no follow-up).

Events are GA-vocabulary dicts; only the few in :data:`TOOL_EVENTS` matter. Plain data in,
plain data out: the caller owns the tasks, the clock and the socket.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TOOL_EVENTS",
    "RunCall",
    "ToolCall",
    "ToolTurn",
    "TurnEnd",
    "tool_output_event",
]

TOOL_EVENTS = frozenset(
    {
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    }
)
"""The server events a :class:`ToolTurn` acts on; it ignores every other."""

_REMEMBER = 1024  # call ids remembered to ignore repeats (bounded: a long session must not grow)


def tool_output_event(call_id: str, output: str) -> dict[str, Any]:
    """The ``conversation.item.create`` that gives the model a call's output."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


@dataclass
class ToolCall:
    """A function call the model made, with its output once it has run."""

    call_id: str
    name: str
    arguments: str
    item_id: str | None = None
    response_id: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class RunCall:
    """Run this call, then report its output with :meth:`ToolTurn.completed`."""

    call: ToolCall


@dataclass(frozen=True)
class TurnEnd:
    """A response's calls all have outputs and the response is done: send :attr:`events` in
    order, then :attr:`follow_up` (``response.create``) when it is not ``None``."""

    response_id: str
    status: str
    calls: list[ToolCall]
    events: list[dict[str, Any]]
    follow_up: dict[str, Any] | None


@dataclass
class _Response:
    calls: list[ToolCall] = field(default_factory=list)
    status: str | None = None  # set by response.done


class ToolTurn:
    """The tool calls of one session. ``handles(name)`` says whether a tool is ours to run."""

    def __init__(self, handles: Callable[[str], bool]) -> None:
        self.handles = handles
        self._responses: dict[str, _Response] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._names: OrderedDict[str, str] = OrderedDict()  # item id -> function name
        self._announced: OrderedDict[str, None] = OrderedDict()  # our calls, not yet run

    # ------------------------------------------------------------------ queries

    def ran(self, call_id: str | None) -> bool:
        """Whether ``call_id`` is a call this turn ran (e.g. to hide its output from a page)."""
        return call_id is not None and call_id in self._seen

    def owns(self, call_id: object) -> bool:
        """Whether ``call_id`` is a call of one of our tools, announced or run: its output is
        ours to give (a middle tier refuses a page's output for it). Not a string: never."""
        return isinstance(call_id, str) and (call_id in self._seen or call_id in self._announced)

    def expects_follow_up(self, response_id: str) -> bool:
        """After that response's ``response.done``: whether a follow-up response will come."""
        r = self._responses.get(response_id)
        return r is not None and r.status == "completed"

    @property
    def running(self) -> int:
        """Calls started and not yet completed."""
        return sum(1 for r in self._responses.values() for c in r.calls if c.output is None)

    # ------------------------------------------------------------------ events

    def on_event(self, event: Mapping[str, Any]) -> list[RunCall | TurnEnd]:
        """Feed one server event (GA vocabulary); returns what to do now."""
        kind = event.get("type")
        if kind not in TOOL_EVENTS:
            return []
        if kind == "response.done":
            response = event.get("response") or {}
            rid = str(response.get("id") or "")
            r = self._responses.get(rid)
            if r is None:
                return []
            r.status = str(response.get("status") or "completed")
            end = self._end(rid)
            return [end] if end is not None else []
        item = event.get("item")
        if kind == "response.output_item.added":
            if isinstance(item, dict) and item.get("type") == "function_call" and item.get("name"):
                name = str(item["name"])
                self._remember(self._names, str(item.get("id") or ""), name)
                if item.get("call_id") and self.handles(name):
                    self._remember(self._announced, str(item["call_id"]), None)
            return []
        call: ToolCall | None = None
        if kind == "response.function_call_arguments.done":
            item_id = event.get("item_id")
            name = event.get("name") or self._names.get(str(item_id or ""), "")
            call = ToolCall(
                call_id=str(event.get("call_id") or ""),
                name=str(name or ""),
                arguments=str(event.get("arguments") or ""),
                item_id=item_id,
                response_id=event.get("response_id"),
            )
        elif isinstance(item, dict) and item.get("type") == "function_call":
            if item.get("status") not in (None, "completed"):
                return []
            call = ToolCall(
                call_id=str(item.get("call_id") or ""),
                name=str(item.get("name") or ""),
                arguments=str(item.get("arguments") or ""),
                item_id=item.get("id"),
                response_id=event.get("response_id"),
            )
        if call is None or not call.call_id or call.call_id in self._seen:
            return []
        if not self.handles(call.name):
            return []
        self._remember(self._seen, call.call_id, None)
        self._responses.setdefault(call.response_id or "", _Response()).calls.append(call)
        return [RunCall(call)]

    def completed(self, call_id: str, output: str) -> TurnEnd | None:
        """A call's output; returns the :class:`TurnEnd` when it was the last one awaited."""
        for rid, r in self._responses.items():
            for call in r.calls:
                if call.call_id == call_id and call.output is None:
                    call.output = output
                    return self._end(rid)
        return None

    def reset(self) -> list[ToolCall]:
        """The session ended: forget its responses (not the calls seen); returns the calls that
        were still running, whose outputs no session will get."""
        running = [c for r in self._responses.values() for c in r.calls if c.output is None]
        self._responses.clear()
        self._names.clear()
        return running

    # ------------------------------------------------------------------ internals

    def _end(self, rid: str) -> TurnEnd | None:
        r = self._responses.get(rid)
        if r is None or r.status is None or any(c.output is None for c in r.calls):
            return None
        del self._responses[rid]
        events = [tool_output_event(c.call_id, c.output or "") for c in r.calls]
        follow_up = {"type": "response.create"} if r.status == "completed" else None
        return TurnEnd(rid, r.status, list(r.calls), events, follow_up)

    @staticmethod
    def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        while len(table) > _REMEMBER:
            table.popitem(last=False)
