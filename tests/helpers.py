"""Helpers shared by the test modules: engines and middle tiers on loopback, test clients,
Chromium pages.

Fixtures live in ``conftest.py``; this module holds what tests call themselves (``import
helpers``: pytest puts this folder on ``sys.path``).

``ENGINE_SCRIPT``                            the script of the scripted engines (see below)
``engine_thread(speech_stack, **options)``  a local engine in a thread of its own, for a fixture
                                             to ``yield from`` (closed afterwards);
                                             ``engine_thread(None, no_speech=True, ...)`` runs
                                             one without any speech model
``memory_engine(**options)``                 a speechless scripted engine in the caller's loop,
                                             with no socket (``async with``): reach it with
                                             :func:`open_memory`
``Client``                                   the one test client, of an engine or of the
                                             middle tier: every event kept (``events``,
                                             ``raw``), ``wait_for``/``recv``/``until``,
                                             ``say``/``ask``/``say_text``/``update``/``append``,
                                             ``drain_until_closed``, ``errors(kind)``...
``connect(engine, dialect, query=, headers=)``  a :class:`Client` of an engine over a real
                                             WebSocket, past ``session.created``
``open_memory(engine, dialect, query=, headers=)``  the same over an in-memory channel
``open_page(server, http, **query)``         a page of the middle tier: a GA :class:`Client`
                                             over its WebSocket (``page.ws.close()`` ends it)
``websocket(http, url, params=, headers=)``  the one ``ws_connect`` the clients use
``audio_of(events)``, ``text_of(events, kind)``  what a list of events carried
``wait_idle(engine)``                        wait until an ``EngineThread`` holds no session
                                             (before counting sessions); returns 0
``make_server(engine, ...)``                 the middle tier in a thread of its own, in front of
                                             that engine
``Browser(chromium, wav)``                   Debian's Chromium through Playwright's sync API,
                                             its fake microphone playing ``wav``
``shown(role, test)``                        what ``Browser.wait`` waits for: a message shown
``write_wav(path, pcm)``                     PCM16 mono as a WAV file
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from aoai_realtime.channel import AiohttpChannel, Channel
from aoai_realtime.config import Settings
from aoai_realtime.protocol.dialect import PREVIEW_SERVER_NAMES
from aoai_realtime.server import LocalEngine, Policy, ServerConfig, ServerThread, Upstreams
from aoai_realtime.server.tools import demo_tools

CHROMIUM = os.environ.get("AOAI_REALTIME_CHROMIUM", "/usr/bin/chromium")
"""Debian's Chromium (``AOAI_REALTIME_CHROMIUM`` names another)."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


ENGINE_SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {
            "note": "a function call turn: the client must offer a get_time tool",
            "user": "what time is it",
            "function_call": {"name": "get_time", "arguments": {"timezone": "local"}},
        },
        {"after_function": "get_time", "reply": "It is {output} right now."},
        {"user": "weather", "reply": "It is sunny and warm today."},
        {
            "note": "a long reply, to interrupt (barge-in) or to cut short (max_output_tokens)",
            "user": "story",
            "reply": (
                "Once upon a time there was a small cat who lived by the sea. "
                "Every morning she walked along the beach to watch the boats come in. "
                "The fishermen knew her well and always saved a little fish for her. "
                "One day a storm came, and the boats did not come back in the evening. "
                "The cat waited on the pier all night, looking out at the dark water. "
                "At dawn she saw a small light far away, and then another, and another. "
                "The boats were coming home, and the cat ran to meet them. "
                "From that day on, the fishermen called her the keeper of the harbour."
            ),
        },
        {"user": "hello", "reply": "Hello! How can I help you today?"},
    ],
}
"""The script of the scripted engines (format: ``docs/scripted-brain.md``).

* a user turn containing "what time is it" -> a ``get_time`` function call with
  ``{"timezone": "local"}`` (only when the session or response offers a ``get_time`` tool);
* the function output -> "It is {output} right now.";
* "weather" -> "It is sunny and warm today."; "hello" -> "Hello! How can I help you today?";
* "story" -> eight sentences (about 25 s of speech): long enough to interrupt;
* anything else -> "I heard you say: {user}."
"""

WAIT = 90.0
"""How long a test waits for an event: generous, the machine may be busy; no test asserts speed."""

TOOLS_SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {
            "user": "time in tokyo",
            "function_call": {"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}},
        },
        {"after_function": "current_time", "reply": "Here is the time: {output}."},
        {
            "user": "convert",
            "function_call": {
                "name": "convert_units",
                "arguments": {"value": 10, "from_unit": "miles", "to_unit": "km"},
            },
        },
        {"after_function": "convert_units", "reply": "The result is {output}."},
        {"user": "hello", "reply": "Hello! How can I help you today?"},
    ],
}
"""A script that calls the middle tier's demo server tools (``current_time``,
``convert_units``) and answers "hello": for the tests of ``serve``."""

