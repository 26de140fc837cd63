"""Helpers shared by several test modules (import them from here, never from a test file).

- archives in the StatLib layout (``make_archive``, ``GOOD``, ``sha256``);
- processed data and throwaway MLflow stores (``write_processed``, ``trained_store``, ...);
- processes and servers on loopback (``free_port``, ``wait_until``, ``running``,
  ``ServerThread``), waiting by polling with a deadline, never by a fixed sleep;
- a real PostgreSQL server (``PostgresServer``; the session fixture ``postgres`` and a
  fresh database per test, ``pg_url``, are in conftest.py).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from synthetic import FEATURES, make_frame, write_config

from housing_mlops import data, registry
from housing_mlops.config import Settings, load_config

HOUSING = Path(sys.executable).parent / "housing"


# ------------------------------------------------------------------------- archives
# The first rows of the real cal_housing.data (longitude, latitude, housingMedianAge,
# totalRooms, totalBedrooms, population, households, medianIncome, medianHouseValue).
REAL_ROWS = [
    "-122.230000,37.880000,41.000000,880.000000,129.000000,322.000000,126.000000,8.325200,452600.000000",
    "-122.220000,37.860000,21.000000,7099.000000,1106.000000,2401.000000,1138.000000,8.301400,358500.000000",
    "-122.240000,37.850000,52.000000,1467.000000,190.000000,496.000000,177.000000,7.257400,352100.000000",
    "-122.250000,37.850000,52.000000,1274.000000,235.000000,558.000000,219.000000,5.643100,341300.000000",
    "-122.250000,37.850000,52.000000,1627.000000,280.000000,565.000000,259.000000,3.846200,342200.000000",
    "-119.310000,36.060000,20.000000,2236.000000,434.000000,1405.000000,412.000000,1.882700,48700.000000",
    "-121.240000,39.370000,16.000000,2785.000000,616.000000,1387.000000,530.000000,2.388600,89400.000000",
]


def make_archive(
    rows: list[str] | None = None, member: str = data.ARCHIVE_MEMBER, pad: int = 0
) -> bytes:
    """A .tgz with the StatLib layout holding ``rows`` (default: real first rows).

    ``pad`` appends that many bytes of incompressible filler in a second member so the
    archive spans several download chunks (for progress and truncation tests).
    """
    text = ("\n".join(rows or REAL_ROWS) + "\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(text)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(text))
        if pad:
            blob = random.Random(0).randbytes(pad)
            extra = tarfile.TarInfo("CaliforniaHousing/padding.bin")
            extra.size = len(blob)
            tar.addfile(extra, io.BytesIO(blob))
    return buf.getvalue()


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


GOOD = make_archive(pad=300_000)


# ------------------------------------------------------- processed data and stores
DATA_VERSION = "d" * 64


def write_processed(settings: Settings, n: int = 600, seed: int = 0) -> None:
    """train/test parquet + manifest exactly as `housing featurize` writes them."""
    from housing_mlops.data import frame_content_hash

    frame = make_frame(n, seed)
    cut = int(n * 0.8)
    train, test = frame.iloc[:cut], frame.iloc[cut:]
    out = Path(settings.paths.processed_dir)
    out.mkdir(parents=True, exist_ok=True)
    train.to_parquet(out / "train.parquet")
    test.to_parquet(out / "test.parquet")
    manifest = {
        "raw_content_hash": DATA_VERSION,
        "train_hash": frame_content_hash(train),
        "test_hash": frame_content_hash(test),
        "train_rows": len(train),
        "test_rows": len(test),
        "test_size": 0.2,
        "seed": 0,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))


def make_settings(tmp_path: Path, overrides: dict[str, Any] | None = None) -> Settings:
    settings = load_config(write_config(tmp_path, overrides))
    write_processed(settings)
    return settings


def copy_store(settings: Settings, tmp_path: Path) -> Settings:
    """A new config whose tracking DB is a copy of ``settings``' (artifacts are shared,
    read-only), so a test can move aliases without disturbing the others."""
    src = Path(registry.tracking_uri(settings).removeprefix("sqlite:///"))
    dst = tmp_path / "mlruns" / "mlflow.db"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return load_config(
        write_config(
            tmp_path,
            {
                "paths": {
                    "raw_dir": str(settings.paths.raw_dir),
                    "processed_dir": str(settings.paths.processed_dir),
                    "reports_dir": str(tmp_path / "reports"),
                },
                "mlflow": {**settings.mlflow.model_dump(), "tracking_uri": f"sqlite:///{dst}"},
                "promote": settings.promote.model_dump(),
            },
        )
    )


_TRAINED: dict[str, tuple[Settings, list[dict[str, Any]]]] = {}
_EMPTY: dict[str, Path] = {}


def empty_store_config(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A config in tmp_path whose store has no model yet. The SQLite schema migration
    (seconds) runs once per session; each caller gets a copy of that database."""
    if "db" not in _EMPTY:
        first = tmp_path_factory.mktemp("empty")
        registry.configure(load_config(write_config(first)))
        _EMPTY["db"] = first / "mlruns" / "mlflow.db"
    (tmp_path / "mlruns").mkdir(parents=True, exist_ok=True)
    shutil.copy(_EMPTY["db"], tmp_path / "mlruns" / "mlflow.db")
    return write_config(tmp_path)


