"""``aoai-realtime engine``: run the offline local engine (default ``127.0.0.1:8788``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .._threads import run as run_loop
from .config import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PORT, EngineConfig
from .faults import Faults, FaultSpecError

DESCRIPTION = """\
Serve the Azure OpenAI realtime protocol offline: voice activity detection, speech-to-text, a
brain and text-to-speech, all on this machine. Connect any realtime client to
ws://HOST:PORT/openai/v1/realtime?model=NAME (GA),
ws://HOST:PORT/openai/realtime?api-version=2025-04-01-preview&deployment=NAME (preview) or
ws://HOST:PORT/v1/realtime?model=NAME (OpenAI's path, for the openai package's base_url).
"""

EPILOG = """\
faults (--fault, repeatable; also per connection as ?fault=SPEC query parameters):
  close[:CODE][:after=N]   close with CODE (default 1011) after N server events
  server_error[:N]         the Nth response (default 1) fails with a server_error
  expire[:SECONDS]         session_expired error, then close, after SECONDS (default 1)
  delay_audio[:MS]         hold the first audio delta of each response back by MS
  refuse[:STATUS]          refuse the handshake with 401 (default), 403, 429, 500 or 503
See docs/engine.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aoai-realtime engine",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to listen on (default $ENGINE_PORT or {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("ENGINE_API_KEY"),
        help="require this key (api-key header, api-key query parameter or Bearer token); "
        "default $ENGINE_API_KEY, else no key",
    )
    p.add_argument(
        "--brain",
        choices=("local", "scripted", "chat"),
        default="local",
        help="who answers: local (SmolLM2 on the CPU, default), scripted (--script) or chat "
        "(an OpenAI-compatible chat-completions URL, --brain-url)",
    )
    p.add_argument("--script", help="the scripted brain's script (see docs/scripted-brain.md)")
    p.add_argument(
        "--brain-url",
        help="chat-completions URL, e.g. http://127.0.0.1:8080/v1 (llama.cpp), "
        "http://127.0.0.1:11434/v1 (Ollama) or https://RES.openai.azure.com/openai/"
        "deployments/DEP/chat/completions?api-version=2024-10-21",
    )
    p.add_argument("--brain-key", default=os.environ.get("BRAIN_API_KEY"), help="its API key")
    p.add_argument("--brain-model", help="the model name to send (for servers that need one)")
    p.add_argument(
        "--no-speech",
        action="store_true",
        help="run without the speech models (no [local] extra needed; --brain scripted or "
        "chat): typed turns only, audio output is silence as long as its text, turn "
        "detection and transcription are refused",
    )
    p.add_argument(
        "--no-speculation",
        action="store_true",
        help="transcribe each turn whole at speech_stopped, then answer: no incremental "
        "transcription, no reply prepared during the pause (slower; a benchmark's baseline)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault on every connection (see below)",
    )
    p.add_argument(
        "--no-query-faults",
        action="store_true",
        help="ignore ?fault= query parameters (they are honoured by default)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest WebSocket message accepted, in MiB (default 32)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="logging level (default warning)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        faults = Faults.parse(args.fault)
    except FaultSpecError as exc:
        print(f"aoai-realtime engine: {exc}", file=sys.stderr)
        return 2
    port = args.port
    if port is None:
        env = os.environ.get("ENGINE_PORT")
        try:
            port = int(env) if env else DEFAULT_PORT
        except ValueError:
            print(f"aoai-realtime engine: ENGINE_PORT={env!r} is not a port", file=sys.stderr)
            return 2
    if args.brain == "scripted" and not args.script:
        print("aoai-realtime engine: --brain scripted needs --script FILE", file=sys.stderr)
        return 2
    if args.brain == "chat" and not args.brain_url:
        print("aoai-realtime engine: --brain chat needs --brain-url URL", file=sys.stderr)
        return 2

    if args.no_speech and args.brain == "local":
        print(
            "aoai-realtime engine: --no-speech needs --brain scripted or --brain chat "
            "(the local brain is one of the speech models)",
            file=sys.stderr,
        )
        return 2
    if not args.no_speech:
        from .speech import INSTALL_COMMAND, missing_local_extra

        problem = missing_local_extra()
        if problem is not None:
            print(f"aoai-realtime engine: {problem}", file=sys.stderr)
            print(f"Install it with:  {INSTALL_COMMAND}", file=sys.stderr)
            return 1
    config = EngineConfig(
        host=args.host,
        port=port,
        api_key=args.api_key or None,
        brain=args.brain,
        script=args.script,
        brain_url=args.brain_url,
        brain_key=args.brain_key,
        brain_model=args.brain_model,
        faults=faults,
        allow_query_faults=not args.no_query_faults,
        max_message_bytes=int(args.max_message_mb * 2**20),
        no_speech=args.no_speech,
        speculation=not args.no_speculation,
    )
    try:
        return run_loop(_serve(config))
    except KeyboardInterrupt:
        return 130


async def _serve(config: EngineConfig) -> int:
    from .scripted import ScriptError
    from .server import load_speech, start_engine
    from .speech import LocalExtraMissing

    def progress(message: str) -> None:
        print(f"  {message}", flush=True)

    if config.no_speech:
        print("aoai-realtime engine: without speech models (--no-speech)", flush=True)
    else:
        print("aoai-realtime engine: loading the speech models", flush=True)
        try:
            config.speech = await asyncio.to_thread(load_speech, progress)
        except LocalExtraMissing as exc:
            print(f"aoai-realtime engine: {exc}", file=sys.stderr)
            return 1
    try:
        engine = await start_engine(config)
    except (ValueError, ScriptError) as exc:
        print(f"aoai-realtime engine: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"aoai-realtime engine: cannot listen on {config.host}:{config.port}: {exc.strerror}"
            " (another engine running? pick another --port)",
            file=sys.stderr,
        )
        return 1
    print(
        f"aoai-realtime engine ready on {engine.url} "
        f"(GA: /openai/v1/realtime?model=…, preview: /openai/realtime?api-version=…&deployment=…)",
        flush=True,
    )
    if config.api_key:
        print("  an API key is required (api-key header, ?api-key= or Bearer)", flush=True)
    if config.faults.any:
        print(f"  faults on every connection: {config.faults.describe()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        print("aoai-realtime engine: stopping", flush=True)
        await engine.close()
    return 0