GA_TO_PREVIEW = {ga: preview for preview, ga in PREVIEW_SERVER_NAMES.items()}
"""The GA names of server events whose preview names differ (the rest are the same)."""


def engine_thread(speech_stack: Any, **options: Any) -> Iterator[Any]:
    """An ``EngineThread`` on a free port sharing ``speech_stack``; ``options`` are
    ``EngineConfig`` fields (``brain``, ``script``, ``api_key``...). Closed when resumed."""
    from aoai_realtime.engine import EngineConfig, EngineThread

    thread = EngineThread(EngineConfig(port=0, speech=speech_stack, **options))
    try:
        yield thread
    finally:
        thread.close()


def wait_idle(engine: Any, timeout: float = 10.0) -> int:
    """Wait until ``engine`` (an ``EngineThread``) holds no session: the previous test's sessions
    may still be closing. Returns 0, the count to start from. Call it where no event loop runs
    (a synchronous fixture); from a coroutine, ``await engine.wait_sessions_async(0)``."""
    engine.wait_sessions(0, timeout)
    return 0


@contextlib.asynccontextmanager
async def memory_engine(**options: Any) -> AsyncIterator[Any]:
    """A scripted engine without speech models or socket, in the caller's event loop
    (``options`` are ``EngineConfig`` fields; the script is :data:`ENGINE_SCRIPT` by default)."""
    from aoai_realtime.engine import EngineConfig, start_engine

    config = EngineConfig(
        **{"port": 0, "brain": "scripted", "script": ENGINE_SCRIPT, "no_speech": True, **options}
    )
    engine = await start_engine(config, listen=False)
    try:
        yield engine
    finally:
        await engine.close()


