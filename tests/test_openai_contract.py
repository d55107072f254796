"""Contract: every server event the local engine emits validates against the ``openai`` package.

The official ``openai`` package ships pydantic models of the realtime protocol for both dialects:
GA under ``openai.types.realtime`` and the preview ("beta") under ``openai.types.beta.realtime``,
each with a ``RealtimeServerEvent`` union. These tests drive real conversations with the engine
over loopback WebSockets (raw frames, no SDK in between) and check each received event:

* its ``type`` is one of the union's (a client nobody here wrote would not recognise another);
* it validates, in pydantic's strict mode, against the union member of that type, so a wrong
  field type, a value outside a ``Literal`` or a missing required field fails;
* it has no field the openai type does not declare (openai's models accept extra fields, so a
  misspelt or invented field would otherwise pass unnoticed).

Where the engine deliberately differs from openai's types (Azure behaviour that the types do not
describe, or an engine bug owned elsewhere), :data:`ALLOWED` names the endpoint, event type and
field path with the reason; the field is taken out before validation only when its value is the
allowed one, so the rest of the event is still checked and any new drift fails at once.

Run with ``-s`` to see how many events of each type were validated.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import types
import typing
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pydantic
import pytest

pytest.importorskip("openai")

from openai.types.beta.realtime import RealtimeServerEvent as PreviewServerEvent  # noqa: E402
from openai.types.realtime import RealtimeServerEvent as GAServerEvent  # noqa: E402

from aoai_realtime.audio import b64encode_audio, ulaw_encode  # noqa: E402
from aoai_realtime.channel import AiohttpChannel  # noqa: E402
from aoai_realtime.protocol.dialect import PREVIEW_SERVER_NAMES  # noqa: E402
from helpers import Client, websocket  # noqa: E402

DIALECTS = pytest.mark.parametrize("dialect", ["ga", "preview"])

GA_TO_PREVIEW = {
    **{ga: preview for preview, ga in PREVIEW_SERVER_NAMES.items()},
    "conversation.item.done": "conversation.item.created",
}
GET_TIME_TOOL = {
    "type": "function",
    "name": "get_time",
    "description": "The current time.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
}


# ------------------------------------------------------------------------------ openai's types


def _members(union: Any) -> dict[str, list[type[pydantic.BaseModel]]]:
    """The models of a ``RealtimeServerEvent`` union, by the event ``type`` each one has."""
    out: dict[str, list[type[pydantic.BaseModel]]] = {}

    def walk(tp: Any) -> None:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            walk(typing.get_args(tp)[0])
        elif origin is typing.Union or origin is types.UnionType:
            for arg in typing.get_args(tp):
                walk(arg)
        elif isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            for name in typing.get_args(tp.model_fields["type"].annotation):
                out.setdefault(name, []).append(tp)
        else:  # pragma: no cover - a new kind of member: make it visible
            raise TypeError(f"unexpected member of openai's server event union: {tp!r}")

    walk(union)
    return out


SERVER_EVENTS: dict[str, dict[str, list[type[pydantic.BaseModel]]]] = {
    "ga": _members(GAServerEvent),
    "preview": _members(PreviewServerEvent),
}


# ------------------------------------------------------------------------------ the allow-list


@dataclass(frozen=True)
class Deviation:
    """A known, deliberate difference from openai's types: on the endpoints ``where``, events of
    type ``event`` may carry ``path`` (dots; ``[]`` steps into every list element) when
    ``allows`` accepts its value."""

    where: tuple[str, ...]
    event: str
    path: str
    reason: str
    allows: Callable[[Any], bool] = lambda value: True
    fill: Any = field(default=None, hash=False)
    """For a field openai requires but the service leaves out: the placeholder the check puts
    in when the field is absent (``None``: the field is taken out when allowed, as above)."""


GA = ("ga",)
PREVIEW = ("preview", "preview-openai")
"""Endpoints: ``ga`` (Azure's and OpenAI's GA path), ``preview`` (Azure's preview path,
``/openai/realtime?api-version=...``) and ``preview-openai`` (OpenAI's ``/v1/realtime`` with the
``OpenAI-Beta: realtime=v1`` header)."""

_SESSION_EVENTS = ("session.created", "session.updated")
_TRANSCRIPTION_SESSION_EVENTS = ("transcription_session.created", "transcription_session.updated")

UNDECLARED_EVENTS: dict[tuple[str, str], str] = {
    # The preview service starts a session opened with ?intent=transcription with
    # transcription_session.created; openai's beta union declares only .updated, of the same shape.
    ("preview", "transcription_session.created"): "transcription_session.updated",
}
"""Event types the service sends that openai's union lacks, checked against the model of a
declared type with the same shape: (dialect, type) -> that type."""

ALLOWED: tuple[Deviation, ...] = (
    # GA: openai's session.created/updated reuse the *request* model of a session, which has no
    # identity; the service's events carry it (openai's RealtimeSessionCreateResponse declares
    # all three, and the GA service's own examples show them).
    *(
        Deviation(GA, kind, f"session.{key}", "the GA service sends the session's identity", ok)
        for kind in _SESSION_EVENTS
        for key, ok in (
            ("id", lambda v: isinstance(v, str)),
            ("object", lambda v: v == "realtime.session"),
            ("expires_at", lambda v: isinstance(v, int) and not isinstance(v, bool)),
        )
    ),
    # Preview: Azure's preview spec (realtime-openapi3.yml, RealtimeResponseSession) has
    # `object: "realtime.session"`; openai's beta Session does not declare it.
    *(
        Deviation(
            PREVIEW,
            kind,
            "session.object",
            "Azure's preview spec has object: realtime.session",
            lambda v: v == "realtime.session",
        )
        for kind in _SESSION_EVENTS
    ),
    # GA transcription sessions name themselves realtime.transcription_session.
    *(
        Deviation(
            GA,
            kind,
            "session.object",
            "the GA service sends a transcription session's identity",
            lambda v: v == "realtime.transcription_session",
        )
        for kind in _SESSION_EVENTS
    ),
    # Preview transcription sessions: the service's session over a WebSocket has its identity
    # and no client_secret (that is an ephemeral key's, made by REST); openai's beta
    # TranscriptionSession requires client_secret and declares neither id nor object.
    *(
        Deviation(PREVIEW, kind, f"session.{key}", "a transcription session's identity", ok)
        for kind in _TRANSCRIPTION_SESSION_EVENTS
        for key, ok in (
            ("id", lambda v: isinstance(v, str)),
            ("object", lambda v: v == "realtime.transcription_session"),
        )
    ),
    *(
        Deviation(
            PREVIEW,
            kind,
            "session.client_secret",
            "no client_secret on a WebSocket (openai's type requires one)",
            fill={"expires_at": 0, "value": "placeholder"},
        )
        for kind in _TRANSCRIPTION_SESSION_EVENTS
    ),
    # Preview: an object tool_choice ({"type": "function", "name": ...}, PROTOCOL-NOTES "spec
    # quirks"); openai's beta Session types tool_choice as a plain string.
    Deviation(
        PREVIEW,
        "session.updated",
        "session.tool_choice",
        "the preview takes an object tool_choice; openai's beta type says str",
        lambda v: isinstance(v, dict) and v.get("type") == "function",
    ),
    # Preview: Azure's preview spec requires `name` in response.function_call_arguments.done
    # (RealtimeResponseFunctionCallArgumentsDoneCommand); openai's beta type does not declare it
    # (its GA type does).
    Deviation(
        PREVIEW,
        "response.function_call_arguments.done",
        "name",
        "Azure's preview spec requires name here",
        lambda v: isinstance(v, str),
    ),
)
"""Every deviation from openai's types that the engine is allowed. Keep it short: each entry is
a place where a client written against openai's types sees something its types do not describe."""


