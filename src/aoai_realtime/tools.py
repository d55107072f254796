"""Function tools from plain Python callables.

``@tool`` (or :meth:`Tool.from_function`) reads a function's signature and builds the JSON schema
the realtime service wants in ``session.tools``:

* ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, ``Enum`` subclasses, ``list[X]``,
  ``dict[str, X]``, ``X | None`` and pydantic models as parameter types;
* parameters without a default are required; defaults are shown to the model;
* the docstring's first paragraph is the tool's description, and a Google-style ``Args:``
  section, or ``Annotated[x, "description"]``, describes each parameter.

A :class:`ToolRegistry` runs calls by name. :meth:`Tool.run` never raises for a problem the model
caused or the tool hit: bad JSON, wrong arguments and exceptions in the tool all become a JSON
``{"error": ...}`` output, so the model can recover and the conversation goes on. Sync functions run
in a worker thread so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import logging
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

__all__ = ["Tool", "ToolRegistry", "tool"]

log = logging.getLogger("aoai_realtime.tools")

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NoneType = type(None)
F = TypeVar("F", bound=Callable[..., Any])


class Tool:
    """A function the model may call: its name, description, JSON schema and the callable.

    A ``Tool`` is still callable like the function it wraps, so decorating a function with
    :func:`tool` does not change how the rest of the program uses it.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        description: str,
        parameters: dict[str, Any],
        validator: type[BaseModel] | None = None,
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(
                f"tool name {name!r} is not allowed: use 1 to 64 letters, digits, '_' or '-'"
            )
        self.fn = fn
        self.name = name
        self.description = description
        self.parameters = parameters
        self._validator = validator
        # An object whose __call__ is async counts as async too.
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__
        )

    # ------------------------------------------------------------------ building

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> Tool:
        """Build a tool from ``fn``'s signature, type hints and docstring.

        Raises ``TypeError`` naming the parameter when a type cannot be described to the model
        (a missing annotation, ``*args``, an unsupported type).
        """
        if isinstance(fn, Tool):
            return fn
        fname = name or getattr(fn, "__name__", None)
        if not fname:
            raise TypeError(f"{fn!r} has no __name__: pass name= to Tool.from_function")
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # NameError for a forward reference that does not resolve
            raise TypeError(
                f"cannot read the type hints of tool {fname!r}: {exc}; "
                "make every annotation importable at module level"
            ) from exc
        properties: dict[str, Any] = {}
        required: list[str] = []
        fields: dict[str, Any] = {}
        for pname, param in inspect.signature(fn).parameters.items():
            where = f"parameter {pname!r} of tool {fname!r}"
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"{where}: *args and **kwargs cannot be described to the model")
            if param.kind is param.POSITIONAL_ONLY:
                raise TypeError(f"{where} is positional-only: the model passes arguments by name")
            if pname not in hints:
                raise TypeError(
                    f"{where} has no type hint: annotate it (e.g. `{pname}: str`) so the model "
                    "knows what to pass"
                )
            hint = hints[pname]
            schema = _schema(hint, where)
            if "description" not in schema and pname in arg_docs:
                schema = {**schema, "description": arg_docs[pname]}
            if param.default is not param.empty:
                default = param.default
                if isinstance(default, enum.Enum):
                    default = default.value
                if default is not None and _jsonable(default):
                    schema = {**schema, "default": default}
                fields[pname] = (hint, param.default)
            else:
                required.append(pname)
                fields[pname] = (hint, ...)
            properties[pname] = schema
        parameters: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            parameters["required"] = required
        parameters["additionalProperties"] = False
        validator = create_model(
            f"{fname}_arguments",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )
        return cls(
            fn,
            name=fname,
            description=description if description is not None else summary,
            parameters=parameters,
            validator=validator,
        )

    # ------------------------------------------------------------------ use

    def schema(self) -> dict[str, Any]:
        """The entry for ``session.tools`` (same shape in both dialects)."""
        out: dict[str, Any] = {"type": "function", "name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def parse_arguments(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments for the function, validated and converted (Enums, models).

        Raises ``ValueError`` with a message meant for the model.
        """
        if isinstance(arguments, str):
            try:
                data = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                raise ValueError(f"the arguments are not valid JSON ({exc})") from None
        else:
            data = dict(arguments)
        if not isinstance(data, dict):
            raise ValueError("the arguments must be a JSON object")
        if self._validator is None:
            return data
        try:
            model = self._validator.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"invalid arguments for {self.name}: {problems}") from None
        return {k: getattr(model, k) for k in type(model).model_fields}

    async def run(
        self, arguments: str | Mapping[str, Any], *, timeout_s: float | None = None
    ) -> str:
        """Call the tool with the model's arguments and return the output text for the model.

        Never raises for the tool's own failures: bad arguments, exceptions and a run longer
        than ``timeout_s`` seconds become a JSON object ``{"error": "..."}`` (and are logged),
        so the model can say what went wrong. Cancellation still propagates.
        """
        if timeout_s is None:
            return await self._run(arguments)
        try:
            return await asyncio.wait_for(self._run(arguments), timeout_s)
        except asyncio.TimeoutError:
            log.warning("tool %s did not finish within %g s", self.name, timeout_s)
            return json.dumps({"error": f"{self.name} did not finish within {timeout_s:g} s"})

    async def _run(self, arguments: str | Mapping[str, Any]) -> str:
        try:
            kwargs = self.parse_arguments(arguments)
        except ValueError as exc:
            log.info("tool %s: %s", self.name, exc)
            return json.dumps({"error": str(exc)})
        try:
            if self.is_async:
                result = await self.fn(**kwargs)
            else:
                result = await asyncio.to_thread(self.fn, **kwargs)
                if inspect.isawaitable(result):  # a sync wrapper returning a coroutine
                    result = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("tool %s raised %s", self.name, type(exc).__name__, exc_info=True)
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return format_output(result)

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"


def format_output(result: Any) -> str:
    """A tool's return value as the ``output`` string of a ``function_call_output`` item."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, default=_json_default)
    except (TypeError, ValueError):
        return str(result)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a function: ``@tool`` or ``@tool(name=..., description=...)``."""
    if fn is not None:
        return Tool.from_function(fn, name=name, description=description)

    def decorate(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description)

    return decorate


class ToolRegistry:
    """Tools by name. Accepts :class:`Tool` objects and plain callables."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool | Callable[..., Any]) -> Tool:
        """Register a tool (a plain function is turned into one); names must be unique."""
        made = t if isinstance(t, Tool) else Tool.from_function(t)
        if made.name in self._tools and self._tools[made.name] is not made:
            raise ValueError(f"two tools are named {made.name!r}: give one of them name=...")
        self._tools[made.name] = made
        return made

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool's ``session.tools`` entry."""
        return [t.schema() for t in self._tools.values()]

    async def run(
        self, name: str, arguments: str | Mapping[str, Any], *, timeout_s: float | None = None
    ) -> str:
        """Run a call by name; an unknown name is an error output for the model, not a crash."""
        t = self._tools.get(name)
        if t is None:
            known = ", ".join(self._tools) or "none"
            return json.dumps({"error": f"unknown tool {name!r}; available tools: {known}"})
        return await t.run(arguments, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._tools)})"


