"""Traces and metrics of the middle tier with OpenTelemetry (the ``[otel]`` extra).

Off unless turned on: without the extra, or without any ``OTEL_*`` exporter setting (and no
``serve --otel``), nothing here imports OpenTelemetry and every relay gets :data:`NOOP`, whose
hooks do nothing. The relay calls a few hooks at the points where it already decides something:

* :meth:`SessionTelemetry.running` around :meth:`Relay.run`: the ``realtime.session`` span, the
  active-session count;
* :meth:`~SessionTelemetry.client_event` / :meth:`~SessionTelemetry.server_event` for the events
  it parses anyway (never the audio appends or deltas, which it forwards unparsed): the
  ``realtime.turn`` spans and their events;
* :meth:`~SessionTelemetry.output_delta` on the hot path, only while a turn waits for its first
  audio (or text) delta: one attribute test per delta otherwise (``telemetry.waiting``);
* :meth:`~SessionTelemetry.tool` around a server tool's run: a ``realtime.tool`` span;
* :meth:`~SessionTelemetry.failed`, :meth:`~SessionTelemetry.session_ended`,
  :meth:`~SessionTelemetry.resume_failed`, :meth:`~SessionTelemetry.resumed`.

Messages are not counted here: ``realtime.relay.messages`` is an observable counter that reads
the relays' own :class:`~.relay.RelayStats` when a metric reader collects, so a message costs
nothing more than it did.

:func:`setup_from_env` is what ``serve`` calls: with the extra installed and an ``OTEL_*``
exporter setting present (or ``force``), it builds the SDK's providers from the standard
variables and installs them globally. :func:`enable` takes providers of your own (tests use the
SDK's in-memory exporter and reader); :func:`disable` turns it off again for new sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..config import ConfigError

__all__ = [
    "EXPORTER_SETTINGS",
    "INSTRUMENTATION",
    "NOOP",
    "SessionTelemetry",
    "disable",
    "enable",
    "enabled",
    "session",
    "setup_from_env",
]

INSTRUMENTATION = "aoai_realtime.server"
"""The tracer's and the meter's name (the instrumentation scope)."""

EXPORTER_SETTINGS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
"""Any of these set (not empty) turns telemetry on in ``serve`` when the extra is installed."""

MISSING_EXTRA = "pip install 'aoai-realtime[otel]'"

LATENCY_BUCKETS_MS = (50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
DIRECTIONS = ("from_client", "to_upstream", "from_upstream", "to_client")

# the first output of a turn, by the names either dialect sends (the relay peeks them unparsed)
_FIRST_OUTPUT = {
    "response.output_audio.delta": "audio",
    "response.audio.delta": "audio",
    "response.output_text.delta": "text",
    "response.text.delta": "text",
}


# ------------------------------------------------------------------------------ the hooks


class _NoTelemetry:
    """The hooks when telemetry is off: each does nothing."""

    waiting = False
    """True while a turn waits for its first output delta (the hot path tests only this)."""

    @contextlib.contextmanager
    def running(self, relay: Any) -> Iterator[None]:
        yield

    def client_event(self, event: dict[str, Any]) -> None:
        pass

    def server_event(self, event: dict[str, Any]) -> None:
        pass

    def output_delta(self, kind: str) -> None:
        pass

    def failed(self, code: str) -> None:
        pass

    def session_ended(self, cause: str, close_code: int | None) -> None:
        pass

    def resume_failed(self, why: str) -> None:
        pass

    def resumed(self, items: int) -> None:
        pass

    async def tool(self, name: str, call_id: str, run: Awaitable[str]) -> str:
        return await run


NOOP = _NoTelemetry()
"""What every relay gets while telemetry is off."""

_current: _Telemetry | None = None


def session() -> _NoTelemetry:
    """The hooks for one new relayed connection: :data:`NOOP` while telemetry is off."""
    current = _current
    return NOOP if current is None else SessionTelemetry(current)


def enabled() -> bool:
    return _current is not None


def enable(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Emit from now on, with these providers (default: the global ones of
    ``opentelemetry.trace`` / ``opentelemetry.metrics``). Relays already running are unaffected."""
    global _current
    _current = _Telemetry(tracer_provider, meter_provider)


