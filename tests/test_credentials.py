"""Every kind of credential a user holds, against a real local engine behind a key.

The engine (started with ``api_key=TOKEN``) accepts ``Authorization: Bearer TOKEN``, so a
credential that produces ``TOKEN`` gets ``session.created`` and one that produces anything else
gets a real 401. The credentials are small classes implementing azure-core's interfaces (sync
``TokenCredential``, async ``AsyncTokenCredential``) and bearer-token providers, plain and from
azure-identity's own ``get_bearer_token_provider``. Expiry is driven by ``expires_on`` (already
past, or inside the refresh margin), never by waiting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.identity import get_bearer_token_provider
from azure.identity.aio import get_bearer_token_provider as get_async_bearer_token_provider

import aoai_realtime as rt
from aoai_realtime.auth import (
    COGNITIVE_SERVICES_SCOPE,
    ApiKeyCredential,
    AuthError,
    EntraIdCredential,
    StaticTokenCredential,
    TokenProviderCredential,
    as_credential,
    credential_from_settings,
    describe,
)
from aoai_realtime.commands import doctor
from aoai_realtime.config import ENV_VARS, FALLBACK_ENV_VARS, Settings
from helpers import ENGINE_SCRIPT, engine_thread

TOKEN = "engine-bearer-token-0123456789abcdef"
WRONG = "not-the-token-9876543210fedcba"
PREVIEW = "2025-04-01-preview"


@pytest.fixture(scope="module")
def keyed_engine() -> Iterator[Any]:
    """A scripted engine without speech models that wants ``TOKEN`` (Bearer or api-key)."""
    yield from engine_thread(
        None, brain="scripted", script=ENGINE_SCRIPT, no_speech=True, api_key=TOKEN
    )


class SyncCredential:
    """azure-core's sync ``TokenCredential`` (what ``azure.identity.DefaultAzureCredential()``
    is): ``get_token`` blocks and returns an ``AccessToken``."""

    def __init__(self, token: str = TOKEN, lifetime: float = 3600.0) -> None:
        self.token = token
        self.lifetime = lifetime
        self.scopes: list[tuple[str, ...]] = []
        self.threads: list[int] = []
        self.started = threading.Event()
        self.release: threading.Event | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        self.threads.append(threading.get_ident())
        self.started.set()
        if self.release is not None and not self.release.wait(10):
            raise AssertionError("get_token blocked the event loop: nothing released it")
        return AccessToken(self.token, int(time.time() + self.lifetime))

    def close(self) -> None:
        pass


class AsyncCredential:
    """azure-core's ``AsyncTokenCredential`` (``azure.identity.aio``)."""

    def __init__(self, token: str = TOKEN, lifetime: float = 3600.0) -> None:
        self.token = token
        self.lifetime = lifetime
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time() + self.lifetime))

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> AsyncCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()


async def _session_created(engine: Any, credential: Any, *, reconnects: int = 0) -> None:
    async with rt.connect(url=engine.ga_url("m"), credential=credential) as s:
        assert not s.closed and s.conversation.session  # session.created arrived
        for _ in range(reconnects):
            await s.reconnect()
            assert not s.closed


async def _refused(engine: Any, credential: Any) -> None:
    with pytest.raises(rt.AuthenticationError, match="401"):
        await rt.connect(url=engine.ga_url("m"), credential=credential)


# --------------------------------------------------------------------------------------------
# azure-identity credentials, sync and async


async def test_a_sync_credential_connects_and_runs_off_the_event_loop(keyed_engine: Any) -> None:
    cred = SyncCredential()
    cred.release = threading.Event()

    async def release_once_started() -> None:
        # Runs on the event loop: if get_token blocked the loop, this never gets to release it.
        await asyncio.to_thread(cred.started.wait, 10)
        assert cred.release is not None
        cred.release.set()

    releaser = asyncio.ensure_future(release_once_started())
    await _session_created(keyed_engine, cred)
    await releaser
    assert cred.scopes == [(COGNITIVE_SERVICES_SCOPE,)]
    assert cred.threads and threading.get_ident() not in cred.threads

    await _refused(keyed_engine, SyncCredential(WRONG))


