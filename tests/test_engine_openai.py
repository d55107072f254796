"""The official ``openai`` package's realtime client completes conversations with the engine
(typed turns: the engine without its speech models serves them, its audio is silence)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

openai = pytest.importorskip("openai")


def _client(engine: Any) -> Any:
    base = f"127.0.0.1:{engine.port}/v1"
    return openai.AsyncOpenAI(
        api_key="x", base_url=f"http://{base}", websocket_base_url=f"ws://{base}"
    )


async def _events_until_done(connection: Any) -> list[Any]:
    events: list[Any] = []
    async for event in connection:
        events.append(event)
        if event.type == "response.done":
            return events
    raise AssertionError("the connection closed before response.done")


async def test_openai_package_text_conversation(text_engine: Any) -> None:
    client = _client(text_engine)
    async with client.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "instructions": "Be kind."}
        )
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "How is the weather?"}],
            }
        )
        await connection.response.create()
        events = await _events_until_done(connection)
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "It is sunny and warm today."
    done = events[-1]
    assert done.response.status == "completed"
    assert done.response.usage.output_tokens > 0


async def test_openai_package_audio_reply_and_function_call(text_engine: Any) -> None:
    client = _client(text_engine)
    async with client.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "tools": [
                    {
                        "type": "function",
                        "name": "get_time",
                        "description": "The current time.",
                        "parameters": {"type": "object", "properties": {}},
                    }
                ],
            }
        )
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What time is it?"}],
            }
        )
        await connection.response.create()
        events = await _events_until_done(connection)
        call = events[-1].response.output[0]
        assert call.type == "function_call" and call.name == "get_time"
        await connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": call.call_id, "output": "9:15"}
        )
        await connection.response.create()
        events = await _events_until_done(connection)
    transcript = "".join(
        e.delta for e in events if e.type == "response.output_audio_transcript.delta"
    )
    assert transcript == "It is 9:15 right now."
    audio = b"".join(
        base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
    )
    assert len(audio) > 48 * 500
