"""One session configuration, rendered to the preview's flat shape or the GA's nested one.

Only the fields that were set are rendered, so a ``session.update`` stays partial, and an
explicit ``None`` is kept: ``turn_detection=None`` turns turn detection off (``null`` in GA; a
client sends ``{"type": "none"}`` to Azure's preview endpoint, ``null`` to other preview
endpoints; every preview endpoint echoes ``null`` in ``session.updated``).

``from_ga`` / ``from_preview`` read either shape back; with ``strict=True`` they refuse unknown or
wrong-dialect fields the way the service does (``Unknown parameter: 'session.type'``). A
transcription session (``type: "transcription"``) has its own, smaller shape: in GA the same
``session`` object without the realtime-only fields, in the preview the separate
``transcription_session.update`` / ``.updated`` (``*_preview_transcription``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import (
    ProtocolError,
    echo,
    from_validation,
    invalid_type,
    invalid_value,
    missing_parameter,
    not_supported,
    render_path,
    unknown_parameter,
)
from .params import error_to_preview

AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]

PREVIEW_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
GA_VOICES = (*PREVIEW_VOICES, "marin", "cedar")

_GA_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_FROM_GA_FORMAT = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def render(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class TurnDetection(_Strict):
    """``server_vad`` or ``semantic_vad``; VAD durations are integers (the spec says numbers)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0)
    silence_duration_ms: int | None = Field(default=None, ge=0)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = Field(default=None, ge=0)

    def render(self) -> dict[str, Any]:
        out = super().render()
        out["type"] = self.type
        return out


class Transcription(_Strict):
    """Input audio transcription; ``delay``, ``keywords`` and ``languages`` are GA-only."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class NoiseReduction(_Strict):
    """``strength`` is GA-only."""

    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class VoiceId(_Strict):
    """A GA custom voice (``{"id": "voice_1234"}``)."""

    id: str


class Reasoning(_Strict):
    """GA ``reasoning``: stored and echoed (a local engine has no reasoning effort to set)."""

    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


TRANSCRIPTION_MODELS = (
    "whisper-1",
    "gpt-transcribe",
    "gpt-live-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
)
"""The transcription models the service knows (any other is refused, naming
``audio.input.transcription.model``)."""

_PREVIEW_TRANSCRIPTION_KEYS = {"model", "language", "prompt"}
_PREVIEW_NOISE_KEYS = {"type"}
_PREVIEW_TD_KEYS = {  # the preview's turn detection (GA adds idle_timeout_ms)
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "eagerness",
    "create_response",
    "interrupt_response",
}
_PREVIEW_TRANSCRIPTION_TD_KEYS = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms")
"""What the preview's ``transcription_session.updated`` shows of turn detection."""