async def test_an_async_credential_connects(keyed_engine: Any) -> None:
    cred = AsyncCredential()
    await _session_created(keyed_engine, cred)
    assert cred.scopes == [(COGNITIVE_SERVICES_SCOPE,)]
    await _refused(keyed_engine, AsyncCredential(WRONG))


@pytest.mark.parametrize("kind", [SyncCredential, AsyncCredential])
async def test_a_token_is_cached_while_it_lasts_and_fetched_again_near_expiry(
    keyed_engine: Any, kind: type[SyncCredential] | type[AsyncCredential]
) -> None:
    lasting = kind(lifetime=3600)
    await _session_created(keyed_engine, lasting, reconnects=2)
    assert len(lasting.scopes) == 1  # one token for three connections

    expiring = kind(lifetime=60)  # inside the 5-minute refresh margin: fetched every time
    await _session_created(keyed_engine, expiring, reconnects=2)
    assert len(expiring.scopes) == 3

    expired = kind(lifetime=-10)
    await _session_created(keyed_engine, expired, reconnects=1)
    assert len(expired.scopes) == 2


async def test_entra_credential_takes_sync_credentials_directly() -> None:
    clock = [1_000_000.0]

    class Clocked(SyncCredential):
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.scopes.append(scopes)
            return AccessToken(f"t{len(self.scopes)}", int(clock[0] + self.lifetime))

    sync = Clocked()
    cred = EntraIdCredential(sync, clock=lambda: clock[0])
    assert await cred.headers() == {"Authorization": "Bearer t1"}
    clock[0] += 3600 - 301
    assert await cred.headers() == {"Authorization": "Bearer t1"}
    clock[0] += 2  # 299 s left: fetch a new one
    assert await cred.headers() == {"Authorization": "Bearer t2"}
    assert await cred.token_expires_in() == pytest.approx(3600, abs=1)
    await cred.close()  # a sync close() is fine too


async def test_a_get_token_that_returns_no_access_token_is_named() -> None:
    class Broken:
        def get_token(self, *scopes: str) -> str:
            return "just-a-string"

    with pytest.raises(AuthError, match=r"Broken\.get_token returned str, not an AccessToken"):
        await as_credential(Broken()).headers()  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Bearer-token providers


async def test_a_sync_provider_is_called_per_connection_in_a_thread(keyed_engine: Any) -> None:
    calls: list[int] = []

    def provider() -> str:
        calls.append(threading.get_ident())
        return TOKEN

    await _session_created(keyed_engine, provider, reconnects=1)
    assert len(calls) == 2 and threading.get_ident() not in calls
    await _refused(keyed_engine, lambda: WRONG)


async def test_an_async_provider_connects(keyed_engine: Any) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return TOKEN

    await _session_created(keyed_engine, provider, reconnects=1)
    assert calls == 2

    async def wrong() -> str:
        return WRONG

    await _refused(keyed_engine, wrong)


async def test_azure_identitys_own_token_providers(keyed_engine: Any) -> None:
    sync = SyncCredential()
    await _session_created(
        keyed_engine, get_bearer_token_provider(sync, COGNITIVE_SERVICES_SCOPE), reconnects=1
    )
    assert sync.scopes == [(COGNITIVE_SERVICES_SCOPE,)]  # azure's provider caches the token

    aio = AsyncCredential()
    provider = get_async_bearer_token_provider(aio, COGNITIVE_SERVICES_SCOPE)
    await _session_created(keyed_engine, provider, reconnects=1)
    assert aio.scopes == [(COGNITIVE_SERVICES_SCOPE,)]
    assert describe(as_credential(provider)) == "a bearer-token provider"


async def test_a_provider_that_gives_no_token_is_refused_before_connecting() -> None:
    with pytest.raises(AuthError, match="returned '', not a token string"):
        await TokenProviderCredential(lambda: "").headers()
    with pytest.raises(AuthError, match="returned NoneType"):
        await TokenProviderCredential(lambda: None).headers()  # type: ignore[arg-type,return-value]


