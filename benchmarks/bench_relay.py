"""The middle tier under load: many sessions streaming audio in real time both ways through it.

    .venv/bin/python benchmarks/bench_relay.py                 # 100 sessions, 15 s per phase
    .venv/bin/python benchmarks/bench_relay.py --sessions 100,200 --seconds 20

Three processes on loopback:

* an **upstream**: a minimal realtime server (the load generator's peer, not the local engine:
  no speech models, so the figures are the relay's, not the models'). Per session it answers
  ``session.created`` / ``session.updated`` and streams ``response.output_audio.delta`` events
  of ``--frame-ms`` of 24 kHz PCM16 in real time; it timestamps what it receives;
* the **middle tier** (``create_app`` as ``aoai-realtime serve`` builds it, with the demo tools
  and the default policy), its upstream configured to the process above;
* this process: the **clients**, each sending ``input_audio_buffer.append`` of ``--frame-ms`` in
  real time, and timestamping what it receives.

Each message carries its send time (``time.monotonic_ns``, one clock for all processes) in its
``event_id``, so every message's one-way latency is measured: client -> upstream and
upstream -> client. Each session count runs twice in one run: clients straight to the upstream
(the baseline), then through the middle tier; the difference is the latency the relay adds.
The middle tier's CPU time and resident memory are read from ``/proc`` while it relays.
Loops are bounded in time and count; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from _measure import percentile, rss_mib

RATE = 24000
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ upstream


def _frame_b64(frame_ms: int) -> str:
    samples = RATE * frame_ms // 1000
    # a quiet 440 Hz-ish square wave: content does not matter, size does
    pcm = b"".join((800 if (i // 27) % 2 else -800).to_bytes(2, "little", signed=True)
                   for i in range(samples))  # fmt: skip
    return base64.b64encode(pcm).decode()


APPEND_HEAD = '{"type":"input_audio_buffer.append","event_id":"t'
DELTA_HEAD = '{"type":"response.output_audio.delta","event_id":"t'
"""Frames open with these, then the time they were sent (``time.monotonic_ns()``)."""


def _age_us(text: str, head: str) -> int | None:
    """Microseconds since a frame that opens with ``head`` was sent; None for other frames."""
    if not text.startswith(head):
        return None
    sent = int(text[len(head) : text.index('"', len(head))])
    return (time.monotonic_ns() - sent) // 1000


async def _paced(period: float, go_on: Callable[[], bool]) -> AsyncIterator[None]:
    """Every ``period`` seconds on a fixed schedule (a late tick does not delay the next ones),
    while ``go_on()``."""
    start = time.monotonic()
    n = 0
    while go_on():
        n += 1
        await asyncio.sleep(max(0.0, start + n * period - time.monotonic()))
        yield


class Upstream:
    """A minimal realtime upstream that streams audio deltas and timestamps appends."""

    def __init__(self, frame_ms: int) -> None:
        self.frame_ms = frame_ms
        self.audio = _frame_b64(frame_ms)
        self.uplink_us: list[int] = []
        self.sessions = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/openai/v1/realtime", self.realtime)
        app.router.add_get("/stats", self.stats)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        data = {"uplink_us": self.uplink_us, "sessions": self.sessions}
        if request.query.get("reset"):
            self.uplink_us = []
        return web.json_response(data)

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=32 * 1024 * 1024, compress=False)
        await ws.prepare(request)
        self.sessions += 1
        await ws.send_str(
            json.dumps(
                {
                    "type": "session.created",
                    "event_id": "ev_created",
                    "session": {
                        "type": "realtime",
                        "id": "sess_bench",
                        "object": "realtime.session",
                    },
                }
            )
        )
        streamer = asyncio.create_task(self._stream(ws))
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                text = msg.data
                age = _age_us(text, APPEND_HEAD)
                if age is not None:
                    self.uplink_us.append(age)
                    continue
                event = json.loads(text)
                if event.get("type") == "session.update":
                    await ws.send_str(
                        json.dumps(
                            {
                                "type": "session.updated",
                                "event_id": "ev_updated",
                                "session": event.get("session") or {},
                            }
                        )
                    )
        finally:
            streamer.cancel()
            self.sessions -= 1
        return ws

    async def _stream(self, ws: web.WebSocketResponse) -> None:
        tail = f'","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{self.audio}"}}'
        try:
            async for _ in _paced(self.frame_ms / 1000, lambda: not ws.closed):
                await ws.send_str(f"{DELTA_HEAD}{time.monotonic_ns()}{tail}")
        except (ConnectionError, RuntimeError):
            return


async def run_upstream(frame_ms: int, port_file: Path) -> None:
    upstream = Upstream(frame_ms)
    await _serve(upstream.app(), port_file)


async def _serve(app: web.Application, port_file: Path) -> None:
    """Serve ``app`` on a free port, tell the benchmark which (``port_file``), serve on."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    _announce(site, port_file)
    await asyncio.Event().wait()


