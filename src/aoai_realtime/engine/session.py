"""One connection's realtime session: configuration, conversation, input audio, responses.

:class:`RealtimeSession` is the protocol state machine of the engine, in the GA vocabulary and
free of sockets: the server feeds it decoded client events (:meth:`handle`) and it ``emit``\\ s
server events (a plain callable, so ordering is the order of the calls). Refusals are raised as
:class:`~aoai_realtime.protocol.errors.ProtocolError` and sent by the caller as ``error``
events; the session stays usable after any of them.

Input audio goes into an :class:`~aoai_realtime.engine.buffer.InputBuffer` and, under
``server_vad`` / ``semantic_vad``, through a per-session turn detector: speech start (barge-in
cancels the active response), speech stop (commit, transcription, and a response if
``create_response``). Transcription always runs (brains read text); its events are sent only
when the session asks for ``transcription``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._threads import give_back_memory
from ..audio import Resampler, alaw_decode, b64decode_audio, ulaw_decode
from ..protocol import events as ev
from ..protocol.dialect import PART_TO_PREVIEW, Dialect
from ..protocol.errors import (
    ProtocolError,
    echo,
    invalid_type,
    invalid_value,
    missing_parameter,
    not_supported,
    one_of,
    unknown_parameter,
)
from ..protocol.session import (
    GA_VOICES,
    TRANSCRIPTION_MODELS,
    SessionConfig,
    TurnDetection,
    VoiceId,
    read_ga_format,
)
from . import ids
from .brains import DEFAULT_INSTRUCTIONS, Brain
from .buffer import InputBuffer
from .faults import Faults
from .mcp import MCP_ITEM_TYPES, Connector, McpTools, check_mcp_choice, check_mcp_tools
from .plan import plan_response
from .response import ResponseContext, ResponseRun
from .speculation import SpeculationContext, Speculator
from .store import ItemStore, StoredItem
from .wire import Decoded
from .workers import SharedSpeech, WorkPriority, speculative_task

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
MAX_OUTPUT_TOKENS = 4096
NO_SPEECH_CODE = "speech_unavailable"
"""The ``error`` code of what an engine without its speech models refuses."""
MAX_OUT_OF_BAND = 4
"""Out-of-band responses (``conversation: "none"``) one session may run at once: the models are
shared, so a client starting fifty would otherwise delay every other session's answers."""

IDLE_TAIL_MS = 30_000
"""Under VAD, audio older than this before the end of the buffer is forgotten while idle."""