# ------------------------------------------------------------------------------ the checks


def _steps(path: str) -> list[tuple[str, bool]]:
    return [(p[:-2], True) if p.endswith("[]") else (p, False) for p in path.split(".")]


def _take_out(obj: Any, steps: list[tuple[str, bool]], allows: Callable[[Any], bool]) -> bool:
    """Remove the field at ``steps`` wherever its value is allowed; True if any was removed."""
    if not isinstance(obj, dict) or not steps:
        return False
    (key, into_list), rest = steps[0], steps[1:]
    if key not in obj:
        return False
    if not rest and not into_list:
        if allows(obj[key]):
            del obj[key]
            return True
        return False
    targets = obj[key] if into_list and isinstance(obj[key], list) else [obj[key]]
    removed = False
    for target in targets:
        removed = _take_out(target, rest, allows) or removed
    return removed


def _fill(obj: Any, keys: list[str], placeholder: Any) -> bool:
    """Put ``placeholder`` at ``keys`` when that field is absent; True if it was put in."""
    for key in keys[:-1]:
        obj = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or keys[-1] in obj:
        return False
    obj[keys[-1]] = copy.deepcopy(placeholder)
    return True


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def _extras(model: Any, path: str) -> Iterator[tuple[str, str]]:
    """The paths of fields a validated model holds that its openai type does not declare, with
    the name of that type."""
    if isinstance(model, pydantic.BaseModel):
        for key in model.__pydantic_extra__ or {}:
            yield (f"{path}.{key}" if path else key), type(model).__name__
        for name in type(model).model_fields:
            yield from _extras(getattr(model, name), f"{path}.{name}" if path else name)
    elif isinstance(model, list):
        for value in model:
            yield from _extras(value, f"{path}[]")


