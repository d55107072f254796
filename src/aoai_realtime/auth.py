"""Credentials for the realtime handshake: API keys and Microsoft Entra ID tokens.

A :class:`Credential` produces the HTTP headers of one WebSocket handshake. Ask it again for
every connection: :class:`EntraIdCredential` hands out a cached token only while it has more
than ``refresh_margin_s`` left, so a reconnect never uses a token about to expire.

:func:`as_credential` turns whatever a user holds into a :class:`Credential`
(:data:`CredentialLike`): one of ours, an azure-identity credential, sync
(``azure.identity.DefaultAzureCredential()``, its ``get_token`` runs in a worker thread so the
event loop never blocks) or async (``azure.identity.aio``), or a bearer-token provider
(``azure.identity.get_bearer_token_provider(...)``, sync or from ``azure.identity.aio``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast, runtime_checkable

from azure.core.exceptions import ClientAuthenticationError

from .config import ConfigError, Settings

__all__ = [
    "COGNITIVE_SERVICES_SCOPE",
    "REQUEST_ID_HEADER",
    "AccessTokenLike",
    "ApiKeyCredential",
    "AsyncTokenCredential",
    "AuthError",
    "BearerKeyCredential",
    "BearerTokenProvider",
    "Credential",
    "CredentialLike",
    "EntraIdCredential",
    "NoCredential",
    "StaticTokenCredential",
    "SyncTokenCredential",
    "TokenCredentialLike",
    "TokenProviderCredential",
    "as_credential",
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


class AccessTokenLike(Protocol):
    """What ``get_token`` returns: ``azure.core.credentials.AccessToken`` or any object with a
    ``token`` string and ``expires_on`` (Unix time, seconds)."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> float: ...


class SyncTokenCredential(Protocol):
    """An azure-identity *sync* credential (``azure.core.credentials.TokenCredential``), e.g.
    ``azure.identity.DefaultAzureCredential()``. Its ``get_token`` is run in a worker thread."""

    def get_token(self, *scopes: str) -> AccessTokenLike: ...


class AsyncTokenCredential(Protocol):
    """An azure-identity *async* credential (``azure.core.credentials_async.AsyncTokenCredential``),
    e.g. ``azure.identity.aio.DefaultAzureCredential()``."""

    async def get_token(self, *scopes: str) -> AccessTokenLike: ...


TokenCredentialLike = SyncTokenCredential | AsyncTokenCredential
"""An azure-identity credential, sync or async."""

BearerTokenProvider = Callable[[], str | Awaitable[str]]
"""A zero-argument callable giving a bearer token, e.g. ``azure.identity.get_bearer_token_provider
(cred, scope)`` (returns ``str``) or its ``azure.identity.aio`` twin (returns an awaitable)."""