_TD_DEFAULTS: dict[str, dict[str, Any]] = {
    "server_vad": {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
}


def full_turn_detection(td: TurnDetection | None) -> TurnDetection | None:
    """A turn detection with every unset field at the service's default."""
    if td is None:
        return None
    given = td.model_dump(exclude_unset=True)
    given["type"] = td.type
    return TurnDetection.model_validate({**_TD_DEFAULTS[td.type], **given})


def default_config(
    dialect: Dialect, model: str, *, hearing: bool = True, transcription: bool = False
) -> SessionConfig:
    """The session a connection starts with (what ``session.created`` shows).

    Without ``hearing`` (an engine without its speech models) turn detection starts off: such
    an engine cannot tell speech from silence, so its sessions commit input audio by hand.
    ``transcription`` (``?intent=transcription``): a transcription session, whose shape has only
    the input audio settings (transcription itself is off until the client names a model).
    """
    turn_detection = full_turn_detection(TurnDetection(type="server_vad")) if hearing else None
    if transcription:
        data: dict[str, Any] = {
            "type": "transcription",
            "input_format": "pcm16",
            "transcription": None,
            "turn_detection": turn_detection,
            "noise_reduction": None,
            "include": [],
        }
        if dialect is Dialect.PREVIEW:
            data["output_modalities"] = ["text"]
        return SessionConfig.model_validate(data)
    data = {
        "type": "realtime",
        "model": model,
        "instructions": DEFAULT_INSTRUCTIONS,
        "output_modalities": ["audio"],
        "voice": "alloy",
        "speed": 1.0,
        "input_format": "pcm16",
        "output_format": "pcm16",
        "transcription": None,
        "turn_detection": turn_detection,
        "noise_reduction": None,
        "max_output_tokens": "inf",
        "tools": [],
        "tool_choice": "auto",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "parallel_tool_calls": True,
        "reasoning": None,
    }
    if dialect is Dialect.PREVIEW:
        data["temperature"] = 0.8
    return SessionConfig.model_validate(data)


class RateLimits:
    """Token and request budgets per rolling minute, reported in ``rate_limits.updated``."""

    def __init__(self, tokens: int, requests: int) -> None:
        self.tokens = tokens
        self.requests = requests
        self._spent: deque[tuple[float, int]] = deque()

    def spend(self, tokens: int) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._spent.append((now, tokens))
        while self._spent and now - self._spent[0][0] > 60:
            self._spent.popleft()
        reset = max(0.0, 60 - (now - self._spent[0][0])) if self._spent else 0.0
        used = sum(t for _, t in self._spent)
        return [
            {
                "name": "requests",
                "limit": self.requests,
                "remaining": max(0, self.requests - len(self._spent)),
                "reset_seconds": round(reset, 3),
            },
            {
                "name": "tokens",
                "limit": self.tokens,
                "remaining": max(0, self.tokens - used),
                "reset_seconds": round(reset, 3),
            },
        ]


class RealtimeSession:
    """The protocol state of one connection (see the module documentation)."""

    def __init__(
        self,
        *,
        dialect: Dialect,
        model: str,
        brain: Brain,
        speech: SharedSpeech | None,
        emit: Callable[[dict[str, Any]], None],
        faults: Faults | None = None,
        rate_limits: RateLimits | None = None,
        expires_at: int | None = None,
        conversation_id: str | None = None,
        transcription: bool = False,
        mcp_connector: Connector | None = None,
    ) -> None:
        self.dialect = dialect
        self.brain = brain
        self.speech = speech
        self._emit = emit
        self.faults = faults or Faults()
        self.rate_limits = rate_limits or RateLimits(40_000, 1_000)
        self.session_id = ids.session_id()
        self.conversation_id = conversation_id or ids.conversation_id()
        self.expires_at = expires_at or int(time.time()) + 30 * 60
        self.config = default_config(
            dialect, model, hearing=speech is not None, transcription=transcription
        )
        self.store = ItemStore()
        self.buffer = InputBuffer()
        self.active: ResponseRun | None = None
        self.runs: dict[str, ResponseRun] = {}
        self.responses_started = 0
        self._pending_auto_response = False
        self._idle_from_ms: float | None = None
        """Under ``server_vad`` with ``idle_timeout_ms``: where on the audio timeline the last
        response's audio ended (as the client played it); ``None`` while nothing is awaited."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._turn_detector: Any = None
        self._turn_item_id: str | None = None
        self._turn_start_ms = 0.0
        self._in_resampler: Resampler | None = None
        self.speculator = Speculator(
            SpeculationContext(
                speech=speech,
                brain=brain,
                audio=lambda start_ms, end_ms: self.buffer.slice_ms(start_ms, end_ms),
                config=lambda: self.config,
                conversation=lambda: self.store.items(),
                busy=lambda: self._closed or (self.active is not None and self.active.active),
            )
        )
        self.mcp = McpTools(
            emit=self.emit, store=lambda: self.store, spawn=self.spawn, connector=mcp_connector
        )
        """The session's MCP servers: listed when ``tools`` name them (``engine/mcp.py``)."""
        self._closed = False
        self._configure_input()

    # ------------------------------------------------------------------ output

    def emit(self, event: dict[str, Any]) -> None:
        """Send one server event (an ``event_id`` is added)."""
        if self._closed:
            return
        if event["type"] == "response.output_audio.delta":  # kept for conversation.item.retrieved
            item = self.store.get(event.get("item_id") or "")
            if item is not None:
                item.add_output_audio(event["delta"])
        self._emit({"type": event["type"], "event_id": ids.event_id(), **event})

    def error(self, exc: ProtocolError) -> None:
        """Send the ``error`` event for a refused client event."""
        self.emit({"type": "error", "error": exc.to_error()})

    def session_object(self) -> dict[str, Any]:
        session = self.config.to_ga()
        kind = "realtime.transcription_session" if self.transcribing else "realtime.session"
        session.update(object=kind, id=self.session_id, expires_at=self.expires_at)
        if self.dialect is Dialect.PREVIEW and self.transcribing:
            # the preview's transcription session shows modalities, which GA's does not have
            preview = self.config.to_preview_transcription()
            if "modalities" in preview:
                session["modalities"] = preview["modalities"]
        elif self.dialect is Dialect.PREVIEW and self.config.temperature is not None:
            session["temperature"] = self.config.temperature
        return session

    @property
    def transcribing(self) -> bool:
        """A transcription session (``?intent=transcription``): no responses."""
        return self.config.transcription_only

    def start(self) -> None:
        """Announce the session (``session.created``)."""
        self.emit({"type": "session.created", "session": self.session_object()})

    async def close(self) -> None:
        """Stop every task of the session; nothing is sent any more."""
        self._closed = True
        self.speculator.discard()
        tasks = [r.task for r in self.runs.values() if r.task is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 - the session is going away
                pass
        # Let go of the session's memory now: the session is part of reference cycles, and the
        # cyclic collector does not see native memory, so a busy engine would otherwise keep
        # every closed session's VAD model (about 8 MB) and audio for a good while.
        self._turn_detector = None
        self.buffer = InputBuffer()
        self.store = ItemStore()

    def spawn(
        self, coro: Any, name: str, priority: WorkPriority | None = None
    ) -> asyncio.Task[Any]:
        """Run a background task that the session cancels when it closes (its model work
        speculative while ``priority`` says so)."""
        if priority is None:
            task = asyncio.create_task(coro, name=name)
        else:
            task = speculative_task(coro, priority, name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ input

    async def handle(self, decoded: Decoded) -> None:
        """Apply one client event; raises ProtocolError for what the service would refuse."""
        event = decoded.event
        try:
            if decoded.session is not None:
                self._session_update(decoded.session, decoded.transcription_event)
            elif isinstance(event, ev.InputAudioBufferAppend):
                await self._append(event)
            elif isinstance(event, ev.InputAudioBufferCommit):
                self._commit_buffer()
            elif isinstance(event, ev.InputAudioBufferClear):
                self._clear_buffer()
            elif isinstance(event, ev.ConversationItemCreate):
                self._item_create(event)
            elif isinstance(event, ev.ConversationItemRetrieve):
                item = self._find(event.item_id)
                fmt = self.config.input_format or "pcm16"
                self.emit({"type": "conversation.item.retrieved", "item": item.retrieved(fmt)})
            elif isinstance(event, ev.ConversationItemDelete):
                self._find(event.item_id)
                self.store.delete(event.item_id)
                self.emit({"type": "conversation.item.deleted", "item_id": event.item_id})
            elif isinstance(event, ev.ConversationItemTruncate):
                self._truncate(event)
            elif isinstance(event, ev.ResponseCreate):
                self._response_create(event)
            elif isinstance(event, ev.ResponseCancel):
                self._response_cancel(event)
            elif isinstance(event, ev.OutputAudioBufferClear):
                raise ProtocolError(
                    "output_audio_buffer.clear is only supported on WebRTC connections.",
                    code="invalid_value",
                    param="type",
                )
        except ProtocolError as exc:
            if exc.event_id is None:
                exc.event_id = event.event_id
            raise

    def _find(self, item_id: str) -> StoredItem:
        item = self.store.get(item_id)
        if item is None:
            raise ProtocolError(
                f"Conversation item with id '{echo(item_id)}' does not exist.",
                code="invalid_value",
                param="item_id",
            )
        return item

    # ------------------------------------------------------------------ session.update
    #
    # Refusals name GA parameters (``session.audio.output.voice``): the wire renames an error
    # for a preview client (``session.voice``) by the one table, protocol/dialect.py's
    # PREVIEW_PARAMS.

    def _session_update(self, update: SessionConfig, transcription_event: bool = False) -> None:
        self._check_session_kind(update, transcription_event)
        if update.is_set("model") and update.model != self.config.model:
            raise invalid_value(
                "session.model",
                f"Invalid value for 'session.model': a session's model cannot be changed (it is "
                f"'{echo(self.config.model)}', got '{echo(update.model)}'). Open a new session "
                "for another model.",
            )
        if update.is_set("voice"):
            if not isinstance(update.voice, VoiceId) and update.voice not in GA_VOICES:
                raise not_supported("session.audio.output.voice", update.voice, GA_VOICES)
            if update.voice != self.config.voice and any(
                item.role == "assistant" and item.audio_bytes for item in self.store.items()
            ):
                raise ProtocolError(
                    "Cannot update a conversation's voice if assistant audio is present.",
                    code="cannot_update_voice",
                    param="session.audio.output.voice",
                )
        if update.is_set("max_output_tokens"):
            _check_max_tokens(update.max_output_tokens, "session.max_output_tokens")
        if update.is_set("tools"):
            _check_tools(update.tools or [], "session.tools")
        if update.is_set("tool_choice"):
            _check_tool_choice(update.tool_choice, "session.tool_choice")
        if update.is_set("output_modalities"):
            _check_modalities(update.output_modalities, "session.output_modalities")
        model = update.transcription.model if update.transcription is not None else None
        if model is not None and model not in TRANSCRIPTION_MODELS:
            raise not_supported(
                "session.audio.input.transcription.model", model, TRANSCRIPTION_MODELS
            )
        _check_open_fields(update)
        if self.speech is None:  # what needs the speech models, once every field is valid
            self._check_without_speech(update)
        new = self.config.merged(update)
        if update.is_set("turn_detection"):
            new.turn_detection = full_turn_detection(new.turn_detection)
        old = self.config
        self.config = new
        if update.is_set("turn_detection") and new.turn_detection != old.turn_detection:
            self._configure_turn_detection()
        if new.input_format != old.input_format:
            self._configure_input()
        self.emit({"type": "session.updated", "session": self.session_object()})
        if update.is_set("tools"):  # after session.updated, as the service lists them
            self.mcp.sync(new.tools or [])
            self._read_tools_ahead(new.tools or [])

    def _read_tools_ahead(self, tools: list[dict[str, Any]]) -> None:
        """Let a brain that can (the local one) read the session's tools now, at a speculative
        priority, so the first turn does not wait for it."""
        read = getattr(self.brain, "read_tools", None)
        if read is not None and tools:
            self.spawn(read(tools), "read tools", WorkPriority())

    def _check_session_kind(self, update: SessionConfig, transcription_event: bool) -> None:
        """A session stays the kind it was opened as: a transcription session comes from
        ``?intent=transcription``, and ``session.type`` cannot switch mid-session. The preview
        updates a transcription session with ``transcription_session.update`` only."""
        if self.dialect is Dialect.PREVIEW:
            if transcription_event != self.transcribing:
                wanted, sent = (
                    ("transcription_session.update", "session.update")
                    if self.transcribing
                    else ("session.update", "transcription_session.update")
                )
                raise not_supported("type", sent, (wanted,))
            return
        kind = self.config.type or "realtime"
        if update.type is not None and update.type != kind:
            hint = (
                "connect with ?intent=transcription for a transcription session"
                if update.type == "transcription"
                else "open a new session without ?intent=transcription for a realtime session"
            )
            raise invalid_value(
                "session.type",
                f"Invalid value for 'session.type': a session's type cannot be changed (this "
                f"session is '{kind}', got '{echo(update.type)}'); {hint}.",
            )

    def _check_without_speech(self, update: SessionConfig) -> None:
        """Without the speech models, refuse what needs them: turn detection, transcription."""
        if update.is_set("turn_detection") and update.turn_detection is not None:
            raise ProtocolError(
                "This engine runs without its speech models (no_speech), so it cannot detect "
                "turns: set turn_detection to null and commit the input audio buffer yourself, "
                "or run the engine with its speech stack.",
                code=NO_SPEECH_CODE,
                param="session.audio.input.turn_detection",
            )
        if update.is_set("transcription") and update.transcription is not None:
            raise ProtocolError(
                "This engine runs without its speech models (no_speech), so it cannot "
                "transcribe input audio: leave transcription off, or run the engine with its "
                "speech stack.",
                code=NO_SPEECH_CODE,
                param="session.audio.input.transcription",
            )

    def _configure_input(self) -> None:
        fmt = self.config.input_format or "pcm16"
        self._in_resampler = None if fmt == "pcm16" else Resampler(8000, 24000)
        self._configure_turn_detection()

    def _configure_turn_detection(self) -> None:
        td = self.config.turn_detection
        self.speculator.discard()
        self._turn_item_id = None
        if td is None or self.speech is None:
            self._turn_detector = None
            return
        if td.type == "semantic_vad":
            detector = self.speech.turn_detector(eagerness=td.eagerness or "auto")
        else:
            detector = self.speech.turn_detector(
                threshold=td.threshold if td.threshold is not None else 0.5,
                prefix_padding_ms=td.prefix_padding_ms if td.prefix_padding_ms is not None else 300,
                silence_duration_ms=td.silence_duration_ms
                if td.silence_duration_ms is not None
                else 500,
            )
        detector.reset(int(self.buffer.end_ms))
        self._turn_detector = detector

    # ------------------------------------------------------------------ input audio

    async def _append(self, event: ev.InputAudioBufferAppend) -> None:
        if not event.audio:
            return
        try:
            raw = b64decode_audio(event.audio)
        except ValueError as exc:
            raise ProtocolError(
                f"Invalid 'audio': expected base64-encoded audio ({exc}).",
                code="invalid_value",
                param="audio",
            ) from None
        pcm = self._decode_input(raw, "audio")
        if not pcm:
            return
        self.buffer.append(pcm)
        if self._turn_detector is None or self.speech is None:
            return
        detector = self._turn_detector
        turns = await self.speech.feed(detector, pcm)
        while True:
            for turn in turns:
                if self._closed:
                    return
                if turn.kind == "speech_started":
                    self._on_speech_started(turn.audio_ms)
                else:
                    self._on_speech_stopped(turn.audio_ms)
            if detector.awaiting is None or self._closed or self._turn_detector is not detector:
                break
            # semantic_vad: the pause is judged on whisper's words (the turn's transcription)
            ending = await self.speculator.pause_ending(
                detector, self._turn_item_id, self._turn_start_ms
            )
            if self._closed or self._turn_detector is not detector:
                return
            turns = await self.speech.resume(detector, ending)
        if self._turn_detector is not None and self._turn_detector.speaking:
            self.speculator.update(self._turn_detector, self._turn_item_id, self._turn_start_ms)
        else:
            self._check_idle_timeout()
            self.buffer.keep_tail(IDLE_TAIL_MS)

    def _decode_input(self, raw: bytes, param: str) -> bytes:
        fmt = self.config.input_format or "pcm16"
        if fmt == "pcm16":
            if len(raw) % 2:
                raise ProtocolError(
                    f"Invalid '{param}': pcm16 audio must have an even number of bytes "
                    f"(16-bit samples), got {len(raw)} bytes.",
                    code="invalid_value",
                    param=param,
                )
            return raw
        pcm8k = ulaw_decode(raw) if fmt == "g711_ulaw" else alaw_decode(raw)
        if self._in_resampler is None:
            self._in_resampler = Resampler(8000, 24000)
        return self._in_resampler.process(pcm8k)

    def _on_speech_started(self, audio_start_ms: int) -> None:
        self.speculator.discard()
        self._idle_from_ms = None
        self._turn_item_id = ids.item_id()
        self._turn_start_ms = audio_start_ms
        self.emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": self._turn_item_id,
            }
        )
        td = self.config.turn_detection
        if (
            self.active is not None
            and self.active.active
            and (td is None or td.interrupt_response is not False)
        ):
            self.active.cancel("turn_detected")

    def _on_speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self._turn_item_id or ids.item_id()
        self._turn_item_id = None
        self.emit(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": audio_end_ms,
                "item_id": item_id,
            }
        )
        transcript = self.speculator.take_transcript(item_id, audio_end_ms)
        audio = self.buffer.commit_span(self._turn_start_ms, audio_end_ms)
        self._commit(audio, item_id, transcript)
        td = self.config.turn_detection
        if (
            td is not None
            and td.create_response is not False
            and self.config.type != "transcription"
        ):
            self._auto_respond()

    def _commit_buffer(self) -> None:
        if self.buffer.uncommitted_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{self.buffer.uncommitted_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                param=None,
            )
        item_id = self._turn_item_id or ids.item_id()
        self._turn_item_id = None
        audio = self.buffer.commit_all()
        if self._turn_detector is not None:
            self.speculator.discard()
            self._turn_detector.reset(int(self.buffer.end_ms))
        self._commit(audio, item_id, None)

    def _clear_buffer(self) -> None:
        end = self.buffer.clear()
        if self._idle_from_ms is not None:  # the cleared audio is off the timeline
            self._idle_from_ms = min(self._idle_from_ms, end)
        self._turn_item_id = None
        self.speculator.discard()
        if self._in_resampler is not None:
            self._in_resampler = Resampler(8000, 24000)
        if self._turn_detector is not None:
            self._turn_detector.reset(int(end))
        self.emit({"type": "input_audio_buffer.cleared"})

    def _arm_idle_timeout(self, run: ResponseRun) -> None:
        """After a response: start counting toward ``idle_timeout_ms`` from where its audio ends.

        The client starts playing the audio as its first delta arrives, so on the input audio
        timeline (which a client streaming its microphone advances in real time) the playback
        ends at the buffer's end at the first delta plus the audio's length; a response without
        audio ends when it is done.
        """
        end = self.buffer.end_ms
        started = run.audio_started_at_ms
        self._idle_from_ms = end if started is None else max(end, started + run.audio_ms)

    def _check_idle_timeout(self) -> None:
        """``input_audio_buffer.timeout_triggered`` once the input has been silent for
        ``idle_timeout_ms`` after the last response's audio: the silent audio is committed as a
        user turn and, with ``create_response``, answered (the model prompts the user)."""
        td = self.config.turn_detection
        start = self._idle_from_ms
        if start is None or td is None or td.type != "server_vad" or not td.idle_timeout_ms:
            return
        if self.active is not None and self.active.active:
            return
        end = self.buffer.end_ms
        if end - start < td.idle_timeout_ms:
            return
        self._idle_from_ms = None
        item_id = ids.item_id()
        self.emit(
            {
                "type": "input_audio_buffer.timeout_triggered",
                "audio_start_ms": int(start),
                "audio_end_ms": int(end),
                "item_id": item_id,
            }
        )
        audio = self.buffer.commit_span(start, end)
        self.speculator.discard()
        if self._turn_detector is not None:
            self._turn_detector.reset(int(self.buffer.end_ms))
        self._commit(audio, item_id, None)
        if td.create_response is not False and self.config.type != "transcription":
            self._auto_respond()

    def _commit(self, audio: bytes, item_id: str, transcript: Any) -> None:
        item = StoredItem(
            data={
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
            input_audio=audio,
        )
        previous = self.store.insert(item)
        self.emit(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        self.emit(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.wire()}
        )
        self.emit(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.wire()}
        )
        self.transcribe(item, announce=True, precomputed=transcript)

    # ------------------------------------------------------------------ transcription

    def transcribe(self, item: StoredItem, *, announce: bool, precomputed: Any = None) -> None:
        """Transcribe a user audio item in the background (its ``transcript`` future)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        item.transcript = future
        self.spawn(self._transcribe(item, future, announce, precomputed), f"transcribe {item.id}")

    async def _transcribe(
        self, item: StoredItem, future: asyncio.Future[str], announce: bool, precomputed: Any
    ) -> None:
        audio = item.input_audio or b""
        tc = self.config.transcription
        announce = announce and tc is not None
        try:
            if precomputed is not None:
                text = (await precomputed).text
            elif self.speech is None:
                text = ""
            else:
                text = await self.speech.transcribe(
                    audio, language=tc.language if tc else None, prompt=tc.prompt if tc else None
                )
        except asyncio.CancelledError:
            if not future.done():
                future.set_result("")
            raise
        except Exception as exc:  # noqa: BLE001 - a failed transcription fails only itself
            log.warning("transcription of %s failed: %s", item.id, exc)
            if announce:
                self.emit(
                    {
                        "type": "conversation.item.input_audio_transcription.failed",
                        "item_id": item.id,
                        "content_index": 0,
                        "error": {
                            "type": "transcription_error",
                            "code": "audio_unintelligible",
                            "message": f"Input transcription failed: {exc}",
                            "param": None,
                        },
                    }
                )
            future.set_result("")
            return
        for part in item.data.get("content") or []:
            if part.get("type") == "input_audio":
                part["transcript"] = text
                break
        if announce:
            if text:
                self.emit(
                    {
                        "type": "conversation.item.input_audio_transcription.delta",
                        "item_id": item.id,
                        "content_index": 0,
                        "delta": text,
                    }
                )
            self.emit(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item.id,
                    "content_index": 0,
                    "transcript": text,
                    "usage": {"type": "duration", "seconds": round(len(audio) / 48000, 3)},
                }
            )
        if not future.done():
            future.set_result(text)

    # ------------------------------------------------------------------ items

    def _new_item(self, model: Any, where: str) -> StoredItem:
        """A client's item as the engine stores it (audio decoded, ids and status filled)."""
        data: dict[str, Any] = model.to_dict()
        data["id"] = data.get("id") or ids.item_id()
        if data["type"] in MCP_ITEM_TYPES:  # openai's MCP items have no object or status
            self._check_approval(data, where)
            return StoredItem(data=data)
        data["object"] = "realtime.item"
        data.setdefault("status", "completed")
        audio: bytes | None = None
        if data["type"] == "message":
            allowed = {
                "user": ("input_text", "input_audio", "input_image"),
                "system": ("input_text",),
                "assistant": ("output_text", "output_audio"),
            }[data["role"]]
            for i, part in enumerate(data.get("content") or []):
                if part["type"] not in allowed:
                    raise invalid_value(
                        f"{where}.content[{i}].type",
                        f"Invalid value for '{where}.content[{i}].type': "
                        f"'{self._part_name(part['type'])}'. A {data['role']} message's content "
                        f"must be one of: {one_of([self._part_name(t) for t in allowed])}.",
                    )
                if part["type"] in ("input_audio", "output_audio"):
                    encoded = part.pop("audio", None)
                    part.setdefault("transcript", None)
                    if encoded:
                        try:
                            raw = b64decode_audio(encoded)
                        except ValueError as exc:
                            raise invalid_value(
                                f"{where}.content[{i}].audio",
                                f"Invalid '{where}.content[{i}].audio': expected base64 ({exc}).",
                            ) from None
                        pcm = self._decode_item_audio(raw, f"{where}.content[{i}].audio")
                        if part["type"] == "input_audio":
                            audio = (audio or b"") + pcm
        elif data["type"] == "function_call":
            data["call_id"] = data.get("call_id") or ids.call_id()
        return StoredItem(data=data, input_audio=audio)

    def _check_approval(self, data: dict[str, Any], where: str) -> None:
        """An ``mcp_approval_response`` answers an ``mcp_approval_request`` of the
        conversation."""
        request_id = data.get("approval_request_id")
        request = self.store.get(str(request_id))
        if request is None or request.type != "mcp_approval_request":
            raise invalid_value(
                f"{where}.approval_request_id",
                f"Invalid '{where}.approval_request_id': no MCP approval request with id "
                f"'{echo(request_id)}' in the conversation.",
            )

    def _part_name(self, part_type: str) -> str:
        """A content part type as this connection's client names it."""
        if self.dialect is Dialect.PREVIEW:
            return PART_TO_PREVIEW.get(part_type, part_type)
        return part_type

    def _decode_item_audio(self, raw: bytes, param: str) -> bytes:
        fmt = self.config.input_format or "pcm16"
        if fmt == "pcm16":
            if len(raw) % 2:
                raise invalid_value(
                    param, f"Invalid '{param}': pcm16 audio must have an even number of bytes."
                )
            return raw
        pcm8k = ulaw_decode(raw) if fmt == "g711_ulaw" else alaw_decode(raw)
        return Resampler(8000, 24000).process(pcm8k)

    def _item_create(self, event: ev.ConversationItemCreate) -> None:
        previous = event.previous_item_id
        if previous is not None and previous != "root" and previous not in self.store:
            raise invalid_value(
                "previous_item_id", f"Previous item with id '{echo(previous)}' does not exist."
            )
        item = self._new_item(event.item, "item")
        if item.id in self.store:
            raise invalid_value("item.id", f"Item with id '{echo(item.id)}' already exists.")
        before = self.store.insert(item, previous)
        self.emit(
            {"type": "conversation.item.added", "previous_item_id": before, "item": item.wire()}
        )
        self.emit(
            {"type": "conversation.item.done", "previous_item_id": before, "item": item.wire()}
        )
        if item.input_audio and not _has_transcript(item):
            self.transcribe(item, announce=True)

    def _truncate(self, event: ev.ConversationItemTruncate) -> None:
        item = self._find(event.item_id)
        part = item.audio_part(event.content_index)
        if item.type != "message" or item.role != "assistant":
            raise ProtocolError(
                "Only model output audio messages can be truncated.",
                code="invalid_value",
                param="item_id",
            )
        if part is None:
            raise invalid_value(
                "content_index",
                f"Invalid 'content_index': item '{item.id}' has no content part "
                f"{event.content_index}.",
            )
        if part.get("type") != "output_audio":
            raise ProtocolError(
                "Only model output audio messages can be truncated.",
                code="invalid_value",
                param="content_index",
            )
        produced = item.audio_ms
        if event.audio_end_ms > produced:
            raise invalid_value(
                "audio_end_ms",
                f"Audio content of {int(produced)}ms is already shorter than "
                f"{event.audio_end_ms}ms",
            )
        item.truncate(event.content_index, event.audio_end_ms)
        self.emit(
            {
                "type": "conversation.item.truncated",
                "item_id": item.id,
                "content_index": event.content_index,
                "audio_end_ms": event.audio_end_ms,
            }
        )

    # ------------------------------------------------------------------ responses

    def _response_create(self, event: ev.ResponseCreate) -> None:
        if self.transcribing:
            raise ProtocolError(
                "Responses are not supported in transcription sessions: this session only "
                "transcribes its input audio.",
                code="invalid_value",
                param="type",
            )
        params = event.response
        context: list[StoredItem] | None = None
        if params is not None:
            if params.conversation not in (None, "auto", "none"):
                raise not_supported("response.conversation", params.conversation, ("auto", "none"))
            if params.max_output_tokens is not None:
                _check_max_tokens(params.max_output_tokens, "response.max_output_tokens")
            if params.output_modalities is not None:
                _check_modalities(params.output_modalities, "response.output_modalities")
            if params.metadata is not None:
                _check_metadata(params.metadata, "response.metadata")
            if params.tools is not None:
                _check_tools(params.tools, "response.tools")
            if params.tool_choice is not None:
                _check_tool_choice(params.tool_choice, "response.tool_choice")
            if params.audio is not None:
                self._check_response_audio(params.audio)
            if params.input is not None:
                context = [
                    self._input_item(item, f"response.input[{i}]")
                    for i, item in enumerate(params.input)
                ]
        out_of_band = params is not None and params.conversation == "none"
        if not out_of_band and self.active is not None and self.active.active:
            raise ProtocolError(
                "Conversation already has an active response in progress: "
                f"{self.active.id}. Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                param=None,
            )
        if out_of_band:
            running = sum(1 for run in self.runs.values() if run.plan.out_of_band and run.active)
            if running >= MAX_OUT_OF_BAND:
                raise ProtocolError(
                    f"Too many out-of-band responses in progress ({running}); at most "
                    f"{MAX_OUT_OF_BAND} run at once per session. Wait for a response.done, or "
                    "cancel one with response.cancel.",
                    code="too_many_active_responses",
                    param="response.conversation",
                )
        for item in context or []:  # new items; referenced ones are transcribed already
            if item.input_audio and item.transcript is None and not _has_transcript(item):
                self.transcribe(item, announce=False)
        self._start_response(params, context)

    def _input_item(self, model: Any, where: str) -> StoredItem:
        """An item of ``response.input``: a new one, or the conversation's item it references."""
        if isinstance(model, ev.ItemReference):
            item = self.store.get(model.id or "")
            if item is None:
                raise invalid_value(
                    f"{where}.id", f"Conversation item with id '{echo(model.id)}' does not exist."
                )
            return item
        return self._new_item(model, where)

    def _check_response_audio(self, audio: dict[str, Any]) -> None:
        for key in audio:
            if key != "output":
                raise unknown_parameter(f"response.audio.{key}")
        out = audio.get("output")
        if out is None:
            return
        if not isinstance(out, dict):
            raise invalid_type("response.audio.output", "an object", out)
        for key in out:
            if key not in ("format", "voice"):
                raise unknown_parameter(f"response.audio.output.{key}")
        if "voice" in out:
            _check_voice(out["voice"], "response.audio.output.voice")
        if "format" in out:
            read_ga_format(out["format"], "response.audio.output.format")

    def _start_response(
        self, params: ev.ResponseParams | None, context: list[StoredItem] | None
    ) -> ResponseRun:
        self.responses_started += 1
        config, params = _engine_voices(self.config, params)
        plan = plan_response(
            config, params, default_instructions=DEFAULT_INSTRUCTIONS, context=context
        )
        run_context = ResponseContext(
            emit=self.emit,
            conversation_id=self.conversation_id,
            store=self.store,
            brain=self.brain,
            speech=self.speech,
            input_end_ms=lambda: self.buffer.end_ms,
            # a reply prepared during the pause is for the conversation, never out of band
            claim_reply=None if plan.out_of_band else self.speculator.claim_reply,
            fail=self.faults.server_error_response == self.responses_started,
            on_done=self._response_finished,
            mcp=self.mcp,
        )
        run = ResponseRun(run_context, plan)
        self.runs[run.id] = run
        if not plan.out_of_band:
            self.active = run
            self._idle_from_ms = None
        run.start()
        return run

    def _response_finished(self, run: ResponseRun) -> None:
        if self.speech is not None:
            give_back_memory()  # the models' turn-sized buffers are freed by now
        self.runs.pop(run.id, None)
        if self.active is run:
            self.active = None
            if self._turn_detector is not None and not self._turn_detector.speaking:
                self._arm_idle_timeout(run)
        tokens = int((run.usage or {}).get("total_tokens") or 0)
        self.emit({"type": "rate_limits.updated", "rate_limits": self.rate_limits.spend(tokens)})
        if self._pending_auto_response and self.active is None and not self._closed:
            self._pending_auto_response = False
            self._start_response(None, None)

    def _auto_respond(self) -> None:
        if self.active is not None and self.active.active:
            self._pending_auto_response = True
            return
        self._start_response(None, None)

    def _response_cancel(self, event: ev.ResponseCancel) -> None:
        run = self.active if event.response_id is None else self.runs.get(event.response_id)
        if run is None or not run.active:
            raise ProtocolError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
                param=None,
            )
        run.cancel("client_cancelled")


