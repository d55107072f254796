"""One client cannot hurt another: the local engine and the middle tier under careless and
hostile clients, each measured as what another session feels.

    .venv/bin/python benchmarks/bench_isolation.py                  # engine, then serve
    .venv/bin/python benchmarks/bench_isolation.py --targets serve --sessions 200 --hold 20

Each target runs as its own process on 127.0.0.1 with the full offline speech stack, as a user
starts it (``aoai-realtime engine``, ``aoai-realtime serve``); this process is the clients.
Every phase has a **victim**: one more session that, every 20 ms, sends
``input_audio_buffer.clear`` and times its ``input_audio_buffer.cleared`` (a round trip through
the session's event loop and, behind ``serve``, the relay). Its p50/p99 are reported against
the same round trip measured alone at the start of the run (the baseline), so a stall anywhere
in the process shows as a ratio.

Phases, in order:

The "start" memory is read after a warm-up (three typed turns and four out-of-band stories):
the models' own arenas grow on their first turns and longest sentences, once per process, and
that is not what a session leaves behind.

* **baseline**: the victim alone (its round trip, and the first audio of three typed turns).
* **burst**: ``--sessions`` connections opened at once; how many have ``session.created``
  within 10 s, and how long they took.
* **hold**: those sessions stream audio like a live microphone (100 ms of low noise every
  100 ms, paced by the clock) for ``--hold`` seconds, then all close. Resident memory at the
  start, the most during, and once every session has closed (``/healthz`` says so).
* **vad flood**: one connection sends 1,000 ``session.update`` that change the VAD threshold,
  as fast as it reads the answers.
* **connect storm**: 50 connections at once, while the victim measures.
* **out-of-band flood**: one connection asks for 50 out-of-band spoken responses at once; the
  victim's next typed turn's first audio against the baseline's (the engine runs at most 4 at
  once per session and serves sessions' model work in turn).
* **not reading**: one connection sends up to 100,000 ``session.update`` and never reads; how
  many it sent before it was closed, with which code, and the target's memory.

Loops are bounded in count and time; everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from _measure import percentile, rss_mib

HOST = "127.0.0.1"
WAIT = 30.0
FRAME_MS = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _noise_b64(ms: int, seed: int) -> str:
    rng = random.Random(seed)
    samples = 24 * ms
    pcm = b"".join(
        rng.randint(-300, 300).to_bytes(2, "little", signed=True) for _ in range(samples)
    )
    return base64.b64encode(pcm).decode()


# ------------------------------------------------------------------------------------ targets


class Target:
    """``aoai-realtime engine`` or ``aoai-realtime serve`` in a process of its own."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.port = _free_port()
        exe = (
            shutil.which("aoai-realtime", path=str(Path(sys.executable).parent)) or "aoai-realtime"
        )
        cmd = [exe, kind, "--port", str(self.port), "--log-level", "warning"]
        self.log = tmp / f"{kind}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_OPENAI")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        path = "/openai/v1/realtime?model=local" if kind == "engine" else "/realtime"
        self.url = f"ws://{HOST}:{self.port}{path}"
        self.health = f"http://{HOST}:{self.port}/healthz"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(self.health) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} did not answer /healthz in time")

    async def sessions(self, http: aiohttp.ClientSession) -> int:
        async with http.get(self.health) as resp:
            body = await resp.json()
        return int(body["sessions"] if self.kind == "engine" else body["connections"])

    async def wait_closed(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> float:
        """Seconds until the target holds no session (polled: this is a benchmark)."""
        start = time.monotonic()
        while await self.sessions(http) > 0:
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{self.kind} still holds sessions after {timeout:g} s")
            await asyncio.sleep(0.1)
        return time.monotonic() - start

    def rss(self) -> float:
        return rss_mib(self.proc.pid)[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------ clients


class Session:
    """One realtime session: a reader task keeps every event and wakes whoever waits."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, timeout: float = WAIT) -> Session:
        ws = await http.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        session = cls(ws)
        await session.wait(lambda e: e["type"] == "session.created", timeout)
        return session

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))
                self._changed.set()
        self._changed.set()

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def wait(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT, since: int = 0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        index = since
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if match(event):
                    return event
            if self.ws.closed and self._reader.done():
                raise RuntimeError(f"closed ({self.ws.close_code}) while waiting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching event in time")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def round_trip(self) -> float:
        """Milliseconds from ``input_audio_buffer.clear`` to its ``cleared``."""
        since = len(self.events)
        start = time.perf_counter()
        await self.send({"type": "input_audio_buffer.clear"})
        await self.wait(lambda e: e["type"] == "input_audio_buffer.cleared", since=since)
        return (time.perf_counter() - start) * 1000

    async def first_audio(self, text: str) -> float:
        """Milliseconds from a typed turn's ``response.create`` to its first audio delta."""
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
        since = len(self.events)
        start = time.perf_counter()
        await self.send({"type": "response.create"})
        await self.wait(lambda e: e["type"] == "response.output_audio.delta", 60, since)
        ms = (time.perf_counter() - start) * 1000
        await self.wait(lambda e: e["type"] == "response.done", 60, since)
        return ms

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def measure_victim(
    victim: Session, during: Callable[[], Awaitable[Any]], period: float = 0.02
) -> tuple[list[float], Any]:
    """The victim's round trips every ``period`` while ``during()`` runs; its result."""
    samples: list[float] = []
    task = asyncio.ensure_future(during())
    while not task.done() or len(samples) < 5:
        samples.append(await victim.round_trip())
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), period)
        else:
            await asyncio.sleep(period)
    return samples, task.result()


