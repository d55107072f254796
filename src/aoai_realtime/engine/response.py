"""One response: the brain's stream turned into the service's event sequence, speech included.

The sequence follows the service: ``response.created``; per output item
``response.output_item.added``, ``conversation.item.added`` (unless out of band),
``response.content_part.added``, the deltas (``output_audio_transcript.delta`` and
``output_audio.delta``, or ``output_text.delta``), their ``.done`` events,
``response.content_part.done``, ``response.output_item.done``, ``conversation.item.done``;
function calls as ``function_call`` items with ``response.function_call_arguments.delta/done``;
then ``response.done`` with usage, and ``rate_limits.updated``.

A call of a tool that an ``mcp`` server listed (see :mod:`~aoai_realtime.engine.mcp`) is run
here instead: an ``mcp_call`` item with ``response.mcp_call_arguments.delta/done``,
``response.mcp_call.in_progress`` and ``.completed`` (or ``.failed``), after which the brain is
asked again with the result and the response goes on; or, when the call needs approval, an
``mcp_approval_request`` item that ends the response. A response that follows an approval runs
the approved calls first.

Speech is pipelined (see :mod:`~aoai_realtime.engine.generation`): each piece of the reply is
synthesized as soon as it is complete, while the brain writes the next, and its audio goes out
in ~100 ms deltas after the transcript delta of that piece. A response is an asyncio task:
cancelling it (``response.cancel``, barge-in) stops the brain and the speech at once and closes
the response with the items as far as they got.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from ..audio import Resampler, alaw_encode, b64encode_audio, ulaw_encode
from . import ids
from .brains import (
    Brain,
    BrainFinish,
    BrainRequest,
    FunctionCall,
    TextDelta,
    estimate_tokens,
)
from .generation import Generation, Spoken
from .mcp import (
    MAX_MCP_CALLS,
    MCP_ITEM_TYPES,
    McpCallError,
    McpTools,
    OfferedTool,
    approved_requests,
    brain_history,
    is_mcp,
)
from .plan import ResponsePlan, brain_request
from .store import ItemStore, Segment, StoredItem
from .workers import SharedSpeech

log = logging.getLogger(__name__)

CHUNK_MS = 100
"""Audio deltas carry about this much audio."""

OUTPUT_AUDIO_TOKENS_PER_S = 20
INPUT_AUDIO_TOKENS_PER_S = 10
"""How audio is counted in ``usage`` (the service's own rates are not published)."""

SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! "
    "You can retry your request, or contact us if the error persists."
)

_GA_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_BYTES_PER_MS = {"pcm16": 48, "g711_ulaw": 8, "g711_alaw": 8}


class InjectedServerError(Exception):
    """The ``server_error`` fault: the response fails as if the service had failed."""


ClaimReply = Callable[[BrainRequest, bool, str, float], Union[Generation, None]]
"""``claim(request, audio, voice, speed)``: a reply prepared during the pause, if it answers
exactly this request (else ``None``)."""


@dataclass
class ResponseContext:
    """What a response needs from its session, handed over when it starts.

    A response reaches nothing else of its session: it emits through ``emit``, adds its items to
    ``store``, asks ``brain`` (speaking with ``speech``), and reports its end to ``on_done``.
    """

    emit: Callable[[dict[str, Any]], None]
    conversation_id: str
    store: ItemStore
    brain: Brain
    speech: SharedSpeech | None
    input_end_ms: Callable[[], float]
    """Where the session's input audio ends now (read when the first audio delta goes out)."""
    claim_reply: ClaimReply | None = None
    """Where to look for a reply prepared during the pause (``None``: never, e.g. out of band)."""
    fail: bool = False
    """The ``server_error`` fault: this response fails instead of answering."""
    on_done: Callable[[ResponseRun], None] | None = None
    """Called once, after ``response.done`` has been emitted."""
    mcp: McpTools | None = None
    """The session's MCP servers (``None``: ``mcp`` tools are not run)."""


