"""Protocol errors: what the service would answer with an ``error`` event.

Every refusal of a client's event is an ``invalid_request_error`` naming the parameter as the
client spelled it (``param``), carrying the client's ``event_id``, and quoting the client's value
at most :data:`ECHO_LIMIT` characters long (:func:`echo`): a megabyte of bad value never comes
back as a megabyte of error. :func:`from_validation` words pydantic's complaints the way the
service does (``Invalid type for 'session.max_output_tokens': expected an integer or 'inf', but
got a boolean instead.``), with the parameter as a real field path (``session.tools[0].name``),
never pydantic's union tags (``.int``, ``.literal['inf']``, ``.message``).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Union

from pydantic import BaseModel, ValidationError

ECHO_LIMIT = 100
"""How many characters of a client's value an error message quotes."""


class ProtocolError(Exception):
    """A client event the service would refuse.

    ``code`` and ``param`` follow the service's ``error`` event (``param`` names the offending
    field, e.g. ``session.type``), so a server can turn this straight into an ``error`` event.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.type = type

    def to_error(self) -> dict[str, Any]:
        """The ``error`` object of an ``error`` event."""
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


# ------------------------------------------------------------------------------ echoing values


def echo(value: Any, limit: int = ECHO_LIMIT) -> str:
    """A client's value as an error message quotes it: a string as written, anything else as
    JSON, cut after ``limit`` characters (then ``…`` and the whole length)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def json_type(value: Any) -> str:
    """The JSON kind of a value, as the service names it in a message (``a boolean``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def one_of(values: Sequence[str]) -> str:
    """``'a', 'b' and 'c'``: the values a parameter takes, quoted."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) < 2:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


# ------------------------------------------------------------------------------ the refusals


def unknown_parameter(param: str, event_id: str | None = None) -> ProtocolError:
    """The service's answer to a field it does not know (``Unknown parameter: 'session.type'``).

    The name is the client's own key, so it is cut like any echoed value."""
    shown = echo(param, 2 * ECHO_LIMIT)
    return ProtocolError(
        f"Unknown parameter: '{shown}'.",
        code="unknown_parameter",
        param=shown,
        event_id=event_id,
    )


def invalid_value(param: str, message: str, event_id: str | None = None) -> ProtocolError:
    return ProtocolError(message, code="invalid_value", param=param, event_id=event_id)


def not_supported(
    param: str, value: Any, supported: Sequence[str], event_id: str | None = None
) -> ProtocolError:
    """A value outside a parameter's fixed set: ``invalid_value`` for a string, else
    ``invalid_type`` (``expected one of ...``)."""
    if not isinstance(value, str):
        return invalid_type(param, f"one of {one_of(supported)}", value, event_id)
    return ProtocolError(
        f"Invalid value for '{param}': '{echo(value)}'. Supported values are: {one_of(supported)}.",
        code="invalid_value",
        param=param,
        event_id=event_id,
    )


def invalid_type(
    param: str, expected: str, value: Any, event_id: str | None = None
) -> ProtocolError:
    """A value of the wrong JSON type (``expected`` reads like ``an integer or 'inf'``)."""
    return ProtocolError(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        code="invalid_type",
        param=param,
        event_id=event_id,
    )


def missing_parameter(param: str, event_id: str | None = None) -> ProtocolError:
    return ProtocolError(
        f"Missing required parameter: '{param}'.",
        code="missing_required_parameter",
        param=param,
        event_id=event_id,
    )


def out_of_range(
    param: str, value: Any, *, minimum: Any = None, maximum: Any = None, event_id: str | None = None
) -> ProtocolError:
    """A number outside its bounds, worded as the service does (``integer`` when the value
    and the bound are integers, else ``decimal``)."""
    bound = minimum if minimum is not None else maximum
    kind = "integer" if isinstance(value, int) and isinstance(bound, int) else "decimal"
    if minimum is not None and value < minimum:
        what, expected = "below minimum", f">= {minimum}"
    else:
        what, expected = "above maximum", f"<= {maximum}"
    return ProtocolError(
        f"Invalid '{param}': {kind} {what} value. Expected a value {expected}, but got "
        f"{echo(value)} instead.",
        code="invalid_value",
        param=param,
        event_id=event_id,
    )


# ------------------------------------------------------------------------------ pydantic's errors


