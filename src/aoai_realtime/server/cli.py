"""``aoai-realtime serve``: the middle tier and its page on http://localhost:8787/.

With Azure settings (``AZURE_OPENAI_ENDPOINT`` and a deployment) the upstream is Azure, in the
GA dialect, or the preview one when ``AZURE_OPENAI_API_VERSION`` is set; the local engine is
still offered to the page and starts on first use. Without them, the local engine starts here,
in this process, before the server says it is ready.

Off loopback (``--host 0.0.0.0``) it wants an access token of its own (``--token-file``,
``$AOAI_REALTIME_SERVE_TOKEN``, ``--token``) or ``--no-auth``, and refuses to start without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._threads import run as run_loop
from ..config import ConfigError, Settings, build_url
from .app import (
    SERVER_HEADER,
    ServerConfig,
    check_token,
    create_app,
    exposed,
    exposure_problem,
)
from .local import LocalEngine
from .logs import configure_logging
from .policy import Policy
from .telemetry import setup_from_env as setup_telemetry
from .tools import demo_tools
from .upstream import Upstream, Upstreams

DEFAULT_PORT = 8787
TOKEN_ENV = "AOAI_REALTIME_SERVE_TOKEN"
ALLOW_HOSTS_ENV = "AOAI_REALTIME_SERVE_ALLOW_HOSTS"
ALLOW_ORIGINS_ENV = "AOAI_REALTIME_SERVE_ALLOW_ORIGINS"
_HOST_NAME_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aoai-realtime serve",
        description=(
            "Serve the voice page and relay it to Azure OpenAI /realtime (or the offline local "
            "engine), holding the credentials on the server."
        ),
        epilog=(
            "Azure settings come from the environment, .env or .dev.vars: AZURE_OPENAI_ENDPOINT, "
            "AZURE_OPENAI_DEPLOYMENT, AZURE_OPENAI_API_KEY (or `az login`), "
            "AZURE_OPENAI_API_VERSION (preview only). Without them the local engine answers."
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; custom endpoints are allowed only on "
        "loopback). Off loopback (0.0.0.0, a LAN address) an access token is required: "
        "--token-file, $AOAI_REALTIME_SERVE_TOKEN or --token, else --no-auth",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port to listen on (default $PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--engine-port",
        type=_port,
        default=0,
        help="port of the in-process local engine on 127.0.0.1 (default: any free port)",
    )
    parser.add_argument(
        "--brain",
        default=None,
        choices=["local", "scripted"],
        help="the local engine's brain: local (SmolLM2, the default) or scripted (--script)",
    )
    parser.add_argument("--script", default=None, help="script file for --brain scripted")
    parser.add_argument(
        "--no-local",
        action="store_true",
        help="do not offer the local engine when Azure is configured",
    )
    parser.add_argument(
        "--instructions",
        default="",
        help="operator instructions put before the page's system message in every session",
    )
    parser.add_argument(
        "--instructions-after",
        default="",
        help="operator instructions put after the page's system message",
    )
    parser.add_argument(
        "--no-tools", action="store_true", help="do not offer the demo server-side tools"
    )
    parser.add_argument(
        "--hide-tool-results",
        action="store_true",
        help="run server tools but do not show their results to the page",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="when the service ends a session (session_expired, a dropped connection), end the "
        "page's session with one error instead of resuming the conversation in a new one",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin allowed to open the relay (repeatable; also "
        f"${ALLOW_ORIGINS_ENV}, comma-separated), compared exactly, scheme included, e.g. "
        "https://app.example; behind a TLS proxy, the page's public https origin",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name this server answers for (repeatable; also "
        f"${ALLOW_HOSTS_ENV}, comma-separated): the public name behind a proxy. Loopback "
        "names always pass, and off loopback IP addresses and the --host name; requests for "
        "other names get 403 (DNS rebinding)",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="file holding the access token clients must present (the middle tier's own, "
        "never the Azure key): `Authorization: Bearer`, an `api-key` header, or the page, "
        "which asks for it. Required off loopback; on loopback optional",
    )
    auth.add_argument(
        "--token",
        metavar="TOKEN",
        default=None,
        help=f"the access token itself (other users can see it in the process list: prefer "
        f"--token-file or ${TOKEN_ENV})",
    )
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help="serve off loopback without a token: ONLY behind a proxy that authenticates "
        "every request itself (anyone reaching this port could use the upstream)",
    )
    parser.add_argument(
        "--client-secrets",
        action="store_true",
        help="let the page ask for a short-lived client secret (its session fixed by the "
        "server) and POST its WebRTC offer to the upstream itself; off by default: the middle "
        "tier proxies every offer and the browser never holds a key",
    )
    parser.add_argument(
        "--record",
        metavar="FILE.jsonl",
        default=None,
        help="record every connection's events (audio included, no secrets), one file per "
        "connection: FILE-CONN.jsonl; `aoai-realtime replay` reads them",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    parser.add_argument(
        "--log-json", action="store_true", help="log JSON lines instead of key=value"
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="send traces and metrics with OpenTelemetry (the [otel] extra) even without any "
        "OTEL_* exporter setting (then OTLP over HTTP to localhost:4318); OTEL_* settings apply",
    )
    return parser


def _resolve_port(arg: int | None) -> int:
    if arg is not None:
        return arg
    env = os.environ.get("PORT", "").strip()
    if not env:
        return DEFAULT_PORT
    try:
        return _port(env)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"PORT={env!r}: {exc}; set PORT to a number such as 8787") from None


def _resolve_token(args: argparse.Namespace) -> str | None:
    """The access token: ``--token``, ``--token-file``, else ``$AOAI_REALTIME_SERVE_TOKEN``."""
    if args.token is not None:
        return check_token(args.token.strip())
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {args.token_file}: cannot read it ({exc})") from None
        if not text:
            raise ConfigError(f"--token-file {args.token_file} is empty: write the token in it")
        try:
            return check_token(text)
        except ConfigError as exc:
            raise ConfigError(f"--token-file {args.token_file}: {exc}") from None
    env = os.environ.get(TOKEN_ENV, "").strip()
    if not env:
        return None
    try:
        return check_token(env)
    except ConfigError as exc:
        raise ConfigError(f"{TOKEN_ENV}: {exc}") from None


def _allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """``--allow-host`` names and ``$AOAI_REALTIME_SERVE_ALLOW_HOSTS``, lower case, no port."""
    given = [*args.allow_host, *os.environ.get(ALLOW_HOSTS_ENV, "").split(",")]
    names: list[str] = []
    for raw in given:
        value = raw.strip()
        if not value:
            continue
        if "/" in value or "*" in value:
            name = ""
        elif value.startswith("["):
            name = value[: value.find("]") + 1]
        else:
            name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
        name = name.rstrip(".").lower()
        if not _HOST_NAME_RE.match(name):
            raise ConfigError(
                f"--allow-host {value!r}: give a host name such as app.example (no scheme, no "
                "path, no wildcard)"
            )
        names.append(name)
    return tuple(dict.fromkeys(names))


def _allowed_origins(values: Sequence[str]) -> tuple[str, ...]:
    """``--allow-origin`` values and ``$AOAI_REALTIME_SERVE_ALLOW_ORIGINS`` as browsers write
    origins: ``scheme://host[:port]``."""
    origins: list[str] = []
    for raw in [*values, *os.environ.get(ALLOW_ORIGINS_ENV, "").split(",")]:
        if not raw.strip():
            continue
        value = raw.strip().rstrip("/").lower()
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ConfigError(
                f"--allow-origin {raw!r}: give an origin such as https://app.example (scheme, "
                "host and port if not the default; no path)"
            )
        origins.append(value)
    return tuple(origins)