def _announce(site: web.TCPSite, port_file: Path) -> None:
    """Tell the benchmark which port a helper process listens on."""
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port_file.write_text(str(port))


# ------------------------------------------------------------------------------------ middle tier


async def run_relay(upstream_port: int, port_file: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from aoai_realtime.config import Settings
    from aoai_realtime.server.app import ServerConfig, create_app
    from aoai_realtime.server.policy import Policy
    from aoai_realtime.server.tools import demo_tools
    from aoai_realtime.server.upstream import Upstreams

    settings = Settings(endpoint=f"http://{HOST}:{upstream_port}", deployment="bench")
    upstreams = Upstreams(settings=settings, local=None, listen_host=HOST)
    config = ServerConfig(host=HOST, port=0, policy=Policy.build(tools=demo_tools()))
    await _serve(create_app(config, upstreams), port_file)


# ------------------------------------------------------------------------------------ clients


@dataclass
class Phase:
    downlink_us: list[int] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    errors: int = 0


async def client(
    session: aiohttp.ClientSession,
    url: str,
    phase: Phase,
    frame_ms: int,
    audio: str,
    start_at: float,
    stop_at: float,
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    t0 = time.monotonic()
    try:
        async with session.ws_connect(url, max_msg_size=32 * 1024 * 1024) as ws:
            first = await ws.receive()
            if first.type != aiohttp.WSMsgType.TEXT or "session.created" not in first.data:
                phase.errors += 1
                return
            phase.connect_ms.append((time.monotonic() - t0) * 1000)

            async def reader() -> None:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    text = msg.data
                    age = _age_us(text, DELTA_HEAD)
                    if age is not None:
                        phase.downlink_us.append(age)
                        phase.received += 1
                    elif '"type":"error"' in text:
                        phase.errors += 1

            task = asyncio.create_task(reader())
            async for _ in _paced(frame_ms / 1000, lambda: time.monotonic() < stop_at):
                await ws.send_str(f'{APPEND_HEAD}{time.monotonic_ns()}","audio":"{audio}"}}')
                phase.sent += 1
            task.cancel()
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
        phase.errors += 1


async def run_phase(url: str, sessions: int, seconds: float, frame_ms: int) -> Phase:
    phase = Phase()
    audio = _frame_b64(frame_ms)
    now = time.monotonic()
    ramp = min(2.0, seconds / 4)
    stop_at = now + ramp + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(
            *(
                client(http, url, phase, frame_ms, audio, now + ramp * i / sessions, stop_at)
                for i in range(sessions)
            )
        )
    return phase


# ------------------------------------------------------------------------------------ measuring


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class RssSampler:
    """The peak resident memory of a process, sampled every 250 ms until ``stop`` is set."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid)[0])
            await asyncio.sleep(0.25)


def _summary(values: list[int]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 0.50) / 1000,
        "p99_ms": percentile(values, 0.99) / 1000,
        "mean_ms": statistics.fmean(values) / 1000 if values else float("nan"),
    }


def _spawn(role: str, port_file: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--role", role, "--port-file", str(port_file), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_port(port_file: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"helper process exited: {err}")
        time.sleep(0.05)
    raise RuntimeError("helper process did not start in time")


async def _fetch_uplink(port: int) -> list[int]:
    url = f"http://{HOST}:{port}/stats?reset=1"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        data: dict[str, Any] = await resp.json()
    return list(data["uplink_us"])


async def bench(
    sessions_list: list[int], seconds: float, frame_ms: int, tmp: Path
) -> dict[str, Any]:
    up_file, relay_file = tmp / "upstream.port", tmp / "relay.port"
    for f in (up_file, relay_file):
        f.unlink(missing_ok=True)
    up = _spawn("upstream", up_file, "--frame-ms", str(frame_ms))
    relay: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {"frame_ms": frame_ms, "seconds": seconds, "runs": []}
    try:
        up_port = _wait_port(up_file, up)
        relay = _spawn("relay", relay_file, "--upstream-port", str(up_port))
        relay_port = _wait_port(relay_file, relay)
        direct_url = f"ws://{HOST}:{up_port}/openai/v1/realtime?model=bench"
        relay_url = f"ws://{HOST}:{relay_port}/realtime"
        # warm-up: a few sessions through the relay so imports and caches are paid for
        await run_phase(relay_url, 4, 1.0, frame_ms)
        await _fetch_uplink(up_port)
        for n in sessions_list:
            direct = await run_phase(direct_url, n, seconds, frame_ms)
            direct_up = await _fetch_uplink(up_port)
            await asyncio.sleep(0.5)
            rss_idle = rss_mib(relay.pid)[0]
            cpu0, wall0 = _cpu_seconds(relay.pid), time.monotonic()
            others0 = _cpu_seconds(up.pid) + _cpu_seconds(os.getpid())
            sampler = RssSampler(relay.pid)
            sampling = asyncio.create_task(sampler.run())
            relayed = await run_phase(relay_url, n, seconds, frame_ms)
            sampler.stop.set()
            await sampling
            rss_peak = max(rss_idle, sampler.peak)
            cpu = _cpu_seconds(relay.pid) - cpu0
            others = _cpu_seconds(up.pid) + _cpu_seconds(os.getpid()) - others0
            wall = time.monotonic() - wall0
            relayed_up = await _fetch_uplink(up_port)
            # steady state: the ramp and the tail are part of wall; use the streaming window
            streaming = seconds + min(2.0, seconds / 4) / 2
            core_fraction = cpu / streaming
            run = {
                "sessions": n,
                "direct": {
                    "downlink": _summary(direct.downlink_us),
                    "uplink": _summary(direct_up),
                    "connect_p50_ms": percentile(direct.connect_ms, 0.5),
                    "errors": direct.errors,
                },
                "relayed": {
                    "downlink": _summary(relayed.downlink_us),
                    "uplink": _summary(relayed_up),
                    "connect_p50_ms": percentile(relayed.connect_ms, 0.5),
                    "errors": relayed.errors,
                },
                "relay_cpu_s": cpu,
                "load_generator_and_upstream_cores": others / wall,
                "relay_wall_s": wall,
                "relay_core_fraction": core_fraction,
                "relay_cpu_ms_per_session_s": 1000 * cpu / (n * streaming),
                "sessions_per_core": n / core_fraction if core_fraction > 0 else float("inf"),
                "relay_rss_idle_mib": rss_idle,
                "relay_rss_peak_mib": rss_peak,
                "relay_kib_per_session": 1024 * (rss_peak - rss_idle) / n,
                "messages_per_s": (relayed.sent + relayed.received) / streaming,
            }
            run["load_average_1m"] = _loadavg()
            results["runs"].append(run)
            print_run(run, frame_ms)
    finally:
        for proc in (relay, up):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return results


def print_run(run: dict[str, Any], frame_ms: int) -> None:
    d, r = run["direct"], run["relayed"]
    print(f"\n== {run['sessions']} sessions, {frame_ms} ms audio frames both ways, real time ==")
    print(
        f"{'one-way latency':28} {'direct p50/p99':>18} {'relayed p50/p99':>18} {'added p50/p99':>16}"
    )
    for way in ("uplink", "downlink"):
        a, b = d[way], r[way]
        label = "client -> upstream" if way == "uplink" else "upstream -> client"
        print(
            f"{label:28} {a['p50_ms']:8.2f} /{a['p99_ms']:7.2f} ms"
            f" {b['p50_ms']:8.2f} /{b['p99_ms']:7.2f} ms"
            f" {b['p50_ms'] - a['p50_ms']:6.2f} /{b['p99_ms'] - a['p99_ms']:6.2f} ms"
        )
    print(
        f"{'messages measured':28} {d['uplink']['n'] + d['downlink']['n']:>18}"
        f" {r['uplink']['n'] + r['downlink']['n']:>18}"
    )
    print(
        f"session start (connect -> session.created) p50: direct {d['connect_p50_ms']:.1f} ms, "
        f"relayed {r['connect_p50_ms']:.1f} ms; errors: {d['errors']} / {r['errors']}"
    )
    print(
        f"middle tier: {run['relay_core_fraction'] * 100:.1f}% of one core for "
        f"{run['sessions']} sessions ({run['messages_per_s']:.0f} messages/s) = "
        f"{run['relay_cpu_ms_per_session_s']:.2f} ms CPU per session-second -> about "
        f"{run['sessions_per_core']:.0f} real-time sessions per core"
    )
    print(
        f"machine: {os.cpu_count()} cores; the clients and the upstream used "
        f"{run['load_generator_and_upstream_cores']:.2f} cores meanwhile; load average "
        f"{run['load_average_1m']:.2f} at the end (a busy machine inflates the latency tails)"
    )
    print(
        f"middle tier memory: {run['relay_rss_idle_mib']:.1f} MiB idle, "
        f"{run['relay_rss_peak_mib']:.1f} MiB peak -> {run['relay_kib_per_session']:.0f} KiB "
        "per session"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="100", help="comma-separated session counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="streaming time per phase")
    parser.add_argument("--frame-ms", type=int, default=40, help="audio per message (ms)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--role", choices=["bench", "upstream", "relay"], default="bench")
    parser.add_argument("--port-file", type=Path, default=None)
    parser.add_argument("--upstream-port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "upstream":
        asyncio.run(run_upstream(args.frame_ms, args.port_file))
        return 0
    if args.role == "relay":
        asyncio.run(run_relay(args.upstream_port, args.port_file))
        return 0
    counts = [int(x) for x in args.sessions.split(",") if x.strip()]
    if any(n < 1 or n > 1000 for n in counts) or not 1 <= args.seconds <= 300:
        parser.error("sessions must be 1..1000 and seconds 1..300")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(bench(counts, args.seconds, args.frame_ms, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
