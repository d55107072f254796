"""The page in a real Chromium when the middle tier resumes a session, and with hidden tool results.

Same set-up as ``tests/test_browser.py`` (Debian's Chromium through Playwright's sync API, a fake
microphone playing silence, the middle tier in a thread of its own in front of a scripted engine);
the page's state is read from ``window.__rt`` and the DOM.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aoai_realtime.server import (
    LocalEngine,
    Policy,
    ResumeOptions,
    ServerConfig,
    ServerThread,
    Upstreams,
)
from aoai_realtime.server.tools import demo_tools
from helpers import Browser, engine_thread, write_wav

pytestmark = pytest.mark.browser

SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {"user_regex": "my name is (\\w+)", "reply": "Nice to meet you, {1}."},
        {"user": "which turn", "reply": "This is turn {turn}."},
        {
            "user": "convert",
            "function_call": {
                "name": "convert_units",
                "arguments": {"value": 10, "from_unit": "miles", "to_unit": "km"},
            },
        },
        {"after_function": "convert_units", "reply": "Ten miles are about sixteen kilometres."},
    ],
}
ASSISTANT_SAYS = (
    "[...document.querySelectorAll('#transcript .msg.assistant .text')]"
    ".some(n => n.textContent.includes({text!r}))"
)


@pytest.fixture(scope="module")
def page_engine(speech_stack: Any) -> Iterator[Any]:
    yield from engine_thread(speech_stack, brain="scripted", script=SCRIPT)


def serve(engine: Any, **policy: Any) -> ServerThread:
    upstreams = Upstreams(
        settings=None, local=LocalEngine.external(engine.http_url), listen_host="127.0.0.1"
    )
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        policy=Policy.build(tools=demo_tools(), **policy),
        resume_options=ResumeOptions(backoff_s=(0.0, 0.2, 0.4)),
    )
    return ServerThread(config, upstreams)


@pytest.fixture
def browser(chromium_path: str, tmp_path: Path) -> Iterator[Browser]:
    wav = write_wav(tmp_path / "quiet.wav", b"\x00\x00" * 24000 * 40)
    b = Browser(chromium_path, wav)
    yield b
    b.close()


def start(b: Browser, server: ServerThread) -> None:
    b.page.goto(server.url + "?transport=websocket")
    b.wait("!document.getElementById('start').disabled", what="the page to load")
    b.page.click("#start")
    b.wait("rt.state === 'connected'", 20, "the session to start")


def test_resumed_session_is_an_info_notice_and_the_conversation_goes_on(
    browser: Browser, page_engine: Any
) -> None:
    server = serve(page_engine)
    server.upstreams.local_query = {"fault": "expire:3"}  # the first upstream session only
    server.upstreams.local_resume_query = {}
    try:
        b = browser
        start(b, server)
        b.type_message("My name is Ada.")
        b.wait(ASSISTANT_SAYS.format(text="Nice to meet you, Ada."), 30, "the first answer")
        # the service ends the session; the middle tier resumes it and tells the page
        b.wait("rt.notices.length", 15, "the session_resumed notice")
        page = b.page
        assert b.rt("rt.notices.map(n => n.code)") == ["session_resumed"]
        assert page.locator("#transcript .marker", has_text="<< Session Resumed >>").count() == 1
        notice = page.locator("#transcript .notice.info")
        assert notice.count() == 1 and "session_expired" in notice.inner_text()
        assert "2 items restored" in notice.inner_text()
        # not fatal: no banner, no error, still connected, and the conversation goes on
        assert not page.locator("#banner").is_visible()
        assert b.rt("rt.lastError") is None and b.rt("rt.state") == "connected"
        assert b.rt("rt.states.filter(s => s === 'connecting').length") == 1
        assert page.locator("#transcript .notice.warning").count() == 0
        b.type_message("Which turn is this?")
        b.wait(ASSISTANT_SAYS.format(text="This is turn 2."), 30, "the answer after the resume")
        # the restored items were not shown twice
        assert page.locator("#transcript .msg.user").count() == 2
        assert page.locator("#transcript .msg.assistant").count() == 2
        page.click("#stop")
        b.wait("rt.state === 'idle'", 5)
        assert b.problems == [], b.problems
    finally:
        server.close()


def test_hidden_tool_result_marks_the_call_done(browser: Browser, page_engine: Any) -> None:
    server = serve(page_engine, show_tool_results=False)
    try:
        b = browser
        start(b, server)
        b.type_message("Please convert ten miles to kilometres.")
        b.wait(
            ASSISTANT_SAYS.format(text="Ten miles are about sixteen kilometres."),
            30,
            "the answer after the tool",
        )
        tool = b.page.locator("#transcript .msg.tool")
        assert tool.count() == 1
        assert tool.locator(".tool-name").inner_text() == "convert_units"
        b.wait("!document.querySelector('#transcript .msg.tool.running')", 5, "the call to be done")
        assert "result hidden by the server" in tool.locator(".tool-result").inner_text()
        assert tool.locator(".tool-output").count() == 0  # no result was shown (none was sent)
        assert b.rt("rt.events.filter(e => e.type === 'error').length") == 0
        assert b.problems == [], b.problems
    finally:
        server.close()
