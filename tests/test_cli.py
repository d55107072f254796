"""The command line, run as a user runs it: subprocesses (and a pseudo-terminal for ``chat``)
against real local engines on loopback.

Every subprocess gets only the environment it needs and runs in ``tmp_path``, so no ``.env``
of the developer's leaks in. Engines here answer with a script (deterministic), one of them
behind an API key. Those that hear speech or speak it share the session's loaded speech stack;
typed chats and ``doctor`` use engines without speech models.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoai_realtime.audio import read_wav, resample, rms_dbfs, to_pcm16_24k, write_wav
from aoai_realtime.config import ConfigError
from helpers import engine_thread

SCRIPT: dict[str, Any] = {
    "default": "I heard you say: {user}.",
    "rules": [
        {
            "user": "what time is it",
            "function_call": {"name": "current_time", "arguments": {"timezone": "UTC"}},
        },
        {"after_function": "current_time", "reply": "The clock says {output}."},
        {"user": "weather", "reply": "It is sunny and warm today."},
        {"user": "hello", "reply": "Hello! How can I help you today?"},
        {
            "user": "story",
            "reply": (
                "Once upon a time there was a small cat who lived by the sea. "
                "Every morning she walked along the beach to watch the boats come in. "
                "The fishermen knew her well and always saved a little fish for her. "
                "One day a storm came, and the boats did not come back in the evening."
            ),
        },
    ],
}
"""``current_time`` is one of the demo tools ``chat --tools`` registers."""

API_KEY = "cli-test-key-0123456789abcdef"
WRONG_KEY = "not-the-right-key-9876543210"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cli_engine(speech_stack: Any) -> Iterator[Any]:
    """A scripted engine, no key, with the speech models: for speech in, and speech out."""
    yield from engine_thread(speech_stack, brain="scripted", script=SCRIPT)


@pytest.fixture(scope="module")
def cli_text_engine() -> Iterator[Any]:
    """The same script without speech models, for typed chats (its audio is silence)."""
    yield from engine_thread(None, brain="scripted", script=SCRIPT, no_speech=True)


@pytest.fixture(scope="module")
def keyed_engine() -> Iterator[Any]:
    """A scripted engine that wants ``API_KEY`` (a wrong key gets a real 401); no speech."""
    yield from engine_thread(None, brain="scripted", script=SCRIPT, api_key=API_KEY, no_speech=True)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
    }
    env.update(extra)
    return env


def cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m aoai_realtime ARGS`` in ``tmp_path`` (what the ``aoai-realtime`` script
    runs, as a user without the script on ``PATH`` runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "aoai_realtime", *args],
        cwd=tmp_path,
        env=env if env is not None else _env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


# ------------------------------------------------------------------------------ help


def test_every_command_has_help_with_examples(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "aoai-realtime"
    top = subprocess.run(
        [str(script) if script.exists() else "aoai-realtime", "--help"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert top.returncode == 0
    for name in ("talk", "chat", "doctor", "replay"):
        assert name in top.stdout
        out = cli(tmp_path, name, "--help")
        assert out.returncode == 0, out.stderr
        assert "examples:" in out.stdout and f"aoai-realtime {name}" in out.stdout
    assert "AZURE_OPENAI_ENDPOINT" in cli(tmp_path, "talk", "--help").stdout


def test_python_dash_m_is_the_command(tmp_path: Path) -> None:
    from aoai_realtime import __version__

    out = cli(tmp_path, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"aoai-realtime {__version__}"
    assert "commands:" in cli(tmp_path, "--help").stdout
    unknown = cli(tmp_path, "nope")
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr


def test_usage_errors_say_what_to_do(tmp_path: Path) -> None:
    neither = cli(tmp_path, "talk")
    assert neither.returncode == 2 and "--text" in neither.stderr
    missing = cli(tmp_path, "talk", "nope.wav")
    assert missing.returncode == 2 and "nope.wav: no such file" in missing.stderr
    (tmp_path / "bad.jsonl").write_text('{"type": "session.created"}\n')
    bad = cli(tmp_path, "replay", "bad.jsonl")
    assert bad.returncode == 2 and "not a recording" in bad.stderr


# ------------------------------------------------------------------------------ talk + replay


def test_talk_a_wav_then_replay_the_recording(
    tmp_path: Path, cli_engine: Any, tts_wav: Callable[..., bytes]
) -> None:
    # A 16 kHz WAV: talk resamples whatever it is given.
    speech = tts_wav("What is the weather like today?")
    write_wav(tmp_path / "question.wav", resample(speech, 24000, 16000), 16000)
    url = cli_engine.ga_url("cli")
    out = cli(
        tmp_path,
        "talk",
        "question.wav",
        "-o",
        "answer.wav",
        "--json",
        "--record",
        "turn.jsonl",
        "--url",
        url,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"weather", "today"} <= _words(result["user_transcript"])
    assert result["reply_transcript"] == "It is sunny and warm today."
    assert result["status"] == "completed" and result["output"] == "answer.wav"
    assert set(result["timings_ms"]) == {"connect", "first_audio", "total"}
    samples, rate = read_wav(tmp_path / "answer.wav")
    assert rate == 24000 and len(samples) > 24000 // 2
    assert rms_dbfs(to_pcm16_24k(samples, rate)) > -40  # speech, not silence

    # The recording: a header, then every event both ways, audio included.
    lines = (tmp_path / "turn.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["recording"] == 1 and header["url"] == url and header["dialect"] == "ga"
    events = [json.loads(x) for x in lines[1:]]
    sent = [e["event"]["type"] for e in events if e["dir"] == "send"]
    assert sent[0] == "session.update" and sent[-2:] == [
        "input_audio_buffer.commit",
        "response.create",
    ]
    assert any(e["event"]["type"] == "response.output_audio.delta" for e in events)
    assert all(isinstance(e["t"], float) for e in events)

    same = cli(tmp_path, "replay", "turn.jsonl")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no differences" in same.stdout

    # A deliberate change: without the commit there is no user turn to answer.
    kept = [x for x in lines if '"input_audio_buffer.commit"' not in x]
    (tmp_path / "changed.jsonl").write_text("\n".join(kept) + "\n")
    changed = cli(tmp_path, "replay", "changed.jsonl", "--timeout", "3")
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "- input_audio_buffer.committed" in changed.stdout
    assert "(- recorded, + replayed)" in changed.stdout


def test_talk_text_and_a_changed_text_in_replay(tmp_path: Path, cli_engine: Any) -> None:
    out = cli(
        tmp_path,
        "talk",
        "--text",
        "hello",
        "--record",
        "hello.jsonl",
        "--url",
        cli_engine.ga_url(),
    )
    assert out.returncode == 0, out.stderr
    assert "assistant:  Hello! How can I help you today?" in out.stdout
    assert "you:        hello" in out.stdout
    assert re.search(r"timings: +connect \d+ ms, first audio \d+ ms, total \d+ ms", out.stdout)
    pcm = to_pcm16_24k(*read_wav(tmp_path / "reply.wav"))
    assert rms_dbfs(pcm) > -40

    recording = (tmp_path / "hello.jsonl").read_text()
    (tmp_path / "changed.jsonl").write_text(recording.replace('"text":"hello"', '"text":"hi"'))
    # Free text is ignored by default (same structure) and compared with --strict-text.
    assert cli(tmp_path, "replay", "changed.jsonl").returncode == 0
    strict = cli(tmp_path, "replay", "changed.jsonl", "--strict-text", "--json")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    report = json.loads(strict.stdout)
    assert report["differences"] >= 1
    replayed = " ".join(line for d in report["diff"] for line in d["replayed"])
    assert "I heard you say: hi." in replayed


def test_talk_starts_the_local_engine_when_nothing_is_configured(tmp_path: Path) -> None:
    from aoai_realtime.engine.speech import missing_local_extra

    if missing_local_extra():
        pytest.skip("needs the [local] extra")
    out = cli(tmp_path, "talk", "--text", "Say hello.", "--json", "-o", "-")
    assert out.returncode == 0, out.stderr
    assert "local engine" in out.stderr and "loading" in out.stderr  # progress while loading
    result = json.loads(out.stdout)
    assert result["target"] == "local engine (in-process)"
    assert result["reply_transcript"] and result["audio_ms"] > 0 and result["output"] is None


# ------------------------------------------------------------------------------ chat


class Terminal:
    """A command in a pseudo-terminal: type lines, wait for text."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = os.openpty()
        self.fd = master
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aoai_realtime.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.output = ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Wait until ``pattern`` (a regex) shows up after what was already matched."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.output)
            if m:
                found = self.output[: m.end()]
                self.output = self.output[m.end() :]
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} not seen; the terminal shows:\n{self.output}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], min(timeout, 1.0))
        if not ready:
            return self.proc.poll() is None
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return False
        self.output += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return bool(data)

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.fd)


