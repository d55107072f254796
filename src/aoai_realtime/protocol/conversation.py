"""The conversation as plain data: server events folded into items, responses and parts.

:meth:`Conversation.apply` takes every server event (GA vocabulary) in order. It keeps, per item,
its role, status, text, transcript, function call arguments and, for assistant audio, how many
milliseconds of audio the service has produced so far (truncation must not go beyond it). Audio
bytes are counted from the base64 length, without decoding, unless ``keep_audio`` is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import events as ev

_BYTES_PER_MS = {"pcm16": 48, "g711_ulaw": 8, "g711_alaw": 8}
_BYTES_PER_MS_GA = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


def _string_span(text: str, key: str) -> tuple[int, int] | None:
    """Start and end of the string value of ``key`` in a JSON text, without decoding it (for
    values without escapes: ids, base64)."""
    at = text.find(f'"{key}"')
    if at < 0:
        return None
    i = at + len(key) + 2
    n = len(text)
    while i < n and text[i] in " \t\r\n:":
        i += 1
    if i >= n or text[i] != '"':
        return None
    end = text.find('"', i + 1)
    return (i + 1, end) if end >= 0 else None


def _string_field(text: str, key: str) -> str | None:
    span = _string_span(text, key)
    return text[span[0] : span[1]] if span is not None else None


def _int_field(text: str, key: str) -> int:
    at = text.find(f'"{key}"')
    if at < 0:
        return 0
    i = at + len(key) + 2
    while i < len(text) and text[i] in " \t\r\n:":
        i += 1
    j = i
    while j < len(text) and text[j].isdigit():
        j += 1
    return int(text[i:j]) if j > i else 0


def b64_field_len(text: str, key: str) -> int | None:
    """Decoded length of the base64 string value of ``key`` in a JSON text, without decoding
    the text or the string; ``None`` when there is no such string."""
    span = _string_span(text, key)
    return _b64_span_len(text, span) if span is not None else None


def _b64_span_len(text: str, span: tuple[int, int]) -> int:
    """Decoded length of the base64 string at ``span`` of ``text``."""
    start, end = span
    n = end - start
    if n <= 0:
        return 0
    pad = (1 if text[end - 1] == "=" else 0) + (1 if n > 1 and text[end - 2] == "=" else 0)
    return n * 3 // 4 - pad


def b64_decoded_len(data: str) -> int:
    """Length of the bytes a base64 string decodes to, without decoding it."""
    n = len(data)
    if n == 0:
        return 0
    pad = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return n * 3 // 4 - pad


def cut_transcript(text: str, fraction: float) -> str:
    """The first ``fraction`` of a transcript, cut at a word boundary (what was heard)."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0:
        return ""
    words = text.split()
    total = sum(len(w) + 1 for w in words)
    kept: list[str] = []
    used = 0
    for w in words:
        used += len(w) + 1
        if used > total * fraction:
            break
        kept.append(w)
    return " ".join(kept)


@dataclass
class Part:
    """One content part of an item."""

    type: str
    text: str = ""
    transcript: str = ""
    audio_bytes: int = 0
    audio: bytearray | None = None
    done: bool = False


