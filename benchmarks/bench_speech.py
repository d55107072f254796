"""The local engine's speech stages on this machine: load cost, per-call latency, real-time ratios.

Every figure is put against a baseline taken in the same run:

* memory: resident set size added by each stage, over the interpreter's own (``base``);
* VAD, STT, TTS: real-time factor = processing time / duration of the audio (< 1 is faster
  than real time);
* LLM: time to first token, tokens/s, and how much faster the reply is written than Piper
  speaks it (the reply is synthesized to measure that), alone and with TTS running at the same
  time on the other thread, as it does in the engine;
* a whole turn: end of the user's speech -> first reply audio chunk (STT, LLM until its first
  sentence, TTS of that sentence), the latency a user hears.

Run: ``python benchmarks/bench_speech.py [--repeat N]``. ``make bench`` runs it with the others.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from statistics import median
from typing import TypeVar

from _measure import rss_mib
from aoai_realtime.engine.speech import (
    LocalLanguageModel,
    SentenceChunker,
    SpeechDetector,
    Synthesizer,
    Transcriber,
    TurnDetector,
    missing_local_extra,
)

T = TypeVar("T")

UTTERANCES = [  # about 3 s each when spoken
    "Could you tell me what the weather will be like in Paris tomorrow?",
    "What would be a good name for a small grey cat that likes to sleep?",
]
REPLY_TEXT = "Tomorrow in Paris it will be sunny and mild. Take a light jacket for the evening."
QUESTIONS = [  # alternated, so llama.cpp's prompt cache never holds the whole prompt
    "What is a good name for a cat?",
    "How do I boil an egg?",
    "Why is the sky blue?",
]


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def first_and_total(it: Iterator[T]) -> tuple[list[T], float, float]:
    """Consume ``it``: its items, seconds to the first item, seconds to the end."""
    start = time.perf_counter()
    items: list[T] = []
    first = float("nan")
    for item in it:
        if not items:
            first = time.perf_counter() - start
        items.append(item)
    return items, first, time.perf_counter() - start


def feed_all(detector: TurnDetector, pcm: bytes, chunk: int) -> None:
    """Feed ``pcm`` to a turn detector in ``chunk``-byte pieces."""
    for i in range(0, len(pcm), chunk):
        detector.feed(pcm[i : i + chunk])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="calls per measurement (p50)")
    args, _unknown = parser.parse_known_args()
    n = max(1, args.repeat)

    problem = missing_local_extra()
    if problem:
        print(problem)
        return 1

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    rows: list[tuple[str, str, str]] = []

    def row(what: str, value: str, ratio: str = "") -> None:
        rows.append((what, value, ratio))

    # ---------------------------------------------------------------- load time and memory
    base = rss_mib()[0]
    row("interpreter + numpy (base)", f"{base:.0f} MiB RSS")
    loads: list[tuple[str, Callable[[], object]]] = [
        ("vad  silero (onnx in wheel)", SpeechDetector),
        ("stt  whisper tiny.en int8", Transcriber),
        ("tts  piper joe-medium", Synthesizer),
        ("llm  SmolLM2-135M Q4_1", LocalLanguageModel),
    ]
    stages: dict[str, object] = {}
    total_load = 0.0
    before = base
    for name, make in loads:
        stage, seconds = timed(make)
        after = rss_mib()[0]
        stages[name[:3]] = stage
        total_load += seconds
        row(f"load {name}", f"{seconds * 1000:.0f} ms", f"+{after - before:.0f} MiB RSS")
        before = after
    row("load all four", f"{total_load * 1000:.0f} ms", f"{before - base:.0f} MiB over base")
    stt = stages["stt"]
    tts = stages["tts"]
    llm = stages["llm"]
    assert isinstance(stt, Transcriber) and isinstance(tts, Synthesizer)
    assert isinstance(llm, LocalLanguageModel)

    # ---------------------------------------------------------------- TTS
    ttfc: list[float] = []
    rtf: list[float] = []
    speech = b""
    for _ in range(n):
        chunks, first, total = first_and_total(tts.synthesize(REPLY_TEXT))
        speech = b"".join(chunks)
        ttfc.append(first)
        rtf.append(total / (len(speech) / 48000))
    row("tts time to first chunk (2 sentences)", f"{median(ttfc) * 1000:.0f} ms")
    row("tts whole reply", f"{len(speech) / 48000:.2f} s audio", f"RTF {median(rtf):.3f}")

    # ---------------------------------------------------------------- VAD
    spoken = [b"".join(tts.synthesize(text)) for text in UTTERANCES]
    utterance = spoken[0]
    audio_s = len(utterance) / 48000
    stream = bytes(48000) + utterance + bytes(72000)
    vad_times = []
    for _ in range(n):
        detector = TurnDetector(SpeechDetector())
        _, seconds = timed(functools.partial(feed_all, detector, stream, 960))  # 20 ms chunks
        vad_times.append(seconds)
    row(
        "vad turn detection, 20 ms chunks",
        f"{median(vad_times) * 1000:.0f} ms / {len(stream) / 48000:.1f} s",
        f"RTF {median(vad_times) / (len(stream) / 48000):.4f}",
    )

    # ---------------------------------------------------------------- STT
    stt_times = []
    heard = ""
    for _ in range(n):
        heard, seconds = timed(lambda: stt.transcribe(utterance))
        stt_times.append(seconds)
    row(
        f"stt {audio_s:.1f} s utterance",
        f"{median(stt_times) * 1000:.0f} ms",
        f"RTF {median(stt_times) / audio_s:.3f}",
    )
    print(f"stt heard: {heard!r}")

    # ---------------------------------------------------------------- LLM
    def llm_run(i: int) -> tuple[float, float, str]:
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        deltas, first, total = first_and_total(llm.stream_reply(messages, max_tokens=60))
        text = "".join(deltas)
        tokens = llm.count_tokens(text)
        rate = (tokens - 1) / (total - first) if tokens > 1 and total > first else float("nan")
        return first, rate, text

    firsts, rates, texts = [], [], []
    for i in range(n):
        first, rate, text = llm_run(i)
        firsts.append(first)
        rates.append(rate)
        texts.append(text)
    reply = max(texts, key=len)
    reply_s = sum(len(c) for c in tts.synthesize(reply)) / 48000
    spoken_rate = llm.count_tokens(reply) / reply_s if reply_s else float("nan")
    row("llm time to first token", f"{median(firsts) * 1000:.0f} ms")
    row(
        "llm decode",
        f"{median(rates):.0f} tokens/s",
        f"{median(rates) / spoken_rate:.0f}x speaking rate",
    )

    # LLM while TTS runs on another thread (as when sentence 1 is spoken while 2 is written).
    busy = threading.Event()

    def keep_tts_busy() -> None:
        while not busy.is_set():
            for _ in tts.synthesize(REPLY_TEXT):
                if busy.is_set():
                    break

    worker = threading.Thread(target=keep_tts_busy)
    worker.start()
    try:
        contended = [llm_run(i)[1] for i in range(n)]
    finally:
        busy.set()
        worker.join()
    row(
        "llm decode while tts runs",
        f"{median(contended):.0f} tokens/s",
        f"{median(contended) / median(rates):.2f}x alone",
    )

    # ---------------------------------------------------------------- a whole turn
    parts: dict[str, list[float]] = {"stt": [], "llm": [], "tts": [], "turn": []}
    for i in range(n):
        audio = spoken[i % len(spoken)]
        start = time.perf_counter()
        text = stt.transcribe(audio)
        heard_at = time.perf_counter()
        chunker = SentenceChunker()
        sentences: list[str] = []
        reply_stream = llm.stream_reply([{"role": "user", "content": text}], max_tokens=60)
        for delta in reply_stream:
            sentences = chunker.push(delta)
            if sentences:
                break
        reply_stream.close()
        sentence = (sentences or chunker.flush() or ["Okay."])[0]
        written_at = time.perf_counter()
        next(iter(tts.synthesize(sentence)))
        end = time.perf_counter()
        parts["stt"].append(heard_at - start)
        parts["llm"].append(written_at - heard_at)
        parts["tts"].append(end - written_at)
        parts["turn"].append(end - start)
    row(
        "turn: end of speech -> first reply audio",
        f"{median(parts['turn']) * 1000:.0f} ms",
        f"stt {median(parts['stt']) * 1000:.0f} + llm 1st sentence {median(parts['llm']) * 1000:.0f}"
        f" + tts {median(parts['tts']) * 1000:.0f} ms",
    )

    # ---------------------------------------------------------------- report
    print(f"p50 of {n} calls each, RSS after load {rss_mib()[0]:.0f} MiB\n")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'stage':<{w0}}  {'measured':>{w1}}  vs baseline")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 22}")
    for what, value, ratio in rows:
        print(f"{what:<{w0}}  {value:>{w1}}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
