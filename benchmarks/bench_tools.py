"""Function calling by the local brain: right tool, right values, no false calls, how soon.

48 requests (none of them used to tune the brain): 32 for four tools (the time somewhere, the
weather, a unit conversion, a calendar entry) and 16 that need no tool. Each is asked typed
and spoken (the engine's own voice, streamed like a live microphone: 40 ms chunks, each sent
when its last sample has been spoken, then room silence), in a session that has all four tools.

For a tool request, *right* means the call names the expected tool and its arguments validate
against the tool's schema and hold the asked values (the city, the number and both units in
order, the day and a word of the title). A *false call* is a call on a request that needs
none. *Time to the call*: typed, from ``response.create`` to
``response.function_call_arguments.done``; spoken, from the last speech sample.

Baseline, in the same run and process: the same model (SmolLM2 135M) asked for a tool call the
usual way, without constrained decoding: the tools are listed in the prompt, the model writes a
JSON call or an answer freely, and the JSON is parsed.

Run: ``python benchmarks/bench_tools.py [--spoken/--no-spoken] [--only ours|baseline]``
(about 8 minutes on 2 cores with speech).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from _measure import percentile

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Today's weather in a city: temperature and conditions.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city, e.g. Paris."}},
        "required": ["city"],
    },
}
CALENDAR = {
    "type": "function",
    "name": "add_event",
    "description": "Add an event to the user's calendar.",
    "parameters": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "description": "What the event is."},
            "day": {
                "type": "string",
                "enum": [
                    "Monday",
                    "Tuesday",
                    "Wednesday",
                    "Thursday",
                    "Friday",
                    "Saturday",
                    "Sunday",
                ],
            },
        },
        "required": ["title", "day"],
    },
}

# (request, tool or None, {argument: accepted lowercase substrings, or the number})
REQUESTS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("What time is it in Berlin?", "current_time", {"timezone": ["berlin"]}),
    ("Tell me the time in Chicago.", "current_time", {"timezone": ["chicago"]}),
    ("What's the current time in Singapore?", "current_time", {"timezone": ["singapore"]}),
    ("Could you check what time it is in Dubai?", "current_time", {"timezone": ["dubai"]}),
    ("What time is it right now in Lisbon?", "current_time", {"timezone": ["lisbon"]}),
    ("Is it morning or evening in Sydney now?", "current_time", {"timezone": ["sydney"]}),
    ("What is the local time in Toronto?", "current_time", {"timezone": ["toronto"]}),
    ("Do you know the time in Cairo at the moment?", "current_time", {"timezone": ["cairo"]}),
    ("What's the weather in Oslo today?", "get_weather", {"city": ["oslo"]}),
    ("Is it cold in Moscow right now?", "get_weather", {"city": ["moscow"]}),
    ("Will I need an umbrella in London today?", "get_weather", {"city": ["london"]}),
    ("How hot is it in Phoenix?", "get_weather", {"city": ["phoenix"]}),
    ("What's the weather like in Vienna?", "get_weather", {"city": ["vienna"]}),
    ("Is it snowing in Denver?", "get_weather", {"city": ["denver"]}),
    ("Tell me the weather forecast for Dublin.", "get_weather", {"city": ["dublin"]}),
    ("Is it sunny in Athens today?", "get_weather", {"city": ["athens"]}),
    (
        "Convert 5 miles to kilometers.",
        "convert_units",
        {"value": 5, "from_unit": ["mi"], "to_unit": ["k"]},
    ),
    (
        "How many kilograms is 20 pounds?",
        "convert_units",
        {"value": 20, "from_unit": ["pound", "lb"], "to_unit": ["kilo", "kg"]},
    ),
    (
        "What is 100 degrees fahrenheit in celsius?",
        "convert_units",
        {"value": 100, "from_unit": ["fahrenheit", "f"], "to_unit": ["celsius", "c"]},
    ),
    (
        "Convert 3 liters to gallons.",
        "convert_units",
        {"value": 3, "from_unit": ["lit", "l"], "to_unit": ["gal"]},
    ),
    (
        "How many feet are 12 meters?",
        "convert_units",
        {"value": 12, "from_unit": ["met", "m"], "to_unit": ["feet", "ft", "foot"]},
    ),
    (
        "Change 8 ounces into grams.",
        "convert_units",
        {"value": 8, "from_unit": ["ounce", "oz"], "to_unit": ["gram", "g"]},
    ),
    (
        "Convert 25 celsius to fahrenheit.",
        "convert_units",
        {"value": 25, "from_unit": ["celsius", "c"], "to_unit": ["fahrenheit", "f"]},
    ),
    (
        "How many inches is 30 centimeters?",
        "convert_units",
        {"value": 30, "from_unit": ["cent", "cm"], "to_unit": ["inch", "in"]},
    ),
    (
        "Add a doctor's appointment on Wednesday to my calendar.",
        "add_event",
        {"day": ["wednesday"], "title": ["doctor"]},
    ),
    (
        "Put dinner with Sam on Saturday in my calendar.",
        "add_event",
        {"day": ["saturday"], "title": ["dinner", "sam"]},
    ),
    (
        "Schedule a call with the bank on Monday.",
        "add_event",
        {"day": ["monday"], "title": ["call", "bank"]},
    ),
    (
        "Add yoga class on Tuesday to my calendar.",
        "add_event",
        {"day": ["tuesday"], "title": ["yoga"]},
    ),
    (
        "Create a calendar event for a haircut on Friday.",
        "add_event",
        {"day": ["friday"], "title": ["haircut"]},
    ),
    (
        "Remind me of the school play on Thursday, put it in my calendar.",
        "add_event",
        {"day": ["thursday"], "title": ["play", "school"]},
    ),
    (
        "Book a team lunch on Friday in the calendar.",
        "add_event",
        {"day": ["friday"], "title": ["lunch", "team"]},
    ),
    (
        "Add piano lessons on Sunday to my calendar.",
        "add_event",
        {"day": ["sunday"], "title": ["piano"]},
    ),
    ("What is the capital of Spain?", None, {}),
    ("Tell me something funny.", None, {}),
    ("Who painted the Mona Lisa?", None, {}),
    ("Good morning!", None, {}),
    ("How many legs does a spider have?", None, {}),
    ("What's a good name for a dog?", None, {}),
    ("Why is the sea salty?", None, {}),
    ("I'm feeling a bit tired today.", None, {}),
    ("Can you recommend a book?", None, {}),
    ("What does a bee make?", None, {}),
    ("Thanks, that's all.", None, {}),
    ("Sing me a short song.", None, {}),
    ("What is the largest ocean?", None, {}),
    ("How do I boil an egg?", None, {}),
    ("What's your favourite colour?", None, {}),
    ("Nice to meet you.", None, {}),
]
CHUNK_MS = 40
SILENCE_AFTER_MS = 1500


@dataclass
class Result:
    request: str
    want: str | None
    got: str | None = None
    arguments: str = ""
    right: bool = False
    seconds: float | None = None
    heard: str = ""
    notes: list[str] = field(default_factory=list)


def tools() -> list[dict[str, Any]]:
    from aoai_realtime.server.tools import demo_tools

    return [t.schema() for t in demo_tools()] + [WEATHER, CALENDAR]


def holds(arguments: dict[str, Any], checks: dict[str, Any]) -> bool:
    for key, want in checks.items():
        value = arguments.get(key)
        if isinstance(want, int | float):
            if not isinstance(value, int | float) or float(value) != float(want):
                return False
        elif not isinstance(value, str) or not any(w in value.lower() for w in want):
            return False
    return True


def judge(result: Result, call: dict[str, Any] | None, checks: dict[str, Any]) -> None:
    import jsonschema

    schemas = {t["name"]: t["parameters"] for t in tools()}
    if call is None:
        result.right = result.want is None
        return
    result.got, result.arguments = call["name"], call["arguments"]
    if result.want is None or call["name"] != result.want:
        return
    try:
        arguments = json.loads(call["arguments"])
        jsonschema.validate(arguments, schemas[call["name"]])
    except (ValueError, jsonschema.ValidationError) as exc:
        result.notes.append(f"invalid arguments: {str(exc)[:80]}")
        return
    result.right = holds(arguments, checks)


async def ask(
    ws: aiohttp.ClientWebSocketResponse, request: str, pcm: bytes | None
) -> tuple[dict[str, Any] | None, float | None, str]:
    """One request, typed (``pcm`` None) or spoken; the function call made (or None) and the
    seconds from the end of the request to its arguments."""
    start = time.perf_counter()
    if pcm is None:
        await ws.send_json(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": request}],
                },
            }
        )
        await ws.send_json({"type": "response.create"})
        start = time.perf_counter()
        sender = None
    else:
        ended = asyncio.get_running_loop().create_future()
        sender = asyncio.create_task(stream(ws, pcm, ended))
    arguments_at: float | None = None
    heard: list[str] = []
    try:
        async for msg in ws:
            event = json.loads(msg.data)
            kind = event["type"]
            if kind == "response.function_call_arguments.done" and arguments_at is None:
                arguments_at = time.perf_counter()
            elif kind == "conversation.item.input_audio_transcription.completed":
                heard.append(event["transcript"])
            elif kind == "error":
                print(f"    error: {event['error']['message']}", flush=True)
            elif kind == "response.done":
                calls = [o for o in event["response"]["output"] if o["type"] == "function_call"]
                if pcm is not None:
                    start = await ended
                seconds = None if arguments_at is None else arguments_at - start
                return (calls[0] if calls else None), seconds, " / ".join(heard)
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    raise RuntimeError("the engine closed the session")


async def stream(
    ws: aiohttp.ClientWebSocketResponse, pcm: bytes, ended: asyncio.Future[float]
) -> None:
    """``pcm`` then room silence, like a microphone: each chunk sent once its last sample has
    been spoken; ``ended`` gets the time the last speech sample was spoken."""
    step = 48 * CHUNK_MS
    audio = pcm + b"\x00\x00" * 24 * SILENCE_AFTER_MS
    t0 = time.perf_counter()
    for k in range(0, len(audio), step):
        chunk = audio[k : k + step]
        due = t0 + (k + len(chunk)) / 48000
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send_json(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
        )
        if k < len(pcm) <= k + step and not ended.done():
            ended.set_result(t0 + len(pcm) / 48000)
    while True:  # silence until the turn is over (the caller cancels)
        await asyncio.sleep(CHUNK_MS / 1000)
        await ws.send_json(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(b"\x00\x00" * 24 * CHUNK_MS).decode(),
            }
        )


async def run(url: str, speech: dict[str, bytes] | None) -> list[Result]:
    results: list[Result] = []
    async with aiohttp.ClientSession() as http:
        for request, want, checks in REQUESTS:
            # a session per request: each is judged alone, not as a follow-up
            async with http.ws_connect(f"{url}/openai/v1/realtime?model=bench") as ws:
                await ws.receive_json()  # session.created
                session: dict[str, Any] = {"type": "realtime", "tools": tools()}
                if speech is None:
                    session["output_modalities"] = ["text"]
                else:
                    session["audio"] = {
                        "input": {
                            "transcription": {"model": "whisper-1"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                        }
                    }
                await ws.send_json({"type": "session.update", "session": session})
                while (await ws.receive_json())["type"] != "session.updated":
                    pass
                call, seconds, heard = await asyncio.wait_for(
                    ask(ws, request, None if speech is None else speech[request]), 90
                )
            result = Result(request, want, seconds=seconds, heard=heard)
            judge(result, call, checks)
            results.append(result)
            mark = "ok " if result.right else "BAD"
            print(
                f"    {mark} {request[:48]:48s} want {str(want):13s} got {str(result.got):13s} "
                f"{result.arguments[:60]}"
                + (f"  (heard {result.heard!r})" if result.heard and not result.right else ""),
                flush=True,
            )
    return results


def summary(label: str, results: list[Result]) -> dict[str, float]:
    tool = [r for r in results if r.want is not None]
    plain = [r for r in results if r.want is None]
    right = sum(r.right for r in tool)
    false = sum(r.got is not None for r in plain)
    times = [r.seconds * 1000 for r in tool if r.seconds is not None and r.got == r.want]
    row = {
        "right": right / len(tool),
        "false": false / len(plain),
        "p50": percentile(times, 0.5),
        "p95": percentile(times, 0.95),
    }
    print(
        f"  {label:28s} right {right:2d}/{len(tool)} ({row['right']:4.0%})  "
        f"false calls {false:2d}/{len(plain)} ({row['false']:4.0%})  "
        f"time to the call p50 {row['p50']:5.0f} ms  p95 {row['p95']:5.0f} ms"
    )
    return row


def baseline_brain(speech: Any) -> Any:
    """The same model asked for a call the usual way: tools in the prompt, free JSON."""
    from aoai_realtime.engine.brains import BrainRequest, FunctionCall, LocalBrain

    class PromptedToolBrain(LocalBrain):
        async def _tool_call(
            self, request: BrainRequest, messages: list[dict[str, Any]]
        ) -> FunctionCall | None:
            if not request.tool_names or not request.history:
                return None
            last = request.history[-1]
            if last.type != "message" or last.role != "user":
                return None
            listing = "\n".join(
                f"- {t['name']}: {t.get('description', '')} "
                f"Arguments: {json.dumps((t.get('parameters') or {}).get('properties', {}))}"
                for t in request.tools
            )
            system = (
                "You can call these tools:\n" + listing + "\nIf one of them answers the "
                'user, reply only with JSON: {"name": "the tool", "arguments": {...}}. '
                "Otherwise answer in one sentence."
            )
            prompt = [{"role": "system", "content": system}, {"role": "user", "content": last.text}]
            text = ""
            async for piece in self.speech.stream_reply(prompt, 80, 0.0, examples=False):
                text += piece
            start, end = text.find("{"), text.rfind("}")
            try:
                value = json.loads(text[start : end + 1])
            except ValueError:
                return None
            if not isinstance(value, dict) or value.get("name") not in request.tool_names:
                return None
            arguments = value.get("arguments")
            return FunctionCall(
                str(value["name"]), json.dumps(arguments if isinstance(arguments, dict) else {})
            )

    return PromptedToolBrain(speech)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spoken", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--only", choices=("ours", "baseline"))
    args = parser.parse_args()
    from aoai_realtime.engine import EngineConfig, EngineThread
    from aoai_realtime.engine.brains import LocalBrain
    from aoai_realtime.engine.speech import SpeechStack, missing_local_extra
    from aoai_realtime.engine.workers import SharedSpeech

    problem = missing_local_extra()
    if problem:
        print(f"skipped: {problem}")
        return 0
    stack = SpeechStack.load()
    shared = SharedSpeech.for_stack(stack)
    speech: dict[str, bytes] | None = None
    if args.spoken:
        print("making the spoken requests with the engine's voices…", flush=True)
        voices = ["alloy", "echo", "shimmer", "sage"]
        speech = {
            text: shared.synthesize_blocking(text, voice=voices[i % len(voices)])
            for i, (text, _, _) in enumerate(REQUESTS)
        }
    brains = {"ours": LocalBrain(shared), "baseline": baseline_brain(shared)}
    if args.only:
        brains = {args.only: brains[args.only]}
    rows: dict[str, dict[str, float]] = {}
    for name, brain in brains.items():
        engine = EngineThread(EngineConfig(port=0, speech=stack, brain=brain))
        try:
            for mode in ("typed", "spoken"):
                if mode == "spoken" and speech is None:
                    continue
                print(f"{name}, {mode}:", flush=True)
                results = asyncio.run(run(engine.url, None if mode == "typed" else speech))
                rows[f"{name} {mode}"] = summary(f"{name} {mode}", results)
        finally:
            engine.close()
    print()
    print(
        f"{len(REQUESTS)} requests: {sum(1 for r in REQUESTS if r[1])} for tools, "
        f"{sum(1 for r in REQUESTS if not r[1])} plain; aims: >= 90% right, <= 10% false calls"
    )
    for key, row in rows.items():
        print(
            f"  {key:28s} right {row['right']:4.0%}  false {row['false']:4.0%}  "
            f"p50 {row['p50']:5.0f} ms  p95 {row['p95']:5.0f} ms"
        )
    for mode in ("typed", "spoken"):
        ours, base = rows.get(f"ours {mode}"), rows.get(f"baseline {mode}")
        if ours and base:
            ratio = (
                f"{ours['right'] / base['right']:.1f}x the baseline's"
                if base["right"]
                else "the baseline none"
            )
            print(
                f"  {mode}: right {ours['right']:.0%} ({ratio}), "
                f"false calls {ours['false']:.0%} against {base['false']:.0%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
