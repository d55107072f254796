"""The local engine over real WebSockets and in-memory channels, in both dialects.

Tests that type their turns use ``text_engine`` (no speech models); tests of hearing and
speaking use ``scripted_engine`` or ``engine`` with speech made by the engine's own voice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from aoai_realtime.audio import (
    alaw_decode,
    b64encode_audio,
    resample,
    rms_dbfs,
    ulaw_encode,
)
from aoai_realtime.engine import (
    EngineConfig,
    EngineRefusal,
    EngineThread,
    Faults,
    FaultSpecError,
    start_engine,
)
from aoai_realtime.engine import server as engine_server
from aoai_realtime.engine.generation import SILENT_MS_PER_CHAR, trim_trailing_quiet
from helpers import (
    ENGINE_SCRIPT,
    WAIT,
    audio_of,
    connect,
    engine_thread,
    memory_engine,
    open_memory,
    text_of,
)

GET_TIME_TOOL = {
    "type": "function",
    "name": "get_time",
    "description": "The current time.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
}
DIALECTS = pytest.mark.parametrize("dialect", ["ga", "preview"])


# ------------------------------------------------------------------------------ session


@DIALECTS
async def test_session_created_shows_the_dialects_defaults(
    scripted_engine: Any, dialect: str
) -> None:
    async with connect(scripted_engine, dialect) as rt:
        created = rt.events[0]
        assert created["type"] == "session.created"
        session = created["session"]
        assert session["id"].startswith("sess_")
        if dialect == "ga":
            assert session["type"] == "realtime"
            assert session["output_modalities"] == ["audio"]
            assert session["audio"]["output"] == {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            }
            td = session["audio"]["input"]["turn_detection"]
            assert session["audio"]["input"]["transcription"] is None
            assert "temperature" not in session
        else:
            assert "type" not in session
            assert session["modalities"] == ["text", "audio"]
            assert session["voice"] == "alloy"
            assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
            assert session["input_audio_transcription"] is None
            assert session["temperature"] == 0.8
            td = session["turn_detection"]
            conversation = await rt.recv()
            assert conversation["type"] == "conversation.created"
            assert conversation["conversation"]["id"].startswith("conv_")
        assert td["type"] == "server_vad"
        assert (td["threshold"], td["prefix_padding_ms"], td["silence_duration_ms"]) == (
            0.5,
            300,
            500,
        )
        assert td["create_response"] is True and td["interrupt_response"] is True


async def test_healthz(text_engine: Any) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{text_engine.http_url}/healthz") as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok" and body["brain"] == "scripted"
    assert body["speech"] is False  # the text engine runs without its speech models


async def test_wrong_endpoints_are_explained(text_engine: Any) -> None:
    base = text_engine.http_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/openai/v1/realtime") as resp:
            assert resp.status == 400
            assert "model" in (await resp.json())["error"]["message"]
        async with http.get(f"{base}/openai/realtime?deployment=x") as resp:
            assert resp.status == 400
            assert "api-version" in (await resp.json())["error"]["message"]
        async with http.get(f"{base}/openai/v1/realtime?model=x") as resp:
            assert resp.status == 426  # plain HTTP on a WebSocket endpoint


# ------------------------------------------------------------------------------ speech


@DIALECTS
async def test_speech_is_detected_transcribed_and_answered_with_audio(
    engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes], dialect: str
) -> None:
    speech = tts_wav("What is the capital of France?")
    async with connect(engine, dialect) as rt:
        if dialect == "ga":
            await rt.update(
                audio={"input": {"transcription": {"model": "whisper-1"}}}, max_output_tokens=24
            )
        else:
            await rt.update(
                input_audio_transcription={"model": "whisper-1"}, max_response_output_tokens=24
            )
        await rt.append(silence(500) + speech + silence(900))
        started = await rt.wait_for("input_audio_buffer.speech_started")
        stopped = await rt.wait_for("input_audio_buffer.speech_stopped")
        assert started["item_id"] == stopped["item_id"]
        # Times are on the audio timeline: speech begins after the 500 ms of silence
        # (minus the 300 ms prefix padding) and ends before the trailing silence.
        assert 150 <= started["audio_start_ms"] <= 800
        speech_ms = len(speech) // 48
        assert 500 + speech_ms - 600 <= stopped["audio_end_ms"] <= 500 + speech_ms + 100
        committed = await rt.wait_for("input_audio_buffer.committed")
        assert committed["item_id"] == stopped["item_id"]
        done = await rt.wait_for(
            "conversation.item.input_audio_transcription.completed",
        )
        assert done["item_id"] == stopped["item_id"]
        words = done["transcript"].lower()
        assert "capital" in words and "france" in words
        events = await rt.until("response.done")
        response = events[-1]["response"]
        assert response["status"] in ("completed", "incomplete"), response
        reply = audio_of(events)
        assert len(reply) > 48 * 300 and rms_dbfs(reply) > -40  # real speech, not silence
        transcript = text_of(events, "response.output_audio_transcript.delta")
        assert transcript.strip()
        assert response["usage"]["output_tokens"] > 0
        assert response["usage"]["input_token_details"]["audio_tokens"] > 0
        assert (await rt.recv())["type"] == "rate_limits.updated"


async def test_semantic_vad_is_accepted_and_ends_turns(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with connect(scripted_engine) as rt:
        updated = await rt.update(
            audio={"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}
        )
        td = updated["session"]["audio"]["input"]["turn_detection"]
        assert td["type"] == "semantic_vad" and td["eagerness"] == "high"
        # past high's 2 s maximum wait: the turn ends even if the end-of-turn model hesitates
        # (tests/test_semantic_vad.py shows it ending sooner)
        await rt.append(tts_wav("Hello there.") + silence(2200))
        await rt.wait_for("input_audio_buffer.speech_stopped")
        events = await rt.until("response.done")
        assert "Hello! How can I help you today?" in text_of(
            events, "response.output_audio_transcript.delta"
        )


async def test_a_pause_shorter_than_the_silence_window_does_not_end_the_turn(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    # The engine starts transcribing and answering during pauses (speculatively); a pause the
    # user speaks after must not leak into the answer. Piper ends an utterance with about
    # 230 ms of quiet, so the pause here is about 330 ms: long enough to speculate on, shorter
    # than the 500 ms that ends a turn.
    async with connect(scripted_engine) as rt:
        await rt.update(audio={"input": {"transcription": {"model": "whisper-1"}}})
        await rt.append(
            tts_wav("Hello there.") + silence(100) + tts_wav("How is the weather?") + silence(900)
        )
        done = await rt.wait_for("conversation.item.input_audio_transcription.completed")
        assert "hello" in done["transcript"].lower() and "weather" in done["transcript"].lower()
        events = await rt.until("response.done")
        assert text_of(events, "response.output_audio_transcript.delta") == (
            "It is sunny and warm today."
        )
        assert sum(e["type"] == "input_audio_buffer.speech_stopped" for e in rt.events) == 1


def _transcriptions(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int, str]]:
    """What the engine's speculator transcribed: (from ms, to ms, "after a segment" or not)."""
    found = []
    for record in caplog.records:
        m = re.match(r"transcribing the turn from (\d+) to (\d+) ms \((.*)\)", record.getMessage())
        if record.name == "aoai_realtime.engine.speculation" and m:
            found.append((int(m[1]), int(m[2]), m[3]))
    return found


async def _spoken_turn(engine: Any, audio: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """One spoken turn with transcription on: its ``speech_stopped`` and its transcript event,
    once the response to it is done."""
    async with connect(engine) as rt:
        await rt.update(audio={"input": {"transcription": {"model": "whisper-1"}}})
        await rt.append(audio)
        stopped = await rt.wait_for("input_audio_buffer.speech_stopped")
        done = await rt.wait_for("conversation.item.input_audio_transcription.completed")
        await rt.wait_for("response.done")
    return stopped, done


async def test_a_turn_is_transcribed_incrementally_segment_by_segment(
    scripted_engine: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A pause between two sentences (about 330 ms: over the 150 ms that ends a segment, under
    # the 500 ms that ends the turn) ends a segment: the turn's later transcriptions read only
    # the audio after it, and the transcript still has both sentences.
    caplog.set_level(logging.DEBUG, logger="aoai_realtime.engine.speculation")
    first = tts_wav("Hello there.")
    stopped, done = await _spoken_turn(
        scripted_engine, first + silence(100) + tts_wav("How is the weather?") + silence(900)
    )
    assert re.fullmatch(r"hello there[.,!] how is the weather\?", done["transcript"].lower())
    spans = _transcriptions(caplog)
    first_ms = len(first) // 48
    assert spans and spans[0][2] == "from its start" and spans[0][1] < first_ms + 100
    segment_end = spans[0][1]
    last = spans[-1]  # the one that became the transcript: the audio after the segment only
    assert last == (segment_end, stopped["audio_end_ms"], "after a segment")


async def test_a_brief_pause_between_words_does_not_split_the_turn(
    scripted_engine: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whisper hears whole phrases better: a pause under 150 ms is not a segment boundary, so the
    # transcript comes from one reading of the whole turn. (The words' own quiet is trimmed to
    # 20 ms and 65 ms of silence added: the VAD hears a pause of 32-150 ms.)
    caplog.set_level(logging.DEBUG, logger="aoai_realtime.engine.speculation")
    hello = trim_trailing_quiet(tts_wav("Hello there."), keep_ms=20) + silence(65)
    _, done = await _spoken_turn(
        scripted_engine, hello + tts_wav("How is the weather?") + silence(900)
    )
    assert "hello" in done["transcript"].lower() and "weather" in done["transcript"].lower()
    spans = _transcriptions(caplog)
    assert len(spans) >= 2  # the brief pause was worked on (then dropped), and the last one
    assert all(kind == "from its start" for _, _, kind in spans)


async def test_without_speculation_each_turn_is_transcribed_whole_at_its_end(
    speech_stack: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # ``--no-speculation`` (the benchmarks' baseline): same events and words, nothing early.
    caplog.set_level(logging.DEBUG, logger="aoai_realtime.engine.speculation")
    for engine in engine_thread(
        speech_stack, brain="scripted", script=ENGINE_SCRIPT, speculation=False
    ):
        async with connect(engine) as rt:
            await rt.update(audio={"input": {"transcription": {"model": "whisper-1"}}})
            await rt.append(
                tts_wav("Hello there.")
                + silence(100)
                + tts_wav("How is the weather?")
                + silence(900)
            )
            done = await rt.wait_for("conversation.item.input_audio_transcription.completed")
            events = await rt.until("response.done")
        assert "weather" in done["transcript"].lower()
        assert text_of(events, "response.output_audio_transcript.delta") == (
            "It is sunny and warm today."
        )
        assert _transcriptions(caplog) == []


async def test_barge_in_cancels_the_response_with_turn_detected(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with connect(scripted_engine) as rt:
        await rt.append(tts_wav("Please tell me a story.") + silence(700))
        created = await rt.wait_for("response.created")
        await rt.wait_for("response.output_audio.delta")
        await rt.append(tts_wav("Stop, wait a moment.") + silence(700))
        await rt.wait_for("input_audio_buffer.speech_started")
        done = await rt.wait_for(
            "response.done", where=lambda e: e["response"]["id"] == created["response"]["id"]
        )
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }
        item = done["response"]["output"][0]
        assert item["status"] == "incomplete"
        # The new turn is committed and answered after the interruption.
        await rt.wait_for("input_audio_buffer.committed")
        second = await rt.wait_for("response.done")
        assert second["response"]["status"] == "completed"


async def test_idle_timeout_prompts_the_user_after_the_reply_has_been_played(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    idle_ms = 1500
    async with connect(scripted_engine) as rt:
        updated = await rt.update(
            audio={
                "input": {
                    "turn_detection": {"type": "server_vad", "idle_timeout_ms": idle_ms},
                    "transcription": {"model": "whisper-1"},
                    "noise_reduction": {"type": "near_field"},  # accepted, shown, not applied
                }
            }
        )
        audio_in = updated["session"]["audio"]["input"]
        assert audio_in["turn_detection"]["idle_timeout_ms"] == idle_ms
        assert audio_in["noise_reduction"] == {"type": "near_field"}
        first = silence(300) + tts_wav("Hello there.") + silence(700)
        await rt.append(first)
        stopped = await rt.wait_for("input_audio_buffer.speech_stopped")
        events = await rt.until("response.done")
        reply_ms = len(audio_of(events)) / 48
        assert reply_ms > 500
        assert not any(e["type"] == "input_audio_buffer.timeout_triggered" for e in rt.events)

        # The user stays quiet. The clock starts once the reply has been played (its audio
        # began while the input stood between speech_stopped and the end of what was sent) and
        # counts input audio, not wall-clock time.
        await rt.append(silence(int(reply_ms) + idle_ms + 600))
        timeout = await rt.wait_for("input_audio_buffer.timeout_triggered")
        start, end = timeout["audio_start_ms"], timeout["audio_end_ms"]
        detected_at = stopped["audio_end_ms"] + 500  # speech_stopped comes after the silence
        assert detected_at + reply_ms - 1 <= start <= len(first) / 48 + reply_ms + 1
        assert idle_ms <= end - start < idle_ms + 100  # checked at every 40 ms chunk
        # The silent audio becomes a user turn, and the model is asked to go on.
        committed = await rt.wait_for("input_audio_buffer.committed")
        assert committed["item_id"] == timeout["item_id"]
        added = await rt.wait_for("conversation.item.added")
        assert added["item"]["id"] == timeout["item_id"]
        assert added["item"]["content"][0]["type"] == "input_audio"
        transcribed = await rt.wait_for("conversation.item.input_audio_transcription.completed")
        assert transcribed["item_id"] == timeout["item_id"] and transcribed["transcript"] == ""
        events = await rt.until("response.done")
        assert events[-1]["response"]["status"] == "completed"
        assert audio_of(events)

        # Speaking before the next timeout: an ordinary turn, no second timeout.
        await rt.append(tts_wav("Hello again.") + silence(700))
        await rt.wait_for("input_audio_buffer.speech_started")
        await rt.wait_for("response.done")
        assert sum(e["type"] == "input_audio_buffer.timeout_triggered" for e in rt.events) == 1


async def test_manual_commit_without_turn_detection(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with connect(scripted_engine) as rt:
        updated = await rt.update(
            audio={"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
            output_modalities=["text"],
        )
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await rt.append(silence(40))
        await rt.send({"type": "input_audio_buffer.commit", "event_id": "evt_small"})
        error = await rt.error()
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert "Expected at least 100ms" in error["message"]
        assert error["event_id"] == "evt_small"
        await rt.send({"type": "input_audio_buffer.clear"})
        await rt.wait_for("input_audio_buffer.cleared")
        await rt.append(tts_wav("How is the weather?") + silence(1000))
        await rt.send({"type": "input_audio_buffer.commit"})
        committed = await rt.wait_for("input_audio_buffer.committed")
        assert not any(e["type"].endswith("speech_started") for e in rt.events)
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        assert text_of(events, "response.output_text.delta") == "It is sunny and warm today."
        transcribed = [
            e for e in rt.events if e["type"].endswith("input_audio_transcription.completed")
        ]
        assert transcribed and transcribed[0]["item_id"] == committed["item_id"]
        assert "weather" in transcribed[0]["transcript"].lower()


async def test_cleared_audio_is_taken_off_the_timeline(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    speech = tts_wav("Hello there.")
    async with connect(scripted_engine) as first, connect(scripted_engine) as second:
        await first.append(silence(1000))
        await first.send({"type": "input_audio_buffer.clear"})
        await first.wait_for("input_audio_buffer.cleared")
        for rt in (first, second):
            await rt.append(silence(400) + speech + silence(800))
        a = await first.wait_for("input_audio_buffer.speech_started")
        b = await second.wait_for("input_audio_buffer.speech_started")
        assert a["audio_start_ms"] == b["audio_start_ms"]


# ------------------------------------------------------------------------------ items


async def test_items_create_retrieve_delete_and_previous_item_id(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.say_text("first")
        first = (await rt.wait_for("conversation.item.added"))["item"]
        await rt.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {
                    "id": "item_mine",
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "Be brief."}],
                },
            }
        )
        added = await rt.wait_for("conversation.item.added")
        assert added["previous_item_id"] is None and added["item"]["id"] == "item_mine"
        await rt.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "item_mine",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "between"}],
                },
            }
        )
        between = await rt.wait_for("conversation.item.added")
        assert between["previous_item_id"] == "item_mine"
        await rt.send({"type": "conversation.item.retrieve", "item_id": first["id"]})
        got = await rt.wait_for("conversation.item.retrieved")
        assert got["item"]["content"][0]["text"] == "first"
        await rt.send({"type": "conversation.item.delete", "item_id": "item_mine"})
        assert (await rt.wait_for("conversation.item.deleted"))["item_id"] == "item_mine"
        await rt.send({"type": "conversation.item.delete", "item_id": "item_mine"})
        assert (await rt.error())["param"] == "item_id"
        await rt.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "item_nope",
                "item": {"type": "message", "role": "user", "content": []},
            }
        )
        assert (await rt.error())["param"] == "previous_item_id"


async def test_truncation_follows_the_services_rules(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.say_text("Tell me a story, please.")
        user = (await rt.wait_for("conversation.item.added"))["item"]
        await rt.send({"type": "response.create", "response": {"max_output_tokens": 30}})
        events = await rt.until("response.done")
        item = events[-1]["response"]["output"][0]
        produced_ms = len(audio_of(events)) // 48
        full = text_of(events, "response.output_audio_transcript.delta")
        assert produced_ms > 2000 and len(full.split()) > 10

        await rt.send(
            {
                "type": "conversation.item.truncate",
                "item_id": user["id"],
                "content_index": 0,
                "audio_end_ms": 100,
            }
        )
        error = await rt.error()
        assert error["type"] == "invalid_request_error"
        assert "Only model output audio messages can be truncated" in error["message"]

        await rt.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": produced_ms + 1000,
            }
        )
        error = await rt.error()
        assert error["param"] == "audio_end_ms"
        assert f"Audio content of {produced_ms}ms is already shorter than" in error["message"]

        await rt.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": 1500,
            }
        )
        truncated = await rt.wait_for("conversation.item.truncated")
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (item["id"], 1500)
        await rt.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        kept = (await rt.wait_for("conversation.item.retrieved"))["item"]["content"][0]
        heard = kept["transcript"]
        assert heard and full.startswith(heard) and len(heard) < len(full) / 2
        # Truncating again beyond the new end is refused as well.
        await rt.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": 2000,
            }
        )
        assert (await rt.error())["param"] == "audio_end_ms"