def _engine_config(args: argparse.Namespace) -> Any:
    """The in-process local engine's configuration, or ``None`` when it cannot run here: its
    speech models and local brain come from the ``[local]`` extra (a scripted brain runs
    without it, for typed turns)."""
    from ..engine.config import EngineConfig
    from ..engine.speech import missing_local_extra

    config = EngineConfig(host="127.0.0.1", port=args.engine_port)
    if args.brain:
        config.brain = args.brain
    if args.script:
        config.script = args.script
    if missing_local_extra() is not None:
        if config.brain != "scripted":
            return None
        config.no_speech = True
    return config


def _check_port_free(host: str, port: int) -> None:
    """Fail now, before any model loads, when another program listens on ``host:port`` (the
    server binds it a few seconds later, as aiohttp does: with SO_REUSEADDR)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def recorder_factory(path: str | os.PathLike[str]) -> Callable[[str, Upstream | None], Any]:
    """An observer factory writing one recording per connection (``FILE-CONN.jsonl``).

    The relay observes the GA vocabulary, so every recording says ``dialect: ga``; its header
    keeps the upstream's URL only when it is a GA one (a replay can then connect to it).
    """
    from ..commands.recording import Recorder, connection_path

    def make(conn_id: str, upstream: Upstream | None) -> Recorder:
        extra: dict[str, Any] = {"command": "serve", "connection": conn_id}
        url: str | None = None
        if upstream is not None:
            extra["upstream"] = upstream.kind
            if upstream.kind == "local" and upstream.base is None:
                extra["local_engine"] = True
            elif upstream.dialect == "ga" and upstream.base is not None:
                url = build_url(upstream.base, dialect="ga", deployment=upstream.deployment)
            else:
                extra["upstream_dialect"] = upstream.dialect
        return Recorder.open(connection_path(path, conn_id), url=url, dialect="ga", extra=extra)

    return make


def _display_url(host: str, port: int) -> str:
    shown = "localhost" if host in ("127.0.0.1", "localhost", "::1") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def describe_upstream(upstreams: Upstreams) -> str:
    up = upstreams.default
    if up.kind == "local":
        return "local engine"
    dialect = "GA" if up.dialect == "ga" else f"preview {up.api_version}"
    return f"Azure {dialect} {up.base} deployment {up.deployment}"


def prepare(args: argparse.Namespace) -> tuple[ServerConfig, Upstreams]:
    """Settings and options -> the server's configuration; :class:`ConfigError` says what to fix."""
    settings = Settings.load()
    has_azure = bool(settings.endpoint or settings.deployment)
    if has_azure:
        problems = settings.problems()
        if problems:
            raise ConfigError("; ".join(problems))
    if args.script and args.brain not in (None, "scripted"):
        raise ConfigError("--script goes with --brain scripted")
    if args.script and not args.brain:
        args.brain = "scripted"
    if args.brain == "scripted" and not args.script:
        raise ConfigError("--brain scripted needs --script FILE (see docs/scripted-brain.md)")
    local: LocalEngine | None = None
    if not (has_azure and args.no_local):
        engine_config = _engine_config(args)
        if engine_config is not None:
            local = LocalEngine(engine_config)
        elif not has_azure:
            raise ConfigError(
                "no upstream: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT (see "
                "`aoai-realtime doctor`), or install the local engine with "
                "`pip install 'aoai-realtime[local]'`"
            )
    port = _resolve_port(args.port)
    policy = Policy.build(
        instructions_prefix=args.instructions,
        instructions_suffix=args.instructions_after,
        tools=() if args.no_tools else demo_tools(),
        show_tool_results=not args.hide_tool_results,
    )
    config = ServerConfig(
        host=args.host,
        port=port,
        policy=policy,
        allowed_origins=_allowed_origins(args.allow_origin),
        allowed_hosts=_allowed_hosts(args),
        token=_resolve_token(args),
        no_auth=args.no_auth,
        resume=not args.no_resume,
        client_secrets=args.client_secrets,
        observer_factory=recorder_factory(args.record) if args.record else None,
    )
    problem = exposure_problem(config)
    if problem is not None:  # before the local engine loads its models
        raise ConfigError(problem)
    upstreams = Upstreams(
        settings=settings if has_azure else None, local=local, listen_host=args.host
    )
    return config, upstreams


