"""MCP tools: a session tool of type ``mcp`` names a remote MCP server that the engine itself reaches.

As on the service, the engine lists the server's tools when a session (``session.update``) or a
response (``response.create``) names the server, and calls them when the brain asks for one:

* listing: a ``mcp_list_tools`` conversation item (``conversation.item.added``), then
  ``mcp_list_tools.in_progress``, ``mcp_list_tools.completed`` and ``conversation.item.done``
  with the tools that ``allowed_tools`` lets through; or ``mcp_list_tools.failed`` and an
  ``error`` event that says why (the failed event has no field for it). A server is listed once
  per session for the same settings; a response waits for the listings its tools need.
* the brain sees each listed tool as a function tool (name, description, ``parameters`` = the
  MCP tool's ``inputSchema``). A function call that names one is run over MCP instead of going
  to the client (see :mod:`~aoai_realtime.engine.response`): an ``mcp_call`` item with its
  ``output`` or ``error``, and the response goes on with the brain answering with the result.
* ``require_approval`` (``always`` by default, as on the service): the response ends with an
  ``mcp_approval_request`` item; the client's ``mcp_approval_response`` item and the next
  ``response.create`` run the call (approved) or tell the brain it was declined.

The rules (which tools are allowed, which need approval, what the brain is shown) are pure
functions here; :class:`McpConnector` is the only part that talks MCP (the official ``mcp``
package over streamable HTTP, one connection per listing or call, so nothing is left open
between turns), and :class:`McpTools` is a session's state: its listings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.errors import (
    ProtocolError,
    echo,
    invalid_type,
    invalid_value,
    missing_parameter,
    not_supported,
    unknown_parameter,
)
from . import ids
from .brains import HistoryItem
from .store import ItemStore, StoredItem

log = logging.getLogger(__name__)

__all__ = [
    "CALL_TIMEOUT_S",
    "LIST_TIMEOUT_S",
    "MAX_MCP_CALLS",
    "McpCallError",
    "McpConnector",
    "McpTools",
    "OfferedTool",
    "ServerRef",
    "brain_history",
    "brain_tool_choice",
    "check_mcp_tool",
    "function_tool",
    "is_mcp",
    "needs_approval",
    "tool_allowed",
]

LIST_TIMEOUT_S = 20.0
"""A listing that takes longer fails (``mcp_list_tools.failed``)."""
CALL_TIMEOUT_S = 60.0
"""A tool call that takes longer fails (``response.mcp_call.failed``)."""
MAX_MCP_CALLS = 4
"""MCP calls one response may make before it must answer: a brain that calls tool after tool
ends its response there instead of looping."""
MAX_PAGES = 20
"""Pages of ``tools/list`` read from one server."""

MCP_ITEM_TYPES = ("mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response")
"""Conversation items of MCP: in openai's types they have no ``object`` or ``status``."""

DECLINED_OUTPUT = "The user declined to run {name}, so it was not called."
"""What the brain reads as the output of a call whose approval was refused."""

_FIELDS = {
    "type",
    "server_label",
    "server_url",
    "connector_id",
    "tunnel_id",
    "authorization",
    "headers",
    "allowed_tools",
    "allowed_callers",
    "require_approval",
    "server_description",
    "defer_loading",
}
"""The fields of an ``mcp`` tool in openai's GA types (``RealtimeToolsConfigUnion``'s Mcp)."""
_CONNECTORS = (
    "connector_dropbox",
    "connector_gmail",
    "connector_googlecalendar",
    "connector_googledrive",
    "connector_microsoftteams",
    "connector_outlookcalendar",
    "connector_outlookemail",
    "connector_sharepoint",
)


# ---------------------------------------------------------------------------- the tool config


def is_mcp(tool: Any) -> bool:
    return isinstance(tool, dict) and tool.get("type") == "mcp"


def _check_filter(value: Any, at: str) -> None:
    """``{tool_names: [...], read_only: bool}``."""
    if not isinstance(value, dict):
        raise invalid_type(at, "an object", value)
    for key, item in value.items():
        if key == "tool_names":
            if not isinstance(item, list) or not all(isinstance(n, str) for n in item):
                raise invalid_type(f"{at}.tool_names", "an array of strings", item)
        elif key == "read_only":
            if not isinstance(item, bool):
                raise invalid_type(f"{at}.read_only", "a boolean", item)
        else:
            raise unknown_parameter(f"{at}.{key}")


