"""Which upstream a client may use, and opening it with the server's credentials.

The page picks an endpoint with ``?endpoint=E&deployment=D``:

* ``configured`` (or nothing, when Azure settings exist): the endpoint of the server's settings,
  with its credential (API key, or Microsoft Entra ID);
* ``local`` (or nothing, without Azure settings): the in-process local engine;
* an ``https://RES.openai.azure.com`` URL: only while the server listens on loopback (the user
  is then the operator). It gets a Microsoft Entra ID token (``az login``, a service principal,
  a managed identity), never the configured API key, which belongs to the configured resource;
* anything else is refused (``endpoint_not_allowed``) before any connection is made, so the
  server's credentials never go anywhere but the configured resource, Azure, or this machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp

from ..auth import (
    REQUEST_ID_HEADER,
    AuthError,
    Credential,
    NoCredential,
    credential_from_settings,
    describe,
    new_request_id,
)
from ..calls import rest_url
from ..channel import AiohttpChannel, Channel
from ..client import sideband_url
from ..config import ConfigError, Settings, build_url, parse_endpoint
from ..protocol.dialect import DialectName
from ..protocol.handshake import HandshakeFailure
from ..protocol.session import GA_VOICES, PREVIEW_VOICES
from ..transport import HandshakeFailed, open_websocket
from .errors import CLOSE_POLICY, RelayError, handshake_error
from .local import LocalEngine
from .logs import log

__all__ = ["Upstream", "Upstreams", "is_loopback_host"]

_MEMORY_BASE = "http://local-engine.memory"  # names the in-process engine in logs only
_DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_AZURE_OPENAI_SUFFIX = ".openai.azure.com"
LOCAL_DEPLOYMENT = "gpt-realtime"


def is_loopback_host(host: str) -> bool:
    """True for ``127.0.0.0/8``, ``::1`` and ``localhost`` (not ``0.0.0.0``, which is every
    interface)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Upstream:
    """A resolved upstream: where the relay connects and how it introduces itself."""

    id: str
    """``configured``, ``local`` or ``custom``."""
    kind: Literal["local", "azure"]
    label: str
    """Names the upstream in messages: ``Azure OpenAI at https://…``, ``the local engine``."""
    base: str | None
    """Base URL (``https://RES.openai.azure.com``); ``None`` for the in-process engine."""
    deployment: str
    dialect: DialectName
    api_version: str | None = None
    credential: Credential = field(default_factory=NoCredential, repr=False, compare=False)
    credential_hint: str = "check the server's credentials"

    @property
    def voices(self) -> tuple[str, ...]:
        return GA_VOICES if self.dialect == "ga" else PREVIEW_VOICES


