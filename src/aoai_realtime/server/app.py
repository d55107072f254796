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


UPSTREAMS_KEY = web.AppKey("upstreams", Upstreams)
CONFIG_KEY = web.AppKey("config", ServerConfig)
RELAYS_KEY = web.AppKey("relays", set[Relay])


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
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/config", _api_config)
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
            "version": __version__,
        }
    )


def page_config(config: ServerConfig, upstreams: Upstreams) -> dict[str, Any]:
    """What ``GET /api/config`` answers: endpoints, voices, settable fields, tools. No secrets."""
    default = upstreams.default
    policy = config.policy
    voices = list(default.voices)
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


_NEEDS_TOKEN = frozenset({_api_config, _realtime, _realtime_preview})
"""The handlers that want the access token (when one is set): the page itself may load."""


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