@dataclass
class Verdict:
    problems: list[str]
    allowed: list[Deviation]


def check_event(where: str, event: dict[str, Any]) -> Verdict:
    """Judge one server event received on endpoint ``where`` (see :data:`GA`, :data:`PREVIEW`)
    against openai's types for its dialect."""
    dialect = "ga" if where == "ga" else "preview"
    kind = str(event.get("type"))
    twin = UNDECLARED_EVENTS.get((dialect, kind))
    models = SERVER_EVENTS[dialect].get(twin or kind)
    if not models:
        return Verdict([f"{kind}: not a server event type of openai's {dialect} union"], [])
    cleaned = copy.deepcopy(event)
    if twin is not None:
        cleaned["type"] = twin
    allowed = [
        d
        for d in ALLOWED
        if where in d.where
        and d.event == kind
        and (
            _fill(cleaned, d.path.split("."), d.fill)
            if d.fill is not None
            else _take_out(cleaned, _steps(d.path), d.allows)
        )
    ]
    errors: list[str] = []
    for model in models:
        try:
            validated = model.model_validate(cleaned, strict=True)
        except pydantic.ValidationError as exc:
            errors.extend(
                f"{kind}: {_loc(e['loc'])}: {e['msg']} (got {e.get('input')!r:.80})"
                for e in exc.errors()
            )
            continue
        extras = [
            f"{kind}: {path}: not declared by openai's {owner}"
            for path, owner in _extras(validated, "")
        ]
        return Verdict(extras, allowed)
    return Verdict(errors, allowed)


TALLY: dict[str, Counter[str]] = {"ga": Counter(), "preview": Counter()}
USED: set[Deviation] = set()


def assert_valid(peer: Peer) -> None:
    """Every event this connection received passes :func:`check_event`."""
    problems: Counter[str] = Counter()
    for event in peer.events:
        verdict = check_event(peer.where, event)
        TALLY[peer.dialect][str(event.get("type"))] += 1
        USED.update(verdict.allowed)
        problems.update(verdict.problems)
    if problems:
        lines = "\n".join(f"  {p}" + (f" (x{n})" if n > 1 else "") for p, n in problems.items())
        raise AssertionError(f"{peer.where}: events that openai's types refuse:\n{lines}")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """At the end of the module, print how many events were validated (shown with ``-s``)."""
    yield
    for dialect, tally in TALLY.items():
        print(f"\nopenai contract, {dialect}: {sum(tally.values())} events validated")
        for kind, n in sorted(tally.items()):
            print(f"  {n:5d}  {kind}")
    unused = [d for d in ALLOWED if d not in USED]
    for d in unused:
        print(f"allow-list entry not needed in this run: {d.where} {d.event} {d.path}")


