"""Going on after the service ends a session, without I/O: when to resume, how often, and the
restore's acknowledgements.

The SDK (``auto_reconnect``) and the middle tier (``serve``'s resume) share all of it:

* :class:`SessionEnd`: how a session ended, whether that is worth resuming, and its wording;
* :class:`ResumePolicy`: the attempt budget (:class:`~.restore.ResumeBudget`) and, per failed
  attempt, the verdict of :func:`~.handshake.classify` (retry, give up, or refresh the credential
  once);
* :class:`Restore`: the events that set up the new session (the session configuration, then the
  recent history from :func:`~.restore.restore_events`) and the tracking of their
  acknowledgements, fed with the new session's events by the caller's one reader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .handshake import HandshakeFailure, Verdict, classify
from .restore import RESUMABLE_CLOSE_CODES, ResumeBudget

__all__ = ["Restore", "ResumePolicy", "SessionEnd"]


@dataclass(frozen=True)
class SessionEnd:
    """A session the service ended: ``session_expired`` (its maximum duration) or ``closed``
    (the connection closed; ``close_code`` says how, ``None`` when there was no close frame)."""

    cause: Literal["session_expired", "closed"]
    detail: str = ""
    close_code: int | None = None

    @property
    def resumable(self) -> bool:
        """Worth a new session: an expiry, or a close that was not deliberate (1000)."""
        if self.cause == "session_expired":
            return True
        return self.close_code is None or self.close_code in RESUMABLE_CLOSE_CODES

    def describe(self) -> str:
        """One sentence for people, capitalised, without a full stop."""
        if self.cause == "session_expired":
            return "The service ended the session (session_expired)"
        code = "no close code" if self.close_code is None else f"code {self.close_code}"
        detail = f": {self.detail}" if self.detail else ""
        return f"The connection to the service closed ({code}{detail})"

    def resumed_message(self, restored: int, cut: bool = False) -> str:
        """What the user is told once a new session goes on."""
        noun = "item" if restored == 1 else "items"
        more = " The reply in progress was cut short." if cut else ""
        return (
            f"{self.describe()}; a new session continues the conversation ({restored} {noun} "
            f"restored).{more}"
        )


class ResumePolicy:
    """How often to try, and whether a failed attempt is worth another.

    :meth:`next_attempt` records an attempt and returns how long to wait before it, or ``None``
    once the budget is spent. :meth:`after_failure` classifies a failed handshake; a 401 gets
    one attempt with a fresh credential (``refresh_credential``), a second 401 in a row gives up.
    """

    def __init__(self, budget: ResumeBudget | None = None) -> None:
        self.budget = budget or ResumeBudget()
        self._refreshed = False

    def next_attempt(self, now: float) -> float | None:
        return self.budget.next_delay(now)

    def after_failure(self, failure: HandshakeFailure, *, can_refresh: bool = True) -> Verdict:
        """``can_refresh``: whether the credential can fetch a new token (Entra ID can; a fixed
        key cannot, so its 401 gives up at once)."""
        verdict = classify(failure)
        if verdict == "refresh_credential":
            if self._refreshed or not can_refresh:
                return "give_up"
            self._refreshed = True
            return verdict
        self._refreshed = False
        return verdict

    def succeeded(self) -> None:
        self._refreshed = False


@dataclass
class Restore:
    """Setting up a new session: :attr:`events` to send in order, then every server event of the
    new session goes to :meth:`on_event` until :attr:`done`.

    ``session`` (GA ``session`` object, may be ``None``) becomes a ``session.update``; ``items``
    (GA items, e.g. from :func:`~.restore.restore_events`) become ``conversation.item.create``
    events, each given an id when it has none so its ``conversation.item.added`` is recognised.
    ``new_event_id()`` and ``new_item_id()`` make the ids (at most 32 characters for items). A refused event (an ``error`` naming its
    ``event_id``) counts as answered; :attr:`refused` keeps those errors.
    """

    session: dict[str, Any] | None
    items: list[dict[str, Any]]
    new_event_id: Callable[[], str]
    new_item_id: Callable[[], str]
    events: list[dict[str, Any]] = field(init=False, default_factory=list)
    accepted: int = field(init=False, default=0)
    refused: list[dict[str, Any]] = field(init=False, default_factory=list)
    ended: SessionEnd | None = field(init=False, default=None)
    """Set when the new session expired while being set up."""
    _update_id: str | None = field(init=False, default=None)
    _waiting: dict[str, str] = field(init=False, default_factory=dict)  # event id -> item id

    def __post_init__(self) -> None:
        if self.session:
            self._update_id = self.new_event_id()
            self.events.append(
                {"type": "session.update", "event_id": self._update_id, "session": self.session}
            )
        for item in self.items:
            data = dict(item)
            data.setdefault("id", self.new_item_id())
            event_id = self.new_event_id()
            self._waiting[event_id] = data["id"]
            self.events.append(
                {"type": "conversation.item.create", "event_id": event_id, "item": data}
            )

    @property
    def event_ids(self) -> set[str]:
        return {e["event_id"] for e in self.events}

    @property
    def item_ids(self) -> set[str]:
        """The ids of the items being restored (their echoes are not news to the page)."""
        return {e["item"]["id"] for e in self.events if e["type"] == "conversation.item.create"}

    @property
    def done(self) -> bool:
        return self.ended is not None or (self._update_id is None and not self._waiting)

    def on_event(self, event: Mapping[str, Any]) -> None:
        """One server event of the new session (GA vocabulary)."""
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") or {}
            if error.get("code") == "session_expired":
                self.ended = SessionEnd("session_expired", str(error.get("message") or ""))
                return
            refused = str(error.get("event_id") or "")
            if refused and refused == self._update_id:
                self._update_id = None
                self.refused.append(dict(error))
            elif refused in self._waiting:
                del self._waiting[refused]
                self.refused.append(dict(error))
        elif kind == "session.updated":
            self._update_id = None
        elif kind == "conversation.item.added":
            item_id = (event.get("item") or {}).get("id")
            for event_id, waiting_id in list(self._waiting.items()):
                if waiting_id == item_id:
                    del self._waiting[event_id]
                    self.accepted += 1
                    break
