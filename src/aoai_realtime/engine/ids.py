"""Identifiers shaped like the service's: a prefix and 22 random letters and digits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """``prefix`` + ``_`` + 22 random base62 characters, e.g. ``event_Bx3...``."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(22))


def event_id() -> str:
    return new_id("event")


def item_id() -> str:
    return new_id("item")


def response_id() -> str:
    return new_id("resp")


def call_id() -> str:
    return new_id("call")


def session_id() -> str:
    return new_id("sess")


def conversation_id() -> str:
    return new_id("conv")
