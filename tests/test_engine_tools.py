"""The local brain (SmolLM2) calls function tools: chosen by the request, arguments that validate.

These talk to the default local engine (``engine``: the real models, no script) over a real
WebSocket. The brain chooses greedily and writes arguments greedily under a grammar, so a given
request always gets the same decision: the tests name requests and expect exact tools. The
function outputs they send back are fixed (not the real clock), so the answer is too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from aoai_realtime.engine import toolcalls as tc
from aoai_realtime.engine.workers import SharedSpeech, WorkPriority, speculative_context
from aoai_realtime.server.tools import demo_tools
from helpers import connect, text_of

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Today's weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city."}},
        "required": ["city"],
    },
}
TOOLS = [t.schema() for t in demo_tools()] + [WEATHER]
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}


def calls_of(done: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in done["response"]["output"] if o["type"] == "function_call"]


def check_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments, which must be valid JSON that its tool's schema accepts."""
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, SCHEMAS[call["name"]])
    return arguments


async def test_typed_requests_call_the_tool_that_answers_them(engine: Any) -> None:
    async with connect(engine) as rt:
        await rt.update(tools=TOOLS, output_modalities=["text"])
        done = await rt.say("What time is it in Tokyo?")
        [call] = calls_of(done)
        assert call["name"] == "current_time"
        assert "Tokyo" in check_arguments(call)["timezone"]
        # the arguments streamed as the service streams them
        args_done = [e for e in rt.events if e["type"] == "response.function_call_arguments.done"]
        assert args_done[-1]["arguments"] == call["arguments"]

        done = await rt.say("Convert 10 kilometers to miles.")
        [call] = calls_of(done)
        assert call["name"] == "convert_units"
        arguments = check_arguments(call)
        assert arguments["value"] == 10
        assert {arguments["from_unit"], arguments["to_unit"]} == {"kilometers", "miles"}

        done = await rt.say("What's the weather like in Rome?")
        [call] = calls_of(done)
        assert call["name"] == "get_weather" and check_arguments(call) == {"city": "Rome"}


async def test_plain_questions_are_answered_in_words(engine: Any) -> None:
    async with connect(engine) as rt:
        await rt.update(tools=TOOLS, output_modalities=["text"])
        for question in ("What is the capital of France?", "Tell me a joke.", "Thank you!"):
            done = await rt.say(question)
            assert calls_of(done) == [], (question, done["response"]["output"])
            assert rt.reply_of(done["response"]["id"]).strip()


async def test_the_tools_are_read_when_the_session_sets_them(
    engine: Any, speech_stack: Any
) -> None:
    # The first turn after a session.update with tools should only score its own words: the
    # local brain reads the tools' descriptions into its scorer right away, behind any turn's
    # work. Each check below runs on the model's thread after the work queued before it.
    tool = {
        "type": "function",
        "name": "water_the_plants",
        "description": "Water the plants on the balcony for a number of minutes.",
        "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}},
    }
    shared = SharedSpeech.for_stack(speech_stack)

    def read() -> bool:
        scorer = getattr(shared, "_scorer", None)
        return scorer is not None and tc.tool_context(tool) in scorer._seqs

    async def after_queued_work() -> bool:
        run = speculative_context(WorkPriority()).run
        return await asyncio.wrap_future(run(lambda: shared._llm.submit(read)))

    async with connect(engine) as rt:
        assert not await after_queued_work()
        await rt.update(tools=[tool])
        for _ in range(50):  # the read is queued as the update is answered; bounded
            if await after_queued_work():
                break
        assert await after_queued_work()


@pytest.mark.parametrize(
    ("result", "said"),
    [
        ({"time": "14:05", "date": "Tuesday 01 December 2026", "timezone": "Asia/Tokyo"}, "14:05"),
        # the demo tool's shape: the day of the month ("2") must not be said for the time
        (
            {
                "time": "3:04 AM",
                "time_24h": "03:04",
                "date": "Wednesday 2 December 2026",
                "timezone": "Asia/Tokyo",
                "utc_offset": "+09:00",
            },
            "3:04 AM",
        ),
    ],
    ids=["24h", "am-pm"],
)
async def test_the_answer_says_what_the_function_returned(
    engine: Any, result: dict[str, str], said: str
) -> None:
    async with connect(engine) as rt:
        await rt.update(tools=TOOLS, output_modalities=["text"])
        [call] = calls_of(await rt.say("What time is it in Tokyo?"))
        await rt.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": json.dumps(result),
                },
            }
        )
        await rt.send({"type": "response.create"})
        done = await rt.wait_for("response.done")
        assert calls_of(done) == []  # under "auto", a function's output is answered
        answer = rt.reply_of(done["response"]["id"])
        assert said in answer, answer


