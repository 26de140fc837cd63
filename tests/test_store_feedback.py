"""``store.apply_feedback`` on a real SQLite file and a real PostgreSQL database: what each
label becomes (applied / unknown / duplicate / invalid), all-or-nothing, one transaction,
and the labelled rows live quality is computed from."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import answered_row as _answered
from helpers import write_log_rows as write_rows

from housing_mlops import store
from housing_mlops.store import LoggedRequest


def _rejected(request_id: str) -> LoggedRequest:
    return LoggedRequest(
        ts=999.0,
        request_id=request_id,
        row_index=0,
        model_name="m",
        model_version=None,
        features=None,
        prediction=None,
        latency_ms=1.0,
        status=422,
        error="bad",
    )


def feedback_rows(location: Any) -> list[tuple[Any, ...]]:
    conn = store.open_readonly(location)
    assert conn is not None
    try:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT request_id, row_index, actual, source FROM feedback ORDER BY id"
            ).fetchall()
        ]
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A request log on either backend with: a single house "a", a batch "b" of 3 rows,
    a rejected request "bad" (status 422) and "c" already labelled."""
    location: Any = (
        tmp_path / "requests.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    write_rows(
        location,
        [
            _answered("a"),
            _answered("b", 0),
            _answered("b", 1),
            _answered("b", 2),
            _answered("c"),
            _rejected("bad"),
        ],
    )
    first = store.apply_feedback(location, [("c", 0, 3.0)], source="seed", all_or_nothing=True)
    assert first.applied == 1
    return location


def test_every_label_is_counted_by_reason_and_the_good_ones_applied(log: Any) -> None:
    items = [
        ("a", 0, 1.5),  # applied
        ("b", 2, 4.25),  # applied: a batch row
        ("b", 7, 1.0),  # unknown: no such row of b
        ("bad", 0, 1.0),  # unknown: the request was rejected, nothing was predicted
        ("zzz", 0, 1.0),  # unknown id
        ("c", 0, 3.5),  # duplicate: labelled already
        ("a", 0, 1.6),  # duplicate: twice in this batch
        ("b", 1, math.nan),  # invalid
        ("b", 1, math.inf),  # invalid
        ("", 0, 1.0),  # invalid
        ("b", -1, 1.0),  # invalid
        ("b", 2**63, 1.0),  # invalid: would overflow the column
    ]
    result = store.apply_feedback(log, items, source="api", all_or_nothing=False)
    assert (result.applied, result.unknown, result.duplicate, result.invalid) == (2, 3, 2, 5)
    assert result.received == len(items) and not result.rejected
    assert feedback_rows(log) == [
        ("c", 0, 3.0, "seed"),
        ("a", 0, 1.5, "api"),
        ("b", 2, 4.25, "api"),
    ]
    unknown = result.examples["unknown"]
    assert [(e["position"], e["request_id"]) for e in unknown] == [(2, "b"), (3, "bad"), (4, "zzz")]
    assert {e["reason"] for e in result.examples["duplicate"]} == {
        "this row already has a label",
        "labelled twice in this batch",
    }
    reasons = [e["reason"] for e in result.examples["invalid"]]
    assert reasons == [
        "actual must be a finite number",
        "actual must be a finite number",
        "request_id must be a non-empty string",
        "row_index must be an integer >= 0",
        "row_index must be at most 2147483647",
    ]


def test_all_or_nothing_applies_nothing_when_one_label_is_bad(log: Any) -> None:
    items = [("a", 0, 1.5), ("b", 0, 2.0), ("b", 1, 2.5), ("nope", 0, 1.0)]
    result = store.apply_feedback(log, items, source="file.csv", all_or_nothing=True)
    assert result.rejected and result.applied == 0 and result.unknown == 1
    assert feedback_rows(log) == [("c", 0, 3.0, "seed")]
    # The same labels without the bad one: all applied; a second time: all duplicates.
    good = items[:3]
    assert store.apply_feedback(log, good, source="f", all_or_nothing=True).applied == 3
    again = store.apply_feedback(log, good, source="f", all_or_nothing=True)
    assert again.rejected and again.duplicate == 3 and again.applied == 0
    assert len(feedback_rows(log)) == 4


