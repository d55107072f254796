"""Traces and metrics of the middle tier (``server/telemetry.py``, the ``[otel]`` extra).

A real middle tier in front of the text engine, with the SDK's in-memory span exporter and
metric reader installed by :func:`telemetry.enable`: a typed turn, a server tool (the
``get_time`` call of :data:`helpers.ENGINE_SCRIPT`, here a server tool), an engine that refuses
the handshake; then the turn logic fed directly (speech, barge-in, a resume), the ``OTEL_*``
settings, and ``serve`` without OpenTelemetry importable. Waits are on the spans' ends (a span
processor that wakes the test), never on a clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from aoai_realtime.config import ConfigError
from aoai_realtime.server import Policy, RelayStats, ServerThread, telemetry
from aoai_realtime.server.tools import demo_tools
from aoai_realtime.tools import Tool
from helpers import WAIT, make_server, open_page

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    HAVE_OTEL = True
except ImportError:  # the [otel] extra is not installed (make test installs it: [test])
    HAVE_OTEL = False

needs_otel = pytest.mark.skipif(not HAVE_OTEL, reason="the [otel] extra is not installed")

TOOL_FAILS = threading.Event()


def get_time(timezone: str) -> str:
    """The time now in a time zone ("local" for the server's)."""
    if TOOL_FAILS.is_set():
        raise RuntimeError("the clock is broken")
    return "twelve o'clock"


TOOLS = [*demo_tools(), Tool.from_function(get_time)]


# ------------------------------------------------------------------------------------ fixtures


if HAVE_OTEL:

    class SessionsEnded(SpanProcessor):
        """Wakes a waiting test when a ``realtime.session`` span ends (the relay is done)."""

        def __init__(self) -> None:
            self._cond = threading.Condition()
            self.count = 0

        def on_end(self, span: ReadableSpan) -> None:
            if span.name == "realtime.session":
                with self._cond:
                    self.count += 1
                    self._cond.notify_all()

        def _wait(self, count: int, timeout: float) -> None:
            with self._cond:
                if not self._cond.wait_for(lambda: self.count >= count, timeout):
                    raise AssertionError(f"{self.count} sessions ended, not {count}")

        async def wait(self, count: int, timeout: float = WAIT) -> None:
            await asyncio.to_thread(self._wait, count, timeout)


@dataclass
class Otel:
    exporter: Any
    reader: Any
    ended: Any

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def one(self, name: str) -> Any:
        found = self.spans(name)
        assert len(found) == 1, [s.name for s in self.exporter.get_finished_spans()]
        return found[0]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    """Telemetry on, into the SDK's in-memory exporter and reader (fresh ones per test)."""
    if not HAVE_OTEL:
        pytest.skip("the [otel] extra is not installed")
    exporter = InMemorySpanExporter()
    ended = SessionsEnded()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer_provider.add_span_processor(ended)
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.enable(tracer_provider, meter_provider)
    try:
        yield Otel(exporter, reader, ended)
    finally:
        telemetry.disable()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture(scope="module")
def server(text_engine: Any) -> Iterator[ServerThread]:
    """The middle tier in front of the text engine, ``get_time`` among its server tools."""
    srv = make_server(text_engine, policy=Policy.build(tools=TOOLS))
    yield srv
    srv.close()


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def event_names(span: Any) -> list[str]:
    return [e.name for e in span.events]


# ------------------------------------------------------------------------------------ a real serve


@needs_otel
async def test_typed_turn_gives_a_session_span_a_turn_span_and_metrics(
    otel: Otel, server: ServerThread
) -> None:
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await page.wait_for("session.created")
        done = await page.say("hello")
        assert done["response"]["status"] == "completed"
        await page.ws.close()
    await otel.ended.wait(1)

    session = otel.one("realtime.session")
    a = attrs(session)
    assert len(a["realtime.connection.id"]) == 12
    assert a["realtime.upstream.kind"] == "local"
    assert a["realtime.upstream.dialect"] == "ga" and a["realtime.client.dialect"] == "ga"
    assert a["realtime.closed_by"] == "client" and a["realtime.resumes"] == 0
    assert "realtime.error.code" not in a and session.status.status_code is not StatusCode.ERROR
    assert a["realtime.turns"] == 1
    assert all(a[f"realtime.messages.{d}"] > 0 for d in telemetry.DIRECTIONS)

    turn = otel.one("realtime.turn")
    assert turn.context.trace_id == session.context.trace_id
    assert turn.parent is not None and turn.parent.span_id == session.context.span_id
    t = attrs(turn)
    assert t["realtime.turn.trigger"] == "text"
    assert t["realtime.turn.outcome"] == "completed" and t["realtime.turn.responses"] == 1
    assert t["realtime.turn.latency_ms"] >= 0
    names = event_names(turn)
    assert names[:3] == ["typed_message", "response.create", "response_created"], names
    assert names.index("first_audio_delta") < names.index("response_done"), names
    assert not otel.spans("realtime.tool")

    (active,) = otel.points("realtime.sessions.active")
    assert active.value == 0 and dict(active.attributes) == {"realtime.upstream.kind": "local"}
    (latency,) = otel.points("realtime.turn.latency")
    assert latency.count == 1
    assert dict(latency.attributes)["realtime.turn.trigger"] == "text"
    assert dict(latency.attributes)["realtime.output"] == "audio"
    messages = {
        dict(p.attributes)["realtime.direction"]: p.value
        for p in otel.points("realtime.relay.messages")
    }
    assert set(messages) == set(telemetry.DIRECTIONS) and all(n > 0 for n in messages.values())
    assert messages["to_client"] == a["realtime.messages.to_client"]
    assert not otel.points("realtime.upstream.failures")


@needs_otel
async def test_server_tool_run_is_a_child_span_of_its_turn(
    otel: Otel, server: ServerThread
) -> None:
    async with aiohttp.ClientSession() as http:
        page = await open_page(server, http)
        await page.wait_for("session.created")
        first = await page.say("what time is it")
        assert first["response"]["output"][0]["type"] == "function_call"
        second = await page.wait_for("response.done")  # the relay's follow-up
        assert second["response"]["status"] == "completed"
        assert "twelve o'clock" in page.reply_of(second["response"]["id"])
        # and a tool that fails: its span says so, the turn goes on
        TOOL_FAILS.set()
        try:
            await page.say("what time is it")
            await page.wait_for("response.done")
        finally:
            TOOL_FAILS.clear()
        await page.ws.close()
    await otel.ended.wait(1)

    session = otel.one("realtime.session")
    assert attrs(session)["realtime.tool_calls"] == 2 and attrs(session)["realtime.turns"] == 2
    turns = sorted(otel.spans("realtime.turn"), key=lambda s: attrs(s)["realtime.turn.index"])
    tools = sorted(otel.spans("realtime.tool"), key=lambda s: s.start_time)
    assert len(turns) == 2 and len(tools) == 2
    for turn, tool in zip(turns, tools, strict=True):
        t = attrs(turn)
        assert t["realtime.turn.outcome"] == "completed" and t["realtime.turn.responses"] == 2
        assert "function_call" in event_names(turn)
        assert tool.parent is not None and tool.parent.span_id == turn.context.span_id
        assert attrs(tool)["realtime.tool.name"] == "get_time"
        assert attrs(tool)["realtime.tool.call_id"].startswith("call")
    assert attrs(tools[0])["realtime.tool.outcome"] == "ok"
    assert tools[0].status.status_code is not StatusCode.ERROR
    assert attrs(tools[1])["realtime.tool.outcome"] == "error"
    assert tools[1].status.status_code is StatusCode.ERROR
    assert "the clock is broken" in (tools[1].status.description or "")
    # one latency sample per turn: the follow-up's first audio, the tool's run included
    (latency,) = otel.points("realtime.turn.latency")
    assert latency.count == 2


@needs_otel
async def test_an_engine_fault_is_a_failure_counted_by_its_code(
    otel: Otel, server: ServerThread
) -> None:
    server.upstreams.local_query = {"fault": "refuse:503"}
    try:
        async with aiohttp.ClientSession() as http:
            page = await open_page(server, http)
            assert await page.drain_until_closed(timeout=15) == 1011
            assert [e["code"] for e in page.errors("relay_error")] == ["upstream_server_error"]
    finally:
        server.upstreams.local_query = {}
    await otel.ended.wait(1)

    session = otel.one("realtime.session")
    a = attrs(session)
    assert a["realtime.error.code"] == "upstream_server_error"
    assert a["error.type"] == "upstream_server_error"
    assert a["realtime.closed_by"] == "upstream" and a["realtime.turns"] == 0
    assert session.status.status_code is StatusCode.ERROR
    assert "relay_error" in event_names(session)
    (failure,) = otel.points("realtime.upstream.failures")
    assert failure.value == 1
    assert dict(failure.attributes) == {
        "error.code": "upstream_server_error",
        "realtime.upstream.kind": "local",
    }
    (active,) = otel.points("realtime.sessions.active")
    assert active.value == 0
    assert not otel.points("realtime.turn.latency")


# ------------------------------------------------------------------------------------ the turn logic


@needs_otel
def test_speech_turns_barge_in_and_a_resume(otel: Otel) -> None:
    """The hooks fed as the relay feeds them, for what the text engine cannot do: speech."""
    relay = SimpleNamespace(
        conn_id="c0ffee",
        dialect="preview",
        client_dialect="ga",
        upstream_kind="azure",
        stats=RelayStats("c0ffee"),
        policy=Policy.build(tools=TOOLS),
    )
    s = telemetry.session()
    assert isinstance(s, telemetry.SessionTelemetry) and not s.waiting
    with s.running(relay):
        s.server_event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 100})
        s.server_event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900})
        assert s.waiting
        s.server_event(
            {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1"}
        )
        s.server_event({"type": "response.created", "response": {"id": "r1"}})
        s.output_delta("response.audio_transcript.delta")  # not audio: still waiting
        assert s.waiting
        s.output_delta("response.audio.delta")  # the preview name of the first audio
        assert not s.waiting
        s.output_delta("response.audio.delta")
        # the user speaks over the reply; the new turn begins when they stop
        s.server_event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 2000})
        s.server_event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2600})
        s.server_event({"type": "response.done", "response": {"id": "r1", "status": "cancelled"}})
        s.server_event({"type": "response.created", "response": {"id": "r2"}})
        s.session_ended("session_expired", None)  # the reply in progress is cut
        s.resume_failed("the new session did not answer within 10 s")
        s.resumed(3)
        relay.stats.closed_by = "client"
    first, second = sorted(otel.spans("realtime.turn"), key=lambda x: x.start_time)
    assert attrs(first)["realtime.turn.trigger"] == "speech"
    assert attrs(first)["realtime.turn.outcome"] == "superseded"
    assert event_names(first) == [
        "speech_stopped",
        "transcript_ready",
        "response_created",
        "first_audio_delta",
        "speech_started",
    ]
    assert attrs(second)["realtime.turn.outcome"] == "session_ended"
    assert "upstream_session_ended" in event_names(second)
    session = otel.one("realtime.session")
    assert attrs(session)["realtime.upstream.kind"] == "azure"
    assert attrs(session)["realtime.upstream.dialect"] == "preview"
    assert event_names(session) == [
        "upstream_session_ended",
        "resume_attempt_failed",
        "session_resumed",
    ]
    (latency,) = otel.points("realtime.turn.latency")
    assert latency.count == 1
    assert dict(latency.attributes) == {
        "realtime.turn.trigger": "speech",
        "realtime.output": "audio",
        "realtime.upstream.kind": "azure",
    }