def disable() -> None:
    """New relays emit nothing (the providers are left as they are)."""
    global _current
    _current = None


class _Telemetry:
    """The tracer and the instruments, shared by every session of the process."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace

        tp = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        mp = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.tracer = tp.get_tracer(INSTRUMENTATION, __version__)
        meter = mp.get_meter(INSTRUMENTATION, __version__)
        self.active = meter.create_up_down_counter(
            "realtime.sessions.active",
            unit="{session}",
            description="Page sessions being relayed now",
        )
        self.latency = meter.create_histogram(
            "realtime.turn.latency",
            unit="ms",
            description="From the end of the user's speech (speech_stopped) or the page's "
            "response.create to the first audio (or text) delta of the reply",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS,
        )
        self.failures = meter.create_counter(
            "realtime.upstream.failures",
            unit="{failure}",
            description="Sessions ended by a relay_error, by its code",
        )
        self._lock = threading.Lock()
        self._live: set[SessionTelemetry] = set()
        self._done = dict.fromkeys(DIRECTIONS, 0)
        meter.create_observable_counter(
            "realtime.relay.messages",
            callbacks=[self._observe_messages],
            unit="{message}",
            description="Messages relayed, by direction (read from each relay's counts)",
        )

    def started(self, s: SessionTelemetry) -> None:
        self.active.add(1, s.kind_attrs)
        with self._lock:
            self._live.add(s)

    def finished(self, s: SessionTelemetry) -> None:
        with self._lock:
            self._live.discard(s)
            for d in DIRECTIONS:
                self._done[d] += getattr(s.stats, d)
        self.active.add(-1, s.kind_attrs)

    def _observe_messages(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            totals = dict(self._done)
            for s in self._live:
                for d in DIRECTIONS:
                    totals[d] += getattr(s.stats, d)
        return [Observation(n, {"realtime.direction": d}) for d, n in totals.items()]


@dataclass
class _Turn:
    span: Any
    context: Any
    trigger: str
    latency_from: float | None = None
    latency_ms: float | None = None
    responses: set[str] = field(default_factory=set)


class SessionTelemetry(_NoTelemetry):
    """The spans of one relayed connection: ``realtime.session``, its ``realtime.turn`` spans
    and their ``realtime.tool`` spans. Used from the relay's event loop only (the metric
    reader's callback reads ``stats`` under the lock)."""

    def __init__(self, telemetry: _Telemetry) -> None:
        self._t = telemetry
        self.waiting = False
        self.stats: Any = None
        self.kind_attrs: dict[str, str] = {}
        self._span: Any = None
        self._context: Any = None
        self._turn: _Turn | None = None
        self._turns = 0
        self._is_server_tool: Callable[[str], bool] = lambda name: False

    # ---------------------------------------------------------------------------- the session

    @contextlib.contextmanager
    def running(self, relay: Any) -> Iterator[None]:
        from opentelemetry import context, trace

        kind = relay.upstream_kind or "none"
        self.kind_attrs = {"realtime.upstream.kind": kind}
        self.stats = relay.stats
        self._is_server_tool = lambda name: relay.policy.tool(name) is not None
        self._span = self._t.tracer.start_span(
            "realtime.session",
            kind=trace.SpanKind.SERVER,
            attributes={
                "realtime.connection.id": relay.conn_id,
                "realtime.upstream.kind": kind,
                "realtime.upstream.dialect": relay.dialect,
                "realtime.client.dialect": relay.client_dialect,
            },
        )
        self._context = trace.set_span_in_context(self._span)
        self._t.started(self)
        token = context.attach(self._context)  # the relay's tasks start under the session
        try:
            yield
        finally:
            context.detach(token)
            self._end()

    def _end(self) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._close_turn("session_closed")
        s, span = self.stats, self._span
        span.set_attributes(
            {
                "realtime.closed_by": s.closed_by or "unknown",
                "realtime.resumes": s.resumes,
                "realtime.turns": self._turns,
                "realtime.tool_calls": s.tool_calls,
                **{f"realtime.messages.{d}": getattr(s, d) for d in DIRECTIONS},
            }
        )
        if s.connected_ms is not None:
            span.set_attribute("realtime.connected_ms", round(s.connected_ms, 1))
        if s.error_code:
            span.set_attribute("realtime.error.code", s.error_code)
            span.set_attribute("error.type", s.error_code)
            span.set_status(Status(StatusCode.ERROR, s.error_code))
        self._t.finished(self)  # the counts before the span ends: a reader of it sees them
        span.end()

    def failed(self, code: str) -> None:
        self._t.failures.add(1, {"error.code": code, **self.kind_attrs})
        self._span.add_event("relay_error", {"error.code": code})

    def session_ended(self, cause: str, close_code: int | None) -> None:
        attrs: dict[str, Any] = {"realtime.cause": cause}
        if close_code is not None:
            attrs["realtime.close_code"] = close_code
        self._span.add_event("upstream_session_ended", attrs)
        if self._turn is not None:
            self._turn.span.add_event("upstream_session_ended", attrs)
        self._close_turn("session_ended")

    def resume_failed(self, why: str) -> None:
        self._span.add_event("resume_attempt_failed", {"realtime.why": why[:200]})

    def resumed(self, items: int) -> None:
        self._span.add_event("session_resumed", {"realtime.items": items})

    # ---------------------------------------------------------------------------- turns

    def _open_turn(self, trigger: str, *, latency_from: float | None = None) -> _Turn:
        from opentelemetry import trace

        self._close_turn("superseded")
        self._turns += 1
        span = self._t.tracer.start_span(
            "realtime.turn",
            context=self._context,
            attributes={"realtime.turn.index": self._turns, "realtime.turn.trigger": trigger},
        )
        turn = _Turn(span, trace.set_span_in_context(span), trigger, latency_from)
        self._turn = turn
        self.waiting = latency_from is not None
        return turn

    def _close_turn(self, outcome: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        turn = self._turn
        if turn is None:
            return
        self._turn = None
        self.waiting = False
        turn.span.set_attribute("realtime.turn.outcome", outcome)
        turn.span.set_attribute("realtime.turn.responses", len(turn.responses))
        if outcome == "failed":
            turn.span.set_status(Status(StatusCode.ERROR, "response failed"))
        turn.span.end()

    def client_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "conversation.item.create":
            item = event.get("item")
            if (
                isinstance(item, dict)
                and item.get("type") == "message"
                and item.get("role") == "user"
            ):
                turn = self._turn or self._open_turn("text")
                turn.span.add_event("typed_message")
        elif kind == "response.create":
            turn = self._turn or self._open_turn("response.create")
            turn.span.add_event("response.create")
            if turn.latency_from is None:
                turn.latency_from = time.monotonic()
                self.waiting = True

    def server_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        turn = self._turn
        if kind == "input_audio_buffer.speech_stopped":
            turn = self._open_turn("speech", latency_from=time.monotonic())
            turn.span.add_event("speech_stopped", _int_attr("audio_end_ms", event))
        elif kind == "input_audio_buffer.speech_started":
            if turn is not None:  # the user speaks over the reply (barge-in)
                turn.span.add_event("speech_started", _int_attr("audio_start_ms", event))
        elif kind == "conversation.item.input_audio_transcription.completed":
            (turn.span if turn is not None else self._span).add_event(
                "transcript_ready", {"realtime.item_id": str(event.get("item_id", ""))}
            )
        elif kind == "response.created":
            rid = _response_id(event)
            if turn is None:  # a response nobody here asked for: its own turn
                turn = self._open_turn("server", latency_from=time.monotonic())
            turn.responses.add(rid)
            turn.span.add_event("response_created", {"realtime.response_id": rid})
        elif kind == "response.function_call_arguments.done":
            if turn is not None:
                turn.span.add_event(
                    "function_call",
                    {
                        "realtime.tool.name": str(event.get("name", "")),
                        "realtime.tool.call_id": str(event.get("call_id", "")),
                    },
                )
        elif kind == "response.done":
            self._response_done(event)
        elif kind == "error":
            error = event.get("error") or {}
            if turn is not None and isinstance(error, dict):
                turn.span.add_event(
                    "error",
                    {"error.type": str(error.get("type")), "error.code": str(error.get("code"))},
                )
        elif kind in _FIRST_OUTPUT and self.waiting:
            self.output_delta(kind)

    def _response_done(self, event: dict[str, Any]) -> None:
        turn = self._turn
        response = event.get("response") or {}
        if turn is None or not isinstance(response, dict):
            return
        rid = str(response.get("id", ""))
        if rid not in turn.responses:
            return  # the end of a response of an earlier turn
        status = str(response.get("status", "unknown"))
        turn.span.add_event(
            "response_done", {"realtime.response_id": rid, "realtime.response.status": status}
        )
        output = response.get("output") or []
        server_calls = [
            item
            for item in output
            if isinstance(item, dict)
            and item.get("type") == "function_call"
            and self._is_server_tool(str(item.get("name")))
        ]
        if status == "completed" and server_calls:
            return  # the relay runs them, then asks for the next response: the same turn
        self._close_turn(status)

    def output_delta(self, kind: str) -> None:
        output = _FIRST_OUTPUT.get(kind)
        turn = self._turn
        if output is None or turn is None:
            return
        self.waiting = False
        if turn.latency_from is None or turn.latency_ms is not None:
            return
        ms = (time.monotonic() - turn.latency_from) * 1000
        turn.latency_ms = ms
        turn.span.add_event(f"first_{output}_delta", {"realtime.latency_ms": round(ms, 1)})
        turn.span.set_attribute("realtime.turn.latency_ms", round(ms, 1))
        self._t.latency.record(
            ms,
            {"realtime.turn.trigger": turn.trigger, "realtime.output": output, **self.kind_attrs},
        )

    # ---------------------------------------------------------------------------- tools

    async def tool(self, name: str, call_id: str, run: Awaitable[str]) -> str:
        from opentelemetry.trace import Status, StatusCode

        parent = self._turn.context if self._turn is not None else self._context
        span = self._t.tracer.start_span(
            "realtime.tool",
            context=parent,
            attributes={
                "realtime.tool.name": name,
                "realtime.tool.call_id": call_id,
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call_id,
            },
        )
        outcome = "cancelled"
        try:
            output = await run
            outcome, problem = _tool_outcome(output)
            if problem is not None:
                span.set_status(Status(StatusCode.ERROR, problem[:200]))
            return output
        except asyncio.CancelledError:  # the session ended under it
            raise
        except BaseException as exc:
            outcome = "error"
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.set_attribute("realtime.tool.outcome", outcome)
            span.end()


def _tool_outcome(output: str) -> tuple[str, str | None]:
    """``ok``, ``error`` or ``timeout``: a tool's failure is an output ``{"error": "..."}``."""
    if not output.startswith('{"error"'):
        return "ok", None
    try:
        value = json.loads(output)
    except ValueError:
        return "ok", None
    if not (isinstance(value, dict) and list(value) == ["error"]):
        return "ok", None
    problem = str(value["error"])
    return ("timeout" if "did not finish within" in problem else "error"), problem


def _response_id(event: dict[str, Any]) -> str:
    response = event.get("response")
    return str(response.get("id", "")) if isinstance(response, dict) else ""


def _int_attr(name: str, event: dict[str, Any]) -> dict[str, int]:
    value = event.get(name)
    return {f"realtime.{name}": value} if isinstance(value, int) else {}


# ------------------------------------------------------------------------------ serve's setup


def _available() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ImportError:  # ModuleNotFoundError for the parent package: not installed
        return False


def wanted() -> bool:
    """Whether an ``OTEL_*`` exporter setting is present (and the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in EXPORTER_SETTINGS)


def setup_from_env(*, force: bool = False) -> str | None:
    """Turn telemetry on for ``serve`` from the standard ``OTEL_*`` variables.

    Only when an exporter setting is present (:data:`EXPORTER_SETTINGS`) or ``force``
    (``serve --otel``), and ``OTEL_SDK_DISABLED`` is not ``true``; otherwise nothing is imported
    and ``None`` returned. Returns the line ``serve`` prints about it. Raises
    :class:`~aoai_realtime.config.ConfigError` for ``force`` without the extra, and for an
    exporter setting that cannot work (an unknown name, an OTLP protocol without its package).

    The SDK reads the rest itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the
    resource; ``service.name`` is ``aoai-realtime`` unless they set one), ``OTEL_TRACES_SAMPLER``,
    ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``, and the exporters every
    ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, compression, certificates).
    Providers already installed globally (``opentelemetry-instrument``) are used as they are.
    """
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled or not (force or wanted()):
        return None
    if not _available():
        if force:
            raise ConfigError(
                f"--otel needs OpenTelemetry, which is not installed: {MISSING_EXTRA}"
            )
        return (
            "aoai-realtime: OTEL_* settings are set but OpenTelemetry is not installed, so no "
            f"traces or metrics are sent ({MISSING_EXTRA})"
        )
    from opentelemetry import metrics, trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        enable()
        return "aoai-realtime: OpenTelemetry: using the providers already set up"
    tracer_provider, meter_provider, said = _providers()
    if tracer_provider is None and meter_provider is None:
        return "aoai-realtime: OpenTelemetry: every exporter is none, nothing is sent"
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    if meter_provider is not None:
        metrics.set_meter_provider(meter_provider)
    enable(tracer_provider, meter_provider)
    return f"aoai-realtime: OpenTelemetry: {said}"


def _exporter_classes(signal: str) -> list[tuple[str, Any]]:
    """The exporter classes ``OTEL_{SIGNAL}_EXPORTER`` names (default ``otlp``, over HTTP unless
    ``OTEL_EXPORTER_OTLP[_{SIGNAL}]_PROTOCOL`` says ``grpc``), found by the SDK's entry points."""
    from importlib.metadata import entry_points

    upper = signal.upper()
    group = f"opentelemetry_{signal}_exporter"
    found: list[tuple[str, Any]] = []
    for raw in os.environ.get(f"OTEL_{upper}_EXPORTER", "otlp").split(","):
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        entry = name
        if name == "otlp":
            protocol = (
                os.environ.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            entry = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}.get(
                protocol, ""
            )
            if not entry:
                raise ConfigError(
                    f"OTLP protocol {protocol!r}: use http/protobuf (the default) or grpc"
                )
        points = list(entry_points(group=group, name=entry))
        if not points:
            known = sorted({p.name for p in entry_points(group=group)} | {"otlp", "none"})
            hint = (
                " (pip install opentelemetry-exporter-otlp-proto-grpc)"
                if entry == "otlp_proto_grpc"
                else ""
            )
            raise ConfigError(
                f"OTEL_{upper}_EXPORTER={raw.strip()}: no such {signal} exporter is installed"
                f"{hint}; known here: {', '.join(known)}"
            )
        found.append((name, points[0].load()))
    return found


