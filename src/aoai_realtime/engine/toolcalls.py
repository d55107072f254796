"""How the local brain calls function tools: first which tool (or none), then its arguments.

SmolLM2 135M cannot be asked "which tool?" and trusted: asked directly, it picked the right tool
for 9 of 20 requests; asked the usual way (tools listed in the prompt, "reply with JSON") it
never wrote a call at all. It is a fair judge of how *likely* a text is, though, and every
choice here is made that way, by scoring, never by free generation:

1. **Which tool** (a noisy channel): how much likelier are the user's words after a tool's
   description than after starts that need no tool (:data:`NO_TOOL_CONTEXTS`)? The best tool
   is called if it explains the words by :data:`TOOL_MARGIN` over every such start. The words
   are scored after every description in one batch (:class:`~.speech.llm.ContextScorer`).
2. **The arguments**, one at a time, in the schema's order: the options are
   what the user said that fits the argument's type (a run of their words for free text, the
   numbers they said, an ``enum``'s values, ``true``/``false``), each scored as the next thing
   in the JSON the model is writing. Made to pick among the words it heard, the model copies
   "London" where, writing freely, it wrote "UTC+03:59". A free-text value the model finds
   unlikely (:data:`ARGUMENT_FLOOR`: "Thanks" as a city) means the request was not for this
   tool after all, and the brain answers instead. An optional argument is given only when the
   user said a value that fits it. Arguments of other kinds (objects, arrays) are written
   under a grammar made from the JSON schema (:func:`write_arguments`).

``tool_choice`` is honoured as the service does: ``none`` never calls, ``required`` always
calls (the best tool, no margin or floor), a named function calls that one. At most one call is
made per response, which ``parallel_tool_calls`` allows either way.

After the function's output the brain answers with it (:func:`result_facts`,
:func:`numbers_grammar`): the output is stated as facts in the prompt, and the answer's numbers
are held to the output's and the user's, so the time it says is the time the tool returned.

Everything here but the model calls passed in is pure, so the rules are tested without a model.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ARGUMENT_FLOOR",
    "ChosenArguments",
    "NO_TOOL_CONTEXTS",
    "TOOL_MARGIN",
    "ToolDecision",
    "arguments_messages",
    "choose",
    "choose_arguments",
    "constrained_schema",
    "decide",
    "decision_contexts",
    "function_tools",
    "grounded",
    "lead_numbers",
    "numbers_grammar",
    "parse_arguments",
    "result_facts",
    "result_numbers",
    "spans",
    "tool_context",
    "value_options",
    "write_arguments",
]

NO_TOOL_CONTEXTS: tuple[str, ...] = (
    "A question:",
    "Small talk with a friend:",
    "A general knowledge question:",
    "A request to a chatbot:",
)
"""Starts after which a request needs no tool. The words must be likelier after a tool's
description than after the likeliest of these, by :data:`TOOL_MARGIN`, for a call."""

TOOL_MARGIN = 1.0
"""How much likelier (natural log, summed over the request's tokens) the request must be after
the best tool's description than after every no-tool start, under ``tool_choice: auto``."""

ARGUMENT_FLOOR = -12.0
"""The least log-probability a free-text argument chosen among the user's words may have
under ``auto``: below it the model finds no word a fit ("Thanks" as a city: -27; real cities
-3 to -11), and it answers instead of calling.

Both were chosen on a development set of 30 requests (four tools, ten plain requests), where
they gave 15 of 20 right calls and no false call; ``benchmarks/bench_tools.py`` reports them
on 48 others."""

MAX_STRING_LENGTH = 80
"""Longest string argument the grammar lets the model write (unless the schema says less)."""

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class ToolDecision:
    """Which tool to call (``None``: answer in words) and the margins it was chosen by."""

    name: str | None
    margin: float = 0.0
    margins: dict[str, float] = field(default_factory=dict)


def function_tools(tools: Sequence[dict[str, Any]], allowed: Sequence[str]) -> list[dict[str, Any]]:
    """The function tools named in ``allowed``, in the session's order."""
    wanted = set(allowed)
    return [
        t
        for t in tools
        if t.get("type", "function") == "function" and t.get("name") in wanted and t.get("name")
    ]


def tool_context(tool: dict[str, Any]) -> str:
    """The text a request is scored after, for one tool: its name, description and inputs."""
    words = str(tool.get("name", "")).replace("_", " ").replace("-", " ").strip()
    description = " ".join(str(tool.get("description") or "").split())
    if len(description) > 200:  # the first sentence or so says what the tool is for
        description = description[:200].rsplit(" ", 1)[0] + "..."
    props = (tool.get("parameters") or {}).get("properties") or {}
    needs = ", ".join(str(k).replace("_", " ") for k in list(props)[:6])
    text = f"The {words} tool: {description}" if description else f"The {words} tool."
    if needs:
        text += f" It needs: {needs}."
    return f"{text}\nA question for the {words} tool:"


def choose(
    no_tool: Sequence[float],
    tools: dict[str, float],
    tool_choice: str | dict[str, Any],
    margin: float = TOOL_MARGIN,
) -> ToolDecision:
    """The decision from summed log-probabilities: of the request after each no-tool start
    (``no_tool``) and after each tool's description (``tools``, by name)."""
    if not tools:
        return ToolDecision(None)
    base = max(no_tool) if no_tool else 0.0
    margins = {name: score - base for name, score in tools.items()}
    best = max(margins, key=lambda n: margins[n])
    if tool_choice == "required" or isinstance(tool_choice, dict):
        return ToolDecision(best, margins[best], margins)
    if margins[best] > margin:
        return ToolDecision(best, margins[best], margins)
    return ToolDecision(None, margins[best], margins)


def decision_contexts(tools: Sequence[dict[str, Any]]) -> list[str]:
    """What a request is scored after to choose among ``tools``: the starts that need no tool,
    then each tool's context (the order :func:`decide` reads the scores in)."""
    return list(NO_TOOL_CONTEXTS) + [tool_context(t) for t in tools if t.get("name")]


async def decide(
    score: Callable[[list[str], str], Awaitable[list[Any]]],
    tools: Sequence[dict[str, Any]],
    request_text: str,
    tool_choice: str | dict[str, Any],
    margin: float = TOOL_MARGIN,
) -> ToolDecision:
    """Choose a tool for ``request_text`` (``score``: contexts and text to per-token
    log-probabilities, e.g. a :class:`~.speech.llm.ContextScorer` run on the model's thread)."""
    tools = [t for t in tools if t.get("name")]
    if not tools or tool_choice == "none":
        return ToolDecision(None)
    if len(tools) == 1 and (tool_choice == "required" or isinstance(tool_choice, dict)):
        return ToolDecision(str(tools[0]["name"]))
    scores = await score(decision_contexts(tools), " " + request_text.strip())
    sums = [float(s.sum()) for s in scores]
    n = len(NO_TOOL_CONTEXTS)
    by_tool = {str(t["name"]): sums[n + i] for i, t in enumerate(tools)}
    return choose(sums[:n], by_tool, tool_choice, margin)


_FUNCTION_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "in",
        "on",
        "at",
        "to",
        "of",
        "for",
        "from",
        "into",
        "by",
        "with",
        "and",
        "or",
        "but",
        "is",
        "are",
        "was",
        "were",
        "be",
        "am",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "my",
        "your",
        "our",
        "me",
        "you",
        "i",
        "we",
        "he",
        "she",
        "they",
        "them",
        "what",
        "whats",
        "which",
        "who",
        "how",
        "do",
        "does",
        "did",
        "can",
        "could",
        "would",
        "will",
        "should",
        "please",
        "now",
        "right",
        "there",
        "here",
        "it's",
        "what's",
        "some",
        "any",
        "all",
    }
)
"""Words a value does not start or end with ("in Tokyo" is "Tokyo"): fewer, likelier options."""


