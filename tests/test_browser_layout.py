"""The page's layout in a real Chromium, on a phone (390×844) and on a desktop (1280×800).

Same set-up as ``tests/test_browser.py`` (Debian's Chromium through Playwright's sync API, the
middle tier in a thread of its own in front of a scripted engine), with a speechless engine (its
audio is silence as long as its text) and a microphone that plays silence: every turn is typed.

After Start the connection fields fold to one summary line, and the dock (status, Start, Stop,
Interrupt, the message box) stays on the screen however far the page is scrolled. A typed turn
counts in the latency tiles. Fields that do not apply to the endpoint chosen are disabled.
Screenshots go to pytest's ``tmp_path`` (their paths are printed: look at them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoai_realtime.server import ServerThread
from helpers import ENGINE_SCRIPT, Browser, engine_thread, make_server, shown, write_wav

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

# Where an element is, and whether it is shown and on top at its centre (not under the dock).
PLACE = """sel => {
  const n = document.querySelector(sel);
  const r = n.getBoundingClientRect();
  const cs = getComputedStyle(n);
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {
    top: r.top, left: r.left, bottom: r.bottom, right: r.right,
    width: r.width, height: r.height,
    vw: window.innerWidth, vh: window.innerHeight,
    shown: cs.display !== 'none' && cs.visibility !== 'hidden' && r.width > 0 && r.height > 0,
    onTop: !!hit && (hit === n || n.contains(hit)),
  };
}"""


@pytest.fixture(scope="module")
def layout_engine() -> Iterator[Any]:
    yield from engine_thread(None, no_speech=True, brain="scripted", script=ENGINE_SCRIPT)


@pytest.fixture(scope="module")
def web(layout_engine: Any) -> Iterator[ServerThread]:
    server = make_server(layout_engine)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def browser(
    chromium_path: str, silence: Callable[[int], bytes], tmp_path: Path
) -> Iterator[Browser]:
    b = Browser(chromium_path, write_wav(tmp_path / "quiet.wav", silence(60000)))
    try:
        yield b
    finally:
        b.close()


def in_view(b: Browser, selector: str) -> dict[str, Any]:
    """Assert ``selector`` is shown, whole inside the viewport, and not covered; its place."""
    place: dict[str, Any] = b.page.evaluate(PLACE, selector)
    assert place["shown"], (selector, place)
    assert place["top"] >= 0 and place["bottom"] <= place["vh"], (selector, place)
    assert place["left"] >= 0 and place["right"] <= place["vw"], (selector, place)
    assert place["onTop"], (selector, place)
    return place


def fits_width(b: Browser) -> None:
    """Nothing makes the page scroll sideways."""
    width = b.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= b.page.viewport_size["width"], width


def disabled(b: Browser, *ids: str) -> list[bool]:
    return [b.page.locator(f"#{i}").is_disabled() for i in ids]


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_controls_stay_in_reach_and_typed_turns_count(
    web: ServerThread, browser: Browser, viewport: dict[str, int], tmp_path: Path
) -> None:
    b = browser
    page = b.page
    page.set_viewport_size(viewport)
    page.goto(web.url + "?transport=websocket")
    b.wait("!document.getElementById('start').disabled", what="the page to load")
    assert page.locator("#endpoint").input_value() == "local"

    # Fields that do not apply are disabled: the local engine takes no URL and no deployment.
    assert disabled(b, "custom-endpoint", "deployment") == [True, True]
    page.select_option("#endpoint", "__custom__")
    assert disabled(b, "custom-endpoint", "deployment") == [False, False]
    assert page.evaluate("() => document.activeElement.id") == "custom-endpoint"
    page.select_option("#endpoint", "local")
    assert disabled(b, "custom-endpoint", "deployment") == [True, True]
    # ... and the keyboard skips them: from the endpoint, Tab goes to Start
    page.focus("#endpoint")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "start"

    # Before Start: the connection fields are open, Start and the message box on the first screen
    assert page.locator("#connect-form").is_visible()
    assert not page.locator("#connection-summary").is_visible()
    in_view(b, "#start")
    in_view(b, "#message")
    fits_width(b)
    before = tmp_path / f"{viewport['width']}-before-start.png"
    page.screenshot(path=str(before))

    # Start from the keyboard: the focus goes on to Stop (on a phone Stop takes Start's place)
    page.focus("#start")
    page.keyboard.press("Enter")
    b.wait("rt.state === 'connected'", 20, "the session to start")
    assert page.evaluate("() => document.activeElement.id") == "stop"
    # the connection folds to one line, which can open it again
    b.wait("!rt.connectionOpen", 5, "the connection fields to fold")
    assert not page.locator("#connect-form").is_visible()
    summary = page.locator("#connection-summary")
    assert summary.is_visible()
    assert "Local engine" in summary.inner_text()
    toggle = page.locator("#connection-toggle")
    assert toggle.get_attribute("aria-expanded") == "false"

    # status, Stop, Interrupt and the message box are on the screen
    for selector in ("#status", "#stop", "#interrupt", "#message", "#send"):
        in_view(b, selector)
    fits_width(b)
    assert page.locator("#status .status-text").inner_text() == "Connected"

    # a typed turn counts in the tiles, labelled as typed
    b.wait("!document.getElementById('message').disabled", 5, "the message box")
    b.type_message("hello")
    b.wait(
        shown("assistant", "n.textContent.includes('How can I help you today')"),
        30,
        "the answer to the typed message",
    )
    turn = b.wait("rt.turnLog[0]", 30, "the typed turn's latency")
    assert turn["via"] == "typed" and turn["until"] == "audio", turn
    assert b.rt("rt.turns") == [turn["ms"]]
    assert page.locator("[data-stat=turns]").inner_text() == "1"
    assert page.locator("[data-stat=turns-note]").inner_text() == "0 spoken, 1 typed"
    assert page.locator("[data-stat=last-note]").inner_text() == "typed, to audio"
    assert page.locator("[data-stat=last]").inner_text().endswith(("ms", "s"))
    badge = page.locator("#transcript .msg.assistant .badge.latency")
    assert badge.inner_text().endswith("from send to first audio"), badge.inner_text()

    # a second one: the count goes on
    b.type_message("How is the weather?")
    b.wait("rt.turnLog.length === 2", 30, "the second typed turn's latency")
    assert page.locator("[data-stat=turns]").inner_text() == "2"
    assert page.locator("[data-stat=turns-note]").inner_text() == "0 spoken, 2 typed"
    in_view(b, "#message")
    after = tmp_path / f"{viewport['width']}-connected.png"
    page.screenshot(path=str(after))

    # scrolled to the bottom of the page (the settings), the dock is still there
    page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
    b.wait("window.scrollY > 0", 5, "the page to scroll")
    for selector in ("#status", "#stop", "#interrupt", "#message"):
        in_view(b, selector)
    scrolled = tmp_path / f"{viewport['width']}-scrolled.png"
    page.screenshot(path=str(scrolled))
    page.evaluate("() => window.scrollTo(0, 0)")

    # the summary line opens the fields again (disabled while connected) and folds them
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    assert page.locator("#connect-form").is_visible()
    assert disabled(b, "endpoint", "custom-endpoint", "deployment") == [True, True, True]
    in_view(b, "#stop")
    opened = tmp_path / f"{viewport['width']}-connected-open.png"
    page.screenshot(path=str(opened))
    toggle.click()
    assert not page.locator("#connect-form").is_visible()

    # Stop, then Start again from the folded line: the form submits while hidden
    page.click("#stop")
    b.wait("rt.state === 'idle'", 30, "idle after Stop")
    assert disabled(b, "endpoint", "custom-endpoint", "deployment") == [False, True, True]
    page.click("#start")
    b.wait("rt.state === 'connected'", 20, "the second session")
    assert b.rt("rt.states.filter(s => s === 'connecting').length") == 2
    page.click("#stop")
    b.wait("rt.state === 'idle'", 30, "idle after the second Stop")
    assert b.problems == [], b.problems
    print("screenshots:", before, after, scrolled, opened)


def test_failed_start_opens_the_fields_again(web: ServerThread, browser: Browser) -> None:
    b = browser
    page = b.page
    page.set_viewport_size(PHONE)
    page.goto(web.url + "?transport=websocket")
    b.wait("!document.getElementById('start').disabled", what="the page to load")
    b.start_refused(web, "refuse:401")
    # the fields are back (the fix may be there), the summary line can fold them
    assert b.rt("rt.connectionOpen") is True
    assert page.locator("#connect-form").is_visible()
    assert page.locator("#connection-toggle").get_attribute("aria-expanded") == "true"
    assert page.locator("#banner").is_visible()
    in_view(b, "#start")
    # a custom endpoint without a deployment is refused on the page, the field in focus
    page.select_option("#endpoint", "__custom__")
    page.fill("#custom-endpoint", "https://example-resource.openai.azure.com")
    page.click("#start")
    assert page.locator("#field-error").is_visible()
    assert page.evaluate("() => document.activeElement.id") == "deployment"
    assert b.rt("rt.state") == "idle"
