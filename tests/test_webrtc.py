"""WebRTC calls to the local engine, with a second, independent peer: a Python aiortc client.

The engine (its own thread, real speech models, the scripted brain, an API key) answers SDP
offers on ``/openai/v1/realtime/calls``; the client here sends speech made by the engine's own
voice on an Opus track, reads events on the ``oai-events`` data channel and measures the level
of the audio it hears on the remote track. A sideband WebSocket (the SDK's
``connect(call_id=...)``) watches the same session and runs a function tool. Every wait is on
an event (an event arriving, a frame heard, the engine's count of calls reaching a number),
bounded by a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest

import aoai_realtime as rt
from helpers import ENGINE_SCRIPT, WAIT, engine_thread

aiortc = pytest.importorskip("aiortc", reason="the [webrtc] extra (aiortc) is not installed")
av = pytest.importorskip("av")

from aiortc import (  # noqa: E402
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError  # noqa: E402

KEY = "webrtc-test-key"
AUTH = {"api-key": KEY}
TEARDOWN_S = 2.0
"""The engine's connect and media timeouts here: a peer that never connects, or goes, is torn
down this long after (the defaults are 5 s)."""
LOUD_RMS = 300.0
"""A frame heard at this RMS (PCM16) or above carries speech; silence is 0."""
TRANSCRIBE = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}


@pytest.fixture(scope="module")
def rtc_engine(speech_stack: Any) -> Iterator[Any]:
    """A keyed engine with speech and the scripted brain, quick to tear calls down."""
    yield from engine_thread(
        speech_stack,
        brain="scripted",
        script=ENGINE_SCRIPT,
        api_key=KEY,
        call_connect_timeout_s=TEARDOWN_S,
        call_media_timeout_s=TEARDOWN_S,
    )


@pytest.fixture
async def engine(rtc_engine: Any) -> AsyncIterator[Any]:
    """The engine, with no call and no session left by the test (waited for, not assumed)."""
    await rtc_engine.wait_calls_async(0, WAIT)
    await rtc_engine.wait_sessions_async(0, WAIT)
    yield rtc_engine
    await rtc_engine.wait_calls_async(0, WAIT)
    await rtc_engine.wait_sessions_async(0, WAIT)


# ------------------------------------------------------------------------------ the peer


class Speaker(MediaStreamTrack):
    """The client's microphone: what :meth:`say` queued, then silence; 20 ms frames at 24 kHz,
    paced in real time (as a browser's microphone is)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = bytearray()
        self._start: float | None = None
        self._pts = 0
        self.finished = asyncio.Event()

    def say(self, pcm: bytes) -> None:
        self.finished.clear()
        self._queue += pcm

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += 480
            wait = self._start + self._pts / 24000 - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the pace of a real microphone, not a test wait
        chunk = bytes(self._queue[:960])
        del self._queue[:960]
        if not self._queue:
            self.finished.set()
        frame = av.AudioFrame(format="s16", layout="mono", samples=480)
        frame.planes[0].update(chunk + bytes(960 - len(chunk)))
        frame.pts = self._pts
        frame.sample_rate = 24000
        frame.time_base = fractions.Fraction(1, 24000)
        return frame


class Peer:
    """An aiortc peer: an audio track and the ``oai-events`` channel; what it got, kept."""

    def __init__(self, *, data_channel: bool = True, audio: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.speaker = Speaker()
        if audio:
            self.pc.addTrack(self.speaker)
        self.events: list[dict[str, Any]] = []
        self.levels: list[float] = []
        """The RMS of every frame heard on the remote track, in order."""
        self._changed = asyncio.Event()
        self.opened = asyncio.Event()
        self.dc = self.pc.createDataChannel("oai-events") if data_channel else None
        if self.dc is not None:
            self.dc.on("open", self.opened.set)
            self.dc.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self._pumps: list[asyncio.Task[None]] = []

    def _on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self._wake()

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def pump() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                samples = frame.to_ndarray().astype(np.float64)
                self.levels.append(float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0)
                self._wake()

        self._pumps.append(asyncio.ensure_future(pump()))

    def _wake(self) -> None:
        self._changed.set()

    async def until(self, test: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Wait until ``test()`` is truthy (woken by each event or frame); its value."""

        async def reached() -> Any:
            while not (value := test()):
                self._changed.clear()
                await self._changed.wait()
            return value

        try:
            return await asyncio.wait_for(reached(), timeout)
        except asyncio.TimeoutError:
            seen = [e["type"] for e in self.events]
            raise AssertionError(f"no {what} within {timeout:g} s; events: {seen}") from None

    async def event(self, kind: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The first event of type ``kind`` (with those field values) on the data channel."""

        def find() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.events
                    if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())
                ),
                None,
            )

        found: dict[str, Any] = await self.until(find, kind, timeout)
        return found

    def loud_frames(self, since: int = 0) -> int:
        return sum(1 for level in self.levels[since:] if level >= LOUD_RMS)

    def send(self, event: dict[str, Any]) -> None:
        assert self.dc is not None
        self.dc.send(json.dumps(event))

    def say_text(self, text: str) -> None:
        self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        self.send({"type": "response.create"})

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()
        for pump in self._pumps:
            pump.cancel()