def _say(target: Target, line: str) -> None:
    print(f"{line}  [{target.kind} {target.rss():.0f} MiB]", flush=True)


def _p(samples: list[float]) -> str:
    return f"p50 {percentile(samples, 0.5):7.1f} ms  p99 {percentile(samples, 0.99):7.1f} ms"


# ------------------------------------------------------------------------------------ phases


async def vad_flood(http: aiohttp.ClientSession, url: str, count: int = 1000) -> float:
    attacker = await Session.open(http, url)
    start = time.perf_counter()
    for i in range(count):
        since = len(attacker.events)
        threshold = (i % 101) / 100
        await attacker.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "server_vad", "threshold": threshold}}
                    },
                },
            }
        )
        await attacker.wait(lambda e: e["type"] in ("session.updated", "error"), since=since)
    rate = count / (time.perf_counter() - start)
    await attacker.close()
    return rate


async def connect_storm(http: aiohttp.ClientSession, url: str, count: int = 50) -> int:
    opened = await asyncio.gather(
        *(Session.open(http, url) for _ in range(count)), return_exceptions=True
    )
    ok = [s for s in opened if isinstance(s, Session)]
    await asyncio.gather(*(s.close() for s in ok))
    return len(ok)


def oob_request(i: int) -> dict[str, Any]:
    """An out-of-band spoken response (``metadata.n`` tells them apart)."""
    return {
        "type": "response.create",
        "event_id": f"oob_{i}",
        "response": {
            "conversation": "none",
            "metadata": {"n": str(i)},
            "instructions": "Tell a long story about the sea.",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"Story number {i}."}],
                }
            ],
        },
    }


async def oob_flood(http: aiohttp.ClientSession, url: str, count: int = 50) -> Session:
    attacker = await Session.open(http, url)
    for i in range(count):
        await attacker.send(oob_request(i))
    return attacker


async def not_reading(
    http: aiohttp.ClientSession, url: str, target: Target, count: int
) -> dict[str, Any]:
    ws = await http.ws_connect(url, max_msg_size=0)
    before = target.rss()
    peak = before
    sent = 0
    start = time.monotonic()
    try:
        for i in range(count):
            event = {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": f"Be brief. {i} " + "x" * 400},
            }
            await asyncio.wait_for(ws.send_str(json.dumps(event)), 10)
            sent += 1
            if i % 2000 == 0:
                peak = max(peak, target.rss())
            if time.monotonic() - start > 120:
                break
    except (ConnectionError, asyncio.TimeoutError, aiohttp.ClientError, RuntimeError):
        pass
    peak = max(peak, target.rss())
    # now read what is left, up to the answer to one last event, or the close
    code = None
    with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
        await ws.send_str(json.dumps({"type": "input_audio_buffer.clear"}))
    async with asyncio.timeout(120):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and '"input_audio_buffer.cleared"' in msg.data:
                break
        code = ws.close_code
    await ws.close()
    return {"sent": sent, "close_code": code, "rss_before": before, "rss_peak": peak}


