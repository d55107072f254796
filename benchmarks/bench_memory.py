"""What takes the local engine's memory: resident size as each model is loaded, in one process.

The baseline is this process with the package and the engine's server code imported and no
model loaded (the interpreter, aiohttp, numpy: what every engine pays). Then, in the order the
engine loads them: Silero VAD, whisper tiny.en (CTranslate2), Piper (ONNX Runtime), SmolLM2
(llama.cpp, its 2,048-token KV cache included), and what comes later: the end-of-turn model at
the first ``semantic_vad`` check, the tool scorer's second llama.cpp context at the first turn
with function tools, and a few turns' worth of each model's working buffers. Each row is the
growth of the resident set over the row before; the last line is the total against the
baseline and the aim (700 MB).

Run: ``python benchmarks/bench_memory.py``. Resident sizes are read from ``/proc`` (Linux).
"""

from __future__ import annotations

import gc
import sys

from _measure import rss_mib


def main() -> int:
    from aoai_realtime.engine import server  # noqa: F401 - the engine's imports, as it runs
    from aoai_realtime.engine.speech import missing_local_extra

    problem = missing_local_extra()
    if problem:
        print(f"skipped: {problem}")
        return 0
    from aoai_realtime.engine.speech import (
        LLM_THREADS,
        STT_THREADS,
        TTS_THREADS,
        LocalLanguageModel,
        SpeechDetector,
        Synthesizer,
        Transcriber,
    )
    from aoai_realtime.engine.speech.llm import ContextScorer
    from aoai_realtime.engine.speech.turn import EndOfTurnModel

    rows: list[tuple[str, float]] = []
    last = base = rss_mib()[0]

    def mark(label: str) -> None:
        nonlocal last
        gc.collect()
        now = rss_mib()[0]
        rows.append((label, now - last))
        last = now

    vad = SpeechDetector()
    mark("Silero VAD (ONNX Runtime, first session)")
    stt = Transcriber(cpu_threads=STT_THREADS)
    mark("whisper tiny.en int8 (CTranslate2)")
    tts = Synthesizer(threads=TTS_THREADS)
    mark("Piper en_US-joe-medium (ONNX Runtime)")
    llm = LocalLanguageModel(n_threads=LLM_THREADS)
    mark("SmolLM2 135M Q4_1 + 2,048-token KV cache (llama.cpp)")
    turn = EndOfTurnModel.shared()
    mark("Smart Turn v3.2 (semantic_vad, at its first check)")
    scorer = ContextScorer(llm)
    mark("tool scorer: second llama.cpp context (first tool turn)")

    speech = b"".join(tts.synthesize("Could you help me plan a weekend trip to the mountains?"))
    import numpy as np

    pcm16k = np.zeros(16000 * 3, dtype=np.float32)
    for _ in range(3):
        stt.transcribe(speech)
        turn.probability(pcm16k)
        "".join(llm.stream_reply([{"role": "user", "content": "Plan my trip, please."}]))
        b"".join(tts.synthesize("The mountains are lovely in the summer, and so are the lakes."))
    mark("working buffers after three turns")

    print()
    print(f"{'resident memory, MiB':60s} {'growth':>8s}")
    print(f"{'baseline: Python, the package and the server imported':60s} {base:8.0f}")
    for label, growth in rows:
        print(f"{label:60s} {growth:8.0f}")
    total = last
    print(f"{'total':60s} {total:8.0f}  ({total * 2**20 / 1e6:.0f} MB; aim 700 MB)")
    del vad, stt, tts, llm, turn, scorer
    return 0


if __name__ == "__main__":
    sys.exit(main())
