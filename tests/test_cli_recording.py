"""The recording format and the replay comparison, as plain data (no sockets, no models)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from aoai_realtime.commands.compare import compare, signatures
from aoai_realtime.commands.recording import (
    Recorder,
    RecordingError,
    connection_path,
    read_recording,
    redact_url,
)
from aoai_realtime.commands.replay import make_plan


def test_recorder_writes_header_and_events(tmp_path: Path) -> None:
    ticks = iter([10.0, 10.25, 10.5, 11.0])
    path = tmp_path / "s.jsonl"
    with Recorder(
        open(path, "w", encoding="utf-8"),
        url="wss://res.openai.azure.com/openai/realtime?api-version=v&deployment=d&api-key=SECRET",
        dialect="preview",
        clock=lambda: next(ticks),
        close_file=True,
    ) as rec:
        rec.record("send", {"type": "response.create"})
        rec.record("recv", '{"type": "session.created", "session": {}}')
        rec.record("recv", b"not json")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["recording"] == 1 and lines[0]["dialect"] == "preview"
    assert "SECRET" not in path.read_text() and "deployment=d" in lines[0]["url"]
    assert lines[1] == {"t": 0.25, "dir": "send", "event": {"type": "response.create"}}
    assert lines[2]["event"]["type"] == "session.created" and lines[2]["t"] == 0.5
    assert lines[3] == {"t": 1.0, "dir": "recv", "raw": "not json"}
    rec.record("send", {"type": "ignored after close"})  # a closed recorder drops events
    assert len(path.read_text().splitlines()) == 4


def test_recorder_accepts_relay_observer_names_and_models(tmp_path: Path) -> None:
    from aoai_realtime.protocol.events import ResponseCreate

    path = tmp_path / "relay.jsonl"
    rec = Recorder.open(path, url="ws://127.0.0.1:1/realtime", dialect="ga")
    rec.record("client", ResponseCreate())
    rec.record("server", {"type": "response.created", "response": {"id": "r1"}})
    rec.record("relay", {"type": "error", "error": {"code": "x", "message": "m"}})
    rec.close()
    recording = read_recording(path)
    assert [(e.dir, e.type, e.source) for e in recording] == [
        ("send", "response.create", None),
        ("recv", "response.created", None),
        ("recv", "error", "relay"),
    ]
    plan = make_plan(recording)  # the relay's own notice is not expected from a server
    assert [e["type"] for e in plan.expected] == ["response.created"]
    with pytest.raises(ValueError, match="direction"):
        rec.record("sideways", {})


def test_recorder_is_thread_safe() -> None:
    buf = io.StringIO()
    rec = Recorder(buf, url=None, dialect="ga")
    threads = [
        threading.Thread(
            target=lambda n=n: [rec.record("send", {"type": "x", "n": n}) for _ in range(200)]
        )
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 801 and all(json.loads(line) for line in lines)
    times = [json.loads(line)["t"] for line in lines[1:]]
    assert times == sorted(times)


def test_read_recording_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"recording": 1, "url": null}\n{"t": 0, "dir": "up", "event": {}}\n')
    with pytest.raises(RecordingError, match=r"bad.jsonl:2: 'dir'"):
        read_recording(path)
    path.write_text('{"type": "session.created"}\n')
    with pytest.raises(RecordingError, match="not a recording"):
        read_recording(path)
    with pytest.raises(RecordingError, match="cannot open"):
        read_recording(tmp_path / "missing.jsonl")


def test_helpers() -> None:
    assert redact_url("wss://u:p@h/x?api-key=k&model=m") == "wss://h/x?model=m"
    assert connection_path("out/s.jsonl", "ab12") == Path("out/s-ab12.jsonl")


def _turn(reply: str, *, deltas: int, call: str | None = None) -> list[dict]:
    events: list[dict] = [
        {"type": "response.created", "event_id": "e1", "response": {"id": "r", "status": "x"}},
        {"type": "rate_limits.updated", "rate_limits": []},
    ]
    if call:
        events += [
            {
                "type": "response.output_item.added",
                "response_id": "r",
                "item": {"id": "i", "type": "function_call", "name": call, "arguments": ""},
            },
            {
                "type": "response.function_call_arguments.done",
                "response_id": "r",
                "item_id": "i",
                "call_id": "c",
                "name": call,
                "arguments": '{"b": 1, "a": 2}',
            },
        ]
    else:
        events.append(
            {
                "type": "response.output_item.added",
                "item": {"id": "i", "type": "message", "role": "assistant", "content": []},
            }
        )
        events += [
            {"type": "response.output_audio.delta", "item_id": "i", "delta": "AAAA"}
        ] * deltas
        events.append(
            {"type": "response.output_audio_transcript.done", "item_id": "i", "transcript": reply}
        )
    events.append({"type": "response.done", "response": {"id": "r", "status": "completed"}})
    return events


def test_compare_ignores_ids_delta_counts_and_text_by_default() -> None:
    a = signatures(_turn("Hello there.", deltas=3))
    b = signatures(_turn("Hi!", deltas=9))
    assert compare(a, b) == []
    strict = compare(
        signatures(_turn("Hello there.", deltas=3), strict_text=True),
        signatures(_turn("Hi!", deltas=9), strict_text=True),
    )
    assert len(strict) == 1 and '"Hi!"' in strict[0].replayed[0].text


def test_compare_reports_a_function_call_instead_of_a_reply() -> None:
    diffs = compare(signatures(_turn("x", deltas=1)), signatures(_turn("", deltas=0, call="f")))
    assert diffs
    text = "\n".join(s.text for d in diffs for s in d.replayed)
    assert "function_call" in text and 'arguments={"a": 2, "b": 1}' in text


def test_compare_treats_transcription_as_its_own_lane() -> None:
    done = {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "u",
        "transcript": "hi",
    }
    turn = _turn("x", deltas=1)
    early = signatures([done, *turn])
    late = signatures([*turn, done])
    assert compare(early, late) == []
    assert compare(early, signatures(turn))[0].lane == "input transcription"


def test_compare_reads_preview_events_in_ga_terms(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rec = Recorder.open(path, url="ws://x/openai/realtime?api-version=v", dialect="preview")
    rec.record("send", {"type": "response.create"})
    rec.record("recv", {"type": "response.audio.delta", "item_id": "i", "delta": "AAAA"})
    rec.record("recv", {"type": "response.audio.done", "item_id": "i"})
    rec.close()
    plan = make_plan(read_recording(path))
    assert [s.text for s in signatures(plan.expected)] == [
        "response.output_audio.done streamed=yes"
    ]
    assert plan.steps[0].wait_for == {}
