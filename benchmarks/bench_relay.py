"""The middle tier under load, against the two relays a user would pick instead of ours.

    .venv/bin/python benchmarks/bench_relay.py                 # 100 sessions, 15 s per phase
    .venv/bin/python benchmarks/bench_relay.py --sessions 100,200 --seconds 20

Processes on loopback (127.0.0.1 only):

* an **upstream**: a minimal realtime server (the load generator's peer, not the local engine:
  no speech models, so the figures are the relays', not the models'). Per session it answers
  ``session.created`` / ``session.updated`` and streams ``response.output_audio.delta`` events
  of ``--frame-ms`` of 24 kHz PCM16 in real time; it timestamps what it receives;
* three relays in front of it, each in its own process(es):
  - **ours**: the middle tier (``create_app`` as ``aoai-realtime serve`` builds it, with the demo
    tools and the default policy);
  - **nginx**: Debian's nginx as a WebSocket proxy, started here with its own configuration in a
    temporary folder (``apt-get install -y nginx`` if it is missing; skipped with that hint);
  - **plain**: an aiohttp relay in the pattern of Azure's VoiceRAG sample (``_plain_relay.py``:
    one task per direction, every message parsed and re-serialised);
* the **clients** (the load generator), in their own process(es), apart from the upstream: each
  session sends ``input_audio_buffer.append`` of ``--frame-ms`` in real time and timestamps what
  it receives.

Each message carries its send time (``time.monotonic_ns``, one clock for all processes) in its
``event_id``, so every message's one-way latency is measured: client -> upstream and
upstream -> client. Each session count runs clients straight to the upstream (the baseline),
then through each relay in turn, in one run; the difference is the latency a relay adds. A
relay's CPU time and resident memory are read from ``/proc`` (for nginx: its master and workers
summed). CPU per session-second gives the sessions one core carries. A process that keeps a core
busy (the clients, the upstream, a relay) is reported, since it would cap the figures.
Loops are bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
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


SPACED = {h: h.replace('":"', '": "').replace('","', '", "') for h in (APPEND_HEAD, DELTA_HEAD)}
"""The same heads as ``json.dumps`` writes them (a relay that re-serialises sends these)."""


def _age_us(text: str, head: str) -> int | None:
    """Microseconds since a frame that opens with ``head`` was sent; None for other frames."""
    if not text.startswith(head):
        head = SPACED[head]
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


# ------------------------------------------------------------------------------------ relays


async def run_relay(upstream_port: int, port_file: Path) -> None:
    """Ours: the middle tier as ``aoai-realtime serve`` builds it (demo tools, default policy)."""
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


async def run_plain(upstream_port: int, port_file: Path, reserialise: bool) -> None:
    """The plain aiohttp relay of ``_plain_relay.py`` (VoiceRAG's pattern)."""
    from _plain_relay import PlainRelay

    relay = PlainRelay(
        f"ws://{HOST}:{upstream_port}/openai/v1/realtime?model=bench", reserialise=reserialise
    )
    await _serve(relay.app(), port_file)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes auto;
{user}pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://{host}:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""
"""A WebSocket proxy as nginx's documentation writes it; ``worker_processes auto`` as Debian's."""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}): {_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {HOST}:{port} in time: {_tail(log)}")


def start_nginx(binary: str, upstream_port: int, max_sessions: int, tmp: Path) -> tuple[
    subprocess.Popen[bytes], int
]:  # fmt: skip
    """nginx on a free loopback port, in the foreground (``daemon off``), all its files in
    ``tmp``; enough connections per worker for every session's two sockets."""
    folder = tmp / "nginx"
    folder.mkdir(exist_ok=True)
    connections = 2 * max_sessions + 128
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    log = folder / "nginx-error.log"
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        conf = folder / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user=user,
                tmp=folder,
                nofile=2 * connections,
                connections=connections,
                host=HOST,
                port=port,
                upstream_port=upstream_port,
            )
        )
        cmd = [binary, "-p", str(folder), "-c", str(conf), "-e", str(log)]
        with log.open("ab") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_listening(port, proc, log)
            return proc, port
        except RuntimeError:
            _stop(proc)
            if "Address already in use" not in _tail(log):
                raise
    raise RuntimeError(f"nginx could not bind a port: {_tail(log)}")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nginx's workers), from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


