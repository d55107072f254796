"""Compare two server event streams the way ``replay`` does: by structure, not by bytes.

A stream becomes a list of *signatures*, one line of text per event that matters::

    response.output_item.added item=function_call name=get_time status=in_progress
    response.done status=completed output=[function_call:get_time]

What goes in: the event type (GA vocabulary, whatever the dialect on the wire), item types and
roles, content part types, function call names and arguments (JSON, key order ignored),
response status and its reason, error codes, and whether a content part had any audio or text.
What stays out: ids, ``event_id``, timestamps, audio bytes, usage, rate limits, the number of
deltas (a reply of another length is the same conversation), and free text (transcripts,
replies, error messages) unless ``strict_text`` is set.

Input transcription runs beside the response on the service, so its events can arrive before
or after the response's; they are compared as a separate *lane* in their own order.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol.dialect import preview_to_ga_server

__all__ = [
    "DELTA_TYPES",
    "Difference",
    "Signature",
    "compare",
    "signatures",
    "to_ga_server",
]

DELTA_TYPES = frozenset(
    {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "conversation.item.input_audio_transcription.delta",
    }
)
IGNORED_TYPES = frozenset(
    {
        "rate_limits.updated",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
    }
)
DIALECT_ONLY_TYPES = frozenset({"conversation.created", "conversation.item.done"})
"""Events one dialect has and the other lacks: left out when comparing across dialects."""
TRANSCRIPTION_LANE = frozenset(
    {
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
    }
)
_DONE_OF_DELTA = {
    "response.output_audio.done": "response.output_audio.delta",
    "response.output_audio_transcript.done": "response.output_audio_transcript.delta",
    "response.output_text.done": "response.output_text.delta",
}


def to_ga_server(event: dict[str, Any], dialect: str | None) -> list[dict[str, Any]]:
    """A server event as it crossed the wire, in the GA vocabulary the comparison uses."""
    if dialect == "preview":
        return preview_to_ga_server(event)
    return [event]


@dataclass(frozen=True)
class Signature:
    """One event's comparable form, with where it came from (for the report)."""

    text: str
    lane: str = "events"
    index: int = 0
    """Position of the event in its stream (0-based, deltas and ignored events included)."""
    line: int | None = None
    """Line of the recording file, when the stream came from one."""


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _quote(value: Any) -> str:
    return json.dumps(_text(value), ensure_ascii=False)


def _args(arguments: Any) -> str:
    if not isinstance(arguments, str) or not arguments.strip():
        return ""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return _quote(arguments)


def _item(item: Any, strict_text: bool) -> list[str]:
    if not isinstance(item, dict):
        return ["item=?"]
    kind = item.get("type", "?")
    out = [f"item={kind}"]
    if kind == "message":
        out.append(f"role={item.get('role', '?')}")
        parts = item.get("content") or []
        out.append("content=[" + ",".join(str(p.get("type", "?")) for p in parts) + "]")
        if strict_text:
            for p in parts:
                for key in ("text", "transcript"):
                    if p.get(key):
                        out.append(f"{key}={_quote(p[key])}")
    elif kind == "function_call":
        out.append(f"name={item.get('name', '')}")
        args = _args(item.get("arguments"))
        if args:
            out.append(f"arguments={args}")
    elif kind == "function_call_output" and strict_text:
        out.append(f"output={_quote(item.get('output'))}")
    if item.get("status"):
        out.append(f"status={item['status']}")
    return out


def _output_summary(output: Any) -> str:
    kinds: list[str] = []
    for item in output or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            kinds.append(f"message:{item.get('role', '?')}")
        elif item.get("type") == "function_call":
            kinds.append(f"function_call:{item.get('name', '')}")
        else:
            kinds.append(str(item.get("type", "?")))
    return "[" + ",".join(kinds) + "]"