def _check_modalities(mods: Sequence[str] | None, param: str) -> None:
    """``output_modalities``: one of ``["text"]`` and ``["audio"]`` (audio comes with its
    transcript); the GA service refuses both at once, and none."""
    if not mods:
        raise invalid_value(
            param, f"Invalid value for '{param}': output modalities must not be empty."
        )
    if len(set(mods)) > 1:  # worded as the service words it (audio comes with its transcript)
        raise invalid_value(
            param,
            f"Invalid modalities: {echo(repr(list(mods)))}. Supported combinations are: "
            "['text'] and ['audio'].",
        )


def _check_voice(voice: Any, param: str) -> None:
    """A built-in voice name or a custom voice object (``{"id": "voice_1234"}``)."""
    if isinstance(voice, dict):
        for key in voice:
            if key != "id":
                raise unknown_parameter(f"{param}.{key}")
        if "id" not in voice:
            raise missing_parameter(f"{param}.id")
        if not isinstance(voice["id"], str):
            raise invalid_type(f"{param}.id", "a string", voice["id"])
        return
    if not isinstance(voice, str) or voice not in GA_VOICES:
        raise not_supported(param, voice, GA_VOICES)


def engine_voice(voice: str | VoiceId | dict[str, Any] | None) -> str | None:
    """The engine voice a voice setting is spoken with: built-in names are themselves; a custom
    voice (``{"id": ...}``) maps onto one of them, always the same one for the same id."""
    if isinstance(voice, VoiceId):
        voice = voice.id
    elif isinstance(voice, dict):
        voice = str(voice.get("id"))
    else:
        return voice
    return GA_VOICES[zlib.crc32(voice.encode("utf-8")) % len(GA_VOICES)]