def render_path(parts: Sequence[str | int]) -> str:
    """``("session", "tools", 0, "name")`` -> ``session.tools[0].name``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for m in typing.get_args(tp) if m is not type(None)]
    return None


def _tagged_member(members: list[Any], tag: Any) -> Any:
    """The member of a discriminated union whose ``type`` is ``tag`` (else ``Any``)."""
    for member in members:
        member = _unwrap(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get("type")
            if field is not None and field.default == tag:
                return member
    return Any


def field_path(model: Any, loc: Sequence[str | int]) -> list[str | int]:
    """pydantic's ``loc`` as the field path it is: union tags (``int``, ``literal['inf']``, a
    discriminator's value such as ``message``) are steps of the schema, not of the event, and
    are left out. The schema (``model``) says which steps are tags."""
    out: list[str | int] = []
    tp: Any = model
    for step in loc:
        while True:
            tp = _unwrap(tp)
            members = _union_members(tp)
            if members is None or len(members) != 1:
                break
            tp = members[0]  # Optional[X]: no tag in loc
        members = _union_members(tp)
        if members is not None:  # a union of several: this step is a member's tag
            tp = _tagged_member(members, step)
            continue
        out.append(step)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(step) if isinstance(step, str) else None
            tp = field.annotation if field is not None else Any
        elif origin in (list, tuple, set, frozenset):
            args = typing.get_args(tp)
            tp = args[0] if args else Any
        elif origin is dict:
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            tp = Any
    return out


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "none_required": "null",
}
_ACCEPTS = {  # what JSON kinds each expectation takes (ints are numbers too)
    "an integer": {"an integer"},
    "a number": {"an integer", "a decimal number"},
    "a finite number": {"an integer", "a decimal number"},
    "a string": {"a string"},
    "a boolean": {"a boolean"},
    "an array": {"an array"},
    "an object": {"an object"},
    "null": {"null"},
}
_RANGE = {
    "greater_than_equal": "ge",
    "greater_than": "gt",
    "less_than_equal": "le",
    "less_than": "lt",
}


def from_validation(
    exc: ValidationError,
    model: Any,
    *,
    event_id: str | None = None,
    name: Callable[[list[str | int]], str] = render_path,
) -> ProtocolError:
    """pydantic's first complaint about a client's value, as the service words it.

    ``model`` is what was validated (a model class or a type), to tell union tags from fields;
    ``name`` turns the field path into the parameter the client knows (e.g. a
    :class:`~aoai_realtime.protocol.session.SessionConfig` field into its wire path).
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = field_path(model, first["loc"])
    kind = first["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        path = [*path, "type"]
    param = name(path) if path else "event"
    value = first.get("input")
    if kind == "extra_forbidden":
        return unknown_parameter(param, event_id)
    if kind in ("missing", "union_tag_not_found"):
        return missing_parameter(param, event_id)
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in str(first["ctx"]["expected_tags"]).split(",")]
        tag = value.get("type") if isinstance(value, dict) else None
        return not_supported(param, tag, tags, event_id)
    if kind in _RANGE:
        ctx = first.get("ctx") or {}
        bound = ctx.get(_RANGE[kind])
        low = kind.startswith("greater")
        return out_of_range(
            param,
            value,
            minimum=bound if low else None,
            maximum=None if low else bound,
            event_id=event_id,
        )
    # every member of a union complains about the same value: gather what each expects
    same = [e for e in errors if field_path(model, e["loc"]) == field_path(model, first["loc"])]
    expected: list[str] = []
    literals: list[str] = []
    for err in same:
        if err["type"] == "string_unicode":  # a lone surrogate: a string, but not text
            return ProtocolError(
                f"Invalid value for '{param}': '{echo(value)}' is not valid Unicode text (it "
                "has a lone surrogate).",
                code="invalid_value",
                param=param,
                event_id=event_id,
            )
        if err["type"] == "literal_error":
            literals += [v.strip().strip("'") for v in _split_expected(err["ctx"]["expected"])]
        elif err["type"] in _EXPECTED:
            if _EXPECTED[err["type"]] not in expected:
                expected.append(_EXPECTED[err["type"]])
        else:
            return ProtocolError(
                f"Invalid value for '{param}': {err['msg']}.",
                code="invalid_value",
                param=param,
                event_id=event_id,
            )
    got = json_type(value)
    takes = set().union(*(_ACCEPTS.get(e, set()) for e in expected))
    if literals:
        takes.add("a string")
    if got in takes:  # the right kind of value, but not one the parameter takes
        if literals and isinstance(value, str) and not expected:
            return not_supported(param, value, literals, event_id)
        wanted = " or ".join([*expected, *(f"'{v}'" for v in literals)])
        return ProtocolError(
            f"Invalid value for '{param}': expected {wanted}, but got '{echo(value)}' instead.",
            code="invalid_value",
            param=param,
            event_id=event_id,
        )
    if literals and not expected:
        return invalid_type(param, f"one of {one_of(literals)}", value, event_id)
    wanted = " or ".join([*expected, *(f"'{v}'" for v in literals)])
    return invalid_type(param, wanted, value, event_id)


def _split_expected(text: str) -> list[str]:
    """pydantic's ``'a', 'b' or 'c'`` as ``["'a'", "'b'", "'c'"]``."""
    parts: list[str] = []
    for chunk in text.split(","):
        parts += chunk.split(" or ")
    return [p for p in (p.strip() for p in parts) if p]
