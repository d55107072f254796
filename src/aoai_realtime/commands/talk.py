"""``aoai-realtime talk IN.wav``: one conversation turn from a file (or ``--text``).

The audio is sent with turn detection off and committed by hand, so a file without trailing
silence still makes a turn. The spoken reply is written as a 24 kHz mono WAV; the user's
transcript, the reply's transcript and the timings are printed (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..audio import duration_ms, read_audio_file, rms_dbfs, write_wav
from ..protocol.session import SessionConfig, Transcription
from . import _common as common

EPILOG = (
    """\
examples:
  aoai-realtime talk question.wav                    answer a recorded question; the spoken
                                                     reply goes to reply.wav
  aoai-realtime talk question.wav -o answer.wav --json
  aoai-realtime talk --text "What's the capital of France?"
  aoai-realtime talk question.wav --voice sage --instructions "Answer in French."
  aoai-realtime talk question.wav --record turn.jsonl   then: aoai-realtime replay turn.jsonl
  aoai-realtime talk question.wav --url 'ws://127.0.0.1:8788/openai/v1/realtime?model=local'

input: a WAV file of any rate, channel count or sample format the audio helpers read (PCM
8-32 bit, float, mu-law, A-law), or headerless .raw/.pcm PCM16 mono 24 kHz. It is resampled to
24 kHz and committed as one turn (no silence needed at the end).
timings: connect (handshake to a configured session), first audio (end of your input to the
first audio of the reply) and total (end of your input to the end of the reply).
With no Azure settings the local engine starts in this process (a few seconds, once).