def _engine_voices(
    config: SessionConfig, params: ev.ResponseParams | None
) -> tuple[SessionConfig, ev.ResponseParams | None]:
    """The session and response settings with custom voices replaced by the engine's own (the
    session itself keeps, and echoes, what the client set)."""
    if isinstance(config.voice, VoiceId):
        config = config.model_copy(update={"voice": engine_voice(config.voice)})
    out = (params.audio or {}).get("output") if params is not None else None
    if params is not None and isinstance(out, dict) and isinstance(out.get("voice"), dict):
        audio = {**(params.audio or {}), "output": {**out, "voice": engine_voice(out["voice"])}}
        params = params.model_copy(update={"audio": audio})
    return config, params


def _has_transcript(item: StoredItem) -> bool:
    return any(
        p.get("type") == "input_audio" and p.get("transcript")
        for p in item.data.get("content") or []
    )


def _check_max_tokens(value: Any, param: str) -> None:
    if value == "inf":
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(param, "an integer or 'inf'", value)
    if not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise invalid_value(
            param,
            f"Invalid '{param}': integer below minimum value or above maximum value. Expected a "
            f"value between 1 and {MAX_OUTPUT_TOKENS}, or 'inf', but got {echo(value)} instead.",
        )


TOOL_TYPES = ("function", "mcp")
"""Tool types a session or response may offer (``mcp``: see ``engine/mcp.py``)."""


