"""``serve`` exposed beyond loopback: the access token, the Host check, the Origin check with its
scheme, the page's CSP, and the security headers on every response.

The middle tiers here are the real aiohttp app (``ServerThread``) believing it listens on
``0.0.0.0`` (``ServerConfig.host``: the policy) while it is bound to 127.0.0.1 only, in front of
the text-only scripted engine: nothing leaves loopback. The command's refusal is checked without
listening anywhere (its configuration builder, and ``main`` on an address this machine does not
have).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aoai_realtime.channel import AiohttpChannel
from aoai_realtime.config import ConfigError
from aoai_realtime.server import LocalEngine, Policy, ServerConfig, ServerThread, Upstreams
from aoai_realtime.server.app import PAGE_PROTOCOL, TOKEN_PROTOCOL_PREFIX
from aoai_realtime.server.cli import TOKEN_ENV, build_parser, exposure_notes, prepare
from aoai_realtime.server.cli import main as serve_main
from aoai_realtime.server.tools import demo_tools
from helpers import ENGINE_SCRIPT, Browser, Client, make_server, shown, write_wav

TOKEN = "mt-7c1d0e5a9b2f4d68a1e3c5b7d9f0a2c4"
"""The middle tier's own access token (what ``--token-file`` would hold)."""
PUBLIC = "voice.example"
"""The public name a proxy in front answers for (``--allow-host``)."""
PUBLIC_ORIGIN = f"https://{PUBLIC}"
"""The page's origin behind that TLS proxy (``--allow-origin``)."""
RELAY_PATHS = ("/realtime", "/openai/v1/realtime", "/openai/realtime")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def exposed_server(
    engine: Any, *, host: str = "0.0.0.0", settable: tuple[str, ...] | None = None, **config: Any
) -> ServerThread:
    """A middle tier whose policy believes it listens on ``host``, bound to 127.0.0.1 only, the
    text engine its local upstream; ``config`` are more :class:`ServerConfig` fields."""
    upstreams = Upstreams(
        settings=None, local=LocalEngine.external(engine.http_url), listen_host=host
    )
    policy = (
        Policy.build(tools=demo_tools())
        if settable is None
        else Policy.build(tools=demo_tools(), settable=settable)
    )
    return ServerThread(
        ServerConfig(host=host, port=0, policy=policy, **config), upstreams, bind="127.0.0.1"
    )


@pytest.fixture(scope="module")
def guarded(text_engine: Any) -> Iterator[ServerThread]:
    """``serve --host 0.0.0.0 --token-file F --allow-host voice.example --allow-origin
    https://voice.example``. The page may set only what the text engine accepts."""
    srv = exposed_server(
        text_engine,
        token=TOKEN,
        allowed_hosts=(PUBLIC,),
        allowed_origins=(PUBLIC_ORIGIN,),
        settable=("voice", "instructions"),
    )
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def loopback(text_engine: Any) -> Iterator[ServerThread]:
    """``serve`` as it runs by default: loopback, no token."""
    srv = make_server(text_engine)
    yield srv
    srv.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_url(server: ServerThread, path: str = "/realtime") -> str:
    return "ws" + server.http_url[4:] + path


async def refused_status(
    http: aiohttp.ClientSession, url: str, **options: Any
) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) a refused WebSocket handshake got."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        ws = await http.ws_connect(url, **options)
        await ws.close()
    return refused.value.status, dict(refused.value.headers or {})


async def session_created(http: aiohttp.ClientSession, url: str, **options: Any) -> Client:
    """A page past ``session.created`` (closed by the caller)."""
    ws = await http.ws_connect(url, **options)
    page = Client(AiohttpChannel(ws), "ga", ws)
    created = await page.wait_for("session.created")
    assert created["session"]["type"] == "realtime"
    return page


def no_version_banner(headers: Any) -> None:
    assert headers.get("Server") == "aoai-realtime", headers.get("Server")
    for key, value in headers.items():
        assert "aiohttp" not in value.lower() and "python/" not in value.lower(), (key, value)


def connect_src(csp: str) -> list[str]:
    for directive in csp.split(";"):
        name, *sources = directive.split()
        if name == "connect-src":
            return sources
    raise AssertionError(f"no connect-src in {csp!r}")


