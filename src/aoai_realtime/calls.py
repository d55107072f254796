"""WebRTC over REST: mint client secrets, make calls from SDP offers, hang calls up.

The WebRTC flow Azure documents (and OpenAI's, and the local engine's), with the server side in
Python::

    secret = await create_client_secret(session=SessionConfig(instructions="Be brief"))
    # give secret.value to the browser; it POSTs its offer to .../realtime/calls with it

    answer = await create_call(offer_sdp)          # or: the server proxies the browser's offer
    async with connect(call_id=answer.call_id) as rt:  # the sideband: tools, session.update
        ...
    await hangup_call(answer.call_id)

Each function takes what :func:`aoai_realtime.connect` takes to find the service and its
credential (settings, ``endpoint``/``deployment``/``api_key``/``credential``, or ``url=`` of the
local engine or a gateway) and talks to its GA REST paths: ``.../openai/v1/realtime/client_secrets``,
``.../openai/v1/realtime/calls`` and ``.../calls/{call_id}/hangup`` on Azure and the engine;
``https://api.openai.com/v1/realtime/...`` on OpenAI. A refusal raises :class:`RequestFailed`
with the status and the service's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ._version import __version__
from .auth import REQUEST_ID_HEADER, BearerKeyCredential, CredentialLike, new_request_id
from .client import RealtimeError, _resolve_target, _Target
from .config import Settings
from .protocol.session import SessionConfig

__all__ = [
    "CallAnswer",
    "ClientSecret",
    "RequestFailed",
    "create_call",
    "create_client_secret",
    "hangup_call",
    "rest_url",
]

_USER_AGENT = f"aoai-realtime/{__version__} aiohttp/{aiohttp.__version__}"

SessionLike = SessionConfig | Mapping[str, Any]
"""A session configuration: a :class:`SessionConfig` or a GA ``session`` object as a dict."""


@dataclass(frozen=True)
class ClientSecret:
    """An ephemeral key (``ek_...``) for one browser or device, valid until ``expires_at``.

    Its ``value`` authorises ``POST .../realtime/calls`` (``Authorization: Bearer ...``) and a
    realtime WebSocket; the session it was minted with applies to what it opens. Give the
    browser the value only, never the server's own key.
    """

    value: str = field(repr=False)
    expires_at: int
    """Unix seconds."""
    session: dict[str, Any]
    """The session as the service will apply it (GA shape)."""


@dataclass(frozen=True)
class CallAnswer:
    """The service's answer to an SDP offer: the ``call_id`` (attach a sideband with
    ``connect(call_id=...)``), the SDP answer for the peer, and the ``Location`` as sent."""

    call_id: str
    sdp: str
    location: str


class RequestFailed(RealtimeError):
    """A REST request was refused: ``status``, the service's ``code`` and ``message``."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int,
        code: str | None = None,
        service_message: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.code = code
        self.service_message = service_message
        self.request_id = request_id


def rest_url(realtime_url: str, name: str) -> str:
    """The GA REST URL ``name`` (``calls``, ``client_secrets``, ``calls/ID/hangup``) next to a
    realtime WebSocket URL or a bare endpoint: ``wss://R.openai.azure.com/openai/v1/realtime?...``
    -> ``https://R.openai.azure.com/openai/v1/realtime/NAME``; ``http://127.0.0.1:8788`` ->
    ``http://127.0.0.1:8788/openai/v1/realtime/NAME``; OpenAI's ``/v1/realtime`` stays
    ``/v1/realtime/NAME``; a preview path (``/openai/realtime``) becomes the GA one."""
    parts = urlsplit(realtime_url.strip())
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme.lower(), parts.scheme.lower())
    path = parts.path.rstrip("/")
    if path.endswith("/openai/realtime"):
        path = path[: -len("/openai/realtime")] + "/openai/v1/realtime"
    elif not path.endswith("/realtime"):
        path += "/openai/v1/realtime"
    return urlunsplit((scheme, parts.netloc, f"{path}/{name.strip('/')}", "", ""))


def _target(
    settings: Settings | None,
    *,
    endpoint: str | None,
    deployment: str | None,
    api_key: str | None,
    credential: CredentialLike | None,
    url: str | None,
    client_secret: str | None = None,
) -> _Target:
    if client_secret is not None:
        if credential is not None or api_key is not None:
            raise ValueError("pass client_secret or a key/credential, not both")
        credential = BearerKeyCredential(client_secret)
    return _resolve_target(
        settings,
        endpoint=endpoint,
        deployment=deployment or ("gpt-realtime" if url is not None else None),
        api_key=api_key,
        credential=credential,
        api_version=None,
        url=url,
        dialect="ga",
        headers=None,
    )


def _session_json(session: SessionLike | None, target: _Target) -> dict[str, Any] | None:
    if session is None:
        data: dict[str, Any] | None = None
    elif isinstance(session, SessionConfig):
        data = session.to_ga()
    else:
        data = {"type": "realtime", **dict(session)}
    if target.deployment and not target.from_url and target.deployment != "call":
        data = data if data is not None else {"type": "realtime"}
        data.setdefault("model", target.deployment)  # on Azure: the deployment's name
    return data


