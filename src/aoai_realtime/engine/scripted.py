"""A brain that follows a script, so tests of clients get deterministic conversations.

The script is JSON (see ``docs/scripted-brain.md``)::

    {
      "default": "Sorry, I have no line for that.",
      "rules": [
        {"user": "what time is it", "function_call": {"name": "get_time", "arguments": {}}},
        {"after_function": "get_time", "reply": "It is {output} now."},
        {"user_regex": "my name is (\\\\w+)", "reply": "Nice to meet you, {1}."},
        {"turn": 1, "reply": "Hello! How can I help?"}
      ]
    }

For each response the brain looks at the latest input: the last user message (its text, or the
transcript of its audio) or the last function output, and takes the first rule that matches it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .brains import (
    BrainEvent,
    BrainFinish,
    BrainRequest,
    FunctionCall,
    HistoryItem,
    TextDelta,
    estimate_tokens,
)

DEFAULT_REPLY = "I have no scripted line for that."
_RULE_KEYS = {"user", "user_regex", "turn", "after_function", "reply", "function_call", "note"}
_TEMPLATE = re.compile(r"\{(\w+)\}")


class ScriptError(ValueError):
    """A script that does not follow the format; the message names the rule and the field."""


@dataclass
class Rule:
    """One line of the script: conditions (all must hold) and what to answer."""

    user: str | None = None
    user_regex: re.Pattern[str] | None = None
    turn: int | None = None
    after_function: str | None = None
    reply: str | None = None
    function_call: dict[str, Any] | None = None

    def match(
        self, latest: HistoryItem, turn: int, history: list[HistoryItem]
    ) -> dict[str, str] | None:
        """The template values if this rule answers ``latest``, else ``None``."""
        values: dict[str, str] = {"turn": str(turn)}
        if latest.type == "function_call_output":
            if self.after_function is None:
                return None
            name = next(
                (
                    h.name or ""
                    for h in history
                    if h.type == "function_call" and h.call_id == latest.call_id
                ),
                "",
            )
            if self.after_function not in ("*", name):
                return None
            values.update(output=latest.output, name=name, user=_last_user_text(history))
            return values
        if self.after_function is not None:
            return None
        text = latest.text
        values["user"] = text
        if self.turn is not None and self.turn != turn:
            return None
        if self.user is not None and self.user.lower() not in text.lower():
            return None
        if self.user_regex is not None:
            m = self.user_regex.search(text)
            if m is None:
                return None
            values.update({str(i): g or "" for i, g in enumerate(m.groups(), start=1)})
            values.update({k: v or "" for k, v in m.groupdict().items()})
        return values


def _last_user_text(history: list[HistoryItem]) -> str:
    for h in reversed(history):
        if h.type == "message" and h.role == "user":
            return h.text
    return ""


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` by its value; unknown names stay as written (JSON braces are safe)."""
    return _TEMPLATE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _fill_json(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return fill(value, values)
    if isinstance(value, list):
        return [_fill_json(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill_json(v, values) for k, v in value.items()}
    return value


def parse_script(data: Mapping[str, Any] | list[Any]) -> tuple[list[Rule], str]:
    """Rules and default reply of a script (a dict with ``rules``, or a bare list of rules)."""
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, Mapping):
        raise ScriptError("a script is a JSON object with 'rules' (or a JSON list of rules)")
    unknown = set(data) - {"rules", "default", "note"}
    if unknown:
        raise ScriptError(f"unknown top-level key(s) {sorted(unknown)}: use 'rules' and 'default'")
    default = data.get("default", DEFAULT_REPLY)
    if not isinstance(default, str):
        raise ScriptError("'default' must be a string")
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ScriptError("'rules' must be a list")
    rules: list[Rule] = []
    for n, raw in enumerate(raw_rules, start=1):
        where = f"rule {n}"
        if not isinstance(raw, Mapping):
            raise ScriptError(f"{where} must be an object")
        bad = set(raw) - _RULE_KEYS
        if bad:
            raise ScriptError(
                f"{where}: unknown key(s) {sorted(bad)}; keys are {sorted(_RULE_KEYS)}"
            )
        if "reply" not in raw and "function_call" not in raw:
            raise ScriptError(f"{where}: needs 'reply' or 'function_call'")
        rule = Rule()
        for key in ("user", "reply", "after_function"):
            if key in raw:
                if not isinstance(raw[key], str):
                    raise ScriptError(f"{where}: '{key}' must be a string")
                setattr(rule, key, raw[key])
        if "user_regex" in raw:
            try:
                rule.user_regex = re.compile(raw["user_regex"], re.IGNORECASE)
            except (re.error, TypeError) as exc:
                raise ScriptError(f"{where}: 'user_regex' does not compile: {exc}") from None
        if "turn" in raw:
            if not isinstance(raw["turn"], int) or isinstance(raw["turn"], bool) or raw["turn"] < 1:
                raise ScriptError(f"{where}: 'turn' must be a whole number from 1")
            rule.turn = raw["turn"]
        if "function_call" in raw:
            call = raw["function_call"]
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                raise ScriptError(
                    f"{where}: 'function_call' must be {{'name': ..., 'arguments': ...}}"
                )
            if set(call) - {"name", "arguments"}:
                raise ScriptError(f"{where}: 'function_call' takes only 'name' and 'arguments'")
            rule.function_call = dict(call)
        if rule.after_function is not None and (
            rule.user is not None or rule.user_regex is not None or rule.turn is not None
        ):
            raise ScriptError(f"{where}: 'after_function' cannot be combined with user conditions")
        rules.append(rule)
    return rules, default


def load_script(path: str | Path) -> tuple[list[Rule], str]:
    """Read and check a script file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScriptError(f"cannot read the script {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ScriptError(f"the script {path} is not valid JSON: {exc}") from None
    return parse_script(data)


class ScriptedBrain:
    """Answers by the script. Replies stream word by word; ``max_output_tokens`` cuts them.

    A ``function_call`` rule fires only when the function is offered (session or response
    ``tools``) and ``tool_choice`` allows it; otherwise the next rule is tried. Tokens are
    counted one per word or punctuation mark.
    """

    name = "scripted"
    speculative = True

    def __init__(self, rules: list[Rule], default: str = DEFAULT_REPLY) -> None:
        self.rules = rules
        self.default = default

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedBrain:
        rules, default = load_script(path)
        return cls(rules, default)

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | list[Any]) -> ScriptedBrain:
        rules, default = parse_script(data)
        return cls(rules, default)

    def choose(self, request: BrainRequest) -> tuple[Rule | None, dict[str, str]]:
        """The rule that answers this request and its template values."""
        history = request.history
        latest = next(
            (
                h
                for h in reversed(history)
                if h.type == "function_call_output" or (h.type == "message" and h.role == "user")
            ),
            None,
        )
        turn = sum(1 for h in history if h.type == "message" and h.role == "user")
        if latest is None:
            return None, {"turn": str(turn), "user": ""}
        offered = set(request.tool_names)
        for rule in self.rules:
            if rule.function_call is not None and rule.function_call["name"] not in offered:
                continue
            values = rule.match(latest, turn, history)
            if values is not None:
                return rule, values
        return None, {"turn": str(turn), "user": latest.text if latest.type == "message" else ""}

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainEvent]:
        rule, values = self.choose(request)
        text = fill(rule.reply, values) if rule and rule.reply is not None else None
        if rule is None:
            text = fill(self.default, values)
        limit = request.max_output_tokens
        used = 0
        reason = "stop"
        if text:
            for piece in re.findall(r"\s*\S+", text):
                n = estimate_tokens(piece)
                if limit is not None and used + n > limit:
                    reason = "length"
                    break
                used += n
                yield TextDelta(piece)
        if rule is not None and rule.function_call is not None and reason == "stop":
            args = _fill_json(rule.function_call.get("arguments", {}), values)
            arguments = args if isinstance(args, str) else json.dumps(args)
            yield FunctionCall(rule.function_call["name"], arguments)
            used += estimate_tokens(arguments)
        prompt = request.instructions + " ".join(
            h.text or h.output or h.arguments for h in request.history
        )
        yield BrainFinish("length" if reason == "length" else "stop", estimate_tokens(prompt), used)

    async def aclose(self) -> None:
        return None
