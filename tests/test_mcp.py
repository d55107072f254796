"""MCP tools on the local engine, against a real MCP server on loopback (issue 11 item 2).

The server is the official ``mcp`` package's own (``MCPServer`` over streamable HTTP, served by
uvicorn on 127.0.0.1 in a thread of its own) with three tools: ``add``, ``lookup_city`` (read
only; an unknown city is a tool error) and ``delete_everything`` (never allowed here). The
engine runs the scripted brain (:data:`MCP_SCRIPT`), so each conversation is deterministic: a
typed turn makes the brain call a tool by name, and the engine runs it over MCP because an
``mcp`` server listed it. Every event each connection received is checked against openai's GA
types with the strict validator of ``test_openai_contract``.

One test asks the default local brain (SmolLM2) instead: it chooses the MCP tool by its
description, as it chooses function tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import pytest

pytest.importorskip("mcp")
pytest.importorskip("openai")

import uvicorn  # noqa: E402
from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402
from mcp.types import ToolAnnotations  # noqa: E402

from helpers import Client, connect, engine_thread  # noqa: E402
from test_openai_contract import check_event  # noqa: E402

MCP_SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {"user": "add 2 and 3", "function_call": {"name": "add", "arguments": {"a": 2, "b": 3}}},
        {"after_function": "add", "reply": "The sum is {output}."},
        {
            "user_regex": "where is (\\w+)",
            "function_call": {"name": "lookup_city", "arguments": {"name": "{1}"}},
        },
        {"after_function": "lookup_city", "reply": "I found: {output}"},
        {"user": "take your time", "function_call": {"name": "wait_for_test", "arguments": {}}},
        {"user": "hello", "reply": "Hello! How can I help you today?"},
    ],
}
"""The brain's script: "add 2 and 3" calls ``add``, "where is X" calls ``lookup_city`` (each
only when a tool of that name is offered), and the answer after a call says its output."""

CITIES = {"Paris": "Paris is the capital of France, population 2.1 million."}


@dataclass
class McpServerThread:
    """An MCP server on 127.0.0.1 (``url``), with what it saw: each request's headers and
    each tool call."""

    url: str
    headers: list[dict[str, str]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    """What ``wait_for_test`` waits for before it answers."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpServerThread]:
    server = MCPServer("test tools")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state = McpServerThread(url=f"http://127.0.0.1:{sock.getsockname()[1]}/mcp")

    @server.tool(description="Add two numbers a and b and return their sum.")
    def add(a: float, b: float) -> str:
        state.calls.append(("add", {"a": a, "b": b}))
        return f"{a + b:g}"

    @server.tool(
        description="Look up facts about a city by its name.",
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    def lookup_city(name: str) -> str:
        state.calls.append(("lookup_city", {"name": name}))
        if name not in CITIES:
            raise ToolError(f"no city called {name}")
        return CITIES[name]

    @server.tool(description="Delete every record.")
    def delete_everything() -> str:
        state.calls.append(("delete_everything", {}))
        return "deleted"

    @server.tool(description="Wait for a signal from the test.")
    async def wait_for_test() -> str:
        # waited for in a worker thread: a sync tool runs on the server's event loop, and
        # blocking it stalls every other request to the server meanwhile
        state.calls.append(("wait_for_test", {}))
        await anyio.to_thread.run_sync(state.release.wait, 60, abandon_on_cancel=True)
        return "released"

    app = server.streamable_http_app()

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            state.headers.append(headers)
            if headers.get("authorization") == "Bearer wrong":  # as a server refusing a token
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await app(scope, receive, send)

    runner = uvicorn.Server(uvicorn.Config(recording, log_level="warning"))
    thread = threading.Thread(
        target=lambda: asyncio.run(runner.serve(sockets=[sock])), name="mcp server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:  # uvicorn says when it listens; nothing else to wait on
        assert thread.is_alive() and time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.01)
    try:
        yield state
    finally:
        runner.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def mcp_engine() -> Iterator[Any]:
    """A scripted engine (:data:`MCP_SCRIPT`) without speech models: typed turns only."""
    yield from engine_thread(None, brain="scripted", script=MCP_SCRIPT, no_speech=True)


def mcp_tool(server: McpServerThread, **fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "tools", "server_url": server.url, **fields}


@contextlib.asynccontextmanager
async def session(engine: Any) -> AsyncIterator[Client]:
    """A GA text session; when it ends, every event it received must pass openai's types."""
    async with connect(engine) as client:
        await client.update(output_modalities=["text"])
        yield client
        problems = [p for e in client.events for p in check_event("ga", e).problems]
        assert problems == [], problems


async def listed(client: Client, **tool: Any) -> dict[str, Any]:
    """``session.update`` with these ``mcp`` tool fields; returns the ``mcp_list_tools`` item
    once the listing completed (its events checked in order)."""
    await client.update(tools=[tool])
    start = client.looked
    done = await client.wait_for(
        "conversation.item.done", lambda e: e["item"]["type"] == "mcp_list_tools"
    )
    kinds = [
        e["type"]
        for e in client.events[start : client.looked]
        if e["type"].startswith("mcp_list_tools") or e["type"].startswith("conversation.item")
    ]
    assert kinds == [
        "conversation.item.added",
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "conversation.item.done",
    ], kinds
    item: dict[str, Any] = done["item"]
    return item


def of_response(client: Client, response_id: str) -> list[dict[str, Any]]:
    """The events of one response, from ``response.created`` to ``response.done``."""
    start = next(
        i
        for i, e in enumerate(client.events)
        if e["type"] == "response.created" and e["response"]["id"] == response_id
    )
    end = next(
        i
        for i, e in enumerate(client.events)
        if e["type"] == "response.done" and e["response"]["id"] == response_id
    )
    return client.events[start : end + 1]


async def test_listing_sends_the_events_and_the_allowed_tools(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        before = len(mcp_server.headers)
        tool = mcp_tool(
            mcp_server,
            allowed_tools=["add", "lookup_city"],
            headers={"X-Team": "voice"},
            authorization="token-123",
            require_approval="never",
        )
        item = await listed(client, **tool)
        assert item["server_label"] == "tools"
        tools = {t["name"]: t for t in item["tools"]}
        assert sorted(tools) == ["add", "lookup_city"]  # delete_everything is not allowed
        assert tools["add"]["description"] == "Add two numbers a and b and return their sum."
        assert sorted(tools["add"]["input_schema"]["properties"]) == ["a", "b"]
        assert tools["lookup_city"]["annotations"]["readOnlyHint"] is True
        seen = mcp_server.headers[before:]
        assert seen and all(h.get("authorization") == "Bearer token-123" for h in seen)
        assert all(h.get("x-team") == "voice" for h in seen)
        # The same server again (another approval rule): not listed again.
        await client.update(tools=[{**tool, "require_approval": "always"}])
        await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        retrieved = await client.wait_for("conversation.item.retrieved")
        assert retrieved["item"]["tools"] == item["tools"]  # a conversation item
        assert len(client.of_type("mcp_list_tools.in_progress")) == 1
        # A filter object: read-only tools only.
        item = await listed(client, **mcp_tool(mcp_server, allowed_tools={"read_only": True}))
        assert [t["name"] for t in item["tools"]] == ["lookup_city"]


async def test_a_call_runs_over_mcp_and_the_answer_follows(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        await listed(client, **mcp_tool(mcp_server, require_approval="never"))
        calls = len(mcp_server.calls)
        done = await client.say("Please add 2 and 3.")
        response = done["response"]
        assert response["status"] == "completed"
        call, answer = response["output"]
        assert call["type"] == "mcp_call" and call["name"] == "add"
        assert json.loads(call["arguments"]) == {"a": 2, "b": 3}
        assert call["output"] == "5" and call["error"] is None
        assert call["approval_request_id"] is None and call["server_label"] == "tools"
        assert mcp_server.calls[calls:] == [("add", {"a": 2, "b": 3})]
        assert answer["type"] == "message" and answer["content"][0]["text"] == "The sum is 5."
        events = of_response(client, response["id"])
        kinds = [e["type"] for e in events if e.get("item_id", "") == call["id"]]
        assert kinds == [
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            "response.mcp_call.completed",
        ]
        added = [e for e in events if e["type"] == "response.output_item.added"]
        assert [e["item"]["type"] for e in added] == ["mcp_call", "message"]
        assert added[0]["item"]["output"] is None  # the call had not run yet
        # no function call reached the client: the engine ran it
        assert not client.of_type("response.function_call_arguments.done")
        # the next turn's brain sees the call in the conversation
        assert await client.ask("hello") == "Hello! How can I help you today?"


async def test_a_tool_error_fails_the_call_and_the_answer_says_so(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        await listed(client, **mcp_tool(mcp_server, require_approval="never"))
        done = await client.say("where is Atlantis")
        response = done["response"]
        assert response["status"] == "completed"
        call, answer = response["output"]
        assert call["type"] == "mcp_call" and call["output"] is None
        assert call["error"]["type"] == "tool_execution_error"
        assert "no city called Atlantis" in call["error"]["message"]
        kinds = [e["type"] for e in of_response(client, response["id"])]
        assert "response.mcp_call.failed" in kinds and "response.mcp_call.completed" not in kinds
        assert "no city called Atlantis" in answer["content"][0]["text"]
        # and a good call in the same session still works
        reply = await client.ask("where is Paris")
        assert reply == "I found: " + CITIES["Paris"]


async def approve(client: Client, request: dict[str, Any], yes: bool) -> dict[str, Any]:
    """Answer an approval request and ask for the next response; returns its ``response``."""
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "mcp_approval_response",
                "approval_request_id": request["id"],
                "approve": yes,
            },
        }
    )
    added = await client.wait_for("conversation.item.added")
    assert added["item"]["type"] == "mcp_approval_response", added
    await client.send({"type": "response.create"})
    done = await client.wait_for("response.done")
    response: dict[str, Any] = done["response"]
    return response


async def test_approval_always_asks_and_an_approved_call_runs(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        await listed(client, **mcp_tool(mcp_server, require_approval="always"))
        calls = len(mcp_server.calls)
        done = await client.say("add 2 and 3")
        first = done["response"]
        assert first["status"] == "completed"
        [request] = first["output"]
        assert request["type"] == "mcp_approval_request"
        assert request["name"] == "add" and request["server_label"] == "tools"
        assert json.loads(request["arguments"]) == {"a": 2, "b": 3}
        assert mcp_server.calls[calls:] == []  # nothing ran before the approval
        assert not [e for e in of_response(client, first["id"]) if "mcp_call" in e["type"]]
        response = await approve(client, request, True)
        call, answer = response["output"]
        assert call["type"] == "mcp_call" and call["approval_request_id"] == request["id"]
        assert call["output"] == "5"
        assert mcp_server.calls[calls:] == [("add", {"a": 2, "b": 3})]
        assert answer["content"][0]["text"] == "The sum is 5."


async def test_a_refused_approval_runs_nothing_and_the_brain_answers(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        await listed(client, **mcp_tool(mcp_server))  # require_approval defaults to always
        calls = len(mcp_server.calls)
        done = await client.say("add 2 and 3")
        [request] = done["response"]["output"]
        assert request["type"] == "mcp_approval_request"
        response = await approve(client, request, False)
        [answer] = response["output"]
        assert answer["type"] == "message"
        assert "declined" in answer["content"][0]["text"]
        assert mcp_server.calls[calls:] == []
        assert not client.of_type("response.mcp_call.in_progress")


async def test_a_per_tool_approval_filter(mcp_engine: Any, mcp_server: McpServerThread) -> None:
    async with session(mcp_engine) as client:
        approval = {"never": {"read_only": True}}  # read-only tools run, others ask
        await listed(client, **mcp_tool(mcp_server, require_approval=approval))
        done = await client.say("where is Paris")
        assert [i["type"] for i in done["response"]["output"]] == ["mcp_call", "message"]
        done = await client.say("add 2 and 3")
        assert [i["type"] for i in done["response"]["output"]] == ["mcp_approval_request"]


async def test_an_unreachable_server_fails_its_listing_and_the_session_goes_on(
    mcp_engine: Any,
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/mcp"  # nobody listens there
    async with session(mcp_engine) as client, session(mcp_engine) as other:
        tool = {"type": "mcp", "server_label": "gone", "server_url": dead}
        await client.update(tools=[tool])
        failed = await client.wait_for("mcp_list_tools.failed")
        error = await client.error()
        assert error["code"] == "mcp_list_tools_failed" and error["param"] == "session.tools[0]"
        assert "gone" in error["message"] and "could not be reached" in error["message"]
        done = await client.wait_for("conversation.item.done")
        assert done["item"]["id"] == failed["item_id"] and done["item"]["tools"] == []
        assert not client.of_type("mcp_list_tools.completed")
        # the session answers; with no listed tool the brain answers in words
        assert await client.ask("add 2 and 3") == "I heard you say: add 2 and 3."
        assert await other.ask("hello") == "Hello! How can I help you today?"
        assert not other.of_type("error") and not other.of_type("mcp_list_tools.failed")
        assert len(client.of_type("mcp_list_tools.failed")) == 1  # the turn did not retry it
        # a session.update naming the server again tries again
        await client.update(tools=[tool])
        await client.wait_for("mcp_list_tools.failed")


async def test_response_level_mcp_tools_are_listed_for_that_response(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        done = await client.say(
            "add 2 and 3", tools=[mcp_tool(mcp_server, require_approval="never")]
        )
        response = done["response"]
        assert [i["type"] for i in response["output"]] == ["mcp_call", "message"]
        assert client.of_type("mcp_list_tools.completed")
        # the session itself offers no tools
        assert await client.ask("add 2 and 3") == "I heard you say: add 2 and 3."


async def test_what_the_service_refuses(mcp_engine: Any, mcp_server: McpServerThread) -> None:
    async with session(mcp_engine) as client:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"type": "mcp", "server_url": mcp_server.url}, "session.tools[0].server_label"),
            ({"type": "mcp", "server_label": "x"}, "session.tools[0].server_url"),
            ({**mcp_tool(mcp_server), "colour": "red"}, "session.tools[0].colour"),
            (
                mcp_tool(mcp_server, require_approval="sometimes"),
                "session.tools[0].require_approval",
            ),
            (mcp_tool(mcp_server, headers={"X": 1}), "session.tools[0].headers.X"),
        ]
        for tool, param in cases:
            await client.send(
                {"type": "session.update", "session": {"type": "realtime", "tools": [tool]}}
            )
            error = await client.error()
            assert error["param"] == param, (tool, error)
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "tools": [mcp_tool(mcp_server)] * 2},
            }
        )
        error = await client.error()
        assert error["param"] == "session.tools[1].server_label" and "duplicate" in error["message"]
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "mcp_approval_response",
                    "approval_request_id": "nope",
                    "approve": True,
                },
            }
        )
        error = await client.error()
        assert error["param"] == "item.approval_request_id"
        assert not client.of_type("mcp_list_tools.in_progress")  # nothing refused was listed


async def test_the_local_brain_calls_an_mcp_tool(engine: Any, mcp_server: McpServerThread) -> None:
    """The default brain (SmolLM2) chooses the MCP tool by its description and writes its
    arguments from the user's words; the engine runs it and the answer follows."""
    async with session(engine) as client:
        await listed(client, **mcp_tool(mcp_server, require_approval="never"))
        calls = len(mcp_server.calls)
        done = await client.say("What is 2 plus 3? Use the add tool.")
        response = done["response"]
        assert response["status"] == "completed", response
        kinds = [i["type"] for i in response["output"]]
        assert kinds[:1] == ["mcp_call"], kinds
        call = response["output"][0]
        assert call["name"] == "add" and call["output"] == "5", call
        assert mcp_server.calls[calls:] == [("add", {"a": 2, "b": 3})]
        assert kinds[-1] == "message"


async def test_tool_choice_names_an_mcp_tool(mcp_engine: Any, mcp_server: McpServerThread) -> None:
    async with session(mcp_engine) as client:
        await listed(client, **mcp_tool(mcp_server, require_approval="never"))
        choice = {"type": "mcp", "server_label": "tools", "name": "lookup_city"}
        done = await client.say("add 2 and 3", tool_choice=choice)  # add is not offered now
        assert [i["type"] for i in done["response"]["output"]] == ["message"]
        assert not client.of_type("response.mcp_call.in_progress")
        done = await client.say("where is Paris", tool_choice=choice)
        assert [i["type"] for i in done["response"]["output"]] == ["mcp_call", "message"]


async def test_cancelling_during_a_call_fails_the_call(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        await listed(client, **mcp_tool(mcp_server, require_approval="never"))
        mcp_server.release.clear()
        try:
            await client.say("take your time", wait=False)
            started = await client.wait_for("response.mcp_call.in_progress")
            await client.send({"type": "response.cancel"})
            done = await client.wait_for("response.done")
        finally:
            mcp_server.release.set()
        response = done["response"]
        assert response["status"] == "cancelled"
        [call] = response["output"]
        assert call["id"] == started["item_id"] and call["output"] is None
        assert call["error"]["type"] == "tool_execution_error"
        assert client.of_type("response.mcp_call.failed")[-1]["item_id"] == call["id"]
        assert await client.ask("hello") == "Hello! How can I help you today?"


async def test_a_refused_token_fails_the_listing_with_the_http_status(
    mcp_engine: Any, mcp_server: McpServerThread
) -> None:
    async with session(mcp_engine) as client:
        await client.update(tools=[mcp_tool(mcp_server, authorization="wrong")])
        await client.wait_for("mcp_list_tools.failed")
        error = await client.error()
        assert error["code"] == "mcp_list_tools_failed" and "HTTP 401" in error["message"], error