async def _send(
    target: _Target,
    method: str,
    url: str,
    *,
    timeout: float,
    data: Any = None,
    content_type: str | None = None,
    json_body: Any = None,
) -> tuple[int, Mapping[str, str], str]:
    request_id = new_request_id()
    try:
        headers = {
            "User-Agent": _USER_AGENT,
            **target.headers,
            **await target.credential.headers(),
            REQUEST_ID_HEADER: request_id,
        }
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.request(method, url, data=data, json=json_body, headers=headers) as resp,
        ):
            text = await resp.text()
            status, answer_headers = resp.status, dict(resp.headers)
    except aiohttp.ClientError as exc:
        raise RequestFailed(
            f"cannot reach {url}: {exc}", url=url, status=0, request_id=request_id
        ) from exc
    finally:
        if target.owns_credential:
            await target.credential.close()
    if status >= 400:
        code, message = _error_of(text)
        hint = {
            401: "check the key or token",
            403: "check the identity's role on the resource",
            404: "check the endpoint and path (or the call has ended)",
            429: "retry later",
        }.get(status, "")
        raise RequestFailed(
            f"{method} {url} was refused (HTTP {status}"
            + (f", {code}" if code else "")
            + f"): {message or text[:200]}"
            + (f"; {hint}" if hint else "")
            + f" ({REQUEST_ID_HEADER}: {request_id})",
            url=url,
            status=status,
            code=code,
            service_message=message,
            request_id=request_id,
        )
    return status, answer_headers, text


def _error_of(text: str) -> tuple[str | None, str]:
    try:
        body = json.loads(text)
    except ValueError:
        return None, ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    return (str(code) if code is not None else None), str(error.get("message") or "")


async def create_client_secret(
    settings: Settings | None = None,
    *,
    session: SessionLike | None = None,
    expires_after_s: int | None = None,
    endpoint: str | None = None,
    deployment: str | None = None,
    api_key: str | None = None,
    credential: CredentialLike | None = None,
    url: str | None = None,
    timeout: float = 30.0,
) -> ClientSecret:
    """Mint an ephemeral key with the server's own credential (``POST
    .../realtime/client_secrets``), for a browser to open a call with.

    ``session`` is fixed for what the key opens (on Azure its ``model`` is the deployment's
    name; the ``deployment`` of the settings is used when it names none). ``expires_after_s``
    is the key's lifetime, 10 to 7200 seconds (the service's default: 600).
    """
    target = _target(
        settings,
        endpoint=endpoint,
        deployment=deployment,
        api_key=api_key,
        credential=credential,
        url=url,
    )
    body: dict[str, Any] = {}
    data = _session_json(session, target)
    if data is not None:
        body["session"] = data
    if expires_after_s is not None:
        body["expires_after"] = {"anchor": "created_at", "seconds": int(expires_after_s)}
    link = rest_url(target.url, "client_secrets")
    _, _, text = await _send(target, "POST", link, timeout=timeout, json_body=body)
    answer = json.loads(text)
    value = answer.get("value") or (answer.get("client_secret") or {}).get("value")
    expires = answer.get("expires_at") or (answer.get("client_secret") or {}).get("expires_at")
    if not isinstance(value, str):
        raise RequestFailed(f"{link} answered without a client secret", url=link, status=200)
    return ClientSecret(
        value=value, expires_at=int(expires or 0), session=answer.get("session") or {}
    )


async def create_call(
    sdp: str,
    settings: Settings | None = None,
    *,
    session: SessionLike | None = None,
    client_secret: str | None = None,
    endpoint: str | None = None,
    deployment: str | None = None,
    api_key: str | None = None,
    credential: CredentialLike | None = None,
    url: str | None = None,
    timeout: float = 30.0,
) -> CallAnswer:
    """Send a peer's SDP offer to ``POST .../realtime/calls`` and return the answer.

    With the server's own credential (the SDP proxy: the browser never holds a token), or with
    ``client_secret`` (an ephemeral key's value). With ``session`` (or a deployment to name as
    its model) the offer goes as OpenAI's multipart form (fields ``sdp`` and ``session``),
    else as ``application/sdp``. The call's id, from the ``Location`` header, attaches a
    sideband: ``connect(call_id=answer.call_id, ...)``.
    """
    target = _target(
        settings,
        endpoint=endpoint,
        deployment=deployment,
        api_key=api_key,
        credential=credential,
        url=url,
        client_secret=client_secret,
    )
    link = rest_url(target.url, "calls")
    data = _session_json(session, target) if client_secret is None else _given(session)
    if data is None:
        status, headers, text = await _send(
            target, "POST", link, timeout=timeout, data=sdp, content_type="application/sdp"
        )
    else:
        form = aiohttp.FormData()
        form.add_field("sdp", sdp, content_type="application/sdp")
        form.add_field("session", json.dumps(data), content_type="application/json")
        status, headers, text = await _send(target, "POST", link, timeout=timeout, data=form)
    location = headers.get("Location") or headers.get("location") or ""
    call_id = location.rstrip("/").rsplit("/", 1)[-1]
    if not call_id:
        raise RequestFailed(
            f"{link} answered HTTP {status} without a Location header naming the call",
            url=link,
            status=status,
        )
    return CallAnswer(call_id=call_id, sdp=text, location=location)


def _given(session: SessionLike | None) -> dict[str, Any] | None:
    if session is None:
        return None
    if isinstance(session, SessionConfig):
        return session.to_ga()
    return {"type": "realtime", **dict(session)}


async def hangup_call(
    call_id: str,
    settings: Settings | None = None,
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    credential: CredentialLike | None = None,
    url: str | None = None,
    timeout: float = 30.0,
) -> None:
    """End a WebRTC call (``POST .../realtime/calls/{call_id}/hangup``)."""
    target = _target(
        settings,
        endpoint=endpoint,
        deployment="call",
        api_key=api_key,
        credential=credential,
        url=url,
    )
    await _send(target, "POST", rest_url(target.url, f"calls/{call_id}/hangup"), timeout=timeout)