def _check_tools(tools: list[Any], where: str) -> None:
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict):
            raise invalid_type(at, "an object", tool)
        kind = tool.get("type", "function")
        if kind not in TOOL_TYPES or not isinstance(kind, str):
            raise not_supported(f"{at}.type", kind, TOOL_TYPES)
        if kind == "mcp":
            continue  # checked below, all together (labels must differ)
        for key in tool:
            if key not in ("type", "name", "description", "parameters"):
                raise unknown_parameter(f"{at}.{key}")
        if "name" not in tool:
            raise missing_parameter(f"{at}.name")
        name = tool["name"]
        if not isinstance(name, str):
            raise invalid_type(f"{at}.name", "a string", name)
        if not name:
            raise invalid_value(
                f"{at}.name",
                f"Invalid '{at}.name': empty string. Expected a string with minimum length 1, "
                "but got an empty string instead.",
            )
        if "description" in tool and not isinstance(tool["description"], (str, type(None))):
            raise invalid_type(f"{at}.description", "a string", tool["description"])
        if "parameters" in tool and not isinstance(tool["parameters"], (dict, type(None))):
            raise invalid_type(f"{at}.parameters", "an object", tool["parameters"])
    check_mcp_tools(tools, where)


def _check_tool_choice(choice: Any, param: str) -> None:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise not_supported(param, choice, ("auto", "none", "required"))
        return
    if not isinstance(choice, dict):
        raise invalid_type(param, "a string or an object", choice)
    kind = choice.get("type")
    if "type" not in choice:
        raise missing_parameter(f"{param}.type")
    if kind == "mcp":
        check_mcp_choice(choice, param)
        return
    if kind != "function":
        raise not_supported(f"{param}.type", kind, ("function", "mcp"))
    for key in choice:
        if key not in ("type", "name"):
            raise unknown_parameter(f"{param}.{key}")
    if "name" not in choice:
        raise missing_parameter(f"{param}.name")
    if not isinstance(choice["name"], str):
        raise invalid_type(f"{param}.name", "a string", choice["name"])


