"""The client's handshake, against a real WebSocket server on loopback.

The server here is a handshake recorder, not a protocol mock: it records the request path, query
and headers, answers with an HTTP status or with ``session.created`` (plus, on request, a few
raw events), and otherwise says nothing. Conversations are tested against the local engine in
``test_client_engine.py``.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from azure.core.credentials import AccessToken

from aoai_realtime import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    DeploymentNotFound,
    HandshakeError,
    RateLimited,
    RealtimeClient,
    Settings,
    connect,
)
from aoai_realtime.client import _handshake_headers, _resolve_target
from aoai_realtime.config import ConfigError
from aoai_realtime.protocol import events as ev

KEY = "0123456789abcdef0123456789ABCDEF"
PREVIEW = "2025-04-01-preview"

GA_SESSION = {
    "id": "sess_1",
    "object": "realtime.session",
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}
PREVIEW_SESSION = {
    "id": "sess_1",
    "object": "realtime.session",
    "modalities": ["text", "audio"],
    "voice": "alloy",
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
}


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Recorder:
    """A WebSocket server that records handshakes and speaks only ``session.created``."""

    status: int | None = None  # answer the handshake with this HTTP status instead
    status_headers: dict[str, str] = field(default_factory=dict)
    extra_events: list[dict[str, Any]] = field(default_factory=list)
    answer_close: bool = True  # False: never answer the client's close frame
    send_created: bool = True  # False: accept the WebSocket, then say nothing
    requests: list[Request] = field(default_factory=list)
    received: list[Any] = field(default_factory=list)
    server_sockets: list[web.WebSocketResponse] = field(default_factory=list)
    transports: list[Any] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Request(request.path, dict(request.query), dict(request.headers)))
        if self.status is not None:
            return web.Response(
                status=self.status, headers=self.status_headers, text='{"error": "recorded"}'
            )
        ws = web.WebSocketResponse(autoclose=self.answer_close, max_msg_size=0)
        await ws.prepare(request)
        self.server_sockets.append(ws)
        self.transports.append(request.transport)
        preview = request.path == "/openai/realtime" or "OpenAI-Beta" in request.headers
        session = PREVIEW_SESSION if preview else GA_SESSION
        if self.send_created:
            await ws.send_json(
                {"type": "session.created", "event_id": "event_1", "session": session}
            )
        for event in self.extra_events:
            await ws.send_json(event)
        while True:
            msg = await ws.receive()
            self.received.append(msg.data)
            if msg.type is WSMsgType.CLOSE and not self.answer_close:
                await asyncio.sleep(3600)  # a peer that never answers the close frame
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return ws

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handler)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# URLs, query and headers per dialect


async def test_ga_azure_api_key_handshake() -> None:
    async with (
        Recorder() as rec,
        connect(endpoint=rec.base, deployment="gpt-rt", api_key=KEY) as rt,
    ):
        assert rt.dialect == "ga"
        assert rt.url == f"ws://127.0.0.1:{rec.port}/openai/v1/realtime?model=gpt-rt"
        [req] = rec.requests
        assert req.path == "/openai/v1/realtime"
        assert req.query == {"model": "gpt-rt"}
        assert req.headers["api-key"] == KEY
        assert "Authorization" not in req.headers
        assert "OpenAI-Beta" not in req.headers
        assert "api-version" not in req.query
        assert _is_uuid(req.headers["x-ms-client-request-id"])
        assert req.headers["x-ms-client-request-id"] == rt.request_id
        # The first event is session.created, in the GA vocabulary.
        first = await anext(aiter(rt))
        assert isinstance(first, ev.SessionCreated)
        assert rt.config.voice == "marin"


async def test_preview_azure_handshake_and_translated_session() -> None:
    async with (
        Recorder() as rec,
        connect(
            endpoint=rec.base,
            deployment="gpt-4o-realtime-preview",
            api_key=KEY,
            api_version=PREVIEW,
            request_id="11111111-2222-3333-4444-555555555555",
        ) as rt,
    ):
        assert rt.dialect == "preview"
        [req] = rec.requests
        assert req.path == "/openai/realtime"
        assert req.query == {"api-version": PREVIEW, "deployment": "gpt-4o-realtime-preview"}
        assert req.headers["api-key"] == KEY
        assert "OpenAI-Beta" not in req.headers
        assert req.headers["x-ms-client-request-id"] == "11111111-2222-3333-4444-555555555555"
        first = await anext(aiter(rt))
        # The preview's flat session arrives in the GA shape.
        assert isinstance(first, ev.SessionCreated)
        assert first.session["audio"]["output"]["voice"] == "alloy"
        assert first.session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert "modalities" not in first.session


async def test_pasted_preview_url_is_normalised() -> None:
    async with Recorder() as rec:
        pasted = f"{rec.base}/openai/realtime?api-version={PREVIEW}&deployment=dep1"
        async with connect(endpoint=pasted, api_key=KEY) as rt:
            assert rt.dialect == "preview"
        assert rec.requests[0].path == "/openai/realtime"
        assert rec.requests[0].query == {"api-version": PREVIEW, "deployment": "dep1"}


async def test_settings_object_and_explicit_dialect_override() -> None:
    async with Recorder() as rec:
        settings = Settings(endpoint=rec.base, deployment="d", api_key=KEY, api_version=PREVIEW)
        async with connect(settings, dialect="ga") as rt:
            assert rt.dialect == "ga"
        async with connect(settings) as rt:
            assert rt.dialect == "preview"
        assert [r.path for r in rec.requests] == ["/openai/v1/realtime", "/openai/realtime"]


async def test_any_url_is_used_as_is_and_both_connect_forms_work() -> None:
    async with Recorder() as rec:
        url = f"ws://127.0.0.1:{rec.port}/custom/realtime?model=m&x=1"
        rt = await connect(url=url)
        try:
            assert rt.dialect == "ga"
            assert rec.requests[0].path == "/custom/realtime"
            assert rec.requests[0].query == {"model": "m", "x": "1"}
            # A local server gets no credentials of ours.
            assert "api-key" not in rec.requests[0].headers
            assert "Authorization" not in rec.requests[0].headers
        finally:
            await rt.close()
        async with await RealtimeClient.connect(url=url + "&api-version=2024-10-01-preview") as rt:
            assert rt.dialect == "preview"


async def test_a_bare_url_uses_the_ga_path(text_engine: Any) -> None:
    """``url="ws://HOST:PORT"`` (no path) means the GA path, as the commands' ``--url`` does."""
    async with Recorder() as rec:
        rt = await connect(url=f"ws://127.0.0.1:{rec.port}")
        await rt.close()
        rt = await connect(url=f"http://127.0.0.1:{rec.port}/", deployment="mine")
        await rt.close()
        assert [(r.path, r.query) for r in rec.requests] == [
            ("/openai/v1/realtime", {"model": "gpt-realtime"}),
            ("/openai/v1/realtime", {"model": "mine"}),
        ]
    async with await RealtimeClient.connect(url=f"ws://127.0.0.1:{text_engine.port}") as rt:
        assert rt.conversation.session.get("id", "").startswith("sess_")  # the engine's own
    with pytest.raises(ConfigError, match="not a realtime WebSocket URL"):
        await connect(url="127.0.0.1:8788")


async def test_404_of_a_url_names_its_path_not_the_settings() -> None:
    async with Recorder(status=404) as rec:
        with pytest.raises(DeploymentNotFound) as info:
            await connect(url=f"ws://127.0.0.1:{rec.port}/wrong/realtime?model=m")
    msg = str(info.value)
    assert "this used the path /wrong/realtime of the url given" in msg
    assert "/openai/v1/realtime?model=NAME" in msg
    assert "AZURE_OPENAI_DEPLOYMENT" not in msg  # the settings were not used


def test_openai_urls_and_beta_header_only_for_preview() -> None:
    kw: dict[str, Any] = dict(
        settings=None,
        deployment="gpt-realtime",
        api_key=KEY,
        credential=None,
        api_version=None,
        url=None,
        headers=None,
    )
    ga = _resolve_target(endpoint="https://api.openai.com", dialect=None, **kw)
    assert ga.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert ga.dialect == "ga"
    auth = {"Authorization": f"Bearer {KEY}"}
    headers = _handshake_headers(ga, auth, "rid")
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert "OpenAI-Beta" not in headers and "api-key" not in headers
    assert headers["x-ms-client-request-id"] == "rid"

    preview = _resolve_target(endpoint="https://api.openai.com", dialect="preview", **kw)
    assert preview.url == ga.url  # same URL; the header selects the preview protocol
    assert _handshake_headers(preview, auth, "rid")["OpenAI-Beta"] == "realtime=v1"

    # The key is sent as a Bearer token to OpenAI (and as api-key to Azure).
    assert asyncio.run(ga.credential.headers()) == auth
    azure = _resolve_target(endpoint="https://res.openai.azure.com", dialect=None, **kw)
    assert azure.url == "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    assert asyncio.run(azure.credential.headers()) == {"api-key": KEY}


# --------------------------------------------------------------------------------------------
# Entra ID: a fresh token per connection


class ShortLivedTokens:
    """An azure-identity AsyncTokenCredential whose tokens expire within a minute."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(f"token-{len(self.scopes)}", int(time.time()) + 60)

    async def close(self) -> None:
        pass


async def test_entra_token_is_refreshed_on_reconnect() -> None:
    tokens = ShortLivedTokens()
    async with Recorder() as rec:
        rt = await connect(endpoint=rec.base, deployment="d", credential=tokens)
        try:
            first_id = rt.request_id
            await rt.reconnect()
            assert rt.request_id != first_id
            assert not rt.closed
        finally:
            await rt.close()
        assert [r.headers["Authorization"] for r in rec.requests] == [
            "Bearer token-1",
            "Bearer token-2",
        ]
        assert tokens.scopes == [("https://cognitiveservices.azure.com/.default",)] * 2
        assert all("api-key" not in r.headers for r in rec.requests)
        ids = [r.headers["x-ms-client-request-id"] for r in rec.requests]
        assert len(set(ids)) == 2 and all(_is_uuid(i) for i in ids)


# --------------------------------------------------------------------------------------------
# Handshake failures say what to fix


async def test_401_says_run_az_login_or_check_the_key() -> None:
    async with Recorder(status=401) as rec:
        with pytest.raises(AuthenticationError) as info:
            await connect(endpoint=rec.base, deployment="d", api_key=KEY)
    err = info.value
    assert err.status == 401
    assert "az login" in str(err) and "AZURE_OPENAI_API_KEY" in str(err)
    assert KEY not in str(err)  # the key itself is never shown
    assert err.request_id and err.request_id in str(err)


async def test_401_with_a_token_of_the_application_says_to_check_the_token() -> None:
    async with Recorder(status=401) as rec:
        with pytest.raises(AuthenticationError) as info:
            await connect(endpoint=rec.base, deployment="d", credential=lambda: "a-token")
    assert "check the token" in str(info.value)
    assert "AZURE_OPENAI_API_KEY" not in str(info.value)  # no key was involved


async def test_403_is_an_authentication_error_too() -> None:
    async with Recorder(status=403) as rec:
        with pytest.raises(AuthenticationError, match="HTTP 403"):
            await connect(endpoint=rec.base, deployment="d", api_key=KEY)


async def test_404_names_deployment_endpoint_and_dialect_hint() -> None:
    async with Recorder(status=404) as rec:
        with pytest.raises(DeploymentNotFound) as info:
            await connect(endpoint=rec.base, deployment="my-dep", api_key=KEY)
        msg = str(info.value)
        assert f"deployment 'my-dep' not found at endpoint {rec.base}" in msg
        assert "AZURE_OPENAI_API_VERSION" in msg  # GA failed: maybe it is a preview deployment
        with pytest.raises(DeploymentNotFound) as info:
            await connect(endpoint=rec.base, deployment="my-dep", api_key=KEY, api_version=PREVIEW)
        assert f"api-version={PREVIEW}" in str(info.value)
        assert "unset AZURE_OPENAI_API_VERSION" in str(info.value)


async def test_429_is_rate_limited_with_retry_after() -> None:
    async with Recorder(status=429, status_headers={"Retry-After": "7"}) as rec:
        with pytest.raises(RateLimited) as info:
            await connect(endpoint=rec.base, deployment="d", api_key=KEY)
    assert info.value.retry_after == 7
    assert "retry after 7 s" in str(info.value)
    assert isinstance(info.value, HandshakeError) and isinstance(info.value, ConnectError)


async def test_200_instead_of_upgrade_asks_whether_it_is_a_realtime_endpoint() -> None:
    async with Recorder(status=200) as rec:
        with pytest.raises(HandshakeError, match="realtime endpoint"):
            await connect(endpoint=rec.base, deployment="d", api_key=KEY)


async def test_a_websocket_that_never_says_session_created() -> None:
    async with Recorder(send_created=False) as rec:
        with pytest.raises(ConnectError, match="no session.created within 0.5 s"):
            await connect(url=rec.base + "/not-realtime", open_timeout=0.5)


async def test_connection_refused_names_the_url() -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError) as info:
        await connect(endpoint=f"http://127.0.0.1:{port}", deployment="d", api_key=KEY)
    assert f"ws://127.0.0.1:{port}/openai/v1/realtime?model=d" in str(info.value)
    assert "is the server running" in str(info.value)
    assert not isinstance(info.value, HandshakeError)


async def test_unresolvable_host_names_the_url() -> None:
    with pytest.raises(ConnectError) as info:
        await connect(
            endpoint="https://no-such-resource.invalid",
            deployment="d",
            api_key=KEY,
            open_timeout=10,
        )
    assert "no-such-resource.invalid" in str(info.value)


# --------------------------------------------------------------------------------------------
# Messages: large ones, unknown ones


async def test_server_event_bigger_than_1_mib_is_received() -> None:
    audio = base64.b64encode(bytes(3 * 1024 * 1024 // 2)).decode()  # 2 MiB of base64
    big = {
        "type": "response.output_audio.delta",
        "event_id": "e_big",
        "response_id": "resp_1",
        "item_id": "item_1",
        "delta": audio,
    }
    async with Recorder(extra_events=[big]) as rec, connect(url=rec.base + "/ws") as rt:
        events = rt.events()
        assert isinstance(await anext(events), ev.SessionCreated)
        got = await asyncio.wait_for(anext(events), 10)
        assert isinstance(got, ev.OutputAudioDelta)
        assert len(got.delta) > 2 * 1024 * 1024 - 8


async def test_message_limit_is_configurable() -> None:
    big = {"type": "vendor.blob", "data": "x" * 200_000}
    async with Recorder(extra_events=[big]) as rec:
        rt = await connect(url=rec.base + "/ws", max_message_bytes=100_000)
        try:
            with pytest.raises(ConnectionClosed) as info:
                async for _ in rt:
                    pass
            assert info.value.code == 1009  # message too big
            assert rt.closed
        finally:
            await rt.close()


@pytest.mark.parametrize("api_version", [None, PREVIEW])
async def test_unknown_event_passes_through(api_version: str | None) -> None:
    unknown = {"type": "vendor.future_event", "event_id": "e_x", "payload": {"a": [1, 2]}}
    async with (
        Recorder(extra_events=[unknown]) as rec,
        connect(endpoint=rec.base, deployment="d", api_key=KEY, api_version=api_version) as rt,
    ):
        events = rt.events()
        assert isinstance(await anext(events), ev.SessionCreated)
        got = await asyncio.wait_for(anext(events), 5)
        assert isinstance(got, ev.UnknownEvent)
        assert got.type == "vendor.future_event"
        assert got.event_id == "e_x"
        assert got.model_extra == {"payload": {"a": [1, 2]}}


# --------------------------------------------------------------------------------------------
# Closing


async def test_clean_close_sends_a_close_frame() -> None:
    async with Recorder() as rec:
        async with connect(url=rec.base + "/ws") as rt:
            pass
        assert rt.closed
        for _ in range(50):
            if rec.server_sockets[0].closed:
                break
            await asyncio.sleep(0.02)
        assert rec.server_sockets[0].close_code == 1000


async def test_close_is_bounded_when_the_server_never_answers() -> None:
    async with Recorder(answer_close=False) as rec:
        rt = await connect(url=rec.base + "/ws", close_timeout=0.5)
        started = time.monotonic()
        await asyncio.wait_for(rt.close(), timeout=10)  # without the bound: a long hang
        elapsed = time.monotonic() - started
        assert rt.closed
        assert elapsed < 5  # loose: the point is that it returns
        # The server saw the close frame, never answered, and still lost the TCP connection.
        assert any(m == 1000 for m in rec.received)
        transport = rec.transports[0]
        for _ in range(100):
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(0.02)
        assert transport is None or transport.is_closing()
        # Closed means closed: calls now fail clearly, and closing again is harmless.
        with pytest.raises(ConnectionClosed, match="closed"):
            await rt.send({"type": "input_audio_buffer.clear"})
        await rt.close()


async def test_unread_events_are_bounded_oldest_dropped(caplog: pytest.LogCaptureFixture) -> None:
    extra = [{"type": "vendor.tick", "n": n} for n in range(6)]
    async with Recorder(extra_events=extra) as rec:
        rt = await connect(url=rec.base + "/ws", max_queue=3)
        try:
            await asyncio.sleep(0.3)  # nobody reads meanwhile
        finally:
            await rt.close()
        kept = [e.model_extra for e in [e async for e in rt]]
    assert kept == [{"n": 3}, {"n": 4}, {"n": 5}]
    warnings = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(warnings) == 1 and "max_queue=None" in warnings[0].getMessage()