# ------------------------------------------------------------------------------------ clients


@dataclass
class Phase:
    downlink_us: list[int] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)
    """Each client process's CPU, in cores, while it streamed."""
    late_s: float = 0.0
    """How late the slowest client process was for the planned start."""

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:300])


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
                phase.error(f"first message: {first.type} {str(first.data)[:200]}")
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
                    elif '"type":"error"' in text or '"type": "error"' in text:
                        phase.error(text)

            task = asyncio.create_task(reader())
            async for _ in _paced(frame_ms / 1000, lambda: time.monotonic() < stop_at):
                await ws.send_str(f'{APPEND_HEAD}{time.monotonic_ns()}","audio":"{audio}"}}')
                phase.sent += 1
            task.cancel()
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
        phase.error(f"{type(exc).__name__}: {exc}")


def _ramp(seconds: float) -> float:
    return min(2.0, seconds / 4)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_clients(args: argparse.Namespace) -> None:
    """One client process: sessions ``proc``, ``proc + procs``, ... of ``total``, their start
    times spread over the ramp from ``start_at``; the figures go to ``out`` as JSON."""
    phase = Phase()
    audio = _frame_b64(args.frame_ms)
    start_at, ramp = args.start_at, _ramp(args.seconds)
    stop_at = start_at + ramp + args.seconds
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    late = max(0.0, time.monotonic() - start_at)
    cpu0, wall0 = _own_cpu(), time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(
            *(
                client(
                    http,
                    args.url,
                    phase,
                    args.frame_ms,
                    audio,
                    start_at + ramp * i / args.total,
                    stop_at,
                )
                for i in range(args.proc, args.total, args.procs)
            )
        )
    cores = (_own_cpu() - cpu0) / max(1e-3, time.monotonic() - wall0)
    data = {**phase.__dict__, "client_cores": [cores], "late_s": late}
    args.out.write_text(json.dumps(data))


async def run_phase(
    url: str, sessions: int, seconds: float, frame_ms: int, procs: int, tmp: Path
) -> Phase:
    """``sessions`` clients against ``url`` from ``procs`` client processes; merged figures."""
    procs = max(1, min(procs, sessions))
    start_at = time.monotonic() + 1.5  # time for the client processes to import aiohttp
    outs = [tmp / f"clients-{j}.json" for j in range(procs)]
    children = []
    for j, out in enumerate(outs):
        out.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--role",
            "clients",
            "--url",
            url,
            "--total",
            str(sessions),
            "--proc",
            str(j),
            "--procs",
            str(procs),
            "--seconds",
            str(seconds),
            "--frame-ms",
            str(frame_ms),
            "--start-at",
            repr(start_at),
            "--out",
            str(out),
        ]
        with (tmp / f"clients-{j}.log").open("ab") as log:
            children.append(
                await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.DEVNULL, stderr=log)
            )
    deadline = start_at + _ramp(seconds) + seconds + 60.0
    waits = [asyncio.create_task(c.wait()) for c in children]
    await asyncio.wait(waits, timeout=max(1.0, deadline - time.monotonic()))
    phase = Phase()
    for j, out in enumerate(outs):
        child = children[j]
        if child.returncode is None:
            child.kill()
            await waits[j]
            phase.error(f"client process {j} did not finish in time")
            continue
        if child.returncode != 0 or not out.exists():
            phase.error(f"client process {j} failed: {_tail(tmp / f'clients-{j}.log')}")
            continue
        part = json.loads(out.read_text())
        phase.downlink_us += part["downlink_us"]
        phase.connect_ms += part["connect_ms"]
        phase.sent += part["sent"]
        phase.received += part["received"]
        phase.errors += part["errors"]
        phase.error_samples += part["error_samples"][: 5 - len(phase.error_samples)]
        phase.client_cores += part["client_cores"]
        phase.late_s = max(phase.late_s, part["late_s"])
    return phase