METADATA_KEYS = 16
METADATA_VALUE_CHARS = 512


def _check_metadata(metadata: dict[str, Any], param: str) -> None:
    """``metadata``: at most 16 pairs of strings (values up to 512 characters), as the service."""
    if len(metadata) > METADATA_KEYS:
        raise invalid_value(
            param,
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{METADATA_KEYS} properties, but got an object with {len(metadata)} properties "
            "instead.",
        )
    for key, value in metadata.items():
        at = f"{param}.{echo(key, 64)}"
        if not isinstance(value, str):
            raise invalid_type(at, "a string", value)
        if len(value) > METADATA_VALUE_CHARS:
            raise invalid_value(
                at,
                f"Invalid '{at}': string too long. Expected a string with maximum length "
                f"{METADATA_VALUE_CHARS}, but got a string with length {len(value)} instead.",
            )


def _check_open_fields(update: SessionConfig) -> None:
    """The session fields the model types loosely (``tracing``, ``truncation``, ``prompt``):
    of the JSON kinds the service takes."""
    if update.is_set("tracing"):
        tracing = update.tracing
        if isinstance(tracing, str):
            if tracing != "auto":
                raise not_supported("session.tracing", tracing, ("auto",))
        elif tracing is not None and not isinstance(tracing, dict):
            raise invalid_type("session.tracing", "'auto' or an object", tracing)
    if update.is_set("truncation"):
        truncation = update.truncation
        if isinstance(truncation, str):
            if truncation not in ("auto", "disabled"):
                raise not_supported("session.truncation", truncation, ("auto", "disabled"))
        elif truncation is not None and not isinstance(truncation, dict):
            raise invalid_type("session.truncation", "'auto', 'disabled' or an object", truncation)
    if update.is_set("prompt"):
        prompt = update.prompt
        if prompt is not None and not isinstance(prompt, dict):
            raise invalid_type("session.prompt", "an object", prompt)
    if update.is_set("client_secret"):  # the preview's: accepted, not used over a WebSocket
        secret = update.client_secret
        if secret is not None and not isinstance(secret, dict):
            raise invalid_type("session.client_secret", "an object", secret)
