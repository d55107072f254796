"""The engine's HTTP and WebSocket server (aiohttp), and its in-memory entry point.

Endpoints:

* ``GET /openai/v1/realtime?model=NAME`` - Azure's GA path (WebSocket);
* ``GET /v1/realtime?model=NAME`` - OpenAI's path, GA (so the official ``openai`` package works
  with ``base_url``); with the header ``OpenAI-Beta: realtime=v1`` it speaks the preview dialect;
* ``GET /openai/realtime?api-version=...&deployment=NAME`` - Azure's preview path (WebSocket);
* ``GET /healthz`` - ``{"status": "ok", ...}``;
* WebRTC: ``POST /openai/v1/realtime/calls`` (and ``/v1/...``) with an SDP offer, the
  sideband ``GET /openai/v1/realtime?call_id=rtc_...``, ``POST .../calls/{id}/hangup`` and
  ``POST .../realtime/client_secrets`` (ephemeral keys): see :mod:`~aoai_realtime.engine.calls`.

:meth:`RunningEngine.open_channel` opens the same session without a socket: one end of an
in-memory :func:`~aoai_realtime.channel.memory_pair` is served here, the other is returned (the
middle tier reaches an in-process engine this way). The handshake checks are one pure step
(:func:`~aoai_realtime.engine.admission.admit`) for both.

Each connection gets its own :class:`~aoai_realtime.engine.session.RealtimeSession` on a
:class:`~aoai_realtime.channel.Channel`; they share the speech models and the brain. One writer
task per connection sends the session's events in order (and applies the ``close`` /
``delay_audio`` faults); the reader hands each client frame to the session and answers refusals
with ``error`` events, keeping the connection open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from .._changes import Changes
from .._threads import LoopThread, Stop, give_back_memory, start_site
from ..channel import AiohttpChannel, Channel, memory_pair
from ..protocol.errors import ProtocolError
from . import ids
from .admission import (
    GA_PATH,
    OPENAI_PATH,
    PREVIEW_PATH,
    REALTIME_PATHS,
    Admission,
    EngineRefusal,
    Query,
    refusal,
)
from .brains import Brain, ChatCompletionsBrain, LocalBrain
from .calls import CallRegistry, sideband
from .calls import add_routes as add_call_routes
from .client_secrets import admit_with_secrets
from .config import DEFAULT_MODEL, EngineConfig
from .scripted import ScriptedBrain
from .session import RateLimits, RealtimeSession
from .wire import Wire
from .workers import SharedSpeech, model_owner

log = logging.getLogger(__name__)

__all__ = [
    "Connection",
    "Engine",
    "EngineRefusal",
    "EngineThread",
    "RunningEngine",
    "create_app",
    "load_speech",
    "make_brain",
    "start_engine",
]


class Engine:
    """What every connection of one engine shares, and the connections it holds."""

    def __init__(self, config: EngineConfig, speech: SharedSpeech | None, brain: Brain) -> None:
        self.config = config
        self.speech = speech
        self.brain = brain
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        """The runs of in-memory connections (a socket's run is its aiohttp handler)."""
        self._changes = Changes()
        self.calls = CallRegistry(
            self, lambda channel, admission: Connection(self, channel, admission)
        )
        """The WebRTC calls and the client secrets (:mod:`~aoai_realtime.engine.calls`)."""

    # ------------------------------------------------------------------ sessions

    @property
    def sessions(self) -> int:
        return len(self.connections)

    def _add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._notify()

    def _discard(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._notify()
        if not self.connections:
            # No session left: the C allocator (whose per-thread arenas keep what the model
            # threads freed) trims its free pages. No gc.collect() here: it holds the loop for
            # about 80 ms, and a closed session lets go of its memory itself (see
            # RealtimeSession.close).
            give_back_memory()

    def _notify(self) -> None:
        self._changes.notify()

    async def wait_sessions(self, count: int, timeout: float = 10.0) -> None:
        """Return once the engine holds exactly ``count`` sessions; ``TimeoutError`` after
        ``timeout`` seconds (woken by each connection that opens or ends, never polled)."""
        await self._changes.wait_for(
            lambda: len(self.connections), count, timeout, "the engine", "sessions"
        )

    # ------------------------------------------------------------------ connections

    def connection(self, channel: Channel, admission: Admission) -> Connection:
        """A connection for an admitted handshake, counted from now until its run ends."""
        return self.adopt(Connection(self, channel, admission))

    def adopt(self, conn: Connection) -> Connection:
        """Count a connection made elsewhere (a WebRTC call's) until its :meth:`serve` ends."""
        self._add(conn)
        return conn

    async def serve(self, conn: Connection) -> None:
        """Run a connection made by :meth:`connection` to its end."""
        try:
            await conn.run()
        finally:
            self._discard(conn)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Close every connection (1001: going away) and wait for the in-memory ones to end."""
        for conn in list(self.connections):
            await conn.shutdown()
        tasks = list(self.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


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
            raise ValueError(
                "the local brain needs the speech stack (the [local] extra); "
                "without speech (no_speech), use the scripted or chat brain"
            )
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


def _speech_choice(config: EngineConfig, speech_stack: Any) -> Any:
    """The stack given (``speech_stack`` or ``config.speech``); refuses one with ``no_speech``."""
    stack = speech_stack if speech_stack is not None else config.speech
    if config.no_speech and stack is not None:
        raise ValueError("no_speech=True and a speech stack were both given: choose one")
    if config.no_speech and config.brain == "local":
        raise ValueError(
            "the local brain needs the speech stack: with no_speech, use the scripted or chat brain"
        )
    return stack


def create_app(config: EngineConfig, speech_stack: Any = None) -> web.Application:
    """The engine as an aiohttp application (mount it, or run it with :func:`start_engine`).

    ``speech_stack`` (or ``config.speech``) is a loaded ``SpeechStack``; without one the app
    loads it when it starts, unless ``config.no_speech`` (then it never loads it).
    """
    stack = _speech_choice(config, speech_stack)
    app = web.Application(client_max_size=config.max_message_bytes)

    async def on_startup(app: web.Application) -> None:
        nonlocal stack
        speech = None
        if not config.no_speech:
            if stack is None:
                stack = await asyncio.to_thread(load_speech, None)
            speech = SharedSpeech.for_stack(stack)
        app[ENGINE_KEY] = Engine(config, speech, make_brain(config, speech))

    async def on_shutdown(app: web.Application) -> None:
        engine = app.get(ENGINE_KEY)
        if engine is not None:
            await engine.shutdown()

    async def on_cleanup(app: web.Application) -> None:
        engine = app.get(ENGINE_KEY)
        if engine is not None:
            await engine.brain.aclose()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", healthz)
    for path in REALTIME_PATHS:
        app.router.add_get(path, _realtime_handler(path))
    add_call_routes(app, ENGINE_KEY)
    return app


@dataclass
class RunningEngine:
    """An engine serving in this process; ``await close()`` stops it.

    Without a listening socket (``start_engine(..., listen=False)``) only :meth:`open_channel`
    reaches it, and ``port`` is 0.
    """

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
        return f"{self.url}{GA_PATH}?model={model}"

    def preview_url(
        self, deployment: str = DEFAULT_MODEL, api_version: str = "2025-04-01-preview"
    ) -> str:
        return f"{self.url}{PREVIEW_PATH}?api-version={api_version}&deployment={deployment}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def engine(self) -> Engine:
        """The shared state: configuration, brain, speech, connections."""
        return self.app[ENGINE_KEY]

    @property
    def calls(self) -> CallRegistry:
        """The WebRTC calls and client secrets: ``create`` (an SDP offer in, the answer out),
        ``hangup``, ``mint``, ``wait_calls``. Call them in the engine's event loop."""
        return self.engine.calls

    @property
    def sessions(self) -> int:
        """How many sessions the engine holds now (over sockets and in memory)."""
        return self.engine.sessions

    async def wait_sessions(self, count: int, timeout: float = 10.0) -> None:
        """Return once the engine holds exactly ``count`` sessions (``TimeoutError`` after
        ``timeout`` seconds). Call it in the engine's event loop."""
        await self.engine.wait_sessions(count, timeout)

    async def open_channel(
        self,
        path: str = GA_PATH,
        query: Query | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        max_pending: int = 256,
    ) -> Channel:
        """Open a session without a socket: the client's end of an in-memory channel.

        ``path`` is a realtime path (``/openai/v1/realtime``, ``/v1/realtime`` or
        ``/openai/realtime``; a query string on it is read too), ``query`` and ``headers`` are
        the handshake's. The same checks as over a WebSocket apply (required parameters, the API
        key, ``?fault=`` specs); a refusal raises :class:`EngineRefusal` with the status,
        headers and body the HTTP answer would have. Otherwise the session runs in this event
        loop (which must be the engine's) on the other end, and faults act on the channel as on
        a socket (``close`` reaches ``close_code``). Closing the returned channel ends it.
        """
        parts = urlsplit(path)
        merged: dict[str, list[str]] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            merged.setdefault(name, []).append(value)
        for name, values in (query or {}).items():
            merged.setdefault(name, []).extend([values] if isinstance(values, str) else values)
        engine = self.engine
        if merged.get("call_id") and parts.path.rstrip("/") in (GA_PATH, OPENAI_PATH):
            return engine.calls.open_sideband(merged, headers)  # a sideband of a WebRTC call
        admission, secret = admit_with_secrets(
            engine.config, engine.calls.secrets, parts.path, merged, headers
        )
        ours, theirs = memory_pair(max_pending)
        conn = engine.connection(ours, admission)
        if secret is not None and secret.session:
            await conn.preset_or_report(secret.session)
        task = asyncio.create_task(engine.serve(conn), name="engine memory connection")
        engine.tasks.add(task)
        task.add_done_callback(engine.tasks.discard)
        return theirs

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_engine(
    config: EngineConfig, speech_stack: Any = None, *, listen: bool = True
) -> RunningEngine:
    """Start an engine in this event loop (``config.port=0``: a free port) and return it.

    ``listen=False`` opens no socket: the engine is reached through
    :meth:`RunningEngine.open_channel` only. With ``config.no_speech`` no speech model loads.
    """
    stack = _speech_choice(config, speech_stack)
    if stack is None and not config.no_speech:
        stack = await asyncio.to_thread(load_speech, None)
    app = create_app(config, stack)
    if not listen:
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        return RunningEngine(runner, config.host, 0)
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
            "sessions": engine.sessions,
            "brain": engine.brain.name,
            "speech": engine.speech is not None,
            "calls": len(engine.calls),
            "paths": {
                "ga": f"{GA_PATH}?model=NAME",
                "openai": f"{OPENAI_PATH}?model=NAME",
                "preview": f"{PREVIEW_PATH}?api-version=...&deployment=NAME",
            },
        }
    )


