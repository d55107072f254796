"""Fidelity: the local engine takes what openai's types declare, and refuses what the service does.

Judged by the official ``openai`` package for each dialect (GA ``openai.types.realtime``, preview
``openai.types.beta.realtime``), over real loopback connections whose every event is validated by
:mod:`test_openai_contract`:

* every session field the types declare is walked (:func:`walk`) and sent on its own in a
  ``session.update``; the engine must accept it and echo it in ``session.updated`` (where the
  service echoes it), so a field openai adds later fails here instead of being refused as an
  unknown parameter, which silently loses a client's whole configuration;
* transcription sessions (``?intent=transcription``): GA ``session.type: "transcription"`` with
  its own shape, the preview's ``transcription_session.update`` / ``.updated``, no responses;
* the service's refusals, with its code and the parameter as the client spelled it;
* ``conversation.item.retrieved`` with the item's audio; custom voices.
"""

from __future__ import annotations

import base64
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest

pytest.importorskip("openai")

from openai.types.beta.realtime.session_update_event import (  # noqa: E402
    Session as PreviewSession,
)
from openai.types.beta.realtime.transcription_session_update import (  # noqa: E402
    Session as PreviewTranscriptionSession,
)
from openai.types.realtime import (  # noqa: E402
    RealtimeSessionCreateRequest,
    RealtimeTranscriptionSessionCreateRequest,
)
from openai.types.realtime.session_update_event import Session as GASession  # noqa: E402

from aoai_realtime.audio import b64encode_audio, resample, ulaw_decode, ulaw_encode  # noqa: E402
from test_openai_contract import (  # noqa: E402
    DIALECTS,
    NO_TURN_DETECTION,
    Peer,
    _report,  # noqa: F401 - the contract's tally, printed at this module's end too (with -s)
    connect,
    url_of,
)

# ------------------------------------------------------------------------------ walking the types

_SKIP: dict[str, str] = {
    "tools[].mcp": "MCP tools are issue 11 item 2's (an MCP server is needed to accept one)",
}
"""Paths the walk does not enter, with the reason."""

_VALUES: dict[str, list[Any]] = {
    # strings whose value the service checks (a free string would be refused, rightly)
    "input_audio_transcription.model": ["whisper-1", "gpt-4o-transcribe"],
    "tool_choice": ["auto", "none", "required"],  # the preview's type says only "str"
    "modalities": [["text"], ["text", "audio"]],  # the preview refuses audio alone
    "audio.input.transcription.language": ["en"],
    "input_audio_transcription.language": ["en"],
}
"""Sample values for paths whose openai type is looser than what the service takes."""

_SERVICE_REQUIRES: dict[str, dict[str, Any]] = {
    "tools[].function": {"name": "get_time"},  # optional in openai's types, required by the service
}
"""Fields the service requires that openai's types leave optional, by model path (with its
``type`` tag): put in every sample of that model."""


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The members of a union, flattened (``Optional[Annotated[Union[...]]]`` included)."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) if arg is not type(None) for m in _members(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _tag(model: type[pydantic.BaseModel]) -> tuple[str, Any] | None:
    """A model's ``type`` discriminator and its value, when it has one."""
    field = model.model_fields.get("type")
    if field is None:
        return None
    for member in _members(field.annotation):
        if typing.get_origin(member) is typing.Literal:
            return "type", typing.get_args(member)[0]
    return None


def samples(tp: Any, path: str) -> Iterator[Any]:
    """Values of type ``tp`` (at ``path``, dots) that together set each of its fields once:
    every value of a ``Literal``, one object per field of a model (with its required fields and
    its ``type`` tag), each member of a union (a bare ``str`` beside a ``Literal`` is skipped:
    the service takes only the listed names there)."""
    if path in _VALUES:
        yield from _VALUES[path]
        return
    members = _members(tp)
    literal = any(typing.get_origin(m) is typing.Literal for m in members)
    for member in members:
        origin = typing.get_origin(member)
        if origin is typing.Literal:
            yield from typing.get_args(member)
        elif member is str:
            if not literal:
                yield "x"
        elif member is bool:
            yield from (True, False)
        elif member is int:
            yield 200
        elif member is float:
            yield 0.8
        elif member is object:
            yield {"topic": "fidelity"}
        elif origin in (list, typing.List):  # noqa: UP006 - what openai's types use
            for value in samples(typing.get_args(member)[0], f"{path}[]"):
                yield [value]
        elif origin in (dict, typing.Dict):  # noqa: UP006
            for value in samples(typing.get_args(member)[1], f"{path}{{}}"):
                yield {"key": value}
        elif _is_model(member):
            yield from _model_samples(member, path)
        else:  # pragma: no cover - a new kind of type: make the walk learn it
            raise TypeError(f"{path}: no samples for {member!r}")