# ------------------------------------------------------------------------------------ measuring


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _machine_busy() -> tuple[float, float]:
    """Busy and total jiffies of the whole machine (``/proc/stat``), all work included."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


def _busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    """How many of the machine's cores were busy between two :func:`_machine_busy` readings."""
    share = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    return share * (os.cpu_count() or 1)


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _rss_total(pids: list[int]) -> float:
    return sum(rss_mib(pid)[0] for pid in pids if not math.isnan(rss_mib(pid)[0]))


class RssSampler:
    """The peak resident memory of a set of processes (summed), sampled every 250 ms until
    ``stop`` is set."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss_total(self.pids))
            await asyncio.sleep(0.25)


def _summary(values: list[int]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 0.50) / 1000,
        "p99_ms": percentile(values, 0.99) / 1000,
        "mean_ms": statistics.fmean(values) / 1000 if values else float("nan"),
    }


def _spawn(role: str, port_file: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--role", role, "--port-file", str(port_file), *extra]
    with log.open("ab") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def _wait_port(port_file: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"helper process exited: {_tail(log)}")
        time.sleep(0.05)
    raise RuntimeError(f"helper process did not start in time: {_tail(log)}")


def _tail(log: Path, lines: int = 12) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _fetch_uplink(port: int) -> list[int]:
    url = f"http://{HOST}:{port}/stats?reset=1"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        data: dict[str, Any] = await resp.json()
    return list(data["uplink_us"])


@dataclass
class Target:
    """One relay under test: where clients connect, and the processes to measure."""

    name: str
    label: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    workers: bool = False
    """Measure the process's children too (nginx's workers)."""

    def pids(self) -> list[int]:
        return [self.proc.pid, *(_children(self.proc.pid) if self.workers else [])]


SATURATED = 0.9
"""A process using this share of a core (or more) may be what limits the figures."""


async def measure(
    target: Target | None,
    url: str,
    n: int,
    seconds: float,
    frame_ms: int,
    procs: int,
    up: subprocess.Popen[bytes],
    up_port: int,
    tmp: Path,
) -> dict[str, Any]:
    """One phase of ``n`` sessions against ``url`` (``target`` None: the direct baseline)."""
    await _fetch_uplink(up_port)  # drop what earlier phases left
    pids = target.pids() if target else []
    rss_idle = _rss_total(pids)
    cpu0 = {pid: _cpu_seconds(pid) for pid in pids}
    up0, busy0, wall0 = _cpu_seconds(up.pid), _machine_busy(), time.monotonic()
    sampler = RssSampler(pids)
    sampling = asyncio.create_task(sampler.run())
    phase = await run_phase(url, n, seconds, frame_ms, procs, tmp)
    sampler.stop.set()
    await sampling
    wall = time.monotonic() - wall0
    busy1 = _machine_busy()
    cpu_each = {pid: _cpu_seconds(pid) - cpu0[pid] for pid in pids}
    uplink = await _fetch_uplink(up_port)
    # the session-seconds streamed: each session streams `seconds` plus its share of the ramp
    streaming = seconds + _ramp(seconds) / 2
    run: dict[str, Any] = {
        "relay": target.name if target else "direct",
        "sessions": n,
        "downlink": _summary(phase.downlink_us),
        "uplink": _summary(uplink),
        "connect_p50_ms": percentile(phase.connect_ms, 0.5),
        "sent": phase.sent,
        "received": phase.received,
        "errors": phase.errors,
        "error_samples": phase.error_samples,
        "client_cores": phase.client_cores,
        "clients_late_s": phase.late_s,
        "upstream_cores": (_cpu_seconds(up.pid) - up0) / wall,
        "machine_busy_cores": _busy_cores(busy0, busy1),
        "load_average_1m": _loadavg(),
        "wall_s": wall,
    }
    if target is not None:
        cpu = sum(cpu_each.values())
        core_fraction = cpu / streaming
        rss_peak = max(rss_idle, sampler.peak)
        run.update(
            {
                "processes": len(pids),
                "cpu_s": cpu,
                "core_fraction": core_fraction,
                "busiest_process_cores": max(cpu_each.values(), default=0.0) / streaming,
                "cpu_ms_per_session_s": 1000 * cpu / (n * streaming),
                "cpu_s_per_session": cpu / n,
                "sessions_per_core": n / core_fraction if core_fraction > 0 else float("inf"),
                "rss_idle_mib": rss_idle,
                "rss_peak_mib": rss_peak,
                "kib_per_session": 1024 * (rss_peak - rss_idle) / n,
                "messages_per_s": (phase.sent + phase.received) / streaming,
            }
        )
        if target.proc.poll() is not None:
            run["exited"] = target.proc.returncode
    return run


async def bench(args: argparse.Namespace, counts: list[int], tmp: Path) -> dict[str, Any]:
    seconds, frame_ms = args.seconds, args.frame_ms
    wanted = [r.strip() for r in args.relays.split(",") if r.strip()]
    up_file = tmp / "upstream.port"
    up = _spawn("upstream", up_file, tmp / "upstream.log", "--frame-ms", str(frame_ms))
    targets: list[Target] = []
    results: dict[str, Any] = {
        "frame_ms": frame_ms,
        "seconds": seconds,
        "cores": os.cpu_count(),
        "relays": {},
        "runs": [],
    }
    try:
        up_port = _wait_port(up_file, up, tmp / "upstream.log")
        for name in wanted:
            target = _start_target(name, args, up_port, max(counts), tmp)
            if target is not None:
                targets.append(target)
                results["relays"][name] = target.label
        direct_url = f"ws://{HOST}:{up_port}/openai/v1/realtime?model=bench"
        for target in targets:  # warm-up: imports, caches and first connections paid for
            await run_phase(target.url, 4, 1.0, frame_ms, 1, tmp)
        for n in counts:
            procs = args.client_procs or max(1, math.ceil(n / 100))
            print(
                f"\n== {n} sessions, {frame_ms} ms audio frames both ways, real time, "
                f"{seconds:g} s per phase, clients in {procs} process(es) ==",
                flush=True,
            )
            runs = [await measure(None, direct_url, n, seconds, frame_ms, procs, up, up_port, tmp)]
            for target in targets:
                if target.proc.poll() is not None:
                    print(f"{target.name} has exited ({target.proc.returncode}); skipped")
                    continue
                await asyncio.sleep(0.5)
                runs.append(
                    await measure(target, target.url, n, seconds, frame_ms, procs, up, up_port, tmp)
                )
            results["runs"] += runs
            print_runs(runs, results["relays"])
        print_aims(results)
    finally:
        for target in targets:
            _stop(target.proc)
        _stop(up)
        _report_logs(targets, tmp)
    return results


def _start_target(
    name: str, args: argparse.Namespace, up_port: int, max_sessions: int, tmp: Path
) -> Target | None:
    if name == "ours":
        port_file, log = tmp / "ours.port", tmp / "ours.log"
        proc = _spawn("relay", port_file, log, "--upstream-port", str(up_port))
        port = _wait_port(port_file, proc, log)
        return Target(name, "ours (serve)", f"ws://{HOST}:{port}/realtime", proc, log)
    if name == "plain":
        port_file, log = tmp / "plain.port", tmp / "plain.log"
        extra = ["--plain-forward-original"] if args.plain_forward_original else []
        proc = _spawn("plain", port_file, log, "--upstream-port", str(up_port), *extra)
        port = _wait_port(port_file, proc, log)
        label = "plain aiohttp (VoiceRAG)"
        return Target(name, label, f"ws://{HOST}:{port}/realtime", proc, log)
    if name == "nginx":
        binary = nginx_binary()
        if binary is None:
            print(
                "nginx is not installed, so it is left out of this run; install it with\n"
                "    apt-get install -y nginx\n"
                "(the benchmark starts its own nginx on 127.0.0.1 with its own configuration)",
                flush=True,
            )
            return None
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
        proc, port = start_nginx(binary, up_port, max_sessions, tmp)
        url = f"ws://{HOST}:{port}/openai/v1/realtime?model=bench"
        label = version.split(":", 1)[-1].strip() or "nginx"
        return Target(name, label, url, proc, tmp / "nginx" / "nginx-error.log", workers=True)
    raise SystemExit(f"unknown relay {name!r}: choose from ours, nginx, plain")


def _report_logs(targets: list[Target], tmp: Path) -> None:
    """What the relays and helpers wrote that looks like trouble (tracebacks, errors)."""
    logs = [(t.name, t.log) for t in targets] + [("upstream", tmp / "upstream.log")]
    logs += [(p.stem, p) for p in sorted(tmp.glob("clients-*.log"))]
    for name, log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        bad = [
            i
            for i, line in enumerate(lines)
            if any(w in line for w in ("Traceback", "Error", "error", "[crit]", "[alert]"))
        ]
        if bad:
            print(f"\n{name} logged {len(bad)} line(s) that look like errors; the first:")
            first = bad[0]
            print("\n".join("    " + line for line in lines[first : first + 20]))


# ------------------------------------------------------------------------------------ printing


def _added(run: dict[str, Any], base: dict[str, Any], way: str, q: str) -> float:
    return float(run[way][q] - base[way][q])


def print_runs(runs: list[dict[str, Any]], labels: dict[str, str]) -> None:
    base, relayed = runs[0], runs[1:]
    print(f"{'one-way latency, ms':34} {'client -> upstream':>22} {'upstream -> client':>22}")
    print(f"{'':34} {'p50 / p99':>22} {'p50 / p99':>22}")
    for run in runs:
        label = labels.get(run["relay"], "direct (baseline)")
        cells = [
            f"{run[w]['p50_ms']:9.2f} / {run[w]['p99_ms']:8.2f}" for w in ("uplink", "downlink")
        ]
        print(f"{label:34} {cells[0]:>22} {cells[1]:>22}")
    for run in relayed:
        label = f"  added by {run['relay']}"
        cells = [
            f"{_added(run, base, w, 'p50_ms'):9.2f} / {_added(run, base, w, 'p99_ms'):8.2f}"
            for w in ("uplink", "downlink")
        ]
        print(f"{label:34} {cells[0]:>22} {cells[1]:>22}")
    print(
        f"\n{'relay':26} {'cores':>6} {'CPU ms per':>11} {'CPU s per':>10} {'sessions':>9}"
        f" {'RSS MiB':>15} {'KiB per':>8} {'msgs/s':>7} {'errors':>7}"
    )
    print(
        f"{'':26} {'used':>6} {'session-s':>11} {'session':>10} {'per core':>9}"
        f" {'idle / peak':>15} {'session':>8} {'':>7} {'':>7}"
    )
    for run in relayed:
        print(
            f"{labels[run['relay']]:26} {run['core_fraction']:6.2f}"
            f" {run['cpu_ms_per_session_s']:11.3f} {run['cpu_s_per_session']:10.4f}"
            f" {run['sessions_per_core']:9.0f}"
            f" {run['rss_idle_mib']:7.1f} /{run['rss_peak_mib']:6.1f}"
            f" {run['kib_per_session']:8.0f} {run['messages_per_s']:7.0f} {run['errors']:7d}"
        )
    by = {r["relay"]: r for r in relayed}
    ours = by.get("ours")
    if ours:
        for other in ("nginx", "plain"):
            if other in by:
                o = by[other]
                print(
                    f"ours / {other}: CPU per session {_ratio(ours, o, 'cpu_ms_per_session_s')},"
                    f" sessions per core {_ratio(ours, o, 'sessions_per_core')},"
                    f" RSS peak {_ratio(ours, o, 'rss_peak_mib')},"
                    f" added p99 up {_added(ours, base, 'uplink', 'p99_ms'):.2f} vs"
                    f" {_added(o, base, 'uplink', 'p99_ms'):.2f} ms,"
                    f" down {_added(ours, base, 'downlink', 'p99_ms'):.2f} vs"
                    f" {_added(o, base, 'downlink', 'p99_ms'):.2f} ms"
                )
    measured = [f"{r['relay']} {r['uplink']['n'] + r['downlink']['n']}" for r in runs]
    print(f"messages measured: {', '.join(measured)}")
    for run in relayed:
        for way in ("uplink", "downlink"):
            got, want = run[way]["n"], base[way]["n"]
            if want and got < 0.9 * want:
                print(
                    f"WARNING {run['relay']} delivered {got} {way} messages, the direct run "
                    f"{want}: it drops or mangles messages"
                )
    for run in runs:
        if run["errors"]:
            print(f"{run['relay']}: {run['errors']} error(s), e.g. {run['error_samples'][:2]}")
        if "exited" in run:
            print(f"{run['relay']} EXITED with status {run['exited']} during this phase")
    _print_load(runs)


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    x, y = float(a[key]), float(b[key])
    return f"{x / y:.2f}x" if y else "n/a"


def _print_load(runs: list[dict[str, Any]]) -> None:
    cores = os.cpu_count() or 1
    worst_clients = max(max(r["client_cores"], default=0.0) for r in runs)
    worst_up = max(r["upstream_cores"] for r in runs)
    busiest = max(r["machine_busy_cores"] for r in runs)
    print(
        f"load generator: busiest client process {worst_clients * 100:.0f}% of a core, upstream "
        f"up to {worst_up * 100:.0f}%; machine {busiest:.2f} of {cores} cores busy (all work), "
        f"load average {runs[-1]['load_average_1m']:.2f}"
    )
    for run in runs:
        who = run["relay"]
        for j, c in enumerate(run["client_cores"]):
            if c >= SATURATED:
                print(
                    f"WARNING [{who}] client process {j} used {c * 100:.0f}% of a core: the load "
                    "generator may be the bottleneck (try --client-procs)"
                )
        if run["upstream_cores"] >= SATURATED:
            print(
                f"WARNING [{who}] the upstream used {run['upstream_cores'] * 100:.0f}% of a "
                "core: it may be the bottleneck"
            )
        if run.get("busiest_process_cores", 0.0) >= SATURATED:
            print(
                f"WARNING [{who}] a relay process used "
                f"{run['busiest_process_cores'] * 100:.0f}% of a core: it is saturated, its "
                "latency is queueing"
            )
        if run["machine_busy_cores"] >= SATURATED * cores:
            print(
                f"WARNING [{who}] the machine was saturated ({run['machine_busy_cores']:.2f} of "
                f"{cores} cores busy): latency tails are the machine's, not the relay's"
            )
        if run["clients_late_s"] > 0.5:
            print(
                f"WARNING [{who}] client processes started {run['clients_late_s']:.1f} s late "
                "(a busy machine)"
            )


AIM_SESSIONS = 200
AIM_ADDED_P99_MS = 2.0
AIM_VS_PLAIN = 2.0
AIM_VS_NGINX = 3.0


def print_aims(results: dict[str, Any]) -> None:
    """The issue's aims next to the figures, at 200 sessions (else the largest count run)."""
    runs = results["runs"]
    counts = sorted({r["sessions"] for r in runs})
    if not counts:
        return
    n = AIM_SESSIONS if AIM_SESSIONS in counts else counts[-1]
    at = {r["relay"]: r for r in runs if r["sessions"] == n}
    base, ours = at.get("direct"), at.get("ours")
    note = "" if n == AIM_SESSIONS else f" (measured at {n}; the aims are for {AIM_SESSIONS})"
    print(f"\n== aims at {AIM_SESSIONS} sessions{note} ==")
    if base is None or ours is None:
        print("ours was not measured")
        return

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    up = _added(ours, base, "uplink", "p99_ms")
    down = _added(ours, base, "downlink", "p99_ms")
    print(
        f"added p99 <= {AIM_ADDED_P99_MS:g} ms: client -> upstream {up:.2f} ms, "
        f"upstream -> client {down:.2f} ms: {verdict(max(up, down) <= AIM_ADDED_P99_MS)}"
    )
    if "plain" in at:
        ratio = ours["sessions_per_core"] / at["plain"]["sessions_per_core"]
        print(
            f"sessions per core >= {AIM_VS_PLAIN:g}x the plain relay's: "
            f"{ours['sessions_per_core']:.0f} vs {at['plain']['sessions_per_core']:.0f} = "
            f"{ratio:.2f}x: {verdict(ratio >= AIM_VS_PLAIN)}"
        )
    else:
        print("sessions per core vs the plain relay: not measured")
    if "nginx" in at:
        ratio = ours["cpu_ms_per_session_s"] / at["nginx"]["cpu_ms_per_session_s"]
        print(
            f"CPU per session <= {AIM_VS_NGINX:g}x nginx's: {ours['cpu_ms_per_session_s']:.3f} vs "
            f"{at['nginx']['cpu_ms_per_session_s']:.3f} ms per session-second = {ratio:.2f}x: "
            f"{verdict(ratio <= AIM_VS_NGINX)}"
        )
    else:
        print("CPU per session vs nginx: not measured (nginx missing)")


