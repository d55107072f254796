"""The asyncio client: one WebSocket connection to a realtime endpoint and a high-level session.

``connect()`` opens a connection to Azure OpenAI (GA or preview dialect), to OpenAI, or to any
realtime URL (the local engine, the middle tier) and returns a :class:`RealtimeClient`::

    async with aoai_realtime.connect(session=SessionConfig(instructions="Be brief")) as rt:
        response = await rt.send_text("Hello!")
        async for chunk in response.audio_chunks():
            play(chunk)

Everything protocol-related is done by :mod:`aoai_realtime.protocol` (sans-I/O); this module only
moves bytes and keeps promises:

* Outgoing events carry a fresh ``event_id``. The service echoes it in ``error.event_id``, so an
  ``error`` is raised from the awaitable of the call that caused it, once; it never re-surfaces
  in a later call. Errors nobody is waiting for go to the event stream as ``ErrorEvent``.
* The application sees the GA vocabulary in both dialects: preview events are translated on the
  way in and out.
* Function tools run automatically: outputs are sent as ``function_call_output`` items and one
  ``response.create`` follows the ``response.done`` of the response that made the calls.
* ``close()`` is bounded: the service sometimes never answers the close frame, so after
  ``close_timeout`` seconds the socket is simply dropped.
* ``reconnect(restore=True)`` opens a new session and re-creates the recent conversation in it
  (:mod:`aoai_realtime.protocol.restore`); ``auto_reconnect=True`` does so by itself when the
  service ends the session, and says so on the event stream with :class:`SessionResumed`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar, Union, overload
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import numpy as np
from pydantic import BaseModel, ValidationError

from ._version import __version__
from .audio import SAMPLE_RATE, Resampler, alaw_encode, decode_from_format, ulaw_encode
from .auth import (
    REQUEST_ID_HEADER,
    ApiKeyCredential,
    BearerKeyCredential,
    Credential,
    CredentialLike,
    EntraIdCredential,
    NoCredential,
    as_credential,
    credential_from_settings,
    describe,
    new_request_id,
)
from .config import ConfigError, Settings, build_url, realtime_url
from .protocol import events as ev
from .protocol.conversation import Conversation
from .protocol.dialect import DialectName, ga_to_preview_client, preview_to_ga_server
from .protocol.handshake import HandshakeFailure
from .protocol.requests import Answered, Excused, Request, Requests
from .protocol.restore import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_ITEMS,
    RESUMABLE_CLOSE_CODES,
    ResumeBudget,
    bound_history,
    restorable_items,
)
from .protocol.resume import Restore, ResumePolicy, SessionEnd
from .protocol.session import SessionConfig
from .protocol.tools import TOOL_EVENTS, RunCall, ToolCall, ToolTurn, TurnEnd
from .tools import Tool, ToolRegistry
from .transport import DEFAULT_MAX_MESSAGE_BYTES, HandshakeFailed, open_websocket

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AuthenticationError",
    "CallNotFound",
    "ConnectError",
    "ConnectionClosed",
    "DeploymentNotFound",
    "FunctionCall",
    "HandshakeError",
    "RateLimited",
    "RealtimeClient",
    "RealtimeError",
    "ResponseResult",
    "ResponseStream",
    "ServiceError",
    "SessionResumed",
    "TranscriptionError",
    "connect",
    "sideband_url",
]

log = logging.getLogger("aoai_realtime.client")

E = TypeVar("E", bound=ev.ServerEvent)
Observer = Callable[[Literal["send", "recv"], Any], None]
"""Sees every message: ``("send", event_dict)`` as sent (after dialect translation) and
``("recv", text)`` as received (before translation). For recording and debugging."""
T = TypeVar("T")

_OPENAI_HOST = "api.openai.com"
_USER_AGENT = f"aoai-realtime/{__version__} aiohttp/{aiohttp.__version__}"
_NORMAL_CLOSE_CODES = (1000, 1001)
_RESTORE_EVENTS = frozenset({"error", "session.updated", "conversation.item.added"})
_MAX_APPEND_MS = 100


# ============================================================================================
# Errors


class RealtimeError(Exception):
    """Base of every error this client raises."""


class ConnectError(RealtimeError):
    """The connection could not be opened: the message names the URL and what to check."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        request_id: str | None = None,
        failure: HandshakeFailure | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.request_id = request_id
        self.failure = failure
        """The handshake failure this error words (``None`` when the socket opened but the
        session did not start)."""


class HandshakeError(ConnectError):
    """The server answered the WebSocket handshake with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        failure: HandshakeFailure | None = None,
    ) -> None:
        super().__init__(message, url=url, request_id=request_id, failure=failure)
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})


class AuthenticationError(HandshakeError):
    """401 or 403: the key or token was refused."""


class DeploymentNotFound(HandshakeError):
    """404: no realtime deployment (or endpoint path) at that URL."""


class CallNotFound(DeploymentNotFound):
    """404 on attaching to a WebRTC call (``call_id=``): the call has ended or never was."""


class RateLimited(HandshakeError):
    """429: too many requests. ``retry_after`` is in seconds when the server said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServiceError(RealtimeError):
    """An ``error`` event from the service, raised from the call that caused it."""

    def __init__(self, error: ev.ErrorDetail) -> None:
        where = f" (param: {error.param})" if error.param else ""
        code = error.code or error.type
        super().__init__(f"{code}: {error.message}{where}")
        self.error = error
        self.type = error.type
        self.code = error.code
        self.param = error.param
        self.event_id = error.event_id


class TranscriptionError(ServiceError):
    """The service could not transcribe a user turn (``input_audio_transcription.failed``)."""

    def __init__(self, error: ev.ErrorDetail, item_id: str) -> None:
        super().__init__(error)
        self.item_id = item_id


