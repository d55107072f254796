"""The local engine end to end: spoken turns streamed in real time, latency to each milestone.

An engine is started as a subprocess (``aoai-realtime engine --port 0``), so its memory is its
own. Utterances made by the engine's own voice (Piper) are streamed into it in real time (40 ms
chunks, paced by the clock) followed by silence, like a microphone would. For every turn the
time from the last audio sample of the user's speech to

* ``input_audio_buffer.speech_stopped`` (turn detection),
* ``conversation.item.input_audio_transcription.completed`` (speech-to-text),
* the first ``response.output_audio.delta`` of the answer (what the user hears),

is measured, with p50 / p95 over all turns. The baseline is the VAD's ``silence_duration_ms``:
turn detection cannot end a turn before that much silence has passed, so the table shows each
latency as a multiple of the silence window and what each stage adds beyond it; the aim is the
first audio within 400 ms of ``speech_stopped``. Memory: the engine's resident set size after
the run and its peak.

Run: ``python benchmarks/bench_engine.py [--turns 24] [--brain local|scripted]``.
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

import aiohttp

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
    "Could you help me plan a weekend trip to the mountains?",
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
SCRIPT = {"default": "Good question. Let me think about that for a moment. Here is my answer."}
CHUNK_MS = 40
SILENCE_AFTER_MS = 1500
SILENCE_DURATION_MS = 500


@dataclass
class Turn:
    text: str
    speech_ms: float
    stopped: float | None = None
    transcribed: float | None = None
    first_audio: float | None = None
    transcript: str = ""
    status: str = ""
    marks: dict[str, float] = field(default_factory=dict)


def start_engine(brain: str, log_level: str) -> tuple[subprocess.Popen[str], str, Path | None]:
    args = [sys.executable, "-m", "aoai_realtime.cli", "engine", "--port", "0", "--brain", brain]
    args += ["--log-level", log_level]
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
        print(f"  engine: {line.rstrip()}", flush=True)
        m = re.search(r"ready on (ws://\S+)", line)
        if m:
            return proc, m.group(1), script_path
    raise RuntimeError(f"the engine exited ({proc.wait()}) before it was ready")


async def run_turns(url: str, utterances: list[tuple[str, bytes]]) -> list[Turn]:
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
                            "turn_detection": {
                                "type": "server_vad",
                                "silence_duration_ms": SILENCE_DURATION_MS,
                            },
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
        silence = b"\x00\x00" * 24 * SILENCE_AFTER_MS
        step = 48 * CHUNK_MS
        for i, (text, pcm) in enumerate(utterances, start=1):
            turn = Turn(text, len(pcm) / 48)
            audio = pcm + silence
            n_speech_chunks = -(-len(pcm) // step)
            done.clear()
            current[0] = turn
            end_of_speech = 0.0
            t0 = time.perf_counter()
            for k in range(0, len(audio), step):
                chunk = audio[k : k + step]
                delay = t0 + (k // step) * CHUNK_MS / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send_json(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(chunk).decode(),
                    }
                )
                if k // step == n_speech_chunks - 1:
                    # The chunk with the last speech sample has gone out; its last sample
                    # "happens" at the end of the chunk's 40 ms.
                    end_of_speech = time.perf_counter()
                if turn.first_audio is not None and done.is_set():
                    break
            try:
                await asyncio.wait_for(done.wait(), timeout=60)
            except asyncio.TimeoutError:
                turn.status = "timeout"
            for name in ("stopped", "transcribed", "first_audio"):
                value = getattr(turn, name)
                if value is not None:
                    turn.marks[name] = (value - end_of_speech) * 1000
            turns.append(turn)
            print(
                f"  turn {i:2d}: stop {turn.marks.get('stopped', float('nan')):6.0f} ms, "
                f"text {turn.marks.get('transcribed', float('nan')):6.0f} ms, "
                f"audio {turn.marks.get('first_audio', float('nan')):6.0f} ms  "
                f"[{turn.status}] {turn.transcript!r}",
                flush=True,
            )
            await asyncio.sleep(0.3)
        reading.cancel()
    return turns


def report(turns: list[Turn], silence_ms: int, rss: tuple[float, float], brain: str) -> None:
    def column(name: str) -> list[float]:
        return [t.marks[name] for t in turns if name in t.marks]

    stop = column("stopped")
    text = column("transcribed")
    audio = column("first_audio")
    after_stop = [
        t.marks["first_audio"] - t.marks["stopped"]
        for t in turns
        if "first_audio" in t.marks and "stopped" in t.marks
    ]
    words_ok = sum(
        1
        for t in turns
        if set(re.findall(r"[a-z]+", t.text.lower()))
        <= set(re.findall(r"[a-z]+", t.transcript.lower()))
    )
    print()
    print(f"local engine, {len(turns)} spoken turns, brain={brain}, 2-core budget, real-time input")
    print(f"baseline: silence_duration_ms = {silence_ms} ms (the earliest a turn can end)")
    print()
    print(f"{'from the last speech sample to':42s} {'p50':>8s} {'p95':>8s} {'p50/silence':>12s}")
    rows = [
        ("input_audio_buffer.speech_stopped", stop),
        ("transcription.completed", text),
        ("first response.output_audio.delta", audio),
    ]
    for label, values in rows:
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(f"{label:42s} {p50:7.0f}ms {p95:7.0f}ms {p50 / silence_ms:11.2f}x")
    print()
    print(f"{'beyond the silence window':42s} {'p50':>8s} {'p95':>8s}")
    for label, values in rows:
        beyond = [v - silence_ms for v in values]
        print(f"{label:42s} {percentile(beyond, 0.5):7.0f}ms {percentile(beyond, 0.95):7.0f}ms")
    p50, p95 = percentile(after_stop, 0.5), percentile(after_stop, 0.95)
    aim = sum(1 for v in after_stop if v <= 400)
    print()
    print(
        f"first audio after speech_stopped: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
        f"({aim}/{len(after_stop)} turns within the 400 ms aim)"
    )
    print(f"transcripts with every word right: {words_ok}/{len(turns)}")
    print(f"engine memory: {rss[0]:.0f} MiB resident after the run, {rss[1]:.0f} MiB peak")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=len(UTTERANCES))
    parser.add_argument("--brain", choices=("local", "scripted"), default="local")
    parser.add_argument(
        "--engine-log-level", default="warning", help="debug shows the engine's own timings"
    )
    args = parser.parse_args()
    from aoai_realtime.engine.speech import Synthesizer, missing_local_extra

    problem = missing_local_extra()
    if problem:
        print(f"skipped: {problem}")
        return 0
    print("making the test speech with the engine's voice…", flush=True)
    tts = Synthesizer()
    texts = [UTTERANCES[i % len(UTTERANCES)] for i in range(max(20, args.turns))]
    voices = ["alloy", "echo", "shimmer", "sage"]
    utterances = [
        (text, b"".join(tts.synthesize(text, voice=voices[i % len(voices)])))
        for i, text in enumerate(texts)
    ]
    del tts
    print("starting the engine…", flush=True)
    proc, url, script = start_engine(args.brain, args.engine_log_level)
    try:
        turns = asyncio.run(run_turns(url, utterances))
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if script is not None:
            script.unlink()
    report(turns, SILENCE_DURATION_MS, rss, args.brain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
