"""The request-log writer (store.request_log): typed rows land in their columns; it flushes
on its interval and at close, drops (and counts) rows when full, and a SIGKILL leaves an
intact database."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from housing_mlops.columns import FEATURES
from housing_mlops.store import FlushReport, LoggedRequest, RequestLogWriter, row_values


def _row(i: int) -> LoggedRequest:
    return LoggedRequest(
        ts=time.time(),
        request_id=f"r{i}",
        row_index=0,
        model_name="m",
        model_version="1",
        features=[float(i)] * 8,
        prediction=1.5,
        latency_ms=0.3,
        status=200,
    )


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("select count(*) from requests").fetchone()[0])
    finally:
        conn.close()


def test_writer_flushes_within_its_interval(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    flushes: list[FlushReport] = []
    writer = RequestLogWriter(db, flush_interval_s=0.1, on_flush=flushes.append)
    writer.start()
    try:
        writer.submit([_row(i) for i in range(5)])
        deadline = time.time() + 5
        # The rows are visible once committed; the flush report follows the commit.
        while _count(db) < 5 or sum(f.written for f in flushes) < 5:
            assert time.time() < deadline, "rows were not flushed on the interval"
            time.sleep(0.02)
        assert sum(f.written for f in flushes) == 5
        assert flushes[-1].last_flush_ts > 0
        assert not flushes[-1].degraded and flushes[-1].spooled == 0
        conn = sqlite3.connect(db)
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        writer.close()


def test_writer_close_flushes_everything(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    writer = RequestLogWriter(db, flush_interval_s=60)
    writer.start()
    writer.submit([_row(i) for i in range(1234)])
    writer.close()
    assert _count(db) == 1234
    assert writer.written == 1234 and writer.dropped == 0


def test_rows_the_sqlite_log_refuses_are_dropped_alone(tmp_path: Path) -> None:
    """A row the SQLite log refuses (here a trigger standing for a constraint): the other
    rows of its batch are written and only that one is dropped and counted. The whole
    batch used to be taken for an outage and dropped with it."""
    db = tmp_path / "log.db"
    writer = RequestLogWriter(db, flush_interval_s=60)
    writer.start()  # creates the log
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TRIGGER no_bad BEFORE INSERT ON requests WHEN NEW.request_id = 'r3' "
        "BEGIN SELECT RAISE(ABORT, 'r3 is refused'); END"
    )
    conn.close()
    writer.submit([_row(i) for i in range(10)])
    writer.close()
    assert _count(db) == 9
    assert writer.written == 9 and writer.dropped == 1


def test_rows_dropped_by_both_threads_at_once_are_all_counted(tmp_path: Path) -> None:
    """``dropped`` (housing_request_log_dropped_total) is counted by the request path (a
    full queue) and by the writer thread (here: rows the log refuses) at the same time.
    Both used a bare ``+=``: a thread switch between its read and its write lost the
    other thread's rows from the count. CPython 3.11 switches threads only at a few
    instructions, rarely there, so a trace function pauses at every instruction of the
    writer's module and lets the other thread run: not a mock, the writer, its thread
    and the database are real; only the scheduling is forced."""
    db = tmp_path / "log.db"
    create = RequestLogWriter(db)
    create.start()  # creates the log
    create.close()
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TRIGGER no_rows BEFORE INSERT ON requests BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    conn.close()
    writer_module = sys.modules[RequestLogWriter.__module__].__file__

    def pause(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            time.sleep(0.00005)  # lets the other thread take the GIL
        return pause

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != writer_module:
            return None
        frame.f_trace_opcodes = True
        return pause

    threading.settrace(trace)  # the writer thread, started below
    writer = RequestLogWriter(db, flush_interval_s=0.001, max_queue=3)
    writer.start()
    threading.settrace(None)
    sent = 0
    sys.settrace(trace)  # this thread: the request path
    try:
        for i in range(150):
            writer.submit_values([row_values(_row(i))] * 5)
            sent += 5
    finally:
        sys.settrace(None)
        writer.close()
    assert writer.written == 0
    assert writer.dropped == sent


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    flushes: list[FlushReport] = []
    writer = RequestLogWriter(db, flush_interval_s=60, max_queue=10, on_flush=flushes.append)
    writer.start()
    assert writer.submit([_row(i) for i in range(8)]) == 8
    assert writer.submit([_row(i) for i in range(8)]) == 2
    assert writer.depth == 10
    writer.close()
    assert _count(db) == 10
    assert writer.dropped == 6
    assert sum(f.dropped for f in flushes) == 6


KILL_SCRIPT = """
import sys, time
from housing_mlops.store import LoggedRequest, RequestLogWriter
writer = RequestLogWriter(sys.argv[1], flush_interval_s=0.05)
writer.start()
i = 0
while True:
    row = LoggedRequest(
        ts=time.time(), request_id=f"r{i}", row_index=0, model_name="m", model_version="1",
        features=[1.0] * 8, prediction=1.5, latency_ms=0.3, status=200,
    )
    writer.submit([row] * 50)
    i += 1
    if writer.written and i % 20 == 0:
        print(writer.written, flush=True)
    time.sleep(0.001)
"""


def test_sigkill_leaves_an_intact_database(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    db = tmp_path / "log.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    flushed = 0
    deadline = time.time() + 30
    while flushed < 2000 and time.time() < deadline:  # several flushes happened
        flushed = int(proc.stdout.readline() or 0)
    proc.send_signal(signal.SIGKILL)  # mid-stream, maybe mid-transaction
    proc.wait(10)
    assert flushed >= 2000
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert _count(db) >= flushed
    finally:
        conn.close()


def test_rows_land_in_their_columns(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    answered = LoggedRequest(
        ts=1_800_000_000.5,
        request_id="abc",
        row_index=3,
        model_name="m",
        model_version="7",
        features=[float(i + 1) for i in range(8)],
        prediction=2.5,
        latency_ms=4.25,
        status=200,
    )
    rejected = LoggedRequest(
        ts=1_800_000_001.0,
        request_id="def",
        row_index=0,
        model_name="m",
        model_version=None,
        features=None,
        prediction=None,
        latency_ms=0.5,
        status=422,
        error="MedInc: too big",
    )
    writer = RequestLogWriter(db, flush_interval_s=60)
    writer.start()
    writer.submit([answered, rejected])
    writer.close()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        first, second = (dict(r) for r in conn.execute("select * from requests order by id"))
    finally:
        conn.close()
    assert {k: first[k] for k in ("ts", "request_id", "row_index", "model_name")} == {
        "ts": 1_800_000_000.5,
        "request_id": "abc",
        "row_index": 3,
        "model_name": "m",
    }
    assert [first[c] for c in FEATURES] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert (first["model_version"], first["prediction"], first["latency_ms"]) == ("7", 2.5, 4.25)
    assert (first["status"], first["error"]) == (200, None)
    assert [second[c] for c in FEATURES] == [None] * 8
    assert (second["model_version"], second["prediction"], second["status"]) == (None, None, 422)
    assert second["error"] == "MedInc: too big" and second["latency_ms"] == 0.5


def test_queued_rows_are_not_left_to_the_garbage_collector(tmp_path: Path) -> None:
    """Rows wait up to a flush interval: if the collector tracked them, thousands per second
    would pile up in its oldest generation and trigger full collections that stall the
    service (see RequestLogWriter.submit)."""
    import gc

    writer = RequestLogWriter(tmp_path / "log.db", flush_interval_s=60)
    writer.submit([_row(i) for i in range(100)])
    gc.collect()
    assert writer.depth == 100
    assert not any(gc.is_tracked(queued) for queued in writer._queue)