class Client:
    """A realtime client for tests: JSON events, every one kept in order.

    The one test client: of an engine (:func:`connect`, :func:`open_memory`) and of the middle
    tier (:func:`open_page`: a page is a realtime client over a WebSocket, GA dialect). It keeps
    every event it received (``events``) and each one's text as it came (``raw``). Waits
    (:meth:`wait_for`, :meth:`recv`, :meth:`until`) look at the events after those an earlier
    wait looked at, receiving more as needed; they pass over the events they do not want, and
    fail with an ``AssertionError`` that lists the last events received (on a timeout, or when
    the peer closes first).

    It works on any :class:`~aoai_realtime.channel.Channel`; over a WebSocket, ``ws`` is the
    aiohttp WebSocket too (for raw frames, headers, the transport), over an in-memory channel it
    is ``None``. With ``id_prefix``, every event received must have an ``event_id`` starting
    with it (the engine's are ``event_...``).
    """

    def __init__(
        self, channel: Channel, dialect: str = "ga", ws: Any = None, *, id_prefix: str | None = None
    ) -> None:
        self.channel = channel
        self.ws = ws
        self.dialect = dialect
        self.id_prefix = id_prefix
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.looked = 0
        """How many of ``events`` a wait has looked at: the next wait starts after them."""

    def t(self, ga_type: str) -> str:
        """An event type in this connection's dialect."""
        return GA_TO_PREVIEW.get(ga_type, ga_type) if self.dialect == "preview" else ga_type

    # ---------------------------------------------------------------------------- sending

    async def send(self, event: dict[str, Any]) -> None:
        await self.channel.send(json.dumps(event))

    async def send_raw(self, text: str) -> None:
        await self.channel.send(text)

    async def say_text(self, text: str) -> None:
        """A typed user message (``conversation.item.create``), without a response."""
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )

    async def say(self, text: str, *, wait: bool = True, **response: Any) -> dict[str, Any]:
        """A typed user message and a ``response.create`` (with ``response`` fields, if any);
        returns the ``response.done`` event (or ``{}`` at once without ``wait``)."""
        await self.say_text(text)
        await self.send({"type": "response.create", **({"response": response} if response else {})})
        return await self.wait_for("response.done") if wait else {}

    async def ask(self, text: str, **response: Any) -> str:
        """:meth:`say`, the response must complete; returns its reply (:meth:`reply_of`)."""
        done = await self.say(text, **response)
        assert done["response"]["status"] == "completed", done
        return self.reply_of(done["response"]["id"])

    async def append(self, pcm: bytes, chunk_ms: int = 40, encode: Any = None) -> None:
        """Send audio as ``input_audio_buffer.append`` chunks (faster than real time)."""
        step = 48 * chunk_ms
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            data = encode(chunk) if encode else chunk
            audio = base64.b64encode(data).decode("ascii")
            await self.send({"type": "input_audio_buffer.append", "audio": audio})

    async def update(self, **session: Any) -> dict[str, Any]:
        """``session.update`` (GA: ``type`` ``realtime`` unless given); returns
        ``session.updated``."""
        if self.dialect == "ga":
            session.setdefault("type", "realtime")
        await self.send({"type": "session.update", "session": session})
        return await self.wait_for("session.updated")

    # ---------------------------------------------------------------------------- receiving

    def last_events(self, n: int = 15) -> list[str]:
        """The types of the last ``n`` events received (an error's code too): for messages."""
        return [
            f"error({e['error'].get('code')})" if e.get("type") == "error" else str(e.get("type"))
            for e in self.events[-n:]
        ]

    async def _receive(self, timeout: float) -> dict[str, Any] | None:
        """One more event from the peer, kept; ``None`` once the peer has closed."""
        text = await asyncio.wait_for(self.channel.receive(), timeout)
        if text is None:
            return None
        event: dict[str, Any] = json.loads(text)
        if self.id_prefix is not None:
            assert str(event.get("event_id", "")).startswith(self.id_prefix), event
        self.raw.append(text)
        self.events.append(event)
        return event

    async def wait_for(
        self,
        ga_type: str | None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = WAIT,
        *,
        since: int | None = None,
    ) -> dict[str, Any]:
        """The next event of this (GA-named) type (``None``: of any type) that passes
        ``where``, after those an earlier wait looked at (with ``since``: at or after that
        index of ``events``), receiving more as needed."""
        kind = self.t(ga_type) if ga_type is not None else None
        what = kind or "event"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = self.looked if since is None else since
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                self.looked = max(self.looked, index)
                if (kind is None or event["type"] == kind) and (where is None or where(event)):
                    return event
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"no {what} within {timeout} s; last events: {self.last_events()}"
                )
            try:
                received = await self._receive(left)
            except asyncio.TimeoutError:
                continue
            if received is None:
                raise AssertionError(
                    f"closed ({self.channel.close_code}) before {what}; "
                    f"last events: {self.last_events()}"
                )

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next event, of any type."""
        return await self.wait_for(None, timeout=timeout)

    async def until(self, ga_type: str, timeout: float = WAIT) -> list[dict[str, Any]]:
        """Every event from the next one up to and including the next one of this type."""
        start = self.looked
        await self.wait_for(ga_type, timeout=timeout)
        return self.events[start : self.looked]

    async def error(self) -> dict[str, Any]:
        """The next ``error`` event's ``error``."""
        event = await self.wait_for("error")
        error: dict[str, Any] = event["error"]
        return error

    async def drain_until_closed(self, timeout: float = WAIT) -> int | None:
        """Receive (and keep) events until the peer closes; returns its close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                received = await self._receive(left)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"not closed within {timeout} s; last events: {self.last_events()}"
                ) from None
            if received is None:
                return self.channel.close_code

    # ---------------------------------------------------------------------------- what came

    def of_type(self, ga_type: str) -> list[dict[str, Any]]:
        """Every event received of this (GA-named) type."""
        kind = self.t(ga_type)
        return [e for e in self.events if e["type"] == kind]

    def errors(self, kind: str) -> list[dict[str, Any]]:
        """The ``error`` of every ``error`` event received whose ``error.type`` is ``kind``
        (``relay_error``, ``relay_notice``, ``invalid_request_error``...)."""
        return [e["error"] for e in self.of_type("error") if e["error"]["type"] == kind]

    def reply_of(self, response_id: str) -> str:
        """What that response said: its last text, or audio transcript (``""`` if none)."""
        for event in reversed(self.events):
            if event.get("response_id") != response_id:
                continue
            if event["type"] == self.t("response.output_text.done"):
                return str(event["text"])
            if event["type"] == self.t("response.output_audio_transcript.done"):
                return str(event["transcript"])
        return ""


async def websocket(
    http: aiohttp.ClientSession,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientWebSocketResponse[bool]:
    """The one WebSocket the test clients open (messages up to 64 MiB)."""
    return await http.ws_connect(
        url, params=params or None, headers=headers, max_msg_size=64 * 2**20
    )


@contextlib.asynccontextmanager
async def connect(
    engine: Any, dialect: str = "ga", *, query: str = "", headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """A :class:`Client` of ``engine`` over a real WebSocket, past ``session.created``."""
    url = engine.ga_url() if dialect == "ga" else engine.preview_url()
    if query:
        url += "&" + query
    async with aiohttp.ClientSession() as http, await websocket(http, url, headers=headers) as ws:
        client = Client(AiohttpChannel(ws), dialect, ws, id_prefix="event_")
        await client.wait_for("session.created")
        yield client


@contextlib.asynccontextmanager
async def open_memory(
    engine: Any,
    dialect: str = "ga",
    *,
    query: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[Client]:
    """A :class:`Client` of a ``RunningEngine`` in this loop over an in-memory channel
    (:meth:`~aoai_realtime.engine.server.RunningEngine.open_channel`), past ``session.created``."""
    if dialect == "ga":
        path, base = "/openai/v1/realtime", {"model": "gpt-realtime"}
    else:
        path, base = "/openai/realtime", {"api-version": "2025-04-01-preview", "deployment": "d"}
    channel = await engine.open_channel(path, {**base, **(query or {})}, headers or {})
    try:
        client = Client(channel, dialect, id_prefix="event_")
        await client.wait_for("session.created")
        yield client
    finally:
        await channel.close()


async def open_page(
    server: ServerThread | str, http: aiohttp.ClientSession, **query: str
) -> Client:
    """A page of the middle tier ``server`` (or its ``ws_url``): a GA :class:`Client` over a
    WebSocket, with ``query`` parameters (``endpoint``, ``deployment``); nothing received yet,
    not even ``session.created``. Close it with ``page.ws.close()``."""
    url = server if isinstance(server, str) else server.ws_url
    ws = await websocket(http, url, params=query)
    return Client(AiohttpChannel(ws), "ga", ws)


def audio_of(events: list[dict[str, Any]], kind: str = "response.output_audio.delta") -> bytes:
    """The audio of every ``kind`` delta in ``events`` (either dialect's name)."""
    names = (kind, GA_TO_PREVIEW.get(kind, kind))
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] in names)


