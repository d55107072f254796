"""The shared session core in ``protocol/`` (plain data in, plain data out) and the channels.

The SDK, the middle tier and the engine all run on these, so their rules are pinned here once:
the tool turn, request/acknowledgement matching, the retry rule for handshake failures, the
resume policy and restore tracking, and the in-memory channel's order, close and back-pressure.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from aoai_realtime.channel import ChannelClosed, memory_pair
from aoai_realtime.protocol import events as ev
from aoai_realtime.protocol.handshake import HandshakeFailure, classify, parse_retry_after
from aoai_realtime.protocol.requests import Answered, Excused, Refused, Request, Requests
from aoai_realtime.protocol.restore import ResumeBudget
from aoai_realtime.protocol.resume import Restore, ResumePolicy, SessionEnd
from aoai_realtime.protocol.tools import RunCall, ToolTurn, TurnEnd
from aoai_realtime.server.relay import TRANSITIONS, RelayState


def args_done(call_id: str, name: str, rid: str = "r1") -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.done",
        "response_id": rid,
        "item_id": f"item_{call_id}",
        "output_index": 0,
        "call_id": call_id,
        "name": name,
        "arguments": '{"x": 1}',
    }


def call_item_done(call_id: str, name: str, rid: str = "r1") -> dict[str, Any]:
    return {
        "type": "response.output_item.done",
        "response_id": rid,
        "output_index": 0,
        "item": {
            "id": f"item_{call_id}",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": '{"x": 1}',
        },
    }


def done(rid: str = "r1", status: str = "completed") -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": rid, "status": status, "output": []}}


# ------------------------------------------------------------------------------ the tool turn


def test_tool_turn_runs_each_call_once_and_sends_outputs_after_response_done() -> None:
    turn = ToolTurn(lambda name: name in ("get_time", "add"))
    [run] = turn.on_event(args_done("c1", "get_time"))
    assert isinstance(run, RunCall) and run.call.name == "get_time"
    assert turn.on_event(call_item_done("c1", "get_time")) == []  # the same call again: ignored
    assert turn.on_event(args_done("c9", "not_ours")) == []  # someone else's tool
    [second] = turn.on_event(args_done("c2", "add"))
    assert isinstance(second, RunCall)
    assert turn.completed("c1", "12:00") is None  # the response is not done yet
    assert turn.on_event(done()) == []  # done, but c2 is still running
    assert turn.expects_follow_up("r1")
    end = turn.completed("c2", "3")
    assert isinstance(end, TurnEnd) and end.status == "completed"
    assert [e["item"]["call_id"] for e in end.events] == ["c1", "c2"]  # in the calls' order
    assert all(e["item"]["type"] == "function_call_output" for e in end.events)
    assert end.follow_up == {"type": "response.create"}
    assert turn.ran("c1") and not turn.ran("c9") and turn.running == 0


def test_tool_turn_after_a_cancelled_response_sends_outputs_but_no_follow_up() -> None:
    turn = ToolTurn(lambda name: True)
    turn.on_event(call_item_done("c1", "t"))
    assert turn.completed("c1", "out") is None
    [end] = turn.on_event(done(status="cancelled"))
    assert isinstance(end, TurnEnd) and end.follow_up is None and len(end.events) == 1
    assert not turn.expects_follow_up("r1")


def test_tool_turn_learns_the_name_from_the_item_and_reset_forgets_responses() -> None:
    turn = ToolTurn(lambda name: name == "t")
    turn.on_event(
        {
            "type": "response.output_item.added",
            "response_id": "r1",
            "item": {"id": "item_c1", "type": "function_call", "name": "t", "call_id": "c1"},
        }
    )
    event = args_done("c1", "")
    del event["name"]
    [run] = turn.on_event(event)
    assert isinstance(run, RunCall) and run.call.name == "t"
    assert [c.call_id for c in turn.reset()] == ["c1"]  # still running when the session ended
    assert turn.completed("c1", "late") is None  # nothing to send it to


# ------------------------------------------------------------------------------ requests


def test_requests_route_answers_and_errors_to_the_call_that_caused_them() -> None:
    requests = Requests()
    update = requests.add(Request("e1", "session.update", lambda e: e.type == "session.updated"))
    item = requests.add(
        Request("e2", "conversation.item.create", lambda e: e.type == "conversation.item.added")
    )
    cancel = requests.add(
        Request(
            "e3",
            "response.cancel",
            lambda e: e.type == "response.done",
            excuse_codes=("response_cancel_not_active",),
        )
    )
    updated = ev.parse_server_event({"type": "session.updated", "session": {}})
    outcome = requests.on_event(updated)
    assert isinstance(outcome, Answered) and outcome.request is update
    assert requests.on_event(updated) is None  # one event answers one request

    def error(event_id: str, code: str) -> ev.ServerEvent:
        return ev.parse_server_event(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": code, "event_id": event_id},
            }
        )

    refused = requests.on_event(error("e2", "invalid_value"))
    assert isinstance(refused, Refused) and refused.request is item
    assert requests.on_event(error("e2", "invalid_value")) is None  # never delivered twice
    finished = ev.parse_server_event({"type": "response.done", "response": {"id": "r"}})
    answered = requests.on_event(finished)
    assert isinstance(answered, Answered) and answered.request is cancel
    late = requests.on_event(error("e3", "response_cancel_not_active"))
    assert isinstance(late, Excused) and late.request is None  # the call had already returned
    assert len(requests) == 0


# ------------------------------------------------------------------------------ handshakes


@pytest.mark.parametrize(
    ("kind", "status", "verdict"),
    [
        ("status", 500, "retry"),
        ("status", 503, "retry"),
        ("connect", None, "retry"),
        ("timeout", None, "retry"),
        ("dns", None, "retry"),
        ("status", 401, "refresh_credential"),
        ("status", 403, "give_up"),
        ("status", 404, "give_up"),
        ("status", 429, "give_up"),
        ("status", 400, "give_up"),
        ("status", 200, "give_up"),
    ],
)
def test_one_retry_rule(kind: str, status: int | None, verdict: str) -> None:
    failure = HandshakeFailure(kind=kind, url="wss://x/openai/v1/realtime", status=status)  # type: ignore[arg-type]
    assert classify(failure) == verdict


def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}, now=0) == 1.5
    assert parse_retry_after({"Retry-After": "3"}, now=0) == 3.0
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 1970 00:00:10 GMT"}, now=4) == 6.0
    assert parse_retry_after({}, now=0) is None


def test_resume_policy_refreshes_a_credential_once_and_keeps_the_budget() -> None:
    policy = ResumePolicy(ResumeBudget(max_attempts=2, window_s=60, backoff_s=(0.0, 1.0)))
    refused = HandshakeFailure(kind="status", url="wss://x", status=401)
    assert policy.after_failure(refused) == "refresh_credential"
    assert policy.after_failure(refused) == "give_up"  # a fresh token was refused too
    assert ResumePolicy().after_failure(refused, can_refresh=False) == "give_up"
    assert [policy.next_attempt(0.0), policy.next_attempt(0.0), policy.next_attempt(0.0)] == [
        0.0,
        1.0,
        None,
    ]


def test_session_end_wording_and_what_is_resumable() -> None:
    assert SessionEnd("session_expired").resumable
    assert SessionEnd("closed", close_code=1011).resumable
    assert SessionEnd("closed", close_code=None).resumable  # no close frame: 1006
    assert not SessionEnd("closed", close_code=1000).resumable
    text = SessionEnd("closed", "bye", 1011).resumed_message(1, cut=True)
    assert text == (
        "The connection to the service closed (code 1011: bye); a new session continues the "
        "conversation (1 item restored). The reply in progress was cut short."
    )


def test_restore_tracks_every_acknowledgement_and_refusal() -> None:
    ids = itertools.count()
    restore = Restore(
        {"type": "realtime", "instructions": "Be brief."},
        [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"id": "keep_me", "type": "message", "role": "user", "content": []},
        ],
        new_event_id=lambda: f"evt_{next(ids)}",
        new_item_id=lambda: f"item_{next(ids)}",
    )
    kinds = [e["type"] for e in restore.events]
    assert kinds == ["session.update", "conversation.item.create", "conversation.item.create"]
    first_item = restore.events[1]["item"]["id"]
    assert "keep_me" in restore.item_ids and first_item in restore.item_ids
    restore.on_event({"type": "session.updated", "session": {}})
    restore.on_event({"type": "conversation.item.added", "item": {"id": first_item}})
    assert not restore.done
    refused_id = restore.events[2]["event_id"]
    restore.on_event({"type": "error", "error": {"code": "invalid_value", "event_id": refused_id}})
    assert restore.done and restore.accepted == 1 and len(restore.refused) == 1
    expired = Restore(None, [{"type": "message"}], lambda: "e", lambda: "i")
    expired.on_event({"type": "error", "error": {"code": "session_expired", "message": "m"}})
    assert expired.done and expired.ended == SessionEnd("session_expired", "m")


# ------------------------------------------------------------------------------ the relay's table


def test_relay_transitions_cover_every_state_and_end_closed() -> None:
    for state in RelayState:
        assert TRANSITIONS[(state, "close")] is RelayState.CLOSED
    assert TRANSITIONS[(RelayState.RELAYING, "session_ended")] is RelayState.RESUMING
    assert TRANSITIONS[(RelayState.RESUMING, "restored")] is RelayState.RELAYING
    assert (RelayState.FAILED, "session_ended") not in TRANSITIONS  # no resume after a failure
    assert (RelayState.CONNECTING, "session_ended") not in TRANSITIONS


# ------------------------------------------------------------------------------ channels


async def test_memory_channel_keeps_order_closes_after_the_data_and_pushes_back() -> None:
    a, b = memory_pair(max_pending=2)
    await a.send("1")
    await a.send("2")
    third = asyncio.ensure_future(a.send("3"))  # b's inbox is full: the sender waits
    await asyncio.sleep(0)
    assert not third.done()
    assert await b.receive() == "1"  # room again: the waiting send goes through
    await asyncio.wait_for(third, 1)
    await a.close(1011, "gone")
    assert [await b.receive(), await b.receive(), await b.receive()] == ["2", "3", None]
    assert b.close_code == 1011 and b.close_reason == "gone"
    with pytest.raises(ChannelClosed):
        await b.send("late")
    with pytest.raises(ChannelClosed):
        await a.send("late")


async def test_memory_channel_close_wakes_a_waiting_reader_and_sender() -> None:
    a, b = memory_pair(max_pending=1)
    reader = asyncio.ensure_future(b.receive())
    await a.send("x")
    assert await reader == "x"
    await a.send("y")
    blocked = asyncio.ensure_future(a.send("z"))
    waiting = asyncio.ensure_future(a.receive())
    await asyncio.sleep(0)
    await b.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(blocked, 1)
    assert await asyncio.wait_for(waiting, 1) is None


# ------------------------------------------------------------------------------ client frames


def test_client_frames_are_parsed_once_with_a_depth_limit() -> None:
    from aoai_realtime.protocol.errors import ProtocolError
    from aoai_realtime.protocol.frames import MAX_DEPTH, load_client_event

    event = load_client_event('{"type":"input_audio_buffer.append","type":"session.update"}')
    assert event["type"] == "session.update"  # decided on the parsed value: the last key wins
    deepest = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # the object itself is one level
    assert load_client_event('{"type":"x","a":' + deepest + "}")["type"] == "x"
    text_with_brackets = '{"type":"x","text":"' + "[" * 5000 + '"}'  # inside a string: not depth
    assert load_client_event(text_with_brackets)["type"] == "x"
    for frame, code in [
        ('{"type":"x","a":' + "[" * 5000 + "]" * 5000 + "}", "invalid_json"),
        ("{nope", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"event_id": "e9"}', "missing_required_parameter"),
        ('{"type": 5, "event_id": "e9"}', "invalid_type"),
    ]:
        with pytest.raises(ProtocolError) as info:
            load_client_event(frame)
        assert info.value.code == code, frame
    assert load_client_event('{"type":"x","t":"\\udfff"}')["t"] == "\udfff"
