"""WebRTC (aiortc) in front of the engine's session: one :class:`Call` per ``POST .../calls``.

A call is served by a :class:`~aoai_realtime.engine.server.Connection` like a WebSocket's, with
the same :class:`~aoai_realtime.engine.session.RealtimeSession`, writer, faults and expiry; only
its channel differs, a :class:`CallChannel`:

* **in**: the peer's Opus track, decoded by aiortc, resampled to PCM16 24 kHz mono and handed to
  the session as ``input_audio_buffer.append`` frames, in order with the client events of the
  ``oai-events`` data channel and of every sideband WebSocket (one queue, one reader);
* **out**: every server event goes to the data channel (held until it opens) and to every
  sideband, except ``response.output_audio.delta``: that audio goes to a
  :class:`~aoai_realtime.engine.playout.Playout` played in real time on the call's own audio
  track (20 ms frames), which sends ``output_audio_buffer.started`` / ``.stopped`` /
  ``.cleared``. The client's ``output_audio_buffer.clear``, and speech starting while audio
  plays (unless ``interrupt_response`` is off), cut the playout and truncate the item at what
  was played, through the session's own ``conversation.item.truncate``.

A call ends (everything stopped: peer connection, tracks, tasks, the session, sideband sockets)
when its channel closes: hangup, the peer's connection failing or closing, its data channel
closing, no ICE/DTLS within ``call_connect_timeout_s``, no audio from it for
``call_media_timeout_s``, session expiry or a fault, or the engine shutting down.

This module needs aiortc (the ``[webrtc]`` extra); :mod:`aoai_realtime.engine.calls` imports it
when a call is made, and hands it what it needs of the engine (it imports neither the server
nor the registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from ..audio import (
    Resampler,
    b64decode_audio,
    b64encode_audio,
    decode_from_format,
    encode_for_format,
)
from ..channel import Channel, ChannelClosed
from ..protocol import events as ev
from ..protocol.errors import ProtocolError
from .playout import FRAME_MS, Cut, Playout
from .sdp import OfferSummary
from .session import RealtimeSession
from .wire import Wire

log = logging.getLogger(__name__)

__all__ = ["DATA_CHANNEL_LABEL", "Call", "CallChannel", "SessionHost", "open_call"]

DATA_CHANNEL_LABEL = "oai-events"
SAMPLE_RATE = 24000
APPEND_MS = 40
"""Input audio goes to the session in appends of this length (two Opus frames)."""
MAX_PENDING_APPENDS = 125
"""Appends (5 s of audio) that may wait for a busy session before new audio is dropped."""
_DELTA = '"response.output_audio.delta"'
_DONE = '"response.done"'
_SPEECH_STARTED = '"input_audio_buffer.speech_started"'
_CLEAR = '"output_audio_buffer.clear"'


class SessionHost(Protocol):
    """What a call needs of its connection (a :class:`~aoai_realtime.engine.server.Connection`)."""

    session: RealtimeSession
    wire: Wire

    async def preset(self, session: Mapping[str, Any]) -> None: ...


def _kind_is(text: str, quoted_type: str) -> bool:
    """Whether an encoded event is of a type (its ``type`` comes first: a cheap look)."""
    return quoted_type in text[:80] and json.loads(text).get("type") == quoted_type.strip('"')


class CallChannel:
    """The :class:`~aoai_realtime.channel.Channel` of a call's connection (see the module
    documentation): frames in from the peer's audio, its data channel and the sidebands; events
    out to the data channel, the sidebands and the playout. Closing it ends the call."""

    def __init__(self, *, data_channel_expected: bool, sends_audio: bool = True) -> None:
        self._inbox: deque[tuple[str, bool]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._appends = 0
        self._dropped_warned = False
        self._dc: RTCDataChannel | None = None
        self._dc_pending: list[str] | None = [] if data_channel_expected else None
        self.sidebands: set[Channel] = set()
        self.ended = asyncio.Event()
        self._close_code: int | None = None
        self._close_reason = ""
        self.playout = Playout(self._emit)
        self.sends_audio = sends_audio
        """Whether the peer receives audio (its offer is not ``sendonly``)."""
        self._host: SessionHost | None = None
        self._out_resamplers: dict[str, Resampler] = {}

    def bind(self, host: SessionHost) -> None:
        """The connection whose session this channel serves."""
        self._host = host

    @property
    def host(self) -> SessionHost:
        assert self._host is not None, "CallChannel.bind() first"
        return self._host

    # ------------------------------------------------------------------ in

    def feed(self, text: str, *, audio: bool = False) -> None:
        """Queue one client frame for the session (``audio``: an append made from the track;
        those are dropped while the session is ``MAX_PENDING_APPENDS`` behind)."""
        if self.ended.is_set():
            return
        if audio:
            if self._appends >= MAX_PENDING_APPENDS:
                if not self._dropped_warned:
                    self._dropped_warned = True
                    log.warning("a call's session is behind: dropping the peer's audio")
                return
            self._appends += 1
        self._inbox.append((text, audio))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def receive(self) -> str | None:
        while True:
            if self.ended.is_set():
                return None
            if not self._inbox:
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
                continue
            text, audio = self._inbox.popleft()
            if audio:
                self._appends -= 1
            elif _CLEAR in text[:80] and await self._output_clear(text):
                continue
            return text

    async def _output_clear(self, text: str) -> bool:
        """``output_audio_buffer.clear`` (WebRTC only): stop the response, cut the playout,
        truncate at what was played. False for a frame that is not one (the session reports
        what is wrong with it)."""
        try:
            decoded = self.host.wire.decode(text)
        except ProtocolError:
            return False
        if not isinstance(decoded.event, ev.OutputAudioBufferClear):
            return False
        active = self.host.session.active
        if active is not None and active.active:
            await self._apply({"type": "response.cancel"})
        await self._truncate(self.playout.clear())
        return True

    # ------------------------------------------------------------------ out

    def open_data_channel(self, channel: RTCDataChannel) -> None:
        """The peer's ``oai-events`` channel is open: send what waited for it, then the rest."""
        self._dc = channel
        pending, self._dc_pending = self._dc_pending or [], None
        for text in pending:
            channel.send(text)

    async def send(self, text: str) -> None:
        if self.ended.is_set():
            raise ChannelClosed("the call has ended")
        if _DELTA in text[:80]:
            event = json.loads(text)
            if event.get("type") == "response.output_audio.delta":
                self._play(event)  # heard on the track, not sent: as the service does
                return
        dc = self._dc
        if dc is not None and dc.readyState == "open":
            dc.send(text)
        elif self._dc_pending is not None:
            self._dc_pending.append(text)
        for sideband in list(self.sidebands):
            try:
                await sideband.send(text)
            except ChannelClosed:
                self.sidebands.discard(sideband)
        if _kind_is(text, _DONE):
            response = json.loads(text).get("response") or {}
            self.playout.response_done(str(response.get("id")))
            for item in response.get("output") or []:
                self._out_resamplers.pop(str(item.get("id")), None)
        elif _kind_is(text, _SPEECH_STARTED):
            self._barge_in()

    def _play(self, event: dict[str, Any]) -> None:
        if not self.sends_audio:
            return
        try:
            data = b64decode_audio(str(event.get("delta") or ""))
        except ValueError:
            return
        item_id = str(event.get("item_id"))
        fmt = self.host.session.config.output_format or "pcm16"
        resampler = None
        if fmt != "pcm16":
            resampler = self._out_resamplers.get(item_id)
            if resampler is None:
                resampler = self._out_resamplers[item_id] = Resampler(8000, SAMPLE_RATE)
        pcm = decode_from_format(data, fmt, resampler)
        self.playout.push(
            str(event.get("response_id")), item_id, int(event.get("content_index") or 0), pcm
        )

    def _barge_in(self) -> None:
        """The user speaks while audio plays: cut it (the session cancels the response)."""
        td = self.host.session.config.turn_detection
        if self.playout.playing is None or (td is not None and td.interrupt_response is False):
            return
        cuts = self.playout.clear()
        self.host.session.spawn(self._truncate(cuts), "webrtc barge-in truncate")

    def _emit(self, event: dict[str, Any]) -> None:
        self.host.session.emit(event)

    async def _truncate(self, cuts: list[Cut]) -> None:
        for cut in cuts:
            await self._apply(
                {
                    "type": "conversation.item.truncate",
                    "item_id": cut.item_id,
                    "content_index": cut.content_index,
                    "audio_end_ms": cut.played_ms,
                }
            )

    async def _apply(self, event: dict[str, Any]) -> None:
        """Apply an event the server makes for itself, through the session's own path."""
        try:
            await self.host.session.handle(self.host.wire.decode(json.dumps(event)))
        except ProtocolError as exc:  # e.g. the item was deleted meanwhile
            log.debug("the call's own %s was refused: %s", event["type"], exc)

    # ------------------------------------------------------------------ closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.end(reason, code)

    def end(self, reason: str, code: int = 1000) -> None:
        """End the call (idempotent; the first reason is kept)."""
        if self.ended.is_set():
            return
        self._close_code = code
        self._close_reason = reason
        self.ended.set()
        self._inbox.clear()
        self._dc_pending = None
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason


class SessionAudioTrack(MediaStreamTrack):
    """The call's outgoing audio: 20 ms frames of its playout, paced in real time."""

    kind = "audio"

    def __init__(self, playout: Playout) -> None:
        super().__init__()
        self.playout = playout
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        samples = SAMPLE_RATE * FRAME_MS // 1000
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += samples
            wait = self._start + self._pts / SAMPLE_RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # far behind (the loop was busy): do not burst to catch up
                self._start -= wait
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(self.playout.next_frame())
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class Call:
    """One WebRTC call: its peer connection, its connection's channel, its sidebands.

    ``serve`` runs the call's connection to its end (the engine's ``serve``, which counts it).
    """

    def __init__(
        self,
        call_id: str,
        host: SessionHost,
        channel: CallChannel,
        pc: RTCPeerConnection,
        offer: OfferSummary,
        *,
        serve: Callable[[], Awaitable[None]],
        connect_timeout_s: float,
        media_timeout_s: float,
    ) -> None:
        self.id = call_id
        self.host = host
        self.channel = channel
        self.pc = pc
        self.offer = offer
        self._serve = serve
        self.connect_timeout_s = connect_timeout_s
        self.media_timeout_s = media_timeout_s
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        """Set once everything of the call has stopped."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sideband_tasks: set[asyncio.Task[Any]] = set()
        self._pumping = False
        self.track = SessionAudioTrack(channel.playout)

    @property
    def session(self) -> RealtimeSession:
        """The call's session (the engine's one implementation, as over a WebSocket)."""
        return self.host.session

    @property
    def end_reason(self) -> str:
        return self.channel.close_reason

    def end(self, reason: str, code: int = 1000) -> None:
        """End the call; :attr:`ended` is set once everything has stopped."""
        if not self.channel.ended.is_set():
            log.info("call %s ends: %s", self.id, reason)
        self.channel.end(reason, code)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ the peer

    def wire_peer(self) -> None:
        """Listen to the peer connection (before the offer is applied: tracks come then)."""
        pc = self.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                self.connected.set()
            elif state in ("failed", "closed"):
                self.end(f"the peer connection is {state}")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not self._pumping:
                self._pumping = True
                self._spawn(self._pump(track), f"webrtc input {self.id}")

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != DATA_CHANNEL_LABEL:
                log.info("call %s: ignoring data channel %r", self.id, channel.label)
                return

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self.channel.feed(text)

            @channel.on("close")
            def on_close() -> None:
                self.end("the peer closed its data channel")

            if channel.readyState == "open":
                self.channel.open_data_channel(channel)
            else:
                channel.on("open", lambda: self.channel.open_data_channel(channel))

    async def _watch_connect(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.connect_timeout_s)
        except asyncio.TimeoutError:
            self.end(
                f"the peer did not connect (ICE and DTLS did not complete within "
                f"{self.connect_timeout_s:g} s)"
            )

    async def _pump(self, track: MediaStreamTrack) -> None:
        """The peer's audio into the session, as 40 ms appends in its input format."""
        await self.connected.wait()
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        step = APPEND_MS * SAMPLE_RATE // 1000 * 2
        pending = b""
        encoder: Resampler | None = None
        fmt_seen = "pcm16"
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), self.media_timeout_s)
            except asyncio.TimeoutError:
                self.end(f"no audio from the peer for {self.media_timeout_s:g} s: it has gone")
                return
            except MediaStreamError:
                self.end("the peer's audio track ended")
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            for out in resampler.resample(frame):
                pending += out.to_ndarray().tobytes()
            while len(pending) >= step:
                pcm, pending = pending[:step], pending[step:]
                fmt = self.session.config.input_format or "pcm16"
                if fmt != fmt_seen:
                    fmt_seen = fmt
                    encoder = None if fmt == "pcm16" else Resampler(SAMPLE_RATE, 8000)
                data = encode_for_format(pcm, fmt, encoder)
                frame_text = json.dumps(
                    {"type": "input_audio_buffer.append", "audio": b64encode_audio(data)}
                )
                self.channel.feed(frame_text, audio=True)

    # ------------------------------------------------------------------ sidebands

    async def serve_sideband(self, channel: Channel) -> None:
        """Run one sideband until it or the call ends: its frames go to the session, the
        call's events to it."""
        if self.channel.ended.is_set():
            await channel.close(1000, "the call has ended")
            return
        self.channel.sidebands.add(channel)
        task = asyncio.current_task()
        if task is not None:
            self._sideband_tasks.add(task)
        try:
            while (text := await channel.receive()) is not None:
                self.channel.feed(text)
        finally:
            self.channel.sidebands.discard(channel)
            if task is not None:
                self._sideband_tasks.discard(task)
            await channel.close(1000, self.channel.close_reason[:120] or "sideband closed")

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        """Serve the call's connection to its end, then stop everything else."""
        self._spawn(self._watch_connect(), f"webrtc connect deadline {self.id}")
        try:
            await self._serve()
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        self.channel.end("the call ended")
        reason = self.channel.close_reason[:120]
        for task in list(self._tasks):
            task.cancel()
        for sideband in list(self.channel.sidebands):
            await sideband.close(1000, reason)
        self.channel.sidebands.clear()
        self.track.stop()
        try:
            await asyncio.wait_for(self.pc.close(), 5.0)
        except Exception:  # noqa: BLE001 - the call is going away
            log.debug("closing call %s's peer connection failed", self.id, exc_info=True)
        waiting = list(self._tasks) + list(self._sideband_tasks)
        if waiting:
            await asyncio.wait(waiting, timeout=5.0)
        self.ended.set()