async def offer_sdp(**peer: Any) -> str:
    """An offer from a peer closed at once (for requests that are refused)."""
    client = Peer(**peer)
    try:
        return await client.offer()
    finally:
        await client.close()


async def post_offer(
    engine: Any,
    sdp: str,
    *,
    session: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/openai/v1/realtime/calls",
) -> tuple[int, dict[str, str], str]:
    """POST an offer as the service takes it: ``application/sdp``, or the multipart form."""
    heads = dict(AUTH if headers is None else headers)
    async with aiohttp.ClientSession() as http:
        if session is None:
            heads["Content-Type"] = "application/sdp"
            request = http.post(engine.http_url + path, data=sdp, headers=heads)
        else:
            form = aiohttp.FormData()
            form.add_field("sdp", sdp, content_type="application/sdp")
            form.add_field("session", json.dumps(session), content_type="application/json")
            request = http.post(engine.http_url + path, data=form, headers=heads)
        async with request as resp:
            return resp.status, dict(resp.headers), await resp.text()


@asynccontextmanager
async def call(
    engine: Any, *, session: dict[str, Any] | None = None, **peer: Any
) -> AsyncIterator[tuple[Peer, str]]:
    """A connected call: the peer (its data channel open) and the call's id."""
    client = Peer(**peer)
    try:
        status, headers, answer = await post_offer(engine, await client.offer(), session=session)
        assert status == 201, answer
        call_id = headers["Location"].rsplit("/", 1)[-1]
        await client.accept(answer)
        if client.dc is not None:
            await asyncio.wait_for(client.opened.wait(), WAIT)
        yield client, call_id
    finally:
        await client.close()


def sideband(engine: Any, call_id: str, **kwargs: Any) -> Any:
    """The SDK attached to a call (``connect(call_id=...)``), with the engine's key."""
    return rt.connect(url=engine.url, api_key=KEY, call_id=call_id, **kwargs)


def assert_all_stopped(engine_side: Any) -> None:
    """Everything of an ended call (the engine's ``Call``) has stopped: the engine counts a
    call until its run is over, so this holds once ``wait_calls_async(0)`` returned."""
    assert engine_side.ended.is_set()
    assert engine_side.pc.connectionState == "closed"
    assert engine_side.track.readyState == "ended"
    assert engine_side.session.closed
    assert not engine_side.channel.sidebands
    assert all(task.done() for task in engine_side._tasks)


async def collect(client: Any, into: list[Any]) -> None:
    async for event in client.events():
        into.append(event)


# ------------------------------------------------------------------------------ calls


