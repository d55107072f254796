"""Audio helpers: PCM16/float, G.711 against a scalar reference, resampling, WAV, chunks, base64."""

from __future__ import annotations

import base64
import io
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from aoai_realtime import audio
from aoai_realtime.audio import (
    BYTES_PER_MS,
    G711_RATE,
    SAMPLE_RATE,
    Resampler,
    alaw_decode,
    alaw_encode,
    b64decode_audio,
    b64encode_audio,
    chunk_pcm16,
    decode_from_format,
    duration_ms,
    encode_for_format,
    float_to_pcm16,
    pcm16_to_float,
    read_audio_file,
    read_wav,
    resample,
    rms_dbfs,
    to_pcm16_24k,
    ulaw_decode,
    ulaw_encode,
    wav_bytes,
    write_wav,
)

# --------------------------------------------------------------------------------------------
# Reference scalar G.711: a line-by-line port of the public-domain Sun Microsystems g711.c
# (the code CPython's audioop used), kept deliberately naive.

_SEG_UEND = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]
_SEG_AEND = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]


def _search(val: int, table: list[int]) -> int:
    for i, end in enumerate(table):
        if val <= end:
            return i
    return len(table)


def ref_linear2ulaw(pcm_val: int) -> int:
    pcm_val >>= 2
    if pcm_val < 0:
        pcm_val = -pcm_val
        mask = 0x7F
    else:
        mask = 0xFF
    if pcm_val > 8159:
        pcm_val = 8159
    pcm_val += 0x84 >> 2
    seg = _search(pcm_val, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm_val >> (seg + 1)) & 0xF)) ^ mask


def ref_ulaw2linear(u_val: int) -> int:
    u_val = ~u_val & 0xFF
    t = ((u_val & 0x0F) << 3) + 0x84
    t <<= (u_val & 0x70) >> 4
    return (0x84 - t) if (u_val & 0x80) else (t - 0x84)


