"""Opening the request log (store.connection): what every opener does with a path that is
not a database, and with a missing or empty one.

The window readers and drift tables are covered in test_drift.py, the writer in
test_store_request_log.py; here, every way in (the service's start-up check and writer,
drift's read-write connection, the report's read-only one) refuses a file or directory that
is not a SQLite database with one DataError, and leaves it alone.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from housing_mlops import store
from housing_mlops.columns import FEATURES
from housing_mlops.errors import ConfigError, DataError

OPENERS: dict[str, Callable[[Path], Any]] = {
    "create_log (serve start-up)": store.create_log,
    "open_log create (serve)": lambda path: store.open_log(path, create=True),
    "open_log existing (drift)": lambda path: store.open_log(path, create=False),
    "open_readonly (report)": store.open_readonly,
    "writer start (serve)": lambda path: store.RequestLogWriter(path).start(),
}


def make(path: Path, kind: str) -> bytes | None:
    if kind == "directory":
        path.mkdir()
        return None
    content = {
        "text": b"ts,request_id,prediction\n1.0,abc,2.5\n",
        "random bytes": os.urandom(4096),
        "corrupt sqlite": b"SQLite format 3\x00" + os.urandom(4096),
    }[kind]
    path.write_bytes(content)
    return content


@pytest.mark.parametrize("kind", ["text", "random bytes", "corrupt sqlite", "directory"])
@pytest.mark.parametrize("opener", list(OPENERS))
def test_every_opener_refuses_what_is_not_a_database_and_leaves_it(
    tmp_path: Path, kind: str, opener: str
) -> None:
    path = tmp_path / "requests.db"
    content = make(path, kind)
    with pytest.raises(DataError) as info:
        OPENERS[opener](path)
    message = str(info.value)
    assert message.startswith(f"the request log {path} ")
    assert "not a SQLite database" in message or "not a usable SQLite database" in message
    assert "serve.request_log" in message
    if content is not None:
        assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.db"]


def test_missing_and_empty_logs_are_still_fine(
    tmp_path: Path, write_request_log: Callable[[Path, list[dict[str, Any]]], None]
) -> None:
    missing = tmp_path / "missing.db"
    assert store.open_log(missing, create=False) is None
    assert store.open_readonly(missing) is None
    assert not store.check_request_log(missing) and not missing.exists()
    empty = tmp_path / "empty.db"
    empty.touch()  # SQLite treats an empty file as an empty database
    assert store.check_request_log(empty)
    write_request_log(empty, [{"ts": 1.0, "request_id": "a", "row_index": 0, "status": 200}])
    assert store.check_request_log(empty)


def test_only_the_writable_opener_with_create_makes_a_log(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "requests.db"
    assert store.open_readonly(path) is None and store.open_log(path, create=False) is None
    assert not path.parent.exists()
    conn = store.open_log(path, create=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"requests", "drift_runs", "drift_scores", "drift_references"} <= tables
    finally:
        conn.close()


def test_the_readonly_opener_cannot_write(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "requests.db"
    store.create_log(path)
    conn = store.open_readonly(path)
    assert conn is not None
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM requests")
    finally:
        conn.close()


@pytest.mark.parametrize("folder", ["a#b", "a?b", "a%23b c"])
def test_the_readonly_opener_reads_the_log_named_even_with_uri_characters(
    tmp_path: Path, folder: str, write_request_log: Callable[[Path, list[dict[str, Any]]], None]
) -> None:
    path = tmp_path / folder / "requests.db"
    path.parent.mkdir()
    write_request_log(path, [{"ts": 1.0, "request_id": "r1", "row_index": 0, "status": 200}])
    conn = store.open_readonly(path)
    assert conn is not None
    try:
        assert conn.execute("SELECT request_id FROM requests").fetchall() == [("r1",)]
    finally:
        conn.close()
    # Nothing else was opened, so nothing was created beside it ('a' for 'a#b').
    assert [p.name for p in tmp_path.iterdir()] == [folder]
    assert all(p.name.startswith("requests.db") for p in path.parent.iterdir())  # -wal, -shm


def test_a_log_it_cannot_create_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="check serve.request_log"):
        store.create_log(blocker / "requests.db")  # its folder is a file


def test_a_log_made_by_sqlite_utils_is_opened_as_is(tmp_path: Path) -> None:
    """Logs written by earlier releases (sqlite-utils' DDL and index names) keep working:
    opening one adds nothing twice and reads its rows."""
    import sqlite3

    path = tmp_path / "requests.db"
    old = sqlite3.connect(path)
    features = ", ".join(f"[{c}] FLOAT" for c in FEATURES)
    old.execute(
        "CREATE TABLE [requests] ([id] INTEGER PRIMARY KEY, [ts] FLOAT NOT NULL, "
        "[request_id] TEXT NOT NULL, [row_index] INTEGER, [model_name] TEXT, "
        f"[model_version] TEXT, {features}, [prediction] FLOAT, [latency_ms] FLOAT, "
        "[status] INTEGER NOT NULL, [error] TEXT)"
    )
    old.execute("CREATE INDEX [idx_requests_ts] ON [requests] ([ts])")
    old.execute(
        "INSERT INTO requests (ts, request_id, status, model_version) VALUES (5, 'a', 200, '1')"
    )
    old.commit()
    old.close()
    conn = store.open_log(path, create=False)
    assert conn is not None
    try:
        indexes = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        ]
        assert indexes.count("idx_requests_ts") == 1
        assert store.window_counts(conn, 0, 10)[0]["rows"] == 1
    finally:
        conn.close()


def test_an_old_log_gets_the_new_columns_and_takes_new_rows(tmp_path: Path) -> None:
    """A log from before replicas and challengers (no ``instance``, ``role``, shadow
    columns): opening it for writing adds them and records the schema version; its old rows
    stay, new rows say who answered them and what the challenger said in shadow."""
    import sqlite3

    path = tmp_path / "requests.db"
    old = sqlite3.connect(path)
    columns = ", ".join(
        f'"{c}" {kind}'
        for c, kind in store.REQUEST_COLUMNS.items()
        if c not in ("instance", "role", "shadow_version", "shadow_prediction")
    )
    old.execute(f"CREATE TABLE requests ({columns})")
    old.execute("INSERT INTO requests (ts, request_id, status) VALUES (1, 'old', 200)")
    old.commit()
    old.close()
    sink = store.open_sink(path)
    row = store.LoggedRequest(
        ts=2.0,
        request_id="new",
        row_index=0,
        model_name="m",
        model_version="1",
        features=[1.0] * len(FEATURES),
        prediction=1.5,
        latency_ms=1.0,
        status=200,
        instance="api-1",
        role="champion",
        shadow_version="3",
        shadow_prediction=1.75,
    )
    try:
        sink.write([store.row_values(row)])
    finally:
        sink.close()
    check = sqlite3.connect(path)
    try:
        rows = check.execute(
            "SELECT request_id, instance, role, shadow_version, shadow_prediction "
            "FROM requests ORDER BY id"
        ).fetchall()
        version = check.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    finally:
        check.close()
    assert rows == [("old", None, None, None, None), ("new", "api-1", "champion", "3", 1.75)]
    assert version == store.SCHEMA_VERSION


def test_labelled_rows_join_each_label_to_the_row_it_labels(tmp_path: Path) -> None:
    """Labels join their request row by (request_id, row_index); unlabelled, rejected and
    out-of-window rows are left out; a second label for the same row is refused."""
    import sqlite3

    path = tmp_path / "requests.db"

    def logged(ts: float, rid: str, index: int, pred: float | None, **kw: Any) -> Any:
        return store.LoggedRequest(
            ts=ts,
            request_id=rid,
            row_index=index,
            model_name="m",
            model_version=None if pred is None else kw.pop("version", "1"),
            features=None if pred is None else [1.0] * len(FEATURES),
            prediction=pred,
            latency_ms=1.0,
            status=200 if pred is not None else 422,
            **kw,
        )

    rows = [
        logged(10.0, "a", 0, 1.0, role="champion", shadow_version="2", shadow_prediction=1.2),
        logged(11.0, "b", 0, 2.0, role="champion"),
        logged(11.0, "b", 1, 3.0, role="champion"),
        logged(12.0, "c", 0, 4.0, role="challenger", version="2"),
        logged(13.0, "d", 0, None),
        logged(99.0, "e", 0, 5.0, role="champion"),
    ]
    sink = store.open_sink(path)
    try:
        sink.write([store.row_values(r) for r in rows])
    finally:
        sink.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO feedback (request_id, row_index, actual, received_at, source) "
            "VALUES (?, ?, ?, 50, 'test')",
            [("a", 0, 1.1), ("b", 1, 2.9), ("c", 0, 4.4), ("d", 0, 9.0), ("e", 0, 5.5)],
        )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO feedback (request_id, row_index, actual, received_at) "
            "VALUES ('a', 0, 7.0, 51)"
        )
    conn.close()
    readonly = store.open_readonly(path)
    assert readonly is not None
    try:
        got = store.labelled_rows(readonly, since_ts=0.0, until_ts=50.0)
    finally:
        readonly.close()
    assert len(got) == 3
    assert got.ts.tolist() == [10.0, 11.0, 12.0]
    assert got.model_version.tolist() == ["1", "1", "2"]
    assert got.role.tolist() == ["champion", "champion", "challenger"]
    assert got.prediction.tolist() == [1.0, 3.0, 4.0]
    assert got.actual.tolist() == [1.1, 2.9, 4.4]
    assert got.shadow_version.tolist() == ["2", None, None]
    assert got.shadow_prediction[0] == 1.2 and np.isnan(got.shadow_prediction[1:]).all()
    assert len(store.labelled_rows(None)) == 0


def test_a_sqlite_log_that_cannot_take_rows_is_log_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sink = store.open_sink(blocker / "requests.db")  # connects lazily: no error yet
    with pytest.raises(store.LogUnavailable, match="requests.db"):
        sink.write(
            [(1.0, "r", 0, None, None, *([None] * len(FEATURES)), None, 1.0, 422, "e", None)]
        )
    sink.close()


def _count_in_another_process(path: Path) -> int:
    """What `housing drift` or `housing evaluate --live` would see: a new process's read."""
    import subprocess
    import sys

    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=10); "
        "print(c.execute('select count(*) from requests').fetchone()[0]); c.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_read_in_the_service_process_does_not_expose_its_log_to_other_processes(
    tmp_path: Path,
) -> None:
    # The service keeps its writer's connection open and, between writes, opens the log
    # again (POST /feedback, the live-quality gauges, /metrics). Reading the file's header
    # with open()/close() dropped the writer's locks: the next `housing drift` (or
    # feedback) to close its connection deleted the -wal and -shm under the service, whose
    # later rows other processes no longer saw and whose /feedback answered 503
    # "disk I/O error" until it restarted.
    import time

    from housing_mlops.store import LoggedRequest, RequestLogWriter

    def rows(start: int) -> list[LoggedRequest]:
        return [
            LoggedRequest(
                ts=time.time(),
                request_id=f"r{i}",
                row_index=0,
                model_name="m",
                model_version="1",
                features=[1.0] * len(FEATURES),
                prediction=1.5,
                latency_ms=0.3,
                status=200,
            )
            for i in range(start, start + 3)
        ]

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 10
        while (seen := _count_in_another_process(path)) < count:
            assert time.monotonic() < deadline, f"another process sees {seen} of {count} rows"
            time.sleep(0.1)

    path = tmp_path / "requests.db"
    writer = RequestLogWriter(path, flush_interval_s=0.05)
    writer.start()
    try:
        writer.submit(rows(0))
        wait_for(3)
        conn = store.open_readonly(path)  # as the service does for its gauges
        assert conn is not None
        conn.close()
        store.open_log(path, create=True).close()  # POST /feedback
        import subprocess
        import sys

        drift_like = (
            "import sys; from housing_mlops import store; "
            "store.open_log(sys.argv[1], create=False).close()"
        )
        subprocess.run([sys.executable, "-c", drift_like, str(path)], check=True, timeout=60)
        writer.submit(rows(3))
        wait_for(6)  # the service's new rows reach the others
        fresh = store.open_log(path, create=False)  # the next POST /feedback
        assert fresh is not None
        assert fresh.execute("select count(*) from requests").fetchone()[0] == 6
        fresh.close()
    finally:
        writer.close()
    assert _count_in_another_process(path) == 6