async def test_a_spoken_question_is_transcribed_answered_and_heard(
    engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with call(engine, session=TRANSCRIBE) as (peer, call_id):
        assert re.fullmatch(r"rtc_[A-Za-z0-9]{22}", call_id)
        created = await peer.event("session.created")
        transcription = created["session"]["audio"]["input"]["transcription"]
        assert transcription["model"] == "whisper-1"  # the form's session, before the start
        assert engine.sessions == 1

        peer.speaker.say(silence(300) + tts_wav("Hello there.") + silence(1200))
        said = await peer.event("conversation.item.input_audio_transcription.completed")
        assert "hello" in said["transcript"].lower()
        done = await peer.event("response.done")
        response_id = done["response"]["id"]
        started = await peer.event("output_audio_buffer.started", response_id=response_id)
        stopped = await peer.event("output_audio_buffer.stopped", response_id=response_id)
        kinds = [e["type"] for e in peer.events]
        assert kinds.index("output_audio_buffer.started") < kinds.index(
            "output_audio_buffer.stopped"
        )
        assert kinds.index("response.done") < peer.events.index(stopped)
        assert started["event_id"] != stopped["event_id"]
        transcript = next(
            e for e in peer.events if e["type"] == "response.output_audio_transcript.done"
        )
        assert transcript["transcript"] == "Hello! How can I help you today?"
        # the answer was heard on the remote track, not sent as deltas on the data channel
        assert "response.output_audio.delta" not in kinds
        assert peer.loud_frames() >= 25  # at least half a second of speech
        assert max(peer.levels) > 1000

    await engine.wait_calls_async(0, WAIT)  # the peer closed: the call ends
    await engine.wait_sessions_async(0, WAIT)


async def test_the_openai_path_and_a_plain_sdp_offer(engine: Any) -> None:
    peer = Peer()
    try:
        status, headers, answer = await post_offer(
            engine, await peer.offer(), path="/v1/realtime/calls?model=gpt-realtime"
        )
        assert status == 201, answer
        assert headers["Content-Type"].startswith("application/sdp")
        assert re.fullmatch(r"/v1/realtime/calls/rtc_\w+", headers["Location"])
        assert answer.startswith("v=0") and "m=audio" in answer and "m=application" in answer
        await peer.accept(answer)
        created = await peer.event("session.created")
        assert created["session"]["model"] == "gpt-realtime"
    finally:
        await peer.close()


async def test_the_sideband_sees_the_call_and_runs_a_function_tool(engine: Any) -> None:
    ran: list[str] = []

    def get_time(timezone: str) -> str:
        """The time in a timezone."""
        ran.append(timezone)
        return "half past nine"

    async with call(engine) as (peer, call_id):
        created = await peer.event("session.created")
        seen: list[Any] = []
        async with sideband(engine, call_id, tools=[get_time]) as control:
            reader = asyncio.ensure_future(collect(control, seen))
            # the sideband's session.update reached the call's session: the peer sees it too
            updated = await peer.event("session.updated")
            assert updated["session"]["id"] == created["session"]["id"]
            assert [t["name"] for t in updated["session"]["tools"]] == ["get_time"]

            peer.say_text("What time is it?")
            first = await peer.event("response.done")
            calls = [o for o in first["response"]["output"] if o["type"] == "function_call"]
            assert calls and calls[0]["name"] == "get_time"

            def answered() -> dict[str, Any] | None:
                return next(
                    (
                        e
                        for e in peer.events
                        if e["type"] == "response.output_audio_transcript.done"
                        and "half past nine" in e["transcript"]
                    ),
                    None,
                )

            said = await peer.until(answered, "the answer with the tool's output")
            assert said["transcript"] == "It is half past nine right now."
            assert ran == ["local"]
            # the output the sideband sent is an item of the call's conversation
            outputs = [
                e
                for e in peer.events
                if e["type"] == "conversation.item.added"
                and e["item"]["type"] == "function_call_output"
            ]
            assert outputs and outputs[0]["item"]["call_id"] == calls[0]["call_id"]
            await peer.event("output_audio_buffer.stopped", response_id=said["response_id"])
            # the sideband saw the same events (no audio deltas there either)
            seen_ids = {getattr(e, "event_id", None) for e in seen}
            assert first["event_id"] in seen_ids
            assert not any(e.type == "response.output_audio.delta" for e in seen)
            reader.cancel()


async def test_a_call_that_ends_closes_its_sideband_and_its_id_is_gone(engine: Any) -> None:
    async with call(engine) as (peer, call_id):
        await peer.event("session.created")
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"{engine.url}/openai/v1/realtime?call_id={call_id}", headers=AUTH
            )
            await rt.hangup_call(call_id, url=engine.http_url, api_key=KEY)
            message = await asyncio.wait_for(ws.receive(), WAIT)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert (message.data, message.extra) == (1000, "hung up"), message
            await engine.wait_calls_async(0, WAIT)
            for path in ("/openai/v1/realtime", "/v1/realtime"):
                async with http.get(
                    f"{engine.http_url}{path}?call_id={call_id}", headers=AUTH
                ) as resp:
                    assert resp.status == 404
                    assert (await resp.json())["error"]["code"] == "call_id_not_found"
        with pytest.raises(rt.CallNotFound, match="has ended"):
            async with sideband(engine, call_id):
                pass
        with pytest.raises(rt.RequestFailed) as refused:
            await rt.hangup_call(call_id, url=engine.http_url, api_key=KEY)
        assert refused.value.status == 404


