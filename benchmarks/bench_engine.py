"""The local engine end to end: spoken turns streamed like a live microphone, latency as felt.

Each configuration runs its own engine subprocess (``aoai-realtime engine --port 0``), so its
memory is its own. Utterances made by the engine's own voice (Piper, four realtime voices, 4 to
15 words) are streamed into it as a microphone would: ``CHUNK_MS`` chunks, each sent when its
last sample has been spoken, then room tone (quiet noise, about -60 dBFS) until the answer is
done. For every turn, from the **last speech sample** (the last sample above -40 dBFS, not the
end of the synthesizer's trailing quiet) to

* ``input_audio_buffer.speech_stopped`` (turn detection: the silence window and the detector),
* ``conversation.item.input_audio_transcription.completed`` (speech-to-text),
* the first ``response.output_audio.delta`` of the answer (what the person hears first),

and from ``speech_stopped`` to the transcript and to the first audio, with p50 / p95 over the
turns, and the engine's resident memory after its turns.

The configurations: ``server_vad`` (500 ms of silence) and ``semantic_vad`` (``auto``), each
with the engine as it is and as the **baseline**, the same engine with incremental transcription
and speculation off (``--no-speculation``: each turn transcribed whole at ``speech_stopped``,
then answered, then spoken: sequential STT -> LLM -> TTS). Same clips, same run; the ratios are
ours / baseline. The aims (issue 10): under ``server_vad`` the first audio within 100 ms of
``speech_stopped`` (p50); under ``semantic_vad`` within 400 ms of the last speech (p50) and 700
ms (p95).

Run: ``python benchmarks/bench_engine.py [--turns 24] [--vad server_vad|semantic_vad|both]
[--no-baseline] [--brain local|scripted]``. About 2-3 minutes per configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from _measure import percentile, rss_mib

UTTERANCES = [
    "What is the capital of France?",
    "Tell me a fun fact about octopuses.",
    "How do I boil an egg?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "Why is the sky blue?",
    "What time does the sun set in winter?",
    "How far away is the moon?",
    "Give me a name for a small grey cat.",
    "What is the best way to learn a new language?",
    "How many legs does a spider have?",
    "Is it going to rain tomorrow?",
    "What is your favourite colour?",
    "Could you help me plan a weekend trip to the mountains with my two children?",
    "How do airplanes stay in the air?",
    "What is a good exercise for my back?",
    "Tell me a short joke.",
    "What is the tallest building in the world?",
    "How do I make a cup of green tea?",
    "Which planet is closest to the sun?",
    "What are three things I can do to sleep better?",
    "How long should I rest between workouts?",
    "Say something nice about Mondays.",
    "What is the difference between a frog and a toad?",
]
VOICES = ["alloy", "echo", "shimmer", "sage"]
SCRIPT = {"default": "Good question. Let me think about that for a moment. Here is my answer."}
CHUNK_MS = 20
ROOM_TONE_MAX_MS = 8000  # longer than semantic_vad's 4 s maximum wait (auto = medium)
SPEECH_LEVEL = 328  # -40 dBFS: quieter samples are not speech
SILENCE_DURATION_MS = 500


@dataclass
class Clip:
    text: str
    pcm: bytes
    last_speech_s: float  # where the last sample above SPEECH_LEVEL ends, in the clip


@dataclass
class Turn:
    text: str
    speech_s: float
    stopped: float | None = None
    transcribed: float | None = None
    first_audio: float | None = None
    transcript: str = ""
    status: str = ""
    marks: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    label: str
    turns: list[Turn]
    rss: tuple[float, float]

    def column(self, name: str, since: str = "speech") -> list[float]:
        out = []
        for t in self.turns:
            if name in t.marks and (since == "speech" or since in t.marks):
                out.append(t.marks[name] - (t.marks[since] if since != "speech" else 0.0))
        return out


def make_clips(count: int) -> list[Clip]:
    from aoai_realtime.engine.speech import Synthesizer

    tts = Synthesizer()
    clips = []
    for i in range(count):
        text = UTTERANCES[i % len(UTTERANCES)]
        pcm = b"".join(tts.synthesize(text, voice=VOICES[i % len(VOICES)]))
        samples = np.frombuffer(pcm, "<i2").astype(np.int32)
        loud = np.flatnonzero(np.abs(samples) > SPEECH_LEVEL)
        clips.append(Clip(text, pcm, (int(loud[-1]) + 1) / 24000 if loud.size else 0.0))
    return clips


def room_tone(ms: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(24 * ms) * 33).astype("<i2").tobytes()  # about -60 dBFS


def start_engine(brain: str, extra: list[str], log_level: str) -> tuple[Any, str, Path | None]:
    args = [sys.executable, "-m", "aoai_realtime.cli", "engine", "--port", "0", "--brain", brain]
    args += ["--log-level", log_level, *extra]
    script_path: Path | None = None
    if brain == "scripted":
        fd, name = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        script_path = Path(name)
        script_path.write_text(json.dumps(SCRIPT))
        args += ["--script", name]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if log_level == "debug":
            print(f"  engine: {line.rstrip()}", flush=True)
        m = re.search(r"ready on (ws://\S+)", line)
        if m:
            return proc, m.group(1), script_path
    raise RuntimeError(f"the engine exited ({proc.wait()}) before it was ready")


async def run_turns(url: str, clips: list[Clip], turn_detection: dict[str, Any]) -> list[Turn]:
    turns: list[Turn] = []
    url = f"{url}/openai/v1/realtime?model=bench"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "transcription": {"model": "whisper-1"},
                            "turn_detection": turn_detection,
                        }
                    },
                },
            }
        )
        current: list[Turn | None] = [None]
        done = asyncio.Event()

        async def reader() -> None:
            async for msg in ws:
                event = json.loads(msg.data)
                kind = event["type"]
                turn = current[0]
                now = time.perf_counter()
                if turn is None:
                    continue
                if kind == "input_audio_buffer.speech_stopped" and turn.stopped is None:
                    turn.stopped = now
                elif kind == "conversation.item.input_audio_transcription.completed":
                    turn.transcribed = turn.transcribed or now
                    turn.transcript = event["transcript"]
                elif kind == "response.output_audio.delta" and turn.first_audio is None:
                    turn.first_audio = now
                elif kind == "response.done":
                    turn.status = event["response"]["status"]
                    done.set()
                elif kind == "error":
                    print(f"  error: {event['error']['message']}", flush=True)

        reading = asyncio.create_task(reader())
        step = 48 * CHUNK_MS
        for i, clip in enumerate(clips, start=1):
            turn = Turn(clip.text, len(clip.pcm) / 48000)
            audio = clip.pcm + room_tone(ROOM_TONE_MAX_MS, i)
            done.clear()
            current[0] = turn
            t0 = time.perf_counter()
            for k in range(0, len(audio), step):
                # a chunk leaves when its last sample has been spoken
                delay = t0 + (k + step) / 48000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk = base64.b64encode(audio[k : k + step]).decode()
                await ws.send_json({"type": "input_audio_buffer.append", "audio": chunk})
                if done.is_set():
                    break
            try:
                await asyncio.wait_for(done.wait(), timeout=60)
            except asyncio.TimeoutError:
                turn.status = "timeout"
            last_speech = t0 + clip.last_speech_s
            for name in ("stopped", "transcribed", "first_audio"):
                value = getattr(turn, name)
                if value is not None:
                    turn.marks[name] = (value - last_speech) * 1000
            turns.append(turn)
            print(
                f"  turn {i:2d}: stopped {turn.marks.get('stopped', float('nan')):5.0f} ms, "
                f"transcript {turn.marks.get('transcribed', float('nan')):5.0f} ms, "
                f"first audio {turn.marks.get('first_audio', float('nan')):5.0f} ms "
                f"[{turn.status}] {turn.transcript!r}",
                flush=True,
            )
            current[0] = None
            # the reply is done: clear what was streamed meanwhile before the next turn
            await ws.send_json({"type": "input_audio_buffer.clear"})
        reading.cancel()
    return turns


def run_config(
    label: str, clips: list[Clip], brain: str, extra: list[str], td: dict[str, Any], log: str
) -> Result:
    print(f"\n{label}: starting the engine…", flush=True)
    proc, url, script = start_engine(brain, extra, log)
    try:
        turns = asyncio.run(run_turns(url, clips, td))
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if script is not None:
            script.unlink()
    return Result(label, turns, rss)


ROWS = [
    ("last speech -> speech_stopped", "stopped", "speech"),
    ("last speech -> transcript", "transcribed", "speech"),
    ("last speech -> first audio", "first_audio", "speech"),
    ("speech_stopped -> transcript", "transcribed", "stopped"),
    ("speech_stopped -> first audio", "first_audio", "stopped"),
]


def report(results: list[Result], pairs: list[tuple[Result, Result]]) -> None:
    print()
    print(f"local engine, 2 cores, {CHUNK_MS} ms chunks sent as spoken, then room tone")
    for r in results:
        right = sum(
            1
            for t in r.turns
            if set(re.findall(r"[a-z]+", t.text.lower()))
            <= set(re.findall(r"[a-z]+", t.transcript.lower()))
        )
        print()
        print(f"{r.label}: {len(r.turns)} turns")
        print(f"  {'ms':36s} {'p50':>7s} {'p95':>7s}")
        for label, name, since in ROWS:
            values = r.column(name, since)
            print(f"  {label:36s} {percentile(values, 0.5):7.0f} {percentile(values, 0.95):7.0f}")
        statuses = sorted({t.status for t in r.turns})
        print(f"  transcripts with every word: {right}/{len(r.turns)}; responses: {statuses}")
        print(f"  engine memory: {r.rss[0]:.0f} MiB resident after its turns, {r.rss[1]:.0f} peak")
    for ours, base in pairs:
        print()
        print(f"{ours.label} / {base.label} (p50 ratio; lower is better)")
        for label, name, since in ROWS[2:]:
            a = percentile(ours.column(name, since), 0.5)
            b = percentile(base.column(name, since), 0.5)
            print(f"  {label:36s} {a:6.0f} / {b:6.0f} ms = {a / b:5.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=len(UTTERANCES))
    parser.add_argument("--brain", choices=("local", "scripted"), default="local")
    parser.add_argument("--vad", choices=("server_vad", "semantic_vad", "both"), default="both")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline runs")
    parser.add_argument(
        "--engine-log-level", default="warning", help="debug shows the engine's own timings"
    )
    args = parser.parse_args()
    from aoai_realtime.engine.speech import missing_local_extra

    problem = missing_local_extra()
    if problem:
        print(f"skipped: {problem}")
        return 0
    print("making the test speech with the engine's voice…", flush=True)
    clips = make_clips(args.turns)
    vads: dict[str, dict[str, Any]] = {
        "server_vad": {"type": "server_vad", "silence_duration_ms": SILENCE_DURATION_MS},
        "semantic_vad": {"type": "semantic_vad", "eagerness": "auto"},
    }
    chosen = list(vads) if args.vad == "both" else [args.vad]
    results: list[Result] = []
    pairs: list[tuple[Result, Result]] = []
    for name in chosen:
        log = args.engine_log_level
        ours = run_config(name, clips, args.brain, [], vads[name], log)
        results.append(ours)
        if not args.no_baseline:
            base = run_config(
                f"{name} baseline", clips, args.brain, ["--no-speculation"], vads[name], log
            )
            results.append(base)
            pairs.append((ours, base))
    report(results, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