# ------------------------------------------------------------------------------------ main


def _raise_file_limit() -> None:
    """Every session holds a socket (two in a relay): lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="100", help="comma-separated session counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="streaming time per phase")
    parser.add_argument("--frame-ms", type=int, default=40, help="audio per message (ms)")
    parser.add_argument(
        "--relays", default="ours,nginx,plain", help="which relays, of ours,nginx,plain"
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client (load generator) processes; 0: one per 100 sessions",
    )
    parser.add_argument(
        "--plain-forward-original",
        action="store_true",
        help="the plain relay forwards unchanged messages' original text (as rtmt.py does) "
        "instead of re-serialising every message",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    roles = ["bench", "upstream", "relay", "plain", "clients"]
    parser.add_argument("--role", choices=roles, default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--proc", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _raise_file_limit()
    if args.role == "upstream":
        asyncio.run(run_upstream(args.frame_ms, args.port_file))
        return 0
    if args.role == "relay":
        from aoai_realtime._threads import run as run_loop  # the loop serve runs on

        run_loop(run_relay(args.upstream_port, args.port_file))
        return 0
    if args.role == "plain":
        asyncio.run(run_plain(args.upstream_port, args.port_file, not args.plain_forward_original))
        return 0
    if args.role == "clients":
        asyncio.run(run_clients(args))
        return 0
    counts = [int(x) for x in args.sessions.split(",") if x.strip()]
    if any(n < 1 or n > 1000 for n in counts) or not 1 <= args.seconds <= 300:
        parser.error("sessions must be 1..1000 and seconds 1..300")
    if not 0 <= args.client_procs <= 8:
        parser.error("--client-procs must be 0..8")
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers (nobody) read nothing here, but may traverse
        results = asyncio.run(bench(args, counts, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
