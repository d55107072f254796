"""openai-agents' ``RealtimeAgent``, a client nobody here wrote, with a function tool against the
default local brain: the spoken question calls the tool, the answer follows, every event the
engine sent validates against openai's GA types.

The agent's runner connects to the engine's GA URL like to OpenAI's, configures the session
itself (its ``session.update`` carries the tools, instructions and ``parallel_tool_calls``
together) and runs the tool when the engine asks for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner

from test_openai_contract import check_event

pytestmark = pytest.mark.slow

CALLED: list[str] = []


@function_tool
def current_time(timezone: str) -> str:
    """Get the current time in a time zone. Use it whenever the user asks what time it is
    somewhere.

    Args:
        timezone: The time zone or city, e.g. Tokyo.
    """
    CALLED.append(timezone)
    return json.dumps({"time": "14:05", "timezone": timezone})


async def test_a_realtime_agent_calls_its_tool_and_answers(
    engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    CALLED.clear()
    agent = RealtimeAgent(
        name="Assistant",
        instructions="You are a helpful voice assistant. Answer in one short sentence.",
        tools=[current_time],
    )
    runner = RealtimeRunner(
        agent,
        config={
            "model_settings": {
                "model_name": "gpt-realtime",
                "input_audio_transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        },
    )
    session = await runner.run(model_config={"url": engine.ga_url(), "api_key": "local"})
    raw: list[dict[str, Any]] = []
    kinds: list[str] = []
    answer = ""
    async with session:
        pcm = tts_wav("What time is it in Tokyo?") + silence(1200)
        for i in range(0, len(pcm), 4800):
            await session.send_audio(pcm[i : i + 4800])

        async def follow() -> None:
            nonlocal answer
            ended_after_tool = False
            async for event in session:
                kinds.append(event.type)
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    raw.append(event.data.data)
                    data = event.data.data
                    if data.get("type") == "response.output_audio_transcript.done" and CALLED:
                        answer = data["transcript"]
                    if data.get("type") == "response.done" and answer:
                        ended_after_tool = True
                elif event.type == "error":
                    raise AssertionError(f"the agent saw an error: {event.error}")
                if ended_after_tool:
                    return

        await asyncio.wait_for(follow(), 120)

    assert len(CALLED) == 1 and "tokyo" in CALLED[0].lower(), CALLED
    assert "tool_start" in kinds and "tool_end" in kinds
    assert "14:05" in answer, answer
    # the agent's whole configuration was taken: its tool reached the engine's session
    updated = [e for e in raw if e.get("type") == "session.updated"]
    assert any(t.get("name") == "current_time" for t in updated[-1]["session"]["tools"])
    problems = [p for e in raw for p in check_event("ga", e).problems]
    assert problems == [], problems[:5]
