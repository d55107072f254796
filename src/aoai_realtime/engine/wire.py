"""One connection's wire format: client frames in, server events out, in its dialect.

Inside, the engine speaks only the GA vocabulary. A preview connection's client events are
translated in (``preview_to_ga_client``), and server events out (``ga_to_preview_server``, plus a
``conversation.created`` after ``session.created``; the GA-only fields the preview protocol does
not have are left out by the translation). ``session.update`` is validated in the
connection's own dialect, strictly, as the service does: GA needs ``session.type`` and knows no
``temperature``; the preview knows no ``session.type``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..protocol.dialect import Dialect, ga_to_preview_server, preview_to_ga_client
from ..protocol.errors import ProtocolError, missing_parameter, unknown_parameter
from ..protocol.events import ClientEvent, SessionUpdate, parse_client_event
from ..protocol.frames import load_client_event
from ..protocol.session import SessionConfig
from . import ids


@dataclass
class Decoded:
    """A client event in the GA vocabulary; ``session`` is set for ``session.update``."""

    event: ClientEvent
    session: SessionConfig | None = None


class Wire:
    """Decode client frames and encode server events for one connection's dialect."""

    def __init__(self, dialect: Dialect, *, conversation_id: str, azure: bool = True) -> None:
        self.dialect = dialect
        self.conversation_id = conversation_id
        self.azure = azure

    # ------------------------------------------------------------------ in

    def decode(self, raw: str | bytes) -> Decoded:
        """Parse and validate one client frame; raises :class:`ProtocolError` like the service."""
        obj = load_client_event(raw)
        event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
        if obj.get("type") == "session.update":
            return self._session_update(obj, event_id)
        if self.dialect is Dialect.PREVIEW:
            try:
                obj = preview_to_ga_client(obj)
            except ProtocolError as exc:
                exc.event_id = event_id
                raise
        return Decoded(parse_client_event(obj))

    def _session_update(self, obj: dict[str, Any], event_id: str | None) -> Decoded:
        for key in obj:
            if key not in ("type", "event_id", "session"):
                raise unknown_parameter(key, event_id)
        if not isinstance(event_id, (str, type(None))) or (
            "event_id" in obj and not isinstance(obj["event_id"], str)
        ):
            raise ProtocolError("Invalid type for 'event_id': expected a string.", param="event_id")
        session = obj.get("session")
        if session is None:
            raise missing_parameter("session", event_id)
        if not isinstance(session, dict):
            raise ProtocolError(
                "Invalid type for 'session': expected an object.",
                param="session",
                event_id=event_id,
            )
        try:
            if self.dialect is Dialect.GA:
                if "type" not in session:
                    raise missing_parameter("session.type")
                config = SessionConfig.from_ga(session, strict=True)
            else:
                config = SessionConfig.from_preview(session, strict=True)
        except ProtocolError as exc:
            exc.event_id = event_id
            raise
        return Decoded(SessionUpdate(event_id=event_id, session=session), config)

    # ------------------------------------------------------------------ out

    def encode(self, event: dict[str, Any]) -> list[str]:
        """The JSON frames for one GA-vocabulary server event (none, one or two)."""
        if self.dialect is Dialect.GA:
            return [json.dumps(event)]
        out = ga_to_preview_server(event, azure=self.azure)
        if event.get("type") == "session.created":
            out.append(
                {
                    "type": "conversation.created",
                    "event_id": ids.event_id(),
                    "conversation": {"id": self.conversation_id, "object": "realtime.conversation"},
                }
            )
        return [json.dumps(e) for e in out]