def check_mcp_tool(tool: dict[str, Any], at: str) -> None:
    """Refuse an ``mcp`` tool the service would refuse (``at``: ``session.tools[0]``)."""
    for key in tool:
        if key not in _FIELDS:
            raise unknown_parameter(f"{at}.{key}")
    if "server_label" not in tool:
        raise missing_parameter(f"{at}.server_label")
    label = tool["server_label"]
    if not isinstance(label, str):
        raise invalid_type(f"{at}.server_label", "a string", label)
    if not label:
        raise invalid_value(
            f"{at}.server_label",
            f"Invalid '{at}.server_label': empty string. Expected a string with minimum length 1.",
        )
    for key in ("server_url", "connector_id", "tunnel_id", "authorization", "server_description"):
        if tool.get(key) is not None and not isinstance(tool[key], str):
            raise invalid_type(f"{at}.{key}", "a string", tool[key])
    if not any(tool.get(k) for k in ("server_url", "connector_id", "tunnel_id")):
        raise ProtocolError(
            f"Missing required parameter: one of '{at}.server_url', '{at}.connector_id' or "
            f"'{at}.tunnel_id' must be provided.",
            code="missing_required_parameter",
            param=f"{at}.server_url",
        )
    if tool.get("connector_id") is not None and tool["connector_id"] not in _CONNECTORS:
        raise not_supported(f"{at}.connector_id", tool["connector_id"], _CONNECTORS)
    headers = tool.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise invalid_type(f"{at}.headers", "an object", headers)
        for name, value in headers.items():
            if not isinstance(value, str):
                raise invalid_type(f"{at}.headers.{echo(name, 64)}", "a string", value)
    allowed = tool.get("allowed_tools")
    if isinstance(allowed, list):
        if not all(isinstance(n, str) for n in allowed):
            raise invalid_type(f"{at}.allowed_tools", "an array of strings", allowed)
    elif allowed is not None:
        _check_filter(allowed, f"{at}.allowed_tools")
    callers = tool.get("allowed_callers")
    if callers is not None:
        if not isinstance(callers, list):
            raise invalid_type(f"{at}.allowed_callers", "an array", callers)
        for i, caller in enumerate(callers):
            if caller not in ("direct", "programmatic"):
                raise not_supported(
                    f"{at}.allowed_callers[{i}]", caller, ("direct", "programmatic")
                )
    if tool.get("defer_loading") is not None and not isinstance(tool["defer_loading"], bool):
        raise invalid_type(f"{at}.defer_loading", "a boolean", tool["defer_loading"])
    approval = tool.get("require_approval")
    if isinstance(approval, str):
        if approval not in ("always", "never"):
            raise not_supported(f"{at}.require_approval", approval, ("always", "never"))
    elif isinstance(approval, dict):
        for key, value in approval.items():
            if key not in ("always", "never"):
                raise unknown_parameter(f"{at}.require_approval.{key}")
            _check_filter(value, f"{at}.require_approval.{key}")
    elif approval is not None:
        raise invalid_type(f"{at}.require_approval", "'always', 'never' or an object", approval)


def check_mcp_tools(tools: Sequence[Any], where: str) -> None:
    """Every ``mcp`` tool of a list, and no two with the same ``server_label``."""
    labels: set[str] = set()
    for i, tool in enumerate(tools):
        if not is_mcp(tool):
            continue
        at = f"{where}[{i}]"
        check_mcp_tool(tool, at)
        if tool["server_label"] in labels:
            raise invalid_value(
                f"{at}.server_label",
                f"Invalid '{at}.server_label': duplicate server label "
                f"'{echo(tool['server_label'])}'. Each MCP tool needs a label of its own.",
            )
        labels.add(tool["server_label"])


def check_mcp_choice(choice: dict[str, Any], param: str) -> None:
    """``tool_choice: {type: "mcp", server_label, name?}``."""
    for key in choice:
        if key not in ("type", "server_label", "name"):
            raise unknown_parameter(f"{param}.{key}")
    if "server_label" not in choice:
        raise missing_parameter(f"{param}.server_label")
    if not isinstance(choice["server_label"], str):
        raise invalid_type(f"{param}.server_label", "a string", choice["server_label"])
    if choice.get("name") is not None and not isinstance(choice["name"], str):
        raise invalid_type(f"{param}.name", "a string", choice["name"])


