"""Recordings of realtime sessions: every event both ways, one JSON object per line.

The format (``--record FILE.jsonl`` on ``talk``, ``chat`` and ``serve``; read by ``replay``)::

    {"recording": 1, "url": "ws://…/openai/v1/realtime?model=…", "dialect": "ga", "started": "2025-…Z"}
    {"t": 0.0123, "dir": "recv", "event": {"type": "session.created", …}}
    {"t": 0.0130, "dir": "send", "event": {"type": "session.update", …}}

The first line is a header; every other line is one event as it crossed the wire (in the
dialect of the connection, audio included), with ``t`` the seconds since the recording started
and ``dir`` ``send`` (client to server) or ``recv`` (server to client). A message that was not a
JSON object is kept as ``{"t": …, "dir": …, "raw": "…"}``. Secrets never go in: the URL loses
any ``api-key`` query parameter, and no handshake headers are written.

:class:`Recorder` is the writer. Hand its :meth:`Recorder.record` to anything that sees events
(the SDK client, the middle tier's relay observer, the commands)::

    with Recorder.open("session.jsonl", url=url, dialect="ga") as rec:
        rec.record("send", {"type": "response.create"})

:func:`read_recording` reads a file back, checking its shape line by line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "FORMAT_VERSION",
    "Direction",
    "Entry",
    "Recorder",
    "Recording",
    "RecordingError",
    "read_recording",
    "connection_path",
    "redact_url",
]

FORMAT_VERSION = 1
Direction = Literal["send", "recv"]
_DIRECTIONS = ("send", "recv")
_ALIASES: dict[str, tuple[str, str | None]] = {
    "send": ("send", None),
    "recv": ("recv", None),
    # The middle tier's RelayObserver names: what went upstream, what came back, and the
    # relay's own notices to the page (kept, marked, and skipped by replay).
    "client": ("send", None),
    "server": ("recv", None),
    "relay": ("recv", "relay"),
}
_SECRET_QUERY_KEYS = frozenset({"api-key", "api_key", "key", "access_token", "token", "sig"})

PathLike = Union[str, "os.PathLike[str]"]


class RecordingError(ValueError):
    """A recording file that cannot be read; the message names the file and line."""


def redact_url(url: str | None) -> str | None:
    """``url`` without credentials: user-info and secret query parameters (``api-key=``…) go."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    kept = [(k, v) for k, v in query if k.lower() not in _SECRET_QUERY_KEYS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment))


