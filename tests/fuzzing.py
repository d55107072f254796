"""Malformed client events, seeded: the generator and the tally that ``test_fuzz.py`` (a few
thousand events) and ``benchmarks/bench_fuzz.py`` (the long run) share.

The events are valid ones of either dialect with one to three fields replaced by a value of
another type, removed, or joined by an unknown field; now and then an event's ``type`` or
``event_id`` is replaced by a long string. Every event carries an ``event_id`` of its own (unless
a mutation took it), so each refusal can be traced to the event that caused it. An event that
is sure to be wrong (a value of another JSON type than the field takes, an unknown field where
the schema has none) is marked: the engine must refuse it, not convert the value.

What came back is tallied (:class:`Tally`): errors by type and code, and every way a refusal can
fall short of the service's: a ``server_error``, a field error without ``param``, a ``param``
with pydantic's union tags in it (``.int``, ``literal[...]``) or, for a preview client, in GA
terms (``session.audio.output.voice``), an error without the ``event_id`` of its event, a message
that echoes a value unbounded, a wrong event that was accepted.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aoai_realtime.protocol.errors import render_path
from aoai_realtime.protocol.params import PREVIEW_PARAMS

SEED = 20261201

GA_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "Be brief.",
    "output_modalities": ["text"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": None,
            "transcription": None,
            "noise_reduction": None,
        },
        "output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": 24000}, "speed": 1.0},
    },
    "max_output_tokens": 50,
    "tools": [
        {
            "type": "function",
            "name": "f",
            "description": "A tool.",
            "parameters": {"type": "object"},
        }
    ],
    "tool_choice": "auto",
    "tracing": "auto",
    "truncation": "auto",
}
GA_VAD: dict[str, Any] = {  # turn detection and transcription: refused without speech models,
    "type": "realtime",  # but only once every field has been validated
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
                "idle_timeout_ms": 5000,
            },
            "transcription": {"model": "whisper-1", "language": "en", "prompt": "p"},
            "noise_reduction": {"type": "near_field"},
        }
    },
    "tool_choice": {"type": "function", "name": "f"},
}
PREVIEW_SESSION: dict[str, Any] = {
    "modalities": ["text"],
    "instructions": "Be brief.",
    "voice": "alloy",
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "turn_detection": None,
    "input_audio_transcription": None,
    "temperature": 0.8,
    "max_response_output_tokens": 50,
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
}
PREVIEW_VAD: dict[str, Any] = {
    "input_audio_format": "g711_ulaw",
    "turn_detection": {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": False,
        "interrupt_response": False,
    },
    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
    "input_audio_noise_reduction": {"type": "far_field"},
    "tool_choice": {"type": "function", "name": "f"},
}
USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
SPOKEN = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_audio", "audio": "AAAAAA=="}],
}
CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "c1", "output": "42"}
SYSTEM = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Hi"}]}


def _assistant(dialect: str) -> dict[str, Any]:
    part = "output_text" if dialect == "ga" else "text"
    return {"type": "message", "role": "assistant", "content": [{"type": part, "text": "Hi."}]}


GA_RESPONSE: dict[str, Any] = {
    "instructions": "Hi.",
    "output_modalities": ["text"],
    "max_output_tokens": 20,
    "metadata": {"a": "b"},
    "audio": {"output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": 24000}}},
    "tool_choice": "none",
    "input": [USER],
}
GA_OUT_OF_BAND: dict[str, Any] = {
    "conversation": "none",
    "output_modalities": ["text"],
    "tools": [{"type": "function", "name": "f"}],
    "tool_choice": {"type": "function", "name": "f"},
    "input": [USER, {"type": "item_reference", "id": "i"}],
}
PREVIEW_RESPONSE: dict[str, Any] = {
    "instructions": "Hi.",
    "modalities": ["text"],
    "max_response_output_tokens": 20,
    "voice": "alloy",
    "output_audio_format": "pcm16",
    "temperature": 0.8,
    "metadata": {"a": "b"},
    "input": [USER],
}
PREVIEW_OUT_OF_BAND: dict[str, Any] = {
    "conversation": "none",
    "modalities": ["text", "audio"],
    "tools": [{"type": "function", "name": "f"}],
    "input": [USER],
}


def seeds(dialect: str) -> list[dict[str, Any]]:
    """The valid events the malformed ones are made from."""
    ga = dialect == "ga"
    return [
        {"type": "session.update", "session": GA_SESSION if ga else PREVIEW_SESSION},
        {"type": "session.update", "session": GA_VAD if ga else PREVIEW_VAD},
        {"type": "conversation.item.create", "item": USER},
        {"type": "conversation.item.create", "item": SPOKEN, "previous_item_id": "root"},
        {"type": "conversation.item.create", "item": CALL},
        {"type": "conversation.item.create", "item": OUTPUT},
        {"type": "conversation.item.create", "item": SYSTEM},
        {"type": "conversation.item.create", "item": _assistant(dialect)},
        {"type": "response.create", "response": GA_RESPONSE if ga else PREVIEW_RESPONSE},
        {"type": "response.create", "response": GA_OUT_OF_BAND if ga else PREVIEW_OUT_OF_BAND},
        {"type": "input_audio_buffer.append", "audio": "AAAAAA=="},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {
            "type": "conversation.item.truncate",
            "item_id": "i",
            "content_index": 0,
            "audio_end_ms": 9,
        },
        {"type": "conversation.item.retrieve", "item_id": "i"},
        {"type": "conversation.item.delete", "item_id": "i"},
        {"type": "response.cancel", "response_id": "r"},
    ]


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**12,
    2**64,
    1e308,
    "",
    "x",
    "1",
    "0.5",
    "\ud800",
    "é" * 300,
    "x" * 3000,
    [],
    [1],
    {},
    {"type": []},
]
FREE_FORM = {"parameters"}
"""Keys whose value is the client's own JSON (a tool's JSON schema): nothing in it is refused."""
UNIONS: dict[str, set[str]] = {  # the JSON kinds a field takes besides its seed's
    "tool_choice": {"string", "object"},
    "tracing": {"string", "object"},
    "truncation": {"string", "object"},
    "max_output_tokens": {"integer", "string"},
    "max_response_output_tokens": {"integer", "string"},
}
FIELD_CODES = {
    "invalid_value",
    "invalid_type",
    "unknown_parameter",
    "missing_required_parameter",
    "string_above_max_length",
}
"""The codes of a refusal that names a field: their ``param`` must be set."""

SENTINEL_ID = "evt_sentinel"
SENTINEL = json.dumps({"type": "no.such.event", "event_id": SENTINEL_ID})
"""Sent last: the engine refuses it, and handles events in order, so once its error has come
every event before it has been handled."""

SAMPLES = 200
"""How many cases of each problem a tally keeps (the count is kept apart)."""

MAX_MESSAGE = 1000
"""The longest message a refusal may have (values are echoed 100 characters long at most)."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _takes(original: Any, new: Any, key: Any) -> bool:
    """Whether a field whose valid value is ``original`` may take a value of ``new``'s kind."""
    was, now = _kind(original), _kind(new)
    if was == "null" or now == "null" or was == now:
        return True  # null: optional fields take it, nullable ones take anything
    if was == "number" and now == "integer":
        return True  # an integer is a number
    return isinstance(key, str) and now in UNIONS.get(key, set())


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


