"""One connection's wire format: client frames in, server events out, in its dialect.

Inside, the engine speaks only the GA vocabulary. A preview connection's client events are
translated in (``preview_to_ga_client``), and server events out (``ga_to_preview_server``, plus a
``conversation.created`` after ``session.created``; the GA-only fields the preview protocol does
not have are left out by the translation). ``session.update`` is validated in the
connection's own dialect, strictly, as the service does: GA needs ``session.type`` and knows no
``temperature``; the preview knows no ``session.type``, and updates a transcription session with
its own ``transcription_session.update``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..protocol.dialect import Dialect, ga_to_preview_server, preview_to_ga_client
from ..protocol.errors import ProtocolError, invalid_type, missing_parameter, unknown_parameter
from ..protocol.events import ClientEvent, SessionUpdate, parse_client_event
from ..protocol.frames import load_client_event
from ..protocol.session import SessionConfig
from . import ids

TRANSCRIPTION_UPDATE = "transcription_session.update"
"""The preview's update of a transcription session (GA: ``session.update``, type
``transcription``)."""


@dataclass
class Decoded:
    """A client event in the GA vocabulary; ``session`` is set for ``session.update`` (and the
    preview's ``transcription_session.update``, with ``transcription_event``)."""

    event: ClientEvent
    session: SessionConfig | None = None
    transcription_event: bool = False
    """The update came as the preview's ``transcription_session.update``."""


class Wire:
    """Decode client frames and encode server events for one connection's dialect."""

    def __init__(self, dialect: Dialect, *, conversation_id: str, azure: bool = True) -> None:
        self.dialect = dialect
        self.conversation_id = conversation_id
        self.azure = azure

    # ------------------------------------------------------------------ in

    def decode(self, raw: str | bytes) -> Decoded:
        """Parse and validate one client frame; raises :class:`ProtocolError` like the service,
        carrying the frame's ``event_id`` once it parsed. Its ``param`` is in GA terms for every
        event but a preview ``session.update`` (whose names are the preview's already):
        :meth:`encode` renames an ``error`` for a preview client."""
        obj = load_client_event(raw)
        event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
        try:
            kind = obj.get("type")
            if kind == "session.update" or (
                kind == TRANSCRIPTION_UPDATE and self.dialect is Dialect.PREVIEW
            ):
                return self._session_update(obj, event_id)
            if self.dialect is Dialect.PREVIEW:
                obj = preview_to_ga_client(obj)
            elif (
                kind == "response.create"
                and isinstance(obj.get("response"), dict)
                and "temperature" in obj["response"]  # GA has no temperature
            ):
                raise unknown_parameter("response.temperature")
            return Decoded(parse_client_event(obj))
        except ProtocolError as exc:
            exc.event_id = event_id
            raise

    def _session_update(self, obj: dict[str, Any], event_id: str | None) -> Decoded:
        for key in obj:
            if key not in ("type", "event_id", "session"):
                raise unknown_parameter(key, event_id)
        if "event_id" in obj and not isinstance(obj["event_id"], str):
            raise invalid_type("event_id", "a string", obj["event_id"])
        if "session" not in obj:
            raise missing_parameter("session", event_id)
        session = obj["session"]
        if not isinstance(session, dict):
            raise invalid_type("session", "an object", session, event_id)
        transcription_event = obj.get("type") == TRANSCRIPTION_UPDATE
        try:
            if self.dialect is Dialect.GA:
                if "type" not in session:
                    raise missing_parameter("session.type")
                config = SessionConfig.from_ga(session, strict=True)
            elif transcription_event:
                config = SessionConfig.from_preview_transcription(session, strict=True)
            else:
                config = SessionConfig.from_preview(session, strict=True)
        except ProtocolError as exc:
            exc.event_id = event_id
            raise
        return Decoded(
            SessionUpdate(event_id=event_id, session=session), config, transcription_event
        )

    # ------------------------------------------------------------------ out

    def encode(self, event: dict[str, Any]) -> list[str]:
        """The JSON frames for one GA-vocabulary server event (none, one or two)."""
        if self.dialect is Dialect.GA:
            return [json.dumps(event)]
        out = ga_to_preview_server(event, azure=self.azure)
        session = event.get("session")
        transcription = isinstance(session, dict) and session.get("type") == "transcription"
        if event.get("type") == "session.created" and not transcription:
            out.append(
                {
                    "type": "conversation.created",
                    "event_id": ids.event_id(),
                    "conversation": {"id": self.conversation_id, "object": "realtime.conversation"},
                }
            )
        return [json.dumps(e) for e in out]