class ConnectionClosed(RealtimeError):
    """The connection is closed (or was, while a call waited for an answer)."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class SessionResumed(ev.ServerEvent):
    """A local event (never sent by the service): with ``auto_reconnect=True``, the service ended
    the session and the client went on in a new one, with the recent conversation restored.

    ``cause`` is ``"session_expired"`` or ``"connection_closed"`` (``close_code`` says how);
    ``items_restored`` items were re-created, ``items_left_out`` older ones did not fit the
    history bounds; ``request_id`` is the new connection's ``x-ms-client-request-id``.
    """

    type: Literal["client.session_resumed"] = "client.session_resumed"
    cause: str
    close_code: int | None = None
    items_restored: int = 0
    items_left_out: int = 0
    request_id: str | None = None
    message: str = ""


# ============================================================================================
# Where to connect


@dataclass(frozen=True)
class _Target:
    url: str
    dialect: DialectName
    credential: Credential
    owns_credential: bool
    openai: bool
    endpoint: str
    deployment: str | None
    api_version: str | None
    headers: dict[str, str]
    from_url: bool = False
    """Given as ``url=`` (not built from the settings): advice names the URL, not the settings."""
    call_id: str | None = None
    """A WebRTC call this client attaches to (the sideband, ``?call_id=``): GA only; the call's
    session is already running, so there is no ``session.created`` to wait for."""


def _as_credential(credential: CredentialLike) -> Credential:
    # ours, an azure-identity credential (sync or async) or a bearer-token provider
    return as_credential(credential)


def _resolve_target(
    settings: Settings | None,
    *,
    endpoint: str | None,
    deployment: str | None,
    api_key: str | None,
    credential: CredentialLike | None,
    api_version: str | None,
    url: str | None,
    dialect: DialectName | None,
    headers: Mapping[str, str] | None,
    call_id: str | None = None,
) -> _Target:
    if dialect not in (None, "ga", "preview"):
        raise ValueError(f"dialect must be 'ga' or 'preview' (got {dialect!r})")
    if call_id is not None:
        if not call_id.strip():
            raise ValueError("call_id is empty: pass the id of a WebRTC call (rtc_...)")
        if dialect == "preview":
            raise ValueError(
                "call_id attaches to a WebRTC call, which speaks the GA protocol only: "
                "leave dialect unset (or 'ga')"
            )
        target = _resolve_target(
            settings,
            endpoint=endpoint,
            deployment=deployment or "call",  # the call names its model: any name will do
            api_key=api_key,
            credential=credential,
            api_version=api_version,
            url=url,
            dialect="ga",
            headers=headers,
        )
        return dataclasses.replace(
            target, url=sideband_url(target.url, call_id.strip()), call_id=call_id.strip()
        )
    extra = dict(headers or {})
    if url is not None:
        ws = realtime_url(url, deployment or "gpt-realtime")
        parts = urlsplit(ws)
        query = parse_qs(parts.query)
        host = parts.hostname or ""
        is_openai = host == _OPENAI_HOST
        chosen: DialectName = dialect or ("preview" if "api-version" in query else "ga")
        if credential is not None:
            cred, owns = _as_credential(credential), False
        elif api_key:
            cred = BearerKeyCredential(api_key) if is_openai else ApiKeyCredential(api_key)
            owns = True
        else:
            probe = Settings(endpoint=url)
            if probe.is_azure or probe.is_openai:
                cred, owns = credential_from_settings(probe), True
            else:  # the local engine, the middle tier: they hold no Azure credentials of ours
                cred, owns = NoCredential(), True
        return _Target(
            url=ws,
            dialect=chosen,
            credential=cred,
            owns_credential=owns,
            openai=is_openai,
            endpoint=f"{parts.scheme}://{parts.netloc}",
            deployment=_first(query, "deployment", "model"),
            api_version=_first(query, "api-version"),
            headers=extra,
            from_url=True,
        )

    if settings is None:
        settings = Settings() if endpoint is not None else Settings.load()
    if any(v is not None for v in (endpoint, deployment, api_key, api_version)):
        settings = dataclasses.replace(
            settings,
            endpoint=endpoint if endpoint is not None else settings.endpoint,
            deployment=deployment if deployment is not None else settings.deployment,
            api_key=api_key if api_key is not None else settings.api_key,
            api_version=api_version if api_version is not None else settings.api_version,
        )
    if settings.endpoint is None or settings.deployment is None:
        problem = settings.problems()[0]
        if not settings.endpoint:
            problem += (
                "; or, to talk to the offline local engine, start `aoai-realtime engine` and pass"
                " url='ws://127.0.0.1:8788/openai/v1/realtime?model=local'"
            )
        raise ConfigError(problem)
    chosen = dialect or settings.dialect
    ws = build_url(
        settings.endpoint,
        dialect=chosen,
        deployment=settings.deployment,
        api_version=settings.api_version,
    )
    if credential is not None:
        cred, owns = _as_credential(credential), False
    else:
        cred, owns = credential_from_settings(settings), True
    return _Target(
        url=ws,
        dialect=chosen,
        credential=cred,
        owns_credential=owns,
        openai=settings.is_openai,
        endpoint=settings.endpoint,
        deployment=settings.deployment,
        api_version=settings.api_version if chosen == "preview" else None,
        headers=extra,
    )


def sideband_url(realtime_url: str, call_id: str) -> str:
    """The sideband WebSocket URL of a WebRTC call, from any GA realtime URL of that service:
    ``wss://RES.openai.azure.com/openai/v1/realtime?call_id=rtc_...`` (Azure, the engine, the
    middle tier), ``wss://api.openai.com/v1/realtime?call_id=...`` (OpenAI). A preview URL
    (``/openai/realtime``) becomes the GA path; ``model``, ``deployment`` and ``api-version``
    are dropped (the call names its model), other query parameters are kept."""
    parts = urlsplit(realtime_url)
    path = parts.path.rstrip("/")
    if path.endswith("/openai/realtime"):
        path = path[: -len("/openai/realtime")] + "/openai/v1/realtime"
    query = [
        (k, v)
        for k, vs in parse_qs(parts.query, keep_blank_values=True).items()
        for v in vs
        if k not in ("model", "deployment", "api-version", "call_id")
    ]
    query.append(("call_id", call_id))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def _handshake_headers(target: _Target, auth: Mapping[str, str], request_id: str) -> dict[str, str]:
    """The handshake's headers: auth, request id, and the beta header for OpenAI's preview."""
    headers = {"User-Agent": _USER_AGENT, **target.headers, **auth, REQUEST_ID_HEADER: request_id}
    if target.openai and target.dialect == "preview":
        headers["OpenAI-Beta"] = "realtime=v1"
    return headers


def _first(query: Mapping[str, list[str]], *names: str) -> str | None:
    for name in names:
        for value in query.get(name, []):
            if value:
                return value
    return None


def _connect_error(target: _Target, failure: HandshakeFailure, open_timeout: float) -> ConnectError:
    """The SDK's exception for a failed handshake: what happened and what to check."""
    if failure.kind == "status":
        return _handshake_error(target, failure)
    url = target.url
    messages = {
        "dns": f"cannot resolve host {failure.host!r} of {url}: check AZURE_OPENAI_ENDPOINT "
        f"(e.g. https://my-resource.openai.azure.com) ({failure.detail})",
        "tls": f"TLS failed for {url}: {failure.detail}; check the endpoint (https vs http)",
        "connect": f"cannot connect to {url}: {failure.detail}; is the server running and the "
        "endpoint right?",
        "timeout": f"no answer from {url} within {open_timeout:g} s (open_timeout)",
    }
    message = messages.get(failure.kind, f"cannot open a WebSocket to {url}: {failure.detail}")
    return ConnectError(message, url=url, request_id=failure.request_id, failure=failure)


def _handshake_error(target: _Target, failure: HandshakeFailure) -> HandshakeError:
    status = failure.status or 0
    headers = dict(failure.headers)
    request_id = failure.request_id
    trace = f" ({REQUEST_ID_HEADER}: {request_id})"
    kw: dict[str, Any] = {
        "url": target.url,
        "status": status,
        "headers": headers,
        "request_id": request_id,
        "failure": failure,
    }
    who = target.endpoint
    if status in (401, 403):
        sent = describe(target.credential)
        if isinstance(target.credential, (ApiKeyCredential, EntraIdCredential)):
            fix = "run `az login` or check AZURE_OPENAI_API_KEY"
        else:  # a token or a provider the application gave, or AZURE_OPENAI_AD_TOKEN
            fix = "check the token: its audience (https://cognitiveservices.azure.com), expiry and role"
        msg = f"authentication failed at {who} (HTTP {status}, sent: {sent}): {fix}"
        if status == 403 and isinstance(target.credential, EntraIdCredential):
            msg += (
                "; with Entra ID the identity needs the 'Cognitive Services OpenAI User' role "
                "on the resource"
            )
        return AuthenticationError(msg + trace, **kw)
    if status == 404 and target.call_id:
        msg = (
            f"no WebRTC call {target.call_id!r} at {who} (HTTP 404): the call has ended, or the "
            "id is not one this endpoint issued (it is the last part of the Location header of "
            "the POST .../realtime/calls answer)"
        )
        return CallNotFound(msg + trace, **kw)
    if status == 404:
        if target.deployment:
            msg = f"deployment {target.deployment!r} not found at endpoint {who} (HTTP 404)"
        else:
            msg = f"no realtime endpoint at {target.url} (HTTP 404): check the path"
        if target.from_url and not target.openai:
            path = urlsplit(target.url).path or "/"
            msg += (
                f"; this used the path {path} of the url given: a realtime endpoint is at "
                "/openai/v1/realtime?model=NAME (GA) or "
                "/openai/realtime?api-version=VERSION&deployment=NAME (preview); a bare "
                "ws://HOST:PORT uses the GA path"
            )
        elif target.openai:
            msg += f"; check that {target.deployment!r} is a realtime model name"
        elif target.dialect == "ga":
            msg += (
                ": check AZURE_OPENAI_DEPLOYMENT names a realtime deployment of that resource. "
                "This used the GA path /openai/v1/realtime; if the deployment only serves the "
                "preview protocol, set AZURE_OPENAI_API_VERSION (e.g. 2025-04-01-preview)"
            )
        else:
            msg += (
                ": check AZURE_OPENAI_DEPLOYMENT names a realtime deployment of that resource. "
                f"This used the preview path /openai/realtime with api-version="
                f"{target.api_version}; check that version is supported, or unset "
                "AZURE_OPENAI_API_VERSION to use the GA endpoint"
            )
        return DeploymentNotFound(msg + trace, **kw)
    if status == 429:
        retry = failure.retry_after
        when = f"retry after {retry:.0f} s" if retry is not None else "retry later"
        msg = f"rate limited by {who} (HTTP 429): {when}, or raise the deployment's quota"
        return RateLimited(msg + trace, retry_after=retry, **kw)
    if status == 101 or 200 <= status < 300:
        msg = (
            f"{target.url} answered HTTP {status} without a WebSocket upgrade: is it a realtime "
            "endpoint? (check the host, the path and https vs http)"
        )
    elif status == 400:
        msg = (
            f"{who} refused the handshake (HTTP 400): check the api-version "
            f"({target.api_version or 'none: GA'}) and the deployment name"
        )
    else:
        msg = f"{who} refused the WebSocket handshake with HTTP {status}"
        if status >= 500:
            msg += ": the service had a problem; retry in a moment"
    return HandshakeError(msg + trace, **kw)


# ============================================================================================
# Responses


FunctionCall = ToolCall
"""A function call the model made, with the output sent back (when the client ran it)."""


@dataclass
class ResponseResult:
    """A finished response (or turn, when automatic tools added a follow-up response)."""

    id: str
    status: str
    status_details: ev.ResponseStatusDetails | None
    usage: ev.Usage | None
    output: list[Any]
    text: str
    transcript: str
    audio: bytes
    function_calls: list[FunctionCall] = field(default_factory=list)
    responses: list[ev.Response] = field(default_factory=list)

    @property
    def audio_ms(self) -> int:
        """Length of :attr:`audio` (PCM16 24 kHz) in milliseconds."""
        return len(self.audio) // 48


