"""The request-log writer against a real PostgreSQL that goes away (the ``postgres`` fixture
stops and starts the server): rows spool in order while it is down, are replayed oldest
first when it is back, a stop during the outage leaves them in the spool file, and the
next writer on that folder replays them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import spooled_rows, wait_until

from housing_mlops.store import FlushReport, LoggedRequest, RequestLogWriter, create_log


def _row(i: int) -> LoggedRequest:
    return LoggedRequest(
        ts=1_800_000_000.0 + i,
        request_id=f"r{i:06d}",
        row_index=0,
        model_name="m",
        model_version="1",
        features=[float(i)] * 8,
        prediction=i / 7.0,
        latency_ms=0.5,
        status=200,
        instance="api-1",
    )


def _logged(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(
            "SELECT request_id, prediction, instance FROM requests ORDER BY id"
        ).fetchall()


def _expected(n: int) -> list[tuple[Any, ...]]:
    return [(f"r{i:06d}", i / 7.0, "api-1") for i in range(n)]


def test_rows_spool_in_an_outage_and_replay_in_order(
    postgres: Any, pg_url: str, tmp_path: Path
) -> None:
    create_log(pg_url)  # as `housing serve` does before it starts its writers
    reports: list[FlushReport] = []
    writer = RequestLogWriter(
        pg_url,
        flush_interval_s=0.05,
        spool_dir=tmp_path / "spool",
        instance="api-1",
        on_flush=reports.append,
    )
    writer.start()
    try:
        writer.submit([_row(i) for i in range(100)])
        wait_until(lambda: len(_logged(pg_url)) == 100, 20, "the first rows")
        with postgres.down():
            writer.submit([_row(i) for i in range(100, 300)])
            wait_until(lambda: writer.degraded and writer.spooled == 200, 20, "rows spooled")
            for i in range(300, 1000, 50):  # rows keep coming in the outage
                writer.submit([_row(j) for j in range(i, i + 50)])
                time.sleep(0.01)
            wait_until(lambda: writer.spooled == 900, 20, "every outage row spooled")
            assert writer.depth == 0
        wait_until(lambda: not writer.degraded and writer.spooled == 0, 30, "the replay")
    finally:
        writer.close()
    assert _logged(pg_url) == _expected(1000)  # nothing lost, nothing twice, in order
    assert writer.dropped == 0 and writer.replayed == 900
    assert sum(r.write_failures for r in reports) >= 1
    assert any(r.degraded and r.spooled for r in reports)
    assert not reports[-1].degraded and reports[-1].spooled == 0
    assert list((tmp_path / "spool").iterdir()) == []  # an empty spool leaves no file


def test_a_stop_in_an_outage_keeps_the_rows_for_the_next_writer(
    postgres: Any, pg_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = RequestLogWriter(pg_url, flush_interval_s=60, spool_dir=spool, instance="api-1")
    first.start()
    first.submit([_row(i) for i in range(50)])
    first.close()  # a graceful stop: written
    with postgres.down():
        second = RequestLogWriter(pg_url, flush_interval_s=60, spool_dir=spool, instance="api-1")
        second.start()
        second.submit([_row(i) for i in range(50, 500)])
        second.close()  # SIGTERM in the outage: the final flush fails, the rows spool
        assert second.degraded and second.dropped == 0
        assert spooled_rows(spool) == 450
    # The next writer on the folder (as after a restart) adopts the spool, replays it first.
    third = RequestLogWriter(pg_url, flush_interval_s=0.05, spool_dir=spool, instance="api-1")
    third.start()
    try:
        third.submit([_row(i) for i in range(500, 520)])
        wait_until(lambda: len(_logged(pg_url)) == 520, 30, "the replay")
    finally:
        third.close()
    assert _logged(pg_url) == _expected(520)
    assert spooled_rows(spool) == 0


def test_rows_queued_behind_a_stuck_write_are_spooled_at_close(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that hangs (here: a table another session holds locked, with the sink's
    2 s lock timeout lifted) must not take the rows queued behind it down with the
    process: close() spools them after its timeout."""
    from housing_mlops.store import postgres as pg

    monkeypatch.setattr(pg, "LOCK_TIMEOUT_MS", 60_000)
    create_log(pg_url)
    spool = tmp_path / "spool"
    writer = RequestLogWriter(pg_url, flush_interval_s=0.05, spool_dir=spool, instance="api-1")
    writer.start()
    with psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        writer.submit([_row(i) for i in range(10)])  # its COPY now waits for the lock
        wait_until(lambda: writer.depth == 0, 10, "the first batch to be taken")
        time.sleep(0.2)
        writer.submit([_row(i) for i in range(10, 60)])
        t0 = time.monotonic()
        writer.close(timeout=1.0)
        assert time.monotonic() - t0 < 5
        assert spooled_rows(spool) == 50
        locker.rollback()  # the lock goes: the stuck COPY of the first batch commits
    wait_until(lambda: len(_logged(pg_url)) == 10, 30, "the stuck batch")
    nxt = RequestLogWriter(pg_url, flush_interval_s=0.05, spool_dir=spool, instance="api-1")
    nxt.start()
    try:
        wait_until(lambda: len(_logged(pg_url)) == 60, 30, "the replay")
    finally:
        nxt.close()
    assert _logged(pg_url) == _expected(60)


