"""Structured logs: one line per event, ``key=value`` (default) or JSON.

Every line of a relayed connection carries ``conn=`` (the middle tier's connection id) and, from
the upstream handshake on, ``request_id=`` (the ``x-ms-client-request-id`` sent to Azure), so a
page's session can be followed here and traced in Azure. Nothing secret is ever logged: the
relay logs URLs (which never carry keys) and credential descriptions, never headers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["LOGGER_NAME", "KeyValueFormatter", "JsonFormatter", "configure_logging", "log"]

LOGGER_NAME = "aoai_realtime.server"
logger = logging.getLogger(LOGGER_NAME)


def log(event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log ``event`` (a dotted name such as ``relay.open``) with its fields."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{ms:03d}"


class KeyValueFormatter(logging.Formatter):
    """``2025-01-01T12:00:00.000 info relay.open conn=ab12cd endpoint=local``"""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        parts = [_timestamp(record), record.levelname.lower(), record.getMessage()]
        parts.extend(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"ts", "level", "event", ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        out.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is when a record is logged (not the object it was when
    logging was configured, which an embedding host or a test runner may have closed since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(
    level: str | int = "info", *, json_lines: bool = False, stream: TextIO | None = None
) -> None:
    """Send the middle tier's (and aiohttp's access) logs to ``stream`` (stderr by default)."""
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    for name in (LOGGER_NAME, "aoai_realtime.engine"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(numeric)
        lg.propagate = False
