"""Client mistakes are refused the way the service refuses them (issue 9).

Every refusal is an ``invalid_request_error`` naming the parameter as the client spelled it (a
real field path, in the client's dialect), with the ``event_id`` of the event, and quoting the
client's value bounded; a value of the wrong type is refused, never converted. The engine is a
real peer (in memory); the middle tier runs with its engine in process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from aoai_realtime.channel import AiohttpChannel
from aoai_realtime.protocol import events as ev
from aoai_realtime.protocol.dialect import ga_to_preview_server, preview_to_ga_server
from aoai_realtime.protocol.errors import ECHO_LIMIT, ProtocolError, echo
from aoai_realtime.protocol.params import (
    PREVIEW_PARAMS,
    error_to_ga,
    error_to_preview,
    param_to_ga,
    param_to_preview,
)
from aoai_realtime.protocol.session import SessionConfig
from fuzzing import ENGINE_PATHS, seeds, serve_in_process
from helpers import Client, memory_engine, open_memory

GA_VAD = {"type": "server_vad", "threshold": 0.5}


# ------------------------------------------------------------------------------ the one table


def test_preview_names_map_both_ways_by_one_table() -> None:
    assert len(set(PREVIEW_PARAMS.values())) == len(PREVIEW_PARAMS)  # invertible
    for ga, preview in PREVIEW_PARAMS.items():
        assert param_to_preview(ga) == preview
        assert param_to_ga(preview) == ga
        assert param_to_preview(preview) == preview  # the preview's names are its own
    assert (
        param_to_preview("session.audio.input.turn_detection.threshold")
        == "session.turn_detection.threshold"
    )
    assert param_to_preview("response.output_modalities[0]") == "response.modalities[0]"
    # a GA format's fields are the preview's format string itself
    assert param_to_preview("session.audio.input.format.rate") == "session.input_audio_format"
    # names that are the same, or merely share a prefix, stay
    for same in ("session.tools[0].name", "session.max_output_tokens_x", "item.content[0].type"):
        assert param_to_preview(same) == same


def test_errors_are_renamed_in_param_and_message_but_unknown_parameters_never() -> None:
    error = {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "Invalid value for 'session.audio.output.voice': 'bob'. Supported values ...",
        "param": "session.audio.output.voice",
        "event_id": "e1",
    }
    preview = error_to_preview(error)
    assert preview["param"] == "session.voice"
    assert preview["message"].startswith("Invalid value for 'session.voice': 'bob'.")
    assert error_to_ga(preview) == error
    # an unknown parameter is the client's own key: a preview client's GA name stays as sent
    unknown = {**error, "code": "unknown_parameter", "param": "session.output_modalities"}
    assert error_to_preview(unknown) is unknown
    # the server-side translations carry it on error events, either way
    event = {"type": "error", "event_id": "s1", "error": error}
    assert ga_to_preview_server(event) == [{**event, "error": preview}]
    assert preview_to_ga_server({**event, "error": preview}) == [event]
    assert ga_to_preview_server({**event, "error": unknown})[0]["error"] is unknown


# ------------------------------------------------------------------------------ the wording


@pytest.mark.parametrize(
    ("event", "code", "param", "message"),
    [
        (
            {"type": "response.create", "response": {"max_output_tokens": True}},
            "invalid_type",
            "response.max_output_tokens",
            "Invalid type for 'response.max_output_tokens': expected an integer or 'inf', but "
            "got a boolean instead.",
        ),
        (
            {"type": "response.create", "response": {"max_output_tokens": "lots"}},
            "invalid_value",
            "response.max_output_tokens",
            "Invalid value for 'response.max_output_tokens': expected an integer or 'inf', but "
            "got 'lots' instead.",
        ),
        (
            {"type": "response.create", "response": {"tool_choice": 5}},
            "invalid_type",
            "response.tool_choice",
            "Invalid type for 'response.tool_choice': expected a string or an object, but got "
            "an integer instead.",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text"}]},
            },
            None,
            None,
            None,
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": 5}],
                },
            },
            "invalid_type",
            "item.content[0].text",
            "Invalid type for 'item.content[0].text': expected a string, but got an integer "
            "instead.",
        ),
        (
            {
                "type": "response.create",
                "response": {"input": [{"type": "function_call_output", "call_id": "c"}]},
            },
            "missing_required_parameter",
            "response.input[0].output",
            "Missing required parameter: 'response.input[0].output'.",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": "item_reference", "id": "x"}},
            "invalid_value",
            "item.type",
            "Invalid value for 'item.type': 'item_reference'. Supported values are: 'message', "
            "'function_call', 'function_call_output' and 'mcp_approval_response'.",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": None}},
            "invalid_type",
            "item.type",
            "Invalid type for 'item.type': expected one of 'message', 'function_call', "
            "'function_call_output' and 'mcp_approval_response', but got null instead.",
        ),
        (
            {"type": "conversation.item.create", "item": {"role": "user"}},
            "missing_required_parameter",
            "item.type",
            "Missing required parameter: 'item.type'.",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0.0},
            "invalid_type",
            "content_index",
            "Invalid type for 'content_index': expected an integer, but got a decimal number "
            "instead.",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": -5,
            },
            "invalid_value",
            "audio_end_ms",
            "Invalid 'audio_end_ms': integer below minimum value. Expected a value >= 0, but got "
            "-5 instead.",
        ),
    ],
)
def test_validation_errors_read_like_the_service(
    event: dict[str, Any], code: str | None, param: str | None, message: str | None
) -> None:
    if code is None:  # valid: parses
        ev.parse_client_event(event)
        return
    with pytest.raises(ProtocolError) as info:
        ev.parse_client_event({**event, "event_id": "evt_9"})
    error = info.value.to_error()
    assert (error["code"], error["param"], error["message"]) == (code, param, message)
    assert (error["type"], error["event_id"]) == ("invalid_request_error", "evt_9")


@pytest.mark.parametrize(
    ("reader", "session", "param", "expected", "got"),
    [
        ("ga", {"max_output_tokens": True}, "session.max_output_tokens", "an integer or 'inf'", "a boolean"),
        ("ga", {"max_output_tokens": 7.5}, "session.max_output_tokens", "an integer or 'inf'", "a decimal number"),
        (
            "ga",
            {"audio": {"input": {"turn_detection": {**GA_VAD, "threshold": "0.5"}}}},
            "session.audio.input.turn_detection.threshold",
            "a number",
            "a string",
        ),
        (
            "ga",
            {"audio": {"input": {"turn_detection": {**GA_VAD, "prefix_padding_ms": True}}}},
            "session.audio.input.turn_detection.prefix_padding_ms",
            "an integer",
            "a boolean",
        ),
        (
            "ga",
            {"audio": {"input": {"turn_detection": {**GA_VAD, "create_response": 1}}}},
            "session.audio.input.turn_detection.create_response",
            "a boolean",
            "an integer",
        ),
        ("ga", {"audio": {"output": {"speed": "1"}}}, "session.audio.output.speed", "a number", "a string"),
        ("ga", {"audio": {"output": {"voice": 7}}}, "session.audio.output.voice", "a string or an object", "an integer"),
        ("ga", {"instructions": ["Be brief."]}, "session.instructions", "a string", "an array"),
        ("ga", {"audio": {"input": "x"}}, "session.audio.input", "an object", "a string"),
        (
            "ga",
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": "24000"}}}},
            "session.audio.input.format.rate",
            "an integer",
            "a string",
        ),
        ("preview", {"temperature": "1"}, "session.temperature", "a number", "a string"),
        ("preview", {"temperature": True}, "session.temperature", "a number", "a boolean"),
        (
            "preview",
            {"max_response_output_tokens": True},
            "session.max_response_output_tokens",
            "an integer or 'inf'",
            "a boolean",
        ),
        (
            "preview",
            {"turn_detection": {**GA_VAD, "silence_duration_ms": "500"}},
            "session.turn_detection.silence_duration_ms",
            "an integer",
            "a string",
        ),
        ("preview", {"modalities": "text"}, "session.modalities", "an array", "a string"),
        (
            "preview",
            {"input_audio_transcription": {"model": 1}},
            "session.input_audio_transcription.model",
            "a string",
            "an integer",
        ),
    ],
)  # fmt: skip
def test_wrong_types_are_refused_never_converted(
    reader: str, session: dict[str, Any], param: str, expected: str, got: str
) -> None:
    """Strict: ``true`` is not ``1``, ``"1"`` is not a number, an integer is not a boolean."""
    read = SessionConfig.from_ga if reader == "ga" else SessionConfig.from_preview
    body = {"type": "realtime", **session} if reader == "ga" else session
    with pytest.raises(ProtocolError) as info:
        read(body, strict=True)
    assert info.value.code == "invalid_type", info.value.message
    assert info.value.param == param
    assert info.value.message == (
        f"Invalid type for '{param}': expected {expected}, but got {got} instead."
    )


def test_integers_are_numbers_and_the_bounds_are_valid() -> None:
    vad = SessionConfig.from_ga(
        {"type": "realtime", "audio": {"input": {"turn_detection": {**GA_VAD, "threshold": 1}}}},
        strict=True,
    )
    assert vad.turn_detection is not None and vad.turn_detection.threshold == 1.0
    for threshold in (0, 0.0, 1, 1.0):
        td = {"type": "server_vad", "threshold": threshold}
        assert SessionConfig.from_preview({"turn_detection": td}, strict=True).turn_detection
    assert SessionConfig.from_preview({"temperature": 1}, strict=True).temperature == 1.0
    speed = {"type": "realtime", "audio": {"output": {"speed": 1}}}
    assert SessionConfig.from_ga(speed, strict=True).speed == 1.0


def test_what_the_sdk_reads_and_builds_stays_lenient() -> None:
    """Strictness is for a client's events; server events and the SDK's own values are read
    as before (a newer or odder service never breaks a client)."""
    truncated = ev.parse_server_event(
        {
            "type": "conversation.item.truncated",
            "item_id": "i",
            "content_index": "0",
            "audio_end_ms": 10.0,
        }
    )
    assert isinstance(truncated, ev.ConversationItemTruncated) and truncated.content_index == 0
    lax = SessionConfig.from_ga({"type": "realtime", "audio": {"output": {"speed": "1.5"}}})
    assert lax.speed == 1.5
    assert SessionConfig(max_output_tokens=300, temperature=1).temperature == 1.0
    assert ev.ResponseParams(max_output_tokens=5, temperature=1).temperature == 1.0
    done = ev.parse_server_event(
        {"type": "response.done", "response": {"id": "r", "max_output_tokens": "inf"}}
    )
    assert isinstance(done, ev.ResponseDone)


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_the_engines_own_session_is_accepted_back(dialect: str) -> None:
    """A client that sends back the session it was given (a resume does) is not refused: every
    value the engine renders passes the strict validation."""
    async with memory_engine() as engine, open_memory(engine, dialect) as rt:
        created = rt.of_type("session.created")[0]["session"]
        await rt.send({"type": "session.update", "session": created, "event_id": "evt_back"})
        updated = await rt.wait_for("session.updated")
        assert not rt.of_type("error"), rt.of_type("error")
        await rt.send({"type": "session.update", "session": updated["session"]})
        await rt.wait_for("session.updated")
        if dialect == "ga":  # the loosely typed fields take null
            await rt.update(tracing=None, truncation=None, prompt=None)
        assert not rt.of_type("error"), rt.of_type("error")


# ------------------------------------------------------------------------------ bounded echoes


def test_echo_cuts_long_values() -> None:
    assert echo("short") == "short"
    assert echo(5) == "5" and echo([1, "a"]) == '[1, "a"]'
    long = echo("y" * 1_000_000)
    assert long == "y" * ECHO_LIMIT + "… (1000000 characters)"


async def test_long_values_come_back_cut() -> None:
    huge = "z" * 1_000_000
    async with memory_engine() as engine, open_memory(engine) as rt:
        for event, param in (
            ({"type": huge}, "type"),
            ({"type": "conversation.item.retrieve", "item_id": huge}, "item_id"),
            (
                {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": huge}}}},
                "session.audio.output.voice",
            ),
            ({"type": "input_audio_buffer.clear", huge: 1}, None),
            ({"type": "response.create", "response": {"conversation": huge}}, "response.conversation"),
        ):  # fmt: skip
            await rt.send({**event, "event_id": "evt_long"})
            error = await rt.error()
            assert len(json.dumps(error)) < 2000, error["message"][:200]
            assert "… (1000000 characters)" in error["message"], error["message"][:300]
            assert error["event_id"] == "evt_long"
            assert param is None or error["param"] == param
        await rt.send({"type": "input_audio_buffer.clear", "event_id": "e" * 513})
        error = await rt.error()
        assert (error["code"], error["param"]) == ("string_above_max_length", "event_id")
        assert error["event_id"] is None and len(error["message"]) < 200
        await rt.send({"type": "input_audio_buffer.clear", "event_id": "e" * 512})
        await rt.wait_for("input_audio_buffer.cleared")


async def test_nan_and_infinity_are_not_json() -> None:
    """Python's parser takes them; echoed back (a tool's schema in ``session.updated``), they
    would make the engine's own events invalid JSON for the client."""
    async with memory_engine() as engine, open_memory(engine) as rt:
        for constant in ("NaN", "Infinity", "-Infinity"):
            await rt.send_raw(
                '{"type": "session.update", "session": {"type": "realtime", "tools": [{"type": '
                f'"function", "name": "f", "parameters": {{"default": {constant}}}}}]}}}}'
            )
            error = await rt.error()
            assert error["code"] == "invalid_json" and constant in error["message"], error
        await rt.update(instructions="Still here.")


