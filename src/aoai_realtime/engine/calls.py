"""The engine's WebRTC calls and client secrets, over HTTP and in process.

HTTP endpoints (``/openai/v1/...``, Azure's GA paths, and ``/v1/...``, OpenAI's):

* ``POST .../realtime/calls`` - an SDP offer (``Content-Type: application/sdp``), or OpenAI's
  ``multipart/form-data`` with the fields ``sdp`` and ``session`` (a GA session object applied
  before the call starts). ``201`` with the SDP answer (``application/sdp``) and
  ``Location: .../realtime/calls/rtc_...``; ``400`` with a message for a bad offer or session;
  ``401`` as for the WebSocket (the engine's key, or an ephemeral key). ``?model=`` and
  ``?fault=`` as on the WebSocket.
* ``POST .../realtime/calls/{call_id}/hangup`` - end the call (``200``; ``404`` if unknown).
* ``GET .../realtime?call_id=rtc_...`` - the sideband WebSocket (routed here by the realtime
  handler): the call's events, and client events into its session. ``404``
  (``call_id_not_found``) before the upgrade for a call that does not exist (any more).
* ``POST .../realtime/client_secrets`` - mint an ephemeral key
  (:mod:`~aoai_realtime.engine.client_secrets`).

In process (the middle tier's in-process engine, and tests): :meth:`CallRegistry.create` is
``POST /calls`` without HTTP (:class:`CallAnswer` or :class:`EngineRefusal`),
``RunningEngine.open_channel(query={"call_id": ...})`` attaches a sideband over an in-memory
channel, :meth:`CallRegistry.mint` is ``POST /client_secrets``, :meth:`CallRegistry.hangup` ends
a call, :meth:`CallRegistry.wait_calls` waits for a number of live calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import BodyPartReader, web

from .._changes import Changes
from ..channel import AiohttpChannel, Channel, memory_pair
from ..protocol.dialect import Dialect
from ..protocol.errors import ProtocolError
from . import ids
from .admission import GA_PATH, OPENAI_PATH, Admission, EngineRefusal, Query, refusal
from .client_secrets import (
    ClientSecrets,
    admit_key,
    admit_with_secrets,
    offers_ephemeral_key,
    read_request,
)
from .config import DEFAULT_MODEL, EngineConfig
from .faults import Faults
from .sdp import OfferError, check_offer

if TYPE_CHECKING:
    from .webrtc import Call, SessionHost

log = logging.getLogger(__name__)

__all__ = [
    "CALL_ID_PREFIX",
    "CALLS_PATHS",
    "CLIENT_SECRETS_PATHS",
    "CallAnswer",
    "CallRegistry",
    "add_routes",
    "call_not_found",
]

CALL_ID_PREFIX = "rtc"
CALLS_PATHS = (f"{GA_PATH}/calls", f"{OPENAI_PATH}/calls")
CLIENT_SECRETS_PATHS = (f"{GA_PATH}/client_secrets", f"{OPENAI_PATH}/client_secrets")
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CallAnswer:
    """A call made: its id, the SDP answer, and the ``Location`` that names it."""

    call_id: str
    sdp: str
    location: str


def call_not_found(call_id: str) -> EngineRefusal:
    """The service's answer for a ``call_id`` with no call (the sideband, a hangup)."""
    return EngineRefusal(
        404,
        {},
        {
            "error": {
                "message": f"No session found for the provided call_id ({call_id[:64]}).",
                "type": "invalid_request_error",
                "code": "call_id_not_found",
                "param": "call_id",
            }
        },
    )


class EngineLike(Protocol):
    """What the registry needs of its :class:`~aoai_realtime.engine.server.Engine`."""

    config: EngineConfig
    tasks: set[asyncio.Task[None]]

    def adopt(self, conn: Any) -> Any: ...

    def serve(self, conn: Any) -> Awaitable[None]: ...


NewConnection = Callable[[Channel, Admission], "SessionHost"]
"""Makes an uncounted connection (a session) on a channel: the engine's ``Connection``."""


