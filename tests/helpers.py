"""Helpers shared by the test modules: engines and middle tiers on loopback, Chromium pages.

Fixtures live in ``conftest.py``; this module holds what tests call themselves (``import
helpers``: pytest puts this folder on ``sys.path``).

``engine_thread(speech_stack, **options)``  a local engine in a thread of its own, for a fixture
                                             to ``yield from`` (closed afterwards)
``make_server(engine, ...)``                 the middle tier in a thread of its own, in front of
                                             that engine
``Browser(chromium, wav)``                   Debian's Chromium through Playwright's sync API,
                                             its fake microphone playing ``wav``
``shown(role, test)``                        what ``Browser.wait`` waits for: a message shown
``write_wav(path, pcm)``                     PCM16 mono as a WAV file
"""

from __future__ import annotations

import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aoai_realtime.config import Settings
from aoai_realtime.server import LocalEngine, Policy, ServerConfig, ServerThread, Upstreams
from aoai_realtime.server.tools import demo_tools

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def engine_thread(speech_stack: Any, **options: Any) -> Iterator[Any]:
    """An ``EngineThread`` on a free port sharing ``speech_stack``; ``options`` are
    ``EngineConfig`` fields (``brain``, ``script``, ``api_key``...). Closed when resumed."""
    from aoai_realtime.engine import EngineConfig, EngineThread

    thread = EngineThread(EngineConfig(port=0, speech=speech_stack, **options))
    try:
        yield thread
    finally:
        thread.close()


def make_server(
    engine: Any = None,
    *,
    settings: Settings | None = None,
    policy: Policy | None = None,
    host: str = "127.0.0.1",
    observer_factory: Callable[[str, Any], Any] | None = None,
) -> ServerThread:
    """A middle tier on 127.0.0.1 (a free port) with the demo tools, ``engine`` its local
    upstream; ``host`` is the address its policy believes it listens on."""
    local = LocalEngine.external(engine.http_url) if engine is not None else None
    upstreams = Upstreams(settings=settings, local=local, listen_host=host)
    config = ServerConfig(
        host=host,
        port=0,
        policy=policy if policy is not None else Policy.build(tools=demo_tools()),
        observer_factory=observer_factory,
    )
    return ServerThread(config, upstreams, bind="127.0.0.1")


def write_wav(path: Path, pcm: bytes, rate: int = 24000) -> Path:
    """``pcm`` (PCM16 mono) as a WAV file at ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def shown(role: str, test: str) -> str:
    """A condition for :meth:`Browser.wait`: a ``role`` message of the transcript ("user",
    "assistant") whose text passes ``test``, JavaScript over ``n.textContent``."""
    return f"[...document.querySelectorAll('#transcript .msg.{role} .text')].some(n => {test})"


class Browser:
    """One Chromium with a fake microphone file, one page, and every console problem seen.

    The page's Content-Security-Policy forbids ``eval``, so waits poll ``window.__rt`` from
    Python (``page.evaluate`` is not subject to the page's CSP) instead of ``wait_for_function``.
    """

    def __init__(self, executable: str, wav: Path) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=executable,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console.error: {m.text}") if m.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))

    def rt(self, expr: str) -> Any:
        return self.page.evaluate(f"() => {{ const rt = window.__rt; return {expr}; }}")

    def wait(self, expr: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll a JavaScript expression over ``rt`` (window.__rt) until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.rt(expr)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.rt(
                    "({state: rt.state, lastError: rt.lastError, notices: rt.notices, "
                    "events: rt.events.slice(-12).map(e => e.type)})"
                )
                raise AssertionError(f"timed out waiting for {what or expr}: {state}")
            self.page.wait_for_timeout(100)

    def text(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def type_message(self, text: str) -> None:
        self.page.fill("#message", text)
        self.page.press("#message", "Enter")

    def close(self) -> None:
        self.context.close()
        self.browser.close()
        self._pw.stop()