def connection_path(path: PathLike, conn_id: str) -> Path:
    """``session.jsonl`` -> ``session-CONN.jsonl``: one file per connection of a server."""
    p = Path(path)
    return p.with_name(f"{p.stem}-{conn_id}{p.suffix or '.jsonl'}")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Recorder:
    """Writes a session recording, one line per event, flushed as it goes.

    ``record(direction, event)`` takes ``"send"`` or ``"recv"`` and the event as a dict, a
    pydantic model (anything with ``model_dump``) or the raw JSON text of a WebSocket message.
    It is safe to call from several threads, never raises for an odd event (a message that is
    not a JSON object is kept as ``raw`` text), and does nothing once :meth:`close` is called.
    Timestamps come from a monotonic clock, so ``t`` never goes backwards.
    """

    def __init__(
        self,
        file: IO[str],
        *,
        url: str | None = None,
        dialect: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        close_file: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self._file = file
        self._clock = clock
        self._close_file = close_file
        self._lock = threading.Lock()
        self._start = clock()
        self._closed = False
        self.url = redact_url(url)
        self.dialect = dialect
        self.count = 0
        """Events recorded so far."""
        header: dict[str, Any] = {
            "recording": FORMAT_VERSION,
            "url": self.url,
            "dialect": dialect,
            "started": _now_iso(),
        }
        if extra:
            header.update({k: v for k, v in extra.items() if k not in header})
        self._write(header)

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        url: str | None = None,
        dialect: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Recorder:
        """Create (or overwrite) ``path`` and write the header line."""
        f = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by Recorder.close
        return cls(f, url=url, dialect=dialect, close_file=True, extra=extra)

    @property
    def closed(self) -> bool:
        return self._closed

    def elapsed(self) -> float:
        """Seconds since the recording started (the ``t`` of an event recorded now)."""
        return self._clock() - self._start

    def record(self, direction: str, event: Any) -> None:
        """Append one event; ``direction`` is ``"send"`` (to the server) or ``"recv"``.

        The middle tier's observer names are accepted too, so ``Relay(observer=rec.record)``
        works: ``"client"`` (sent upstream) is ``send``, ``"server"`` is ``recv``, and
        ``"relay"`` (the relay's own notice to the page) is ``recv`` marked ``"from": "relay"``,
        which replay does not expect from a server.
        """
        alias = _ALIASES.get(direction)
        if alias is None:
            raise ValueError(f"direction must be 'send' or 'recv' (got {direction!r})")
        line: dict[str, Any] = {"t": 0.0, "dir": alias[0]}
        if alias[1] is not None:
            line["from"] = alias[1]
        payload = _as_event(event)
        if isinstance(payload, dict):
            line["event"] = payload
        else:
            line["raw"] = payload
        with self._lock:
            if self._closed:
                return
            line["t"] = round(self._clock() - self._start, 6)
            self._write_locked(line)
            self.count += 1

    __call__ = record

    def send(self, event: Any) -> None:
        """``record("send", event)``."""
        self.record("send", event)

    def recv(self, event: Any) -> None:
        """``record("recv", event)``."""
        self.record("recv", event)

    def _write(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            self._write_locked(obj)

    def _write_locked(self, obj: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Stop recording and close the file (if this recorder opened it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._close_file:
                self._file.close()
            else:
                self._file.flush()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Recorder({self.url!r}, dialect={self.dialect!r}, {self.count} events, {state})"


def _as_event(event: Any) -> dict[str, Any] | str:
    if isinstance(event, dict):
        return event
    if isinstance(event, Mapping):
        return dict(event)
    if isinstance(event, (bytes, bytearray, memoryview)):
        event = bytes(event).decode("utf-8", errors="replace")
    if isinstance(event, str):
        try:
            obj = json.loads(event)
        except ValueError:
            return event
        return obj if isinstance(obj, dict) else event
    dump = getattr(event, "model_dump", None)
    if callable(dump):
        out = dump(mode="json", exclude_none=True)
        if isinstance(out, dict):
            return out
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, dict):
            return out
    return str(event)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Entry:
    """One recorded event."""

    t: float
    dir: Direction
    event: dict[str, Any] | None
    """The event, or ``None`` when the message was not a JSON object (see :attr:`raw`)."""
    raw: str | None = None
    line: int = 0
    """Line number in the file (1-based), for messages."""
    source: str | None = None
    """``"relay"`` for a middle tier's own notice to the page (not a server event)."""

    @property
    def type(self) -> str:
        if self.event is None:
            return "(not json)"
        kind = self.event.get("type")
        return kind if isinstance(kind, str) else "(no type)"


@dataclass
class Recording:
    """A recording read back: the header's fields and the events in order."""

    url: str | None
    dialect: str | None
    started: str | None
    entries: list[Entry] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def sent(self) -> list[Entry]:
        return [e for e in self.entries if e.dir == "send"]

    def received(self) -> list[Entry]:
        return [e for e in self.entries if e.dir == "recv"]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def read_recording(path: PathLike) -> Recording:
    """Read a recording; raises :class:`RecordingError` naming the line that is wrong."""
    name = os.fspath(path)
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise RecordingError(f"{name}: cannot open: {exc.strerror or exc}") from None
    with f:
        header: dict[str, Any] | None = None
        entries: list[Entry] = []
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise RecordingError(f"{name}:{number}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise RecordingError(f"{name}:{number}: expected a JSON object")
            if header is None:
                if "recording" not in obj:
                    raise RecordingError(
                        f"{name}:{number}: not a recording: the first line must be the header "
                        '{"recording": 1, "url": …, "dialect": …, "started": …} written by '
                        "--record"
                    )
                if obj["recording"] != FORMAT_VERSION:
                    raise RecordingError(
                        f"{name}:{number}: recording format {obj['recording']!r} is not "
                        f"supported (this version reads format {FORMAT_VERSION})"
                    )
                header = obj
                continue
            direction = obj.get("dir")
            if direction not in _DIRECTIONS:
                raise RecordingError(
                    f"{name}:{number}: 'dir' must be 'send' or 'recv' (got {direction!r})"
                )
            event = obj.get("event")
            raw = obj.get("raw")
            if event is None and not isinstance(raw, str):
                raise RecordingError(f"{name}:{number}: the line has neither 'event' nor 'raw'")
            if event is not None and not isinstance(event, dict):
                raise RecordingError(f"{name}:{number}: 'event' must be a JSON object")
            t = obj.get("t", 0.0)
            if not isinstance(t, (int, float)) or isinstance(t, bool):
                raise RecordingError(f"{name}:{number}: 't' must be a number of seconds")
            source = obj.get("from") if isinstance(obj.get("from"), str) else None
            entries.append(Entry(float(t), direction, event, raw, number, source))
    if header is None:
        raise RecordingError(f"{name}: the file is empty (no recording header)")
    return Recording(
        url=header.get("url"),
        dialect=header.get("dialect"),
        started=header.get("started"),
        entries=entries,
        header=header,
        path=name,
    )
