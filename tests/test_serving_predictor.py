"""The fast predict path equals ``pipeline.predict(DataFrame)`` for every estimator we
build; micro-batching groups concurrent calls without mixing up answers; the request-log
writer flushes on its interval and at close, and drops (and counts) rows when full."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic import make_frame

from housing_mlops.config import CandidateConfig, FeaturesConfig
from housing_mlops.drift import build_profile
from housing_mlops.features import FEATURES
from housing_mlops.models import build_pipeline
from housing_mlops.serving.predictor import (
    MicroBatcher,
    ModelMeta,
    build_loaded_model,
    choose_predict,
)
from housing_mlops.store import LOG_COLUMNS, RequestLogWriter

FEATURES_CFG = FeaturesConfig(knn_neighbors=[4, 8], knn_folds=3, profile_sample_size=100)

CANDIDATES = {
    "ridge": {"alpha": 1.0},
    "random_forest": {"n_estimators": 10, "min_samples_leaf": 5},
    "hist_gradient_boosting": {"max_iter": 20},
    "lightgbm": {"n_estimators": 30, "num_leaves": 15},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """OpenMP pools spin on a busy 2-core machine: fit and predict on one thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any, dict[str, Any]]:
    frame = make_frame(400, seed=3)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    profile = build_profile({c: X[c].to_numpy() for c in FEATURES}, 100)
    return X, y, profile


@pytest.mark.parametrize("estimator", sorted(CANDIDATES))
def test_fast_path_equals_pipeline_predict(
    data: tuple[Any, Any, dict[str, Any]], estimator: str
) -> None:
    X, y, profile = data
    cand = CandidateConfig(name="c", estimator=estimator, params=CANDIDATES[estimator])
    pipeline = build_pipeline(cand, FEATURES_CFG, 42, n_jobs=1).fit(X, y)
    predict, fast = choose_predict(pipeline, profile, threads=1)
    assert fast, f"{estimator}: the fast path should be used"
    expected = pipeline.predict(X)
    A = X.to_numpy(dtype=np.float64)
    np.testing.assert_allclose(predict(A), expected, rtol=1e-12, atol=1e-12)
    singles = np.concatenate([predict(A[i : i + 1]) for i in range(25)])
    np.testing.assert_allclose(singles, expected[:25], rtol=1e-12, atol=1e-12)


def test_vectorised_hist_gradient_boosting_is_bitwise_equal() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from housing_mlops.serving.predictor import compile_hist_gradient_boosting

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = X[:, 0] * 2 + np.sin(X[:, 1]) + rng.normal(0, 0.1, 300)
    X[::5, 2] = np.nan  # NaN in training: splits learn where missing values go
    est = HistGradientBoostingRegressor(max_iter=40, random_state=0).fit(X, y)
    walk = compile_hist_gradient_boosting(est)
    assert walk is not None
    Xq = rng.normal(size=(50, 5))
    Xq[::3, 2] = np.nan
    Xq[::4, 0] = np.nan
    assert np.array_equal(walk(Xq), est.predict(Xq))
    assert np.array_equal(walk(Xq[:1]), est.predict(Xq[:1]))


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_a_disagreeing_fast_path_falls_back_to_the_pipeline(
    data: tuple[Any, Any, dict[str, Any]],
) -> None:
    """A pipeline whose steps behave differently on numpy than on a DataFrame."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y, profile = data

    def reorder(frame: Any) -> Any:
        # On a DataFrame this selects by name (reversed); on numpy it does nothing.
        return frame[FEATURES[::-1]] if hasattr(frame, "columns") else frame

    pipeline = Pipeline(
        [("features", FunctionTransformer(reorder)), ("model", LinearRegression())]
    ).fit(X, y)
    predict, fast = choose_predict(pipeline, profile)
    assert not fast
    np.testing.assert_allclose(
        predict(X.to_numpy()[:10]), pipeline.predict(X.iloc[:10]), rtol=1e-12
    )


def test_micro_batching_groups_concurrent_calls(data: tuple[Any, Any, dict[str, Any]]) -> None:
    X, y, profile = data
    cand = CandidateConfig(name="c", estimator="hist_gradient_boosting", params={"max_iter": 10})
    pipeline = build_pipeline(cand, FEATURES_CFG, 42, n_jobs=1).fit(X, y)
    model = build_loaded_model(pipeline, ModelMeta("m", "7"), profile)
    expected = pipeline.predict(X.iloc[:60])
    A = X.to_numpy(dtype=np.float64)

    async def main() -> tuple[list[Any], MicroBatcher]:
        batcher = MicroBatcher(lambda: model, window_s=0.005, max_rows=16)
        batcher.start()
        try:
            # 40 single rows and one 20-row request at once.
            calls = [batcher.predict(A[i : i + 1]) for i in range(40)]
            calls.append(batcher.predict(A[40:60]))
            return list(await asyncio.gather(*calls)), batcher
        finally:
            batcher.close()

    results, batcher = asyncio.run(main())
    got = np.concatenate([preds for preds, _ in results])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert all(used.meta.version == "7" for _, used in results)
    assert batcher.rows == 60
    # Grouped (16 rows at most, the 20-row request alone), not one call per request.
    assert 4 <= batcher.batches <= 8


# ----------------------------------------------------------------- request log writer
def _row(i: int) -> tuple[Any, ...]:
    return (time.time(), f"r{i}", 0, "m", "1", *[float(i)] * 8, 1.5, 0.3, 200, None)


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("select count(*) from requests").fetchone()[0])
    finally:
        conn.close()


def test_writer_flushes_within_its_interval(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    flushes: list[tuple[int, int, int, float]] = []
    writer = RequestLogWriter(db, flush_interval_s=0.1, on_flush=lambda *a: flushes.append(a))
    writer.start()
    try:
        assert len(LOG_COLUMNS) == len(_row(0))
        writer.submit([_row(i) for i in range(5)])
        deadline = time.time() + 5
        while _count(db) < 5:
            assert time.time() < deadline, "rows were not flushed on the interval"
            time.sleep(0.02)
        assert sum(f[0] for f in flushes) == 5
        assert flushes[-1][3] > 0  # last flush time
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


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    flushes: list[tuple[int, int, int, float]] = []
    writer = RequestLogWriter(
        db, flush_interval_s=60, max_queue=10, on_flush=lambda *a: flushes.append(a)
    )
    writer.start()
    assert writer.submit([_row(i) for i in range(8)]) == 8
    assert writer.submit([_row(i) for i in range(8)]) == 2
    assert writer.depth == 10
    writer.close()
    assert _count(db) == 10
    assert writer.dropped == 6
    assert sum(f[1] for f in flushes) == 6


KILL_SCRIPT = """
import sys, time
from housing_mlops.store import RequestLogWriter
writer = RequestLogWriter(sys.argv[1], flush_interval_s=0.05)
writer.start()
i = 0
while True:
    writer.submit([(time.time(), f"r{i}", 0, "m", "1", *[1.0] * 8, 1.5, 0.3, 200, None)] * 50)
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
