"""The SDK client carrying a conversation over to a new session, against the local engine.

``reconnect(restore=True)`` re-creates the recent conversation in the new session;
``auto_reconnect=True`` does it by itself when the engine ends the session (``fault=expire:S``,
``fault=close:1011:after=N``) and says so with a ``SessionResumed`` event. The scripted brain
answers "Which turn is this?" with the number of user messages in its conversation, so the
restored history shows in the answer. The faults are on the URL, so they apply to every
connection the client makes (the reconnects too).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import aoai_realtime as rt
from aoai_realtime.protocol import events as ev
from aoai_realtime.protocol.restore import ResumeBudget
from helpers import engine_thread

SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {"user_regex": "my name is (\\w+)", "reply": "Nice to meet you, {1}."},
        {"user": "which turn", "reply": "This is turn {turn}."},
    ],
}
TEXT = rt.SessionConfig(output_modalities=["text"], instructions="Answer briefly.")
KEY = "engine-key-0123456789abcdef"


@pytest.fixture(scope="module")
def turn_engine() -> Iterator[Any]:
    """A scripted engine without speech models: every turn here is typed, text only."""
    yield from engine_thread(None, brain="scripted", script=SCRIPT, no_speech=True)


@pytest.fixture(scope="module")
def keyed_turn_engine() -> Iterator[Any]:
    """The same behind an API key."""
    yield from engine_thread(None, brain="scripted", script=SCRIPT, no_speech=True, api_key=KEY)


async def ask(client: rt.RealtimeClient, text: str) -> str:
    result = await (await client.send_text(text)).done()
    assert result.status == "completed"
    return result.text or result.transcript


async def next_of(client: rt.RealtimeClient, kind: type[Any], timeout: float = 15.0) -> Any:
    """The next event of ``kind`` on the client's event stream (others are skipped)."""

    async def find() -> Any:
        async for event in client:
            if isinstance(event, kind):
                return event
        raise AssertionError(f"the event stream ended before a {kind.__name__}")

    return await asyncio.wait_for(find(), timeout)


async def test_reconnect_restores_the_conversation(turn_engine: Any) -> None:
    async with rt.connect(url=turn_engine.ga_url("m"), session=TEXT) as s:
        assert await ask(s, "My name is Ada.") == "Nice to meet you, Ada."
        assert await ask(s, "Which turn is this?") == "This is turn 2."
        before = [(i.id, i.role, i.text or i.transcript) for i in s.conversation.history()]
        first_request = s.request_id
        assert await s.reconnect(restore=True) == 4
        assert s.request_id != first_request  # a new connection
        # the new session holds the same items (text only), and the session config is back
        after = [(i.id, i.role, i.text) for i in s.conversation.history()]
        assert after == before
        assert [p.type for i in s.conversation.history() for p in i.parts] == [
            "input_text", "output_text", "input_text", "output_text"
        ]  # fmt: skip
        assert s.config.instructions == "Answer briefly."
        assert await ask(s, "Which turn is this?") == "This is turn 3."
        # bounded: only the newest items that fit
        assert await s.reconnect(restore=True, max_items=2) == 2
        assert await ask(s, "Which turn is this?") == "This is turn 2."
        # without restore the conversation starts empty, as before
        assert await s.reconnect() == 0
        assert s.conversation.history() == []
        assert await ask(s, "Which turn is this?") == "This is turn 1."


async def test_auto_reconnect_continues_after_session_expired(turn_engine: Any) -> None:
    url = turn_engine.ga_url("m") + "&fault=expire:1.5"
    async with rt.connect(url=url, session=TEXT, auto_reconnect=True) as s:
        assert await ask(s, "My name is Ada.") == "Nice to meet you, Ada."
        first_request = s.request_id
        seen: list[ev.ServerEvent] = []

        async def until_resumed() -> rt.SessionResumed:
            async for event in s:
                seen.append(event)
                if isinstance(event, rt.SessionResumed):
                    return event
            raise AssertionError("the event stream ended")

        resumed = await asyncio.wait_for(until_resumed(), 10)
        assert resumed.type == "client.session_resumed"
        assert resumed.cause == "session_expired" and resumed.items_restored == 2
        assert resumed.items_left_out == 0 and resumed.request_id == s.request_id
        assert s.request_id != first_request
        assert "session_expired" in resumed.message
        # the service's session_expired error is not put on the stream: the notice says it
        assert not [e for e in seen if isinstance(e, ev.ErrorEvent)]
        assert await ask(s, "Which turn is this?") == "This is turn 2."