def test_answered_values_are_the_row_values_of_the_answered_rows() -> None:
    """The service's hot path logs ``answered_values`` tuples instead of LoggedRequest
    rows: every column must be what ``row_values`` gives for those rows."""
    features = [
        (8.3, 41.0, 7.0, 1.0, 322.0, 2.6, 37.9, -122.2),
        (1.5, 20.0, 5.0, 1.1, 900.0, 3.1, 34.1, -118.3),
    ]
    predictions = [4.42, 1.87]
    got = store.answered_values(
        1.7e9, "rid-1", "california-housing", "4", features, predictions, 2.5, "host:1", "canary"
    )
    expected = [
        store.row_values(
            store.LoggedRequest(
                ts=1.7e9,
                request_id="rid-1",
                row_index=i,
                model_name="california-housing",
                model_version="4",
                features=row,
                prediction=pred,
                latency_ms=2.5,
                status=200,
                instance="host:1",
                role="canary",
            )
        )
        for i, (row, pred) in enumerate(zip(features, predictions, strict=True))
    ]
    assert got == expected
    assert all(len(values) == len(store.ROW_COLUMNS) for values in got)


def _answered(n: int, start: int = 0) -> list[tuple[Any, ...]]:
    features = [(8.3, 41.0, 7.0, 1.0, 322.0, 2.6, 37.9, -122.2)]
    return [
        store.answered_values(1.7e9 + i, f"rid-{i}", "m", "4", features, [i / 10], 1.0, None, "")[0]
        for i in range(start, start + n)
    ]


def test_the_sqlite_sink_writes_a_big_batch_in_order_and_all_or_nothing(tmp_path: Path) -> None:
    """The sink writes a batch as several multi-row INSERTs (``ROWS_PER_INSERT`` rows each):
    every row lands once, in order, the last short statement included; a batch that fails
    in a later statement leaves none of its rows (the writer then still owns them all)."""
    path = tmp_path / "requests.db"
    sink = store.open_sink(path)
    n = 2 * store.rows.ROWS_PER_INSERT + 234
    sink.write(_answered(n))
    bad = _answered(store.rows.ROWS_PER_INSERT + 10, start=n)
    bad[-1] = (*bad[-1][:-1], {"not": "a column value"})  # fails in the second statement
    with pytest.raises(store.LogUnavailable):
        sink.write(bad)
    sink.close()
    with sqlite3.connect(path) as conn:
        got = conn.execute("SELECT request_id, prediction FROM requests ORDER BY rowid").fetchall()
    assert got == [(f"rid-{i}", i / 10) for i in range(n)]