class SessionConfig(BaseModel):
    """The session of a conversation, independent of the dialect it travels in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    type: Literal["realtime", "transcription"] | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    voice: str | VoiceId | None = None
    speed: float | None = Field(default=None, ge=0.25, le=1.5)
    input_format: AudioFormat | None = None
    output_format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: NoiseReduction | None = None
    temperature: float | None = Field(default=None, ge=0.6, le=1.2)
    max_output_tokens: int | Literal["inf"] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    include: list[str] | None = None
    tracing: Any = None
    truncation: Any = None
    prompt: Any = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    client_secret: Any = None
    """The preview's ``client_secret`` (a REST session's key settings): accepted, never shown."""

    # ------------------------------------------------------------------ merging

    def merged(self, update: SessionConfig) -> SessionConfig:
        """This configuration with the fields that ``update`` sets replaced."""
        data = {name: getattr(self, name) for name in self.model_fields_set}
        data.update({name: getattr(update, name) for name in update.model_fields_set})
        return SessionConfig.model_validate(
            {
                k: (v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v)
                for k, v in data.items()
            }
        )

    def is_set(self, name: str) -> bool:
        return name in self.model_fields_set

    @property
    def transcription_only(self) -> bool:
        """A transcription session: input audio is transcribed, nothing is answered."""
        return self.type == "transcription"

    @property
    def audio_out(self) -> bool:
        return self.output_modalities is None or "audio" in self.output_modalities

    # ------------------------------------------------------------------ GA shape

    def to_ga(self) -> dict[str, Any]:
        """The GA ``session`` object (``type`` always present, as the GA service requires)."""
        s = self.model_fields_set
        out: dict[str, Any] = {"type": self.type or "realtime"}
        for name in _GA_TRANSCRIPTION_FIELDS if self.transcription_only else _GA_FIELDS:
            if name in s:
                value = getattr(self, name)
                out[name] = value.render() if isinstance(value, _Strict) else value
        audio_in: dict[str, Any] = {}
        if "input_format" in s and self.input_format:
            audio_in["format"] = dict(_GA_FORMATS[self.input_format])
        if "transcription" in s:
            audio_in["transcription"] = self.transcription.render() if self.transcription else None
        if "turn_detection" in s:
            audio_in["turn_detection"] = (
                self.turn_detection.render() if self.turn_detection else None
            )
        if "noise_reduction" in s:
            audio_in["noise_reduction"] = (
                self.noise_reduction.render() if self.noise_reduction else None
            )
        audio_out: dict[str, Any] = {}
        if "output_format" in s and self.output_format:
            audio_out["format"] = dict(_GA_FORMATS[self.output_format])
        if "voice" in s:
            audio_out["voice"] = (
                self.voice.render() if isinstance(self.voice, VoiceId) else self.voice
            )
        if "speed" in s:
            audio_out["speed"] = self.speed
        if self.transcription_only:
            audio_out = {}  # a transcription session has no output
        audio: dict[str, Any] = {}
        if audio_in:
            audio["input"] = audio_in
        if audio_out:
            audio["output"] = audio_out
        if audio:
            out["audio"] = audio
        return out

    @classmethod
    def from_ga(cls, session: dict[str, Any], *, strict: bool = False) -> SessionConfig:
        """Read a GA ``session`` object. ``strict`` refuses what the GA service refuses."""
        transcription_only = session.get("type") == "transcription"
        if strict:
            _check_keys(
                session, _GA_TRANSCRIPTION_TOP if transcription_only else _GA_TOP, "session"
            )
        data: dict[str, Any] = {}
        for name in ("type", *_GA_FIELDS):
            if name in session:
                data[name] = session[name]
        audio = session.get("audio")
        if audio is not None:
            if not isinstance(audio, dict):
                raise invalid_type("session.audio", "an object", audio)
            if strict:
                _check_keys(
                    audio, {"input"} if transcription_only else {"input", "output"}, "session.audio"
                )
            ain = _object(audio.get("input"), "session.audio.input")
            aout = _object(audio.get("output"), "session.audio.output")
            if strict:
                _check_keys(
                    ain,
                    {"format", "transcription", "turn_detection", "noise_reduction"},
                    "session.audio.input",
                )
                _check_keys(aout, {"format", "voice", "speed"}, "session.audio.output")
            if "format" in ain:
                data["input_format"] = read_ga_format(
                    ain["format"], "session.audio.input.format", strict=strict
                )
            for name in ("transcription", "turn_detection", "noise_reduction"):
                if name in ain:
                    data[name] = ain[name]
            if "format" in aout:
                data["output_format"] = read_ga_format(
                    aout["format"], "session.audio.output.format", strict=strict
                )
            if "voice" in aout:
                data["voice"] = aout["voice"]
            if "speed" in aout:
                data["speed"] = aout["speed"]
        return _validate(data, strict=strict)

    # ------------------------------------------------------------------ preview shape

    def to_preview(self, *, azure: bool = True) -> dict[str, Any]:
        """The preview's flat ``session`` object.

        ``azure`` renders "turn detection off" as ``{"type": "none"}``, which Azure's preview
        endpoint expects; other preview endpoints take ``null``.
        """
        s = self.model_fields_set
        out: dict[str, Any] = {}
        for name in ("model", "instructions", "tools", "tool_choice", "temperature", "tracing"):
            if name in s:
                out[name] = getattr(self, name)
        if "output_modalities" in s and self.output_modalities is not None:
            out["modalities"] = ["text", "audio"] if "audio" in self.output_modalities else ["text"]
        if "voice" in s:
            out["voice"] = self.voice.id if isinstance(self.voice, VoiceId) else self.voice
        if "speed" in s:
            out["speed"] = self.speed
        if "input_format" in s:
            out["input_audio_format"] = self.input_format
        if "output_format" in s:
            out["output_audio_format"] = self.output_format
        if "transcription" in s:
            out["input_audio_transcription"] = _only(
                self.transcription, _PREVIEW_TRANSCRIPTION_KEYS
            )
        if "turn_detection" in s:
            if self.turn_detection is None:
                out["turn_detection"] = {"type": "none"} if azure else None
            else:
                out["turn_detection"] = _only(self.turn_detection, _PREVIEW_TD_KEYS)
        if "noise_reduction" in s:
            out["input_audio_noise_reduction"] = _only(self.noise_reduction, _PREVIEW_NOISE_KEYS)
        if "max_output_tokens" in s:
            out["max_response_output_tokens"] = self.max_output_tokens
        return out

    @classmethod
    def from_preview(cls, session: dict[str, Any], *, strict: bool = False) -> SessionConfig:
        """Read a preview ``session`` object. ``strict`` refuses what the preview refuses."""
        if strict:
            _check_keys(session, _PREVIEW_TOP, "session")
            _check_preview_nested(session)
            if isinstance(session.get("voice"), dict):  # custom voices are GA's
                raise invalid_type("session.voice", "a string", session["voice"])
        data = _from_preview_fields(
            session,
            (
                "model",
                "instructions",
                "tools",
                "tool_choice",
                "temperature",
                "voice",
                "speed",
                "tracing",
                "client_secret",
            ),
        )
        return _validate_preview(data, strict=strict)

    # ------------------------------------------------------------------ preview transcription

    def to_preview_transcription(self) -> dict[str, Any]:
        """The preview's transcription session (``transcription_session.updated``): only what
        openai's preview ``TranscriptionSession`` shows (no ``client_secret`` on a WebSocket)."""
        s = self.model_fields_set
        out: dict[str, Any] = {}
        if "output_modalities" in s and self.output_modalities is not None:
            out["modalities"] = ["text", "audio"] if "audio" in self.output_modalities else ["text"]
        if "input_format" in s:
            out["input_audio_format"] = self.input_format
        if "transcription" in s:
            out["input_audio_transcription"] = _only(
                self.transcription, _PREVIEW_TRANSCRIPTION_KEYS
            )
        if "turn_detection" in s:
            out["turn_detection"] = _only(self.turn_detection, _PREVIEW_TRANSCRIPTION_TD_KEYS)
        return out

    @classmethod
    def from_preview_transcription(
        cls, session: dict[str, Any], *, strict: bool = False
    ) -> SessionConfig:
        """Read the preview's ``transcription_session.update`` session (``type`` is
        ``transcription``). ``strict`` refuses what the preview refuses."""
        if strict:
            _check_keys(session, _PREVIEW_TRANSCRIPTION_TOP, "session")
            _check_preview_nested(session)
        fields = _from_preview_fields(
            session, ("include", "client_secret"), renamed=_PREVIEW_TRANSCRIPTION_RENAMED
        )
        data = {"type": "transcription", **fields}
        return _validate_preview(data, strict=strict)


