"""One spoken turn: send a WAV file (any rate), print both transcripts, save the spoken reply.

    python examples/audio_turn.py question.wav -o reply.wav
    python examples/audio_turn.py question.wav --url 'ws://127.0.0.1:8788/openai/v1/realtime?model=local'

The file is streamed at its own sample rate; the SDK resamples it to 24 kHz on the way out.
Turn detection is off, so the turn ends when the file does (``commit``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aoai_realtime as rt
from aoai_realtime import audio


async def turn(path: str, out: str, url: str | None) -> None:
    samples, rate = audio.read_wav(path)  # float samples at the file's rate (mixed to mono)
    pcm = audio.float_to_pcm16(samples)
    session = rt.SessionConfig(
        turn_detection=None, transcription=rt.Transcription(model="whisper-1")
    )
    async with rt.connect(url=url, session=session) as client:
        for chunk in audio.chunk_pcm16(pcm, ms=40, rate=rate):  # as a microphone would
            await client.send_audio(chunk, sample_rate=rate)
        item_id = await client.commit()
        heard = client.wait_for_user_transcript(item_id)
        response = await client.create_response()
        received = 0
        async for chunk in response.audio_chunks():  # play these as they come
            received += len(chunk)
        result = await response.done()
        print(f"you:       {await heard}")
        print(f"assistant: {result.transcript}")
        audio.write_wav(out, result.audio)
        print(f"reply:     {out} ({result.audio_ms / 1000:.1f} s, {result.status})")


def main() -> int:
    parser = argparse.ArgumentParser(description="One spoken turn from a WAV file.")
    parser.add_argument("wav", help="the question, a WAV file at any sample rate")
    parser.add_argument("-o", "--out", default="reply.wav", help="where to write the reply")
    parser.add_argument("--url", help="a realtime WebSocket URL (default: the Azure settings)")
    args = parser.parse_args()
    try:
        asyncio.run(turn(args.wav, args.out, args.url))
    except (rt.ConnectError, rt.ConfigError, rt.ServiceError, ValueError) as exc:
        print(f"audio_turn: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