@dataclass(frozen=True)
class ServerRef:
    """Where an ``mcp`` tool's server is and how to reach it."""

    label: str
    url: str | None
    headers: tuple[tuple[str, str], ...] = ()
    connector_id: str | None = None

    @classmethod
    def of(cls, tool: Mapping[str, Any]) -> ServerRef:
        headers = dict(tool.get("headers") or {})
        if tool.get("authorization"):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {tool['authorization']}"
        return cls(
            label=str(tool["server_label"]),
            url=tool.get("server_url"),
            headers=tuple(sorted(headers.items())),
            connector_id=tool.get("connector_id") or tool.get("tunnel_id"),
        )


def _listing_key(tool: Mapping[str, Any]) -> str:
    """What a listing depends on: the server, how it is reached, which tools are allowed."""
    keep = ("server_label", "server_url", "connector_id", "tunnel_id", "authorization")
    return json.dumps(
        {
            **{k: tool.get(k) for k in keep},
            "headers": sorted((tool.get("headers") or {}).items()),
            "allowed_tools": tool.get("allowed_tools"),
        },
        sort_keys=True,
    )


# ---------------------------------------------------------------------------- pure rules


def _read_only(tool: Mapping[str, Any]) -> bool:
    return bool((tool.get("annotations") or {}).get("readOnlyHint"))


def _matches(flt: Mapping[str, Any] | None, tool: Mapping[str, Any]) -> bool:
    """A filter matches a tool when every criterion it gives holds (an empty one: none)."""
    if not flt:
        return False
    names = flt.get("tool_names")
    if names is not None and tool.get("name") not in names:
        return False
    read_only = flt.get("read_only")
    if read_only is not None and _read_only(tool) != read_only:
        return False
    return names is not None or read_only is not None


def tool_allowed(config: Mapping[str, Any], tool: Mapping[str, Any]) -> bool:
    """Whether ``allowed_tools`` (a list of names, a filter, or absent: all) lets a listed
    tool through."""
    allowed = config.get("allowed_tools")
    if allowed is None:
        return True
    if isinstance(allowed, list):
        return tool.get("name") in allowed
    if not allowed:
        return True
    return _matches(allowed, tool)


def needs_approval(config: Mapping[str, Any], tool: Mapping[str, Any]) -> bool:
    """Whether a call of ``tool`` waits for the client's approval: ``require_approval`` is
    ``always`` when absent (as on the service); a filter object asks for it unless the tool
    matches its ``never`` filter (``always`` wins where both match)."""
    approval = config.get("require_approval")
    if approval is None or approval == "always":
        return True
    if approval == "never":
        return False
    if _matches(approval.get("always"), tool):
        return True
    return not _matches(approval.get("never"), tool)


def function_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A listed MCP tool as the brain sees it: a function tool."""
    schema = tool.get("input_schema")
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description") or "",
        "parameters": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
    }


@dataclass
class Listing:
    """One server's tools as a session listed them (its ``mcp_list_tools`` item)."""

    config: dict[str, Any]
    item: StoredItem
    state: str = "in_progress"  # completed, failed
    tools: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def label(self) -> str:
        return str(self.config["server_label"])


@dataclass
class OfferedTool:
    """A listed tool a response offers the brain, with the ``mcp`` tool it comes from."""

    config: dict[str, Any]
    tool: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.config["server_label"])

    @property
    def name(self) -> str:
        return str(self.tool["name"])

    @property
    def needs_approval(self) -> bool:
        return needs_approval(self.config, self.tool)


def brain_tool_choice(
    choice: str | dict[str, Any], offered: Mapping[str, OfferedTool]
) -> tuple[str | dict[str, Any], set[str] | None]:
    """``tool_choice`` as the brain gets it, and the MCP tools to offer (``None``: all).

    ``{type: "mcp", server_label, name}`` becomes that function; without ``name``, a call of
    one of that server's tools is required."""
    if not isinstance(choice, dict) or choice.get("type") != "mcp":
        return choice, None
    label = choice.get("server_label")
    names = {n for n, o in offered.items() if o.label == label}
    if choice.get("name"):
        name = str(choice["name"])
        return {"type": "function", "name": name}, names & {name}
    return "required", names