_PREVIEW_RENAMED = {
    "input_audio_format": "input_format",
    "output_audio_format": "output_format",
    "input_audio_transcription": "transcription",
    "input_audio_noise_reduction": "noise_reduction",
    "max_response_output_tokens": "max_output_tokens",
}
"""Preview session fields and the names this model keeps them under."""
_PREVIEW_TRANSCRIPTION_RENAMED = {
    k: v
    for k, v in _PREVIEW_RENAMED.items()
    if k not in ("output_audio_format", "max_response_output_tokens")
}
"""The same for a preview transcription session, which has no output or response limit."""


def _from_preview_fields(
    session: dict[str, Any], same: tuple[str, ...], *, renamed: dict[str, str] = _PREVIEW_RENAMED
) -> dict[str, Any]:
    """A preview session's fields under this model's names: ``same`` as they are, the
    ``renamed`` ones renamed, ``modalities`` read, turn detection off as None; only fields
    present in ``session`` are set."""
    data: dict[str, Any] = {name: session[name] for name in same if name in session}
    if "modalities" in session:
        data["output_modalities"] = preview_modalities(session["modalities"], "session")
    for preview, ours in renamed.items():
        if preview in session:
            data[ours] = session[preview]
    if "turn_detection" in session:
        td = session["turn_detection"]
        off = td is None or (isinstance(td, dict) and td.get("type") == "none")
        data["turn_detection"] = None if off else td
    return data


