"""The request log: the only module that touches its SQLite database (through sqlite-utils).

Table ``requests`` (one row per answered or rejected prediction row):

=============  =======  ==========================================================
column         type     meaning
=============  =======  ==========================================================
id             INTEGER  primary key
ts             REAL     UTC time of the request, Unix epoch seconds (indexed)
request_id     TEXT     the id returned to the client (shared by a batch's rows)
row_index      INTEGER  position of the row in a batch (0 for a single object)
model_name     TEXT     registered model name
model_version  TEXT     registered model version that answered (NULL if rejected)
MedInc ...     REAL     the 8 raw input features (NULL when rejected)
prediction     REAL     prediction in $100k (NULL when rejected)
latency_ms     REAL     server-side latency of the whole request
status         INTEGER  HTTP status (200, 413, 415, 422, ...)
error          TEXT     validation error summary for rejected requests
=============  =======  ==========================================================

WAL mode; an index on ``ts`` (and on ``model_version, ts``) keeps window queries fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from housing_mlops.columns import FEATURES as FEATURE_COLUMNS
from housing_mlops.errors import DataError

REQUEST_COLUMNS: dict[str, type] = {
    "id": int,
    "ts": float,
    "request_id": str,
    "row_index": int,
    "model_name": str,
    "model_version": str,
    **{name: float for name in FEATURE_COLUMNS},
    "prediction": float,
    "latency_ms": float,
    "status": int,
    "error": str,
}


# ------------------------------------------------------- is the path a request log?
# Every way into the log (the service's writer, drift, the report, the /metrics collector)
# goes through these checks, so a path that holds something else (a CSV, a directory,
# random bytes) gives the same DataError everywhere instead of sqlite3's "file is not a
# database" as an unexpected error, or a directory read as "no log yet". The file is
# never written to: SQLite would otherwise leave -wal/-shm files beside it.
SQLITE_HEADER = b"SQLite format 3\x00"


def _not_a_log(path: Path, what: str) -> DataError:
    return DataError(
        f"the request log {path} {what}: move it away, or point serve.request_log "
        "(or HOUSING_REQUEST_LOG) at a SQLite file (it is created when missing)"
    )


def _existing_log(path: Path) -> bool:
    """True when ``path`` holds a SQLite file, False when nothing is there; else DataError.

    Only the 16-byte header is read; an empty file counts (SQLite makes it a database).
    """
    if not path.exists():
        return False
    if path.is_dir():
        raise _not_a_log(path, "is a directory, not a SQLite database")
    if not path.is_file():
        raise _not_a_log(path, "is not a regular file, so not a SQLite database")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DataError(f"cannot read the request log {path}: {exc.strerror or exc}") from None
    if head and head != SQLITE_HEADER:
        raise _not_a_log(path, "is not a SQLite database")
    return True


def _verified(conn: Any, path: Path, statements: tuple[str, ...]) -> Any:
    """Run the first statements on a new connection; a damaged database is a DataError.

    OperationalError (locked, unable to open, read-only) is left to the caller: it says
    nothing about what the file is.
    """
    import sqlite3

    try:
        for statement in statements:
            conn.execute(statement).fetchall()
    except sqlite3.OperationalError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:  # SQLITE_NOTADB, SQLITE_CORRUPT
        conn.close()
        raise _not_a_log(path, f"is not a usable SQLite database ({exc})") from None
    return conn


def check_request_log(path: Path | str) -> bool:
    """True when ``path`` is a readable request log, False when it does not exist.

    Raises DataError when something else is there (a text file, a directory, a damaged
    database). Cheap: the file header and the schema page; never creates or writes. A
    database that cannot be opened right now (locked, a WAL file in a read-only folder)
    passes: it is a request log, and the reader that needs it reports its own error.
    """
    import sqlite3

    try:
        conn = connect(path, readonly=True)
    except sqlite3.OperationalError:
        return True
    if conn is None:
        return False
    conn.close()
    return True


def open_db(path: Path | str) -> Any:
    """Open (creating if needed) the request log with the schema in place; WAL mode.

    Raises DataError when the path holds something that is not a SQLite database.
    """
    import sqlite_utils

    path = Path(path)
    _existing_log(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    _verified(db.conn, path, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"))
    ensure_schema(db)
    return db


def ensure_schema(db: Any) -> None:
    """Create the ``requests`` table and its indexes if they are missing."""
    table = db["requests"]
    if not table.exists():
        table.create(REQUEST_COLUMNS, pk="id", not_null={"ts", "request_id", "status"})
    table.create_index(["ts"], if_not_exists=True)
    table.create_index(["model_version", "ts"], if_not_exists=True)
    # Covering index for drift windows (answered rows per version in a time range).
    table.create_index(["status", "model_version", "ts"], if_not_exists=True)


def insert_requests(db: Any, rows: list[dict[str, Any]]) -> int:
    """Insert request rows in one transaction; returns how many were written."""
    if not rows:
        return 0
    with db.conn:
        db["requests"].insert_all(rows, batch_size=1000)
    return len(rows)


# ----------------------------------------------------------------- background writer
# Column order of the tuples handed to ``RequestLogWriter.submit`` (every column but id).
LOG_COLUMNS: tuple[str, ...] = tuple(name for name in REQUEST_COLUMNS if name != "id")

_log = logging.getLogger(__name__)


class RequestLogWriter:
    """Writes request-log rows off the request path: a bounded queue drained by a thread.

    ``submit`` only appends tuples (in ``LOG_COLUMNS`` order) to an in-memory deque, so it
    costs the request a few hundred nanoseconds. A daemon thread inserts everything queued
    in one transaction (sqlite-utils ``insert_all``) at least every ``flush_interval_s``,
    sooner once ``batch_rows`` are waiting, and once more in ``close`` (the server's
    shutdown), so a graceful stop loses nothing. When the queue is full new rows are
    dropped and counted, never blocking a request. A crash (SIGKILL) loses at most the
    rows of the last interval; WAL keeps the database itself intact.

    ``on_flush(written, dropped, depth, last_flush_ts)`` is called from the writer thread
    after every cycle with the rows written and dropped since the previous call (used for
    Prometheus metrics without tying this module to prometheus_client).
    """

    def __init__(
        self,
        path: Path | str,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
        batch_rows: int = 5_000,
        on_flush: Callable[[int, int, int, float], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.flush_interval_s = float(flush_interval_s)
        self.max_queue = int(max_queue)
        self.batch_rows = max(1, int(batch_rows))
        self.on_flush = on_flush
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self.submitted = 0
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self.last_flush_ts = 0.0
        self._reported_written = 0
        self._reported_dropped = 0

    @property
    def depth(self) -> int:
        """Rows queued and not yet written."""
        return len(self._queue)

    def start(self) -> None:
        """Create the database and schema now (so errors surface at startup), then the thread."""
        if self._thread is not None:
            return
        open_db(self.path).close()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[tuple[Any, ...]]) -> int:
        """Queue rows (tuples in ``LOG_COLUMNS`` order); returns how many were accepted."""
        free = self.max_queue - len(self._queue)
        accepted = rows if len(rows) <= free else rows[: max(free, 0)]
        self._queue.extend(accepted)
        self.submitted += len(rows)
        if len(accepted) < len(rows):
            self.dropped += len(rows) - len(accepted)
        if len(self._queue) >= self.batch_rows:
            self._wake.set()
        return len(accepted)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row submitted so far is written (or dropped); True on success."""
        target = self.submitted
        self._wake.set()
        with self._done:
            return self._done.wait_for(
                lambda: self.written + self.dropped >= target or self._thread is None,
                timeout=timeout,
            )

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after a final flush of everything queued."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        with self._done:
            self._done.notify_all()

    def _run(self) -> None:
        db = open_db(self.path)
        try:
            while not self._stop.is_set():
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                self._drain(db)
            self._drain(db)
        finally:
            db.close()

    def _drain(self, db: Any) -> None:
        n = len(self._queue)
        if n:
            # popleft n times: rows appended meanwhile stay for the next cycle.
            batch = [self._queue.popleft() for _ in range(n)]
            try:
                with db.conn:
                    db["requests"].insert_all([LOG_COLUMNS, *batch], batch_size=1000)
            except Exception:  # noqa: BLE001 - a log failure must never stop serving
                self.failed_flushes += 1
                self.dropped += n
                _log.exception("request log: could not write %d row(s) to %s", n, self.path)
            else:
                self.written += n
                self.last_flush_ts = time.time()
        elif not self.last_flush_ts:
            self.last_flush_ts = time.time()
        with self._done:
            self._done.notify_all()
        if self.on_flush is not None:
            written, dropped = self.written, self.dropped
            try:
                self.on_flush(
                    written - self._reported_written,
                    dropped - self._reported_dropped,
                    len(self._queue),
                    self.last_flush_ts,
                )
            except Exception:  # noqa: BLE001
                _log.exception("request log: on_flush callback failed")
            self._reported_written, self._reported_dropped = written, dropped


