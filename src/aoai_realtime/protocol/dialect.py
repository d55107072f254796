"""Wire translation between the preview dialect and the GA vocabulary, on plain dicts.

Four directions, one per side of a connection:

* a client on a preview endpoint: ``ga_to_preview_client`` out, ``preview_to_ga_server`` in;
* a server (the local engine) serving a preview client: ``preview_to_ga_client`` in,
  ``ga_to_preview_server`` out.

Each function returns a list, since one event can become zero or two in the other dialect
(preview's ``conversation.item.created`` is GA's ``conversation.item.added`` and, for a finished
item, ``conversation.item.done``; GA's ``conversation.item.done`` has no preview twin).
Events that need no change are passed through as the same object (no copy on the hot path).
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from .errors import (
    ProtocolError,
    echo,
    invalid_type,
    missing_parameter,
    not_supported,
    out_of_range,
    unknown_parameter,
)
from .params import (
    error_to_ga,
    error_to_preview,
)
from .session import SessionConfig, preview_modalities


class Dialect(str, enum.Enum):
    GA = "ga"
    PREVIEW = "preview"


DialectName = Literal["ga", "preview"]
"""A dialect as a plain string (settings, URLs, JSON): the one declaration every part uses."""

PREVIEW_SERVER_NAMES: dict[str, str] = {
    "conversation.item.created": "conversation.item.added",
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
}
"""Preview server event names -> GA names, for a consumer that only renames (the page: the
middle tier serves this table in ``/api/config``). Events that change shape as well are
translated by :func:`preview_to_ga_server`."""

_PREVIEW_TO_GA_TYPES = {k: v for k, v in PREVIEW_SERVER_NAMES.items() if k.startswith("response.")}
_GA_TO_PREVIEW_TYPES = {v: k for k, v in _PREVIEW_TO_GA_TYPES.items()}

_PART_TO_GA = {"text": "output_text", "audio": "output_audio"}
PART_TO_PREVIEW = {"output_text": "text", "output_audio": "audio"}
"""GA content part types -> the preview's (the rest are the same)."""

# ---------------------------------------------------------------------------------- items


def _renamed_parts(content: Any, table: dict[str, str]) -> bool:
    """Whether ``content`` is a list with a part to rename (a malformed one is left alone, for
    validation to refuse with the parameter's name)."""
    return isinstance(content, list) and any(
        isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] in table
        for p in content
    )


def item_to_ga(item: dict[str, Any]) -> dict[str, Any]:
    """Preview item -> GA item (assistant content parts ``text``/``audio`` renamed)."""
    content = item.get("content")
    if not isinstance(content, list) or not _renamed_parts(content, _PART_TO_GA):
        return item
    return {
        **item,
        "content": [
            {**p, "type": _PART_TO_GA[p["type"]]}
            if isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] in _PART_TO_GA
            else p
            for p in content
        ],
    }


def item_to_preview(item: dict[str, Any]) -> dict[str, Any]:
    """GA item -> preview item."""
    content = item.get("content")
    if not isinstance(content, list) or not _renamed_parts(content, PART_TO_PREVIEW):
        return item
    return {
        **item,
        "content": [
            {**p, "type": PART_TO_PREVIEW[p["type"]]}
            if isinstance(p, dict)
            and isinstance(p.get("type"), str)
            and p["type"] in PART_TO_PREVIEW
            else p
            for p in content
        ],
    }


# ---------------------------------------------------------------------------------- responses


def response_to_ga(resp: dict[str, Any]) -> dict[str, Any]:
    """A preview response object (``response.created``/``done``) in GA shape."""
    out = dict(resp)
    if "modalities" in out:
        mods = out.pop("modalities") or []
        out["output_modalities"] = ["audio"] if "audio" in mods else ["text"]
    voice = out.pop("voice", None)
    fmt = out.pop("output_audio_format", None)
    out.pop("temperature", None)
    if voice is not None or fmt is not None:
        aout: dict[str, Any] = {}
        if fmt is not None:
            aout["format"] = SessionConfig(output_format=fmt).to_ga()["audio"]["output"]["format"]
        if voice is not None:
            aout["voice"] = voice
        out["audio"] = {"output": aout}
    if "max_response_output_tokens" in out:
        out["max_output_tokens"] = out.pop("max_response_output_tokens")
    if out.get("output"):
        out["output"] = [item_to_ga(i) for i in out["output"]]
    return out