def text_of(events: list[dict[str, Any]], kind: str) -> str:
    """The text of every ``kind`` delta in ``events`` (either dialect's name)."""
    names = (kind, GA_TO_PREVIEW.get(kind, kind))
    return "".join(e["delta"] for e in events if e["type"] in names)


def make_server(
    engine: Any = None,
    *,
    settings: Settings | None = None,
    policy: Policy | None = None,
    host: str = "127.0.0.1",
    observer_factory: Callable[[str, Any], Any] | None = None,
) -> ServerThread:
    """A middle tier on 127.0.0.1 (a free port) with the demo tools, ``engine`` its local
    upstream; ``host`` is the address its policy believes it listens on."""
    local = LocalEngine.external(engine.http_url) if engine is not None else None
    upstreams = Upstreams(settings=settings, local=local, listen_host=host)
    config = ServerConfig(
        host=host,
        port=0,
        policy=policy if policy is not None else Policy.build(tools=demo_tools()),
        observer_factory=observer_factory,
    )
    return ServerThread(config, upstreams, bind="127.0.0.1")


def write_wav(path: Path, pcm: bytes, rate: int = 24000) -> Path:
    """``pcm`` (PCM16 mono) as a WAV file at ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def shown(role: str, test: str) -> str:
    """A condition for :meth:`Browser.wait`: a ``role`` message of the transcript ("user",
    "assistant") whose text passes ``test``, JavaScript over ``n.textContent``."""
    return f"[...document.querySelectorAll('#transcript .msg.{role} .text')].some(n => {test})"


class Browser:
    """One Chromium with a fake microphone file, one page, and every console problem seen.

    The page's Content-Security-Policy forbids ``eval``, so waits poll ``window.__rt`` from
    Python (``page.evaluate`` is not subject to the page's CSP) instead of ``wait_for_function``.
    """

    def __init__(self, executable: str, wav: Path) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=executable,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console.error: {m.text}") if m.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))

    def rt(self, expr: str) -> Any:
        return self.page.evaluate(f"() => {{ const rt = window.__rt; return {expr}; }}")

    def wait(self, expr: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll a JavaScript expression over ``rt`` (window.__rt) until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.rt(expr)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.rt(
                    "({state: rt.state, lastError: rt.lastError, notices: rt.notices, "
                    "events: rt.events.slice(-12).map(e => e.type)})"
                )
                raise AssertionError(f"timed out waiting for {what or expr}: {state}")
            self.page.wait_for_timeout(100)

    def start_refused(self, server: ServerThread, fault: str) -> None:
        """Press Start while the local engine refuses the handshake with ``fault`` (e.g.
        ``refuse:401``); returns once the page has shown the error and is idle again."""
        server.upstreams.local_query = {"fault": fault}
        try:
            self.page.click("#start")
            self.wait("rt.lastError", 20, "the error")
            self.wait("rt.state === 'idle'", 30, "idle after the error")
        finally:
            server.upstreams.local_query = {}

    def text(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def type_message(self, text: str) -> None:
        self.page.fill("#message", text)
        self.page.press("#message", "Enter")

    def close(self) -> None:
        self.context.close()
        self.browser.close()
        self._pw.stop()
