"""Identifiers shaped like the service's: a prefix and 22 random letters and digits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_TO_ALPHABET = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(256))
"""Random bytes to base62 characters in one ``translate`` (every event has an id: this is
about 35 times cheaper than choosing character by character; the slight skew of ``b % 62``
does not matter for an identifier)."""


def new_id(prefix: str) -> str:
    """``prefix`` + ``_`` + 22 random base62 characters, e.g. ``event_Bx3...``."""
    return prefix + "_" + secrets.token_bytes(22).translate(_TO_ALPHABET).decode("ascii")


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