async def run_target(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"target": target.kind}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await target.ready(http)
        # Warm up (in serve this loads the models): the models' arenas grow to their working
        # size on the first turns and long sentences, which is not a session's memory.
        warm = await Session.open(http, target.url, timeout=120)
        for _ in range(3):
            await warm.first_audio("Hello there.")
        since = len(warm.events)
        for i in range(4):
            await warm.send(oob_request(i))
        for i in range(4):
            await warm.wait(
                lambda e, i=i: (
                    e["type"] == "response.done"
                    and e["response"].get("metadata", {}).get("n") == str(i)
                ),
                120,
                since,
            )
        await warm.close()
        await target.wait_closed(http)
        out["rss_start"] = target.rss()

        victim = await Session.open(http, target.url)
        base = [await victim.round_trip() for _ in range(50)]
        out["baseline"] = base
        out["baseline_first_audio"] = [
            await victim.first_audio("What is the sea?") for _ in range(3)
        ]
        _say(
            target,
            f"  baseline        victim {_p(base)}; first audio "
            f"{percentile(out['baseline_first_audio'], 0.5):.0f} ms",
        )

        # burst + hold
        t0 = time.perf_counter()
        opened = await asyncio.gather(
            *(Session.open(http, target.url, timeout=10) for _ in range(args.sessions)),
            return_exceptions=True,
        )
        burst_s = time.perf_counter() - t0
        sessions = [s for s in opened if isinstance(s, Session)]
        failures = [repr(s)[:120] for s in opened if not isinstance(s, Session)]
        out["burst"] = {
            "asked": args.sessions,
            "started": len(sessions),
            "seconds": burst_s,
            "failures": failures[:3],
        }
        _say(
            target,
            f"  burst           {len(sessions)}/{args.sessions} started within 10 s "
            f"(all in {burst_s:.1f} s)",
        )

        rss_during = [target.rss()]

        async def hold() -> None:
            frames = [_noise_b64(FRAME_MS, seed) for seed in range(4)]
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < args.hold:
                for i, s in enumerate(sessions):
                    if not s.ws.closed:
                        await s.send(
                            {"type": "input_audio_buffer.append", "audio": frames[(i + n) % 4]}
                        )
                n += 1  # the next frame leaves once it has been spoken
                if n % 20 == 0:
                    rss_during.append(target.rss())
                await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - time.monotonic()))

        held, _ = await measure_victim(victim, hold)
        rss_during.append(target.rss())
        await asyncio.gather(*(s.close() for s in sessions))
        _say(
            target,
            f"  hold {args.hold:g} s      victim {_p(held)} with {len(sessions)} sessions streaming",
        )
        out["hold"] = held
        out["rss_during"] = max(rss_during)

        # floods
        flood, rate = await measure_victim(victim, lambda: vad_flood(http, target.url))
        out["vad_flood"] = flood
        _say(target, f"  vad flood       victim {_p(flood)} ({rate:.0f} updates/s)")

        storm, n = await measure_victim(victim, lambda: connect_storm(http, target.url))
        out["connect_storm"] = storm
        _say(target, f"  connect storm   victim {_p(storm)} ({n}/50 started)")

        attacker = await oob_flood(http, target.url)
        oob_rtt, first = await measure_victim(victim, lambda: victim_first_audio(victim))
        refused = sum(
            1
            for e in attacker.events
            if e["type"] == "error" and e["error"].get("code") == "too_many_active_responses"
        )
        await attacker.close()
        out["oob_flood"] = {"rtt": oob_rtt, "first_audio": first, "refused": refused}
        _say(
            target,
            f"  oob flood       victim {_p(oob_rtt)}; first audio {first:.0f} ms "
            f"({refused}/50 refused: at most 4 at once)",
        )
        await victim.close()
        await target.wait_closed(http)

        nr = await not_reading(http, target.url, target, args.unread)
        out["not_reading"] = nr
        _say(
            target,
            f"  not reading     closed with {nr['close_code']} after {nr['sent']} events; "
            f"{target.kind} {nr['rss_before']:.0f} -> {nr['rss_peak']:.0f} MiB",
        )

        out["closed_in_s"] = await target.wait_closed(http)
        after = []
        for _ in range(10):  # let the allocator settle; the last reading counts
            await asyncio.sleep(0.3)
            after.append(target.rss())
        out["rss_after"] = after[-1]
        _say(
            target,
            f"  memory          start {out['rss_start']:.0f} MiB, most during "
            f"{out['rss_during']:.0f} MiB, after all closed {out['rss_after']:.0f} MiB "
            f"({(out['rss_after'] / out['rss_start'] - 1) * 100:+.1f}%)",
        )
    return out


async def victim_first_audio(victim: Session) -> float:
    # the attacker's responses are queued first; the victim's turn comes in
    return await victim.first_audio("What is the sea?")


def print_aims(results: list[dict[str, Any]]) -> None:
    print("\naims (issue 9):")
    for r in results:
        base99 = percentile(r["baseline"], 0.99)
        worst = max(
            percentile(r[k] if k != "oob_flood" else r[k]["rtt"], 0.99)
            for k in ("vad_flood", "connect_storm", "oob_flood")
        )
        back = r["rss_after"] / r["rss_start"] - 1
        fa = r["oob_flood"]["first_audio"] / percentile(r["baseline_first_audio"], 0.5)
        print(
            f"  {r['target']:6}  {r['burst']['started']}/{r['burst']['asked']} sessions started at once "
            f"[{'met' if r['burst']['started'] == r['burst']['asked'] else 'NOT met'}]; "
            f"victim p99 under floods {worst:.1f} ms (alone {base99:.1f} ms, "
            f"{worst / base99:.1f}x) [{'met' if worst < 100 else 'NOT met'}: < 100 ms]; "
            f"first audio during an oob flood {fa:.1f}x alone; "
            f"memory after {back * 100:+.1f}% [{'met' if back <= 0.10 else 'NOT met'}: <= 10%]; "
            f"non-reading client closed with {r['not_reading']['close_code']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="engine,serve")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the sessions stream")
    parser.add_argument(
        "--unread", type=int, default=100_000, help="events a non-reading client sends"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        for kind in args.targets.split(","):
            print(f"{kind}:", flush=True)
            target = Target(kind, Path(tmp))
            try:
                results.append(asyncio.run(run_target(target, args)))
            finally:
                target.stop()
                errors = [
                    line
                    for line in target.log.read_text(errors="replace").splitlines()
                    if "Traceback" in line or " ERROR " in line
                ]
                if errors:
                    print(f"  {len(errors)} error lines in the {kind} log, e.g. {errors[0][:200]}")
    print_aims(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
