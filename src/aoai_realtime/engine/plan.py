"""What one response will be: the session's settings with a ``response.create``'s overrides.

Pure data in, data out (no asyncio, no session): :func:`plan_response` merges a session's
:class:`~aoai_realtime.protocol.session.SessionConfig` and a ``response.create``'s parameters into
a :class:`ResponsePlan`, and :func:`brain_request` turns a plan and a conversation into what the
brain is asked. The session uses both to start a response, the speculator to prepare one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.events import ResponseParams
from ..protocol.session import SessionConfig, read_ga_format
from .brains import BrainRequest, HistoryItem
from .mcp import OfferedTool, brain_tool_choice, function_tool

if TYPE_CHECKING:
    from .store import StoredItem

__all__ = ["ResponsePlan", "brain_request", "plan_response"]


@dataclass
class ResponsePlan:
    """A response's settings: the session's, with the ``response.create`` overrides applied."""

    output_modalities: list[str]
    voice: str
    speed: float
    output_format: str
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    max_output_tokens: int | None
    temperature: float | None
    metadata: dict[str, Any] | None
    out_of_band: bool
    context: list[StoredItem] | None = None  # ``input`` (None: the conversation)

    @property
    def audio(self) -> bool:
        return "audio" in self.output_modalities


def plan_response(
    config: SessionConfig,
    params: ResponseParams | None,
    *,
    default_instructions: str,
    context: list[StoredItem] | None,
) -> ResponsePlan:
    """Merge a session's configuration and a ``response.create``'s overrides."""
    p = params or ResponseParams()
    audio_out = ((p.audio or {}).get("output") or {}) if isinstance(p.audio, dict) else {}
    fmt: str = config.output_format or "pcm16"
    if "format" in audio_out:  # validated by the session already
        fmt = read_ga_format(audio_out["format"], "response.audio.output.format")
    mot = p.max_output_tokens if p.max_output_tokens is not None else config.max_output_tokens
    instructions = p.instructions if p.instructions is not None else config.instructions
    return ResponsePlan(
        output_modalities=list(p.output_modalities or config.output_modalities or ["audio"]),
        voice=str(audio_out.get("voice") or config.voice or "alloy"),
        speed=float(config.speed or 1.0),
        output_format=fmt,
        instructions=instructions if instructions is not None else default_instructions,
        tools=list(p.tools if p.tools is not None else config.tools or []),
        tool_choice=p.tool_choice if p.tool_choice is not None else (config.tool_choice or "auto"),
        max_output_tokens=None if mot in (None, "inf") else int(mot),
        temperature=p.temperature if p.temperature is not None else config.temperature,
        metadata=p.metadata,
        out_of_band=p.conversation == "none",
        context=context,
    )


def brain_request(
    plan: ResponsePlan,
    history: list[HistoryItem],
    *,
    mcp: Mapping[str, OfferedTool] | None = None,
) -> BrainRequest:
    """What the brain is asked for a response with this plan and conversation.

    The brain gets function tools only: the plan's own, and the tools its ``mcp`` servers
    listed (``mcp``: by the name the brain calls them, see :mod:`~aoai_realtime.engine.mcp`),
    each as a function whose parameters are the MCP tool's input schema. An ``mcp``
    ``tool_choice`` becomes the function it names (or a required call of that server's tools).
    """
    tools = [t for t in plan.tools if t.get("type", "function") == "function"]
    choice = plan.tool_choice
    if mcp:
        choice, only = brain_tool_choice(choice, mcp)
        if only is not None:
            tools = []
        tools += [function_tool(o.tool) for n, o in mcp.items() if only is None or n in only]
    return BrainRequest(
        instructions=plan.instructions,
        history=history,
        tools=tools,
        tool_choice=choice,
        max_output_tokens=plan.max_output_tokens,
        temperature=plan.temperature,
    )
