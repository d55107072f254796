"""Parameter names of the two dialects: the one table an ``error``'s ``param`` is renamed by.

A GA client and a preview client name some fields differently (``session.max_output_tokens`` is
the preview's ``session.max_response_output_tokens``); an error names the parameter as its
client spelled it. No dependency on the rest of the protocol package, so both the session
model and the wire translation use it.
"""

from __future__ import annotations

import re
from typing import Any

PREVIEW_PARAMS: dict[str, str] = {
    "session.output_modalities": "session.modalities",
    "session.max_output_tokens": "session.max_response_output_tokens",
    "session.audio.input.format": "session.input_audio_format",
    "session.audio.input.transcription": "session.input_audio_transcription",
    "session.audio.input.turn_detection": "session.turn_detection",
    "session.audio.input.noise_reduction": "session.input_audio_noise_reduction",
    "session.audio.output.format": "session.output_audio_format",
    "session.audio.output.voice": "session.voice",
    "session.audio.output.speed": "session.speed",
    "response.output_modalities": "response.modalities",
    "response.max_output_tokens": "response.max_response_output_tokens",
    "response.audio.output.format": "response.output_audio_format",
    "response.audio.output.voice": "response.voice",
}
"""GA parameter names -> the preview's, for the parameters whose names differ: the one table an
``error``'s ``param`` (and its message) is renamed by, either way. A name maps by its longest
prefix in the table (``session.audio.input.turn_detection.threshold`` ->
``session.turn_detection.threshold``); the parameters of a GA format object (``.type``,
``.rate``) are the preview's format string itself (``session.input_audio_format``)."""

_GA_PARAMS = {preview: ga for ga, preview in PREVIEW_PARAMS.items()}
_FORMAT_PARAMS = {k for k in PREVIEW_PARAMS if k.endswith(".format")}
_QUOTED_PARAM = re.compile(r"'((?:session|response)[.\[][^'\s]*)'")


def _renamed_param(param: str, table: dict[str, str]) -> str:
    for end in range(len(param), 0, -1):  # longest prefix on a field boundary
        if end < len(param) and param[end] not in ".[":
            continue
        head = param[:end]
        renamed = table.get(head)
        if renamed is not None:
            if table is PREVIEW_PARAMS and head in _FORMAT_PARAMS:
                return renamed  # the preview's format is a string: no fields
            return renamed + param[end:]
    return param


def param_to_preview(param: str) -> str:
    """A GA parameter name as the preview's client spells it (unchanged if it is the same)."""
    return _renamed_param(param, PREVIEW_PARAMS)


def param_to_ga(param: str) -> str:
    """A preview parameter name in the GA's terms (unchanged if it is the same)."""
    return _renamed_param(param, _GA_PARAMS)


def _renamed_error(error: dict[str, Any], rename: Any) -> dict[str, Any]:
    param = error.get("param")
    if not isinstance(param, str) or error.get("code") == "unknown_parameter":
        return error  # an unknown parameter is named as the client wrote it, in any dialect
    renamed = rename(param)
    if renamed == param:
        return error
    message = error.get("message")
    if isinstance(message, str):
        message = _QUOTED_PARAM.sub(lambda m: f"'{rename(m.group(1))}'", message)
    return {**error, "param": renamed, "message": message}


def error_to_preview(error: dict[str, Any]) -> dict[str, Any]:
    """An ``error`` object naming GA parameters, as a preview client knows them (its ``param``,
    and the parameter names quoted in its ``message``). An ``unknown_parameter`` is left as it
    is: it names the client's own key (a preview client's ``session.output_modalities`` is
    unknown by that name), and the preview's own names map to themselves."""
    return _renamed_error(error, param_to_preview)


def error_to_ga(error: dict[str, Any]) -> dict[str, Any]:
    """An ``error`` object from a preview endpoint, naming the GA's parameters."""
    return _renamed_error(error, param_to_ga)
