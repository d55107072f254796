"""Brains without the engine: the script format, and a chat-completions brain on a real server."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from aoai_realtime.engine import EngineConfig, EngineThread
from aoai_realtime.engine.brains import (
    BrainFinish,
    BrainRequest,
    ChatCompletionsBrain,
    FunctionCall,
    HistoryItem,
    TextDelta,
    history_window,
)
from aoai_realtime.engine.scripted import ScriptedBrain, ScriptError, parse_script
from helpers import connect

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


def user(text: str, n: int = 0) -> HistoryItem:
    return HistoryItem(id=f"item_{n}", type="message", role="user", text=text)


async def reply(brain: Any, request: BrainRequest) -> list[Any]:
    return [event async for event in brain.reply(request)]


def said(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# ------------------------------------------------------------------------------ scripts


@pytest.mark.parametrize(
    ("script", "complaint"),
    [
        ({"rules": [{"user": "x"}]}, "rule 1: needs 'reply' or 'function_call'"),
        ({"rules": [{"reply": "x", "colour": "red"}]}, "unknown key(s) ['colour']"),
        ({"rules": [{"user_regex": "(", "reply": "x"}]}, "'user_regex' does not compile"),
        ({"rules": [{"turn": 0, "reply": "x"}]}, "'turn' must be a whole number"),
        ({"rules": [{"function_call": {"arguments": {}}}]}, "'function_call' must be"),
        ({"rules": [{"after_function": "f", "user": "x", "reply": "y"}]}, "cannot be combined"),
        ({"rulez": []}, "unknown top-level key(s) ['rulez']"),
    ],
)
def test_script_mistakes_are_named(script: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ScriptError) as info:
        parse_script(script)
    assert complaint in str(info.value)


async def test_scripted_brain_matches_and_fills_templates() -> None:
    brain = ScriptedBrain.from_data(
        {
            "default": "You said: {user} (turn {turn}).",
            "rules": [
                {"turn": 1, "reply": "Welcome!"},
                {
                    "user_regex": r"weather in (?P<city>\w+)",
                    "function_call": {"name": "get_weather", "arguments": {"city": "{city}"}},
                },
                {"after_function": "*", "reply": "{name} says {output}."},
                {"user": "NAME IS", "user_regex": r"is (\w+)", "reply": "Hi {1}!"},
            ],
        }
    )
    history = [user("hello", 1)]
    assert said(await reply(brain, BrainRequest("", history))) == "Welcome!"
    history.append(user("my name is Ada", 2))
    assert said(await reply(brain, BrainRequest("", history))) == "Hi Ada!"
    history.append(user("what is the weather in Oslo?", 3))
    # Without the tool on offer, the function call rule is skipped.
    events = await reply(brain, BrainRequest("", history))
    assert said(events) == "You said: what is the weather in Oslo? (turn 3)."
    events = await reply(brain, BrainRequest("", history, tools=TOOLS))
    call = next(e for e in events if isinstance(e, FunctionCall))
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    events = await reply(brain, BrainRequest("", history, tools=TOOLS, tool_choice="none"))
    assert not any(isinstance(e, FunctionCall) for e in events)
    history += [
        HistoryItem(id="c", type="function_call", name="get_weather", call_id="call_1"),
        HistoryItem(id="o", type="function_call_output", call_id="call_1", output="rain"),
    ]
    assert said(await reply(brain, BrainRequest("", history))) == "get_weather says rain."


async def test_scripted_brain_stops_at_max_output_tokens() -> None:
    brain = ScriptedBrain.from_data([{"reply": "One, two, three four five six."}])
    events = await reply(brain, BrainRequest("", [user("go")], max_output_tokens=4))
    assert said(events) == "One, two,"
    finish = events[-1]
    assert isinstance(finish, BrainFinish) and finish.reason == "length"
    assert finish.output_tokens == 4


def test_history_window_moves_in_steps() -> None:
    items = [user(str(i), i) for i in range(30)]
    assert history_window(items[:11], 6, 6) == items[:11]
    assert history_window(items[:12], 6, 6) == items[6:12]
    assert history_window(items[:17], 6, 6) == items[6:17]  # same start: cached prompt reused
    assert history_window(items[:18], 6, 6) == items[12:18]


# ------------------------------------------------------------------------------ chat completions


class ChatServer:
    """A tiny OpenAI-compatible chat-completions server that streams a fixed answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        if body.get("tools") and "weather" in body["messages"][-1].get("content", ""):
            chunks = [
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": "call_x",
                                        "type": "function",
                                        "function": {"name": "get_weather", "arguments": ""},
                                    }
                                ]
                            },
                        }
                    ]
                },
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]
                            },
                        }
                    ]
                },
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]
                            },
                            "finish_reason": "tool_calls",
                        }
                    ]
                },
            ]
        else:
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                {"choices": [{"index": 0, "delta": {"content": "Hello from"}}]},
                {"choices": [{"index": 0, "delta": {"content": " the chat server."}}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
        for chunk in chunks:
            await send(chunk)
        await send({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 6}})
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop must serve it
async def chat_server() -> AsyncIterator[ChatServer]:
    server = ChatServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/v1"
    yield server
    await runner.cleanup()


async def test_chat_completions_brain_streams_text_and_tool_calls(chat_server: ChatServer) -> None:
    brain = ChatCompletionsBrain(chat_server.url, api_key="k", model="m")
    try:
        events = await reply(brain, BrainRequest("Be brief.", [user("hi")], temperature=0.7))
        assert said(events) == "Hello from the chat server."
        assert events[-1] == BrainFinish("stop", 21, 6)
        headers, body = chat_server.requests[-1]
        assert headers["Authorization"] == "Bearer k"
        assert body["stream"] is True and body["model"] == "m" and body["temperature"] == 0.7
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ]
        history = [
            user("and the weather?"),
        ]
        events = await reply(brain, BrainRequest("", history, tools=TOOLS))
        call = next(e for e in events if isinstance(e, FunctionCall))
        assert (call.name, call.arguments, call.call_id) == (
            "get_weather",
            '{"city": "Oslo"}',
            "call_x",
        )
        _, body = chat_server.requests[-1]
        assert body["tools"] == [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ]
        # Realtime function calls and outputs travel as tool_calls and tool messages.
        history += [
            HistoryItem(
                id="c",
                type="function_call",
                name="get_weather",
                call_id="call_x",
                arguments='{"city": "Oslo"}',
            ),
            HistoryItem(id="o", type="function_call_output", call_id="call_x", output="rain"),
        ]
        await reply(brain, BrainRequest("", history, tools=TOOLS))
        _, body = chat_server.requests[-1]
        assert body["messages"][-2]["tool_calls"][0]["id"] == "call_x"
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": "call_x", "content": "rain"}
    finally:
        await brain.aclose()