@dataclass
class _OpenMessage:
    """The assistant message being produced."""

    item: StoredItem
    output_index: int
    text: str = ""  # text modality: the text so far; audio: the transcript so far
    resampler: Resampler | None = None
    audio_done: bool = False


class ResponseRun:
    """One response of a session, run as a task (see the module documentation)."""

    def __init__(self, context: ResponseContext, plan: ResponsePlan) -> None:
        self.context = context
        self.plan = plan
        self.id = ids.response_id()
        self.status = "in_progress"
        self.status_details: dict[str, Any] | None = None
        self.output: list[StoredItem] = []
        self.usage: dict[str, Any] | None = None
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._open: _OpenMessage | None = None
        self._generation: Generation | None = None
        self._finish = BrainFinish()
        self._input_audio_ms = 0.0
        self.audio_started_at_ms: float | None = None
        """The end of the session's input audio when the first audio delta went out."""
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"response {self.id}")

    def cancel(self, reason: str) -> None:
        """Stop the response; it ends with status ``cancelled`` and this reason."""
        if self.status == "in_progress" and self.cancel_reason is None and self.task is not None:
            self.cancel_reason = reason
            self.task.cancel()

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    # ------------------------------------------------------------------ events

    def _emit(self, event: dict[str, Any]) -> None:
        self.context.emit(event)

    def response_object(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": self.status_details,
            "output": [item.wire() for item in self.output],
            "conversation_id": None if plan.out_of_band else self.context.conversation_id,
            "output_modalities": plan.output_modalities,
            "max_output_tokens": plan.max_output_tokens
            if plan.max_output_tokens is not None
            else "inf",
            "audio": {
                "output": {"format": dict(_GA_FORMATS[plan.output_format]), "voice": plan.voice}
            },
            "usage": self.usage,
            "metadata": plan.metadata,
        }

    # ------------------------------------------------------------------ the run

    async def _run(self) -> None:
        self._t0 = time.perf_counter()
        self._emit({"type": "response.created", "response": self.response_object()})
        try:
            await self._generate()
            if self._finish.reason == "length":
                self.status = "incomplete"
                self.status_details = {"type": "incomplete", "reason": "max_output_tokens"}
            else:
                self.status = "completed"
        except asyncio.CancelledError:
            if self.cancel_reason is None:  # the session is closing: nobody to tell
                self.status = "cancelled"
                self._stop_generation()
                raise
            self.status = "cancelled"
            self.status_details = {"type": "cancelled", "reason": self.cancel_reason}
        except Exception as exc:  # noqa: BLE001 - any failure fails the response, not the session
            if not isinstance(exc, InjectedServerError):
                log.exception("response %s failed", self.id)
            error = {
                "type": "server_error",
                "code": "server_error",
                "message": SERVER_ERROR_MESSAGE
                if isinstance(exc, InjectedServerError)
                else f"{SERVER_ERROR_MESSAGE} ({exc})",
                "param": None,
                "event_id": None,
            }
            self._emit({"type": "error", "error": error})
            self.status = "failed"
            self.status_details = {"type": "failed", "error": error}
        self._stop_generation()
        self._close_open_message(self.status == "completed")
        self.usage = self._usage()
        self._emit({"type": "response.done", "response": self.response_object()})
        if self.context.on_done is not None:
            self.context.on_done(self)

    def _mark(self, what: str, since: float) -> None:
        log.debug("%s: %s after %.0f ms", self.id, what, (time.perf_counter() - since) * 1000)

    async def _generate(self) -> None:
        ctx = self.context
        context = self.plan.context
        if context is None:
            context = ctx.store.items()
        t0 = time.perf_counter()
        for item in context:  # a spoken turn is heard once its transcription is done
            if item.transcript is not None:
                await asyncio.shield(item.transcript)
            if item.input_audio:
                self._input_audio_ms += len(item.input_audio) / 48
        self._mark("transcripts", t0)
        offered: dict[str, OfferedTool] = {}
        if ctx.mcp is not None:
            if any(is_mcp(t) for t in self.plan.tools):
                reserved = [str(t.get("name")) for t in self.plan.tools if not is_mcp(t)]
                offered = await ctx.mcp.offer(self.plan.tools, reserved)
            for request in approved_requests(context):
                await self._run_approved(request, offered)
        calls = 0
        while True:
            history = brain_history(list(context) + self.output)
            ran = await self._think(brain_request(self.plan, history, mcp=offered), offered, t0)
            if ran == 0:
                return
            calls += ran
            if calls >= MAX_MCP_CALLS:
                log.info("%s: %d MCP calls, the response ends there", self.id, calls)
                return

    async def _think(
        self, request: BrainRequest, offered: dict[str, OfferedTool], t0: float
    ) -> int:
        """One pass of the brain; returns how many MCP calls it made (then it is asked again
        with their results), 0 when the response is complete (or waits for an approval)."""
        ctx = self.context
        plan = self.plan
        generation = None
        first = self._generation is None
        if ctx.claim_reply is not None and first:
            generation = ctx.claim_reply(request, plan.audio, plan.voice, plan.speed)
        if ctx.fail:
            if generation is not None:
                generation.cancel()
            raise InjectedServerError()
        if generation is not None:
            self._mark("using the reply prepared during the pause", t0)
        else:
            generation = Generation(
                ctx.brain,
                request,
                ctx.speech,
                audio=plan.audio,
                voice=plan.voice,
                speed=plan.speed,
            ).start()
        self._generation = generation
        ran = 0
        async for event in generation.events():
            if isinstance(event, TextDelta):
                if self._open is None:
                    self._mark("first text", t0)
                msg = self._open or self._open_message()
                msg.text += event.text
                self._emit(self._content_event("response.output_text.delta", msg, delta=event.text))
            elif isinstance(event, Spoken):
                if self._open is None:
                    self._mark(f"first piece ({len(event.text)} chars)", t0)
                await self._speak(self._open or self._open_message(), event)
            elif isinstance(event, FunctionCall):
                if self._open is not None:
                    self._close_open_message(True)
                target = offered.get(event.name)
                if target is None:
                    self._function_call(event)
                elif target.needs_approval:
                    self._approval_request(target, event.arguments)
                    generation.cancel()
                    return 0
                else:
                    await self._mcp_call(target, event.arguments)
                    ran += 1
            elif isinstance(event, BrainFinish):
                self._finish = BrainFinish(
                    event.reason,
                    self._finish.input_tokens + event.input_tokens,
                    self._finish.output_tokens + event.output_tokens,
                )
        if self._open is not None:
            self._close_open_message(True)
        return ran if self._finish.reason == "stop" else 0

    # ------------------------------------------------------------------ message items

    def _add_item(
        self, kind: str, fields: dict[str, Any], bytes_per_ms: int = 48
    ) -> tuple[StoredItem, int]:
        """A new output item, in progress, announced (and put in the conversation unless out of
        band); returns it and its output index."""
        data: dict[str, Any] = {"id": ids.item_id(), "type": kind, **fields}
        if kind not in MCP_ITEM_TYPES:  # openai's MCP items have neither
            data = {"id": data["id"], "object": "realtime.item", "status": "in_progress", **data}
        item = StoredItem(data=data, bytes_per_ms=bytes_per_ms)
        self.output.append(item)
        index = len(self.output) - 1
        self._emit(
            {
                "type": "response.output_item.added",
                "response_id": self.id,
                "output_index": index,
                "item": item.wire(),
            }
        )
        if not self.plan.out_of_band:
            previous = self.context.store.insert(item)
            self._emit(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": previous,
                    "item": item.wire(),
                }
            )
        return item, index

    def _item_done(self, item: StoredItem, index: int) -> None:
        self._emit(
            {
                "type": "response.output_item.done",
                "response_id": self.id,
                "output_index": index,
                "item": item.wire(),
            }
        )
        if not self.plan.out_of_band and item.id in self.context.store:
            self._emit(
                {
                    "type": "conversation.item.done",
                    "previous_item_id": self.context.store.previous_of(item.id),
                    "item": item.wire(),
                }
            )

    def _open_message(self) -> _OpenMessage:
        audio = self.plan.audio
        part: dict[str, Any] = (
            {"type": "output_audio", "transcript": ""}
            if audio
            else {"type": "output_text", "text": ""}
        )
        item, index = self._add_item(
            "message",
            {"role": "assistant", "content": []},
            bytes_per_ms=_BYTES_PER_MS[self.plan.output_format],
        )
        item.data["content"] = [part]
        msg = _OpenMessage(item=item, output_index=index)
        self._open = msg
        self._emit(
            self._content_event(
                "response.content_part.added",
                msg,
                part={"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""},
            )
        )
        if audio and self.plan.output_format != "pcm16":
            msg.resampler = Resampler(24000, 8000)
        return msg

    def _content_event(self, kind: str, msg: _OpenMessage, **fields: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "response_id": self.id,
            "item_id": msg.item.id,
            "output_index": msg.output_index,
            "content_index": 0,
            **fields,
        }

    def _close_open_message(self, complete: bool) -> None:
        msg = self._open
        if msg is None:
            return
        self._open = None
        item = msg.item
        part = item.data["content"][0]
        if self.plan.audio:
            self._flush_audio(msg)
            part["transcript"] = msg.text
            self._emit(self._content_event("response.output_audio.done", msg))
            self._emit(
                self._content_event(
                    "response.output_audio_transcript.done", msg, transcript=msg.text
                )
            )
            done_part = {"type": "audio", "transcript": msg.text}
        else:
            part["text"] = msg.text
            self._emit(self._content_event("response.output_text.done", msg, text=msg.text))
            done_part = {"type": "text", "text": msg.text}
        self._emit(self._content_event("response.content_part.done", msg, part=done_part))
        item.data["status"] = (
            "completed" if complete and self._finish.reason == "stop" else "incomplete"
        )
        self._item_done(item, msg.output_index)

    # ------------------------------------------------------------------ speech

    async def _speak(self, msg: _OpenMessage, spoken: Spoken) -> None:
        """Send one piece: its transcript delta, then its audio in ~100 ms deltas."""
        piece = spoken.text if not msg.text else " " + spoken.text
        msg.text += piece
        start_ms = msg.item.audio_ms
        self._emit(self._content_event("response.output_audio_transcript.delta", msg, delta=piece))
        pending = b""
        step = CHUNK_MS * 48
        async for pcm in spoken.chunks():
            pending += pcm
            while len(pending) >= step:
                self._send_audio(msg, pending[:step])
                pending = pending[step:]
        if pending:
            self._send_audio(msg, pending)
        msg.item.segments.append(Segment(start_ms, msg.item.audio_ms, piece))

    def _send_audio(self, msg: _OpenMessage, pcm16_24k: bytes) -> None:
        fmt = self.plan.output_format
        if fmt == "pcm16":
            data = pcm16_24k
        else:
            assert msg.resampler is not None
            narrow = msg.resampler.process(pcm16_24k)
            data = ulaw_encode(narrow) if fmt == "g711_ulaw" else alaw_encode(narrow)
        if not data:
            return
        if not msg.item.audio_bytes:
            self._mark("first audio", self._t0)
        if self.audio_started_at_ms is None:
            self.audio_started_at_ms = self.context.input_end_ms()
        msg.item.audio_bytes += len(data)
        self._emit(
            self._content_event("response.output_audio.delta", msg, delta=b64encode_audio(data))
        )

    def _flush_audio(self, msg: _OpenMessage) -> None:
        if msg.resampler is not None and not msg.audio_done:
            narrow = msg.resampler.flush()
            if narrow:
                fmt = self.plan.output_format
                data = ulaw_encode(narrow) if fmt == "g711_ulaw" else alaw_encode(narrow)
                msg.item.audio_bytes += len(data)
                self._emit(
                    self._content_event(
                        "response.output_audio.delta", msg, delta=b64encode_audio(data)
                    )
                )
        msg.audio_done = True

    @property
    def audio_ms(self) -> float:
        """Milliseconds of audio this response produced (all its items)."""
        return sum(item.audio_ms for item in self.output)

    def _stop_generation(self) -> None:
        if self._generation is not None:
            self._generation.cancel()

    # ------------------------------------------------------------------ function calls

    def _function_call(self, call: FunctionCall) -> None:
        call_id = call.call_id or ids.call_id()
        item, index = self._add_item(
            "function_call", {"name": call.name, "call_id": call_id, "arguments": ""}
        )
        common = {
            "response_id": self.id,
            "item_id": item.id,
            "output_index": index,
            "call_id": call_id,
        }
        self._emit(
            {"type": "response.function_call_arguments.delta", **common, "delta": call.arguments}
        )
        self._emit(
            {
                "type": "response.function_call_arguments.done",
                **common,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        item.data.update(status="completed", arguments=call.arguments)
        self._item_done(item, index)

    # ------------------------------------------------------------------ MCP calls

    def _approval_request(self, target: OfferedTool, arguments: str) -> None:
        """The call waits for the client: an ``mcp_approval_request`` item (the response
        ends after it)."""
        item, index = self._add_item(
            "mcp_approval_request",
            {"server_label": target.label, "name": target.name, "arguments": arguments},
        )
        self._item_done(item, index)

    async def _run_approved(self, request: StoredItem, offered: dict[str, OfferedTool]) -> None:
        """Run a call the client approved since the last response."""
        label = str(request.data.get("server_label"))
        name = str(request.data.get("name"))
        target = offered.get(name)
        if target is None or target.label != label:
            target = self.context.mcp.find(label, name) if self.context.mcp else None
        await self._mcp_call(
            target,
            str(request.data.get("arguments") or ""),
            approval_request_id=request.id,
            label=label,
            name=name,
        )

    async def _mcp_call(
        self,
        target: OfferedTool | None,
        arguments: str,
        *,
        approval_request_id: str | None = None,
        label: str = "",
        name: str = "",
    ) -> None:
        """One ``mcp_call`` item: its arguments, the call over MCP, its output or error."""
        item, index = self._add_item(
            "mcp_call",
            {
                "server_label": target.label if target else label,
                "name": target.name if target else name,
                "arguments": "",
                "approval_request_id": approval_request_id,
                "output": None,
                "error": None,
            },
        )
        common = {"response_id": self.id, "item_id": item.id, "output_index": index}
        self._emit({"type": "response.mcp_call_arguments.delta", **common, "delta": arguments})
        self._emit({"type": "response.mcp_call_arguments.done", **common, "arguments": arguments})
        item.data["arguments"] = arguments
        progress = {"item_id": item.id, "output_index": index}
        self._emit({"type": "response.mcp_call.in_progress", **progress})
        failed: dict[str, Any] | None = None
        try:
            if target is None or self.context.mcp is None:
                raise McpCallError(
                    {
                        "type": "tool_execution_error",
                        "message": f"MCP server '{label}' with a tool '{name}' is not among "
                        "this response's tools any more.",
                    }
                )
            item.data["output"] = await self.context.mcp.call(target, arguments)
        except McpCallError as exc:
            failed = exc.error
        except asyncio.CancelledError:
            item.data["error"] = {
                "type": "tool_execution_error",
                "message": "The call was cancelled with its response.",
            }
            self._emit({"type": "response.mcp_call.failed", **progress})
            self._item_done(item, index)
            raise
        if failed is not None:
            item.data["error"] = failed
            self._emit({"type": "response.mcp_call.failed", **progress})
        else:
            self._emit({"type": "response.mcp_call.completed", **progress})
        self._item_done(item, index)

    # ------------------------------------------------------------------ usage

    def _usage(self) -> dict[str, Any]:
        text_out = self._finish.output_tokens
        if not text_out:
            text_out = sum(
                estimate_tokens(str(i.history().text or i.data.get("arguments") or ""))
                for i in self.output
            )
        audio_out = sum(
            math.ceil(i.audio_ms * OUTPUT_AUDIO_TOKENS_PER_S / 1000) for i in self.output
        )
        text_in = self._finish.input_tokens
        audio_in = math.ceil(self._input_audio_ms * INPUT_AUDIO_TOKENS_PER_S / 1000)
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }
