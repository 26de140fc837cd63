"""The image as a user runs it: built from the Dockerfile by podman, trained, served, stopped.

There is no Docker engine on these machines; podman (Debian's podman with runc, installed by
.ci/run) builds the Dockerfile with `--format docker` (which keeps the HEALTHCHECK) and runs
it with the settings of deploy/podman/containers.conf (used unless CONTAINERS_CONF names
another file). The base image python:3.11-slim cannot be pulled here (no registry but PyPI and
Debian's archive): scripts/container-base.sh pulls the pinned official image where it can and
otherwise makes, once per machine, a stand-in from Debian's packages (how it differs: see the
script); the build is pointed at whatever it prints.

- The image: non-root, `housing --version`, within its size budget (README, "The image").
- The pipeline in a container: `fetch --from` the real archive (mounted read-only),
  `featurize`, `train`, `evaluate`, `promote` into a volume as uid 10001, then the image's
  default command serves the champion to the host; `podman healthcheck run` passes; `podman
  stop` (SIGTERM) exits 0 with every answered request in the request log on the volume. Once
  with a writable root, where `podman diff` shows nothing written outside the volumes and
  /tmp, and once with a read-only root (`--read-only`, volumes and a tmpfs on /tmp only).
- The stack: the project's own images together in one pod (podman's equivalent of a Compose
  project on one network): the MLflow server built from deploy/mlflow/, the app image as the
  trainer (the whole pipeline against the server) and as two api replicas, both serving the
  champion the trainer registered. Third-party images stay out because they cannot be pulled
  here: PostgreSQL (the server keeps its store in SQLite on a volume instead), Prometheus and
  Grafana. deploy/compose.yaml is not used for the same reason (and is validated by
  tests/test_delivery.py); the scale-out tests run Debian's PostgreSQL/Prometheus on the host.

Training uses configs/default.yaml with one small candidate (HistGradientBoosting, 3 folds)
and the default promotion gates, so the run stays within a minute.

Mandatory in CI: HOUSING_REQUIRE_CONTAINER=1 (.ci/run) turns every "cannot run here" skip (no
podman, no root or debootstrap for the stand-in) into a failure. Build time, image size and
start-to-ready time are printed (timings are noisy here), never asserted; the size budget is.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import free_port, sample_row, wait_until

from housing_mlops import __version__

pytestmark = [pytest.mark.slow, pytest.mark.container]

REPO = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
APP_IMAGE = "localhost/housing-mlops:test"
MLFLOW_IMAGE = "localhost/housing-mlflow:test"
APP_UID = 10001  # the Dockerfile's `housing` user
# The budget the README states for the app image (podman's size, decimal bytes).
IMAGE_BUDGET_BYTES = 1_250_000_000
BUILD_TIMEOUT_S = 1800  # first build on a machine: pip downloads every dependency
MODEL_NAME = "california-housing"  # registered_model_name in configs/default.yaml
# Written by podman itself rather than by the process: mount points and /etc's bind mounts.
PODMAN_OWN = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/tmp", "/run"}
READ_ONLY = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp"]  # as with Docker
# podman without systemd cannot start the HEALTHCHECK's timer and says so on every run.
PODMAN_NOISE = "unable to get systemd connection"
STEPS = ["fetch", "featurize", "train", "evaluate", "promote"]

_MEASURED: dict[str, str] = {}


def _unavailable(msg: str) -> None:
    if os.environ.get("HOUSING_REQUIRE_CONTAINER") == "1":
        pytest.fail(f"{msg} (HOUSING_REQUIRE_CONTAINER=1: the container tests are mandatory)")
    pytest.skip(msg)


def _stderr(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if PODMAN_NOISE not in line)


class Podman:
    """`podman ARGS` with this test's configuration; fails the test with podman's stderr."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`podman {' '.join(args)}` exited {result.returncode}:\n"
                f"{_stderr(result.stderr)[-4000:]}\n{result.stdout[-2000:]}"
            )
        return result

    def remove(self, *names: str) -> None:
        if names:
            self("rm", "--force", "--ignore", *names, check=False, timeout=120)


