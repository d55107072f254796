"""The long fuzz run: malformed client events, seeded and bounded, against the local engine in
both dialects and through the middle tier (``serve`` with its in-process engine).

    .venv/bin/python benchmarks/bench_fuzz.py                      # 100,000 events per target
    .venv/bin/python benchmarks/bench_fuzz.py --events 20000 --targets engine-ga,serve-preview

The events come from ``tests/fuzzing.py`` (the generator ``tests/test_fuzz.py`` runs a few
thousand of): valid events of each dialect with one to three fields replaced by a value of
another type, removed or joined by an unknown field, now and then a long ``type`` or
``event_id``. They go in sessions of ``--per-session`` events, each ended by a sentinel the
engine must refuse (so every event has been handled when its error comes). Four targets:

* ``engine-ga``, ``engine-preview``: the engine (scripted brain, no speech models) in this
  process, reached through an in-memory channel;
* ``serve-ga``, ``serve-preview``: the middle tier on a loopback port, its engine in process;
  a page per session over a WebSocket.

Reported per target: events sent, sessions, sessions that ended (or stalled) before their
sentinel, errors by code, ``server_error``\\ s, events per second; then what the fuzz tally found
(field errors without ``param``, params with pydantic's tags or, for a preview client, GA names,
unbounded messages, errors without their event's ``event_id``, wrong events accepted), and every
ERROR log record and traceback of the run. The exit status is 1 when there was a
``server_error``, an ERROR record or traceback, or a session that ended: what a client must
never see. The other findings are printed (``--strict`` fails on them too).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import (  # noqa: E402
    ENGINE_PATHS,
    SEED,
    Fuzzed,
    Tally,
    fuzzed,
    run_session,
    serve_in_process,
)
from helpers import memory_engine  # noqa: E402

TARGETS = ("engine-ga", "engine-preview", "serve-ga", "serve-preview")
FATAL = ("server_error", "session ended (or stalled) before the sentinel", "session did not close")


class Failures(logging.Handler):
    """Every log record at ERROR or above, and any record with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.records.append(text)
        elif record.levelno >= logging.WARNING:
            self.warnings += 1


