"""Under ``make test`` a browser test never skips silently: without Chromium it fails, naming
the command to run (``AOAI_REALTIME_BROWSER_TESTS=required``, which the Makefile sets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NEEDS_A_BROWSER = """
def test_needs_a_browser(chromium_path):
    assert chromium_path
"""


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    tests = Path(__file__).resolve().parent
    (tmp_path / "test_needs_a_browser.py").write_text(NEEDS_A_BROWSER)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "conftest",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_needs_a_browser.py")],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
            "AOAI_REALTIME_CHROMIUM": str(tmp_path / "no-chromium"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_a_missing_browser_fails_make_test_and_says_what_to_run(tmp_path: Path) -> None:
    out = _run(tmp_path, AOAI_REALTIME_BROWSER_TESTS="required")
    assert out.returncode != 0, out.stdout
    assert "apt-get install -y chromium" in out.stdout
    assert "1 error" in out.stdout or "1 failed" in out.stdout


def test_a_plain_pytest_run_skips_it_with_the_reason(tmp_path: Path) -> None:
    out = _run(tmp_path, AOAI_REALTIME_BROWSER_TESTS="")
    assert out.returncode == 0, out.stdout
    assert "1 skipped" in out.stdout and "apt-get install -y chromium" in out.stdout
