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
* runs server tools on the shared tool turn (:class:`~aoai_realtime.protocol.tools.ToolTurn`,
  as the SDK does): each call once, with the policy's timeout; once the response is done and
  every call has its output, the ``function_call_output`` items, then one ``response.create``
  (only if the response completed);
* resumes the conversation when the service ends the session (``session_expired``, or a
  connection that drops: 1001/1006/1011/...): a new upstream session gets the session
  configuration and the recent finished history again, the page's events wait meanwhile, and the
  page is told with one non-fatal ``relay_notice`` (``session_resumed``); bounded attempts with
  backoff (:class:`~.resume.ResumeOptions`);
* turns every other upstream failure (refused handshake, closed socket, ``server_error``, a
  resume that cannot be made) into exactly one ``relay_error`` event, then closes the client: no
  loops, no half-open state;
* closes the upstream as soon as the client leaves.

Every page frame is parsed once, depth-limited (:func:`~aoai_realtime.protocol.frames.load_client_event`),
decided on the parsed value and re-serialised: no raw path a page can steer. The upstream's hot
events (audio and transcript deltas) are forwarded without decoding the JSON when no translation
is needed; their type is peeked with a regular expression.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..channel import Channel, ChannelClosed
from ..protocol import dialect as _dialect
from ..protocol.conversation import Conversation
from ..protocol.dialect import PREVIEW_SERVER_NAMES, DialectName
from ..protocol.errors import ProtocolError
from ..protocol.events import parse_server_event
from ..protocol.frames import is_plain, load_client_event
from ..protocol.restore import restore_events
from ..protocol.resume import Restore, ResumePolicy, SessionEnd
from ..protocol.tools import TOOL_EVENTS, RunCall, ToolCall, ToolTurn, TurnEnd
from . import telemetry as _telemetry
from .errors import CLOSE_POLICY, CLOSE_UPSTREAM, RelayError, error_event
from .logs import log
from .policy import Policy
from .resume import MAX_UNANSWERED_UPDATES, HeldEvents, ResumeOptions, SessionTracker

__all__ = [
    "Channel",
    "ChannelClosed",
    "Connector",
    "Relay",
    "TRANSITIONS",
    "RelayObserver",
    "RelayState",
    "RelayStats",
]


Connector = Callable[[], Awaitable[Channel]]
"""Opens the upstream channel; raises :class:`RelayError` with a page-ready message on failure.
Called once per upstream session: again for every resume."""

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
_PREVIEW_TO_GA_NAMES = {  # the hot deltas' renames, from the protocol's one table
    k: v for k, v in PREVIEW_SERVER_NAMES.items() if k in _HOT_SERVER_PREVIEW
}
_GA_TO_PREVIEW_NAMES = {v: k for k, v in _PREVIEW_TO_GA_NAMES.items()}
_HOT_CLIENT = frozenset({"input_audio_buffer.append"})
_OUTPUT_ITEM_EVENTS = frozenset(
    {"conversation.item.added", "conversation.item.done", "conversation.item.retrieved"}
)


class _ClientGone(Exception):
    pass


class _UpstreamGone(Exception):
    pass


class _SessionEnded(Exception):
    """The upstream session ended by the service's doing (raised from deep in the reader)."""

    def __init__(self, end: SessionEnd) -> None:
        super().__init__(end.cause)
        self.end = end


class RelayState(enum.Enum):
    """Where one relayed connection is; :data:`TRANSITIONS` says how it moves."""

    CONNECTING = "connecting"
    """Opening the first upstream session."""
    RELAYING = "relaying"
    """Events flow both ways."""
    RESUMING = "resuming"
    """The upstream session ended: a new one is being opened and restored; the page's events
    are held, the new session's events feed the restore."""
    FAILED = "failed"
    """The page was told why (one ``relay_error``); both sides are closing."""
    CLOSED = "closed"
    """Done: the page left, the server shut down, or a failure was reported."""