# ===================================================================== drift tables
# Owned by the drift issue. Every judged drift check is stored so the service (Prometheus
# gauges) and the report can show the latest result and the history.
#
# drift_runs: one row per check (window, model version, counts, dataset verdict).
# drift_scores: one row per judged column of a run (every score, verdict, and a coarse
# reference-vs-current histogram as JSON for the report's plots).
# drift_references: the training profile of each model version seen (a cache, below).
#
# These functions use the standard library's sqlite3 directly and accept either a
# sqlite-utils Database or a sqlite3 connection: importing sqlite-utils also imports pandas
# (over a second and ~100 MB), which a drift check or a /metrics scrape does not need.

DRIFT_RUN_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "created_at": "REAL NOT NULL",
    "since_ts": "REAL",
    "until_ts": "REAL",
    "model_name": "TEXT",
    "model_version": "TEXT",
    "rows": "INTEGER",
    "sampled_rows": "INTEGER",
    "other_versions": "TEXT",
    "reference": "TEXT",
    "reference_rows": "INTEGER",
    "features": "INTEGER",
    "drifting": "INTEGER",
    "drift_share": "REAL",
    "dataset_drift": "INTEGER",
    "any_drift": "INTEGER",
    "verdict": "TEXT",
    "drifting_features": "TEXT",
    "thresholds": "TEXT",
}