# ------------------------------------------------------------------------------------ settings


@needs_otel
def test_otel_settings_choose_the_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    assert not telemetry.wanted()
    assert telemetry.setup_from_env() is None and not telemetry.enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert telemetry.setup_from_env(force=True) is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    assert telemetry.wanted()

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "voice-test")
    tracer_provider, meter_provider, said = telemetry._providers()
    try:
        assert meter_provider is None
        assert tracer_provider.resource.attributes["service.name"] == "voice-test"
        assert said == "traces to console, metrics to none, service voice-test"
    finally:
        tracer_provider.shutdown()
    # the default: OTLP over HTTP for both, service aoai-realtime
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracer_provider, meter_provider, said = telemetry._providers()
    try:
        assert tracer_provider.resource.attributes["service.name"] == "aoai-realtime"
        assert said.startswith("traces to otlp, metrics to otlp, service aoai-realtime")
        assert said.endswith("OTLP endpoint http://127.0.0.1:9")
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown(timeout_millis=1000)
    # settings that cannot work are said before serving
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger-thrift")
    with pytest.raises(ConfigError, match="no such traces exporter.*console"):
        telemetry.setup_from_env()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match="http/protobuf"):
        telemetry.setup_from_env()
    assert not telemetry.enabled()


# ------------------------------------------------------------------------------------ without it