class ResponseStream:
    """One response as it streams: audio, transcript and text, each iterable concurrently.

    Every iterator replays from the start of the response, so starting one late loses nothing.
    With automatic tools, the stream covers the whole turn: the response that called the tools
    and the follow-up response that uses their outputs.
    """

    def __init__(self, output_format: str = "pcm16") -> None:
        self.response_ids: list[str] = []
        self.function_calls: list[FunctionCall] = []
        self._events: list[ev.ServerEvent] = []
        self._audio: list[bytes] = []
        self._transcript: list[str] = []
        self._text: list[str] = []
        self._responses: list[ev.Response] = []
        self._finished = False
        self._error: BaseException | None = None
        self._wakers: list[asyncio.Future[None]] = []
        self._format = output_format
        self._resampler = Resampler(8000, SAMPLE_RATE) if output_format != "pcm16" else None

    @property
    def id(self) -> str | None:
        """The id of the (first) response, once the service has created it."""
        return self.response_ids[0] if self.response_ids else None

    @property
    def finished(self) -> bool:
        return self._finished

    # ------------------------------------------------------------------ feeding (client side)

    def _feed(self, event: ev.ServerEvent, *, follow_up: bool = False) -> None:
        self._events.append(event)
        if isinstance(event, ev.OutputAudioDelta):
            try:
                raw = base64.b64decode(event.delta, validate=True)
                if self._format != "pcm16":
                    raw = decode_from_format(raw, self._format, self._resampler)
            except ValueError as exc:  # binascii.Error is a ValueError
                log.warning("skipped an audio delta that does not decode: %s", exc)
            else:
                self._audio.append(raw)
        elif isinstance(event, ev.OutputAudioTranscriptDelta):
            self._transcript.append(event.delta)
        elif isinstance(event, ev.OutputTextDelta):
            self._text.append(event.delta)
        elif isinstance(event, ev.ResponseCreated):
            if event.response.id and event.response.id not in self.response_ids:
                self.response_ids.append(event.response.id)
        elif isinstance(event, ev.ResponseDone):
            if self._resampler is not None:  # the filter's last few milliseconds
                tail = self._resampler.flush()
                if tail:
                    self._audio.append(tail)
            self._responses.append(event.response)
            if not follow_up:
                self._finish()
                return
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        wakers, self._wakers = self._wakers, []
        for w in wakers:
            if not w.done():
                w.set_result(None)

    async def _follow(self, buf: list[T]) -> AsyncIterator[T]:
        i = 0
        while True:
            while i < len(buf):
                yield buf[i]
                i += 1
            if self._finished:
                if self._error is not None:
                    raise self._error
                return
            waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._wakers.append(waker)
            await waker

    # ------------------------------------------------------------------ reading (application)

    def audio_chunks(self) -> AsyncIterator[bytes]:
        """Decoded audio, PCM16 mono 24 kHz (G.711 output is decoded and resampled)."""
        return self._follow(self._audio)

    def transcript_deltas(self) -> AsyncIterator[str]:
        """The transcript of the spoken answer, as it streams."""
        return self._follow(self._transcript)

    def text_deltas(self) -> AsyncIterator[str]:
        """The text of a text answer, as it streams."""
        return self._follow(self._text)

    def events(self) -> AsyncIterator[ev.ServerEvent]:
        """Every event of this response (turn), in order."""
        return self._follow(self._events)

    async def done(self) -> ResponseResult:
        """Wait for the end of the response (turn) and return what it produced.

        Raises :class:`ConnectionClosed` if the connection closed first, or
        :class:`ServiceError` if the follow-up response after automatic tools was refused.
        """
        while not self._finished:
            waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._wakers.append(waker)
            await waker
        if self._error is not None:
            raise self._error
        return self.result()

    def __await__(self) -> Generator[Any, None, ResponseResult]:
        return self.done().__await__()

    def result(self) -> ResponseResult:
        """What has arrived so far (complete once :attr:`finished`)."""
        last = self._responses[-1] if self._responses else None
        output: list[Any] = []
        for r in self._responses:
            output.extend(r.output)
        return ResponseResult(
            id=self.id or "",
            status=(last.status or "completed") if last else "in_progress",
            status_details=last.status_details if last else None,
            usage=last.usage if last else None,
            output=output,
            text="".join(self._text),
            transcript="".join(self._transcript),
            audio=b"".join(self._audio),
            function_calls=list(self.function_calls),
            responses=list(self._responses),
        )

    def __repr__(self) -> str:
        state = "finished" if self._finished else "streaming"
        return f"ResponseStream(ids={self.response_ids}, {state})"


# ============================================================================================
# Audio input: any rate and channel count in, the session's input format out


class _AudioInput:
    """Streaming conversion to the session's input format (PCM16 24 kHz, or G.711 8 kHz)."""

    def __init__(self) -> None:
        self._carry = b""
        self._key: tuple[int, int, str] | None = None
        self._resampler: Resampler | None = None

    def reset(self) -> None:
        self._carry = b""
        self._key = None
        self._resampler = None

    @staticmethod
    def _encode(pcm: bytes, fmt: str) -> bytes:
        if fmt == "g711_ulaw":
            return ulaw_encode(pcm)
        if fmt == "g711_alaw":
            return alaw_encode(pcm)
        return pcm

    def feed(self, data: bytes, rate: int, channels: int, fmt: str) -> bytes:
        if channels < 1:
            raise ValueError(f"channels must be at least 1 (got {channels})")
        if not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"sample_rate must be a positive whole number of Hz (got {rate!r})")
        out = b""
        key = (rate, channels, fmt)
        if self._key is not None and self._key != key:
            out = self.flush()
        if self._key != key:
            self._key = key
            target = SAMPLE_RATE if fmt == "pcm16" else 8000
            self._resampler = Resampler(rate, target) if rate != target else None
        frame = 2 * channels
        buf = self._carry + bytes(data)
        cut = len(buf) - len(buf) % frame
        buf, self._carry = buf[:cut], buf[cut:]
        if channels > 1 and buf:
            x = np.frombuffer(buf, dtype="<i2").reshape(-1, channels).astype(np.int32)
            buf = np.round(x.mean(axis=1)).astype("<i2").tobytes()
        if self._resampler is not None:
            buf = self._resampler.process(buf)
        return out + self._encode(buf, fmt)

    def flush(self) -> bytes:
        """The audio still held in the resampler (call before a commit)."""
        self._carry = b""
        if self._key is None or self._resampler is None:
            return b""
        return self._encode(self._resampler.flush(), self._key[2])


# ============================================================================================
# Internal bookkeeping


@dataclass(eq=False)
class _Pending:
    """What the client keeps with an open request (:class:`~.protocol.requests.Request`)."""

    result: Callable[[ev.ServerEvent], Any]
    future: asyncio.Future[Any] | None
    stream: ResponseStream | None = None
    internal: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Waiter:
    match: Callable[[ev.ServerEvent], bool]
    future: asyncio.Future[Any]
    result: Callable[[ev.ServerEvent], Any] = lambda e: e