_MISSING = object()


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        found = (isinstance(obj, dict) and isinstance(key, str) and key in obj) or (
            isinstance(obj, list) and isinstance(key, int) and key < len(obj)
        )
        if not found:
            return _MISSING
        obj = obj[key]
    return obj


@dataclass
class Fuzzed:
    """One malformed event: its frame, its ``event_id`` (if it kept a string one) and, when it
    is sure to be wrong, why (the engine must refuse it)."""

    text: str
    event_id: str | None
    wrong: str | None


def _mutated(rng: random.Random, event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``event`` with one to three mutations, and why it is sure to be wrong (if it is): a value
    of a kind the field's valid value (in ``event``) does not have, an unknown field."""
    out: dict[str, Any] = json.loads(json.dumps(event))
    marks: list[tuple[tuple[Any, ...], Any, str]] = []  # (path, value put there, why)
    keep_id = rng.random() < 0.95  # the event_id is mutated now and then only: it traces
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(out) if p != ("type",) and (p != ("event_id",) or not keep_id)]
        if not paths:
            break
        path = rng.choice(paths)
        parent: Any = out
        for key in path[:-1]:
            parent = parent[key]
        free = any(key in FREE_FORM for key in path[:-1])
        roll = rng.random()
        if roll < 0.7:
            value = json.loads(json.dumps(rng.choice(VALUES)))
            original = _at(event, path)  # the valid value (not an earlier mutation's)
            parent[path[-1]] = value
            if original is not _MISSING and not free and not _takes(original, value, path[-1]):
                marks.append((path, value, f"{_kind(value)} for the {_kind(original)}"))
        elif roll < 0.85 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            key = f"bogus_{rng.randint(0, 9)}"
            parent[key] = 1
            if not free:
                marks.append(((*path[:-1], key), 1, "an unknown field"))
    wrong = None
    for path, value, why in marks:  # still there (a later mutation may have removed it)?
        now = _at(out, path)
        if now is not _MISSING and type(now) is type(value) and now == value:
            wrong = f"{render_path(path)}: {why}"
            break
    return out, wrong


