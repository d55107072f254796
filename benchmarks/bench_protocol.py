"""Parse and fold a long stream of realtime server events: this SDK against the ``openai`` package.

The stream is made here, in the GA vocabulary, the way a voice conversation produces it: per
turn the user's speech events and transcription, then a response with audio deltas of 100 ms of
base64 PCM16 (6,400 characters each), transcript deltas, item, content part and response events,
and rate limits. All four variants run in one process on the same JSON strings:

* ``aoai parse``: ``parse_server_event`` (validating pydantic models, unknown types kept);
* ``aoai parse+fold``: the same plus ``Conversation.apply`` (items, responses, audio ms);
* ``openai construct``: ``construct_type_unchecked`` on ``RealtimeServerEvent``, which is what the
  ``openai`` package's realtime connection does (no validation);
* ``openai validate``: a pydantic ``TypeAdapter(RealtimeServerEvent).validate_json`` (validating).

The ``openai`` package has no conversation state, so "fold" exists only on our side. Each
variant runs ``--rounds`` times; the best round counts. Run: ``python benchmarks/bench_protocol.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from aoai_realtime.protocol import Conversation
from aoai_realtime.protocol.events import UnknownEvent, parse_server_event

USAGE = {
    "total_tokens": 600,
    "input_tokens": 200,
    "output_tokens": 400,
    "input_token_details": {"cached_tokens": 0, "text_tokens": 50, "audio_tokens": 150},
    "output_token_details": {"text_tokens": 40, "audio_tokens": 360},
}


def response(
    resp_id: str, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``response`` object of ``response.created`` / ``response.done``."""
    return {
        "id": resp_id,
        "object": "realtime.response",
        "status": status,
        "status_details": None,
        "output": output,
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
        "usage": usage,
        "metadata": None,
    }


def make_stream(responses: int = 50, deltas: int = 30) -> list[str]:
    """A recorded-like GA event stream: ``responses`` voice turns, ``deltas`` x 100 ms audio each."""
    rng = os.urandom(4800 * 8)
    chunks = [base64.b64encode(rng[i * 4800 : (i + 1) * 4800]).decode() for i in range(8)]
    words = [
        "sure",
        "here",
        "is",
        "what",
        "I",
        "found",
        "about",
        "the",
        "weather",
        "in",
        "Paris",
        "today",
        "and",
        "tomorrow",
    ]
    out: list[dict[str, Any]] = []
    n = 0

    def eid() -> str:
        nonlocal n
        n += 1
        return f"event_{n:08d}"

    out.append(
        {
            "type": "session.created",
            "event_id": eid(),
            "session": {
                "type": "realtime",
                "object": "realtime.session",
                "id": "sess_1",
                "model": "gpt-realtime",
                "output_modalities": ["audio"],
                "instructions": "Be brief.",
                "tools": [],
                "tool_choice": "auto",
                "max_output_tokens": "inf",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "whisper-1"},
                        "noise_reduction": None,
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 500,
                        },
                    },
                    "output": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "voice": "marin",
                        "speed": 1.0,
                    },
                },
            },
        }
    )
    prev_item: str | None = None
    for r in range(responses):
        user = f"item_u{r:04d}"
        item = f"item_a{r:04d}"
        resp = f"resp_{r:04d}"
        out += [
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": eid(),
                "audio_start_ms": r * 10_000,
                "item_id": user,
            },
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": eid(),
                "audio_end_ms": r * 10_000 + 2_000,
                "item_id": user,
            },
            {
                "type": "input_audio_buffer.committed",
                "event_id": eid(),
                "previous_item_id": prev_item,
                "item_id": user,
            },
            {
                "type": "conversation.item.added",
                "event_id": eid(),
                "previous_item_id": prev_item,
                "item": {
                    "id": user,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": "user",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
            },
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "event_id": eid(),
                "item_id": user,
                "content_index": 0,
                "delta": "What is the weather",
            },
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": eid(),
                "item_id": user,
                "content_index": 0,
                "transcript": "What is the weather like?",
                "usage": {"type": "duration", "seconds": 2},
            },
            {
                "type": "response.created",
                "event_id": eid(),
                "response": response(resp, "in_progress", [], None),
            },
        ]
        msg = {
            "id": item,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        base = {"response_id": resp, "item_id": item, "output_index": 0, "content_index": 0}
        out += [
            {
                "type": "response.output_item.added",
                "event_id": eid(),
                "response_id": resp,
                "output_index": 0,
                "item": msg,
            },
            {
                "type": "conversation.item.added",
                "event_id": eid(),
                "previous_item_id": user,
                "item": msg,
            },
            {
                "type": "response.content_part.added",
                "event_id": eid(),
                **base,
                "part": {"type": "audio", "transcript": ""},
            },
        ]
        transcript: list[str] = []
        for d in range(deltas):
            word = words[(r + d) % len(words)] + " "
            transcript.append(word)
            out.append(
                {
                    "type": "response.output_audio_transcript.delta",
                    "event_id": eid(),
                    **base,
                    "delta": word,
                }
            )
            out.append(
                {
                    "type": "response.output_audio.delta",
                    "event_id": eid(),
                    **base,
                    "delta": chunks[d % len(chunks)],
                }
            )
        text = "".join(transcript).strip()
        done_item = {
            **msg,
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": text}],
        }
        out += [
            {"type": "response.output_audio.done", "event_id": eid(), **base},
            {
                "type": "response.output_audio_transcript.done",
                "event_id": eid(),
                **base,
                "transcript": text,
            },
            {
                "type": "response.content_part.done",
                "event_id": eid(),
                **base,
                "part": {"type": "audio", "transcript": text},
            },
            {
                "type": "response.output_item.done",
                "event_id": eid(),
                "response_id": resp,
                "output_index": 0,
                "item": done_item,
            },
            {
                "type": "conversation.item.done",
                "event_id": eid(),
                "previous_item_id": user,
                "item": done_item,
            },
            {
                "type": "response.done",
                "event_id": eid(),
                "response": response(resp, "completed", [done_item], USAGE),
            },
            {
                "type": "rate_limits.updated",
                "event_id": eid(),
                "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
                    {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.5},
                ],
            },
        ]
        prev_item = item
    return [json.dumps(e, separators=(",", ":")) for e in out]


