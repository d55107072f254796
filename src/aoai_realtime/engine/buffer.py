"""The input audio buffer, placed on the session's audio timeline.

The timeline counts 24 kHz samples from the first one appended in the session; audio removed by
``input_audio_buffer.clear`` is taken off it again (the next append continues where the cleared
audio began), committed audio stays on it. ``audio_start_ms`` / ``audio_end_ms`` are read from
this timeline, so they are exact whatever the chunk sizes.

Under server VAD the buffer drops old audio that can no longer belong to a turn (it keeps a
generous tail, so a manual commit still gets the recent audio).
"""

from __future__ import annotations

SAMPLES_PER_MS = 24
BYTES_PER_SAMPLE = 2


class InputBuffer:
    def __init__(self) -> None:
        self._pcm = bytearray()
        self._pcm_start = 0  # timeline sample of _pcm[0]
        self.total = 0  # samples on the timeline (appended minus cleared)
        self.start = 0  # timeline sample where the uncommitted audio begins

    # ------------------------------------------------------------------ measures

    @property
    def end_ms(self) -> float:
        return self.total / SAMPLES_PER_MS

    @property
    def uncommitted_ms(self) -> float:
        return (self.total - self.start) / SAMPLES_PER_MS

    # ------------------------------------------------------------------ changes

    def append(self, pcm16: bytes) -> None:
        self._pcm += pcm16
        self.total += len(pcm16) // BYTES_PER_SAMPLE

    def slice_ms(self, start_ms: float, end_ms: float) -> bytes:
        """The stored audio between two timeline positions (clamped to what is stored)."""
        a = max(int(round(start_ms * SAMPLES_PER_MS)), self._pcm_start, self.start)
        b = min(int(round(end_ms * SAMPLES_PER_MS)), self.total)
        if b <= a:
            return b""
        return bytes(self._pcm[(a - self._pcm_start) * 2 : (b - self._pcm_start) * 2])

    def commit_span(self, start_ms: float, end_ms: float) -> bytes:
        """Take the audio of one turn; everything before ``end_ms`` leaves the buffer."""
        audio = self.slice_ms(start_ms, end_ms)
        self._drop_before(min(int(round(end_ms * SAMPLES_PER_MS)), self.total))
        self.start = max(self.start, min(int(round(end_ms * SAMPLES_PER_MS)), self.total))
        return audio

    def commit_all(self) -> bytes:
        """Take all uncommitted audio (a manual commit)."""
        audio = self.slice_ms(self.start / SAMPLES_PER_MS, self.end_ms)
        self._drop_before(self.total)
        self.start = self.total
        return audio

    def clear(self) -> float:
        """Drop the uncommitted audio and take it off the timeline; returns the new end (ms)."""
        self.total = self.start
        self._pcm.clear()
        self._pcm_start = self.total
        return self.end_ms

    def keep_tail(self, ms: float) -> None:
        """Forget stored audio older than ``ms`` before the end (VAD idle; amortised)."""
        keep = int(ms * SAMPLES_PER_MS)
        if self.total - self._pcm_start > 2 * keep:
            self._drop_before(self.total - keep)

    def _drop_before(self, sample: int) -> None:
        if sample <= self._pcm_start:
            return
        cut = min(sample - self._pcm_start, len(self._pcm) // 2)
        del self._pcm[: cut * 2]
        self._pcm_start += cut