def _model_samples(model: type[pydantic.BaseModel], path: str) -> Iterator[dict[str, Any]]:
    tag = _tag(model)
    if tag is not None and f"{path}.{tag[1]}" in _SKIP:
        return
    base: dict[str, Any] = dict([tag]) if tag is not None else {}
    if tag is not None:
        base.update(_SERVICE_REQUIRES.get(f"{path}.{tag[1]}", {}))
    for name, field in model.model_fields.items():
        if field.is_required() and name not in base:
            base[name] = next(samples(field.annotation, _join(path, name)))
    for name, field in model.model_fields.items():
        for value in samples(field.annotation, _join(path, name)):
            yield {**base, name: value}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def walk(model: type[pydantic.BaseModel], fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``session`` object per value :func:`samples` makes for ``model``'s fields, each with
    the fields ``fixed`` holds (``type``, ``model``) as they are."""
    out: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        if name in fixed:
            continue
        for value in samples(field.annotation, name):
            out.append({**fixed, name: value})
    return out


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _leaves(inner, _join(path, key))
    else:
        yield path, value


def _at(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


_MISSING = object()


def _kind_of(model: Any, *, where: str) -> list[type[pydantic.BaseModel]]:
    """The session models of a ``session.update`` union (GA: realtime and transcription)."""
    found = [m for m in _members(model) if _is_model(m)]
    assert found, where
    return found


# What a session.updated does not show of what was sent: the path (dots) where it is left out.
NOT_ECHOED: dict[str, dict[str, str]] = {
    "preview": {
        "client_secret": "a REST session's key settings; openai's preview Session has none",
    },
    "preview-transcription": {
        "client_secret": "a REST session's key settings",
        "include": "openai's preview TranscriptionSession does not show it",
        "input_audio_noise_reduction": "openai's preview TranscriptionSession does not show it",
        "turn_detection.eagerness": "openai's preview TranscriptionSession turn detection has none",
        "turn_detection.create_response": "not shown by the preview TranscriptionSession",
        "turn_detection.interrupt_response": "not shown by the preview TranscriptionSession",
    },
}


def _not_echoed(table: str, path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in NOT_ECHOED.get(table, {}))


def test_the_walk_reaches_every_field() -> None:
    """The walk itself: each declared field of the session types (nested ones included) is set
    by some sample, so a new openai field is sent to the engine by the test below."""
    for model, fixed in (
        (RealtimeSessionCreateRequest, {"type": "realtime"}),
        (RealtimeTranscriptionSessionCreateRequest, {"type": "transcription"}),
        (PreviewSession, {}),
        (PreviewTranscriptionSession, {}),
    ):
        sent = {path for session in walk(model, fixed) for path, _ in _leaves(session)}
        for path in (
            "audio.input.noise_reduction.strength",
            "audio.input.transcription.delay",
            "audio.input.turn_detection.idle_timeout_ms",
            "parallel_tool_calls",
            "reasoning.effort",
            "speed",
            "tracing.workflow_name",
            "include",
        ):
            head = path.split(".")[0]
            if head in model.model_fields:
                assert path in sent or any(p.startswith(path) for p in sent), (model, path)
    ga = walk(RealtimeSessionCreateRequest, {"type": "realtime"})
    assert {"type": "realtime", "audio": {"output": {"voice": {"id": "x"}}}} in ga
    assert {"type": "realtime", "output_modalities": ["audio"]} in ga
    for name in _kind_of(GASession, where="GA session.update"):
        assert name in (RealtimeSessionCreateRequest, RealtimeTranscriptionSessionCreateRequest)


async def _walk_fields(
    peer: Peer, sessions: list[dict[str, Any]], echo_table: str, event: str, echoed: str
) -> int:
    """Send each session in an update of type ``event``; each must be answered by ``echoed``
    showing what was sent (but for :data:`NOT_ECHOED`). Returns how many were sent."""
    for n, session in enumerate(sessions):
        event_id = f"evt_field_{n}"
        await peer.send({"type": event, "session": session, "event_id": event_id})
        answer = await peer.wait_for(
            None,
            lambda e, event_id=event_id: (
                e["type"] == echoed
                or (e["type"] == "error" and e["error"].get("event_id") == event_id)
            ),
        )
        assert answer["type"] == echoed, (session, answer)
        shown = answer["session"]
        for path, value in _leaves(session):
            if path == "type" or _not_echoed(echo_table, path):
                continue
            assert _at(shown, path) == value, (path, value, shown)
    return len(sessions)


@DIALECTS
async def test_every_session_field_openai_declares_is_accepted_and_echoed(
    scripted_engine: Any, dialect: str
) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        model = peer.events[0]["session"]["model"]
        if peer.ga:
            sessions = walk(RealtimeSessionCreateRequest, {"type": "realtime", "model": model})
            sessions.append({"type": "realtime", "model": model})  # the same model is fine
        else:
            sessions = walk(PreviewSession, {"model": model})
            sessions.append({"model": model})
        sent = await _walk_fields(peer, sessions, dialect, "session.update", "session.updated")
        assert sent > 40, sent  # the walk went deep (voices, formats, turn detection, ...)


@DIALECTS
async def test_every_transcription_session_field_is_accepted_and_echoed(
    scripted_engine: Any, dialect: str
) -> None:
    url = url_of(scripted_engine, dialect) + "&intent=transcription"
    async with connect(url, dialect, transcription=True) as peer:
        if peer.ga:
            sessions = walk(RealtimeTranscriptionSessionCreateRequest, {"type": "transcription"})
            sent = await _walk_fields(peer, sessions, "ga", "session.update", "session.updated")
        else:
            sessions = walk(PreviewTranscriptionSession, {})
            sent = await _walk_fields(
                peer,
                sessions,
                "preview-transcription",
                "transcription_session.update",
                "transcription_session.updated",
            )
        assert sent > 20, sent


# ------------------------------------------------------------------------------ transcription


def _transcription_url(engine: Any, dialect: str) -> str:
    return url_of(engine, dialect) + "&intent=transcription"


@DIALECTS
async def test_transcription_session_transcribes_and_never_answers(
    scripted_engine: Any,
    dialect: str,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
) -> None:
    async with connect(
        _transcription_url(scripted_engine, dialect), dialect, transcription=True
    ) as peer:
        created = peer.events[0]
        if peer.ga:
            assert created["type"] == "session.created"
            session = created["session"]
            assert session["type"] == "transcription"
            assert set(session) <= {"type", "audio", "include", "id", "object", "expires_at"}
            assert set(session["audio"]) == {"input"}
            update = {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
            }
            await peer.send({"type": "session.update", "session": update})
            updated = (await peer.wait_for("session.updated"))["session"]
            assert updated["audio"]["input"]["transcription"]["model"] == "whisper-1"
            assert "instructions" not in updated and "output_modalities" not in updated
        else:
            assert created["type"] == "transcription_session.created"
            assert not any(e["type"] == "conversation.created" for e in peer.events)
            update = {"input_audio_transcription": {"model": "whisper-1", "language": "en"}}
            await peer.send({"type": "transcription_session.update", "session": update})
            updated = (await peer.wait_for("transcription_session.updated"))["session"]
            assert updated["input_audio_transcription"]["model"] == "whisper-1"
            assert "instructions" not in updated and "voice" not in updated
        # spoken input is transcribed; no response follows (server VAD, create_response on)
        await peer.append(silence(300) + tts_wav("Hello there.") + silence(900))
        committed = await peer.wait_for("input_audio_buffer.committed")
        heard = await peer.wait_for(
            "conversation.item.input_audio_transcription.completed",
            lambda e: e["item_id"] == committed["item_id"],
        )
        assert "hello" in heard["transcript"].lower()
        # responses are refused, as are realtime-only fields and the other kind's update
        error = await peer.refused({"type": "response.create"})
        assert (error["code"], error["param"]) == ("invalid_value", "type"), error
        assert "transcription sessions" in error["message"]
        if peer.ga:
            error = await peer.refused(
                {
                    "type": "session.update",
                    "session": {"type": "transcription", "instructions": "x"},
                }
            )
            assert (error["code"], error["param"]) == ("unknown_parameter", "session.instructions")
            error = await peer.refused(
                {
                    "type": "session.update",
                    "session": {"type": "transcription", "audio": {"output": {"voice": "ash"}}},
                }
            )
            assert (error["code"], error["param"]) == ("unknown_parameter", "session.audio.output")
            error = await peer.refused({"type": "session.update", "session": {"type": "realtime"}})
            assert (error["code"], error["param"]) == ("invalid_value", "session.type"), error
        else:
            error = await peer.refused({"type": "session.update", "session": {"instructions": "x"}})
            assert (error["code"], error["param"]) == ("invalid_value", "type"), error
            error = await peer.refused(
                {"type": "transcription_session.update", "session": {"instructions": "x"}}
            )
            assert (error["code"], error["param"]) == ("unknown_parameter", "session.instructions")
        await peer.sync()
        for kind in ("response.created", "response.done", peer.t("response.output_audio.delta")):
            assert kind not in peer.kinds(), kind


async def test_transcription_intent_needs_no_model(scripted_engine: Any) -> None:
    """A GA transcription session names its model later (in ``audio.input.transcription``)."""
    url = scripted_engine.ga_url().split("?")[0] + "?intent=transcription"
    async with connect(url, "ga") as peer:
        assert peer.events[0]["session"]["type"] == "transcription"


@DIALECTS
async def test_a_realtime_session_stays_one(scripted_engine: Any, dialect: str) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        if peer.ga:
            error = await peer.refused(
                {"type": "session.update", "session": {"type": "transcription"}}
            )
            assert (error["code"], error["param"]) == ("invalid_value", "session.type"), error
            assert "?intent=transcription" in error["message"]
        else:
            error = await peer.refused(
                {
                    "type": "transcription_session.update",
                    "session": {"input_audio_format": "pcm16"},
                }
            )
            assert (error["code"], error["param"]) == ("invalid_value", "type"), error
        await peer.add_text("hello")
        done = await peer.respond()
        assert done["status"] == "completed"


# ------------------------------------------------------------------------------ refusals


@DIALECTS
async def test_what_the_service_refuses_is_refused_naming_the_parameter(
    scripted_engine: Any, dialect: str
) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        ga = peer.ga

        def session(ga_shape: dict[str, Any], preview_shape: dict[str, Any]) -> dict[str, Any]:
            body = {"type": "realtime", **ga_shape} if ga else preview_shape
            return {"type": "session.update", "session": body}

        # a model change (the same model is accepted: see the field walk)
        error = await peer.refused(session({"model": "gpt-other"}, {"model": "gpt-other"}))
        assert (error["code"], error["param"]) == ("invalid_value", "session.model"), error
        # an unknown transcription model
        error = await peer.refused(
            session(
                {"audio": {"input": {"transcription": {"model": "whisper-99"}}}},
                {"input_audio_transcription": {"model": "whisper-99"}},
            )
        )
        param = (
            "session.audio.input.transcription.model"
            if ga
            else "session.input_audio_transcription.model"
        )
        assert (error["code"], error["param"]) == ("invalid_value", param), error
        assert "whisper-99" in error["message"] and "'whisper-1'" in error["message"]
        # GA-only or preview-only fields in the other dialect
        if ga:
            for mods in (["audio", "text"], ["text", "audio"]):
                error = await peer.refused(session({"output_modalities": mods}, {}))
                assert (error["code"], error["param"]) == (
                    "invalid_value",
                    "session.output_modalities",
                ), error
                error = await peer.refused(
                    {"type": "response.create", "response": {"output_modalities": mods}}
                )
                assert (error["code"], error["param"]) == (
                    "invalid_value",
                    "response.output_modalities",
                ), error
            error = await peer.refused({"type": "response.create", "response": {"temperature": 1}})
            assert (error["code"], error["param"]) == ("unknown_parameter", "response.temperature")
        else:
            for bad, word in ((0.5, "below minimum"), (1.3, "above maximum"), (True, None)):
                error = await peer.refused(
                    {"type": "response.create", "response": {"temperature": bad}}
                )
                assert error["param"] == "response.temperature", error
                if word is None:
                    assert error["code"] == "invalid_type", error
                else:
                    assert error["code"] == "invalid_value" and word in error["message"], error
            error = await peer.refused(session({}, {"voice": {"id": "voice_1234"}}))
            assert (error["code"], error["param"]) == ("invalid_type", "session.voice"), error
            error = await peer.refused(session({}, {"speed": 3}))
            assert (error["code"], error["param"]) == ("invalid_value", "session.speed"), error
        # nothing refused took effect: the session answers as before, in range
        await peer.configure(*NO_TURN_DETECTION)
        await peer.add_text("hello")
        done = await peer.respond(None if ga else {"temperature": 1.2, "modalities": ["text"]})
        assert done["status"] == "completed"


# ------------------------------------------------------------------------------ items and voices


def _audio_of(item: dict[str, Any], part_type: str) -> bytes:
    for part in item.get("content") or []:
        if part["type"] == part_type and part.get("audio"):
            return base64.b64decode(part["audio"])
    return b""


@DIALECTS
async def test_retrieved_items_carry_their_audio(
    scripted_engine: Any, dialect: str, silence: Callable[[int], bytes]
) -> None:
    async with connect(url_of(scripted_engine, dialect), dialect) as peer:
        await peer.configure(*NO_TURN_DETECTION)
        spoken = bytes(range(256)) * 60  # 15,360 bytes of pcm16: 320 ms, recognisable
        await peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "item_spoken",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": b64encode_audio(spoken)}],
                },
            }
        )
        await peer.wait_for("conversation.item.done", lambda e: e["item"]["id"] == "item_spoken")
        await peer.send({"type": "conversation.item.retrieve", "item_id": "item_spoken"})
        item = (await peer.wait_for("conversation.item.retrieved"))["item"]
        assert _audio_of(item, "input_audio") == spoken
        # an answer's audio, as its deltas carried it
        start = len(peer.events)
        done = await peer.respond()
        assistant = done["output"][0]
        deltas = b"".join(
            base64.b64decode(e["delta"])
            for e in peer.events[start:]
            if e["type"] == peer.t("response.output_audio.delta")
        )
        assert len(deltas) > 48 * 300
        await peer.send({"type": "conversation.item.retrieve", "item_id": assistant["id"]})
        item = (await peer.wait_for("conversation.item.retrieved"))["item"]
        part = "output_audio" if peer.ga else "audio"
        assert _audio_of(item, part) == deltas
        # truncated: what is left is what was heard
        await peer.send(
            {
                "type": "conversation.item.truncate",
                "item_id": assistant["id"],
                "content_index": 0,
                "audio_end_ms": 200,
            }
        )
        await peer.wait_for("conversation.item.truncated")
        await peer.send({"type": "conversation.item.retrieve", "item_id": assistant["id"]})
        item = (await peer.wait_for("conversation.item.retrieved"))["item"]
        assert _audio_of(item, part) == deltas[: 200 * 48]
        # a committed buffer, retrieved in the session's input format (G.711 here)
        await peer.configure(
            {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            {"input_audio_format": "g711_ulaw"},
        )
        sent = ulaw_encode(resample(silence(300), 24000, 8000))
        await peer.send({"type": "input_audio_buffer.append", "audio": b64encode_audio(sent)})
        await peer.send({"type": "input_audio_buffer.commit"})
        committed = await peer.wait_for("input_audio_buffer.committed")
        await peer.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})
        item = (await peer.wait_for("conversation.item.retrieved"))["item"]
        ulaw = _audio_of(item, "input_audio")
        # 8 kHz, a byte a sample (pcm16 would be 6 times as long); the engine's input resampler
        # still holds the last few ms of what was sent
        assert 0.75 * len(sent) <= len(ulaw) <= len(sent)
        assert max(abs(s) for s in memoryview(ulaw_decode(ulaw)).cast("h")) < 64  # silence


async def test_custom_voice_is_accepted_echoed_and_spoken(scripted_engine: Any) -> None:
    async with connect(scripted_engine.ga_url(), "ga") as peer:
        custom = {"id": "voice_1234"}
        session = await peer.configure(
            {"audio": {"input": {"turn_detection": None}, "output": {"voice": custom}}}, {}
        )
        assert session["audio"]["output"]["voice"] == custom
        await peer.add_text("hello")
        start = len(peer.events)
        done = await peer.respond()
        assert done["status"] == "completed"
        assert peer.audio_bytes(start) > 48 * 300
        # a response's own custom voice too; a malformed one is refused naming its field
        await peer.add_text("hello")
        done = await peer.respond({"audio": {"output": {"voice": {"id": "voice_5678"}}}})
        assert done["status"] == "completed"
        error = await peer.refused(
            {"type": "response.create", "response": {"audio": {"output": {"voice": {"name": "x"}}}}}
        )
        assert (error["code"], error["param"]) == (
            "unknown_parameter",
            "response.audio.output.voice.name",
        ), error