def spans(text: str, longest: int = 4, most: int = 60) -> list[str]:
    """Runs of 1 to ``longest`` consecutive words of ``text``, as written (``most`` at most),
    that neither start nor end with a function word (:data:`_FUNCTION_WORDS`)."""
    words = [w.strip('.,!?;:"()[]{}') for w in text.split()]
    words = [w for w in words if w]
    out: list[str] = []
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            run = words[i : i + n]
            if run[0].lower() in _FUNCTION_WORDS or run[-1].lower() in _FUNCTION_WORDS:
                continue
            span = " ".join(run)
            if span not in out:
                out.append(span)
    return out[:most]


def constrained_schema(schema: dict[str, Any] | None, heard: str) -> dict[str, Any]:
    """The tool's parameter schema as the grammar should enforce it for this request.

    Free-text strings (no ``enum``, ``const``, ``format`` or ``pattern``) may only be words the
    user said (:func:`spans`), so a tiny model copies a value instead of inventing one; other
    strings are bounded in length. A missing or empty schema means an object of any keys, as
    the service reads it.
    """
    if not isinstance(schema, dict) or not schema:
        return {"type": "object"}
    out = copy.deepcopy(schema)
    choices = spans(heard)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and not any(
                k in node for k in ("enum", "const", "format", "pattern")
            ):
                if choices:
                    node["enum"] = choices
                    node.pop("maxLength", None)
                    node.pop("minLength", None)
                else:
                    node["maxLength"] = min(int(node.get("maxLength", MAX_STRING_LENGTH)), 200)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def arguments_messages(
    tool: dict[str, Any], conversation: Sequence[dict[str, Any]]
) -> list[dict[str, str]]:
    """What the model reads to write the arguments: the function, then the conversation."""
    props = (tool.get("parameters") or {}).get("properties") or {}
    required = set((tool.get("parameters") or {}).get("required") or [])
    lines = []
    for key, spec in list(props.items())[:12]:
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type", "value")
        note = " ".join(str(spec.get("description") or "").split())[:160]
        if spec.get("enum"):
            note = (note + " One of: " + ", ".join(map(str, spec["enum"][:12]))).strip()
        optional = "" if key in required else ", optional"
        lines.append(f"- {key} ({kind}{optional}){': ' + note if note else ''}")
    system = (
        f"You call the function {tool.get('name')}: "
        f"{' '.join(str(tool.get('description') or '').split())[:300]}\n"
        + ("Its arguments:\n" + "\n".join(lines) + "\n" if lines else "")
        + "Reply with the arguments as JSON. Copy the values from the user's words, "
        'for example "How many euros is 20 dollars?" gives '
        '{"amount": 20, "from_currency": "dollars", "to_currency": "euros"}.'
    )
    turns = [
        {"role": str(m["role"]), "content": str(m.get("content") or "")}
        for m in conversation
        if m.get("role") in ("user", "assistant") and m.get("content")
    ][-4:]
    return [{"role": "system", "content": system}, *turns]