"""
    + common.ENV_HELP
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aoai-realtime talk",
        description="One conversation turn: send a WAV file (or a typed message), write the "
        "spoken reply as a 24 kHz WAV, print both transcripts and the timings.",
        epilog=EPILOG,
        formatter_class=common.HelpFormatter,
    )
    parser.add_argument(
        "input",
        nargs="?",
        metavar="IN.wav",
        help="the audio to send (WAV, or .raw PCM16 24 kHz mono); omit with --text",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="REPLY.wav",
        default="reply.wav",
        help="where to write the spoken reply (default: reply.wav; '-' for none)",
    )
    parser.add_argument("--text", metavar="MESSAGE", help="send a typed message instead of audio")
    common.add_voice_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_record_argument(parser)
    common.add_target_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up when the reply takes longer than this (default: 120)",
    )
    return parser


def _session(args: argparse.Namespace, audio_in: bool) -> SessionConfig:
    fields: dict[str, Any] = {"turn_detection": None, "output_modalities": ["audio"]}
    if audio_in:
        fields["transcription"] = Transcription(model=common.TRANSCRIPTION_MODEL)
    fields.update(common.voice_fields(args))
    return SessionConfig(**fields)


async def _turn(
    args: argparse.Namespace, pcm: bytes | None, progress: common.Progress
) -> dict[str, Any]:
    from ..client import RealtimeError, ServiceError, TranscriptionError

    settings = common.load_settings()
    async with common.open_target(args.url, settings, progress) as target:
        recorder = common.open_recorder(args.record, target, "talk")
        try:
            began = time.monotonic()
            progress.start(f"connecting to {target.label}", transient=True)
            try:
                client = await common.open_client(
                    target,
                    session=_session(args, pcm is not None),
                    recorder=recorder,
                    open_timeout=min(args.timeout, 60.0),
                )
            except (RealtimeError, OSError) as exc:
                progress.stop()
                raise common.connect_failure(exc) from None
            progress.stop()
            connect_ms = (time.monotonic() - began) * 1000
            try:
                return await asyncio.wait_for(
                    _exchange(client, args, pcm, progress, connect_ms, target),
                    args.timeout,
                )
            except asyncio.TimeoutError:
                raise common.CommandError(
                    f"no complete reply within {args.timeout:g} s (--timeout)"
                ) from None
            except TranscriptionError as exc:  # pragma: no cover - handled in _exchange
                raise common.CommandError(f"transcription failed: {exc}") from None
            except ServiceError as exc:
                raise common.CommandError(f"the service refused the turn: {exc}") from None
            except RealtimeError as exc:
                raise common.CommandError(str(exc)) from None
            finally:
                await client.close()
        finally:
            if recorder is not None:
                recorder.close()


async def _exchange(
    client: Any,
    args: argparse.Namespace,
    pcm: bytes | None,
    progress: common.Progress,
    connect_ms: float,
    target: common.Target,
) -> dict[str, Any]:
    from ..client import TranscriptionError

    transcript_future: asyncio.Future[str] | None = None
    if pcm is not None:
        progress.start(f"sending {duration_ms(pcm) / 1000:.1f} s of audio", transient=True)
        transcript_future = client.wait_for_user_transcript(timeout=None)
        await client.send_audio(pcm)
        await client.commit()
    else:
        progress.start("sending the message", transient=True)
        await client.send_text(args.text, respond=False)
    sent_at = time.monotonic()
    stream = await client.create_response()
    progress.start("waiting for the reply", transient=True)
    first_audio: float | None = None
    audio: list[bytes] = []
    async for chunk in stream.audio_chunks():
        if first_audio is None and chunk:
            first_audio = time.monotonic()
            progress.start("receiving the reply", transient=True)
        audio.append(chunk)
    result = await stream
    done_at = time.monotonic()
    progress.stop()
    user_transcript: str | None = args.text
    transcription_error: str | None = None
    if transcript_future is not None:
        try:
            user_transcript = await asyncio.wait_for(transcript_future, 30.0)
        except TranscriptionError as exc:
            transcription_error = str(exc)
            user_transcript = None
        except asyncio.TimeoutError:
            transcription_error = "no transcript within 30 s of the reply"
            user_transcript = None
    pcm_out = b"".join(audio)
    return {
        "url": target.url,
        "target": target.label,
        "request_id": client.request_id,
        "status": result.status,
        "status_reason": result.status_details.reason if result.status_details else None,
        "user_transcript": user_transcript,
        "transcription_error": transcription_error,
        "reply_transcript": result.transcript or result.text,
        "audio_ms": round(duration_ms(pcm_out)),
        "audio_dbfs": round(rms_dbfs(pcm_out), 1) if pcm_out else None,
        "function_calls": [
            {"name": c.name, "arguments": c.arguments, "output": c.output}
            for c in result.function_calls
        ],
        "timings_ms": {
            "connect": round(connect_ms),
            "first_audio": round((first_audio - sent_at) * 1000) if first_audio else None,
            "total": round((done_at - sent_at) * 1000),
        },
        "_audio": pcm_out,
    }


def _print_human(out: dict[str, Any]) -> None:
    you = out["user_transcript"]
    if you is None:
        you = f"(no transcript: {out['transcription_error']})"
    print(f"you:        {you}")
    print(f"assistant:  {out['reply_transcript'] or '(no transcript)'}")
    for call in out["function_calls"]:
        print(f"tool:       {call['name']}({call['arguments']}) -> {call['output']}")
    if out.get("output"):
        print(f"reply:      {out['output']} ({out['audio_ms'] / 1000:.1f} s, 24 kHz mono)")
    elif out["audio_ms"] == 0:
        print("reply:      (no audio)")
    else:
        print(f"reply:      {out['audio_ms'] / 1000:.1f} s of audio (not written: -o -)")
    t = out["timings_ms"]
    first = f"{t['first_audio']} ms" if t["first_audio"] is not None else "none"
    print(f"timings:    connect {t['connect']} ms, first audio {first}, total {t['total']} ms")
    if out["status"] != "completed":
        reason = f" ({out['status_reason']})" if out.get("status_reason") else ""
        print(f"status:     {out['status']}{reason}")


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.input is None) == (args.text is None):
        parser.error("give an audio file (IN.wav) or --text MESSAGE (one of them)")
    if args.text is not None and not args.text.strip():
        parser.error("--text is empty")
    pcm: bytes | None = None
    if args.input is not None:
        try:
            pcm = read_audio_file(args.input)
        except FileNotFoundError:
            common.err("talk", f"{args.input}: no such file")
            return 2
        except (OSError, ValueError) as exc:
            common.err("talk", str(exc))
            return 2
        if not pcm:
            common.err("talk", f"{args.input}: the file has no audio")
            return 2
    progress = common.Progress()
    try:
        out = common.run(_turn(args, pcm, progress))
    except common.CommandError as exc:
        progress.stop()
        common.err("talk", exc.message)
        return exc.status
    if isinstance(out, int):
        return out
    audio: bytes = out.pop("_audio")
    out["output"] = None
    if args.output != "-" and audio:
        try:
            write_wav(Path(args.output), audio)
        except OSError as exc:
            common.err("talk", f"cannot write {args.output}: {exc.strerror or exc}")
            return 1
        out["output"] = str(args.output)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        _print_human(out)
    sys.stdout.flush()
    return 0 if out["status"] == "completed" else 1
