"""What the benchmarks measure with: percentiles and a process's resident memory.

Imported by the ``bench_*.py`` scripts, which run as ``python benchmarks/bench_X.py`` (so this
folder is on ``sys.path``).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from pathlib import Path


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated between the nearest ranks (NaN
    when there are none); ``percentile(v, 0.5)`` is the median."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """Current and peak resident set size of a process, in MiB (``/proc``, Linux).

    Elsewhere, for this process, both are the peak ``getrusage`` reports; NaN for another.
    """
    now = peak = float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        if pid == "self":
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
            now = peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return now, peak
