"""Malformed client events, seeded and bounded: against the local engine, and through the middle
tier. Every refusal is an ``error`` the client can act on (a code, and the parameter for a bad
field), never a ``server_error``; nothing is logged as a failure; no session ends.

The events are valid ones with one to three fields replaced by a value of another type, removed,
or joined by an unknown field. The run ends with a sentinel the engine must refuse: once its
error has come, every event before it has been handled (events are handled in order).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from aoai_realtime.channel import Channel
from helpers import ENGINE_SCRIPT, engine_thread, make_server, memory_engine

SEED = 20261201
EVENTS = 1500

GA_SESSION = {
    "type": "realtime",
    "instructions": "Be brief.",
    "output_modalities": ["text"],
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
        "output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": 24000}},
    },
    "max_output_tokens": 50,
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
}
PREVIEW_SESSION = {
    "modalities": ["text"],
    "instructions": "Be brief.",
    "voice": "alloy",
    "input_audio_format": "pcm16",
    "turn_detection": None,
    "temperature": 0.8,
    "max_response_output_tokens": 50,
}
USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
COMMON: list[dict[str, Any]] = [
    {"type": "conversation.item.create", "item": USER},
    {
        "type": "response.create",
        "response": {
            "instructions": "Hi.",
            "max_output_tokens": 20,
            "metadata": {"a": "b"},
            "input": [USER],
        },
    },  # fmt: skip
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 9},
    {"type": "conversation.item.delete", "item_id": "i"},
    {"type": "response.cancel"},
]
VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 10**12, "", "x", [], [1], {}, {"type": []}]
FIELD_CODES = {"invalid_value", "unknown_parameter", "missing_required_parameter", "invalid_type"}


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


def mutated(rng: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(event))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(out) if p != ("type",)]
        if not paths:
            break
        path = rng.choice(paths)
        parent: Any = out
        for key in path[:-1]:
            parent = parent[key]
        roll = rng.random()
        if roll < 0.7:
            parent[path[-1]] = json.loads(json.dumps(rng.choice(VALUES)))
        elif roll < 0.85 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[f"bogus_{rng.randint(0, 9)}"] = 1
    return out


def events(dialect: str, count: int) -> list[str]:
    rng = random.Random(SEED)
    update = {
        "type": "session.update",
        "session": GA_SESSION if dialect == "ga" else PREVIEW_SESSION,
    }
    seeds = [update, *COMMON]
    return [json.dumps(mutated(rng, rng.choice(seeds))) for _ in range(count)]


class Tally:
    """What came back: the errors by (type, code), and the field errors without a parameter."""

    def __init__(self) -> None:
        self.errors: dict[tuple[str, str], int] = {}
        self.unnamed: list[dict[str, Any]] = []
        self.done = asyncio.Event()

    def see(self, event: dict[str, Any]) -> None:
        if event.get("type") != "error":
            return
        error = event["error"]
        key = (str(error.get("type")), str(error.get("code")))
        self.errors[key] = self.errors.get(key, 0) + 1
        if error.get("code") in FIELD_CODES and not error.get("param"):
            self.unnamed.append(error)
        if error.get("event_id") == "evt_sentinel":
            self.done.set()

    def check(self) -> None:
        server_errors = {k: v for k, v in self.errors.items() if "server_error" in k}
        assert not server_errors, self.errors
        assert not self.unnamed, self.unnamed[:5]
        assert sum(self.errors.values()) > EVENTS // 3  # the malformed events were refused


SENTINEL = json.dumps({"type": "no.such.event", "event_id": "evt_sentinel"})


def no_failures_logged(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures[:5]]


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_fuzzed_events_to_the_engine(dialect: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    path = (
        "/openai/v1/realtime?model=m"
        if dialect == "ga"
        else "/openai/realtime?api-version=2025-04-01-preview&deployment=m"
    )
    tally = Tally()
    async with memory_engine() as engine:
        channel: Channel = await engine.open_channel(path)

        async def read() -> None:
            while (text := await channel.receive()) is not None:
                tally.see(json.loads(text))

        reader = asyncio.create_task(read())
        for text in events(dialect, EVENTS):
            await channel.send(text)
        await channel.send(SENTINEL)
        await asyncio.wait_for(tally.done.wait(), 60)
        assert not reader.done()  # the session is still open
        await channel.close()
        await reader
    tally.check()
    no_failures_logged(caplog)


@pytest.fixture(scope="module")
def fuzz_engine() -> Iterator[Any]:
    yield from engine_thread(None, brain="scripted", script=ENGINE_SCRIPT, no_speech=True)


async def test_fuzzed_events_through_the_middle_tier(
    fuzz_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    srv = make_server(fuzz_engine)
    tally = Tally()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(srv.ws_url, max_msg_size=32 * 1024 * 1024)

            async def read() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        tally.see(json.loads(msg.data))

            reader = asyncio.create_task(read())
            for text in events("ga", EVENTS):
                await ws.send_str(text)
            await ws.send_str(SENTINEL)
            await asyncio.wait_for(tally.done.wait(), 60)
            assert not reader.done() and not ws.closed  # the page's session goes on
            assert ("relay_error", "relay_internal_error") not in tally.errors
            await ws.close()
            await reader
    finally:
        srv.close()
    tally.check()
    no_failures_logged(caplog)
