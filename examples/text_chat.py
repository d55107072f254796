"""Text chat: type a message, read the answer as it streams.

python examples/text_chat.py                         # Azure, from AZURE_OPENAI_* settings
python examples/text_chat.py --url 'ws://127.0.0.1:8788/openai/v1/realtime?model=local'
python examples/text_chat.py -m "Hello!" -m "What can you do?"   # no typing: send these
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aoai_realtime as rt


async def chat(url: str | None, messages: list[str]) -> None:
    session = rt.SessionConfig(
        output_modalities=["text"], instructions="You are terse and friendly."
    )
    async with rt.connect(url=url, session=session) as client:
        print(f"connected to {client.url} ({client.dialect}, request id {client.request_id})")
        interactive = not messages
        while True:
            if interactive:
                line = await asyncio.to_thread(input, "you> ")
            elif messages:
                line = messages.pop(0)
                print(f"you> {line}")
            else:
                break
            if not line.strip():
                break
            response = await client.send_text(line)
            print("assistant> ", end="", flush=True)
            async for delta in response.text_deltas():
                print(delta, end="", flush=True)
            result = await response.done()
            print(f"   [{result.status}]")


def main() -> int:
    parser = argparse.ArgumentParser(description="Chat by text with a realtime deployment.")
    parser.add_argument("--url", help="a realtime WebSocket URL (default: the Azure settings)")
    parser.add_argument("-m", "--message", action="append", default=[], help="send this message")
    args = parser.parse_args()
    try:
        asyncio.run(chat(args.url, args.message))
    except (rt.ConnectError, rt.ConfigError) as exc:
        print(f"text_chat: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
