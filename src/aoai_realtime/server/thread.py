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
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from .._threads import LoopThread, Stop, start_site
from .app import CALLS_KEY, ServerConfig, create_app
from .calls import CallProxy
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
        self.app: web.Application | None = None
        self.port = 0

        async def start() -> Stop:
            self.app = create_app(config, upstreams)
            runner, self.port = await start_site(self.app, self._bind, config.port)
            return runner.cleanup

        self._thread = LoopThread(start, name="aoai-realtime serve")

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
        return self._thread.call(coro, timeout)

    async def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the server's loop; await its result from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._thread.loop))

    @property
    def calls(self) -> CallProxy:
        """The server's WebRTC calls (read them in the server's loop: :meth:`call`)."""
        assert self.app is not None
        return self.app[CALLS_KEY]

    def wait_calls(self, count: int, timeout: float = 10.0) -> None:
        """Block until the server holds exactly ``count`` WebRTC calls, everything of the others
        stopped (``TimeoutError`` after ``timeout`` seconds)."""
        self.call(self.calls.wait_calls(count, timeout), timeout + 5)

    async def wait_calls_async(self, count: int, timeout: float = 10.0) -> None:
        """:meth:`wait_calls` for a coroutine in another event loop."""
        await self.call_async(self.calls.wait_calls(count, timeout))

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving (relays, the upstream session and the in-process engine are closed)."""
        self._thread.close(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