# ------------------------------------------------------------------------------ responses


async def test_function_call_round_trip(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.update(tools=[GET_TIME_TOOL], output_modalities=["text"])
        await rt.say_text("Hi! What time is it?")
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        call = events[-1]["response"]["output"][0]
        assert call["type"] == "function_call" and call["name"] == "get_time"
        assert call["call_id"].startswith("call_")
        args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert json.loads(args_done["arguments"]) == {"timezone": "local"}
        assert args_done["call_id"] == call["call_id"]
        assert any(e["type"] == "response.function_call_arguments.delta" for e in events)
        await rt.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": "10:42",
                },
            }
        )
        await rt.wait_for("conversation.item.added")
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        assert text_of(events, "response.output_text.delta") == "It is 10:42 right now."


async def test_spoken_function_call_in_the_preview_dialect(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with connect(scripted_engine, "preview") as rt:
        await rt.update(tools=[GET_TIME_TOOL])
        await rt.append(tts_wav("What time is it?") + silence(800))
        events = await rt.until("response.done")
        call = events[-1]["response"]["output"][0]
        assert call["type"] == "function_call"
        await rt.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": "noon",
                },
            }
        )
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        assert text_of(events, "response.audio_transcript.delta") == "It is noon right now."
        assert len(audio_of(events)) > 48 * 500
        kinds = [e["type"] for e in events]
        # Preview vocabulary only: no GA names, no conversation.item.done.
        assert "conversation.item.created" in kinds and "response.audio.done" in kinds
        assert not any(
            k.startswith("response.output_audio") or k == "conversation.item.done" for k in kinds
        )


async def test_response_event_sequence_is_the_services(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.say_text("hello")
        await rt.send({"type": "response.create", "response": {"metadata": {"turn": "1"}}})
        events = await rt.until("response.done")
        kinds = [e["type"] for e in events if e["type"] != "response.output_audio.delta"]
        kinds = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
        assert kinds[kinds.index("response.created") :] == [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_audio_transcript.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        done = events[-1]["response"]
        assert done["metadata"] == {"turn": "1"} and done["status"] == "completed"
        assert done["id"].startswith("resp_") and done["output"][0]["id"].startswith("item_")
        usage = done["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["output_token_details"]["audio_tokens"] > 0
        limits = await rt.wait_for("rate_limits.updated")
        assert {r["name"] for r in limits["rate_limits"]} == {"requests", "tokens"}


@DIALECTS
async def test_text_modality(text_engine: Any, dialect: str) -> None:
    async with connect(text_engine, dialect) as rt:
        if dialect == "ga":
            await rt.update(output_modalities=["text"])
        else:
            await rt.update(modalities=["text"])
        await rt.say_text("How is the weather?")
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        assert text_of(events, "response.output_text.delta") == "It is sunny and warm today."
        assert not audio_of(events)
        done = next(e for e in events if e["type"] == rt.t("response.output_text.done"))
        assert done["text"] == "It is sunny and warm today."


async def test_max_output_tokens_gives_incomplete(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.update(output_modalities=["text"])
        await rt.say_text("Tell me a story.")
        await rt.send({"type": "response.create", "response": {"max_output_tokens": 5}})
        events = await rt.until("response.done")
        response = events[-1]["response"]
        assert response["status"] == "incomplete"
        assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        assert response["usage"]["output_tokens"] <= 5
        assert text_of(events, "response.output_text.delta") == "Once upon a time there"
        assert response["output"][0]["status"] == "incomplete"


async def test_out_of_band_response_stays_out_of_the_conversation(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "output_modalities": ["text"],
                    "input": [
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "hello"}],
                        }
                    ],
                    "metadata": {"purpose": "classify"},
                },
            }
        )
        events = await rt.until("response.done")
        response = events[-1]["response"]
        assert response["conversation_id"] is None
        assert response["metadata"] == {"purpose": "classify"}
        assert text_of(events, "response.output_text.delta") == "Hello! How can I help you today?"
        assert not any(e["type"].startswith("conversation.item") for e in events)


