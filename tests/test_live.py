"""Live quality: the pure statistics on small arrays, and ``live_quality`` on a real
request log labelled through the store, scored by a real registered model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import answered_row as _answered
from helpers import copy_store, trained_store
from helpers import write_log_rows as write_rows
from synthetic import make_frame

from housing_mlops import live, registry, store
from housing_mlops.columns import FEATURES, TARGET
from housing_mlops.store import LoggedRequest


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread() -> Iterator[None]:
    import lightgbm  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# ------------------------------------------------------------------------- statistics
def test_regression_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(3)
    y = rng.uniform(0.5, 5, 400)
    p = y + rng.normal(0, 0.4, 400)
    got = live.regression_metrics(y, p)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, p), rel=1e-12)
    assert live.regression_metrics(np.array([]), np.array([])) == {
        "rmse": None,
        "mae": None,
        "r2": None,
    }
    assert live.regression_metrics(np.ones(3), np.zeros(3))["r2"] is None  # constant truth


def test_bootstrap_interval_is_reproducible_and_narrows_with_more_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0.5, 5, 2000)
    p = y + rng.normal(0, 0.5, 2000)
    rmse = live.regression_metrics(y, p)["rmse"]
    small = live.bootstrap_rmse_ci(y[:100], p[:100], samples=500, confidence=0.95)
    large = live.bootstrap_rmse_ci(y, p, samples=500, confidence=0.95)
    assert small is not None and large is not None and rmse is not None
    assert large[0] < rmse < large[1]
    assert (large[1] - large[0]) < (small[1] - small[0]) / 2
    assert live.bootstrap_rmse_ci(y, p, samples=500, confidence=0.95) == large  # seeded
    assert live.bootstrap_rmse_ci(y, p, samples=500, confidence=0.95, seed=1) != large
    assert live.bootstrap_rmse_ci(y[:1], p[:1], samples=500, confidence=0.95) is None


def test_paired_difference_sees_a_small_gain_that_unpaired_rows_would_miss() -> None:
    """Both models share most of their error (the row's own noise): pairing cancels it."""
    rng = np.random.default_rng(1)
    n = 300
    y = rng.uniform(0.5, 5, n)
    shared = rng.normal(0, 0.6, n)
    champion = y + shared + rng.normal(0, 0.25, n)  # RMSE about 0.65
    challenger = y + shared + rng.normal(0, 0.05, n)  # about 0.60
    paired = live.paired_difference(y, champion, challenger, samples=1000, confidence=0.95)
    assert paired["rows"] == n and paired["difference"] < 0
    assert paired["difference"] == pytest.approx(
        paired["challenger_rmse"] - paired["champion_rmse"]
    )
    assert paired["difference_ci"][1] < 0  # confidently better
    half = n // 2
    unpaired = live.unpaired_difference(
        y[:half], champion[:half], y[half:], challenger[half:], samples=1000, confidence=0.95
    )
    assert unpaired["difference_ci"][0] < 0 < unpaired["difference_ci"][1]  # cannot tell

    same = live.paired_difference(y, champion, champion, samples=200, confidence=0.95)
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0]
    worse = live.paired_difference(y, challenger, champion, samples=1000, confidence=0.95)
    assert worse["difference_ci"][0] > 0


# ----------------------------------------------------------------- from the request log
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry with versions 1 and 2, and houses none of them was trained on."""
    base = trained_store(tmp_path_factory)[0]
    settings = copy_store(base, tmp_path_factory.mktemp("live"))
    models = {
        v: registry.load_model(settings, registry.resolve(settings, version=v)) for v in (1, 2)
    }
    frame = make_frame(500, seed=11)
    return {"settings": settings, "models": models, "frame": frame}


def _log_answers(
    location: Any,
    served: dict[str, Any],
    rows: range,
    *,
    version: int,
    role: str,
    batch: int = 5,
    **shadow: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Log the model's answers for ``rows`` of the frame (in batches: request ``q<i>``
    rows 0 to batch-1), label them and return (predictions, true values) in row order."""
    frame = served["frame"].iloc[list(rows)]
    X, y = frame[FEATURES], frame[TARGET].to_numpy()
    pred = served["models"][version].predict(X)
    shadow_version = shadow.get("shadow")
    shadow_pred = (
        served["models"][shadow_version].predict(X) if shadow_version is not None else None
    )
    logged = [
        LoggedRequest(
            ts=5000.0 + i,
            request_id=f"q{i // batch}",
            row_index=i % batch,
            model_name="test-housing",
            model_version=str(version),
            features=[float(v) for v in X.iloc[k]],
            prediction=float(pred[k]),
            latency_ms=2.0,
            status=200,
            role=role,
            shadow_version=None if shadow_version is None else str(shadow_version),
            shadow_prediction=None if shadow_pred is None else float(shadow_pred[k]),
        )
        for k, i in enumerate(rows)
    ]
    write_rows(location, logged)
    labels = [(f"q{i // batch}", i % batch, float(y[k])) for k, i in enumerate(rows)]
    result = store.apply_feedback(location, labels, source="t", all_or_nothing=True)
    assert result.applied == len(labels)
    return pred, y


