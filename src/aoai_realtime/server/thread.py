"""The middle tier in a thread of its own, with its own event loop.

For callers without a loop of their own (a synchronous program, a notebook, browser tests
driving Playwright's sync API): the server keeps serving whatever the caller does.

    server = ServerThread(ServerConfig(port=0), Upstreams(settings=None, local=LocalEngine()))
    print(server.url)          # http://127.0.0.1:PORT/
    ...
    server.close()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from .app import ServerConfig, create_app
from .upstream import Upstreams

__all__ = ["ServerThread"]

T = TypeVar("T")


class ServerThread:
    """Serve ``create_app(config, upstreams)`` on ``config.host`` (port 0: a free port)."""

    def __init__(self, config: ServerConfig, upstreams: Upstreams, *, bind: str | None = None):
        """``bind`` overrides the address actually listened on (default ``config.host``), so a
        test can exercise a non-loopback *policy* while listening on 127.0.0.1 only."""
        self.config = config
        self.upstreams = upstreams
        self._bind = bind or config.host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.app: web.Application | None = None
        self.port = 0

        async def serve() -> None:
            self._stop = asyncio.Event()
            self.app = create_app(config, upstreams)
            runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
            try:
                await runner.setup()
                site = web.TCPSite(runner, self._bind, config.port)
                await site.start()
                server = site._server  # noqa: SLF001 - the only way to read an ephemeral port
                sockets = getattr(server, "sockets", None) or []
                self.port = sockets[0].getsockname()[1] if sockets else config.port
            except BaseException as exc:  # handed to the constructor's caller
                self._error = exc
                self._ready.set()
                await runner.cleanup()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="aoai-realtime serve", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash)."""
        host = f"[{self._bind}]" if ":" in self._bind else self._bind
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page: ``http://HOST:PORT/``."""
        return self.http_url + "/"

    @property
    def ws_url(self) -> str:
        """The relay: ``ws://HOST:PORT/realtime``."""
        return "ws" + self.http_url[4:] + "/realtime"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` in the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving (relays, the upstream session and the in-process engine are closed)."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
