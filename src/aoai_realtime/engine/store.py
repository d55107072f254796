"""The conversation as the engine keeps it: items in order, with their audio and transcripts.

Each item is kept in its GA wire form (without audio bytes: events never carry them, but for
``conversation.item.retrieved``, :meth:`StoredItem.retrieved`), plus what the engine needs beside
it: a user item's input audio and the transcription in progress, an assistant item's produced
audio (as sent) and the span of audio each transcript piece covers (so a truncation keeps exactly
the words that were heard).
"""

from __future__ import annotations

import asyncio
import base64
import copy
from dataclasses import dataclass, field
from typing import Any

from ..audio import encode_for_format
from ..protocol.conversation import cut_transcript
from .brains import HistoryItem


@dataclass
class Segment:
    """A piece of an assistant transcript and the audio it was spoken in (ms from item start)."""

    start_ms: float
    end_ms: float
    text: str


@dataclass
class StoredItem:
    data: dict[str, Any]
    input_audio: bytes | None = None
    transcript: asyncio.Future[str] | None = None
    audio_bytes: int = 0
    bytes_per_ms: int = 48
    segments: list[Segment] = field(default_factory=list)
    output_audio: bytearray = field(default_factory=bytearray)
    """An assistant item's audio as its deltas carried it (the response's output format)."""

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def type(self) -> str:
        return str(self.data.get("type"))

    @property
    def role(self) -> str | None:
        return self.data.get("role")

    @property
    def audio_ms(self) -> float:
        """Milliseconds of output audio produced for this item."""
        return self.audio_bytes / self.bytes_per_ms

    def wire(self) -> dict[str, Any]:
        """A copy of the wire form, safe to put in an event."""
        return copy.deepcopy(self.data)

    def retrieved(self, input_format: str) -> dict[str, Any]:
        """The wire form with its audio, as ``conversation.item.retrieved`` carries it (base64:
        a user item's input audio in the session's ``input_format``, an assistant item's audio
        as it was sent)."""
        data = self.wire()
        for part in data.get("content") or []:
            kind = part.get("type")
            if kind == "input_audio" and self.input_audio:
                raw = encode_for_format(self.input_audio, input_format)
                part["audio"] = base64.b64encode(raw).decode("ascii")
            elif kind == "output_audio" and self.output_audio:
                part["audio"] = base64.b64encode(bytes(self.output_audio)).decode("ascii")
        return data

    def add_output_audio(self, encoded: str) -> None:
        """Keep one ``response.output_audio.delta``'s audio (base64) for retrieval."""
        self.output_audio += base64.b64decode(encoded)

    def audio_part(self, content_index: int) -> dict[str, Any] | None:
        content = self.data.get("content") or []
        if 0 <= content_index < len(content):
            part: dict[str, Any] = content[content_index]
            return part
        return None

    def truncate(self, content_index: int, audio_end_ms: int) -> None:
        """Cut the audio at ``audio_end_ms`` and the transcript to the words heard by then."""
        part = self.audio_part(content_index)
        heard: list[str] = []
        for seg in self.segments:
            if seg.end_ms <= audio_end_ms:
                heard.append(seg.text)
            elif seg.start_ms < audio_end_ms:
                fraction = (audio_end_ms - seg.start_ms) / max(1e-6, seg.end_ms - seg.start_ms)
                piece = cut_transcript(seg.text.strip(), fraction)
                if piece:
                    heard.append((" " if seg.text.startswith(" ") else "") + piece)
        text = "".join(heard).strip()
        self.segments = [s for s in self.segments if s.end_ms <= audio_end_ms]
        self.audio_bytes = min(self.audio_bytes, int(audio_end_ms * self.bytes_per_ms))
        del self.output_audio[self.audio_bytes :]
        if part is not None:
            part["transcript"] = text

    def history(self) -> HistoryItem:
        """The item as brains see it (audio as its transcript)."""
        d = self.data
        kind = d.get("type")
        if kind == "function_call":
            return HistoryItem(
                id=self.id,
                type="function_call",
                name=d.get("name"),
                call_id=d.get("call_id"),
                arguments=d.get("arguments") or "",
            )
        if kind == "function_call_output":
            return HistoryItem(
                id=self.id,
                type="function_call_output",
                call_id=d.get("call_id"),
                output=d.get("output") or "",
            )
        texts: list[str] = []
        for part in d.get("content") or []:
            value = part.get("text") if part.get("type") in ("input_text", "output_text") else None
            if value is None:
                value = part.get("transcript")
            if value:
                texts.append(str(value))
        return HistoryItem(id=self.id, type="message", role=d.get("role"), text=" ".join(texts))


class ItemStore:
    """Items of the default conversation, in order."""

    def __init__(self) -> None:
        self._items: dict[str, StoredItem] = {}
        self._order: list[str] = []

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __len__(self) -> int:
        return len(self._order)

    def get(self, item_id: str) -> StoredItem | None:
        return self._items.get(item_id)

    def items(self) -> list[StoredItem]:
        return [self._items[i] for i in self._order]

    @property
    def last_id(self) -> str | None:
        return self._order[-1] if self._order else None

    def insert(self, item: StoredItem, previous_item_id: str | None = None) -> str | None:
        """Add ``item`` after ``previous_item_id`` (``"root"``: first; ``None``: last).

        Returns the id of the item now before it (``None`` when it is first).
        """
        if previous_item_id is None:
            before = self.last_id
            self._order.append(item.id)
        elif previous_item_id == "root":
            before = None
            self._order.insert(0, item.id)
        else:
            before = previous_item_id
            self._order.insert(self._order.index(previous_item_id) + 1, item.id)
        self._items[item.id] = item
        return before

    def previous_of(self, item_id: str) -> str | None:
        """The id of the item before ``item_id`` (``None`` when it is first or unknown)."""
        if item_id not in self._items:
            return None
        index = self._order.index(item_id)
        return self._order[index - 1] if index > 0 else None

    def delete(self, item_id: str) -> StoredItem | None:
        item = self._items.pop(item_id, None)
        if item is not None:
            self._order.remove(item_id)
        return item
