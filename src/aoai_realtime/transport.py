"""The one WebSocket transport: open a realtime connection with aiohttp, and map what goes wrong.

The SDK client, the middle tier's upstream connector and ``doctor`` all open their WebSockets
here, so a handshake failure is turned into a
:class:`~aoai_realtime.protocol.handshake.HandshakeFailure` in one place; each of them words its
own message from that value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import cast

import aiohttp

from .protocol.handshake import HandshakeFailure, parse_retry_after

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "HandshakeFailed", "open_websocket"]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest WebSocket message accepted: items carrying base64 audio exceed a 1 MiB default."""


class HandshakeFailed(Exception):
    """The WebSocket could not be opened; :attr:`failure` says why."""

    def __init__(self, failure: HandshakeFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


async def open_websocket(
    http: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    request_id: str | None = None,
    open_timeout: float = 30.0,
    close_timeout: float = 2.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> aiohttp.ClientWebSocketResponse:
    """Open a WebSocket to ``url`` within ``open_timeout`` seconds, or raise
    :class:`HandshakeFailed`. ``close_timeout`` bounds the close handshake later (the service
    sometimes never answers a close frame); no compression, no heartbeat, pings answered."""

    def failed(kind: str, **kw: object) -> HandshakeFailed:
        return HandshakeFailed(
            HandshakeFailure(kind=kind, url=url, request_id=request_id, **kw)  # type: ignore[arg-type]
        )

    try:
        ws = await asyncio.wait_for(
            http.ws_connect(
                url,
                headers=dict(headers),
                max_msg_size=max_message_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout),
                autoclose=True,
                autoping=True,
                heartbeat=None,
                compress=0,
            ),
            timeout=open_timeout,
        )
    except aiohttp.WSServerHandshakeError as exc:
        answered = {k: v for k, v in (exc.headers or {}).items()}
        raise failed(
            "status",
            status=exc.status,
            headers=answered,
            retry_after=parse_retry_after(answered, time.time()),
            detail=exc.message or "",
        ) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise failed("dns", detail=str(exc.os_error)) from exc
    except aiohttp.ClientSSLError as exc:
        raise failed("tls", detail=str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise failed("connect", detail=str(exc.os_error.strerror or exc.os_error)) from exc
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
        raise failed("timeout", detail=f"no answer within {open_timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise failed("network", detail=f"{type(exc).__name__}: {exc}") from exc
    return cast(aiohttp.ClientWebSocketResponse, ws)