def _best_rate(run: Callable[[], None], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--responses", type=int, default=50)
    parser.add_argument("--deltas", type=int, default=30, help="100 ms audio deltas per response")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    stream = make_stream(args.responses, args.deltas)
    count = len(stream)
    megabytes = sum(len(s) for s in stream) / 1e6

    # Check both sides understand every event, so the comparison is like for like.
    unknown = [s for s in stream if isinstance(parse_server_event(s), UnknownEvent)]
    if unknown:
        print(f"aoai_realtime does not know {len(unknown)} events, e.g. {unknown[0][:120]}")
        return 1
    try:
        import openai
        from openai._models import construct_type_unchecked
        from openai.types.realtime import RealtimeServerEvent
        from pydantic import TypeAdapter
    except ImportError as exc:  # pragma: no cover
        print(f"the openai package is needed for the baseline: pip install openai ({exc})")
        return 1
    adapter: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
    for s in stream:
        adapter.validate_json(s)  # raises if the openai types refuse one of our events

    def aoai_parse() -> None:
        for s in stream:
            parse_server_event(s)

    def aoai_fold() -> None:
        conv = Conversation()
        for s in stream:
            conv.apply(parse_server_event(s))
        assert conv.items[f"item_a{args.responses - 1:04d}"].audio_ms == args.deltas * 100

    typ: Any = RealtimeServerEvent

    def openai_construct() -> None:
        for s in stream:
            construct_type_unchecked(value=json.loads(s), type_=typ)

    def openai_validate() -> None:
        for s in stream:
            adapter.validate_json(s)

    rates = {
        "aoai parse": _best_rate(aoai_parse, count, args.rounds),
        "aoai parse+fold": _best_rate(aoai_fold, count, args.rounds),
        "openai construct": _best_rate(openai_construct, count, args.rounds),
        "openai validate": _best_rate(openai_validate, count, args.rounds),
    }
    print(
        f"stream: {count} events ({args.responses} responses x {args.deltas} audio deltas of "
        f"100 ms), {megabytes:.1f} MB of JSON; best of {args.rounds} rounds"
    )
    print(
        f"python {platform.python_version()}, openai {openai.__version__}, "
        f"pydantic {__import__('pydantic').__version__}"
    )
    for name, rate in rates.items():
        print(f"  {name:<18} {rate:>12,.0f} events/s")
    base_c, base_v = rates["openai construct"], rates["openai validate"]
    print("ratios (higher is faster for aoai):")
    print(f"  aoai parse      / openai construct = {rates['aoai parse'] / base_c:.2f}")
    print(f"  aoai parse      / openai validate  = {rates['aoai parse'] / base_v:.2f}")
    print(f"  aoai parse+fold / openai construct = {rates['aoai parse+fold'] / base_c:.2f}")
    print(f"  aoai parse+fold / openai validate  = {rates['aoai parse+fold'] / base_v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
