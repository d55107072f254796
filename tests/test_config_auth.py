"""Settings loading, endpoint parsing, URL building and credentials (no network)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError

from aoai_realtime.auth import (
    ApiKeyCredential,
    AuthError,
    BearerKeyCredential,
    Credential,
    EntraIdCredential,
    NoCredential,
    credential_from_settings,
    describe,
    new_request_id,
)
from aoai_realtime.config import (
    ConfigError,
    Settings,
    build_url,
    normalize_endpoint,
    parse_endpoint,
)

ENDPOINT = "https://my-res.openai.azure.com"
KEY = "0123456789abcdef0123456789abWXYZ"
SECRET = "sp-secret-value-0123456789"


def _write(path: Path, **values: str) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))


# --------------------------------------------------------------------------------------------
# Settings.load


def test_precedence_environment_then_env_then_dev_vars(tmp_path: Path) -> None:
    _write(
        tmp_path / ".dev.vars",
        AZURE_OPENAI_ENDPOINT="https://from-devvars.openai.azure.com",
        AZURE_OPENAI_DEPLOYMENT="devvars-dep",
        AZURE_OPENAI_API_KEY="devvars-key",
        AZURE_TENANT_ID="devvars-tenant",
    )
    _write(
        tmp_path / ".env",
        AZURE_OPENAI_ENDPOINT="https://from-env-file.openai.azure.com",
        AZURE_OPENAI_DEPLOYMENT="envfile-dep",
    )
    env = {"AZURE_OPENAI_ENDPOINT": "https://from-environ.openai.azure.com"}
    s = Settings.load(env=env, cwd=tmp_path)
    assert s.endpoint == "https://from-environ.openai.azure.com"
    assert s.deployment == "envfile-dep"
    assert s.api_key == "devvars-key"
    assert s.tenant_id == "devvars-tenant"
    assert s.api_version is None
    assert s.sources == {
        "endpoint": "environment",
        "deployment": ".env",
        "api_key": ".dev.vars",
        "tenant_id": ".dev.vars",
    }


def test_dev_vars_alone_and_quoted_values(tmp_path: Path) -> None:
    (tmp_path / ".dev.vars").write_text(
        '# wrangler file\nAZURE_OPENAI_ENDPOINT="https://q.openai.azure.com/"\n'
        "AZURE_OPENAI_DEPLOYMENT='gpt-realtime'\n"
    )
    s = Settings.load(env={}, cwd=tmp_path)
    assert s.endpoint == "https://q.openai.azure.com"
    assert s.deployment == "gpt-realtime"
    assert s.sources["deployment"] == ".dev.vars"


def test_deployment_name_alias(tmp_path: Path) -> None:
    s = Settings.load(env={"AZURE_OPENAI_DEPLOYMENT_NAME": "alias-dep"}, cwd=tmp_path)
    assert s.deployment == "alias-dep"
    both = {"AZURE_OPENAI_DEPLOYMENT_NAME": "alias", "AZURE_OPENAI_DEPLOYMENT": "primary"}
    assert Settings.load(env=both, cwd=tmp_path).deployment == "primary"
    # Source order beats variable order: the environment's alias wins over a file's primary.
    _write(tmp_path / ".env", AZURE_OPENAI_DEPLOYMENT="from-file")
    s = Settings.load(env={"AZURE_OPENAI_DEPLOYMENT_NAME": "from-env"}, cwd=tmp_path)
    assert s.deployment == "from-env" and s.sources["deployment"] == "environment"


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    _write(tmp_path / ".env", AZURE_OPENAI_API_VERSION="2025-04-01-preview")
    s = Settings.load(env={"AZURE_OPENAI_API_VERSION": "  "}, cwd=tmp_path)
    assert s.api_version == "2025-04-01-preview"
    _write(tmp_path / ".env", AZURE_OPENAI_API_VERSION="")
    assert Settings.load(env={}, cwd=tmp_path).api_version is None


def test_load_reads_os_environ_and_cwd_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for keys in (
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_DEPLOYMENT_NAME",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_API_VERSION",
    ):
        monkeypatch.delenv(keys, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "from-os")
    _write(tmp_path / ".env", AZURE_OPENAI_ENDPOINT=ENDPOINT, AZURE_OPENAI_DEPLOYMENT="file")
    s = Settings.load()
    assert (s.endpoint, s.deployment) == (ENDPOINT, "from-os")


def test_custom_env_files_and_missing_files(tmp_path: Path) -> None:
    other = tmp_path / "conf" / "local.env"
    other.parent.mkdir()
    _write(other, AZURE_OPENAI_ENDPOINT=ENDPOINT)
    s = Settings.load(env={}, env_files=("nope.env", other), cwd=tmp_path)
    assert s.endpoint == ENDPOINT and s.sources["endpoint"] == str(other)
    assert Settings.load(env={}, cwd=tmp_path / "conf").endpoint is None


def test_pasted_url_fills_deployment_and_version_unless_set(tmp_path: Path) -> None:
    pasted = "wss://my-res.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=gpt-4o-rt"
    _write(tmp_path / ".env", AZURE_OPENAI_ENDPOINT=pasted)
    s = Settings.load(env={}, cwd=tmp_path)
    assert s.endpoint == ENDPOINT
    assert s.deployment == "gpt-4o-rt"
    assert s.api_version == "2024-10-01-preview"
    assert s.dialect == "preview"
    assert s.sources["deployment"] == ".env (AZURE_OPENAI_ENDPOINT URL)"
    s2 = Settings.load(env={"AZURE_OPENAI_DEPLOYMENT": "explicit"}, cwd=tmp_path)
    assert s2.deployment == "explicit" and s2.sources["deployment"] == "environment"


# --------------------------------------------------------------------------------------------
# Endpoints and URLs


@pytest.mark.parametrize(
    ("url", "base", "deployment", "version"),
    [
        ("https://RES.openai.azure.com", "https://res.openai.azure.com", None, None),
        ("https://res.openai.azure.com/", "https://res.openai.azure.com", None, None),
        ("  https://res.openai.azure.com//  ", "https://res.openai.azure.com", None, None),
        (
            "https://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=d1",
            "https://res.openai.azure.com",
            "d1",
            "2025-04-01-preview",
        ),
        (
            "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime",
            "https://res.openai.azure.com",
            "gpt-realtime",
            None,
        ),
        ("ws://127.0.0.1:8788/openai/v1/realtime", "http://127.0.0.1:8788", None, None),
        ("http://localhost:8788/", "http://localhost:8788", None, None),
        (
            "https://api.openai.com/v1/realtime?model=gpt-realtime",
            "https://api.openai.com",
            "gpt-realtime",
            None,
        ),
        (
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions",
            "https://res.openai.azure.com",
            "gpt-4o",
            None,
        ),
        (
            "https://gw.example.com/team-a/openai/realtime",
            "https://gw.example.com/team-a",
            None,
            None,
        ),
        ("https://[::1]:9000", "https://[::1]:9000", None, None),
    ],
)
def test_parse_endpoint(url: str, base: str, deployment: str | None, version: str | None) -> None:
    ep = parse_endpoint(url)
    assert (ep.base, ep.deployment, ep.api_version) == (base, deployment, version)
    assert normalize_endpoint(url) == base


def test_parse_endpoint_secure_flag() -> None:
    assert parse_endpoint("wss://x.openai.azure.com").secure
    assert parse_endpoint("https://x.openai.azure.com").secure
    assert not parse_endpoint("ws://127.0.0.1:1").secure
    assert not parse_endpoint("http://127.0.0.1:1").secure


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("res.openai.azure.com", "https://res.openai.azure.com"),
        ("ftp://res.openai.azure.com", "scheme 'ftp'"),
        ("https://", "no host name"),
        ("https://user:pw@res.openai.azure.com", "AZURE_OPENAI_API_KEY"),
        ("https://res.openai.azure.com:99999", "invalid port"),
        ("", "empty"),
    ],
)
def test_parse_endpoint_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_endpoint(url)


def test_bad_endpoint_in_settings_names_the_variable_and_source(tmp_path: Path) -> None:
    _write(tmp_path / ".env", AZURE_OPENAI_ENDPOINT="res.openai.azure.com")
    with pytest.raises(ConfigError, match=r"AZURE_OPENAI_ENDPOINT \(from \.env\).*https://res"):
        Settings.load(env={}, cwd=tmp_path)


def test_realtime_url_both_dialects() -> None:
    ga = Settings(endpoint=ENDPOINT, deployment="gpt-realtime")
    assert ga.dialect == "ga"
    assert (
        ga.realtime_url() == "wss://my-res.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    )
    pv = Settings(endpoint=ENDPOINT + "/", deployment="gpt-4o-rt", api_version="2025-04-01-preview")
    assert pv.dialect == "preview"
    assert pv.realtime_url() == (
        "wss://my-res.openai.azure.com/openai/realtime"
        "?api-version=2025-04-01-preview&deployment=gpt-4o-rt"
    )


def test_build_url_for_any_base() -> None:
    assert (
        build_url("http://127.0.0.1:8788", dialect="ga", deployment="X")
        == "ws://127.0.0.1:8788/openai/v1/realtime?model=X"
    )
    assert (
        build_url("https://api.openai.com", dialect="ga", deployment="gpt-realtime")
        == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    assert (
        build_url("https://api.openai.com", dialect="preview", deployment="m", api_version="v")
        == "wss://api.openai.com/v1/realtime?model=m"
    )
    assert (
        build_url(
            "https://gw.example.com/team-a/",
            dialect="preview",
            deployment="d e",
            api_version="2024-10-01-preview",
        )
        == "wss://gw.example.com/team-a/openai/realtime?api-version=2024-10-01-preview&deployment=d+e"
    )
    # A pasted full URL as the base is fine too; explicit arguments win over its query.
    assert (
        build_url(
            "wss://r.openai.azure.com/openai/v1/realtime?model=old", dialect="ga", deployment="new"
        )
        == "wss://r.openai.azure.com/openai/v1/realtime?model=new"
    )


def test_build_url_errors() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_VERSION"):
        build_url(ENDPOINT, dialect="preview", deployment="d")
    with pytest.raises(ConfigError, match="deployment"):
        build_url(ENDPOINT, dialect="ga", deployment=" ")
    with pytest.raises(ValueError, match="'ga' or 'preview'"):
        build_url(ENDPOINT, dialect="beta", deployment="d")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# ConfigError messages and flags


def test_missing_deployment_message() -> None:
    s = Settings(endpoint=ENDPOINT)
    with pytest.raises(ConfigError) as info:
        s.realtime_url()
    assert str(info.value) == (
        "AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_DEPLOYMENT is not: set it to the name of "
        "your realtime deployment (e.g. gpt-realtime)"
    )
    assert isinstance(info.value, ValueError)


def test_missing_endpoint_message() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT is not set: set it to"):
        Settings().realtime_url()


def test_problems_lists_everything() -> None:
    assert Settings(endpoint=ENDPOINT, deployment="d").problems() == []
    s = Settings(endpoint=ENDPOINT, api_version="2024-10-21", client_secret=SECRET)
    found = s.problems()
    assert len(found) == 3
    assert "AZURE_OPENAI_DEPLOYMENT is not" in found[0]
    assert "end in -preview" in found[1]
    assert "AZURE_TENANT_ID and AZURE_CLIENT_ID are not" in found[2]
    with pytest.raises(ConfigError, match="-preview.*AZURE_TENANT_ID"):
        s.validate()
    assert Settings(endpoint="https://api.openai.com", deployment="m").problems() == [
        "the endpoint is api.openai.com, which needs an API key: set AZURE_OPENAI_API_KEY to your "
        "OpenAI API key"
    ]


def test_endpoint_kinds() -> None:
    azure = Settings(endpoint=ENDPOINT)
    assert azure.is_azure and not azure.is_openai and not azure.is_local and azure.uses_entra_id
    assert Settings(endpoint="https://r.cognitiveservices.azure.com").is_azure
    assert not Settings(endpoint=ENDPOINT, api_key=KEY).uses_entra_id
    openai = Settings(endpoint="https://api.openai.com", api_key=KEY)
    assert openai.is_openai and not openai.is_azure and not openai.uses_entra_id
    for local in ("http://127.0.0.1:8788", "http://localhost:8788", "ws://[::1]:8788"):
        s = Settings(endpoint=local)
        assert s.is_local and not s.is_azure and not s.uses_entra_id
    assert not Settings(endpoint="https://gw.example.com").is_local


def test_repr_hides_secrets() -> None:
    s = Settings(
        endpoint=ENDPOINT,
        deployment="d",
        api_key=KEY,
        tenant_id="t",
        client_id="c",
        client_secret=SECRET,
    )
    for text in (repr(s), str(s), f"{s}"):
        assert KEY not in text and SECRET not in text
        assert "api_key='<set>'" in text and "client_secret='<set>'" in text
        assert "deployment='d'" in text
    assert "api_key=None" in repr(Settings())


def test_settings_are_frozen_and_compare_by_value() -> None:
    a = Settings(endpoint=ENDPOINT + "/", deployment="d")
    b = Settings(endpoint=ENDPOINT, deployment=" d ", sources={"deployment": "environment"})
    assert a == b
    with pytest.raises(AttributeError):
        a.deployment = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Credentials


class FakeTokenCredential:
    """Implements azure-core's AsyncTokenCredential interface (not our protocol)."""

    def __init__(self, clock: list[float], lifetime: float = 3600.0, delay: float = 0.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.calls: list[tuple[str, ...]] = []
        self.closed = 0
        self.error: Exception | None = None

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.calls.append(scopes)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return AccessToken(f"token-{len(self.calls)}", int(self.clock[0] + self.lifetime))

    async def close(self) -> None:
        self.closed += 1

    async def __aenter__(self) -> FakeTokenCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()


def _entra(fake: FakeTokenCredential, clock: list[float], **kwargs: object) -> EntraIdCredential:
    return EntraIdCredential(fake, clock=lambda: clock[0], **kwargs)  # type: ignore[arg-type]


async def test_api_key_credentials() -> None:
    assert await ApiKeyCredential(KEY).headers() == {"api-key": KEY}
    assert await BearerKeyCredential(KEY).headers() == {"Authorization": f"Bearer {KEY}"}
    for cred in (ApiKeyCredential(KEY), BearerKeyCredential(KEY)):
        assert isinstance(cred, Credential)
        assert KEY not in repr(cred) and KEY not in describe(cred)
        await cred.close()
    assert describe(ApiKeyCredential(KEY)) == "API key (…WXYZ)"
    assert describe(BearerKeyCredential(KEY)) == "OpenAI API key (…WXYZ)"
    assert describe(ApiKeyCredential("short-key")) == "API key (set)"
    with pytest.raises(ValueError, match="AZURE_OPENAI_API_KEY"):
        ApiKeyCredential(" ")


async def test_entra_token_is_cached_until_the_refresh_margin() -> None:
    clock = [1_000_000.0]
    fake = FakeTokenCredential(clock)
    cred = _entra(fake, clock)
    assert await cred.headers() == {"Authorization": "Bearer token-1"}
    assert await cred.headers() == {"Authorization": "Bearer token-1"}
    assert fake.calls == [("https://cognitiveservices.azure.com/.default",)]
    assert await cred.token_expires_in() == pytest.approx(3600, abs=1)

    clock[0] += 3600 - 301  # 301 s left: still more than the 300 s margin
    assert await cred.headers() == {"Authorization": "Bearer token-1"}
    assert len(fake.calls) == 1
    clock[0] += 2  # 299 s left: refresh before it expires
    assert await cred.headers() == {"Authorization": "Bearer token-2"}
    assert len(fake.calls) == 2
    assert await cred.token_expires_in() == pytest.approx(3600, abs=1)


async def test_entra_short_lived_tokens_are_fetched_every_time() -> None:
    clock = [50.0]
    fake = FakeTokenCredential(clock, lifetime=120)
    cred = _entra(fake, clock, scope="api://custom/.default", refresh_margin_s=300)
    await cred.headers()
    await cred.headers()
    assert fake.calls == [("api://custom/.default",)] * 2


async def test_entra_concurrent_callers_share_one_fetch() -> None:
    clock = [0.0]
    fake = FakeTokenCredential(clock, delay=0.05)
    cred = _entra(fake, clock)
    results = await asyncio.gather(*(cred.headers() for _ in range(10)))
    assert len(fake.calls) == 1
    assert {r["Authorization"] for r in results} == {"Bearer token-1"}


@pytest.mark.parametrize(
    ("error", "head"),
    [
        (
            ClientAuthenticationError("AADSTS7000215: Invalid client secret"),
            "authentication failed",
        ),
        (
            CredentialUnavailableError("Azure CLI not found on path"),
            "no Microsoft Entra ID credential",
        ),
    ],
)
async def test_entra_errors_say_what_to_do(error: Exception, head: str) -> None:
    clock = [0.0]
    fake = FakeTokenCredential(clock)
    fake.error = error
    cred = _entra(fake, clock)
    with pytest.raises(AuthError) as info:
        await cred.headers()
    text = str(info.value)
    assert head in text and "FakeTokenCredential" in text
    assert "run `az login`, or set AZURE_OPENAI_API_KEY" in text
    assert "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET" in text
    assert str(error.args[0]) in text
    assert isinstance(info.value, RuntimeError) and info.value.__cause__ is error
    # The failure is not cached: the next call tries again and can succeed.
    fake.error = None
    assert await cred.headers() == {"Authorization": "Bearer token-2"}


async def test_entra_close_only_closes_an_owned_credential() -> None:
    clock = [0.0]
    fake = FakeTokenCredential(clock)
    await _entra(fake, clock).close()
    assert fake.closed == 0
    await _entra(fake, clock, owns_credential=True).close()
    assert fake.closed == 1
    assert describe(_entra(fake, clock)) == "Entra ID via FakeTokenCredential"


async def test_credential_from_settings_picks_the_right_kind() -> None:
    cred = credential_from_settings(Settings(endpoint=ENDPOINT, api_key=KEY, client_secret=SECRET))
    assert type(cred) is ApiKeyCredential

    cred = credential_from_settings(Settings(endpoint="https://api.openai.com", api_key=KEY))
    assert type(cred) is BearerKeyCredential

    cred = credential_from_settings(Settings(endpoint="http://127.0.0.1:8788"))
    assert type(cred) is NoCredential
    assert await cred.headers() == {} and describe(cred) == "no credential (local endpoint)"

    sp = Settings(endpoint=ENDPOINT, tenant_id="t-id", client_id="c-id", client_secret=SECRET)
    cred = credential_from_settings(sp)
    assert isinstance(cred, EntraIdCredential) and cred.owns_credential
    assert describe(cred) == "Entra ID via ClientSecretCredential"
    assert SECRET not in repr(cred) and SECRET not in describe(cred)
    await cred.close()

    cred = credential_from_settings(Settings(endpoint=ENDPOINT))
    assert isinstance(cred, EntraIdCredential)
    assert describe(cred) == "Entra ID via DefaultAzureCredential"
    assert cred.scope == "https://cognitiveservices.azure.com/.default"
    await cred.close()

    cred = credential_from_settings(Settings(endpoint=ENDPOINT, client_id="mi-client-id"))
    assert describe(cred) == "Entra ID via DefaultAzureCredential"
    await cred.close()


def test_credential_from_settings_refuses_unusable_settings() -> None:
    with pytest.raises(ConfigError, match="needs an API key"):
        credential_from_settings(Settings(endpoint="https://api.openai.com"))
    with pytest.raises(ConfigError, match="AZURE_CLIENT_SECRET is set but AZURE_TENANT_ID is not"):
        credential_from_settings(Settings(endpoint=ENDPOINT, client_id="c", client_secret=SECRET))


def test_new_request_id_is_a_fresh_uuid4() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_ad_token_is_a_secret_setting_and_picks_a_static_token(tmp_path: Path) -> None:
    _write(tmp_path / ".env", AZURE_OPENAI_ENDPOINT=ENDPOINT, AZURE_OPENAI_AD_TOKEN="eyJ.tok.sig")
    s = Settings.load(env={}, cwd=tmp_path)
    assert s.ad_token == "eyJ.tok.sig" and s.sources["ad_token"] == ".env"
    assert "ad_token='<set>'" in repr(s) and "eyJ.tok.sig" not in repr(s)
    assert s.uses_entra_id
    cred = credential_from_settings(s)
    assert describe(cred) == "Entra ID token from AZURE_OPENAI_AD_TOKEN"
    # A key wins over it; on a loopback endpoint it is still sent (like a key would be).
    assert (
        type(credential_from_settings(Settings(endpoint=ENDPOINT, api_key=KEY, ad_token="t")))
        is ApiKeyCredential
    )
    local = credential_from_settings(Settings(endpoint="http://127.0.0.1:8788", ad_token="t"))
    assert describe(local) == "Entra ID token from AZURE_OPENAI_AD_TOKEN"