def _validate_preview(data: dict[str, Any], *, strict: bool) -> SessionConfig:
    try:
        return _validate(data, strict=strict)
    except ProtocolError as exc:  # named in GA terms: rename for the preview's client
        error = error_to_preview(exc.to_error())
        exc.param, exc.message = error["param"], error["message"]
        exc.args = (exc.message,)
        raise


def _only(value: BaseModel | None, keys: Any) -> dict[str, Any] | None:
    """A nested setting rendered with only the fields ``keys`` names (``None`` stays ``None``)."""
    if value is None:
        return None
    out = value.model_dump(mode="json", exclude_unset=True)
    if "type" in type(value).model_fields and "type" in keys:
        out["type"] = getattr(value, "type")  # noqa: B009 - not every model has a type
    return {k: v for k, v in out.items() if k in keys}


def _check_preview_nested(session: dict[str, Any]) -> None:
    """The preview's nested settings know fewer fields than GA's (no ``delay``, ``strength``,
    ``idle_timeout_ms``): refused by the preview's name."""
    for key, allowed in (
        ("input_audio_transcription", _PREVIEW_TRANSCRIPTION_KEYS),
        ("input_audio_noise_reduction", _PREVIEW_NOISE_KEYS),
        ("turn_detection", _PREVIEW_TD_KEYS),
    ):
        value = session.get(key)
        if isinstance(value, dict):
            _check_keys(value, allowed, f"session.{key}")


_GA_FIELDS = (
    "model",
    "instructions",
    "output_modalities",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "include",
    "tracing",
    "truncation",
    "prompt",
    "parallel_tool_calls",
    "reasoning",
)
"""The GA realtime session's top-level fields that keep their name (``audio`` is nested)."""
_GA_TRANSCRIPTION_FIELDS = ("include",)
"""A GA transcription session's (besides ``type`` and ``audio.input``)."""
_IDENTITY = {"object", "id", "expires_at"}
_GA_TOP = {"type", "audio", *_GA_FIELDS, *_IDENTITY}
_GA_TRANSCRIPTION_TOP = {"type", "audio", *_GA_TRANSCRIPTION_FIELDS, *_IDENTITY}
_PREVIEW_TOP = {
    "model",
    "instructions",
    "modalities",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "turn_detection",
    "input_audio_noise_reduction",
    "temperature",
    "max_response_output_tokens",
    "tools",
    "tool_choice",
    "speed",
    "tracing",
    "client_secret",
    "object",
    "id",
    "expires_at",
}
_PREVIEW_TRANSCRIPTION_TOP = {
    "modalities",
    "input_audio_format",
    "input_audio_transcription",
    "turn_detection",
    "input_audio_noise_reduction",
    "include",
    "client_secret",
    "object",
    "id",
    "expires_at",
}
# Where each SessionConfig field lives on the GA wire, to name the parameter in errors (the
# preview's names are GA's renamed by protocol/dialect.py's PREVIEW_PARAMS).
_GA_PATHS = {
    "input_format": "session.audio.input.format",
    "output_format": "session.audio.output.format",
    "transcription": "session.audio.input.transcription",
    "turn_detection": "session.audio.input.turn_detection",
    "noise_reduction": "session.audio.input.noise_reduction",
    "voice": "session.audio.output.voice",
    "speed": "session.audio.output.speed",
}
_GA_FORMAT_NAMES = tuple(_FROM_GA_FORMAT)