async def test_auto_reconnect_after_a_dropped_connection(turn_engine: Any) -> None:
    # count the events of one exchange, then have the engine drop the connection right after it
    received: list[str] = []
    limits = asyncio.Event()  # rate_limits.updated, which follows response.done

    def observe(direction: str, data: Any) -> None:
        if direction == "recv":
            received.append(data)
            if json.loads(data)["type"] == "rate_limits.updated":
                limits.set()

    async with rt.connect(url=turn_engine.ga_url("m"), session=TEXT, observer=observe) as probe:
        await ask(probe, "My name is Ada.")
        await asyncio.wait_for(limits.wait(), 10)
    count = len(received)
    url = turn_engine.ga_url("m") + f"&fault=close:1011:after={count}"
    async with rt.connect(url=url, session=TEXT, auto_reconnect=True) as s:
        assert await ask(s, "My name is Ada.") == "Nice to meet you, Ada."
        resumed = await next_of(s, rt.SessionResumed)
        assert resumed.cause == "connection_closed" and resumed.close_code == 1011
        assert resumed.items_restored == 2
        assert [i.text for i in s.conversation.history()] == [
            "My name is Ada.",
            "Nice to meet you, Ada.",
        ]
        assert not s.closed


async def test_calls_made_while_reconnecting_wait_for_the_new_session(turn_engine: Any) -> None:
    url = turn_engine.ga_url("m") + "&fault=expire:1.5"
    async with rt.connect(url=url, session=TEXT, auto_reconnect=True) as s:
        s.resume_budget = ResumeBudget(backoff_s=(0.5,))  # a gap of half a second
        assert await ask(s, "My name is Ada.") == "Nice to meet you, Ada."
        expired = s.wait_for(ev.ErrorEvent, lambda e: e.error.code == "session_expired", 10)
        await expired  # waiters still see it; the event stream does not
        # sent during the gap: waits for the new session, which knows the first turn
        assert await ask(s, "Which turn is this?") == "This is turn 2."


async def test_auto_reconnect_is_bounded(turn_engine: Any) -> None:
    url = turn_engine.ga_url("m") + "&fault=expire:0.3"
    async with rt.connect(url=url, session=TEXT, auto_reconnect=True) as s:
        s.resume_budget = ResumeBudget(max_attempts=2, window_s=60, backoff_s=(0.0, 0.1))
        resumed: list[rt.SessionResumed] = []

        async def read() -> None:
            async for event in s:
                if isinstance(event, rt.SessionResumed):
                    resumed.append(event)

        with pytest.raises(rt.ConnectionClosed, match="2 times"):
            await asyncio.wait_for(read(), 20)
        assert len(resumed) == 2
        assert s.closed
        with pytest.raises(rt.ConnectionClosed):
            await s.send_text("anyone there?")


async def test_auth_failure_on_reconnect_is_not_retried(keyed_turn_engine: Any) -> None:
    class RevokedKey:
        """A key that works once, then is refused (say, a revoked token)."""

        calls = 0

        async def headers(self) -> dict[str, str]:
            self.calls += 1
            return {"api-key": KEY if self.calls == 1 else "revoked"}

        async def close(self) -> None:
            pass

    cred = RevokedKey()
    url = keyed_turn_engine.ga_url("m") + "&fault=expire:1"
    async with rt.connect(url=url, credential=cred, session=TEXT, auto_reconnect=True) as s:
        assert await ask(s, "My name is Ada.") == "Nice to meet you, Ada."
        with pytest.raises(rt.ConnectionClosed, match="401") as info:
            await next_of(s, rt.SessionResumed)
        assert isinstance(info.value.__cause__, rt.AuthenticationError)
        assert cred.calls == 2  # one refused reconnect, no retry
        assert s.closed