DRIFT_SCORE_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "run_id": "INTEGER NOT NULL REFERENCES drift_runs(id)",
    "feature": "TEXT NOT NULL",
    "kind": "TEXT",
    "rows": "INTEGER",
    "ref_mean": "REAL",
    "cur_mean": "REAL",
    "ref_std": "REAL",
    "cur_std": "REAL",
    "psi": "REAL",
    "ks": "REAL",
    "ks_pvalue": "REAL",
    "wasserstein": "REAL",
    "wasserstein_norm": "REAL",
    "verdict": "TEXT",
    "note": "TEXT",
    "hist": "TEXT",
}

_DRIFT_DDL = (
    "CREATE TABLE IF NOT EXISTS drift_runs ("
    + ", ".join(f'"{k}" {v}' for k, v in DRIFT_RUN_COLUMNS.items())
    + ")",
    "CREATE INDEX IF NOT EXISTS idx_drift_runs_created_at ON drift_runs(created_at)",
    "CREATE TABLE IF NOT EXISTS drift_scores ("
    + ", ".join(f'"{k}" {v}' for k, v in DRIFT_SCORE_COLUMNS.items())
    + ")",
    "CREATE INDEX IF NOT EXISTS idx_drift_scores_run_id ON drift_scores(run_id)",
    "CREATE TABLE IF NOT EXISTS drift_references (key TEXT PRIMARY KEY, tracking_uri TEXT, "
    "model_name TEXT, model_version TEXT, run_id TEXT, cached_at REAL, profile TEXT)",
)

