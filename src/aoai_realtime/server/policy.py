"""What the page may change, and what the operator adds: plain data in, plain data out.

The page speaks the GA vocabulary. Its ``session.update`` is cut down to an allow-list:

* always allowed (the page cannot work without them): ``type``, ``output_modalities`` and the
  audio formats;
* allowed when the operator lets the page set them (:attr:`Policy.settable`, all by default):
  ``voice``, ``speed``, ``instructions``, ``temperature``, ``turn_detection``, ``transcription``,
  ``noise_reduction``, ``max_output_tokens``;
* never from the page: ``tools``, ``tool_choice``, ``model``, ``prompt``, ``tracing``,
  ``include``, ``truncation`` and anything unknown.

What is dropped is reported back (``session.tools``, …) so the relay can tell the page once.
Then the operator's instructions are put around the page's, and the server tools are added, to
every update that goes upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.dialect import DialectName
from ..tools import Tool

__all__ = ["ALL_SETTABLE", "DEFAULT_SETTABLE", "Policy", "PolicyResult"]

ALL_SETTABLE = frozenset(
    {
        "voice",
        "speed",
        "instructions",
        "temperature",
        "turn_detection",
        "transcription",
        "noise_reduction",
        "max_output_tokens",
    }
)
DEFAULT_SETTABLE = ALL_SETTABLE

# GA path -> the settable name that governs it (None: always allowed).
_TOP: dict[str, str | None] = {
    "type": None,
    "output_modalities": None,
    "instructions": "instructions",
    "temperature": "temperature",
    "max_output_tokens": "max_output_tokens",
}
_AUDIO_IN: dict[str, str | None] = {
    "format": None,
    "transcription": "transcription",
    "turn_detection": "turn_detection",
    "noise_reduction": "noise_reduction",
}
_AUDIO_OUT: dict[str, str | None] = {"format": None, "voice": "voice", "speed": "speed"}
# response.create's ``response``: what the page may pass (instructions are handled apart).
_RESPONSE_ALLOWED = frozenset(
    {"output_modalities", "audio", "conversation", "metadata", "input", "max_output_tokens"}
)


@dataclass
class PolicyResult:
    """A client event after the policy: ``event`` to send on (``None``: send nothing) and the
    parameters that were dropped (``session.tools``, ...)."""

    event: dict[str, Any] | None
    refused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """The operator's rules for pages (and any other client) of the middle tier."""

    settable: frozenset[str] = DEFAULT_SETTABLE
    instructions_prefix: str = ""
    """Operator instructions put before the page's (the page cannot remove them)."""
    instructions_suffix: str = ""
    """Operator instructions put after the page's."""
    tools: tuple[Tool, ...] = ()
    """Server-side tools, added to every session.update and run by the middle tier."""
    show_tool_results: bool = True
    """When false, the page does not receive the ``function_call_output`` items."""
    tool_timeout_s: float = 15.0
    """A server tool still running after this long answers the model with an error."""

    def __post_init__(self) -> None:
        unknown = set(self.settable) - ALL_SETTABLE
        if unknown:
            raise ValueError(
                f"unknown settable field(s) {sorted(unknown)}: choose from {sorted(ALL_SETTABLE)}"
            )
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"two server tools share a name: {names}")

    @classmethod
    def build(
        cls,
        *,
        settable: Iterable[str] = DEFAULT_SETTABLE,
        instructions_prefix: str = "",
        instructions_suffix: str = "",
        tools: Iterable[Tool] = (),
        show_tool_results: bool = True,
    ) -> Policy:
        return cls(
            settable=frozenset(settable),
            instructions_prefix=instructions_prefix.strip(),
            instructions_suffix=instructions_suffix.strip(),
            tools=tuple(tools),
            show_tool_results=show_tool_results,
        )

    # ------------------------------------------------------------------ derived

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    @property
    def has_operator_instructions(self) -> bool:
        return bool(self.instructions_prefix or self.instructions_suffix)

    def instructions(self, page: str | None) -> str:
        """The instructions sent upstream: the operator's around the page's."""
        parts = [self.instructions_prefix, (page or "").strip(), self.instructions_suffix]
        return "\n\n".join(p for p in parts if p)

    def _add_operator_fields(self, session: dict[str, Any]) -> None:
        page = session.get("instructions")
        if page is not None and not isinstance(page, str):
            pass  # not instructions at all: passed on for the upstream to refuse, naming it
        elif "instructions" in session or self.has_operator_instructions:
            session["instructions"] = self.instructions(page)
        if self.tools:
            session["tools"] = [t.schema() for t in self.tools]
            session["tool_choice"] = "auto"

    # ------------------------------------------------------------------ events

    def initial_update(self) -> dict[str, Any] | None:
        """The GA ``session.update`` sent upstream as soon as it is connected (operator
        instructions and tools), or ``None`` when the operator adds nothing."""
        if not self.tools and not self.has_operator_instructions:
            return None
        session: dict[str, Any] = {"type": "realtime"}
        self._add_operator_fields(session)
        return {"type": "session.update", "session": session}

    def session_update(self, event: dict[str, Any], *, dialect: DialectName) -> PolicyResult:
        """The page's ``session.update``, cut to what it may set, plus the operator's fields."""
        session = event.get("session")
        if not isinstance(session, dict):
            return PolicyResult(event)  # let the upstream answer "missing parameter"
        refused: list[str] = []
        out: dict[str, Any] = {}
        for key, value in session.items():
            if key == "audio" and isinstance(value, dict):
                audio = self._filter_audio(value, refused)
                if audio:
                    out["audio"] = audio
                continue
            if not self._allowed(_TOP, key, f"session.{key}", refused):
                continue
            if key == "temperature" and dialect == "ga":
                continue  # GA has no temperature: drop it quietly
            out[key] = value
        if dialect == "ga":
            out.setdefault("type", "realtime")
        self._add_operator_fields(out)
        return PolicyResult({**event, "session": out}, refused)

    def _filter_audio(self, audio: dict[str, Any], refused: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side, table in (("input", _AUDIO_IN), ("output", _AUDIO_OUT)):
            if side not in audio:
                continue
            value = audio[side]
            if not isinstance(value, dict):
                out[side] = value  # wrong type: the upstream explains it
                continue
            kept = {
                k: v
                for k, v in value.items()
                if self._allowed(table, k, f"session.audio.{side}.{k}", refused)
            }
            if kept:
                out[side] = kept
        for key in audio:
            if key not in ("input", "output"):
                refused.append(f"session.audio.{key}")
        return out

    def _allowed(
        self, table: dict[str, str | None], key: str, param: str, refused: list[str]
    ) -> bool:
        if key not in table:
            refused.append(param)
            return False
        governed_by = table[key]
        if governed_by is not None and governed_by not in self.settable:
            refused.append(param)
            return False
        return True

    def response_create(
        self,
        event: dict[str, Any],
        *,
        dialect: DialectName,
        server_call: Callable[[str], bool] = lambda call_id: False,
    ) -> PolicyResult:
        """The page's ``response.create``: no tools, model or prompt of its own; its
        per-response instructions keep the operator's around them; its ``input`` is policed
        like items (:meth:`input_items`)."""
        params = event.get("response")
        if not isinstance(params, dict):
            return PolicyResult(event)
        refused: list[str] = []
        out: dict[str, Any] = {}
        for key, value in params.items():
            if key == "input" and isinstance(value, list):
                out[key] = self.input_items(value, refused, server_call)
            elif key == "instructions":
                if "instructions" not in self.settable:
                    refused.append("response.instructions")
                elif isinstance(value, str) or value is None:
                    out[key] = self.instructions(value)
                else:
                    out[key] = value  # not instructions: the upstream refuses it, naming it
            elif key == "temperature":
                if "temperature" not in self.settable:
                    refused.append("response.temperature")
                elif dialect == "preview" or not _is_number(value):
                    out[key] = value  # GA has none: a number is dropped, anything else refused
            elif key in _RESPONSE_ALLOWED:
                out[key] = value
            else:
                refused.append(f"response.{key}")
        return PolicyResult({**event, "response": out}, refused)

    def input_items(
        self, items: list[Any], refused: list[str], server_call: Callable[[str], bool]
    ) -> list[Any]:
        """A ``response.input`` without what the page may not put in the model's context: a
        ``system`` message or a made-up ``function_call`` while instructions are not the page's
        to set, and any output for a server tool's call."""
        kept: list[Any] = []
        own_prompt = "instructions" in self.settable
        for i, item in enumerate(items):
            if isinstance(item, dict):
                if item.get("role") == "system" and not own_prompt:
                    refused.append(f"response.input[{i}].role")
                    continue
                if item.get("type") == "function_call" and not own_prompt:
                    refused.append(f"response.input[{i}].type")
                    continue
                call_id = item.get("call_id")
                if (
                    item.get("type") == "function_call_output"
                    and isinstance(call_id, str)
                    and server_call(call_id)
                ):
                    refused.append(f"response.input[{i}].call_id")
                    continue
            kept.append(item)
        return kept

    def item_create(self, event: dict[str, Any]) -> PolicyResult:
        """The page's ``conversation.item.create``: a ``system`` message counts as instructions."""
        item = event.get("item")
        if (
            isinstance(item, dict)
            and item.get("role") == "system"
            and "instructions" not in self.settable
        ):
            return PolicyResult(None, ["item.role"])
        return PolicyResult(event)

    def page_session(
        self, session: dict[str, Any], page_instructions: str | None
    ) -> dict[str, Any]:
        """A ``session`` echoed by the upstream, as the page may see it: with operator
        instructions, the page sees only its own part."""
        if not self.has_operator_instructions or "instructions" not in session:
            return session
        out = dict(session)
        if page_instructions is None:
            del out["instructions"]
        else:
            out["instructions"] = page_instructions
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
