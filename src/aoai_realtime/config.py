"""Settings from the environment, ``.env`` and ``.dev.vars``, and realtime URL building.

Precedence, per variable: the process environment, then ``.env``, then ``.dev.vars`` (the seed
project's Wrangler-style file, same ``KEY=VALUE`` syntax). An empty value counts as unset.
:attr:`Settings.sources` records where each value came from, for the ``doctor`` command.

Our own names (:data:`ENV_VARS`) come first, in every source; openai-python's
(:data:`FALLBACK_ENV_VARS`: ``OPENAI_API_VERSION``) only when none of ours is set anywhere (and
a pasted endpoint URL's ``api-version`` did not say either). ``AZURE_OPENAI_AD_TOKEN``
(openai-python's name for a static Entra ID token) has no twin of ours and is read like ours.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from dotenv import dotenv_values

from .protocol.dialect import DialectName

__all__ = [
    "DEFAULT_ENV_FILES",
    "ENV_VARS",
    "FALLBACK_ENV_VARS",
    "ConfigError",
    "DialectName",
    "Endpoint",
    "Settings",
    "build_url",
    "normalize_endpoint",
    "parse_endpoint",
]

"""``ga``: ``/openai/v1/realtime?model=``; ``preview``: ``/openai/realtime?api-version=``."""

DEFAULT_ENV_FILES = (".env", ".dev.vars")

ENV_VARS: dict[str, tuple[str, ...]] = {
    "endpoint": ("AZURE_OPENAI_ENDPOINT",),
    "deployment": ("AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_DEPLOYMENT_NAME"),
    "api_key": ("AZURE_OPENAI_API_KEY",),
    "api_version": ("AZURE_OPENAI_API_VERSION",),
    "tenant_id": ("AZURE_TENANT_ID",),
    "client_id": ("AZURE_CLIENT_ID",),
    "client_secret": ("AZURE_CLIENT_SECRET",),
    "ad_token": ("AZURE_OPENAI_AD_TOKEN",),
}
"""Settings field -> the variables that set it, first one winning within one source."""

FALLBACK_ENV_VARS: dict[str, tuple[str, ...]] = {
    "api_version": ("OPENAI_API_VERSION",),
}
"""openai-python's names, read only when the field is set nowhere by :data:`ENV_VARS` (nor by
a pasted endpoint URL). ``OPENAI_API_VERSION`` counts only when it is a preview version (ends in
``-preview``): openai-python users often hold a GA chat-completions version there (e.g.
``2024-10-21``), which would otherwise switch realtime to a preview URL that refuses it."""

_SECRET_FIELDS = frozenset({"api_key", "client_secret", "ad_token"})
_OPENAI_HOST = "api.openai.com"
_AZURE_SUFFIXES = (".azure.com", ".azure.us", ".azure.cn", ".azure-api.net")
_EXAMPLE_ENDPOINT = "https://my-resource.openai.azure.com"
_EXAMPLE_DEPLOYMENT = "gpt-realtime"
_EXAMPLE_PREVIEW_VERSION = "2025-04-01-preview"


class ConfigError(ValueError):
    """Settings that cannot work; the message says which variable to set and how."""


# --------------------------------------------------------------------------------------------
# Endpoints and URLs


class Endpoint(NamedTuple):
    """A parsed endpoint: its base URL and whatever a pasted full URL said about the rest."""

    base: str
    """``https://host[:port][/prefix]`` (or ``http://``), no trailing slash, no query."""
    deployment: str | None = None
    """From ``deployment=``, ``model=`` or ``/openai/deployments/NAME`` in a pasted URL."""
    api_version: str | None = None
    """From ``api-version=`` in a pasted URL."""

    @property
    def secure(self) -> bool:
        """True for https/wss (TLS), False for http/ws."""
        return self.base.startswith("https://")

    @property
    def host(self) -> str:
        return urlsplit(self.base).hostname or ""