@DIALECTS
async def test_response_input_can_reference_existing_items(
    scripted_engine: Any, dialect: str, tts_wav: Callable[..., bytes]
) -> None:
    # each dialect's own name (the preview does not know output_modalities)
    text_only = {"output_modalities": ["text"]} if dialect == "ga" else {"modalities": ["text"]}
    async with connect(scripted_engine, dialect) as rt:
        await rt.update(**({"output_modalities": ["text"]} if dialect == "ga" else {}))
        await rt.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "item_spoken_weather",
                    "type": "message",
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "audio": b64encode_audio(tts_wav("How is the weather?")),
                        }
                    ],
                },
            }
        )
        await rt.say_text("hello")
        await rt.wait_for(
            "conversation.item.added", lambda e: e["item"]["content"][0]["type"] == "input_text"
        )
        # A context of its own, made of the first (spoken) item only: the script answers it,
        # not the conversation's last turn ("hello"), once its transcription is done.
        await rt.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    **text_only,
                    "input": [{"type": "item_reference", "id": "item_spoken_weather"}],
                },
            }
        )
        events = await rt.until("response.done")
        assert text_of(events, "response.output_text.delta") == "It is sunny and warm today."
        assert not any(e["type"].startswith(rt.t("conversation.item.added")) for e in events)
        # A reference beside a new item; the conversation itself is unchanged.
        await rt.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    **text_only,
                    "input": [
                        {"type": "item_reference", "id": "item_spoken_weather"},
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "hello"}],
                        },
                    ],
                },
            }
        )
        events = await rt.until("response.done")
        assert text_of(events, "response.output_text.delta") == "Hello! How can I help you today?"
        # An unknown id, or none: refused, naming the parameter; the session goes on.
        await rt.send(
            {
                "type": "response.create",
                "event_id": "evt_ref",
                "response": {"input": [{"type": "item_reference", "id": "item_nope"}]},
            }
        )
        error = await rt.error()
        assert error["param"] == "response.input[0].id" and error["event_id"] == "evt_ref"
        assert "item_nope" in error["message"]
        await rt.send(
            {"type": "response.create", "response": {"input": [{"type": "item_reference"}]}}
        )
        error = await rt.error()
        assert error["code"] == "missing_required_parameter"
        assert error["param"] == "response.input[0].id"
        # A reference is not a conversation item of its own.
        await rt.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "item_reference", "id": "item_spoken_weather"},
            }
        )
        error = await rt.error()
        assert error["param"].startswith("item")
        await rt.send({"type": "conversation.item.retrieve", "item_id": "item_spoken_weather"})
        retrieved = await rt.wait_for("conversation.item.retrieved")
        assert retrieved["item"]["id"] == "item_spoken_weather"


async def test_one_response_at_a_time_and_cancel(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.send({"type": "response.cancel", "event_id": "evt_c1"})
        error = await rt.error()
        assert error["code"] == "response_cancel_not_active" and error["event_id"] == "evt_c1"
        await rt.say_text("Tell me a story.")
        await rt.send({"type": "response.create"})
        created = await rt.wait_for("response.created")
        await rt.send({"type": "response.create", "event_id": "evt_second"})
        error = await rt.error()
        assert error["code"] == "conversation_already_has_active_response"
        assert created["response"]["id"] in error["message"]
        await rt.send({"type": "response.cancel"})
        done = await rt.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        # Another response can follow.
        await rt.say_text("hello")
        await rt.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await rt.wait_for("response.done")
        assert done["response"]["status"] == "completed"


async def test_voice_and_g711_in_and_out(
    scripted_engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with connect(scripted_engine) as rt:
        await rt.update(
            audio={
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "whisper-1"},
                },
                "output": {"format": {"type": "audio/pcma"}, "voice": "marin"},
            }
        )
        pcm24 = silence(300) + tts_wav("How is the weather?") + silence(900)

        def to_ulaw(chunk: bytes) -> bytes:
            return ulaw_encode(resample(chunk, 24000, 8000))

        # 40 ms of 24 kHz PCM16 per chunk -> 320 bytes of 8 kHz mu-law.
        await rt.append(pcm24, encode=to_ulaw)
        done = await rt.wait_for("conversation.item.input_audio_transcription.completed")
        assert "weather" in done["transcript"].lower()
        events = await rt.until("response.done")
        alaw = audio_of(events)
        assert len(alaw) > 8 * 500  # 8 bytes per ms at 8 kHz
        assert rms_dbfs(alaw_decode(alaw)) > -40
        response = events[-1]["response"]
        assert response["audio"]["output"]["format"] == {"type": "audio/pcma"}
        assert response["audio"]["output"]["voice"] == "marin"


async def test_two_sessions_do_not_disturb_each_other(text_engine: Any) -> None:
    async with connect(text_engine) as a, connect(text_engine, "preview") as b:
        await a.update(output_modalities=["text"])
        await b.update(modalities=["text"])
        await a.say_text("How is the weather?")
        await b.say_text("hello")
        await b.ws.send_str("{broken")
        await asyncio.gather(
            a.send({"type": "response.create"}), b.send({"type": "response.create"})
        )
        events_a, events_b = await asyncio.gather(
            a.until("response.done"), b.until("response.done")
        )
        assert text_of(events_a, "response.output_text.delta") == "It is sunny and warm today."
        assert text_of(events_b, "response.output_text.delta") == "Hello! How can I help you today?"
        assert not any(e["type"] == "error" for e in a.events)
        assert any(e["type"] == "error" for e in b.events)


# ------------------------------------------------------------------------------ bad input


BAD_GA: list[tuple[str, str, str | None]] = [
    ("{not json", "invalid_json", None),
    ("[1, 2, 3]", "invalid_event", None),
    ('"just a string"', "invalid_event", None),
    ('{"event_id": "e1"}', "missing_required_parameter", "type"),
    ('{"type": 42, "event_id": "e2"}', "invalid_type", "type"),
    ('{"type": "no.such.event", "event_id": "e3"}', "invalid_value", "type"),
    (
        '{"type": "input_audio_buffer.append", "audio": "***", "event_id": "e4"}',
        "invalid_value",
        "audio",
    ),
    (
        '{"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "e5"}',
        "invalid_value",
        "audio",
    ),
    (
        '{"type": "input_audio_buffer.append", "event_id": "e6"}',
        "missing_required_parameter",
        "audio",
    ),
    (
        '{"type": "input_audio_buffer.append", "audio": 7, "event_id": "e7"}',
        "invalid_type",
        "audio",
    ),
    (
        '{"type": "input_audio_buffer.clear", "extra": 1, "event_id": "e8"}',
        "unknown_parameter",
        "extra",
    ),
    (
        '{"type": "conversation.item.retrieve", "item_id": 5, "event_id": "e9"}',
        "invalid_type",
        "item_id",
    ),
    (
        '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": -1, "event_id": "e10"}',
        "invalid_value",
        "audio_end_ms",
    ),
    (
        '{"type": "session.update", "session": {"voice": "alloy"}, "event_id": "e11"}',
        "missing_required_parameter",
        "session.type",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}, "event_id": "e12"}',
        "unknown_parameter",
        "session.temperature",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "modalities": ["text"]}, "event_id": "e13"}',
        "unknown_parameter",
        "session.modalities",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "bob"}}}, "event_id": "e14"}',
        "invalid_value",
        "session.audio.output.voice",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "high"}}}}, "event_id": "e15"}',
        "invalid_type",
        "session.audio.input.turn_detection.threshold",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 99999}, "event_id": "e16"}',
        "invalid_value",
        "session.max_output_tokens",
    ),
    ('{"type": "session.update", "session": "x", "event_id": "e17"}', "invalid_type", "session"),
    (
        '{"type": "response.create", "response": {"modalities": ["text"]}, "event_id": "e18"}',
        "unknown_parameter",
        "response.modalities",
    ),
    (
        '{"type": "response.create", "response": {"max_output_tokens": 0}, "event_id": "e19"}',
        "invalid_value",
        "response.max_output_tokens",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x", "bogus": 1}]}, "event_id": "e20"}',
        "unknown_parameter",
        "item.content[0].bogus",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAA"}]}, "event_id": "e21"}',
        "invalid_value",
        "item.content[0].audio",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "wizard", "content": []}, "event_id": "e22"}',
        "invalid_value",
        "item.role",
    ),
]


