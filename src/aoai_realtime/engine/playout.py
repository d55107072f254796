"""A WebRTC call's output audio buffer: what the session said, played out 20 ms at a time.

Over WebRTC the server plays the audio itself (the peer's audio track), so it knows what was
heard. :class:`Playout` holds the session's output audio in order, hands the track one 20 ms
frame at a time (silence while there is none), and keeps the position played of each item: a
barge-in truncates the item there, not where generation had got to. It says what the
WebRTC-only events say, through ``emit``:

* ``output_audio_buffer.started`` (``response_id``) when a response's first frame is played;
* ``output_audio_buffer.stopped`` once that response is done and its last frame is played;
* ``output_audio_buffer.cleared`` when :meth:`clear` cuts what was left (no ``stopped`` then).

No sockets, no clock, no asyncio: the track calls :meth:`next_frame` at its own pace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FRAME_BYTES", "FRAME_MS", "Cut", "Playout"]

FRAME_MS = 20
BYTES_PER_MS = 48
"""PCM16 mono at 24 kHz."""
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
_SILENCE = bytes(FRAME_BYTES)


@dataclass
class _Chunk:
    response_id: str
    item_id: str
    content_index: int
    data: bytes
    offset: int = 0


@dataclass(frozen=True)
class Cut:
    """An item whose audio :meth:`Playout.clear` cut short, and where its playing stopped."""

    item_id: str
    content_index: int
    played_ms: int


class Playout:
    """The output audio buffer of one call (see the module documentation)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        self._chunks: deque[_Chunk] = deque()
        self._queued = 0
        self._playing: str | None = None
        """The response whose audio is being played (``started`` sent, ``stopped`` not yet)."""
        self._last: str | None = None
        self._done: set[str] = set()
        self._dropped: set[str] = set()
        self._played: dict[tuple[str, int], int] = {}
        """Bytes played per (item, content index)."""

    # ------------------------------------------------------------------ in

    def push(self, response_id: str, item_id: str, content_index: int, pcm: bytes) -> None:
        """Queue PCM16 24 kHz audio of a response's item (dropped if that response was cut)."""
        if not pcm or response_id in self._dropped:
            return
        self._chunks.append(_Chunk(response_id, item_id, content_index, pcm))
        self._queued += len(pcm)

    def response_done(self, response_id: str) -> None:
        """The response will send no more audio: ``stopped`` follows once it is played."""
        self._dropped.discard(response_id)
        if self._has_audio_of(response_id):
            self._done.add(response_id)
        elif self._playing == response_id:
            self._stop()

    # ------------------------------------------------------------------ out

    @property
    def playing(self) -> str | None:
        """The response being played (between ``started`` and ``stopped``/``cleared``)."""
        return self._playing

    @property
    def queued_ms(self) -> float:
        """Audio waiting to be played."""
        return self._queued / BYTES_PER_MS

    def played_ms(self, item_id: str, content_index: int = 0) -> int:
        """Milliseconds of an item's audio played so far."""
        return self._played.get((item_id, content_index), 0) // BYTES_PER_MS

    def next_frame(self) -> bytes:
        """The next 20 ms to play (PCM16 24 kHz mono, ``FRAME_BYTES`` long; silence padded)."""
        if not self._chunks:
            if self._playing is not None and self._playing in self._done:
                self._stop()
            return _SILENCE
        out = bytearray()
        while len(out) < FRAME_BYTES and self._chunks:
            chunk = self._chunks[0]
            if chunk.response_id != self._playing:
                if self._playing is not None:
                    self._stop()
                self._start(chunk.response_id)
            take = min(FRAME_BYTES - len(out), len(chunk.data) - chunk.offset)
            out += chunk.data[chunk.offset : chunk.offset + take]
            chunk.offset += take
            self._queued -= take
            key = (chunk.item_id, chunk.content_index)
            self._played[key] = self._played.get(key, 0) + take
            if chunk.offset >= len(chunk.data):
                self._chunks.popleft()
        if not self._chunks and self._playing in self._done:
            self._stop()
        if len(out) < FRAME_BYTES:
            out += _SILENCE[: FRAME_BYTES - len(out)]
        return bytes(out)

    def clear(self) -> list[Cut]:
        """Drop everything not played yet; ``output_audio_buffer.cleared`` is sent. Returns the
        items cut short (to truncate at ``played_ms``); later audio of the responses cut (those
        not done yet) is dropped as it arrives."""
        cuts: dict[tuple[str, int], Cut] = {}
        cut_responses = {chunk.response_id for chunk in self._chunks}
        for chunk in self._chunks:
            key = (chunk.item_id, chunk.content_index)
            if key not in cuts:
                cuts[key] = Cut(chunk.item_id, chunk.content_index, self.played_ms(*key))
        if self._playing is not None:
            cut_responses.add(self._playing)
        for response_id in cut_responses:
            if response_id in self._done:
                self._done.discard(response_id)
            else:  # still generating: what it sends from now on is not played
                self._dropped.add(response_id)
        self._chunks.clear()
        self._queued = 0
        cleared = self._playing or self._last
        self._playing = None
        self._emit({"type": "output_audio_buffer.cleared", "response_id": cleared})
        return list(cuts.values())

    # ------------------------------------------------------------------ helpers

    def _has_audio_of(self, response_id: str) -> bool:
        return any(chunk.response_id == response_id for chunk in self._chunks)

    def _start(self, response_id: str) -> None:
        self._playing = response_id
        self._last = response_id
        self._emit({"type": "output_audio_buffer.started", "response_id": response_id})

    def _stop(self) -> None:
        response_id, self._playing = self._playing, None
        if response_id is not None:
            self._done.discard(response_id)
            self._emit({"type": "output_audio_buffer.stopped", "response_id": response_id})
