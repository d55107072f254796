"""Protocol errors: what the service would answer with an ``error`` event."""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """A client event the service would refuse.

    ``code`` and ``param`` follow the service's ``error`` event (``param`` names the offending
    field, e.g. ``session.type``), so a server can turn this straight into an ``error`` event.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.type = type

    def to_error(self) -> dict[str, Any]:
        """The ``error`` object of an ``error`` event."""
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


def unknown_parameter(param: str, event_id: str | None = None) -> ProtocolError:
    """The service's answer to a field it does not know (``Unknown parameter: 'session.type'``)."""
    return ProtocolError(
        f"Unknown parameter: '{param}'.",
        code="unknown_parameter",
        param=param,
        event_id=event_id,
    )


def invalid_value(param: str, message: str, event_id: str | None = None) -> ProtocolError:
    return ProtocolError(message, code="invalid_value", param=param, event_id=event_id)


def missing_parameter(param: str, event_id: str | None = None) -> ProtocolError:
    return ProtocolError(
        f"Missing required parameter: '{param}'.",
        code="missing_required_parameter",
        param=param,
        event_id=event_id,
    )