_S = RelayState
TRANSITIONS: dict[tuple[RelayState, str], RelayState] = {
    # the first upstream session opens, or cannot be opened
    (_S.CONNECTING, "connected"): _S.RELAYING,
    (_S.CONNECTING, "fail"): _S.FAILED,
    # the service ends the session and the conversation is worth carrying over
    (_S.RELAYING, "session_ended"): _S.RESUMING,
    (_S.RELAYING, "fail"): _S.FAILED,
    # a new session acknowledged the restore (held page events go to it), or no attempt worked
    (_S.RESUMING, "restored"): _S.RELAYING,
    (_S.RESUMING, "fail"): _S.FAILED,
    # the page leaves, the server shuts down, or the run ends: from anywhere
    **{(state, "close"): _S.CLOSED for state in RelayState},
}
"""The relay's state machine: ``(state, event) -> next state``. An event missing for the
current state is a bug, raised at once (never a silent half-state)."""


CLIENT_STALL_S = 10.0
"""How long a send to the page may hang before the page counts as not reading (see
:meth:`Relay._watch_client`)."""

# Handshake failures of a resume attempt that are tried again (within the attempt budget);
# any other (credentials, permissions, deployment, rate limit) ends the page's session at once.
_RETRY_CONNECT = frozenset({"upstream_unreachable", "upstream_server_error"})
_TRUNCATE = "conversation.item.truncate"
_OWN_EVENTS_KEPT = 4096


def _peek_type(text: str) -> str | None:
    match = _TYPE_RE.search(text, 0, _PEEK)
    return match.group(1) if match else None


def _rename_type(text: str, new: str) -> str:
    match = _TYPE_RE.search(text, 0, _PEEK)
    assert match is not None
    return text[: match.start(1)] + new + text[match.end(1) :]


