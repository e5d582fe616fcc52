"""The deployment files keep their promises: compose (parsed by docker-compose itself and read
as YAML), the Dockerfile's stages, the build context, and the wheel that the images install.

Nothing here needs a Docker engine: `docker-compose config` (Debian's docker-compose, the v1
Python tool) only parses and resolves the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("api", "worker-gpu", "worker-cpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # resolves the `<<:` merges
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target path -> source volume of a service's `volumes` (short syntax)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[target] = source
    return out


# ------------------------------------------------------------------------------------ compose


def test_redis_is_internal_durable_never_evicts_and_needs_a_password(compose: dict[str, Any]) -> None:
    redis = services(compose)["redis"]
    assert "ports" not in redis and "expose" not in redis
    assert redis["networks"] == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True
    args = [str(a) for a in redis["command"]]

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--maxmemory-policy") == "noeviction"
    assert value("--appendonly") == "yes"
    assert value("--appendfsync") == "everysec"
    assert value("--requirepass").startswith("${REDIS_PASSWORD:?")  # no default: compose refuses to start without
    assert redis["healthcheck"]["test"]
    assert "redis-data" in mounts(redis).values() and "/data" in mounts(redis)


def test_api_publishes_8000_after_redis_is_healthy(compose: dict[str, Any]) -> None:
    api = services(compose)["api"]
    assert [p.rsplit(":", 1)[1] for p in api["ports"]] == ["8000"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["command"][:2] == ["serve", "--no-worker"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert set(api["networks"]) == {"backend", "frontend"}
    assert api["build"]["target"] == "cpu"
    broker = api["environment"]["W2V_BROKER_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0", broker)


def test_gpu_worker_reserves_gpus_and_claims_one_per_replica(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    cmd = worker["command"]
    assert cmd[0] == "worker" and cmd[cmd.index("--device") + 1] == "cuda"
    assert "gpu" in cmd[cmd.index("--queues") + 1]
    assert worker["build"]["target"] == "cuda"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # --scale worker-gpu=N gives every replica the same GPUs; each locks its own in this shared folder.
    slots = worker["environment"]["W2V_GPU_SLOTS_DIR"]
    assert mounts(worker)[slots] == "gpu-slots"
    assert "ports" not in worker and worker["networks"] == ["backend"]


def test_cpu_worker_is_a_profile_on_the_cpu_queue(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker-cpu"]
    assert worker["profiles"] == ["cpu"]
    cmd = worker["command"]
    assert cmd[cmd.index("--queues") + 1] == "cpu" and cmd[cmd.index("--device") + 1] == "cpu"
    assert worker["healthcheck"] == {"disable": True}  # the image's check probes HTTP, which a worker has not


def test_workers_take_only_the_cpu_the_api_leaves(compose: dict[str, Any]) -> None:
    # Containers are separate cgroups: a worker's nice and SCHED_IDLE do not reach across to the
    # API's, so only the cgroup weight keeps training from taking turns with queries.
    for name in ("worker-gpu", "worker-cpu"):
        assert services(compose)[name]["cpu_shares"] == 2, name
    assert "cpu_shares" not in services(compose)["api"]


def test_every_w2v_service_shares_the_store_volume_and_broker(compose: dict[str, Any]) -> None:
    assert "store" in compose["volumes"]
    for name in APP_SERVICES:
        service = services(compose)[name]
        assert mounts(service)["/data"] == "store", name
        assert service["environment"]["W2V_STORE"] == "/data", name
        assert "@redis:6379/0" in service["environment"]["W2V_BROKER_URL"], name
        assert service["env_file"] == "${ENV_FILE:-.env}", name


def test_env_example_covers_every_variable_compose_needs() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    with_default = set(re.findall(r"\$\{([A-Z0-9_]+):-", text))
    documented = env_example()
    assert required == {"REDIS_PASSWORD"}
    assert required <= documented.keys()
    assert with_default - {"ENV_FILE"} <= documented.keys()


def _compose_config(env_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("Debian's docker-compose is not installed (apt-get install docker-compose; .ci/run does)")
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_PASSWORD", "COMPOSE_FILE", "COMPOSE_PROFILES"}}
    env.update(ENV_FILE=str(env_file), DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


def test_docker_compose_parses_and_resolves_the_file(tmp_path: Path) -> None:
    done = _compose_config(ENV_EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    svc = resolved["services"]
    password = env_example()["REDIS_PASSWORD"]
    assert f"--requirepass {password}" in " ".join(map(str, svc["redis"]["command"]))
    assert "ports" not in svc["redis"]
    assert svc["api"]["environment"]["W2V_BROKER_URL"] == f"redis://:{password}@redis:6379/0"
    ports = svc["api"]["ports"]
    assert [(int(p["published"]), int(p["target"])) for p in ports] == [(8000, 8000)]
    assert svc["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert svc["worker-cpu"]["profiles"] == ["cpu"]
    assert svc["worker-cpu"]["cpu_shares"] == svc["worker-gpu"]["cpu_shares"] == 2


def test_docker_compose_refuses_to_run_without_a_redis_password(tmp_path: Path) -> None:
    env_file = tmp_path / "no-password.env"
    env_file.write_text("API_PORT=8000\n", encoding="utf-8")
    done = _compose_config(env_file, tmp_path)
    assert done.returncode != 0
    assert "set REDIS_PASSWORD in .env" in done.stderr


# ------------------------------------------------------------------------------------ Dockerfile


def stages() -> dict[str, list[str]]:
    """Instructions of each named stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = result.setdefault(m.group(2) or m.group(1), [])
        if current is not None:
            current.append(line)
    return result


