"""Audio helpers for the realtime protocol: PCM16, resampling, WAV, G.711 and base64 chunks.

The service speaks PCM16 mono little-endian at 24 kHz (``pcm16`` / ``audio/pcm``) or G.711 at
8 kHz (``g711_ulaw`` / ``audio/pcmu``, ``g711_alaw`` / ``audio/pcma``). Everything here is plain
numpy plus soxr for resampling; no ``audioop`` (removed in Python 3.13).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import wave
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any, Literal, Union, overload

import numpy as np
import numpy.typing as npt
import soxr

__all__ = [
    "BYTES_PER_MS",
    "G711_RATE",
    "SAMPLE_RATE",
    "AudioFormat",
    "Resampler",
    "alaw_decode",
    "alaw_encode",
    "b64decode_audio",
    "b64encode_audio",
    "chunk_pcm16",
    "decode_from_format",
    "duration_ms",
    "encode_for_format",
    "float_to_pcm16",
    "format_bytes_per_ms",
    "format_sample_rate",
    "normalize_format",
    "pcm16_to_float",
    "read_audio_file",
    "read_wav",
    "resample",
    "rms_dbfs",
    "to_pcm16_24k",
    "ulaw_decode",
    "ulaw_encode",
    "wav_bytes",
    "write_wav",
]

SAMPLE_RATE = 24000
"""The service's PCM16 rate (Hz)."""
BYTES_PER_MS = 48
"""PCM16 mono at 24 kHz: 24 samples of 2 bytes per millisecond (100 ms = 4,800 bytes)."""
G711_RATE = 8000
"""G.711 (mu-law and A-law) rate (Hz): one byte per sample, 8 bytes per millisecond."""

AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
"""Canonical (preview) names of the three wire formats."""

FloatArray = npt.NDArray[np.float32]
PathLike = Union[str, os.PathLike[str]]


# --------------------------------------------------------------------------------------------
# PCM16 <-> float