def brain_history(items: Sequence[StoredItem]) -> list[HistoryItem]:
    """The conversation as a brain reads it: an ``mcp_call`` is a function call and its output
    (or its error); a declined approval request is a call whose output says it was declined;
    listings, pending or approved requests and the approvals themselves are left out."""
    requests = {i.id: i for i in items if i.type == "mcp_approval_request"}
    out: list[HistoryItem] = []
    for item in items:
        d = item.data
        kind = item.type
        if kind == "mcp_call":
            out.append(
                HistoryItem(
                    id=item.id,
                    type="function_call",
                    name=d.get("name"),
                    call_id=item.id,
                    arguments=d.get("arguments") or "",
                )
            )
            error = d.get("error")
            output = d.get("output")
            if error:
                output = f"Error: {error.get('message') or error}"
            out.append(
                HistoryItem(
                    id=f"{item.id}_output",
                    type="function_call_output",
                    call_id=item.id,
                    output=str(output or ""),
                )
            )
        elif kind == "mcp_approval_response":
            request = requests.get(str(d.get("approval_request_id")))
            if d.get("approve") or request is None:
                continue
            name = request.data.get("name") or "the tool"
            out.append(
                HistoryItem(
                    id=request.id,
                    type="function_call",
                    name=name,
                    call_id=request.id,
                    arguments=request.data.get("arguments") or "",
                )
            )
            out.append(
                HistoryItem(
                    id=item.id,
                    type="function_call_output",
                    call_id=request.id,
                    output=DECLINED_OUTPUT.format(name=name),
                )
            )
        elif kind in MCP_ITEM_TYPES:
            continue
        else:
            out.append(item.history())
    return out


def approved_requests(items: Sequence[StoredItem]) -> list[StoredItem]:
    """Approval requests the client approved whose call has not run yet, in order."""
    approved = {
        i.data.get("approval_request_id")
        for i in items
        if i.type == "mcp_approval_response" and i.data.get("approve")
    }
    called = {i.data.get("approval_request_id") for i in items if i.type == "mcp_call"}
    return [
        i
        for i in items
        if i.type == "mcp_approval_request" and i.id in approved and i.id not in called
    ]


# ---------------------------------------------------------------------------- talking MCP


class McpCallError(Exception):
    """A listing or call that failed; ``error`` is the ``mcp_call`` item's error object
    (``protocol_error``, ``http_error`` or ``tool_execution_error``)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error

    @property
    def message(self) -> str:
        return str(self.error.get("message") or "")


class Connector(Protocol):
    """How the engine reaches MCP servers."""

    async def list_tools(self, server: ServerRef) -> list[dict[str, Any]]:
        """The server's tools as the ``mcp_list_tools`` item holds them (``name``,
        ``description``, ``input_schema``, ``annotations``); raises :class:`McpCallError`."""
        ...

    async def call_tool(self, server: ServerRef, name: str, arguments: dict[str, Any]) -> str:
        """The call's output as text; raises :class:`McpCallError`."""
        ...


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which anyio's task groups raise."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple) and inner:
        return [leaf for e in inner for leaf in _leaves(e)]
    return [exc]


def _describe(exc: BaseException, status: int | None, server: ServerRef) -> dict[str, Any]:
    """The error object of a failed listing or call."""
    if status is not None and status >= 400:
        return {
            "type": "http_error",
            "code": status,
            "message": f"MCP server '{server.label}' answered HTTP {status}.",
        }
    leaves = _leaves(exc)
    leaf = leaves[0]
    try:
        from mcp.shared.exceptions import MCPError
    except ImportError:  # pragma: no cover - without the package nothing got this far
        MCPError = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(leaf, MCPError):
        return {"type": "protocol_error", "code": int(leaf.code), "message": str(leaf.message)}
    if isinstance(leaf, (asyncio.TimeoutError, TimeoutError)):
        reason = "it did not answer in time"
    else:
        reason = str(leaf) or type(leaf).__name__
    return {
        "type": "http_error",
        "code": 0,
        "message": f"MCP server '{server.label}' at {server.url} could not be reached: {reason}.",
    }