def _providers() -> tuple[Any, Any, str]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({})  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "aoai-realtime"}))
    resource = Resource({SERVICE_VERSION: __version__}).merge(resource)
    span_exporters = _exporter_classes("traces")
    metric_exporters = _exporter_classes("metrics")
    try:
        tracer_provider = None
        if span_exporters:
            tracer_provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER
            for _, cls in span_exporters:
                tracer_provider.add_span_processor(BatchSpanProcessor(cls()))
        meter_provider = None
        if metric_exporters:
            readers = [
                cls() if issubclass(cls, MetricReader) else PeriodicExportingMetricReader(cls())
                for _, cls in metric_exporters
            ]
            meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    except Exception as exc:  # an exporter that cannot start with these settings
        raise ConfigError(f"OpenTelemetry exporter: {type(exc).__name__}: {exc}") from None
    service = resource.attributes.get(SERVICE_NAME)
    parts = [
        f"traces to {', '.join(n for n, _ in span_exporters) or 'none'}",
        f"metrics to {', '.join(n for n, _ in metric_exporters) or 'none'}",
        f"service {service}",
    ]
    if any(n == "otlp" for n, _ in [*span_exporters, *metric_exporters]):
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        parts.append(f"OTLP endpoint {endpoint}")
    return tracer_provider, meter_provider, ", ".join(parts)
