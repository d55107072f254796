"""The aiohttp application: the page, ``/api/config``, ``/healthz`` and the relay endpoint.

A thin adapter around :class:`~.relay.Relay`: it accepts the WebSocket, checks where it comes
from, resolves the upstream the client asked for, and hands both to the relay.

Routes
  ``GET /`` and the page's files (``.js`` as ``text/javascript``), never cached stale;
  ``GET /api/config``: what the page needs to draw itself (no secrets);
  ``GET /healthz``: ``{"ok": true, "upstream": "local"|"azure", ...}``;
  ``GET /realtime?endpoint=E&deployment=D``: the relay (GA vocabulary), also served at
  ``/openai/v1/realtime`` (GA) and ``/openai/realtime`` (preview vocabulary) so any realtime
  client, the SDK included, can use the middle tier as its endpoint.

Browsers do not apply the same-origin policy to WebSockets, so ``/realtime`` refuses an
``Origin`` other than the page's own, scheme included (a web site open in the same browser could
otherwise use the operator's Azure credentials), and every request must name a host the server
answers for (which defeats DNS rebinding): on loopback a loopback name, off loopback also an IP
address, the listen address or an ``allowed_hosts`` name.

Exposure: with an access token (``ServerConfig.token``, the middle tier's own, never the Azure
key) the relay and ``/api/config`` want it as ``Authorization: Bearer``, an ``api-key`` header
or, from the page (a browser cannot set WebSocket headers), a ``Sec-WebSocket-Protocol`` entry
``aoai-realtime.token.TOKEN`` next to ``aoai-realtime``. Off loopback a token is required
(:func:`exposure_problem`) unless ``no_auth`` says a proxy in front authenticates. Every
response, errors included, carries the security headers and ``Server: aoai-realtime`` (no
version).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import mimetypes
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .._threads import give_back_memory
from .._version import __version__
from ..channel import AiohttpChannel
from ..config import ConfigError
from ..protocol.dialect import PREVIEW_SERVER_NAMES
from .calls import CallProxy
from .errors import RelayError
from .logs import log
from .policy import Policy
from .relay import Channel, Relay, RelayObserver
from .resume import ResumeOptions
from .upstream import Upstream, Upstreams, is_loopback_host

__all__ = [
    "PAGE_PROTOCOL",
    "STATIC_DIR",
    "TOKEN_PROTOCOL_PREFIX",
    "ServerConfig",
    "check_token",
    "create_app",
    "exposed",
    "exposure_problem",
]

STATIC_DIR = Path(__file__).resolve().parent.parent / "web"

_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
    ".txt": "text/plain",
}
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src {connect}; media-src 'self' blob:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_OTHER_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
"""On every response but the page and its scripts: JSON and error texts load nothing."""
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
SERVER_HEADER = "aoai-realtime"
"""Replaces aiohttp's ``Server: Python/3.x aiohttp/3.y``: no version banner."""
PAGE_PROTOCOL = "aoai-realtime"
"""The WebSocket subprotocol the page offers (and the server selects) with its token entry."""
TOKEN_PROTOCOL_PREFIX = "aoai-realtime.token."
"""A ``Sec-WebSocket-Protocol`` entry carrying the access token: ``aoai-realtime.token.TOKEN``.
Never selected, so the token is not echoed back."""
TOKEN_MIN_LENGTH = 16
_TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
"""HTTP token characters: what a ``Sec-WebSocket-Protocol`` entry may hold."""
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
"""A Host header fit to be written into the Content-Security-Policy."""


