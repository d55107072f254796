"""One client frame in, one event object out: the parse every receiving side shares.

The local engine and the middle tier both read clients' frames with :func:`load_client_event`,
so both refuse the same frames the same way, as the service does (an ``error`` naming the code,
the session going on): text that is not UTF-8 JSON (``NaN`` and ``Infinity`` are not JSON),
JSON that is not an object with a string ``type``, an ``event_id`` longer than
:data:`MAX_EVENT_ID`, and JSON nested deeper than :data:`MAX_DEPTH` (which would otherwise
exhaust Python's recursion and take the connection down). Duplicate keys resolve as JSON
parsers do (the last wins), and the caller decides on the parsed value, never on the text: a
frame cannot look like one event to us and be another upstream.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ProtocolError, invalid_type, missing_parameter

__all__ = ["MAX_DEPTH", "MAX_EVENT_ID", "is_plain", "load_client_event"]

MAX_DEPTH = 32
"""Deepest nesting of objects and arrays a client event may have (real events need about 8)."""

MAX_EVENT_ID = 512
"""Longest ``event_id`` a client may give (the GA schema's ``maxLength``): every error about
the event carries it back."""


def _too_deep(text: str) -> bool:
    """Whether ``text`` nests objects/arrays deeper than :data:`MAX_DEPTH` (outside strings)."""
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return False  # the usual case, audio appends included: two C-speed counts
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "}]":
            depth -= 1
    return False


def _not_json(name: str) -> Any:
    """``NaN``, ``Infinity``, ``-Infinity``: Python's parser takes them, JSON has no such values
    (echoed back, they would make the engine's own events invalid JSON)."""
    raise ValueError(f"{name} is not a JSON value")


def _event_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("event_id")
    return value if isinstance(value, str) else None


def load_client_event(raw: str | bytes) -> dict[str, Any]:
    """The event object of one client frame, or :class:`ProtocolError` saying what is wrong."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(
                "The message is not valid UTF-8 JSON.", code="invalid_json", param=None
            ) from None
    try:
        obj = json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        obj = None  # deeper than the parser goes: refused below as too deep
    except ValueError as exc:
        raise ProtocolError(
            f"The message is not valid JSON: {str(exc)[:200]}.", code="invalid_json", param=None
        ) from None
    # a flat event (an audio append: strings only) needs no depth scan
    if obj is None or (
        isinstance(obj, (dict, list))
        and any(
            isinstance(v, (dict, list)) for v in (obj.values() if isinstance(obj, dict) else obj)
        )
        and _too_deep(raw)
    ):
        raise ProtocolError(
            f"The message nests objects or arrays deeper than {MAX_DEPTH} levels.",
            code="invalid_json",
            param=None,
        )
    if not isinstance(obj, dict):
        raise ProtocolError(
            "An event must be a JSON object with a 'type'.", code="invalid_event", param=None
        )
    event_id = _event_id(obj)
    if event_id is not None and len(event_id) > MAX_EVENT_ID:
        raise ProtocolError(
            f"Invalid 'event_id': string too long. Expected a string with maximum length "
            f"{MAX_EVENT_ID}, but got a string with length {len(event_id)} instead.",
            code="string_above_max_length",
            param="event_id",
        )
    if "type" not in obj:
        raise missing_parameter("type", event_id)
    if not isinstance(obj["type"], str):
        raise invalid_type("type", "a string", obj["type"], event_id)
    return obj


def is_plain(text: str, event: dict[str, Any]) -> bool:
    """Whether ``text`` says exactly what ``event`` (its parse) says, so it may be passed on
    as it is: string values only, and no key twice (every key and value accounts for two of
    the text's quotes, and there are no others: an escaped quote or a duplicate key adds more)."""
    return text.count('"') == 4 * len(event) and all(isinstance(v, str) for v in event.values())
