"""The errors the middle tier sends the page: one ``relay_error`` with a cause and what to do.

A fatal relay error reaches the page as exactly one event, then the socket closes::

    {"type": "error", "event_id": "relay_…",
     "error": {"type": "relay_error", "code": "upstream_unauthorized", "message": "…"}}

Non-fatal notices (``policy_violation``) use the same event shape with ``type``
``invalid_request_error``, as the service does for a refused parameter, and the session goes on.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..protocol.handshake import HandshakeFailure

__all__ = [
    "CLOSE_POLICY",
    "CLOSE_UPSTREAM",
    "RelayError",
    "error_event",
    "handshake_error",
]

CLOSE_POLICY = 1008
"""WebSocket close code after a refusal by the middle tier's own policy."""
CLOSE_UPSTREAM = 1011
"""WebSocket close code after an upstream failure."""

RELAY_ERROR_CODES = (  # every code a fatal relay_error may carry
    "upstream_unauthorized",
    "upstream_forbidden",
    "upstream_not_found",
    "upstream_rate_limited",
    "upstream_refused",
    "upstream_unreachable",
    "upstream_closed",
    "upstream_server_error",
    "session_expired",
    "endpoint_not_allowed",
    "deployment_required",
    "relay_internal_error",
    "invalid_offer",
)


class RelayError(Exception):
    """A failure the page must hear about once, with ``message`` saying the cause and the fix."""

    def __init__(self, code: str, message: str, *, close_code: int = CLOSE_UPSTREAM) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code
        self.failure: HandshakeFailure | None = None
        """The upstream handshake failure this error words, if it is one (for the retry rule)."""
        self.status: int | None = None
        """The upstream's HTTP status, when it refused a REST request (a WebRTC call)."""

    def to_event(self) -> dict[str, Any]:
        return error_event(self.code, self.message, error_type="relay_error")

    def __repr__(self) -> str:
        return f"RelayError({self.code!r}, {self.message!r})"


def error_event(
    code: str,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An ``error`` server event made by the middle tier (its ``event_id`` starts ``relay_``);
    ``event_id``: the client event it answers."""
    error: dict[str, Any] = {"type": error_type, "code": code, "message": message}
    if param is not None:
        error["param"] = param
    if event_id is not None:
        error["event_id"] = event_id
    return {"type": "error", "event_id": f"relay_{uuid.uuid4().hex[:20]}", "error": error}


def handshake_error(
    status: int,
    *,
    where: str,
    deployment: str | None,
    credential_hint: str,
    retry_after: str | None = None,
    detail: str = "",
) -> RelayError:
    """The relay error for an upstream that refused the WebSocket handshake with ``status``.

    ``where`` names the upstream (``Azure OpenAI at https://RES.openai.azure.com`` or ``the local
    engine``); ``credential_hint`` says how to fix the credentials on the server.
    """
    tail = f" ({detail})" if detail else ""
    if status == 401:
        return RelayError(
            "upstream_unauthorized",
            f"{where} refused the credentials (HTTP 401){tail}: {credential_hint}. "
            "Then press Start again.",
        )
    if status == 403:
        return RelayError(
            "upstream_forbidden",
            f"{where} denied access (HTTP 403){tail}: the identity the server uses needs the "
            "'Cognitive Services OpenAI User' role on the resource, and the resource's network "
            "rules must let this server in. Then press Start again.",
        )
    if status == 404:
        dep = f"deployment {deployment!r}" if deployment else "the deployment"
        return RelayError(
            "upstream_not_found",
            f"{where} has no realtime {dep} (HTTP 404){tail}: check AZURE_OPENAI_DEPLOYMENT "
            "(the deployment's name, not the model's) and the dialect (set "
            "AZURE_OPENAI_API_VERSION only for a preview deployment).",
        )
    if status == 429:
        wait = f"wait {retry_after} s" if retry_after else "wait a little"
        return RelayError(
            "upstream_rate_limited",
            f"{where} is rate limiting this deployment (HTTP 429){tail}: {wait} and press Start "
            "again, or raise the deployment's quota.",
        )
    if status >= 500:
        return RelayError(
            "upstream_server_error",
            f"{where} failed to open the session (HTTP {status}){tail}: this is on the service's "
            "side; press Start again in a moment.",
        )
    return RelayError(
        "upstream_refused",
        f"{where} refused the connection (HTTP {status}){tail}: check the endpoint, the "
        "deployment and AZURE_OPENAI_API_VERSION on the server.",
    )