async def test_every_kind_of_bad_input_gets_an_error_and_the_session_goes_on(
    text_engine: Any,
) -> None:
    async with connect(text_engine) as rt:
        for frame, code, param in BAD_GA:
            await rt.ws.send_str(frame)
            error = await rt.error()
            assert (error["code"], error["param"]) == (code, param), (frame, error)
            assert error["type"] == "invalid_request_error"
            sent_id = json.loads(frame).get("event_id") if frame.startswith('{"') else None
            assert error["event_id"] == sent_id, (frame, error)
            # The session goes on: a valid event right after works.
            await rt.send({"type": "conversation.item.retrieve", "item_id": "item_none"})
            assert (await rt.error())["param"] == "item_id"
        await rt.ws.send_bytes(b"\xff\xfe")
        assert (await rt.error())["code"] == "invalid_json"
        updated = await rt.update(instructions="Still here.")
        assert updated["session"]["instructions"] == "Still here."
        assert not rt.ws.closed


async def test_preview_refuses_ga_shapes(text_engine: Any) -> None:
    async with connect(text_engine, "preview") as rt:
        await rt.send(
            {"type": "session.update", "session": {"type": "realtime"}, "event_id": "evt_p1"}
        )
        error = await rt.error()
        assert error["message"] == "Unknown parameter: 'session.type'."
        assert (error["code"], error["param"], error["event_id"]) == (
            "unknown_parameter",
            "session.type",
            "evt_p1",
        )
        await rt.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
        assert (await rt.error())["param"] == "session.output_modalities"
        await rt.send({"type": "session.update", "session": {"temperature": 5}})
        assert (await rt.error())["param"] == "session.temperature"
        updated = await rt.update(temperature=0.7, turn_detection={"type": "none"})
        assert updated["session"]["temperature"] == 0.7
        assert updated["session"]["turn_detection"] is None  # echoed as null, as the service does


async def test_voice_cannot_change_once_assistant_audio_exists(text_engine: Any) -> None:
    async with connect(text_engine) as rt:
        await rt.update(audio={"output": {"voice": "coral"}})
        await rt.say_text("hello")
        await rt.send({"type": "response.create"})
        await rt.wait_for("response.done")
        await rt.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}},
            }
        )
        error = await rt.error()
        assert error["code"] == "cannot_update_voice"


# ------------------------------------------------------------------------------ API key


@pytest.fixture(scope="module")
def keyed_engine() -> Iterator[Any]:
    with EngineThread(
        EngineConfig(
            port=0, no_speech=True, brain="scripted", script={"rules": []}, api_key="s3cret"
        )
    ) as thread:
        yield thread