class Upstreams:
    """The endpoints a client may pick, and the connector for each.

    ``settings``: the server's Azure settings (``None`` or without endpoint: no ``configured``).
    ``local``: the local engine (``None``: no ``local``). ``listen_host``: the address the server
    listens on; custom Azure endpoints are allowed only when it is a loopback address.
    ``local_query`` adds query parameters to local-engine URLs (a diagnostics and test hook,
    e.g. ``{"fault": "refuse:429"}``; never settable from a client). ``local_resume_query``, when
    not ``None``, replaces it for the upstream sessions that resume a conversation (so a test can
    end the first session with a fault and let the resumed one live, or refuse only the resume).
    """

    def __init__(
        self,
        *,
        settings: Settings | None,
        local: LocalEngine | None,
        listen_host: str = "127.0.0.1",
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        connect_timeout_s: float = 10.0,
        max_msg_size: int = 32 * 1024 * 1024,
        local_query: Mapping[str, str] | None = None,
        local_resume_query: Mapping[str, str] | None = None,
    ) -> None:
        self.local = local
        self.listen_host = listen_host
        self.connect_timeout_s = connect_timeout_s
        self.max_msg_size = max_msg_size
        self.local_query: dict[str, str] = dict(local_query or {})
        self.local_resume_query: dict[str, str] | None = (
            dict(local_resume_query) if local_resume_query is not None else None
        )
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._settings = settings if settings is not None and settings.endpoint else None
        self.configured: Upstream | None = None
        if self._settings is not None:
            self.configured = self._configured_upstream(self._settings)
        if self.configured is None and self.local is None:
            raise ConfigError(
                "no upstream: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT, or install "
                "the local engine (`pip install 'aoai-realtime[local]'`)"
            )
        self._custom_credential: Credential | None = None

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def _configured_upstream(settings: Settings) -> Upstream:
        settings.validate()
        assert settings.endpoint is not None and settings.deployment is not None
        credential = credential_from_settings(settings)
        if settings.api_key:
            hint = (
                "check AZURE_OPENAI_API_KEY on the server (it must be a key of "
                f"{settings.endpoint})"
            )
        elif settings.ad_token:
            hint = (
                "the server's AZURE_OPENAI_AD_TOKEN was refused: such a token lasts about an "
                "hour and is never refreshed, so set a fresh one, or unset it to use `az login` "
                "(or set AZURE_OPENAI_API_KEY)"
            )
        elif settings.is_local:
            hint = "the server sends no key to this endpoint: set AZURE_OPENAI_API_KEY"
        else:
            hint = (
                "run `az login` on the server (or check AZURE_TENANT_ID/AZURE_CLIENT_ID/"
                "AZURE_CLIENT_SECRET), or set AZURE_OPENAI_API_KEY"
            )
        where = (
            f"The endpoint {settings.endpoint}"
            if settings.is_local
            else f"Azure OpenAI at {settings.endpoint}"
        )
        return Upstream(
            id="configured",
            kind="azure",
            label=where,
            base=settings.endpoint,
            deployment=settings.deployment,
            dialect=settings.dialect,
            api_version=settings.api_version,
            credential=credential,
            credential_hint=hint,
        )

    @property
    def allow_custom(self) -> bool:
        """Custom Azure endpoints are allowed only while the server listens on loopback."""
        return is_loopback_host(self.listen_host)

    @property
    def default(self) -> Upstream:
        if self.configured is not None:
            return self.configured
        return self._local_upstream(None)

    def _local_upstream(self, deployment: str | None) -> Upstream:
        return Upstream(
            id="local",
            kind="local",
            label="the local engine",
            base=None,
            deployment=deployment or LOCAL_DEPLOYMENT,
            dialect="ga",
            credential_hint="the local engine was started with an API key the server does not know",
        )

    def endpoints(self) -> list[dict[str, Any]]:
        """The choices shown to the page (no secrets: URLs and names only)."""
        out: list[dict[str, Any]] = []
        if self.configured is not None:
            c = self.configured
            out.append(
                {
                    "id": "configured",
                    "label": f"Azure OpenAI ({'GA' if c.dialect == 'ga' else 'preview'})",
                    "endpoint": c.base,
                    "deployment": c.deployment,
                    "dialect": c.dialect,
                    "webrtc": c.dialect == "ga",
                }
            )
        if self.local is not None:
            out.append(
                {
                    "id": "local",
                    "label": "Local engine",
                    "endpoint": "local",
                    "deployment": LOCAL_DEPLOYMENT,
                    "dialect": "ga",
                    "webrtc": self.local.webrtc,
                }
            )
        return out

    # ------------------------------------------------------------------ choosing

    def resolve(self, endpoint: str | None, deployment: str | None) -> Upstream:
        """The upstream for a client's ``?endpoint=&deployment=``, or :class:`RelayError`."""
        endpoint = (endpoint or "").strip()
        deployment = (deployment or "").strip() or None
        if deployment is not None and not _DEPLOYMENT_RE.match(deployment):
            raise RelayError(
                "deployment_required",
                f"{deployment!r} is not a deployment name: use letters, digits, '.', '_' or '-'.",
                close_code=CLOSE_POLICY,
            )
        if not endpoint:
            return self._with_deployment(self.default, deployment)
        if endpoint == "configured":
            if self.configured is None:
                raise RelayError(
                    "endpoint_not_allowed",
                    "This server has no Azure endpoint configured: pick the local engine, or set "
                    "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT on the server and restart "
                    "it.",
                    close_code=CLOSE_POLICY,
                )
            return self._with_deployment(self.configured, deployment)
        if endpoint == "local":
            if self.local is None:
                raise RelayError(
                    "endpoint_not_allowed",
                    "This server does not run the local engine: pick the configured endpoint.",
                    close_code=CLOSE_POLICY,
                )
            return self._local_upstream(deployment)
        return self._custom(endpoint, deployment)

    def _with_deployment(self, up: Upstream, deployment: str | None) -> Upstream:
        if deployment is None or deployment == up.deployment:
            return up
        if up.kind == "local":
            return self._local_upstream(deployment)
        return dataclasses.replace(up, deployment=deployment)

    def _custom(self, endpoint: str, deployment: str | None) -> Upstream:
        refuse = RelayError(
            "endpoint_not_allowed",
            f"The endpoint {endpoint[:200]!r} is not allowed: this server connects only to its "
            "configured endpoint, the local engine, and (while it listens on localhost) "
            "https://<resource>.openai.azure.com endpoints. Pick one of those.",
            close_code=CLOSE_POLICY,
        )
        try:
            ep = parse_endpoint(endpoint)
        except ConfigError:
            raise refuse from None
        if self.configured is not None and ep.base == self.configured.base:
            return self._with_deployment(self.configured, deployment or ep.deployment)
        host = ep.host.lower()
        scheme_ok = endpoint.lower().startswith(("https://", "wss://"))
        if not scheme_ok or not host.endswith(_AZURE_OPENAI_SUFFIX) or ep.base.count("/") > 2:
            raise refuse
        if not self.allow_custom:
            raise RelayError(
                "endpoint_not_allowed",
                f"Custom endpoints such as {ep.base} are allowed only when the server listens on "
                f"localhost, and this one listens on {self.listen_host}. Pick the configured "
                "endpoint, or ask the operator to configure yours.",
                close_code=CLOSE_POLICY,
            )
        dep = deployment or ep.deployment
        if not dep:
            raise RelayError(
                "deployment_required",
                f"Give the deployment name for {ep.base} (the name of your realtime deployment).",
                close_code=CLOSE_POLICY,
            )
        return Upstream(
            id="custom",
            kind="azure",
            label=f"Azure OpenAI at {ep.base}",
            base=ep.base,
            deployment=dep,
            dialect="preview" if ep.api_version else "ga",
            api_version=ep.api_version,
            credential=self._entra_credential(),
            credential_hint=(
                "custom endpoints use the server's Microsoft Entra ID identity: run `az login` "
                "on the server with an account that has the 'Cognitive Services OpenAI User' "
                f"role on {ep.base}"
            ),
        )

    def _entra_credential(self) -> Credential:
        if self._custom_credential is None:
            s = self._settings
            identity = Settings(
                endpoint="https://custom.openai.azure.com",
                tenant_id=s.tenant_id if s else None,
                client_id=s.client_id if s else None,
                client_secret=s.client_secret if s else None,
            )
            self._custom_credential = credential_from_settings(identity)
        return self._custom_credential

    # ------------------------------------------------------------------ connecting

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
                )
        return self._session

    async def url_for(self, up: Upstream, *, resume: bool = False) -> str:
        """The WebSocket URL of ``up`` (starting the local engine if needed); ``resume``: for an
        upstream session that resumes a conversation."""
        if up.kind == "local" and up.base is None:
            assert self.local is not None
            base = await self.local.url() or _MEMORY_BASE
            url = build_url(base, dialect="ga", deployment=up.deployment)
            query = self._local_query(resume)
            if query:
                url += "&" + urlencode(query, doseq=True)
            return url
        assert up.base is not None
        return build_url(
            up.base, dialect=up.dialect, deployment=up.deployment, api_version=up.api_version
        )

    def _local_query(self, resume: bool) -> dict[str, str]:
        if resume and self.local_resume_query is not None:
            return self.local_resume_query
        return self.local_query

    async def connect(self, up: Upstream, *, conn_id: str, resume: bool = False) -> Channel:
        """Open the upstream for one client connection (``resume``: a new session for a
        conversation whose session ended): a WebSocket, or an in-memory channel to the
        in-process engine. Credentials are asked for each time, so an Entra ID token is fresh."""
        url = await self.url_for(up, resume=resume)
        request_id = new_request_id()
        if up.kind == "local" and self.local is not None and self.local.in_process:
            return await self._connect_in_memory(up, url, conn_id, request_id, resume)
        auth = await self._auth_headers(up, conn_id)
        headers = {**auth, REQUEST_ID_HEADER: request_id}
        log(
            "upstream.connect",
            conn=conn_id,
            request_id=request_id,
            url=url,
            dialect=up.dialect,
            credential=describe(up.credential),
            resume=resume or None,
        )
        started = time.monotonic()
        ws = await self._open_websocket(up, url, headers, request_id, conn_id)
        log(
            "upstream.connected",
            conn=conn_id,
            request_id=request_id,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return AiohttpChannel(ws)

    async def _connect_in_memory(
        self, up: Upstream, url: str, conn_id: str, request_id: str, resume: bool
    ) -> Channel:
        assert self.local is not None
        log("upstream.connect", conn=conn_id, request_id=request_id, url=url, resume=resume or None)
        query = {**self._local_query(resume), "model": up.deployment}
        try:
            channel = await self.local.open_channel(query, {REQUEST_ID_HEADER: request_id})
        except HandshakeFailed as exc:
            raise self._refused(up, exc.failure, conn_id) from exc
        except RuntimeError as exc:
            raise RelayError(
                "upstream_unreachable",
                f"The local engine is not available: {exc}. See the server's log.",
            ) from exc
        log("upstream.connected", conn=conn_id, request_id=request_id, transport="memory")
        return channel

    # ------------------------------------------------------------------ WebRTC calls

    def webrtc(self, up: Upstream) -> bool:
        """Whether ``up`` takes WebRTC calls: the local engine (with aiortc), Azure GA."""
        if up.kind == "local":
            return self.local is not None and self.local.webrtc
        return up.dialect == "ga"

    def _in_memory(self, up: Upstream) -> bool:
        return up.kind == "local" and self.local is not None and self.local.in_process

    async def _open_websocket(
        self, up: Upstream, url: str, headers: dict[str, str], request_id: str, conn_id: str
    ) -> aiohttp.ClientWebSocketResponse:
        """The upstream WebSocket (a session's or a call's sideband); a refused handshake is
        the page's one clear :class:`RelayError`."""
        try:
            return await open_websocket(
                self._client_session(),
                url,
                headers=headers,
                request_id=request_id,
                open_timeout=self.connect_timeout_s,
                max_message_bytes=self.max_msg_size,
            )
        except HandshakeFailed as exc:
            raise self._refused(up, exc.failure, conn_id) from exc

    async def _auth_headers(self, up: Upstream, conn_id: str) -> dict[str, str]:
        """The server's credential for ``up`` as headers (a fresh token each time)."""
        try:
            return dict(await up.credential.headers())
        except AuthError as exc:
            log("upstream.auth_failed", 30, conn=conn_id, error=str(exc))
            raise RelayError(
                "upstream_unauthorized",
                f"The server could not get a token for {up.label}: {exc}",
            ) from exc
        except Exception as exc:
            log("upstream.auth_failed", 30, conn=conn_id, error=repr(exc))
            raise RelayError(
                "upstream_unauthorized",
                f"The server could not get credentials for {up.label} ({type(exc).__name__}): "
                f"{up.credential_hint}.",
            ) from exc

    def _ws_base(self, up: Upstream, local_base: str | None) -> str:
        base = local_base if up.kind == "local" else up.base
        assert base is not None
        return build_url(base, dialect="ga", deployment=up.deployment)

    async def create_call(
        self, up: Upstream, sdp: str, session: Mapping[str, Any] | None, *, conn_id: str
    ) -> tuple[str, str]:
        """Forward an SDP offer to ``up``'s ``/realtime/calls`` with the server's credential
        (the in-process engine: in memory), the session fixed by the server with it. Returns
        ``(call_id, answer_sdp)``; raises :class:`RelayError` with the page's message."""
        request_id = new_request_id()
        where = up.label[:1].upper() + up.label[1:]
        log("upstream.call", conn=conn_id, request_id=request_id, upstream=up.kind)
        if self._in_memory(up):
            assert self.local is not None
            from ..engine.admission import EngineRefusal

            query = {**self.local_query, "model": up.deployment}
            try:
                return await self.local.create_call(
                    sdp, session=session, query=query, headers={REQUEST_ID_HEADER: request_id}
                )
            except EngineRefusal as exc:
                raise self._call_refused(
                    up, exc.status, exc.message, exc.headers, conn_id, request_id
                ) from None
            except RuntimeError as exc:
                raise RelayError(
                    "upstream_unreachable",
                    f"The local engine is not available: {exc}. See the server's log.",
                ) from exc
        local_base = await self.local.url() if up.kind == "local" and self.local else None
        url = rest_url(self._ws_base(up, local_base), "calls")
        params: dict[str, str] = {}
        body: dict[str, Any] = {"type": "realtime", **dict(session or {})}
        if up.kind == "local":
            params = {**self.local_query, "model": up.deployment}
        else:
            body.setdefault("model", up.deployment)  # on Azure: the deployment's name
        headers = {**await self._auth_headers(up, conn_id), REQUEST_ID_HEADER: request_id}
        form = aiohttp.FormData()
        form.add_field("sdp", sdp, content_type="application/sdp")
        form.add_field("session", json.dumps(body), content_type="application/json")
        try:
            async with self._client_session().post(
                url,
                params=params or None,
                data=form,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.connect_timeout_s),
            ) as resp:
                text = await resp.text()
                status, answered = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log("upstream.unreachable", 30, conn=conn_id, request_id=request_id, error=repr(exc))
            raise RelayError(
                "upstream_unreachable",
                f"Could not reach {up.label} ({type(exc).__name__}): check the endpoint and the "
                "server's network, then press Start again.",
            ) from exc
        if status >= 400:
            message = _error_message(text)
            raise self._call_refused(up, status, message, answered, conn_id, request_id)
        location = answered.get("Location") or answered.get("location") or ""
        call_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not call_id:
            raise RelayError(
                "upstream_refused",
                f"{where} answered the offer (HTTP {status}) without a Location header naming "
                "the call.",
            )
        return call_id, text

    def _call_refused(
        self,
        up: Upstream,
        status: int,
        message: str,
        headers: Mapping[str, str],
        conn_id: str,
        request_id: str,
    ) -> RelayError:
        where = up.label[:1].upper() + up.label[1:]
        retry = headers.get("Retry-After") or headers.get("retry-after")
        log("upstream.call_refused", 30, conn=conn_id, request_id=request_id, status=status)
        if status == 400:
            said = message.rstrip(".") if message else "no reason given"
            error = RelayError("invalid_offer", f"{where} refused the call: {said}.")
        else:
            error = handshake_error(
                status,
                where=where,
                deployment=up.deployment,
                credential_hint=up.credential_hint,
                retry_after=retry,
            )
        error.status = status
        return error

    async def open_sideband(self, up: Upstream, call_id: str, *, conn_id: str) -> Channel:
        """Attach the server's sideband WebSocket to a call (``?call_id=``), with its
        credential; the in-process engine's in memory."""
        request_id = new_request_id()
        if self._in_memory(up):
            assert self.local is not None
            try:
                return await self.local.open_channel(
                    {"call_id": call_id}, {REQUEST_ID_HEADER: request_id}
                )
            except HandshakeFailed as exc:
                raise self._refused(up, exc.failure, conn_id) from exc
        local_base = await self.local.url() if up.kind == "local" and self.local else None
        url = sideband_url(self._ws_base(up, local_base), call_id)
        headers = {**await self._auth_headers(up, conn_id), REQUEST_ID_HEADER: request_id}
        return AiohttpChannel(await self._open_websocket(up, url, headers, request_id, conn_id))

    async def hangup_call(self, up: Upstream, call_id: str, *, conn_id: str) -> None:
        """End a call upstream (``POST .../calls/{id}/hangup``); one that has ended already, or
        an upstream that cannot be reached, is logged and passed over."""
        if self._in_memory(up):
            assert self.local is not None
            await self.local.hangup_call(call_id)
            return
        local_base = await self.local.url() if up.kind == "local" and self.local else None
        url = rest_url(self._ws_base(up, local_base), f"calls/{call_id}/hangup")
        try:
            headers = await self._auth_headers(up, conn_id)
            async with self._client_session().post(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=self.connect_timeout_s)
            ) as resp:
                status = resp.status
        except (RelayError, aiohttp.ClientError, TimeoutError) as exc:
            log("upstream.hangup_failed", 30, conn=conn_id, error=repr(exc))
            return
        if status >= 400 and status != 404:
            log("upstream.hangup_failed", 30, conn=conn_id, status=status)

    async def mint_client_secret(
        self, up: Upstream, session: Mapping[str, Any], seconds: int, *, conn_id: str
    ) -> dict[str, Any]:
        """An ephemeral key for a browser, its session fixed by the server: ``{"value",
        "expires_at", "session"}``. Raises :class:`RelayError` with the page's message."""
        body: dict[str, Any] = {
            "expires_after": {"anchor": "created_at", "seconds": seconds},
            "session": {"type": "realtime", **dict(session)},
        }
        request_id = new_request_id()
        if up.kind != "local":
            body["session"].setdefault("model", up.deployment)
        if self._in_memory(up):
            assert self.local is not None
            from ..engine.admission import EngineRefusal

            try:
                return await self.local.mint_client_secret(body)
            except EngineRefusal as exc:
                raise self._call_refused(
                    up, exc.status, exc.message, exc.headers, conn_id, request_id
                ) from None
        local_base = await self.local.url() if up.kind == "local" and self.local else None
        url = rest_url(self._ws_base(up, local_base), "client_secrets")
        headers = {**await self._auth_headers(up, conn_id), REQUEST_ID_HEADER: request_id}
        try:
            async with self._client_session().post(
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.connect_timeout_s),
            ) as resp:
                text = await resp.text()
                status, answered = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RelayError(
                "upstream_unreachable",
                f"Could not reach {up.label} ({type(exc).__name__}) for a client secret.",
            ) from exc
        if status >= 400:
            raise self._call_refused(
                up, status, _error_message(text), answered, conn_id, request_id
            )
        minted: dict[str, Any] = json.loads(text)
        return minted

    def calls_url(self, up: Upstream, local_base: str | None) -> str:
        """Where a browser holding a client secret POSTs its offer (no secret in it)."""
        return rest_url(self._ws_base(up, local_base), "calls")

    def _refused(self, up: Upstream, failure: HandshakeFailure, conn_id: str) -> RelayError:
        """The page's message for an upstream that could not be opened."""
        where = up.label[:1].upper() + up.label[1:]
        fields = {"conn": conn_id, "request_id": failure.request_id}
        if failure.kind == "status":
            retry = f"{failure.retry_after:g}" if failure.retry_after is not None else None
            log("upstream.refused", 30, **fields, status=failure.status, retry_after=retry)
            error = handshake_error(
                failure.status or 0,
                where=where,
                deployment=up.deployment,
                credential_hint=up.credential_hint,
                retry_after=retry,
            )
        elif failure.kind == "timeout":
            log("upstream.timeout", 30, **fields)
            error = RelayError(
                "upstream_unreachable",
                f"{where} did not answer within {self.connect_timeout_s:g} s: check the endpoint "
                "and the server's network, then press Start again.",
            )
        else:
            log("upstream.unreachable", 30, **fields, error=failure.detail)
            error = RelayError(
                "upstream_unreachable",
                f"Could not reach {up.label} ({failure.detail}): check the endpoint and the "
                "server's network, then press Start again.",
            )
        error.failure = failure
        return error

    async def close(self) -> None:
        if self._session is not None and self._session_factory is None:
            await self._session.close()
        self._session = None
        configured = self.configured.credential if self.configured else None
        for cred in (configured, self._custom_credential):
            if cred is not None:
                await cred.close()
        if self.local is not None:
            await self.local.close()


def _error_message(text: str) -> str:
    """The ``error.message`` of a JSON error body ("" when it has none)."""
    try:
        body = json.loads(text)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    return str(error.get("message") or "")[:500]