def _pcm16_array(pcm16: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
    if len(pcm16) % 2:
        raise ValueError(
            f"PCM16 audio must have an even number of bytes (got {len(pcm16)}): "
            "each sample is 2 bytes, so a chunk was probably split in the middle of a sample"
        )
    return np.frombuffer(pcm16, dtype="<i2").astype(np.int16, copy=False)


def pcm16_to_float(b: bytes | bytearray | memoryview) -> FloatArray:
    """PCM16 little-endian bytes to float32 samples in [-1, 1) (divided by 32768)."""
    out: FloatArray = _pcm16_array(b).astype(np.float32) / np.float32(32768.0)
    return out


def float_to_pcm16(a: npt.ArrayLike) -> bytes:
    """Float samples (nominally [-1, 1]) to PCM16 little-endian bytes, clipping out-of-range ones.

    ``float_to_pcm16(pcm16_to_float(b)) == b`` for every PCM16 input. NaN becomes silence.
    """
    x = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


# --------------------------------------------------------------------------------------------
# Resampling


@overload
def resample(samples: bytes, from_rate: int, to_rate: int) -> bytes: ...
@overload
def resample(samples: npt.NDArray[Any], from_rate: int, to_rate: int) -> npt.NDArray[Any]: ...
def resample(
    samples: bytes | npt.NDArray[Any], from_rate: int, to_rate: int
) -> bytes | npt.NDArray[Any]:
    """Resample one whole signal with soxr (high quality).

    ``bytes`` are PCM16 mono and come back as PCM16 bytes. Arrays keep their dtype when soxr
    supports it (float32, float64, int16, int32; anything else becomes float32); a 2-D array is
    ``(frames, channels)``. For audio that arrives in chunks use :class:`Resampler` instead:
    resampling each chunk on its own clicks at the chunk boundaries.
    """
    _check_rate(from_rate, "from_rate")
    _check_rate(to_rate, "to_rate")
    if isinstance(samples, (bytes, bytearray, memoryview)):
        pcm = _pcm16_array(samples)
        if from_rate == to_rate or pcm.size == 0:
            return bytes(samples)
        return float_to_pcm16(_soxr(pcm16_to_float(samples), from_rate, to_rate))
    arr = np.asarray(samples)
    if from_rate == to_rate or arr.shape[0] == 0:
        return np.array(arr, copy=True)
    if arr.dtype == np.int16:
        out = _soxr(arr.astype(np.float32) / np.float32(32768.0), from_rate, to_rate)
        return np.frombuffer(float_to_pcm16(out), dtype="<i2").astype(np.int16).reshape(out.shape)
    if arr.dtype not in (np.float32, np.float64, np.int32):
        arr = arr.astype(np.float32)
    return _soxr(arr, from_rate, to_rate)


def _soxr(x: npt.NDArray[Any], from_rate: int, to_rate: int) -> npt.NDArray[Any]:
    # PCM16 goes through float32 on purpose: soxr dithers int16 output with a per-stream seed,
    # which makes results differ from run to run.
    return np.asarray(soxr.resample(x, from_rate, to_rate, quality="HQ"))


class Resampler:
    """Streaming PCM16 mono resampler: feed chunks with :meth:`process`, end with :meth:`flush`.

    Keeps the filter state between chunks, so the output equals a one-shot :func:`resample` of
    the whole signal (within rounding) and has no clicks at chunk boundaries. Chunks may have an
    odd number of bytes; the half sample is kept for the next chunk. With equal rates the bytes
    pass straight through.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        _check_rate(from_rate, "from_rate")
        _check_rate(to_rate, "to_rate")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._carry = b""
        self._stream: soxr.ResampleStream | None = None
        self._new_stream()

    def _new_stream(self) -> None:
        if self.from_rate != self.to_rate:
            self._stream = soxr.ResampleStream(
                self.from_rate, self.to_rate, 1, dtype="float32", quality="HQ"
            )

    def process(self, pcm16: bytes) -> bytes:
        """Resample the next chunk; returns whatever output is ready (may be empty at first)."""
        data = self._carry + bytes(pcm16)
        cut = len(data) - (len(data) % 2)
        data, self._carry = data[:cut], data[cut:]
        if self._stream is None or not data:
            return data
        return float_to_pcm16(self._stream.resample_chunk(pcm16_to_float(data)))

    def flush(self) -> bytes:
        """Return the samples still held in the filter and reset for a new stream.

        A trailing half sample (an odd byte with no partner) is dropped.
        """
        self._carry = b""
        if self._stream is None:
            return b""
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._new_stream()
        return float_to_pcm16(out)

    def __repr__(self) -> str:
        return f"Resampler(from_rate={self.from_rate}, to_rate={self.to_rate})"


def _check_rate(rate: int, name: str) -> None:
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz (got {rate!r})")


def to_pcm16_24k(samples: bytes | npt.NDArray[Any], rate: int, channels: int = 1) -> bytes:
    """Any audio to what the service wants: PCM16 mono 24 kHz bytes.

    ``samples`` is PCM16 bytes (interleaved when ``channels > 1``), an interleaved 1-D array or a
    ``(frames, channels)`` array. Integer arrays are read as PCM16-scaled (int16) or full-scale
    int32; float arrays as [-1, 1]. Channels are averaged.
    """
    if channels < 1:
        raise ValueError(f"channels must be at least 1 (got {channels})")
    if isinstance(samples, (bytes, bytearray, memoryview)):
        if channels == 1 and rate == SAMPLE_RATE:
            _pcm16_array(samples)  # validates the byte count
            return bytes(samples)
        x: npt.NDArray[Any] = pcm16_to_float(samples)
    else:
        x = _to_float(np.asarray(samples))
    x = _mixdown(x, channels)
    return float_to_pcm16(resample(x.astype(np.float32), rate, SAMPLE_RATE))


def _to_float(arr: npt.NDArray[Any]) -> FloatArray:
    out: FloatArray
    if arr.dtype == np.int16:
        out = arr.astype(np.float32) / np.float32(32768.0)
        return out
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        out = (arr.astype(np.float32) - 128.0) / np.float32(128.0)
        return out
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise ValueError(f"unsupported sample dtype {arr.dtype}: use int16, int32, uint8 or float")


def _mixdown(x: npt.NDArray[Any], channels: int) -> FloatArray:
    if x.ndim == 2:
        return np.asarray(x.mean(axis=1), dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D or (frames, channels) samples, got shape {x.shape}")
    if channels == 1:
        return np.asarray(x, dtype=np.float32)
    frames = x.size // channels
    return np.asarray(
        x[: frames * channels].reshape(frames, channels).mean(axis=1), dtype=np.float32
    )


# --------------------------------------------------------------------------------------------
# G.711 (ITU-T), vectorised. Encoding uses a 64 Ki-entry table built once from the formula.

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # on the 14-bit magnitude
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_encode_formula(x: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    v = x.astype(np.int32) >> 2  # 14-bit, arithmetic shift like the reference C code
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, v, side="left")  # first segment whose end is >= v
    u = (np.minimum(seg, 7) << 4) | ((v >> (np.minimum(seg, 7) + 1)) & 0x0F)
    u = np.where(seg >= 8, 0x7F, u)  # clipped magnitudes: 8159 + 33 overflows the table
    return (u ^ mask).astype(np.uint8)


def _ulaw_decode_formula(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    u = (~code.astype(np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_encode_formula(x: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    v = x.astype(np.int32) >> 3  # 13-bit
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)  # 0..4095, so the segment is always 0..7
    seg = np.searchsorted(_SEG_AEND, v, side="left")
    a = (seg << 4) | ((v >> np.where(seg < 2, 1, seg)) & 0x0F)
    return (a ^ mask).astype(np.uint8)


def _alaw_decode_formula(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    a = code.astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = t << np.maximum(seg - 1, 0)
    out: npt.NDArray[np.int16] = np.where(a & 0x80, t, -t).astype(np.int16)
    return out


@cache
def _tables() -> dict[str, npt.NDArray[Any]]:
    every_sample = np.arange(65536, dtype=np.uint16).view(np.int16)  # index = uint16 bit pattern
    every_byte = np.arange(256, dtype=np.uint8)
    return {
        "ulaw_enc": _ulaw_encode_formula(every_sample),
        "alaw_enc": _alaw_encode_formula(every_sample),
        "ulaw_dec": _ulaw_decode_formula(every_byte).astype("<i2"),
        "alaw_dec": _alaw_decode_formula(every_byte).astype("<i2"),
    }


def _g711_encode(pcm16: bytes, table: str) -> bytes:
    idx = _pcm16_array(pcm16).view(np.uint16)
    return _tables()[table][idx].tobytes()


def _g711_decode(data: bytes, table: str) -> bytes:
    idx = np.frombuffer(data, dtype=np.uint8)
    return _tables()[table][idx].tobytes()


def ulaw_encode(pcm16: bytes) -> bytes:
    """PCM16 little-endian to G.711 mu-law, one byte per sample (ITU-T G.711, no resampling)."""
    return _g711_encode(pcm16, "ulaw_enc")


def ulaw_decode(data: bytes) -> bytes:
    """G.711 mu-law bytes to PCM16 little-endian (same sample rate)."""
    return _g711_decode(data, "ulaw_dec")


def alaw_encode(pcm16: bytes) -> bytes:
    """PCM16 little-endian to G.711 A-law, one byte per sample (ITU-T G.711, no resampling)."""
    return _g711_encode(pcm16, "alaw_enc")


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law bytes to PCM16 little-endian (same sample rate)."""
    return _g711_decode(data, "alaw_dec")


# --------------------------------------------------------------------------------------------
# WAV

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_ALAW = 0x0006
_WAVE_FORMAT_MULAW = 0x0007
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_WAVE_FORMAT_NAMES = {
    0x0001: "PCM",
    0x0002: "Microsoft ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0040: "G.721 ADPCM",
    0x0050: "MPEG",
    0x0055: "MPEG Layer 3 (MP3)",
    0x00FF: "AAC",
    0x1610: "HE-AAC",
    0xF1AC: "FLAC",
    0xFFFE: "WAVE_FORMAT_EXTENSIBLE",
}
_CONVERT_HINT = "convert it first, e.g. `ffmpeg -i in.wav -ac 1 -ar 24000 -c:a pcm_s16le out.wav`"


def read_wav(source: PathLike | bytes) -> tuple[FloatArray, int]:
    """Read a WAV file (a path or the file's bytes) as float32 mono samples and its sample rate.

    Supports integer PCM of 8, 16, 24 and 32 bits, 32/64-bit IEEE float, mu-law, A-law and
    WAVE_FORMAT_EXTENSIBLE wrapping any of those, with any number of channels (averaged).
    Raises ``ValueError`` naming the format for anything else (ADPCM, MP3, ...).
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else _read_path(source)
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, struct.error):
        # Not plain PCM (float, G.711, extensible on Python < 3.12), or a header wave dislikes.
        return _read_wav_riff(data)
    return _mixdown(_decode_pcm(frames, width * 8, width), channels), rate


def _read_path(path: PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_wav_riff(data: bytes) -> tuple[FloatArray, int]:
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file: it does not start with a RIFF/WAVE header")
    if data[:4] == b"RF64":
        raise ValueError(f"RF64 (WAV over 4 GB) is not supported: {_CONVERT_HINT}")
    if data[:4] != b"RIFF":
        raise ValueError(f"not a WAV file: unknown container {data[:4]!r}")
    fmt: bytes | None = None
    payload: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]  # a streamed file's size may overrun: clamp
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body
            if fmt is not None:
                break
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if fmt is None or len(fmt) < 16:
        raise ValueError("malformed WAV file: no valid 'fmt ' chunk")
    if payload is None:
        raise ValueError("malformed WAV file: no 'data' chunk")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    name = _WAVE_FORMAT_NAMES.get(tag, f"format tag 0x{tag:04X}")
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise ValueError("malformed WAV file: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is short")
        (tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the SubFormat GUID
        name = "WAVE_FORMAT_EXTENSIBLE with " + _WAVE_FORMAT_NAMES.get(
            tag, f"subformat 0x{tag:04X}"
        )
    if channels < 1:
        raise ValueError("malformed WAV file: zero channels")
    if rate < 1:
        raise ValueError("malformed WAV file: zero sample rate")
    width = block_align // channels if block_align else (bits + 7) // 8
    if tag == _WAVE_FORMAT_PCM:
        if width not in (1, 2, 3, 4):
            raise ValueError(f"unsupported WAV: {bits}-bit {name}; {_CONVERT_HINT}")
        x = _decode_pcm(payload, bits, width)
    elif tag == _WAVE_FORMAT_IEEE_FLOAT:
        if width not in (4, 8):
            raise ValueError(f"unsupported WAV: {bits}-bit {name}; {_CONVERT_HINT}")
        usable = len(payload) - len(payload) % width
        x = np.frombuffer(payload[:usable], dtype="<f4" if width == 4 else "<f8").astype(np.float32)
    elif tag in (_WAVE_FORMAT_MULAW, _WAVE_FORMAT_ALAW):
        if width != 1:
            raise ValueError(f"unsupported WAV: {bits}-bit {name} (G.711 is 8-bit)")
        decoded = ulaw_decode(payload) if tag == _WAVE_FORMAT_MULAW else alaw_decode(payload)
        x = pcm16_to_float(decoded)
    else:
        raise ValueError(f"unsupported WAV format: {name}; {_CONVERT_HINT}")
    return _mixdown(x, channels), rate


def _decode_pcm(frames: bytes, bits: int, width: int) -> FloatArray:
    usable = len(frames) - len(frames) % width
    raw = np.frombuffer(frames[:usable], dtype=np.uint8)
    out: FloatArray
    if width == 1:  # 8-bit WAV is unsigned
        out = (raw.astype(np.float32) - 128.0) / np.float32(128.0)
        return out
    if width == 2:
        out = raw.view("<i2").astype(np.float32) / np.float32(32768.0)
        return out
    if width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)  # sign lands in bit 31
        return (v.astype(np.float64) / 2147483648.0).astype(np.float32)
    if width == 4:
        return (raw.view("<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    raise ValueError(f"unsupported WAV: {bits}-bit PCM; {_CONVERT_HINT}")


def wav_bytes(pcm16: bytes, rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A complete PCM16 WAV file in memory."""
    buf = io.BytesIO()
    _write_wav_to(buf, pcm16, rate, channels)
    return buf.getvalue()


def write_wav(path: PathLike, pcm16: bytes, rate: int = SAMPLE_RATE, channels: int = 1) -> None:
    """Write PCM16 little-endian samples (interleaved if ``channels > 1``) to a WAV file."""
    with open(path, "wb") as f:
        _write_wav_to(f, pcm16, rate, channels)


def _write_wav_to(f: Any, pcm16: bytes, rate: int, channels: int) -> None:
    _check_rate(rate, "rate")
    if len(pcm16) % (2 * channels):
        raise ValueError(
            f"PCM16 with {channels} channel(s) needs a multiple of {2 * channels} bytes "
            f"(got {len(pcm16)})"
        )
    with wave.open(f, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)


def read_audio_file(path: PathLike) -> bytes:
    """Read a ``.wav`` (any format :func:`read_wav` takes) or headerless ``.raw``/``.pcm`` file
    (PCM16 mono 24 kHz) and return PCM16 mono 24 kHz bytes, ready to send."""
    data = _read_path(path)
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        samples, rate = read_wav(data)
        return to_pcm16_24k(samples, rate)
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".raw", ".pcm"):
        if len(data) % 2:
            raise ValueError(
                f"{os.fspath(path)}: a raw PCM16 file needs an even number of bytes "
                f"(got {len(data)})"
            )
        return data
    if ext == ".wav":
        raise ValueError(f"{os.fspath(path)}: not a WAV file (no RIFF/WAVE header)")
    raise ValueError(
        f"{os.fspath(path)}: unsupported audio file type {ext or '(no extension)'!r}; "
        f"use WAV or raw PCM16 24 kHz mono (.raw), or {_CONVERT_HINT}"
    )