def parse_arguments(text: str) -> dict[str, Any] | None:
    """The arguments as an object, or ``None`` if ``text`` is not a JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def grounded(arguments: dict[str, Any], schema: dict[str, Any], heard: str) -> bool:
    """Whether every required number is one the user said (when the user said any number):
    a tiny model that finds no value invents one."""
    props = (schema.get("properties") or {}) if isinstance(schema, dict) else {}
    required = (schema.get("required") or []) if isinstance(schema, dict) else []
    said = {float(n) for n in _NUMBER.findall(heard.replace(",", ""))}
    if not said:
        return True
    for key in required:
        found = props.get(key)
        spec: dict[str, Any] = found if isinstance(found, dict) else {}
        value = arguments.get(key)
        if spec.get("enum") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if float(value) not in said:
            return False
    return True


async def write_arguments(
    complete: Callable[[list[dict[str, str]], dict[str, Any]], Awaitable[str]],
    tool: dict[str, Any],
    conversation: Sequence[dict[str, Any]],
    heard: str,
) -> dict[str, Any] | None:
    """The call's arguments for the request ``heard``, written by the model (``complete``:
    messages and a JSON schema to the JSON text), or ``None`` when they do not hold."""
    schema = constrained_schema(tool.get("parameters"), heard)
    text = await complete(arguments_messages(tool, conversation), schema)
    arguments = parse_arguments(text)
    if arguments is None or not grounded(arguments, schema, heard):
        return None
    return arguments


# ---------------------------------------------------------------------------- arguments chosen


def value_options(
    spec: dict[str, Any], heard: str, taken: Sequence[Any]
) -> list[tuple[str, Any]] | None:
    """The values an argument may take for this request, as ``(JSON text, value)``: empty
    when nothing the user said fits (a number nobody said, no words left), ``None`` when its
    kind is not one chosen from a list (objects, arrays, formatted strings).

    Free text is a run of the user's words that repeats no word of an argument already
    chosen (``taken``): "10 kilometers" is neither the value nor the unit once ``10`` is the
    value. An ``enum`` gives its values, a boolean ``true`` and ``false``, a number the numbers
    the user said.
    """
    kind = spec.get("type")
    if "enum" in spec and isinstance(spec["enum"], list) and spec["enum"]:
        return [(json.dumps(v, ensure_ascii=False), v) for v in spec["enum"][:40]]
    if "const" in spec:
        return [(json.dumps(spec["const"], ensure_ascii=False), spec["const"])]
    if kind == "boolean":
        return [("true", True), ("false", False)]
    if kind in ("number", "integer"):
        found: list[tuple[str, Any]] = []
        for text in _NUMBER.findall(heard.replace(",", "")):
            value: Any = float(text)
            if value.is_integer():
                value = int(value)
            elif kind == "integer":
                continue
            if (json.dumps(value), value) not in found and value not in taken:
                found.append((json.dumps(value), value))
        return found
    if kind == "string" and not any(k in spec for k in ("format", "pattern")):
        used = {w for v in taken for w in _words(str(v))}
        out = [(json.dumps(span, ensure_ascii=False), span) for span in spans(heard)]
        return [o for o in out if not (_words(o[1]) & used)]
    return None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@dataclass
class ChosenArguments:
    """What :func:`choose_arguments` found: the arguments, or why there are none.

    ``arguments`` is ``None`` when a required argument has no value the user said
    (``missing``), or ``generate`` is set when one is of a kind that must be written instead
    (an object, an array, a formatted string: :func:`write_arguments`). ``weakest`` is the
    lowest log-probability of a free-text value chosen (0 when there is none).
    """

    arguments: dict[str, Any] | None
    missing: str | None = None
    generate: bool = False
    weakest: float = 0.0


async def choose_arguments(
    score_options: Callable[[str, list[str]], Awaitable[list[Any]]],
    prompt: str,
    tool: dict[str, Any],
    heard: str,
) -> ChosenArguments:
    """The call's required arguments, each chosen among :func:`value_options` by how likely
    the model finds it next in the JSON it is writing.

    ``prompt`` is the chat prompt up to the assistant's reply (the model's template applied to
    :func:`arguments_messages`). Each option is scored with what ends it (the closing quote and
    the next comma or brace), so a run of words cut short scores low. One batch per argument,
    after a context that grows by the arguments chosen so far: a few decodes, where writing
    under a grammar costs one per token (a call took 0.7 to 2 s that way).
    """
    schema = tool.get("parameters") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not props:
        return ChosenArguments({})
    if schema.get("type", "object") != "object" or not isinstance(props, dict):
        return ChosenArguments(None, generate=True)
    required = set(schema.get("required") or [])
    keys = list(props)
    chosen: dict[str, Any] = {}
    weakest = 0.0
    written = "{"
    heard_words = _words(heard)
    for n, key in enumerate(keys):
        spec = props[key] if isinstance(props[key], dict) else {}
        options = value_options(spec, heard, list(chosen.values()))
        free_text = spec.get("type") == "string" and "enum" not in spec and "const" not in spec
        if key not in required:
            # an optional argument is given only when the user said a value for it: their
            # words or numbers, or an enum value they named
            if not options or (not free_text and spec.get("type") not in ("number", "integer")):
                options = [o for o in options or [] if _words(str(o[1])) <= heard_words]
                if not options or len(options) > 1:
                    continue
        elif options is None:
            return ChosenArguments(None, generate=True)
        elif not options:
            return ChosenArguments(None, missing=key)
        end = "}" if n == len(keys) - 1 else ","
        head = written + json.dumps(key) + ": "
        quoted = all(text.startswith('"') for text, _ in options)
        if quoted:  # the opening quote is context; what follows it is the choice
            head += '"'
        texts = [(text[1:] if quoted else text) + end for text, _ in options]
        scores = await score_options(prompt + head, texts)
        best = max(range(len(options)), key=lambda i: float(scores[i].sum()))
        score = float(scores[best].sum())
        if key not in required and free_text and score < ARGUMENT_FLOOR:
            continue  # nothing the user said fits it well: left out
        chosen[key] = options[best][1]
        if free_text:
            weakest = min(weakest, score)
        written = head + texts[best][:-1] + ", "
    written = written.rstrip(", ")
    log.debug("arguments of %s: %s (weakest free text %.1f)", tool.get("name"), chosen, weakest)
    return ChosenArguments(chosen, weakest=weakest)


# ---------------------------------------------------------------------------- answering with a result

_RESULT_NUMBER = re.compile(r"\d+(?:[.:]\d+)*")


def result_facts(name: str, output: str) -> str:
    """A function's output as a line a small model can read: ``key: value; key: value``."""
    try:
        value = json.loads(output)
    except ValueError:
        value = output
    pairs: list[str] = []

    def add(prefix: str, item: Any) -> None:
        if isinstance(item, dict):
            for k, v in list(item.items())[:20]:
                add(f"{prefix} {k}".strip(), v)
        elif isinstance(item, list):
            pairs.append(f"{prefix}: {', '.join(map(str, item[:10]))}")
        else:
            pairs.append(f"{prefix}: {item}" if prefix else str(item))

    add("", value)
    text = "; ".join(p.replace("_", " ") for p in pairs)[:600]
    return f"You looked this up with {name.replace('_', ' ')}: {text}."


