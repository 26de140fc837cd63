"""Benchmark `housing serve` against the ceiling and `mlflow models serve` (same champion).

    .venv/bin/python benchmarks/bench_serve.py [--config CONFIG] [--duration 15]
    make bench-serve

Which model: if the config's registry already has a ``champion`` (after ``make demo``),
that champion is served by both servers. Otherwise a throwaway store in a temp folder gets
one: the config's HistGradientBoosting candidate (``hist_gb``, the default one is 300
iterations on the full feature pipeline) fitted on the processed train split when
``housing featurize`` has run, else on the real split built in the temp folder from the
archive (``$HOUSING_DATA_ARCHIVE`` or ``../shared/data/cal_housing.tgz``), else on 16,512
synthetic rows; registered through ``registry.log_candidate`` and made champion.
``--temp-store`` forces the throwaway store.

The ceiling: ``ceiling_app.py``, a constant-answer raw ASGI app on the same uvicorn
(httptools, uvloop) that reads the body and answers the same bytes every time; what the
server alone costs. It is driven right before `housing serve`, and the ratio of their
requests/s is the headline (target: >= 50% of the ceiling at p99 <= 10 ms).

The servers run one worker on loopback. `housing serve` runs with its config as is
(request logging on, micro-batching, metrics); `mlflow models serve -m
models:/NAME@champion --env-manager local` with MLflow's defaults. Each is driven alone (the
other stopped) by a separate process with the same single-row request at 16 concurrent
connections: `wrk` (one thread) + a Lua script when `wrk` is installed, else a Python
asyncio/httpx load generator (`--loadgen python` forces it). The request body is the same
row; only the envelope differs (MLflow wants ``{"dataframe_records": [...]}``).

Side by side, the request log's two backends: `housing serve` is driven once with its
SQLite log and once, same model and load, with a PostgreSQL log (``--pg-url URL``, or a
throwaway cluster started here with initdb/pg_ctl when they are installed; as the
``postgres`` user when run as root), and the ratio of their requests/s is printed (target:
PostgreSQL >= 90% of SQLite). ``--only housing|postgres|mlflow`` runs one of them.

``--only floor`` drives the ceiling, `housing serve`, and `housing serve` twice more through
``floor_app.py``: with the model answering 0 instead of predicting, then also without the
request log and the metrics. What the service's own request handling costs, whatever its
model: how close to the ceiling any model could bring it.

Prints requests/s, p50 and p99 latency, errors and the ratios, plus the machine's load
average (compare figures of the same run only: the machine is shared), and last one line
``bench-serve: key=value ...`` for scripts (``na`` for what did not run; `mlflow models
serve` is skipped, and says why, when it cannot run here). ``--json`` prints it all as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from housing_mlops.serving.schemas import EXAMPLE_HOUSE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The same single-row body the OpenAPI docs show (a real block group from the data set).
ROW = EXAMPLE_HOUSE
# What ``--only floor`` switches off in `housing serve` (``floor_app.py``), and the row names.
FLOORS = {
    "model": "housing serve, model off",
    "bare": "housing serve, model, log and metrics off",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ the model
def _real_archive() -> Path | None:
    value = os.environ.get("HOUSING_DATA_ARCHIVE")
    for path in [Path(value)] if value else []:
        if path.is_file():
            return path
    shared = ROOT.parent / "shared" / "data" / "cal_housing.tgz"
    return shared if shared.is_file() else None


def has_champion(settings: Any) -> bool:
    from housing_mlops import registry
    from housing_mlops.errors import ModelError

    try:
        return registry.get_alias_version(settings, registry.CHAMPION) is not None
    except ModelError:
        return False


def make_temp_store(base_config: Path, tmp: Path, candidate_name: str | None = None) -> Path:
    """A config whose MLflow store (in ``tmp``) has a hist_gb champion; returns its path."""
    import yaml

    from housing_mlops import registry
    from housing_mlops.config import load_config
    from housing_mlops.drift import build_profile
    from housing_mlops.features import FEATURES, TARGET
    from housing_mlops.models import build_pipeline

    raw = yaml.safe_load(base_config.read_text())
    raw["mlflow"] = {
        **raw.get("mlflow", {}),
        "tracking_uri": f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
        "artifact_location": str(tmp / "mlruns" / "artifacts"),
    }
    raw.setdefault("serve", {})["request_log"] = str(tmp / "requests.db")
    # Keep the data paths of the base config (absolute) so the real split can be read.
    base = load_config(base_config)
    raw["paths"] = {k: str(v) for k, v in base.paths.model_dump().items()}
    config = tmp / "bench.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    settings = load_config(config)

    from housing_mlops import data, featurize
    from housing_mlops.errors import DataError

    try:
        X, y = featurize.load_split(settings, "train")
        source = "processed train split"
    except DataError:
        X = None
    archive = _real_archive()
    if X is None and archive is not None:
        # No processed data in the config's folders: build it in the temp folder from the
        # real archive (offline, a few seconds).
        raw["paths"] = {
            "raw_dir": str(tmp / "data" / "raw"),
            "processed_dir": str(tmp / "data" / "processed"),
            "reports_dir": str(tmp / "reports"),
        }
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        settings = load_config(config)
        log(f"bench: fetch + featurize from {archive} into {tmp}")
        data.fetch(settings, source=str(archive))
        featurize.featurize(settings)
        X, y = featurize.load_split(settings, "train")
        source = "real train split"
    if X is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic import make_frame  # type: ignore[import-not-found]

        frame = make_frame(16_512, seed=0)
        X, y = frame[FEATURES], frame[TARGET]
        source = "synthetic rows (run `housing featurize` for the real split)"
    if candidate_name:
        matches = [c for c in settings.train.candidates if c.name == candidate_name]
        if not matches:
            names = ", ".join(c.name for c in settings.train.candidates)
            raise SystemExit(f"bench: no candidate '{candidate_name}' in the config ({names})")
        candidate = matches[0]
    else:
        candidate = next(
            (c for c in settings.train.candidates if c.estimator == "hist_gradient_boosting"),
            settings.train.candidates[0],
        )
    log(f"bench: fitting '{candidate.name}' on {len(X)} {source} ...")
    pipeline = build_pipeline(candidate, settings.features, settings.train.seed).fit(X, y)
    pred = pipeline.predict(X)
    profile = build_profile(
        {**{c: X[c].to_numpy() for c in FEATURES}, "prediction": pred},
        sample_size=settings.features.profile_sample_size,
    )
    frame = X.assign(**{TARGET: y})
    ref = registry.log_candidate(
        settings,
        run_name=f"bench-{candidate.name}",
        model=pipeline,
        X_train=X,
        params=dict(candidate.params),
        metrics={},
        run_tags={"candidate": candidate.name, "purpose": "bench-serve"},
        version_tags={"candidate": candidate.name},
        train_frame=frame,
        train_source=tmp / "train.parquet",
        train_hash="0" * 64,
        profile=profile,
    )
    registry.set_alias(settings, registry.CHAMPION, ref.version)
    log(f"bench: registered version {ref.version} as champion in {tmp}")
    return config


# -------------------------------------------------------------------------- servers
def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive_measured(
    pid: int, url: str, body: str, args: argparse.Namespace, tool: str, tmp: Path
) -> dict[str, Any]:
    """``drive`` plus the server's CPU per answered request: steadier than requests/s on a
    shared machine (what the others take from it changes the rate, not the cost)."""
    before = cpu_seconds(pid)
    result = drive(url, body, args.duration, args.connections, tool, tmp)
    used = cpu_seconds(pid) - before
    result["cpu_us_per_request"] = used / result["requests"] * 1e6 if result["requests"] else None
    return result


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# ---------------------------------------------------------------------- load driving
WRK_LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: str, seconds: float, connections: int, tmp: Path) -> dict[str, Any]:
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=body))
    cmd = [
        "wrk",
        "-t1",  # one load thread, as the README's figures were measured
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {
        p: _ms(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return {
        "tool": "wrk",
        "rps": rps,
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "requests": total,
        "errors": errors,
    }


async def _python_load(url: str, body: bytes, seconds: float, connections: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1e3)
                errors += 0 if ok else 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "tool": "python-httpx",
        "rps": len(latencies) / elapsed,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "requests": len(latencies),
        "errors": errors,
        "mean_ms": statistics.fmean(latencies) if latencies else None,
    }


def run_python_loadgen(url: str, body: str, seconds: float, connections: int) -> dict[str, Any]:
    """The Python generator in its own process (so it does not share the server's GIL)."""
    cmd = [
        sys.executable,
        __file__,
        "--_loadgen",
        json.dumps({"url": url, "body": body, "seconds": seconds, "connections": connections}),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def drive(
    url: str, body: str, seconds: float, connections: int, tool: str, tmp: Path
) -> dict[str, Any]:
    if tool == "wrk":
        return run_wrk(url, body, seconds, connections, tmp)
    return run_python_loadgen(url, body, seconds, connections)


# ---------------------------------------------------------------------------- main
def bench_housing(
    config: Path,
    args: argparse.Namespace,
    tool: str,
    tmp: Path,
    pg_url: str | None = None,
    floor: str | None = None,
) -> dict[str, Any]:
    """`housing serve` with a SQLite log in ``tmp``, or with ``pg_url`` as its log; with
    ``floor`` ("model" or "bare"), through ``floor_app.py``: without its model, or without
    its model, request log and metrics."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    backend = "PostgreSQL" if pg_url else "SQLite"
    what = {None: "", "model": ", model off", "bare": ", model, log and metrics off"}[floor]
    log(f"bench: starting housing serve on {base} ({backend} request log{what})")
    log_file = tmp / f"housing-serve-{backend.lower()}{'-' + floor if floor else ''}.log"
    # A request log of the benchmark's own: the config's log (the user's real traffic, which
    # drift and the report read) must not get a quarter of a million copies of one house.
    db = tmp / "requests.db"
    env = {**os.environ, "HOUSING_REQUEST_LOG": pg_url or str(db)}
    env["HOUSING_SPOOL_DIR"] = str(tmp / "spool")
    command = ["--config", str(config), "serve", "--port", str(port)]
    if floor:
        launcher = [sys.executable, str(Path(__file__).with_name("floor_app.py"))]
        command = [*launcher, *(["--bare"] if floor == "bare" else []), "--", *command]
    else:
        command = [str(BIN / "housing"), *command]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("wb"),
        env=env,
    )

    def count() -> int:
        return _count_pg_rows(pg_url) if pg_url else _count_rows(db)

    before = count()
    try:
        try:
            wait_http(f"{base}/ready", proc)
        except RuntimeError:
            log(log_file.read_text(errors="replace")[-3000:])
            raise
        trees = wait_trees(base)
        body = json.dumps(ROW)
        drive(f"{base}/predict", body, args.warmup, args.connections, tool, tmp)
        log(f"bench: driving housing serve ({backend} log{what}, {trees} trees) with {tool}")
        before_batches = _microbatch(base)
        result = drive_measured(proc.pid, f"{base}/predict", body, args, tool, tmp)
        after_batches = _microbatch(base)
        batches = after_batches[0] - before_batches[0]
        # Rows per predict call while measured: what the micro-batcher made of the load.
        result["rows_per_batch"] = (
            (after_batches[1] - before_batches[1]) / batches if batches else None
        )
    finally:
        code = stop(proc)
    result["exit_code"] = code
    result["request_log_rows_added"] = count() - before
    result["trees"] = trees
    return result


def _microbatch(base: str) -> tuple[int, int]:
    """(batches, rows) the service's micro-batcher has predicted so far (``/model/info``)."""
    import httpx

    info = httpx.get(f"{base}/model/info", timeout=10).json().get("microbatch") or {}
    return int(info.get("batches", 0)), int(info.get("rows", 0))


def wait_trees(base: str, timeout: float = 300) -> str:
    """The trees the service evaluates once a background build (``serve.compiled_trees:
    auto``, the first start with a model) has finished: the steady state is measured."""
    import httpx

    deadline = time.time() + timeout
    while True:
        info = httpx.get(f"{base}/model/info", timeout=10).json()
        if not info.get("trees_building") or time.time() > deadline:
            return str(info.get("trees", "?"))
        time.sleep(1.0)


def _count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("select count(*) from requests").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def _count_pg_rows(url: str) -> int:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("select count(*) from requests").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


class Cluster:
    """A throwaway PostgreSQL cluster (``throwaway_postgres``): its URL, stop and start."""

    def __init__(self, pg_ctl: str, data: Path, options: str, as_user: list[str]) -> None:
        self.pg_ctl, self.data, self.options, self.as_user = pg_ctl, data, options, as_user
        self.url = ""

    def run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            log(f"bench: {args[0]} failed: {done.stdout}{done.stderr}")
            done.check_returncode()

    def start(self) -> None:
        log_file = str(self.data.parent / "log")
        self.run(
            self.pg_ctl, "-D", str(self.data), "-l", log_file, "-o", self.options, "-w", "start"
        )

    def stop(self) -> None:
        self.run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def throwaway_postgres(tmp: Path) -> Iterator[Cluster | None]:
    """A PostgreSQL cluster in ``tmp`` on a free loopback port (initdb/pg_ctl; as the
    ``postgres`` user when run as root); None without the tools."""
    import glob
    import pwd

    def tool(name: str) -> str | None:
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        return found[-1] if found else shutil.which(name)

    initdb, pg_ctl = tool("initdb"), tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        log("bench: no initdb/pg_ctl (apt-get install postgresql): PostgreSQL runs skipped")
        yield None
        return
    # Its own temp folder: the postgres user cannot enter root's 0700 ``tmp``.
    base = Path(tempfile.mkdtemp(prefix="housing-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    # Durable commits (fsync on, the default): the log's cost as a deployment pays it.
    cluster = Cluster(
        pg_ctl, base / "data", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", as_user
    )
    cluster.url = f"postgresql://housing@127.0.0.1:{port}/postgres"
    try:
        cluster.run(initdb, "-D", str(cluster.data), "-U", "housing", "--auth=trust", "--no-sync")
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _metric(base: str, name: str) -> float | None:
    import httpx

    try:
        text = httpx.get(f"{base}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


def bench_outage(
    config: Path, args: argparse.Namespace, tool: str, tmp: Path, cluster: Cluster
) -> dict[str, Any]:
    """`housing serve` on the PostgreSQL log, driven for ``--duration`` seconds while the
    database is stopped for ``--outage`` seconds in the middle; then, once the spool is
    replayed, the rows in the log against the 2xx answers (warm-up included)."""
    import threading

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spool = tmp / "outage-spool"
    url = cluster.url.rsplit("/", 1)[0] + "/outage"
    import psycopg

    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE outage")
    env = {**os.environ, "HOUSING_REQUEST_LOG": url, "HOUSING_SPOOL_DIR": str(spool)}
    log_file = tmp / "housing-serve-outage.log"
    proc = subprocess.Popen(
        [str(BIN / "housing"), "--config", str(config), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("wb"),
        env=env,
    )
    lead = max(1.0, (args.duration - args.outage) / 2)
    events: dict[str, float] = {}

    def outage() -> None:
        time.sleep(lead)
        events["down"] = time.monotonic()
        cluster.stop()
        time.sleep(args.outage)
        events["spooled_before_restart"] = _metric(base, "housing_request_log_spooled_rows") or 0
        cluster.start()
        events["up"] = time.monotonic()

    try:
        wait_http(f"{base}/ready", proc)
        body = json.dumps(ROW)
        warm = drive(f"{base}/predict", body, args.warmup, args.connections, tool, tmp)
        log(
            f"bench: driving housing serve (PostgreSQL log) for {args.duration:.0f} s, "
            f"the database down for {args.outage:.0f} s of it"
        )
        killer = threading.Thread(target=outage)
        killer.start()
        result = drive(f"{base}/predict", body, args.duration, args.connections, tool, tmp)
        killer.join()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (
                _metric(base, "housing_request_log_spooled_rows") == 0
                and _metric(base, "housing_request_log_degraded") == 0
            ):
                break
            time.sleep(0.5)
        replayed_s = time.monotonic() - events["up"]
        result["write_failures"] = _metric(base, "housing_request_log_write_failures_total")
        result["replayed_rows"] = _metric(base, "housing_request_log_replayed_rows_total")
    finally:
        code = stop(proc)
    answered = warm["requests"] - warm["errors"] + result["requests"] - result["errors"]
    logged = _count_pg_rows(url)
    result.update(
        exit_code=code,
        outage_s=args.outage,
        answered_2xx=answered,
        logged_rows=logged,
        # wrk does not count the requests in flight when it stops (up to one per
        # connection and run): those are answered and logged, so logged may exceed it.
        lost_rows=max(0, answered - logged),
        logged_beyond_counted=max(0, logged - answered),
        peak_spooled_rows=events.get("spooled_before_restart"),
        replay_done_s=round(replayed_s, 1),
    )
    return result


def bench_ceiling(args: argparse.Namespace, tool: str, tmp: Path) -> dict[str, Any]:
    """The constant-answer raw ASGI app (``ceiling_app.py``) on the same uvicorn."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log(
        f"bench: starting the ceiling app (constant answer, uvicorn + httptools + uvloop) on {base}"
    )
    log_file = tmp / "ceiling.log"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ceiling_app.py")), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("wb"),
    )
    try:
        try:
            wait_http(f"{base}/", proc, timeout=60)
        except RuntimeError:
            log(log_file.read_text(errors="replace")[-3000:])
            raise
        body = json.dumps(ROW)
        drive(f"{base}/predict", body, args.warmup, args.connections, tool, tmp)
        log(f"bench: driving the ceiling app for {args.duration:.0f} s with {tool}")
        return drive_measured(proc.pid, f"{base}/predict", body, args, tool, tmp)
    finally:
        stop(proc)


def bench_mlflow(config: Path, args: argparse.Namespace, tool: str, tmp: Path) -> dict[str, Any]:
    from housing_mlops import registry
    from housing_mlops.config import load_config

    settings = load_config(config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    uri = f"models:/{settings.mlflow.registered_model_name}@champion"
    log(f"bench: starting mlflow models serve -m {uri} on {base}")
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.tracking_uri(settings),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_file = tmp / "mlflow-serve.log"
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("wb"),
        env=env,
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"{base}/ping", proc)
        except RuntimeError:
            log(log_file.read_text(errors="replace")[-3000:])
            raise
        body = json.dumps({"dataframe_records": [ROW]})
        drive(f"{base}/invocations", body, args.warmup, args.connections, tool, tmp)
        log(f"bench: driving mlflow models serve for {args.duration:.0f} s with {tool}")
        return drive(f"{base}/invocations", body, args.duration, args.connections, tool, tmp)
    finally:
        # mlflow serve spawns uvicorn as a child: stop the whole session it leads.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per server")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--temp-store", action="store_true", help="never use the config's store")
    parser.add_argument(
        "--candidate",
        default=None,
        help="candidate fitted for the throwaway store (default: the hist_gradient_boosting one)",
    )
    parser.add_argument(
        "--only",
        choices=["ceiling", "housing", "postgres", "mlflow", "logs", "floor"],
        default=None,
        help="one server (housing: with the ceiling beside it; logs: housing serve with each "
        "request log, side by side; floor: the ceiling, housing serve, and housing serve with "
        "its model answering 0 and then also without request log and metrics "
        "(benchmarks/floor_app.py): what the service costs without them)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=0.0,
        help="also drive the PostgreSQL-log service while its (throwaway) database is down "
        "for this many seconds in the middle of --duration, and count the rows lost",
    )
    parser.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL URL for the request-log comparison (default: a throwaway cluster)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--_loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._loadgen:
        spec = json.loads(args._loadgen)
        result = asyncio.run(
            _python_load(spec["url"], spec["body"].encode(), spec["seconds"], spec["connections"])
        )
        print(json.dumps(result))
        return 0

    from housing_mlops.config import load_config

    tool = args.loadgen
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    tmp = Path(tempfile.mkdtemp(prefix="housing-bench-"))
    load_before = os.getloadavg()
    try:
        config = args.config.resolve()
        settings = load_config(config)
        if args.only == "ceiling":
            store = "none (the ceiling serves no model)"
        elif args.temp_store or not has_champion(settings):
            config = make_temp_store(config, tmp, args.candidate)
            store = f"temporary store {tmp}"
        else:
            store = f"the config's store ({settings.mlflow.tracking_uri})"
        results: dict[str, Any] = {}
        outage_result: dict[str, Any] | None = None
        skipped: dict[str, str] = {}
        # The ceiling right before `housing serve`: the two figures the ratio compares are
        # measured as close together as the machine allows.
        if args.only in (None, "ceiling", "housing", "floor"):
            results["ceiling (constant ASGI)"] = bench_ceiling(args, tool, tmp)
        if args.only in (None, "housing", "logs", "floor"):
            results["housing serve"] = bench_housing(config, args, tool, tmp)
        if args.only == "floor":
            for floor, name in FLOORS.items():
                results[name] = bench_housing(config, args, tool, tmp, floor=floor)
        if args.only in (None, "postgres", "logs") or args.outage:
            with contextlib.ExitStack() as stack:
                cluster = None if args.pg_url else stack.enter_context(throwaway_postgres(tmp))
                url = args.pg_url or (cluster.url if cluster else None)
                if url and args.only in (None, "postgres", "logs"):
                    results["housing serve (PG log)"] = bench_housing(config, args, tool, tmp, url)
                if args.outage and cluster:
                    outage_result = bench_outage(config, args, tool, tmp, cluster)
        if args.only in (None, "mlflow"):
            try:
                results["mlflow models serve"] = bench_mlflow(config, args, tool, tmp)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                # No mlflow here (or it cannot serve this model): the other figures stand.
                skipped["mlflow models serve"] = str(exc)
                log(f"bench: mlflow models serve skipped: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    summary: dict[str, Any] = {
        "model_store": store,
        "load_generator": tool,
        "connections": args.connections,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "results": results,
        "outage": outage_result,
    }
    ceiling = results.get("ceiling (constant ASGI)")
    ours = results.get("housing serve")
    mlflow = results.get("mlflow models serve")
    if ours and mlflow:
        summary["ratio_rps"] = ours["rps"] / mlflow["rps"] if mlflow["rps"] else None
    if ours and ceiling:
        summary["ratio_ceiling_rps"] = ours["rps"] / ceiling["rps"] if ceiling["rps"] else None
    for name in FLOORS.values():
        if name in results and ceiling and ceiling["rps"]:
            summary.setdefault("ratio_floor_ceiling_rps", {})[name] = (
                results[name]["rps"] / ceiling["rps"]
            )
    if ours and "housing serve (PG log)" in results:
        h, p = ours["rps"], results["housing serve (PG log)"]["rps"]
        summary["ratio_pg_sqlite_rps"] = p / h if h else None
    summary["skipped"] = skipped
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"bench-serve: {args.connections} connections, {args.duration:.0f} s each, {tool}")
    print(f"model: champion of {store}")
    width = max([26, *(len(name) + 2 for name in results)])
    print(
        f"{'server':<{width}}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
        f"{'CPU us/req':>12}"
    )
    for name, r in results.items():
        cpu = r.get("cpu_us_per_request")
        print(
            f"{name:<{width}}{r['rps']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['errors']:>8}"
            + (f"{cpu:>12.0f}" if cpu is not None else f"{'-':>12}")
        )
    for name, why in skipped.items():
        print(f"{name:<{width}}{'skipped':>10}  ({why[:120]})")
    if summary.get("ratio_ceiling_rps"):
        print(
            f"ratio (housing / ceiling requests/s): {summary['ratio_ceiling_rps']:.0%} "
            f"(target >= 50% at p99 <= 10 ms; housing p99 {ours['p99_ms']:.2f} ms)"  # type: ignore[index]
        )
    for name, share in summary.get("ratio_floor_ceiling_rps", {}).items():
        print(
            f"ratio ({name} / ceiling requests/s): {share:.0%} "
            f"(p99 {results[name]['p99_ms']:.2f} ms)"
        )
    if summary.get("ratio_rps"):
        print(f"ratio (housing / mlflow requests/s): {summary['ratio_rps']:.1f}x (target >= 40x)")
    if summary.get("ratio_pg_sqlite_rps"):
        print(
            "ratio (housing with the PostgreSQL log / with the SQLite log, requests/s): "
            f"{summary['ratio_pg_sqlite_rps']:.0%} (target >= 90%)"
        )
    for name, backend in (("housing serve", "SQLite"), ("housing serve (PG log)", "PostgreSQL")):
        if name in results:
            added = results[name]["request_log_rows_added"]
            per_batch = results[name].get("rows_per_batch")
            batches = f"; {per_batch:.1f} rows per micro-batch" if per_batch else ""
            print(f"{backend} request log: {added} rows added (logging on){batches}")
    if outage_result:
        o = outage_result
        print(
            f"outage: PostgreSQL down {o['outage_s']:.0f} s of a {args.duration:.0f} s run at "
            f"{o['rps']:.0f} req/s: {o['errors']} failed requests, {o['answered_2xx']} answered "
            f"(warm-up included), {o['logged_rows']} rows in the log once replayed: "
            f"{o['lost_rows']} lost ({o['logged_beyond_counted']} more logged than wrk counted: "
            f"its requests in flight at the end); {o['peak_spooled_rows']:.0f} rows spooled at "
            f"the end of the outage, replay done {o['replay_done_s']} s after restart"
        )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print(summary_line(summary))
    return 0


def summary_line(summary: dict[str, Any]) -> str:
    """The last line: ``bench-serve: key=value ...`` for scripts (``na``: not measured)."""
    results = summary["results"]

    def fig(name: str, key: str, digits: int = 1) -> str:
        value = (results.get(name) or {}).get(key)
        return "na" if value is None else f"{value:.{digits}f}"

    def ratio(key: str) -> str:
        value = summary.get(key)
        return "na" if value is None else f"{value:.3f}"

    pairs = {
        "ceiling_rps": fig("ceiling (constant ASGI)", "rps"),
        "ceiling_p99_ms": fig("ceiling (constant ASGI)", "p99_ms", 2),
        "ceiling_cpu_us": fig("ceiling (constant ASGI)", "cpu_us_per_request", 0),
        "housing_rps": fig("housing serve", "rps"),
        "housing_p99_ms": fig("housing serve", "p99_ms", 2),
        "housing_cpu_us": fig("housing serve", "cpu_us_per_request", 0),
        "housing_trees": str((results.get("housing serve") or {}).get("trees", "na")),
        "housing_rows_per_batch": fig("housing serve", "rows_per_batch"),
        "mlflow_rps": fig("mlflow models serve", "rps"),
        "housing_over_ceiling": ratio("ratio_ceiling_rps"),
        "housing_over_mlflow": ratio("ratio_rps"),
        "pg_log_rps": fig("housing serve (PG log)", "rps"),
        "no_model_rps": fig(FLOORS["model"], "rps"),
        "no_model_cpu_us": fig(FLOORS["model"], "cpu_us_per_request", 0),
        "bare_rps": fig(FLOORS["bare"], "rps"),
        "bare_cpu_us": fig(FLOORS["bare"], "cpu_us_per_request", 0),
        "pg_over_sqlite": ratio("ratio_pg_sqlite_rps"),
        "connections": str(summary["connections"]),
        "loadgen": summary["load_generator"],
        "cpus": str(summary["cpus"]),
        "load1_before": f"{summary['loadavg_before'][0]:.2f}",
        "load1_after": f"{summary['loadavg_after'][0]:.2f}",
    }
    return "bench-serve: " + " ".join(f"{k}={v}" for k, v in pairs.items())


if __name__ == "__main__":
    sys.exit(main())