# ------------------------------------------------------------------------------ names and ids


PREVIEW_MISTAKES: list[tuple[dict[str, Any], str, str]] = [
    (
        {"type": "session.update", "session": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
        "invalid_value",
        "session.turn_detection.threshold",
    ),
    ({"type": "session.update", "session": {"voice": "nobody"}}, "invalid_value", "session.voice"),
    (
        {"type": "session.update", "session": {"max_response_output_tokens": 0}},
        "invalid_value",
        "session.max_response_output_tokens",
    ),
    ({"type": "session.update", "session": {"modalities": []}}, "invalid_value", "session.modalities"),
    (
        {"type": "session.update", "session": {"input_audio_format": "mp3"}},
        "invalid_value",
        "session.input_audio_format",
    ),
    (
        {"type": "session.update", "session": {"turn_detection": {"type": "server_vad"}}},
        "speech_unavailable",
        "session.turn_detection",
    ),
    ({"type": "response.create", "response": {"modalities": []}}, "invalid_value", "response.modalities"),
    (
        {"type": "response.create", "response": {"modalities": ["text", 5]}},
        "invalid_type",
        "response.modalities[1]",
    ),
    (
        {"type": "response.create", "response": {"max_response_output_tokens": 99999}},
        "invalid_value",
        "response.max_response_output_tokens",
    ),
    (
        {"type": "response.create", "response": {"max_response_output_tokens": True}},
        "invalid_type",
        "response.max_response_output_tokens",
    ),
    ({"type": "response.create", "response": {"voice": "nobody"}}, "invalid_value", "response.voice"),
    (
        {"type": "response.create", "response": {"output_audio_format": "mp3"}},
        "invalid_value",
        "response.output_audio_format",
    ),
    (
        {"type": "response.create", "response": {"output_modalities": ["text"]}},
        "unknown_parameter",
        "response.output_modalities",
    ),
    (
        {"type": "session.update", "session": {"output_modalities": ["text"]}},
        "unknown_parameter",
        "session.output_modalities",
    ),
]  # fmt: skip


def _check_preview_error(error: dict[str, Any], code: str, param: str, event_id: str) -> None:
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        code,
        param,
    ), error
    assert error["event_id"] == event_id
    for ga in PREVIEW_PARAMS:  # the message names no GA parameter either
        if code != "unknown_parameter":
            assert f"'{ga}" not in error["message"], error["message"]