def result_numbers(*texts: str) -> list[str]:
    """Numbers an answer may say: those in the texts (in a JSON text, in its values only, not
    its keys: ``time_24h`` is no number to say), with decimals also rounded (6.21371: 6.2, 6.21
    and 6), longest first."""
    found: set[str] = set()
    for text in texts:
        for value in _values(text):
            for number in _RESULT_NUMBER.findall(value):
                found.add(number)
                if number.count(".") == 1 and ":" not in number:
                    f = float(number)
                    found.update({f"{f:.1f}", f"{f:.2f}", str(round(f))})
    return sorted(found, key=lambda n: (-len(n), n))


def _values(text: str) -> list[str]:
    """The scalar values of a JSON text as strings, or the text itself if it is not JSON."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return [text]
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif node is not None and not isinstance(node, bool):
            out.append(str(node))

    walk(parsed)
    return out


def numbers_grammar(numbers: Sequence[str], lead: Sequence[str] | None = None) -> str | None:
    """A GBNF grammar for one line of text whose numbers are all in ``numbers``, said whole
    and apart (``None`` when there are none: the answer is then unconstrained). With ``lead``
    the first number said must be one of those (:func:`lead_numbers`: the answer leads with
    what was asked for, not with a day of the month that came later in the result)."""
    if not numbers:
        return None
    alternatives = " | ".join(json.dumps(n) for n in numbers[:200])
    first = " | ".join(json.dumps(n) for n in (lead or numbers)[:200])
    # A number is followed by a character that is not part of a number: "2026" and "12:10"
    # cannot be joined into "202612:10", nor "2026-12" be made of two; no arithmetic signs.
    # A full stop or comma after a number ends it only before a space or the end: "2.3:04"
    # would be two numbers read as one.
    return (
        "root ::= plain* (lead (punct? | sep item* (num punct?)?))?\n"
        "plain ::= char | punct\n"
        "item ::= plain | num sep\n"
        'sep ::= char | punct " "\n'
        "char ::= [^0-9:+*/=\\n.,-]\n"
        "punct ::= [.,]\n"
        f"lead ::= {first}\n"
        f"num ::= {alternatives}\n"
    )


def lead_numbers(heard: str, *outputs: str) -> list[str]:
    """The numbers an answer may say first: the user's own, and each output's first value
    that has a number (a result puts what was asked for first: ``current_time`` its time)."""
    firsts = []
    for output in outputs:
        value = next((v for v in _values(output) if _RESULT_NUMBER.search(v)), None)
        if value is not None:
            firsts.append(value)
    return result_numbers(heard, *firsts)