@pytest.mark.parametrize(
    ("tool_choice", "question", "expected"),
    [
        ("none", "What time is it in Tokyo?", None),
        ("required", "Thank you!", "any"),
        ({"type": "function", "name": "get_weather"}, "What time is it in Tokyo?", "get_weather"),
    ],
    ids=["none", "required", "named"],
)
async def test_tool_choice_is_honoured(
    engine: Any, tool_choice: Any, question: str, expected: str | None
) -> None:
    async with connect(engine) as rt:
        await rt.update(tools=TOOLS, tool_choice=tool_choice, output_modalities=["text"])
        done = await rt.say(question)
        calls = calls_of(done)
        if expected is None:
            assert calls == [] and rt.reply_of(done["response"]["id"]).strip()
            return
        [call] = calls
        if expected != "any":
            assert call["name"] == expected
        check_arguments(call)


async def test_a_spoken_question_calls_the_tool(
    engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with connect(engine) as rt:
        await rt.update(tools=TOOLS, audio={"input": {"transcription": {"model": "whisper-1"}}})
        await rt.append(tts_wav("What time is it in Tokyo?") + silence(900))
        done = (await rt.until("response.done"))[-1]
        kind = "conversation.item.input_audio_transcription.completed"
        heard = next((e for e in rt.events if e["type"] == kind), None) or await rt.wait_for(kind)
        assert "tokyo" in heard["transcript"].lower()
        [call] = calls_of(done)
        assert call["name"] == "current_time"
        assert "Tokyo" in check_arguments(call)["timezone"]
        # a response that only calls a function says nothing
        assert text_of(rt.events, "response.output_audio_transcript.delta") == ""


# ------------------------------------------------------------------------------ the rules alone


def test_the_choice_rules_without_a_model() -> None:
    from aoai_realtime.engine import toolcalls as tc

    scores = {"current_time": -10.0, "get_weather": -14.0}
    assert tc.choose([-12.0, -13.0], scores, "auto").name == "current_time"  # margin 2 > 1
    assert tc.choose([-10.5], scores, "auto").name is None  # margin 0.5: answer in words
    assert tc.choose([-10.5], scores, "required").name == "current_time"  # no margin needed
    assert tc.choose([-10.5], {}, "required").name is None
    # runs of the user's words, without function words at their ends
    assert tc.spans("What time is it in Tokyo?") == ["time", "Tokyo"]
    assert "New York" in tc.spans("Tell me the time in New York.")
    # an argument's options: the user's words not taken by another argument, their numbers
    unit = {"type": "string"}
    taken = tc.value_options(unit, "Convert 10 kilometers to miles.", [10, "kilometers"])
    assert taken is not None and [v for _, v in taken] == ["Convert", "miles"]
    number = tc.value_options({"type": "number"}, "Convert 10 km", [])
    assert number == [("10", 10)]
    assert tc.value_options({"type": "integer"}, "no number here", []) == []
    assert tc.value_options({"type": "array"}, "x", []) is None  # written under a grammar
    day = tc.value_options({"type": "string", "enum": ["Monday", "Friday"]}, "x", [])
    assert day == [('"Monday"', "Monday"), ('"Friday"', "Friday")]
    # the answer after a tool may say the output's numbers and the user's, rounded too
    assert tc.result_numbers("Convert 10 km", '{"result": 6.21371}') == [
        "6.21371",
        "6.21",
        "6.2",
        "10",
        "6",
    ]
    grammar = tc.numbers_grammar(["14:05"])
    assert grammar is not None and '"14:05"' in grammar
    # the first number said is the user's or an output's first: the time, not the day after it
    assert tc.lead_numbers("in 3 days", '{"time": "3:04 AM", "date": "Wednesday 2 December"}') == [
        "3:04",
        "3",
    ]
    assert tc.numbers_grammar([]) is None
    facts = tc.result_facts("current_time", '{"time": "14:05", "zone": {"name": "Asia/Tokyo"}}')
    assert facts == "You looked this up with current time: time: 14:05; zone name: Asia/Tokyo."