async def open_call(
    call_id: str,
    make_host: Callable[[CallChannel], SessionHost],
    offer_sdp: str,
    offer: OfferSummary,
    presets: list[Mapping[str, Any]],
    *,
    serve: Callable[[SessionHost], Awaitable[None]],
    close_session: Callable[[SessionHost], Awaitable[None]],
    connect_timeout_s: float,
    media_timeout_s: float,
) -> tuple[Call, str]:
    """Make the call for a checked offer: its connection (``make_host``, with ``presets``
    applied in order), its peer connection and the SDP answer. Raises ``ProtocolError`` for a
    preset the session refuses and ``ValueError`` for an offer aiortc cannot apply; nothing is
    left running then (``close_session`` closes the connection's session). The call is not
    started: the caller registers it and runs :meth:`Call.run`."""
    channel = CallChannel(
        data_channel_expected=offer.data_channel,
        sends_audio=offer.audio_direction in ("sendrecv", "recvonly"),
    )
    host = make_host(channel)
    channel.bind(host)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def run_host() -> None:
        await serve(host)

    call = Call(
        call_id,
        host,
        channel,
        pc,
        offer,
        serve=run_host,
        connect_timeout_s=connect_timeout_s,
        media_timeout_s=media_timeout_s,
    )
    try:
        for preset in presets:
            await host.preset(preset)
        call.wire_peer()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc asserts: a malformed line, an unknown codec...
            detail = str(exc) or type(exc).__name__
            raise ValueError(f"the WebRTC stack could not apply it ({detail})") from exc
        if channel.sends_audio:
            pc.addTrack(call.track)
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        await close_session(host)
        call.track.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), 5.0)
        raise
    return call, pc.localDescription.sdp