async def _handshake(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                first = json.loads((await ws.receive(timeout=WAIT)).data)
                assert first["type"] == "session.created"
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_api_key_is_required_and_accepted_in_three_places(keyed_engine: Any) -> None:
    url = keyed_engine.ga_url()
    assert await _handshake(url) == 401
    assert await _handshake(url, {"api-key": "wrong"}) == 401
    assert await _handshake(url + "&api-key=wrong") == 401
    assert await _handshake(url, {"api-key": "s3cret"}) == 101
    assert await _handshake(url + "&api-key=s3cret") == 101
    assert await _handshake(url, {"Authorization": "Bearer s3cret"}) == 101
    assert await _handshake(keyed_engine.preview_url(), {"api-key": "s3cret"}) == 101


# ------------------------------------------------------------------------------ faults


def test_fault_specs_parse_and_refuse_nonsense() -> None:
    faults = Faults.parse(["close:4001:after=3,delay_audio:250", "server_error:2", "expire:1.5"])
    assert (faults.close_code, faults.close_after_events) == (4001, 3)
    assert (faults.delay_audio_ms, faults.server_error_response, faults.expire_after_s) == (
        250,
        2,
        1.5,
    )
    assert Faults.parse(faults.describe()) == faults
    assert Faults.parse("refuse:429").refuse_status == 429
    for bad in ("explode", "close:abc", "refuse:418", "close:1011:bogus=1", "close:99"):
        with pytest.raises(FaultSpecError):
            Faults.parse(bad)


async def test_fault_close_after_n_events(text_engine: Any) -> None:
    url = text_engine.ga_url() + "&fault=close:4001:after=2"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        first = await ws.receive(timeout=WAIT)
        assert json.loads(first.data)["type"] == "session.created"
        await ws.send_str(json.dumps({"type": "input_audio_buffer.clear"}))
        second = await ws.receive(timeout=WAIT)
        assert json.loads(second.data)["type"] == "input_audio_buffer.cleared"
        closing = await ws.receive(timeout=WAIT)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4001


async def test_fault_server_error_fails_the_response(text_engine: Any) -> None:
    async with connect(text_engine, query="fault=server_error") as rt:
        await rt.say_text("hello")
        await rt.send({"type": "response.create"})
        error = await rt.error()
        assert error["type"] == "server_error"
        done = await rt.wait_for("response.done")
        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["error"]["type"] == "server_error"
        # Only the first response fails; the session goes on.
        await rt.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await rt.wait_for("response.done")
        assert done["response"]["status"] == "completed"


async def test_fault_expire_sends_session_expired_then_closes(text_engine: Any) -> None:
    async with connect(text_engine, query="fault=expire:0.3") as rt:
        error = await rt.error()
        assert error["code"] == "session_expired"
        closing = await rt.ws.receive(timeout=WAIT)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.parametrize("status", [401, 429])
async def test_fault_refuses_the_handshake(text_engine: Any, status: int) -> None:
    assert await _handshake(text_engine.ga_url() + f"&fault=refuse:{status}") == status


async def test_fault_spec_errors_are_refused_at_the_handshake(text_engine: Any) -> None:
    assert await _handshake(text_engine.ga_url() + "&fault=explode") == 400


async def test_fault_delay_audio_holds_back_the_first_audio(text_engine: Any) -> None:
    loop = asyncio.get_running_loop()
    async with connect(text_engine, query="fault=delay_audio:700") as rt:
        await rt.say_text("hello")
        await rt.send({"type": "response.create"})
        await rt.wait_for("response.content_part.added")
        before = loop.time()
        await rt.wait_for("response.output_audio.delta")
        # A lower bound only: the fault must hold the audio back at least this long.
        assert loop.time() - before >= 0.6


# ------------------------------------------------------------------------------ in memory


@DIALECTS
async def test_a_session_over_an_in_memory_channel(dialect: str) -> None:
    async with memory_engine() as engine, open_memory(engine, dialect) as rt:
        created = rt.events[0]
        assert created["type"] == "session.created"
        assert created["session"]["id"].startswith("sess_")
        assert engine.sessions == 1
        if dialect == "ga":
            await rt.update(output_modalities=["text"])
        else:
            assert (await rt.recv())["type"] == "conversation.created"
            await rt.update(modalities=["text"])
        await rt.say_text("hello")
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        assert text_of(events, "response.output_text.delta") == "Hello! How can I help you today?"
        assert events[-1]["response"]["status"] == "completed"
        assert (await rt.recv())["type"] == "rate_limits.updated"


async def test_the_close_fault_reaches_the_channels_close_code() -> None:
    async with (
        memory_engine() as engine,
        open_memory(engine, query={"fault": "close:4001:after=2"}) as rt,
    ):
        await rt.send({"type": "input_audio_buffer.clear"})
        assert (await rt.recv())["type"] == "input_audio_buffer.cleared"
        assert await rt.drain_until_closed() == 4001
        await engine.wait_sessions(0)  # the engine ended the session as well


async def test_the_expire_fault_over_an_in_memory_channel() -> None:
    async with memory_engine() as engine, open_memory(engine, query={"fault": "expire:0.3"}) as rt:
        error = await rt.error()
        assert error["code"] == "session_expired"
        assert await rt.drain_until_closed() == 1000


async def test_engine_wide_faults_and_delay_audio_over_an_in_memory_channel() -> None:
    loop = asyncio.get_running_loop()
    async with (
        memory_engine(faults=Faults.parse("server_error")) as engine,
        open_memory(engine, query={"fault": ["delay_audio:700"]}) as rt,
    ):
        await rt.say_text("hello")
        await rt.send({"type": "response.create"})
        done = await rt.wait_for("response.done")
        assert done["response"]["status"] == "failed"  # the engine's fault: the first fails
        await rt.send({"type": "response.create"})
        await rt.wait_for("response.content_part.added")
        before = loop.time()
        await rt.wait_for("response.output_audio.delta")
        assert loop.time() - before >= 0.6  # a lower bound only: the fault holds the audio back


async def test_refusals_raise_engine_refusal_with_the_http_answer() -> None:
    async with memory_engine(api_key="s3cret") as engine:
        good = {"model": "m", "api-key": "s3cret"}
        with pytest.raises(EngineRefusal) as refused:
            await engine.open_channel("/openai/v1/realtime", {**good, "fault": "refuse:429"}, {})
        assert refused.value.status == 429
        assert refused.value.headers["Retry-After"] == "1"
        assert refused.value.body["error"]["code"] == "429"
        assert "rate limit" in refused.value.message
        cases: list[tuple[str, dict[str, Any], dict[str, str], int, str]] = [
            ("/openai/v1/realtime", {"api-key": "s3cret"}, {}, 400, "model"),
            ("/openai/realtime", {"deployment": "d", "api-key": "s3cret"}, {}, 400, "api-version"),
            ("/openai/v1/realtime", {**good, "fault": "explode"}, {}, 400, "unknown fault"),
            ("/openai/v1/realtime", {"model": "m"}, {}, 401, "Access denied"),
            ("/openai/v1/realtime", {"model": "m"}, {"API-Key": "wrong"}, 401, "Access denied"),
            ("/nowhere", good, {}, 404, "/openai/v1/realtime"),
        ]
        for path, query, headers, status, words in cases:
            with pytest.raises(EngineRefusal) as refused:
                await engine.open_channel(path, query, headers)
            assert (refused.value.status, words in refused.value.message) == (status, True), path
        assert engine.sessions == 0
        # the key in a header, matched without regard to case; the query on the path is read
        channel = await engine.open_channel(
            "/openai/v1/realtime?model=m", {}, {"API-KEY": "s3cret"}
        )
        assert json.loads(await channel.receive() or "{}")["type"] == "session.created"
        await channel.close()
        bearer = {"Authorization": "Bearer s3cret", "OpenAI-Beta": "realtime=v1"}
        channel = await engine.open_channel("/v1/realtime", {"model": "m"}, bearer)
        kinds = [json.loads(await channel.receive() or "{}")["type"] for _ in range(2)]
        assert kinds == ["session.created", "conversation.created"]  # the preview dialect
        await channel.close()
        await engine.wait_sessions(0)


async def test_the_engine_counts_its_sessions_and_wakes_waiters() -> None:
    async with memory_engine() as engine:
        assert engine.sessions == 0
        waiter = asyncio.create_task(engine.wait_sessions(2))
        first = await engine.open_channel("/openai/v1/realtime", {"model": "m"}, {})
        assert not waiter.done() and engine.sessions == 1
        second = await engine.open_channel("/openai/v1/realtime", {"model": "m"}, {})
        await waiter  # woken by the second connection
        with pytest.raises(TimeoutError):
            await engine.wait_sessions(3, timeout=0.05)
        await first.close()
        await engine.wait_sessions(1)
        await second.close()
        await engine.wait_sessions(0)


async def test_an_engine_thread_waits_for_its_sessions(text_engine: Any) -> None:
    await text_engine.wait_sessions_async(0)
    async with connect(text_engine), connect(text_engine, "preview"):
        await text_engine.wait_sessions_async(2)
        assert text_engine.sessions == 2
    await text_engine.wait_sessions_async(0)


async def test_closing_the_engine_ends_its_in_memory_sessions() -> None:
    async with memory_engine() as engine:
        channel = await engine.open_channel("/openai/v1/realtime", {"model": "m"}, {})
        assert json.loads(await channel.receive() or "{}")["type"] == "session.created"
        await engine.close()
        assert await channel.receive() is None
        assert channel.close_code == 1001
        assert engine.engine.tasks == set()


# ------------------------------------------------------------------------------ without speech


def test_no_speech_needs_a_brain_that_is_not_a_speech_model() -> None:
    with pytest.raises(ValueError, match="scripted or chat"):
        engine_server.create_app(EngineConfig(no_speech=True))
    with pytest.raises(ValueError, match="choose one"):
        engine_server.create_app(
            EngineConfig(no_speech=True, brain="scripted", script={}, speech=object())
        )


async def test_no_speech_loads_no_speech_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any) -> Any:
        raise AssertionError("the speech stack was loaded")

    monkeypatch.setattr(engine_server, "load_speech", refuse)
    config = EngineConfig(port=0, brain="scripted", script=ENGINE_SCRIPT, no_speech=True)
    engine = await start_engine(config)
    try:
        assert engine.engine.speech is None
        async with connect(engine) as rt:
            await rt.say_text("hello")
            await rt.send({"type": "response.create"})
            events = await rt.until("response.done")
            assert text_of(events, "response.output_audio_transcript.delta") == (
                "Hello! How can I help you today?"
            )
    finally:
        await engine.close()