# --------------------------------------------------------------------------------------------
# JSON schema from type hints


def _schema(hint: Any, where: str) -> dict[str, Any]:
    origin = get_origin(hint)
    if origin is Annotated:
        base, *meta = get_args(hint)
        schema = _schema(base, where)
        for m in meta:
            if isinstance(m, str):
                schema = {**schema, "description": m}
            elif hasattr(m, "description") and isinstance(m.description, str):
                schema = {**schema, "description": m.description}  # pydantic Field(...)
        return schema
    if hint is Any:
        return {}
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is _NoneType:
        return {"type": "null"}
    if origin is Literal:
        values = list(get_args(hint))
        return {**_enum_type(values), "enum": values}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        return {**_enum_type(values), "enum": values}
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return _inline_refs(hint.model_json_schema())
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        non_none = [a for a in args if a is not _NoneType]
        if len(non_none) == 1:
            schema = _schema(non_none[0], where)
            if len(args) > len(non_none):
                kind = schema.get("type")
                if isinstance(kind, str):
                    return {**schema, "type": [kind, "null"]}
                return {"anyOf": [schema, {"type": "null"}]}
            return schema
        return {"anyOf": [_schema(a, where) for a in args]}
    if origin in (list, set, frozenset, Sequence, typing.Sequence) or hint in (list, set):
        args = get_args(hint)
        return {"type": "array", "items": _schema(args[0], where) if args else {}}
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema(args[0], where)}
        return {
            "type": "array",
            "prefixItems": [_schema(a, where) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        args = get_args(hint)
        if args and args[0] is not str:
            raise TypeError(f"{where}: JSON objects have string keys; use dict[str, ...]")
        return {"type": "object", "additionalProperties": _schema(args[1], where) if args else {}}
    raise TypeError(
        f"{where} has type {hint!r}, which cannot be described to the model: use str, int, "
        "float, bool, Literal[...], an Enum, list[...], dict[str, ...], X | None or a pydantic "
        "model"
    )


def _enum_type(values: list[Any]) -> dict[str, Any]:
    if all(isinstance(v, bool) for v in values):
        return {"type": "boolean"}
    if all(isinstance(v, str) for v in values):
        return {"type": "string"}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"type": "integer"}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {"type": "number"}
    return {}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema with ``$defs`` inlined and titles dropped (models read it better)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items() if k not in ("$defs", "title")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_OTHER_SECTION_RE = re.compile(
    r"^(Returns?|Raises?|Yields?|Examples?|Notes?|See Also|Attributes)\s*:\s*$"
)
_ARG_RE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (first paragraph, joined) and the Google-style ``Args:`` descriptions."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line.strip()):
            break
        summary_lines.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    base_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        if _SECTION_RE.match(stripped):
            in_args, current, base_indent = True, None, None
            continue
        if _OTHER_SECTION_RE.match(stripped):
            in_args = False
            continue
        if not in_args or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        m = _ARG_RE.match(line)
        if m and (base_indent is None or indent <= base_indent):
            base_indent = indent
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(summary_lines), args