class _End:
    """End-of-stream marker in the event queue."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


_QueueItem = Union[ev.ServerEvent, _End]


# ============================================================================================
# The client


class RealtimeClient:
    """A realtime session over one WebSocket connection. Open it with :func:`connect`.

    Attributes worth logging: :attr:`url`, :attr:`dialect` and :attr:`request_id` (the
    ``x-ms-client-request-id`` of the current connection, to trace it in Azure).
    """

    def __init__(
        self,
        target: _Target,
        *,
        session: SessionConfig | None = None,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        auto_tools: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        request_id: str | None = None,
        open_timeout: float = 30.0,
        close_timeout: float = 2.0,
        ack_timeout: float = 30.0,
        max_queue: int | None = 10_000,
        observer: Observer | None = None,
        auto_reconnect: bool = False,
        tool_timeout: float | None = 60.0,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._target = target
        self.url = target.url
        self.dialect: DialectName = target.dialect
        self.request_id: str | None = request_id
        self.tools = ToolRegistry(tools)
        self.auto_tools = auto_tools
        self.max_message_bytes = max_message_bytes
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.ack_timeout = ack_timeout
        self.max_queue = max_queue
        self.conversation = Conversation()
        self.observer = observer
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.auto_reconnect = auto_reconnect
        self.resume_budget = ResumeBudget()
        """Bounds automatic reconnects: attempts per time window, with backoff."""
        self.max_restore_items = DEFAULT_MAX_ITEMS
        self.max_restore_chars = DEFAULT_MAX_CHARS
        """The history a restoring reconnect carries over (newest items that fit)."""

        self._initial_config = session
        self._sent_config: SessionConfig | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self._requests = Requests()
        self._waiters: list[_Waiter] = []
        self._queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._dropped_warned = False
        self._streams: dict[str, ResponseStream] = {}
        self._stream_waiters: list[asyncio.Future[ResponseStream]] = []
        self.tool_timeout = tool_timeout
        self._tool_turn = ToolTurn(lambda name: self.auto_tools and name in self.tools)
        self._tool_streams: dict[str, ResponseStream] = {}
        self._tool_tasks: set[asyncio.Task[Any]] = set()
        self._transcripts: dict[str, str] = {}
        self._audio_in = _AudioInput()
        self._closed = False
        self._user_closed = False
        self._reconnecting = False
        self._auto_task: asyncio.Task[None] | None = None
        self._connections = 0
        self._restoring: tuple[Restore, asyncio.Future[None]] | None = None

    # ------------------------------------------------------------------ opening

    @staticmethod
    def connect(*args: Any, **kwargs: Any) -> _Connect:
        """Same as :func:`connect`."""
        return connect(*args, **kwargs)

    async def _start(self) -> None:
        """Open the first connection and send the initial session configuration."""
        try:
            await self._open()
            config = self._initial_config
            if len(self.tools) or config is not None:
                await self.update_session(config or SessionConfig())
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        target = self._target
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.open_timeout)
            )
        # The caller's request id names the first connection; every reconnect gets a new one.
        first = self._connections == 0 and self.request_id
        request_id = self.request_id if first and self.request_id else new_request_id()
        self.request_id = request_id
        self._connections += 1
        headers = _handshake_headers(target, await target.credential.headers(), request_id)
        log.debug(
            "connecting to %s (%s, %s=%s)", target.url, self.dialect, REQUEST_ID_HEADER, request_id
        )
        try:
            ws = await open_websocket(
                self._http,
                target.url,
                headers=headers,
                request_id=request_id,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                max_message_bytes=self.max_message_bytes,
            )
        except HandshakeFailed as exc:
            raise _connect_error(target, exc.failure, self.open_timeout) from exc.__cause__
        self._ws = ws
        self._closed = False
        self.close_code = None
        self.close_reason = ""
        if target.call_id is not None:
            # A sideband joins a session that is running: nothing announces it; its events
            # (session.updated included) fold into the conversation as they come.
            self._reader = asyncio.create_task(
                self._read_loop(self._ws), name="aoai-realtime-reader"
            )
            return
        created = self._wait(
            lambda e: e.type in ("session.created", "error"), self.open_timeout, "session.created"
        )
        self._reader = asyncio.create_task(self._read_loop(self._ws), name="aoai-realtime-reader")
        try:
            try:
                first = await created
            except BaseException:
                await self._close_ws()
                self._closed = True
                raise
        except ConnectionClosed as exc:
            raise ConnectError(
                f"{target.url} closed the connection before session.created "
                f"(code {exc.code}{', ' + exc.reason if exc.reason else ''})",
                url=target.url,
                request_id=request_id,
            ) from None
        except asyncio.TimeoutError:
            raise ConnectError(
                f"{target.url} accepted the WebSocket but sent no session.created within "
                f"{self.open_timeout:g} s: is it a realtime endpoint?",
                url=target.url,
                request_id=request_id,
            ) from None
        if isinstance(first, ev.ErrorEvent):
            await self._close_ws()
            self._closed = True
            raise ServiceError(first.error)

    # ------------------------------------------------------------------ context manager

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def config(self) -> SessionConfig:
        """The session as the service last reported it (``session.created``/``updated``)."""
        return SessionConfig.from_ga(self.conversation.session)

    @property
    def session_config(self) -> SessionConfig | None:
        """Everything this client has set with :meth:`update_session` (re-sent on reconnect)."""
        return self._sent_config

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Close the connection: send a close frame, wait at most ``close_timeout`` for the
        answer, then drop the socket. Safe to call twice."""
        if self._user_closed:
            return
        self._user_closed = True
        self._closed = True
        auto = self._auto_task
        if auto is not None and not auto.done() and auto is not asyncio.current_task():
            auto.cancel()
            await asyncio.gather(auto, return_exceptions=True)
        for task in list(self._tool_tasks):
            task.cancel()
        await self._close_ws()
        self._fail_all(ConnectionClosed("the connection was closed by the client", code=1000))
        self._queue_put(_End(None))
        if self._target.owns_credential:
            try:
                await self._target.credential.close()
            except Exception:  # pragma: no cover - closing a credential must not mask anything
                log.debug("closing the credential failed", exc_info=True)

    async def _close_ws(self) -> None:
        """Close the current connection within about ``close_timeout`` seconds, whatever the
        peer does: the close frame is sent, the answer awaited at most that long, and then the
        HTTP session is closed, which drops the TCP connection."""
        ws, self._ws = self._ws, None
        reader, self._reader = self._reader, None
        http, self._http = self._http, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), timeout=self.close_timeout)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.debug("no clean close (%s): dropping the connection", type(exc).__name__)
        if ws is not None and self.close_code is None:
            self.close_code = ws.close_code
        if http is not None:
            try:
                await asyncio.wait_for(http.close(), timeout=1.0)
            except asyncio.TimeoutError:  # pragma: no cover - a TLS shutdown that hangs
                log.debug("closing the HTTP session timed out")
        if reader is not None and reader is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(reader), timeout=1.0)
            except (asyncio.TimeoutError, Exception):
                reader.cancel()

    # ------------------------------------------------------------------ reconnecting

    async def reconnect(
        self,
        restore: bool = False,
        *,
        max_items: int | None = None,
        max_chars: int | None = None,
    ) -> int:
        """Open a new connection (fresh credentials and request id) and re-send the session
        configuration set so far, tools included.

        The service does not carry conversation items over to a new connection. With
        ``restore``, the recent finished items of :attr:`conversation` are re-created in the
        new session (user text and transcripts as ``input_text``, assistant transcripts as
        ``output_text``, function calls with their outputs; never audio), at most ``max_items``
        items and ``max_chars`` characters of text (default :attr:`max_restore_items`,
        :attr:`max_restore_chars`), newest first; see :mod:`aoai_realtime.protocol.restore`.
        :attr:`conversation` then starts again from what the new session reports. Calls waiting
        on the old connection raise :class:`ConnectionClosed`. Returns how many items the new
        session accepted (0 without ``restore``).
        """
        await self._after_auto_resume()  # never two reconnects at once
        if self._user_closed:
            raise ConnectionClosed("the client was closed; open a new one with connect()")
        items = self._restorable(max_items, max_chars)[0] if restore else []
        if self._target.call_id is not None:
            items = []  # the call's session still holds its conversation
        self._reconnecting = True
        try:
            return await self._reconnect(items)
        finally:
            self._reconnecting = False

    def _restorable(
        self, max_items: int | None, max_chars: int | None
    ) -> tuple[list[dict[str, Any]], int]:
        """The items to re-create, and how many older ones are left out."""
        every = restorable_items(self.conversation)
        kept = bound_history(
            every,
            max_items=self.max_restore_items if max_items is None else max_items,
            max_chars=self.max_restore_chars if max_chars is None else max_chars,
        )
        return kept, len(every) - len(kept)

    async def _reconnect(self, items: list[dict[str, Any]]) -> int:
        for task in list(self._tool_tasks):
            task.cancel()
        await self._close_ws()
        self._closed = True  # until the new connection is open
        self._fail_all(ConnectionClosed("reconnecting: the old connection was closed"))
        self._drain_end_markers()
        self.conversation = Conversation()
        self._audio_in.reset()
        self._transcripts.clear()
        self._tool_turn.reset()
        self._tool_streams.clear()
        await self._open()
        config = self._sent_config
        self._sent_config = None
        if config is not None:
            await self.update_session(config)
        if not items:
            return 0
        return await self._restore_items(items)

    async def _restore_items(self, items: list[dict[str, Any]]) -> int:
        """Create ``items`` in order (sent back to back), then wait for every acknowledgement
        (:class:`~aoai_realtime.protocol.resume.Restore`); returns how many were accepted (a
        refused one is logged)."""
        restore = Restore(
            None,
            items,
            self._new_event_id,
            lambda: f"item_{self._id_prefix}{secrets.token_hex(8)}",
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._restoring = (restore, done)
        try:
            for event in restore.events:
                await self._send_wire(event)
            if not restore.done:
                await asyncio.wait_for(asyncio.shield(done), self.ack_timeout)
        finally:
            self._restoring = None
        for error in restore.refused:
            log.warning("the new session refused a restored item: %s", error.get("message"))
        if restore.ended is not None:
            raise ConnectionClosed("the new session expired while the conversation was restored")
        return restore.accepted

    # ------------------------------------------------------------------ automatic reconnects

    def _may_auto_resume(self) -> bool:
        return self.auto_reconnect and not self._user_closed and not self._reconnecting

    def _start_auto_resume(self, cause: str, code: int | None, detail: str) -> None:
        """The service ended the session: go on in a new one (in a task of its own)."""
        self._reconnecting = True  # synchronously: the close that follows is expected
        self._auto_task = asyncio.ensure_future(self._auto_resume(cause, code, detail))

    async def _auto_resume(self, cause: str, code: int | None, detail: str) -> None:
        end = SessionEnd(
            "session_expired" if cause == "session_expired" else "closed", detail, code
        )
        what = end.describe()
        items, left_out = self._restorable(None, None)
        if self._target.call_id is not None:
            items, left_out = [], 0  # re-attaching to the call: its session kept everything
        policy = ResumePolicy(self.resume_budget)
        credential = self._target.credential
        invalidate = getattr(credential, "invalidate", None)
        last: BaseException | None = None
        try:
            while True:
                delay = policy.next_attempt(time.monotonic())
                if delay is None:
                    budget = self.resume_budget
                    await self._end_auto_resume(
                        ConnectionClosed(
                            f"{what}; the client already reconnected {budget.max_attempts} "
                            f"times in the last {budget.window_s:g} s and stops here"
                            + (f" (last failure: {last})" if last else ""),
                            code=code,
                        )
                    )
                    return
                if delay:
                    await asyncio.sleep(delay)
                try:
                    restored = await self._reconnect(items)
                except ServiceError as exc:  # the new session refused to start: not retried
                    await self._end_auto_resume(
                        ConnectionClosed(f"{what}; reconnecting failed: {exc}", code=code), exc
                    )
                    return
                except ConnectError as exc:
                    verdict = "retry"
                    if exc.failure is not None:
                        verdict = policy.after_failure(
                            exc.failure, can_refresh=invalidate is not None
                        )
                    if verdict == "give_up":
                        await self._end_auto_resume(
                            ConnectionClosed(f"{what}; reconnecting failed: {exc}", code=code), exc
                        )
                        return
                    if verdict == "refresh_credential" and invalidate is not None:
                        invalidate()
                    last = exc
                except (ConnectionClosed, asyncio.TimeoutError) as exc:
                    last = exc  # the new session ended at once, or did not answer
                else:
                    policy.succeeded()
                    break
                log.warning("reconnecting failed (%s); trying again", last)
            message = end.resumed_message(restored)
            log.info(message)
            self._queue_put(
                SessionResumed(
                    cause=cause,
                    close_code=code,
                    items_restored=restored,
                    items_left_out=left_out,
                    request_id=self.request_id,
                    message=message,
                )
            )
        finally:
            self._reconnecting = False

    async def _end_auto_resume(
        self, error: ConnectionClosed, cause: BaseException | None = None
    ) -> None:
        """Give up: the event stream ends with ``error`` (its ``__cause__`` says why)."""
        error.__cause__ = cause
        log.warning("%s", error)
        await self._close_ws()
        self._closed = True
        self._fail_all(error)
        self._queue_put(_End(error))

    # ------------------------------------------------------------------ sending

    def _new_event_id(self) -> str:
        return f"evt_{self._id_prefix}{next(self._ids):06d}"

    async def _after_auto_resume(self) -> None:
        """While an automatic reconnect sets up a new session, wait for it (its own calls go
        through): what the application sends then goes to the new session."""
        auto = self._auto_task
        if auto is not None and not auto.done() and auto is not asyncio.current_task():
            await asyncio.wait({auto})

    async def _send_wire(self, event: dict[str, Any], *, translate: bool = True) -> None:
        await self._after_auto_resume()
        ws = self._ws
        if ws is None or ws.closed or self._closed:
            raise ConnectionClosed(
                "the connection is closed"
                + (f" (code {self.close_code}: {self.close_reason})" if self.close_code else "")
                + "; call reconnect() or open a new connection",
                code=self.close_code,
                reason=self.close_reason,
            )
        if translate and self.dialect == "preview":
            event = ga_to_preview_client(event, azure=not self._target.openai)
        if self.observer is not None:
            self._observe("send", event)
        data = json.dumps(event, separators=(",", ":"))
        async with self._send_lock:
            try:
                await ws.send_str(data)
            except (ConnectionResetError, aiohttp.ClientError, RuntimeError) as exc:
                raise ConnectionClosed(f"the connection broke while sending: {exc}") from exc

    async def send(self, event: ev.ClientEvent | Mapping[str, Any]) -> str:
        """Send one client event (GA vocabulary) as is; returns its ``event_id``.

        Nothing waits for an answer: an ``error`` it causes arrives on the event stream.
        """
        data = event.to_dict() if isinstance(event, ev.ClientEvent) else dict(event)
        if "type" not in data:
            raise ValueError("an event needs a 'type'")
        data.setdefault("event_id", self._new_event_id())
        await self._send_wire(data)
        return str(data["event_id"])

    async def _request(
        self,
        event: dict[str, Any],
        *,
        match: Callable[[ev.ServerEvent], bool],
        result: Callable[[ev.ServerEvent], Any] = lambda e: e,
        stream: ResponseStream | None = None,
        internal: bool = False,
        swallow_codes: tuple[str, ...] = (),
        translate: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Send ``event`` and wait for the event that acknowledges it, or raise its error."""
        fut = await self._send_request(
            event,
            match=match,
            result=result,
            stream=stream,
            internal=internal,
            swallow_codes=swallow_codes,
            translate=translate,
            timeout=timeout,
        )
        if fut is None:
            return None
        return await fut

    async def _send_request(
        self,
        event: dict[str, Any],
        *,
        match: Callable[[ev.ServerEvent], bool],
        result: Callable[[ev.ServerEvent], Any] = lambda e: e,
        stream: ResponseStream | None = None,
        internal: bool = False,
        swallow_codes: tuple[str, ...] = (),
        translate: bool = True,
        timeout: float | None = None,
    ) -> asyncio.Future[Any] | None:
        """Send ``event``; returns the future of its acknowledgement (``None`` when
        ``internal``: nobody waits, an error goes to the event stream)."""
        await self._after_auto_resume()  # before the request is noted: the reconnect fails those
        event_id = self._new_event_id()
        event = {**event, "event_id": event_id}
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] | None = None if internal else loop.create_future()
        handle = _Pending(result=result, future=fut, stream=stream, internal=internal)
        request = self._requests.add(
            Request(event_id, event["type"], match, excuse_codes=swallow_codes, handle=handle)
        )
        limit = self.ack_timeout if timeout is None else timeout
        if fut is not None:
            handle.timer = loop.call_later(limit, self._expire, request, limit)
        try:
            await self._send_wire(event, translate=translate)
        except BaseException:
            self._drop_request(request)
            raise
        if fut is not None:
            fut.add_done_callback(lambda _: self._drop_request(request))
        return fut

    def _expire(self, request: Request, limit: float) -> None:
        self._drop_request(request)
        fut = request.handle.future
        if fut is not None and not fut.done():
            fut.set_exception(
                asyncio.TimeoutError(
                    f"no answer to {request.kind} (event_id {request.event_id}) within "
                    f"{limit:g} s; raise ack_timeout if the service is slow"
                )
            )

    def _drop_request(self, request: Request) -> None:
        self._requests.drop(request)
        if request.handle.timer is not None:
            request.handle.timer.cancel()

    # ------------------------------------------------------------------ the high-level session

    async def update_session(
        self, config: SessionConfig | None = None, **fields: Any
    ) -> SessionConfig:
        """Change the session (``session.update``) and wait for ``session.updated``.

        Pass a :class:`SessionConfig`, keyword fields of one, or both (fields win). Only what is
        set is sent. The client's tools are added to ``tools`` whenever tools are sent. Returns
        the session as the service now reports it.
        """
        update = config or SessionConfig()
        if fields:
            update = update.merged(SessionConfig(**fields))
        if len(self.tools) and (self._sent_config is None or "tools" in update.model_fields_set):
            own = list(update.tools or [])
            names = {t.get("name") for t in own}
            extra = [s for s in self.tools.schemas() if s["name"] not in names]
            data: dict[str, Any] = {"tools": own + extra}
            if update.tool_choice is None and "tool_choice" not in update.model_fields_set:
                data["tool_choice"] = "auto"
            update = update.merged(SessionConfig(**data))
        if self.dialect == "preview":
            wire = update.to_preview(azure=not self._target.openai)
        else:
            wire = update.to_ga()
        done = await self._request(
            {"type": "session.update", "session": wire},
            match=lambda e: e.type == "session.updated",
            translate=False,
        )
        self._sent_config = (
            update if self._sent_config is None else self._sent_config.merged(update)
        )
        assert isinstance(done, ev.SessionUpdated)
        return SessionConfig.from_ga(done.session)

    def _input_format(self) -> str:
        fmt = ((self.conversation.session.get("audio") or {}).get("input") or {}).get("format")
        if isinstance(fmt, dict):
            return {"audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}.get(
                str(fmt.get("type")), "pcm16"
            )
        if self._sent_config is not None and self._sent_config.input_format:
            return self._sent_config.input_format
        return "pcm16"

    async def send_audio(
        self, data: bytes, sample_rate: int = SAMPLE_RATE, channels: int = 1
    ) -> None:
        """Append PCM16 audio to the input buffer (``input_audio_buffer.append``).

        Any sample rate and channel count: audio is mixed to mono and resampled with a streaming
        resampler (no clicks between calls) to the session's input format (PCM16 24 kHz, or
        G.711 at 8 kHz when the session says so), and sent in pieces of at most 100 ms.
        Resampling delays a few milliseconds of audio until :meth:`commit` flushes it.
        """
        fmt = self._input_format()
        wire = self._audio_in.feed(data, sample_rate, channels, fmt)
        await self._append(wire, fmt)

    async def _append(self, wire: bytes, fmt: str) -> None:
        step = (48 if fmt == "pcm16" else 8) * _MAX_APPEND_MS
        for start in range(0, len(wire), step):
            piece = wire[start : start + step]
            await self._send_wire(
                {
                    "type": "input_audio_buffer.append",
                    "event_id": self._new_event_id(),
                    "audio": base64.b64encode(piece).decode("ascii"),
                },
                translate=False,
            )

    async def commit(self) -> str:
        """Commit the input audio as a user turn; returns the new item's id.

        Raises :class:`ServiceError` when the service refuses (e.g. too little audio).
        """
        await self._append(self._audio_in.flush(), self._input_format())
        committed = await self._request(
            {"type": "input_audio_buffer.commit"},
            match=lambda e: e.type == "input_audio_buffer.committed",
        )
        assert isinstance(committed, ev.InputAudioBufferCommitted)
        return committed.item_id

    async def clear_audio(self) -> None:
        """Drop the uncommitted input audio (``input_audio_buffer.clear``)."""
        self._audio_in.reset()
        await self._request(
            {"type": "input_audio_buffer.clear"},
            match=lambda e: e.type == "input_audio_buffer.cleared",
        )

    async def create_item(
        self,
        item: ev.MessageItem | ev.FunctionCallItem | ev.FunctionCallOutputItem | Mapping[str, Any],
        *,
        previous_item_id: str | None = None,
    ) -> str:
        """Add an item to the conversation and wait until it is added; returns its id.

        The client gives the item an id when it has none, to recognise the acknowledgement.
        """
        data = item.to_dict() if isinstance(item, BaseModel) else dict(item)
        item_id = data.get("id") or f"item_{self._id_prefix}{secrets.token_hex(8)}"
        data["id"] = item_id
        event: dict[str, Any] = {"type": "conversation.item.create", "item": data}
        if previous_item_id is not None:
            event["previous_item_id"] = previous_item_id
        await self._request(
            event,
            match=lambda e: isinstance(e, ev.ConversationItemAdded) and e.item.id == item_id,
        )
        return str(item_id)

    @overload
    async def send_text(self, text: str, respond: Literal[True] = True) -> ResponseStream: ...

    @overload
    async def send_text(self, text: str, respond: Literal[False]) -> str: ...

    async def send_text(self, text: str, respond: bool = True) -> ResponseStream | str:
        """Add a user text message; with ``respond`` (default) also ask for a response.

        Returns the :class:`ResponseStream`, or the new item's id when ``respond`` is false.
        """
        item_id = await self.create_item(ev.user_text(text))
        if not respond:
            return item_id
        return await self.create_response()

    async def create_response(self, **params: Any) -> ResponseStream:
        """Ask for a response (``response.create``) and wait until the service starts it.

        Keyword arguments are the GA response parameters (``instructions``,
        ``output_modalities``, ``tools``, ``max_output_tokens``, ``metadata``, ...). Raises
        :class:`ServiceError` when refused, e.g. while another response is active.
        """
        event: dict[str, Any] = {"type": "response.create"}
        if params:
            try:
                event["response"] = ev.ResponseParams(**params).model_dump(
                    mode="json", exclude_none=True
                )
            except ValidationError as exc:
                raise ev.validation_to_protocol_error(exc, None) from None
            if "input" in event["response"]:
                event["response"]["input"] = [
                    ev.parse_item(i).to_dict() if isinstance(i, dict) else i
                    for i in event["response"]["input"]
                ]
        stream = ResponseStream(self.conversation.output_format)
        await self._request(event, match=lambda e: isinstance(e, ev.ResponseCreated), stream=stream)
        return stream

    async def cancel_response(self) -> ev.Response | None:
        """Cancel the active response and wait for its ``response.done``.

        Returns the cancelled response, or ``None`` when no response was active (cancelling
        then is not an error: a response may end just as you cancel it).
        """
        done = await self._request(
            {"type": "response.cancel"},
            match=lambda e: isinstance(e, ev.ResponseDone),
            swallow_codes=("response_cancel_not_active",),
        )
        return done.response if isinstance(done, ev.ResponseDone) else None

    async def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> None:
        """Cut an assistant audio item at what the user actually heard.

        Pass the milliseconds *played*, not the time elapsed: the service refuses a point past
        the audio it produced (see ``conversation.item(item_id).audio_ms``) and drops the
        transcript of the unheard rest.
        """
        event = ev.ConversationItemTruncate(
            item_id=item_id, content_index=content_index, audio_end_ms=audio_end_ms
        ).to_dict()
        await self._request(
            event,
            match=lambda e: isinstance(e, ev.ConversationItemTruncated) and e.item_id == item_id,
        )

    async def interrupt(self, audio_played_ms: int | None = None) -> None:
        """Barge-in: cancel the active response and truncate the last assistant audio item at
        ``audio_played_ms`` (clamped to the audio produced). Without it, only cancels."""
        await self.cancel_response()
        item = self.conversation.last_assistant_item
        if audio_played_ms is None or item is None or not item.audio_ms:
            return
        await self.truncate(item.id, max(0, min(audio_played_ms, item.audio_ms)))

    async def delete_item(self, item_id: str) -> None:
        """Remove an item from the conversation and wait for ``conversation.item.deleted``."""
        await self._request(
            {"type": "conversation.item.delete", "item_id": item_id},
            match=lambda e: isinstance(e, ev.ConversationItemDeleted) and e.item_id == item_id,
        )

    # ------------------------------------------------------------------ waiting

    def _wait(
        self,
        match: Callable[[ev.ServerEvent], bool],
        timeout: float | None,
        what: str,
        result: Callable[[ev.ServerEvent], Any] = lambda e: e,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        waiter = _Waiter(match=match, future=fut, result=result)
        self._waiters.append(waiter)
        timer = None
        if timeout is not None:

            def expire() -> None:
                if not fut.done():
                    fut.set_exception(asyncio.TimeoutError(f"no {what} within {timeout:g} s"))

            timer = loop.call_later(timeout, expire)

        def cleanup(_: asyncio.Future[Any]) -> None:
            if timer is not None:
                timer.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

        fut.add_done_callback(cleanup)
        return fut

    @overload
    def wait_for(
        self,
        kind: type[E],
        predicate: Callable[[E], bool] | None = None,
        timeout: float | None = 60.0,
    ) -> asyncio.Future[E]: ...

    @overload
    def wait_for(
        self,
        kind: str,
        predicate: Callable[[ev.ServerEvent], bool] | None = None,
        timeout: float | None = 60.0,
    ) -> asyncio.Future[ev.ServerEvent]: ...

    def wait_for(
        self,
        kind: str | type[ev.ServerEvent],
        predicate: Callable[[Any], bool] | None = None,
        timeout: float | None = 60.0,
    ) -> asyncio.Future[Any]:
        """A future for the next event of ``kind`` (a type string or an event class) for which
        ``predicate`` holds. Registered at once: call it *before* the action that causes the
        event, then await it. Raises ``asyncio.TimeoutError`` after ``timeout`` seconds.
        """
        if isinstance(kind, str):
            name = kind

            def by_type(e: ev.ServerEvent) -> bool:
                return e.type == name
        else:
            cls = kind
            name = cls.__name__

            def by_type(e: ev.ServerEvent) -> bool:
                return isinstance(e, cls)

        def match(e: ev.ServerEvent) -> bool:
            return by_type(e) and (predicate is None or bool(predicate(e)))

        return self._wait(match, timeout, name)

    def wait_for_user_transcript(
        self, item_id: str | None = None, timeout: float | None = 60.0
    ) -> asyncio.Future[str]:
        """A future for the completed transcript of a user audio turn: the item ``item_id``
        (e.g. from :meth:`commit`; returned at once if already transcribed), or the next one.

        Needs input transcription on in the session (``transcription=Transcription(...)``).
        Raises :class:`TranscriptionError` if the service could not transcribe it.
        """
        loop = asyncio.get_running_loop()
        if item_id is not None and item_id in self._transcripts:
            done: asyncio.Future[str] = loop.create_future()
            done.set_result(self._transcripts[item_id])
            return done

        def match(e: ev.ServerEvent) -> bool:
            return isinstance(e, (ev.TranscriptionCompleted, ev.TranscriptionFailed)) and (
                item_id is None or e.item_id == item_id
            )

        def result(e: ev.ServerEvent) -> Any:
            if isinstance(e, ev.TranscriptionFailed):
                raise TranscriptionError(e.error, e.item_id)
            assert isinstance(e, ev.TranscriptionCompleted)
            return e.transcript

        return self._wait(match, timeout, "user transcript", result)

    def next_response(self, timeout: float | None = 60.0) -> asyncio.Future[ResponseStream]:
        """A future for the :class:`ResponseStream` of the next response the service starts,
        whoever asked for it (server VAD, automatic tools or :meth:`create_response`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ResponseStream] = loop.create_future()
        self._stream_waiters.append(fut)
        if timeout is not None:

            def expire() -> None:
                if not fut.done():
                    fut.set_exception(asyncio.TimeoutError(f"no response within {timeout:g} s"))

            timer = loop.call_later(timeout, expire)
            fut.add_done_callback(lambda _: timer.cancel())
        return fut

    # ------------------------------------------------------------------ events

    def __aiter__(self) -> AsyncIterator[ev.ServerEvent]:
        return self.events()

    async def events(self) -> AsyncIterator[ev.ServerEvent]:
        """Every server event, typed, in the GA vocabulary; unknown types as ``UnknownEvent``.

        ``error`` events that were raised from the call that caused them are not repeated
        here. Ends when the client is closed; raises :class:`ConnectionClosed` when the
        service closed the connection abnormally.
        """
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                self._queue.put_nowait(item)  # every other iterator ends too
                if item.error is not None:
                    raise item.error
                return
            yield item

    def _queue_put(self, item: _QueueItem) -> None:
        if (
            self.max_queue is not None
            and not isinstance(item, _End)
            and self._queue.qsize() >= self.max_queue
        ):
            try:
                self._queue.get_nowait()
            except asyncio.QueueEmpty:  # pragma: no cover
                pass
            if not self._dropped_warned:
                self._dropped_warned = True
                log.warning(
                    "more than %d server events are waiting to be read: dropping the oldest. "
                    "Iterate `async for event in client`, or pass max_queue=None to keep all",
                    self.max_queue,
                )
        self._queue.put_nowait(item)

    def _drain_end_markers(self) -> None:
        kept: list[_QueueItem] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, _End):
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)

    # ------------------------------------------------------------------ receiving

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        code: int | None = None
        reason = ""
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_message(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        self._on_message(msg.data.decode("utf-8"))
                    except UnicodeDecodeError:
                        log.warning("ignored a binary message that is not UTF-8 JSON")
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    code, reason = msg.data, msg.extra or ""
                    break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = f"{type(msg.data).__name__}: {msg.data}"
                    log.warning("connection error: %s", reason)
                    break
                else:  # CLOSING, CLOSED
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let the reader die silently
            log.exception("the reader stopped")
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._on_connection_lost(ws, code if code is not None else ws.close_code, reason)

    def _on_connection_lost(
        self, ws: aiohttp.ClientWebSocketResponse, code: int | None, reason: str
    ) -> None:
        if self._ws is not ws and self._ws is not None:
            return  # an old connection, replaced by reconnect()
        if self._user_closed:
            return
        if self._reconnecting:
            if self._ws is ws:  # the connection being set up (or about to be replaced) ended
                self._closed = True
                self.close_code = code
                self.close_reason = reason
                self._fail_all(
                    ConnectionClosed(
                        f"the connection closed (code {code}) while reconnecting",
                        code=code,
                        reason=reason,
                    )
                )
            return
        if self._may_auto_resume() and (code is None or code in RESUMABLE_CLOSE_CODES):
            self.close_code = code
            self.close_reason = reason
            self._fail_all(ConnectionClosed(f"the connection closed (code {code})", code=code))
            self._start_auto_resume("connection_closed", code, reason)
            return
        self._closed = True
        self.close_code = code
        self.close_reason = reason
        what = f"the service closed the connection (code {code}{': ' + reason if reason else ''})"
        error = ConnectionClosed(what, code=code, reason=reason)
        self._fail_all(error)
        normal = code in _NORMAL_CLOSE_CODES
        self._queue_put(_End(None if normal else error))

    def _fail_all(self, error: ConnectionClosed) -> None:
        for request in self._requests.clear():
            pending: _Pending = request.handle
            if pending.timer is not None:
                pending.timer.cancel()
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
            if pending.stream is not None:
                pending.stream._finish(error)
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_exception(error)
        for stream in list(self._streams.values()):
            stream._finish(error)
        self._streams.clear()
        for fut in self._stream_waiters:
            if not fut.done():
                fut.set_exception(error)
        self._stream_waiters.clear()
        if self._restoring is not None and not self._restoring[1].done():
            self._restoring[1].set_exception(error)

    def _observe(self, direction: Literal["send", "recv"], data: Any) -> None:
        assert self.observer is not None
        try:
            self.observer(direction, data)
        except Exception:
            log.exception("the observer raised; the connection goes on")

    def _on_message(self, text: str) -> None:
        if self.observer is not None:
            self._observe("recv", text)
        try:
            data = json.loads(text)
        except ValueError:
            log.warning("ignored a message that is not JSON: %.80r", text)
            return
        if not isinstance(data, dict):
            log.warning("ignored a message that is not a JSON object: %.80r", text)
            return
        wire = preview_to_ga_server(data) if self.dialect == "preview" else [data]
        for obj in wire:
            try:
                event = ev.parse_server_event(obj)
            except Exception:  # pragma: no cover - parse_server_event never raises on objects
                log.exception("could not parse %.80r", obj)
                continue
            try:
                self._dispatch(event)
            except Exception:
                log.exception("handling %s failed", event.type)

    def _dispatch(self, event: ev.ServerEvent) -> None:
        self.conversation.apply(event)
        if self._restoring is not None and event.type in _RESTORE_EVENTS:
            restore, done = self._restoring
            restore.on_event(event.to_dict())
            if restore.done and not done.done():
                done.set_result(None)
            if isinstance(event, ev.ErrorEvent) and event.error.event_id in restore.event_ids:
                return  # a refused restore item: logged, not news to the application

        resume = False
        if isinstance(event, ev.ErrorEvent):
            if self._on_error(event):
                return
            # with auto_reconnect, the SessionResumed event tells the application instead
            resume = event.error.code == "session_expired" and self._may_auto_resume()
        elif isinstance(event, ev.ResponseCreated):
            self._on_response_created(event)
        elif isinstance(event, ev.TranscriptionCompleted):
            self._transcripts[event.item_id] = event.transcript

        # The response streams
        follow_up = False
        if self.auto_tools and len(self.tools) and event.type in TOOL_EVENTS:
            follow_up = self._on_tool_event(event)
        rid = _response_id(event)
        if rid is not None:
            stream = self._streams.get(rid)
            if stream is not None:
                stream._feed(event, follow_up=follow_up)
                if isinstance(event, ev.ResponseDone):
                    del self._streams[rid]

        # Acknowledgements: one event acknowledges the oldest request it matches
        if not isinstance(event, ev.ErrorEvent):
            answered = self._requests.on_event(event)
            if isinstance(answered, Answered):
                handle: _Pending = answered.request.handle
                if handle.timer is not None:
                    handle.timer.cancel()
                if handle.future is not None and not handle.future.done():
                    try:
                        handle.future.set_result(handle.result(event))
                    except Exception as exc:
                        handle.future.set_exception(exc)

        for waiter in list(self._waiters):
            if not waiter.future.done() and waiter.match(event):
                try:
                    waiter.future.set_result(waiter.result(event))
                except Exception as exc:
                    waiter.future.set_exception(exc)

        if resume and isinstance(event, ev.ErrorEvent):
            self._start_auto_resume("session_expired", None, event.error.message or "")
            return
        self._queue_put(event)

    def _on_error(self, event: ev.ErrorEvent) -> bool:
        """Deliver an error to the request that caused it; True when it was delivered."""
        outcome = self._requests.on_event(event)
        if outcome is None:
            return False
        if outcome.request is None:
            # A cancel answered by the response's own response.done, then refused as "no
            # active response": the call already returned; the refusal is no news.
            return True
        pending: _Pending = outcome.request.handle
        if pending.timer is not None:
            pending.timer.cancel()
        if isinstance(outcome, Excused):
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(None)
            return True
        error = ServiceError(event.error)
        if pending.stream is not None:
            pending.stream._finish(error)
        if pending.internal:
            log.warning(
                "the service refused %s sent by the client: %s", outcome.request.kind, error
            )
            return False  # nobody awaits it: the application sees it on the event stream
        if pending.future is not None and not pending.future.done():
            pending.future.set_exception(error)
        return True

    def _on_response_created(self, event: ev.ResponseCreated) -> None:
        rid = event.response.id or ""
        stream: ResponseStream | None = None
        for request in self._requests:
            if request.kind == "response.create":
                stream = request.handle.stream
                break
        if stream is None and self._stream_waiters:
            stream = ResponseStream(self.conversation.output_format)
        if stream is not None:
            self._streams[rid] = stream
        waiters, self._stream_waiters = self._stream_waiters, []
        for fut in waiters:
            if not fut.done() and stream is not None:
                fut.set_result(stream)

    # ------------------------------------------------------------------ automatic tools

    def _on_tool_event(self, event: ev.ServerEvent) -> bool:
        """Feed the tool turn (:class:`~aoai_realtime.protocol.tools.ToolTurn`): run the calls it
        starts, send what it ends with. Returns True when a follow-up response will come."""
        effects = self._tool_turn.on_event(event.to_dict())
        for effect in effects:
            if isinstance(effect, RunCall):
                call = effect.call
                stream = self._streams.get(call.response_id or "")
                if stream is not None:
                    stream.function_calls.append(call)
                    self._tool_streams[call.response_id or ""] = stream
                self._spawn(self._run_call(call))
            else:
                self._spawn(self._end_tool_turn(effect))
        if not isinstance(event, ev.ResponseDone):
            return False
        rid = event.response.id or ""
        ended = any(isinstance(e, TurnEnd) and e.follow_up is not None for e in effects)
        return ended or self._tool_turn.expects_follow_up(rid)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)
        return task

    async def _run_call(self, call: ToolCall) -> None:
        output = await self.tools.run(call.name, call.arguments, timeout_s=self.tool_timeout)
        end = self._tool_turn.completed(call.call_id, output)
        if end is not None:
            await self._end_tool_turn(end)

    async def _end_tool_turn(self, end: TurnEnd) -> None:
        """Send the outputs, then the follow-up ``response.create`` (its stream is the turn's)."""
        stream = self._tool_streams.pop(end.response_id, None)
        try:
            for event in end.events:
                await self._send_wire({**event, "event_id": self._new_event_id()})
            if end.follow_up is None:
                # Cancelled or failed: outputs keep the conversation consistent, but the user
                # (or the service) decides what comes next.
                if stream is not None:
                    stream._finish()
                return
            await self._request(
                end.follow_up,
                match=lambda e: isinstance(e, ev.ResponseCreated),
                stream=stream,
                internal=True,
            )
        except ConnectionClosed as exc:
            if stream is not None:
                stream._finish(exc)
        except asyncio.CancelledError:
            if stream is not None:
                stream._finish(ConnectionClosed("the tool run was cancelled"))
            raise

    # ------------------------------------------------------------------ misc

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"RealtimeClient({self.url!r}, dialect={self.dialect!r}, {state})"