def ref_linear2alaw(pcm_val: int) -> int:
    pcm_val >>= 3
    if pcm_val >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm_val = -pcm_val - 1
    seg = _search(pcm_val, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= ((pcm_val >> 1) if seg < 2 else (pcm_val >> seg)) & 0xF
    return aval ^ mask


def ref_alaw2linear(a_val: int) -> int:
    a_val ^= 0x55
    t = (a_val & 0x0F) << 4
    seg = (a_val & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if (a_val & 0x80) else -t


ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)
ALL_PCM = ALL_INT16.astype("<i2").tobytes()
ALL_BYTES = bytes(range(256))


def _pcm(x: np.ndarray) -> np.ndarray:
    return np.frombuffer(x, dtype="<i2").astype(np.int32)


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    x = np.asarray(x, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


# --------------------------------------------------------------------------------------------
# G.711


def test_ulaw_encode_matches_reference_for_every_sample() -> None:
    expected = bytes(ref_linear2ulaw(int(v)) for v in ALL_INT16)
    assert ulaw_encode(ALL_PCM) == expected


def test_ulaw_decode_matches_reference_for_every_byte() -> None:
    expected = [ref_ulaw2linear(b) for b in ALL_BYTES]
    assert _pcm(ulaw_decode(ALL_BYTES)).tolist() == expected


def test_alaw_encode_matches_reference_for_every_sample() -> None:
    expected = bytes(ref_linear2alaw(int(v)) for v in ALL_INT16)
    assert alaw_encode(ALL_PCM) == expected


def test_alaw_decode_matches_reference_for_every_byte() -> None:
    expected = [ref_alaw2linear(b) for b in ALL_BYTES]
    assert _pcm(alaw_decode(ALL_BYTES)).tolist() == expected


def test_g711_well_known_code_points() -> None:
    # Silence is 0xFF in mu-law and 0xD5 in A-law; full scale is 0x80/0x00 and 0xAA/0x2A.
    assert ulaw_encode(b"\x00\x00") == b"\xff"
    assert alaw_encode(b"\x00\x00") == b"\xd5"
    assert ulaw_encode(struct.pack("<2h", 32767, -32768)) == b"\x80\x00"
    assert alaw_encode(struct.pack("<2h", 32767, -32768)) == b"\xaa\x2a"
    assert _pcm(ulaw_decode(b"\x80\x00")).tolist() == [32124, -32124]
    assert _pcm(alaw_decode(b"\xaa\x2a")).tolist() == [32256, -32256]


@pytest.mark.parametrize(
    ("encode", "decode", "peak"),
    [(ulaw_encode, ulaw_decode, 32124), (alaw_encode, alaw_decode, 32256)],
)
def test_g711_round_trip_error_is_within_half_a_step(encode, decode, peak) -> None:
    out = _pcm(decode(encode(ALL_PCM)))
    assert out.shape == ALL_INT16.shape
    err = np.abs(out - ALL_INT16)
    inside = np.abs(ALL_INT16) <= peak
    # Logarithmic quantisation: about 1/32 of the magnitude (half of a 16-step segment), plus
    # the fixed resolution at the bottom.
    assert np.all(err[inside] <= np.abs(ALL_INT16[inside]) / 32 + 8)
    # Beyond the largest code, samples clip to it.
    assert np.all(np.abs(out[~inside]) == peak)
    # Decoding is monotonic in the input: encoding never reorders samples.
    assert np.all(np.diff(out) >= 0)
    # Decoded values are fixed points.
    assert decode(encode(decode(encode(ALL_PCM)))) == decode(encode(ALL_PCM))


def test_g711_rejects_odd_pcm() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        ulaw_encode(b"\x00\x00\x00")


# --------------------------------------------------------------------------------------------
# PCM16 <-> float


def test_pcm16_float_round_trip_is_exact() -> None:
    x = pcm16_to_float(ALL_PCM)
    assert x.dtype == np.float32
    assert x.min() == -1.0 and x.max() < 1.0
    assert float_to_pcm16(x) == ALL_PCM


def test_float_to_pcm16_clips_and_handles_nan() -> None:
    out = _pcm(float_to_pcm16([2.0, -2.0, 1.0, -1.0, float("nan"), 0.5]))
    assert out.tolist() == [32767, -32768, 32767, -32768, 0, 16384]


def test_pcm16_to_float_rejects_odd_length() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_float(b"\x01\x02\x03")


# --------------------------------------------------------------------------------------------
# Resampling


@pytest.mark.parametrize(
    ("src", "dst", "freq"),
    [(48000, 24000, 1000), (8000, 24000, 440), (24000, 8000, 1000), (44100, 24000, 3000)],
)
def test_resample_keeps_frequency_and_duration(src: int, dst: int, freq: int) -> None:
    x = sine(freq, src, 1.0)
    y = resample(x, src, dst)
    assert y.dtype == np.float32
    assert abs(len(y) - dst) <= 1
    assert abs(peak_hz(y, dst) - freq) <= 2
    # Amplitude is kept (ignore the filter's edges).
    mid = y[len(y) // 10 : -len(y) // 10]
    assert abs(np.max(np.abs(mid)) - 0.5) < 0.01


def test_resample_bytes_in_bytes_out() -> None:
    pcm = float_to_pcm16(sine(1000, 48000, 0.5))
    out = resample(pcm, 48000, 24000)
    assert isinstance(out, bytes)
    assert len(out) == len(pcm) // 2
    assert abs(peak_hz(pcm16_to_float(out), 24000) - 1000) <= 2


def test_resample_same_rate_is_identity_and_int16_stays_int16() -> None:
    pcm = float_to_pcm16(sine(500, 24000, 0.1))
    assert resample(pcm, 24000, 24000) == pcm
    arr = np.frombuffer(pcm, dtype=np.int16)
    assert resample(arr, 24000, 16000).dtype == np.int16


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="from_rate"):
        resample(b"", 0, 24000)


def _stream(resampler: Resampler, pcm: bytes, sizes: list[int]) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(pcm):
        n = sizes[i % len(sizes)]
        out.append(resampler.process(pcm[pos : pos + n]))
        pos += n
        i += 1
    out.append(resampler.flush())
    return b"".join(out)


def test_streaming_resampler_matches_one_shot() -> None:
    pcm = float_to_pcm16(sine(440, 8000, 1.0) + sine(1800, 8000, 1.0, amp=0.2))
    one_shot = _pcm(resample(pcm, 8000, 24000))
    # Odd chunk sizes on purpose: the half sample must carry over to the next chunk.
    streamed = _pcm(_stream(Resampler(8000, 24000), pcm, [161, 37, 320, 1, 999]))
    assert len(streamed) == len(one_shot) == 24000
    assert np.max(np.abs(streamed - one_shot)) <= 1


def test_streaming_resampler_has_no_clicks_unlike_per_chunk_resampling() -> None:
    pcm = float_to_pcm16(sine(440, 24000, 1.0))
    reference = _pcm(resample(pcm, 24000, 8000))
    streamed = _pcm(_stream(Resampler(24000, 8000), pcm, [960]))  # 20 ms chunks
    naive = np.concatenate([_pcm(resample(c, 24000, 8000)) for c in chunk_pcm16(pcm, 20)])
    n = min(len(reference), len(streamed), len(naive))
    streamed_err = np.max(np.abs(streamed[:n] - reference[:n]))
    naive_err = np.max(np.abs(naive[:n] - reference[:n]))
    assert streamed_err <= 1
    assert naive_err > 1000  # what a click looks like: measured about 5,500


def test_resampler_is_reusable_after_flush_and_passes_through_equal_rates() -> None:
    pcm = float_to_pcm16(sine(300, 16000, 0.2))
    r = Resampler(16000, 24000)
    first = _stream(r, pcm, [640])
    second = _stream(r, pcm, [640])
    assert first == second
    same = Resampler(24000, 24000)
    assert same.process(b"\x01\x02\x03") == b"\x01\x02"
    assert same.process(b"\x04") == b"\x03\x04"
    assert same.flush() == b""


def test_to_pcm16_24k_mixes_down_and_resamples() -> None:
    left = sine(1000, 48000, 0.5)
    stereo = np.stack([left, left], axis=1)
    out = to_pcm16_24k(stereo, 48000)
    assert len(out) == 24000  # 0.5 s * 24000 * 2 bytes
    assert abs(peak_hz(pcm16_to_float(out), 24000) - 1000) <= 2
    # Opposite channels cancel: proves the channels are averaged, not one picked.
    cancel = to_pcm16_24k(np.stack([left, -left], axis=1), 48000)
    assert rms_dbfs(cancel) == float("-inf")
    # Interleaved PCM16 bytes with channels=2 behave the same.
    interleaved = float_to_pcm16(stereo.reshape(-1))
    assert abs(len(to_pcm16_24k(interleaved, 48000, channels=2)) - len(out)) <= 2


def test_to_pcm16_24k_accepts_int16_arrays() -> None:
    x = np.frombuffer(float_to_pcm16(sine(500, 16000, 0.25)), dtype=np.int16)
    out = to_pcm16_24k(x, 16000)
    assert len(out) == 2 * 6000
    assert abs(rms_dbfs(out) - rms_dbfs(x.tobytes())) < 0.1


# --------------------------------------------------------------------------------------------
# WAV


def _wave_file(frames: bytes, rate: int, width: int, channels: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def _riff(
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    data: bytes,
    *,
    subformat: int | None = None,
    extra_chunks: bytes = b"",
) -> bytes:
    """Build a WAV file by hand, for the formats the wave module cannot write."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if subformat is not None:  # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, mask, GUID
        guid = (
            struct.pack("<H", subformat)
            + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        )
        fmt += struct.pack("<HHI", 22, bits, 0x3 if channels == 2 else 0x4) + guid
    elif tag != 1:
        fmt += struct.pack("<H", 0)
    body = b"WAVE" + extra_chunks
    body += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


SIGNAL = sine(440, 16000, 0.1, amp=0.6)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_integer_pcm_widths(width: int) -> None:
    scale = 2 ** (8 * width - 1)
    ints = np.round(SIGNAL.astype(np.float64) * (scale - 1)).astype(np.int64)
    if width == 1:
        frames = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        frames = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        frames = ints.astype(f"<i{width}").tobytes()
    x, rate = read_wav(_wave_file(frames, 16000, width, 1))
    assert rate == 16000
    assert x.dtype == np.float32 and len(x) == len(SIGNAL)
    assert np.max(np.abs(x - SIGNAL)) <= 2.0 / scale + 1e-6


def test_read_wav_mixes_stereo_down(tmp_path: Path) -> None:
    stereo = np.stack([SIGNAL, np.zeros_like(SIGNAL)], axis=1).reshape(-1)
    path = tmp_path / "stereo.wav"
    path.write_bytes(_wave_file(float_to_pcm16(stereo), 16000, 2, 2))
    x, rate = read_wav(path)
    assert rate == 16000 and len(x) == len(SIGNAL)
    assert np.max(np.abs(x - SIGNAL / 2)) < 1e-4
    x2, _ = read_wav(str(path))
    assert np.array_equal(x, x2)


@pytest.mark.parametrize(("dtype", "bits"), [("<f4", 32), ("<f8", 64)])
def test_read_wav_ieee_float(dtype: str, bits: int) -> None:
    data = SIGNAL.astype(dtype).tobytes()
    x, rate = read_wav(_riff(3, 1, 16000, bits, data))
    assert rate == 16000
    np.testing.assert_allclose(x, SIGNAL, atol=1e-7)


def test_read_wav_extensible_pcm24_and_float_stereo() -> None:
    ints = np.round(SIGNAL.astype(np.float64) * 8388607).astype(np.int64)
    pcm24 = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    x, rate = read_wav(_riff(0xFFFE, 1, 16000, 24, pcm24, subformat=1))
    assert rate == 16000
    assert np.max(np.abs(x - SIGNAL)) < 1e-6

    stereo = np.stack([SIGNAL, SIGNAL], axis=1).astype("<f4").tobytes()
    y, rate = read_wav(_riff(0xFFFE, 2, 48000, 32, stereo, subformat=3))
    assert rate == 48000
    np.testing.assert_allclose(y, SIGNAL, atol=1e-7)


@pytest.mark.parametrize(("tag", "encode"), [(7, ulaw_encode), (6, alaw_encode)])
def test_read_wav_g711(tag: int, encode) -> None:
    pcm = float_to_pcm16(SIGNAL)
    # An odd-length LIST chunk before 'fmt ' checks the parser honours RIFF pad bytes.
    extra = b"LIST" + struct.pack("<I", 5) + b"INFO!" + b"\x00"
    x, rate = read_wav(_riff(tag, 1, 8000, 8, encode(pcm), extra_chunks=extra))
    assert rate == 8000 and len(x) == len(SIGNAL)
    assert np.max(np.abs(x - SIGNAL)) < 0.6 / 32 + 1e-3


def test_read_wav_unsupported_formats_are_named() -> None:
    with pytest.raises(ValueError, match="Microsoft ADPCM"):
        read_wav(_riff(2, 1, 8000, 4, b"\x00" * 100))
    with pytest.raises(ValueError, match="MP3"):
        read_wav(_riff(0x55, 1, 8000, 0, b"\x00" * 100))
    with pytest.raises(ValueError, match="WAVE_FORMAT_EXTENSIBLE with IMA ADPCM"):
        read_wav(_riff(0xFFFE, 1, 8000, 8, b"\x00" * 100, subformat=0x11))
    with pytest.raises(ValueError, match="not a WAV file"):
        read_wav(b"ID3\x04" + b"\x00" * 100)


def test_write_wav_and_wav_bytes_round_trip(tmp_path: Path) -> None:
    pcm = float_to_pcm16(sine(600, 24000, 0.2))
    path = tmp_path / "out.wav"
    write_wav(path, pcm)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        assert w.readframes(w.getnframes()) == pcm
    assert path.read_bytes() == wav_bytes(pcm)
    x, rate = read_wav(wav_bytes(pcm, rate=16000))
    assert rate == 16000 and float_to_pcm16(x) == pcm
    with pytest.raises(ValueError, match="multiple of 4 bytes"):
        wav_bytes(b"\x00" * 6, channels=2)


def test_read_audio_file(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    wav.write_bytes(_wave_file(float_to_pcm16(sine(1000, 16000, 0.5)), 16000, 2, 1))
    out = read_audio_file(wav)
    assert len(out) == 24000  # 0.5 s at 24 kHz
    assert abs(peak_hz(pcm16_to_float(out), 24000) - 1000) <= 2

    raw = tmp_path / "in.raw"
    raw.write_bytes(b"\x01\x00" * 10)
    assert read_audio_file(raw) == b"\x01\x00" * 10

    mp3 = tmp_path / "in.mp3"
    mp3.write_bytes(b"ID3" + b"\x00" * 10)
    with pytest.raises(ValueError, match="ffmpeg"):
        read_audio_file(mp3)


# --------------------------------------------------------------------------------------------
# Chunks, base64, measurements


def test_chunk_sizes() -> None:
    pcm = b"\x00\x01" * (24000 + 100)  # 1 s + 100 samples
    chunks = list(chunk_pcm16(pcm))
    assert [len(c) for c in chunks[:-1]] == [1920] * 25
    assert len(chunks[-1]) == 200
    assert b"".join(chunks) == pcm
    assert all(len(c) % 2 == 0 for c in chunks)
    assert {len(c) for c in chunk_pcm16(pcm, 100)} >= {4800}
    assert len(next(chunk_pcm16(b"\x00" * 1000, 20, rate=8000))) == 320
    assert all(len(c) % 2 == 0 for c in chunk_pcm16(b"\x00" * 10000, 20, rate=11025))
    assert list(chunk_pcm16(b"")) == []


@pytest.mark.parametrize("ms", [0, 10, 19, 101, 500])
def test_chunk_length_out_of_range(ms: int) -> None:
    with pytest.raises(ValueError, match="20..100 ms"):
        list(chunk_pcm16(b"\x00" * 100, ms))


def test_chunk_rejects_odd_bytes() -> None:
    with pytest.raises(ValueError, match="even number"):
        list(chunk_pcm16(b"\x00" * 101))


def test_b64_round_trip() -> None:
    data = bytes(range(256)) * 3
    text = b64encode_audio(data)
    assert isinstance(text, str) and text == base64.b64encode(data).decode()
    assert b64decode_audio(text) == data


@pytest.mark.parametrize("bad", ["abc", "ab!d", "YWJj\nZGVm", "YW Jj", "é===", "====", "YWJjZA=x"])
def test_b64_decode_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        b64decode_audio(bad)


def test_duration_and_level() -> None:
    assert BYTES_PER_MS == 48 and SAMPLE_RATE == 24000 and G711_RATE == 8000
    assert duration_ms(b"\x00" * 4800) == 100.0
    assert duration_ms(b"\x00" * 320, rate=8000) == 20.0
    assert rms_dbfs(b"") == float("-inf")
    assert rms_dbfs(b"\x00\x00" * 100) == float("-inf")
    square = struct.pack("<2h", 32767, -32768) * 100
    assert abs(rms_dbfs(square)) < 0.01
    assert abs(rms_dbfs(float_to_pcm16(sine(1000, 24000, 1.0, amp=0.5))) - (-9.03)) < 0.05


# --------------------------------------------------------------------------------------------
# Wire formats


def test_pcm16_format_is_identity() -> None:
    pcm = float_to_pcm16(sine(440, 24000, 0.1))
    for fmt in ("pcm16", "audio/pcm", {"type": "audio/pcm", "rate": 24000}):
        assert encode_for_format(pcm, fmt) == pcm
        assert decode_from_format(pcm, fmt) == pcm
    with pytest.raises(ValueError, match="24000 Hz"):
        encode_for_format(pcm, {"type": "audio/pcm", "rate": 16000})


@pytest.mark.parametrize(
    ("preview", "ga", "codec"),
    [("g711_ulaw", "audio/pcmu", ulaw_decode), ("g711_alaw", "audio/pcma", alaw_decode)],
)
def test_g711_formats_resample_to_8k_and_back(preview: str, ga: str, codec) -> None:
    pcm = float_to_pcm16(sine(440, 24000, 1.0))
    wire = encode_for_format(pcm, preview)
    assert len(wire) == 8000  # 1 s at 8 kHz, one byte a sample
    assert encode_for_format(pcm, ga) == wire
    assert encode_for_format(pcm, {"type": ga}) == wire
    assert abs(peak_hz(pcm16_to_float(codec(wire)), 8000) - 440) <= 2
    back = decode_from_format(wire, preview)
    assert len(back) == len(pcm)
    assert decode_from_format(wire, ga) == back
    assert abs(peak_hz(pcm16_to_float(back), 24000) - 440) <= 2
    assert abs(rms_dbfs(back) - rms_dbfs(pcm)) < 0.3


def test_streamed_g711_encode_matches_one_shot() -> None:
    pcm = float_to_pcm16(sine(440, 24000, 1.0))
    r = Resampler(SAMPLE_RATE, G711_RATE)
    parts = [encode_for_format(c, "g711_ulaw", r) for c in chunk_pcm16(pcm, 20)]
    streamed = _pcm(ulaw_decode(b"".join(parts) + ulaw_encode(r.flush())))
    one_shot = _pcm(ulaw_decode(encode_for_format(pcm, "g711_ulaw")))
    n = min(len(streamed), len(one_shot))
    assert abs(len(streamed) - len(one_shot)) <= 2
    assert np.max(np.abs(streamed[:n] - one_shot[:n])) <= 600  # one mu-law step near the peak


def test_unknown_format_names_the_options() -> None:
    with pytest.raises(ValueError, match="g711_ulaw"):
        encode_for_format(b"", "opus")
    assert audio.format_bytes_per_ms("audio/pcmu") == 8
    assert audio.format_bytes_per_ms({"type": "audio/pcm", "rate": 24000}) == 48
    assert audio.format_sample_rate("g711_alaw") == 8000
