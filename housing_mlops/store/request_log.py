"""The request log: the typed row the service logs, its background writer, and the readers.

``LoggedRequest`` is one row of the ``requests`` table (see ``store.schema``).
``RequestLogWriter`` writes them off the request path. ``window_counts`` and
``window_sample`` read a time window for drift; ``serving_stats`` summarises the traffic
for the report.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from housing_mlops.columns import FEATURES
from housing_mlops.store.connection import open_log
from housing_mlops.store.schema import REQUEST_COLUMNS, tables

_log = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class LoggedRequest:
    """One row of the request log: an answered prediction row, or a rejected request."""

    ts: float  # UTC Unix time the request arrived
    request_id: str
    row_index: int  # position in a batch (0 for a single house or a rejection)
    model_name: str | None
    model_version: str | None  # None when rejected
    features: Sequence[float] | None  # the 8 raw features in FEATURES order; None if rejected
    prediction: float | None  # in $100k; None when rejected
    latency_ms: float | None  # of the whole request (every row of a batch carries it)
    status: int  # HTTP status
    error: str | None = None  # why it was rejected


_NO_FEATURES = (None,) * len(FEATURES)
# Every column but the id, in the order ``_values`` gives them.
_COLUMNS = (
    "ts",
    "request_id",
    "row_index",
    "model_name",
    "model_version",
    *FEATURES,
    "prediction",
    "latency_ms",
    "status",
    "error",
)
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608, E501 - fixed names


def _values(row: LoggedRequest) -> tuple[Any, ...]:
    return (
        row.ts,
        row.request_id,
        row.row_index,
        row.model_name,
        row.model_version,
        *(_NO_FEATURES if row.features is None else row.features),
        row.prediction,
        row.latency_ms,
        row.status,
        row.error,
    )


class RequestLogWriter:
    """Writes request-log rows off the request path: a bounded queue drained by a thread.

    ``submit`` only appends the rows' column values to an in-memory deque, so it costs
    the request about a microsecond per row. A daemon thread inserts everything queued in
    one transaction at least every ``flush_interval_s``, sooner once ``batch_rows`` are
    waiting, and once more in ``close`` (the server's shutdown), so a graceful stop loses
    nothing. When the queue
    is full new rows are dropped and counted, never blocking a request. A crash (SIGKILL)
    loses at most the rows of the last interval; WAL keeps the database itself intact.

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
        self._queue: deque[tuple[Any, ...]] = deque()  # column values, see submit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
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
        open_log(self.path, create=True).close()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[LoggedRequest]) -> int:
        """Queue rows for writing; returns how many were accepted (the rest are dropped)."""
        free = self.max_queue - len(self._queue)
        accepted = rows if len(rows) <= free else rows[: max(free, 0)]
        # Queued as plain tuples of column values, not as LoggedRequest: the garbage
        # collector stops tracking a tuple of scalars, but not a dataclass instance. A
        # second's worth of queued rows (thousands under load) then piled up in the oldest
        # generation and set off a full collection (~190 ms with the service's heap) every
        # ~15 s: p99 latency went from ~10 ms to ~200 ms in `make bench-serve`.
        self._queue.extend([_values(row) for row in accepted])
        if len(accepted) < len(rows):
            self.dropped += len(rows) - len(accepted)
        if len(self._queue) >= self.batch_rows:
            self._wake.set()
        return len(accepted)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after a final flush of everything queued."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        conn = open_log(self.path, create=True)
        try:
            while not self._stop.is_set():
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                self._drain(conn)
            self._drain(conn)
        finally:
            conn.close()

    def _drain(self, conn: sqlite3.Connection) -> None:
        n = len(self._queue)
        if n:
            # popleft n times: rows appended meanwhile stay for the next cycle.
            batch = [self._queue.popleft() for _ in range(n)]
            try:
                with conn:
                    conn.executemany(_INSERT, batch)
            except Exception:  # noqa: BLE001 - a log failure must never stop serving
                self.dropped += n
                _log.exception("request log: could not write %d row(s) to %s", n, self.path)
            else:
                self.written += n
                self.last_flush_ts = time.time()
        elif not self.last_flush_ts:
            self.last_flush_ts = time.time()
        if self.on_flush is not None:
            written, dropped = self.written, self.dropped
            try:
                self.on_flush(
                    written - self._reported_written,
                    dropped - self._reported_dropped,
                    self.depth,
                    self.last_flush_ts,
                )
            except Exception:  # noqa: BLE001
                _log.exception("request log: on_flush callback failed")
            self._reported_written, self._reported_dropped = written, dropped


# ------------------------------------------------------------------------ readers
# The sampling predicate keeps a row when a multiplicative hash of its id falls below a
# threshold: a deterministic Bernoulli(fraction) sample that does not depend on feature
# values, so a window gives the same numbers every time. SQLite evaluates it on index
# entries (the id is in every index), so skipped rows are never read from the table.
_HASH_MOD = 1_000_003
_HASH_MUL = 618_034  # ~ 0.618 * _HASH_MOD (golden-ratio multiplicative hashing)


def _sample_clause(fraction: float) -> tuple[str, list[Any]]:
    if fraction >= 1.0:
        return "1 = 1", []
    threshold = max(1, math.ceil(fraction * _HASH_MOD))
    return f"((id % {_HASH_MOD}) * {_HASH_MUL}) % {_HASH_MOD} < ?", [threshold]


def _window_clause(
    since_ts: float, until_ts: float, model_version: str | None
) -> tuple[str, list[Any]]:
    clause = "ts >= ? AND ts < ? AND status = 200"
    params: list[Any] = [float(since_ts), float(until_ts)]
    if model_version is not None:
        clause += " AND model_version = ?"
        params.append(str(model_version))
    return clause, params


def _fetch_array(cursor: sqlite3.Cursor, width: int, chunk_rows: int = 20_000) -> Any:
    """All rows of a cursor as a float64 (n, width) array, fetched in chunks (None -> NaN)."""
    import numpy as np

    blocks = []
    while True:
        rows = cursor.fetchmany(chunk_rows)
        if not rows:
            break
        blocks.append(np.array(rows, dtype=float).reshape(len(rows), width))
    return np.concatenate(blocks) if blocks else np.empty((0, width))


def window_counts(
    conn: sqlite3.Connection, since_ts: float, until_ts: float, model_version: str | None = None
) -> list[dict[str, Any]]:
    """Answered (status 200) rows per model version in [since, until), most rows first."""
    if "requests" not in tables(conn):
        return []
    clause, params = _window_clause(since_ts, until_ts, model_version)
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


def window_sample(
    conn: sqlite3.Connection,
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
    data = _fetch_array(conn.execute(sql, [*params, *sample_params]), len(columns))
    return {c: data[:, i].copy() for i, c in enumerate(columns)}


def serving_stats(conn: sqlite3.Connection | None, sample_rows: int = 200_000) -> dict[str, Any]:
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
    if conn is None or "requests" not in tables(conn):
        return empty
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
