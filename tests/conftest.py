"""Shared fixtures: the offline speech stack and local engines, started once per test run.

Every engine fixture runs a real engine on 127.0.0.1 (a free port) in a thread of its own with its
own event loop, so any test, sync or async, in any event loop, can connect to it over a real
WebSocket. Engines share one loaded speech stack; connect as many sessions as you like (each is
independent) and request faults per connection with ``?fault=...`` query parameters (see
``docs/engine.md``) instead of starting another engine.

Fixtures:

``speech_stack``     the loaded ``SpeechStack`` (VAD, STT, TTS, LLM); skips if ``[local]`` is missing
``engine``           an engine answering with the local language model (SmolLM2)
``scripted_engine``  an engine answering by :data:`ENGINE_SCRIPT` (deterministic, function call)
``tts_wav``          ``tts_wav(text, voice="alloy") -> bytes``: the text spoken by the engine's
                     own voice, as raw PCM16 mono 24 kHz (no WAV header), cached per text
``silence``          ``silence(ms) -> bytes``: that much PCM16 24 kHz silence
``chromium_path``    Debian's Chromium for Playwright; skips if it or Playwright is missing

The engine objects (:class:`~aoai_realtime.engine.server.EngineThread`) offer ``.url``
(``ws://127.0.0.1:PORT``), ``.http_url``, ``.port``, ``.ga_url(model)`` and
``.preview_url(deployment, api_version)``. Helpers that tests call themselves (engines and middle
tiers of their own, Chromium pages) are in ``helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import CHROMIUM, engine_thread

ENGINE_SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {
            "note": "a function call turn: the client must offer a get_time tool",
            "user": "what time is it",
            "function_call": {"name": "get_time", "arguments": {"timezone": "local"}},
        },
        {"after_function": "get_time", "reply": "It is {output} right now."},
        {"user": "weather", "reply": "It is sunny and warm today."},
        {
            "note": "a long reply, to interrupt (barge-in) or to cut short (max_output_tokens)",
            "user": "story",
            "reply": (
                "Once upon a time there was a small cat who lived by the sea. "
                "Every morning she walked along the beach to watch the boats come in. "
                "The fishermen knew her well and always saved a little fish for her. "
                "One day a storm came, and the boats did not come back in the evening. "
                "The cat waited on the pier all night, looking out at the dark water. "
                "At dawn she saw a small light far away, and then another, and another. "
                "The boats were coming home, and the cat ran to meet them. "
                "From that day on, the fishermen called her the keeper of the harbour."
            ),
        },
        {"user": "hello", "reply": "Hello! How can I help you today?"},
    ],
}
"""The script of ``scripted_engine`` (format: ``docs/scripted-brain.md``).

* a user turn containing "what time is it" -> a ``get_time`` function call with
  ``{"timezone": "local"}`` (only when the session or response offers a ``get_time`` tool);
* the function output -> "It is {output} right now.";
* "weather" -> "It is sunny and warm today."; "hello" -> "Hello! How can I help you today?";
* "story" -> eight sentences (about 25 s of speech): long enough to interrupt;
* anything else -> "I heard you say: {user}."
"""


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
def tts_wav(speech_stack: Any) -> Callable[..., bytes]:
    """``tts_wav(text, voice="alloy") -> bytes``: PCM16 mono 24 kHz speech, cached per text."""
    from aoai_realtime.engine.workers import SharedSpeech

    shared = SharedSpeech.for_stack(speech_stack)
    cache: dict[tuple[str, str], bytes] = {}

    def speak(text: str, voice: str = "alloy") -> bytes:
        key = (text, voice)
        if key not in cache:
            cache[key] = shared.synthesize_blocking(text, voice=voice)
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
    """Debian's Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it): browser tests skip
    without it or without Playwright (``playwright install`` is never needed)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM
