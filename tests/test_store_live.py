"""The store's champion-vs-challenger readers: ``role_stats`` and ``live_error_sums``.

A log of a champion (v1) shadowed by a challenger (v2) that also answers a canary share
(``helpers.champion_challenger_rows``), with true values for some rows added by plain SQL
(``helpers.add_feedback``, a stand-in for POST /feedback). What a user notices: the report
and the service's gauges count the right rows per role and version, a version's live RMSE
from the database aggregates equals the RMSE computed on the labelled rows themselves, and
a SQLite log and a PostgreSQL log of the same traffic give the same answers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import add_feedback, champion_challenger_rows

from housing_mlops import store
from housing_mlops.report import live_quality

N = 600  # requests: 360 shadowed champion, 120 canary, 60 two-row batches, 60 rejected


def _write(where: Path | str, rows: list[Any]) -> None:
    sink = store.open_sink(where)
    try:
        sink.write([store.row_values(r) for r in rows])
    finally:
        sink.close()


def _labels(rows: list[Any]) -> list[tuple[str, int, float]]:
    """Every third answered row gets a true value 0.3 above what the client got."""
    answered = [r for r in rows if r.status == 200]
    return [(r.request_id, r.row_index, r.prediction + 0.3) for r in answered[::3]]


def _fill(where: Path | str) -> list[Any]:
    rows = champion_challenger_rows(N)
    _write(where, rows)
    add_feedback(where, _labels(rows))
    return rows


def _read(
    where: Path | str, since_ts: float | None = None, until_ts: float | None = None
) -> tuple[dict[str, Any], list[dict], Any]:
    db = store.open_readonly(where)
    assert db is not None
    try:
        return (
            store.role_stats(db, since_ts, until_ts),
            store.live_error_sums(db, since_ts, until_ts),
            store.labelled_rows(db, since_ts, until_ts),
        )
    finally:
        db.close()


def test_role_stats_count_traffic_latency_and_divergence_per_role(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    rows = _fill(path)
    stats, _, _ = _read(path)
    by_key = {(v["role"], v["model_version"]): v for v in stats["versions"]}
    assert set(by_key) == {("champion", "1"), ("challenger", "2")}
    champion, challenger = by_key["champion", "1"], by_key["challenger", "2"]
    # Rows the client got from each model; a batch's two rows are one request.
    assert (champion["rows"], champion["requests"]) == (360 + 120, 360 + 60)
    assert (challenger["rows"], challenger["requests"]) == (120, 120)
    assert [v["model_version"] for v in stats["versions"]] == ["1", "2"]  # most rows first
    # Per-request latency: the canary's 4..6 ms, the champion's 2..6 ms and 20 ms batches.
    assert challenger["latency_ms"]["p50"] == 5.0 and challenger["latency_ms"]["p99"] <= 6.0
    assert champion["latency_ms"]["p99"] == 20.0 and champion["latency_ms"]["requests"] == 420
    # Shadow divergence: |0.1 * (i % 5)| over the shadowed rows, exactly.
    (shadow,) = stats["shadow"]
    assert (shadow["model_version"], shadow["shadow_version"], shadow["rows"]) == ("1", "2", 360)
    diffs = [
        abs(r.prediction - r.shadow_prediction) for r in rows if r.shadow_prediction is not None
    ]
    assert shadow["mean_abs_diff"] == pytest.approx(float(np.mean(diffs)), rel=1e-12)
    assert shadow["p95_abs_diff"] == pytest.approx(float(np.percentile(diffs, 95)))
    # A window: only the first 100 requests.
    early, _, _ = _read(path, since_ts=0.0, until_ts=1_700_000_000.0 + 60 * 100)
    assert sum(v["rows"] for v in early["versions"]) == 60 + 20 + 20


def test_live_error_sums_give_the_rmse_of_the_labelled_rows(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    _fill(path)
    _, sums, labelled = _read(path)
    from_db = {
        (s["role"], s["model_version"]): (s["rows"], math.sqrt(s["sse"] / s["rows"])) for s in sums
    }
    from_rows = {
        (q["role"], q["model_version"]): (q["rows"], q["rmse"])
        for q in live_quality.per_version(labelled)
    }
    assert set(from_db) == {("champion", "1"), ("challenger", "2")}
    for key, (n, rmse) in from_rows.items():
        assert from_db[key][0] == n
        assert from_db[key][1] == pytest.approx(rmse, rel=1e-12)
    # The champion answered each labelled row 0.3 below its label: RMSE 0.3 exactly.
    assert from_db["champion", "1"][1] == pytest.approx(0.3)
    # The challenger counts its canary rows and the rows it scored in shadow.
    canary = sum(1 for r in labelled.role if r == "challenger")
    shadowed = int(np.isfinite(labelled.shadow_prediction).sum())
    assert from_db["challenger", "2"][0] == canary + shadowed > canary > 0


def test_an_old_log_without_labels_or_roles_gives_nothing_to_compare(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    rows = champion_challenger_rows(20)
    for r in rows:  # as logged before roles existed
        r.role = r.shadow_version = r.shadow_prediction = None
    _write(path, rows)
    stats, sums, labelled = _read(path)
    assert [(v["role"], v["model_version"]) for v in stats["versions"]] == [
        ("champion", "1"),
        ("champion", "2"),
    ]
    assert stats["shadow"] == [] and sums == [] and len(labelled) == 0
    assert store.role_stats(None) == {"versions": [], "shadow": []}
    assert store.live_error_sums(None) == []


def test_a_log_from_before_roles_never_opened_for_writing_reads_as_the_champions(
    tmp_path: Path,
) -> None:
    """Reading never migrates: a schema-1 log (no role or shadow columns, no feedback
    table) gives its traffic as the champion's, and nothing to compare."""
    import sqlite3

    path = tmp_path / "requests.db"
    old = sqlite3.connect(path)
    columns = ", ".join(
        f'"{c}" {kind}'
        for c, kind in store.REQUEST_COLUMNS.items()
        if c not in ("instance", "role", "shadow_version", "shadow_prediction")
    )
    old.execute(f"CREATE TABLE requests ({columns})")
    old.executemany(
        "INSERT INTO requests (ts, request_id, row_index, model_version, prediction, "
        "latency_ms, status) VALUES (?, ?, 0, '4', 1.0, ?, 200)",
        [(float(i), f"r{i}", float(i)) for i in range(1, 11)],
    )
    old.commit()
    old.close()
    stats, sums, labelled = _read(path)
    assert [(v["role"], v["model_version"], v["rows"]) for v in stats["versions"]] == [
        ("champion", "4", 10)
    ]
    assert stats["versions"][0]["latency_ms"]["p50"] == 5.5
    assert stats["shadow"] == [] and sums == [] and len(labelled) == 0


@pytest.mark.slow
def test_postgresql_and_sqlite_give_the_same_answers(tmp_path: Path, pg_url: str) -> None:
    answers = []
    for where in (tmp_path / "requests.db", pg_url):
        _fill(where)
        answers.append(_read(where))
    (stats1, sums1, rows1), (stats2, sums2, rows2) = answers
    assert stats1["versions"] == stats2["versions"]
    assert len(stats1["shadow"]) == len(stats2["shadow"]) == 1
    for a, b in zip(stats1["shadow"], stats2["shadow"], strict=True):
        assert a["rows"] == b["rows"] and a["p95_abs_diff"] == pytest.approx(b["p95_abs_diff"])
        assert a["mean_abs_diff"] == pytest.approx(b["mean_abs_diff"], rel=1e-12)
    assert [(s["role"], s["model_version"], s["rows"]) for s in sums1] == [
        (s["role"], s["model_version"], s["rows"]) for s in sums2
    ]
    for a, b in zip(sums1, sums2, strict=True):
        assert a["sse"] == pytest.approx(b["sse"], rel=1e-12)
        assert a["sae"] == pytest.approx(b["sae"], rel=1e-12)
    assert len(rows1) == len(rows2) > 0
    assert rows1.prediction.tolist() == rows2.prediction.tolist()
    assert live_quality.per_version(rows1) == live_quality.per_version(rows2)
