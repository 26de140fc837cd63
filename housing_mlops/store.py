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

FEATURE_COLUMNS = [
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
]

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


def open_db(path: Path | str) -> Any:
    """Open (creating if needed) the request log with the schema in place; WAL mode."""
    import sqlite_utils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    ensure_schema(db)
    return db


def ensure_schema(db: Any) -> None:
    """Create the ``requests`` table and its indexes if they are missing."""
    table = db["requests"]
    if not table.exists():
        table.create(REQUEST_COLUMNS, pk="id", not_null={"ts", "request_id", "status"})
    table.create_index(["ts"], if_not_exists=True)
    table.create_index(["model_version", "ts"], if_not_exists=True)


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
