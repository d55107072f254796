"""The realtime protocol without I/O: events, session configuration, dialects, conversation state.

Nothing here opens a socket or needs an event loop, so the SDK client, the middle tier and the
local engine share it, and it can be tested with plain data.
"""

from .conversation import Conversation, ItemState, ResponseState, b64_decoded_len, cut_transcript
from .dialect import Dialect
from .errors import ProtocolError
from .events import (
    ClientEvent,
    ServerEvent,
    UnknownEvent,
    parse_client_event,
    parse_item,
    parse_server_event,
)
from .session import GA_VOICES, PREVIEW_VOICES, SessionConfig, Transcription, TurnDetection

__all__ = [
    "GA_VOICES",
    "PREVIEW_VOICES",
    "ClientEvent",
    "Conversation",
    "Dialect",
    "ItemState",
    "ProtocolError",
    "ResponseState",
    "ServerEvent",
    "SessionConfig",
    "Transcription",
    "TurnDetection",
    "UnknownEvent",
    "b64_decoded_len",
    "cut_transcript",
    "parse_client_event",
    "parse_item",
    "parse_server_event",
]