async def test_output_audio_buffer_clear_truncates_at_what_was_played(engine: Any) -> None:
    async with call(engine) as (peer, _call_id):
        await peer.event("session.created")
        peer.say_text("Tell me a story.")
        started = await peer.event("output_audio_buffer.started")
        response_id = started["response_id"]
        mark = len(peer.levels)
        await peer.until(lambda: peer.loud_frames(mark) >= 40, "0.8 s of the story heard")
        peer.send({"type": "output_audio_buffer.clear"})
        cleared = await peer.event("output_audio_buffer.cleared")
        assert cleared["response_id"] == response_id
        truncated = await peer.event("conversation.item.truncated")
        done = await peer.event("response.done", timeout=WAIT)
        item = next(o for o in done["response"]["output"] if o["id"] == truncated["item_id"])
        assert item["role"] == "assistant"
        # cut where the peer was listening (0.8 s in, and some), far before the story's end
        assert 800 <= truncated["audio_end_ms"] < 8000
        heard = len(peer.levels)
        await peer.until(
            lambda: len(peer.levels) - heard >= 25 and peer.loud_frames(heard + 10) == 0,
            "silence after the clear",
        )
        assert not any(
            e["type"] == "output_audio_buffer.stopped" and e["response_id"] == response_id
            for e in peer.events
        )


async def test_speaking_over_the_answer_cuts_it_where_it_was_heard(
    engine: Any, tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]
) -> None:
    async with call(engine) as (peer, _call_id):
        await peer.event("session.created")
        peer.say_text("Tell me a story.")
        started = await peer.event("output_audio_buffer.started")
        mark = len(peer.levels)
        await peer.until(lambda: peer.loud_frames(mark) >= 25, "the story heard")
        peer.speaker.say(tts_wav("Hello there.") + silence(1000))
        speech = await peer.event("input_audio_buffer.speech_started")
        cleared = await peer.event("output_audio_buffer.cleared")
        assert cleared["response_id"] == started["response_id"]
        truncated = await peer.event("conversation.item.truncated")
        assert 500 <= truncated["audio_end_ms"] < 15000
        assert peer.events.index(speech) < peer.events.index(cleared)


# ------------------------------------------------------------------------------ client secrets