@pytest.fixture(scope="module")
def podman() -> Podman:
    if shutil.which("podman") is None:
        _unavailable("podman is not installed (Debian: apt-get install podman runc debootstrap)")
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return Podman(env)


@pytest.fixture(scope="module")
def base_image(podman: Podman) -> str:
    """python:3.11-slim (pinned) where it can be pulled, else the Debian stand-in."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "container-base.sh")],
        capture_output=True,
        text=True,
        env=podman.env,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode == 3:  # cannot be made here: no debootstrap, not root
        _unavailable(_stderr(result.stderr).strip().splitlines()[-1])
    assert result.returncode == 0, _stderr(result.stderr)
    _MEASURED["base image"] = (
        f"{result.stdout.strip()}, ready in {time.monotonic() - started:.0f} s"
    )
    return result.stdout.strip()


def _build(podman: Podman, base: str, tag: str, context: Path) -> None:
    started = time.monotonic()
    podman(
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "--pull=never",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--tag",
        tag,
        str(context),
        timeout=BUILD_TIMEOUT_S,
    )
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    _MEASURED[tag] = f"built in {time.monotonic() - started:.0f} s, {size / 1e9:.2f} GB"


@pytest.fixture(scope="module")
def app_image(podman: Podman, base_image: str) -> str:
    _build(podman, base_image, APP_IMAGE, REPO)
    return APP_IMAGE


@pytest.fixture(scope="module")
def mlflow_image(podman: Podman, base_image: str) -> str:
    _build(podman, base_image, MLFLOW_IMAGE, REPO / "deploy" / "mlflow")
    return MLFLOW_IMAGE


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/default.yaml with one small candidate; its relative paths resolve under /app."""
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["features"].update(knn_folds=3, profile_sample_size=2000)
    config["train"].update(
        cv_folds=3,
        candidates=[
            {"name": "hist_gb", "estimator": "hist_gradient_boosting", "params": {"max_iter": 100}}
        ],
    )
    folder = tmp_path_factory.mktemp("container-config")
    (folder / "container.yaml").write_text(yaml.safe_dump(config))
    folder.chmod(0o755)  # pytest makes it owner-only; the image's user must read the file
    (folder / "container.yaml").chmod(0o644)
    return folder


