"""``aoai-realtime chat``: an interactive conversation in the terminal.

Text mode (the default): type a line, read the reply as it streams. ``--mic``: talk through the
microphone and hear the reply (the ``sounddevice`` package, extra ``[mic]``), with server VAD,
barge-in (speaking over the assistant stops playback and truncates its item at what was
actually played) or ``--push-to-talk``. Both show the two transcripts, function calls with their
arguments and results, and each turn's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from ..protocol import events as ev
from ..protocol.session import SessionConfig, Transcription, TurnDetection
from . import _common as common

EPILOG = (
    """\
examples:
  aoai-realtime chat                          type to the assistant, read its replies
  aoai-realtime chat --tools                  with the demo tools (current_time,
                                              convert_units): "what time is it in Tokyo?"
  aoai-realtime chat --mic                    talk and listen (headphones avoid echo)
  aoai-realtime chat --mic --push-to-talk     press Enter to start talking, Enter to send
  aoai-realtime chat --record chat.jsonl      keep every event, for `aoai-realtime replay`
  aoai-realtime chat --url ws://127.0.0.1:8787/realtime    through a running `serve`

while chatting:
  /help               this list
  /voice NAME         change the assistant's voice (alloy, ash, ballad, coral, echo, sage,
                      shimmer, verse; GA adds marin, cedar) before it has spoken
  /instructions TEXT  change the system instructions
  /clear              forget the conversation so far (deletes its items)
  /quit               leave (also Ctrl-D or Ctrl-C)

--mic needs `pip install 'aoai-realtime[mic]'` and a microphone and speakers. Barge-in: speak
while the assistant talks; playback stops and the assistant's item is truncated at the
milliseconds you heard. Each turn shows its latency: end of your turn to the first reply.

"""
    + common.ENV_HELP
)

CHAT_COMMANDS = "/help  /voice NAME  /instructions TEXT  /clear  /quit"


class MicUnavailable(common.CommandError):
    """``--mic`` cannot work here (no package, no PortAudio, no device)."""


# --------------------------------------------------------------------------------------------
# Tools


def demo_tools() -> list[Any]:
    """The middle tier's demo tools (``current_time``, ``convert_units``) as SDK tools."""
    from ..server.tools import demo_tools as server_demo_tools
    from ..tools import Tool

    return [t if isinstance(t, Tool) else Tool.from_function(t) for t in server_demo_tools()]


# --------------------------------------------------------------------------------------------
# The view: everything the conversation shows


