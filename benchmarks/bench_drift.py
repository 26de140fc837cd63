"""Benchmark: `housing drift --since 7d` over 1,000,000 logged requests (SQLite) or
10,000,000 (PostgreSQL).

Writes N answered requests (default 1,000,000, spread over the last 6 days) into a
temporary request log, then runs the real CLI as a subprocess and prints its wall time and
peak RSS (from the child's rusage). Target on a 2-core machine: <= 5 s and <= 500 MB.

``--backend postgresql`` (``make bench-drift-pg``): the log is a PostgreSQL database, by
default a throwaway cluster started here with initdb/pg_ctl (as the ``postgres`` user when
run as root; ``--pg-url`` uses an existing server's empty database instead). The rows go
in with COPY (``--rows``, default then 10,000,000), followed by VACUUM ANALYZE (what
autovacuum does after a bulk insert). Target: <= 10 s and <= 300 MB client RSS; the
server's own memory and CPU are not the client's and are not counted.

Two modes:

* default, self-contained: the reference is a profile JSON built here from synthetic
  California-like data (``--reference``), so no trained model is needed;
* ``--project-config configs/default.yaml`` (after ``make demo``): the rows are logged as
  the registry's champion version and the reference comes from MLflow, exactly as in
  production. The first run fetches the profile from MLflow ("cold"), later runs read it
  from the cache in the log ("warm").

    python benchmarks/bench_drift.py [--rows 1000000] [--runs 3] [--project-config PATH]
    python benchmarks/bench_drift.py --backend postgresql [--rows 10000000] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from housing_mlops import columns, drift, store  # noqa: E402

FEATURES = list(columns.FEATURES)


def synthetic_columns(n: int, seed: int) -> dict[str, np.ndarray]:
    """California-like features and a prediction that depends on them."""
    rng = np.random.default_rng(seed)
    med_inc = rng.lognormal(1.2, 0.45, n).clip(0.5, 15.0)
    rooms = rng.normal(5.3, 1.0, n).clip(1.5, 12)
    lat = rng.uniform(32.6, 41.9, n)
    cols = {
        "MedInc": med_inc,
        "HouseAge": rng.integers(1, 53, n).astype(float),
        "AveRooms": rooms,
        "AveBedrms": (rooms * rng.uniform(0.15, 0.25, n)).clip(0.5, None),
        "Population": rng.integers(50, 4000, n).astype(float),
        "AveOccup": rng.normal(2.9, 0.6, n).clip(1.0, 8.0),
        "Latitude": lat,
        "Longitude": rng.uniform(-124.3, -114.4, n),
    }
    cols["prediction"] = (0.45 * med_inc - 0.05 * (lat - 36)).clip(0.15, 5.0)
    return cols


def write_log(path: Path, n: int, model_name: str, version: str, seed: int = 1) -> float:
    """Bulk-insert n answered requests over the last 6 days; returns seconds taken.

    100,000 distinct synthetic rows go in through executemany; the rest are copies made
    inside SQLite (INSERT ... SELECT, each copy a few seconds earlier), which is what makes
    a million rows take seconds rather than a minute. Runs in a child process (see main).
    """
    start = time.perf_counter()
    store.create_log(path)  # the real schema and indexes
    base = min(n, 100_000)
    cols = synthetic_columns(base, seed)
    now = time.time()
    rng = np.random.default_rng(seed)
    ts = np.sort(now - rng.uniform(600, 6 * 86400, base))
    latency = rng.gamma(2.0, 1.5, base)
    names = [*FEATURES, "prediction", "latency_ms"]
    values = np.column_stack([ts, *(cols[c] for c in [*FEATURES, "prediction"]), latency])
    columns = "ts, request_id, row_index, model_name, model_version, status, " + ", ".join(names)
    placeholders = ", ".join("?" * len(names))
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    with con:
        con.executemany(
            f"INSERT INTO requests ({columns}) "  # noqa: S608 - fixed names, values as parameters
            f"VALUES (?, 'bench', 0, '{model_name}', '{version}', 200, {placeholders})",
            values.tolist(),
        )
        copied = base
        k = 1
        while copied < n:
            take = min(base, n - copied)
            con.execute(
                f"INSERT INTO requests ({columns}) SELECT ts - ?, request_id, row_index, "  # noqa: S608
                f"model_name, model_version, status, {', '.join(names)} FROM requests "
                "WHERE id <= ?",
                [k * 5.0, take],
            )
            copied += take
            k += 1
    con.close()
    return time.perf_counter() - start


def write_pg_log(url: str, n: int, model_name: str, version: str, seed: int = 1) -> float:
    """COPY n answered requests over the last 6 days into the PostgreSQL log at ``url``;
    returns seconds taken (VACUUM ANALYZE included).

    100,000 distinct synthetic rows are formatted once; every further block of 100,000
    reuses their values with its own timestamps and request ids, streamed through one
    COPY ... FROM STDIN, in arrival order. Runs in a child process (see main).
    """
    import psycopg

    start = time.perf_counter()
    store.create_log(url)  # the real schema and indexes (and the sampling index)
    base = min(n, 100_000)
    cols = synthetic_columns(base, seed)
    rng = np.random.default_rng(seed)
    latency = rng.gamma(2.0, 1.5, base)
    rest = [
        "\t".join(repr(float(v)) for v in row)
        for row in np.column_stack([*(cols[c] for c in [*FEATURES, "prediction"]), latency])
    ]
    names = ["ts", "request_id", "row_index", "model_name", "model_version"]
    names += [*FEATURES, "prediction", "latency_ms", "status", "instance"]
    copy_sql = f"COPY requests ({', '.join(chr(34) + c + chr(34) for c in names)}) FROM STDIN"
    first = time.time() - 6 * 86400
    step = (6 * 86400 - 600) / n
    with psycopg.connect(url, autocommit=True) as conn:
        # Bulk load as a restore would: indexes dropped, then built once after the COPY
        # (by create_log, which makes whatever is missing).
        indexes = conn.execute(
            b"SELECT indexname FROM pg_indexes WHERE tablename = 'requests' "
            b"AND indexname LIKE 'idx_%'"
        ).fetchall()
        for (index,) in indexes:
            conn.execute(f'DROP INDEX "{index}"'.encode())
        with conn.cursor() as cur, cur.copy(copy_sql.encode()) as copy:
            done = 0
            while done < n:
                take = min(base, n - done)
                # In arrival order, as a service writes them.
                ts = (first + step * np.arange(done, done + take)).tolist()
                block = "".join(
                    f"{ts[i]!r}\tb{done + i}\t0\t{model_name}\t{version}\t{rest[i]}\t200\t"
                    f"api-{i % 3}\n"
                    for i in range(take)
                )
                copy.write(block.encode())
                done += take
        # create_log leaves a database at the current version alone: forget the version
        # so that it builds the missing indexes.
        conn.execute(b"DELETE FROM schema_version")
        store.create_log(url)
        conn.execute(b"VACUUM ANALYZE requests")
    return time.perf_counter() - start


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir on a free loopback port; yields a database URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        raise SystemExit("initdb not found: apt-get install postgresql, or pass --pg-url")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    base = Path(tempfile.mkdtemp(prefix="bench-pg-", dir=os.environ.get("BENCH_PG_DIR")))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = base / "data"

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=600)

    try:
        pg(initdb, "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync")
        # Server settings a small production box would have; fsync off only because the
        # data is thrown away (it speeds up loading, not reading).
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c shared_buffers=512MB -c maintenance_work_mem=512MB -c max_wal_size=4GB"
        )
        pg(pg_ctl, "-D", str(data), "-l", str(base / "pg.log"), "-o", options, "-w", "start")
        try:
            yield f"postgresql://bench@127.0.0.1:{port}/postgres"
        finally:
            pg(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_cli(args: list[str]) -> tuple[float, float, float, int]:
    """Run `housing ARGS` in a fresh process: (wall s, CPU s, peak RSS MB, exit code)."""
    exe = Path(sys.executable).parent / "housing"
    start = time.perf_counter()
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024.0, proc.returncode  # ru_maxrss: KiB on Linux


def log_size_mb(log: str | Path) -> float:
    if isinstance(log, Path):
        return log.stat().st_size / 1e6
    import psycopg

    with psycopg.connect(log) as conn:
        row = conn.execute(b"SELECT pg_total_relation_size('requests')").fetchone()
    return float(row[0] if row else 0) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rows", type=int, default=None, help="1,000,000 (SQLite), 10M (PG)")
    parser.add_argument("--pg-url", default=None, help="an empty PostgreSQL database to use")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--project-config", type=Path, default=None)
    parser.add_argument("--write-log", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-name", default="california-housing", help=argparse.SUPPRESS)
    parser.add_argument("--model-version", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows is None:
        args.rows = 10_000_000 if args.backend == "postgresql" else 1_000_000
    if args.write_log:
        if store.is_log_url(args.write_log):
            write_pg_log(args.write_log, args.rows, args.model_name, args.model_version)
        else:
            write_log(Path(args.write_log), args.rows, args.model_name, args.model_version)
        return 0

    import yaml

    from housing_mlops.config import load_config

    with contextlib.ExitStack() as stack:
        tmp_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-drift-")))
        log: str | Path = tmp_path / "requests.db"
        if args.backend == "postgresql":
            log = args.pg_url or stack.enter_context(throwaway_postgres())
        if args.project_config:
            settings = load_config(args.project_config)
            # In a child: importing MLflow here would inflate every later child's peak RSS
            # (a forked child starts out sharing, and counting, the parent's memory).
            name, version = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from housing_mlops import registry; "
                    "from housing_mlops.config import load_config; "
                    "r = registry.resolve(load_config(sys.argv[1])); print(r.name, r.version)",
                    str(args.project_config),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            extra = []
            mode = f"registry champion {name} v{version} (first run cold, then cached)"
        else:
            settings = load_config(ROOT / "configs" / "default.yaml")
            profile = drift.build_profile(synthetic_columns(20_000, seed=0), 5000)
            (tmp_path / "profile.json").write_text(json.dumps(profile))
            name, version = settings.mlflow.registered_model_name, "1"
            extra = ["--reference", str(tmp_path / "profile.json")]
            mode = "self-contained (--reference profile.json)"
        config = settings.model_dump(mode="json")
        config["serve"]["request_log"] = str(log)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

        # Written by a child process: a child forked from a parent holding the rows would
        # report the parent's memory as its own peak RSS.
        took = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--write-log",
                str(log),
                "--rows",
                str(args.rows),
                "--model-name",
                name,
                "--model-version",
                version,
            ],
            check=True,
        )
        took = time.perf_counter() - took
        size_mb = log_size_mb(log)
        print(f"mode: {mode}, backend: {args.backend} ({store.parse_log_location(log)})")
        print(f"wrote {args.rows:,} logged requests in {took:.1f} s ({size_mb:.0f} MB)")
        cli = ["--config", str(tmp_path / "config.yaml"), "drift", "--since", "7d", *extra]
        results = []
        for i in range(args.runs):
            wall, cpu, rss, code = run_cli(cli)
            results.append((wall, rss))
            print(
                f"run {i + 1}: housing drift --since 7d  wall {wall:.2f} s  cpu {cpu:.2f} s  "
                f"peak RSS {rss:.0f} MB  exit {code}"
            )
        if not results:
            return 0
        best = min(r[0] for r in results)
        peak = max(r[1] for r in results)
        wall_target, rss_target = (10, 300) if args.backend == "postgresql" else (5, 500)
        print(
            f"best wall {best:.2f} s (target <= {wall_target} s), peak RSS {peak:.0f} MB "
            f"(target <= {rss_target} MB)"
        )
        load = os.getloadavg()[0]
        print(f"load average while measuring: {load:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
