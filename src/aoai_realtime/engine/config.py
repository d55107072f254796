"""Settings of one local engine: where it listens, who may connect, which brain answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .faults import Faults

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8788
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
DEFAULT_MODEL = "gpt-realtime"


@dataclass
class EngineConfig:
    """What :func:`~aoai_realtime.engine.server.start_engine` needs.

    ``port=0`` picks a free port (read it back from ``RunningEngine.port``). ``brain`` is
    ``"local"`` (SmolLM2), ``"scripted"`` (needs ``script``), ``"chat"`` (needs ``brain_url``) or
    a ready :class:`~aoai_realtime.engine.brains.Brain` object. ``speech`` is an already loaded
    ``SpeechStack`` to share (tests load it once); ``None`` loads it at start-up, unless
    ``no_speech`` is set: then no speech model is loaded or used at all (typed turns only; audio
    output is silence as long as its text; see ``docs/engine.md``, "Without speech"); it needs
    a brain other than ``"local"``. ``script`` is a path to a script file or the script itself
    as a dict/list.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    brain: Any = "local"
    script: str | Path | dict[str, Any] | list[Any] | None = None
    brain_url: str | None = None
    brain_key: str | None = None
    brain_model: str | None = None
    faults: Faults = field(default_factory=Faults)
    allow_query_faults: bool = True
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    speech: Any = None
    no_speech: bool = False
    speculation: bool = True
    """Incremental transcription and replies prepared during pauses (``engine/speculation.py``);
    off, each turn is transcribed whole at ``speech_stopped`` and then answered."""
    session_max_s: float = 30 * 60.0
    send_budget_bytes: int = 16 * 1024 * 1024
    """Unsent events one client may have waiting (encoded size) before the engine closes it with
    1008: a client that sends but does not read cannot make the engine grow."""
    rate_limit_tokens: int = 40_000
    rate_limit_requests: int = 1_000
    call_connect_timeout_s: float = 5.0
    """A WebRTC call whose peer has not connected (ICE and DTLS) by then is torn down."""
    call_media_timeout_s: float = 5.0
    """A connected WebRTC call whose peer sends no audio for this long is torn down (the peer
    has gone: ICE consent checks alone take about 30 s to notice)."""
