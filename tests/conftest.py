"""Shared fixtures: the offline speech stack and local engines, started once per test run.

Every engine fixture runs a real engine on 127.0.0.1 (a free port) in a thread of its own with its
own event loop, so any test, sync or async, in any event loop, can connect to it over a real
WebSocket. Engines share one loaded speech stack; connect as many sessions as you like (each is
independent) and request faults per connection with ``?fault=...`` query parameters (see
``docs/engine.md``) instead of starting another engine.

Fixtures:

``speech_stack``     the loaded ``SpeechStack`` (VAD, STT, TTS, LLM); skips if ``[local]`` is missing
``engine``           an engine answering with the local language model (SmolLM2)
``scripted_engine``  an engine answering by :data:`~helpers.ENGINE_SCRIPT` (deterministic,
                     function call), with the speech stack
``text_engine``      the same script without any speech model (``no_speech``): for tests that
                     type their turns (protocol, errors, items, truncation, faults). Audio output
                     is silence as long as its text; turn detection and transcription are refused.
                     It does not load (or need) the speech stack.
``tts_wav``          ``tts_wav(text, voice="alloy") -> bytes``: the text spoken by the engine's
                     own voice, as raw PCM16 mono 24 kHz (no WAV header), cached per text
``silence``          ``silence(ms) -> bytes``: that much PCM16 24 kHz silence
``chromium_path``    Debian's Chromium for Playwright; fails under ``make test`` if missing

The engine objects (:class:`~aoai_realtime.engine.server.EngineThread`) offer ``.url``
(``ws://127.0.0.1:PORT``), ``.http_url``, ``.port``, ``.ga_url(model)`` and
``.preview_url(deployment, api_version)``, ``.sessions`` and ``.wait_sessions(n)`` (blocks until
the engine holds ``n`` sessions; ``await .wait_sessions_async(n)`` from a coroutine). Helpers that
tests call themselves (engines and middle tiers of their own, test clients, Chromium pages) are in
``helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import CHROMIUM, ENGINE_SCRIPT, engine_thread


@pytest.fixture(scope="session")
def speech_stack() -> Any:
    """The offline speech stack, loaded once per test run (about 2 s)."""
    from aoai_realtime.engine.speech import SpeechStack, missing_local_extra

    problem = missing_local_extra()
    if problem is not None:
        pytest.skip(problem)
    return SpeechStack.load()


@pytest.fixture(scope="session")
def engine(speech_stack: Any) -> Iterator[Any]:
    """A local engine answering with SmolLM2 (real replies, not deterministic)."""
    yield from engine_thread(speech_stack, brain="local")


@pytest.fixture(scope="session")
def scripted_engine(speech_stack: Any) -> Iterator[Any]:
    """A local engine answering by ``ENGINE_SCRIPT`` (deterministic; includes a function call)."""
    yield from engine_thread(speech_stack, brain="scripted", script=ENGINE_SCRIPT)


@pytest.fixture(scope="session")
def text_engine() -> Iterator[Any]:
    """A scripted engine (``ENGINE_SCRIPT``) without speech models: typed turns only."""
    yield from engine_thread(None, brain="scripted", script=ENGINE_SCRIPT, no_speech=True)


@pytest.fixture(scope="session")
def tts_wav(speech_stack: Any) -> Callable[..., bytes]:
    """``tts_wav(text, voice="alloy") -> bytes``: PCM16 mono 24 kHz speech, cached per text.

    Spoken ``steady`` (without Piper's random noise): the same text is the same samples in every
    run, so a test's pauses and words cannot change from one run to the next."""
    from aoai_realtime.engine.workers import SharedSpeech

    shared = SharedSpeech.for_stack(speech_stack)
    cache: dict[tuple[str, str], bytes] = {}

    def speak(text: str, voice: str = "alloy") -> bytes:
        key = (text, voice)
        if key not in cache:
            cache[key] = shared.synthesize_blocking(text, voice=voice, steady=True)
        return cache[key]

    return speak


@pytest.fixture(scope="session")
def silence() -> Callable[[int], bytes]:
    """``silence(ms) -> bytes``: PCM16 mono 24 kHz digital silence."""

    def make(ms: int) -> bytes:
        return b"\x00\x00" * (24 * ms)

    return make


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium (``/usr/bin/chromium``; ``make test`` installs it when it may):
    without it the browser tests fail under ``make test`` (``AOAI_REALTIME_BROWSER_TESTS=required``,
    set by the Makefile) and are skipped, with the reason, in a plain ``pytest`` run.
    Playwright's own browser download is never needed."""
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} is missing: run `sudo apt-get install -y chromium`"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright is missing: run `pip install -e '.[test]'`"
    if problem is not None:
        if os.environ.get("AOAI_REALTIME_BROWSER_TESTS") == "required":
            pytest.fail(f"browser tests cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    return CHROMIUM