async def test_client_secrets_are_minted_accepted_and_refused_when_expired(engine: Any) -> None:
    secret = await rt.create_client_secret(
        url=engine.http_url,
        api_key=KEY,
        session={
            "instructions": "You are the harbour master.",
            "audio": {"output": {"voice": "marin"}},
        },
        expires_after_s=60,
    )
    assert secret.value.startswith("ek_")
    assert abs(secret.expires_at - (time.time() + 60)) < 10
    assert secret.session["instructions"] == "You are the harbour master."
    assert secret.session["audio"]["output"]["voice"] == "marin"
    assert KEY not in repr(secret) and secret.value not in repr(secret)

    # a call with the ephemeral key, as a browser would make it: the secret's session applies
    peer = Peer()
    try:
        answer = await rt.create_call(
            await peer.offer(), url=engine.http_url, client_secret=secret.value
        )
        assert answer.call_id.startswith("rtc_")
        assert answer.location == f"/openai/v1/realtime/calls/{answer.call_id}"
        await peer.accept(answer.sdp)
        created = await peer.event("session.created")
        assert created["session"]["instructions"] == "You are the harbour master."
        assert created["session"]["audio"]["output"]["voice"] == "marin"
        assert KEY not in answer.sdp
        await rt.hangup_call(answer.call_id, url=engine.http_url, api_key=KEY)
        await engine.wait_calls_async(0, WAIT)
    finally:
        await peer.close()

    # and a WebSocket session with it
    async with rt.connect(url=engine.ga_url(), api_key=secret.value) as ws_client:
        assert ws_client.config.instructions == "You are the harbour master."

    sdp = await offer_sdp()
    bearer = {"Authorization": f"Bearer {secret.value}"}
    secrets = engine.engine.calls.secrets
    clock = secrets.now
    secrets.now = lambda: clock() + 61  # a minute later
    try:
        status, _, body = await post_offer(engine, sdp, headers=bearer)
        assert status == 401 and json.loads(body)["error"]["code"] == "expired_client_secret"
        with pytest.raises(rt.AuthenticationError):
            await rt.connect(url=engine.ga_url(), api_key=secret.value, open_timeout=WAIT)
    finally:
        secrets.now = clock
    status, _, body = await post_offer(engine, sdp, headers={"Authorization": "Bearer ek_nope"})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_client_secret"
    status, _, body = await post_offer(engine, sdp, headers={})
    assert status == 401
    status, _, body = await post_offer(engine, sdp, headers={"api-key": "wrong"})
    assert status == 401

    # minting needs the engine's own key, and a lifetime the service allows
    with pytest.raises(rt.RequestFailed) as refused:
        await rt.create_client_secret(url=engine.http_url, api_key="wrong")
    assert refused.value.status == 401
    with pytest.raises(rt.RequestFailed) as refused:
        await rt.create_client_secret(url=engine.http_url, api_key=secret.value)
    assert refused.value.status == 401
    with pytest.raises(rt.RequestFailed, match="between 10 and 7200") as refused:
        await rt.create_client_secret(url=engine.http_url, api_key=KEY, expires_after_s=5)
    assert refused.value.status == 400
    with pytest.raises(rt.RequestFailed, match="voice") as refused:
        await rt.create_client_secret(
            url=engine.http_url, api_key=KEY, session={"audio": {"output": {"voice": "bob"}}}
        )
    assert refused.value.status == 400
    assert engine.sessions == 0 and engine.engine.calls.calls == {}


# ------------------------------------------------------------------------------ faults


async def test_bad_offers_get_400_saying_what_is_wrong(engine: Any) -> None:
    no_audio = await offer_sdp(audio=False)
    assert "m=audio" not in no_audio
    cases = [
        ("", "empty"),
        ("hello, I am not SDP", "must begin with the line v=0"),
        ('{"type": "offer", "sdp": "v=0"}', "must begin with the line v=0"),
        ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", "no media sections"),
        (no_audio, "no audio m-line"),
        (
            (await offer_sdp()).replace("opus/48000/2", "speex/16000"),
            "no Opus",
        ),
    ]
    for sdp, message in cases:
        status, _, body = await post_offer(engine, sdp)
        assert status == 400, (message, body)
        error = json.loads(body)["error"]
        assert message in error["message"], error
    status, _, body = await post_offer(
        engine, await offer_sdp(), session={"audio": {"output": {"voice": "bob"}}}
    )
    assert status == 400 and "voice" in json.loads(body)["error"]["message"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{engine.http_url}/openai/v1/realtime/calls",
            json={"sdp": "v=0"},
            headers=AUTH,
        ) as resp,
    ):
        assert resp.status == 400
        assert "application/sdp" in (await resp.json())["error"]["message"]
    assert engine.engine.calls.calls == {} and engine.sessions == 0


async def test_a_peer_that_never_connects_is_torn_down(engine: Any) -> None:
    peer = Peer()
    try:
        status, headers, _answer = await post_offer(engine, await peer.offer())
        assert status == 201
        call_id = headers["Location"].rsplit("/", 1)[-1]
        engine_side = engine.engine.calls.get(call_id)
        # the answer is never applied: no ICE, no DTLS
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"{engine.url}/openai/v1/realtime?call_id={call_id}", headers=AUTH
            )
            message = await asyncio.wait_for(ws.receive(), WAIT)
            while message.type == aiohttp.WSMsgType.TEXT:  # events before the end
                message = await asyncio.wait_for(ws.receive(), WAIT)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert "did not connect" in message.extra
        await engine.wait_calls_async(0, WAIT)
        await engine.wait_sessions_async(0, WAIT)
    finally:
        await peer.close()
    assert_all_stopped(engine_side)


async def test_a_peer_that_goes_away_is_torn_down(engine: Any) -> None:
    async with call(engine) as (peer, call_id):
        await peer.event("session.created")
        engine_side = engine.engine.calls.get(call_id)
        assert engine_side is not None and engine_side.connected.is_set()
        # the peer's network goes: its ICE transport stops without a word to the engine
        sctp = peer.pc.sctp
        assert sctp is not None
        await sctp.transport.transport.stop()
        await engine.wait_calls_async(0, WAIT)
        await engine.wait_sessions_async(0, WAIT)
    assert_all_stopped(engine_side)
    assert "no audio from the peer" in engine_side.end_reason


def test_an_offer_is_checked_before_the_webrtc_stack_sees_it() -> None:
    from aoai_realtime.engine.sdp import OfferError, check_offer

    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\n"
        "a=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 AA:BB\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
    )
    summary = check_offer(offer)
    assert (summary.audio_mid, summary.audio_direction, summary.data_channel) == (
        "0",
        "sendonly",
        False,
    )
    with pytest.raises(OfferError, match="ICE password"):
        check_offer(offer.replace("a=ice-pwd:0123456789abcdef012345\r\n", ""))
    with pytest.raises(OfferError, match="inactive"):
        check_offer(offer.replace("a=sendonly", "a=inactive"))
    with pytest.raises(OfferError, match="no audio m-line"):
        check_offer(offer.replace("m=audio 9", "m=audio 0"))


def test_the_playout_says_what_was_played() -> None:
    from aoai_realtime.engine.playout import FRAME_BYTES, Playout

    said: list[dict[str, Any]] = []
    playout = Playout(said.append)
    assert playout.next_frame() == bytes(FRAME_BYTES) and said == []
    playout.push("resp_1", "item_1", 0, b"\x01\x00" * 2400)  # 100 ms
    frames = deque(playout.next_frame() for _ in range(3))
    assert said == [{"type": "output_audio_buffer.started", "response_id": "resp_1"}]
    assert playout.played_ms("item_1") == 60 and frames[0] != bytes(FRAME_BYTES)
    cuts = playout.clear()
    assert [(c.item_id, c.played_ms) for c in cuts] == [("item_1", 60)]
    assert said[-1] == {"type": "output_audio_buffer.cleared", "response_id": "resp_1"}
    playout.push("resp_1", "item_1", 0, b"\x01\x00" * 480)  # later audio of the cut response
    assert playout.next_frame() == bytes(FRAME_BYTES)
    playout.response_done("resp_1")
    playout.push("resp_2", "item_2", 0, b"\x01\x00" * 480)
    playout.response_done("resp_2")
    playout.next_frame()
    assert [e["type"] for e in said[-2:]] == [
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
    ]


def test_the_sdk_names_the_sideband_and_rest_urls_of_each_service() -> None:
    from aoai_realtime.calls import rest_url
    from aoai_realtime.client import _resolve_target

    def sideband_of(**where: Any) -> str:
        options: dict[str, Any] = {
            "endpoint": None,
            "deployment": None,
            "api_key": "k",
            "credential": None,
            "api_version": None,
            "url": None,
            "dialect": None,
            "headers": None,
            **where,
        }
        return _resolve_target(None, call_id="rtc_1", **options).url

    azure = "https://res.openai.azure.com"
    assert (
        sideband_of(endpoint=azure) == "wss://res.openai.azure.com/openai/v1/realtime?call_id=rtc_1"
    )
    assert sideband_of(endpoint=azure, api_version="2025-04-01-preview").endswith(
        "/openai/v1/realtime?call_id=rtc_1"
    )
    assert sideband_of(endpoint="https://api.openai.com") == (
        "wss://api.openai.com/v1/realtime?call_id=rtc_1"
    )
    assert sideband_of(url="ws://127.0.0.1:8788") == (
        "ws://127.0.0.1:8788/openai/v1/realtime?call_id=rtc_1"
    )
    with pytest.raises(ValueError, match="GA protocol only"):
        sideband_of(endpoint=azure, dialect="preview")
    assert rest_url("wss://res.openai.azure.com/openai/v1/realtime?model=m", "client_secrets") == (
        "https://res.openai.azure.com/openai/v1/realtime/client_secrets"
    )
    assert rest_url("wss://api.openai.com/v1/realtime?model=m", "calls") == (
        "https://api.openai.com/v1/realtime/calls"
    )
    assert rest_url("http://127.0.0.1:8788", "calls/rtc_1/hangup") == (
        "http://127.0.0.1:8788/openai/v1/realtime/calls/rtc_1/hangup"
    )
    assert rest_url("wss://r.example/openai/realtime?api-version=v&deployment=d", "calls") == (
        "https://r.example/openai/v1/realtime/calls"
    )


async def test_an_in_process_engine_takes_calls_and_sidebands_without_http() -> None:
    """What the middle tier's in-process engine offers: ``calls.create`` (the SDP offer in,
    the answer out), a sideband over ``open_channel(query={"call_id": ...})``, ``calls.mint``."""
    from aoai_realtime.engine import EngineRefusal
    from helpers import memory_engine

    async with memory_engine() as engine:
        secret = await engine.calls.mint({"session": {"instructions": "Be brief."}})
        assert secret["value"].startswith("ek_") and secret["session"]["instructions"] == (
            "Be brief."
        )
        peer = Peer()
        try:
            answer = await engine.calls.create(
                await peer.offer(), headers={"Authorization": f"Bearer {secret['value']}"}
            )
            await peer.accept(answer.sdp)
            created = await peer.event("session.created")
            assert created["session"]["instructions"] == "Be brief."
            assert engine.sessions == 1 and len(engine.calls) == 1
            control = await engine.open_channel("/openai/v1/realtime", {"call_id": answer.call_id})
            await control.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {"type": "realtime", "instructions": "Hi."},
                    }
                )
            )
            updated = await peer.event("session.updated")
            assert updated["session"]["instructions"] == "Hi."
            seen = json.loads(await control.receive() or "{}")
            assert seen["type"] == "session.updated" and seen["event_id"] == updated["event_id"]
            with pytest.raises(EngineRefusal) as unknown:
                await engine.open_channel("/openai/v1/realtime", {"call_id": "rtc_nope"})
            assert (unknown.value.status, unknown.value.code) == (404, "call_id_not_found")
            await engine.calls.hangup(answer.call_id)
            assert await control.receive() is None  # the sideband ends with the call
            await engine.calls.wait_calls(0)
            assert engine.sessions == 0
        finally:
            await peer.close()