class Tee(io.TextIOBase):
    """``sys.stderr`` as it was, counting the tracebacks written to it (a thread's or an
    unraisable exception's, which bypass logging)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tracebacks = 0

    def write(self, text: str) -> int:
        self.tracebacks += text.count("Traceback (most recent call last)")
        return int(self.stream.write(text))

    def flush(self) -> None:
        self.stream.flush()


@dataclass
class Result:
    target: str
    tally: Tally
    sessions: int = 0
    ended: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _chunks(events: Iterator[Fuzzed], size: int, total: int) -> Iterator[Iterator[Fuzzed]]:
    for start in range(0, total, size):
        yield itertools.islice(events, min(size, total - start))


async def run_engine(dialect: str, args: argparse.Namespace) -> Result:
    result = Result(f"engine-{dialect}", Tally(dialect))
    events = fuzzed(dialect, args.events, seed=args.seed)
    t0 = time.perf_counter()
    async with memory_engine() as engine:
        for chunk in _chunks(events, args.per_session, args.events):
            channel = await engine.open_channel(ENGINE_PATHS[dialect])
            result.sessions += 1
            still_open = await run_session(
                chunk, channel.send, channel.receive, channel.close, result.tally
            )
            result.ended += not still_open
    result.seconds = time.perf_counter() - t0
    result.tally.check()
    return result


async def run_serve(dialect: str, server: Any, args: argparse.Namespace) -> Result:
    result = Result(f"serve-{dialect}", Tally(dialect))
    events = fuzzed(dialect, args.events, seed=args.seed)
    url = "ws" + server.http_url[4:] + ENGINE_PATHS[dialect]
    closed = {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        for chunk in _chunks(events, args.per_session, args.events):
            ws = await http.ws_connect(url, max_msg_size=64 * 2**20)
            result.sessions += 1

            async def receive(ws: Any = ws) -> str | None:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        return str(msg.data)
                    if msg.type in closed:
                        return None

            still_open = await run_session(chunk, ws.send_str, receive, ws.close, result.tally)
            result.ended += not still_open
    result.seconds = time.perf_counter() - t0
    result.tally.check()
    relay_errors = {k: v for k, v in result.tally.errors.items() if k[0].startswith("relay")}
    if relay_errors:
        result.notes.append(f"relay errors: {relay_errors}")
    return result


def report(result: Result) -> None:
    tally = result.tally
    print(f"\n--- {result.target}", flush=True)
    rate = tally.sent / result.seconds if result.seconds else float("nan")
    print(
        f"events sent {tally.sent:,} in {result.sessions} sessions, {result.seconds:.1f} s "
        f"({rate:,.0f} events/s); sessions ended by a bad frame: {result.ended}"
    )
    total = sum(tally.errors.values())
    print(f"errors: {total:,} ({total / max(tally.sent, 1):.0%} of the events)")
    for (kind, code), count in sorted(tally.errors.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>8,}  {kind} / {code}")
    server_errors = sum(v for k, v in tally.errors.items() if "server_error" in k)
    print(f"server_error: {server_errors}")
    print(f"wrong events (must be refused): {len(tally.wrong):,}; sent without an event_id: "
          f"{tally.anonymous:,}")  # fmt: skip
    counts = tally.counts()
    if counts:
        print("findings:")
        for kind, count in counts.items():
            print(f"  {count:>8,}  {kind}")
            for sample in tally.failures().get(kind, [])[:3]:
                print(f"            e.g. {str(sample)[:240]}")
    else:
        print("findings: none")
    for note in result.notes:
        print(note)


async def main_async(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    server = None
    try:
        for target in args.targets:
            where, dialect = target.split("-")
            if where == "engine":
                results.append(await run_engine(dialect, args))
            else:
                if server is None:
                    server = serve_in_process()
                results.append(await run_serve(dialect, server, args))
            report(results[-1])
    finally:
        if server is not None:
            server.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per target")
    parser.add_argument("--per-session", type=int, default=5_000, help="events per session")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--targets", default=",".join(TARGETS), help=", ".join(TARGETS))
    parser.add_argument("--strict", action="store_true", help="fail on any finding")
    args, _ = parser.parse_known_args()  # run_all.py passes every script the same arguments
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown or args.events < 1 or args.per_session < 1:
        parser.error(f"targets are {', '.join(TARGETS)}; events and per-session at least 1")

    failures = Failures()
    root = logging.getLogger()
    root.addHandler(failures)
    root.setLevel(logging.WARNING)
    tee = Tee(sys.stderr)
    sys.stderr = tee  # type: ignore[assignment]
    print(
        f"fuzz: {args.events:,} events per target, {args.per_session:,} per session, "
        f"seed {args.seed}, targets {', '.join(args.targets)}",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        results = asyncio.run(main_async(args))
    finally:
        sys.stderr = tee.stream
        root.removeHandler(failures)
    elapsed = time.perf_counter() - t0

    print("\n=== summary")
    sent = sum(r.tally.sent for r in results)
    print(f"events sent: {sent:,} in {elapsed:.1f} s ({sent / elapsed:,.0f} events/s overall)")
    fatal = 0
    for r in results:
        counts = r.tally.counts()
        bad = {k: v for k, v in counts.items() if k in FATAL}
        other = {k: v for k, v in counts.items() if k not in FATAL}
        fatal += sum(bad.values())
        print(f"{r.target:>15}: server_error/ended {bad or 0}; other findings {other or 0}")
    print(f"ERROR log records or tracebacks: {len(failures.records)} (+{tee.tracebacks} "
          f"tracebacks on stderr); warnings logged: {failures.warnings:,}")  # fmt: skip
    for text in failures.records[:5]:
        print("  " + text[:2000].replace("\n", "\n  "))
    failed = fatal or failures.records or tee.tracebacks
    if args.strict:
        failed = failed or any(r.tally.counts() for r in results)
    print("result:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