def response_to_preview(resp: dict[str, Any]) -> dict[str, Any]:
    """A GA response object in preview shape."""
    out = dict(resp)
    if "output_modalities" in out:
        mods = out.pop("output_modalities") or []
        out["modalities"] = ["text", "audio"] if "audio" in mods else ["text"]
    audio = out.pop("audio", None)
    if isinstance(audio, dict):
        aout = audio.get("output") or {}
        if "voice" in aout:
            out["voice"] = aout["voice"]
        if "format" in aout:
            cfg = SessionConfig.from_ga({"audio": {"output": {"format": aout["format"]}}})
            out["output_audio_format"] = cfg.output_format
    if out.get("output"):
        out["output"] = [item_to_preview(i) for i in out["output"]]
    usage = out.get("usage")
    details = usage.get("input_token_details") if isinstance(usage, dict) else None
    if (
        isinstance(usage, dict)
        and isinstance(details, dict)
        and any(k not in _PREVIEW_INPUT_TOKEN_DETAILS for k in details)
    ):
        kept = {k: v for k, v in details.items() if k in _PREVIEW_INPUT_TOKEN_DETAILS}
        out["usage"] = {**usage, "input_token_details": kept}
    return out


_PREVIEW_INPUT_TOKEN_DETAILS = ("cached_tokens", "text_tokens", "audio_tokens")
"""A preview response's ``usage.input_token_details`` (GA adds ``image_tokens`` and
``cached_tokens_details``, which the preview protocol does not have)."""


_PREVIEW_RESPONSE_FORMATS = ("pcm16", "g711_ulaw", "g711_alaw")
_GA_ONLY_RESPONSE = ("output_modalities", "max_output_tokens", "audio", "reasoning")
TEMPERATURE_RANGE = (0.6, 1.2)
"""The preview's ``temperature`` (session and response); GA has none."""


def check_temperature(value: Any, param: str) -> None:
    """A preview ``temperature``: a number from 0.6 to 1.2, refused as the service words it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_type(param, "a number", value)
    low, high = TEMPERATURE_RANGE
    if value < low:
        raise out_of_range(param, value, minimum=low)
    if value > high:
        raise out_of_range(param, value, maximum=high)


def response_params_to_ga(params: dict[str, Any]) -> dict[str, Any]:
    """``response.create``'s ``response`` from preview to GA shape.

    A client's parameters: the GA's own names are refused (the preview does not know them),
    and a value that cannot be translated is refused naming the preview's parameter, or
    passed on as it is for the GA validation to refuse (its name is renamed back).
    """
    for key in _GA_ONLY_RESPONSE:
        if key in params:
            raise unknown_parameter(f"response.{key}")
    if "temperature" in params:
        check_temperature(params["temperature"], "response.temperature")
    out = dict(params)
    if "modalities" in out:
        mods = out.pop("modalities")
        out["output_modalities"] = preview_modalities(mods, "response")
    aout: dict[str, Any] = {}
    if "output_audio_format" in out:
        fmt = out.pop("output_audio_format")
        if not isinstance(fmt, str) or fmt not in _PREVIEW_RESPONSE_FORMATS:
            raise not_supported("response.output_audio_format", fmt, _PREVIEW_RESPONSE_FORMATS)
        config = SessionConfig.model_validate({"output_format": fmt})
        aout["format"] = config.to_ga()["audio"]["output"]["format"]
    if "voice" in out:
        aout["voice"] = out.pop("voice")
    if aout:
        out["audio"] = {"output": aout}
    if "max_response_output_tokens" in out:
        out["max_output_tokens"] = out.pop("max_response_output_tokens")
    if isinstance(out.get("input"), list):
        out["input"] = [item_to_ga(i) if isinstance(i, dict) else i for i in out["input"]]
    return out


def response_params_to_preview(params: dict[str, Any]) -> dict[str, Any]:
    """``response.create``'s ``response`` from GA to preview shape."""
    out = response_to_preview(params)
    if "max_output_tokens" in out:
        out["max_response_output_tokens"] = out.pop("max_output_tokens")
    if isinstance(out.get("input"), list):
        out["input"] = [item_to_preview(i) if isinstance(i, dict) else i for i in out["input"]]
    return out


# ---------------------------------------------------------------------------------- server side

_TRANSCRIPTION_SESSION_EVENTS = ("transcription_session.created", "transcription_session.updated")
"""The preview's events of a transcription session (GA: ``session.*`` with ``type:
"transcription"``). openai's preview types know ``.updated``; the service starts a session opened
with ``?intent=transcription`` with ``.created``."""


