"""What ``make run`` gives a new user: asked by voice for the time in Tokyo, the page's default
local engine (the SmolLM2 brain, not a script) runs the server tool and speaks its result.

Chromium's fake microphone plays the question in the engine's own voice; the middle tier runs
the demo tools in front of a local engine with the default brain. ``current_time`` is the demo
tool's twin (same name, description and schema) with a fixed clock: the brain is deterministic,
but what it says depends on the time it is told, and a test must not depend on the hour it runs
at (at 00:10 in Tokyo the 135M model said "02", from the date, instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoai_realtime.server import Policy, ServerThread
from aoai_realtime.server.tools import demo_tools
from aoai_realtime.tools import Tool
from helpers import Browser, engine_thread, make_server, shown, wait_idle, write_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_engine(speech_stack: Any) -> Iterator[Any]:
    yield from engine_thread(speech_stack, brain="local")


CLOCK = {"time": "2:05 PM", "time_24h": "14:05", "date": "Tuesday 1 December 2026"}


def fixed_current_time(timezone: str) -> dict[str, Any]:
    return {**CLOCK, "timezone": timezone}


@pytest.fixture(scope="module")
def web(local_engine: Any) -> Iterator[ServerThread]:
    tools = {t.name: t for t in demo_tools()}
    real = tools["current_time"]
    fixed_current_time.__doc__ = real.fn.__doc__
    twin = Tool.from_function(fixed_current_time, name=real.name)
    assert twin.schema() == real.schema()  # what the brain sees is the demo tool
    tools["current_time"] = twin
    server = make_server(local_engine, policy=Policy.build(tools=list(tools.values())))
    try:
        yield server
    finally:
        server.close()


def test_asked_by_voice_the_local_brain_runs_the_tool_and_speaks_its_result(
    web: ServerThread,
    local_engine: Any,
    chromium_path: str,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    tmp_path: Path,
) -> None:
    wav = write_wav(
        tmp_path / "mic.wav",
        silence(1000) + tts_wav("What time is it in Tokyo?") + silence(15000),
    )
    base = wait_idle(local_engine)
    b = Browser(chromium_path, wav)
    try:
        page = b.page
        page.goto(web.url + "?transport=websocket")
        b.wait(
            "document.getElementById('start') && !document.getElementById('start').disabled",
            what="the page to load its configuration",
        )
        page.click("#start")
        b.wait("rt.state === 'connected'", 20, "the session to start")
        b.wait(shown("user", "/tokyo/i.test(n.textContent)"), 40, "the user's transcript")

        # the tool card: current_time, with Tokyo, and the real clock's answer
        b.wait(
            "document.querySelector('#transcript .msg.tool:not(.running) .tool-output')",
            40,
            "the tool result",
        )
        tool = page.locator("#transcript .msg.tool")
        assert tool.locator(".tool-name").inner_text() == "current_time"
        assert "Tokyo" in json.loads(tool.locator(".tool-args").inner_text())["timezone"]
        assert '"time": "2:05 PM"' in tool.locator(".tool-output").inner_text()

        # the answer says that time, and is heard
        b.wait(shown("assistant", "n.textContent.includes('2:05')"), 40, "an answer saying 2:05")
        b.wait("rt.turnLog.length >= 1", 30, "the turn's first audio")
        assert b.rt("rt.lastError") is None
        page.click("#stop")
        b.wait("rt.state === 'idle'", 30, "idle after Stop")
        local_engine.wait_sessions(base, 30)
        assert b.problems == [], b.problems
    finally:
        b.close()
