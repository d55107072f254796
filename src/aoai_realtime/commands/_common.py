"""What the commands share: settings, the endpoint to talk to, progress lines and errors.

Every command finds its endpoint the same way (:func:`open_target`):

1. ``--url``: any realtime WebSocket URL (the local engine, the middle tier's ``/realtime``,
   Azure). Credentials go with it only when its host is the configured endpoint's host.
2. The configured endpoint: ``AZURE_OPENAI_ENDPOINT`` and ``AZURE_OPENAI_DEPLOYMENT`` (with
   ``AZURE_OPENAI_API_KEY``, ``az login`` or a service principal), from the environment,
   ``.env`` or ``.dev.vars``.
3. Nothing configured: the local engine, started in this process (a progress line shows the
   speech models loading).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from ..auth import Credential, NoCredential, credential_from_settings, new_request_id
from ..config import ConfigError, Settings, parse_endpoint, realtime_url
from ..protocol.dialect import DialectName

ENV_HELP = """\
settings (environment, then .env, then .dev.vars in the current directory):
  AZURE_OPENAI_ENDPOINT     https://RES.openai.azure.com (unset: use the local engine)
  AZURE_OPENAI_DEPLOYMENT   the realtime deployment's name, e.g. gpt-realtime
  AZURE_OPENAI_API_KEY      the resource's key (unset: Microsoft Entra ID, e.g. `az login`)
  AZURE_OPENAI_AD_TOKEN     an Entra ID token as is (openai-python's name; after the key)
  AZURE_OPENAI_API_VERSION  set only for the preview protocol, e.g. 2025-04-01-preview
                            (OPENAI_API_VERSION, openai-python's name, if a -preview one)
  AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET   a service principal
Run `aoai-realtime doctor` to check them."""

TRANSCRIPTION_MODEL = "whisper-1"
"""Input transcription model asked for (Azure and OpenAI know it; the local engine takes any)."""

LOCAL_MODEL = "local"
"""The deployment name used with the local engine (it accepts any)."""


class CommandError(Exception):
    """A failure to report as one line (``aoai-realtime CMD: message``) and an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --------------------------------------------------------------------------------------------
# Output


def err(command: str, message: str, stream: IO[str] | None = None) -> None:
    """One error line on stderr, prefixed with the command."""
    print(f"aoai-realtime {command}: {message}", file=stream or sys.stderr, flush=True)


class Progress:
    """A status line on stderr: a spinner that rewrites itself on a terminal, plain lines
    otherwise (so logs and tests see each step once)."""

    _FRAMES = "|/-\\"

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._text = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = 0.0

    def start(self, text: str, *, transient: bool = False) -> None:
        """Show ``text`` as the current step (with a spinner and elapsed seconds on a tty).

        A ``transient`` step (e.g. "waiting for the reply") is shown on a terminal only, not
        written as a line to a log or a pipe.
        """
        self.stop()
        if self.quiet:
            return
        self._text = text
        self._started = time.monotonic()
        if not self.tty:
            if not transient:
                print(f"{text} ...", file=self.stream, flush=True)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._spin, name="progress", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self._started
            with self._lock:
                self.stream.write(
                    f"\r{self._FRAMES[frame % 4]} {self._text} ({elapsed:.0f} s)\x1b[K"
                )
                self.stream.flush()
            frame += 1

    def stop(self, final: str | None = None) -> None:
        """End the current step, replacing the spinner with ``final`` when given."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
        if final and not self.quiet:
            print(final, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (the spinner, if any, keeps going under it)."""
        if self.quiet:
            return
        with self._lock:
            if self._thread is not None:
                self.stream.write("\r\x1b[K")
            print(text, file=self.stream, flush=True)


# --------------------------------------------------------------------------------------------
# Arguments


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's examples as written and shows defaults where they help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--timeout``: where to connect, and how long to wait for it."""
    parser.add_argument(
        "--url",
        metavar="WS_URL",
        help="talk to this realtime WebSocket URL instead of the configured endpoint, e.g. "
        "ws://127.0.0.1:8788/openai/v1/realtime?model=local (an `aoai-realtime engine`) or "
        "ws://127.0.0.1:8787/realtime (`aoai-realtime serve`); a bare http://HOST:PORT "
        "gets the GA path added",
    )


def add_voice_arguments(parser: argparse.ArgumentParser) -> None:
    """``--voice`` and ``--instructions``: who the assistant sounds like and what it is told."""
    parser.add_argument("--voice", help="the assistant's voice, e.g. alloy, sage, verse")
    parser.add_argument("--instructions", help="the system instructions for the session")


def voice_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The session fields that :func:`add_voice_arguments`' options ask for (those given)."""
    fields: dict[str, Any] = {}
    if args.voice:
        fields["voice"] = args.voice
    if args.instructions:
        fields["instructions"] = args.instructions
    return fields


def add_record_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record",
        metavar="FILE.jsonl",
        help="write every event both ways (audio included) to FILE.jsonl, for `aoai-realtime "
        "replay`",
    )


# --------------------------------------------------------------------------------------------
# Settings and targets


def load_settings(cwd: str | os.PathLike[str] | None = None) -> Settings:
    """The settings, or :class:`CommandError` (status 2) saying what to fix."""
    try:
        return Settings.load(cwd=cwd)
    except ConfigError as exc:
        raise CommandError(f"{exc} (run `aoai-realtime doctor` for details)", 2) from None


def dialect_of_url(url: str) -> DialectName:
    """``preview`` for ``…/openai/realtime?api-version=…``, else ``ga``."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/openai/realtime") or "api-version" in parse_qs(parts.query):
        return "preview"
    return "ga"


def complete_url(url: str, deployment: str | None = None) -> str:
    """A ``--url`` as given, or, for a bare ``http(s)/ws(s)://HOST[:PORT]``, the GA realtime URL
    (:func:`~aoai_realtime.config.realtime_url`, as the SDK's ``url=``)."""
    try:
        return realtime_url(url, deployment or LOCAL_MODEL)
    except ConfigError as exc:
        raise CommandError(f"--{exc}", 2) from None


@dataclass
class Target:
    """Where a command connects: the URL, its dialect, and the credential for its handshake."""

    url: str
    dialect: DialectName
    credential: Credential
    label: str
    """For people: ``local engine (in-process)``, ``Azure OpenAI RES.openai.azure.com …``."""
    local_engine: bool = False
    """True when this process started the engine."""
    settings: Settings | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    """Headers besides the credential's (OpenAI's beta header for its preview dialect); the SDK
    client adds them itself, raw connections (doctor, replay) use :meth:`headers`."""
    azure: bool = False

    async def headers(self) -> dict[str, str]:
        """The handshake headers: credential, request id, and OpenAI's beta header (preview)."""
        out = dict(await self.credential.headers())
        out["x-ms-client-request-id"] = new_request_id()
        out.update(self.extra_headers)
        return out


def _describe_settings(settings: Settings) -> str:
    if settings.is_azure:
        kind = "Azure OpenAI"
    elif settings.is_openai:
        kind = "OpenAI"
    else:
        kind = "endpoint"
    return f"{kind} {settings.endpoint}, deployment {settings.deployment} ({settings.dialect})"


def target_for_url(url: str, settings: Settings | None) -> Target:
    """A target for an explicit URL; the configured credential goes only to the configured host."""
    full = complete_url(url, settings.deployment if settings else None)
    host = urlsplit(full).hostname or ""
    credential: Credential = NoCredential()
    used: Settings | None = None
    if settings is not None and settings.endpoint and settings.host == host:
        try:
            credential = credential_from_settings(settings)
        except ConfigError as exc:
            raise CommandError(str(exc), 2) from None
        used = settings
    elif host.endswith((".azure.com", ".azure.us", ".azure.cn")):
        # An Azure URL with nothing configured for it: Entra ID (az login, managed identity).
        base = parse_endpoint(full).base
        credential = credential_from_settings(Settings(endpoint=base))
    return Target(
        url=full,
        dialect=dialect_of_url(full),
        credential=credential,
        label=full.split("?", 1)[0],
        settings=used,
        azure=host.endswith((".azure.com", ".azure.us", ".azure.cn")),
    )


def target_for_settings(settings: Settings) -> Target:
    """The configured endpoint (raises :class:`CommandError` with the fix when incomplete)."""
    problems = settings.problems()
    if problems:
        raise CommandError(problems[0] + " (run `aoai-realtime doctor` for details)", 2)
    try:
        url = settings.realtime_url()
        credential = credential_from_settings(settings)
    except ConfigError as exc:
        raise CommandError(str(exc), 2) from None
    extra = {}
    if settings.is_openai and settings.dialect == "preview":
        extra["OpenAI-Beta"] = "realtime=v1"
    return Target(
        url=url,
        dialect=settings.dialect,
        credential=credential,
        label=_describe_settings(settings),
        settings=settings,
        extra_headers=extra,
        azure=settings.is_azure,
    )


async def start_local_engine(progress: Progress, **config: Any) -> Any:
    """Start the local engine in this process, on a free loopback port (the speech models load
    with a progress line).

    Returns the running engine (``.url`` is its base URL; ``close()`` ends it). Raises
    :class:`CommandError` naming the install command when the ``[local]`` extra is missing.
    ``config`` are :class:`~aoai_realtime.engine.config.EngineConfig` fields.
    """
    try:
        from ..engine.config import EngineConfig
        from ..engine.server import load_speech, start_engine
    except ImportError as exc:
        raise CommandError(
            "no Azure endpoint is configured and the local engine cannot start "
            f"({exc}): install it with `pip install 'aoai-realtime[local]'`, or set "
            "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT (see `aoai-realtime doctor`)"
        ) from None
    began = time.monotonic()
    progress.start("starting the local engine")

    def step(message: str) -> None:
        text = message.rstrip(".…")
        if "ready" not in text:  # the final "ready" line is ours
            progress.start("local engine: " + text)

    try:
        stack = await asyncio.to_thread(load_speech, step)
        progress.start("local engine: starting the server")
        engine = await start_engine(EngineConfig(**{"port": 0, **config}), stack)
    except Exception as exc:
        progress.stop()
        text = str(exc) or type(exc).__name__
        if "[local]" in text or isinstance(exc, ImportError):
            raise CommandError(
                f"no Azure endpoint is configured, and {text} (or set AZURE_OPENAI_ENDPOINT and "
                "AZURE_OPENAI_DEPLOYMENT; see `aoai-realtime doctor`)",
                2,
            ) from None
        raise CommandError(f"the local engine failed to start: {text}") from exc
    progress.stop(f"local engine ready ({time.monotonic() - began:.1f} s)")
    return engine


async def stop_local_engine(engine: Any) -> None:
    """Stop an engine started by :func:`start_local_engine`."""
    for name in ("close", "aclose", "stop"):
        fn = getattr(engine, name, None)
        if callable(fn):
            result = fn()
            if inspect.isawaitable(result):
                await result
            return


def engine_url(engine: Any, model: str = LOCAL_MODEL) -> str:
    """The GA realtime URL of a running engine (its ``.url`` may be a base or a full URL)."""
    url = str(engine.url).rstrip("/")
    if "/realtime" in url:
        return url
    return complete_url(url, model)


@contextlib.asynccontextmanager
async def open_target(
    url: str | None,
    settings: Settings,
    progress: Progress,
    *,
    allow_engine: bool = True,
    engine_config: dict[str, Any] | None = None,
) -> AsyncIterator[Target]:
    """The target of a command (see the module docstring); stops an engine it started."""
    if url:
        target = target_for_url(url, settings)
        try:
            yield target
        finally:
            await target.credential.close()
        return
    if settings.endpoint:
        target = target_for_settings(settings)
        try:
            yield target
        finally:
            await target.credential.close()
        return
    if not allow_engine:
        raise CommandError(
            "no endpoint: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT, or pass --url",
            2,
        )
    engine = await start_local_engine(progress, **(engine_config or {}))
    try:
        yield Target(
            url=engine_url(engine),
            dialect="ga",
            credential=NoCredential(),
            label="local engine (in-process)",
            local_engine=True,
        )
    finally:
        await stop_local_engine(engine)


def run(coro: Any) -> Any:
    """``asyncio.run`` that turns Ctrl-C into exit status 130 quietly."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


# --------------------------------------------------------------------------------------------
# The SDK client, with recording


async def open_client(
    target: Target,
    *,
    session: Any = None,
    tools: Any = (),
    recorder: Any = None,
    open_timeout: float = 30.0,
) -> Any:
    """Connect the SDK client to ``target``; with ``recorder``, every wire event is recorded."""
    from .. import client as sdk

    return await sdk.connect(
        url=target.url,
        credential=target.credential,
        dialect=target.dialect,
        session=session,
        tools=tools,
        open_timeout=open_timeout,
        observer=recorder.record if recorder is not None else None,
    )


def open_recorder(path: str | None, target: Target, command: str) -> Any:
    """A :class:`~.recording.Recorder` for ``--record PATH`` (``None`` without it)."""
    if not path:
        return None
    from .recording import Recorder

    extra: dict[str, Any] = {"command": command}
    if target.local_engine:
        extra["local_engine"] = True
    try:
        return Recorder.open(path, url=target.url, dialect=target.dialect, extra=extra)
    except OSError as exc:
        raise CommandError(f"cannot write --record {path}: {exc.strerror or exc}", 2) from None


def connect_failure(exc: BaseException) -> CommandError:
    """A client exception as one line that says what to do."""
    from ..client import ConnectError, ServiceError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectError):
        return CommandError(f"{text} (run `aoai-realtime doctor` to check the settings)")
    if isinstance(exc, ServiceError):
        return CommandError(f"the service refused the session settings: {text}")
    return CommandError(f"{type(exc).__name__}: {text}")
