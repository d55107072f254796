"""The relay: one client connection, one upstream connection, events both ways.

:class:`Relay` knows nothing of a web framework. It works on two :class:`Channel` objects (text
messages in, text messages out, close) and a connector that opens the upstream channel, so the
aiohttp app in :mod:`.app` is a thin adapter, and a Starlette or FastAPI app can mount the same
relay by wrapping its WebSocket in a few lines (see ``docs/middle-tier.md``).

What it does on the way:

* translates the dialect when the upstream (or the client) speaks preview; the client side is
  GA unless told otherwise;
* applies the operator's :class:`~.policy.Policy` to ``session.update``, ``response.create`` and
  ``conversation.item.create``, telling the client once per refused parameter
  (``policy_violation``, not fatal);
* sends the operator's initial ``session.update`` as soon as the upstream is connected, so server
  tools are registered even if the client never sends one;
* runs server tools: on ``response.function_call_arguments.done`` it runs the tool, sends the
  ``function_call_output`` item, and ``response.create`` once that response's ``response.done``
  has arrived (only if it completed);
* turns every upstream failure (refused handshake, closed socket, ``server_error``,
  ``session_expired``) into exactly one ``relay_error`` event, then closes the client: no loops,
  no half-open state;
* closes the upstream as soon as the client leaves.

The hot path (audio deltas both ways) is forwarded without decoding the JSON when no
translation is needed; the event type is peeked with a regular expression.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..protocol import dialect as _dialect
from ..protocol.errors import ProtocolError
from ..tools import Tool
from .errors import CLOSE_POLICY, CLOSE_UPSTREAM, RelayError, error_event
from .logs import log
from .policy import Policy

__all__ = [
    "Channel",
    "ChannelClosed",
    "Connector",
    "Relay",
    "RelayObserver",
    "RelayStats",
]

Dialect = Literal["ga", "preview"]


class ChannelClosed(ConnectionError):
    """Raised by :meth:`Channel.send` when the peer has gone."""


class Channel(Protocol):
    """One side of the relay: a WebSocket carrying JSON text messages."""

    async def receive(self) -> str | None:
        """The next text message; ``None`` once the peer has closed (binary frames are skipped)."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; raise :class:`ChannelClosed` if the peer has gone."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close without waiting long for the peer's answer; closing twice does nothing."""
        ...

    @property
    def close_code(self) -> int | None:
        """The close code the peer sent (or ``None``)."""
        ...

    @property
    def close_reason(self) -> str:
        """The reason the peer gave when closing (may be empty)."""
        ...


Connector = Callable[[], Awaitable[Channel]]
"""Opens the upstream channel; raises :class:`RelayError` with a page-ready message on failure."""

RelayObserver = Callable[[str, dict[str, Any]], None]
"""Called with ``("client", event)`` for every client event sent upstream (after the policy,
GA vocabulary, the relay's own included), ``("server", event)`` for every upstream event (GA
vocabulary, before the page's view is filtered) and ``("relay", event)`` for the errors the relay
itself sends the client. A hook for ``--record FILE.jsonl``; it must not block."""

_TYPE_RE = re.compile(r'"type"\s*:\s*"([^"\\]+)"')
_PEEK = 200

# Events forwarded without decoding when both sides speak the same dialect.
_HOT_SERVER_GA = frozenset(
    {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "conversation.item.input_audio_transcription.delta",
    }
)
_HOT_SERVER_PREVIEW = frozenset(
    {
        "response.audio.delta",
        "response.audio_transcript.delta",
        "response.text.delta",
        "conversation.item.input_audio_transcription.delta",
    }
)
_GA_TO_PREVIEW_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_text.delta": "response.text.delta",
}
_PREVIEW_TO_GA_NAMES = {v: k for k, v in _GA_TO_PREVIEW_NAMES.items()}
_HOT_CLIENT = frozenset({"input_audio_buffer.append"})
_OUTPUT_ITEM_EVENTS = frozenset(
    {"conversation.item.added", "conversation.item.done", "conversation.item.retrieved"}
)


class _ClientGone(Exception):
    pass


class _UpstreamGone(Exception):
    pass


def _peek_type(text: str) -> str | None:
    match = _TYPE_RE.search(text, 0, _PEEK)
    return match.group(1) if match else None