def fuzzed(dialect: str, count: int, *, seed: int = SEED, prefix: str = "fz") -> Iterator[Fuzzed]:
    """``count`` malformed events of ``dialect`` (``"ga"``/``"preview"``), the same for a seed."""
    rng = random.Random(f"{seed}-{dialect}")
    valid = seeds(dialect)
    for n in range(count):
        event = {**rng.choice(valid), "event_id": f"{prefix}_{n}"}
        roll = rng.random()
        if roll < 0.01:  # a long event type: refused, echoed bounded
            event = {"type": "t" * rng.randint(200, 20000), "event_id": event["event_id"]}
            wrong: str | None = "a long unknown type"
        elif roll < 0.02:  # a long event id: refused (it would be echoed in every error)
            event = {**event, "event_id": "e" * rng.randint(513, 20000)}
            wrong = "a long event_id"
        else:
            event, wrong = _mutated(rng, event)
        event_id = event.get("event_id")
        keep = event_id if isinstance(event_id, str) and len(event_id) <= 512 else None
        yield Fuzzed(json.dumps(event), keep, wrong)


# ------------------------------------------------------------------------------ what came back

_TAG = re.compile(
    r"\.(int|str|float|bool|none)(\.|\[|$)|literal\[|dict\[|list\[|function-|tagged-union|"
    r"\.(message|function_call|function_call_output|input_text|input_audio|input_image|"
    r"output_text|output_audio|item_reference)(\.|\[|$)"
)


def _ga_named(param: str) -> bool:
    """Whether ``param`` uses a GA name a preview client does not know."""
    return any(param == ga or param.startswith((f"{ga}.", f"{ga}[")) for ga in PREVIEW_PARAMS)