@dataclass
class ServerConfig:
    """How the middle tier serves pages (the upstreams are given apart, see :class:`Upstreams`)."""

    host: str = "127.0.0.1"
    """The address the server listens on; custom Azure endpoints only when it is loopback."""
    port: int = 8787
    policy: Policy = field(default_factory=Policy)
    default_voice: str = "alloy"
    allowed_origins: tuple[str, ...] = ()
    """Origins, besides the page's own, allowed to open the relay (``https://app.example``),
    compared exactly (scheme, host and port). Behind a TLS proxy, the page's public origin."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names the server answers for besides loopback names (and, off loopback, IP
    addresses and the listen address): the public name behind a proxy (``--allow-host``)."""
    token: str | None = field(default=None, repr=False)
    """The middle tier's own access token (never the Azure key; ``--token``). When set, the
    relay and ``/api/config`` want it, loopback included; off loopback one is required unless
    ``no_auth``."""
    no_auth: bool = False
    """Serve off loopback without a token (``--no-auth``): only behind a proxy that
    authenticates every request itself."""
    max_msg_size: int = 32 * 1024 * 1024
    """Largest message accepted from a client (items with base64 audio exceed 1 MiB)."""
    static_dir: Path = STATIC_DIR
    observer_factory: Callable[[str, Upstream | None], RelayObserver | None] | None = None
    """Called with each connection's id and chosen upstream (``None`` when it was refused); the
    observer it returns sees every event (``--record``). If the observer has a ``close()``
    method (a ``Recorder``), it is called when the connection ends."""
    heartbeat_s: float | None = 20.0
    """Ping idle clients this often, so a browser that vanished is noticed and its upstream
    closed."""
    resume: bool = True
    """Resume the conversation in a new upstream session when the service ends one
    (``session_expired``, a dropped connection); ``False`` (``--no-resume``): the page gets one
    ``relay_error`` and Start opens a fresh session."""
    resume_options: ResumeOptions = field(default_factory=ResumeOptions)
    """Attempts, backoff and the history carried over (see :class:`ResumeOptions`)."""
    client_secrets: bool = False
    """Let the page ask for a short-lived client secret (``POST /api/client_secrets``,
    ``--client-secrets``) and open its call with the upstream itself; off by default (the
    middle tier then proxies every offer, and the browser never holds any key)."""
    client_secret_ttl_s: int = 60
    """How long a client secret lives (10 to 7200 s): long enough to POST one offer."""


UPSTREAMS_KEY = web.AppKey("upstreams", Upstreams)
CONFIG_KEY = web.AppKey("config", ServerConfig)
RELAYS_KEY = web.AppKey("relays", set[Relay])
CALLS_KEY = web.AppKey("calls", CallProxy)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        data, status=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def _host_name(host_header: str) -> str | None:
    """The name in a Host header (lower case, no port, no trailing dot); ``None`` if it does
    not parse."""
    try:
        name = urlsplit(f"//{host_header}").hostname or ""
    except ValueError:
        return None
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _names(hosts: tuple[str, ...]) -> set[str]:
    return {n for n in (_host_name(h.strip()) for h in hosts) if n}


def exposed(config: ServerConfig) -> bool:
    """True when others than this machine's users can reach the server: it listens off
    loopback, or answers for names that are not loopback ones (a proxy in front)."""
    if not is_loopback_host(config.host):
        return True
    return any(not is_loopback_host(name) for name in _names(config.allowed_hosts))