def _rename_type(text: str, new: str) -> str:
    match = _TYPE_RE.search(text, 0, _PEEK)
    assert match is not None
    return text[: match.start(1)] + new + text[match.end(1) :]


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


@dataclass
class RelayStats:
    """What happened on one relayed connection (logged when it ends)."""

    conn_id: str
    from_client: int = 0
    to_upstream: int = 0
    from_upstream: int = 0
    to_client: int = 0
    tool_calls: int = 0
    refused: list[str] = field(default_factory=list)
    error_code: str | None = None
    closed_by: str | None = None
    started: float = field(default_factory=time.monotonic)
    connected_ms: float | None = None

    @property
    def duration_s(self) -> float:
        return time.monotonic() - self.started


class Relay:
    """Relay one client (the page) to one upstream, with a policy and server tools.

    ``client`` is the channel to the page (already accepted). ``connect`` opens the upstream
    channel; ``dialect`` is the dialect the upstream speaks, ``client_dialect`` the one the
    client speaks (GA for the page). ``upstream_label`` names the upstream in error messages
    ("Azure OpenAI at https://RES.openai.azure.com", "the local engine").
    """

    def __init__(
        self,
        client: Channel,
        connect: Connector,
        *,
        dialect: Dialect = "ga",
        client_dialect: Dialect = "ga",
        policy: Policy | None = None,
        upstream_label: str = "the upstream service",
        observer: RelayObserver | None = None,
        conn_id: str | None = None,
        preview_turn_detection_none: bool = True,
    ) -> None:
        self.client = client
        self.connect = connect
        self.dialect: Dialect = dialect
        self.client_dialect: Dialect = client_dialect
        self.policy = policy or Policy()
        self.upstream_label = upstream_label
        self.observer = observer
        self.conn_id = conn_id or uuid.uuid4().hex[:8]
        self._azure_preview = preview_turn_detection_none
        self.stats = RelayStats(self.conn_id)
        self.upstream: Channel | None = None
        self._client_lock = asyncio.Lock()
        self._upstream_lock = asyncio.Lock()
        self._failed: RelayError | None = None
        self._closing = False
        self._reported: set[str] = set()
        self._page_instructions: str | None = None
        self._own_event_ids: set[str] = set()
        self._initial_id: str | None = None
        self._swallow_updated = False
        # server tools: response id -> call ids still running / response.done status
        self._running: dict[str, set[str]] = {}
        self._done_status: dict[str, str] = {}
        self._server_call_ids: set[str] = set()
        self._tool_tasks: set[asyncio.Task[None]] = set()
        same = client_dialect == dialect
        self._hot_server = (
            _HOT_SERVER_GA if dialect == "ga" else _HOT_SERVER_PREVIEW
        )  # names as the upstream sends them
        self._server_renames: dict[str, str] = (
            {} if same else (_PREVIEW_TO_GA_NAMES if dialect == "preview" else _GA_TO_PREVIEW_NAMES)
        )

    # ------------------------------------------------------------------------------ running

    async def run(self) -> RelayStats:
        """Connect upstream and relay until either side leaves or fails; returns the stats."""
        started = time.monotonic()
        try:
            self.upstream = await self.connect()
        except RelayError as exc:
            await self._fail(exc)
            return self._finish()
        except Exception as exc:  # a connector bug must still end in one clear message
            log("relay.connect_failed", 40, conn=self.conn_id, error=repr(exc))
            await self._fail(
                RelayError(
                    "upstream_unreachable",
                    f"Could not connect to {self.upstream_label} ({type(exc).__name__}: {exc}). "
                    "Check the server's log, then press Start again.",
                )
            )
            return self._finish()
        self.stats.connected_ms = (time.monotonic() - started) * 1000
        initial = self.policy.initial_update()
        pumps: list[asyncio.Task[None]] = []
        try:
            if initial is not None:
                # Its session.updated is not shown: a client waiting for the answer to its own
                # session.update must not take this one for it.
                self._initial_id = await self._send_upstream(initial, own=True)
                self._swallow_updated = True
            pumps = [
                asyncio.create_task(self._client_pump(), name=f"relay-{self.conn_id}-client"),
                asyncio.create_task(self._upstream_pump(), name=f"relay-{self.conn_id}-upstream"),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except _UpstreamGone:
            await self._upstream_gone()
        finally:
            self._closing = True
            for task in pumps:
                task.cancel()
            for task in list(self._tool_tasks):
                task.cancel()
            await asyncio.gather(*pumps, *self._tool_tasks, return_exceptions=True)
            await self._close_both()
        return self._finish()

    async def close(self) -> None:
        """End the relay from outside (server shutdown): both sides are closed."""
        self._closing = True
        self.stats.closed_by = self.stats.closed_by or "server"
        await self._close_both(code=1001, reason="server shutting down")

    def _finish(self) -> RelayStats:
        s = self.stats
        log(
            "relay.closed",
            conn=self.conn_id,
            closed_by=s.closed_by,
            error=s.error_code,
            duration_s=round(s.duration_s, 3),
            from_client=s.from_client,
            to_upstream=s.to_upstream,
            from_upstream=s.from_upstream,
            to_client=s.to_client,
            tool_calls=s.tool_calls,
        )
        return s

    async def _close_both(self, code: int = 1000, reason: str = "") -> None:
        closers = [self.client.close(code, reason)]
        if self.upstream is not None:
            closers.append(self.upstream.close(code, reason))
        await asyncio.gather(*closers, return_exceptions=True)

    async def _fail(self, exc: RelayError) -> None:
        """Tell the client once, then close both sides."""
        if self._failed is not None:
            return
        self._failed = exc
        self._closing = True
        self.stats.error_code = exc.code
        by = "relay" if exc.close_code == CLOSE_POLICY else "upstream"
        self.stats.closed_by = self.stats.closed_by or by
        log("relay.error", 30, conn=self.conn_id, code=exc.code, message=exc.message)
        event = exc.to_event()
        if self.observer is not None:
            self.observer("relay", event)
        with contextlib.suppress(ChannelClosed):
            async with self._client_lock:
                await self.client.send(_dumps(event))
                self.stats.to_client += 1
        await self._close_both(code=exc.close_code, reason=exc.code)

    async def _upstream_gone(self) -> None:
        if self._closing or self._failed is not None:
            return
        up = self.upstream
        code = up.close_code if up is not None else None
        reason = up.close_reason if up is not None else ""
        detail = f"close code {code}" if code is not None else "no close code"
        if reason:
            detail += f": {reason}"
        await self._fail(
            RelayError(
                "upstream_closed",
                f"{_cap(self.upstream_label)} closed the session ({detail}). Press Start to begin "
                "a new session.",
            )
        )

    # ------------------------------------------------------------------------------ sending

    async def _send_client_text(self, text: str) -> None:
        try:
            async with self._client_lock:
                await self.client.send(text)
        except ChannelClosed:
            raise _ClientGone from None
        self.stats.to_client += 1

    async def _send_client(self, event: dict[str, Any]) -> None:
        """Send one GA-vocabulary event to the client, in the client's dialect."""
        if self.client_dialect == "preview":
            for ev in _dialect.ga_to_preview_server(event, azure=self._azure_preview):
                await self._send_client_text(_dumps(ev))
        else:
            await self._send_client_text(_dumps(event))

    async def _send_upstream_text(self, text: str) -> None:
        assert self.upstream is not None
        try:
            async with self._upstream_lock:
                await self.upstream.send(text)
        except ChannelClosed:
            raise _UpstreamGone from None
        self.stats.to_upstream += 1

    async def _send_upstream(self, event: dict[str, Any], *, own: bool = False) -> str | None:
        """Send one GA-vocabulary client event upstream, in the upstream's dialect; an event of
        the relay's own (``own``) gets an ``event_id``, which is returned."""
        event_id: str | None = None
        if own:
            event_id = f"relay_{uuid.uuid4().hex[:20]}"
            event = {**event, "event_id": event_id}
            self._own_event_ids.add(event_id)
        if self.observer is not None:
            self.observer("client", event)
        if self.dialect == "preview":
            event = _dialect.ga_to_preview_client(event, azure=self._azure_preview)
        await self._send_upstream_text(_dumps(event))
        return event_id

    async def _notice(self, code: str, message: str, param: str | None = None) -> None:
        event = error_event(code, message, param=param)
        if self.observer is not None:
            self.observer("relay", event)
        await self._send_client_text(_dumps(event))

    async def _refused(self, params: list[str]) -> None:
        for param in params:
            self.stats.refused.append(param)
            if param in self._reported:
                continue
            self._reported.add(param)
            log("relay.policy_violation", conn=self.conn_id, param=param)
            await self._notice(
                "policy_violation",
                f"The server does not let clients set '{param}': it was left out and the rest "
                "was applied. The operator decides this on the server.",
                param,
            )

    # ------------------------------------------------------------------------------ client -> up

    async def _client_pump(self) -> None:
        try:
            while True:
                text = await self.client.receive()
                if text is None:
                    raise _ClientGone
                self.stats.from_client += 1
                try:
                    await self._from_client(text)
                except (ProtocolError, ValueError, TypeError, KeyError, AttributeError) as exc:
                    # an event the translation cannot render: answered like the service would,
                    # and the session goes on
                    await self._bad_client_event(text, exc)
        except _ClientGone:
            self.stats.closed_by = self.stats.closed_by or "client"
        except _UpstreamGone:
            await self._upstream_gone()
        except Exception as exc:  # a bug must still end in one clear message, never silence
            await self._internal_error(exc)

    async def _bad_client_event(self, text: str, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            error = exc.to_error()
        else:
            error = {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": f"The event could not be processed ({type(exc).__name__}: {exc}); "
                "check its fields against the GA protocol.",
                "param": None,
                "event_id": None,
            }
        match = re.search(r'"event_id"\s*:\s*"([^"\\]+)"', text[:500])
        if match and not error.get("event_id"):
            error["event_id"] = match.group(1)
        log("relay.bad_client_event", 30, conn=self.conn_id, error=error.get("message"))
        event = {"type": "error", "event_id": f"relay_{uuid.uuid4().hex[:20]}", "error": error}
        if self.observer is not None:
            self.observer("relay", event)
        await self._send_client(event)

    async def _internal_error(self, exc: Exception) -> None:
        log("relay.internal_error", 40, conn=self.conn_id, error=repr(exc))
        await self._fail(
            RelayError(
                "relay_internal_error",
                f"The middle tier hit an internal error ({type(exc).__name__}: {exc}). Press "
                "Start to begin a new session; the server's log has the details.",
            )
        )

    async def _from_client(self, text: str) -> None:
        kind = _peek_type(text)
        if kind in _HOT_CLIENT:
            if self.observer is not None:
                self.observer("client", json.loads(text))
            await self._send_upstream_text(text)
            return
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            await self._send_upstream_text(text)  # the upstream answers with its own error
            return
        if not isinstance(event, dict):
            await self._send_upstream_text(text)
            return
        if self.client_dialect == "preview":
            try:
                event = _dialect.preview_to_ga_client(event)
            except ProtocolError as exc:
                await self._send_client_text(_dumps({"type": "error", "error": exc.to_error()}))
                return
        kind = event.get("type")
        if kind == "session.update":
            result = self.policy.session_update(event, dialect=self.dialect)
            session = event.get("session")
            if (
                isinstance(session, dict)
                and isinstance(session.get("instructions"), str)
                and "instructions" in self.policy.settable
            ):
                self._page_instructions = session["instructions"]
        elif kind == "response.create":
            result = self.policy.response_create(event, dialect=self.dialect)
        elif kind == "conversation.item.create":
            result = self.policy.item_create(event)
        else:
            if self.observer is not None:
                self.observer("client", event)
            if self.dialect == "ga" and self.client_dialect == "ga":
                await self._send_upstream_text(text)
            else:
                await self._send_upstream(event)
            return
        if result.refused:
            await self._refused(result.refused)
        if result.event is None:
            return
        await self._send_upstream(result.event)

    # ------------------------------------------------------------------------------ up -> client

    async def _upstream_pump(self) -> None:
        assert self.upstream is not None
        try:
            while True:
                text = await self.upstream.receive()
                if text is None:
                    raise _UpstreamGone
                self.stats.from_upstream += 1
                await self._from_upstream(text)
        except _ClientGone:
            self.stats.closed_by = self.stats.closed_by or "client"
        except _UpstreamGone:
            await self._upstream_gone()
        except Exception as exc:  # a bug must still end in one clear message, never silence
            await self._internal_error(exc)

    async def _from_upstream(self, text: str) -> None:
        kind = _peek_type(text)
        if kind in self._hot_server:
            if self.observer is not None:
                event = json.loads(text)
                if self.dialect == "preview":
                    event = _dialect.preview_to_ga_server(event)[0]
                self.observer("server", event)
            renamed = self._server_renames.get(kind)
            await self._send_client_text(_rename_type(text, renamed) if renamed else text)
            return
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            log("relay.bad_upstream_json", 30, conn=self.conn_id, size=len(text))
            return
        if not isinstance(raw, dict):
            return
        events = _dialect.preview_to_ga_server(raw) if self.dialect == "preview" else [raw]
        for event in events:
            if self.observer is not None:
                self.observer("server", event)
            if not await self._handle_server_event(event):
                continue
            if self._failed is not None:
                return
            await self._send_client(event)

    async def _handle_server_event(self, event: dict[str, Any]) -> bool:
        """Act on an upstream event; return whether the client should see it (possibly after
        an in-place change)."""
        kind = event.get("type")
        if kind == "error":
            return await self._on_error(event)
        if kind == "response.function_call_arguments.done":
            self._maybe_run_tool(event)
            return True
        if kind == "response.done":
            response = event.get("response") or {}
            rid = response.get("id")
            if rid in self._running:
                self._done_status[rid] = response.get("status") or "completed"
                await self._maybe_continue(rid)
            return True
        if kind == "session.updated" and self._swallow_updated:
            self._swallow_updated = False
            return False
        if kind in ("session.created", "session.updated"):
            session = event.get("session")
            if isinstance(session, dict):
                event["session"] = self.policy.page_session(session, self._page_instructions)
            return True
        if kind in _OUTPUT_ITEM_EVENTS and not self.policy.show_tool_results:
            item = event.get("item") or {}
            if (
                item.get("type") == "function_call_output"
                and item.get("call_id") in self._server_call_ids
            ):
                return False
        return True

    async def _on_error(self, event: dict[str, Any]) -> bool:
        error = event.get("error") or {}
        if error.get("event_id") in self._own_event_ids:
            if error.get("event_id") == self._initial_id:
                self._swallow_updated = False
            log(
                "relay.own_event_refused",
                30,
                conn=self.conn_id,
                code=error.get("code"),
                message=error.get("message"),
            )
            return False
        message = (error.get("message") or "").strip()
        said = f" ({message})" if message else ""
        if error.get("code") == "session_expired":
            await self._fail(
                RelayError(
                    "session_expired",
                    f"The session reached its maximum duration{said}. Press Start to begin a new "
                    "session (the conversation so far is not carried over).",
                    close_code=1000,
                )
            )
            return False
        if error.get("type") == "server_error":
            await self._fail(
                RelayError(
                    "upstream_server_error",
                    f"{_cap(self.upstream_label)} had an internal error{said}. This is on the "
                    "service's side: press Start to begin a new session; if it keeps happening, "
                    "check the service's status.",
                    close_code=CLOSE_UPSTREAM,
                )
            )
            return False
        return True

    # ------------------------------------------------------------------------------ server tools

    def _maybe_run_tool(self, event: dict[str, Any]) -> None:
        name = event.get("name") or ""
        tool = self.policy.tool(name)
        call_id = event.get("call_id")
        if tool is None or not call_id:
            return
        rid = event.get("response_id") or ""
        self._running.setdefault(rid, set()).add(call_id)
        self._server_call_ids.add(call_id)
        self.stats.tool_calls += 1
        task = asyncio.create_task(self._run_tool(tool, rid, call_id, event.get("arguments") or ""))
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    async def _run_tool(self, tool: Tool, rid: str, call_id: str, arguments: str) -> None:
        started = time.monotonic()
        try:
            output = await asyncio.wait_for(tool.run(arguments), self.policy.tool_timeout_s)
        except asyncio.TimeoutError:
            output = json.dumps(
                {"error": f"{tool.name} did not finish within {self.policy.tool_timeout_s:g} s"}
            )
        log(
            "relay.tool",
            conn=self.conn_id,
            tool=tool.name,
            call_id=call_id,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        try:
            await self._send_upstream({"type": "conversation.item.create", "item": item}, own=True)
        except _UpstreamGone:
            return  # the upstream pump reports it
        self._running.get(rid, set()).discard(call_id)
        await self._maybe_continue(rid)

    async def _maybe_continue(self, rid: str) -> None:
        """After a response whose server tool calls all have outputs: ask for the next one."""
        if self._running.get(rid) or rid not in self._done_status:
            return
        status = self._done_status.pop(rid)
        self._running.pop(rid, None)
        if status == "completed" and not self._closing:
            with contextlib.suppress(_UpstreamGone):
                await self._send_upstream({"type": "response.create"}, own=True)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