@dataclass
class Tally:
    """What came back from one or more sessions (see the module documentation)."""

    dialect: str = "ga"
    sent: int = 0
    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    problems: dict[str, list[Any]] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)
    """event_id -> why, for the sent events that must be refused."""
    anonymous: int = 0
    """Events sent without a usable ``event_id`` (a mutation took it)."""
    refused: set[str] = field(default_factory=set)
    """event_ids of the events refused with a field error."""
    without_id: int = 0
    policed: set[str] = field(default_factory=set)
    """The parameters a middle tier's policy dropped (``policy_violation``, said once each)."""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def problem(self, kind: str, what: Any) -> None:
        seen = self.problems.setdefault(kind, [])
        if len(seen) < SAMPLES:
            seen.append(what)
        self.problems.setdefault(f"{kind} (count)", [0])[0] += 1

    def sending(self, event: Fuzzed) -> None:
        self.sent += 1
        if event.event_id is None:
            self.anonymous += 1
        elif event.wrong is not None:
            self.wrong[event.event_id] = event.wrong

    def see(self, event: dict[str, Any]) -> None:
        if event.get("type") != "error":
            return
        error = event.get("error") or {}
        if error.get("event_id") == SENTINEL_ID:
            self.done.set()
            return
        code = str(error.get("code"))
        key = (str(error.get("type")), code)
        self.errors[key] = self.errors.get(key, 0) + 1
        param = error.get("param")
        message = str(error.get("message"))
        if "server_error" in key:
            self.problem("server_error", error)
        elif error.get("type") != "invalid_request_error":
            self.problem("not an invalid_request_error", error)
        if code in FIELD_CODES and not param:
            self.problem("field error without param", error)
        if isinstance(param, str):
            if _TAG.search(param) or len(param) > 300:
                self.problem("param with pydantic's tags (or unbounded)", param[:300])
            if self.dialect == "preview" and code != "unknown_parameter" and _ga_named(param):
                self.problem("GA param for a preview client", param)
        if len(message) > MAX_MESSAGE:
            self.problem("unbounded message", message[:300] + "...")
        if code == "policy_violation" and isinstance(param, str):
            self.policed.add(param)
        event_id = error.get("event_id")
        if event_id is None and code == "policy_violation":  # a middle tier's: said apart
            self.problem("policy_violation without the event_id of its event", param)
        elif event_id is None:
            self.without_id += 1
        else:  # any error for an event means it was not applied (a flood limit too)
            self.refused.add(event_id)

    def check(self) -> None:
        """After the sentinel: the errors without an event_id, the wrong events accepted."""
        if self.without_id > self.anonymous:
            self.problem(
                "errors without the event_id of their event",
                f"{self.without_id} errors without, {self.anonymous} events sent without one",
            )
        for event_id, why in self.wrong.items():
            if event_id in self.refused or any(  # a middle tier dropped the field instead
                why.startswith((f"{p}.", f"{p}[", f"{p}:")) for p in self.policed
            ):
                continue
            self.problem("wrong event accepted (a value converted?)", f"{event_id}: {why}")

    def failures(self) -> dict[str, list[Any]]:
        return {k: v for k, v in self.problems.items() if not k.endswith("(count)")}

    def counts(self) -> dict[str, int]:
        return {
            k[: -len(" (count)")]: v[0] for k, v in self.problems.items() if k.endswith("(count)")
        }


async def run_session(
    events: Iterator[Fuzzed],
    send: Callable[[str], Awaitable[None]],
    receive: Callable[[], Awaitable[str | None]],
    close: Callable[[], Awaitable[Any]],
    tally: Tally,
    *,
    timeout: float = 120.0,
) -> bool:
    """Send ``events`` and then the sentinel over one session, tallying what comes back, and
    close it; returns whether the session was still open once the sentinel's error had come
    (a session that ends or stalls first is a problem of the tally too). Call
    :meth:`Tally.check` once every session has run."""
    tally.done = asyncio.Event()

    async def read() -> None:
        while (text := await receive()) is not None:
            tally.see(json.loads(text))

    reader = asyncio.create_task(read())
    for event in events:
        tally.sending(event)
        await send(event.text)
    await send(SENTINEL)
    waiter = asyncio.ensure_future(tally.done.wait())
    await asyncio.wait({waiter, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    still_open = tally.done.is_set() and not reader.done()
    waiter.cancel()
    if not still_open:
        tally.problem("session ended (or stalled) before the sentinel", tally.sent)
    await close()
    try:
        await asyncio.wait_for(reader, timeout)
    except asyncio.TimeoutError:
        tally.problem("session did not close", tally.sent)
    return still_open


# ------------------------------------------------------------------------------ the peers

ENGINE_PATHS = {
    "ga": "/openai/v1/realtime?model=m",
    "preview": "/openai/realtime?api-version=2025-04-01-preview&deployment=m",
}
"""Where each dialect's client connects, to the engine and to the middle tier alike."""


def serve_in_process() -> Any:
    """The middle tier as ``aoai-realtime serve`` runs it without Azure settings: its engine in
    process (scripted, no speech models), reached in memory; listening on a free loopback port
    (a :class:`~aoai_realtime.server.ServerThread`: ``close()`` it)."""
    from aoai_realtime.engine import EngineConfig
    from aoai_realtime.server import LocalEngine, Policy, ServerConfig, ServerThread, Upstreams
    from aoai_realtime.server.tools import demo_tools
    from helpers import ENGINE_SCRIPT

    engine = LocalEngine(
        EngineConfig(port=0, no_speech=True, brain="scripted", script=ENGINE_SCRIPT),
        progress=lambda _: None,
    )
    upstreams = Upstreams(settings=None, local=engine, listen_host="127.0.0.1")
    config = ServerConfig(host="127.0.0.1", port=0, policy=Policy.build(tools=demo_tools()))
    return ServerThread(config, upstreams, bind="127.0.0.1")
