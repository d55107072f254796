"""What an SDP offer for a realtime call must hold, checked before any WebRTC stack sees it.

:func:`check_offer` is pure (text in, a summary or an :class:`OfferError` out), so the engine
answers a bad offer with a 400 that says what is wrong instead of the stack's assertion, and
the middle tier can run the same check before it forwards an offer upstream.

A usable offer (RFC 8866 / JSEP): starts with ``v=0``; has an ``m=audio`` line that is not
rejected (port 0) and offers Opus (``a=rtpmap:PT opus/48000/2``); carries ICE credentials
(``a=ice-ufrag``/``a=ice-pwd``) and a DTLS ``a=fingerprint`` at session or media level. An
``m=application`` (the ``oai-events`` data channel) is optional: without it the call has no
events on the peer's side, only on a sideband WebSocket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_OFFER_BYTES", "OfferError", "OfferSummary", "check_offer"]

MAX_OFFER_BYTES = 64 * 1024
"""A browser's offer is 2-6 KB; anything past this is not an offer."""

_MEDIA = re.compile(r"^m=(\S+) (\d+)(?:/\d+)? (\S+)(?: (.*))?$")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)", re.IGNORECASE)


class OfferError(ValueError):
    """An offer the engine cannot answer; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class OfferSummary:
    """What a valid offer holds, as far as the engine cares."""

    audio_mid: str | None
    """The ``a=mid`` of the first usable audio section (``None`` if it has none)."""
    audio_direction: str
    """The peer's direction of that section: ``sendrecv``, ``sendonly``, ``recvonly``."""
    data_channel: bool
    """Whether the offer has an ``m=application`` section (the ``oai-events`` channel)."""


def check_offer(sdp: str) -> OfferSummary:
    """Check an SDP offer (see the module documentation); raises :class:`OfferError`."""
    if not sdp or not sdp.strip():
        raise OfferError(
            "The request body is empty: send the SDP offer (pc.localDescription.sdp after "
            "createOffer/setLocalDescription) as the body, with Content-Type: application/sdp."
        )
    if len(sdp.encode("utf-8", errors="replace")) > MAX_OFFER_BYTES:
        raise OfferError(f"The SDP offer is larger than {MAX_OFFER_BYTES} bytes: not an offer.")
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if lines[0] != "v=0":
        shown = lines[0][:40]
        raise OfferError(
            f"Malformed SDP offer: it must begin with the line v=0, not {shown!r}. Send the "
            "offer's SDP text itself (not JSON, not the RTCSessionDescription object)."
        )
    bad = next((line for line in lines if len(line) < 2 or line[1] != "="), None)
    if bad is not None:
        raise OfferError(f"Malformed SDP offer: the line {bad[:60]!r} is not of the form x=value.")
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    if not sections:
        raise OfferError(
            "The SDP offer has no media sections (no m= lines): add an audio track or "
            "transceiver (pc.addTransceiver('audio')) before createOffer."
        )
    audio: list[str] | None = None
    kinds: list[str] = []
    for section in sections:
        match = _MEDIA.match(section[0])
        if match is None:
            raise OfferError(
                f"Malformed SDP offer: the media line {section[0][:60]!r} is not "
                "'m=<media> <port> <proto> <formats>'."
            )
        kind, port = match.group(1), int(match.group(2))
        kinds.append(kind)
        if kind == "audio" and port != 0 and audio is None:
            audio = section
    if audio is None:
        has = ", ".join(f"m={k}" for k in kinds)
        raise OfferError(
            f"The SDP offer has no audio m-line (it has {has}): a realtime call needs an audio "
            "track; add the microphone (pc.addTrack) or pc.addTransceiver('audio') before "
            "createOffer."
        )
    codecs = [m.group(2).lower() for m in (_RTPMAP.match(line) for line in audio) if m]
    if "opus" not in codecs:
        offered = ", ".join(sorted(set(codecs))) or "none"
        raise OfferError(
            f"The SDP offer's audio section offers no Opus codec (offered: {offered}): the "
            "realtime call sends and receives Opus audio."
        )
    for attribute, what in (
        ("a=ice-ufrag:", "ICE username fragment (a=ice-ufrag)"),
        ("a=ice-pwd:", "ICE password (a=ice-pwd)"),
        ("a=fingerprint:", "DTLS fingerprint (a=fingerprint)"),
    ):
        if not any(line.startswith(attribute) for line in session + audio):
            raise OfferError(f"Malformed SDP offer: its audio section has no {what}.")
    direction = "sendrecv"
    mid: str | None = None
    for line in audio:
        if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            direction = line[2:]
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
    if direction == "inactive":
        raise OfferError(
            "The SDP offer's audio section is inactive (a=inactive): a realtime call needs "
            "audio at least one way."
        )
    return OfferSummary(
        audio_mid=mid, audio_direction=direction, data_channel="application" in kinds
    )
