"""The local engine as the middle tier's upstream: started in process, on first use or at once."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from .logs import log

__all__ = ["LocalEngine"]


def _print_progress(message: str) -> None:
    print(f"  {message}", flush=True)


class LocalEngine:
    """The in-process local engine (or an already running one, given its URL).

    ``await url()`` starts the engine on first use (the speech models load then, with progress
    lines) and returns its base URL (``http://127.0.0.1:PORT``). ``config`` is an
    :class:`~aoai_realtime.engine.config.EngineConfig`; by default the engine listens on an
    ephemeral loopback port and shares this process's event loop, its models running in worker
    threads.
    """

    def __init__(
        self,
        config: Any = None,
        *,
        url: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._progress = progress or _print_progress
        self._url = url.rstrip("/") if url else None
        self._running: Any = None
        self._lock = asyncio.Lock()
        self._failure: str | None = None

    @classmethod
    def external(cls, url: str) -> LocalEngine:
        """An engine started elsewhere (a test fixture, ``aoai-realtime engine``)."""
        return cls(url=url)

    @property
    def started(self) -> bool:
        return self._url is not None

    @property
    def port(self) -> int | None:
        return getattr(self._running, "port", None)

    async def url(self) -> str:
        """The engine's base URL, starting it if needed. Raises ``RuntimeError`` (with what to
        do) if it cannot start."""
        if self._url is not None:
            return self._url
        async with self._lock:
            if self._url is not None:
                return self._url
            if self._failure is not None:
                raise RuntimeError(self._failure)
            try:
                from ..engine.config import EngineConfig
                from ..engine.server import load_speech, start_engine
                from ..engine.speech import missing_local_extra
            except ImportError as exc:
                self._failure = (
                    f"the local engine is not available ({exc}); install it with "
                    "`pip install 'aoai-realtime[local]'`"
                )
                raise RuntimeError(self._failure) from exc
            config = self._config if self._config is not None else EngineConfig(port=0)
            if config.speech is None:
                problem = missing_local_extra()
                if problem is not None:
                    self._failure = problem
                    raise RuntimeError(self._failure)
                self._progress("loading the speech models")
                try:
                    config.speech = await asyncio.to_thread(load_speech, self._progress)
                except Exception as exc:
                    self._failure = f"the speech models failed to load: {exc}"
                    log("engine.failed", 40, error=str(exc))
                    raise RuntimeError(self._failure) from exc
            log("engine.starting", host=config.host, port=config.port or "auto")
            try:
                running = await start_engine(config)
            except Exception as exc:
                self._failure = f"the local engine failed to start: {exc}"
                log("engine.failed", 40, error=str(exc))
                raise RuntimeError(self._failure) from exc
            self._running = running
            self._url = str(running.url).rstrip("/")
            for prefix in ("ws://", "wss://"):
                if self._url.startswith(prefix):
                    self._url = "http" + self._url[2:]
            log("engine.ready", url=self._url)
            return self._url

    async def close(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        self._url = None
        result = running.close()
        if inspect.isawaitable(result):
            await result