@dataclass
class ItemState:
    id: str
    type: str
    role: str | None = None
    status: str | None = None
    parts: list[Part] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""
    output: str | None = None
    response_id: str | None = None
    truncated_at_ms: int | None = None
    transcription_failed: str | None = None
    bytes_per_ms: int = 48

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)

    @property
    def transcript(self) -> str:
        return "".join(p.transcript for p in self.parts)

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio produced for this item (the truncation ceiling)."""
        return sum(p.audio_bytes for p in self.parts) // self.bytes_per_ms

    def part(self, index: int, kind: str = "output_audio") -> Part:
        while len(self.parts) <= index:
            self.parts.append(Part(type=kind))
        return self.parts[index]


@dataclass
class ResponseState:
    id: str
    status: str = "in_progress"
    status_details: dict[str, Any] | None = None
    item_ids: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status != "in_progress"


class Conversation:
    """Folds server events into the state of one conversation."""

    def __init__(self, *, keep_audio: bool = False) -> None:
        self.keep_audio = keep_audio
        self.items: dict[str, ItemState] = {}
        self.order: list[str] = []
        self.responses: dict[str, ResponseState] = {}
        self.active_response_id: str | None = None
        self.session: dict[str, Any] = {}
        self.output_format = "pcm16"
        self.errors: list[ev.ErrorDetail] = []
        self.rate_limits: list[ev.RateLimit] = []
        self.speaking = False

    # ----------------------------------------------------------------------- queries

    def item(self, item_id: str) -> ItemState | None:
        return self.items.get(item_id)

    @property
    def last_assistant_item(self) -> ItemState | None:
        for item_id in reversed(self.order):
            it = self.items[item_id]
            if it.role == "assistant":
                return it
        return None

    def history(self) -> list[ItemState]:
        return [self.items[i] for i in self.order]

    # ----------------------------------------------------------------------- folding

    def apply(self, event: ev.ServerEvent) -> None:
        if isinstance(event, ev.UnknownEvent):
            return  # a type we do not know, or a known one whose fields do not parse
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event)

    def apply_delta_text(self, kind: str, text: str) -> None:
        """Fold an audio or transcript delta (GA name ``kind``) from its JSON text without
        decoding the whole message: a relay's hot path. Audio is counted from the base64
        length; other event types are ignored."""
        if kind == "response.output_audio.delta":
            item_id = _string_field(text, "item_id")
            span = _string_span(text, "delta")
            if item_id is not None and span is not None:
                self.add_audio(
                    item_id, _int_field(text, "content_index"), _b64_span_len(text, span)
                )
        elif kind == "response.output_audio_transcript.delta":
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("delta"), str):
                content_index = data.get("content_index")
                self.add_transcript(
                    str(data.get("item_id") or ""),
                    content_index if isinstance(content_index, int) else 0,
                    data["delta"],
                )

    def add_audio(self, item_id: str, content_index: int, nbytes: int) -> None:
        """``nbytes`` more bytes of assistant audio for that item's part."""
        it = self.items.get(item_id)
        if it is not None:
            it.part(content_index, "output_audio").audio_bytes += nbytes

    def add_transcript(self, item_id: str, content_index: int, delta: str) -> None:
        """More transcript of assistant audio (ignored once the item was truncated)."""
        it = self.items.get(item_id)
        if it is not None and it.truncated_at_ms is None:
            it.part(content_index, "output_audio").transcript += delta

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> bool:
        """Cut an item at ``audio_end_ms`` as the service does (a truncation applied locally,
        e.g. of an item an earlier session produced); False if the item is unknown."""
        it = self.items.get(item_id)
        if it is None:
            return False
        it.truncated_at_ms = audio_end_ms
        if content_index < len(it.parts):
            part = it.parts[content_index]
            produced = part.audio_bytes
            part.audio_bytes = min(part.audio_bytes, audio_end_ms * it.bytes_per_ms)
            if part.audio is not None:
                del part.audio[part.audio_bytes :]
            # The service drops the unheard part of the transcript; estimate it by proportion.
            if produced:
                part.transcript = cut_transcript(part.transcript, part.audio_bytes / produced)
        return True

    def end_responses(self, reason: str = "session_ended") -> dict[str, list[dict[str, Any]]]:
        """The session ended: mark the responses still in progress as cancelled (``reason``);
        returns their ids with their output items as far as they went (GA items, status
        ``incomplete``), e.g. for the ``response.done`` a client still waits for."""
        ended: dict[str, list[dict[str, Any]]] = {}
        for rid, response in self.responses.items():
            if response.status != "in_progress":
                continue
            response.status = "cancelled"
            response.status_details = {"type": "cancelled", "reason": reason}
            output: list[dict[str, Any]] = []
            for item_id in response.item_ids:
                state = self.items.get(item_id)
                if state is None:
                    continue
                item: dict[str, Any] = {
                    "id": state.id,
                    "object": "realtime.item",
                    "type": state.type,
                    "status": "incomplete",
                }
                if state.type == "message":
                    item.update(role=state.role or "assistant", content=[])
                elif state.type == "function_call":
                    item.update(
                        call_id=state.call_id, name=state.name or "", arguments=state.arguments
                    )
                output.append(item)
            ended[rid] = output
        self.active_response_id = None
        self.speaking = False
        return ended

    def prune(self, keep_items: int, keep_responses: int = 64, keep_errors: int = 64) -> None:
        """Forget all but the newest ``keep_items`` items, the newest finished responses and
        errors beyond their bounds: a long session's state stays bounded."""
        excess = len(self.order) - max(1, keep_items)
        if excess > 0:
            for item_id in self.order[:excess]:
                self.items.pop(item_id, None)
            del self.order[:excess]
        if len(self.responses) > keep_responses:
            done = [r for r, state in self.responses.items() if state.done]
            for rid in done[: len(self.responses) - keep_responses]:
                del self.responses[rid]
        if len(self.errors) > keep_errors:
            del self.errors[:-keep_errors]

    @property
    def input_bytes_per_ms(self) -> int:
        """Bytes per millisecond of the session's input audio format."""
        fmt = ((self.session.get("audio") or {}).get("input") or {}).get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        return _BYTES_PER_MS_GA.get(kind or "audio/pcm", 48)

    def _ensure(self, item: Any, previous_item_id: str | None = None) -> ItemState:
        item_id = item.id or ""
        state = self.items.get(item_id)
        if state is None:
            state = ItemState(id=item_id, type=item.type, bytes_per_ms=self._bpm())
            self.items[item_id] = state
            if previous_item_id and previous_item_id in self.order:
                self.order.insert(self.order.index(previous_item_id) + 1, item_id)
            else:
                self.order.append(item_id)
        self._fill(state, item)
        return state

    def _bpm(self) -> int:
        return _BYTES_PER_MS.get(self.output_format, 48)

    def _fill(self, state: ItemState, item: Any) -> None:
        state.status = item.status or state.status
        if isinstance(item, ev.MessageItem):
            state.role = item.role
            for i, p in enumerate(item.content):
                part = state.part(i, p.type)
                part.type = p.type
                text = getattr(p, "text", None)
                if text and not part.text:
                    part.text = text
                transcript = getattr(p, "transcript", None)
                if transcript and (not part.transcript or item.status == "completed"):
                    part.transcript = transcript
        elif isinstance(item, ev.FunctionCallItem):
            state.call_id = item.call_id or state.call_id
            state.name = item.name or state.name
            if item.arguments:
                state.arguments = item.arguments
        elif isinstance(item, ev.FunctionCallOutputItem):
            state.call_id = item.call_id
            state.output = item.output

    def _on_session(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.SessionCreated)
        self.session = e.session
        fmt = ((e.session.get("audio") or {}).get("output") or {}).get("format") or {}
        self.output_format = {"audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}.get(
            fmt.get("type", ""), "pcm16"
        )

    def _on_item(self, e: ev.ServerEvent) -> None:
        assert isinstance(
            e, (ev.ConversationItemAdded, ev.ConversationItemDone, ev.ConversationItemCreated)
        )
        self._ensure(e.item, e.previous_item_id)

    def _on_retrieved(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.ConversationItemRetrieved)
        self._ensure(e.item)

    def _on_deleted(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.ConversationItemDeleted)
        if self.items.pop(e.item_id, None) is not None:
            self.order.remove(e.item_id)

    def _on_truncated(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.ConversationItemTruncated)
        self.truncate(e.item_id, e.content_index, e.audio_end_ms)

    def _on_transcription_delta(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.TranscriptionDelta)
        it = self.items.get(e.item_id)
        if it is not None:
            it.part(e.content_index, "input_audio").transcript += e.delta

    def _on_transcription_done(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.TranscriptionCompleted)
        it = self.items.get(e.item_id)
        if it is not None:
            it.part(e.content_index, "input_audio").transcript = e.transcript

    def _on_transcription_failed(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.TranscriptionFailed)
        it = self.items.get(e.item_id)
        if it is not None:
            it.transcription_failed = e.error.message

    def _on_response_created(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.ResponseCreated)
        rid = e.response.id or ""
        self.responses[rid] = ResponseState(id=rid)
        self.active_response_id = rid

    def _on_response_done(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.ResponseDone)
        rid = e.response.id or ""
        state = self.responses.setdefault(rid, ResponseState(id=rid))
        state.status = e.response.status or "completed"
        sd = e.response.status_details
        state.status_details = sd.to_dict() if sd else None
        state.usage = e.response.usage.to_dict() if e.response.usage else None
        for item in e.response.output:
            if item.id:
                self._ensure(item)
        if self.active_response_id == rid:
            self.active_response_id = None

    def _on_output_item(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, (ev.OutputItemAdded, ev.OutputItemDone))
        state = self._ensure(e.item)
        state.response_id = e.response_id
        resp = self.responses.get(e.response_id)
        if resp is not None and state.id not in resp.item_ids:
            resp.item_ids.append(state.id)

    def _on_part(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, (ev.ContentPartAdded, ev.ContentPartDone))
        it = self.items.get(e.item_id)
        if it is None:
            return
        kind = "output_audio" if e.part.type == "audio" else "output_text"
        part = it.part(e.content_index, kind)
        part.type = kind
        if isinstance(e, ev.ContentPartDone):
            part.done = True
            if e.part.transcript is not None and it.truncated_at_ms is None:
                part.transcript = e.part.transcript
            if e.part.text is not None:
                part.text = e.part.text

    def _on_text_delta(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.OutputTextDelta)
        it = self.items.get(e.item_id)
        if it is not None:
            it.part(e.content_index, "output_text").text += e.delta

    def _on_text_done(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.OutputTextDone)
        it = self.items.get(e.item_id)
        if it is not None:
            it.part(e.content_index, "output_text").text = e.text

    def _on_audio_delta(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.OutputAudioDelta)
        it = self.items.get(e.item_id)
        if it is None:
            return
        part = it.part(e.content_index, "output_audio")
        if self.keep_audio:
            import base64

            raw = base64.b64decode(e.delta)
            if part.audio is None:
                part.audio = bytearray()
            part.audio += raw
            part.audio_bytes += len(raw)
        else:
            self.add_audio(e.item_id, e.content_index, b64_decoded_len(e.delta))

    def _on_transcript_delta(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.OutputAudioTranscriptDelta)
        self.add_transcript(e.item_id, e.content_index, e.delta)

    def _on_transcript_done(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.OutputAudioTranscriptDone)
        it = self.items.get(e.item_id)
        if it is not None and it.truncated_at_ms is None:
            it.part(e.content_index, "output_audio").transcript = e.transcript

    def _on_args_delta(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.FunctionCallArgumentsDelta)
        it = self.items.get(e.item_id)
        if it is not None:
            it.arguments += e.delta
            it.call_id = it.call_id or e.call_id

    def _on_args_done(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.FunctionCallArgumentsDone)
        it = self.items.get(e.item_id)
        if it is not None:
            it.arguments = e.arguments
            it.call_id = e.call_id
            it.name = e.name or it.name

    def _on_error(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.ErrorEvent)
        self.errors.append(e.error)

    def _on_rate_limits(self, e: ev.ServerEvent) -> None:
        assert isinstance(e, ev.RateLimitsUpdated)
        self.rate_limits = e.rate_limits

    def _on_speech(self, e: ev.ServerEvent) -> None:
        self.speaking = e.type == "input_audio_buffer.speech_started"


