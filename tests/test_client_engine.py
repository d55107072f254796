"""Conversations through the SDK client against the local engine, in both dialects.

The engines (``tests/conftest.py``) are real realtime servers on loopback with a scripted brain,
so every assertion here is about what a real peer saw and answered. Turns that are typed run on
``text_engine`` (no speech models: its audio is silence as long as the text); the tests that
send speech, or look at the speech in the reply, run on ``scripted_engine`` (real models).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import aoai_realtime as rt
from aoai_realtime import audio
from aoai_realtime.protocol import events as ev

DIALECTS = ["ga", "preview"]


def _url(engine: Any, dialect: str, fault: str | None = None) -> str:
    url = engine.ga_url() if dialect == "ga" else engine.preview_url()
    return url + (f"&fault={fault}" if fault else "")


class Seen(list[ev.ServerEvent]):
    """Every event a client delivers, collected in the background, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def add(self, event: ev.ServerEvent) -> None:
        self.append(event)
        self._changed.set()

    async def until(self, kind: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` events of type ``kind`` have been collected (woken by each
        event, never polled); ``TimeoutError`` otherwise."""

        async def reached() -> None:
            while _types(self).count(kind) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), timeout)


@asynccontextmanager
async def session(
    engine: Any,
    dialect: str = "ga",
    *,
    fault: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[rt.RealtimeClient, Seen]]:
    """A connected client and the list of every event it delivers (collected in the background)."""
    async with rt.connect(url=_url(engine, dialect, fault), **kwargs) as client:
        assert client.dialect == dialect
        seen = Seen()

        async def collect() -> None:
            async for event in client:
                seen.add(event)

        task = asyncio.create_task(collect())
        try:
            yield client, seen
        finally:
            task.cancel()


TEXT = rt.SessionConfig(output_modalities=["text"])
MANUAL_TURNS = rt.SessionConfig(
    turn_detection=None, transcription=rt.Transcription(model="whisper-1")
)


def _types(events: list[ev.ServerEvent]) -> list[str]:
    return [e.type for e in events]


# --------------------------------------------------------------------------------------------
# Text in


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_text_in_text_out(text_engine: Any, dialect: str) -> None:
    async with session(text_engine, dialect, session=TEXT) as (client, seen):
        response = await client.send_text("Hello there")
        deltas = [d async for d in response.text_deltas()]
        result = await response.done()
        assert "".join(deltas) == "Hello! How can I help you today?"
        assert result.text == "Hello! How can I help you today?"
        assert result.status == "completed"
        assert result.usage is not None and (result.usage.output_tokens or 0) > 0
        assert result.audio == b""
        [user, assistant] = client.conversation.history()
        assert (user.role, user.text) == ("user", "Hello there")
        assert (assistant.role, assistant.text) == ("assistant", result.text)
        # The application sees the GA vocabulary in both dialects.
        await seen.until("response.done")
        assert "response.output_text.delta" in _types(seen)
        assert "response.text.delta" not in _types(seen)
        assert "conversation.item.added" in _types(seen)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_wire_speaks_the_dialect_the_application_sees_ga(
    text_engine: Any, dialect: str
) -> None:
    wire: list[tuple[str, Any]] = []
    async with session(
        text_engine,
        dialect,
        session=TEXT.merged(rt.SessionConfig(turn_detection=None)),
        observer=lambda direction, data: wire.append((direction, data)),
    ) as (client, seen):
        await (await client.send_text("hello")).done()
        await seen.until("response.done")
    [update] = [data for d, data in wire if d == "send" and data["type"] == "session.update"]
    received = [json.loads(data)["type"] for d, data in wire if d == "recv"]
    if dialect == "preview":
        assert update["session"] == {"modalities": ["text"], "turn_detection": {"type": "none"}}
        assert "response.text.delta" in received and "conversation.item.created" in received
    else:
        assert update["session"] == {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": {"turn_detection": None}},
        }
        assert "response.output_text.delta" in received
    assert all(d == "recv" or data["event_id"].startswith("evt_") for d, data in wire)
    assert "response.output_text.delta" in _types(seen)
    assert "response.text.delta" not in _types(seen)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_text_in_audio_out_streams_concurrently(scripted_engine: Any, dialect: str) -> None:
    async with session(scripted_engine, dialect) as (client, _):
        response = await client.send_text("How is the weather?")

        async def gather_audio() -> bytes:
            return b"".join([c async for c in response.audio_chunks()])

        async def gather_transcript() -> str:
            return "".join([d async for d in response.transcript_deltas()])

        pcm, transcript = await asyncio.gather(gather_audio(), gather_transcript())
        result = await response.done()
        assert transcript == "It is sunny and warm today." == result.transcript
        assert pcm == result.audio
        assert result.audio_ms > 800  # a sentence of speech
        assert audio.rms_dbfs(pcm) > -40  # speech, not silence
        item = client.conversation.last_assistant_item
        assert item is not None and item.audio_ms == len(pcm) // 48
        # A late iterator replays from the start.
        assert b"".join([c async for c in response.audio_chunks()]) == pcm


# --------------------------------------------------------------------------------------------
# Audio in


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_audio_in_16k_is_resampled_transcribed_and_answered(
    scripted_engine: Any, tts_wav: Callable[..., bytes], dialect: str
) -> None:
    speech_24k = tts_wav("What is the weather like today?")
    speech_16k = audio.resample(speech_24k, 24000, 16000)
    async with session(scripted_engine, dialect, session=MANUAL_TURNS) as (client, seen):
        for chunk in audio.chunk_pcm16(speech_16k, ms=40, rate=16000):
            await client.send_audio(chunk, sample_rate=16000)
        item_id = await client.commit()
        heard = client.wait_for_user_transcript(item_id, timeout=30)
        response = await client.create_response()
        result = await response.done()
        transcript = await heard
        assert "weather" in transcript.lower()
        assert result.transcript == "It is sunny and warm today."
        assert result.audio_ms > 800
        assert client.conversation.items[item_id].transcript == transcript
        # Already transcribed: answered at once.
        assert await client.wait_for_user_transcript(item_id, timeout=1) == transcript
        # Appends were at most 100 ms of 24 kHz PCM16 (4,800 bytes), and the committed audio
        # is as long as the speech sent (resampled, not sped up or slowed down).
        committed = next(e for e in seen if isinstance(e, ev.InputAudioBufferCommitted))
        assert committed.item_id == item_id


async def test_stereo_44k_audio_with_server_vad(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    speech = audio.resample(tts_wav("What is the weather like today?"), 24000, 44100)
    stereo = audio.float_to_pcm16(
        audio.pcm16_to_float(speech).repeat(2)  # L R L R ...
    )
    config = rt.SessionConfig(
        transcription=rt.Transcription(model="whisper-1"),
        turn_detection=rt.TurnDetection(type="server_vad", silence_duration_ms=400),
    )
    async with session(scripted_engine, session=config) as (client, _):
        next_response = client.next_response(timeout=30)
        heard = client.wait_for_user_transcript(timeout=30)
        await client.send_audio(silence(300), sample_rate=24000)
        step = 44100 * 2 * 2 // 25  # 40 ms of stereo
        for start in range(0, len(stereo), step):
            await client.send_audio(stereo[start : start + step], sample_rate=44100, channels=2)
        await client.send_audio(silence(1200), sample_rate=24000)
        assert "weather" in (await heard).lower()
        response = await next_response
        assert (await response.done()).transcript == "It is sunny and warm today."


async def test_g711_session_formats(scripted_engine: Any, tts_wav: Callable[..., bytes]) -> None:
    config = MANUAL_TURNS.merged(
        rt.SessionConfig(input_format="g711_ulaw", output_format="g711_alaw")
    )
    async with session(scripted_engine, session=config) as (client, _):
        assert client.config.input_format == "g711_ulaw"
        speech = audio.resample(tts_wav("What is the weather like today?"), 24000, 16000)
        await client.send_audio(speech, sample_rate=16000)  # encoded to 8 kHz mu-law by the SDK
        item_id = await client.commit()
        assert "weather" in (await client.wait_for_user_transcript(item_id, timeout=30)).lower()
        result = await (await client.create_response()).done()
        # G.711 output is decoded to PCM16 24 kHz for the application.
        assert result.transcript == "It is sunny and warm today."
        assert result.audio_ms > 800 and audio.rms_dbfs(result.audio) > -40
        item = client.conversation.last_assistant_item
        assert item is not None and abs(item.audio_ms - result.audio_ms) <= 5


# --------------------------------------------------------------------------------------------
# Function tools


@rt.tool
def get_time(timezone: str = "UTC") -> str:
    """The current time in a time zone."""
    return f"07:42 in {timezone}"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_tools_run_automatically(text_engine: Any, dialect: str) -> None:
    async with session(text_engine, dialect, session=TEXT, tools=[get_time]) as (client, seen):
        assert [t["name"] for t in client.config.tools or []] == ["get_time"]
        response = await client.send_text("What time is it?")
        result = await response.done()
        # The function's real return value reached the reply.
        assert result.text == "It is 07:42 in local right now."
        [call] = result.function_calls
        assert (call.name, json.loads(call.arguments)) == ("get_time", {"timezone": "local"})
        assert call.output == "07:42 in local"
        assert len(result.responses) == 2 and len(response.response_ids) == 2
        kinds = [i.type for i in client.conversation.history()]
        assert kinds == ["message", "function_call", "function_call_output", "message"]
        # Order on the wire: the output only after response.done, then one response.create.
        await seen.until("response.done", 2)
        types = _types(seen)
        first_done = types.index("response.done")
        output_added = next(
            i
            for i, e in enumerate(seen)
            if isinstance(e, ev.ConversationItemAdded)
            and isinstance(e.item, ev.FunctionCallOutputItem)
        )
        second_created = [i for i, t in enumerate(types) if t == "response.created"][1]
        assert first_done < output_added < second_created
        assert types.count("response.created") == 2
        assert "error" not in types


async def test_tool_exception_becomes_an_error_output(text_engine: Any) -> None:
    @rt.tool(name="get_time")
    async def broken_clock(timezone: str) -> str:
        """A clock that fails."""
        raise RuntimeError("the clock is broken")

    async with session(text_engine, session=TEXT, tools=[broken_clock]) as (client, seen):
        result = await (await client.send_text("What time is it?")).done()
        assert result.status == "completed"
        assert "RuntimeError: the clock is broken" in result.text
        assert json.loads(result.function_calls[0].output or "") == {
            "error": "RuntimeError: the clock is broken"
        }
        # The session goes on.
        assert (await (await client.send_text("hello")).done()).text.startswith("Hello!")
        assert "error" not in _types(seen)


async def test_auto_tools_off_leaves_calls_to_the_application(text_engine: Any) -> None:
    async with session(text_engine, session=TEXT, tools=[get_time], auto_tools=False) as (
        client,
        seen,
    ):
        response = await client.send_text("What time is it?")
        result = await response.done()
        assert result.status == "completed" and len(result.responses) == 1
        [call] = [e async for e in response.events() if isinstance(e, ev.FunctionCallArgumentsDone)]
        with pytest.raises(asyncio.TimeoutError):  # no second response within 0.3 s
            await seen.until("response.created", 2, timeout=0.3)
        assert _types(seen).count("response.created") == 1  # nobody asked for more
        await client.create_item(ev.function_output(call.call_id, "teatime"))
        follow_up = await (await client.create_response()).done()
        assert follow_up.text == "It is teatime right now."


class TwoCallsBrain:
    """A brain (the engine's extension point) that calls two tools in one response."""

    name = "two-calls"

    async def reply(self, request: Any) -> AsyncIterator[Any]:
        from aoai_realtime.engine.brains import BrainFinish, FunctionCall, TextDelta

        outputs = [h.output for h in request.history if h.type == "function_call_output"]
        if outputs:
            yield TextDelta("Results: " + " and ".join(outputs))
        else:
            yield FunctionCall("get_time", '{"timezone": "UTC"}')
            yield FunctionCall("slow_add", '{"a": 2, "b": 3}')
        yield BrainFinish("stop", 10, 10)

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
def two_calls_engine() -> Iterator[Any]:
    from aoai_realtime.engine import EngineConfig, EngineThread

    thread = EngineThread(EngineConfig(port=0, no_speech=True, brain=TwoCallsBrain()))
    try:
        yield thread
    finally:
        thread.close()


async def test_two_calls_in_one_response_then_one_response_create(two_calls_engine: Any) -> None:
    @rt.tool
    async def slow_add(a: int, b: int) -> int:
        """Add, slowly (finishes after the response is done)."""
        await asyncio.sleep(0.3)
        return a + b

    async with session(two_calls_engine, session=TEXT, tools=[get_time, slow_add]) as (
        client,
        seen,
    ):
        result = await (await client.send_text("Do both")).done()
        assert result.text == "Results: 07:42 in UTC and 5"
        assert [c.output for c in result.function_calls] == ["07:42 in UTC", "5"]
        await seen.until("response.done", 2)
        types = _types(seen)
        assert types.count("response.created") == 2  # one follow-up for both calls
        outputs = [
            i
            for i, e in enumerate(seen)
            if isinstance(e, ev.ConversationItemAdded)
            and isinstance(e.item, ev.FunctionCallOutputItem)
        ]
        assert len(outputs) == 2
        assert types.index("response.done") < outputs[0] < outputs[1]
        assert outputs[1] < [i for i, t in enumerate(types) if t == "response.created"][1]
        assert "error" not in types


# --------------------------------------------------------------------------------------------
# Errors: raised once, to the caller, never again


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_error_is_raised_to_the_caller_once(text_engine: Any, dialect: str) -> None:
    async with session(text_engine, dialect, session=TEXT) as (client, seen):
        with pytest.raises(rt.ServiceError) as info:
            await client.truncate("item_does_not_exist", 100)
        assert info.value.param == "item_id"
        assert "item_does_not_exist" in str(info.value)
        assert info.value.event_id and info.value.event_id.startswith("evt_")
        # The next call works: nothing sticks.
        result = await (await client.send_text("hello")).done()
        assert result.text.startswith("Hello!")
        # Delivered once: not repeated on the event stream.
        await seen.until("response.done")
        assert "error" not in _types(seen)

        # An error nobody waits for (a raw send) arrives on the event stream instead.
        event_id = await client.send({"type": "conversation.item.delete", "item_id": "nope"})
        error = await client.wait_for(ev.ErrorEvent, timeout=10)
        assert error.error.event_id == event_id
        await seen.until("error")
        assert _types(seen).count("error") == 1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_response_create_while_active_is_refused_then_cancel_works(
    text_engine: Any, dialect: str
) -> None:
    async with session(text_engine, dialect) as (client, seen):
        story = await client.send_text("Tell me a story")
        with pytest.raises(rt.ServiceError, match="active response") as info:
            await client.create_response()
        assert info.value.code is not None
        cancelled = await client.cancel_response()
        assert cancelled is not None and cancelled.status == "cancelled"
        result = await story.done()
        assert result.status == "cancelled"
        assert result.status_details is not None
        assert result.status_details.reason == "client_cancelled"
        # Cancelling with nothing active is not an error.
        assert await client.cancel_response() is None
        # And the next response works.
        assert (await (await client.send_text("hello")).done()).status == "completed"
        await seen.until("response.done", 2)
        assert "error" not in _types(seen)


async def test_interrupt_truncates_at_what_was_played(text_engine: Any) -> None:
    async with session(text_engine) as (client, _):
        story = await client.send_text("Tell me a story")
        played = 0
        async for chunk in story.audio_chunks():
            played += len(chunk) // 48
            if played >= 1500:
                break
        await client.interrupt(audio_played_ms=1000)
        result = await story.done()
        assert result.status == "cancelled"
        item = client.conversation.last_assistant_item
        assert item is not None
        assert item.truncated_at_ms == 1000 and item.audio_ms == 1000
        full = "Once upon a time there was a small cat who lived by the sea."
        assert item.transcript and len(item.transcript) < len(full)
        # Truncating past the audio produced is refused, with the service's reason.
        with pytest.raises(rt.ServiceError, match="shorter than"):
            await client.truncate(item.id, 60_000)


# --------------------------------------------------------------------------------------------
# Session changes, waiting, reconnecting, closing


async def test_update_session_and_wait_for(text_engine: Any) -> None:
    async with session(text_engine) as (client, _):
        config = await client.update_session(voice="echo", instructions="Be brief.")
        assert config.voice == "echo" and config.instructions == "Be brief."
        assert client.config.voice == "echo"
        done = client.wait_for(ev.ResponseDone, lambda e: e.response.status == "completed")
        await client.send_text("hello", respond=False)
        await client.send(ev.ResponseCreate(response=ev.ResponseParams(output_modalities=["text"])))
        event = await done
        assert event.response.status == "completed"
        with pytest.raises(asyncio.TimeoutError):
            await client.wait_for("response.done", timeout=0.2)


async def test_reconnect_resends_the_session_and_starts_empty(text_engine: Any) -> None:
    async with session(text_engine, session=TEXT, tools=[get_time]) as (client, _):
        await (await client.send_text("hello")).done()
        assert len(client.conversation.items) == 2
        first = client.request_id
        await client.reconnect()
        assert client.request_id != first
        assert client.conversation.items == {}
        assert client.config.output_modalities == ["text"]
        assert [t["name"] for t in client.config.tools or []] == ["get_time"]
        result = await (await client.send_text("What time is it?")).done()
        assert result.text == "It is 07:42 in local right now."


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_service_closing_the_connection_is_reported(text_engine: Any, dialect: str) -> None:
    client = await rt.connect(url=_url(text_engine, dialect, "close:1011:after=1"))
    try:
        with pytest.raises(rt.ConnectionClosed) as info:
            async for _ in client:
                pass
        assert info.value.code == 1011
        assert client.closed
        assert client.close_code == 1011
        with pytest.raises(rt.ConnectionClosed, match="reconnect"):
            await client.send_text("hello")  # says what to do
    finally:
        await client.close()


async def test_session_expiry_error_reaches_the_stream_and_iteration_ends(
    text_engine: Any,
) -> None:
    async with rt.connect(url=_url(text_engine, "ga", "expire:0.3")) as client:
        events = [e async for e in client]  # ends quietly: the service closed with 1000
        errors = [e for e in events if isinstance(e, ev.ErrorEvent)]
        assert [e.error.code for e in errors] == ["session_expired"]
        assert client.closed and client.close_code == 1000


@pytest.mark.parametrize(("status", "exc"), [(401, rt.AuthenticationError), (429, rt.RateLimited)])
async def test_engine_refusals_map_to_exceptions(
    text_engine: Any, status: int, exc: type[Exception]
) -> None:
    with pytest.raises(exc) as info:
        await rt.connect(url=_url(text_engine, "ga", f"refuse:{status}"))
    if status == 429:
        assert isinstance(info.value, rt.RateLimited) and info.value.retry_after is not None