def test_the_check_refuses_drift() -> None:
    """The checker itself: what it must refuse, and an allowance that covers only its value."""
    good = {
        "type": "conversation.item.truncated",
        "event_id": "event_1",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 500,
    }
    assert check_event("ga", good).problems == []
    assert check_event("preview", good).problems == []
    drifted = {
        "a wrong field type": {**good, "audio_end_ms": "500"},
        "a float for an integer": {**good, "audio_end_ms": 500.5},
        "a missing required field": {k: v for k, v in good.items() if k != "item_id"},
        "a field openai does not declare": {**good, "index": 0},
        "an event type openai does not know": {**good, "type": "conversation.item.trimmed"},
    }
    for what, event in drifted.items():
        for where in ("ga", "preview"):
            assert check_event(where, event).problems, f"{what} passed on {where}"
    # Preview turn detection off: the service echoes null; {"type": "none"} (what a client sends
    # Azure's preview endpoint) is refused by openai's type on every endpoint.
    off: dict[str, Any] = {
        "type": "session.updated",
        "event_id": "event_2",
        "session": {"turn_detection": None},
    }
    assert check_event("preview", off) == Verdict([], [])
    for where in ("preview", "preview-openai"):
        none = {**off, "session": {"turn_detection": {"type": "none"}}}
        assert check_event(where, none).problems, where
    assert check_event("ga", {**off, "session": {"type": "realtime", **off["session"]}}).problems
    # A filled-in placeholder covers only an absent field: a wrong one still fails.
    created: dict[str, Any] = {
        "type": "transcription_session.created",
        "event_id": "event_3",
        "session": {"input_audio_format": "pcm16"},
    }
    verdict = check_event("preview", created)
    assert verdict.problems == [] and [d.path for d in verdict.allowed] == ["session.client_secret"]
    wrong = {**created, "session": {"client_secret": "nope"}}
    assert check_event("preview", wrong).problems
    assert check_event("ga", created).problems  # GA has no transcription_session events


# ------------------------------------------------------------------------------ a raw client


class Peer(Client):
    """A raw realtime client (:class:`helpers.Client`) on endpoint ``where`` (``ga``,
    ``preview``, ``preview-openai``), with what the contract tests ask of a conversation."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool], where: str) -> None:
        super().__init__(AiohttpChannel(ws), "ga" if where == "ga" else "preview", ws)
        self.where = where
        self._syncs = 0

    @property
    def ga(self) -> bool:
        return self.dialect == "ga"

    def t(self, ga_type: str) -> str:
        """An event type in this connection's dialect."""
        return ga_type if self.ga else GA_TO_PREVIEW.get(ga_type, ga_type)

    async def refused(self, event: dict[str, Any] | str) -> dict[str, Any]:
        """Send an event the engine must refuse; return the ``error`` it answers with."""
        self._syncs += 1
        event_id = f"evt_refused_{self._syncs}"
        if isinstance(event, str):  # a raw frame: no event id to match
            await self.send_raw(event)
            answer = await self.wait_for("error")
        else:
            await self.send({**event, "event_id": event_id})
            answer = await self.wait_for("error", lambda e: e["error"].get("event_id") == event_id)
        error: dict[str, Any] = answer["error"]
        return error

    async def sync(self) -> None:
        """Receive everything the engine sent before now: a refused event's answer is a
        barrier (the engine handles a connection's events in order)."""
        await self.refused({"type": "conversation.item.delete", "item_id": "item_sync_barrier"})

    async def configure(self, ga: dict[str, Any], preview: dict[str, Any]) -> dict[str, Any]:
        """``session.update`` with this dialect's shape; returns the ``session.updated`` session."""
        session = {"type": "realtime", **ga} if self.ga else preview
        await self.send({"type": "session.update", "session": session})
        updated: dict[str, Any] = (await self.wait_for("session.updated"))["session"]
        return updated

    async def add_text(self, text: str) -> dict[str, Any]:
        """A typed user message; returns the item as the engine confirmed it."""
        await self.say_text(text)
        item: dict[str, Any] = (await self.wait_for("conversation.item.done"))["item"]
        return item

    async def respond(self, response: dict[str, Any] | None = None) -> dict[str, Any]:
        """``response.create``; returns the ``response.done`` response (after its rate limits)."""
        event: dict[str, Any] = {"type": "response.create"}
        if response is not None:
            event["response"] = response
        await self.send(event)
        done: dict[str, Any] = (await self.wait_for("response.done"))["response"]
        await self.wait_for("rate_limits.updated")
        return done

    async def append(self, pcm: bytes, chunk_ms: int = 100, encode: Any = None) -> None:
        """Stream audio as ``input_audio_buffer.append`` chunks of 100 ms by default."""
        await super().append(pcm, chunk_ms, encode)

    def text(self, ga_type: str, since: int = 0) -> str:
        kind = self.t(ga_type)
        return "".join(e["delta"] for e in self.events[since:] if e["type"] == kind)

    def audio_bytes(self, since: int = 0) -> int:
        kind = self.t("response.output_audio.delta")
        return sum(
            len(base64.b64decode(e["delta"])) for e in self.events[since:] if e["type"] == kind
        )

    def kinds(self, since: int = 0) -> set[str]:
        return {str(e["type"]) for e in self.events[since:]}


