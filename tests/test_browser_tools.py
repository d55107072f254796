"""What ``make run`` gives a new user: asked by voice for the time in Tokyo, the page's default
local engine (the SmolLM2 brain, not a script) runs the server tool and speaks its result.

Chromium's fake microphone plays the question in the engine's own voice; the middle tier runs
the demo tools in front of a local engine with the default brain. The tool's output is the real
clock, so the test reads the time from the tool card and looks for it in the spoken answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoai_realtime.server import ServerThread
from helpers import Browser, engine_thread, make_server, shown, wait_idle, write_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_engine(speech_stack: Any) -> Iterator[Any]:
    yield from engine_thread(speech_stack, brain="local")


@pytest.fixture(scope="module")
def web(local_engine: Any) -> Iterator[ServerThread]:
    server = make_server(local_engine)
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
        output = tool.locator(".tool-output").inner_text()
        clock = re.search(r'"time": "(\d\d:\d\d)"', output)
        assert clock is not None, output

        # the answer says that time, and is heard
        b.wait(
            shown("assistant", f"n.textContent.includes({json.dumps(clock.group(1))})"),
            40,
            f"an answer saying {clock.group(1)}",
        )
        b.wait("rt.turnLog.length >= 1", 30, "the turn's first audio")
        assert b.rt("rt.lastError") is None
        page.click("#stop")
        b.wait("rt.state === 'idle'", 30, "idle after Stop")
        local_engine.wait_sessions(base, 30)
        assert b.problems == [], b.problems
    finally:
        b.close()
