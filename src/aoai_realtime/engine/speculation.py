"""Work on a turn during the pause that may end it, before VAD is sure it has ended.

``speech_stopped`` comes ``silence_duration_ms`` after the user stopped speaking. Waiting for it
before transcribing, thinking and speaking adds all of that to the reply's latency. So once a
pause has lasted ``SPECULATE_AFTER_MS``:

1. the audio up to the start of the pause is transcribed in the background;
2. when that transcript is ready and the pause still goes on, the reply is prepared: the brain
   starts on the conversation plus the provisional user turn, and the first piece is synthesized
   (a :class:`~aoai_realtime.engine.generation.Generation`, which does not touch the
   conversation).

If the pause becomes the end of the turn (``speech_stopped`` reports the same end), the commit
uses the transcript and the response uses the prepared reply, provided its request is exactly
the one the response would make; otherwise they are dropped. If the user speaks again, both are
cancelled. The events a client sees are the same either way, only sooner.

Replies are prepared only for brains that say ``speculative = True`` (the local and scripted
ones; a remote chat-completions brain would pay for requests that are thrown away).
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
from .plan import brain_request, plan_response
from .store import StoredItem
from .workers import SharedSpeech

if TYPE_CHECKING:
    from .speech.vad import TurnDetector

log = logging.getLogger(__name__)

SPECULATE_AFTER_MS = 60
"""How long a pause must last before its turn is worked on speculatively."""


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
    """One session's speculative transcription and reply (at most one of each in flight)."""

    def __init__(self, context: SpeculationContext) -> None:
        self.context = context
        self.enabled = True
        self._item_id: str | None = None
        self._end_ms: int | None = None
        self._transcript: asyncio.Task[str] | None = None
        self._busy: asyncio.Task[str] | None = None  # the last transcription started
        self._reply: Generation | None = None  # prepared during the current pause
        self._ready: Generation | None = None  # prepared for the turn just committed
        self._started = 0.0

    # ------------------------------------------------------------------ during a turn

    def update(self, turn_detector: TurnDetector, item_id: str | None, start_ms: float) -> None:
        """Called after each chunk of audio while the user is speaking."""
        pause_start = turn_detector.silence_started_ms
        if self._item_id is not None and (item_id != self._item_id or pause_start != self._end_ms):
            self._drop_pause()  # the user spoke again: that pause did not end the turn
        speech = self.context.speech
        if not self.enabled or speech is None or item_id is None or pause_start is None:
            return
        if self._item_id == item_id:
            return  # this pause is already being worked on
        if turn_detector.total_ms - pause_start < SPECULATE_AFTER_MS:
            return
        if self._busy is not None and not self._busy.done():
            return  # one at a time: the transcriber still works on an earlier pause
        audio = self.context.audio(start_ms, pause_start)
        tc = self.context.config().transcription
        self._item_id, self._end_ms = item_id, pause_start
        task = asyncio.ensure_future(
            speech.transcribe(
                audio, language=tc.language if tc else None, prompt=tc.prompt if tc else None
            )
        )
        self._transcript = self._busy = task
        self._started = time.perf_counter()
        log.debug("pause at %d ms: transcribing %d ms of speech", pause_start, len(audio) // 48)
        task.add_done_callback(self._transcribed)

    def _transcribed(self, task: asyncio.Task[str]) -> None:
        if task.cancelled() or task.exception() is not None or task is not self._transcript:
            return
        log.debug(
            "speculative transcript after %.0f ms", (time.perf_counter() - self._started) * 1000
        )
        if self._item_id is not None:
            self._prepare_reply(self._item_id, task.result())

    def _prepare_reply(self, item_id: str, text: str) -> None:
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
            return
        items = ctx.conversation()
        if any(i.transcript is not None and not i.transcript.done() for i in items):
            return
        plan = plan_response(config, None, default_instructions=DEFAULT_INSTRUCTIONS, context=None)
        history = [i.history() for i in items]
        history.append(HistoryItem(id=item_id, type="message", role="user", text=text))
        log.debug("preparing the reply")
        self._reply = Generation(
            ctx.brain,
            brain_request(plan, history),
            ctx.speech,
            audio=plan.audio,
            voice=plan.voice,
            speed=plan.speed,
        ).start()

    # ------------------------------------------------------------------ at the end of a turn

    def take_transcript(self, item_id: str, audio_end_ms: int) -> asyncio.Task[str] | None:
        """At ``speech_stopped``: the turn's transcription if it was started for exactly this
        end (its prepared reply, if any, is kept for :meth:`claim_reply`), else None."""
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
            self._cancel(self._ready)
            self._ready, self._reply = self._reply, None
        self._drop_pause()
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
        self._cancel(self._ready)
        self._ready = None

    def _drop_pause(self) -> None:
        self._cancel(self._reply)
        self._reply = None
        self._transcript = None
        self._item_id = self._end_ms = None

    @staticmethod
    def _cancel(generation: Generation | None) -> None:
        if generation is not None:
            generation.cancel()