def _dumps(event: dict[str, Any]) -> str:
    # ASCII escapes: a lone surrogate a client or the upstream sent stays valid on the wire
    return json.dumps(event, separators=(",", ":"))


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
    resumes: int = 0
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
    ("Azure OpenAI at https://RES.openai.azure.com", "the local engine"). ``resume`` says how
    to resume the conversation when the service ends the session (``None``: never, the page gets
    one ``relay_error`` as for any other failure); ``connect`` is then called again for every
    new upstream session.
    """

    def __init__(
        self,
        client: Channel,
        connect: Connector,
        *,
        dialect: DialectName = "ga",
        client_dialect: DialectName = "ga",
        policy: Policy | None = None,
        upstream_label: str = "the upstream service",
        observer: RelayObserver | None = None,
        conn_id: str | None = None,
        preview_turn_detection_none: bool = True,
        resume: ResumeOptions | None = None,
        refresh_credential: Callable[[], None] | None = None,
        client_stall_s: float = CLIENT_STALL_S,
        upstream_kind: str | None = None,
    ) -> None:
        self.client = client
        self.client_stall_s = client_stall_s
        """A page whose send has not gone through for this long (between one and two times
        it) is not reading: it is closed (1008), so it cannot hold the session's memory."""
        self.connect = connect
        self.refresh_credential = refresh_credential
        """Forgets a cached token (after a 401 on a resume attempt, one more try gets a fresh
        one); ``None`` when the credential cannot be refreshed (a fixed key)."""
        self.state = RelayState.CONNECTING
        self.dialect: DialectName = dialect
        self.client_dialect: DialectName = client_dialect
        self.policy = policy or Policy()
        self.upstream_label = upstream_label
        self.observer = observer
        self.conn_id = conn_id or uuid.uuid4().hex[:8]
        self._azure_preview = preview_turn_detection_none
        self.stats = RelayStats(self.conn_id)
        self.upstream_kind = upstream_kind  # "local" or "azure", for the telemetry
        self.telemetry = _telemetry.session()  # no-op hooks unless OpenTelemetry is on
        self.upstream: Channel | None = None
        self._client_lock = asyncio.Lock()
        self._upstream_lock = asyncio.Lock()
        self._reported: set[str] = set()
        self._page_instructions: str | None = None
        self._event_id: str | None = None  # the page event being handled, for the answers
        self._own_event_ids: OrderedDict[str, None] = OrderedDict()  # bounded: _own()
        self._initial_id: str | None = None
        self._swallow_updated = False
        # server tools: the tool turn decides what runs and what is sent once it has
        self._tools = ToolTurn(lambda name: self.policy.tool(name) is not None)
        self._tool_tasks: set[asyncio.Task[None]] = set()
        # resume: the conversation so far, the accepted session, the page's events held while a
        # new upstream session is set up
        self.resume = resume
        self._conversation: Conversation | None = None
        self._keep_items = 0
        self._session = SessionTracker()
        self._held = HeldEvents()
        self._policy = ResumePolicy()
        self._restore: Restore | None = None
        self._restore_deadline = 0.0
        self._ended: SessionEnd | None = None  # the session being resumed
        self._cut = False  # a reply in progress was cut short by the end
        self._last_failure: str | None = None  # why the last resume attempt failed
        self._restored_ids: set[str] = set()
        self._earlier_ids: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        if resume is not None:
            self._conversation = Conversation()
            self._keep_items = 2 * resume.max_items + 50
            self._held = HeldEvents(
                max_audio_ms=resume.held_audio_ms, max_events=resume.max_held_events
            )
            self._policy = ResumePolicy(resume.budget())
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
        with self.telemetry.running(self):
            return await self._run()

    async def _run(self) -> RelayStats:
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
        if self._terminal:  # the server shut down meanwhile
            self._close_in_background(self.upstream)
            return self._finish()
        self._to("connected")
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
                asyncio.create_task(self._watch_client(), name=f"relay-{self.conn_id}-watch"),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except _UpstreamGone:
            await self._upstream_gone()
        finally:
            self._to("close")
            for task in pumps:
                task.cancel()
            for task in list(self._tool_tasks):
                task.cancel()
            await asyncio.gather(*pumps, *self._tool_tasks, return_exceptions=True)
            await self._close_both()
            await asyncio.gather(*self._background, return_exceptions=True)
        return self._finish()

    async def close(self) -> None:
        """End the relay from outside (server shutdown): both sides are closed."""
        self._to("close")
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
            resumes=s.resumes,
        )
        return s

    async def _close_both(self, code: int = 1000, reason: str = "") -> None:
        closers = [self.client.close(code, reason)]
        if self.upstream is not None:
            closers.append(self.upstream.close(code, reason))
        await asyncio.gather(*closers, return_exceptions=True)

    async def _fail(self, exc: RelayError) -> None:
        """Tell the client once, then close both sides."""
        if self._terminal:
            return
        self._to("fail")
        self.stats.error_code = exc.code
        self.telemetry.failed(exc.code)
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

    def _own(self, event_id: str) -> None:
        """Note an event the relay sent itself (its refusal is not the page's business); the
        newest few thousand are kept, a long session does not grow."""
        self._own_event_ids[event_id] = None
        while len(self._own_event_ids) > _OWN_EVENTS_KEPT:
            self._own_event_ids.popitem(last=False)

    def _to(self, event: str) -> None:
        """Move the state machine (:data:`TRANSITIONS`)."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise RuntimeError(f"relay {self.conn_id}: {event!r} in state {self.state.value}")
        self.state = new

    @property
    def _terminal(self) -> bool:
        return self.state in (RelayState.FAILED, RelayState.CLOSED)

    async def _upstream_gone(self) -> None:
        if self._terminal:
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

    async def _watch_client(self) -> None:
        """Close a page that stopped reading: a send to it that has not gone through for a whole
        :attr:`client_stall_s` (nothing more reached it meanwhile). Costs one timer per period,
        nothing per message."""
        sent = -1
        while True:
            await asyncio.sleep(self.client_stall_s)
            if self._client_lock.locked() and self.stats.to_client == sent:
                log(
                    "relay.client_not_reading",
                    30,
                    conn=self.conn_id,
                    stalled_s=self.client_stall_s,
                    to_client=sent,
                )
                self.stats.closed_by = self.stats.closed_by or "relay"
                self.stats.error_code = "client_not_reading"
                await self.client.close(CLOSE_POLICY, "client_not_reading")
                return
            sent = self.stats.to_client

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

    async def _send_upstream_text(self, text: str) -> bool:
        """Send one message upstream; returns False when it was held for the next upstream
        session instead (a resume is under way, or the upstream has just gone and may be
        resumed). Raises :class:`_UpstreamGone` when the upstream has gone for good."""
        assert self.upstream is not None
        async with self._upstream_lock:
            if self.state is RelayState.RESUMING:
                self._hold(text)
                return False
            try:
                await self.upstream.send(text)
            except ChannelClosed:
                if self.resume is None or self._terminal:
                    raise _UpstreamGone from None
                # the upstream pump sees the end and decides whether to resume
                self._hold(text)
                return False
        self.stats.to_upstream += 1
        return True

    def _hold(self, text: str) -> None:
        audio = _peek_type(text) in _HOT_CLIENT
        conv = self._conversation
        bytes_per_ms = conv.input_bytes_per_ms if conv is not None else 48
        self._held.add(text, audio=audio, bytes_per_ms=bytes_per_ms)

    async def _send_upstream(self, event: dict[str, Any], *, own: bool = False) -> str | None:
        """Send one GA-vocabulary client event upstream, in the upstream's dialect; an event of
        the relay's own (``own``) gets an ``event_id``, which is returned."""
        event_id: str | None = None
        if own:
            event_id = f"relay_{uuid.uuid4().hex[:20]}"
            event = {**event, "event_id": event_id}
            self._own(event_id)
        pending = None
        if self.resume is not None and event.get("type") == "session.update":
            # noted, so a new upstream session gets the configuration the upstream accepted
            if not event.get("event_id"):
                event = {**event, "event_id": f"relay_{uuid.uuid4().hex[:20]}"}
            session = event.get("session")
            if isinstance(session, dict):
                pending = self._session.sent(str(event["event_id"]), session)
        if self.observer is not None:
            self.observer("client", event)
        if self.dialect == "preview":
            event = _dialect.ga_to_preview_client(event, azure=self._azure_preview)
        sent = await self._send_upstream_text(_dumps(event))
        if pending is not None and not sent:
            pending.held = True
        return event_id

    async def _notice(self, code: str, message: str, param: str | None = None) -> None:
        """A non-fatal ``error`` of the middle tier's, answering the page's event in hand."""
        event = error_event(code, message, param=param, event_id=self._event_id)
        if self.observer is not None:
            self.observer("relay", event)
        await self._send_client(event)

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
        if not error.get("event_id"):
            error["event_id"] = self._event_id
        if not error.get("event_id"):  # the frame did not parse: its id, if it is there early
            match = re.search(r'"event_id"\s*:\s*"([^"\\]+)"', text[:500])
            error["event_id"] = match.group(1) if match else None
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
        """One page frame: parsed once (depth-limited), decided on the parsed value, and sent
        upstream re-serialised, never as the page wrote it, so a frame cannot look like one
        event here and be another upstream (duplicate keys, a nested ``type`` first)."""
        self._event_id = None
        try:
            event = load_client_event(text)
        except ProtocolError as exc:
            await self._bad_client_event(text, exc)
            return
        event_id = event.get("event_id")
        self._event_id = event_id if isinstance(event_id, str) else None
        if event["type"] in _HOT_CLIENT:  # an audio append: the same in both dialects
            if self.observer is not None:
                self.observer("client", event)
            # passed on as written only when the text cannot mean anything else
            await self._send_upstream_text(text if is_plain(text, event) else _dumps(event))
            return
        if self.client_dialect == "preview":
            event = _dialect.preview_to_ga_client(event)  # a ProtocolError is answered
        kind = event.get("type")
        self.telemetry.client_event(event)
        if kind == "session.update":
            if self._session.unanswered >= MAX_UNANSWERED_UPDATES:
                await self._notice(
                    "too_many_pending_updates",
                    f"{self._session.unanswered} session.update events are waiting for their "
                    "session.updated: wait for the answers before sending more. This one was "
                    "not applied.",
                )
                return
            result = self.policy.session_update(event, dialect=self.dialect)
            session = event.get("session")
            if (
                isinstance(session, dict)
                and isinstance(session.get("instructions"), str)
                and "instructions" in self.policy.settable
            ):
                self._page_instructions = session["instructions"]
        elif kind == "response.create":
            result = self.policy.response_create(
                event, dialect=self.dialect, server_call=self._tools.owns
            )
        elif kind == "conversation.item.create":
            item = event.get("item")
            if (
                isinstance(item, dict)
                and item.get("type") == "function_call_output"
                and self._tools.owns(item.get("call_id"))
            ):
                await self._server_call_refused(str(item["call_id"]))
                return
            result = self.policy.item_create(event)
        else:
            if kind == _TRUNCATE and self._earlier_ids and self._truncate_locally(event):
                return
            await self._send_upstream(event)
            return
        if result.refused:
            await self._refused(result.refused)
        if result.event is None:
            return
        await self._send_upstream(result.event)

    async def _server_call_refused(self, call_id: str) -> None:
        """A page's output for a server tool's call: the server gives the model that output."""
        self.stats.refused.append("item.call_id")
        log("relay.policy_violation", conn=self.conn_id, param="item.call_id", call_id=call_id)
        await self._notice(
            "policy_violation",
            f"The call {call_id[:64]!r} is a server tool's call: the middle tier gives the model "
            "its output, a client cannot. The item was not added.",
            "item.call_id",
        )

    def _truncate_locally(self, event: dict[str, Any]) -> bool:
        """A truncation of an item from an earlier upstream session (the new session holds it as
        text, if at all): applied to the log, so a later resume carries over only what was
        heard, and not sent upstream, which would refuse it."""
        item_id = event.get("item_id")
        conv = self._conversation
        if conv is None or not isinstance(item_id, str) or item_id not in self._earlier_ids:
            return False
        try:
            index = int(event.get("content_index") or 0)
            end_ms = int(event.get("audio_end_ms") or 0)
        except (TypeError, ValueError):
            return False
        conv.truncate(item_id, index, end_ms)
        log("relay.truncated_locally", conn=self.conn_id, item_id=item_id, audio_end_ms=end_ms)
        return True

    # ------------------------------------------------------------------------------ up -> client

    async def _upstream_pump(self) -> None:
        """The one reader of the upstream: the current session's events go to the page; while
        resuming, the new session's feed the restore; when a session ends, resume or fail."""
        try:
            while True:
                upstream = self.upstream
                assert upstream is not None
                try:
                    text = await self._receive_upstream(upstream)
                except asyncio.TimeoutError:  # only while restoring
                    assert self.resume is not None
                    timeout = self.resume.restore_timeout_s
                    why = f"the new session did not answer within {timeout:g} s"
                    if not await self._attempt_failed(why):
                        return
                    continue
                try:
                    if text is None:
                        end = SessionEnd("closed", upstream.close_reason, upstream.close_code)
                        raise _SessionEnded(end)
                    self.stats.from_upstream += 1
                    await self._from_upstream(text)
                except _SessionEnded as ended:
                    if not await self._session_ended(ended.end):
                        return
        except _ClientGone:
            self.stats.closed_by = self.stats.closed_by or "client"
        except _UpstreamGone:
            await self._upstream_gone()
        except Exception as exc:  # a bug must still end in one clear message, never silence
            await self._internal_error(exc)

    async def _receive_upstream(self, upstream: Channel) -> str | None:
        if self.state is not RelayState.RESUMING:
            return await upstream.receive()
        left = self._restore_deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(upstream.receive(), left)

    async def _from_upstream(self, text: str) -> None:
        if self.state is RelayState.RESUMING:
            await self._restoring(text)
            return
        kind = _peek_type(text)
        if kind in self._hot_server:
            if self.telemetry.waiting:  # a turn's first audio: one attribute test per delta
                self.telemetry.output_delta(kind)
            if self._conversation is not None:
                ga_kind = (
                    _PREVIEW_TO_GA_NAMES.get(kind, kind) if self.dialect == "preview" else kind
                )
                self._conversation.apply_delta_text(ga_kind, text)
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
            if self._conversation is not None:
                if self._restored_ids and _is_restore_echo(event, self._restored_ids):
                    continue  # the page already shows the restored items
                self._fold(event)
            self.telemetry.server_event(event)
            if not await self._handle_server_event(event):
                continue
            if self._terminal:
                return
            await self._send_client(event)

    async def _handle_server_event(self, event: dict[str, Any]) -> bool:
        """Act on an upstream event; return whether the client should see it (possibly after
        an in-place change)."""
        kind = event.get("type")
        if kind == "error":
            return await self._on_error(event)
        if kind in TOOL_EVENTS:
            for effect in self._tools.on_event(event):
                if isinstance(effect, RunCall):
                    self._start_tool(effect.call)
                else:
                    await self._end_tool_turn(effect)
            return True
        if kind == "session.updated":
            self._session.answered()
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
            if item.get("type") == "function_call_output" and self._tools.ran(item.get("call_id")):
                return False
        return True

    async def _on_error(self, event: dict[str, Any]) -> bool:
        error = event.get("error") or {}
        if error.get("event_id"):
            self._session.refused(error.get("event_id"))
        if (
            error.get("code") == "session_expired"
            and self.resume is not None
            and not self._terminal
        ):
            raise _SessionEnded(SessionEnd("session_expired", (error.get("message") or "").strip()))
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
            # The service failed one request (a response ends "failed"); the session goes on,
            # and the page hears of it as the service said it.
            log("relay.upstream_server_error", 30, conn=self.conn_id, message=message)
        return True

    # ------------------------------------------------------------------------------ resume

    def _fold(self, event: dict[str, Any]) -> None:
        """One decoded upstream event into the conversation kept for a resume (bounded)."""
        conv = self._conversation
        assert conv is not None
        conv.apply(parse_server_event(event))
        if event.get("type") in ("response.done", "conversation.item.added"):
            conv.prune(self._keep_items)

    def _restore_items(self) -> list[dict[str, Any]]:
        assert self.resume is not None and self._conversation is not None
        events = restore_events(
            self._conversation, max_items=self.resume.max_items, max_chars=self.resume.max_chars
        )
        return [event["item"] for event in events]

    async def _session_ended(self, end: SessionEnd) -> bool:
        """The upstream session ended: resume it (True: relay on), or tell the page once and
        close (False). While resuming, it is the new session that ended: try the next one."""
        if self.state is RelayState.RESUMING:
            return await self._attempt_failed(end.describe())
        if self._terminal:
            return False
        if self.resume is None:
            await self._upstream_gone()
            return False
        if not end.resumable:
            await self._upstream_gone()  # a deliberate close: today's message
            return False
        items = self._restore_items()
        if len(items) < self.resume.min_items:
            log("relay.not_resumed", conn=self.conn_id, cause=end.cause, items=len(items))
            await self._end_without_resume(end)
            return False
        await self._begin_resume(end)
        return await self._next_attempt()

    async def _end_without_resume(self, end: SessionEnd) -> None:
        if end.cause == "session_expired":
            said = f" ({end.detail})" if end.detail else ""
            await self._fail(
                RelayError(
                    "session_expired",
                    f"The session reached its maximum duration{said}. Press Start to begin a new "
                    "session (the conversation so far is not carried over).",
                    close_code=1000,
                )
            )
        else:
            await self._upstream_gone()

    def _close_in_background(self, channel: Channel | None) -> None:
        if channel is None:
            return
        task = asyncio.create_task(channel.close(1000, "session ended"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _begin_resume(self, end: SessionEnd) -> None:
        """Hold the page's events from now on, and tie up the old session's loose ends: its
        server tools, its unanswered updates, its response in progress."""
        assert self._conversation is not None
        async with self._upstream_lock:
            self._to("session_ended")
        self._close_in_background(self.upstream)
        log("relay.session_ended", conn=self.conn_id, cause=end.cause, code=end.close_code)
        self.telemetry.session_ended(end.cause, end.close_code)
        self._ended = end
        self._last_failure = None
        for task in list(self._tool_tasks):
            task.cancel()
        self._tools.reset()
        self._swallow_updated = False
        dropped = self._session.forget_unanswered()
        if dropped:
            log("relay.session_update_lost", 30, conn=self.conn_id, updates=dropped)
        cut = self._conversation.end_responses()
        self._cut = bool(cut)
        for rid, output in cut.items():
            # the page must not wait for the end of a response that will never end
            await self._send_synthetic(
                {
                    "type": "response.done",
                    "response": {
                        "object": "realtime.response",
                        "id": rid,
                        "status": "cancelled",
                        "status_details": {"type": "cancelled", "reason": "session_ended"},
                        "output": output,
                    },
                }
            )
        self._earlier_ids = set(self._conversation.order)

    async def _attempt_failed(self, why: str) -> bool:
        """The new session failed while being set up: close it, try the next attempt."""
        log("relay.resume_attempt_failed", 30, conn=self.conn_id, why=why)
        self.telemetry.resume_failed(why)
        self._last_failure = why
        self._restore = None
        self._close_in_background(self.upstream)
        return await self._next_attempt()

    async def _next_attempt(self) -> bool:
        """Open new upstream sessions (within the budget) until one takes the restore events;
        True then (its events now feed the restore), False after one ``relay_error``."""
        assert self.resume is not None and self._ended is not None
        end = self._ended
        while True:
            delay = self._policy.next_attempt(time.monotonic())
            if delay is None:
                await self._fail(self._exhausted_error(end, self._last_failure))
                return False
            if delay:
                await asyncio.sleep(delay)
            if self._terminal:
                return False
            try:
                new = await self.connect()
            except RelayError as exc:
                verdict = (
                    self._policy.after_failure(
                        exc.failure, can_refresh=self.refresh_credential is not None
                    )
                    if exc.failure is not None
                    else ("retry" if exc.code in _RETRY_CONNECT else "give_up")
                )
                if verdict == "give_up":
                    await self._fail(self._resume_failed(end, exc))
                    return False
                if verdict == "refresh_credential" and self.refresh_credential is not None:
                    self.refresh_credential()
                log("relay.resume_retry", 30, conn=self.conn_id, code=exc.code)
                self.telemetry.resume_failed(exc.message)
                self._last_failure = exc.message
                continue
            except Exception as exc:  # a connector bug must still end in one clear message
                log("relay.connect_failed", 40, conn=self.conn_id, error=repr(exc))
                await self._fail(
                    self._resume_failed(
                        end,
                        RelayError(
                            "upstream_unreachable",
                            f"Could not connect to {self.upstream_label} "
                            f"({type(exc).__name__}: {exc}). Check the server's log, then press "
                            "Start again.",
                        ),
                    )
                )
                return False
            if self._terminal:
                self._close_in_background(new)
                return False
            if await self._send_restore(new):
                return True
            self._last_failure = SessionEnd("closed", new.close_reason, new.close_code).describe()
            log("relay.resume_attempt_failed", 30, conn=self.conn_id, why=self._last_failure)
            self._close_in_background(new)

    async def _send_restore(self, new: Channel) -> bool:
        """Send a new upstream session the accepted session configuration and the recent
        finished items, and make it the upstream (the reader feeds its answers to the restore);
        False if it closed at once."""
        assert self.resume is not None
        initial = self.policy.initial_update()
        session = self._session.restore_session(initial["session"] if initial else None)
        if self.dialect == "ga":
            session.setdefault("type", "realtime")
        restore = Restore(
            session or None,
            self._restore_items(),
            new_event_id=lambda: f"relay_{uuid.uuid4().hex[:20]}",
            new_item_id=lambda: f"item_{uuid.uuid4().hex[:24]}",
        )
        for event in restore.events:
            self._own(event["event_id"])
            if self.observer is not None:
                self.observer("client", event)
            wire = event
            if self.dialect == "preview":
                wire = _dialect.ga_to_preview_client(event, azure=self._azure_preview)
            try:
                await new.send(_dumps(wire))
            except ChannelClosed:
                return False
            self.stats.to_upstream += 1
        self.upstream = new
        self._restore = restore
        self._restored_ids = restore.item_ids
        self._restore_deadline = time.monotonic() + self.resume.restore_timeout_s
        if restore.done:
            await self._restored()
        return True

    async def _restoring(self, text: str) -> None:
        """An event of the new session while it is set up: it answers the restore, or belongs
        to no one yet (the page's events are still held)."""
        restore = self._restore
        assert restore is not None and self._conversation is not None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            return
        if not isinstance(raw, dict):
            return
        batch = _dialect.preview_to_ga_server(raw) if self.dialect == "preview" else [raw]
        for event in batch:
            if self.observer is not None:
                self.observer("server", event)
            kind = event.get("type")
            if kind in ("session.created", "session.updated"):
                self._fold(event)
            restore.on_event(event)
            if kind == "error":
                error = event.get("error") or {}
                log(
                    "relay.restore_refused",
                    30,
                    conn=self.conn_id,
                    code=error.get("code"),
                    message=error.get("message"),
                )
            if restore.ended is not None:
                raise _SessionEnded(restore.ended)
        if restore.done:
            await self._restored()

    async def _restored(self) -> None:
        """The new session holds the conversation: tell the page, then let its held events go."""
        restore, end = self._restore, self._ended
        assert restore is not None and end is not None
        self._restore = None
        # The notice goes out before the held page events reach the new session, so the page
        # reads it before any reply to them.
        await self._send_synthetic(
            error_event(
                "session_resumed",
                end.resumed_message(restore.accepted, self._cut),
                error_type="relay_notice",
            )
        )
        await self._install()
        self._policy.succeeded()
        self.stats.resumes += 1
        self.telemetry.resumed(restore.accepted)
        log(
            "relay.resumed",
            conn=self.conn_id,
            cause=end.cause,
            items=restore.accepted,
            held_dropped_audio_ms=round(self._held.dropped_audio_ms),
        )

    async def _send_synthetic(self, event: dict[str, Any]) -> None:
        """An event the relay makes up for the page (GA vocabulary)."""
        event.setdefault("event_id", f"relay_{uuid.uuid4().hex[:20]}")
        if self.observer is not None:
            self.observer("relay", event)
        await self._send_client(event)

    async def _install(self) -> None:
        """Relay again, sending the page's held events to the new session first, in order."""
        async with self._upstream_lock:
            self._to("restored")
            new = self.upstream
            assert new is not None
            held = self._held.take()
            for i, text in enumerate(held):
                if _peek_type(text) == _TRUNCATE and self._held_truncate_is_local(text):
                    continue
                try:
                    await new.send(text)
                except ChannelClosed:
                    self._held.put_back(held[i:])  # the next resume sends them
                    return
                self.stats.to_upstream += 1

    def _held_truncate_is_local(self, text: str) -> bool:
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            return False
        return isinstance(event, dict) and self._truncate_locally(event)

    def _exhausted_error(self, end: SessionEnd, last: str | None) -> RelayError:
        assert self.resume is not None
        window = self.resume.window_s
        span = f"{window / 60:g} minutes" if window >= 60 else f"{window:g} s"
        why = f" (the last attempt: {last[:1].lower() + last[1:]})" if last else ""
        return RelayError(
            "session_expired" if end.cause == "session_expired" else "upstream_closed",
            f"{end.describe()}. The middle tier already tried {self.resume.max_attempts} times in "
            f"the last {span} to go on in a new session{why}, so it stops here: press Start to "
            "begin a new session.",
            close_code=1000 if end.cause == "session_expired" else CLOSE_UPSTREAM,
        )

    def _resume_failed(self, end: SessionEnd, exc: RelayError) -> RelayError:
        return RelayError(
            exc.code,
            f"{end.describe()}, and a new session could not be opened: {exc.message}",
            close_code=exc.close_code,
        )

    # ------------------------------------------------------------------------------ server tools

    def _start_tool(self, call: ToolCall) -> None:
        self.stats.tool_calls += 1
        task = asyncio.create_task(self._run_tool(call))
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    async def _run_tool(self, call: ToolCall) -> None:
        tool = self.policy.tool(call.name)
        assert tool is not None  # the tool turn runs only the policy's tools
        started = time.monotonic()
        output = await self.telemetry.tool(
            tool.name, call.call_id, tool.run(call.arguments, timeout_s=self.policy.tool_timeout_s)
        )
        log(
            "relay.tool",
            conn=self.conn_id,
            tool=tool.name,
            call_id=call.call_id,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        end = self._tools.completed(call.call_id, output)
        if end is not None:
            await self._end_tool_turn(end)

    async def _end_tool_turn(self, end: TurnEnd) -> None:
        """The outputs of a done response's server tools, then its follow-up response."""
        with contextlib.suppress(_UpstreamGone):  # the upstream pump reports it
            for event in end.events:
                await self._send_upstream(event, own=True)
            if end.follow_up is not None and not self._terminal:
                await self._send_upstream(end.follow_up, own=True)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _is_restore_echo(event: dict[str, Any], restored: set[str]) -> bool:
    """The upstream's echo of an item the relay restored (the page already shows it)."""
    if event.get("type") not in ("conversation.item.added", "conversation.item.done"):
        return False
    item = event.get("item")
    return isinstance(item, dict) and item.get("id") in restored