def _response_id(event: ev.ServerEvent) -> str | None:
    if isinstance(event, (ev.ResponseCreated, ev.ResponseDone)):
        return event.response.id
    rid = getattr(event, "response_id", None)
    return rid if isinstance(rid, str) else None


# ============================================================================================
# connect()


class _Connect:
    """What :func:`connect` returns: await it, or use it with ``async with``."""

    def __init__(self, factory: Callable[[], Awaitable[RealtimeClient]]) -> None:
        self._factory = factory
        self._client: RealtimeClient | None = None

    def __await__(self) -> Generator[Any, None, RealtimeClient]:
        return self._factory().__await__()

    async def __aenter__(self) -> RealtimeClient:
        self._client = await self._factory()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


def connect(
    settings: Settings | None = None,
    *,
    endpoint: str | None = None,
    deployment: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    credential: CredentialLike | None = None,
    api_version: str | None = None,
    url: str | None = None,
    dialect: DialectName | None = None,
    session: SessionConfig | None = None,
    tools: Iterable[Tool | Callable[..., Any]] = (),
    auto_tools: bool = True,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    open_timeout: float = 30.0,
    close_timeout: float = 2.0,
    ack_timeout: float = 30.0,
    max_queue: int | None = 10_000,
    observer: Observer | None = None,
    auto_reconnect: bool = False,
    tool_timeout: float | None = 60.0,
    call_id: str | None = None,
) -> _Connect:
    """Open a realtime session: ``async with connect(...) as rt:`` or ``rt = await connect(...)``.

    Where to:

    * nothing: :meth:`Settings.load` (environment, ``.env``, ``.dev.vars``);
    * ``endpoint`` + ``deployment`` (+ ``api_key``): Azure OpenAI, GA dialect
      (``/openai/v1/realtime?model=``), or preview (``/openai/realtime?api-version=``) when
      ``api_version`` is given; a pasted full URL as ``endpoint`` is understood;
    * ``endpoint="https://api.openai.com"``, ``model=`` and ``api_key``: OpenAI (Bearer key;
      ``dialect="preview"`` adds ``OpenAI-Beta: realtime=v1``);
    * ``url``: any realtime WebSocket URL as is (the local engine, the middle tier); the
      dialect is preview when the query has ``api-version``, else GA, unless ``dialect`` says.

    Auth: ``api_key``, or ``credential`` (an :class:`aoai_realtime.auth.Credential`, an
    azure-identity credential, sync such as ``DefaultAzureCredential()`` or async from
    ``azure.identity.aio``, scope ``cognitiveservices``, or a bearer-token provider such as
    ``get_bearer_token_provider(...)``), else from the settings (``AZURE_OPENAI_API_KEY``, then
    ``AZURE_OPENAI_AD_TOKEN``, then Entra ID via ``az login``/managed identity). Headers are
    fetched per connection, so :meth:`RealtimeClient.reconnect` uses a fresh token.

    ``session`` is sent with ``session.update`` once connected, with ``tools`` (plain
    functions or :class:`Tool`) added; ``auto_tools=False`` leaves the calls to you.
    ``tool_timeout`` bounds one call (seconds; ``None``: no bound): a call that takes longer
    gives the model an ``{"error": ...}`` output instead.
    ``max_message_bytes`` bounds one incoming message (16 MiB; audio items exceed 1 MiB).
    ``request_id`` sets the first ``x-ms-client-request-id`` (default: a fresh UUID).
    ``close_timeout`` bounds :meth:`RealtimeClient.close`; ``ack_timeout`` bounds the wait for
    an acknowledgement; ``max_queue`` bounds unread events (the oldest are dropped).
    ``observer(direction, data)`` sees every message on the wire (``"send"``: the event dict
    as sent; ``"recv"``: the text as received), e.g. to record a session.

    ``auto_reconnect``: when the service ends the session (``session_expired``, or an abnormal
    close such as 1006/1011), open a new one and restore the recent conversation
    (:meth:`RealtimeClient.reconnect` with ``restore=True``), at most 3 times in 10 minutes
    (``client.resume_budget``); the event stream then gets a :class:`SessionResumed` event. Calls
    made meanwhile wait for the new session; calls that were waiting when it ended raise
    :class:`ConnectionClosed`.

    ``call_id``: attach to a running WebRTC call instead of opening a session (the "sideband"
    a server uses to watch a browser's call, run its tools and update its session): the same
    endpoint and credential, the URL ``.../openai/v1/realtime?call_id=rtc_...`` (see
    :func:`sideband_url`; the id is the last part of the ``Location`` header answering ``POST
    .../realtime/calls``, or :attr:`aoai_realtime.calls.CallAnswer.call_id`). GA only; no
    deployment is needed. The call's session is running already, so nothing is awaited on
    connecting; ``session`` and ``tools`` are sent as ``session.update`` as usual, and the
    call's events arrive as the call goes. The call's audio travels on its WebRTC tracks, not
    here. A reconnect attaches again without restoring items (the call kept them); an ended
    call is :class:`CallNotFound` (HTTP 404).
    """
    if model is not None and deployment is not None and model != deployment:
        raise ValueError("pass either deployment= or model= (they name the same thing)")
    target = _resolve_target(
        settings,
        endpoint=endpoint,
        deployment=deployment or model,
        api_key=api_key,
        credential=credential,
        api_version=api_version,
        url=url,
        dialect=dialect,
        headers=headers,
        call_id=call_id,
    )

    async def factory() -> RealtimeClient:
        client = RealtimeClient(
            target,
            session=session,
            tools=tools,
            auto_tools=auto_tools,
            max_message_bytes=max_message_bytes,
            request_id=request_id,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            ack_timeout=ack_timeout,
            max_queue=max_queue,
            observer=observer,
            auto_reconnect=auto_reconnect,
            tool_timeout=tool_timeout,
        )
        await client._start()
        return client

    return _Connect(factory)
