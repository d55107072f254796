"""``aoai-realtime engine``: start-up messages, readiness, refusals, clean stop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from aoai_realtime.engine import cli


def test_missing_local_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import aoai_realtime.engine.speech as speech

    monkeypatch.setattr(
        speech, "missing_local_extra", lambda: "the [local] extra is missing (piper-tts)"
    )
    assert cli.main(["--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'aoai-realtime[local]'" in err and "piper-tts" in err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--brain", "scripted"], "--script"),
        (["--brain", "chat"], "--brain-url"),
        (["--fault", "explode"], "unknown fault"),
        (["--no-speech"], "--brain scripted"),
    ],
)
def test_argument_mistakes_are_explained(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.skipif(
    __import__("aoai_realtime.engine.speech", fromlist=["x"]).missing_local_extra() is not None,
    reason="needs the [local] extra",
)
def test_engine_command_loads_serves_and_stops(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"default": "Hi."}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aoai_realtime.cli",
            "engine",
            "--port",
            "0",
            "--brain",
            "scripted",
            "--script",
            str(script),
            "--fault",
            "delay_audio:10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "ready on" in line:
                break
        out = "".join(lines)
        assert "loading speech-to-text" in out and "loading text-to-speech" in out
        match = re.search(r"aoai-realtime engine ready on ws://127\.0\.0\.1:(\d+) \(GA: ", out)
        assert match, out
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/healthz") as resp:
            assert json.load(resp)["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_engine_command_without_speech_needs_no_model(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"default": "Hi."}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aoai_realtime.cli", "engine", "--port", "0", "--no-speech",
         "--brain", "scripted", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "ready on" in line:
                break
        out = "".join(lines)
        assert "without speech models" in out and "loading" not in out
        match = re.search(r"ready on ws://127\.0\.0\.1:(\d+) ", out)
        assert match, out
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/healthz") as resp:
            health = json.load(resp)
        assert (health["status"], health["speech"], health["brain"]) == ("ok", False, "scripted")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