def _env_without_otel() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AZURE_"))}


def test_nothing_is_imported_without_otel_settings() -> None:
    code = (
        "import sys\n"
        "from aoai_realtime.server import Relay, cli, create_app, telemetry\n"
        "assert telemetry.setup_from_env() is None\n"
        "assert Relay(None, None).telemetry is telemetry.NOOP\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env_without_otel(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


BLOCKED = """
import sys

class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
from aoai_realtime.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""``aoai-realtime`` as if OpenTelemetry were not installed: any import of it fails."""


def test_serve_runs_without_opentelemetry_importable(text_engine: Any, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **_env_without_otel(),
        "AZURE_OPENAI_ENDPOINT": text_engine.http_url,  # the text engine, reached as Azure
        "AZURE_OPENAI_DEPLOYMENT": "gpt-realtime",
        "AZURE_OPENAI_API_KEY": "k" * 32,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    argv = [sys.executable, "-c", BLOCKED, "serve", "--no-local", "--log-level", "warning"]
    # --otel wants the extra: said at once, exit 2
    refused = subprocess.run(
        [*argv, "--otel"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stderr
    assert "pip install 'aoai-realtime[otel]'" in refused.stderr
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + WAIT
        line = ""
        while time.monotonic() < deadline and not line.startswith("aoai-realtime serving"):
            line = proc.stdout.readline()
            if not line:
                break
        assert line.startswith("aoai-realtime serving"), (line, proc.stderr.read())

        async def turn() -> str:
            async with aiohttp.ClientSession() as http:
                page = await open_page(f"ws://127.0.0.1:{port}/realtime", http)
                await page.wait_for("session.created")
                done = await page.say("hello")
                await page.ws.close()
                return str(done["response"]["status"])

        assert asyncio.run(turn()) == "completed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        err = proc.stderr.read()
        assert "OpenTelemetry is not installed" in err, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
