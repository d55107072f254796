"""Conversations that survive the end of an upstream session.

* ``restore_events`` and the resume bookkeeping as plain data (ordering, history bounds, function
  call pairs, never audio; attempts and backoff; the accepted session; held page events);
* the middle tier against a real scripted engine on loopback: the engine's ``expire`` and
  ``close`` faults end the upstream session (``Upstreams.local_query`` for the first session,
  ``local_resume_query`` for the resumed ones), and a WebSocket client speaking as the page checks
  what it is told and that the conversation goes on. The scripted brain answers "Which turn is
  this?" with the number of user messages in its conversation, so a restored history shows in
  the answer; the relay's observer shows what the new upstream session received.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from aoai_realtime.protocol import Conversation
from aoai_realtime.protocol.dialect import ga_to_preview_client
from aoai_realtime.protocol.events import parse_server_event
from aoai_realtime.protocol.restore import (
    ResumeBudget,
    bound_history,
    restorable_items,
    restore_events,
)
from aoai_realtime.server import (
    LocalEngine,
    Policy,
    ResumeOptions,
    ServerConfig,
    ServerThread,
    Upstreams,
)
from aoai_realtime.server.resume import (
    HeldEvents,
    SessionTracker,
    merge_session,
)
from aoai_realtime.server.tools import demo_tools
from helpers import Client, engine_thread, open_page, wait_idle

SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {"user_regex": "my name is (\\w+)", "reply": "Nice to meet you, {1}."},
        {"user": "which turn", "reply": "This is turn {turn}."},
        {"user": "hello", "reply": "Hello! How can I help you today?"},
    ],
}
TEXT_ONLY = {"type": "realtime", "output_modalities": ["text"], "instructions": "Answer briefly."}


# ==================================================================================== plain data


def fold(conv: Conversation, *events: dict[str, Any]) -> None:
    for event in events:
        conv.apply(parse_server_event(event))


def user_text(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.added",
        "item": {
            "id": item_id,
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def user_audio(item_id: str, transcript: str | None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "conversation.item.added",
            "item": {
                "id": item_id,
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        }
    ]
    if transcript is not None:
        events.append(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
            }
        )
    return events


def assistant_audio(
    item_id: str, rid: str, transcript: str, ms: int, *, finished: bool = True
) -> list[dict[str, Any]]:
    item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress"}
    audio = base64.b64encode(b"\x01\x00" * 24 * ms).decode()
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": rid, "status": "in_progress"}},
        {"type": "response.output_item.added", "response_id": rid, "item": {**item, "content": []}},
        {"type": "response.output_audio.delta", "response_id": rid, "item_id": item_id,
         "content_index": 0, "delta": audio},
        {"type": "response.output_audio_transcript.delta", "response_id": rid,
         "item_id": item_id, "content_index": 0, "delta": transcript},
    ]  # fmt: skip
    if finished:
        events += [
            {"type": "response.output_audio_transcript.done", "response_id": rid,
             "item_id": item_id, "content_index": 0, "transcript": transcript},
            {"type": "response.output_item.done", "response_id": rid,
             "item": {**item, "status": "completed",
                      "content": [{"type": "output_audio", "transcript": transcript}]}},
            {"type": "response.done", "response": {"id": rid, "status": "completed"}},
        ]  # fmt: skip
    return events


def function_pair(n: int, *, output: str | None = '{"ok": true}') -> list[dict[str, Any]]:
    call = {
        "type": "conversation.item.added",
        "item": {"id": f"item_call{n}", "type": "function_call", "status": "completed",
                 "call_id": f"call_{n}", "name": "lookup", "arguments": f'{{"n": {n}}}'},
    }  # fmt: skip
    if output is None:
        return [call]
    out = {
        "type": "conversation.item.added",
        "item": {"id": f"item_out{n}", "type": "function_call_output", "call_id": f"call_{n}",
                 "output": output},
    }  # fmt: skip
    return [call, out]


def test_restore_events_orders_converts_and_never_sends_audio() -> None:
    conv = Conversation()
    fold(
        conv,
        user_text("item_u1", "My name is Ada."),
        *assistant_audio("item_a1", "resp_1", "Nice to meet you, Ada.", 800),
        *user_audio("item_u2", "What is the time?"),
        *function_pair(1),
        *assistant_audio("item_a2", "resp_2", "It is noon.", 500),
        *user_audio("item_u3", None),  # spoken, never transcribed: cannot be restored
        *assistant_audio("item_a3", "resp_3", "Half of a rep", 400, finished=False),
    )
    events = restore_events(conv)
    assert all(e["type"] == "conversation.item.create" for e in events)
    items = [e["item"] for e in events]
    assert [i["id"] for i in items] == [
        "item_u1", "item_a1", "item_u2", "item_call1", "item_out1", "item_a2"
    ]  # fmt: skip
    assert items[0] == {
        "id": "item_u1",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "My name is Ada."}],
    }
    # the assistant's audio comes back as the text that was said (GA: output_text)
    assert items[1]["content"] == [{"type": "output_text", "text": "Nice to meet you, Ada."}]
    assert items[2]["content"] == [{"type": "input_text", "text": "What is the time?"}]
    assert items[3] == {
        "id": "item_call1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": '{"n": 1}',
    }
    assert items[4] == {
        "id": "item_out1",
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"ok": true}',
    }
    # a preview upstream gets the preview's part type for the assistant (the dialect layer)
    preview = ga_to_preview_client(events[1])
    assert preview["item"]["content"] == [{"type": "text", "text": "Nice to meet you, Ada."}]
    wire = json.dumps(events)
    assert "input_audio" not in wire and "output_audio" not in wire and "AQAB" not in wire
    # the response still in progress is not restored, nor the untranscribed spoken turn
    assert "item_a3" not in wire and "item_u3" not in wire


def test_truncated_assistant_audio_restores_only_what_was_heard() -> None:
    conv = Conversation()
    words = "one two three four five six seven eight nine ten"
    fold(
        conv,
        user_text("item_u1", "Count to ten."),
        *assistant_audio("item_a1", "resp_1", words, 1000),
        {"type": "conversation.item.truncated", "item_id": "item_a1", "content_index": 0,
         "audio_end_ms": 500},
    )  # fmt: skip
    said = restore_events(conv)[1]["item"]["content"][0]["text"]
    assert words.startswith(said) and 3 <= len(said.split()) <= 6
    # truncated at 0 ms: nothing was heard, nothing is restored
    fold(
        conv,
        *assistant_audio("item_a2", "resp_2", "never heard", 300),
        {"type": "conversation.item.truncated", "item_id": "item_a2", "content_index": 0,
         "audio_end_ms": 0},
    )  # fmt: skip
    assert [e["item"]["id"] for e in restore_events(conv)] == ["item_u1", "item_a1"]


def test_function_calls_are_kept_in_pairs() -> None:
    conv = Conversation()
    fold(
        conv,
        user_text("item_u1", "Look up one."),
        *function_pair(1),
        *function_pair(2, output=None),  # the session ended while it ran: no output
        user_text("item_u2", "Thanks."),
    )
    ids = [i["id"] for i in restorable_items(conv)]
    assert ids == ["item_u1", "item_call1", "item_out1", "item_u2"]
    # a bound that cuts between a call and its output drops the orphaned output too
    cut = bound_history(restorable_items(conv), max_items=2)
    assert [i["id"] for i in cut] == ["item_u2"]
    cut = bound_history(restorable_items(conv), max_items=3)
    assert [i["id"] for i in cut] == ["item_call1", "item_out1", "item_u2"]
    # an output whose call arrives later is an orphan as well
    orphan = Conversation()
    fold(orphan, *reversed(function_pair(3)))
    assert restorable_items(orphan) == []


def test_history_bounds_keep_the_newest_contiguous_stretch() -> None:
    conv = Conversation()
    for n in range(10):
        fold(conv, user_text(f"item_u{n}", f"message {n}"))  # 9 characters each
    events = restore_events(conv, max_items=4)
    assert [e["item"]["id"] for e in events] == ["item_u6", "item_u7", "item_u8", "item_u9"]
    events = restore_events(conv, max_chars=30)
    assert [e["item"]["id"] for e in events] == ["item_u7", "item_u8", "item_u9"]
    # a long item ends the stretch: an older, shorter one is not taken over it
    fold(conv, user_text("item_long", "x" * 25), user_text("item_last", "short"))
    events = restore_events(conv, max_chars=38)
    assert [e["item"]["id"] for e in events] == ["item_long", "item_last"]
    events = restore_events(conv, max_chars=20)  # item_u9 would fit, but not item_long
    assert [e["item"]["id"] for e in events] == ["item_last"]
    assert restore_events(conv, max_items=0) == []
    # ids longer than the service accepts are left for the service to assign
    fold(conv, user_text("item_" + "z" * 40, "long id"))
    assert "id" not in restore_events(conv)[-1]["item"]
    assert restore_events(conv, keep_ids=False)[0]["item"].keys() == {"type", "role", "content"}


def test_resume_budget_bounds_attempts_with_backoff() -> None:
    budget = ResumeBudget(max_attempts=3, window_s=600, backoff_s=(0.0, 1.0, 3.0))
    assert [budget.next_delay(0.0), budget.next_delay(1.0), budget.next_delay(2.0)] == [0, 1, 3]
    assert budget.next_delay(3.0) is None  # spent: give up
    assert budget.recent(3.0) == 3
    assert budget.next_delay(600.5) == 3.0  # the first attempt left the window
    assert budget.next_delay(600.7) is None
    again = ResumeBudget(max_attempts=5, backoff_s=(0.5,))
    assert [again.next_delay(0) for _ in range(3)] == [0.5, 0.5, 0.5]


def test_session_tracker_keeps_what_the_upstream_accepted() -> None:
    tracker = SessionTracker()
    tracker.sent("e1", {"type": "realtime", "tools": [{"name": "t"}], "instructions": "Op."})
    tracker.sent("e2", {"audio": {"output": {"voice": "nope"}}})
    tracker.sent("e3", {"audio": {"input": {"turn_detection": None}, "output": {"speed": 1.1}}})
    tracker.answered()  # e1
    tracker.refused("e2")  # a bad voice must not spoil the restored session
    tracker.answered()  # e3
    assert tracker.confirmed == {
        "type": "realtime",
        "tools": [{"name": "t"}],
        "instructions": "Op.",
        "audio": {"input": {"turn_detection": None}, "output": {"speed": 1.1}},
    }
    held = tracker.sent("e4", {"instructions": "Later."})
    held.held = True
    tracker.sent("e5", {"instructions": "Lost."})
    assert tracker.forget_unanswered() == 1  # e5 was sent to the session that ended
    tracker.answered()  # the held e4, answered by the new session
    assert tracker.confirmed["instructions"] == "Later."
    base = {"type": "realtime", "instructions": "Base", "audio": {"output": {"voice": "alloy"}}}
    assert tracker.restore_session(base)["audio"]["output"] == {"voice": "alloy", "speed": 1.1}
    # turn_detection is replaced whole, never mixed
    merged = merge_session(
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}}},
        {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
    )
    assert merged["audio"]["input"]["turn_detection"] == {"type": "semantic_vad"}


def test_held_events_keep_order_and_at_most_the_last_seconds_of_audio() -> None:
    held = HeldEvents(max_audio_ms=2000, max_events=3)

    def append(ms: int, tag: int) -> str:
        audio = base64.b64encode(bytes([tag]) * 48 * ms).decode()
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})

    texts = [append(100, n) for n in range(30)]  # 3 s of audio
    held.add('{"type":"session.update"}', audio=False)
    for text in texts:
        held.add(text, audio=True)
    held.add('{"type":"response.create"}', audio=False)
    assert held.audio_ms == pytest.approx(2000)
    assert held.dropped_audio_ms == pytest.approx(1000)
    out = held.take()
    assert out[0] == '{"type":"session.update"}' and out[-1] == '{"type":"response.create"}'
    assert out[1:-1] == texts[10:]  # the newest two seconds, in order
    for n in range(4):
        held.add(f'{{"n": {n}}}', audio=False)
    assert len(held) == 3 and held.dropped_events == 1


def test_conversation_counts_hot_audio_without_decoding() -> None:
    conv = Conversation()

    def fold(event: dict[str, Any]) -> None:
        conv.apply(parse_server_event(event))

    fold({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}})
    fold(
        {"type": "response.output_item.added", "response_id": "r1",
         "item": {"id": "item_a", "type": "message", "role": "assistant",
                  "status": "in_progress", "content": []}}
    )  # fmt: skip
    for piece in ("Hello ", "there."):
        conv.apply_delta_text(
            "response.output_audio_transcript.delta",
            json.dumps({"type": "response.output_audio_transcript.delta", "item_id": "item_a",
                        "content_index": 0, "delta": piece}),
        )  # fmt: skip
    delta = base64.b64encode(b"\x00" * 4801).decode()  # padded base64
    text = json.dumps({"type": "response.output_audio.delta", "response_id": "r1",
                       "item_id": "item_a", "content_index": 0, "delta": delta})  # fmt: skip
    conv.apply_delta_text("response.output_audio.delta", text)
    item = conv.items["item_a"]
    assert item.parts[0].audio_bytes == 4801 and item.transcript == "Hello there."
    assert conv.end_responses() == {
        "r1": [
            {"id": "item_a", "object": "realtime.item", "type": "message",
             "status": "incomplete", "role": "assistant", "content": []}
        ]
    }  # fmt: skip
    assert conv.responses["r1"].status == "cancelled"


# ==================================================================================== middle tier


@pytest.fixture(scope="module")
def resume_engine() -> Iterator[Any]:
    """A scripted engine without speech models: the pages here type their turns."""
    yield from engine_thread(None, brain="scripted", script=SCRIPT, no_speech=True)


class Observed:
    """Every event each relayed connection saw: ``(direction, event)``, per connection id."""

    def __init__(self) -> None:
        self.by_conn: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.order: list[str] = []

    def factory(self, conn_id: str, upstream: Any) -> Any:
        records: list[tuple[str, dict[str, Any]]] = []
        self.by_conn[conn_id] = records
        self.order.append(conn_id)
        return lambda direction, event: records.append((direction, event))

    @property
    def last(self) -> list[tuple[str, dict[str, Any]]]:
        return self.by_conn[self.order[-1]]


FAST = ResumeOptions(backoff_s=(0.0, 0.2, 0.4))


@pytest.fixture(scope="module")
def observed() -> Observed:
    return Observed()


@pytest.fixture(scope="module")
def server(resume_engine: Any, observed: Observed) -> Iterator[ServerThread]:
    upstreams = Upstreams(
        settings=None, local=LocalEngine.external(resume_engine.http_url), listen_host="127.0.0.1"
    )
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        policy=Policy.build(tools=demo_tools()),
        observer_factory=observed.factory,
        resume_options=FAST,
    )
    srv = ServerThread(config, upstreams)
    yield srv
    srv.close()


@pytest.fixture
def faults(server: ServerThread) -> Iterator[Any]:
    """``faults(first, resumed=None)``: fault specs for the first upstream session and for the
    resumed ones (``None``: the same as the first); reset after the test."""

    def set_faults(first: str | None, resumed: str | None = "") -> None:
        server.upstreams.local_query = {"fault": first} if first else {}
        if resumed is None:
            server.upstreams.local_resume_query = None
        else:
            server.upstreams.local_resume_query = {"fault": resumed} if resumed else {}

    yield set_faults
    server.upstreams.local_query = {}
    server.upstreams.local_resume_query = None
    server.config.resume = True
    server.config.resume_options = FAST


async def start(page: Client, session: dict[str, Any] | None = TEXT_ONLY) -> None:
    """Past ``session.created``, then the page's own ``session.update`` (text only by default;
    ``None``: none, the engine's default session)."""
    await page.wait_for("session.created")
    if session is not None:
        await page.update(**session)