def trained_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, list[dict[str, Any]]]:
    """One store with both synthetic candidates trained (versions 1 ridge, 2 hist_gb),
    built once per session and shared by the test modules; mutate only copies of it."""
    if "store" not in _TRAINED:
        from housing_mlops.train import train

        settings = make_settings(tmp_path_factory.mktemp("trained"))
        _TRAINED["store"] = (settings, train(settings))
    return _TRAINED["store"]


def register_champion(config: Path, seed: int = 4, candidate: Any = None) -> str:
    """Fit a small pipeline on synthetic data, register it in the config's registry and
    make it the champion; returns its version. ``candidate``: a ``CandidateConfig``
    (default: the config's hist_gb, 30 iterations)."""
    from housing_mlops import registry
    from housing_mlops.drift import build_profile
    from housing_mlops.features import FEATURES
    from housing_mlops.models import build_pipeline

    settings = load_config(config)
    frame = make_frame(500, seed=seed)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    candidate = candidate or settings.train.candidates[1]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # OpenMP pools spin on a busy 2-core machine
        pipeline = build_pipeline(candidate, settings.features, 42, n_jobs=1).fit(X, y)
        pred = pipeline.predict(X)
    profile = build_profile({**{c: X[c].to_numpy() for c in FEATURES}, "prediction": pred}, 200)
    ref = registry.log_candidate(
        settings,
        run_name=f"e2e-{candidate.name}",
        model=pipeline,
        X_train=X,
        params=dict(candidate.params),
        metrics={"cv_rmse_mean": 0.3},
        run_tags={"candidate": candidate.name, "data_version": "synthetic"},
        version_tags={"candidate": candidate.name},
        train_frame=frame,
        train_source=config.parent / "train.parquet",
        train_hash="0" * 64,
        profile=profile,
    )
    registry.set_alias(settings, registry.CHAMPION, ref.version)
    return ref.version