_HANDLERS = {
    "session.created": Conversation._on_session,
    "session.updated": Conversation._on_session,
    "conversation.item.added": Conversation._on_item,
    "conversation.item.done": Conversation._on_item,
    "conversation.item.created": Conversation._on_item,
    "conversation.item.retrieved": Conversation._on_retrieved,
    "conversation.item.deleted": Conversation._on_deleted,
    "conversation.item.truncated": Conversation._on_truncated,
    "conversation.item.input_audio_transcription.delta": Conversation._on_transcription_delta,
    "conversation.item.input_audio_transcription.completed": Conversation._on_transcription_done,
    "conversation.item.input_audio_transcription.failed": Conversation._on_transcription_failed,
    "response.created": Conversation._on_response_created,
    "response.done": Conversation._on_response_done,
    "response.output_item.added": Conversation._on_output_item,
    "response.output_item.done": Conversation._on_output_item,
    "response.content_part.added": Conversation._on_part,
    "response.content_part.done": Conversation._on_part,
    "response.output_text.delta": Conversation._on_text_delta,
    "response.output_text.done": Conversation._on_text_done,
    "response.output_audio.delta": Conversation._on_audio_delta,
    "response.output_audio_transcript.delta": Conversation._on_transcript_delta,
    "response.output_audio_transcript.done": Conversation._on_transcript_done,
    "response.function_call_arguments.delta": Conversation._on_args_delta,
    "response.function_call_arguments.done": Conversation._on_args_done,
    "error": Conversation._on_error,
    "rate_limits.updated": Conversation._on_rate_limits,
    "input_audio_buffer.speech_started": Conversation._on_speech,
    "input_audio_buffer.speech_stopped": Conversation._on_speech,
}
