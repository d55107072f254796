"""Credentials for the realtime handshake: API keys and Microsoft Entra ID tokens.

A :class:`Credential` produces the HTTP headers of one WebSocket handshake. Ask it again for
every connection: :class:`EntraIdCredential` hands out a cached token only while it has more
than ``refresh_margin_s`` left, so a reconnect never uses a token about to expire.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from azure.core.exceptions import ClientAuthenticationError

from .config import ConfigError, Settings

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "COGNITIVE_SERVICES_SCOPE",
    "REQUEST_ID_HEADER",
    "ApiKeyCredential",
    "AuthError",
    "BearerKeyCredential",
    "Credential",
    "EntraIdCredential",
    "NoCredential",
    "credential_from_settings",
    "describe",
    "new_request_id",
]

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
REQUEST_ID_HEADER = "x-ms-client-request-id"

_WHAT_TO_DO = (
    "run `az login`, or set AZURE_OPENAI_API_KEY, or set "
    "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET for a service principal"
)


class AuthError(RuntimeError):
    """No usable credential; the message says how to get one."""


@runtime_checkable
class Credential(Protocol):
    """Produces the authentication headers of a handshake."""

    async def headers(self) -> dict[str, str]:
        """Headers to send on the next connection (may fetch a fresh token)."""
        ...

    async def close(self) -> None:
        """Release whatever the credential holds (HTTP sessions of a token credential)."""
        ...


def new_request_id() -> str:
    """A fresh id for the ``x-ms-client-request-id`` header, to trace a handshake in Azure."""
    return str(uuid.uuid4())


def _key_hint(key: str) -> str:
    # Show the last 4 characters only when that reveals a small part of the key.
    return f"…{key[-4:]}" if len(key) >= 16 else "set"


class ApiKeyCredential:
    """An Azure OpenAI API key, sent as ``api-key: KEY``."""

    def __init__(self, key: str) -> None:
        if not key or not key.strip():
            raise ValueError(
                "the API key is empty: set AZURE_OPENAI_API_KEY to your resource's key"
            )
        self._key = key.strip()

    async def headers(self) -> dict[str, str]:
        return {"api-key": self._key}

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_key_hint(self._key)})"


class BearerKeyCredential(ApiKeyCredential):
    """An OpenAI API key, sent as ``Authorization: Bearer KEY``."""

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}


class NoCredential:
    """No authentication headers, for a server on this machine (the local engine)."""

    async def headers(self) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NoCredential()"


class EntraIdCredential:
    """Microsoft Entra ID tokens from an azure-identity async credential, as ``Authorization:
    Bearer TOKEN``.

    The token is cached and reused only while it has more than ``refresh_margin_s`` seconds
    left; otherwise :meth:`headers` fetches a fresh one (azure-identity has its own cache, so this
    is cheap). Concurrent callers share one fetch. ``close()`` closes ``token_credential`` only
    when ``owns_credential`` is true (it is for credentials made by
    :func:`credential_from_settings`).
    """

    def __init__(
        self,
        token_credential: AsyncTokenCredential,
        scope: str = COGNITIVE_SERVICES_SCOPE,
        refresh_margin_s: float = 300,
        *,
        owns_credential: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_margin_s < 0:
            raise ValueError(f"refresh_margin_s must be >= 0 (got {refresh_margin_s})")
        self.token_credential = token_credential
        self.scope = scope
        self.refresh_margin_s = refresh_margin_s
        self.owns_credential = owns_credential
        self._clock = clock
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def _fresh_token(self) -> AccessToken:
        async with self._lock:
            token = self._token
            if token is not None and token.expires_on - self._clock() > self.refresh_margin_s:
                return token
            try:
                token = await self.token_credential.get_token(self.scope)
            except ClientAuthenticationError as exc:
                raise AuthError(_auth_failure_message(self.token_credential, exc)) from exc
            self._token = token
            return token

    async def headers(self) -> dict[str, str]:
        token = await self._fresh_token()
        return {"Authorization": f"Bearer {token.token}"}

    def invalidate(self) -> None:
        """Forget the cached token: the next connection fetches a new one (after a 401)."""
        self._token = None

    async def token_expires_in(self) -> float:
        """Seconds until the token the next :meth:`headers` call would send expires (fetching
        one if needed). Schedule a reconnect or re-auth before this runs out."""
        token = await self._fresh_token()
        return token.expires_on - self._clock()

    async def close(self) -> None:
        self._token = None
        if self.owns_credential:
            await self.token_credential.close()

    def __repr__(self) -> str:
        return f"EntraIdCredential({type(self.token_credential).__name__}, scope={self.scope!r})"


def _auth_failure_message(token_credential: object, exc: ClientAuthenticationError) -> str:
    kind = type(token_credential).__name__
    reason = type(exc).__name__
    detail = (getattr(exc, "message", None) or str(exc)).strip()
    if reason == "CredentialUnavailableError":
        head = f"no Microsoft Entra ID credential is available ({kind})"
    else:
        head = f"Microsoft Entra ID authentication failed ({kind})"
    return f"{head}: {_WHAT_TO_DO}. Details: {detail}"


def credential_from_settings(settings: Settings) -> Credential:
    """The credential the settings call for.

    1. ``api_key`` set: :class:`ApiKeyCredential` (``api-key`` header), or
       :class:`BearerKeyCredential` for api.openai.com.
    2. A loopback endpoint without a key (the local engine): :class:`NoCredential`.
    3. Tenant, client id and secret set: Entra ID via azure-identity's ``ClientSecretCredential``.
    4. Otherwise Entra ID via ``DefaultAzureCredential`` (``az login``, managed identity,
       workload identity, ...), never opening a browser.

    Nothing is fetched here; the first :meth:`Credential.headers` call does that.
    """
    if settings.api_key:
        if settings.is_openai:
            return BearerKeyCredential(settings.api_key)
        return ApiKeyCredential(settings.api_key)
    if settings.is_openai:
        raise ConfigError(
            "api.openai.com needs an API key: set AZURE_OPENAI_API_KEY to your OpenAI API key"
        )
    if settings.is_local:
        return NoCredential()
    partial = [p for p in settings.problems() if p.startswith("AZURE_CLIENT_SECRET")]
    if partial:  # a half-configured service principal would silently fall back: refuse
        raise ConfigError(partial[0])
    try:
        from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential
    except ImportError as exc:  # pragma: no cover - azure-identity is a dependency
        raise AuthError(
            f"Entra ID needs azure-identity (pip install azure-identity): {exc}; "
            "or set AZURE_OPENAI_API_KEY"
        ) from exc
    token_credential: AsyncTokenCredential
    if settings.uses_service_principal:
        assert settings.tenant_id and settings.client_id and settings.client_secret
        token_credential = ClientSecretCredential(
            settings.tenant_id, settings.client_id, settings.client_secret
        )
    elif settings.client_id:
        # A client id alone selects a user-assigned managed identity.
        token_credential = DefaultAzureCredential(
            exclude_interactive_browser_credential=True,
            managed_identity_client_id=settings.client_id,
        )
    else:
        token_credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    return EntraIdCredential(token_credential, owns_credential=True)


def describe(cred: Credential) -> str:
    """A one-line, secret-free description for logs and ``doctor``."""
    if isinstance(cred, BearerKeyCredential):
        return f"OpenAI API key ({_key_hint(cred._key)})"
    if isinstance(cred, ApiKeyCredential):
        return f"API key ({_key_hint(cred._key)})"
    if isinstance(cred, EntraIdCredential):
        return f"Entra ID via {type(cred.token_credential).__name__}"
    if isinstance(cred, NoCredential):
        return "no credential (local endpoint)"
    return type(cred).__name__
