"""End of turn: has the speaker finished, or only paused? Smart Turn v3.2 on ONNX Runtime.

The engine's ``semantic_vad`` decides on whisper's words first (see :mod:`.vad`); this model
confirms an end whisper was less sure of, and judges alone when no words were heard.

Smart Turn (by Daily, BSD-2-Clause) is a small Whisper-encoder classifier that listens to the last
8 seconds of an utterance, prosody and words together, and returns the probability that the
speaker has finished. Its file, ``smart-turn-v3.2-cpu.onnx`` (8.7 MB, int8), ships inside the
``pipecat-ai`` wheel (``pipecat/audio/turn/smart_turn/data/``); it is found through the package's
import spec and loaded here without importing pipecat, whose analyser keeps its own wall-clock
timers and thread pool, and whose import logs a banner. Nothing is downloaded at run time.

The model's input is the log-mel spectrogram the Whisper feature extractor makes, which this
module computes with numpy:

* 16 kHz mono, the last 8 s of the utterance (128,000 samples), zero-padded *in front* when
  shorter, so the end of the utterance is always at the end of the window;
* the waveform scaled to zero mean and unit variance (over the whole padded window);
* a short-time Fourier transform: 400-sample periodic Hann window, a hop of 160 samples (10 ms),
  centred frames (the signal reflected by 200 samples at each end), power spectrum;
* 80 triangular mel filters on the Slaney scale from 0 to 8 kHz, each normalised to unit area
  (Slaney normalisation), then ``log10`` of the filter energies floored at 1e-10;
* the last of the 801 frames dropped (800 remain), values floored at the maximum minus 8 (an
  80 dB range), and mapped by ``(x + 4) / 4`` into about [-1, 1].

The model returns one number per utterance: the probability (already through a sigmoid) that
the turn is complete. One ONNX session serves the whole process (:meth:`EndOfTurnModel.shared`);
it holds no state between calls, so any thread may call :meth:`EndOfTurnModel.probability`.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._deps import INSTALL_COMMAND, LocalExtraMissing, require

SAMPLE_RATE = 16000
"""Sample rate of the audio :meth:`EndOfTurnModel.probability` takes."""
WINDOW_SECONDS = 8
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
"""The model hears the last 8 s of an utterance."""

MODEL_PACKAGE = "pipecat"
MODEL_PATH = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")


@functools.cache
def model_path() -> Path | None:
    """Where the installed ``pipecat-ai`` wheel keeps the model, or None if it is not installed
    (the package needs Python 3.11; nothing is imported to find it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MODEL_PATH)
    return path if path.exists() else None


def available() -> bool:
    """Whether the end-of-turn model can be loaded (``pipecat-ai`` is installed)."""
    return model_path() is not None


_N_FFT = 400  # 25 ms
_HOP = 160  # 10 ms
_N_MELS = 80
_FRAMES = WINDOW_SAMPLES // _HOP  # 800


def _slaney_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Hertz -> mel on the Slaney scale: linear (3 mels per 200 Hz) below 1 kHz, log above."""
    linear = hz * 3.0 / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz < 1000.0, linear, log)


def _slaney_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The inverse of :func:`_slaney_mel`."""
    linear = mel * 200.0 / 3.0
    log = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel < 15.0, linear, log)


def mel_filters() -> npt.NDArray[np.float64]:
    """The (80, 201) filter bank: row ``m`` weighs the FFT bins of mel band ``m``."""
    edges_mel = np.linspace(_slaney_mel(np.array(0.0)), _slaney_mel(np.array(SAMPLE_RATE / 2)), 82)
    edges = _slaney_hz(edges_mel)  # 82 corner frequencies: band m rises on m..m+1, falls to m+2
    bins = np.linspace(0.0, SAMPLE_RATE // 2, _N_FFT // 2 + 1)
    bank = np.zeros((_N_MELS, bins.shape[0]))
    for m in range(_N_MELS):
        low, centre, high = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - low) / (centre - low)
        falling = (high - bins) / (high - centre)
        bank[m] = np.clip(np.minimum(rising, falling), 0.0, None) * (2.0 / (high - low))
    return bank


_FILTERS = mel_filters()
_HANN = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_N_FFT) / _N_FFT)).astype(np.float64)


def log_mel_features(audio_16k: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The model's (80, 800) input for 16 kHz float audio (see the module docstring).

    Audio longer than 8 s is cut to its last 8 s; shorter audio is zero-padded in front.
    """
    x = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    if x.shape[0] >= WINDOW_SAMPLES:
        x = x[x.shape[0] - WINDOW_SAMPLES :]
    else:
        x = np.concatenate([np.zeros(WINDOW_SAMPLES - x.shape[0], dtype=np.float32), x])
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    half = _N_FFT // 2
    padded = np.pad(x.astype(np.float64), half, mode="reflect")
    starts = np.arange(_FRAMES) * _HOP  # the 801st frame would be dropped: never computed
    frames = padded[starts[:, None] + np.arange(_N_FFT)[None, :]]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=1)) ** 2  # (800, 201)
    mel = np.log10(np.maximum(power @ _FILTERS.T, 1e-10)).T  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class EndOfTurnModel:
    """Smart Turn v3.2, loaded once per process; :meth:`probability` may run on any thread.

    A check costs about 20-40 ms of one core (the features a few ms, the model the rest).
    """

    _lock = threading.Lock()
    _shared: EndOfTurnModel | None = None

    def __init__(self) -> None:
        ort = require("onnxruntime")
        path = model_path()
        if path is None:
            raise LocalExtraMissing(
                "semantic_vad's end-of-turn model ships inside the pipecat-ai wheel, which is not "
                f"installed (it needs Python 3.11 or later): run {INSTALL_COMMAND}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: Any = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name

    @classmethod
    def shared(cls) -> EndOfTurnModel:
        """The process's one model (loaded on first use, about 0.1 s)."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def probability(self, audio_16k: npt.ArrayLike) -> float:
        """How sure the model is (0..1) that the utterance ending ``audio_16k`` is complete.

        Give it the utterance from shortly before its speech began up to now, pause included
        (16 kHz float samples in [-1, 1]); only the last 8 s are heard.
        """
        features = log_mel_features(audio_16k)[None, :, :]
        out = self.session.run(None, {self._input: features})
        return float(np.asarray(out[0]).reshape(-1)[0])

    def __repr__(self) -> str:
        return "EndOfTurnModel(smart-turn-v3.2-cpu)"