def _volume(path: Path) -> Path:
    """A host folder the image's user can write (as `docker volume` would give it)."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(path, APP_UID, APP_UID)
    else:  # rootless podman maps uid 10001 to a subordinate id
        path.chmod(0o777)
    return path


def _app_mounts(volume: Path) -> list[str]:
    """The three folders configs/default.yaml writes: data/, mlruns/ and reports/ under /app."""
    args = []
    for name in ("data", "mlruns", "reports"):
        args += ["-v", f"{_volume(volume / name)}:/app/{name}"]
    return args


def _pipeline_commands(archive: str) -> list[list[str]]:
    config = ["--config", "/config/container.yaml"]
    return [
        ["fetch", "--from", archive, *config],
        *([step, *config] for step in STEPS[1:]),
    ]


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _written_outside_volumes(podman: Podman, container: str) -> list[str]:
    """What a container changed in the image's own filesystem (`podman diff`): lost with the
    container, and refused under a read-only root. Mount points and /tmp do not count."""
    changed = [line.split(maxsplit=1)[1] for line in podman("diff", container).stdout.splitlines()]
    return [
        path
        for path in changed
        if path not in PODMAN_OWN and not path.startswith(("/tmp/", "/archive", "/config"))
    ]


def _houses(n: int) -> list[dict[str, float]]:
    return [sample_row(seed) for seed in range(n)]


def _logged(db: Path) -> list[tuple[str, int, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT request_id, status, model_version FROM requests").fetchall()


def test_the_image_builds_runs_as_non_root_and_stays_within_its_size_budget(
    podman: Podman, app_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    version = podman("run", "--rm", app_image, "--version")
    assert version.stdout.strip() == f"housing {__version__}"
    uid = podman("run", "--rm", "--entrypoint", "id", app_image, "-u").stdout.strip()
    assert uid == str(APP_UID)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", app_image).stdout)
    with capsys.disabled():
        for what, value in _MEASURED.items():
            print(f"\n[container] {what}: {value}", end="")
        print()
    assert size <= IMAGE_BUDGET_BYTES, f"{size / 1e9:.2f} GB over the README's budget"


@pytest.mark.parametrize("root", ["writable", "read-only"])
def test_the_image_trains_into_a_volume_serves_the_champion_and_stops_cleanly(
    root: str,
    podman: Podman,
    app_image: str,
    config_dir: Path,
    real_archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"housing-test-{uuid.uuid4().hex[:8]}"
    mounts = _app_mounts(tmp_path / "volume")
    mounts += ["-v", f"{config_dir}:/config:ro", "-v", f"{real_archive}:/archive/cal.tgz:ro"]
    hardening = READ_ONLY if root == "read-only" else []
    names: list[str] = []
    try:
        for args in _pipeline_commands("/archive/cal.tgz"):
            name = f"{prefix}-{args[0]}"
            names.append(name)
            step = podman("run", "--name", name, *hardening, *mounts, app_image, *args)
            assert "Read-only file system" not in step.stderr, _stderr(step.stderr)
            if root == "writable":
                outside = _written_outside_volumes(podman, name)
                assert outside == [], f"`housing {args[0]}` wrote outside its volumes"
        assert (tmp_path / "volume" / "data" / "processed" / "train.parquet").is_file()
        assert list((tmp_path / "volume" / "mlruns").glob("mlflow.db"))

        # The image's default command: `housing serve --host 0.0.0.0` on port 8000.
        port = free_port()
        server = f"{prefix}-serve"
        names.append(server)
        started = time.monotonic()
        podman(
            "run",
            "--detach",
            "--name",
            server,
            "--health-interval",
            "disable",  # no systemd timer here; the check runs on demand below
            *hardening,
            *mounts,
            "--publish",
            f"127.0.0.1:{port}:8000",
            app_image,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/ready"), 180, "/ready")
        ready_s = time.monotonic() - started
        answered: dict[str, int] = {}
        for house in _houses(20):
            reply = httpx.post(f"{base}/predict", json=house, timeout=10)
            assert reply.status_code == 200, reply.text
            assert reply.json()["model_name"] == MODEL_NAME
            answered[reply.json()["request_id"]] = 1
        batch = httpx.post(f"{base}/predict", json={"instances": _houses(5)}, timeout=10)
        assert batch.status_code == 200 and batch.json()["count"] == 5
        answered[batch.json()["request_id"]] = 5
        version = batch.json()["model_version"]

        health = podman("healthcheck", "run", server, check=False)
        assert health.returncode == 0, _stderr(health.stderr) + health.stdout
        podman("stop", "--time", "30", server, timeout=120)
        state = json.loads(podman("inspect", "--format", "{{json .State}}", server).stdout)
        logs = podman("logs", server).stderr
        assert state["ExitCode"] == 0, logs[-3000:]
        assert "Read-only file system" not in logs
        if root == "writable":
            assert _written_outside_volumes(podman, server) == []

        rows = _logged(tmp_path / "volume" / "data" / "requests.db")
        logged: dict[str, int] = {}
        for request_id, status, row_version in rows:
            assert (status, row_version) == (200, version)
            logged[request_id] = logged.get(request_id, 0) + 1
        assert logged == answered, "the request log misses answered requests"
        with capsys.disabled():
            print(f"\n[container] {root} root: start to /ready {ready_s:.1f} s")
    finally:
        podman.remove(*names)


@contextlib.contextmanager
def _pod(podman: Podman, name: str, ports: dict[int, int]) -> Iterator[str]:
    publish: list[str] = []
    for host, inside in ports.items():
        publish += ["--publish", f"127.0.0.1:{host}:{inside}"]
    podman("pod", "create", "--name", name, *publish)
    try:
        yield name
    finally:
        podman("pod", "rm", "--force", "--time", "10", name, check=False, timeout=120)


def _champion_version(mlflow_url: str) -> str:
    reply = httpx.get(
        f"{mlflow_url}/api/2.0/mlflow/registered-models/alias",
        params={"name": MODEL_NAME, "alias": "champion"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["model_version"]["version"])


def test_the_stack_trains_through_the_mlflow_server_and_two_api_replicas_serve_the_champion(
    podman: Podman,
    app_image: str,
    mlflow_image: str,
    config_dir: Path,
    real_archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = f"housing-stack-{uuid.uuid4().hex[:8]}"
    # Inside the pod the containers share one network namespace (localhost), as services on
    # one Compose network share names: MLflow on 5000, the replicas on 8001 and 8002.
    mlflow_port, api_ports = free_port(), {free_port(): 8001, free_port(): 8002}
    server_store, artifacts = _volume(tmp_path / "mlflow"), _volume(tmp_path / "artifacts")
    tracking = ["--env", "MLFLOW_TRACKING_URI=http://127.0.0.1:5000"]
    config = ["-v", f"{config_dir}:/config:ro"]
    with _pod(podman, pod, {mlflow_port: 5000, **api_ports}):
        started = time.monotonic()
        podman(
            "run",
            "--detach",
            "--pod",
            pod,
            "--name",
            f"{pod}-mlflow",
            "--health-interval",
            "disable",
            "-v",
            f"{server_store}:/mlflow/store",
            "-v",
            f"{artifacts}:/mlartifacts",
            mlflow_image,
            # the image's entrypoint is `mlflow server`; SQLite stands in for PostgreSQL
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--workers",
            "1",
            "--backend-store-uri",
            "sqlite:////mlflow/store/mlflow.db",
            "--serve-artifacts",
            "--artifacts-destination",
            "/mlartifacts",
        )
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        wait_until(lambda: _answers(f"{mlflow_url}/health"), 180, "the MLflow server")

        # The trainer: like compose.yaml's, one shell running the whole pipeline.
        script = "set -e\n" + "\n".join(
            "housing " + " ".join(args) for args in _pipeline_commands("/archive/cal.tgz")
        )
        trainer_data = _volume(tmp_path / "trainer")
        podman(
            "run",
            "--rm",
            "--pod",
            pod,
            *tracking,
            *config,
            "-v",
            f"{trainer_data}:/app/data",
            "-v",
            f"{real_archive}:/archive/cal.tgz:ro",
            "--entrypoint",
            "/bin/sh",
            app_image,
            "-c",
            script,
            timeout=900,
        )
        champion = _champion_version(mlflow_url)
        # The model travelled through the server's artifact proxy into its volume.
        assert any(artifacts.rglob("MLmodel")), "no model artifacts in the server's volume"

        replicas = []
        for host_port, inner in api_ports.items():
            podman(
                "run",
                "--detach",
                "--pod",
                pod,
                "--name",
                f"{pod}-api-{inner}",
                "--health-interval",
                "disable",
                *READ_ONLY,
                *tracking,
                "-v",
                f"{_volume(tmp_path / f'api-{inner}')}:/app/data",
                app_image,
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                str(inner),
            )
            replicas.append(f"http://127.0.0.1:{host_port}")
        for url in replicas:
            wait_until(functools.partial(_answers, f"{url}/ready"), 180, f"replica {url}")
        stack_s = time.monotonic() - started

        houses = {"instances": _houses(10)}
        answers = [httpx.post(f"{url}/predict", json=houses, timeout=10) for url in replicas]
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.json()["model_version"] for a in answers] == [champion, champion]
        assert answers[0].json()["predictions"] == answers[1].json()["predictions"]

        podman("pod", "stop", "--time", "30", pod, timeout=180)
        for container in (f"{pod}-mlflow", *(f"{pod}-api-{p}" for p in api_ports.values())):
            code = podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout
            assert code.strip() == "0", f"{container} exited {code.strip()}"
        with capsys.disabled():
            print(f"\n[container] stack: server + trainer + 2 replicas ready in {stack_s:.0f} s")
