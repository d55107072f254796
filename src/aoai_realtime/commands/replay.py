"""``aoai-realtime replay FILE.jsonl``: play a recording's client side again, report what changed.

The client events of the recording are sent in order. Before each one, replay waits until the
server has sent as many of each *milestone* event (``response.done``, ``session.updated``,
``input_audio_buffer.committed``, ...) as it had in the recording at that point, so a function
call output goes after its response is done, as it did. Ids the server makes up (items, calls,
responses) are mapped from the recorded ones to the new ones before a client event that names
them is sent. The server's events are then compared with the recorded ones by structure (see
:mod:`.compare`): exit status 0 when they match, 1 with a readable report where they differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..protocol.dialect import ga_to_preview_client, preview_to_ga_client
from ..protocol.errors import ProtocolError
from ..transport import HandshakeFailed, open_websocket
from . import _common as common
from .compare import DELTA_TYPES, Difference, Signature, compare, signatures, to_ga_server
from .recording import Recording, RecordingError, read_recording

EPILOG = """\
examples:
  aoai-realtime talk hello.wav --record hello.jsonl      record a conversation turn
  aoai-realtime replay hello.jsonl                       replay it (same endpoint, or the local
                                                         engine if it was recorded with one)
  aoai-realtime replay hello.jsonl --url 'ws://127.0.0.1:8788/openai/v1/realtime?model=local'
  aoai-realtime replay hello.jsonl --strict-text --json  compare transcripts too; JSON report

