"""aiohttp WebSockets as relay :class:`~.relay.Channel` objects (server and client side alike)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from .relay import ChannelClosed

__all__ = ["AiohttpChannel"]

_CLOSED_TYPES = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


class AiohttpChannel:
    """Wraps an aiohttp ``WebSocketResponse`` (server side) or ``ClientWebSocketResponse``.

    ``close_timeout`` bounds the close handshake: a peer that never answers our close frame
    (as the service sometimes does) costs at most that long, never the 10-20 s default.
    """

    def __init__(self, ws: Any, *, close_timeout: float = 2.0) -> None:
        self.ws = ws
        self.close_timeout = close_timeout
        self._close_code: int | None = None
        self._close_reason = ""

    async def receive(self) -> str | None:
        while True:
            try:
                msg = await self.ws.receive()
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                return None
            if msg.type == WSMsgType.TEXT:
                text: str = msg.data
                return text
            if msg.type in _CLOSED_TYPES:
                if msg.type == WSMsgType.CLOSE:
                    self._close_code = msg.data if isinstance(msg.data, int) else None
                    self._close_reason = msg.extra or ""
                return None
            # BINARY, PING, PONG: the realtime protocol is JSON text; skip.

    async def send(self, text: str) -> None:
        if self.ws.closed:
            raise ChannelClosed("the WebSocket is closed")
        try:
            await self.ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws.closed:
            return
        message = reason.encode()[:120]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, message=message), self.close_timeout)

    @property
    def close_code(self) -> int | None:
        if self._close_code is not None:
            return self._close_code
        code = getattr(self.ws, "close_code", None)
        return code if isinstance(code, int) else None

    @property
    def close_reason(self) -> str:
        return self._close_reason
