"""The sans-I/O protocol core with plain data: sessions, dialects, conversation, events."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from aoai_realtime.protocol import Conversation, ProtocolError, SessionConfig, TurnDetection
from aoai_realtime.protocol import events as ev
from aoai_realtime.protocol.dialect import (
    ga_to_preview_client,
    ga_to_preview_server,
    preview_to_ga_client,
    preview_to_ga_server,
)
from aoai_realtime.protocol.session import Transcription

# --------------------------------------------------------------------------------------------
# SessionConfig: one model, two shapes

FULL = SessionConfig(
    instructions="Be brief.",
    output_modalities=["audio"],
    voice="alloy",
    input_format="pcm16",
    output_format="g711_ulaw",
    transcription=Transcription(model="whisper-1", language="en"),
    turn_detection=TurnDetection(type="server_vad", threshold=0.6, silence_duration_ms=400),
    max_output_tokens=300,
    tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    tool_choice="auto",
)


def test_ga_shape_is_nested_and_round_trips() -> None:
    ga = FULL.to_ga()
    assert ga["type"] == "realtime"
    assert ga["output_modalities"] == ["audio"]
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert ga["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "alloy"}
    assert ga["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.6,
        "silence_duration_ms": 400,
    }
    assert ga["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en"}
    assert "modalities" not in ga and "voice" not in ga and "temperature" not in ga
    back = SessionConfig.from_ga(ga, strict=True)
    assert back.to_ga() == ga
    assert back.voice == "alloy" and back.output_format == "g711_ulaw"


def test_preview_shape_is_flat_and_round_trips() -> None:
    cfg = FULL.merged(SessionConfig(temperature=0.8))
    prev = cfg.to_preview()
    assert prev["modalities"] == ["text", "audio"]
    assert prev["voice"] == "alloy"
    assert prev["input_audio_format"] == "pcm16"
    assert prev["output_audio_format"] == "g711_ulaw"
    assert prev["input_audio_transcription"] == {"model": "whisper-1", "language": "en"}
    assert prev["max_response_output_tokens"] == 300
    assert prev["temperature"] == 0.8
    assert "type" not in prev and "audio" not in prev
    back = SessionConfig.from_preview(prev, strict=True)
    assert back.to_preview() == prev
    # Through the other shape and back: nothing lost but what GA lacks (temperature).
    assert SessionConfig.from_ga(back.to_ga()).to_preview() == {
        k: v for k, v in prev.items() if k != "temperature"
    }


def test_only_set_fields_are_rendered() -> None:
    cfg = SessionConfig(instructions="x")
    assert cfg.to_ga() == {"type": "realtime", "instructions": "x"}
    assert cfg.to_preview() == {"instructions": "x"}


def test_turn_detection_off_per_dialect() -> None:
    off = SessionConfig(turn_detection=None)
    assert off.to_ga() == {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    assert off.to_preview(azure=True) == {"turn_detection": {"type": "none"}}
    assert off.to_preview(azure=False) == {"turn_detection": None}
    assert SessionConfig.from_preview({"turn_detection": {"type": "none"}}).turn_detection is None
    assert "turn_detection" in SessionConfig.from_preview({"turn_detection": None}).model_fields_set


@pytest.mark.parametrize(
    ("reader", "session", "code", "param"),
    [
        ("preview", {"type": "realtime"}, "unknown_parameter", "session.type"),
        ("preview", {"audio": {}}, "unknown_parameter", "session.audio"),
        ("ga", {"modalities": ["text"]}, "unknown_parameter", "session.modalities"),
        ("ga", {"voice": "alloy"}, "unknown_parameter", "session.voice"),
        ("preview", {"temperature": 2.0}, "invalid_value", "session.temperature"),
        (
            "ga",
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            "ga",
            {"audio": {"output": {"voice": "alloy", "bogus": 1}}},
            "unknown_parameter",
            "session.audio.output.bogus",
        ),
        ("preview", {"input_audio_format": "mp3"}, "invalid_value", "session.input_audio_format"),
    ],
)
def test_strict_session_errors_name_code_and_param(
    reader: str, session: dict[str, Any], code: str, param: str
) -> None:
    read = SessionConfig.from_preview if reader == "preview" else SessionConfig.from_ga
    with pytest.raises(ProtocolError) as info:
        read(session, strict=True)
    assert info.value.code == code
    assert info.value.param == param
    assert param in info.value.message
    assert info.value.to_error()["param"] == param


def test_lenient_reading_ignores_the_other_dialects_fields() -> None:
    assert (
        SessionConfig.from_ga({"type": "realtime", "modalities": ["text"]}).output_modalities
        is None
    )


# --------------------------------------------------------------------------------------------
# Dialects: four directions


def test_client_ga_to_preview_and_back() -> None:
    update = {
        "type": "session.update",
        "event_id": "c1",
        "session": SessionConfig(voice="echo", output_modalities=["text"]).to_ga(),
    }
    prev = ga_to_preview_client(update)
    assert prev == {
        "type": "session.update",
        "event_id": "c1",
        "session": {"modalities": ["text"], "voice": "echo"},
    }
    again = preview_to_ga_client(prev)
    assert SessionConfig.from_ga(again["session"]) == SessionConfig.from_ga(update["session"])

    item = {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text"}]},
    }
    assert ga_to_preview_client(item)["item"]["content"][0]["type"] == "text"
    assert preview_to_ga_client(ga_to_preview_client(item)) == item

    create = {"type": "response.create", "response": {"max_output_tokens": 50}}
    assert ga_to_preview_client(create)["response"] == {"max_response_output_tokens": 50}
    assert preview_to_ga_client(ga_to_preview_client(create)) == create

    # Events with nothing to translate pass as the same object (no copy on the hot path).
    append = {"type": "input_audio_buffer.append", "audio": "AAAA"}
    assert ga_to_preview_client(append) is append
    assert preview_to_ga_client(append) is append


def test_preview_endpoint_refuses_ga_session_fields() -> None:
    with pytest.raises(ProtocolError) as info:
        preview_to_ga_client(
            {"type": "session.update", "event_id": "c9", "session": {"type": "realtime"}}
        )
    assert (info.value.code, info.value.param, info.value.event_id) == (
        "unknown_parameter",
        "session.type",
        "c9",
    )


@pytest.mark.parametrize(
    ("preview", "ga"),
    [
        ("response.audio.delta", "response.output_audio.delta"),
        ("response.audio.done", "response.output_audio.done"),
        ("response.audio_transcript.delta", "response.output_audio_transcript.delta"),
        ("response.audio_transcript.done", "response.output_audio_transcript.done"),
        ("response.text.delta", "response.output_text.delta"),
        ("response.text.done", "response.output_text.done"),
    ],
)
def test_server_event_renames_both_ways(preview: str, ga: str) -> None:
    event = {"type": preview, "response_id": "r", "item_id": "i", "delta": "x"}
    [as_ga] = preview_to_ga_server(event)
    assert as_ga["type"] == ga
    [as_preview] = ga_to_preview_server(as_ga)
    assert as_preview == event


def test_item_created_becomes_added_and_done() -> None:
    created = {
        "type": "conversation.item.created",
        "event_id": "s1",
        "previous_item_id": None,
        "item": {
            "id": "it1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "text", "text": "hi"}],
        },
    }
    added, done = preview_to_ga_server(created)
    assert added["type"] == "conversation.item.added"
    assert done["type"] == "conversation.item.done"
    assert added["item"]["content"][0]["type"] == "output_text"
    assert done["event_id"] != added["event_id"]
    # In progress: added only.
    in_progress = {**created, "item": {**created["item"], "status": "in_progress"}}
    assert [e["type"] for e in preview_to_ga_server(in_progress)] == ["conversation.item.added"]
    # The other way: added -> created, done has no preview twin.
    [back] = ga_to_preview_server(added)
    assert back["type"] == "conversation.item.created"
    assert back["item"]["content"][0]["type"] == "text"
    assert ga_to_preview_server(done) == []


def test_session_and_response_objects_translate() -> None:
    created = {"type": "session.created", "session": {"id": "s", "modalities": ["text"]}}
    [ga] = preview_to_ga_server(created)
    assert ga["session"] == {"type": "realtime", "output_modalities": ["text"], "id": "s"}
    [prev] = ga_to_preview_server(ga)
    assert prev["session"] == {"modalities": ["text"], "id": "s"}

    done = {
        "type": "response.done",
        "response": {
            "id": "r1",
            "status": "completed",
            "modalities": ["text", "audio"],
            "voice": "alloy",
            "output_audio_format": "pcm16",
            "output": [
                {"id": "i", "type": "message", "role": "assistant", "content": [{"type": "audio"}]}
            ],
        },
    }
    [ga_done] = preview_to_ga_server(done)
    resp = ga_done["response"]
    assert resp["output_modalities"] == ["audio"]
    assert resp["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
    }
    assert resp["output"][0]["content"][0]["type"] == "output_audio"
    parsed = ev.parse_server_event(ga_done)
    assert isinstance(parsed, ev.ResponseDone) and parsed.response.status == "completed"


# --------------------------------------------------------------------------------------------
# Conversation folding


def _b64_pcm(ms: int) -> str:
    return base64.b64encode(bytes(48 * ms)).decode()


def _fold(conv: Conversation, events: list[dict[str, Any]]) -> None:
    for e in events:
        conv.apply(ev.parse_server_event(e))


def _assistant_turn(rid: str = "r1", iid: str = "a1", chunks: int = 5) -> list[dict[str, Any]]:
    base = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
    msg = {"id": iid, "type": "message", "role": "assistant", "status": "in_progress"}
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": rid, "status": "in_progress"}},
        {"type": "response.output_item.added", "response_id": rid, "item": {**msg, "content": []}},
        {"type": "conversation.item.added", "item": {**msg, "content": []}},
        {"type": "response.content_part.added", **base, "part": {"type": "audio"}},
    ]
    words = ["one ", "two ", "three ", "four ", "five "]
    for i in range(chunks):
        out.append({"type": "response.output_audio.delta", **base, "delta": _b64_pcm(100)})
        out.append(
            {"type": "response.output_audio_transcript.delta", **base, "delta": words[i % 5]}
        )
    return out


def test_conversation_counts_audio_ms_and_transcript() -> None:
    conv = Conversation()
    _fold(
        conv,
        [
            {"type": "session.created", "session": {"type": "realtime"}},
            {
                "type": "conversation.item.added",
                "item": {
                    "id": "u1",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Count to five"}],
                },
            },
            *_assistant_turn(),
            {
                "type": "response.output_audio_transcript.done",
                "response_id": "r1",
                "item_id": "a1",
                "transcript": "one two three four five",
            },
            {
                "type": "response.done",
                "response": {"id": "r1", "status": "completed", "usage": {"total_tokens": 9}},
            },
        ],
    )
    [user, assistant] = conv.history()
    assert user.role == "user" and user.text == "Count to five"
    assert assistant.role == "assistant"
    assert assistant.audio_ms == 500
    assert assistant.transcript == "one two three four five"
    assert assistant.response_id == "r1"
    assert conv.responses["r1"].status == "completed"
    assert conv.responses["r1"].item_ids == ["a1"]
    assert conv.responses["r1"].usage == {"total_tokens": 9}
    assert conv.active_response_id is None
    assert conv.last_assistant_item is assistant


def test_truncation_cuts_audio_and_unheard_transcript() -> None:
    conv = Conversation()
    _fold(conv, _assistant_turn(chunks=5))
    assert conv.active_response_id == "r1"
    assert conv.items["a1"].audio_ms == 500
    _fold(
        conv,
        [
            {
                "type": "conversation.item.truncated",
                "item_id": "a1",
                "content_index": 0,
                "audio_end_ms": 200,
            },
            # Late transcript deltas after the truncation are not heard either.
            {
                "type": "response.output_audio_transcript.delta",
                "response_id": "r1",
                "item_id": "a1",
                "delta": "six ",
            },
        ],
    )
    item = conv.items["a1"]
    assert item.audio_ms == 200
    assert item.truncated_at_ms == 200
    assert item.transcript == "one two"


def test_g711_output_counts_8_bytes_per_ms_and_keep_audio() -> None:
    conv = Conversation(keep_audio=True)
    _fold(
        conv,
        [
            {
                "type": "session.created",
                "session": {
                    "type": "realtime",
                    "audio": {"output": {"format": {"type": "audio/pcmu"}}},
                },
            },
            *_assistant_turn(chunks=1),
        ],
    )
    # 4,800 bytes of G.711 at 8 bytes per ms = 600 ms.
    assert conv.items["a1"].audio_ms == 600
    assert conv.items["a1"].parts[0].audio == bytearray(4800)


def test_function_call_text_deltas_and_deletion() -> None:
    conv = Conversation()
    call = {"id": "f1", "type": "function_call", "call_id": "c1", "name": "get_time"}
    _fold(
        conv,
        [
            {"type": "response.created", "response": {"id": "r1"}},
            {"type": "response.output_item.added", "response_id": "r1", "item": call},
            {
                "type": "response.function_call_arguments.delta",
                "response_id": "r1",
                "item_id": "f1",
                "call_id": "c1",
                "delta": '{"tz":',
            },
            {
                "type": "response.function_call_arguments.done",
                "response_id": "r1",
                "item_id": "f1",
                "call_id": "c1",
                "arguments": '{"tz": "UTC"}',
            },
            {
                "type": "conversation.item.added",
                "item": {
                    "id": "o1",
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": "12:00",
                },
            },
            {"type": "response.created", "response": {"id": "r2"}},
            {
                "type": "conversation.item.added",
                "item": {"id": "t1", "type": "message", "role": "assistant", "content": []},
            },
            {
                "type": "response.output_text.delta",
                "response_id": "r2",
                "item_id": "t1",
                "delta": "It is ",
            },
            {
                "type": "response.output_text.delta",
                "response_id": "r2",
                "item_id": "t1",
                "delta": "noon.",
            },
            {"type": "conversation.item.deleted", "item_id": "o1"},
        ],
    )
    assert conv.items["f1"].name == "get_time"
    assert conv.items["f1"].arguments == '{"tz": "UTC"}'
    assert conv.items["t1"].text == "It is noon."
    assert "o1" not in conv.items and conv.order == ["f1", "t1"]


def test_items_are_placed_after_previous_item_id() -> None:
    conv = Conversation()
    for iid, prev in (("a", None), ("c", "a"), ("b", "a")):
        conv.apply(
            ev.parse_server_event(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": prev,
                    "item": {"id": iid, "type": "message", "role": "user", "content": []},
                }
            )
        )
    assert conv.order == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------
# Unknown and odd server events pass through


def test_unknown_event_type_is_kept_whole() -> None:
    raw = {"type": "vendor.new_thing", "event_id": "e1", "payload": {"x": [1, 2]}}
    event = ev.parse_server_event(json.dumps(raw))
    assert isinstance(event, ev.UnknownEvent)
    assert event.type == "vendor.new_thing"
    assert event.model_extra == {"payload": {"x": [1, 2]}}
    conv = Conversation()
    conv.apply(event)  # no-op, no crash
    assert conv.items == {}


def test_known_type_with_odd_fields_becomes_unknown_not_an_exception() -> None:
    event = ev.parse_server_event({"type": "response.output_audio.delta", "delta": 5})
    assert isinstance(event, ev.UnknownEvent)
    event = ev.parse_server_event({"type": 42})
    assert isinstance(event, ev.UnknownEvent) and event.type == "42"


def test_newer_fields_on_known_events_are_kept() -> None:
    event = ev.parse_server_event(
        {"type": "input_audio_buffer.cleared", "event_id": "e", "new_field": True}
    )
    assert isinstance(event, ev.InputAudioBufferCleared)
    assert event.model_extra == {"new_field": True}


def test_error_event_parses_with_event_id() -> None:
    event = ev.parse_server_event(
        {
            "type": "error",
            "event_id": "s9",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "nope",
                "param": "item_id",
                "event_id": "c42",
            },
        }
    )
    assert isinstance(event, ev.ErrorEvent)
    assert event.error.event_id == "c42" and event.error.param == "item_id"


# --------------------------------------------------------------------------------------------
# Client event validation names code and param


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "x",
                "content_index": 0,
                "audio_end_ms": -1,
            },
            "invalid_value",
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 1},
            "missing_required_parameter",
            "item_id",
        ),
        ({"type": "input_audio_buffer.append", "audio": "AA==", "x": 1}, "unknown_parameter", "x"),
        ({"type": "response.cancelled"}, "invalid_value", "type"),
        ({"event_id": "e"}, "missing_required_parameter", "type"),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "foo": 2, "content": []},
            },
            "unknown_parameter",
            "item.foo",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi", "bogus": 1}],
                },
            },
            "unknown_parameter",
            "item.content[0].bogus",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "robot", "content": []},
            },
            "invalid_value",
            "item.role",
        ),
        (
            {"type": "response.create", "response": {"output_modalities": ["video"]}},
            "invalid_value",
            "response.output_modalities[0]",
        ),
    ],
)
def test_client_event_errors_name_code_and_param(
    event: dict[str, Any], code: str, param: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        ev.parse_client_event({**event, "event_id": "client_7"})
    assert info.value.code == code
    assert info.value.param == param
    assert info.value.event_id == "client_7"  # so the error event can name the culprit


def test_invalid_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as info:
        ev.parse_client_event("{not json")
    assert info.value.code == "invalid_json"


def test_valid_client_events_parse() -> None:
    parsed = ev.parse_client_event(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
        }
    )
    assert isinstance(parsed, ev.ConversationItemCreate)
    assert isinstance(parsed.item, ev.FunctionCallOutputItem)
    assert ev.ResponseCreate().to_dict() == {"type": "response.create"}


def test_transcription_sessions_cross_the_dialects() -> None:
    """A GA transcription session is the preview's transcription_session.* event, both ways;
    realtime-only fields are not part of its shape."""
    ga = SessionConfig.from_ga(
        {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": None,
                }
            },
        },
        strict=True,
    )
    with pytest.raises(ProtocolError) as info:
        SessionConfig.from_ga({"type": "transcription", "instructions": "x"}, strict=True)
    assert (info.value.code, info.value.param) == ("unknown_parameter", "session.instructions")
    event = {"type": "session.updated", "event_id": "e1", "session": {**ga.to_ga(), "id": "s"}}
    [preview] = ga_to_preview_server(event)
    assert preview["type"] == "transcription_session.updated"
    assert preview["session"] == {
        "input_audio_format": "g711_ulaw",
        "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": None,
        "id": "s",
    }
    [back] = preview_to_ga_server(preview)
    assert back["type"] == "session.updated"
    assert back["session"]["type"] == "transcription"
    assert back["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    # a realtime session's turn detection off is echoed as null on the preview
    off = SessionConfig(turn_detection=None).to_ga()
    [shown] = ga_to_preview_server({"type": "session.updated", "event_id": "e2", "session": off})
    assert shown["session"]["turn_detection"] is None
