"""Typed client and server events: one vocabulary for both dialects.

The vocabulary is the GA one (``response.output_audio.delta``, ``conversation.item.added``,
content parts ``output_text`` / ``output_audio``). Preview wire events are translated into it by
:mod:`aoai_realtime.protocol.dialect`; events that exist only in the preview
(``conversation.created``, ``conversation.item.created``) have models here too.

Server events are tolerant: unknown fields are kept, and an event type this module does not know
becomes an :class:`UnknownEvent` carrying the raw data; nothing is printed, nothing raises.
Client events are strict (``extra="forbid"``): the local engine validates with them and answers
with the service's ``error`` event when a field is unknown or wrong.

Corrections to the public preview spec (see the protocol notes): ``response.text.done`` carries
``text``; ``conversation.item.truncated`` carries ``content_index``; VAD durations are integers;
``function_call_output`` items may arrive without ``status``; transcription deltas exist.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ProtocolError, echo, from_validation, missing_parameter, unknown_parameter

ItemStatus = Literal["completed", "incomplete", "in_progress"]

# --------------------------------------------------------------------------------------------
# Conversation items and their content parts
# --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    """Tolerant model: unknown fields from newer service versions are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        """Wire form: fields that are ``None`` are left out."""
        return self.model_dump(mode="json", exclude_none=True)


class InputText(_Model):
    type: Literal["input_text"] = "input_text"
    text: str = ""


class InputAudio(_Model):
    type: Literal["input_audio"] = "input_audio"
    audio: str | None = None
    transcript: str | None = None


class InputImage(_Model):
    type: Literal["input_image"] = "input_image"
    image_url: str | None = None
    detail: str | None = None


class OutputText(_Model):
    type: Literal["output_text"] = "output_text"
    text: str = ""


class OutputAudio(_Model):
    type: Literal["output_audio"] = "output_audio"
    audio: str | None = None
    transcript: str | None = None


class ItemReference(_Model):
    """An existing item named by its ``id``: in ``response.create``'s ``input`` (the only place
    the service accepts a reference as an item), and as a preview content part."""

    type: Literal["item_reference"] = "item_reference"
    id: str | None = None


ContentPart = Annotated[
    Union[InputText, InputAudio, InputImage, OutputText, OutputAudio, ItemReference],
    Field(discriminator="type"),
]


class MessageItem(_Model):
    type: Literal["message"] = "message"
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    role: Literal["user", "assistant", "system"]
    status: ItemStatus | None = None
    content: list[ContentPart] = Field(default_factory=list)


class FunctionCallItem(_Model):
    type: Literal["function_call"] = "function_call"
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: ItemStatus | None = None
    call_id: str | None = None
    name: str = ""
    arguments: str = ""


class FunctionCallOutputItem(_Model):
    type: Literal["function_call_output"] = "function_call_output"
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: ItemStatus | None = None  # may be absent: the service omits it
    call_id: str
    output: str


class McpApprovalResponseItem(_Model):
    """The client's answer to an ``mcp_approval_request`` item (GA): run the call or not."""

    type: Literal["mcp_approval_response"] = "mcp_approval_response"
    id: str | None = None
    approval_request_id: str
    approve: bool
    reason: str | None = None


Item = Annotated[
    Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, McpApprovalResponseItem],
    Field(discriminator="type"),
]


ResponseInputItem = Annotated[
    Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ItemReference],
    Field(discriminator="type"),
]
"""An item of ``response.create``'s ``input``: a new item, or a reference to an existing one."""


def user_text(text: str) -> MessageItem:
    """A user message item with one ``input_text`` part."""
    return MessageItem(role="user", content=[InputText(text=text)])


def user_audio(audio_b64: str) -> MessageItem:
    """A user message item with one ``input_audio`` part (base64 audio in the session format)."""
    return MessageItem(role="user", content=[InputAudio(audio=audio_b64)])


def function_output(call_id: str, output: str) -> FunctionCallOutputItem:
    return FunctionCallOutputItem(call_id=call_id, output=output)


# --------------------------------------------------------------------------------------------
# Pieces of server events
# --------------------------------------------------------------------------------------------


class ErrorDetail(_Model):
    type: str = "invalid_request_error"
    code: str | None = None
    message: str = ""
    param: str | None = None
    event_id: str | None = None


class ResponseStatusDetails(_Model):
    type: str | None = None
    reason: str | None = None
    error: ErrorDetail | None = None