def test_dockerfile_has_a_cpu_and_a_cuda_image_run_as_non_root() -> None:
    s = stages()
    assert {"cpu", "cuda"} <= s.keys()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", text)
    assert s["cuda"][0] == "FROM ${CUDA_IMAGE} AS cuda"
    for name in ("cpu", "cuda"):
        users = [line.split()[1] for line in s[name] if line.startswith("USER ")]
        assert users and users[-1] not in {"root", "0"}, name
        assert any(line.startswith('ENTRYPOINT ["w2v"]') for line in s[name]), name
    # The GPU build installs the `gpu` extra, the CPU build does not.
    assert any("requirements-gpu.txt" in line for line in s["build-cuda"] if line.startswith("RUN"))
    assert not any("requirements-gpu.txt" in line for line in s["build-cpu"])


def test_dockerfile_healthcheck_uses_python_not_curl() -> None:
    checks = [line for line in stages()["cpu"] if line.startswith("HEALTHCHECK")]
    assert len(checks) == 1
    assert "python -c" in checks[0] and "urllib.request" in checks[0] and "/healthz" in checks[0]
    assert "curl" not in checks[0]


def test_dockerfile_installs_dependencies_before_copying_code() -> None:
    for name in ("build-cpu", "build-cuda"):
        lines = stages()[name]
        deps = next(i for i, line in enumerate(lines) if line.startswith("RUN") and "-r /tmp/requirements.txt" in line)
        code = next(i for i, line in enumerate(lines) if line.startswith("COPY model"))
        assert deps < code, name


def test_dockerfile_requirements_step_lists_pyprojects_dependencies(tmp_path: Path) -> None:
    """Run the Dockerfile's own extraction command and compare with pyproject.toml."""
    run = next(line for line in stages()["requirements"] if line.startswith("RUN "))
    command = run.removeprefix("RUN ")
    assert command.startswith("python ")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` is this one
    subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, check=True, env={**os.environ, "PATH": path})
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == project["dependencies"]
    assert (tmp_path / "requirements-gpu.txt").read_text().splitlines() == project["optional-dependencies"]["gpu"]


def test_build_context_holds_only_the_package_sources() -> None:
    """The .dockerignore allow-list, as docker-py (docker-compose's library) applies it."""
    probe = (
        "import sys; from docker.utils.build import exclude_paths; "
        "pats = [l.strip() for l in open('.dockerignore') if l.strip() and not l.startswith('#')]; "
        "print('\\n'.join(sorted(exclude_paths('.', pats))))"
    )
    python = shutil.which("python3", path="/usr/bin")
    if python is None or subprocess.run([python, "-c", "import docker"], capture_output=True).returncode != 0:
        pytest.skip("docker-py (Debian's python3-docker, installed with docker-compose) is not available")
    listed = subprocess.run([python, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert {"pyproject.toml", "README.md", "app/main.py", "app/static/index.html", "worker/tasks.py"} <= set(listed)
    assert "model/trainer.py" in listed
    tops = {p.split("/", 1)[0] for p in listed}
    assert tops <= {"pyproject.toml", "README.md", "model", "app", "worker", "Dockerfile", ".dockerignore"}
    assert not any("__pycache__" in p for p in listed)


@pytest.mark.slow
def test_wheel_ships_the_web_page(tmp_path: Path) -> None:
    """The images install the package as a wheel: the page's files must be inside it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("model", "app", "worker"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("w2v_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"app/static/index.html", "app/static/app.js", "app/static/style.css"} <= names
