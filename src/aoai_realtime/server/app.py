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
``Origin`` other than the page's own (a web site open in the same browser could otherwise use
the operator's Azure credentials), and while listening on loopback every request must name a
loopback host (which defeats DNS rebinding).
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .._version import __version__
from ..channel import AiohttpChannel
from ..protocol.dialect import PREVIEW_SERVER_NAMES
from .errors import RelayError
from .logs import log
from .policy import Policy
from .relay import Channel, Relay, RelayObserver
from .resume import ResumeOptions
from .upstream import Upstream, Upstreams, is_loopback_host

__all__ = ["STATIC_DIR", "ServerConfig", "create_app"]

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
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class ServerConfig:
    """How the middle tier serves pages (the upstreams are given apart, see :class:`Upstreams`)."""

    host: str = "127.0.0.1"
    """The address the server listens on; custom Azure endpoints only when it is loopback."""
    port: int = 8787
    policy: Policy = field(default_factory=Policy)
    default_voice: str = "alloy"
    allowed_origins: tuple[str, ...] = ()
    """Origins, besides the page's own, allowed to open the relay (``https://app.example``)."""
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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, headers={"Cache-Control": "no-store", **_SECURITY_HEADERS}
    )


def _host_name(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


@web.middleware
async def _guard(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """On loopback, refuse requests for other host names (DNS rebinding)."""
    config: ServerConfig = request.app[CONFIG_KEY]
    if is_loopback_host(config.host):
        name = _host_name(request.host)
        if name and not is_loopback_host(name):
            log("http.refused_host", 30, host=request.host, path=request.path)
            return web.Response(
                status=403, text=f"this server answers only for localhost, not {name}\n"
            )
    response: web.StreamResponse = await handler(request)
    return response


def create_app(config: ServerConfig, upstreams: Upstreams) -> web.Application:
    """The aiohttp application. Closing it (``runner.cleanup()``) closes every relay, the
    upstream client session, the credentials and the in-process engine."""
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


def _file_response(path: Path) -> web.StreamResponse:
    ctype = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    headers = {"Cache-Control": "no-cache", **_SECURITY_HEADERS}
    if path.suffix.lower() == ".html":
        headers["Content-Security-Policy"] = _CSP
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
    return _file_response(path)


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
    return _file_response(path)


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
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser (the SDK, a script): nothing to protect against
    if origin in config.allowed_origins:
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


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
    client: Channel = AiohttpChannel(ws)
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
    return ws
