"""Malformed client events, seeded and bounded (``fuzzing.py``): against the local engine and
through the middle tier, in both dialects. Every refusal is an ``invalid_request_error`` the
client can act on (a code; for a bad field the parameter as the client spelled it, no pydantic
tags; the ``event_id`` of its event; the value echoed bounded), never a ``server_error``; no
value of the wrong type is converted; nothing is logged as a failure; no session ends.

``benchmarks/bench_fuzz.py`` runs the same generator for 100,000 events and more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from aoai_realtime.channel import Channel
from fuzzing import ENGINE_PATHS, Tally, fuzzed, run_session, serve_in_process
from helpers import memory_engine

EVENTS = 2000


def no_failures_logged(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures[:5]]


RELAY_KNOWN: tuple[tuple[str, str], ...] = ()
"""What the middle tier may still let through that the tally would flag: nothing now."""


def checked(tally: Tally, known: tuple[tuple[str, str], ...] = ()) -> None:
    tally.check()
    failures = {
        kind: left
        for kind, seen in tally.failures().items()
        if (left := [w for w in seen if not any(kind == k and s in str(w) for k, s in known)])
    }
    assert not failures, (tally.counts(), failures)
    assert sum(tally.errors.values()) > EVENTS // 3, tally.errors  # the malformed were refused
    assert tally.wrong  # the run had events that must be refused, and they were


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_fuzzed_events_to_the_engine(dialect: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    tally = Tally(dialect)
    async with memory_engine() as engine:
        channel: Channel = await engine.open_channel(ENGINE_PATHS[dialect])
        still_open = await run_session(
            fuzzed(dialect, EVENTS), channel.send, channel.receive, channel.close, tally
        )
    assert still_open
    checked(tally)
    no_failures_logged(caplog)


@pytest.fixture(scope="module")
def serve() -> Iterator[Any]:
    srv = serve_in_process()
    yield srv
    srv.close()


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_fuzzed_events_through_the_middle_tier(
    serve: Any, dialect: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    tally = Tally(dialect)
    url = "ws" + serve.http_url[4:] + ENGINE_PATHS[dialect]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, max_msg_size=32 * 1024 * 1024)

        async def receive() -> str | None:
            msg = await ws.receive()
            while msg.type not in (aiohttp.WSMsgType.TEXT, *_CLOSED):
                msg = await ws.receive()
            return str(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None

        still_open = await run_session(
            fuzzed(dialect, EVENTS), ws.send_str, receive, ws.close, tally
        )
    assert still_open  # the page's session goes on
    assert ("relay_error", "relay_internal_error") not in tally.errors
    checked(tally, RELAY_KNOWN)
    no_failures_logged(caplog)


_CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)