def _realtime_handler(path: str) -> Callable[[web.Request], Any]:
    """The WebSocket handler of one realtime path (the path is passed on as registered, so
    the app may be mounted under a prefix)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        engine = request.app[ENGINE_KEY]
        query = {name: request.query.getall(name) for name in request.query}
        if "call_id" in query and path in (GA_PATH, OPENAI_PATH):
            return await sideband(request, engine.calls)
        try:
            admission, secret = admit_with_secrets(
                engine.config, engine.calls.secrets, path, query, request.headers
            )
        except EngineRefusal as exc:
            return _refused(exc)
        ws = web.WebSocketResponse(
            max_msg_size=engine.config.max_message_bytes,
            protocols=("realtime",),
            autoping=True,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            return _refused(
                refusal(
                    426,
                    "websocket_required",
                    "This is a WebSocket endpoint: connect with ws:// (a WebSocket client), "
                    "not plain HTTP.",
                )
            )
        await ws.prepare(request)
        conn = engine.connection(AiohttpChannel(ws, binary_as_text=True), admission)
        if secret is not None and secret.session:
            await conn.preset_or_report(secret.session)
        await engine.serve(conn)
        return ws

    return handler


def _refused(exc: EngineRefusal) -> web.Response:
    return web.json_response(exc.body, status=exc.status, headers=exc.headers or None)


# ------------------------------------------------------------------------------ connections


@dataclass
class _Close:
    code: int
    reason: str


@dataclass
class _Out:
    """One server event, encoded for the wire as it was emitted (so its size is known)."""

    event: dict[str, Any]
    frames: list[str]
    size: int


CLOSE_NOT_READING = 1008
"""The close code for a client that stopped reading while its events piled up (policy)."""


class Connection:
    """One client: its session, its channel, its writer, its faults."""

    def __init__(self, engine: Engine, channel: Channel, admission: Admission) -> None:
        self.engine = engine
        self.channel = channel
        self.faults = faults = admission.faults
        self.queue: asyncio.Queue[_Out | _Close] = asyncio.Queue()
        self.send_budget = engine.config.send_budget_bytes
        self._queued_bytes = 0
        self._not_reading = False
        self._muted = False
        self._preset_error: ProtocolError | None = None
        conversation_id = ids.conversation_id()
        self.wire = Wire(admission.dialect, conversation_id=conversation_id)
        config = engine.config
        expiry = (
            faults.expire_after_s if faults.expire_after_s is not None else config.session_max_s
        )
        self.expire_after_s = expiry
        self.session = RealtimeSession(
            dialect=admission.dialect,
            model=admission.model,
            brain=engine.brain,
            speech=engine.speech,
            emit=self._enqueue,
            faults=faults,
            rate_limits=RateLimits(config.rate_limit_tokens, config.rate_limit_requests),
            expires_at=int(time.time() + expiry),
            conversation_id=conversation_id,
            transcription=admission.transcription,
        )
        self.session.speculator.enabled = config.speculation

    def _enqueue(self, event: dict[str, Any]) -> None:
        """Queue one event for the writer. A client that does not read while its unsent events
        pass :attr:`send_budget` bytes is closed (1008): it cannot make the engine grow."""
        if self._not_reading or self._muted:
            return
        frames = self.wire.encode(event)
        size = sum(len(frame) for frame in frames)
        self._queued_bytes += size
        if self._queued_bytes > self.send_budget:
            self._not_reading = True
            log.warning(
                "closing a client that does not read: %d bytes of events unsent (budget %d)",
                self._queued_bytes,
                self.send_budget,
            )
            self.queue = asyncio.Queue()  # let go of what it will never read
            self._queued_bytes = 0
            self.session.spawn(
                self.channel.close(
                    CLOSE_NOT_READING,
                    "client is not reading: its unsent events passed the engine's budget",
                ),
                "engine close not reading",
            )
            return
        self.queue.put_nowait(_Out(event, frames, size))

    async def preset(self, session: Mapping[str, Any]) -> None:
        """Apply a GA session object before the session starts (a WebRTC call's ``session``, a
        client secret's): checked as a ``session.update`` is, shown by ``session.created``,
        announced by nothing else. Raises ``ProtocolError`` for what the service refuses."""
        frame = json.dumps({"type": "session.update", "session": dict(session)})
        self._muted = True
        try:
            await self.session.handle(self.wire.decode(frame))
        finally:
            self._muted = False

    async def preset_or_report(self, session: Mapping[str, Any]) -> None:
        """:meth:`preset`; a refusal is sent as an ``error`` event after ``session.created``
        (the session goes on with its defaults)."""
        try:
            await self.preset(session)
        except ProtocolError as exc:
            self._preset_error = exc

    async def run(self) -> None:
        model_owner(self.session.session_id)  # its model work queues apart from others'
        writer = asyncio.create_task(self._write(), name="engine writer")
        expiry = asyncio.create_task(self._expire(), name="engine expiry")
        self.session.start()
        if self._preset_error is not None:
            self.session.error(self._preset_error)
        try:
            while (text := await self.channel.receive()) is not None:
                await self._on_frame(text)
        finally:
            expiry.cancel()
            await self.session.close()
            writer.cancel()
            for task in (writer, expiry):
                try:
                    await task
                except BaseException:  # noqa: BLE001 - shutting down
                    pass
            await self.channel.close()

    async def shutdown(self) -> None:
        """Close the connection as the server stops (1001: going away)."""
        await self.channel.close(1001, "server shutting down")

    async def _on_frame(self, data: str) -> None:
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
        channel = self.channel
        sent = 0
        delayed: set[str] = set()
        try:
            if faults.close_code is not None and faults.close_after_events == 0:
                await channel.close(faults.close_code, "fault: close")
                return
            while True:
                out = await self.queue.get()
                if isinstance(out, _Close):
                    await channel.close(out.code, out.reason)
                    return
                self._queued_bytes -= out.size
                event = out.event
                if (
                    faults.delay_audio_ms
                    and event.get("type") == "response.output_audio.delta"
                    and event.get("response_id") not in delayed
                ):
                    delayed.add(str(event.get("response_id")))
                    await asyncio.sleep(faults.delay_audio_ms / 1000)
                for frame in out.frames:
                    await channel.send(frame)
                    sent += 1
                    if faults.close_code is not None and sent >= faults.close_after_events:
                        await channel.close(faults.close_code, "fault: close")
                        return
        except (ConnectionError, RuntimeError) as exc:
            log.debug("writer stopped: %s", exc)
            await channel.close()


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

    @property
    def sessions(self) -> int:
        """How many sessions the engine holds now."""
        return self.engine.sessions

    def wait_sessions(self, count: int, timeout: float = 10.0) -> None:
        """Block until the engine holds exactly ``count`` sessions (``TimeoutError`` after
        ``timeout`` seconds). From a coroutine, use :meth:`wait_sessions_async`."""
        future = asyncio.run_coroutine_threadsafe(
            self.engine.wait_sessions(count, timeout), self._thread.loop
        )
        future.result()

    async def wait_sessions_async(self, count: int, timeout: float = 10.0) -> None:
        """:meth:`wait_sessions` for a coroutine in any other event loop (that loop runs on)."""
        future = asyncio.run_coroutine_threadsafe(
            self.engine.wait_sessions(count, timeout), self._thread.loop
        )
        await asyncio.wrap_future(future)

    async def wait_calls_async(self, count: int, timeout: float = 10.0) -> None:
        """Wait (from a coroutine in any other event loop) until the engine holds exactly
        ``count`` WebRTC calls (``TimeoutError`` after ``timeout`` seconds)."""
        future = asyncio.run_coroutine_threadsafe(
            self.engine.calls.wait_calls(count, timeout), self._thread.loop
        )
        await asyncio.wrap_future(future)

    def close(self) -> None:
        self._thread.close()

    def __enter__(self) -> EngineThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
