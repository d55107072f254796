"""WebRTC calls through the middle tier: the SDP proxy, the sideband, and their teardown.

The page never holds a credential. It POSTs its SDP offer (and its session choices) to
``/api/calls``; :class:`CallProxy` checks the offer, applies the :class:`~.policy.Policy` to the
choices (what the page may set, plus the operator's instructions and server tools), forwards the
offer to the upstream's ``/realtime/calls`` with the server's credential (the in-process engine:
in memory), attaches the sideband WebSocket (``?call_id=``) *before* the page gets its answer,
and returns the SDP answer only. Audio and the ``oai-events`` data channel then flow between the
browser and the upstream directly; the middle tier sees the call through its sideband:

* **server tools** run there, on the shared tool turn (as in the relay and the SDK): the
  ``function_call_output`` items and the follow-up ``response.create`` go in on the sideband,
  and the page sees the call and its output as conversation items on its data channel;
* **the session is policed there** (:class:`SessionGuard`): the page may send ``session.update``
  on its data channel straight to the upstream, so every ``session.updated`` the call produces
  is checked against the policy, and whatever the page may not set (tools, tool choice, model,
  the operator's instructions, locked fields) is set back at once; a response created while the
  session was out of policy is cancelled, a function call of a tool that is not the server's
  is cancelled and deleted, and so is an item the page may not add (its own output for a server
  tool's call, a system message when instructions are not the page's to set). The page's own
  settings changes go through ``POST /api/calls/{id}/session`` and the policy, as over the
  WebSocket;
* ``--record`` gets the sideband's events (``server``) and what the middle tier sent
  (``client``); the logs carry ``conn=`` (the middle tier's call id) and the upstream's call id.

A call ends when the page hangs up (``POST /api/calls/{id}/hangup``: the upstream call is hung
up and the sideband closes), when the upstream ends it (the peer went away or never connected:
the upstream closes the sideband), or at shutdown. Then nothing of it is left: its sideband, its
tool tasks and its entry are gone (:meth:`CallProxy.wait_calls` waits for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._changes import Changes
from ..channel import Channel, ChannelClosed
from ..protocol.tools import TOOL_EVENTS, RunCall, ToolCall, ToolTurn, TurnEnd
from .errors import RelayError
from .logs import log
from .policy import Policy
from .upstream import Upstream, Upstreams

__all__ = ["CallProxy", "ProxiedCall", "SessionGuard"]

CALL_PREFIX = "call_"
_ENDED_KEPT = 256

# Session fields and who decides them: None (always the page's: the formats and modalities),
# a settable name (the page's when the operator lets it), or missing (the server's: locked).
_IGNORED = frozenset({"id", "object", "expires_at", "type"})
_TOP: dict[str, str | None] = {
    "output_modalities": None,
    "instructions": "instructions",
    "max_output_tokens": "max_output_tokens",
}
_AUDIO: dict[str, dict[str, str | None]] = {
    "input": {
        "format": None,
        "transcription": "transcription",
        "turn_detection": "turn_detection",
        "noise_reduction": "noise_reduction",
    },
    "output": {"format": None, "voice": "voice", "speed": "speed"},
}


class SessionGuard:
    """Keeps a call's session within the policy, from the ``session.updated`` events it sees.

    Pure (no I/O): :meth:`check` takes the session an upstream echoed and returns the
    ``session`` of the ``session.update`` that puts it back within the policy (``None`` when it
    is within). The first session seen is the baseline: the server's own update, sent before
    the page could connect. Locked fields keep the baseline's values; fields the page may set
    are taken as they come; the instructions keep the operator's around the page's.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.baseline: dict[str, Any] | None = None
        self.violating = False
        """True from a session out of policy until one within it is seen (after the fix)."""
        self.corrections: list[str] = []
        """Every field set back, in order (``session.tools``, ...)."""

    def _instructions_ok(self, value: Any) -> bool:
        p = self.policy
        if not isinstance(value, str):
            return value is None and not p.has_operator_instructions
        if not p.has_operator_instructions:
            return True
        head = p.instructions_prefix
        tail = p.instructions_suffix
        return (not head or value.startswith(head)) and (not tail or value.endswith(tail))

    def check(self, session: Mapping[str, Any]) -> dict[str, Any] | None:
        """The fix for an echoed session (GA ``session`` object), or ``None``."""
        if self.baseline is None:
            self.baseline = json.loads(json.dumps(dict(session)))
            return None
        base = self.baseline
        fix: dict[str, Any] = {}
        wrong: list[str] = []
        settable = self.policy.settable
        for key in set(session) | set(base):
            if key in _IGNORED:
                continue
            value, was = session.get(key), base.get(key)
            if key == "audio":
                self._check_audio(value, was, fix, wrong)
                continue
            if key == "instructions" and "instructions" in settable:
                if self._instructions_ok(value):
                    base[key] = value
                else:
                    wrong.append("session.instructions")
                    fix[key] = self.policy.instructions(value if isinstance(value, str) else None)
                continue
            governed = _TOP.get(key, "locked")
            if governed is None or (governed != "locked" and governed in settable):
                base[key] = value
            elif value != was:
                wrong.append(f"session.{key}")
                fix[key] = was if was is not None else _cleared(key)
        if not fix:
            self.violating = False
            return None
        self.violating = True
        self.corrections.extend(wrong)
        return {"type": "realtime", **fix}

    def _check_audio(self, value: Any, was: Any, fix: dict[str, Any], wrong: list[str]) -> None:
        value = value if isinstance(value, dict) else {}
        was = was if isinstance(was, dict) else {}
        base = self.baseline
        assert base is not None
        kept = base.setdefault("audio", {})
        for side, table in _AUDIO.items():
            now = value.get(side) if isinstance(value.get(side), dict) else {}
            before = was.get(side) if isinstance(was.get(side), dict) else {}
            for key in set(now) | set(before):
                governed = table.get(key, "locked")
                if governed is None or (governed != "locked" and governed in self.policy.settable):
                    kept.setdefault(side, {})[key] = now.get(key)
                elif now.get(key) != before.get(key):
                    wrong.append(f"session.audio.{side}.{key}")
                    fix.setdefault("audio", {}).setdefault(side, {})[key] = before.get(key)


