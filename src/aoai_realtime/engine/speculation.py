"""Work on a turn while it is spoken and during the pause that may end it.

``speech_stopped`` comes ``silence_duration_ms`` after the user stopped speaking. Waiting for it
before transcribing, thinking and speaking adds all of that to the reply's latency. So once a
pause has lasted ``SPECULATE_AFTER_MS``:

1. the audio of the turn up to the start of the pause is transcribed in the background, and
   meanwhile a brain that can (the local one) reads the conversation before the turn into its
   prompt cache, with a stand-in for the words (``prefill``; once per turn);
2. when that transcript is ready and the pause still goes on, the reply is prepared: the brain
   starts on the conversation plus the provisional user turn, and the first piece is synthesized
   (a :class:`~aoai_realtime.engine.generation.Generation`, which does not touch the
   conversation).

If the pause becomes the end of the turn (``speech_stopped`` reports the same end), the commit
uses the transcript and the response uses the prepared reply, provided its request is exactly
the one the response would make; otherwise they are dropped. If the user speaks again, the reply
is cancelled. The events a client sees are the same either way, only sooner.

**Incremental transcription.** A pause of at least ``SEGMENT_PAUSE_MS`` that the user speaks
after (between two sentences, say) ends a *segment*: its transcript is kept, and every later
transcription of the turn reads only the audio after it, with the segments' words as whisper's
prompt. So at the final pause only the last stretch of speech is left to transcribe, however
long the turn. Shorter pauses (between words) are dropped, since whisper does better on whole
phrases. A pause's transcription is the same work either way: it becomes the turn's transcript,
a segment, or (for a short pause) nothing.

**The judgement of ``semantic_vad``.** A pause is judged on how whisper ended its transcript
(:meth:`Speculator.pause_ending`): the pause's transcription then becomes the turn's work, and
with speculation off it is started there, to serve as the transcript if the turn ends.

Replies are prepared only for brains that say ``speculative = True`` (the local and scripted
ones; a remote chat-completions brain would pay for requests that are thrown away).
``enabled = False`` (``aoai-realtime engine --no-speculation``) turns all of this off: each turn
is transcribed whole at ``speech_stopped``, then answered (the benchmarks' baseline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol.session import SessionConfig
from .brains import DEFAULT_INSTRUCTIONS, Brain, BrainRequest, HistoryItem
from .generation import Generation
from .plan import ResponsePlan, brain_request, plan_response
from .speech.stt import Ending, Heard
from .store import StoredItem
from .workers import SharedSpeech, WorkPriority, speculative_context, speculative_task

if TYPE_CHECKING:
    from .speech.vad import TurnDetector

log = logging.getLogger(__name__)

SPECULATE_AFTER_MS = 32
"""How long a pause must last before its turn is worked on speculatively: one VAD frame. The
work of a turn (about 170 ms of transcription, 150-250 ms to the language model's first words,
100-150 ms to speak them) just fits in a 500 ms window when it starts at once; a transcription
of a pause the user speaks after is kept as a segment if the pause was long, else dropped."""

SEGMENT_PAUSE_MS = 150
"""A pause inside a turn at least this long ends a segment (its transcript is kept)."""

PREFILL_STAND_IN = "."
"""The user's words in the request the brain reads ahead (:meth:`Speculator._prefill`)."""

PROMPT_CHARS = 200
"""At most this much of the segments' text goes into whisper's prompt for the next stretch."""


@dataclass
class SpeculationContext:
    """What the speculator reads from its session, handed over explicitly.

    The callables are read when they are needed (the session changes between the start of a
    pause and the end of its transcription); the speculator holds no reference to the session.
    """

    speech: SharedSpeech | None
    brain: Brain
    audio: Callable[[float, float], bytes]
    """The input audio between two positions of the session's timeline (ms)."""
    config: Callable[[], SessionConfig]
    """The session's configuration now."""
    conversation: Callable[[], list[StoredItem]]
    """The conversation's items now, in order."""
    busy: Callable[[], bool]
    """True while no reply may be prepared: the session is closed or a response is active."""


