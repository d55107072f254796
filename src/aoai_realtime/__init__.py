"""aoai-realtime: voice agents on Azure OpenAI /realtime, in Python.

The SDK in a few names::

    import aoai_realtime as rt

    async with rt.connect(session=rt.SessionConfig(instructions="Be brief")) as session:
        response = await session.send_text("Hello!")
        print((await response.done()).transcript)

``connect`` reads the settings from the environment (``AZURE_OPENAI_ENDPOINT``,
``AZURE_OPENAI_DEPLOYMENT``, ``AZURE_OPENAI_API_KEY`` or ``az login``, ``AZURE_OPENAI_API_VERSION``
for the preview dialect), or takes them as arguments. See ``docs/sdk.md``.
"""

from ._version import __version__
from .auth import ApiKeyCredential, AuthError, Credential, CredentialLike, EntraIdCredential
from .calls import (
    CallAnswer,
    ClientSecret,
    RequestFailed,
    create_call,
    create_client_secret,
    hangup_call,
)
from .client import (
    AuthenticationError,
    CallNotFound,
    ConnectError,
    ConnectionClosed,
    DeploymentNotFound,
    FunctionCall,
    HandshakeError,
    RateLimited,
    RealtimeClient,
    RealtimeError,
    ResponseResult,
    ResponseStream,
    ServiceError,
    SessionResumed,
    TranscriptionError,
    connect,
)
from .config import ConfigError, Settings
from .protocol import Conversation, ProtocolError, SessionConfig, Transcription, TurnDetection
from .protocol import events as events
from .protocol.events import ErrorEvent, ServerEvent, UnknownEvent
from .tools import Tool, ToolRegistry, tool

__all__ = [
    "ApiKeyCredential",
    "AuthError",
    "AuthenticationError",
    "CallAnswer",
    "CallNotFound",
    "ClientSecret",
    "ConfigError",
    "ConnectError",
    "ConnectionClosed",
    "Conversation",
    "Credential",
    "CredentialLike",
    "DeploymentNotFound",
    "EntraIdCredential",
    "ErrorEvent",
    "FunctionCall",
    "HandshakeError",
    "ProtocolError",
    "RateLimited",
    "RealtimeClient",
    "RealtimeError",
    "RequestFailed",
    "ResponseResult",
    "ResponseStream",
    "ServerEvent",
    "ServiceError",
    "SessionConfig",
    "SessionResumed",
    "Settings",
    "Tool",
    "ToolRegistry",
    "Transcription",
    "TranscriptionError",
    "TurnDetection",
    "UnknownEvent",
    "__version__",
    "connect",
    "create_call",
    "create_client_secret",
    "events",
    "hangup_call",
    "tool",
]