def _cleared(key: str) -> Any:
    """What sets a locked field back when the baseline did not have it."""
    return [] if key == "tools" else None


@dataclass
class CallStats:
    """What happened on one proxied call (logged when it ends)."""

    conn_id: str
    from_upstream: int = 0
    to_upstream: int = 0
    tool_calls: int = 0
    corrections: list[str] = field(default_factory=list)
    cancelled: int = 0
    deleted: int = 0
    closed_by: str | None = None
    started: float = field(default_factory=time.monotonic)


class ProxiedCall:
    """One browser's call, seen and steered through its sideband."""

    def __init__(
        self,
        conn_id: str,
        upstream: Upstream,
        upstream_call_id: str,
        sideband: Channel,
        policy: Policy,
        intended: dict[str, Any],
        observer: Callable[[str, dict[str, Any]], None] | None,
    ) -> None:
        self.id = conn_id
        self.upstream = upstream
        self.upstream_call_id = upstream_call_id
        self.sideband = sideband
        self.policy = policy
        self.intended = intended
        self.observer = observer
        self.guard = SessionGuard(policy)
        self.stats = CallStats(conn_id)
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._tools = ToolTurn(lambda name: policy.tool(name) is not None)
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._outputs_sent: set[str] = set()
        self._outputs_seen: set[str] = set()
        self._refused_items: set[str] = set()
        self._tainted: set[str] = set()
        self._active_responses: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ sending

    async def send(self, event: dict[str, Any]) -> None:
        """One client event into the call's session, on the sideband."""
        event = {**event, "event_id": f"relay_{uuid.uuid4().hex[:20]}"}
        if self.observer is not None:
            self.observer("client", event)
        async with self._send_lock:
            await self.sideband.send(json.dumps(event, separators=(",", ":")))
        self.stats.to_upstream += 1

    async def start(self) -> None:
        """The server's session, again, on the sideband: its answer is the guard's baseline
        (and a service that ignored the offer's session gets it here, before the peer connects)."""
        await self.send({"type": "session.update", "session": self.intended})

    async def update_session(self, event: Mapping[str, Any]) -> list[str]:
        """The page's ``session.update`` (through the middle tier): policed, then sent; returns
        the parameters left out."""
        result = self.policy.session_update(
            {"type": "session.update", **{k: v for k, v in event.items() if k != "type"}},
            dialect="ga",
        )
        if result.event is not None:
            with contextlib.suppress(ChannelClosed):
                await self.send({k: v for k, v in result.event.items() if k != "event_id"})
        for param in result.refused:
            log("call.policy_violation", conn=self.id, param=param)
        return result.refused

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Read the sideband until the call ends, acting on its events."""
        try:
            while (text := await self.sideband.receive()) is not None:
                self.stats.from_upstream += 1
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if self.observer is not None:
                    self.observer("server", event)
                await self._on_event(event)
            self.stats.closed_by = self.stats.closed_by or "upstream"
            code = self.sideband.close_code
            self.end_reason = self.end_reason or (
                f"the upstream ended the call (code {code}"
                + (f": {self.sideband.close_reason}" if self.sideband.close_reason else "")
                + ")"
            )
        except ChannelClosed:
            self.stats.closed_by = self.stats.closed_by or "upstream"
        except Exception as exc:  # a bug must end the call, never leave it half-steered
            log("call.internal_error", 40, conn=self.id, error=repr(exc))
            self.end_reason = f"internal error ({type(exc).__name__})"
        finally:
            for task in list(self._tool_tasks):
                task.cancel()
            await asyncio.gather(*self._tool_tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.sideband.close(1000, "call ended")
            self.ended.set()

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            session = event.get("session")
            if isinstance(session, dict):
                fix = self.guard.check(session)
                if fix is not None:
                    log("call.session_corrected", 30, conn=self.id, fields=self.guard.corrections)
                    self.stats.corrections = list(self.guard.corrections)
                    await self.send({"type": "session.update", "session": fix})
            return
        if kind == "response.created":
            rid = str((event.get("response") or {}).get("id") or "")
            self._active_responses.add(rid)
            if self.guard.violating:
                # created under a session the server did not allow: it does not run
                self._tainted.add(rid)
                await self._cancel(rid, "created while the session was out of policy")
            return
        if kind == "response.done":
            response = event.get("response") or {}
            rid = str(response.get("id") or "")
            self._active_responses.discard(rid)
            if rid in self._tainted:
                # it ended before the cancel arrived (a fast model): what it said does not stay
                # in the conversation
                self._tainted.discard(rid)
                for item in response.get("output") or []:
                    if isinstance(item, dict) and item.get("id"):
                        await self._delete(str(item["id"]), "said while out of policy")
        items = ("response.output_item.added", "conversation.item.added")
        if kind in items and await self._foreign_item(event):
            return
        if kind in TOOL_EVENTS:
            for effect in self._tools.on_event(event):
                if isinstance(effect, RunCall):
                    self._start_tool(effect.call)
                else:
                    await self._end_tool_turn(effect)

    async def _foreign_item(self, event: dict[str, Any]) -> bool:
        """An item the page may not have in the conversation: cancelled and deleted (True)."""
        item = event.get("item")
        if not isinstance(item, dict):
            return False
        kind, item_id = item.get("type"), str(item.get("id") or "")
        if item_id and item_id in self._refused_items:
            return True  # the same item announced again (output item, then conversation item)
        why = None
        if kind == "function_call" and self.policy.tool(str(item.get("name") or "")) is None:
            why = f"a call of {str(item.get('name'))[:64]!r}, which is not a server tool"
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if self._tools.owns(call_id):
                assert isinstance(call_id, str)
                if call_id in self._outputs_sent and call_id not in self._outputs_seen:
                    self._outputs_seen.add(call_id)
                elif event.get("type") == "conversation.item.added":
                    why = "an output for a server tool's call, which only the server gives"
        elif (
            kind == "message"
            and item.get("role") == "system"
            and "instructions" not in self.policy.settable
        ):
            why = "a system message, while instructions are the server's"
        if why is None:
            return False
        log("call.item_refused", 30, conn=self.id, item_type=kind, why=why)
        rid = event.get("response_id") or (event.get("response") or {}).get("id")
        if isinstance(rid, str) and rid in self._active_responses:
            await self._cancel(rid, why)
        if item_id:
            await self._delete(item_id, why)
        return True

    async def _delete(self, item_id: str, why: str) -> None:
        if item_id in self._refused_items and why == "said while out of policy":
            return  # deleted already (a call of a tool that is not the server's)
        self._refused_items.add(item_id)
        self.stats.deleted += 1
        log("call.item_deleted", 30, conn=self.id, item_id=item_id, why=why)
        with contextlib.suppress(ChannelClosed):
            await self.send({"type": "conversation.item.delete", "item_id": item_id})

    async def _cancel(self, response_id: str, why: str) -> None:
        log("call.response_cancelled", 30, conn=self.id, response_id=response_id, why=why)
        self.stats.cancelled += 1
        with contextlib.suppress(ChannelClosed):
            await self.send({"type": "response.cancel", "response_id": response_id})

    # ------------------------------------------------------------------ server tools

    def _start_tool(self, call: ToolCall) -> None:
        self.stats.tool_calls += 1
        task = asyncio.create_task(self._run_tool(call), name=f"call-{self.id}-tool")
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    async def _run_tool(self, call: ToolCall) -> None:
        tool = self.policy.tool(call.name)
        assert tool is not None
        started = time.monotonic()
        output = await tool.run(call.arguments, timeout_s=self.policy.tool_timeout_s)
        log(
            "call.tool",
            conn=self.id,
            tool=tool.name,
            call_id=call.call_id,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        end = self._tools.completed(call.call_id, output)
        if end is not None:
            await self._end_tool_turn(end)

    async def _end_tool_turn(self, end: TurnEnd) -> None:
        with contextlib.suppress(ChannelClosed):
            for event in end.events:
                item = event.get("item") or {}
                if item.get("type") == "function_call_output":
                    self._outputs_sent.add(str(item.get("call_id")))
                await self.send(event)
            if end.follow_up is not None:
                await self.send(end.follow_up)


class CallProxy:
    """The middle tier's live calls: made through :meth:`create`, ended by :meth:`hangup`,
    by the upstream, or by :meth:`close`."""

    def __init__(
        self,
        upstreams: Upstreams,
        policy: Policy,
        observer_factory: Callable[[str, Upstream | None], Any] | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.policy = policy
        self.observer_factory = observer_factory
        self.calls: dict[str, ProxiedCall] = {}
        self.ended: OrderedDict[str, str] = OrderedDict()
        """The last calls that ended (id -> why), so a hangup racing the end is answered."""
        self._changes = Changes()

    def __len__(self) -> int:
        return len(self.calls)

    def get(self, call_id: str) -> ProxiedCall | None:
        return self.calls.get(call_id)

    def intended_session(self, page: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        """The page's session choices through the policy, with the operator's fields: the
        session the call is made with (and its refused parameters)."""
        result = self.policy.session_update(
            {"type": "session.update", "session": dict(page or {})}, dialect="ga"
        )
        assert result.event is not None
        session = dict(result.event["session"])
        session["type"] = "realtime"
        if self.policy.has_operator_instructions and "instructions" not in session:
            session["instructions"] = self.policy.instructions(None)
        if not self.policy.tools:
            session.setdefault("tools", [])  # the page can never bring its own
        return session, result.refused

    async def create(
        self,
        sdp: str,
        page_session: Mapping[str, Any] | None,
        *,
        endpoint: str | None,
        deployment: str | None,
        peer: str | None = None,
    ) -> tuple[ProxiedCall, str, list[str]]:
        """Make a call for a page's offer: ``(call, answer_sdp, refused)``. Raises
        :class:`RelayError` (``status`` set for the HTTP answer) with the page's message."""
        from ..engine.sdp import OfferError, check_offer

        try:
            check_offer(sdp)
        except OfferError as exc:
            error = RelayError("invalid_offer", f"The SDP offer cannot make a call: {exc}")
            error.status = 400
            raise error from None
        up = self.upstreams.resolve(endpoint, deployment)
        if not self.upstreams.webrtc(up):
            error = RelayError(
                "webrtc_unavailable",
                f"{up.label[:1].upper() + up.label[1:]} takes no WebRTC calls (a preview "
                "deployment, or a local engine without aiortc): choose the WebSocket transport.",
            )
            error.status = 400
            raise error
        conn_id = CALL_PREFIX + uuid.uuid4().hex[:20]
        intended, refused = self.intended_session(page_session)
        log("call.open", conn=conn_id, peer=peer, upstream=up.kind, refused=refused or None)
        upstream_id, answer = await self.upstreams.create_call(up, sdp, intended, conn_id=conn_id)
        call = await self._attach(up, upstream_id, intended, conn_id)
        return call, answer, refused

    async def attach(
        self, upstream_id: str, *, endpoint: str | None, deployment: str | None
    ) -> ProxiedCall:
        """Attach to a call the page opened with a client secret (the secret's session is the
        server's, :meth:`intended_session`): tools and the policy, as for a proxied call."""
        up = self.upstreams.resolve(endpoint, deployment)
        conn_id = CALL_PREFIX + uuid.uuid4().hex[:20]
        intended, _ = self.intended_session(None)
        log("call.attach", conn=conn_id, upstream=up.kind, upstream_call=upstream_id)
        return await self._attach(up, upstream_id, intended, conn_id, hang_up_on_failure=False)

    async def _attach(
        self,
        up: Upstream,
        upstream_id: str,
        intended: dict[str, Any],
        conn_id: str,
        *,
        hang_up_on_failure: bool = True,
    ) -> ProxiedCall:
        """The sideband on the upstream call, its first update sent, its reader running."""
        try:
            sideband = await self.upstreams.open_sideband(up, upstream_id, conn_id=conn_id)
        except BaseException:
            if hang_up_on_failure:
                await self.upstreams.hangup_call(up, upstream_id, conn_id=conn_id)
            raise
        observer = None
        if self.observer_factory is not None:
            try:
                observer = self.observer_factory(conn_id, up)
            except Exception as exc:  # a recorder that cannot open its file must not stop it
                log("call.observer_failed", 40, conn=conn_id, error=repr(exc))
        call = ProxiedCall(conn_id, up, upstream_id, sideband, self.policy, intended, observer)
        try:
            await call.start()
        except ChannelClosed:
            await self.upstreams.hangup_call(up, upstream_id, conn_id=conn_id)
            raise RelayError(
                "upstream_closed", "The call ended before it started: press Start again."
            ) from None
        self.calls[conn_id] = call
        self._notify()
        call.task = asyncio.create_task(self._run(call), name=f"call-{conn_id}")
        log("call.answered", conn=conn_id, upstream_call=upstream_id)
        return call

    async def _run(self, call: ProxiedCall) -> None:
        try:
            await call.run()
        finally:
            if self.calls.get(call.id) is call:
                del self.calls[call.id]
            self.ended[call.id] = call.end_reason
            while len(self.ended) > _ENDED_KEPT:
                self.ended.popitem(last=False)
            closer = getattr(call.observer, "close", None)
            if callable(closer):
                closer()
            s = call.stats
            log(
                "call.closed",
                conn=call.id,
                closed_by=s.closed_by,
                reason=call.end_reason or None,
                duration_s=round(time.monotonic() - s.started, 3),
                from_upstream=s.from_upstream,
                to_upstream=s.to_upstream,
                tool_calls=s.tool_calls,
                corrections=s.corrections or None,
                cancelled=s.cancelled or None,
                deleted=s.deleted or None,
            )
            self._notify()

    async def hangup(self, call_id: str, *, by: str = "client") -> bool:
        """End a call on both sides and wait until nothing of it runs; False if unknown."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        call.stats.closed_by = call.stats.closed_by or by
        call.end_reason = call.end_reason or f"hung up by the {by}"
        await self.upstreams.hangup_call(call.upstream, call.upstream_call_id, conn_id=call.id)
        with contextlib.suppress(Exception):
            await call.sideband.close(1000, "hung up")
        if call.task is not None:
            await asyncio.gather(call.task, return_exceptions=True)
        return True

    async def close(self) -> None:
        """Server shutdown: every call hung up."""
        await asyncio.gather(
            *(self.hangup(cid, by="server") for cid in list(self.calls)), return_exceptions=True
        )

    def _notify(self) -> None:
        self._changes.notify()

    async def wait_calls(self, count: int, timeout: float = 10.0) -> None:
        """Return once exactly ``count`` calls are live (woken by each change, never polled);
        ``TimeoutError`` after ``timeout`` seconds."""
        await self._changes.wait_for(
            lambda: len(self.calls), count, timeout, "the middle tier", "calls"
        )