what is compared: the server's event types in order, item types and roles, content part
types, function call names and arguments, response status; not ids, timestamps, audio bytes,
the number of deltas, nor (without --strict-text) transcripts, text and error messages.
Input transcription events are compared in their own order (they run beside the response).
Exit status: 0 no difference, 1 differences, 2 the recording or the endpoint could not be used.
"""

MILESTONES = frozenset(
    {
        "session.created",
        "session.updated",
        "conversation.item.added",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "response.created",
        "response.function_call_arguments.done",
        "response.done",
        "error",
    }
)
"""Server events replay waits for (as many as the recording had) before the next client event."""

_ID_FIELDS = ("item_id", "previous_item_id", "call_id", "response_id")


@dataclass
class Step:
    """One client event to send, and the milestone counts to wait for before it."""

    event: dict[str, Any] | None
    raw: str | None
    line: int
    t: float
    wait_for: Counter[str]

    @property
    def type(self) -> str:
        if self.event is None:
            return "(not json)"
        return str(self.event.get("type", "(no type)"))


@dataclass
class Plan:
    """A recording turned into what replay needs: steps, expected events, ids to map."""

    steps: list[Step]
    expected: list[dict[str, Any]]
    expected_lines: list[int | None]
    final: Counter[str]
    id_fields: dict[tuple[str, int], list[tuple[str, str]]] = field(default_factory=dict)
    """(type, nth of that type) -> [(field path, recorded id)], for the id map."""


def _ids_of(event: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key in _ID_FIELDS:
        value = event.get(key)
        if isinstance(value, str) and value:
            out.append((key, value))
    for holder in ("item", "response"):
        obj = event.get(holder)
        if isinstance(obj, dict):
            for key in ("id", "call_id"):
                value = obj.get(key)
                if isinstance(value, str) and value:
                    out.append((f"{holder}.{key}", value))
    return out


def _get_path(event: dict[str, Any], path: str) -> Any:
    obj: Any = event
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def make_plan(rec: Recording) -> Plan:
    """Split a recording into steps (client events) and the expected server events."""
    steps: list[Step] = []
    expected: list[dict[str, Any]] = []
    lines: list[int | None] = []
    counts: Counter[str] = Counter()
    nth: Counter[str] = Counter()
    id_fields: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for entry in rec.entries:
        if entry.dir == "send":
            steps.append(Step(entry.event, entry.raw, entry.line, entry.t, Counter(counts)))
            continue
        if entry.event is None or entry.source == "relay":
            continue
        for event in to_ga_server(entry.event, rec.dialect):
            kind = str(event.get("type", ""))
            expected.append(event)
            lines.append(entry.line)
            if kind in MILESTONES:
                counts[kind] += 1
            ids = _ids_of(event)
            if ids:
                id_fields[(kind, nth[kind])] = ids
            nth[kind] += 1
    return Plan(steps, expected, lines, Counter(counts), id_fields)


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class ReplayResult:
    received: list[dict[str, Any]]
    sent: int
    warnings: list[str]
    closed_early: str | None = None


class _Session:
    """The replay connection: a reader task counting milestones and mapping ids."""

    def __init__(self, plan: Plan, dialect: str) -> None:
        self.plan = plan
        self.dialect = dialect
        self.received: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.nth: Counter[str] = Counter()
        self.id_map: dict[str, str] = {}
        self.given_up: Counter[str] = Counter()
        """Milestones waited for in vain: not waited for again (the replay has diverged)."""
        self.changed = asyncio.Event()
        self.closed: str | None = None
        self.last_event_at = time.monotonic()

    def on_message(self, text: str) -> None:
        try:
            obj = json.loads(text)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        for event in to_ga_server(obj, self.dialect):
            kind = str(event.get("type", ""))
            self.received.append(event)
            if kind in MILESTONES:
                self.counts[kind] += 1
            recorded = self.plan.id_fields.get((kind, self.nth[kind]))
            if recorded:
                for path, old in recorded:
                    new = _get_path(event, path)
                    if isinstance(new, str) and new and new != old:
                        self.id_map.setdefault(old, new)
            self.nth[kind] += 1
        self.last_event_at = time.monotonic()
        self.changed.set()

    def missing(self, wanted: Counter[str]) -> dict[str, tuple[int, int]]:
        return {
            k: (n, self.counts[k])
            for k, n in wanted.items()
            if self.counts[k] + self.given_up[k] < n
        }

    async def wait_for(self, wanted: Counter[str], timeout: float) -> dict[str, tuple[int, int]]:
        """Wait until the milestone counts reach ``wanted``; returns what is still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.missing(wanted)
            if not missing or self.closed is not None:
                return missing
            left = deadline - time.monotonic()
            if left <= 0:
                for kind, (want, got) in missing.items():
                    self.given_up[kind] += want - got - self.given_up[kind]
                return missing
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def settle(self, quiet: float, limit: float) -> None:
        """Wait until no event has arrived for ``quiet`` seconds (at most ``limit``)."""
        deadline = time.monotonic() + limit
        while self.closed is None:
            now = time.monotonic()
            idle = now - self.last_event_at
            if idle >= quiet or now >= deadline:
                return
            await asyncio.sleep(min(quiet - idle, deadline - now))

    def remap(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._remap_field(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.remap(v) for v in value]
        return value

    def _remap_field(self, key: str, value: Any) -> Any:
        if isinstance(value, str) and key in (*_ID_FIELDS, "id"):
            return self.id_map.get(value, value)
        return self.remap(value)


def _translate_client(event: dict[str, Any], recorded: str | None, target: str) -> dict[str, Any]:
    if (recorded or "ga") == target:
        return event
    try:
        if target == "preview":
            return ga_to_preview_client(event)
        return preview_to_ga_client(event)
    except ProtocolError:
        return event


def _describe_missing(missing: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{k} ({got} of {want})" for k, (want, got) in sorted(missing.items()))


async def replay(
    plan: Plan,
    target: common.Target,
    recorded_dialect: str | None,
    *,
    timeout: float,
    realtime: bool,
    progress: common.Progress,
) -> ReplayResult:
    """Send the plan's client events to ``target``; return what the server sent."""
    import aiohttp

    session = _Session(plan, target.dialect)
    warnings: list[str] = []
    sent = 0
    headers = await target.headers()
    async with aiohttp.ClientSession() as http:
        try:
            ws = await open_websocket(
                http,
                target.url,
                headers=headers,
                open_timeout=timeout,
                max_message_bytes=64 * 1024 * 1024,
            )
        except HandshakeFailed as exc:
            failure = exc.failure
            if failure.kind == "status":
                raise common.CommandError(
                    f"{target.label} refused the connection: HTTP {failure.status} "
                    f"{failure.detail} (run `aoai-realtime doctor`)",
                    2,
                ) from None
            raise common.CommandError(
                f"cannot connect to {target.label}: {failure.detail or failure.kind}", 2
            ) from None

        async def reader() -> None:
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        session.on_message(msg.data)
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        break
            finally:
                session.closed = f"closed by the server (code {ws.close_code})"
                session.changed.set()

        reading = asyncio.create_task(reader())
        began = time.monotonic()
        try:
            total = len(plan.steps)
            for number, step in enumerate(plan.steps, 1):
                missing = await session.wait_for(step.wait_for, timeout)
                if missing:
                    warnings.append(
                        f"before sending {step.type} (recording line {step.line}): waited "
                        f"{timeout:g} s for {_describe_missing(missing)}"
                    )
                if session.closed is not None:
                    warnings.append(
                        f"the server closed the connection before {step.type} (recording line "
                        f"{step.line}): {session.closed}"
                    )
                    break
                if realtime:
                    delay = step.t - (time.monotonic() - began)
                    if delay > 0:
                        await asyncio.sleep(delay)
                if step.event is not None:
                    event = session.remap(
                        _translate_client(step.event, recorded_dialect, target.dialect)
                    )
                    await ws.send_str(json.dumps(event))
                elif step.raw is not None:
                    await ws.send_str(step.raw)
                sent += 1
                if number % 50 == 0 or number == total:
                    progress.note(f"sent {number} of {total} client events")
            missing = await session.wait_for(plan.final, timeout)
            if missing:
                warnings.append(
                    f"after the last client event: waited {timeout:g} s for "
                    f"{_describe_missing(missing)}"
                )
            await session.settle(quiet=0.5, limit=timeout)
        finally:
            closed_early = session.closed
            await asyncio.wait_for(ws.close(), 3.0) if not ws.closed else None
            reading.cancel()
            try:
                await reading
            except (asyncio.CancelledError, Exception):
                pass
    return ReplayResult(session.received, sent, warnings, closed_early)


# --------------------------------------------------------------------------------------------
# Reporting


def report_text(
    diffs: list[Difference],
    result: ReplayResult,
    rec: Recording,
    expected: list[Signature],
    replayed: list[Signature],
    label: str,
) -> str:
    lines = [
        f"replayed {rec.path}: sent {result.sent} client events to {label}; "
        f"{len(expected)} server events expected, {len(replayed)} received "
        "(deltas folded, rate limits ignored)"
    ]
    for w in result.warnings:
        lines.append(f"  note: {w}")
    if not diffs:
        lines.append("no differences")
        return "\n".join(lines)
    lines.append(f"{len(diffs)} difference{'s' if len(diffs) > 1 else ''}:")
    for d in diffs:
        where = f"{d.lane}, recorded event #{d.position + 1}"
        line = next((s.line for s in d.recorded if s.line), None)
        if line is None:
            line = next((s.line for s in reversed(d.context_before) if s.line), None)
        if line is not None:
            where += f" (recording line {line})"
        lines.append("")
        lines.append(f"@@ {where}")
        for s in d.context_before:
            lines.append(f"    {s.text}")
        for s in d.recorded:
            lines.append(f"  - {s.text}")
        for s in d.replayed:
            lines.append(f"  + {s.text}")
    lines.append("")
    lines.append("(- recorded, + replayed)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aoai-realtime replay",
        description="Play the client side of a recording (made with --record) against an "
        "endpoint and report where the server's events differ: a regression test of a "
        "conversation.",
        epilog=EPILOG,
        formatter_class=common.HelpFormatter,
    )
    parser.add_argument("recording", metavar="FILE.jsonl", help="a recording made with --record")
    parser.add_argument(
        "--url",
        metavar="WS_URL",
        help="replay against this realtime URL (default: the recording's URL, or a local engine "
        "started here when it was recorded against one)",
    )
    parser.add_argument(
        "--strict-text",
        action="store_true",
        help="also compare transcripts, text replies, tool outputs and error messages",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for each expected server event (default: 30)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="send each client event no earlier than its recorded time (for microphone "
        "sessions where timing matters, e.g. barge-in)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _choose_url(args: argparse.Namespace, rec: Recording) -> str | None:
    """``--url``, else the recording's URL unless it was a local engine this run must start."""
    if args.url:
        return str(args.url)
    if rec.header.get("local_engine"):
        return None
    return rec.url


async def _main(args: argparse.Namespace, rec: Recording, progress: common.Progress) -> int:
    settings = common.load_settings()
    plan = make_plan(rec)
    if not plan.steps:
        raise common.CommandError(f"{rec.path}: the recording has no client events to send", 2)
    url = _choose_url(args, rec)
    if url is None and args.url is None and settings.endpoint:
        # Recorded against a local engine: replay against one too, not the configured Azure.
        settings = Settings()
    async with common.open_target(url, settings, progress) as target:
        if not args.json:
            progress.note(f"replaying {len(plan.steps)} client events against {target.label}")
        result = await replay(
            plan,
            target,
            rec.dialect,
            timeout=args.timeout,
            realtime=args.realtime,
            progress=progress,
        )
        label = target.label
        across = (rec.dialect or "ga") != target.dialect
    expected = signatures(
        plan.expected,
        strict_text=args.strict_text,
        lines=plan.expected_lines,
        across_dialects=across,
    )
    replayed = signatures(result.received, strict_text=args.strict_text, across_dialects=across)
    diffs = compare(expected, replayed)
    if args.json:
        print(
            json.dumps(
                {
                    "recording": rec.path,
                    "target": label,
                    "sent": result.sent,
                    "differences": len(diffs),
                    "diff": [d.to_dict() for d in diffs],
                    "warnings": result.warnings,
                    "expected": [s.text for s in expected],
                    "received": [s.text for s in replayed],
                    "received_types": [
                        e.get("type") for e in result.received if e.get("type") not in DELTA_TYPES
                    ],
                },
                indent=2,
            )
        )
    else:
        print(report_text(diffs, result, rec, expected, replayed, label))
    return 1 if diffs else 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        rec = read_recording(Path(args.recording))
    except RecordingError as exc:
        common.err("replay", str(exc))
        return 2
    progress = common.Progress()
    try:
        status: int = common.run(_main(args, rec, progress))
    except common.CommandError as exc:
        progress.stop()
        common.err("replay", exc.message)
        return exc.status
    sys.stdout.flush()
    return status