async def test_a_preview_client_reads_its_own_names() -> None:
    async with memory_engine() as engine, open_memory(engine, "preview") as rt:
        for n, (event, code, param) in enumerate(PREVIEW_MISTAKES):
            await rt.send({**event, "event_id": f"evt_p{n}"})
            _check_preview_error(await rt.error(), code, param, f"evt_p{n}")


@pytest.fixture(scope="module")
def serve() -> Iterator[Any]:
    srv = serve_in_process()
    yield srv
    srv.close()


async def test_a_preview_page_behind_the_middle_tier_reads_its_own_names(serve: Any) -> None:
    """The middle tier speaks GA to its engine: the engine's errors come back renamed."""
    url = "ws" + serve.http_url[4:] + ENGINE_PATHS["preview"]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        page = Client(AiohttpChannel(ws), "preview", ws)
        await page.wait_for("session.created")
        for n, (event, code, param) in enumerate(PREVIEW_MISTAKES):
            await page.send({**event, "event_id": f"evt_m{n}"})
            error = await page.wait_for(
                "error", lambda e, n=n: e["error"].get("event_id") == f"evt_m{n}"
            )
            _check_preview_error(error["error"], code, param, f"evt_m{n}")
        await ws.close()


COMMON_REFUSALS: list[dict[str, Any]] = [
    {"type": 5},
    {"event_id": "x"},
    {"type": "session.update", "session": 5},
    {"type": "session.update", "bogus": 1},
    {"type": "input_audio_buffer.append", "audio": "***"},
    {"type": "input_audio_buffer.commit"},
    {"type": "conversation.item.create", "item": {"type": "message", "role": 1}},
    {"type": "conversation.item.delete", "item_id": "item_nope"},
    {"type": "response.create", "response": {"metadata": {"k": 1}}},
    {"type": "response.cancel"},
    {"type": "output_audio_buffer.clear"},
]
REFUSALS: dict[str, list[dict[str, Any]]] = {
    "ga": [
        *COMMON_REFUSALS,
        {"type": "session.update", "session": {"voice": "alloy"}},
        {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": 1}}}},
        {"type": "response.create", "response": {"audio": {"output": {"format": {"type": "x"}}}}},
    ],
    "preview": [
        *COMMON_REFUSALS,
        {"type": "session.update", "session": {"type": "realtime"}},
        {"type": "session.update", "session": {"voice": 1}},
        {"type": "response.create", "response": {"output_audio_format": 3}},
        {"type": "response.create", "response": {"modalities": "text"}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_every_refusal_carries_the_event_id(dialect: str) -> None:
    """Refused by the frame parse, by validation, by translation or by the session: the error
    names the event it refuses."""
    async with memory_engine() as engine, open_memory(engine, dialect) as rt:
        for n, event in enumerate(REFUSALS[dialect]):
            await rt.send({**event, "event_id": f"evt_{n}"})
            error = await rt.error()
            assert error["type"] == "invalid_request_error", (event, error)
            assert error["event_id"] == f"evt_{n}", (event, error)


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_the_fuzzers_seed_events_are_valid(dialect: str) -> None:
    """The events ``fuzzing.py`` breaks are accepted as they are: nothing valid is refused
    (what they refer to may be missing: that is a refusal of another kind)."""
    field_codes = {
        "invalid_value",
        "invalid_type",
        "unknown_parameter",
        "missing_required_parameter",
    }
    async with memory_engine() as engine, open_memory(engine, dialect) as rt:
        for n, event in enumerate(seeds(dialect)):
            await rt.send({**event, "event_id": f"evt_{n}"})
        await rt.send({"type": "input_audio_buffer.clear", "event_id": "evt_last"})
        await rt.wait_for("input_audio_buffer.cleared")
        for error in [e["error"] for e in rt.of_type("error")]:
            expected = error["code"] not in field_codes or error["param"] in (
                "item_id",  # no item "i" to truncate, retrieve or delete
                "response.input[1].id",  # no item "i" to refer to
            )
            assert expected, error


# ------------------------------------------------------------------------------ VAD bounds


@pytest.mark.parametrize("threshold", [0.0, 1.0, 0, 1])
async def test_vad_threshold_at_its_bounds_is_accepted(speech_stack: Any, threshold: float) -> None:
    """0.0 and 1.0 are in range (the detector takes them too): ``session.updated``, not an
    error, and audio goes on being heard."""
    options = {"speech": speech_stack, "no_speech": False}
    async with memory_engine(**options) as engine, open_memory(engine) as rt:
        td = {"type": "server_vad", "threshold": threshold, "create_response": False}
        updated = await rt.update(audio={"input": {"turn_detection": td}})
        got = updated["session"]["audio"]["input"]["turn_detection"]
        assert got["threshold"] == threshold
        await rt.append(b"\x00\x00" * 24 * 300)
        await rt.send({"type": "input_audio_buffer.clear"})
        await rt.wait_for("input_audio_buffer.cleared")
        assert not rt.of_type("error"), rt.of_type("error")