_JSON_RUN_FIELDS = ("other_versions", "drifting_features", "thresholds")

# The sampling predicate keeps a row when a multiplicative hash of its id falls below a
# threshold: a deterministic Bernoulli(fraction) sample that does not depend on feature
# values, so a window gives the same numbers every time. SQLite evaluates it on index
# entries (the id is in every index), so skipped rows are never read from the table.
_HASH_MOD = 1_000_003
_HASH_MUL = 618_034  # ~ 0.618 * _HASH_MOD (golden-ratio multiplicative hashing)


def _conn(db: Any) -> Any:
    """The sqlite3 connection behind a sqlite-utils Database (or the connection itself)."""
    return getattr(db, "conn", db)


def _tables(db: Any) -> set[str]:
    rows = _conn(db).execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def connect(path: Path | str, readonly: bool = False) -> Any | None:
    """A plain sqlite3 connection to an existing log (None when the file is missing).

    Raises DataError when the path holds something that is not a SQLite database.

    Read-write connections switch to WAL and create the drift tables. The ``requests``
    table is left to ``open_db`` (the service creates it); readers treat it missing as
    an empty log.
    """
    import sqlite3

    path = Path(path)
    if not _existing_log(path):
        return None
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        return _verified(conn, path, ("SELECT count(*) FROM sqlite_master",))
    conn = sqlite3.connect(path, timeout=10.0)
    _verified(conn, path, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"))
    ensure_drift_schema(conn)
    return conn


def open_readonly(path: Path | str) -> Any | None:
    """Open an existing log read-only (never creates it); None when the file is missing."""
    return connect(path, readonly=True)


def ensure_drift_schema(db: Any) -> None:
    """Create the drift tables, and the window index on logs made before it existed.

    The index (status, model_version, ts) lets SQLite count a window's answered rows per
    version from the index alone: 0.3 s instead of 1-3 s over a million rows. Building it
    on an old log of that size takes a few seconds, once.
    """
    conn = _conn(db)
    with conn:
        for statement in _DRIFT_DDL:
            conn.execute(statement)
        if "requests" in _tables(conn):
            conn.execute(
                "CREATE INDEX IF NOT EXISTS idx_requests_status_model_version_ts "
                "ON requests(status, model_version, ts)"
            )


def _window_clause(
    since_ts: float, until_ts: float, model_version: str | None
) -> tuple[str, list[Any]]:
    clause = "ts >= ? AND ts < ? AND status = 200"
    params: list[Any] = [float(since_ts), float(until_ts)]
    if model_version is not None:
        clause += " AND model_version = ?"
        params.append(str(model_version))
    return clause, params


def window_counts(
    db: Any, since_ts: float, until_ts: float, model_version: str | None = None
) -> list[dict[str, Any]]:
    """Answered (status 200) rows per model version in [since, until), most rows first."""
    if "requests" not in _tables(db):
        return []
    clause, params = _window_clause(since_ts, until_ts, model_version)
    conn = _conn(db)
    # Only our own fixed clause is interpolated; values go in as parameters. Grouping by
    # version alone keeps the query inside the covering index; the model name (one per
    # version) is looked up for each version found.
    select = "SELECT model_version, COUNT(*) AS n, MIN(ts), MAX(ts) FROM requests"
    sql = f"{select} WHERE {clause} GROUP BY model_version ORDER BY n DESC"  # noqa: S608
    out = []
    for version, n, first, last in conn.execute(sql, params).fetchall():
        name = conn.execute(
            "SELECT model_name FROM requests WHERE status = 200 AND model_version IS ? "
            "AND ts >= ? AND ts < ? LIMIT 1",
            [version, first, last + 1e-6],
        ).fetchone()
        out.append(
            {
                "model_name": name[0] if name else None,
                "model_version": version,
                "rows": n,
                "first_ts": first,
                "last_ts": last,
            }
        )
    return out


def _sample_clause(fraction: float) -> tuple[str, list[Any]]:
    import math

    if fraction >= 1.0:
        return "1 = 1", []
    threshold = max(1, math.ceil(fraction * _HASH_MOD))
    return f"((id % {_HASH_MOD}) * {_HASH_MUL}) % {_HASH_MOD} < ?", [threshold]


def _fetch_array(cursor: Any, width: int, chunk_rows: int = 20_000) -> Any:
    """All rows of a cursor as a float64 (n, width) array, fetched in chunks (None -> NaN)."""
    import numpy as np

    blocks = []
    while True:
        rows = cursor.fetchmany(chunk_rows)
        if not rows:
            break
        blocks.append(np.array(rows, dtype=float).reshape(len(rows), width))
    return np.concatenate(blocks) if blocks else np.empty((0, width))


def window_sample(
    db: Any,
    since_ts: float,
    until_ts: float,
    model_version: str | None,
    columns: list[str],
    fraction: float = 1.0,
) -> dict[str, Any]:
    """The window's answered rows (a deterministic uniform sample when fraction < 1).

    Returns {column: float64 numpy array}. Rows are fetched in chunks into arrays, so
    memory stays at a few bytes per sampled value.
    """
    unknown = [c for c in columns if c not in REQUEST_COLUMNS]
    if unknown:
        raise ValueError(f"unknown request-log columns: {unknown}")
    clause, params = _window_clause(since_ts, until_ts, model_version)
    sample, sample_params = _sample_clause(fraction)
    select = ", ".join(f'"{c}"' for c in columns)
    sql = f"SELECT {select} FROM requests WHERE {clause} AND {sample}"  # noqa: S608
    data = _fetch_array(_conn(db).execute(sql, [*params, *sample_params]), len(columns))
    return {c: data[:, i].copy() for i, c in enumerate(columns)}


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=float)