# ------------------------------------------------------ processes and servers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.05,
) -> Any:
    """Poll ``check`` until it returns a truthy value (which is returned); fail after
    ``timeout`` seconds, or as soon as ``proc`` exits (showing the end of ``log``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = f"\n{tail(log)}" if log else ""
            pytest.fail(f"{what}: the process exited early with code {proc.returncode}{output}")
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(interval)
    output = f"\n{tail(log)}" if log else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){output}")


@contextlib.contextmanager
def running(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with output in ``log``; SIGTERM (then SIGKILL) on exit, always."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


class ServerThread:
    """An ASGI app on uvicorn in a background thread (signal handlers are only installed
    in the main thread), configured like ``housing serve`` unless ``http`` says otherwise.
    ``with ServerThread(app) as server:`` waits until it listens on ``server.base``."""

    def __init__(self, app: Any, http: str = "auto", **config: Any) -> None:
        import uvicorn

        self.port = free_port()
        options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "access_log": False}
        options.update(config)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, http=http, **options)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(), 20, "uvicorn to start"
        )
        if not self.server.started:
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


# --------------------------------------------------------- `housing serve` on loopback
def serve_command(config: Path, port: int) -> list[str]:
    return [
        str(HOUSING),
        "--config",
        str(config),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def ready(base_url: str) -> bool:
    return httpx.get(f"{base_url}/ready", timeout=2).status_code == 200


def sample_row(seed: int = 3) -> dict[str, float]:
    frame = make_frame(5, seed=seed)
    return {k: float(frame[k].iloc[0]) for k in FEATURES}


# ------------------------------------------------------------------------ PostgreSQL
def _mandatory() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1"


def _pg_tool(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def skip_or_fail(msg: str) -> None:
    """Skip locally; fail where the tool must be there (CI, HOUSING_REQUIRE_REAL_DATA=1)."""
    if _mandatory():
        pytest.fail(msg + ": .ci/run installs it")
    pytest.skip(msg)


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free loopback port, started with initdb/pg_ctl
    (as Debian's unprivileged ``postgres`` user when the tests run as root).

    The superuser ``housing`` logs in over TCP with a password (scram-sha-256), so every
    URL a test uses carries a secret that must never show up in output. ``url(db)`` is a
    ``postgresql://`` URL; ``create_database()`` makes a fresh database and returns its URL;
    ``stop()`` / ``start()`` take the server down and up again on the same port (outages).
    """

    user = "housing"
    password = "s3cret-Pg-pw"  # noqa: S105 - a throwaway test cluster

    def __init__(self) -> None:
        initdb, self.pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
        if initdb is None or self.pg_ctl is None:
            skip_or_fail("PostgreSQL's initdb/pg_ctl not installed (apt-get install postgresql)")
        self.base = Path(tempfile.mkdtemp(prefix="housing-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the cluster as Debian's `postgres` user.
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base, ignore_errors=True)
                pytest.skip("running as root and there is no `postgres` user to own the cluster")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.base / "data"
        self.port = free_port()
        self._databases = 0
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        assert initdb is not None
        self._pg(
            initdb, "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()

    def _pg(self, *args: str, timeout: float = 90) -> None:
        result = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"{args[0]}: {result.stdout}\n{result.stderr}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        assert self.pg_ctl is not None
        self._pg(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "postgres.log"),
            "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        assert self.pg_ctl is not None
        self._pg(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped inside the block, started again after it (even on failure)."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its postgresql:// URL (with the password)."""
        import psycopg

        self._databases += 1
        name = f"{prefix}_{self._databases}_{os.getpid()}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        return tail(self.base / "postgres.log")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------ a store with a champion
def champion_config(tmp_path_factory: pytest.TempPathFactory, version: str = "2") -> Path:
    """A config (in a new temp folder) whose store is a copy of the session's trained store
    with ``version`` (2: hist_gb) as champion, and the synthetic processed split."""
    settings, _ = trained_store(tmp_path_factory)
    home = tmp_path_factory.mktemp("champion")
    copy = copy_store(settings, home)
    registry.set_alias(copy, registry.CHAMPION, version)
    return home / "config.yaml"


# ------------------------------------------------------- a standalone Spark cluster
def spark_missing() -> str | None:
    """Why the Spark tests cannot run here (None when they can)."""
    import importlib.util
    import os

    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed: pip install -e '.[spark]' (CI installs it)"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java: apt-get install openjdk-17-jre-headless (CI installs it)"
    return None


@contextlib.contextmanager
def spark_standalone(tmp_path: Path) -> Iterator[str]:
    """One master and one worker (1 core) from the pyspark package's own ``spark-class``,
    bound to 127.0.0.1 on free ports; yields ``spark://127.0.0.1:PORT``, stops both."""
    import os

    import pyspark

    home = Path(pyspark.__file__).parent
    spark_class = home / "bin" / "spark-class"
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    master_cmd = [
        "bash",
        str(spark_class),
        "org.apache.spark.deploy.master.Master",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--webui-port",
        str(ui),
    ]
    worker_cmd = [
        "bash",
        str(spark_class),
        "org.apache.spark.deploy.worker.Worker",
        "--host",
        "127.0.0.1",
        "--cores",
        "1",
        "--memory",
        "1g",
        "--webui-port",
        str(free_port()),
        "--work-dir",
        str(tmp_path / "spark-work"),
        url,
    ]

    def alive_workers() -> int:
        state = httpx.get(f"http://127.0.0.1:{ui}/json/", timeout=2).json()
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    master_log, worker_log = tmp_path / "spark-master.log", tmp_path / "spark-worker.log"
    with running(master_cmd, master_log, env=env) as master:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{ui}/json/", timeout=2).status_code == 200,
            120,
            "the Spark master",
            master,
            master_log,
            interval=0.5,
        )
        with running(worker_cmd, worker_log, env=env) as worker:
            wait_until(alive_workers, 120, "a Spark worker", worker, worker_log, interval=0.5)
            yield url


def spooled_rows(directory: Path) -> int:
    """Rows waiting in every request-log spool file of a folder (store.spool)."""
    import sqlite3

    total = 0
    for path in sorted(directory.glob("*.db")):
        conn = sqlite3.connect(path, timeout=5.0)
        try:
            total += int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])
        finally:
            conn.close()
    return total


# ------------------------------------------------------------- request-log rows (typed)
def answered_row(
    request_id: str,
    row_index: int = 0,
    *,
    ts: float = 1000.0,
    version: str = "1",
    prediction: float = 2.0,
    role: str | None = "champion",
    shadow_version: str | None = None,
    shadow_prediction: float | None = None,
) -> Any:
    """An answered (status 200) request-log row, as ``store.LoggedRequest``."""
    from housing_mlops.store import LoggedRequest

    return LoggedRequest(
        ts=ts,
        request_id=request_id,
        row_index=row_index,
        model_name="m",
        model_version=version,
        features=[1.0] * 8,
        prediction=prediction,
        latency_ms=1.0,
        status=200,
        role=role,
        shadow_version=shadow_version,
        shadow_prediction=shadow_prediction,
    )


def write_log_rows(location: Any, rows: list[Any]) -> None:
    """``LoggedRequest`` rows into the log at ``location`` (SQLite path or URL) in one
    transaction, through the store's sink (what the service's writer uses)."""
    from housing_mlops import store

    sink = store.open_sink(location)
    try:
        sink.write([store.row_values(r) for r in rows])
    finally:
        sink.close()


# ------------------------------------------------------------------- live quality
def add_feedback(location: Path | str, labels: list[tuple[str, int, float]]) -> None:
    """True values ``(request_id, row_index, actual)`` into the log's ``feedback`` table by
    plain SQL through the store's opener (SQLite path or postgresql:// URL), one
    transaction: a stand-in for the service's POST /feedback in tests of the readers."""
    from housing_mlops import store

    conn = store.open_log(location, create=False)
    assert conn is not None, f"no request log at {location}"
    try:
        with conn:
            for request_id, row_index, actual in labels:
                conn.execute(
                    "INSERT INTO feedback (request_id, row_index, actual, received_at, source) "
                    "VALUES (?, ?, ?, ?, 'test')",
                    [request_id, row_index, float(actual), time.time()],
                )
    finally:
        conn.close()


def champion_challenger_rows(n: int = 600, start: float = 1_700_000_000.0) -> list[Any]:
    """A request log of a champion (v1) with a challenger (v2), as ``LoggedRequest`` rows.

    Per 10 requests (60 s apart): 6 answered by the champion and shadowed by v2, 2
    answered by v2 as the canary, 1 two-row batch of the champion without a shadow and
    1 rejected (422). Predictions differ by a known amount: shadow = champion + 0.1 * k
    (k = 0..4). Roughly every 60 s one request, so n=600 spans ~10 hours.
    """
    from housing_mlops.store import LoggedRequest

    rows: list[Any] = []
    features = [3.0, 20.0, 5.0, 1.0, 1000.0, 3.0, 36.0, -120.0]
    for i in range(n):
        ts = start + 60.0 * i
        kind = i % 10
        base: dict[str, Any] = {
            "ts": ts,
            "request_id": f"r{i}",
            "model_name": "m",
            "features": features,
        }
        pred = 1.0 + (i % 7) * 0.25
        if kind < 6:
            rows.append(
                LoggedRequest(
                    **base,
                    row_index=0,
                    model_version="1",
                    prediction=pred,
                    latency_ms=2.0 + i % 5,
                    status=200,
                    role="champion",
                    shadow_version="2",
                    shadow_prediction=pred + 0.1 * (i % 5),
                )
            )
        elif kind < 8:
            rows.append(
                LoggedRequest(
                    **base,
                    row_index=0,
                    model_version="2",
                    prediction=pred + 0.05,
                    latency_ms=4.0 + i % 3,
                    status=200,
                    role="challenger",
                )
            )
        elif kind == 8:
            for index in (0, 1):
                rows.append(
                    LoggedRequest(
                        **base,
                        row_index=index,
                        model_version="1",
                        prediction=pred + index,
                        latency_ms=20.0,
                        status=200,
                        role="champion",
                    )
                )
        else:
            rows.append(
                LoggedRequest(
                    ts=ts,
                    request_id=f"r{i}",
                    row_index=0,
                    model_name="m",
                    model_version=None,
                    features=None,
                    prediction=None,
                    latency_ms=0.5,
                    status=422,
                    error="bad body",
                )
            )
    return rows


def fit_two_versions(folder: Path) -> dict[str, Any]:
    """Two genuinely different fitted pipelines on the same 500 synthetic rows: version "1"
    (hist GB) and "2" (ridge), with their reference profile and the rows (``X``)."""
    from housing_mlops.drift import build_profile
    from housing_mlops.models import build_pipeline

    settings = load_config(write_config(folder))
    frame = make_frame(500, seed=2)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    ridge, hist_gb = settings.train.candidates
    pipes = {
        "1": build_pipeline(hist_gb, settings.features, 42, n_jobs=1).fit(X, y),
        "2": build_pipeline(ridge, settings.features, 42, n_jobs=1).fit(X, y),
    }
    profile = build_profile({c: X[c].to_numpy() for c in FEATURES}, 200)
    return {"pipes": pipes, "profile": profile, "X": X}


def damaged_copy(log: Path, to: Path) -> Path:
    """A copy of the SQLite request log ``log`` at ``to`` whose header and schema page read
    fine and whose table pages do not ("database disk image is malformed")."""
    import shutil
    import sqlite3

    shutil.copyfile(log, to)
    conn = sqlite3.connect(to)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(to.read_bytes())
    data[page:] = bytes([0xA5]) * (len(data) - page)  # every page but the first
    to.write_bytes(bytes(data))
    return to