def preview_modalities(mods: Any, where: str) -> list[Any]:
    """A preview ``modalities`` list as GA ``output_modalities`` (``["text", "audio"]`` is
    ``["audio"]``); refused, naming ``{where}.modalities``, when it is not a list of
    ``"text"``/``"audio"``, or is audio without text (as the preview service refuses it)."""
    param = f"{where}.modalities"
    if not isinstance(mods, list):
        raise invalid_type(param, "an array", mods)
    for i, mod in enumerate(mods):
        if mod not in ("text", "audio") or not isinstance(mod, str):
            raise not_supported(f"{param}[{i}]", mod, ("text", "audio"))
    if not mods:
        return []  # refused by whoever requires one (the engine), in its own words
    if "audio" in mods and "text" not in mods:  # the preview's audio comes with its text
        raise invalid_value(
            param,
            f"Invalid modalities: {echo(repr(mods))}. Supported combinations are: ['text'] and "
            "['audio', 'text'].",
        )
    return ["audio"] if "audio" in mods else ["text"]


def _object(value: Any, where: str) -> dict[str, Any]:
    """An optional object field: absent or ``null`` is empty; anything but an object is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_type(where, "an object", value)
    return value


def _check_keys(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise invalid_type(where, "an object", obj)
    for key in obj:
        if key not in allowed:
            raise unknown_parameter(f"{where}.{key}")


def read_ga_format(fmt: Any, where: str, *, strict: bool = True) -> str:
    """A GA audio format object (``{"type": "audio/pcm", "rate": 24000}``) as the preview's
    format name; refused naming ``where`` (``session.audio.input.format``) and its fields.
    ``strict`` also refuses fields the format does not have."""
    if not isinstance(fmt, dict):
        raise invalid_type(where, "an object", fmt)
    if "type" not in fmt:
        raise missing_parameter(f"{where}.type")
    kind = fmt["type"]
    if not isinstance(kind, str) or kind not in _FROM_GA_FORMAT:
        raise not_supported(f"{where}.type", kind, _GA_FORMAT_NAMES)
    if strict:
        _check_keys(fmt, {"type", "rate"} if kind == "audio/pcm" else {"type"}, where)
    if kind == "audio/pcm" and "rate" in fmt:
        rate = fmt["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise invalid_type(f"{where}.rate", "an integer", rate)
        if rate != 24000:
            raise invalid_value(
                f"{where}.rate",
                f"Invalid value for '{where}.rate': {rate!r}. Supported values are: 24000.",
            )
    return _FROM_GA_FORMAT[kind]


def _session_param(path: list[str | int]) -> str:
    """A SessionConfig field path as the GA parameter (``session.audio.input.turn_detection``)."""
    if not path:
        return "session"
    head = str(path[0])
    return render_path([_GA_PATHS.get(head, f"session.{head}"), *path[1:]])


def _validate(data: dict[str, Any], *, strict: bool) -> SessionConfig:
    """``strict`` (a client's session): no value is converted (``true`` is not ``1``, ``"1"``
    is not a number; an integer is a number); refusals name the GA parameter."""
    try:
        return SessionConfig.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise from_validation(exc, SessionConfig, name=_session_param) from None