class Usage(_Model):
    total_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_token_details: dict[str, Any] | None = None
    output_token_details: dict[str, Any] | None = None


class Response(_Model):
    id: str | None = None
    object: Literal["realtime.response"] | None = None
    status: Literal["in_progress", "completed", "cancelled", "incomplete", "failed"] | None = None
    status_details: ResponseStatusDetails | None = None
    output: list[Item] = Field(default_factory=list)
    output_modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    conversation_id: str | None = None
    metadata: dict[str, Any] | None = None
    usage: Usage | None = None


class ContentPartRef(_Model):
    """The ``part`` of ``response.content_part.*``: type ``text`` or ``audio`` in both dialects."""

    type: Literal["text", "audio"] | None = None
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class RateLimit(_Model):
    name: str | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


# --------------------------------------------------------------------------------------------
# Server events
# --------------------------------------------------------------------------------------------


class ServerEvent(_Model):
    """Base of every event the service sends."""

    type: str
    event_id: str | None = None


class UnknownEvent(ServerEvent):
    """An event type this SDK does not know: kept whole (``model_extra``), never an error."""


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail


class SessionCreated(ServerEvent):
    """``session`` is kept in the GA wire shape; :attr:`config` reads it as a SessionConfig."""

    type: Literal["session.created"] = "session.created"
    session: dict[str, Any]

    @property
    def config(self) -> Any:
        from .session import SessionConfig

        return SessionConfig.from_ga(self.session)


class SessionUpdated(SessionCreated):
    type: Literal["session.updated"] = "session.updated"  # type: ignore[assignment]


class ConversationCreated(ServerEvent):
    """Preview only."""

    type: Literal["conversation.created"] = "conversation.created"
    conversation: dict[str, Any] = Field(default_factory=dict)


class ConversationItemAdded(ServerEvent):
    type: Literal["conversation.item.added"] = "conversation.item.added"
    previous_item_id: str | None = None
    item: Item


class ConversationItemDone(ServerEvent):
    type: Literal["conversation.item.done"] = "conversation.item.done"
    previous_item_id: str | None = None
    item: Item


class ConversationItemCreated(ServerEvent):
    """Preview name of ``conversation.item.added`` (the dialect layer renames it)."""

    type: Literal["conversation.item.created"] = "conversation.item.created"
    previous_item_id: str | None = None
    item: Item


class ConversationItemRetrieved(ServerEvent):
    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: Item


