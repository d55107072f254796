"""Faults on request: the failures a client of the service must survive, made reproducible.

A fault is written ``KIND[:ARG][:KEY=VALUE]...``; several are separated by commas or given as
repeated ``fault`` query parameters (``?fault=close:1011:after=5&fault=delay_audio:800``) or
repeated ``--fault`` flags. Engine-wide faults (flags) and a connection's faults (query) add up;
the connection's win where both set the same kind.

==================================  ==========================================================
``close[:CODE][:after=N]``          close the WebSocket with CODE (default 1011) once N server
                                    events (default 0; ``session.created`` counts) have been sent
``server_error[:N]``                the Nth response of the session (default 1) fails: an
                                    ``error`` event of type ``server_error``, then
                                    ``response.done`` with status ``failed``
``expire[:SECONDS]``                after SECONDS (default 1), an ``error`` with code
                                    ``session_expired``, then the socket closes (1000)
``delay_audio[:MS]``                hold back the first audio delta of every response by MS
                                    (default 1000) milliseconds
``refuse[:STATUS]``                 refuse the handshake with HTTP STATUS: 401 (default), 403,
                                    429 (with ``Retry-After``), 500 or 503
==================================  ==========================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

REFUSE_STATUSES = (401, 403, 429, 500, 503)


class FaultSpecError(ValueError):
    """A fault specification that does not parse; the message says what would."""


@dataclass(frozen=True)
class Faults:
    """The faults of one connection (all off by default)."""

    close_code: int | None = None
    close_after_events: int = 0
    server_error_response: int | None = None
    expire_after_s: float | None = None
    delay_audio_ms: int = 0
    refuse_status: int | None = None

    @property
    def any(self) -> bool:
        return self != Faults()

    def merged(self, other: Faults) -> Faults:
        """These faults with every fault that ``other`` sets replacing ours."""
        changes = {
            f.name: getattr(other, f.name)
            for f in dataclasses.fields(other)
            if getattr(other, f.name) != f.default
        }
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, specs: str | Iterable[str]) -> Faults:
        """Read fault specifications (see the module documentation)."""
        if isinstance(specs, str):
            specs = [specs]
        faults = cls()
        for group in specs:
            for spec in group.split(","):
                spec = spec.strip()
                if spec:
                    faults = faults.merged(_parse_one(spec))
        return faults

    def describe(self) -> str:
        """The faults in the same syntax they are written in (empty when none)."""
        out: list[str] = []
        if self.close_code is not None:
            out.append(f"close:{self.close_code}:after={self.close_after_events}")
        if self.server_error_response is not None:
            out.append(f"server_error:{self.server_error_response}")
        if self.expire_after_s is not None:
            out.append(f"expire:{self.expire_after_s:g}")
        if self.delay_audio_ms:
            out.append(f"delay_audio:{self.delay_audio_ms}")
        if self.refuse_status is not None:
            out.append(f"refuse:{self.refuse_status}")
        return ",".join(out)


_SYNTAX = (
    "close[:CODE][:after=N], server_error[:N], expire[:SECONDS], delay_audio[:MS], refuse[:STATUS]"
)


def _parse_one(spec: str) -> Faults:
    kind, *rest = spec.split(":")
    args = [a for a in rest if "=" not in a]
    opts: dict[str, str] = {}
    for a in rest:
        if "=" in a:
            key, _, value = a.partition("=")
            opts[key.strip()] = value.strip()
    kind = kind.strip().lower()
    if len(args) > 1:
        raise FaultSpecError(f"fault {spec!r}: too many arguments; faults are {_SYNTAX}")
    arg = args[0].strip() if args else None

    def number(text: str, what: str, cast: type[int] | type[float] = int) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise FaultSpecError(f"fault {spec!r}: {what} must be a number, not {text!r}") from None
        if value < 0:
            raise FaultSpecError(f"fault {spec!r}: {what} must not be negative")
        return value

    def no_options(*allowed: str) -> None:
        for key in opts:
            if key not in allowed:
                raise FaultSpecError(f"fault {spec!r}: unknown option {key!r}")

    if kind == "close":
        no_options("after")
        code = int(number(arg, "the close code")) if arg else 1011
        if not (code == 1000 or 1001 <= code <= 1014 or 3000 <= code <= 4999):
            raise FaultSpecError(f"fault {spec!r}: {code} is not a close code a server may send")
        after = int(number(opts["after"], "after")) if "after" in opts else 0
        return Faults(close_code=code, close_after_events=after)
    if kind == "server_error":
        no_options("response")
        text = opts.get("response", arg)
        n = int(number(text, "the response number")) if text else 1
        return Faults(server_error_response=max(1, n))
    if kind == "expire":
        no_options("after")
        text = opts.get("after", arg)
        return Faults(expire_after_s=float(number(text, "seconds", float)) if text else 1.0)
    if kind in ("delay_audio", "delay"):
        no_options()
        return Faults(delay_audio_ms=int(number(arg, "milliseconds")) if arg else 1000)
    if kind == "refuse":
        no_options()
        status = int(number(arg, "the HTTP status")) if arg else 401
        if status not in REFUSE_STATUSES:
            raise FaultSpecError(
                f"fault {spec!r}: refuse takes one of {', '.join(map(str, REFUSE_STATUSES))}"
            )
        return Faults(refuse_status=status)
    raise FaultSpecError(f"unknown fault {kind!r}; faults are {_SYNTAX}")