def save_drift_run(db: Any, result: dict[str, Any]) -> int:
    """Store a judged drift check (drift.check_drift's result) and its scores; returns the id."""
    import time

    ensure_drift_schema(db)
    window = result.get("window", {})
    reference = result.get("reference", {})
    run = {
        "created_at": float(result.get("created_at") or time.time()),
        "since_ts": window.get("since_ts"),
        "until_ts": window.get("until_ts"),
        "model_name": result.get("model_name"),
        "model_version": result.get("model_version"),
        "rows": result.get("rows"),
        "sampled_rows": result.get("sampled_rows"),
        "other_versions": _dumps(result.get("other_versions") or {}),
        "reference": reference.get("source"),
        "reference_rows": reference.get("rows"),
        "features": result.get("features"),
        "drifting": len(result.get("drifting_features") or []),
        "drift_share": result.get("drift_share"),
        "dataset_drift": int(bool(result.get("dataset_drift"))),
        "any_drift": int(bool(result.get("any_drift"))),
        "verdict": result.get("verdict"),
        "drifting_features": _dumps(result.get("drifting_features") or []),
        "thresholds": _dumps(result.get("thresholds") or {}),
    }
    score_keys = [k for k in DRIFT_SCORE_COLUMNS if k not in ("id", "run_id")]
    conn = _conn(db)
    with conn:
        cursor = conn.execute(
            f"INSERT INTO drift_runs ({', '.join(run)}) "  # noqa: S608 - fixed column names
            f"VALUES ({', '.join('?' * len(run))})",
            [_plain(v) for v in run.values()],
        )
        run_id = int(cursor.lastrowid)
        conn.executemany(
            f"INSERT INTO drift_scores (run_id, {', '.join(score_keys)}) "  # noqa: S608
            f"VALUES (?, {', '.join('?' * len(score_keys))})",
            [
                [run_id]
                + [
                    _dumps(s.get(k)) if k == "hist" and s.get(k) is not None else _plain(s.get(k))
                    for k in score_keys
                ]
                for s in result.get("scores", [])
            ],
        )
    return run_id


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; non-finite floats -> NULL."""
    import math

    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rows(db: Any, sql: str, params: list[Any] | tuple = ()) -> list[dict[str, Any]]:
    cursor = _conn(db).execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _run_from_row(row: dict[str, Any]) -> dict[str, Any]:
    import json

    run = dict(row)
    for key in _JSON_RUN_FIELDS:
        if run.get(key):
            run[key] = json.loads(run[key])
    run["dataset_drift"] = bool(run.get("dataset_drift"))
    run["any_drift"] = bool(run.get("any_drift"))
    return run


def _has_drift_tables(db: Any) -> bool:
    return {"drift_runs", "drift_scores"} <= _tables(db)


def latest_drift_run(db: Any) -> dict[str, Any] | None:
    """The newest stored drift run with its per-column scores, or None if there is none."""
    import json

    if db is None or not _has_drift_tables(db):
        return None
    rows = _rows(db, "SELECT * FROM drift_runs ORDER BY created_at DESC, id DESC LIMIT 1")
    if not rows:
        return None
    run = _run_from_row(rows[0])
    scores = _rows(db, "SELECT * FROM drift_scores WHERE run_id = ? ORDER BY id", [run["id"]])
    for score in scores:
        score["hist"] = json.loads(score["hist"]) if score.get("hist") else None
    run["scores"] = scores
    return run


def drift_history(db: Any, limit: int = 50) -> list[dict[str, Any]]:
    """Stored drift runs, newest first (without per-column scores), at most ``limit``."""
    if db is None or not _has_drift_tables(db):
        return []
    rows = _rows(
        db, "SELECT * FROM drift_runs ORDER BY created_at DESC, id DESC LIMIT ?", [int(limit)]
    )
    return [_run_from_row(r) for r in rows]


# ------------------------------------------------------------ serving stats (report)
def serving_stats(db: Any, sample_rows: int = 200_000) -> dict[str, Any]:
    """Traffic summary for the report: per-day counts, error rate, latency and predictions.

    Counts are exact (SQL). Latency percentiles are per *request*: every row of a batch
    carries the latency of the whole request, so only each request's first row
    (``row_index`` 0) is read and a batch of 1,000 rows counts once, not 1,000 times.
    They come from a uniform sample of at most ``sample_rows`` requests, the prediction
    distribution from one of at most ``sample_rows`` rows (the same hash sampling as
    drift). ``largest_batch`` is the most rows a logged request had.
    """
    import numpy as np

    empty: dict[str, Any] = {
        "rows": 0,
        "requests": 0,
        "error_rows": 0,
        "error_rate": None,
        "first_ts": None,
        "last_ts": None,
        "per_day": [],
        "latency_ms": {},
        "largest_batch": 0,
        "predictions": np.empty(0),
        "by_version": [],
    }
    if db is None or "requests" not in _tables(db):
        return empty
    conn = _conn(db)
    total, errors, first, last, requests, heads, last_index = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(status != 200), 0), MIN(ts), MAX(ts), "
        "COUNT(DISTINCT request_id), COALESCE(SUM(COALESCE(row_index, 0) = 0), 0), "
        "COALESCE(MAX(row_index), 0) FROM requests"
    ).fetchone()
    stats = {
        **empty,
        "rows": int(total),
        "requests": int(requests),
        "error_rows": int(errors),
        "error_rate": (errors / total) if total else None,
        "first_ts": first,
        "last_ts": last,
        "largest_batch": int(last_index) + 1 if total else 0,
    }
    if not total:
        return stats
    stats["per_day"] = [
        {"day": r[0], "rows": r[1], "errors": r[2], "requests": r[3]}
        for r in conn.execute(
            "SELECT date(ts, 'unixepoch') AS day, COUNT(*), SUM(status != 200), "
            "COUNT(DISTINCT request_id) FROM requests GROUP BY day ORDER BY day"
        ).fetchall()
    ]
    stats["by_version"] = [
        {"model_version": r[0], "rows": r[1]}
        for r in conn.execute(
            "SELECT model_version, COUNT(*) FROM requests WHERE status = 200 "
            "GROUP BY model_version ORDER BY model_version"
        ).fetchall()
    ]
    clause, params = _sample_clause(min(1.0, sample_rows / max(heads, 1)))
    sql = (
        "SELECT latency_ms FROM requests "  # noqa: S608 - our own fixed clause
        f"WHERE COALESCE(row_index, 0) = 0 AND {clause}"
    )
    latency = _fetch_array(conn.execute(sql, params), 1)[:, 0]
    latency = latency[np.isfinite(latency)]
    if latency.size:
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        stats["latency_ms"] = {
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "mean": float(latency.mean()),
            "requests": int(latency.size),
        }
    clause, params = _sample_clause(min(1.0, sample_rows / total))
    sql = f"SELECT prediction, status FROM requests WHERE {clause}"  # noqa: S608
    data = _fetch_array(conn.execute(sql, params), 2)
    predictions = data[data[:, 1] == 200, 0]
    stats["predictions"] = predictions[np.isfinite(predictions)]
    return stats


# ------------------------------------------------------------ reference profile cache
# A registered model version never changes, so its training profile is fetched from
# MLflow once and kept here: later drift checks on the same version skip importing and
# querying MLflow (seconds). Keyed by tracking URI, model name and version; the run id is
# kept for the record. Deleting a registered model and re-creating it under the same name
# reuses version numbers: `housing drift --refresh-reference` fetches the profile again.
def cached_reference(db: Any, tracking_uri: str, name: str, version: str) -> dict | None:
    """The cached training profile of a model version, or None."""
    import json

    if "drift_references" not in _tables(db):
        return None
    row = (
        _conn(db)
        .execute(
            "SELECT profile FROM drift_references WHERE key = ?",
            [f"{tracking_uri}|{name}|{version}"],
        )
        .fetchone()
    )
    return json.loads(row[0]) if row else None


def cache_reference(
    db: Any, tracking_uri: str, name: str, version: str, run_id: str, profile: dict
) -> None:
    """Store (or replace) the training profile of a model version."""
    import json
    import time

    ensure_drift_schema(db)
    conn = _conn(db)
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO drift_references "
            "(key, tracking_uri, model_name, model_version, run_id, cached_at, profile) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                f"{tracking_uri}|{name}|{version}",
                tracking_uri,
                name,
                str(version),
                run_id,
                time.time(),
                json.dumps(profile),
            ],
        )


# ---- queries for the report (moved from report.py)
def drift_score_history(db: Any, run_ids: list[int]) -> dict[str, list[tuple[float, float]]]:
    """Normalised Wasserstein distance per feature over the given drift runs, oldest first:
    {feature: [(run created_at, wasserstein_norm), ...]} (runs without a value left out)."""
    if not run_ids:
        return {}
    marks = ", ".join("?" * len(run_ids))
    rows = (
        _conn(db)
        .execute(
            "SELECT r.created_at, s.feature, s.wasserstein_norm FROM drift_scores s "  # noqa: S608
            f"JOIN drift_runs r ON r.id = s.run_id WHERE r.id IN ({marks}) "
            "ORDER BY r.created_at",
            run_ids,
        )
        .fetchall()
    )
    out: dict[str, list[tuple[float, float]]] = {}
    for created, feature, value in rows:
        if value is not None:
            out.setdefault(feature, []).append((created, value))
    return out