def test_as_credential_sorts_what_it_is_given() -> None:
    key = ApiKeyCredential("k" * 32)
    assert as_credential(key) is key
    assert isinstance(as_credential(SyncCredential()), EntraIdCredential)
    assert isinstance(as_credential(AsyncCredential()), EntraIdCredential)
    assert isinstance(as_credential(lambda: TOKEN), TokenProviderCredential)
    with pytest.raises(TypeError, match="not a string: pass an API key as api_key="):
        as_credential("a-key")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bearer-token provider"):
        as_credential(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# AZURE_OPENAI_AD_TOKEN and OPENAI_API_VERSION


def _jwt(exp: float) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': exp, 'aud': 'cognitiveservices'})}.sig"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No settings of the developer's: none of our variables, nor openai-python's, nor files."""
    for names in (*ENV_VARS.values(), *FALLBACK_ENV_VARS.values()):
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


async def test_ad_token_from_the_environment_connects(
    keyed_engine: Any, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", keyed_engine.http_url)
    clean_env.setenv("AZURE_OPENAI_DEPLOYMENT", "m")
    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", TOKEN)
    settings = Settings.load()
    assert settings.ad_token == TOKEN and settings.sources["ad_token"] == "environment"
    assert TOKEN not in repr(settings)
    cred = credential_from_settings(settings)
    assert isinstance(cred, StaticTokenCredential)
    assert describe(cred) == "Entra ID token from AZURE_OPENAI_AD_TOKEN"
    async with rt.connect() as s:
        assert not s.closed and s.dialect == "ga"

    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", WRONG)
    with pytest.raises(rt.AuthenticationError, match="401"):
        await rt.connect()


async def test_an_api_key_wins_over_an_ad_token(
    keyed_engine: Any, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", WRONG)  # the environment ...
    (tmp_path / ".env").write_text(  # ... does not beat our own name, even from a file
        f"AZURE_OPENAI_ENDPOINT={keyed_engine.http_url}\nAZURE_OPENAI_DEPLOYMENT=m\n"
        f"AZURE_OPENAI_API_KEY={TOKEN}\n"
    )
    assert isinstance(credential_from_settings(Settings.load()), ApiKeyCredential)
    async with rt.connect() as s:
        assert not s.closed


async def test_an_expired_ad_token_is_not_sent(clean_env: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    cred = StaticTokenCredential(_jwt(now - 600), "AZURE_OPENAI_AD_TOKEN", clock=lambda: now)
    assert cred.expires_in() == pytest.approx(-600)
    with pytest.raises(AuthError, match=r"AZURE_OPENAI_AD_TOKEN expired 10 min ago.*az account"):
        await cred.headers()
    fresh = StaticTokenCredential(_jwt(now + 1800), clock=lambda: now)
    assert fresh.expires_in() == pytest.approx(1800)
    assert await fresh.headers() == {"Authorization": f"Bearer {_jwt(now + 1800)}"}
    assert StaticTokenCredential("opaque").expires_on is None

    # Through connect(): refused before any connection is tried.
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", "https://my-res.openai.azure.com")
    clean_env.setenv("AZURE_OPENAI_DEPLOYMENT", "m")
    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", _jwt(1))
    with pytest.raises(AuthError, match="expired"):
        await rt.connect()


async def test_openai_api_version_selects_the_preview_dialect(
    keyed_engine: Any, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", keyed_engine.http_url)
    clean_env.setenv("AZURE_OPENAI_DEPLOYMENT", "m")
    clean_env.setenv("AZURE_OPENAI_API_KEY", TOKEN)
    clean_env.setenv("OPENAI_API_VERSION", PREVIEW)
    settings = Settings.load()
    assert settings.api_version == PREVIEW
    assert settings.sources["api_version"] == "environment (OPENAI_API_VERSION)"
    async with rt.connect() as s:
        assert s.dialect == "preview"

    # Ours wins, wherever it is set.
    (tmp_path / ".env").write_text("AZURE_OPENAI_API_VERSION=2024-10-01-preview\n")
    settings = Settings.load()
    assert (settings.api_version, settings.sources["api_version"]) == (
        "2024-10-01-preview",
        ".env",
    )
    # So does the api-version of a pasted endpoint URL.
    (tmp_path / ".env").unlink()
    clean_env.setenv(
        "AZURE_OPENAI_ENDPOINT",
        f"{keyed_engine.http_url}/openai/realtime?api-version=2024-12-17-preview&deployment=m",
    )
    assert Settings.load().api_version == "2024-12-17-preview"

    # A GA chat-completions version (what openai-python users often hold) is not ours to use.
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", keyed_engine.http_url)
    clean_env.setenv("OPENAI_API_VERSION", "2024-10-21")
    settings = Settings.load()
    assert settings.api_version is None and settings.dialect == "ga"
    assert settings.problems() == []
    async with rt.connect() as s:
        assert s.dialect == "ga"


def test_openai_api_version_only_from_a_file_too(tmp_path: Path) -> None:
    (tmp_path / ".dev.vars").write_text(f"OPENAI_API_VERSION={PREVIEW}\n")
    s = Settings.load(env={}, cwd=tmp_path)
    assert (s.api_version, s.sources["api_version"]) == (PREVIEW, ".dev.vars (OPENAI_API_VERSION)")
    s = Settings.load(env={"AZURE_OPENAI_API_VERSION": "2024-10-01-preview"}, cwd=tmp_path)
    assert s.sources["api_version"] == "environment"


# --------------------------------------------------------------------------------------------
# doctor names the credential it used


def _doctor(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    status = doctor.main(["--json", "--timeout", "10"])
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert status == (0 if report["ok"] else 1)
    return checks


def test_doctor_names_the_ad_token_and_the_api_key(
    keyed_engine: Any, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", keyed_engine.http_url)
    clean_env.setenv("AZURE_OPENAI_DEPLOYMENT", "m")
    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", TOKEN)
    clean_env.setenv("OPENAI_API_VERSION", PREVIEW)
    checks = _doctor(capsys)
    detail = checks["credential"]["detail"]
    assert detail.startswith("Entra ID token from AZURE_OPENAI_AD_TOKEN (environment)"), detail
    assert checks["credential"]["status"] == "pass" and TOKEN not in json.dumps(checks)
    assert checks["dialect"]["detail"].startswith(
        f"preview because OPENAI_API_VERSION={PREVIEW} (from environment)"
    )
    assert "OPENAI_API_VERSION from environment" in checks["settings"]["detail"]
    assert checks["handshake"]["status"] == "pass", checks["handshake"]

    clean_env.setenv("AZURE_OPENAI_API_KEY", TOKEN)
    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", _jwt(1))  # expired, but the key wins
    clean_env.setenv("OPENAI_API_VERSION", "2024-10-21")
    checks = _doctor(capsys)
    assert checks["credential"]["detail"].startswith(
        "API key from AZURE_OPENAI_API_KEY (environment)"
    )
    assert (
        "OPENAI_API_VERSION=2024-10-21 (from environment) is ignored"
        in (checks["dialect"]["detail"])
    )
    assert checks["handshake"]["status"] == "pass", checks["handshake"]


def test_doctor_fails_an_expired_ad_token_and_says_how_to_renew(
    keyed_engine: Any, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", keyed_engine.http_url)
    clean_env.setenv("AZURE_OPENAI_DEPLOYMENT", "m")
    clean_env.setenv("AZURE_OPENAI_AD_TOKEN", _jwt(1))
    checks = _doctor(capsys)
    assert checks["credential"]["status"] == "fail"
    assert "expired" in checks["credential"]["detail"]
    assert "az account get-access-token" in checks["credential"]["fix"]
    assert checks["handshake"]["status"] == "skip"


def test_doctor_wording_for_azure_identity_credentials() -> None:
    azure = "https://my-res.openai.azure.com"
    source = doctor._credential_source
    assert source(Settings(endpoint=azure)).startswith("DefaultAzureCredential (azure-identity)")
    sp = Settings(
        endpoint=azure,
        tenant_id="t",
        client_id="c",
        client_secret="s",
        sources={"client_secret": ".env"},
    )
    assert source(sp).startswith("service principal: ClientSecretCredential (azure-identity)")
    mi = Settings(endpoint=azure, client_id="c", sources={"client_id": "environment"})
    assert source(mi) == (
        "user-assigned managed identity: DefaultAzureCredential (azure-identity) with "
        "AZURE_CLIENT_ID (environment)"
    )