CredentialLike = Credential | SyncTokenCredential | AsyncTokenCredential | BearerTokenProvider
"""Everything ``connect(credential=...)`` takes (see :func:`as_credential`)."""


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
    """Microsoft Entra ID tokens from an azure-identity credential, sync or async, as
    ``Authorization: Bearer TOKEN``.

    The token is cached and reused only while it has more than ``refresh_margin_s`` seconds
    left; otherwise :meth:`headers` fetches a fresh one (azure-identity has its own cache, so this
    is cheap). Concurrent callers share one fetch. A sync credential's ``get_token`` (which may
    do HTTP or run ``az``) runs in a worker thread (:func:`asyncio.to_thread`), never on the
    event loop. ``close()`` closes ``token_credential`` only when ``owns_credential`` is true (it
    is for credentials made by :func:`credential_from_settings`).
    """

    def __init__(
        self,
        token_credential: TokenCredentialLike,
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
        self._token: AccessTokenLike | None = None
        self._lock = asyncio.Lock()

    async def _get_token(self) -> AccessTokenLike:
        get_token: Callable[[str], Any] = self.token_credential.get_token
        if inspect.iscoroutinefunction(get_token):
            result = await get_token(self.scope)
        else:  # azure.identity's sync credentials: HTTP or a subprocess, off the event loop
            result = await asyncio.to_thread(get_token, self.scope)
            if inspect.isawaitable(result):  # a plain def returning an awaitable
                result = await result
        if not isinstance(getattr(result, "token", None), str) or not isinstance(
            getattr(result, "expires_on", None), (int, float)
        ):
            raise AuthError(
                f"{type(self.token_credential).__name__}.get_token returned "
                f"{type(result).__name__}, not an AccessToken (token, expires_on)"
            )
        return cast(AccessTokenLike, result)

    async def _fresh_token(self) -> AccessTokenLike:
        async with self._lock:
            token = self._token
            if token is not None and token.expires_on - self._clock() > self.refresh_margin_s:
                return token
            try:
                token = await self._get_token()
            except ClientAuthenticationError as exc:
                kind = type(self.token_credential).__name__
                raise AuthError(_auth_failure_message(kind, exc)) from exc
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
        close = getattr(self.token_credential, "close", None)
        if self.owns_credential and callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    def __repr__(self) -> str:
        return f"EntraIdCredential({type(self.token_credential).__name__}, scope={self.scope!r})"


class TokenProviderCredential:
    """A bearer-token provider as ``Authorization: Bearer TOKEN``: a zero-argument callable that
    returns the token (``azure.identity.get_bearer_token_provider(cred, scope)``) or an awaitable
    of it (the ``azure.identity.aio`` one).

    The provider is called for every connection and nothing is cached here: azure's providers
    cache and refresh the token themselves. A sync provider runs in a worker thread (it may
    fetch a token over HTTP), an async one on the event loop.
    """

    def __init__(self, provider: BearerTokenProvider) -> None:
        if not callable(provider):
            raise TypeError(f"the token provider must be callable, not {type(provider).__name__}")
        self.provider = provider

    async def token(self) -> str:
        """A token from the provider (called every time)."""
        try:
            if inspect.iscoroutinefunction(self.provider):
                result: object = await self.provider()
            else:
                result = await asyncio.to_thread(self.provider)
                if inspect.isawaitable(result):
                    result = await result
        except ClientAuthenticationError as exc:
            raise AuthError(_auth_failure_message("bearer-token provider", exc)) from exc
        if not isinstance(result, str) or not result.strip():
            raise AuthError(
                "the bearer-token provider returned "
                + (repr(result) if isinstance(result, str) else type(result).__name__)
                + ", not a token string"
            )
        return result.strip()

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"TokenProviderCredential({getattr(self.provider, '__qualname__', '?')})"


def _jwt_expires_on(token: str) -> float | None:
    """The ``exp`` claim of a JWT (unverified: only to say when it runs out), else ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class StaticTokenCredential:
    """A Microsoft Entra ID access token as is (``AZURE_OPENAI_AD_TOKEN``), sent as
    ``Authorization: Bearer TOKEN``.

    It cannot be refreshed: when it is a JWT whose ``exp`` has passed, :meth:`headers` raises
    :class:`AuthError` saying how to get a new one, instead of sending it to be refused.
    ``source`` names where it came from, for :func:`describe`.
    """

    def __init__(
        self, token: str, source: str | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not token or not token.strip():
            raise ValueError("the Entra ID token is empty: set AZURE_OPENAI_AD_TOKEN to a token")
        self._token = token.strip()
        self.source = source
        self._clock = clock
        self.expires_on = _jwt_expires_on(self._token)
        """When the token runs out (Unix time), if it says (a JWT's ``exp``); else ``None``."""

    def expires_in(self) -> float | None:
        """Seconds left (negative: expired), or ``None`` when the token does not say."""
        return None if self.expires_on is None else self.expires_on - self._clock()

    async def headers(self) -> dict[str, str]:
        left = self.expires_in()
        if left is not None and left <= 0:
            where = self.source or "the static token"
            raise AuthError(
                f"the Entra ID token from {where} expired {(-left) / 60:.0f} min ago: get a new "
                "one (`az account get-access-token --resource https://cognitiveservices.azure.com "
                "--query accessToken -o tsv`), or unset it to use `az login` directly"
            )
        return {"Authorization": f"Bearer {self._token}"}

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"StaticTokenCredential(source={self.source!r})"


def as_credential(credential: CredentialLike) -> Credential:
    """Whatever a user holds, as a :class:`Credential`:

    - a :class:`Credential` (has ``headers()``): as is;
    - an azure-identity credential (has ``get_token``), sync or async:
      :class:`EntraIdCredential` (scope ``cognitiveservices``, cached, refreshed before expiry;
      not closed by us);
    - any other callable, a bearer-token provider: :class:`TokenProviderCredential`.
    """
    if isinstance(credential, (str, bytes)):
        raise TypeError(
            "credential= takes a credential object, not a string: pass an API key as api_key=, "
            "or an Entra ID token as StaticTokenCredential(token)"
        )
    if callable(getattr(credential, "headers", None)):
        return cast(Credential, credential)
    if callable(getattr(credential, "get_token", None)):
        return EntraIdCredential(cast(TokenCredentialLike, credential))
    if callable(credential):
        return TokenProviderCredential(cast(BearerTokenProvider, credential))
    raise TypeError(
        "credential must be an aoai_realtime Credential (e.g. ApiKeyCredential), an "
        "azure-identity credential (sync or async, e.g. DefaultAzureCredential()) or a "
        f"bearer-token provider (get_bearer_token_provider(...)), not {type(credential).__name__}"
    )


def _auth_failure_message(kind: str, exc: ClientAuthenticationError) -> str:
    reason = type(exc).__name__
    detail = (getattr(exc, "message", None) or str(exc)).strip()
    if reason == "CredentialUnavailableError":
        head = f"no Microsoft Entra ID credential is available ({kind})"
    else:
        head = f"Microsoft Entra ID authentication failed ({kind})"
    return f"{head}: {_WHAT_TO_DO}. Details: {detail}"


def credential_from_settings(settings: Settings) -> Credential:
    """The credential the settings call for.

    1. ``api_key`` set (``AZURE_OPENAI_API_KEY``): :class:`ApiKeyCredential` (``api-key``
       header), or :class:`BearerKeyCredential` for api.openai.com.
    2. ``ad_token`` set (``AZURE_OPENAI_AD_TOKEN``, openai-python's name): that token as is,
       :class:`StaticTokenCredential`.
    3. A loopback endpoint without either (the local engine): :class:`NoCredential`.
    4. Tenant, client id and secret set: Entra ID via azure-identity's ``ClientSecretCredential``.
    5. Otherwise Entra ID via ``DefaultAzureCredential`` (``az login``, managed identity,
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
    if settings.ad_token:
        return StaticTokenCredential(settings.ad_token, source="AZURE_OPENAI_AD_TOKEN")
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
    if isinstance(cred, StaticTokenCredential):
        return f"Entra ID token from {cred.source}" if cred.source else "Entra ID token (static)"
    if isinstance(cred, TokenProviderCredential):
        return "a bearer-token provider"
    if isinstance(cred, NoCredential):
        return "no credential (local endpoint)"
    return type(cred).__name__