@pytest.fixture
def base(resume_engine: Any) -> int:
    """The engine's session count a test starts from: 0, once the sessions of the tests before
    it have closed (a session may still be closing when the next test begins)."""
    return wait_idle(resume_engine)


async def wait_sessions(engine: Any, count: int, timeout: float = 10.0) -> None:
    """Wait until the engine holds ``count`` sessions (woken by each change, not polled)."""
    await engine.wait_sessions_async(count, timeout)


def restore_of(records: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], list[Any]]:
    """The relay's session.update and item creates for the (last) new upstream session."""
    starts = [
        i for i, (d, e) in enumerate(records) if d == "server" and e["type"] == "session.created"
    ]
    assert len(starts) >= 2, "no second upstream session"
    before = records[: starts[-1]]
    # the restore is sent right after connecting, before the new session.created arrives
    last_update = max(
        i
        for i, (d, e) in enumerate(before)
        if d == "client"
        and e["type"] == "session.update"
        and e.get("event_id", "").startswith("relay_")
    )
    update = before[last_update][1]
    creates = [
        e["item"]
        for d, e in records[last_update:]
        if d == "client" and e["type"] == "conversation.item.create"
        and str(e.get("event_id", "")).startswith("relay_")
    ]  # fmt: skip
    return update, creates