def exposure_notes(config: ServerConfig) -> list[str]:
    """What ``serve`` says on start about who can reach it (nothing on plain loopback)."""
    if config.no_auth and exposed(config):
        return [
            "aoai-realtime: WARNING: --no-auth: no access token is checked. Anyone who reaches "
            f"{config.host}:{config.port} can use the upstream on your credentials unless the "
            "proxy in front authenticates every request."
        ]
    if config.token is not None:
        return [
            "aoai-realtime: an access token is required on /realtime and /api/config (the page "
            "asks for it once)"
        ]
    return []


async def serve(config: ServerConfig, upstreams: Upstreams, *, ready: Any = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation). ``ready(url)`` is called once listening."""
    from aiohttp import web, web_response

    if upstreams.configured is None and upstreams.local is not None:
        print("aoai-realtime: starting the local engine", flush=True)
        await upstreams.local.start()
    app = create_app(config, upstreams)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # The app's hook names every response it sees; aiohttp answers requests that do not parse
    # (400) before any app code runs, with its version banner: this process's banner is ours.
    banner = getattr(web_response, "SERVER_SOFTWARE", None)
    setattr(web_response, "SERVER_SOFTWARE", SERVER_HEADER)  # noqa: B010 - not a public name
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        url = _display_url(config.host, config.port)
        if config.port == 0:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                url = _display_url(config.host, sockets[0].getsockname()[1])
        print(f"aoai-realtime serving {url} (upstream: {describe_upstream(upstreams)})", flush=True)
        for line in exposure_notes(config):
            print(line, file=sys.stderr, flush=True)
        if ready is not None:
            ready(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("aoai-realtime: shutting down", flush=True)
    finally:
        await runner.cleanup()
        if banner is not None:
            setattr(web_response, "SERVER_SOFTWARE", banner)  # noqa: B010


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level, json_lines=args.log_json)
    try:
        config, upstreams = prepare(args)
        otel = setup_telemetry(force=args.otel)
    except ConfigError as exc:
        print(f"aoai-realtime serve: {exc}", file=sys.stderr)
        return 2
    if otel is not None:
        print(otel, file=sys.stderr, flush=True)
    try:
        _check_port_free(config.host, config.port)
        run_loop(serve(config, upstreams))
    except OSError as exc:
        print(
            f"aoai-realtime serve: cannot listen on {config.host}:{config.port} ({exc.strerror or exc}): "
            "pass another --port (or set PORT), or stop the program using it",
            file=sys.stderr,
        )
        return 1
    except RuntimeError as exc:  # the local engine failed to start
        print(f"aoai-realtime serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