class Speculator:
    """One session's speculative work: the transcription and reply of the pause in progress,
    and the segments of the turn."""

    def __init__(self, context: SpeculationContext) -> None:
        self.context = context
        self.enabled = True
        # the turn whose segments are held
        self._turn: str | None = None
        self._segment_start_ms = 0.0  # where the audio not yet in a segment starts
        self._upto: asyncio.Task[Heard] | None = None  # the turn's words before that point
        # the pause being worked on
        self._item_id: str | None = None
        self._end_ms: int | None = None
        self._pause_ms = 0
        self._transcript: asyncio.Task[Heard] | None = None
        self._priority = WorkPriority()  # of the pause's work, until it is the turn's
        self._prefilled: str | None = None  # the turn whose conversation the brain has read
        self._reply: Generation | None = None  # prepared during the current pause
        self._ready: Generation | None = None  # prepared for the turn just committed
        self._started = 0.0

    # ------------------------------------------------------------------ during a turn

    def update(self, turn_detector: TurnDetector, item_id: str | None, start_ms: float) -> None:
        """Called after each chunk of audio while the user is speaking."""
        pause_start = turn_detector.silence_started_ms
        if self._item_id is not None and (item_id != self._item_id or pause_start != self._end_ms):
            # the user spoke again: that pause did not end the turn, but may end a segment
            if item_id == self._item_id and self._pause_ms >= SEGMENT_PAUSE_MS:
                self._keep_segment()
            self._drop_pause()
        speech = self.context.speech
        if not self.enabled or speech is None or item_id is None:
            return
        if item_id != self._turn:
            self._drop_turn()
            self._turn, self._segment_start_ms = item_id, start_ms
        if pause_start is None:
            return
        if self._item_id == item_id:
            self._pause_ms = turn_detector.now_ms - pause_start
            return  # this pause is already being worked on
        if turn_detector.now_ms - pause_start < SPECULATE_AFTER_MS:
            return
        self._item_id, self._end_ms = item_id, pause_start
        self._pause_ms = turn_detector.now_ms - pause_start
        self._priority = WorkPriority()
        task = self._transcribe_to(pause_start, self._priority)
        self._transcript = task
        self._prefill(item_id)
        self._started = time.perf_counter()
        task.add_done_callback(self._transcribed)

    def _transcribe_to(
        self, end_ms: float, priority: WorkPriority | None = None
    ) -> asyncio.Task[Heard]:
        """The turn's words up to ``end_ms``: the segments' and those of the audio after them
        (the transcription's model work speculative while ``priority`` says so)."""
        audio = self.context.audio(self._segment_start_ms, end_ms)
        log.debug(
            "transcribing the turn from %d to %d ms (%s)",
            self._segment_start_ms,
            end_ms,
            "after a segment" if self._upto is not None else "from its start",
        )
        words = self._words(self._upto, audio)
        if priority is None:
            return asyncio.ensure_future(words)
        return speculative_task(words, priority)

    async def _words(self, upto: asyncio.Task[Heard] | None, audio: bytes) -> Heard:
        """``upto``'s words (a segment's failure is the turn's) then those of ``audio``, which
        end the turn's words as they end."""
        speech = self.context.speech
        assert speech is not None
        config = self.context.config()
        tc, td = config.transcription, config.turn_detection
        language, prompt = (tc.language, tc.prompt) if tc else (None, None)
        before = (await asyncio.shield(upto)).text if upto is not None else ""
        if before:
            prompt = " ".join(p for p in (prompt, before[-PROMPT_CHARS:]) if p)
        judged = td is not None and td.type == "semantic_vad"  # only its pauses read the end
        heard: Heard = await speech.hear(audio, language=language, prompt=prompt, ending=judged)
        return Heard(" ".join(w for w in (before, heard.text) if w), heard.ending)

    def _keep_segment(self) -> None:
        if self._transcript is None or self._end_ms is None:
            return
        log.debug("segment up to %d ms kept", self._end_ms)
        self._priority.speculative = False  # the turn goes on: this is part of it
        self._upto, self._segment_start_ms = self._transcript, float(self._end_ms)
        self._transcript = None  # _drop_pause must not cancel it

    def _transcribed(self, task: asyncio.Task[Heard]) -> None:
        if task.cancelled() or task.exception() is not None or task is not self._transcript:
            return
        log.debug(
            "speculative transcript after %.0f ms", (time.perf_counter() - self._started) * 1000
        )
        if self._item_id is not None:
            self._prepare_reply(self._item_id, task.result().text)

    def _request(self, item_id: str, text: str) -> tuple[ResponsePlan, BrainRequest] | None:
        """The response plan and brain request a reply to the user's ``text`` would make now,
        or None when no reply may be prepared (the session is busy, the brain does not
        speculate, responses are not automatic, a transcript is still pending)."""
        ctx = self.context
        config = ctx.config()
        td = config.turn_detection
        if (
            ctx.busy()
            or not getattr(ctx.brain, "speculative", False)
            or td is None
            or td.create_response is False
            or config.type == "transcription"
        ):
            return None
        items = ctx.conversation()
        if any(i.transcript is not None and not i.transcript.done() for i in items):
            return None
        plan = plan_response(config, None, default_instructions=DEFAULT_INSTRUCTIONS, context=None)
        history = [i.history() for i in items]
        history.append(HistoryItem(id=item_id, type="message", role="user", text=text))
        return plan, brain_request(plan, history)

    def _prefill(self, item_id: str) -> None:
        """While the turn is transcribed, let the brain read the conversation before it (a
        local model's prompt cache), so the reply reads only the new words."""
        prefill = getattr(self.context.brain, "prefill", None)
        if prefill is None or self._prefilled == item_id:
            return
        prepared = self._request(item_id, PREFILL_STAND_IN)
        if prepared is None:
            return
        self._prefilled = item_id
        speculative_task(prefill(prepared[1]), self._priority).add_done_callback(_quietly)

    def _prepare_reply(self, item_id: str, text: str) -> None:
        ctx = self.context
        prepared = self._request(item_id, text)
        if prepared is None:
            return
        plan, request = prepared
        log.debug("preparing the reply")
        generation = Generation(
            ctx.brain,
            request,
            ctx.speech,
            audio=plan.audio,
            voice=plan.voice,
            speed=plan.speed,
        )
        self._reply = speculative_context(self._priority).run(generation.start)

    async def pause_ending(
        self, turn_detector: TurnDetector, item_id: str | None, start_ms: float
    ) -> Ending | None:
        """How whisper heard the end of the turn up to the pause ``turn_detector`` is judging
        (``semantic_vad``), or None when it did not say (no speech, long audio, a failure).

        The pause's transcription is the one speculation started (it then becomes the turn's
        work: the judgement waits for it); with speculation off, one is started here, which a
        ``speech_stopped`` at this pause then uses as the turn's transcript."""
        pause_start = turn_detector.silence_started_ms
        if pause_start is None or item_id is None or self.context.speech is None:
            return None
        self.update(turn_detector, item_id, start_ms)
        if self._transcript is None or self._item_id != item_id or self._end_ms != pause_start:
            self._drop_pause()
            if item_id != self._turn:
                self._drop_turn()
                self._turn, self._segment_start_ms = item_id, start_ms
            self._item_id, self._end_ms = item_id, pause_start
            self._transcript = self._transcribe_to(pause_start)
        self._priority.speculative = False
        task = self._transcript
        try:
            heard = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise
            return None  # the pause was dropped meanwhile
        except Exception as exc:  # noqa: BLE001 - the turn's transcription reports it
            log.debug("the pause's transcription failed: %s", exc)
            return None
        return heard.ending

    # ------------------------------------------------------------------ at the end of a turn

    def take_transcript(self, item_id: str, audio_end_ms: int) -> asyncio.Task[Heard] | None:
        """At ``speech_stopped`` (before the turn's audio leaves the buffer): the turn's
        transcription if one was started for exactly this end (its prepared reply, if any, is
        kept for :meth:`claim_reply`), or one of the audio after the turn's segments; None when
        the turn has neither (the caller transcribes it whole)."""
        match = (
            self._transcript is not None
            and self._item_id == item_id
            and self._end_ms == audio_end_ms
        )
        task = self._transcript if match else None
        log.debug(
            "speech stopped at %d ms: speculative transcript %s, reply %s",
            audio_end_ms,
            "used" if match else "none" if self._transcript is None else "dropped",
            "prepared" if match and self._reply is not None else "not prepared",
        )
        if match:
            self._priority.speculative = False  # the turn's work now, transcript and reply
            self._cancel(self._ready)
            self._ready, self._reply = self._reply, None
            self._transcript = None  # not to be cancelled
        elif self._upto is not None and self._turn == item_id and self.context.speech:
            task = self._transcribe_to(audio_end_ms)
        self._drop_pause()
        self._drop_turn()
        return task

    def claim_reply(
        self, request: BrainRequest, audio: bool, voice: str, speed: float
    ) -> Generation | None:
        """The prepared reply, if it answers exactly this request; it is dropped otherwise."""
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        if ready.key() == (request, audio, voice, speed):
            return ready
        log.debug("the prepared reply does not fit the response; dropped")
        ready.cancel()
        return None

    def discard(self) -> None:
        """Forget everything prepared (commit, clear, new settings, a new turn, close)."""
        self._drop_pause()
        self._drop_turn()
        self._cancel(self._ready)
        self._ready = None

    def _drop_turn(self) -> None:
        self._turn, self._upto = None, None

    def _drop_pause(self) -> None:
        """Forget the pause being worked on: its reply is cancelled, and its transcription too
        (if the transcriber has not started it, it never runs)."""
        self._cancel(self._reply)
        self._reply = None
        if self._transcript is not None:
            self._transcript.cancel()
        self._transcript = None
        self._item_id = self._end_ms = None
        self._pause_ms = 0

    @staticmethod
    def _cancel(generation: Generation | None) -> None:
        if generation is not None:
            generation.cancel()


def _quietly(task: asyncio.Task[None]) -> None:
    """A prefill is an optimisation: its failure (or cancellation) changes nothing."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("reading the conversation ahead failed: %s", task.exception())