def _output_text(result: Any) -> str:
    """A tool result as the ``mcp_call`` item's ``output``: its text blocks, else its
    structured content as JSON."""
    texts = [
        str(getattr(block, "text", ""))
        for block in getattr(result, "content", None) or []
        if getattr(block, "type", None) == "text"
    ]
    if texts:
        return "\n".join(texts)
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        return json.dumps(structured, ensure_ascii=False)
    kinds = [str(getattr(b, "type", "content")) for b in getattr(result, "content", None) or []]
    return ", ".join(f"[{k}]" for k in kinds)


class McpConnector:
    """The official ``mcp`` package over streamable HTTP: a connection per listing or call."""

    def __init__(
        self, *, list_timeout_s: float = LIST_TIMEOUT_S, call_timeout_s: float = CALL_TIMEOUT_S
    ) -> None:
        self.list_timeout_s = list_timeout_s
        self.call_timeout_s = call_timeout_s

    async def _run(self, server: ServerRef, timeout: float, work: Callable[[Any], Any]) -> Any:
        if server.url is None:
            raise McpCallError(
                {
                    "type": "http_error",
                    "code": 0,
                    "message": f"MCP server '{server.label}': the local engine reaches MCP "
                    "servers by server_url only (connectors and tunnels are the service's).",
                }
            )
        try:
            import httpx2
            from mcp import Client
            from mcp.client.streamable_http import streamable_http_client
        except ImportError:
            raise McpCallError(
                {
                    "type": "http_error",
                    "code": 0,
                    "message": "MCP tools need the mcp package, which is not installed: "
                    "pip install 'aoai-realtime[mcp]'.",
                }
            ) from None
        status: list[int] = []

        async def record(response: Any) -> None:
            if response.status_code >= 400:
                status.append(int(response.status_code))

        async def session() -> Any:
            http = httpx2.AsyncClient(
                headers=dict(server.headers),
                timeout=httpx2.Timeout(timeout, read=timeout),
                event_hooks={"response": [record]},
            )
            async with http, Client(streamable_http_client(str(server.url), http_client=http)) as c:
                return await work(c)

        try:
            return await asyncio.wait_for(session(), timeout)
        except McpCallError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes the item's error
            inner = [e for e in _leaves(exc) if isinstance(e, McpCallError)]
            if inner:
                raise inner[0] from None
            error = _describe(exc, status[-1] if status else None, server)
            log.info("MCP server %s (%s): %s", server.label, server.url, error["message"])
            raise McpCallError(error) from None

    async def list_tools(self, server: ServerRef) -> list[dict[str, Any]]:
        async def work(client: Any) -> list[dict[str, Any]]:
            tools: list[dict[str, Any]] = []
            cursor = None
            for _ in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                for tool in page.tools:
                    entry: dict[str, Any] = {
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                    }
                    if tool.annotations is not None:
                        entry["annotations"] = tool.annotations.model_dump(
                            by_alias=True, exclude_none=True, mode="json"
                        )
                    tools.append(entry)
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

        result: list[dict[str, Any]] = await self._run(server, self.list_timeout_s, work)
        return result

    async def call_tool(self, server: ServerRef, name: str, arguments: dict[str, Any]) -> str:
        async def work(client: Any) -> Any:
            return await client.call_tool(name, arguments)

        result = await self._run(server, self.call_timeout_s, work)
        text = _output_text(result)
        if getattr(result, "is_error", False):
            raise McpCallError({"type": "tool_execution_error", "message": text or "failed"})
        return text


# ---------------------------------------------------------------------------- a session's state