class View:
    """Renders server events as lines: transcripts stream in place, everything else gets a line.

    Runs on the event loop only. ``wait_response(rid)`` lets the input loop wait until the
    view has shown the end of a response before it prints the next prompt.
    """

    def __init__(self, out: IO[str], *, color: bool, mic: bool) -> None:
        self.out = out
        self.color = color
        self.mic = mic
        self.midline = False
        self.speaker: str | None = None
        self.call_names: dict[str, str] = {}
        self.turn_started: float | None = None
        self.first_reply: float | None = None
        self.shown_responses: set[str] = set()
        self._response_waiters: dict[str, asyncio.Event] = {}
        self.on_audio: Callable[[str, bytes], None] | None = None
        self.on_speech_started: Callable[[], None] | None = None

    # ---------------------------------------------------------------- writing

    def style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str) -> None:
        """A line of its own (ends a streaming line first)."""
        if self.midline:
            self.write("\n")
            self.midline = False
            self.speaker = None
        self.write(text + "\n")

    def note(self, text: str) -> None:
        self.line(self.style(text, "2"))

    def _stream(self, who: str, delta: str) -> None:
        if self.speaker != who:
            if self.midline:
                self.write("\n")
            label = "assistant> " if who == "assistant" else "you> "
            self.write(self.style(label, "1;36" if who == "assistant" else "1;33"))
            self.speaker = who
        self.write(delta)
        self.midline = True

    # ---------------------------------------------------------------- turns

    def begin_turn(self) -> None:
        self.turn_started = time.monotonic()
        self.first_reply = None

    def _mark_first(self) -> None:
        if self.first_reply is None and self.turn_started is not None:
            self.first_reply = time.monotonic()

    def _stats(self, response: ev.Response) -> None:
        parts: list[str] = []
        status = response.status or "completed"
        if status != "completed":
            reason = response.status_details.reason if response.status_details else None
            parts.append(f"{status}" + (f": {reason}" if reason else ""))
        if self.turn_started is not None:
            now = time.monotonic()
            if self.first_reply is not None:
                what = "first audio" if self.mic else "first reply"
                parts.append(f"{what} {(self.first_reply - self.turn_started) * 1000:.0f} ms")
            parts.append(f"turn {(now - self.turn_started) * 1000:.0f} ms")
        if parts:
            self.note("  [" + ", ".join(parts) + "]")

    async def wait_response(self, response_id: str, timeout: float = 10.0) -> None:
        """Until the view has shown the end of ``response_id`` (at most ``timeout`` s)."""
        if response_id in self.shown_responses:
            return
        event = self._response_waiters.setdefault(response_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ---------------------------------------------------------------- events

    def show(self, e: ev.ServerEvent) -> None:
        if isinstance(e, ev.SpeechStarted):
            if self.on_speech_started is not None:
                self.on_speech_started()
            self.note("  (listening...)")
        elif isinstance(e, ev.SpeechStopped):
            self.begin_turn()
        elif isinstance(e, ev.TranscriptionCompleted):
            if e.transcript.strip():
                self.line(self.style("you> ", "1;33") + e.transcript.strip())
        elif isinstance(e, ev.TranscriptionFailed):
            self.note(f"you> (not understood: {e.error.message})")
        elif isinstance(e, (ev.OutputTextDelta, ev.OutputAudioTranscriptDelta)):
            if not self.mic:
                self._mark_first()
            self._stream("assistant", e.delta)
        elif isinstance(e, ev.OutputAudioDelta):
            self._mark_first()
            if self.on_audio is not None:
                self.on_audio(e.item_id, base64.b64decode(e.delta))
        elif isinstance(e, ev.FunctionCallArgumentsDone):
            name = e.name or "?"
            self.call_names[e.call_id] = name
            self.line(self.style(f"  -> {name}({e.arguments})", "35"))
        elif isinstance(e, (ev.ConversationItemAdded, ev.ConversationItemCreated)):
            item = e.item
            if isinstance(item, ev.FunctionCallOutputItem):
                name = self.call_names.get(item.call_id, "tool")
                output = item.output if len(item.output) <= 300 else item.output[:297] + "..."
                self.line(self.style(f"  <- {name}: {output}", "35"))
        elif isinstance(e, ev.ResponseDone):
            rid = e.response.id or ""
            if self.midline:
                self.write("\n")
                self.midline = False
                self.speaker = None
            has_message = any(isinstance(i, ev.MessageItem) for i in e.response.output)
            if has_message or (e.response.status or "completed") != "completed":
                self._stats(e.response)
            self.shown_responses.add(rid)
            waiter = self._response_waiters.pop(rid, None)
            if waiter is not None:
                waiter.set()
        elif isinstance(e, ev.ErrorEvent):
            self.line(self.style(f"error: {e.error.message} ({e.error.code})", "31"))


# --------------------------------------------------------------------------------------------
# Keyboard input


class Lines:
    """Lines typed on stdin, read by a daemon thread (so Ctrl-C and exit never wait for it).
    ``None`` means end of input."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: IO[str] | None = None) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = loop
        self._stream = stream or sys.stdin
        thread = threading.Thread(target=self._read, name="stdin", daemon=True)
        thread.start()

    def _read(self) -> None:
        while True:
            try:
                line = self._stream.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                self._loop.call_soon_threadsafe(self.queue.put_nowait, None)
                return
            self._loop.call_soon_threadsafe(self.queue.put_nowait, line.rstrip("\r\n"))

    async def get(self) -> str | None:
        return await self.queue.get()


# --------------------------------------------------------------------------------------------
# Microphone and speakers


def load_sounddevice() -> Any:
    """Import ``sounddevice`` and check for a microphone and speakers, or say what is missing."""
    try:
        import sounddevice  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise MicUnavailable(
            "--mic needs the sounddevice package, which is not installed: "
            "`pip install 'aoai-realtime[mic]'` (text chat works without it: "
            "`aoai-realtime chat`)"
        ) from None
    except OSError as exc:
        raise MicUnavailable(
            f"--mic needs the PortAudio library ({exc}): install it, e.g. "
            "`sudo apt install libportaudio2` or `brew install portaudio`; text chat works "
            "without it"
        ) from None
    try:
        devices = sounddevice.query_devices()
    except Exception as exc:
        raise MicUnavailable(f"--mic: cannot list the audio devices ({exc})") from None
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    outputs = [d for d in devices if d.get("max_output_channels", 0) > 0]
    if not inputs or not outputs:
        missing = " and ".join(
            w for w, found in (("microphone", inputs), ("speaker", outputs)) if not found
        )
        raise MicUnavailable(
            f"--mic: no {missing} found on this machine (connect one, or check the sound "
            "system with `python -m sounddevice`); text chat works without: "
            "`aoai-realtime chat`"
        )
    return sounddevice


@dataclass
class Player:
    """Assistant audio waiting to be played, and how much of each item has been played.

    The output callback (a PortAudio thread) takes bytes; ``played_ms`` is what actually went
    to the device, which is what a truncation must name.
    """

    buffer: bytearray = field(default_factory=bytearray)
    queue: list[tuple[str, int]] = field(default_factory=list)
    """(item id, bytes of it still in ``buffer``), in order."""
    played: dict[str, int] = field(default_factory=dict)
    """Item id -> bytes played."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def feed(self, item_id: str, pcm: bytes) -> None:
        with self.lock:
            self.buffer += pcm
            if self.queue and self.queue[-1][0] == item_id:
                self.queue[-1] = (item_id, self.queue[-1][1] + len(pcm))
            else:
                self.queue.append((item_id, len(pcm)))

    def take(self, n: int) -> bytes:
        with self.lock:
            out = bytes(self.buffer[:n])
            del self.buffer[:n]
            left = len(out)
            while left and self.queue:
                item_id, size = self.queue[0]
                used = min(size, left)
                self.played[item_id] = self.played.get(item_id, 0) + used
                left -= used
                if used == size:
                    self.queue.pop(0)
                else:
                    self.queue[0] = (item_id, size - used)
        return out + b"\x00" * (n - len(out))

    @property
    def playing(self) -> str | None:
        """The item being played, if any."""
        with self.lock:
            return self.queue[0][0] if self.queue else None

    def stop(self) -> tuple[str | None, int]:
        """Drop everything not yet played; return the item that was playing and its played ms."""
        with self.lock:
            item_id = self.queue[0][0] if self.queue else None
            self.buffer.clear()
            self.queue.clear()
            played = self.played.get(item_id, 0) if item_id else 0
        return item_id, played // 48


class Audio:
    """The microphone (to the client) and the speakers (from the view), at 24 kHz mono PCM16."""

    BLOCK_MS = 20

    def __init__(self, sd: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.sd = sd
        self.loop = loop
        self.player = Player()
        self.mic_queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)
        self.capturing = True
        self.in_rate = 24000
        self._in: Any = None
        self._out: Any = None
        self._resample_out: Any = None

    def start(self) -> None:
        sd = self.sd

        def on_input(data: Any, frames: int, t: Any, status: Any) -> None:
            if self.capturing:
                self.loop.call_soon_threadsafe(self._put_mic, bytes(data))

        def on_output(out: Any, frames: int, t: Any, status: Any) -> None:
            out[:] = self.player.take(len(out))

        def stream(kind: Any, rate: int, callback: Any) -> Any:
            """A mono PCM16 stream at ``rate`` in blocks of ``BLOCK_MS``."""
            return kind(
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=rate * self.BLOCK_MS // 1000,
                callback=callback,
            )

        try:
            self._in = stream(sd.RawInputStream, 24000, on_input)
        except Exception:  # the microphone's own rate, resampled by the client
            self.in_rate = int(sd.query_devices(kind="input")["default_samplerate"])
            self._in = stream(sd.RawInputStream, self.in_rate, on_input)
        try:
            self._out = stream(sd.RawOutputStream, 24000, on_output)
        except Exception as exc:
            raise MicUnavailable(f"--mic: the speakers do not play 24 kHz audio ({exc})") from exc
        self._in.start()
        self._out.start()

    def _put_mic(self, data: bytes) -> None:
        if self.mic_queue.full():
            self.mic_queue.get_nowait()
        self.mic_queue.put_nowait(data)

    def close(self) -> None:
        for stream in (self._in, self._out):
            if stream is not None:
                try:
                    stream.stop()
                    stream.close()
                except Exception:
                    pass


# --------------------------------------------------------------------------------------------
# The conversation


class Chat:
    """One chat session: the client, the view, the input loop and (with --mic) the audio."""

    def __init__(self, client: Any, view: View, args: argparse.Namespace) -> None:
        self.client = client
        self.view = view
        self.args = args
        self.audio: Audio | None = None
        self.talking = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.ended = asyncio.Event()
        """Set when the event stream ends: the connection is gone."""
        self.stdin_tty = sys.stdin.isatty()

    # ---------------------------------------------------------------- events

    async def pump_events(self) -> None:
        from ..client import ConnectionClosed

        try:
            async for event in self.client.events():
                self.view.show(event)
        except ConnectionClosed as exc:
            self.view.line(f"connection closed: {exc}")
        finally:
            self.ended.set()

    async def pump_mic(self) -> None:
        assert self.audio is not None
        while True:
            data = await self.audio.mic_queue.get()
            if not self.args.push_to_talk or self.talking:
                await self.client.send_audio(data, sample_rate=self.audio.in_rate)

    # ---------------------------------------------------------------- barge-in

    def on_speech_started(self) -> None:
        if self.audio is not None and self.audio.player.playing:
            # Server VAD (interrupt_response) has cancelled the active response already: a
            # cancel from here could arrive after the next turn's response has started, and
            # cancel that one instead.
            self.tasks.append(asyncio.ensure_future(self.barge_in(cancel=False)))

    async def barge_in(self, *, cancel: bool = True) -> None:
        """Stop playback now; cut the assistant's item at what was played (and, unless the
        service does it, cancel the response still in progress)."""
        from ..client import RealtimeError

        if self.audio is None:
            return
        item_id, played_ms = self.audio.player.stop()
        try:
            if cancel and self.client.conversation.active_response_id:
                await self.client.cancel_response()
            if item_id:
                item = self.client.conversation.item(item_id)
                limit = item.audio_ms if item is not None else played_ms
                await self.client.truncate(item_id, max(0, min(played_ms, limit)))
                item = self.client.conversation.item(item_id)
                heard = item.transcript.strip() if item is not None else ""
                self.view.note(
                    f"  (interrupted: you heard {played_ms} ms"
                    + (f': "{heard}"' if heard else "")
                    + ")"
                )
        except RealtimeError as exc:
            self.view.note(f"  (interruption: {exc})")

    # ---------------------------------------------------------------- input

    async def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        from ..client import RealtimeError

        name, _, rest = line.partition(" ")
        name = name.lower()
        rest = rest.strip()
        try:
            if name in ("/quit", "/exit", "/q"):
                return False
            if name in ("/help", "/?"):
                self.view.note(f"  commands: {CHAT_COMMANDS}")
            elif name == "/voice":
                if not rest:
                    self.view.note("  usage: /voice NAME (e.g. /voice sage)")
                else:
                    await self.client.update_session(voice=rest)
                    self.view.note(f"  (voice: {rest})")
            elif name == "/instructions":
                await self.client.update_session(instructions=rest)
                self.view.note("  (instructions updated)")
            elif name == "/clear":
                ids = list(self.client.conversation.order)
                for item_id in ids:
                    await self.client.delete_item(item_id)
                self.view.note(f"  (conversation cleared: {len(ids)} items deleted)")
            else:
                self.view.note(f"  unknown command {name}; try: {CHAT_COMMANDS}")
        except RealtimeError as exc:
            self.view.line(f"error: {exc}")
        return True

    async def say(self, text: str) -> None:
        """Send a typed message and wait until its whole turn has been shown."""
        from ..client import RealtimeError, ServiceError

        if self.audio is not None and self.audio.player.playing:
            await self.barge_in()
        self.view.begin_turn()
        try:
            stream = await self.client.send_text(text)
            result = await stream.done()
        except ServiceError as exc:
            self.view.line(f"error: {exc}")
            return
        except RealtimeError as exc:  # the connection is gone: pump_events says so, and ends
            try:
                await asyncio.wait_for(self.ended.wait(), 5.0)
            except asyncio.TimeoutError:
                self.view.line(f"error: {exc}")
            return
        for response in result.responses:
            await self.view.wait_response(response.id or "")
        if not result.responses and stream.id:
            await self.view.wait_response(stream.id)

    async def push_to_talk(self) -> None:
        assert self.audio is not None
        if not self.talking:
            if self.audio.player.playing:
                await self.barge_in()
            self.talking = True
            self.view.note("  (talking: press Enter to send)")
            return
        self.talking = False
        self.view.begin_turn()
        try:
            await self.client.commit()
            await self.client.create_response()
        except Exception as exc:
            self.view.line(f"error: {exc}")

    async def next_line(self, lines: Lines) -> str | None:
        """The next typed line; ``None`` at end of input or when the connection is gone."""
        typed = asyncio.ensure_future(lines.get())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({typed, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not typed.done():
            typed.cancel()
            return None
        return typed.result()

    async def input_loop(self, lines: Lines) -> int:
        """Read and act on typed lines; returns the exit status."""
        prompt = "you> " if not self.args.mic else ""
        while True:
            if prompt and not self.ended.is_set():
                self.view.write(self.view.style(prompt, "1;33"))
            line = await self.next_line(lines)
            if line is None:
                self.view.write("\n")
                return 1 if self.ended.is_set() else 0
            text = line.strip()
            if prompt:
                if not self.stdin_tty:  # a terminal echoes what is typed; a pipe does not
                    self.view.write(line + "\n")
                self.view.midline = False
            if text.startswith("/"):
                if not await self.command(text):
                    return 0
                continue
            if not text:
                if self.args.mic and self.args.push_to_talk:
                    await self.push_to_talk()
                continue
            await self.say(text)


def _session(args: argparse.Namespace) -> SessionConfig:
    fields: dict[str, Any] = {}
    if args.mic:
        fields["output_modalities"] = ["audio"]
        fields["transcription"] = Transcription(model=common.TRANSCRIPTION_MODEL)
        fields["turn_detection"] = (
            None
            if args.push_to_talk
            else TurnDetection(type="server_vad", silence_duration_ms=args.silence_ms)
        )
    else:
        fields["output_modalities"] = ["text"]
    fields.update(common.voice_fields(args))
    return SessionConfig(**fields)


async def run_chat(args: argparse.Namespace, progress: common.Progress) -> int:
    from ..client import RealtimeError

    sd = load_sounddevice() if args.mic else None
    settings = common.load_settings()
    out = sys.stdout
    color = out.isatty() and not os.environ.get("NO_COLOR")
    tools = demo_tools() if args.tools else []
    async with common.open_target(args.url, settings, progress) as target:
        recorder = common.open_recorder(args.record, target, "chat")
        try:
            progress.start(f"connecting to {target.label}", transient=True)
            try:
                client = await common.open_client(
                    target, session=_session(args), tools=tools, recorder=recorder
                )
            except (RealtimeError, OSError) as exc:
                progress.stop()
                raise common.connect_failure(exc) from None
            progress.stop()
            view = View(out, color=color, mic=bool(args.mic))
            chat = Chat(client, view, args)
            loop = asyncio.get_running_loop()
            mode = "text"
            if sd is not None:
                chat.audio = Audio(sd, loop)
                try:
                    chat.audio.start()
                except MicUnavailable:
                    raise
                except Exception as exc:
                    raise MicUnavailable(f"--mic: cannot open the audio devices ({exc})") from exc
                view.on_audio = chat.audio.player.feed
                view.on_speech_started = chat.on_speech_started
                mode = "push-to-talk (Enter to talk)" if args.push_to_talk else "microphone"
            tool_names = ", ".join(t.name for t in tools)
            view.note(
                f"chatting with {target.label} ({mode}"
                + (f"; tools: {tool_names}" if tools else "")
                + f"). {CHAT_COMMANDS}"
            )
            if args.mic and not args.push_to_talk:
                view.note(
                    "  speak when ready; use headphones so the assistant does not hear itself"
                )
            chat.tasks.append(asyncio.ensure_future(chat.pump_events()))
            if chat.audio is not None:
                chat.tasks.append(asyncio.ensure_future(chat.pump_mic()))
            try:
                status = await chat.input_loop(Lines(loop))
            except RealtimeError as exc:
                view.line(f"error: {exc}")
                return 1
            finally:
                if chat.audio is not None:
                    chat.audio.close()
                await client.close()
                for task in chat.tasks:
                    task.cancel()
                await asyncio.gather(*chat.tasks, return_exceptions=True)
        finally:
            if recorder is not None:
                recorder.close()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aoai-realtime chat",
        description="An interactive conversation in the terminal: type (default) or talk "
        "(--mic), with live transcripts, function calls and per-turn latency.",
        epilog=EPILOG,
        formatter_class=common.HelpFormatter,
    )
    parser.add_argument(
        "--mic", action="store_true", help="talk and listen (needs the [mic] extra and devices)"
    )
    parser.add_argument(
        "--push-to-talk",
        action="store_true",
        help="with --mic: press Enter to start talking and Enter again to send (no VAD)",
    )
    parser.add_argument(
        "--silence-ms",
        type=int,
        default=500,
        metavar="MS",
        help="with --mic: silence that ends your turn (server VAD; default: 500)",
    )
    parser.add_argument(
        "--tools",
        action="store_true",
        help="give the assistant the demo tools: current_time and convert_units",
    )
    common.add_voice_arguments(parser)
    common.add_record_argument(parser)
    common.add_target_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.push_to_talk and not args.mic:
        parser.error("--push-to-talk goes with --mic")
    progress = common.Progress()
    try:
        status: int = common.run(run_chat(args, progress))
    except common.CommandError as exc:
        progress.stop()
        common.err("chat", exc.message)
        return exc.status
    return status