def test_azure_chat_deployments_get_the_api_key_header() -> None:
    brain = ChatCompletionsBrain(
        "https://res.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
        api_key="k",
    )
    assert brain._headers()["api-key"] == "k" and "Authorization" not in brain._headers()
    assert brain.url.endswith("/chat/completions?api-version=2024-10-21")


async def test_engine_with_a_chat_completions_brain(chat_server: ChatServer) -> None:
    config = EngineConfig(port=0, no_speech=True, brain="chat", brain_url=chat_server.url)
    with EngineThread(config) as engine:
        async with connect(engine) as rt:
            await rt.update(output_modalities=["text"], tools=TOOLS)
            event = await rt.say("What's the weather?")
    output = event["response"]["output"][0]
    assert output["type"] == "function_call" and output["call_id"] == "call_x"
    assert json.loads(output["arguments"]) == {"city": "Oslo"}


# ------------------------------------------------------------------------------ speaking early


def test_the_first_spoken_piece_ends_early_then_sentences_follow() -> None:
    from aoai_realtime.engine.generation import PieceChunker
    from aoai_realtime.engine.speech.tts import SentenceChunker

    def stream(chunker: PieceChunker, text: str) -> list[str]:
        """Feed the text word by word, as a model streams it; return every piece."""
        pieces: list[str] = []
        for word in re.findall(r"\S+\s*", text):
            pieces += chunker.push(word)
        return pieces + chunker.flush()

    chunker = PieceChunker(SentenceChunker)
    pieces = stream(chunker, "To boil an egg, start with cold water. Then wait ten minutes. Done")
    assert pieces == [
        "To boil an egg,",
        "start with cold water.",
        "Then wait ten minutes.",
        "Done",
    ]
    assert chunker.early_piece == "To boil an egg,"
    pieces = stream(
        PieceChunker(SentenceChunker), "The capital of France is Paris and it is lovely in spring."
    )
    assert pieces == ["The capital of France is", "Paris and it is lovely in spring."]


def test_trailing_quiet_is_trimmed_to_a_short_pause() -> None:
    from aoai_realtime.engine.generation import trim_trailing_quiet

    loud = (b"\x00\x10" * 24) * 100  # 100 ms of signal
    quiet = b"\x00\x00" * 24 * 300  # 300 ms of silence
    assert len(trim_trailing_quiet(loud + quiet, 80)) == len(loud) + 48 * 80
    assert trim_trailing_quiet(quiet, 80) == quiet