async def test_expired_session_resumes_with_the_conversation(
    server: ServerThread, resume_engine: Any, observed: Observed, faults: Any, base: int
) -> None:
    faults("expire:1.5", "")
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await start(page)
        assert await page.ask("My name is Ada.") == "Nice to meet you, Ada."
        assert await page.ask("Which turn is this?") == "This is turn 2."
        # the engine ends the session after 1.5 s; the page is told once, without a relay_error
        notice = (await page.wait_for("error", timeout=10))["error"]
        assert notice["type"] == "relay_notice" and notice["code"] == "session_resumed"
        assert "session_expired" in notice["message"]
        assert "4 items restored" in notice["message"]
        # the next question is answered, and the answer knows the two earlier turns
        assert await page.ask("Which turn is this now?") == "This is turn 3."
        assert page.errors("relay_notice") == [notice]
        assert page.errors("relay_error") == []
        assert len([e for e in page.events if e["type"] == "error"]) == 1
        assert len([e for e in page.events if e["type"] == "session.created"]) == 1
        # the session the page set (text only) carried over: no audio in any response
        assert not [e for e in page.events if e["type"] == "response.output_audio.delta"]
        await wait_sessions(resume_engine, base + 1)  # the old one is closed

        # what the new upstream session received: the session, then the items in order
        records = observed.last
        update, creates = restore_of(records)
        session = update["session"]
        assert session["output_modalities"] == ["text"]
        assert session["instructions"] == "Answer briefly."
        assert [t["name"] for t in session["tools"]] == ["current_time", "convert_units"]
        assert [(i["role"], i["content"]) for i in creates] == [
            ("user", [{"type": "input_text", "text": "My name is Ada."}]),
            ("assistant", [{"type": "output_text", "text": "Nice to meet you, Ada."}]),
            ("user", [{"type": "input_text", "text": "Which turn is this?"}]),
            ("assistant", [{"type": "output_text", "text": "This is turn 2."}]),
        ]
        # ... and acknowledged them, in that order, with the ids the page already knows
        second = max(
            i
            for i, (d, e) in enumerate(records)
            if d == "server" and e["type"] == "session.created"
        )
        added = [
            e["item"]["id"]
            for d, e in records[second:]
            if d == "server" and e["type"] == "conversation.item.added"
        ]
        assert added[:4] == [i["id"] for i in creates]
        page_items = [
            e["item"]["id"]
            for e in page.events
            if e["type"] == "conversation.item.added" and e["item"]["type"] == "message"
        ]
        assert page_items[:4] == added[:4]  # the same ids; the echoes were not shown again
        assert len(page_items) == len(set(page_items))
        await page.ws.close()
    await wait_sessions(resume_engine, base)