@contextlib.asynccontextmanager
async def connect(
    url: str, where: str, headers: dict[str, str] | None = None, *, transcription: bool = False
) -> AsyncIterator[Peer]:
    """A connection whose events are all validated when it ends (unless the test failed).
    ``transcription``: a preview transcription session (``transcription_session.created``)."""
    async with aiohttp.ClientSession() as http, await websocket(http, url, headers=headers) as ws:
        peer = Peer(ws, where)
        if transcription and not peer.ga:
            await peer.wait_for("transcription_session.created")
        else:
            await peer.wait_for("session.created")
        if not peer.ga and not transcription:
            await peer.wait_for("conversation.created")
        yield peer
        await peer.sync()
    assert_valid(peer)


def url_of(engine: Any, dialect: str) -> str:
    return str(engine.ga_url() if dialect == "ga" else engine.preview_url())


NO_TURN_DETECTION: tuple[dict[str, Any], dict[str, Any]] = (
    {"audio": {"input": {"turn_detection": None}}},
    {"turn_detection": None},
)
"""``session.update`` turning turn detection off: GA shape, preview shape."""


# ------------------------------------------------------------------------------ session


SESSIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("turn detection off", *NO_TURN_DETECTION),
    (
        "server_vad with every option",
        {
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.6,
                        "prefix_padding_ms": 200,
                        "silence_duration_ms": 400,
                        "create_response": True,
                        "interrupt_response": False,
                        "idle_timeout_ms": 6000,
                    }
                }
            }
        },
        {
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.6,
                "prefix_padding_ms": 200,
                "silence_duration_ms": 400,
                "create_response": True,
                "interrupt_response": False,
            }
        },
    ),
    (
        "semantic_vad",
        {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}},
        {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}},
    ),
    (
        "transcription on, noise reduction",
        {
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1", "language": "en", "prompt": "weather"},
                    "noise_reduction": {"type": "near_field"},
                }
            }
        },
        {
            "input_audio_transcription": {
                "model": "whisper-1",
                "language": "en",
                "prompt": "weather",
            },
            "input_audio_noise_reduction": {"type": "near_field"},
        },
    ),
    (
        "g711_ulaw",
        {
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}},
                "output": {"format": {"type": "audio/pcmu"}},
            }
        },
        {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"},
    ),
    (
        "g711_alaw",
        {
            "audio": {
                "input": {"format": {"type": "audio/pcma"}},
                "output": {"format": {"type": "audio/pcma"}},
            }
        },
        {"input_audio_format": "g711_alaw", "output_audio_format": "g711_alaw"},
    ),
    (
        "pcm16 again",
        {
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}},
            }
        },
        {"input_audio_format": "pcm16", "output_audio_format": "pcm16"},
    ),
    (
        "tools, tool_choice required",
        {"tools": [GET_TIME_TOOL], "tool_choice": "required"},
        {"tools": [GET_TIME_TOOL], "tool_choice": "required"},
    ),
    (
        "tool_choice naming a function",
        {"tool_choice": {"type": "function", "name": "get_time"}},
        {"tool_choice": {"type": "function", "name": "get_time"}},
    ),
    (
        "text only, instructions, voice, limits",
        {
            "output_modalities": ["text"],
            "instructions": "Answer briefly.",
            "max_output_tokens": 200,
            "audio": {"output": {"voice": "verse", "speed": 1.2}},
        },
        {
            "modalities": ["text"],
            "instructions": "Answer briefly.",
            "max_response_output_tokens": 200,
            "voice": "verse",
            "temperature": 0.7,
        },
    ),
    (
        "audio out, tools cleared, unlimited tokens",
        {
            "output_modalities": ["audio"],
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        },
        {
            "modalities": ["text", "audio"],
            "tools": [],
            "tool_choice": "auto",
            "max_response_output_tokens": "inf",
        },
    ),
]


