"""Brains: what the engine says. Each turns instructions and a conversation into a reply stream.

A :class:`Brain` gets a :class:`BrainRequest` (instructions, the conversation as plain
:class:`HistoryItem` records, tools, limits) and yields :class:`TextDelta`, :class:`FunctionCall`
and finally one :class:`BrainFinish`. The engine turns that stream into realtime events, speech
included, so a brain knows nothing about the protocol or audio.

* :class:`LocalBrain` runs SmolLM2 (from the ``[local]`` extra) on the CPU, offline, and calls
  function tools by scoring (``toolcalls.py``).
* :class:`ChatCompletionsBrain` asks any OpenAI-compatible ``/chat/completions`` URL (a local
  llama.cpp or Ollama server, OpenAI, an Azure OpenAI chat deployment), streaming, with tool
  calls mapped to realtime function calls.
* :class:`~aoai_realtime.engine.scripted.ScriptedBrain` follows a script, for tests.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union
from urllib.parse import urlsplit

import aiohttp

from . import toolcalls
from .speech.llm import DEFAULT_SYSTEM_PROMPT
from .workers import SharedSpeech

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = DEFAULT_SYSTEM_PROMPT
"""Instructions of a session that sets none (shown in ``session.created``): the local model's own
default, whose prompt it caches while loading, so the first turn starts sooner."""


@dataclass
class HistoryItem:
    """One conversation item as a brain sees it: text only (audio arrives as its transcript)."""

    id: str
    type: Literal["message", "function_call", "function_call_output"]
    role: str | None = None
    text: str = ""
    name: str | None = None
    call_id: str | None = None
    arguments: str = ""
    output: str = ""


@dataclass
class BrainRequest:
    """Everything a brain needs for one response."""

    instructions: str
    history: list[HistoryItem]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | None = None
    temperature: float | None = None

    @property
    def tool_names(self) -> list[str]:
        """Names of the function tools the model may call under ``tool_choice``."""
        if self.tool_choice == "none":
            return []
        names = [t.get("name", "") for t in self.tools if t.get("type", "function") == "function"]
        if isinstance(self.tool_choice, dict):
            wanted = self.tool_choice.get("name") or (self.tool_choice.get("function") or {}).get(
                "name"
            )
            return [n for n in names if n == wanted]
        return [n for n in names if n]


@dataclass
class TextDelta:
    text: str


@dataclass
class FunctionCall:
    name: str
    arguments: str
    call_id: str | None = None


@dataclass
class BrainFinish:
    """The end of a reply: why it ended and the tokens it used (0 when the brain cannot tell)."""

    reason: Literal["stop", "length"] = "stop"
    input_tokens: int = 0
    output_tokens: int = 0


BrainEvent = Union[TextDelta, FunctionCall, BrainFinish]


class Brain(Protocol):
    """What the engine needs from a brain.

    A brain may also set ``speculative = True`` when replies may be prepared during a pause
    and thrown away if the user goes on speaking (see ``engine/speculation.py``), and have an
    ``async prefill(request)`` that reads a request ahead of need, its last user turn a
    stand-in (the local brain reads the conversation into its model's cache).
    """

    name: str

    def reply(self, request: BrainRequest) -> AsyncIterator[BrainEvent]:
        """Stream the reply; cancelling the iteration must stop the work."""
        ...

    async def aclose(self) -> None: ...


class BrainError(RuntimeError):
    """A brain could not answer (the response fails with a ``server_error``)."""


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per word or punctuation mark."""
    return len(re.findall(r"\w+|[^\w\s]", text))


# ---------------------------------------------------------------------------- chat messages


def history_window(history: list[HistoryItem], keep: int, step: int) -> list[HistoryItem]:
    """The recent part of a conversation: at least ``keep`` items, at most ``keep + step - 1``.

    The start moves in jumps of ``step`` items, so consecutive turns share the same beginning
    and the local model can reuse its cached prompt instead of reading it all again.
    """
    n = len(history)
    if n < keep + step:
        return history
    return history[((n - keep) // step) * step :]


def chat_messages(
    request: BrainRequest, *, tool_messages: bool, window: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """The request as chat-completions messages.

    With ``tool_messages`` function calls become assistant ``tool_calls`` and their outputs
    ``tool`` messages (for APIs that know tools); without, both become plain text a small model
    can read.
    """
    history = history_window(request.history, *window) if window else request.history
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    known_calls: set[str] = set()
    for item in history:
        if item.type == "message":
            role = item.role if item.role in ("user", "assistant", "system") else "user"
            if not item.text and role != "system":
                continue
            messages.append({"role": role, "content": item.text})
        elif item.type == "function_call":
            if tool_messages:
                call: dict[str, Any] = {
                    "id": item.call_id or item.id,
                    "type": "function",
                    "function": {"name": item.name or "", "arguments": item.arguments or "{}"},
                }
                known_calls.add(call["id"])
                last = messages[-1] if messages else None
                if last and last["role"] == "assistant" and last.get("tool_calls"):
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append(
                    {"role": "assistant", "content": f"(calling {item.name}({item.arguments}))"}
                )
        elif item.type == "function_call_output":
            if tool_messages and item.call_id in known_calls:
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
                )
            else:
                name = next(
                    (
                        h.name
                        for h in history
                        if h.type == "function_call" and h.call_id == item.call_id
                    ),
                    None,
                )
                label = f"{name} returned" if name else "Function result"
                messages.append({"role": "user", "content": f"({label}: {item.output})"})
    return _merge_same_role(messages) if not tool_messages else messages


def _merge_same_role(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive messages of one role: small chat templates expect alternation."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"] and m["role"] != "system":
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{m['content']}"}
        else:
            out.append(dict(m))
    return out


# ---------------------------------------------------------------------------- local brain


class LocalBrain:
    """SmolLM2 135M Instruct on the CPU, shared by every session (one generation at a time).

    With function tools it first decides whether to call one (``engine/toolcalls.py``: the
    tool is chosen by how well its description explains the request, and each argument among
    what the user said that fits it), and after a function's output it states the result. A
    session's
    reply is capped at ``default_max_tokens`` unless the client asks for fewer, and it reads
    the recent conversation only (2 to 17 items, see :func:`history_window`): its start moves
    rarely and then keeps little, so most turns reuse the cached prompt and the others read
    only a short one again.
    """

    name = "local"
    speculative = True

    def __init__(
        self,
        speech: SharedSpeech,
        *,
        default_max_tokens: int = 60,
        history_window: tuple[int, int] = (2, 16),
    ) -> None:
        self.speech = speech
        self.default_max_tokens = default_max_tokens
        self.history_window = history_window

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainEvent]:
        messages = chat_messages(request, tool_messages=False, window=self.history_window)
        call = await self._tool_call(request, messages)
        if call is not None:
            yield call
            yield BrainFinish(
                "stop",
                await self.speech.count_tokens(
                    "\n".join(str(m.get("content") or "") for m in messages)
                ),
                await self.speech.count_tokens(call.arguments),
            )
            return
        options: dict[str, Any] = {}
        answer = _answer_with_results(request)
        if answer is not None:  # say what the functions returned
            request, facts, grammar = answer
            messages = chat_messages(request, tool_messages=False, window=self.history_window)
            at = 1 if messages and messages[0]["role"] == "system" else 0
            messages.insert(at, {"role": "system", "content": facts})  # after the instructions
            options = {"grammar": grammar, "examples": False}
        if len(messages) == 0 or messages[-1]["role"] == "assistant":
            messages.append({"role": "user", "content": "Please continue."})
        limit = self._limit(request)
        temperature = 0.7 if request.temperature is None else request.temperature
        if answer is not None:
            temperature = 0.0  # the facts, said the likeliest way
        text = ""
        started = time.perf_counter()
        first = 0.0
        async for piece in self.speech.stream_reply(messages, limit, temperature, **options):
            if not text:
                first = time.perf_counter() - started
            text += piece
            yield TextDelta(piece)
        output_tokens = await self.speech.count_tokens(text)
        log.debug(
            "local model: %d messages, first text after %.0f ms, %d tokens in %.0f ms",
            len(messages),
            first * 1000,
            output_tokens,
            (time.perf_counter() - started) * 1000,
        )
        input_tokens = await self.speech.count_tokens(
            "\n".join(str(m.get("content") or "") for m in messages)
        )
        input_tokens += 4 * len(messages)
        hit_limit = request.max_output_tokens is not None and output_tokens >= limit
        yield BrainFinish("length" if hit_limit else "stop", input_tokens, output_tokens)

    async def prefill(self, request: BrainRequest) -> None:
        """Read the prompt a reply to ``request`` would read, up to its last user turn (a
        stand-in: the words are still being transcribed), so the reply reads only those."""
        messages = chat_messages(request, tool_messages=False, window=self.history_window)
        await self.speech.prefill(messages, self._limit(request))

    async def read_tools(self, tools: list[dict[str, Any]]) -> None:
        """Read the session's function tools into the tool scorer's cache (once per set of
        tools, about a second of the model's time), so the first turn only scores its words."""
        names = [str(t.get("name")) for t in tools if t.get("name")]
        function_tools = toolcalls.function_tools(tools, names)
        if function_tools:
            await self.speech.score_contexts(toolcalls.decision_contexts(function_tools), " ")

    def _limit(self, request: BrainRequest) -> int:
        """The reply's token cap: the session's default unless the client asks for fewer."""
        if request.max_output_tokens is None:
            return self.default_max_tokens
        return min(self.default_max_tokens, request.max_output_tokens)

    async def _tool_call(
        self, request: BrainRequest, messages: list[dict[str, Any]]
    ) -> FunctionCall | None:
        """The function call this response makes, if any (see ``engine/toolcalls.py``).

        Under ``auto`` the brain considers a call only when the user spoke last (after a
        function's output it answers with the result); ``required`` and a named function call
        every time, as on the service.
        """
        tools = toolcalls.function_tools(request.tools, request.tool_names)
        if not tools:
            return None
        forced = request.tool_choice == "required" or isinstance(request.tool_choice, dict)
        last = request.history[-1] if request.history else None
        heard = last.text if last is not None and last.type == "message" else ""
        if not forced and not (last is not None and last.role == "user" and heard.strip()):
            return None
        if not heard.strip():
            heard = next(
                (h.text for h in reversed(request.history) if h.role == "user" and h.text), ""
            )
        started = time.perf_counter()
        decision = await toolcalls.decide(
            self.speech.score_contexts, tools, heard, request.tool_choice
        )
        if decision.name is None:
            log.debug("local model: no tool (best margin %.1f)", decision.margin)
            return None
        tool = next(t for t in tools if t.get("name") == decision.name)
        conversation = [m for m in messages if m["role"] != "system"]
        prompt = self.speech.llm.chat_prompt(toolcalls.arguments_messages(tool, conversation))
        chosen = await toolcalls.choose_arguments(self.speech.score_options, prompt, tool, heard)
        arguments = chosen.arguments
        if chosen.generate or (arguments is None and forced):
            # not all chosen from the user's words: written under the schema's grammar
            arguments = await toolcalls.write_arguments(
                self.speech.complete_json, tool, conversation, heard
            )
        elif not forced and chosen.weakest < toolcalls.ARGUMENT_FLOOR:
            log.debug("local model: no tool (%s fits %s poorly)", decision.name, arguments)
            arguments = None
        if arguments is None and forced:  # a call was asked for: make it anyway
            arguments = {}
        log.debug(
            "local model: tool %s (margin %.1f) arguments %s in %.0f ms",
            decision.name,
            decision.margin,
            arguments,
            (time.perf_counter() - started) * 1000,
        )
        if arguments is None:
            return None
        return FunctionCall(decision.name, json.dumps(arguments, ensure_ascii=False))

    async def aclose(self) -> None:
        return None


def _answer_with_results(request: BrainRequest) -> tuple[BrainRequest, str, str | None] | None:
    """When a response follows function outputs (after the user's last words): the request
    without the calls, the outputs stated as facts, and a grammar that keeps the answer's
    numbers to those in the outputs and the user's words. A 135M model reads a JSON result
    badly and makes up numbers; told the facts up front and held to their numbers, it says
    them ("The answer is 23:18 in Tokyo")."""
    history = request.history
    last_user = max(
        (i for i, h in enumerate(history) if h.type == "message" and h.role == "user"),
        default=-1,
    )
    tail = history[last_user + 1 :]
    outputs = [h for h in tail if h.type == "function_call_output"]
    if not outputs or any(h.type == "message" and h.role == "assistant" for h in tail):
        return None
    names = {h.call_id: h.name for h in history if h.type == "function_call"}
    facts = " ".join(
        toolcalls.result_facts(names.get(h.call_id) or "function", h.output) for h in outputs
    )
    heard = history[last_user].text if last_user >= 0 else ""
    numbers = toolcalls.result_numbers(heard, *(h.output for h in outputs))
    lead = toolcalls.lead_numbers(heard, *(h.output for h in outputs))
    trimmed = BrainRequest(
        instructions=request.instructions,
        history=history[: last_user + 1],
        tools=request.tools,
        tool_choice=request.tool_choice,
        max_output_tokens=request.max_output_tokens,
        temperature=request.temperature,
    )
    return (
        trimmed,
        facts + " Tell the user the answer in one sentence.",
        toolcalls.numbers_grammar(numbers, lead),
    )


# ---------------------------------------------------------------------------- chat completions


class ChatCompletionsBrain:
    """Any OpenAI-compatible chat-completions endpoint, streamed (``stream: true``).

    ``url`` is the full ``.../chat/completions`` URL, or a base ending in ``/v1`` (the path is
    added). Azure chat deployments use
    ``https://RES.openai.azure.com/openai/deployments/DEP/chat/completions?api-version=...``;
    for those the key goes in the ``api-key`` header, elsewhere as ``Authorization: Bearer``.
    Realtime function tools become chat tools, and streamed ``tool_calls`` become realtime
    function calls.
    """

    name = "chat"
    speculative = False  # a prepared reply that is thrown away would be a paid request

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--brain-url must be an http(s) URL, got {url!r}")
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        self.url = parts._replace(path=path).geturl()
        self.api_key = api_key
        self.model = model
        self.azure = "openai.azure.com" in parts.netloc or "api-version=" in parts.query
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            if self.azure:
                headers["api-key"] = self.api_key
            else:
                headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _body(self, request: BrainRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": chat_messages(request, tool_messages=True),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.model:
            body["model"] = self.model
        if request.max_output_tokens is not None:
            body["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        tools = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in (
                        ("name", t.get("name")),
                        ("description", t.get("description")),
                        ("parameters", t.get("parameters")),
                    )
                    if v is not None
                },
            }
            for t in request.tools
            if t.get("type", "function") == "function"
        ]
        if tools:
            body["tools"] = tools
            choice = request.tool_choice
            if isinstance(choice, dict):
                name = choice.get("name") or (choice.get("function") or {}).get("name")
                body["tool_choice"] = {"type": "function", "function": {"name": name}}
            elif choice in ("auto", "none", "required"):
                body["tool_choice"] = choice
        return body

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainEvent]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        calls: dict[int, dict[str, str]] = {}
        reason: Literal["stop", "length"] = "stop"
        usage: dict[str, Any] = {}
        text = ""
        try:
            async with self._session.post(
                self.url, json=self._body(request), headers=self._headers()
            ) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:300]
                    raise BrainError(f"chat completions answered HTTP {resp.status}: {detail}")
                async for chunk in _sse_events(resp):
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            text += delta["content"]
                            yield TextDelta(delta["content"])
                        for tc in delta.get("tool_calls") or []:
                            slot = calls.setdefault(
                                int(tc.get("index", len(calls))),
                                {"id": "", "name": "", "arguments": ""},
                            )
                            slot["id"] = tc.get("id") or slot["id"]
                            fn = tc.get("function") or {}
                            slot["name"] = fn.get("name") or slot["name"]
                            slot["arguments"] += fn.get("arguments") or ""
                        if choice.get("finish_reason") == "length":
                            reason = "length"
        except aiohttp.ClientError as exc:
            raise BrainError(f"chat completions request to {self.url} failed: {exc}") from exc
        for _, slot in sorted(calls.items()):
            yield FunctionCall(slot["name"], slot["arguments"] or "{}", slot["id"] or None)
        yield BrainFinish(
            reason,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or estimate_tokens(text)),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent-events stream, until ``[DONE]``."""
    data_lines: list[str] = []
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data_lines.append(line[5:].lstrip())
            continue
        if line or not data_lines:
            continue
        data = "\n".join(data_lines)
        data_lines = []
        if data == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            log.warning("chat completions sent a line that is not JSON: %.200s", data)
            continue
        if isinstance(obj, dict):
            if obj.get("error"):
                raise BrainError(f"chat completions error: {obj['error']}")
            yield obj
    if data_lines and data_lines != ["[DONE]"]:
        try:
            obj = json.loads("\n".join(data_lines))
        except ValueError:
            return
        if isinstance(obj, dict):
            yield obj