async def test_dropped_connection_resumes(
    server: ServerThread, resume_engine: Any, observed: Observed, faults: Any
) -> None:
    # a healthy connection first, to count the upstream events of one exchange
    async with aiohttp.ClientSession() as http:
        probe = await open_page(server, http)
        await start(probe)
        await probe.ask("My name is Ada.")
        records = list(observed.last)
        await probe.ws.close()
    done = max(
        i for i, (d, e) in enumerate(records) if d == "server" and e["type"] == "response.done"
    )
    count = sum(1 for d, _ in records[: done + 1] if d == "server")
    # the same exchange again, and the engine drops the connection (1011) right after it
    faults(f"close:1011:after={count}", "")
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await start(page)
        assert await page.ask("My name is Ada.") == "Nice to meet you, Ada."
        notice = (await page.wait_for("error", timeout=10))["error"]
        assert notice["type"] == "relay_notice" and notice["code"] == "session_resumed"
        assert "code 1011" in notice["message"] and "2 items restored" in notice["message"]
        assert await page.ask("Which turn is this?") == "This is turn 2."
        assert page.errors("relay_error") == []
        await page.ws.close()


async def test_response_in_progress_is_closed_for_the_page(
    server: ServerThread, resume_engine: Any, observed: Observed, faults: Any
) -> None:
    async def exchange(page: Client) -> dict[str, Any]:
        """A text answer, then a question whose spoken answer is under way; returns its
        response.created."""
        await start(page, None)  # audio output: the engine's default session
        text = await page.ask("My name is Ada.", output_modalities=["text"])
        assert text == "Nice to meet you, Ada."
        await page.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": "Which turn is this?"}]},
            }
        )  # fmt: skip
        await page.send({"type": "response.create"})
        return await page.wait_for("response.created")

    # count the upstream events up to the first of the spoken answer's item, on a probe
    async with aiohttp.ClientSession() as http:
        probe = await open_page(server, http)
        await exchange(probe)
        await probe.wait_for("response.done")
        records = list(observed.last)
        await probe.ws.close()
    created = [
        i for i, (d, e) in enumerate(records) if d == "server" and e["type"] == "response.created"
    ]
    count = sum(1 for d, _ in records[: created[1] + 2] if d == "server")
    # the same again, and the engine drops the connection while the answer is in progress
    faults(f"close:1011:after={count}", "")
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        created_event = await exchange(page)
        # the page is not left waiting for a response that will never end
        done = await page.wait_for("response.done", timeout=10)
        assert done["response"]["id"] == created_event["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "session_ended"
        # with the items it had begun, so the page can mark them
        begun = [
            e["item"]["id"]
            for e in page.events
            if e["type"] == "response.output_item.added"
            and e["response_id"] == created_event["response"]["id"]
        ]
        assert begun and [i["id"] for i in done["response"]["output"]] == begun
        assert {i["status"] for i in done["response"]["output"]} == {"incomplete"}
        notice = (await page.wait_for("error", timeout=10))["error"]
        assert notice["code"] == "session_resumed"
        assert "3 items restored" in notice["message"] and "cut short" in notice["message"]
        # the question is answered in the new session, which knows the first turn
        answer = await page.ask("Which turn is this?", output_modalities=["text"])
        assert answer == "This is turn 3."
        assert page.errors("relay_error") == []
        await page.ws.close()


async def test_page_events_during_the_gap_are_sent_to_the_new_session(
    server: ServerThread, resume_engine: Any, faults: Any, base: int
) -> None:
    faults("expire:1", "")
    server.config.resume_options = ResumeOptions(backoff_s=(0.5,))  # a gap of half a second
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await start(page)
        assert await page.ask("My name is Ada.") == "Nice to meet you, Ada."
        await wait_sessions(resume_engine, base)  # the session ended; the next is not open yet
        for _ in range(5):  # the microphone goes on (100 ms of silence each)
            audio = base64.b64encode(b"\x00" * 4800).decode()
            await page.send({"type": "input_audio_buffer.append", "audio": audio})
        text = await page.ask("Which turn is this?")
        assert text == "This is turn 2."
        kinds = [(e["type"], e.get("error", {}).get("code")) for e in page.events]
        assert kinds.index(("error", "session_resumed")) < len(kinds) - 1
        answer = max(i for i, e in enumerate(page.events) if e["type"] == "response.done")
        assert kinds.index(("error", "session_resumed")) < answer
        assert page.errors("relay_error") == [] and len(page.errors("relay_notice")) == 1
        await page.ws.close()


async def test_resume_attempts_are_bounded(
    server: ServerThread, resume_engine: Any, faults: Any, base: int
) -> None:
    # the first session lives 1 s; every resumed one expires at once
    faults("expire:1", "expire:0.2")
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await start(page)
        await page.ask("My name is Ada.")
        code = await page.drain_until_closed(timeout=30)
        relay_errors = page.errors("relay_error")
        assert len(relay_errors) == 1, page.events
        assert relay_errors[0]["code"] == "session_expired"
        assert "3 times" in relay_errors[0]["message"] and "Start" in relay_errors[0]["message"]
        assert page.events[-1]["error"] is relay_errors[0]  # nothing after it
        assert len(page.errors("relay_notice")) <= 3
        assert code is not None and code >= 1000
    assert time.monotonic() - started < 25
    # no loop: nothing is left running, and nothing starts again
    await wait_sessions(resume_engine, base)
    with pytest.raises(TimeoutError):  # no session opens again within a second, even briefly
        await wait_sessions(resume_engine, base + 1, timeout=1.0)


async def test_refused_resume_is_one_relay_error(
    server: ServerThread, resume_engine: Any, faults: Any
) -> None:
    faults("expire:1", "refuse:401")
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await start(page)
        await page.ask("My name is Ada.")
        await page.drain_until_closed(timeout=20)
        assert page.errors("relay_notice") == []
        [error] = page.errors("relay_error")
        assert error["code"] == "upstream_unauthorized"
        assert "session_expired" in error["message"] and "401" in error["message"]
        assert page.events[-1]["error"] is error


async def test_no_resume_is_todays_behaviour(
    server: ServerThread, resume_engine: Any, faults: Any
) -> None:
    faults("expire:1", "")
    server.config.resume = False
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "api/config") as resp:
            assert (await resp.json())["resume"] is False
        page = await open_page(server, http)
        await start(page)
        await page.ask("My name is Ada.")
        await page.drain_until_closed(timeout=20)
        [error] = page.errors("relay_error")
        assert error["code"] == "session_expired" and "maximum duration" in error["message"]
        assert page.errors("relay_notice") == []


async def test_a_session_with_nothing_to_carry_over_is_not_resumed(
    server: ServerThread, resume_engine: Any, faults: Any
) -> None:
    # closed after session.created and two session.updated (the operator's, the page's)
    faults("close:1011:after=3", "")
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await start(page)
        await page.drain_until_closed(timeout=20)
        [error] = page.errors("relay_error")
        assert error["code"] == "upstream_closed" and "1011" in error["message"]
        assert page.errors("relay_notice") == []