@DIALECTS
async def test_session_created_and_updated_in_every_configuration(
    scripted_engine: Any, dialect: str
) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        for name, ga, preview in SESSIONS:
            session = await peer.configure(ga, preview)
            assert session, name
        # The last configuration is what the session now holds.
        assert (session["output_modalities"] if peer.ga else session["modalities"]) == (
            ["audio"] if peer.ga else ["text", "audio"]
        )
        # Refused updates are answered with error events (validated too).
        wrong_dialect = {"model": "x"} if peer.ga else {"type": "realtime"}
        error = await peer.refused({"type": "session.update", "session": wrong_dialect})
        assert error["code"] in ("missing_required_parameter", "unknown_parameter"), error
        voice = (
            {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}
            if peer.ga
            else {"voice": "nobody"}
        )
        error = await peer.refused({"type": "session.update", "session": voice})
        assert error["code"] == "invalid_value", error
    assert {"session.created", "session.updated", "error"} <= peer.kinds()


@pytest.mark.parametrize("where", ["preview", "preview-openai"])
async def test_preview_echoes_turn_detection_off_as_null(scripted_engine: Any, where: str) -> None:
    """Both preview endpoints (Azure's, and OpenAI's ``/v1/realtime`` + the beta header) echo
    "turn detection off" as ``null``, whichever way the client said it (Azure's clients send
    ``{"type": "none"}``): openai's preview type refuses ``{"type": "none"}``."""
    if where == "preview":
        url, headers = scripted_engine.preview_url(), None
    else:
        url = f"{scripted_engine.url}/v1/realtime?model=gpt-4o-realtime-preview"
        headers = {"OpenAI-Beta": "realtime=v1"}
    async with connect(url, where, headers=headers) as peer:
        session = await peer.configure({}, {"turn_detection": {"type": "none"}})
        assert session["turn_detection"] is None
        session = await peer.configure({}, {"turn_detection": {"type": "server_vad"}})
        assert session["turn_detection"]["type"] == "server_vad"
        session = await peer.configure(*NO_TURN_DETECTION)
        assert session["turn_detection"] is None
        await peer.add_text("hello")
        done = await peer.respond()
        assert done["status"] == "completed"


# ------------------------------------------------------------------------------ typed turns


@DIALECTS
async def test_typed_turns_text_and_audio(scripted_engine: Any, dialect: str) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        await peer.configure(*NO_TURN_DETECTION)
        # Text out.
        await peer.add_text("How is the weather?")
        start = len(peer.events)
        done = await peer.respond(
            {"output_modalities": ["text"]} if peer.ga else {"modalities": ["text"]}
        )
        assert done["status"] == "completed"
        assert peer.text("response.output_text.delta", start) == "It is sunny and warm today."
        # Audio out (the session's default modality).
        await peer.add_text("hello")
        start = len(peer.events)
        done = await peer.respond()
        assert done["status"] == "completed"
        assert peer.text("response.output_audio_transcript.delta", start) == (
            "Hello! How can I help you today?"
        )
        assert peer.audio_bytes(start) > 48 * 300
        # Audio out in G.711, with the response's own instructions and metadata.
        await peer.configure(
            {"audio": {"output": {"format": {"type": "audio/pcmu"}}}},
            {"output_audio_format": "g711_ulaw"},
        )
        await peer.add_text("weather")
        start = len(peer.events)
        done = await peer.respond({"instructions": "Be brief.", "metadata": {"topic": "weather"}})
        assert done["status"] == "completed" and done["metadata"] == {"topic": "weather"}
        assert peer.audio_bytes(start) > 8 * 300
        # Out of band (conversation "none"), and cut short by max output tokens.
        await peer.configure(
            {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}},
            {"output_audio_format": "pcm16"},
        )
        limit = {"max_output_tokens": 3} if peer.ga else {"max_response_output_tokens": 3}
        done = await peer.respond(
            {
                "conversation": "none",
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Tell me a story."}],
                    }
                ],
                **limit,
            }
        )
        assert done["status"] == "incomplete" and done["conversation_id"] is None
        assert done["status_details"]["reason"] == "max_output_tokens"
    assert peer.t("response.output_text.delta") in peer.kinds()
    assert peer.t("response.output_audio.delta") in peer.kinds()