# ------------------------------------------------------------------------------------ the command


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Azure settings, no token in the environment, no .env: the local engine upstream."""
    monkeypatch.chdir(tmp_path)
    for var in (
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_DEPLOYMENT_NAME",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_API_VERSION",
        "PORT",
        TOKEN_ENV,
        "AOAI_REALTIME_SERVE_ALLOW_HOSTS",
        "AOAI_REALTIME_SERVE_ALLOW_ORIGINS",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_serve_off_loopback_without_a_token_refuses_to_start(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: even a broken refusal binds nothing
    assert serve_main(["--host", "192.0.2.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aoai-realtime serve: listening on 192.0.2.1 reaches beyond")
    for words in ("--token-file", TOKEN_ENV, "--no-auth", "loopback", "no token is needed"):
        assert words in err, (words, err)
    for argv in (
        ["--host", "0.0.0.0"],
        ["--host", "::"],
        ["--allow-host", PUBLIC],  # loopback behind a proxy that answers for a public name
    ):
        with pytest.raises(ConfigError) as refused:
            prepare(build_parser().parse_args(argv))
        assert "no access token is set" in str(refused.value), argv
    with pytest.raises(ConfigError, match="voice.example .--allow-host."):
        prepare(build_parser().parse_args(["--allow-host", PUBLIC]))
    # loopback: nothing needed, nothing said
    config, _ = prepare(build_parser().parse_args([]))
    assert config.token is None and exposure_notes(config) == []


def test_serve_token_sources_and_no_auth(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def config_of(*argv: str) -> ServerConfig:
        return prepare(build_parser().parse_args(list(argv)))[0]

    token_file = clean_env / "token"
    token_file.write_text(TOKEN + "\n")
    config = config_of("--host", "0.0.0.0", "--token-file", str(token_file))
    assert config.token == TOKEN and not config.no_auth
    assert "access token is required" in exposure_notes(config)[0]
    assert config_of("--host", "0.0.0.0", "--token", TOKEN).token == TOKEN
    assert config_of("--token", TOKEN).token == TOKEN  # on loopback too, when given
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert config_of("--host", "0.0.0.0").token == TOKEN
    # a token and --no-auth contradict; --no-auth alone serves, with a loud warning
    with pytest.raises(ConfigError, match="contradict"):
        config_of("--host", "0.0.0.0", "--no-auth")
    monkeypatch.delenv(TOKEN_ENV)
    config = config_of("--host", "0.0.0.0", "--no-auth")
    assert config.token is None and config.no_auth
    assert exposure_notes(config)[0].startswith("aoai-realtime: WARNING: --no-auth")
    # tokens that cannot work, hosts and origins that are not names or origins
    for argv, words in (
        (["--token", "short"], "at least 16"),
        (["--token", "has a space in it, sixteen+"], "no spaces"),
        (["--token-file", str(clean_env / "missing")], "cannot read it"),
        (["--allow-host", "https://voice.example/"], "no scheme"),
        (["--allow-origin", "voice.example"], "https://app.example"),
    ):
        with pytest.raises(ConfigError, match=words):
            config_of(*argv)
    assert config_of("--allow-host", "Voice.Example:443", "--token", TOKEN).allowed_hosts == (
        PUBLIC,
    )
    assert config_of("--allow-origin", "HTTPS://Voice.Example/").allowed_origins == (PUBLIC_ORIGIN,)
    # the environment's origins (a container's settings) add to the flags'
    monkeypatch.setenv("AOAI_REALTIME_SERVE_ALLOW_ORIGINS", " https://Voice.Example , ")
    assert config_of().allowed_origins == (PUBLIC_ORIGIN,)
    monkeypatch.setenv("AOAI_REALTIME_SERVE_ALLOW_ORIGINS", "voice.example")
    with pytest.raises(ConfigError, match="https://app.example"):
        config_of()
    monkeypatch.delenv("AOAI_REALTIME_SERVE_ALLOW_ORIGINS")
    with pytest.raises(SystemExit):  # argparse: one way to give the token at a time
        build_parser().parse_args(["--token", TOKEN, "--no-auth"])
    capsys.readouterr()


def test_create_app_refuses_an_exposed_server_without_a_token(text_engine: Any) -> None:
    with pytest.raises(ConfigError, match="no access token is set"):
        exposed_server(text_engine)


# ------------------------------------------------------------------------------------ the token


async def test_token_is_required_on_the_relay_and_the_config(guarded: ServerThread) -> None:
    async with aiohttp.ClientSession() as http:
        base = guarded.http_url
        for headers, code in (
            ({}, "token_required"),
            (bearer("mt-wrong-token-0000000000000000"), "token_invalid"),
            ({"api-key": "mt-wrong-token-0000000000000000"}, "token_invalid"),
            ({"Authorization": f"Basic {TOKEN}"}, "token_required"),
        ):
            async with http.get(base + "/api/config", headers=headers) as resp:
                assert resp.status == 401, headers
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                error = (await resp.json())["error"]
                assert error["type"] == "unauthorized" and error["code"] == code
                assert "--token" in error["message"] and "not an Azure key" in error["message"]
            for path in RELAY_PATHS:
                status, _ = await refused_status(http, ws_url(guarded, path), headers=headers)
                assert status == 401, (path, headers)
        # the query string is no place for a token (logs, history keep it)
        status, _ = await refused_status(http, ws_url(guarded) + f"?token={TOKEN}")
        assert status == 401
        # the page itself, its files and /healthz load without one (the page asks for it)
        for path in ("/", "/app.js", "/healthz"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
        for headers in (bearer(), {"api-key": TOKEN}):
            async with http.get(base + "/api/config", headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["upstream"]["kind"] == "local"


async def test_right_token_opens_a_session_each_way(
    guarded: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http:
        # the page's way: a subprotocol entry; the server selects the plain one, never the token
        page = await session_created(
            http,
            ws_url(guarded),
            protocols=(PAGE_PROTOCOL, TOKEN_PROTOCOL_PREFIX + TOKEN),
        )
        assert page.ws.protocol == PAGE_PROTOCOL
        assert await page.ask("hello") == "Hello! How can I help you today?"
        await page.ws.close()
        # a wrong token as a subprotocol is refused like any other
        status, headers = await refused_status(
            http,
            ws_url(guarded),
            protocols=(PAGE_PROTOCOL, TOKEN_PROTOCOL_PREFIX + "mt-wrong-token-0000000000000000"),
        )
        assert status == 401 and TOKEN not in str(headers)
        # the token entry alone (no protocol in common): aiohttp's warning does not show it
        page = await session_created(
            http, ws_url(guarded), protocols=(TOKEN_PROTOCOL_PREFIX + TOKEN,)
        )
        assert page.ws.protocol is None
        await page.ws.close()
        assert "offered, not shown" in caplog.text
        # SDK and openai clients pointed at the middle tier: Bearer or api-key
        page = await session_created(http, ws_url(guarded, "/openai/v1/realtime"), headers=bearer())
        await page.ws.close()
        preview = ws_url(guarded, "/openai/realtime") + "?api-version=2025-04-01-preview"
        ws = await http.ws_connect(preview, headers={"api-key": TOKEN})
        page = Client(AiohttpChannel(ws), "preview", ws)
        await page.wait_for("session.created")
        await ws.close()
    assert TOKEN not in caplog.text and repr(guarded.config).count("token") == 0


async def test_sdk_client_with_the_token_as_its_key(guarded: ServerThread) -> None:
    import aoai_realtime as rt

    url = ws_url(guarded, "/openai/v1/realtime") + "?model=anything"
    async with rt.connect(url=url, api_key=TOKEN) as s:
        response = await s.send_text("hello")
        assert (await response.done()).transcript == "Hello! How can I help you today?"
    with pytest.raises(rt.AuthenticationError) as refused:
        async with rt.connect(url=url, api_key="mt-wrong-token-0000000000000000"):
            pass
    assert refused.value.status == 401


async def test_loopback_needs_no_token_unless_one_is_set(
    loopback: ServerThread, text_engine: Any
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(loopback.http_url + "/api/config") as resp:
            assert resp.status == 200
        page = await session_created(http, ws_url(loopback))
        await page.ws.close()
        srv = exposed_server(text_engine, host="127.0.0.1", token=TOKEN)
        try:
            async with http.get(srv.http_url + "/api/config") as resp:
                assert resp.status == 401
            assert (await refused_status(http, ws_url(srv)))[0] == 401
            page = await session_created(http, ws_url(srv), headers=bearer())
            await page.ws.close()
        finally:
            srv.close()


# ------------------------------------------------------------------------------------ host, origin


async def test_dns_rebinding_is_refused_off_loopback_and_on_loopback(
    guarded: ServerThread, loopback: ServerThread
) -> None:
    async with aiohttp.ClientSession() as http:
        for server in (guarded, loopback):
            evil = f"evil.example:{server.port}"
            headers = {"Host": evil, "Origin": f"http://{evil}", **bearer()}
            status, _ = await refused_status(http, ws_url(server), headers=headers)
            assert status == 403, server.config.host
            async with http.get(server.url, headers={"Host": evil}) as resp:
                assert resp.status == 403
                text = await resp.text()
                assert "evil.example" in text and "--allow-host" in text
        # off loopback: the allowed name, IP addresses (a rebinding page has a name) and
        # loopback names are answered
        for host in (
            PUBLIC,
            f"{PUBLIC.upper()}.",
            f"10.1.2.3:{guarded.port}",
            "[::1]",
            "localhost",
        ):
            async with http.get(guarded.url, headers={"Host": host}) as resp:
                assert resp.status == 200, host
        async with http.get(guarded.url, headers={"Host": "voice.example.evil"}) as resp:
            assert resp.status == 403
        # on loopback, only loopback names
        async with http.get(loopback.url, headers={"Host": f"10.1.2.3:{loopback.port}"}) as resp:
            assert resp.status == 403


async def test_origin_must_match_scheme_host_and_port(guarded: ServerThread) -> None:
    own = f"127.0.0.1:{guarded.port}"
    async with aiohttp.ClientSession() as http:
        for host, origin in (
            (own, f"https://{own}"),  # the page is served over http: an https page is another
            (own, f"http://127.0.0.1:{guarded.port + 1}"),
            (own, "http://127.0.0.1"),
            (PUBLIC, f"{PUBLIC_ORIGIN}:8443"),
            (PUBLIC, f"{PUBLIC_ORIGIN}.evil"),
            (PUBLIC, "null"),
        ):
            headers = {"Host": host, "Origin": origin, **bearer()}
            status, _ = await refused_status(http, ws_url(guarded), headers=headers)
            assert status == 403, origin
        for host, origin in ((own, f"http://{own}"), (PUBLIC, PUBLIC_ORIGIN)):
            page = await session_created(
                http, ws_url(guarded), headers={"Host": host, "Origin": origin, **bearer()}
            )
            await page.ws.close()


# ------------------------------------------------------------------------------------ headers


async def test_page_csp_names_only_its_own_hosts(guarded: ServerThread) -> None:
    own = f"127.0.0.1:{guarded.port}"
    async with aiohttp.ClientSession() as http:
        for host, expected in (
            (own, ["'self'", f"ws://{own}", f"wss://{own}", f"wss://{PUBLIC}"]),
            (PUBLIC, ["'self'", f"ws://{PUBLIC}", f"wss://{PUBLIC}"]),
        ):
            async with http.get(guarded.url, headers={"Host": host}) as resp:
                assert resp.status == 200
                sources = connect_src(resp.headers["Content-Security-Policy"])
            assert sources == expected, sources
            assert not {"ws:", "wss:", "*", "http:", "https:"} & set(sources)


async def test_every_response_has_the_security_headers_and_no_version(
    guarded: ServerThread,
) -> None:
    base = guarded.http_url
    async with aiohttp.ClientSession() as http:
        for method, path, headers, status in (
            ("GET", "/nope.js", {}, 404),  # aiohttp's own HTTPNotFound
            ("GET", "/../pyproject.toml", {}, 404),
            ("POST", "/api/config", bearer(), 405),  # aiohttp's own HTTPMethodNotAllowed
            ("GET", "/", {"Host": "evil.example"}, 403),
            ("GET", "/api/config", {}, 401),
            ("GET", "/realtime", bearer(), 426),  # not a WebSocket upgrade
            ("GET", "/healthz", {}, 200),
            ("GET", "/api/config", bearer(), 200),
            ("GET", "/", {}, 200),
            ("GET", "/app.js", {}, 200),
        ):
            async with http.request(method, base + path, headers=headers) as resp:
                assert resp.status == status, (method, path)
                for key, value in SECURITY_HEADERS.items():
                    assert resp.headers.get(key) == value, (path, key)
                assert resp.headers.get("Cross-Origin-Resource-Policy") == "same-origin"
                if not path.endswith(".js"):
                    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
                no_version_banner(resp.headers)
        # a refused WebSocket handshake too
        status, headers = await refused_status(http, ws_url(guarded))
        assert status == 401
        assert headers.get("X-Content-Type-Options") == "nosniff"
        no_version_banner(headers)


def test_serve_hides_the_version_even_from_requests_that_do_not_parse() -> None:
    """``serve`` itself (its coroutine, in a thread and loop of its own, on 127.0.0.1): aiohttp
    answers a malformed request before any app code runs; it must not name its version."""
    from aiohttp import web_response

    from aoai_realtime.engine import EngineConfig
    from aoai_realtime.server.cli import serve

    engine = LocalEngine(
        EngineConfig(port=0, no_speech=True, brain="scripted", script=ENGINE_SCRIPT),
        progress=lambda _: None,
    )
    upstreams = Upstreams(settings=None, local=engine, listen_host="127.0.0.1")
    config = ServerConfig(host="127.0.0.1", port=0, token=TOKEN)
    urls: list[str] = []
    listening = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = []

    async def main() -> None:
        task = asyncio.ensure_future(
            serve(config, upstreams, ready=lambda url: (urls.append(url), listening.set()))
        )
        running.append((asyncio.get_running_loop(), task))
        with contextlib.suppress(asyncio.CancelledError):
            await task

    banner = web_response.SERVER_SOFTWARE
    thread = threading.Thread(target=asyncio.run, args=(main(),), name="serve")
    thread.start()
    try:
        assert listening.wait(60), "serve did not say it was ready"
        port = int(urls[0].rstrip("/").rsplit(":", 1)[1])
        for request in (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
            b"\x16\x03\x01 not http at all\r\n\r\n",
            b"GET /api/config HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):  # every answer here closes the connection
                    answer += chunk
            head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            assert head.split(" ")[1] in ("400", "401"), head
            assert "Server: aoai-realtime" in head.split("\r\n") and "aiohttp" not in head, head
    finally:
        if running:
            loop, task = running[0]
            loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
    assert not thread.is_alive()
    restored = web_response.SERVER_SOFTWARE
    assert restored == banner and "aiohttp" in banner  # put back for the rest of the process


# ------------------------------------------------------------------------------------ the page


@pytest.mark.browser
def test_page_asks_for_the_token_once_and_connects_with_it(
    guarded: ServerThread, loopback: ServerThread, chromium_path: str, tmp_path: Path
) -> None:
    b = Browser(chromium_path, write_wav(tmp_path / "quiet.wav", b"\x00\x00" * 24000 * 20))
    try:
        page = b.page
        # without a token to ask for, the page is as it always was: no field
        page.goto(loopback.url + "?transport=websocket")
        b.wait("!document.getElementById('start').disabled", what="the page to load")
        assert b.rt("rt.auth") == "none" and not page.locator("#token-form").is_visible()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(guarded.url + "?transport=websocket")
        b.wait("rt.auth === 'needed'", what="api/config to answer 401")
        assert page.locator("#token-form").is_visible()
        assert page.locator("#start").is_disabled()
        assert not page.locator("#banner").is_visible()  # a question, not an error
        page.fill("#token", "mt-wrong-token-0000000000000000")
        page.press("#token", "Enter")
        b.wait("rt.auth === 'refused'", what="the wrong token to be refused")
        assert "refused" in page.locator("#token-error").inner_text()
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        b.wait("!document.getElementById('start').disabled", what="the page to load")
        assert b.rt("rt.auth") == "token" and not page.locator("#token-form").is_visible()
        # kept for this tab: a reload does not ask again
        page.reload()
        b.wait("!document.getElementById('start').disabled", what="the page to load again")
        assert b.rt("rt.auth") == "token"
        page.click("#start")
        b.wait("rt.state === 'connected'", 20, "the session to start")
        b.type_message("hello")
        b.wait(shown("assistant", "n.textContent.includes('How can I help')"), 30, "the answer")
        # the token never appears in the page's URL or its WebSocket URL
        assert sockets and not [url for url in sockets + [page.url] if TOKEN in url], sockets
        page.click("#stop")
        b.wait("rt.state === 'idle'", 5)
        # what the console shows: the two api/config answers of 401 (asked, then refused)
        assert len(b.problems) == 2 and all("status of 401" in p for p in b.problems), b.problems
        assert b.rt("rt.events.filter(e => e.type === 'error').length") == 0
    finally:
        b.close()
