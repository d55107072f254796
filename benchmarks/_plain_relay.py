"""A plain aiohttp relay, the one a user would write from Azure's VoiceRAG sample.

The pattern of ``app/backend/rtmt.py`` in Azure-Samples/aisearch-openai-rag-audio, written again
here (not copied) so the relay benchmark can compare ours with it: per browser connection one
``aiohttp.ClientSession`` and one upstream WebSocket, one task per direction (``asyncio.gather``),
every message ``json.loads``-ed, looked at by type, a few rewritten (the server's tools and
instructions put into ``session.update``; tool-call events hidden from the page), and sent on.

``reserialise=True`` (the issue's reading, the default) sends every message as ``json.dumps`` of
what was parsed; ``False`` forwards the original text of the messages it did not change, as
``rtmt.py`` itself does (one ``json.dumps`` less per audio chunk).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

TOOLS = [
    {
        "type": "function",
        "name": "get_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {}},
    }
]
"""Server-side tools put into every ``session.update``, as the sample does with its search tool."""
INSTRUCTIONS = "You are a helpful assistant."
HIDDEN_FROM_PAGE = {
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
}


class PlainRelay:
    """Browser WebSocket at ``/realtime`` <-> ``upstream_url``, one task per direction."""

    def __init__(self, upstream_url: str, *, reserialise: bool = True) -> None:
        self.upstream_url = upstream_url
        self.reserialise = reserialise

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/realtime", self.handle)
        return app

    def _to_upstream(self, text: str) -> str | None:
        message: dict[str, Any] = json.loads(text)
        changed = False
        if message.get("type") == "session.update":
            session = message.setdefault("session", {})
            session["instructions"] = INSTRUCTIONS
            session["tools"] = TOOLS
            session["tool_choice"] = "auto"
            changed = True
        return json.dumps(message) if changed or self.reserialise else text

    def _to_page(self, text: str) -> str | None:
        message: dict[str, Any] = json.loads(text)
        kind = message.get("type")
        changed = False
        if kind in HIDDEN_FROM_PAGE:
            return None
        if kind == "session.created" or kind == "session.updated":
            session = message.get("session") or {}
            session["instructions"] = ""
            session["tools"] = []
            changed = True
        elif kind in ("response.output_item.added", "conversation.item.created"):
            item = message.get("item") or {}
            if item.get("type") in ("function_call", "function_call_output"):
                return None
        return json.dumps(message) if changed or self.reserialise else text

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        page = web.WebSocketResponse(max_msg_size=32 * 1024 * 1024)
        await page.prepare(request)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(self.upstream_url, max_msg_size=32 * 1024 * 1024) as upstream,
        ):

            async def page_to_upstream() -> None:
                async for msg in page:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        out = self._to_upstream(msg.data)
                        if out is not None:
                            await upstream.send_str(out)
                await upstream.close()

            async def upstream_to_page() -> None:
                async for msg in upstream:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        out = self._to_page(msg.data)
                        if out is not None:
                            await page.send_str(out)
                await page.close()

            try:
                await asyncio.gather(page_to_upstream(), upstream_to_page())
            except (ConnectionResetError, RuntimeError):
                pass  # the page went away mid-send, as the sample ignores it
        return page