class ConversationItemDeleted(ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ConversationItemTruncated(ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int = 0
    audio_end_ms: int


class TranscriptionDelta(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str = ""


class TranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str = ""
    usage: dict[str, Any] | None = None


class TranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: ErrorDetail


class InputAudioBufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    previous_item_id: str | None = None
    item_id: str


class InputAudioBufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class SpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class TimeoutTriggered(ServerEvent):
    type: Literal["input_audio_buffer.timeout_triggered"] = "input_audio_buffer.timeout_triggered"
    audio_start_ms: int = 0
    audio_end_ms: int = 0
    item_id: str | None = None


class ResponseCreated(ServerEvent):
    type: Literal["response.created"] = "response.created"
    response: Response


class ResponseDone(ServerEvent):
    type: Literal["response.done"] = "response.done"
    response: Response


class OutputItemAdded(ServerEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int = 0
    item: Item


class OutputItemDone(ServerEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int = 0
    item: Item


class ContentPartAdded(ServerEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: ContentPartRef


class ContentPartDone(ServerEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: ContentPartRef


class _ContentEvent(ServerEvent):
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class OutputTextDelta(_ContentEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class OutputTextDone(_ContentEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str = ""


class OutputAudioDelta(_ContentEvent):
    """``delta`` is base64 audio in the session's output format."""

    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str


class OutputAudioDone(_ContentEvent):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class OutputAudioTranscriptDelta(_ContentEvent):
    type: Literal["response.output_audio_transcript.delta"] = (
        "response.output_audio_transcript.delta"
    )
    delta: str


class OutputAudioTranscriptDone(_ContentEvent):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str = ""


class FunctionCallArgumentsDelta(ServerEvent):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    response_id: str
    item_id: str
    output_index: int = 0
    call_id: str
    delta: str


class FunctionCallArgumentsDone(ServerEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    response_id: str
    item_id: str
    output_index: int = 0
    call_id: str
    name: str | None = None
    arguments: str


class RateLimitsUpdated(ServerEvent):
    type: Literal["rate_limits.updated"] = "rate_limits.updated"
    rate_limits: list[RateLimit] = Field(default_factory=list)


class OutputAudioBufferStarted(ServerEvent):
    type: Literal["output_audio_buffer.started"] = "output_audio_buffer.started"
    response_id: str | None = None


class OutputAudioBufferStopped(ServerEvent):
    type: Literal["output_audio_buffer.stopped"] = "output_audio_buffer.stopped"
    response_id: str | None = None


class OutputAudioBufferCleared(ServerEvent):
    type: Literal["output_audio_buffer.cleared"] = "output_audio_buffer.cleared"
    response_id: str | None = None


SERVER_EVENTS: dict[str, type[ServerEvent]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        ErrorEvent,
        SessionCreated,
        SessionUpdated,
        ConversationCreated,
        ConversationItemAdded,
        ConversationItemDone,
        ConversationItemCreated,
        ConversationItemRetrieved,
        ConversationItemDeleted,
        ConversationItemTruncated,
        TranscriptionDelta,
        TranscriptionCompleted,
        TranscriptionFailed,
        InputAudioBufferCommitted,
        InputAudioBufferCleared,
        SpeechStarted,
        SpeechStopped,
        TimeoutTriggered,
        ResponseCreated,
        ResponseDone,
        OutputItemAdded,
        OutputItemDone,
        ContentPartAdded,
        ContentPartDone,
        OutputTextDelta,
        OutputTextDone,
        OutputAudioDelta,
        OutputAudioDone,
        OutputAudioTranscriptDelta,
        OutputAudioTranscriptDone,
        FunctionCallArgumentsDelta,
        FunctionCallArgumentsDone,
        RateLimitsUpdated,
        OutputAudioBufferStarted,
        OutputAudioBufferStopped,
        OutputAudioBufferCleared,
    )
}


def _load(data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            f"The message is not valid JSON: {exc}.", code="invalid_json", param=None
        ) from exc
    if not isinstance(obj, dict):
        raise ProtocolError(
            "An event must be a JSON object with a 'type'.", code="invalid_event", param=None
        )
    return obj


def parse_server_event(data: str | bytes | dict[str, Any]) -> ServerEvent:
    """Parse one server event (GA vocabulary). Never raises for an unknown or odd event.

    An unknown type, or a known type whose fields do not fit, becomes an :class:`UnknownEvent`
    with every field kept, so a newer service never breaks an older client.
    """
    obj = _load(data)
    cls = SERVER_EVENTS.get(obj.get("type", ""))
    if cls is not None:
        try:
            return cls.model_validate(obj)
        except ValidationError:
            pass
    if not isinstance(obj.get("type"), str):
        obj = {**obj, "type": str(obj.get("type", ""))}
    return UnknownEvent.model_validate(obj)


# --------------------------------------------------------------------------------------------
# Client events
# --------------------------------------------------------------------------------------------


class ClientEvent(BaseModel):
    """Base of every event a client sends. Strict: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    type: str
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class SessionUpdate(ClientEvent):
    """``session`` is the wire shape of the dialect it is sent in; build it with SessionConfig."""

    type: Literal["session.update"] = "session.update"
    session: dict[str, Any]


class InputAudioBufferAppend(ClientEvent):
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str


class InputAudioBufferCommit(ClientEvent):
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"


class InputAudioBufferClear(ClientEvent):
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class OutputAudioBufferClear(ClientEvent):
    type: Literal["output_audio_buffer.clear"] = "output_audio_buffer.clear"


class ConversationItemCreate(ClientEvent):
    type: Literal["conversation.item.create"] = "conversation.item.create"
    previous_item_id: str | None = None
    item: Item


class ConversationItemRetrieve(ClientEvent):
    type: Literal["conversation.item.retrieve"] = "conversation.item.retrieve"
    item_id: str


class ConversationItemTruncate(ClientEvent):
    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(ClientEvent):
    type: Literal["conversation.item.delete"] = "conversation.item.delete"
    item_id: str


class ResponseCreate(ClientEvent):
    """``response`` is in the GA shape (see :class:`ResponseParams`)."""

    type: Literal["response.create"] = "response.create"
    response: ResponseParams | None = None


class ResponseParams(BaseModel):
    """Per-response overrides of ``response.create`` (GA shape)."""

    model_config = ConfigDict(extra="forbid")
    conversation: str | None = None
    input: list[ResponseInputItem] | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    metadata: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None  # GA; stored, not acted on by the local engine
    temperature: float | None = None  # preview only; kept so a relay can translate it


ResponseCreate.model_rebuild()


class ResponseCancel(ClientEvent):
    type: Literal["response.cancel"] = "response.cancel"
    response_id: str | None = None


CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        SessionUpdate,
        InputAudioBufferAppend,
        InputAudioBufferCommit,
        InputAudioBufferClear,
        OutputAudioBufferClear,
        ConversationItemCreate,
        ConversationItemRetrieve,
        ConversationItemTruncate,
        ConversationItemDelete,
        ResponseCreate,
        ResponseCancel,
    )
}


_CLIENT_MODELS: dict[str, Any] = {}  # by class name: what a ValidationError's title names


def validation_to_protocol_error(
    exc: ValidationError, event_id: str | None, model: Any = None
) -> ProtocolError:
    """Turn pydantic's first complaint into the service's wording, naming the parameter as a
    field path (``response.input[0].content[0].text``, no union tags).

    ``model`` is what was validated; by default the client model the error's title names.
    """
    if model is None:
        if not _CLIENT_MODELS:
            models: list[type[BaseModel]] = [*CLIENT_EVENTS.values(), ResponseParams]
            _CLIENT_MODELS.update({cls.__name__: cls for cls in models})
        model = _CLIENT_MODELS.get(exc.title, Any)
    return from_validation(exc, model, event_id=event_id)


def parse_client_event(data: str | bytes | dict[str, Any]) -> ClientEvent:
    """Parse and validate one client event (GA vocabulary) as the service does.

    Raises :class:`ProtocolError` with the code and parameter the service would name.
    """
    obj = _load(data)
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise missing_parameter("type", event_id)
    cls = CLIENT_EVENTS.get(kind)
    if cls is None:
        raise ProtocolError(
            f"Invalid value: '{echo(kind)}'. Supported values are: "
            + ", ".join(f"'{t}'" for t in CLIENT_EVENTS)
            + ".",
            code="invalid_value",
            param="type",
            event_id=event_id,
        )
    try:
        # strict: a client's value is never converted (true is not 1, "1" is not a number)
        event = cls.model_validate(obj, strict=True)
    except ValidationError as exc:
        raise validation_to_protocol_error(exc, event_id, cls) from None
    if isinstance(event, ConversationItemCreate):
        check_item_fields(obj["item"], "item", event_id)
    elif isinstance(event, ResponseCreate) and event.response and event.response.input:
        for i, item in enumerate(obj["response"]["input"]):
            check_item_fields(item, f"response.input[{i}]", event_id)
    return event


_ITEM_FIELDS = {
    "message": {"type", "id", "object", "role", "status", "content"},
    "function_call": {"type", "id", "object", "status", "call_id", "name", "arguments"},
    "function_call_output": {"type", "id", "object", "status", "call_id", "output"},
    "mcp_approval_response": {"type", "id", "approval_request_id", "approve", "reason"},
    "item_reference": {"type", "id"},  # response.input only (conversation items refuse it)
}
_PART_FIELDS = {
    "input_text": {"type", "text"},
    "input_audio": {"type", "audio", "transcript"},
    "input_image": {"type", "image_url", "detail"},
    "output_text": {"type", "text"},
    "output_audio": {"type", "audio", "transcript"},
    "item_reference": {"type", "id"},
}


def check_item_fields(item: dict[str, Any], where: str, event_id: str | None = None) -> None:
    """Refuse unknown fields in a client's item, as the service does (items parse tolerantly)."""
    for key in item:
        if key not in _ITEM_FIELDS.get(item.get("type", ""), set()):
            raise unknown_parameter(f"{where}.{key}", event_id)
    if item.get("type") == "item_reference" and not item.get("id"):
        raise missing_parameter(f"{where}.id", event_id)
    for i, part in enumerate(item.get("content") or []):
        for key in part:
            if key not in _PART_FIELDS.get(part.get("type", ""), set()):
                raise unknown_parameter(f"{where}.content[{i}].{key}", event_id)


ITEM_ADAPTER: TypeAdapter[Any] = TypeAdapter(Item)


def parse_item(
    data: dict[str, Any],
) -> MessageItem | FunctionCallItem | FunctionCallOutputItem | McpApprovalResponseItem:
    """Parse one conversation item (GA content part names)."""
    result: MessageItem | FunctionCallItem | FunctionCallOutputItem | McpApprovalResponseItem = (
        ITEM_ADAPTER.validate_python(data)
    )
    return result
