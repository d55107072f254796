"""Waiting for a count to reach a value, woken by each change instead of polling.

The engine counts its sessions and calls, the middle tier its calls; tests and shutdown wait for
those counts (``wait_sessions(0)``). One :class:`Changes` per count: the owner calls
:meth:`Changes.notify` after each change, waiters :meth:`Changes.wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Changes:
    """Wakes every waiter at each :meth:`notify` (an event replaced after it is set)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(
        self, current: Callable[[], int], count: int, timeout: float, holder: str, what: str
    ) -> None:
        """Return once ``current()`` is ``count``; ``TimeoutError`` after ``timeout`` seconds,
        saying e.g. "the engine holds 2 sessions, not 0, after 10 s"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while current() != count:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(
                    f"{holder} holds {current()} {what}, not {count}, after {timeout:g} s"
                )
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
