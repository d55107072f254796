"""Thread counts for the engine's models on this machine: each stage of a turn, alone and side by
side, at 1 and 2 threads per model.

The stages are those of the start of a reply: whisper transcribing a 2.5 s question, SmolLM2
writing the first five words of an answer (the prompt's new turn read, then generation) and
writing 40 tokens, and Piper speaking a first piece of 25 characters. "Side by side" runs the
language model's 40 tokens while Piper speaks a sentence, as happens after the first piece of
every reply. The baseline is each model at 2 threads (the engine's setting before this
benchmark); the ratios are each other setting's median over the baseline's, in the same run.
The settings are written whisper / SmolLM2 / Piper threads.

Run: ``python benchmarks/bench_threads.py [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

from _measure import percentile

QUESTION = "Could you help me plan a weekend trip to the mountains with my two children?"
HISTORY = [
    {"role": "user", "content": "Hello there."},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
FIRST_PIECE = "Sure, I can help with that."
SENTENCE = "The mountains are a wonderful place for children in the summer months."


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of ``fn`` in ms (one unmeasured warm-up call first)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(setting: tuple[int, int, int], speech: bytes, repeat: int) -> dict[str, float]:
    """Each stage's median ms with whisper / SmolLM2 / Piper at ``setting`` threads."""
    from aoai_realtime.engine.speech import LocalLanguageModel, Synthesizer, Transcriber

    stt_threads, llm_threads, tts_threads = setting
    print(f"loading the models at {'/'.join(map(str, setting))} threads…", flush=True)
    stt = Transcriber(cpu_threads=stt_threads)
    tts = Synthesizer(threads=tts_threads)
    llm = LocalLanguageModel(n_threads=llm_threads, seed=0)
    turn = 0

    def first_words(n_words: int = 5) -> None:
        # a new user turn each time, so its tokens are read as in a conversation
        nonlocal turn
        turn += 1
        messages = [*HISTORY, {"role": "user", "content": f"{QUESTION} ({turn})"}]
        text = ""
        stream = llm.stream_reply(messages, max_tokens=40, temperature=0.0)
        for delta in stream:
            text += delta
            if len(text.split()) >= n_words:
                break
        stream.close()

    def forty_tokens() -> None:
        messages = [*HISTORY, {"role": "user", "content": QUESTION}]
        for _ in llm.stream_reply(messages, max_tokens=40, temperature=0.0):
            pass

    def side_by_side() -> float:
        tts_ms: list[float] = []

        def speak() -> None:
            start = time.perf_counter()
            b"".join(tts.synthesize(SENTENCE))
            tts_ms.append((time.perf_counter() - start) * 1000)

        other = threading.Thread(target=speak)
        start = time.perf_counter()
        other.start()
        forty_tokens()
        llm_ms = (time.perf_counter() - start) * 1000
        other.join()
        return max(llm_ms, tts_ms[0])

    row = {
        "whisper: 2.5 s question": timed(lambda: stt.transcribe(speech), repeat),
        "SmolLM2: first 5 words": timed(first_words, repeat),
        "SmolLM2: 40 tokens": timed(forty_tokens, repeat),
        "Piper: first piece (25 chars)": timed(
            lambda: b"".join(tts.synthesize(FIRST_PIECE)), repeat
        ),
        "Piper: a 72-char sentence": timed(lambda: b"".join(tts.synthesize(SENTENCE)), repeat),
    }
    side = [side_by_side() for _ in range(repeat)]
    row["SmolLM2 40 tokens + Piper sentence, side by side"] = percentile(side, 0.5)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    from aoai_realtime.engine.speech import Synthesizer, missing_local_extra

    problem = missing_local_extra()
    if problem:
        print(f"skipped: {problem}")
        return 0
    speech = b"".join(Synthesizer().synthesize(QUESTION, steady=True))
    settings = [(2, 2, 2), (1, 1, 1), (1, 1, 2)]
    results = {setting: measure(setting, speech, args.repeat) for setting in settings}
    print()
    base = settings[0]
    names = ["/".join(map(str, s)) for s in settings]
    print(f"{'median ms (ratio to ' + names[0] + ')':50s}" + "".join(f"{n:>16s}" for n in names))
    for name in results[base]:
        cells = [f"{results[base][name]:8.0f}        "]
        for setting in settings[1:]:
            value = results[setting][name]
            cells.append(f"{value:8.0f} {value / results[base][name]:5.2f}x ")
        print(f"{name:50s}" + "".join(f"{c:>16s}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
