"""The local engine as the middle tier's upstream: started in process, on first use or at once.

An in-process engine opens no socket: every page session reaches it through an in-memory
channel (:meth:`LocalEngine.open_channel`), so an audio chunk costs no WebSocket framing and no
loopback round trip on its way. An engine started elsewhere is reached over its WebSocket.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..channel import Channel
from ..protocol.handshake import HandshakeFailure, parse_retry_after
from ..transport import HandshakeFailed
from .logs import log

GA_PATH = "/openai/v1/realtime"

__all__ = ["LocalEngine"]


def _print_progress(message: str) -> None:
    print(f"  {message}", flush=True)


class LocalEngine:
    """The in-process local engine (or an already running one, given its URL).

    ``await start()`` starts the in-process engine (the speech models load then, with progress
    lines); :meth:`open_channel` does so on first use and opens a session in memory. ``config``
    is an :class:`~aoai_realtime.engine.config.EngineConfig`; the engine shares this process's
    event loop, its models running in worker threads, and listens on no port. An engine given
    by ``url`` (:meth:`external`) is reached over its WebSocket at that base URL instead.
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
        return self._url is not None or self._running is not None

    @property
    def in_process(self) -> bool:
        """True when this server runs the engine itself (reached in memory)."""
        return self._url is None

    async def url(self) -> str | None:
        """The base URL of an external engine; ``None`` for the in-process one (it has none)."""
        return self._url

    async def open_channel(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Channel:
        """A new session of the in-process engine (started if needed), through memory.

        Raises :class:`~aoai_realtime.transport.HandshakeFailed` when the engine refuses it
        (the same failure value as over a socket), ``RuntimeError`` when it cannot start."""
        running = await self.start()
        from ..engine.admission import EngineRefusal

        try:
            channel: Channel = await running.open_channel(GA_PATH, dict(query), headers)
        except EngineRefusal as exc:
            answered = dict(exc.headers)
            failure = HandshakeFailure(
                kind="status",
                url=f"memory:{GA_PATH}",
                status=exc.status,
                headers=answered,
                request_id=headers.get("x-ms-client-request-id"),
                retry_after=parse_retry_after(answered, time.time()),
                detail=str(exc),
            )
            raise HandshakeFailed(failure) from exc
        return channel

    @property
    def webrtc(self) -> bool:
        """Whether this engine can take WebRTC calls (aiortc is installed here; an external
        engine is assumed to, it answers 501 if not)."""
        if self._url is not None:
            return True
        import importlib.util

        return importlib.util.find_spec("aiortc") is not None

    async def create_call(
        self,
        sdp: str,
        *,
        session: Mapping[str, Any] | None,
        query: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> tuple[str, str]:
        """``POST /calls`` of the in-process engine, without HTTP: ``(call_id, answer_sdp)``.
        Raises :class:`~aoai_realtime.engine.admission.EngineRefusal` as HTTP would answer."""
        running = await self.start()
        answer = await running.calls.create(sdp, session=session, query=query, headers=headers)
        return str(answer.call_id), str(answer.sdp)

    async def hangup_call(self, call_id: str) -> None:
        """End one of the in-process engine's calls (nothing if it has ended already)."""
        if self._running is None:
            return
        from ..engine.admission import EngineRefusal

        try:
            await self._running.calls.hangup(call_id)
        except EngineRefusal:
            pass  # ended meanwhile

    async def mint_client_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /client_secrets`` of the in-process engine, without HTTP."""
        running = await self.start()
        minted: dict[str, Any] = await running.calls.mint(dict(body))
        return minted

    async def start(self) -> Any:
        """Start the in-process engine if it is not running; returns it. Raises
        ``RuntimeError`` (with what to do) if it cannot start."""
        if self._running is not None:
            return self._running
        async with self._lock:
            if self._running is not None:
                return self._running
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
            if config.speech is None and not config.no_speech:
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
            log("engine.starting", transport="memory")
            try:
                running = await start_engine(config, listen=False)
            except Exception as exc:
                self._failure = f"the local engine failed to start: {exc}"
                log("engine.failed", 40, error=str(exc))
                raise RuntimeError(self._failure) from exc
            self._running = running
            log("engine.ready", transport="memory")
            return running

    async def close(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        result = running.close()
        if inspect.isawaitable(result):
            await result