async def test_local_brain_turn(engine: Any) -> None:
    """One short turn with the language model (SmolLM2) in each dialect."""
    for dialect in ("ga", "preview"):
        async with connect(url_of(engine, dialect), dialect) as peer:
            await peer.configure(*NO_TURN_DETECTION)
            await peer.add_text("Say hello.")
            limit = {"max_output_tokens": 12} if peer.ga else {"max_response_output_tokens": 12}
            done = await peer.respond(limit)
            assert done["status"] in ("completed", "incomplete")
            assert done["output"], done


# ------------------------------------------------------------------------------ spoken turns


@DIALECTS
async def test_spoken_turns_with_server_vad_transcription_and_barge_in(
    scripted_engine: Any,
    dialect: str,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        await peer.configure(
            {
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                }
            },
            {
                "input_audio_transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            },
        )
        # A spoken question, answered.
        start = len(peer.events)
        await peer.append(silence(300) + tts_wav("Hello there.") + silence(900))
        await peer.wait_for("input_audio_buffer.speech_started")
        await peer.wait_for("input_audio_buffer.speech_stopped")
        committed = await peer.wait_for("input_audio_buffer.committed")
        done = await peer.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        heard = await peer.wait_for(
            "conversation.item.input_audio_transcription.completed",
            lambda e: e["item_id"] == committed["item_id"],
            since=start,
        )
        assert "hello" in heard["transcript"].lower()
        await peer.wait_for("rate_limits.updated")
        # A long answer, interrupted by speech (barge-in).
        await peer.append(tts_wav("Tell me a story.") + silence(900))
        created = await peer.wait_for("response.created")
        await peer.wait_for("response.output_audio.delta")
        await peer.append(tts_wav("Stop, wait a moment.") + silence(900))
        done = await peer.wait_for(
            "response.done", lambda e: e["response"]["id"] == created["response"]["id"]
        )
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        done = await peer.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        await peer.wait_for("rate_limits.updated")
    assert {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    } <= peer.kinds()


async def test_idle_timeout_triggered_ga(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    """GA's ``idle_timeout_ms`` (the preview has none): silence after the reply prompts the user."""
    idle_ms = 5000
    async with connect(scripted_engine.ga_url(), "ga") as peer:
        await peer.configure(
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": idle_ms}}
                }
            },
            {},
        )
        await peer.append(tts_wav("Hello there.") + silence(900))
        start = len(peer.events)
        await peer.wait_for("response.done")
        await peer.wait_for("rate_limits.updated")
        reply_ms = peer.audio_bytes(start) // 48
        await peer.append(silence(reply_ms + idle_ms + 1000))
        await peer.wait_for("input_audio_buffer.timeout_triggered")
        await peer.wait_for("response.done")
        await peer.wait_for("rate_limits.updated")


# ------------------------------------------------------------------------------ function calls


@DIALECTS
async def test_function_call_and_its_follow_up(scripted_engine: Any, dialect: str) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        await peer.configure(
            {"tools": [GET_TIME_TOOL], "audio": {"input": {"turn_detection": None}}},
            {"tools": [GET_TIME_TOOL], "turn_detection": None},
        )
        await peer.add_text("What time is it?")
        done = await peer.respond()
        call = done["output"][0]
        assert call["type"] == "function_call" and call["name"] == "get_time"
        await peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": "9:15",
                },
            }
        )
        await peer.wait_for(
            "conversation.item.done", lambda e: e["item"]["type"] == "function_call_output"
        )
        start = len(peer.events)
        done = await peer.respond()
        assert done["status"] == "completed"
        assert peer.text("response.output_audio_transcript.delta", start) == "It is 9:15 right now."
    assert {
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    } <= peer.kinds()


# ------------------------------------------------------------------------------ items


@DIALECTS
async def test_truncate_retrieve_delete(scripted_engine: Any, dialect: str) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        await peer.configure(*NO_TURN_DETECTION)
        user = await peer.add_text("hello")
        done = await peer.respond()
        assistant = done["output"][0]
        # Truncate what was "heard"; refuse what cannot be.
        await peer.send(
            {
                "type": "conversation.item.truncate",
                "item_id": assistant["id"],
                "content_index": 0,
                "audio_end_ms": 500,
            }
        )
        truncated = await peer.wait_for("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 500
        error = await peer.refused(
            {
                "type": "conversation.item.truncate",
                "item_id": assistant["id"],
                "content_index": 0,
                "audio_end_ms": 600_000,
            }
        )
        assert "shorter" in error["message"]
        error = await peer.refused(
            {
                "type": "conversation.item.truncate",
                "item_id": user["id"],
                "content_index": 0,
                "audio_end_ms": 0,
            }
        )
        assert error["param"] in ("item_id", "content_index"), error
        # Retrieve.
        await peer.send({"type": "conversation.item.retrieve", "item_id": assistant["id"]})
        retrieved = await peer.wait_for("conversation.item.retrieved")
        assert retrieved["item"]["id"] == assistant["id"]
        await peer.send({"type": "conversation.item.retrieve", "item_id": user["id"]})
        await peer.wait_for("conversation.item.retrieved")
        await peer.refused({"type": "conversation.item.retrieve", "item_id": "item_nowhere"})
        # A user message with audio, then deleted.
        await peer.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {
                    "id": "item_spoken_first",
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "audio": b64encode_audio(b"\x00\x00" * 4800)}
                    ],
                },
            }
        )
        await peer.wait_for(
            "conversation.item.done", lambda e: e["item"]["id"] == "item_spoken_first"
        )
        for item_id in ("item_spoken_first", user["id"]):
            await peer.send({"type": "conversation.item.delete", "item_id": item_id})
            deleted = await peer.wait_for("conversation.item.deleted")
            assert deleted["item_id"] == item_id
        await peer.refused({"type": "conversation.item.delete", "item_id": user["id"]})
        error = await peer.refused(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "output_text", "text": "x"}],
                },
            }
        )
        assert error["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------ buffer, cancel, errors


@DIALECTS
async def test_buffer_commit_clear_cancel_and_refusals(
    scripted_engine: Any,
    dialect: str,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        await peer.configure(
            {"audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}}},
            {"turn_detection": None, "input_audio_transcription": {"model": "whisper-1"}},
        )
        # Commit and clear, by hand.
        error = await peer.refused({"type": "input_audio_buffer.commit"})
        assert error["code"] == "input_audio_buffer_commit_empty"
        await peer.append(tts_wav("What is the weather like?"))
        await peer.send({"type": "input_audio_buffer.commit"})
        committed = await peer.wait_for("input_audio_buffer.committed")
        await peer.wait_for(
            "conversation.item.input_audio_transcription.completed",
            lambda e: e["item_id"] == committed["item_id"],
        )
        await peer.append(silence(300))
        await peer.send({"type": "input_audio_buffer.clear"})
        await peer.wait_for("input_audio_buffer.cleared")
        # G.711 input, committed by hand.
        await peer.configure(
            {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            {"input_audio_format": "g711_ulaw"},
        )
        await peer.append(silence(200), encode=ulaw_encode)
        await peer.send({"type": "input_audio_buffer.commit"})
        await peer.wait_for("input_audio_buffer.committed")
        await peer.configure(
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}},
            {"input_audio_format": "pcm16"},
        )
        # Bad audio.
        error = await peer.refused({"type": "input_audio_buffer.append", "audio": "not base64!"})
        assert error["type"] == "invalid_request_error"
        error = await peer.refused(
            {"type": "input_audio_buffer.append", "audio": b64encode_audio(b"\x00")}
        )
        assert error["type"] == "invalid_request_error"
        # One response at a time, and response.cancel.
        error = await peer.refused({"type": "response.cancel"})
        assert error["code"] == "response_cancel_not_active"
        await peer.add_text("Tell me a story.")
        await peer.send({"type": "response.create"})
        created = await peer.wait_for("response.created")
        error = await peer.refused({"type": "response.create"})
        assert error["code"] == "conversation_already_has_active_response"
        await peer.send({"type": "response.cancel"})
        done = await peer.wait_for("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await peer.wait_for("rate_limits.updated")
        # Events the engine does not know or cannot read.
        error = await peer.refused({"type": "response.dance"})
        assert error["type"] == "invalid_request_error"
        error = await peer.refused(
            {"type": "response.create", "response": {"conversation": "other"}}
        )
        assert error["param"] == "response.conversation"
        await peer.refused("this is not json")
        await peer.refused(json.dumps(["an", "array"]))
    assert {"input_audio_buffer.committed", "input_audio_buffer.cleared", "error"} <= peer.kinds()