def parse_endpoint(url: str) -> Endpoint:
    """Parse an endpoint as people paste it.

    Accepts ``https://RES.openai.azure.com`` with or without a trailing slash, a full realtime
    URL (``.../openai/realtime?api-version=...&deployment=...``,
    ``.../openai/v1/realtime?model=...``, ``https://api.openai.com/v1/realtime?model=...``) and
    ``wss://``/``ws://``/``http://`` schemes. The base keeps the scheme's meaning (``wss`` ->
    ``https``, ``ws`` -> ``http``) and any path prefix before ``/openai`` (e.g. a gateway's).
    """
    raw = url.strip()
    if not raw:
        raise ConfigError(f"the endpoint is empty: use your resource's, e.g. {_EXAMPLE_ENDPOINT}")
    if "://" not in raw:
        raise ConfigError(
            f"endpoint {raw!r} has no scheme: write it as https://{raw.lstrip('/')} "
            "(or http:// for a local server)"
        )
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "wss", "http", "ws"):
        raise ConfigError(
            f"endpoint {raw!r} has scheme {scheme!r}: use https:// (or wss://, http://, ws://)"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            "the endpoint URL contains credentials (user:password@): remove them and set "
            "AZURE_OPENAI_API_KEY instead"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"endpoint {raw!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise ConfigError(f"endpoint {raw!r} has no host name: use e.g. {_EXAMPLE_ENDPOINT}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"

    segments = [s for s in parts.path.split("/") if s]
    deployment: str | None = None
    if "openai" in segments:  # strip /openai/... (realtime, v1/realtime, deployments/NAME/...)
        at = segments.index("openai")
        rest = segments[at + 1 :]
        if len(rest) >= 2 and rest[0] == "deployments":
            deployment = rest[1]
        segments = segments[:at]
    else:  # OpenAI style: /v1/realtime, /v1, /realtime
        for tail in (["v1", "realtime"], ["v1"], ["realtime"]):
            if segments[-len(tail) :] == tail:
                segments = segments[: -len(tail)]
                break
    prefix = "".join(f"/{s}" for s in segments)

    query = parse_qs(parts.query)

    def first(*names: str) -> str | None:
        for name in names:
            for value in query.get(name, []):
                if value.strip():
                    return value.strip()
        return None

    secure = scheme in ("https", "wss")
    return Endpoint(
        base=f"{'https' if secure else 'http'}://{netloc}{prefix}",
        deployment=first("deployment", "model") or deployment,
        api_version=first("api-version"),
    )


def normalize_endpoint(url: str) -> str:
    """The base URL of an endpoint (see :func:`parse_endpoint`), e.g. ``https://RES.openai.azure.com``."""
    return parse_endpoint(url).base


def realtime_url(url: str, model: str = "gpt-realtime") -> str:
    """A realtime WebSocket URL as given (``https``/``http`` become ``wss``/``ws``), or, for a
    bare ``ws://HOST[:PORT]`` (no path, no query), the GA realtime URL on it:
    ``ws://HOST:PORT/openai/v1/realtime?model=MODEL``. :class:`ConfigError` for anything that is
    not a WebSocket or HTTP URL. The SDK's ``url=`` and the commands' ``--url`` both use it."""
    raw = url.strip()
    parts = urlsplit(raw)
    mapping = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
    scheme = mapping.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ConfigError(
            f"url {raw!r} is not a realtime WebSocket URL: use e.g. "
            "'ws://127.0.0.1:8788/openai/v1/realtime?model=local' (or just ws://HOST:PORT for "
            "the GA path)"
        )
    rest = raw[len(parts.scheme) :]
    if parts.path.strip("/") == "" and not parts.query:
        return f"{scheme}{rest.rstrip('/')}/openai/v1/realtime?{urlencode({'model': model})}"
    return f"{scheme}{rest}"


def build_url(
    base: str, *, dialect: DialectName, deployment: str, api_version: str | None = None
) -> str:
    """The realtime WebSocket URL for any base URL.

    - OpenAI (``https://api.openai.com``): ``wss://api.openai.com/v1/realtime?model=M`` for both
      dialects (the preview one is selected by the ``OpenAI-Beta: realtime=v1`` header).
    - Anything else (Azure, the local engine, a gateway), GA:
      ``wss://HOST/openai/v1/realtime?model=DEP``; preview:
      ``wss://HOST/openai/realtime?api-version=V&deployment=DEP``.

    ``https`` becomes ``wss`` and ``http`` becomes ``ws``.
    """
    if dialect not in ("ga", "preview"):
        raise ValueError(f"dialect must be 'ga' or 'preview' (got {dialect!r})")
    if not deployment or not deployment.strip():
        raise ConfigError(
            f"no deployment given: pass the name of your realtime deployment "
            f"(e.g. {_EXAMPLE_DEPLOYMENT})"
        )
    ep = parse_endpoint(base)
    ws_base = ("wss" if ep.secure else "ws") + ep.base[ep.base.index("://") :]
    if ep.host == _OPENAI_HOST:
        return f"{ws_base}/v1/realtime?{urlencode({'model': deployment.strip()})}"
    if dialect == "ga":
        return f"{ws_base}/openai/v1/realtime?{urlencode({'model': deployment.strip()})}"
    if not api_version or not api_version.strip():
        raise ConfigError(
            "the preview dialect needs an api-version: set AZURE_OPENAI_API_VERSION "
            f"(e.g. {_EXAMPLE_PREVIEW_VERSION}), or leave it unset to use the GA endpoint"
        )
    query = urlencode({"api-version": api_version.strip(), "deployment": deployment.strip()})
    return f"{ws_base}/openai/realtime?{query}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True, repr=False)
class Settings:
    """Where and how to connect. Build with :meth:`load`, or directly (the endpoint is normalised
    either way, and a pasted full URL fills ``deployment``/``api_version`` when they are unset)."""

    endpoint: str | None = None
    deployment: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    ad_token: str | None = None
    """A Microsoft Entra ID access token sent as is (``AZURE_OPENAI_AD_TOKEN``); it cannot be
    refreshed, so it serves about an hour. An API key wins over it."""
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    """Field name -> where its value came from: ``environment``, ``.env``, ``.dev.vars``, ...
    A value taken from a pasted endpoint URL says so, e.g. ``.env (AZURE_OPENAI_ENDPOINT URL)``."""

    def __post_init__(self) -> None:
        sources = dict(self.sources)
        for name in ENV_VARS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"Settings.{name} must be a str or None, not {type(value).__name__}"
                )
            cleaned = value.strip() if value else None
            object.__setattr__(self, name, cleaned or None)
            if not cleaned:
                sources.pop(name, None)
        if self.endpoint is not None:
            origin = sources.get("endpoint")
            try:
                ep = parse_endpoint(self.endpoint)
            except ConfigError as exc:
                where = f" (from {origin})" if origin else ""
                raise ConfigError(f"AZURE_OPENAI_ENDPOINT{where}: {exc}") from None
            object.__setattr__(self, "endpoint", ep.base)
            from_url = f"{origin} (AZURE_OPENAI_ENDPOINT URL)" if origin else "endpoint URL"
            if self.deployment is None and ep.deployment:
                object.__setattr__(self, "deployment", ep.deployment)
                sources["deployment"] = from_url
            if self.api_version is None and ep.api_version:
                object.__setattr__(self, "api_version", ep.api_version)
                sources["api_version"] = from_url
        object.__setattr__(self, "sources", sources)

    # ---- loading

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        env_files: Sequence[str | os.PathLike[str]] = DEFAULT_ENV_FILES,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Read settings: ``env`` (default ``os.environ``) wins, then each of ``env_files`` in
        order (relative ones are looked up in ``cwd``, default the current directory; missing
        files are skipped)."""
        layers: list[tuple[str, Mapping[str, str | None]]] = [
            ("environment", os.environ if env is None else env)
        ]
        base = Path(cwd) if cwd is not None else Path.cwd()
        for name in env_files:
            path = Path(name)
            if not path.is_absolute():
                path = base / path
            if path.is_file():
                try:
                    layers.append((os.fspath(name), dotenv_values(path)))
                except (OSError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"could not read {path}: {exc}") from None
        values: dict[str, str] = {}
        sources: dict[str, str] = {}
        for fname, keys in ENV_VARS.items():
            for origin, layer in layers:
                found = next((layer[k] for k in keys if (layer.get(k) or "").strip()), None)
                if found is not None:
                    values[fname] = found
                    sources[fname] = origin
                    break
        settings = cls(**values, sources=sources)
        fallbacks: dict[str, str] = {}
        fallback_sources = dict(settings.sources)
        for fname, keys in FALLBACK_ENV_VARS.items():
            if getattr(settings, fname) is not None:
                continue
            for origin, layer in layers:
                var = next((k for k in keys if _usable_fallback(k, layer.get(k))), None)
                if var is not None:
                    fallbacks[fname] = str(layer[var])
                    fallback_sources[fname] = f"{origin} ({var})"
                    break
        if fallbacks:
            settings = dataclasses.replace(settings, **fallbacks, sources=fallback_sources)
        return settings

    # ---- derived

    @property
    def host(self) -> str:
        """The endpoint's host name, or ``""`` without an endpoint."""
        return (urlsplit(self.endpoint).hostname or "") if self.endpoint else ""

    @property
    def dialect(self) -> DialectName:
        """``preview`` when an api-version is set, else ``ga``."""
        return "preview" if self.api_version else "ga"

    @property
    def is_azure(self) -> bool:
        """The endpoint is an Azure service (``*.openai.azure.com``, ``*.cognitiveservices.azure.com``,
        ``*.services.ai.azure.com``, sovereign clouds, API Management)."""
        return self.host.endswith(_AZURE_SUFFIXES)

    @property
    def is_openai(self) -> bool:
        """The endpoint is OpenAI's own API (``api.openai.com``)."""
        return self.host == _OPENAI_HOST

    @property
    def is_local(self) -> bool:
        """The endpoint is on this machine (localhost, 127.0.0.0/8, ::1), e.g. the local engine."""
        return bool(self.host) and _is_loopback(self.host)

    @property
    def uses_service_principal(self) -> bool:
        return bool(self.tenant_id and self.client_id and self.client_secret)

    @property
    def uses_entra_id(self) -> bool:
        """No API key, so credentials come from Microsoft Entra ID (not for OpenAI or local)."""
        return not self.api_key and not self.is_openai and not self.is_local

    # ---- checks and URL

    def problems(self) -> list[str]:
        """Everything that would stop a connection, each with how to fix it (empty when fine)."""
        found: list[str] = []
        if self.endpoint is None:
            found.append(
                "AZURE_OPENAI_ENDPOINT is not set: set it to your resource's endpoint, e.g. "
                f"{_EXAMPLE_ENDPOINT} (in the environment, .env or .dev.vars)"
            )
        elif self.deployment is None:
            found.append(
                "AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_DEPLOYMENT is not: set it to the "
                f"name of your realtime deployment (e.g. {_EXAMPLE_DEPLOYMENT})"
            )
        if self.api_version and not self.api_version.endswith("-preview"):
            found.append(
                f"AZURE_OPENAI_API_VERSION={self.api_version} selects the preview protocol, whose "
                f"versions end in -preview (e.g. {_EXAMPLE_PREVIEW_VERSION}); unset it to use the "
                "GA endpoint /openai/v1/realtime"
            )
        if self.is_openai and not self.api_key:
            found.append(
                "the endpoint is api.openai.com, which needs an API key: set AZURE_OPENAI_API_KEY "
                "to your OpenAI API key"
            )
        if self.client_secret and not (self.tenant_id and self.client_id):
            missing = [
                var
                for var, value in (
                    ("AZURE_TENANT_ID", self.tenant_id),
                    ("AZURE_CLIENT_ID", self.client_id),
                )
                if not value
            ]
            found.append(
                f"AZURE_CLIENT_SECRET is set but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not: a service principal needs all "
                "three of AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
            )
        return found

    def validate(self) -> Settings:
        """Raise :class:`ConfigError` listing every problem; return ``self`` when there are none."""
        found = self.problems()
        if found:
            raise ConfigError("; ".join(found) if len(found) > 1 else found[0])
        return self

    def realtime_url(self) -> str:
        """The WebSocket URL for these settings (see :func:`build_url`)."""
        if self.endpoint is None or self.deployment is None:
            raise ConfigError(self.problems()[0])
        return build_url(
            self.endpoint,
            dialect=self.dialect,
            deployment=self.deployment,
            api_version=self.api_version,
        )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={_mask(getattr(self, name)) if name in _SECRET_FIELDS else repr(getattr(self, name))}"
            for name in ENV_VARS
        )
        return f"Settings({shown})"

    __str__ = __repr__


def _usable_fallback(var: str, value: str | None) -> bool:
    value = (value or "").strip()
    if var == "OPENAI_API_VERSION":
        return value.endswith("-preview")
    return bool(value)


def _mask(value: str | None) -> str:
    return "None" if value is None else "'<set>'"
