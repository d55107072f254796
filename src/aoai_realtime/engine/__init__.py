"""The local engine: the realtime protocol served offline with speech models from pip packages.

Run it with ``aoai-realtime engine``, or in-process::

    engine = await start_engine(EngineConfig(port=0))   # in your event loop
    ...  # connect to engine.ga_url() or engine.preview_url()
    await engine.close()

or ``EngineThread(EngineConfig(port=0))`` for an engine with its own thread and loop, or
``await engine.open_channel(path, query, headers)`` for a session over an in-memory channel.
``EngineConfig(no_speech=True, brain="scripted", ...)`` runs without any speech model.
See ``docs/engine.md``.
"""

from .admission import EngineRefusal
from .config import EngineConfig
from .faults import Faults, FaultSpecError
from .server import EngineThread, RunningEngine, create_app, start_engine

__all__ = [
    "EngineConfig",
    "EngineRefusal",
    "EngineThread",
    "FaultSpecError",
    "Faults",
    "RunningEngine",
    "create_app",
    "start_engine",
]