# --------------------------------------------------------------------------------------------
# Chunks, base64, measurements


def chunk_pcm16(pcm: bytes, ms: int = 40, rate: int = SAMPLE_RATE) -> Iterator[bytes]:
    """Split PCM16 mono audio into frames of ``ms`` milliseconds (20..100); the last may be short.

    Every frame has an even number of bytes. 40 ms at 24 kHz is 1,920 bytes.
    """
    if not 20 <= ms <= 100:
        raise ValueError(f"chunk length must be 20..100 ms (got {ms} ms)")
    _check_rate(rate, "rate")
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even number of bytes (got {len(pcm)})")
    step = max(1, rate * ms // 1000) * 2
    view = memoryview(pcm)
    for start in range(0, len(pcm), step):
        yield bytes(view[start : start + step])


def b64encode_audio(data: bytes) -> str:
    """Audio bytes to the base64 text of ``input_audio_buffer.append`` and audio deltas."""
    return base64.b64encode(data).decode("ascii")


def b64decode_audio(text: str) -> bytes:
    """Strictly decode base64 audio; raises ``ValueError`` on anything that is not clean base64."""
    if not isinstance(text, str):
        raise ValueError(f"base64 audio must be a str, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except UnicodeEncodeError:
        raise ValueError("invalid base64 audio: contains non-ASCII characters") from None
    except binascii.Error as exc:
        preview = text[:32] + ("..." if len(text) > 32 else "")
        raise ValueError(
            f"invalid base64 audio ({exc}); expected standard base64 (A-Z a-z 0-9 + /, "
            f"'=' padding, no whitespace), got {preview!r}"
        ) from None


def duration_ms(pcm16: bytes, rate: int = SAMPLE_RATE) -> float:
    """Length of PCM16 mono audio in milliseconds."""
    _check_rate(rate, "rate")
    return len(pcm16) / 2 * 1000.0 / rate


def rms_dbfs(pcm16: bytes) -> float:
    """RMS level relative to full scale (32768); ``-inf`` for silence or no audio.

    A full-scale sine reads about -3.01 dBFS and a full-scale square wave 0 dBFS.
    """
    x = _pcm16_array(pcm16).astype(np.float64)
    if x.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * float(np.log10(rms / 32768.0)) if rms > 0 else float("-inf")


# --------------------------------------------------------------------------------------------
# Wire formats

_FORMAT_ALIASES: dict[str, AudioFormat] = {
    "pcm16": "pcm16",
    "audio/pcm": "pcm16",
    "g711_ulaw": "g711_ulaw",
    "audio/pcmu": "g711_ulaw",
    "g711_alaw": "g711_alaw",
    "audio/pcma": "g711_alaw",
}


def normalize_format(fmt: str | Mapping[str, Any]) -> AudioFormat:
    """A preview name (``pcm16``), GA name (``audio/pcmu``) or GA object
    (``{"type": "audio/pcm", "rate": 24000}``) to the canonical preview name."""
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        rate = fmt.get("rate")
        if not isinstance(kind, str):
            raise ValueError(f"audio format object needs a 'type' string, got {dict(fmt)!r}")
        name = normalize_format(kind)
        if name == "pcm16" and rate is not None and rate != SAMPLE_RATE:
            raise ValueError(f"audio/pcm must be at {SAMPLE_RATE} Hz (got rate={rate!r})")
        return name
    try:
        return _FORMAT_ALIASES[fmt]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown audio format {fmt!r}: use one of pcm16, g711_ulaw, g711_alaw "
            "(preview) or audio/pcm, audio/pcmu, audio/pcma (GA)"
        ) from None


def format_sample_rate(fmt: str | Mapping[str, Any]) -> int:
    """Sample rate of a wire format: 24000 for PCM16, 8000 for G.711."""
    return SAMPLE_RATE if normalize_format(fmt) == "pcm16" else G711_RATE


def format_bytes_per_ms(fmt: str | Mapping[str, Any]) -> int:
    """Bytes per millisecond of a wire format: 48 for PCM16, 8 for G.711."""
    return BYTES_PER_MS if normalize_format(fmt) == "pcm16" else G711_RATE // 1000


def encode_for_format(
    pcm16_24k: bytes, fmt: str | Mapping[str, Any], resampler: Resampler | None = None
) -> bytes:
    """PCM16 mono 24 kHz to the bytes of a wire format (G.711 is resampled to 8 kHz).

    For a stream of chunks pass one ``Resampler(24000, 8000)`` for the whole stream, so the
    resampling has no clicks at chunk boundaries (and call its ``flush()`` at the end).
    """
    name = normalize_format(fmt)
    if name == "pcm16":
        _pcm16_array(pcm16_24k)  # validates the byte count
        return bytes(pcm16_24k)
    narrow = (
        resampler.process(pcm16_24k)
        if resampler is not None
        else resample(bytes(pcm16_24k), SAMPLE_RATE, G711_RATE)
    )
    return ulaw_encode(narrow) if name == "g711_ulaw" else alaw_encode(narrow)


def decode_from_format(
    data: bytes, fmt: str | Mapping[str, Any], resampler: Resampler | None = None
) -> bytes:
    """Bytes of a wire format to PCM16 mono 24 kHz (G.711 is resampled up from 8 kHz).

    For a stream of chunks pass one ``Resampler(8000, 24000)`` for the whole stream.
    """
    name = normalize_format(fmt)
    if name == "pcm16":
        _pcm16_array(data)
        return bytes(data)
    pcm8k = ulaw_decode(data) if name == "g711_ulaw" else alaw_decode(data)
    if resampler is not None:
        return resampler.process(pcm8k)
    return resample(pcm8k, G711_RATE, SAMPLE_RATE)
