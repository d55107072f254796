"""The page over WebSocket against the page over WebRTC: the same clips, one run.

    .venv/bin/python benchmarks/bench_webrtc.py                # 2 sessions of 3 turns each way
    .venv/bin/python benchmarks/bench_webrtc.py --sessions 3

Debian's Chromium (through Playwright) plays the same WAV on its fake microphone (three short
utterances made by the engine's own voice, with silence between them) into the page served by
the middle tier, whose upstream is the in-process local engine (speech models, the scripted
brain: the same replies every time), as ``aoai-realtime serve`` runs by default. Each session
runs once over the WebSocket (base64 PCM16 through the relay) and once over WebRTC (Opus tracks
between Chromium and the engine, the offer through the middle tier), alternating, so both see
the same machine.

Measured per transport:

* **end of speech -> first audio heard**: the page's own turn latency (``window.__rt.turnLog``,
  the latency tiles): from ``speech_stopped`` to the first audio played by its worklet
  (WebSocket) or heard by the WebAudio analyser on the remote track (WebRTC); p50 and p95;
* **bytes per second each way** on the page's connection: the WebSocket's frames (Playwright's
  ``framesent`` / ``framereceived``), or the peer connection's transport (``getStats()``:
  ``bytesSent`` / ``bytesReceived``, RTP, RTCP, DTLS and the data channel together);
* **CPU per session**: this process's CPU time over the session (the middle tier and the
  in-process engine, speech models included; Chromium is another process and not counted).

Then the ratios WebRTC / WebSocket.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _measure import percentile  # noqa: E402

CLIPS = ("Hello there.", "How is the weather today?", "Hello again.")
SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {"user": "weather", "reply": "It is sunny and warm today."},
        {"user": "hello", "reply": "Hello! How can I help you today?"},
    ],
}
GAP_MS = 5000
PEER_CONNECTIONS = """
window.__pcs = [];
const Native = RTCPeerConnection;
window.RTCPeerConnection = function (...args) {
  const pc = new Native(...args);
  window.__pcs.push(pc);
  return pc;
};
window.RTCPeerConnection.prototype = Native.prototype;
"""
TRANSPORT_BYTES = """async () => {
  let sent = 0, received = 0;
  for (const pc of window.__pcs) {
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === "transport") { sent += s.bytesSent || 0; received += s.bytesReceived || 0; }
    });
  }
  return [sent, received];
}"""


def make_wav(path: Path, speech: Any) -> tuple[Path, int]:
    from aoai_realtime.engine.workers import SharedSpeech
    from helpers import write_wav

    shared = SharedSpeech.for_stack(speech)
    silence = b"\x00\x00" * 24 * GAP_MS
    pcm = b"\x00\x00" * 24 * 1000
    for text in CLIPS:
        pcm += shared.synthesize_blocking(text, voice="alloy") + silence
    return write_wav(path, pcm), len(pcm) // 48


def run_session(server: Any, wav: Path, transport: str, chromium: str) -> dict[str, Any]:
    from helpers import Browser

    b = Browser(chromium, wav)
    try:
        if transport == "webrtc":
            b.context.add_init_script(PEER_CONNECTIONS)
        frames = {"sent": 0, "received": 0}

        def on_ws(ws: Any) -> None:
            ws.on("framesent", lambda p: frames.__setitem__("sent", frames["sent"] + len(p)))
            ws.on(
                "framereceived",
                lambda p: frames.__setitem__("received", frames["received"] + len(p)),
            )

        b.page.on("websocket", on_ws)
        b.page.goto(server.url)
        b.wait("!document.getElementById('start').disabled", 30, "the page")
        b.page.select_option("#transport", transport)
        cpu0, t0 = time.process_time(), time.monotonic()
        b.page.click("#start")
        b.wait("rt.state === 'connected'", 30, "the session")
        b.wait(f"rt.turnLog.length >= {len(CLIPS)}", 120, "every turn")
        b.wait("rt.events.filter(e => e.type === 'response.done').length >= 3", 30, "replies")
        if transport == "webrtc":
            b.wait(
                "rt.events.filter(e => e.type === 'output_audio_buffer.stopped').length >= 3",
                30,
                "the last reply played",
            )
            sent, received = b.page.evaluate(TRANSPORT_BYTES)
        else:
            sent, received = frames["sent"], frames["received"]
        seconds = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        turns = [t["ms"] for t in b.rt("rt.turnLog") if t["until"] == "audio"]
        b.page.click("#stop")
        b.wait("rt.state === 'idle'", 30, "idle")
        return {
            "turns": turns,
            "up_bps": sent / seconds,
            "down_bps": received / seconds,
            "cpu_s": cpu,
            "seconds": seconds,
            "problems": list(b.problems),
        }
    finally:
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2, help="sessions per transport")
    args = parser.parse_args()

    from aoai_realtime.engine import EngineConfig
    from aoai_realtime.engine.speech import SpeechStack
    from aoai_realtime.server import LocalEngine, Policy, ServerConfig, ServerThread, Upstreams
    from aoai_realtime.server.tools import demo_tools
    from helpers import CHROMIUM

    speech = SpeechStack.load()
    engine = LocalEngine(
        EngineConfig(port=0, speech=speech, brain="scripted", script=SCRIPT),
        progress=lambda _: None,
    )
    upstreams = Upstreams(settings=None, local=engine, listen_host="127.0.0.1")
    config = ServerConfig(host="127.0.0.1", port=0, policy=Policy.build(tools=demo_tools()))
    server = ServerThread(config, upstreams, bind="127.0.0.1")
    results: dict[str, list[dict[str, Any]]] = {"websocket": [], "webrtc": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wav, ms = make_wav(Path(tmp) / "clips.wav", speech)
            print(f"clips: {len(CLIPS)} utterances in {ms / 1000:.1f} s of microphone audio")
            for i in range(args.sessions):
                for transport in ("websocket", "webrtc") if i % 2 == 0 else ("webrtc", "websocket"):
                    r = run_session(server, wav, transport, CHROMIUM)
                    results[transport].append(r)
                    print(
                        f"  session {i + 1} {transport:9}: turns {r['turns']} ms, "
                        f"up {r['up_bps'] / 1000:.1f} kB/s, down {r['down_bps'] / 1000:.1f} kB/s, "
                        f"cpu {r['cpu_s']:.2f} s over {r['seconds']:.1f} s"
                        + (f", page problems {r['problems']}" if r["problems"] else "")
                    )
    finally:
        server.close()

    summary: dict[str, dict[str, float]] = {}
    print()
    print(
        f"{'':10} {'p50 ms':>8} {'p95 ms':>8} {'up kB/s':>9} {'down kB/s':>10} {'CPU s/session':>14}"
    )
    for transport, runs in results.items():
        turns = [t for r in runs for t in r["turns"]]
        row = {
            "p50": percentile(turns, 0.5),
            "p95": percentile(turns, 0.95),
            "up": statistics.fmean(r["up_bps"] for r in runs) / 1000,
            "down": statistics.fmean(r["down_bps"] for r in runs) / 1000,
            "cpu": statistics.fmean(r["cpu_s"] for r in runs),
        }
        summary[transport] = row
        print(
            f"{transport:10} {row['p50']:8.0f} {row['p95']:8.0f} {row['up']:9.1f} "
            f"{row['down']:10.1f} {row['cpu']:14.2f}"
        )
    ws, rtc = summary["websocket"], summary["webrtc"]
    print()
    print("WebRTC / WebSocket:")
    for key, what in (
        ("p50", "first audio heard, p50"),
        ("p95", "first audio heard, p95"),
        ("up", "bytes per second, page -> server"),
        ("down", "bytes per second, server -> page"),
        ("cpu", "middle tier + engine CPU per session"),
    ):
        ratio = rtc[key] / ws[key] if ws[key] else float("nan")
        print(f"  {what:40} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