def test_chat_answers_a_message_and_a_function_call(tmp_path: Path, cli_text_engine: Any) -> None:
    term = Terminal(
        ["chat", "--tools", "--record", "chat.jsonl", "--url", cli_text_engine.ga_url()],
        tmp_path,
        _env(tmp_path, TERM="xterm"),
    )
    try:
        term.expect(r"tools: current_time, convert_units")
        term.expect(r"you> ")
        term.type("hello")
        term.expect(r"assistant> Hello! How can I help you today\?")
        term.expect(r"\[first reply \d+ ms, turn \d+ ms\]")
        term.expect(r"you> ")
        term.type("what time is it?")
        term.expect(r'-> current_time\(\{"timezone": "UTC"\}\)')
        term.expect(r'<- current_time: \{"time": "\d\d?:\d\d [AP]M", "time_24h": "\d\d:\d\d"')
        term.expect(r"assistant> The clock says \{")
        term.expect(r"you> ")
        term.type("/voice sage")
        term.expect(r"\(voice: sage\)")
        term.type("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()

    # The session, function call included, replays the same (call ids are mapped).
    replay = cli(tmp_path, "replay", "chat.jsonl")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "no differences" in replay.stdout


FAKE_SOUNDDEVICE = """
# A stand-in for the sounddevice package: a microphone that plays a file in real time and
# speakers that write what they are given to a file.
import os, threading, time

_DEVICES = [
    {"name": "fake microphone", "max_input_channels": 1, "max_output_channels": 0,
     "default_samplerate": 24000.0},
    {"name": "fake speakers", "max_input_channels": 0, "max_output_channels": 1,
     "default_samplerate": 24000.0},
]


def query_devices(device=None, kind=None):
    if kind == "input":
        return _DEVICES[0]
    if kind == "output":
        return _DEVICES[1]
    return list(_DEVICES)


class _Stream:
    def __init__(self, samplerate, channels, dtype, blocksize, callback):
        assert (samplerate, channels, dtype) == (24000, 1, "int16")
        self.blocksize = blocksize
        self.callback = callback
        self.stopped = threading.Event()

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self):
        self.stopped.set()

    close = stop

    def _blocks(self):
        period = self.blocksize / 24000
        due = time.monotonic()
        while not self.stopped.is_set():
            yield
            due += period
            time.sleep(max(0.0, due - time.monotonic()))


class RawInputStream(_Stream):
    def _run(self):
        with open(os.environ["FAKE_MIC"], "rb") as f:
            data = f.read()
        size = self.blocksize * 2
        pos = 0
        for _ in self._blocks():
            chunk = data[pos : pos + size].ljust(size, b"\\0")
            pos += size
            self.callback(chunk, self.blocksize, None, None)


class RawOutputStream(_Stream):
    def _run(self):
        with open(os.environ["FAKE_SPEAKERS"], "wb") as out:
            for _ in self._blocks():
                buf = bytearray(self.blocksize * 2)
                self.callback(buf, self.blocksize, None, None)
                out.write(buf)
                out.flush()
"""


def test_chat_mic_vad_and_barge_in(
    tmp_path: Path,
    cli_engine: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    # Say hello; ask for a story; talk over it while it plays; then stay quiet.
    mic = (
        silence(300)
        + tts_wav("Hello there.")
        + silence(3000)
        + tts_wav("Tell me a story.")
        + silence(5000)
        + tts_wav("Hello again.")
        + silence(20000)
    )
    (tmp_path / "mic.raw").write_bytes(mic)
    env = _env(
        tmp_path,
        TERM="xterm",
        PYTHONPATH=str(fake),
        FAKE_MIC=str(tmp_path / "mic.raw"),
        FAKE_SPEAKERS=str(tmp_path / "speakers.raw"),
    )
    term = Terminal(["chat", "--mic", "--url", cli_engine.ga_url()], tmp_path, env)
    try:
        term.expect(r"\(microphone\)")
        # The microphone plays in real time whatever the machine's speed, so on a busy machine a
        # reply may still be in the making when the next turn starts: barge-in then cancels it
        # ("[cancelled: turn_detected, ...]"). Read the whole conversation, up to the end of the
        # last reply (nothing follows it but silence), and look at it as a whole.
        shown = term.expect(
            r"you> Hello[^\n]*\n[\s\S]*you> [^\n]*story[\s\S]*you> Hello[^\n]*\n"
            r"(?:[^\n]*\n)*?assistant> Hello! How can I help you today\?\n"
            r"(?:[^\n]*\n)*? *\[first audio \d+ ms, turn \d+ ms\]",
            120,
        )
        term.type("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert re.search(r"you> Hello[^\n]*\n(?:[^\n]*\n)*?assistant> Hello!", shown), shown
    assert re.search(r"you> [^\n]*story[^\n]*\n(?:[^\n]*\n)*?assistant> Once upon a time", shown)
    # Talking over the story stopped it: the item was cut at what was played.
    cut = re.search(r'\(interrupted: you heard (\d+) ms: "Once upon', shown)
    assert cut is not None, shown
    assert 0 < int(cut.group(1)) < 15000  # the story is longer than that
    speakers = (tmp_path / "speakers.raw").read_bytes()
    assert rms_dbfs(speakers[: len(speakers) // 2 * 2]) > -60  # the replies were played


def test_chat_ends_when_the_service_closes_the_connection(
    tmp_path: Path, cli_text_engine: Any
) -> None:
    # The engine's fault option closes the socket with 1011 after a dozen events.
    url = cli_text_engine.ga_url() + "&fault=close:1011:after=12"
    term = Terminal(["chat", "--url", url], tmp_path, _env(tmp_path, TERM="xterm"))
    try:
        term.expect(r"you> ")
        term.type("hello")
        term.expect(r"connection closed: .*code 1011")
        assert term.close() == 1
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_chat_mic_says_what_is_missing(tmp_path: Path) -> None:
    out = cli(tmp_path, "chat", "--mic")
    assert out.returncode == 1
    message = out.stderr
    assert "--mic" in message and "text chat works" in message
    try:
        import sounddevice  # type: ignore[import-not-found]  # noqa: F401
    except (ImportError, OSError):
        assert "pip install 'aoai-realtime[mic]'" in message
    else:  # installed, but this machine has no audio device
        assert "no microphone" in message or "PortAudio" in message


# ------------------------------------------------------------------------------ doctor


def doctor(tmp_path: Path, *args: str, **settings: str) -> tuple[int, dict[str, Any], str]:
    out = cli(tmp_path, "doctor", "--json", "--timeout", "5", *args, env=_env(tmp_path, **settings))
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    return out.returncode, checks, out.stdout + out.stderr


def test_doctor_fixes_a_wrong_endpoint(tmp_path: Path) -> None:
    rc, checks, _ = doctor(
        tmp_path,
        AZURE_OPENAI_ENDPOINT="http://example",
        AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
        AZURE_OPENAI_API_KEY="k" * 32,
    )
    assert rc == 1
    assert checks["endpoint"]["status"] == "fail"
    assert "set AZURE_OPENAI_ENDPOINT=https://example" in checks["endpoint"]["fix"]
    assert checks["handshake"]["status"] == "skip"


def test_doctor_fixes_a_missing_deployment(tmp_path: Path) -> None:
    rc, checks, _ = doctor(
        tmp_path,
        AZURE_OPENAI_ENDPOINT="https://my-resource.openai.azure.com",
        AZURE_OPENAI_API_KEY="k" * 32,
    )
    assert rc == 1
    assert checks["endpoint"]["status"] == "pass"
    assert checks["deployment"]["status"] == "fail"
    assert "AZURE_OPENAI_DEPLOYMENT=" in checks["deployment"]["fix"]


def test_doctor_passes_a_pasted_url_but_names_the_variables(
    tmp_path: Path, keyed_engine: Any
) -> None:
    pasted = (
        f"http://127.0.0.1:{keyed_engine.port}/openai/realtime"
        "?api-version=2025-04-01-preview&deployment=my-dep"
    )
    rc, checks, text = doctor(tmp_path, AZURE_OPENAI_ENDPOINT=pasted, AZURE_OPENAI_API_KEY=API_KEY)
    assert rc == 0, text
    assert checks["endpoint"]["status"] == "warn"
    assert checks["endpoint"]["fix"] == (
        f"set AZURE_OPENAI_ENDPOINT=http://127.0.0.1:{keyed_engine.port} and "
        "AZURE_OPENAI_DEPLOYMENT=my-dep and AZURE_OPENAI_API_VERSION=2025-04-01-preview"
    )
    assert checks["dialect"]["detail"].startswith("preview because AZURE_OPENAI_API_VERSION")
    assert checks["handshake"]["status"] == "pass"
    assert API_KEY not in text


def test_doctor_names_a_bad_key_and_passes_the_good_one(tmp_path: Path, keyed_engine: Any) -> None:
    endpoint = f"http://127.0.0.1:{keyed_engine.port}"
    rc, checks, text = doctor(
        tmp_path,
        AZURE_OPENAI_ENDPOINT=endpoint,
        AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
        AZURE_OPENAI_API_KEY=WRONG_KEY,
    )
    assert rc == 1
    assert (
        checks["endpoint"]["status"] == "pass" and "custom endpoint" in checks["endpoint"]["detail"]
    )
    assert checks["handshake"]["status"] == "fail" and "401" in checks["handshake"]["detail"]
    assert "AZURE_OPENAI_API_KEY" in checks["handshake"]["fix"]
    assert WRONG_KEY not in text

    # The right key, from a .env file this time; the human table.
    (tmp_path / ".env").write_text(
        f"AZURE_OPENAI_ENDPOINT={endpoint}\nAZURE_OPENAI_DEPLOYMENT=gpt-realtime\n"
        f"AZURE_OPENAI_API_KEY={API_KEY}\n"
    )
    rc, checks, text = doctor(tmp_path)
    assert rc == 0, text
    assert checks["handshake"]["status"] == "pass"
    assert "session.created" in checks["handshake"]["detail"]
    assert "from .env" in checks["settings"]["detail"]
    assert not [c for c in checks.values() if c["status"] == "fail"]
    table = cli(tmp_path, "doctor", env=_env(tmp_path))
    assert table.returncode == 0 and "All checks passed" in table.stdout
    assert re.search(r"handshake\s+pass", table.stdout)
    assert API_KEY not in table.stdout + table.stderr


def test_doctor_with_nothing_configured(tmp_path: Path) -> None:
    rc, checks, text = doctor(tmp_path)
    assert checks["handshake"]["status"] == "skip"
    assert "commands will use the local engine" in checks["handshake"]["detail"]
    local_ok = checks["local extra"]["status"] == "pass"
    assert rc == (0 if local_ok else 1), text


# ------------------------------------------------------------------------------ serve


def test_serve_on_a_busy_port_says_so_before_loading_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli(tmp_path, "serve", "--port", str(port), timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "--port" in out.stderr  # what to do
    assert "loading" not in out.stdout + out.stderr  # no model was loaded first


def test_serve_without_the_local_extra_does_not_offer_the_local_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the ``[local]`` extra: with Azure settings the local engine is not offered (not
    "available" in /healthz, not on the page); without them, serve says both ways to get an
    upstream. A scripted brain still runs, for typed turns."""
    from aoai_realtime.engine import speech
    from aoai_realtime.server import cli as serve_cli

    monkeypatch.setattr(speech, "missing_local_extra", lambda: "install the [local] extra")
    for name in list(os.environ):
        if name.startswith("AZURE_OPENAI"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    parser = serve_cli.build_parser()
    with pytest.raises(ConfigError) as none:
        serve_cli.prepare(parser.parse_args([]))
    assert "AZURE_OPENAI_ENDPOINT" in str(none.value)
    assert "aoai-realtime[local]" in str(none.value)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "gpt-realtime")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k" * 32)
    _, upstreams = serve_cli.prepare(parser.parse_args([]))
    assert upstreams.local is None
    assert [e["id"] for e in upstreams.endpoints()] == ["configured"]
