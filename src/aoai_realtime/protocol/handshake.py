"""A failed WebSocket handshake as one plain value, and the one rule for what to do about it.

:mod:`aoai_realtime.transport` turns whatever the network library raised into a
:class:`HandshakeFailure`; each front end words its own message from it (the SDK raises
``AuthenticationError`` and friends, the middle tier sends the page one ``relay_error``,
``doctor`` prints a fix), and every retry loop asks :func:`classify` whether to try again.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["FailureKind", "HandshakeFailure", "Verdict", "classify", "parse_retry_after"]

FailureKind = Literal["status", "dns", "tls", "connect", "timeout", "network"]
"""``status``: the server answered with an HTTP status instead of the upgrade (see
:attr:`HandshakeFailure.status`); ``dns``: the host name does not resolve; ``tls``: the TLS
handshake failed; ``connect``: nothing accepted the TCP connection; ``timeout``: no answer in
time; ``network``: any other transport failure."""

Verdict = Literal["retry", "give_up", "refresh_credential"]
"""What a retry loop does next: try again (within its budget), stop and report the failure, or
fetch a fresh credential and try once more (a token may have expired or been revoked)."""


@dataclass(frozen=True)
class HandshakeFailure:
    """Why a WebSocket could not be opened."""

    kind: FailureKind
    url: str
    status: int | None = None
    """The HTTP status for ``kind == "status"`` (101 or 2xx: answered without an upgrade)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    """The ``x-ms-client-request-id`` sent, to trace the attempt in Azure."""
    retry_after: float | None = None
    """Seconds the server asked to wait (``Retry-After``, ``retry-after-ms``), if it said."""
    detail: str = ""
    """What the network library said (an OS error, a certificate problem), for the message."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int | None:
        return urlsplit(self.url).port

    def __str__(self) -> str:
        if self.kind == "status":
            return f"{self.url}: HTTP {self.status}"
        return f"{self.url}: {self.kind}" + (f" ({self.detail})" if self.detail else "")


def classify(failure: HandshakeFailure) -> Verdict:
    """The retry rule, shared by the SDK's reconnects and the middle tier's resumes.

    * the network or the service had a problem (unreachable, timeout, TLS, DNS, HTTP 5xx):
      ``retry``, the next attempt may well succeed;
    * 401: ``refresh_credential``, a token may have expired; a fresh one is worth one try;
    * any other status (403 permissions, 404 deployment, 429 quota, 400 api-version, an answer
      without an upgrade): ``give_up``, the next attempt would be refused the same way.
    """
    if failure.kind != "status":
        return "retry"
    status = failure.status or 0
    if status >= 500:
        return "retry"
    if status == 401:
        return "refresh_credential"
    return "give_up"


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``Retry-After``
    (seconds or an HTTP date, compared with ``now``, a POSIX timestamp); ``None`` if none."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = lower.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = lower.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
