"""Ephemeral client secrets (``ek_...``): short-lived keys the engine issues and then accepts.

``POST /openai/v1/realtime/client_secrets`` (and ``/v1/realtime/client_secrets``) takes
OpenAI's body, ``{"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {...}}``
(both optional; 10 to 7200 seconds, 600 by default), and answers ``{"value": "ek_...",
"expires_at": UNIX_SECONDS, "session": {...}}``. Whoever holds the key may open a WebRTC call or
a WebSocket session with it as a bearer token (``Authorization: Bearer ek_...``) until it
expires; the ``session`` its issuer gave is applied to every session opened with it, before
``session.created``. A key that is unknown or expired is refused with 401, whether or not the
engine has an API key of its own. Minting needs the engine's own key (when it has one), never
an ephemeral one.

:class:`ClientSecrets` keeps the keys in memory (an engine restart forgets them) and takes its
clock as an argument (``now``), so tests expire a key without waiting.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .admission import GA_PATH, Admission, Query, admit, offered_keys, refusal
from .config import EngineConfig

__all__ = [
    "DEFAULT_SECONDS",
    "EPHEMERAL_PREFIX",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "ClientSecret",
    "ClientSecrets",
    "admit_key",
    "admit_with_secrets",
    "offers_ephemeral_key",
    "read_request",
]

EPHEMERAL_PREFIX = "ek_"
MIN_SECONDS = 10
MAX_SECONDS = 7200
DEFAULT_SECONDS = 600
MAX_LIVE_SECRETS = 10_000
"""Unexpired keys one engine holds at most; minting past it is refused (429)."""


@dataclass(frozen=True)
class ClientSecret:
    """One issued key: its ``value``, when it ``expires_at`` (Unix seconds) and the GA
    ``session`` object its issuer fixed (``None``: the engine's defaults)."""

    value: str
    expires_at: int
    session: dict[str, Any] | None = None

    @property
    def model(self) -> str | None:
        """The model the fixed session names, if any."""
        model = (self.session or {}).get("model")
        return model if isinstance(model, str) and model else None


class ClientSecrets:
    """The keys one engine issued (see the module documentation)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        """The clock (Unix seconds); replace it to move time in a test."""
        self._live: dict[str, ClientSecret] = {}

    def __len__(self) -> int:
        self._purge()
        return len(self._live)

    def issue(
        self, session: Mapping[str, Any] | None, seconds: int = DEFAULT_SECONDS
    ) -> ClientSecret:
        """A new key valid for ``seconds`` from now, fixing ``session`` (already checked)."""
        self._purge()
        if len(self._live) >= MAX_LIVE_SECRETS:
            raise refusal(
                429,
                "too_many_client_secrets",
                f"This engine holds {MAX_LIVE_SECRETS} unexpired client secrets: wait for some "
                "to expire, or mint shorter-lived ones.",
            )
        value = EPHEMERAL_PREFIX + secrets.token_urlsafe(32)
        secret = ClientSecret(
            value=value,
            expires_at=int(self.now() + seconds),
            session=dict(session) if session is not None else None,
        )
        self._live[value] = secret
        return secret

    def check(self, value: str) -> ClientSecret:
        """The secret ``value`` names; :class:`EngineRefusal` 401 if unknown or expired."""
        found = None
        for key, secret in self._live.items():
            if secrets.compare_digest(key.encode(), value.encode()):
                found = secret
        if found is None:
            raise refusal(
                401,
                "invalid_client_secret",
                "The ephemeral key (client secret) is not valid: it was never issued by this "
                "server, or the server restarted. Mint a new one with POST "
                "/openai/v1/realtime/client_secrets.",
            )
        if self.now() >= found.expires_at:
            self._live.pop(found.value, None)
            raise refusal(
                401,
                "expired_client_secret",
                f"The ephemeral key (client secret) expired at {found.expires_at} (Unix time): "
                "mint a new one with POST /openai/v1/realtime/client_secrets.",
            )
        return found

    def _purge(self) -> None:
        now = self.now()
        for value in [v for v, s in self._live.items() if now >= s.expires_at]:
            del self._live[value]


def read_request(body: Any) -> tuple[dict[str, Any] | None, int]:
    """The ``session`` (``None`` if not given) and lifetime in seconds of a mint request body;
    :class:`EngineRefusal` 400 naming the field for anything else."""
    if body is None:
        return None, DEFAULT_SECONDS
    if not isinstance(body, dict):
        raise refusal(400, "invalid_type", "The request body must be a JSON object.")
    for key in body:
        if key not in ("expires_after", "session"):
            raise refusal(400, "unknown_parameter", f"Unknown parameter: '{key}'.")
    seconds = DEFAULT_SECONDS
    after = body.get("expires_after")
    if after is not None:
        if not isinstance(after, dict):
            raise refusal(400, "invalid_type", "'expires_after' must be an object.")
        for key in after:
            if key not in ("anchor", "seconds"):
                raise refusal(
                    400, "unknown_parameter", f"Unknown parameter: 'expires_after.{key}'."
                )
        anchor = after.get("anchor", "created_at")
        if anchor != "created_at":
            raise refusal(
                400,
                "invalid_value",
                f"Invalid 'expires_after.anchor': {anchor!r}. Supported values are: 'created_at'.",
            )
        raw = after.get("seconds", DEFAULT_SECONDS)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise refusal(400, "invalid_type", "'expires_after.seconds' must be an integer.")
        if not MIN_SECONDS <= raw <= MAX_SECONDS:
            raise refusal(
                400,
                "invalid_value",
                f"Invalid 'expires_after.seconds': {raw}. Expected a value between {MIN_SECONDS} "
                f"and {MAX_SECONDS}.",
            )
        seconds = raw
    session = body.get("session")
    if session is not None and not isinstance(session, dict):
        raise refusal(400, "invalid_type", "'session' must be an object.")
    if session is not None:
        session = {"type": "realtime", **session}
    return session, seconds


def admit_with_secrets(
    config: EngineConfig,
    issued: ClientSecrets,
    path: str,
    query: Query | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    default_model: str | None = None,
) -> tuple[Admission, ClientSecret | None]:
    """:func:`~aoai_realtime.engine.admission.admit`, with ephemeral keys accepted.

    A client offering an ``ek_...`` key is admitted on that key (and the engine's own key is not
    asked for); the secret is returned so its session is applied. An ``ek_...`` key that is
    unknown or expired is refused with 401. Without ``?model=`` the model is the secret's
    session's, else ``default_model`` (when given; else ``model`` stays required).
    """
    heads = {k.lower(): v for k, v in (headers or {}).items()}
    offered = [k for k in offered_keys(query or {}, heads) if k.startswith(EPHEMERAL_PREFIX)]
    secret = issued.check(offered[0]) if offered else None
    merged: dict[str, Any] = dict(query or {})
    if not merged.get("model") and not merged.get("deployment"):
        model = (secret.model if secret else None) or default_model
        if model:
            merged["model"] = model
    if secret is not None:
        config = dataclasses.replace(config, api_key=None)
    return admit(config, path, merged, headers), secret


def admit_key(
    config: EngineConfig,
    issued: ClientSecrets,
    query: Query | None = None,
    headers: Mapping[str, str] | None = None,
) -> ClientSecret | None:
    """Only the credential checks of :func:`admit_with_secrets` (for requests that open no
    session of their own: a sideband, a hangup); raises :class:`EngineRefusal` 401."""
    merged: dict[str, Any] = {k: v for k, v in (query or {}).items() if k != "fault"}
    merged["model"] = "-"
    return admit_with_secrets(config, issued, GA_PATH, merged, headers)[1]


def offers_ephemeral_key(query: Query | None, headers: Mapping[str, str] | None) -> bool:
    """Whether a request offers an ``ek_...`` key anywhere a key may go."""
    heads = {k.lower(): v for k, v in (headers or {}).items()}
    return any(k.startswith(EPHEMERAL_PREFIX) for k in offered_keys(query or {}, heads))
