"""A reply being produced: the brain's stream, cut into pieces and spoken as soon as each is ready.

:class:`Generation` runs the brain in one task and, for spoken replies, the synthesizer in
another: each piece of text is synthesized as soon as it is complete, while the brain writes the
next, and its audio streams out chunk by chunk. The consumer (a response) reads one ordered
stream of :class:`~aoai_realtime.engine.brains.TextDelta` (text replies), :class:`Spoken`
(spoken replies), function calls and the final finish.

The first piece of a spoken reply ends at the first clause break (a comma after a few words), not
only at the end of a sentence, so the first audio comes sooner; later pieces are whole sentences.
While the first piece is synthesized the brain is not read (a local model then pauses, see
``LLM_MAX_AHEAD``), so the two do not share the CPU cores at the moment that matters most.

A generation does not touch the conversation, so it can be started before it is known to be
wanted (see :mod:`~aoai_realtime.engine.speculation`) and cancelled without a trace.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .brains import Brain, BrainFinish, BrainRequest, FunctionCall, TextDelta
from .workers import SharedSpeech

log = logging.getLogger(__name__)

FIRST_PIECE_MIN_WORDS = 3
"""The first spoken piece may end at a clause break once it has this many words."""
FIRST_PIECE_MAX_WORDS = 5
"""...and is cut at a word boundary if it grows this long without any break."""

EARLY_PIECE_PAUSE_MS = 80
"""The synthesizer ends every piece with a sentence-final pause (about 230 ms); after a piece cut
early, in mid-sentence, only this much of it is kept, so the seam sounds like a short breath."""

SILENT_MS_PER_CHAR = 60
SILENT_PAUSE_MS = 200
"""Without a speech stack a piece is "spoken" as digital silence: this long per character, plus
this pause, at speed 1 (about Piper's pace), so audio lengths, truncation and playback pacing
behave as with real speech."""
SILENT_SPEEDUP = 20
"""...and made at this many times real time, in ``SILENT_CHUNK_MS`` chunks, as a synthesizer
would: a long reply takes a moment to produce, so it can still be cancelled or interrupted."""
SILENT_CHUNK_MS = 200

_CLAUSE_BREAK = re.compile(r"[,;:\u2014]\s")


def trim_trailing_quiet(pcm16: bytes, keep_ms: int, level: int = 300) -> bytes:
    """PCM16 24 kHz audio without its trailing quiet beyond ``keep_ms``."""
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % 2], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    if loud.size == 0:
        return pcm16
    end = min(samples.size, int(loud[-1]) + 1 + keep_ms * 24)
    return samples[:end].tobytes()


def silent_speech(text: str, speed: float = 1.0, pause_ms: int = SILENT_PAUSE_MS) -> bytes:
    """PCM16 24 kHz silence as long as ``text`` would take to say (see ``SILENT_MS_PER_CHAR``)."""
    if not text.strip():
        return b""
    ms = (len(text.strip()) * SILENT_MS_PER_CHAR + pause_ms) / max(0.25, speed)
    return bytes(2 * 24 * int(ms))


@dataclass
class Spoken:
    """One piece of a spoken reply: its text and its audio (24 kHz PCM16 chunks, then None)."""

    text: str
    audio: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    synthesized: asyncio.Event = field(default_factory=asyncio.Event)
    early: bool = False  # cut before the end of its sentence: the speech goes on after it

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.audio.get()
            if chunk is None:
                return
            yield chunk


GenerationEvent = Union[TextDelta, Spoken, FunctionCall, BrainFinish]


class PieceChunker:
    """Sentence chunking with an early first piece (see the module documentation)."""

    def __init__(self, make_sentence_chunker: Callable[[], Any]) -> None:
        self._make = make_sentence_chunker
        self._inner = make_sentence_chunker()
        self._first = True
        self._buffer = ""
        self.early_piece: str | None = None  # the first piece, if it was cut early

    def push(self, delta: str) -> list[str]:
        if not self._first:
            return list(self._inner.push(delta))
        self._buffer += delta
        sentences = list(self._inner.push(delta))
        if sentences:
            self._first = False
            return sentences
        cut = self._early_cut(self._buffer)
        if cut is None:
            return []
        piece, rest = self._buffer[:cut].strip(), self._buffer[cut:]
        self._first = False
        self.early_piece = piece
        self._inner = self._make()
        return ([piece] if piece else []) + list(self._inner.push(rest))

    def flush(self) -> list[str]:
        return list(self._inner.flush())

    @staticmethod
    def _early_cut(text: str) -> int | None:
        for m in _CLAUSE_BREAK.finditer(text):
            if len(text[: m.start()].split()) >= FIRST_PIECE_MIN_WORDS:
                return m.end()
        words = list(re.finditer(r"\S+\s", text))
        if len(words) >= FIRST_PIECE_MAX_WORDS:
            return words[FIRST_PIECE_MAX_WORDS - 1].end()
        return None


class _End:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Generation:
    """One reply in the making (see the module documentation)."""

    def __init__(
        self,
        brain: Brain,
        request: BrainRequest,
        speech: SharedSpeech | None,
        *,
        audio: bool,
        voice: str = "alloy",
        speed: float = 1.0,
        make_chunker: Callable[[], Any] | None = None,
    ) -> None:
        self.brain = brain
        self.request = request
        self.speech = speech
        self.audio = audio
        self.voice = voice
        self.speed = speed
        self._make_chunker = make_chunker
        self._out: asyncio.Queue[GenerationEvent | _End] = asyncio.Queue()
        self._pieces: asyncio.Queue[Spoken | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._first: Spoken | None = None

    def key(self) -> tuple[Any, ...]:
        """What must match for a prepared generation to serve a response."""
        return (self.request, self.audio, self.voice, self.speed)

    def start(self) -> Generation:
        self._tasks.append(asyncio.create_task(self._think(), name="generation brain"))
        if self.audio:
            self._tasks.append(asyncio.create_task(self._speak(), name="generation speech"))
        return self

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """The reply, in order; raises what the brain raised."""
        while True:
            event = await self._out.get()
            if isinstance(event, _End):
                if event.error is not None:
                    raise event.error
                return
            yield event

    # ------------------------------------------------------------------ tasks

    def _piece(self, text: str, early: bool = False) -> None:
        spoken = Spoken(text, early=early)
        self._out.put_nowait(spoken)
        self._pieces.put_nowait(spoken)
        if self._first is None:
            self._first = spoken

    async def _think(self) -> None:
        chunker = None
        if self.audio:
            from .speech.tts import SentenceChunker

            chunker = PieceChunker(self._make_chunker or SentenceChunker)
        finish = BrainFinish()
        stream = self.brain.reply(self.request)
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    if chunker is None:
                        self._out.put_nowait(event)
                    else:
                        had_first = self._first is not None
                        for piece in chunker.push(event.text):
                            self._piece(piece, early=piece is chunker.early_piece)
                        if not had_first and self._first is not None:
                            # Let the first piece be synthesized at full speed: the brain
                            # (a local model on the same cores) waits until it is.
                            await self._first.synthesized.wait()
                elif isinstance(event, FunctionCall):
                    if chunker is not None:
                        for piece in chunker.flush():
                            self._piece(piece)
                    self._out.put_nowait(event)
                elif isinstance(event, BrainFinish):
                    finish = event
            if chunker is not None:
                for piece in chunker.flush():
                    self._piece(piece)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            self._pieces.put_nowait(None)
            self._out.put_nowait(_End(exc))
            return
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # noqa: BLE001 - closing must not hide the first error
                    pass
        self._pieces.put_nowait(None)
        self._out.put_nowait(finish)
        self._out.put_nowait(_End())

    async def _speak(self) -> None:
        while True:
            spoken = await self._pieces.get()
            if spoken is None:
                return
            started = time.perf_counter()
            try:
                if self.speech is not None:
                    held = b""
                    async for pcm in self.speech.synthesize(
                        spoken.text, voice=self.voice, speed=self.speed
                    ):
                        if spoken.early:
                            held += pcm  # the tail is trimmed below: keep it back
                        else:
                            spoken.audio.put_nowait(pcm)
                    if held:
                        spoken.audio.put_nowait(trim_trailing_quiet(held, EARLY_PIECE_PAUSE_MS))
                else:  # no speech stack: silence whose length follows the text
                    pause = EARLY_PIECE_PAUSE_MS if spoken.early else SILENT_PAUSE_MS
                    silence = silent_speech(spoken.text, self.speed, pause)
                    step = SILENT_CHUNK_MS * 48
                    for i in range(0, len(silence), step):
                        spoken.audio.put_nowait(silence[i : i + step])
                        await asyncio.sleep(SILENT_CHUNK_MS / 1000 / SILENT_SPEEDUP)
                log.debug(
                    "synthesized %d chars in %.0f ms",
                    len(spoken.text),
                    (time.perf_counter() - started) * 1000,
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a piece without audio; the reply goes on
                log.exception("speech synthesis failed for %r", spoken.text)
            finally:
                spoken.audio.put_nowait(None)
                spoken.synthesized.set()
