"""Event loops, and serving an aiohttp application from a thread of its own.

:func:`new_event_loop` and :func:`run` give uvloop's loop where it is installed (a dependency on
Linux and macOS: the middle tier relays about 10% cheaper and with a shorter latency tail, see
``benchmarks/bench_relay.py``), else asyncio's; ``serve``, ``engine`` and the threads below use
them.

The engine (:class:`~aoai_realtime.engine.server.EngineThread`) and the middle tier
(:class:`~aoai_realtime.server.thread.ServerThread`) both run this way for callers without a
loop of their own (tests, scripts, notebooks, synchronous programs); :func:`start_site` also
serves an application in the caller's loop and reads back the port it got.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

__all__ = [
    "LoopThread",
    "give_back_memory",
    "new_event_loop",
    "release_free_memory",
    "run",
    "start_site",
]

T = TypeVar("T")


def release_free_memory() -> None:
    """Ask the C allocator to return its free pages to the system (glibc's ``malloc_trim``;
    nothing elsewhere). Python frees into the allocator, which keeps the pages of every thread's
    arena: after many sessions close, a process would otherwise stay at its peak size."""
    global _TRIM
    if _TRIM is None:
        _TRIM = _find_malloc_trim()
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
_TRIMMING = threading.Lock()


def give_back_memory() -> None:
    """:func:`release_free_memory` in a thread of the running loop's default executor, at most
    one at a time in the process (the engine when its last session closes and the middle tier
    when its last page leaves may both ask at once): the loop never waits for it."""

    def trim() -> None:
        if _TRIMMING.acquire(blocking=False):
            try:
                release_free_memory()
            finally:
                _TRIMMING.release()

    asyncio.get_running_loop().run_in_executor(None, trim)


def _find_malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`new_event_loop`'s loop (Python 3.10 has no
    ``loop_factory``, so this does what ``asyncio.run`` does)."""
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


Stop = Callable[[], Awaitable[None]]
"""What undoes a start: awaited in the thread's loop when the thread is closed."""


async def start_site(
    app: web.Application, host: str, port: int, *, reuse_address: bool | None = None, **runner: Any
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` in this loop; returns its runner and the port it listens on
    (port 0 picks a free one). ``await runner.cleanup()`` stops it. ``runner`` options go to
    :class:`aiohttp.web.AppRunner` (signals are never handled, there is no access log)."""
    app_runner = web.AppRunner(app, handle_signals=False, access_log=None, **runner)
    try:
        await app_runner.setup()  # the application's start-up handlers run here
        site = web.TCPSite(app_runner, host, port, reuse_address=reuse_address)
        await site.start()
    except BaseException:  # what did start is stopped again
        await app_runner.cleanup()
        raise
    server = site._server  # noqa: SLF001 - the only way to read back an ephemeral port
    sockets = getattr(server, "sockets", None) or []
    return app_runner, (sockets[0].getsockname()[1] if sockets else port)


class LoopThread:
    """A daemon thread running an event loop until :meth:`close`.

    ``start`` is awaited first in that loop; it returns the coroutine function that undoes it,
    awaited when the thread is closed. The constructor returns once ``start`` is done, and
    raises what ``start`` raised (the thread has ended then).
    """

    def __init__(self, start: Callable[[], Awaitable[Stop]], *, name: str) -> None:
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

        async def serve() -> None:
            self._stop = asyncio.Event()
            try:
                stop = await start()
            except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await stop()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(serve())
            finally:
                self.loop.close()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` in the thread's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Undo the start and end the thread (waits at most ``timeout`` seconds)."""
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