class McpTools:
    """A session's MCP servers: their listings, and the tools a response offers the brain.

    ``emit`` and ``store`` are the session's; ``spawn`` runs a listing as one of the session's
    tasks (cancelled when it closes). Nothing here touches another session.
    """

    def __init__(
        self,
        *,
        emit: Callable[[dict[str, Any]], None],
        store: Callable[[], ItemStore],
        spawn: Callable[[Any, str], Any],
        connector: Connector | None = None,
    ) -> None:
        self._emit = emit
        self._store = store
        self._spawn = spawn
        self.connector: Connector = connector or McpConnector()
        self.listings: dict[str, Listing] = {}

    def sync(
        self, tools: Sequence[Any], where: str = "session.tools", *, retry: bool = True
    ) -> list[Listing]:
        """Start listing each ``mcp`` tool's server not listed yet with these settings (and,
        with ``retry``, those whose listing failed); returns the listings of the ``mcp``
        tools, in order."""
        out: list[Listing] = []
        for i, tool in enumerate(tools):
            if not is_mcp(tool):
                continue
            key = _listing_key(tool)
            listing = self.listings.get(key)
            if listing is None or (retry and listing.state == "failed"):
                listing = self._start(dict(tool), f"{where}[{i}]")
                self.listings[key] = listing
            else:  # approvals and descriptions may change without a new listing
                listing.config = dict(tool)
            out.append(listing)
        return out

    def _start(self, tool: dict[str, Any], param: str) -> Listing:
        item = StoredItem(
            data={
                "id": ids.item_id(),
                "type": "mcp_list_tools",
                "server_label": tool["server_label"],
                "tools": [],
            }
        )
        listing = Listing(config=tool, item=item)
        previous = self._store().insert(item)
        self._emit(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.wire()}
        )
        self._emit({"type": "mcp_list_tools.in_progress", "item_id": item.id})
        self._spawn(self._list(listing, param), f"mcp list {listing.label}")
        return listing

    async def _list(self, listing: Listing, param: str) -> None:
        server = ServerRef.of(listing.config)
        try:
            tools = await self.connector.list_tools(server)
        except asyncio.CancelledError:
            listing.state = "failed"
            listing.done.set()
            raise
        except Exception as exc:  # noqa: BLE001 - a failed listing fails only itself
            message = exc.message if isinstance(exc, McpCallError) else str(exc)
            listing.state = "failed"
            self._emit({"type": "mcp_list_tools.failed", "item_id": listing.item.id})
            self._emit(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "code": "mcp_list_tools_failed",
                        "message": f"Listing the tools of MCP server '{listing.label}' failed: "
                        f"{message}",
                        "param": param,
                        "event_id": None,
                    },
                }
            )
        else:
            listing.tools = [t for t in tools if tool_allowed(listing.config, t)]
            listing.item.data["tools"] = [dict(t) for t in listing.tools]
            listing.state = "completed"
            self._emit({"type": "mcp_list_tools.completed", "item_id": listing.item.id})
        store = self._store()
        self._emit(
            {
                "type": "conversation.item.done",
                "previous_item_id": store.previous_of(listing.item.id),
                "item": listing.item.wire(),
            }
        )
        listing.done.set()

    async def offer(
        self, tools: Sequence[Any], reserved: Sequence[str], where: str = "response.tools"
    ) -> dict[str, OfferedTool]:
        """The listed tools of the ``mcp`` tools in ``tools`` by the name the brain calls them,
        once their listings are done (a response's own servers are listed now). A name taken
        by a function tool (``reserved``) or an earlier server is not offered again."""
        listings = self.sync(tools, where, retry=False)  # a failed server: not at every turn
        for listing in listings:
            await listing.done.wait()
        offered: dict[str, OfferedTool] = {}
        taken = set(reserved)
        for listing in listings:
            for tool in listing.tools:
                name = str(tool.get("name"))
                if name in taken:
                    log.info("MCP tool %s of %s hidden by another tool", name, listing.label)
                    continue
                taken.add(name)
                offered[name] = OfferedTool(config=listing.config, tool=tool)
        return offered

    def find(self, label: str, name: str) -> OfferedTool | None:
        """A listed tool by its server's label (an approved request's, say)."""
        for listing in self.listings.values():
            if listing.label == label and listing.state == "completed":
                for tool in listing.tools:
                    if tool.get("name") == name:
                        return OfferedTool(config=listing.config, tool=tool)
        return None

    async def call(self, offered: OfferedTool, arguments: str) -> str:
        """Run one call; raises :class:`McpCallError` (bad arguments included)."""
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise McpCallError(
                {
                    "type": "tool_execution_error",
                    "message": f"The arguments of {offered.name} are not a JSON object.",
                }
            )
        return await self.connector.call_tool(ServerRef.of(offered.config), offered.name, args)