def preview_to_ga_server(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A server event from a preview endpoint, in the GA vocabulary."""
    kind = event.get("type", "")
    renamed = _PREVIEW_TO_GA_TYPES.get(kind)
    if renamed is not None:
        return [{**event, "type": renamed}]
    if kind == "conversation.item.created":
        item = item_to_ga(event.get("item") or {})
        added = {**event, "type": "conversation.item.added", "item": item}
        if item.get("status") == "completed" or item.get("type") == "function_call_output":
            done = {**added, "type": "conversation.item.done"}
            if event.get("event_id"):
                done["event_id"] = event["event_id"] + "_done"
            return [added, done]
        return [added]
    if kind in ("session.created", "session.updated", *_TRANSCRIPTION_SESSION_EVENTS):
        session = event.get("session") or {}
        transcription = kind in _TRANSCRIPTION_SESSION_EVENTS
        try:
            if transcription:
                cfg = SessionConfig.from_preview_transcription(session)
            else:
                cfg = SessionConfig.from_preview(session)
        except ProtocolError:
            return [event]
        if transcription:
            kind = "session." + kind.rsplit(".", 1)[1]
        ga = cfg.to_ga()
        for key in ("id", "object", "expires_at"):
            if key in session:
                ga[key] = session[key]
        return [{**event, "type": kind, "session": ga}]
    if kind in ("response.created", "response.done"):
        return [{**event, "response": response_to_ga(event.get("response") or {})}]
    if kind in (
        "response.output_item.added",
        "response.output_item.done",
        "conversation.item.retrieved",
    ):
        return [{**event, "item": item_to_ga(event.get("item") or {})}]
    if kind == "error" and isinstance(event.get("error"), dict):
        error = error_to_ga(event["error"])
        return [event if error is event["error"] else {**event, "error": error}]
    return [event]


def ga_to_preview_server(event: dict[str, Any], *, azure: bool = True) -> list[dict[str, Any]]:
    """A GA-vocabulary server event, as a preview endpoint would send it (``azure`` no longer
    changes anything: both preview endpoints echo turn detection off as ``null``)."""
    kind = event.get("type", "")
    renamed = _GA_TO_PREVIEW_TYPES.get(kind)
    if renamed is not None:
        return [{**event, "type": renamed}]
    if kind == "conversation.item.added":
        return [
            {
                **event,
                "type": "conversation.item.created",
                "item": item_to_preview(event.get("item") or {}),
            }
        ]
    if kind == "conversation.item.done":
        return []
    if kind in ("session.created", "session.updated"):
        session = event.get("session") or {}
        cfg = SessionConfig.from_ga(session)
        if cfg.transcription_only:  # the preview's own events for a transcription session
            prev = cfg.to_preview_transcription()
            if "modalities" in session:  # a server's, passed beside the GA shape (no twin)
                prev["modalities"] = session["modalities"]
            kind = "transcription_" + kind
        else:
            # turn detection off is echoed as null on every preview endpoint (what a client
            # sends Azure's, {"type": "none"}, is not what it gets back)
            prev = cfg.to_preview(azure=False)
        for key in ("id", "object", "temperature"):  # no expires_at in the preview session
            if key in session:
                prev[key] = session[key]
        return [{**event, "type": kind, "session": prev}]
    if kind in ("response.created", "response.done"):
        return [{**event, "response": response_to_preview(event.get("response") or {})}]
    if kind in (
        "response.output_item.added",
        "response.output_item.done",
        "conversation.item.retrieved",
    ):
        return [{**event, "item": item_to_preview(event.get("item") or {})}]
    if kind == "error" and isinstance(event.get("error"), dict):
        error = error_to_preview(event["error"])
        return [event if error is event["error"] else {**event, "error": error}]
    return [event]


# ---------------------------------------------------------------------------------- client side


def ga_to_preview_client(event: dict[str, Any], *, azure: bool = True) -> dict[str, Any]:
    """A GA-vocabulary client event, in the preview dialect."""
    kind = event.get("type", "")
    if kind == "session.update":
        cfg = SessionConfig.from_ga(event.get("session") or {})
        session = cfg.to_preview(azure=azure)
        temp = (event.get("session") or {}).get("temperature")
        if temp is not None:
            session["temperature"] = temp
        return {**event, "session": session}
    if kind == "conversation.item.create":
        return {**event, "item": item_to_preview(event.get("item") or {})}
    if kind == "response.create" and event.get("response"):
        return {**event, "response": response_params_to_preview(event["response"])}
    return event


def preview_to_ga_client(event: dict[str, Any]) -> dict[str, Any]:
    """A preview client event, in the GA vocabulary (``session`` is strictly validated).

    Raises :class:`ProtocolError` naming the parameter when the session has a field the
    preview endpoint does not know (for example ``session.type``).
    """
    kind = event.get("type", "")
    if kind == "session.update":
        session = event.get("session")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if "session" not in event:
            raise missing_parameter("session", event_id)
        if not isinstance(session, dict):
            raise invalid_type("session", "an object", session, event_id)
        try:
            cfg = SessionConfig.from_preview(session, strict=True)
        except ProtocolError as exc:
            exc.event_id = event_id
            raise
        ga = cfg.to_ga()
        if "temperature" in session:
            ga["temperature"] = session["temperature"]
        return {**event, "session": ga}
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    try:
        if kind == "conversation.item.create" and isinstance(event.get("item"), dict):
            return {**event, "item": item_to_ga(event["item"])}
        if kind == "response.create" and isinstance(event.get("response"), dict):
            return {**event, "response": response_params_to_ga(event["response"])}
    except ProtocolError as exc:
        exc.event_id = event_id
        raise
    except (TypeError, AttributeError, ValueError) as exc:  # a field of the wrong shape
        where = "item" if kind == "conversation.item.create" else "response"
        raise ProtocolError(
            f"Invalid value in '{where}': {echo(str(exc), 200)}.",
            code="invalid_value",
            param=where,
            event_id=event_id,
        ) from None
    return event
