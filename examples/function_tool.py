"""Function tools: plain Python functions the model calls, run by the SDK automatically.

    python examples/function_tool.py "What time is it in Tokyo?"
    python examples/function_tool.py --url 'ws://127.0.0.1:8788/openai/v1/realtime?model=local'

The SDK builds each tool's JSON schema from its type hints and docstring, runs the call when
its arguments are complete, sends the output, and asks for the follow-up response once the
response that made the call is done. The turn's result includes the calls and their outputs.

What it needs: an upstream whose model calls tools. Azure OpenAI (AZURE_OPENAI_ENDPOINT,
AZURE_OPENAI_DEPLOYMENT, and AZURE_OPENAI_API_KEY or `az login`; `aoai-realtime doctor` checks
them), or the local engine (`aoai-realtime engine`, whose default brain picks a tool by its
description and the arguments from your words: ask plainly, e.g. "What time is it in Tokyo?").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import aoai_realtime as rt


@rt.tool
def get_time(
    timezone: Annotated[str, "An IANA time zone or its city, e.g. Asia/Tokyo or Tokyo"] = "UTC",
) -> str:
    """The current time in a time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        city = timezone.strip().replace(" ", "_").lower()
        names = [z for z in available_timezones() if z.lower().rsplit("/", 1)[-1] == city]
        if len(names) != 1:
            raise ValueError(f"unknown time zone {timezone!r}") from None
        zone = ZoneInfo(names[0])
    return datetime.datetime.now(zone).strftime("%H:%M")


@rt.tool
async def convert_units(
    value: float, unit: Literal["km", "mi", "kg", "lb"], to: Literal["km", "mi", "kg", "lb"]
) -> dict[str, float | str]:
    """Convert a distance (km, mi) or a weight (kg, lb)."""
    factors = {"km": 1.0, "mi": 1.609344, "kg": 1.0, "lb": 0.45359237}
    if (unit in ("km", "mi")) != (to in ("km", "mi")):
        raise ValueError(f"cannot convert {unit} to {to}")
    return {"value": round(value * factors[unit] / factors[to], 3), "unit": to}


async def ask(question: str, url: str | None) -> None:
    session = rt.SessionConfig(output_modalities=["text"], instructions="Use the tools.")
    async with rt.connect(url=url, session=session, tools=[get_time, convert_units]) as client:
        response = await client.send_text(question)
        result = await response.done()  # the whole turn, follow-up response included
        for call in result.function_calls:
            print(f"called {call.name}({call.arguments}) -> {call.output}")
        print(f"assistant: {result.text or result.transcript}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Ask a question the model answers with tools.")
    parser.add_argument("question", nargs="?", default="What time is it?")
    parser.add_argument("--url", help="a realtime WebSocket URL (default: the Azure settings)")
    args = parser.parse_args()
    try:
        asyncio.run(ask(args.question, args.url))
    except (rt.ConnectError, rt.ConfigError, rt.ServiceError) as exc:
        print(f"function_tool: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