def _describe(event: dict[str, Any], had_delta: bool, strict_text: bool) -> str:
    kind = str(event.get("type", "(no type)"))
    out = [kind]
    if kind in (
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.created",
        "conversation.item.retrieved",
        "response.output_item.added",
        "response.output_item.done",
    ):
        out += _item(event.get("item"), strict_text)
    elif kind == "response.done":
        resp = event.get("response") or {}
        out.append(f"status={resp.get('status', '?')}")
        reason = (resp.get("status_details") or {}).get("reason")
        if reason:
            out.append(f"reason={reason}")
        out.append(f"output={_output_summary(resp.get('output'))}")
    elif kind in ("response.content_part.added", "response.content_part.done"):
        part = event.get("part") or {}
        out.append(f"part={part.get('type', '?')}")
        if strict_text and kind.endswith(".done"):
            for key in ("text", "transcript"):
                if part.get(key):
                    out.append(f"{key}={_quote(part[key])}")
    elif kind in _DONE_OF_DELTA:
        out.append(f"streamed={'yes' if had_delta else 'no'}")
        if strict_text:
            for key in ("text", "transcript"):
                if key in event:
                    out.append(f"{key}={_quote(event[key])}")
    elif kind == "response.function_call_arguments.done":
        out.append(f"name={event.get('name', '')}")
        out.append(f"arguments={_args(event.get('arguments')) or '{}'}")
    elif kind == "conversation.item.input_audio_transcription.completed":
        if strict_text:
            out.append(f"transcript={_quote(event.get('transcript'))}")
    elif kind == "conversation.item.input_audio_transcription.failed":
        out.append(f"code={(event.get('error') or {}).get('code')}")
    elif kind == "conversation.item.truncated":
        out.append(f"content_index={event.get('content_index')}")
        out.append(f"audio_end_ms={event.get('audio_end_ms')}")
    elif kind == "session.updated":
        session = event.get("session") or {}
        audio = session.get("audio") or {}
        td = (audio.get("input") or {}).get("turn_detection", "unset")
        td_type = td.get("type") if isinstance(td, dict) else td
        out.append(f"turn_detection={'none' if td_type is None else td_type}")
        voice = (audio.get("output") or {}).get("voice")
        if voice:
            out.append(f"voice={voice}")
        if session.get("output_modalities"):
            out.append("modalities=" + ",".join(session["output_modalities"]))
    elif kind == "error":
        err = event.get("error") or {}
        out.append(f"code={err.get('code')}")
        if err.get("param"):
            out.append(f"param={err['param']}")
        if strict_text:
            out.append(f"message={_quote(err.get('message'))}")
    return " ".join(out)


def signatures(
    events: Iterable[dict[str, Any]],
    *,
    strict_text: bool = False,
    lines: Sequence[int | None] | None = None,
    across_dialects: bool = False,
) -> list[Signature]:
    """The signatures of a server event stream (GA vocabulary), deltas folded into their done.

    ``across_dialects`` leaves out the events only one dialect sends (preview's
    ``conversation.created``, GA's ``conversation.item.done``), to compare a preview recording
    with a GA replay or the other way round.
    """
    out: list[Signature] = []
    streamed: set[tuple[str, Any, Any]] = set()
    for index, event in enumerate(events):
        kind = event.get("type")
        if not isinstance(kind, str):
            kind = "(no type)"
        if kind in DELTA_TYPES:
            key = (kind, event.get("item_id"), event.get("content_index", 0))
            if event.get("delta"):
                streamed.add(key)
            continue
        if kind in IGNORED_TYPES or (across_dialects and kind in DIALECT_ONLY_TYPES):
            continue
        had_delta = False
        delta = _DONE_OF_DELTA.get(kind)
        if delta is not None:
            had_delta = (delta, event.get("item_id"), event.get("content_index", 0)) in streamed
        lane = "input transcription" if kind in TRANSCRIPTION_LANE else "events"
        line = lines[index] if lines is not None and index < len(lines) else None
        out.append(Signature(_describe(event, had_delta, strict_text), lane, index, line))
    return out


@dataclass
class Difference:
    """One hunk of differences in one lane."""

    lane: str
    recorded: list[Signature]
    replayed: list[Signature]
    context_before: list[Signature] = field(default_factory=list)
    position: int = 0
    """Index in the lane's recorded signatures where the hunk starts."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane,
            "position": self.position,
            "recorded_line": next((s.line for s in self.recorded if s.line), None),
            "recorded": [s.text for s in self.recorded],
            "replayed": [s.text for s in self.replayed],
        }


def compare(
    recorded: Sequence[Signature], replayed: Sequence[Signature], context: int = 2
) -> list[Difference]:
    """The hunks where ``replayed`` differs from ``recorded``, lane by lane (empty: the same)."""
    out: list[Difference] = []
    lanes = list(dict.fromkeys([s.lane for s in recorded] + [s.lane for s in replayed]))
    for lane in lanes:
        a = [s for s in recorded if s.lane == lane]
        b = [s for s in replayed if s.lane == lane]
        matcher = difflib.SequenceMatcher(
            a=[s.text for s in a], b=[s.text for s in b], autojunk=False
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            out.append(
                Difference(
                    lane=lane,
                    recorded=list(a[i1:i2]),
                    replayed=list(b[j1:j2]),
                    context_before=list(a[max(0, i1 - context) : i1]),
                    position=i1,
                )
            )
    return out