def test_labelled_rows_join_each_label_to_its_request_row(log: Any) -> None:
    store.apply_feedback(log, [("b", 1, 9.5), ("a", 0, 1.25)], source="api", all_or_nothing=True)
    conn = store.open_readonly(log)
    try:
        rows = store.labelled_rows(conn)
    finally:
        assert conn is not None
        conn.close()
    assert sorted(zip(rows.actual.tolist(), rows.prediction.tolist(), strict=True)) == [
        (1.25, 2.0),
        (3.0, 2.0),
        (9.5, 2.0),
    ]


def test_a_log_that_does_not_exist_labels_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = store.apply_feedback(missing, [("a", 0, 1.0)], source="api", all_or_nothing=False)
    assert (result.applied, result.unknown) == (0, 1)
    assert not missing.exists()  # never created by a label


def test_a_database_that_cannot_be_reached_or_written_raises_and_applies_nothing(
    tmp_path: Path, postgres: Any, pg_url: str
) -> None:
    from housing_mlops.errors import ConfigError

    write_rows(pg_url, [_answered("a")])
    with postgres.down(), pytest.raises(ConfigError) as caught:
        store.apply_feedback(pg_url, [("a", 0, 1.0)], source="api", all_or_nothing=False)
    assert "cannot connect to the request log" in str(caught.value)
    assert postgres.password not in str(caught.value)
    assert feedback_rows(pg_url) == []

    # SQLite: a log locked by another writer for longer than the busy timeout.
    path = tmp_path / "requests.db"
    write_rows(path, [_answered("a")])
    import sqlite3

    conn = store.open_log(path, create=False)
    assert conn is not None
    conn.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(store.LogUnavailable, match="locked"):
            store.apply_feedback(conn, [("a", 0, 1.0)], source="api", all_or_nothing=False)
        conn.close()
    finally:
        holder.rollback()
        holder.close()
    assert feedback_rows(path) == []


def test_100k_labels_in_one_call(log: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """No query per label: 100,000 labels go through the temporary table (the time is
    printed, not asserted: `make bench-feedback` measures it)."""
    n = 100_000
    write_rows(log, [_answered(f"r{i}", ts=2000.0 + i) for i in range(n)])
    items = [(f"r{i}", 0, 1.0 + (i % 5)) for i in range(n)]
    started = time.perf_counter()
    result = store.apply_feedback(log, items, source="bulk", all_or_nothing=True)
    seconds = time.perf_counter() - started
    assert result.applied == n and result.bad == 0
    with capsys.disabled():
        print(f"\n100,000 labels applied in {seconds:.2f} s ({type(log).__name__} log)")
    conn = store.open_readonly(log)
    assert conn is not None
    try:
        count = conn.execute("SELECT count(*) FROM feedback").fetchone()
        assert count is not None and count[0] == n + 1
    finally:
        conn.close()


def test_writers_labelling_the_same_rows_at_once_apply_each_label_once(log: Any) -> None:
    """Four writers send the same 2,000 labels at the same moment: each row is labelled
    once, the others count it as a duplicate, nobody fails."""
    import threading

    n = 2000
    write_rows(log, [_answered(f"w{i}", ts=3000.0 + i) for i in range(n)])
    items = [(f"w{i}", 0, float(i)) for i in range(n)]
    results: list[Any] = []
    start = threading.Barrier(4)

    def send() -> None:
        start.wait()
        results.append(store.apply_feedback(log, items, source="race", all_or_nothing=False))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert sum(r.applied for r in results) == n
    assert sum(r.duplicate for r in results) == 3 * n
    assert all(r.unknown == 0 and r.invalid == 0 for r in results)
    assert len(feedback_rows(log)) == n + 1
