"""A channel: one side of a realtime connection, carrying JSON text messages.

The middle tier's relay and the local engine's connections work on channels, not on a web
framework's WebSocket, so the same code runs over an aiohttp WebSocket (:class:`AiohttpChannel`)
or over :func:`memory_pair`, two channels joined in memory, which is how ``serve`` reaches its
in-process engine: no socket, no WebSocket framing, no loopback round trip per audio chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Protocol

import aiohttp
from aiohttp import WSMsgType

__all__ = ["AiohttpChannel", "Channel", "ChannelClosed", "MemoryChannel", "memory_pair"]


class ChannelClosed(ConnectionError):
    """Raised by :meth:`Channel.send` when the peer has gone."""


class Channel(Protocol):
    """One side of a connection: JSON text messages in and out, and a close."""

    async def receive(self) -> str | None:
        """The next text message; ``None`` once the peer has closed (binary frames are skipped)."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; raise :class:`ChannelClosed` if the peer has gone."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close without waiting long for the peer's answer; closing twice does nothing."""
        ...

    @property
    def close_code(self) -> int | None:
        """The close code the peer sent (or ``None``)."""
        ...

    @property
    def close_reason(self) -> str:
        """The reason the peer gave when closing (may be empty)."""
        ...


class MemoryChannel:
    """One end of an in-memory connection made by :func:`memory_pair`.

    ``send`` waits while the peer has ``max_pending`` unread messages (back-pressure, as a full
    socket buffer gives), so a peer that stops reading cannot make the sender grow without bound.
    A close reaches the peer after the messages sent before it, like a WebSocket close frame.
    """

    def __init__(self, max_pending: int) -> None:
        self._buf: deque[str] = deque()
        self._max = max(1, max_pending)
        self._reader: asyncio.Future[None] | None = None
        self._room: deque[asyncio.Future[None]] = deque()
        self._peer: MemoryChannel | None = None
        self._closed = False  # this side closed
        self._ended = False  # the peer closed
        self._close_code: int | None = None
        self._close_reason = ""

    async def receive(self) -> str | None:
        while True:
            if self._buf and not self._closed:
                text = self._buf.popleft()
                self._wake_one_sender()
                return text
            if self._closed or self._ended:
                return None
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    async def send(self, text: str) -> None:
        peer = self._peer
        assert peer is not None
        while True:
            if self._closed or self._ended or peer._closed:
                raise ChannelClosed("the in-memory channel is closed")
            if len(peer._buf) < peer._max:
                peer._buf.append(text)
                peer._wake_reader()
                return
            room = asyncio.get_running_loop().create_future()
            peer._room.append(room)
            try:
                await room
            finally:
                if room in peer._room:
                    peer._room.remove(room)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if not self._ended:
            self._close_code = code
            self._close_reason = reason
        self._buf.clear()
        self._wake_reader()
        self._wake_all_senders()
        peer = self._peer
        if peer is not None and not peer._closed and not peer._ended:
            peer._ended = True
            peer._close_code = code
            peer._close_reason = reason
            peer._wake_reader()
            peer._wake_all_senders()

    @property
    def closed(self) -> bool:
        return self._closed or self._ended

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_one_sender(self) -> None:
        while self._room:
            room = self._room.popleft()
            if not room.done():
                room.set_result(None)
                return

    def _wake_all_senders(self) -> None:
        while self._room:
            room = self._room.popleft()
            if not room.done():
                room.set_result(None)


def memory_pair(max_pending: int = 256) -> tuple[MemoryChannel, MemoryChannel]:
    """Two channels joined in memory: what one sends, the other receives, in order."""
    a = MemoryChannel(max_pending)
    b = MemoryChannel(max_pending)
    a._peer, b._peer = b, a
    return a, b


# ------------------------------------------------------------------------------ aiohttp

_CLOSED_TYPES = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


class AiohttpChannel:
    """Wraps an aiohttp ``WebSocketResponse`` (server side) or ``ClientWebSocketResponse``.

    ``close_timeout`` bounds the close handshake: a peer that never answers our close frame
    (as the service sometimes does) costs at most that long, never the 10-20 s default.
    """

    def __init__(
        self, ws: Any, *, close_timeout: float = 2.0, binary_as_text: bool = False
    ) -> None:
        self.ws = ws
        self.close_timeout = close_timeout
        self.binary_as_text = binary_as_text
        """Read binary frames as text (invalid UTF-8 replaced) instead of skipping them: a
        server answers them with ``invalid_json``, as the service does."""
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
            if msg.type == WSMsgType.BINARY and self.binary_as_text:
                return bytes(msg.data).decode("utf-8", errors="replace")
            if msg.type in _CLOSED_TYPES:
                if msg.type == WSMsgType.CLOSE:
                    self._close_code = msg.data if isinstance(msg.data, int) else None
                    self._close_reason = msg.extra or ""
                return None
            # BINARY (unless binary_as_text), PING, PONG: the protocol is JSON text; skip.

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