class CallRegistry:
    """The live calls of one engine, and the client secrets it issued.

    ``new_connection`` makes the engine's connection (its session) for a channel, uncounted:
    a call's is counted from when it starts (``engine.adopt``) until it ends.
    """

    def __init__(self, engine: EngineLike, new_connection: NewConnection) -> None:
        self.engine = engine
        self.new_connection = new_connection
        self.secrets = ClientSecrets()
        self.calls: dict[str, Call] = {}
        self._changes = Changes()

    def __len__(self) -> int:
        return len(self.calls)

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    # ------------------------------------------------------------------ calls

    async def create(
        self,
        sdp: str,
        *,
        session: Mapping[str, Any] | None = None,
        query: Query | None = None,
        headers: Mapping[str, str] | None = None,
        path: str = CALLS_PATHS[0],
    ) -> CallAnswer:
        """``POST /calls`` without HTTP: check the credential and the offer, make the call
        (``session``, then the client secret's session, applied before it starts), start it.
        Raises :class:`EngineRefusal` (400, 401, 501) with the body HTTP would carry."""
        config = self.engine.config
        merged: dict[str, Any] = dict(query or {})
        form_model = (session or {}).get("model")
        if not _first(merged, "model") and isinstance(form_model, str) and form_model:
            merged["model"] = form_model
        admission, secret = admit_with_secrets(
            config, self.secrets, GA_PATH, merged, headers, default_model=DEFAULT_MODEL
        )
        try:
            offer = check_offer(sdp)
        except OfferError as exc:
            raise refusal(400, "invalid_offer", str(exc)) from None
        try:
            from . import webrtc
        except ImportError as exc:
            raise refusal(
                501,
                "webrtc_unavailable",
                "This engine cannot take WebRTC calls: aiortc is not installed (pip install "
                f"'aoai-realtime[webrtc]'; {exc}).",
            ) from None
        presets = [s for s in ((secret.session if secret else None), session) if s]
        call_id = ids.new_id(CALL_ID_PREFIX)

        async def close_session(host: SessionHost) -> None:
            await host.session.close()

        try:
            call, answer = await webrtc.open_call(
                call_id,
                lambda channel: self.new_connection(channel, admission),
                sdp,
                offer,
                [dict(p) for p in presets],
                serve=self.engine.serve,
                close_session=close_session,
                connect_timeout_s=config.call_connect_timeout_s,
                media_timeout_s=config.call_media_timeout_s,
            )
        except ProtocolError as exc:
            raise refusal(400, exc.code or "invalid_session", f"Invalid 'session': {exc}") from None
        except ValueError as exc:
            raise refusal(
                400, "invalid_offer", f"The SDP offer could not be used: {exc}."
            ) from None
        self.calls[call_id] = call
        self.engine.adopt(call.host)  # a session of the engine, counted until its run ends
        self._notify()
        task = asyncio.create_task(call.run(), name=f"webrtc call {call_id}")
        self.engine.tasks.add(task)
        task.add_done_callback(self.engine.tasks.discard)
        task.add_done_callback(lambda _: self.forget(call))  # counted until it has all stopped
        return CallAnswer(call_id, answer, f"{path.rstrip('/')}/{call_id}")

    def forget(self, call: Call) -> None:
        """A call whose run has ended, everything of it stopped."""
        if self.calls.get(call.id) is call:
            del self.calls[call.id]
            self._notify()

    async def hangup(self, call_id: str) -> None:
        """End a call and wait until everything of it has stopped (404 if unknown)."""
        call = self.calls.get(call_id)
        if call is None:
            raise call_not_found(call_id)
        call.end("hung up")
        await call.ended.wait()

    def _notify(self) -> None:
        self._changes.notify()

    async def wait_calls(self, count: int, timeout: float = 10.0) -> None:
        """Return once exactly ``count`` calls are live; ``TimeoutError`` after ``timeout``
        seconds (woken by each call that starts or ends, never polled)."""
        await self._changes.wait_for(lambda: len(self.calls), count, timeout, "the engine", "calls")

    # ------------------------------------------------------------------ sidebands

    def sideband_call(self, query: Query, headers: Mapping[str, str] | None) -> Call:
        """The call a sideband handshake names, its credential checked (401, 404)."""
        admit_key(self.engine.config, self.secrets, query, headers)
        call_id = _first(query, "call_id") or ""
        call = self.calls.get(call_id)
        if call is None or call.channel.ended.is_set():
            raise call_not_found(call_id)
        return call

    def open_sideband(self, query: Query, headers: Mapping[str, str] | None) -> Channel:
        """A sideband over an in-memory channel: the client's end (closing it detaches)."""
        call = self.sideband_call(query, headers)
        ours, theirs = memory_pair()
        task = asyncio.create_task(call.serve_sideband(ours), name=f"sideband {call.id}")
        self.engine.tasks.add(task)
        task.add_done_callback(self.engine.tasks.discard)
        return theirs

    # ------------------------------------------------------------------ client secrets

    async def mint(
        self, body: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """``POST /client_secrets`` without HTTP: ``{"value", "expires_at", "session"}``.

        The session is checked as the session of a call would be (the same session object
        applies it, so what it refuses is refused here with 400) and shown in full.
        """
        if offers_ephemeral_key({}, headers):
            raise refusal(
                401,
                "invalid_api_key",
                "An ephemeral key cannot mint client secrets: use the server's own key.",
            )
        admit_key(self.engine.config, self.secrets, {}, headers)
        session, seconds = read_request(body)
        model = (session or {}).get("model")
        name = model if isinstance(model, str) and model else DEFAULT_MODEL
        probe = self.new_connection(memory_pair()[0], Admission(Dialect.GA, name, Faults()))
        try:
            if session is not None:
                await probe.preset(session)
            shown = probe.session.session_object()
        except ProtocolError as exc:
            raise refusal(400, exc.code or "invalid_value", f"Invalid 'session': {exc}") from None
        finally:
            await probe.session.close()
        for key in ("id", "expires_at"):
            shown.pop(key, None)
        secret = self.secrets.issue(session, seconds)
        return {"value": secret.value, "expires_at": secret.expires_at, "session": shown}


# ------------------------------------------------------------------------------ HTTP


def add_routes(app: web.Application, engine_key: web.AppKey[Any]) -> None:
    """Register the calls and client-secrets endpoints on the engine's app."""

    def registry(request: web.Request) -> CallRegistry:
        calls: CallRegistry = request.app[engine_key].calls
        return calls

    async def post_call(request: web.Request) -> web.Response:
        calls = registry(request)
        try:
            sdp, session = await _read_offer(request)
            query = {name: request.query.getall(name) for name in request.query}
            answer = await calls.create(
                sdp, session=session, query=query, headers=request.headers, path=request.path
            )
        except EngineRefusal as exc:
            return _refused(exc)
        return web.Response(
            status=201,
            text=answer.sdp,
            content_type="application/sdp",
            headers={"Location": answer.location},
        )

    async def hangup(request: web.Request) -> web.Response:
        calls = registry(request)
        try:
            admit_key(calls.engine.config, calls.secrets, {}, request.headers)
            await calls.hangup(request.match_info["call_id"])
        except EngineRefusal as exc:
            return _refused(exc)
        return web.Response(status=200)

    async def client_secrets(request: web.Request) -> web.Response:
        calls = registry(request)
        try:
            body = await _read_json(request)
            return web.json_response(await calls.mint(body, headers=request.headers))
        except EngineRefusal as exc:
            return _refused(exc)

    for path in CALLS_PATHS:
        app.router.add_post(path, post_call)
        app.router.add_post(path + "/{call_id}/hangup", hangup)
    for path in CLIENT_SECRETS_PATHS:
        app.router.add_post(path, client_secrets)


async def sideband(request: web.Request, calls: CallRegistry) -> web.StreamResponse:
    """The sideband WebSocket (``?call_id=``): refusals before the upgrade."""
    query = {name: request.query.getall(name) for name in request.query}
    try:
        call = calls.sideband_call(query, request.headers)
    except EngineRefusal as exc:
        return _refused(exc)
    ws = web.WebSocketResponse(
        max_msg_size=calls.engine.config.max_message_bytes,
        protocols=("realtime",),
        autoping=True,
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        return _refused(
            refusal(
                426,
                "websocket_required",
                "The sideband is a WebSocket endpoint: connect with ws:// (a WebSocket client).",
            )
        )
    await ws.prepare(request)
    await call.serve_sideband(AiohttpChannel(ws, binary_as_text=True))
    return ws


async def _read_offer(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    """The offer's SDP and the ``session`` of a multipart form (400 for anything else)."""
    kind = request.content_type
    if kind == "application/sdp" or (kind == "text/plain" and request.can_read_body):
        return await _read_text(request), None
    if kind == "multipart/form-data":
        sdp: str | None = None
        session: dict[str, Any] | None = None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                data = (await part.read(decode=True)).decode("utf-8", errors="replace")
                if part.name == "sdp":
                    sdp = data
                elif part.name == "session":
                    session = _session_field(data)
        except EngineRefusal:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed form
            raise refusal(
                400, "invalid_request", f"The multipart form could not be read: {exc}"
            ) from None
        if sdp is None:
            raise refusal(
                400,
                "missing_sdp",
                "The multipart form has no 'sdp' field: send the offer's SDP as the field 'sdp' "
                "(and the session configuration, JSON, as 'session').",
            )
        return sdp, session
    raise refusal(
        400,
        "unsupported_content_type",
        f"Unsupported Content-Type {kind or 'none'!r}: send the SDP offer as application/sdp, "
        "or a multipart/form-data form with the fields 'sdp' and 'session'.",
    )


def _session_field(data: str) -> dict[str, Any]:
    try:
        session = json.loads(data)
    except ValueError as exc:
        raise refusal(400, "invalid_json", f"The 'session' field is not JSON ({exc}).") from None
    if not isinstance(session, dict):
        raise refusal(400, "invalid_type", "The 'session' field must be a JSON object.")
    return {"type": "realtime", **session}


async def _read_text(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise refusal(413, "request_too_large", "The SDP offer is too large.")
    raw = await request.read()
    return raw.decode("utf-8", errors="replace")


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise refusal(400, "invalid_json", f"The request body is not JSON ({exc}).") from None


def _first(query: Query, name: str) -> str | None:
    value = query.get(name)
    if value is None or isinstance(value, str):
        return value or None
    return next((str(v) for v in value if v), None)


def _refused(exc: EngineRefusal) -> web.Response:
    return web.json_response(exc.body, status=exc.status, headers=exc.headers or None)
