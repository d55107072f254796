"""Who may open a realtime session, and how: the engine's handshake checks as a pure function.

:func:`admit` reads a request's path, query and headers (no sockets, no web framework) and
either returns an :class:`Admission` (the connection's dialect, model name and faults) or raises
:class:`EngineRefusal` with the HTTP status, headers and JSON body the engine answers with. The
aiohttp handlers and :meth:`~aoai_realtime.engine.server.RunningEngine.open_channel` (the
in-memory entry point) both use it, so a refusal is the same over a socket and in memory.

The checks, in order: the path is a realtime path; its required query parameters are there
(``model``, which ``?intent=transcription`` makes optional on the GA and OpenAI paths; the
preview path's ``api-version`` and ``deployment``); ``?fault=`` parses (when the
engine allows query faults); the API key matches (when the engine has one); a ``refuse`` fault.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from ..protocol.dialect import Dialect
from .config import EngineConfig
from .faults import Faults, FaultSpecError

__all__ = [
    "GA_PATH",
    "OPENAI_PATH",
    "PREVIEW_PATH",
    "REALTIME_PATHS",
    "Admission",
    "EngineRefusal",
    "Query",
    "admit",
    "refusal",
]

GA_PATH = "/openai/v1/realtime"
OPENAI_PATH = "/v1/realtime"
PREVIEW_PATH = "/openai/realtime"
REALTIME_PATHS = (GA_PATH, OPENAI_PATH, PREVIEW_PATH)

PREVIEW_API_VERSIONS_HINT = "2024-10-01-preview or 2025-04-01-preview"

Query = Mapping[str, Union[str, Sequence[str]]]
"""Query parameters: one value or a list of values per name (``fault`` may repeat)."""


@dataclass(frozen=True)
class Admission:
    """An accepted handshake: what the connection's session speaks and suffers."""

    dialect: Dialect
    model: str
    faults: Faults
    transcription: bool = False
    """``?intent=transcription``: the session is a transcription session."""


class EngineRefusal(Exception):
    """A refused handshake: the HTTP ``status``, response ``headers`` and JSON ``body``.

    ``body`` is ``{"error": {"code": ..., "message": ...}}``, as the engine answers over HTTP.
    """

    def __init__(self, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body
        super().__init__(f"HTTP {status}: {self.message}")

    @property
    def code(self) -> str:
        return str((self.body.get("error") or {}).get("code", self.status))

    @property
    def message(self) -> str:
        return str((self.body.get("error") or {}).get("message", ""))


def refusal(status: int, code: str, message: str, **headers: str) -> EngineRefusal:
    """An :class:`EngineRefusal` with the engine's JSON error body."""
    return EngineRefusal(status, headers, {"error": {"code": code, "message": message}})


def admit(
    config: EngineConfig,
    path: str,
    query: Query | None = None,
    headers: Mapping[str, str] | None = None,
) -> Admission:
    """Check one handshake (see the module documentation); raises :class:`EngineRefusal`.

    ``headers`` are matched without regard to case, as HTTP headers are.
    """
    query = query or {}
    heads = {k.lower(): v for k, v in (headers or {}).items()}
    path = path.rstrip("/") or "/"
    transcription = _first(query, "intent") == "transcription"
    if path == GA_PATH:
        model = _first(query, "model") or _first(query, "deployment")
        if not model and transcription:  # a transcription session names its model later
            model = ""
        elif not model:
            raise refusal(
                400,
                "missing_model",
                "Missing required query parameter 'model' (the deployment name): "
                f"connect to {GA_PATH}?model=NAME.",
            )
        dialect = Dialect.GA
    elif path == OPENAI_PATH:
        model = _first(query, "model")
        if not model and transcription:
            model = ""
        elif not model:
            raise refusal(
                400,
                "missing_model",
                f"Missing required query parameter 'model': {OPENAI_PATH}?model=NAME.",
            )
        beta = heads.get("openai-beta", "")
        dialect = Dialect.PREVIEW if "realtime=v1" in beta.replace(" ", "") else Dialect.GA
    elif path == PREVIEW_PATH:
        if not _first(query, "api-version"):
            raise refusal(
                400,
                "missing_api_version",
                "Missing required query parameter 'api-version' (e.g. "
                f"{PREVIEW_API_VERSIONS_HINT}). For the GA protocol, connect to "
                f"{GA_PATH}?model=NAME instead.",
            )
        model = _first(query, "deployment")
        if not model:
            raise refusal(
                400,
                "missing_deployment",
                "Missing required query parameter 'deployment': "
                f"{PREVIEW_PATH}?api-version=...&deployment=NAME.",
            )
        dialect = Dialect.PREVIEW
    else:
        raise refusal(
            404,
            "not_found",
            f"No realtime endpoint at {path!r}: use {GA_PATH}?model=NAME (GA), "
            f"{OPENAI_PATH}?model=NAME or {PREVIEW_PATH}?api-version=...&deployment=NAME.",
        )

    faults = config.faults
    specs = _all(query, "fault")
    if config.allow_query_faults and specs:
        try:
            faults = faults.merged(Faults.parse(specs))
        except FaultSpecError as exc:
            raise refusal(400, "invalid_fault", str(exc)) from None
    if config.api_key is not None and not any(
        secrets.compare_digest(key.encode(), config.api_key.encode())
        for key in offered_keys(query, heads)
    ):
        raise refusal(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        )
    if faults.refuse_status is not None:
        raise fault_refusal(faults.refuse_status)
    return Admission(dialect, model, faults, transcription)


def offered_keys(query: Query, headers: Mapping[str, str]) -> list[str]:
    """Every credential the client offers, wherever it put it (``headers`` in lower case)."""
    keys: list[str] = []
    if headers.get("api-key"):
        keys.append(headers["api-key"])
    keys.extend(k for k in _all(query, "api-key") if k)
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        keys.append(auth[7:].strip())
    for proto in headers.get("sec-websocket-protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith("openai-insecure-api-key."):
            keys.append(proto[len("openai-insecure-api-key.") :])
    return keys


def fault_refusal(status: int) -> EngineRefusal:
    """The answer of a ``refuse:STATUS`` fault, worded as the service words it."""
    if status == 401:
        return refusal(401, "401", "Access denied due to invalid subscription key (fault).")
    if status == 403:
        return refusal(403, "403", "Forbidden (fault).")
    if status == 429:
        return refusal(
            429,
            "429",
            "Requests to the realtime API have exceeded the rate limit of your deployment. "
            "Please retry after 1 second (fault).",
            **{"Retry-After": "1", "retry-after-ms": "1000"},
        )
    return refusal(status, str(status), f"The service is unavailable (fault {status}).")


def _all(query: Query, name: str) -> list[str]:
    value = query.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _first(query: Query, name: str) -> str | None:
    values = _all(query, name)
    return values[0] if values else None