def test_a_spool_error_after_the_outage_does_not_stop_the_writer(
    postgres: Any, pg_url: str, tmp_path: Path
) -> None:
    """A spool that cannot be trimmed after a replay (here another session holds its write
    lock past SQLite's 10 s busy timeout; a full disk fails the same call, which a test
    cannot make without root) must not end the writer thread: rows logged afterwards still
    reach the database. It used to die there, and every later row stayed in memory."""
    import sqlite3

    create_log(pg_url)
    spool = tmp_path / "spool"
    writer = RequestLogWriter(pg_url, flush_interval_s=0.05, spool_dir=spool, instance="api-1")
    writer.start()
    try:
        with postgres.down():
            writer.submit([_row(i) for i in range(100)])
            wait_until(lambda: writer.degraded and writer.spooled == 100, 20, "rows spooled")
            (path,) = spool.glob("*.db")
            locker = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # the spool's write lock, from outside
        try:
            # The replay writes the rows, then cannot delete them from the spool: the
            # delete gives up after SQLite's 10 s busy timeout. The writer must live on and
            # try again, which writes that batch once more (replay is at least once).
            wait_until(lambda: len(_logged(pg_url)) >= 100, 30, "the replay's write")
            wait_until(lambda: len(_logged(pg_url)) > 100, 40, "the writer's next attempt")
        finally:
            locker.rollback()
            locker.close()
        writer.submit([_row(i) for i in range(100, 150)])
        wait_until(
            lambda: {r[0] for r in _logged(pg_url)} == {r[0] for r in _expected(150)},
            20,
            "the rows logged after the spool error",
        )
        wait_until(lambda: writer.spooled == 0, 20, "the spool emptied")
    finally:
        writer.close()
    # Replay is at least once: the batch the spool could not forget may come twice.
    assert sorted(set(_logged(pg_url))) == _expected(150)
    assert spooled_rows(spool) == 0


def _refusing(url: str) -> None:
    """A constraint the rows whose request_id starts with ``bad`` break (as a column the
    database cannot take a value for would)."""
    create_log(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE requests ADD CONSTRAINT no_bad CHECK (request_id NOT LIKE 'bad%')"
        )


def _bad(i: int) -> LoggedRequest:
    return dataclasses.replace(_row(i), request_id=f"bad-{i}")


def _refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "the database refuses" in r.getMessage()]


def test_rows_the_database_refuses_are_set_aside_and_the_rest_written(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two rows of a batch break a constraint: the other 98 are written in order, the two
    are dropped, counted and named in one error line, and the writer goes on (no outage,
    no spool). They used to be taken for an outage: the whole batch went to the spool and
    was replayed, and refused, every few seconds for ever."""
    _refusing(pg_url)
    reports: list[FlushReport] = []
    writer = RequestLogWriter(
        pg_url,
        flush_interval_s=0.05,
        spool_dir=tmp_path / "spool",
        instance="api-1",
        on_flush=reports.append,
    )
    writer.start()
    try:
        writer.submit([_bad(i) if i in (17, 60) else _row(i) for i in range(100)])
        wait_until(lambda: len(_logged(pg_url)) == 98, 20, "the good rows")
        writer.submit([_row(i) for i in range(100, 120)])
        wait_until(lambda: len(_logged(pg_url)) == 118, 20, "the rows after them")
    finally:
        writer.close()
    good = [r for r in _expected(120) if r[0] not in ("r000017", "r000060")]
    assert _logged(pg_url) == good
    assert writer.dropped == 2 and sum(r.dropped for r in reports) == 2
    assert writer.write_failures == 0 and not writer.degraded and writer.spooled == 0
    (line,) = _refused_lines(caplog)
    assert line.startswith("request log: 2 row(s) dropped, the database refuses them")
    assert "no_bad" in line and "bad-17, bad-60" in line and "\n" not in line


def test_a_refused_row_in_the_spool_does_not_block_the_replay(
    postgres: Any, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row the database refuses among rows spooled in an outage: once it is back, the
    replay sets that row aside and replays the others, in order; it used to stop at that
    batch, and retry it, for ever."""
    _refusing(pg_url)
    writer = RequestLogWriter(
        pg_url, flush_interval_s=0.05, spool_dir=tmp_path / "spool", instance="api-1"
    )
    writer.start()
    try:
        with postgres.down():
            writer.submit([_bad(i) if i == 5 else _row(i) for i in range(50)])
            wait_until(lambda: writer.degraded and writer.spooled == 50, 20, "rows spooled")
        wait_until(lambda: not writer.degraded and writer.spooled == 0, 30, "the replay")
    finally:
        writer.close()
    assert _logged(pg_url) == [r for r in _expected(50) if r[0] != "r000005"]
    assert writer.dropped == 1 and writer.replayed == 49
    assert len(_refused_lines(caplog)) == 1
    assert spooled_rows(tmp_path / "spool") == 0