def check_token(token: str) -> str:
    """``token`` if it can be an access token (at least 16 HTTP token characters, so the page
    can send it as a WebSocket subprotocol); else :class:`ConfigError` saying why."""
    if len(token) < TOKEN_MIN_LENGTH or not _TOKEN_RE.match(token):
        raise ConfigError(
            f"the access token must be at least {TOKEN_MIN_LENGTH} characters of letters, digits "
            "and !#$%&'*+-.^_`|~ (no spaces, '/' or '='); make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token


def exposure_problem(config: ServerConfig) -> str | None:
    """Why ``config`` must not be served (exposed without a token, or a token and ``no_auth``
    both), or ``None``."""
    if config.token is not None and config.no_auth:
        return (
            "--no-auth and an access token (--token, --token-file or "
            "$AOAI_REALTIME_SERVE_TOKEN) contradict each other: give one of them"
        )
    if config.token is not None or config.no_auth or not exposed(config):
        return None
    if not is_loopback_host(config.host):
        where = f"listening on {config.host} reaches beyond this machine"
    else:
        where = "answering for " + ", ".join(sorted(_names(config.allowed_hosts)))
        where += " (--allow-host) means a proxy makes it reachable from elsewhere"
    return (
        f"{where}, and no access token is set: anyone who reached it could use the upstream "
        "on your credentials. Set a token with --token-file FILE or $AOAI_REALTIME_SERVE_TOKEN "
        "(or --token TOKEN, which other users can see in the process list); the page asks for "
        "it once. Or pass --no-auth if a proxy in front authenticates every request itself. "
        "On loopback (--host 127.0.0.1, the default) no token is needed"
    )


def _host_allowed(name: str, config: ServerConfig) -> bool:
    """Whether the server answers for this Host name. A DNS-rebinding page always names the
    attacker's domain, never an IP address, so off loopback IP addresses pass."""
    if is_loopback_host(name) or name in _names(config.allowed_hosts):
        return True
    if is_loopback_host(config.host):
        return False
    return _is_ip(name) or name == (_host_name(config.host) or "")


def _presented_tokens(request: web.Request) -> list[str]:
    """Every token the request offers: Bearer, ``api-key``, the page's subprotocol entry."""
    found: list[str] = []
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    api_key = request.headers.get("api-key", "").strip()
    if api_key:
        found.append(api_key)
    for header in request.headers.getall("Sec-WebSocket-Protocol", []):
        for entry in header.split(","):
            entry = entry.strip()
            if entry.startswith(TOKEN_PROTOCOL_PREFIX):
                found.append(entry[len(TOKEN_PROTOCOL_PREFIX) :])
    return found


def _token_matches(presented: list[str], token: str) -> bool:
    expected = token.encode()
    ok = False
    for candidate in presented:  # every one compared, in constant time each
        ok |= hmac.compare_digest(candidate.encode(), expected)
    return ok


def _unauthorized(request: web.Request, presented: list[str]) -> web.Response:
    code = "token_invalid" if presented else "token_required"
    log("http.unauthorized", 30, path=request.path, peer=request.remote, code=code)
    what = (
        "the access token sent is not this server's"
        if presented
        else "this server wants its access token"
    )
    message = (
        f"{what}: the one its operator set with --token, --token-file or "
        "AOAI_REALTIME_SERVE_TOKEN (not an Azure key). Send it as `Authorization: Bearer TOKEN` "
        "or an `api-key` header; the page asks for it and sends it as a WebSocket subprotocol"
    )
    return _json(
        {"error": {"type": "unauthorized", "code": code, "message": message}},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="aoai-realtime"'},
    )


@web.middleware
async def _guard(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Refuse requests for host names the server does not answer for (DNS rebinding), then
    requests to the relay or ``/api/config`` without the access token, when one is set."""
    config: ServerConfig = request.app[CONFIG_KEY]
    name = _host_name(request.host)
    if name is None or (name and not _host_allowed(name, config)):
        log("http.refused_host", 30, host=request.host, path=request.path)
        answers = "localhost" if is_loopback_host(config.host) else "its own addresses"
        extra = ", ".join(sorted(_names(config.allowed_hosts)))
        if extra:
            answers += f" and {extra}"
        shown = name if name else repr(request.host)
        return web.Response(
            status=403,
            text=f"this server answers only for {answers}, not {shown}; its operator can add "
            "a name with --allow-host\n",
        )
    if config.token is not None and request.match_info.handler in _NEEDS_TOKEN:
        presented = _presented_tokens(request)
        if not _token_matches(presented, config.token):
            return _unauthorized(request, presented)
    response: web.StreamResponse = await handler(request)
    return response


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response (errors, 404s, WebSocket refusals): the security headers, a CSP, and
    no version banner."""
    headers = response.headers
    for key, value in _SECURITY_HEADERS.items():
        headers.setdefault(key, value)
    headers["Server"] = SERVER_HEADER
    if "Content-Security-Policy" not in headers and response.content_type != "text/javascript":
        headers["Content-Security-Policy"] = _OTHER_CSP


def _page_csp(request: web.Request, config: ServerConfig) -> str:
    """The page's CSP: it may connect to itself only (its own ws:// and wss://, named since
    browsers differ on whether 'self' covers them) and to the allowed origins."""
    sources = ["'self'"]
    if _HOST_RE.match(request.host):
        sources += [f"ws://{request.host}", f"wss://{request.host}"]
    for origin in config.allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and _HOST_RE.match(parts.netloc):
            sources.append(f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}")
    return _PAGE_CSP.format(connect=" ".join(dict.fromkeys(sources)))


class _OfferedProtocolsRedacted(logging.Filter):
    """aiohttp logs every subprotocol a client offered when none is the server's; those may be
    the access token (``aoai-realtime.token.TOKEN`` alone) or an API key, so only their number
    is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and "Client protocols" in str(record.msg):
            record.args = tuple(
                f"[{len(arg)} offered, not shown]" if isinstance(arg, list) else arg for arg in args
            )
        return True


def _redact_offered_protocols() -> None:
    ws_logger = logging.getLogger("aiohttp.websocket")
    if not any(isinstance(f, _OfferedProtocolsRedacted) for f in ws_logger.filters):
        ws_logger.addFilter(_OfferedProtocolsRedacted())


def create_app(config: ServerConfig, upstreams: Upstreams) -> web.Application:
    """The aiohttp application. Closing it (``runner.cleanup()``) closes every relay, the
    upstream client session, the credentials and the in-process engine.

    Raises :class:`~aoai_realtime.config.ConfigError` for a server exposed without a token
    (:func:`exposure_problem`) or a token that cannot be one (:func:`check_token`)."""
    problem = exposure_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    if config.token is not None:
        check_token(config.token)
    _redact_offered_protocols()
    app = web.Application(middlewares=[_guard], client_max_size=1024 * 1024)
    app[CONFIG_KEY] = config
    app[UPSTREAMS_KEY] = upstreams
    app[RELAYS_KEY] = set()
    app[CALLS_KEY] = CallProxy(upstreams, config.policy, config.observer_factory)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/config", _api_config)
    app.router.add_post("/api/calls", _post_call)
    app.router.add_post("/api/calls/{call_id}/session", _call_session)
    app.router.add_post("/api/calls/{call_id}/hangup", _call_hangup)
    app.router.add_post("/api/calls/attach", _call_attach)
    app.router.add_post("/api/client_secrets", _client_secret)
    app.router.add_get("/realtime", _realtime)
    app.router.add_get("/openai/v1/realtime", _realtime)
    app.router.add_get("/openai/realtime", _realtime_preview)
    app.router.add_get("/", _index)
    app.router.add_get("/{path:.+}", _static)
    app.on_response_prepare.append(_secure_headers)
    app.on_shutdown.append(_close_relays)
    app.on_cleanup.append(_close_upstreams)
    return app


async def _close_relays(app: web.Application) -> None:
    relays: set[Relay] = app[RELAYS_KEY]
    for relay in list(relays):
        await relay.close()
    await app[CALLS_KEY].close()


async def _close_upstreams(app: web.Application) -> None:
    await app[UPSTREAMS_KEY].close()


# ------------------------------------------------------------------------------------ HTTP


def _file_response(request: web.Request, path: Path) -> web.StreamResponse:
    ctype = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    headers = {"Cache-Control": "no-cache"}
    if path.suffix.lower() == ".html":
        headers["Content-Security-Policy"] = _page_csp(request, request.app[CONFIG_KEY])
    response = web.FileResponse(path, headers=headers)
    if ctype:
        response.content_type = ctype
        if ctype.startswith("text/") or ctype in ("application/json", "image/svg+xml"):
            response.charset = "utf-8"
    return response


async def _index(request: web.Request) -> web.StreamResponse:
    config: ServerConfig = request.app[CONFIG_KEY]
    path = config.static_dir / "index.html"
    if not path.is_file():
        return web.Response(status=404, text="the page is not installed (web/index.html)\n")
    return _file_response(request, path)


async def _static(request: web.Request) -> web.StreamResponse:
    config: ServerConfig = request.app[CONFIG_KEY]
    root = config.static_dir.resolve()
    rel = request.match_info["path"]
    try:
        path = (root / rel).resolve()
        path.relative_to(root)
    except (ValueError, OSError):
        raise web.HTTPNotFound() from None
    if path.name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return _file_response(request, path)


async def _healthz(request: web.Request) -> web.Response:
    upstreams: Upstreams = request.app[UPSTREAMS_KEY]
    default = upstreams.default
    return _json(
        {
            "ok": True,
            "upstream": default.kind,
            "dialect": default.dialect,
            "local_engine": (
                "started"
                if upstreams.local is not None and upstreams.local.started
                else ("available" if upstreams.local is not None else "off")
            ),
            "connections": len(request.app[RELAYS_KEY]),
            "calls": len(request.app[CALLS_KEY]),
            "version": __version__,
        }
    )


def page_config(config: ServerConfig, upstreams: Upstreams) -> dict[str, Any]:
    """What ``GET /api/config`` answers: endpoints, voices, settable fields, tools. No secrets."""
    default = upstreams.default
    policy = config.policy
    voices = list(default.voices)
    webrtc = upstreams.webrtc(default)
    return {
        "upstream": {
            "kind": default.kind,
            "endpoint": default.base if default.kind == "azure" else "local",
            "deployment": default.deployment,
            "dialect": default.dialect,
        },
        "endpoints": upstreams.endpoints(),
        "allow_custom_endpoint": upstreams.allow_custom,
        "voices": voices,
        "default_voice": config.default_voice if config.default_voice in voices else voices[0],
        "settable": sorted(policy.settable),
        "tools": [{"name": t.name, "description": t.description} for t in policy.tools],
        "show_tool_results": policy.show_tool_results,
        "tool_results_visible": policy.show_tool_results,
        "resume": config.resume,
        "transports": ["webrtc", "websocket"] if webrtc else ["websocket"],
        "default_transport": "webrtc" if webrtc else "websocket",
        "client_secrets": config.client_secrets,
        "preview_names": PREVIEW_SERVER_NAMES,
        "version": __version__,
    }


async def _api_config(request: web.Request) -> web.Response:
    return _json(page_config(request.app[CONFIG_KEY], request.app[UPSTREAMS_KEY]))


# ------------------------------------------------------------------------------------ relay


def _origin_allowed(request: web.Request, config: ServerConfig) -> bool:
    """No ``Origin`` (not a browser), the page's own exactly (``request.scheme``: behind a TLS
    proxy the public ``https://`` origin is an allowed origin), or an allowed origin."""
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser (the SDK, a script): nothing to protect against
    origin = origin.strip().lower()
    if origin in {o.strip().rstrip("/").lower() for o in config.allowed_origins}:
        return True
    return origin == f"{request.scheme}://{request.host}".lower()


async def _realtime_preview(request: web.Request) -> web.StreamResponse:
    return await _relay(request, client_dialect="preview")


async def _realtime(request: web.Request) -> web.StreamResponse:
    return await _relay(request, client_dialect="ga")


async def _relay(request: web.Request, *, client_dialect: str) -> web.StreamResponse:
    config: ServerConfig = request.app[CONFIG_KEY]
    upstreams: Upstreams = request.app[UPSTREAMS_KEY]
    if not _origin_allowed(request, config):
        log("relay.refused_origin", 30, origin=request.headers.get("Origin"), host=request.host)
        return web.Response(
            status=403,
            text="this page's origin may not use the relay; the operator can allow it with "
            "--allow-origin\n",
        )
    ws = web.WebSocketResponse(
        max_msg_size=config.max_msg_size,
        compress=False,
        heartbeat=config.heartbeat_s,
        timeout=2.0,
        protocols=(PAGE_PROTOCOL,),
    )
    if not ws.can_prepare(request).ok:
        return web.Response(
            status=426,
            text="this is the realtime WebSocket endpoint: connect with a WebSocket client\n",
            headers={"Upgrade": "websocket"},
        )
    await ws.prepare(request)
    conn_id = uuid.uuid4().hex[:12]
    query = request.query
    endpoint = query.get("endpoint")
    deployment = query.get("deployment")
    log(
        "relay.open",
        conn=conn_id,
        peer=request.remote,
        endpoint=endpoint or "default",
        deployment=deployment,
        dialect=client_dialect,
    )
    # binary frames are read as text (bad UTF-8 replaced), to be answered like any bad frame
    client: Channel = AiohttpChannel(ws, binary_as_text=True)
    chosen: Upstream | None = None
    failure: RelayError | None = None
    try:
        chosen = upstreams.resolve(endpoint, deployment)
    except RelayError as exc:
        failure = exc

    sessions = 0

    async def connect() -> Channel:
        nonlocal sessions
        if failure is not None:
            raise failure
        assert chosen is not None
        sessions += 1  # the first upstream session, then one per resume
        return await upstreams.connect(chosen, conn_id=conn_id, resume=sessions > 1)

    observer: RelayObserver | None = None
    if config.observer_factory is not None:
        try:
            observer = config.observer_factory(conn_id, chosen)
        except Exception as exc:  # a recorder that cannot open its file must not stop the page
            log("relay.observer_failed", 40, conn=conn_id, error=repr(exc))
    relay = Relay(
        client,
        connect,
        dialect=chosen.dialect if chosen is not None else "ga",
        client_dialect="preview" if client_dialect == "preview" else "ga",
        policy=config.policy,
        upstream_label=chosen.label if chosen is not None else "the upstream",
        observer=observer,
        conn_id=conn_id,
        resume=config.resume_options if config.resume else None,
        refresh_credential=getattr(chosen.credential, "invalidate", None) if chosen else None,
        upstream_kind=chosen.kind if chosen is not None else None,
    )
    relays: set[Relay] = request.app[RELAYS_KEY]
    relays.add(relay)
    try:
        await relay.run()
    finally:
        relays.discard(relay)
        closer = getattr(relay.observer, "close", None)
        if callable(closer):
            closer()
        if not relays:  # the last page left: give the freed memory back (as the engine does)
            give_back_memory()
    return ws


# ------------------------------------------------------------------------------------ calls

_CALL_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CALL_STATUS = {
    "invalid_offer": 400,
    "invalid_request": 400,
    "webrtc_unavailable": 400,
    "deployment_required": 400,
    "endpoint_not_allowed": 403,
    "call_not_found": 404,
    "client_secrets_off": 404,
    "upstream_rate_limited": 429,
}


def _call_error(exc: RelayError) -> web.Response:
    """A refused call as the page reads it: one ``relay_error`` with the cause and the fix."""
    status = exc.status if exc.status == 400 else _CALL_STATUS.get(exc.code, 502)
    return _json({"error": exc.to_event()["error"]}, status=status)


def _refuse(code: str, message: str) -> web.Response:
    return _call_error(RelayError(code, message))


def _check_origin(request: web.Request) -> web.Response | None:
    config: ServerConfig = request.app[CONFIG_KEY]
    if _origin_allowed(request, config):
        return None
    log("call.refused_origin", 30, origin=request.headers.get("Origin"), host=request.host)
    return web.Response(
        status=403,
        text="this page's origin may not make calls through this server; the operator can "
        "allow it with --allow-origin\n",
    )


async def _read_json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise RelayError("invalid_request", "The request body is not JSON.") from None
    if not isinstance(body, dict):
        raise RelayError("invalid_request", "The request body must be a JSON object.")
    return body


async def _read_call_request(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    """The offer's SDP and the page's session choices: JSON ``{"sdp", "session"}``, or the
    bare offer as ``application/sdp`` (the server's session only)."""
    if request.content_type == "application/sdp":
        return (await request.read()).decode("utf-8", errors="replace"), None
    if request.content_type != "application/json":
        raise RelayError(
            "invalid_request",
            f'Unsupported Content-Type {request.content_type!r}: send JSON {{"sdp": OFFER, '
            '"session": {...}} or the offer as application/sdp.',
        )
    body = await _read_json_body(request)
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise RelayError("invalid_offer", "The request has no 'sdp' string: send the SDP offer.")
    session = body.get("session")
    if session is not None and not isinstance(session, dict):
        raise RelayError("invalid_request", "'session' must be a JSON object (a GA session).")
    return sdp, session


async def _post_call(request: web.Request) -> web.StreamResponse:
    """``POST /api/calls``: the page's SDP offer, forwarded upstream with the server's
    credential; only the SDP answer (and the middle tier's own call id) come back."""
    refused_origin = _check_origin(request)
    if refused_origin is not None:
        return refused_origin
    proxy: CallProxy = request.app[CALLS_KEY]
    try:
        sdp, session = await _read_call_request(request)
        call, answer, refused = await proxy.create(
            sdp,
            session,
            endpoint=request.query.get("endpoint"),
            deployment=request.query.get("deployment"),
            peer=request.remote,
        )
    except RelayError as exc:
        log("call.refused", 30, code=exc.code, message=exc.message)
        return _call_error(exc)
    location = f"/api/calls/{call.id}"
    if request.content_type == "application/sdp":
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": location, "Cache-Control": "no-store"},
        )
    return _json(
        {"sdp": answer, "call_id": call.id, "refused": refused},
        status=201,
        headers={"Location": location},
    )


async def _call_session(request: web.Request) -> web.Response:
    """``POST /api/calls/{id}/session``: the page's settings, through the policy, in on the
    sideband; answers the parameters left out."""
    refused_origin = _check_origin(request)
    if refused_origin is not None:
        return refused_origin
    call = request.app[CALLS_KEY].get(request.match_info["call_id"])
    if call is None:
        return _refuse("call_not_found", "This call has ended: press Start to begin a new one.")
    try:
        body = await _read_json_body(request)
    except RelayError as exc:
        return _call_error(exc)
    session = body.get("session", body)
    if not isinstance(session, dict):
        return _refuse("invalid_request", "'session' must be a JSON object (a GA session).")
    refused = await call.update_session({"session": session})
    return _json({"refused": refused})


async def _call_hangup(request: web.Request) -> web.Response:
    """``POST /api/calls/{id}/hangup``: the call ends on both sides."""
    refused_origin = _check_origin(request)
    if refused_origin is not None:
        return refused_origin
    proxy: CallProxy = request.app[CALLS_KEY]
    call_id = request.match_info["call_id"]
    if call_id in proxy.ended:  # it ended first (the page closed its connection meanwhile)
        return _json({"ended": True, "reason": proxy.ended[call_id]})
    if not await proxy.hangup(call_id):
        return _refuse("call_not_found", "There is no such call.")
    return _json({"ended": True})


async def _client_secret(request: web.Request) -> web.Response:
    """``POST /api/client_secrets`` (only with ``--client-secrets``): a short-lived key for the
    page's own ``POST .../realtime/calls``, the session fixed by the server, and that URL."""
    refused_origin = _check_origin(request)
    if refused_origin is not None:
        return refused_origin
    config: ServerConfig = request.app[CONFIG_KEY]
    upstreams: Upstreams = request.app[UPSTREAMS_KEY]
    if not config.client_secrets:
        return _refuse(
            "client_secrets_off",
            "This server does not hand out client secrets (its operator can turn them on with "
            "--client-secrets): POST the offer to api/calls instead.",
        )
    proxy: CallProxy = request.app[CALLS_KEY]
    try:
        body = await _read_json_body(request) if request.can_read_body else {}
        page = body.get("session")
        up = upstreams.resolve(request.query.get("endpoint"), request.query.get("deployment"))
        base = await upstreams.local.url() if up.kind == "local" and upstreams.local else None
        if up.kind == "local" and base is None:
            raise RelayError(
                "webrtc_unavailable",
                "The in-process local engine has no address a browser can reach: client "
                "secrets need Azure or an engine of its own (--engine-url).",
            )
        session, refused = proxy.intended_session(page if isinstance(page, dict) else None)
        minted = await upstreams.mint_client_secret(
            up, session, config.client_secret_ttl_s, conn_id="secret"
        )
    except RelayError as exc:
        return _call_error(exc)
    log("call.client_secret", upstream=up.kind, expires_at=minted.get("expires_at"))
    return _json(
        {
            "value": minted.get("value"),
            "expires_at": minted.get("expires_at"),
            "calls_url": upstreams.calls_url(up, base),
            "refused": refused,
        }
    )


async def _call_attach(request: web.Request) -> web.Response:
    """``POST /api/calls/attach`` (client-secret mode): the page opened its call with the
    upstream itself and names it; the middle tier attaches its sideband (tools, policy)."""
    refused_origin = _check_origin(request)
    if refused_origin is not None:
        return refused_origin
    config: ServerConfig = request.app[CONFIG_KEY]
    if not config.client_secrets:
        return _refuse("client_secrets_off", "This server does not hand out client secrets.")
    proxy: CallProxy = request.app[CALLS_KEY]
    try:
        body = await _read_json_body(request)
        upstream_id = body.get("call_id")
        if not isinstance(upstream_id, str) or not _CALL_ID_RE.fullmatch(upstream_id):
            raise RelayError("invalid_request", "'call_id' must be the upstream call's id.")
        call = await proxy.attach(
            upstream_id,
            endpoint=request.query.get("endpoint"),
            deployment=request.query.get("deployment"),
        )
    except RelayError as exc:
        return _call_error(exc)
    return _json({"call_id": call.id}, status=201, headers={"Location": f"/api/calls/{call.id}"})


_NEEDS_TOKEN: frozenset[Callable[..., Any]] = frozenset(
    {
        _api_config,
        _realtime,
        _realtime_preview,
        _post_call,
        _call_session,
        _call_hangup,
        _client_secret,
        _call_attach,
    }
)
"""The handlers that want the access token (when one is set): the page itself may load."""
