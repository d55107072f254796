"""The engine's HTTP and WebSocket server (aiohttp): handshake, authentication, faults, frames.

Endpoints:

* ``GET /openai/v1/realtime?model=NAME`` - Azure's GA path (WebSocket);
* ``GET /v1/realtime?model=NAME`` - OpenAI's path, GA (so the official ``openai`` package works
  with ``base_url``); with the header ``OpenAI-Beta: realtime=v1`` it speaks the preview dialect;
* ``GET /openai/realtime?api-version=...&deployment=NAME`` - Azure's preview path (WebSocket);
* ``GET /healthz`` - ``{"status": "ok", ...}``.

Each connection gets its own :class:`~aoai_realtime.engine.session.RealtimeSession`; they share
the speech models and the brain. One writer task per connection sends the session's events in
order (and applies the ``close`` / ``delay_audio`` faults); the reader hands each client frame to
the session and answers refusals with ``error`` events, keeping the connection open.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .._threads import LoopThread, Stop, start_site
from ..protocol.dialect import Dialect
from ..protocol.errors import ProtocolError
from . import ids
from .brains import Brain, ChatCompletionsBrain, LocalBrain
from .config import DEFAULT_MODEL, EngineConfig
from .faults import Faults, FaultSpecError
from .scripted import ScriptedBrain
from .session import RateLimits, RealtimeSession
from .wire import Wire
from .workers import SharedSpeech

log = logging.getLogger(__name__)

PREVIEW_API_VERSIONS_HINT = "2024-10-01-preview or 2025-04-01-preview"


@dataclass
class Engine:
    """What every connection of one engine shares."""

    config: EngineConfig
    speech: SharedSpeech | None
    brain: Brain
    connections: set[Connection]


ENGINE_KEY = web.AppKey("engine", Engine)


# ------------------------------------------------------------------------------ start-up


def load_speech(progress: Callable[[str], None] | None = None) -> Any:
    """Load the speech stack (raises ``LocalExtraMissing`` naming the install command)."""
    from .speech import SpeechStack

    return SpeechStack.load(progress=progress)


def make_brain(config: EngineConfig, speech: SharedSpeech | None) -> Brain:
    """The brain ``config`` asks for."""
    choice = config.brain
    if not isinstance(choice, str):
        brain: Brain = choice
        return brain
    if choice == "local":
        if speech is None:
            raise ValueError("the local brain needs the speech stack (the [local] extra)")
        return LocalBrain(speech)
    if choice == "scripted":
        if config.script is None:
            raise ValueError("--brain scripted needs --script FILE")
        if isinstance(config.script, (dict, list)):
            return ScriptedBrain.from_data(config.script)
        return ScriptedBrain.from_file(config.script)
    if choice == "chat":
        if not config.brain_url:
            raise ValueError("--brain chat needs --brain-url URL (an OpenAI-compatible endpoint)")
        return ChatCompletionsBrain(
            config.brain_url, api_key=config.brain_key, model=config.brain_model
        )
    raise ValueError(f"unknown brain {choice!r}: choose local, scripted or chat")


def create_app(config: EngineConfig, speech_stack: Any = None) -> web.Application:
    """The engine as an aiohttp application (mount it, or run it with :func:`start_engine`).

    ``speech_stack`` (or ``config.speech``) is a loaded ``SpeechStack``; without one the app
    loads it when it starts.
    """
    app = web.Application(client_max_size=config.max_message_bytes)
    stack = speech_stack if speech_stack is not None else config.speech

    async def on_startup(app: web.Application) -> None:
        nonlocal stack
        if stack is None:
            stack = await asyncio.to_thread(load_speech, None)
        speech = SharedSpeech.for_stack(stack)
        app[ENGINE_KEY] = Engine(config, speech, make_brain(config, speech), set())

    async def on_shutdown(app: web.Application) -> None:
        engine = app.get(ENGINE_KEY)
        if engine is None:
            return
        for conn in list(engine.connections):
            await conn.shutdown()

    async def on_cleanup(app: web.Application) -> None:
        engine = app.get(ENGINE_KEY)
        if engine is not None:
            await engine.brain.aclose()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openai/v1/realtime", realtime_ga)
    app.router.add_get("/v1/realtime", realtime_openai)
    app.router.add_get("/openai/realtime", realtime_preview)
    return app


@dataclass
class RunningEngine:
    """An engine serving in this process; ``await close()`` stops it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` (add a realtime path, or use :meth:`ga_url` / :meth:`preview_url`)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ga_url(self, model: str = DEFAULT_MODEL) -> str:
        return f"{self.url}/openai/v1/realtime?model={model}"

    def preview_url(
        self, deployment: str = DEFAULT_MODEL, api_version: str = "2025-04-01-preview"
    ) -> str:
        return f"{self.url}/openai/realtime?api-version={api_version}&deployment={deployment}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_engine(config: EngineConfig, speech_stack: Any = None) -> RunningEngine:
    """Start an engine in this event loop (``config.port=0``: a free port) and return it."""
    stack = speech_stack if speech_stack is not None else config.speech
    if stack is None:
        stack = await asyncio.to_thread(load_speech, None)
    app = create_app(config, stack)
    runner, port = await start_site(
        app, config.host, config.port, reuse_address=True, shutdown_timeout=2.0
    )
    return RunningEngine(runner, config.host, port)


# ------------------------------------------------------------------------------ HTTP handlers


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response(
        {
            "status": "ok",
            "sessions": len(engine.connections),
            "brain": engine.brain.name,
            "speech": engine.speech is not None,
            "paths": {
                "ga": "/openai/v1/realtime?model=NAME",
                "openai": "/v1/realtime?model=NAME",
                "preview": "/openai/realtime?api-version=...&deployment=NAME",
            },
        }
    )


def _json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


async def realtime_ga(request: web.Request) -> web.StreamResponse:
    model = request.query.get("model") or request.query.get("deployment")
    if not model:
        return _json_error(
            400,
            "missing_model",
            "Missing required query parameter 'model' (the deployment name): "
            "connect to /openai/v1/realtime?model=NAME.",
        )
    return await _realtime(request, Dialect.GA, model)


async def realtime_openai(request: web.Request) -> web.StreamResponse:
    model = request.query.get("model")
    if not model:
        return _json_error(
            400,
            "missing_model",
            "Missing required query parameter 'model': /v1/realtime?model=NAME.",
        )
    beta = request.headers.get("OpenAI-Beta", "")
    dialect = Dialect.PREVIEW if "realtime=v1" in beta.replace(" ", "") else Dialect.GA
    return await _realtime(request, dialect, model)


async def realtime_preview(request: web.Request) -> web.StreamResponse:
    if not request.query.get("api-version"):
        return _json_error(
            400,
            "missing_api_version",
            "Missing required query parameter 'api-version' (e.g. "
            f"{PREVIEW_API_VERSIONS_HINT}). For the GA protocol, connect to "
            "/openai/v1/realtime?model=NAME instead.",
        )
    deployment = request.query.get("deployment")
    if not deployment:
        return _json_error(
            400,
            "missing_deployment",
            "Missing required query parameter 'deployment': "
            "/openai/realtime?api-version=...&deployment=NAME.",
        )
    return await _realtime(request, Dialect.PREVIEW, deployment)


def _offered_key(request: web.Request) -> list[str]:
    """Every credential the client offers, wherever it put it."""
    keys: list[str] = []
    if request.headers.get("api-key"):
        keys.append(request.headers["api-key"])
    if request.query.get("api-key"):
        keys.append(request.query["api-key"])
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        keys.append(auth[7:].strip())
    for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith("openai-insecure-api-key."):
            keys.append(proto[len("openai-insecure-api-key.") :])
    return keys


async def _realtime(request: web.Request, dialect: Dialect, model: str) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    config = engine.config
    faults = config.faults
    if config.allow_query_faults and "fault" in request.query:
        try:
            faults = faults.merged(Faults.parse(request.query.getall("fault")))
        except FaultSpecError as exc:
            return _json_error(400, "invalid_fault", str(exc))
    if config.api_key is not None and not any(
        secrets.compare_digest(key.encode(), config.api_key.encode())
        for key in _offered_key(request)
    ):
        return _json_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        )
    if faults.refuse_status is not None:
        return _refusal(faults.refuse_status)
    ws = web.WebSocketResponse(
        max_msg_size=config.max_message_bytes,
        protocols=("realtime",),
        autoping=True,
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        return _json_error(
            426,
            "websocket_required",
            "This is a WebSocket endpoint: connect with ws:// (a WebSocket client), not plain HTTP.",
        )
    await ws.prepare(request)
    conn = Connection(engine, ws, dialect, model, faults)
    engine.connections.add(conn)
    try:
        await conn.run()
    finally:
        engine.connections.discard(conn)
    return ws


def _refusal(status: int) -> web.Response:
    if status == 401:
        return _json_error(401, "401", "Access denied due to invalid subscription key (fault).")
    if status == 403:
        return _json_error(403, "403", "Forbidden (fault).")
    if status == 429:
        return _json_error(
            429,
            "429",
            "Requests to the realtime API have exceeded the rate limit of your deployment. "
            "Please retry after 1 second (fault).",
            **{"Retry-After": "1", "retry-after-ms": "1000"},
        )
    return _json_error(status, str(status), f"The service is unavailable (fault {status}).")


# ------------------------------------------------------------------------------ connections


@dataclass
class _Close:
    code: int
    reason: str


class Connection:
    """One WebSocket client: its session, its writer, its faults."""

    def __init__(
        self,
        engine: Engine,
        ws: web.WebSocketResponse,
        dialect: Dialect,
        model: str,
        faults: Faults,
    ) -> None:
        self.engine = engine
        self.ws = ws
        self.faults = faults
        self.queue: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        conversation_id = ids.conversation_id()
        self.wire = Wire(dialect, conversation_id=conversation_id)
        config = engine.config
        expiry = (
            faults.expire_after_s if faults.expire_after_s is not None else config.session_max_s
        )
        self.expire_after_s = expiry
        self.session = RealtimeSession(
            dialect=dialect,
            model=model,
            brain=engine.brain,
            speech=engine.speech,
            emit=self.queue.put_nowait,
            faults=faults,
            rate_limits=RateLimits(config.rate_limit_tokens, config.rate_limit_requests),
            expires_at=int(time.time() + expiry),
            conversation_id=conversation_id,
        )

    async def run(self) -> None:
        writer = asyncio.create_task(self._write(), name="engine writer")
        expiry = asyncio.create_task(self._expire(), name="engine expiry")
        self.session.start()
        try:
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_frame(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("connection error: %s", self.ws.exception())
                    break
        finally:
            expiry.cancel()
            await self.session.close()
            writer.cancel()
            for task in (writer, expiry):
                try:
                    await task
                except BaseException:  # noqa: BLE001 - shutting down
                    pass
            if not self.ws.closed:
                await self.ws.close()

    async def shutdown(self) -> None:
        """Close the connection as the server stops (1001: going away)."""
        if not self.ws.closed:
            await self.ws.close(code=1001, message=b"server shutting down")

    async def _on_frame(self, data: str | bytes) -> None:
        try:
            await self.session.handle(self.wire.decode(data))
        except ProtocolError as exc:
            self.session.error(exc)
        except Exception as exc:  # noqa: BLE001 - one bad event must not end the session
            log.exception("handling a client event failed")
            self.session.emit(
                {
                    "type": "error",
                    "error": {
                        "type": "server_error",
                        "code": "server_error",
                        "message": f"The server had an error while processing your request ({exc}).",
                        "param": None,
                        "event_id": None,
                    },
                }
            )

    async def _expire(self) -> None:
        await asyncio.sleep(self.expire_after_s)
        seconds = self.expire_after_s
        span = f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"
        self.session.emit(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "session_expired",
                    "message": f"Your session hit the maximum duration of {span}.",
                    "param": None,
                    "event_id": None,
                },
            }
        )
        self.queue.put_nowait(_Close(1000, "session expired"))

    async def _write(self) -> None:
        faults = self.faults
        sent = 0
        delayed: set[str] = set()
        try:
            if faults.close_code is not None and faults.close_after_events == 0:
                await self.ws.close(code=faults.close_code, message=b"fault: close")
                return
            while True:
                event = await self.queue.get()
                if isinstance(event, _Close):
                    await self.ws.close(code=event.code, message=event.reason.encode())
                    return
                if (
                    faults.delay_audio_ms
                    and event.get("type") == "response.output_audio.delta"
                    and event.get("response_id") not in delayed
                ):
                    delayed.add(str(event.get("response_id")))
                    await asyncio.sleep(faults.delay_audio_ms / 1000)
                for frame in self.wire.encode(event):
                    await self.ws.send_str(frame)
                    sent += 1
                    if faults.close_code is not None and sent >= faults.close_after_events:
                        await self.ws.close(code=faults.close_code, message=b"fault: close")
                        return
        except (ConnectionError, RuntimeError) as exc:
            log.debug("writer stopped: %s", exc)
            if not self.ws.closed:
                await self.ws.close()


class EngineThread:
    """An engine running in a thread of its own, with its own event loop.

    For callers without a running loop of their own (tests, scripts, a synchronous app): the
    engine keeps serving whatever the caller's loops do. ``close()`` stops it and the thread.
    """

    def __init__(self, config: EngineConfig, speech_stack: Any = None) -> None:
        self._engine: RunningEngine | None = None

        async def start() -> Stop:
            self._engine = await start_engine(config, speech_stack)
            return self._engine.close

        self._thread = LoopThread(start, name="aoai-realtime engine")

    @property
    def engine(self) -> RunningEngine:
        assert self._engine is not None
        return self._engine

    @property
    def host(self) -> str:
        return self.engine.host

    @property
    def port(self) -> int:
        return self.engine.port

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def http_url(self) -> str:
        return self.engine.http_url

    def ga_url(self, model: str = DEFAULT_MODEL) -> str:
        return self.engine.ga_url(model)

    def preview_url(
        self, deployment: str = DEFAULT_MODEL, api_version: str = "2025-04-01-preview"
    ) -> str:
        return self.engine.preview_url(deployment, api_version)

    def close(self) -> None:
        self._thread.close()

    def __enter__(self) -> EngineThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
