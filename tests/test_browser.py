"""The page in a real Chromium, against the middle tier and the local engine, with a fake mic.

Playwright's sync API drives Debian's Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it,
``playwright install`` is never needed). The microphone is Chromium's fake capture device playing
a WAV made by the engine's own TTS: speech, then silence. The middle tier runs in a thread of its
own (``ServerThread``) in front of a scripted engine, so the conversation is deterministic.

Chromium, the middle tier and the engine are set up by ``helpers.py`` (shared with the other
browser tests); the page's state is read from ``window.__rt`` and the DOM.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoai_realtime.server import ServerThread
from helpers import Browser, engine_thread, make_server, shown, wait_idle, write_wav

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"
SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {
            "user": "time in tokyo",
            "function_call": {"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}},
        },
        {"after_function": "current_time", "reply": "In Tokyo it is {output}."},
        {
            "user": "convert",
            "function_call": {
                "name": "convert_units",
                "arguments": {"value": 10, "from_unit": "miles", "to_unit": "km"},
            },
        },
        {
            "after_function": "convert_units",
            "reply": "Ten miles are about sixteen point one kilometres.",
        },
        {
            "user": "story",
            "reply": (
                "Once upon a time there was a small cat who lived by the sea. "
                "Every morning she walked along the beach to watch the boats come in. "
                "The fishermen knew her well and always saved a little fish for her. "
                "One day a storm came, and the boats did not come back in the evening. "
                "The cat waited on the pier all night, looking out at the dark water. "
                "At dawn she saw a small light far away, and then another, and another."
            ),
        },
        {"user": "hello", "reply": "Hello! How can I help you today?"},
        {"user": "weather", "reply": "It is sunny and warm today."},
    ],
}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser_engine(speech_stack: Any) -> Iterator[Any]:
    yield from engine_thread(speech_stack, brain="scripted", script=SCRIPT)


@pytest.fixture(scope="module")
def web(browser_engine: Any) -> Iterator[ServerThread]:
    """``serve`` with the local engine: the page, the relay and the demo tools."""
    server = make_server(browser_engine)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def open_browser(chromium_path: str) -> Iterator[Callable[[Path], Browser]]:
    made: list[Browser] = []

    def make(wav: Path) -> Browser:
        b = Browser(chromium_path, wav)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# ------------------------------------------------------------------------------------ tests


def test_spoken_conversation_barge_in_typed_message_tool_and_stop(
    web: ServerThread,
    browser_engine: Any,
    open_browser: Callable[[Path], Browser],
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    tmp_path: Path,
) -> None:
    # 1 s of silence, a request for a long story, 5 s in which the story starts playing, a
    # second utterance that barges in, then silence.
    first = tts_wav("Please tell me a story.")
    second = tts_wav("Hello there.")
    wav = write_wav(
        tmp_path / "mic.wav",
        silence(1000) + first + silence(5000) + second + silence(20000),
    )
    base = wait_idle(browser_engine)  # the previous test's sessions may still be closing
    b = open_browser(wav)
    page = b.page
    page.goto(web.url + "?transport=websocket")
    b.wait(
        "document.getElementById('start') && !document.getElementById('start').disabled",
        what="the page to load its configuration",
    )
    assert page.locator("#tools li").count() == 2  # the server tools are listed
    page.click("#start")

    # the session starts
    b.wait("rt.state === 'connected'", 20, "the session to start")
    assert page.locator("#transcript .marker", has_text="<< Session Started >>").count() == 1
    browser_engine.wait_sessions(base + 1, 10)  # the page's session reached the engine

    # the user's words appear as a transcript
    b.wait(
        shown("user", "/story/i.test(n.textContent)"),
        30,
        "the user's transcript",
    )
    # the assistant's reply appears and its audio is played
    b.wait(
        shown("assistant", "n.textContent.startsWith('Once upon a time')"),
        30,
        "the assistant's reply",
    )
    b.wait("Object.values(rt.playedMs).some(ms => ms > 300)", 20, "audio to be played")
    # the spoken turn counts in the latency tiles: end of speech -> first audio heard
    b.wait("rt.turnLog.some(t => t.via === 'voice' && t.until === 'audio')", 20, "its latency")
    assert page.locator("#transcript .marker", has_text="<< Speech Started >>").count() >= 1

    # the second utterance barges in: playback stops and a truncate goes out with the played ms
    truncate = b.wait(
        "rt.sent.find(e => e.type === 'conversation.item.truncate')", 30, "the truncate"
    )
    assert truncate["content_index"] == 0
    assert truncate["audio_end_ms"] > 300
    played = b.rt(f"rt.playedMs[{truncate['item_id']!r}]")
    assert played == truncate["audio_end_ms"]
    # the engine accepted it: truncated at exactly that point, no error
    truncated = b.wait(
        "rt.events.find(e => e.type === 'conversation.item.truncated')", 10, "truncated"
    )
    assert truncated["item_id"] == truncate["item_id"]
    assert truncated["audio_end_ms"] == truncate["audio_end_ms"]
    # the story was cut short: far less than its whole length was played
    page.wait_for_timeout(1000)
    assert b.rt(f"rt.playedMs[{truncate['item_id']!r}]") == truncate["audio_end_ms"]
    # ... and the second utterance is answered
    b.wait(
        shown("assistant", "n.textContent.includes('How can I help you today')"),
        30,
        "the answer to the second utterance",
    )

    # a typed message is answered
    b.type_message("How is the weather?")
    b.wait(
        shown("assistant", "n.textContent.includes('sunny and warm')"),
        30,
        "the answer to the typed message",
    )
    # a typed turn counts too: message sent -> first audio heard
    b.wait("rt.turnLog.filter(t => t.via === 'typed').length === 1", 20, "the typed latency")

    # a server-side tool runs and is shown, with its arguments and result
    page.fill("#message", "Please convert ten miles to kilometres.")
    page.click("#send")
    tool = page.locator("#transcript .msg.tool")
    b.wait(
        "document.querySelector('#transcript .msg.tool:not(.running) .tool-output')",
        30,
        "the tool result",
    )
    assert tool.locator(".tool-name").inner_text() == "convert_units"
    assert '"from_unit": "miles"' in tool.locator(".tool-args").inner_text()
    assert "10 mi = 16.0934 km" in tool.locator(".tool-output").inner_text()
    b.wait(
        shown("assistant", "n.textContent === 'Ten miles are about sixteen point one kilometres.'"),
        30,
        "the whole answer after the tool",
    )
    # the tool's turn runs from the message sent to the audio of the reply after the call
    b.wait("rt.turnLog.filter(t => t.via === 'typed').length === 2", 20, "the tool turn")
    assert page.locator("[data-stat=turns]").inner_text() == str(b.rt("rt.turnLog.length"))
    # A typed message cancels the reply in progress; when that reply ends on its own first, the
    # cancel is answered with response_cancel_not_active: a benign race the page must not show.
    errors = b.rt("rt.events.filter(e => e.type === 'error')")
    assert [e for e in errors if e.get("code") != "response_cancel_not_active"] == [], errors
    assert page.locator("#transcript .notice").count() == 0
    assert b.rt("rt.lastError") is None

    # a picture of the page in use, for the README: written to docs/ when missing or when
    # AOAI_UPDATE_SCREENSHOT=1, so an ordinary test run leaves the work tree clean
    page.locator("#transcript").evaluate("n => n.scrollTop = n.scrollHeight")
    png = page.screenshot()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    if os.environ.get("AOAI_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)

    # Stop closes the upstream
    page.click("#stop")
    b.wait("rt.state === 'idle'", 30, "idle after Stop")
    browser_engine.wait_sessions(base, 30)
    assert page.locator("#transcript .marker", has_text="<< Session Ended >>").count() == 1
    assert b.problems == [], b.problems


def test_upstream_failure_shows_one_message_and_start_works_again(
    web: ServerThread,
    browser_engine: Any,
    open_browser: Callable[[Path], Browser],
    silence: Callable[[int], bytes],
    tmp_path: Path,
) -> None:
    wav = write_wav(tmp_path / "quiet.wav", silence(30000))
    b = open_browser(wav)
    page = b.page
    page.goto(web.url + "?transport=websocket")
    b.wait("!document.getElementById('start').disabled", what="the page to load")

    # the engine refuses the upstream handshake with 401
    b.start_refused(web, "refuse:401")
    error = b.rt("rt.lastError")
    assert error["type"] == "relay_error" and error["code"] == "upstream_unauthorized"
    banner = page.locator("#banner")
    assert banner.is_visible()
    assert "refused the credentials" in banner.inner_text()
    assert "Start" in banner.inner_text()
    assert b.rt("rt.events.filter(e => e.type === 'error').length") == 1
    page.wait_for_timeout(1500)  # no loop: nothing more happens on its own
    assert b.rt("rt.events.filter(e => e.type === 'error').length") == 1
    assert b.rt("rt.states.filter(s => s === 'connecting').length") == 1

    # the session dies mid-way: the engine closes the socket after a few events
    web.upstreams.local_query = {"fault": "close:1011:after=3"}
    try:
        page.click("#start")
        b.wait("rt.lastError", 20, "the second error")
    finally:
        web.upstreams.local_query = {}
    assert b.rt("rt.lastError.code") == "upstream_closed"
    assert "1011" in banner.inner_text()
    b.wait("rt.state === 'idle'", 30, "idle after the second error")

    # Start works again, and the session is healthy
    page.click("#start")
    b.wait("rt.state === 'connected'", 20, "the restarted session")
    assert not banner.is_visible()
    b.type_message("Hello")
    b.wait(
        shown("assistant", "n.textContent.includes('How can I help you today')"),
        30,
        "an answer after the restart",
    )
    page.click("#stop")
    b.wait("rt.state === 'idle'", 30)
    assert b.problems == [], b.problems