@DIALECTS
async def test_without_speech_turn_detection_and_transcription_are_refused(
    text_engine: Any, dialect: str
) -> None:
    async with connect(text_engine, dialect) as rt:
        session = rt.events[0]["session"]
        if dialect == "ga":
            assert session["audio"]["input"]["turn_detection"] is None
            vad = {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
            stt = {"audio": {"input": {"transcription": {"model": "whisper-1"}}}}
            params = ("session.audio.input.turn_detection", "session.audio.input.transcription")
        else:
            assert session["turn_detection"] is None
            vad = {"turn_detection": {"type": "semantic_vad"}}
            stt = {"input_audio_transcription": {"model": "whisper-1"}}
            params = ("session.turn_detection", "session.input_audio_transcription")
        for update, param in zip((vad, stt), params, strict=True):
            if dialect == "ga":
                update = {"type": "realtime", **update}
            await rt.send({"type": "session.update", "session": update, "event_id": "evt_u"})
            error = await rt.error()
            assert (error["code"], error["param"], error["event_id"]) == (
                "speech_unavailable",
                param,
                "evt_u",
            )
            assert "without its speech models" in error["message"]
        # what needs no model is still accepted, turn detection off included
        if dialect == "ga":
            updated = await rt.update(audio={"input": {"turn_detection": None}}, instructions="x")
            assert updated["session"]["audio"]["input"]["turn_detection"] is None
        else:
            updated = await rt.update(turn_detection={"type": "none"}, instructions="x")
            assert updated["session"]["turn_detection"] is None


async def test_without_speech_input_audio_is_validated_and_committed(
    text_engine: Any, silence: Callable[[int], bytes]
) -> None:
    async with connect(text_engine) as rt:
        await rt.update(output_modalities=["text"])
        await rt.send({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "e1"})
        assert (await rt.error())["param"] == "audio"  # three bytes: not pcm16
        await rt.append(silence(40))
        await rt.send({"type": "input_audio_buffer.commit"})
        assert (await rt.error())["code"] == "input_audio_buffer_commit_empty"
        await rt.append(silence(300))
        await rt.send({"type": "input_audio_buffer.commit"})
        committed = await rt.wait_for("input_audio_buffer.committed")
        added = await rt.wait_for("conversation.item.added")
        assert added["item"]["id"] == committed["item_id"]
        assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        assert events[-1]["response"]["status"] == "completed"  # the brain heard nothing
        usage = events[-1]["response"]["usage"]
        assert usage["input_token_details"]["audio_tokens"] > 0
        assert not any(e["type"].startswith("input_audio_buffer.speech") for e in rt.events)
        assert not any("transcription" in e["type"] for e in rt.events)


@DIALECTS
async def test_without_speech_audio_output_is_silence_as_long_as_its_text(
    text_engine: Any, dialect: str
) -> None:
    async with connect(text_engine, dialect) as rt:
        await rt.say_text("How is the weather?")
        await rt.send({"type": "response.create"})
        events = await rt.until("response.done")
        transcript = text_of(events, "response.output_audio_transcript.delta")
        assert transcript == "It is sunny and warm today."
        audio = audio_of(events)
        assert audio and not any(audio)  # digital silence
        ms = len(audio) / 48
        assert (
            len(transcript) * SILENT_MS_PER_CHAR <= ms <= len(transcript) * SILENT_MS_PER_CHAR + 600
        )
        deltas = [e for e in events if e["type"] == rt.t("response.output_audio.delta")]
        assert len(deltas) > 5  # in ~100 ms deltas, as speech is