def test_live_rmse_of_a_version_equals_its_offline_rmse_on_the_same_rows(
    served: dict[str, Any], tmp_path: Path
) -> None:
    from housing_mlops.evaluate import compute_metrics

    settings = served["settings"]
    location = tmp_path / "requests.db"
    settings = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"request_log": location})}
    )
    _log_answers(location, served, range(0, 300), version=1, role="champion", shadow=2)
    # Unlabelled answers and rejected requests do not count.
    write_rows(location, [_answered("nolabel", version="1", prediction=99.0)])

    result = live.live_quality(settings)
    frame = served["frame"].iloc[:300]
    X, y = frame[FEATURES], frame[TARGET]
    offline = {v: compute_metrics(y, served["models"][v].predict(X)) for v in (1, 2)}
    assert result["labelled_rows"] == 300
    by_key = {(m["model_version"], m["role"], m["scored"]): m for m in result["models"]}
    assert set(by_key) == {("1", "champion", "answered"), ("2", "challenger", "shadow")}
    for key, version in (
        (("1", "champion", "answered"), 1),
        (("2", "challenger", "shadow"), 2),
    ):
        m = by_key[key]
        assert m["rows"] == 300
        for name in ("rmse", "mae", "r2"):
            assert m[name] == pytest.approx(offline[version][name], rel=1e-9)
        low, high = m["rmse_ci"]
        assert low < m["rmse"] < high
    (paired,) = result["comparisons"]
    assert paired["kind"] == "paired" and paired["rows"] == 300
    assert (paired["champion_version"], paired["challenger_version"]) == ("1", "2")
    assert paired["champion_rmse"] == pytest.approx(offline[1]["rmse"], rel=1e-9)
    assert paired["challenger_rmse"] == pytest.approx(offline[2]["rmse"], rel=1e-9)

    # --since: only requests in the window (ts 5000 + row).
    late = live.live_quality(settings, "1970-01-01T01:26:40+00:00")  # ts 5200
    assert late["labelled_rows"] == 100


def test_canary_rows_are_compared_with_the_champion_rows_of_the_same_period(
    served: dict[str, Any], tmp_path: Path
) -> None:
    location = tmp_path / "requests.db"
    # A champion answer from before the canary started is left out of the comparison.
    write_rows(location, [_answered("early", ts=10.0, version="1", prediction=50.0)])
    store.apply_feedback(location, [("early", 0, 1.0)], source="t", all_or_nothing=True)
    # The canary answers every other request (ts 5001, 5003, ... 5299).
    p1, y1 = _log_answers(location, served, range(0, 300, 2), version=1, role="champion", batch=1)
    p2, y2 = _log_answers(location, served, range(1, 300, 2), version=2, role="challenger", batch=1)
    conn = store.open_readonly(location)
    assert conn is not None
    rows = store.labelled_rows(conn)
    conn.close()
    (canary,) = live.compare(rows, "1", "2", samples=200, confidence=0.9)
    assert canary["kind"] == "unpaired"
    assert (canary["rows"], canary["champion_rows"]) == (150, 149)  # ts 5000 is before 5001
    assert canary["challenger_rmse"] == pytest.approx(
        float(np.sqrt(np.mean((y2 - p2) ** 2))), rel=1e-9
    )
    assert canary["champion_rmse"] == pytest.approx(
        float(np.sqrt(np.mean((y1[1:] - p1[1:]) ** 2))), rel=1e-9
    )
    low, high = canary["difference_ci"]
    assert low < canary["difference"] < high
