"""The fast predict path equals ``pipeline.predict(DataFrame)`` for every estimator we
build, and is not used with library versions outside its tested range; micro-batching
groups concurrent calls without mixing up answers."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from synthetic import make_frame

from housing_mlops.config import CandidateConfig, FeaturesConfig
from housing_mlops.drift import build_profile
from housing_mlops.features import FEATURES
from housing_mlops.inference.loaded_model import ModelMeta, build_loaded_model, choose_predict
from housing_mlops.models import build_pipeline
from housing_mlops.serving.batching import MicroBatcher

FEATURES_CFG = FeaturesConfig(knn_neighbors=[4, 8], knn_folds=3, profile_sample_size=100)

CANDIDATES = {
    "ridge": {"alpha": 1.0},
    "random_forest": {"n_estimators": 10, "min_samples_leaf": 5},
    "hist_gradient_boosting": {"max_iter": 20},
    "lightgbm": {"n_estimators": 30, "num_leaves": 15},
}
# The default champion's loss (configs/default.yaml): the booster's raw score is still the
# prediction, so the fast path must serve it too.
HUBER = {"n_estimators": 30, "num_leaves": 15, "objective": "huber", "alpha": 0.6}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any, dict[str, Any]]:
    frame = make_frame(400, seed=3)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    profile = build_profile({c: X[c].to_numpy() for c in FEATURES}, 100)
    return X, y, profile


@pytest.mark.parametrize(
    ("estimator", "params"),
    [*((e, CANDIDATES[e]) for e in sorted(CANDIDATES)), ("lightgbm", HUBER)],
)
def test_fast_path_equals_pipeline_predict(
    data: tuple[Any, Any, dict[str, Any]], estimator: str, params: dict[str, Any]
) -> None:
    X, y, profile = data
    cand = CandidateConfig(name="c", estimator=estimator, params=params)
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

    from housing_mlops.inference.loaded_model import compile_hist_gradient_boosting

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


def _small_model(data: tuple[Any, Any, dict[str, Any]]) -> tuple[Any, np.ndarray, np.ndarray]:
    """A 10-iteration hist_gb served as version 7, its pipeline's predictions of the first
    60 rows, and the rows as an array."""
    X, y, profile = data
    cand = CandidateConfig(name="c", estimator="hist_gradient_boosting", params={"max_iter": 10})
    pipeline = build_pipeline(cand, FEATURES_CFG, 42, n_jobs=1).fit(X, y)
    model = build_loaded_model(pipeline, ModelMeta("m", "7"), profile)
    return model, pipeline.predict(X.iloc[:60]), X.to_numpy(dtype=np.float64)


def test_micro_batching_groups_concurrent_calls(data: tuple[Any, Any, dict[str, Any]]) -> None:
    model, expected, A = _small_model(data)

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


def test_small_batches_run_on_the_event_loop_big_ones_on_the_thread(
    data: tuple[Any, Any, dict[str, Any]],
) -> None:
    """Window 0 gathers the requests of one event-loop turn; a batch of at most
    ``inline_rows`` rows is predicted on the loop's own thread, a bigger one on the
    predictor thread, with the same answers either way."""
    import threading

    model, expected, A = _small_model(data)
    threads: list[tuple[int, int]] = []  # (rows, thread id) of every predict call
    fast = model.predict

    def recording_predict(rows: np.ndarray) -> np.ndarray:
        threads.append((rows.shape[0], threading.get_ident()))
        return fast(rows)

    model.predict = recording_predict

    async def main() -> list[Any]:
        batcher = MicroBatcher(lambda: model, window_s=0, max_rows=64, inline_rows=16)
        capped = MicroBatcher(lambda: model, window_s=0, max_rows=4, inline_rows=4)
        batcher.start()
        try:
            # 10 single rows in one turn: one inline batch; then 50 rows at once: the thread.
            small = await asyncio.gather(*(batcher.predict(A[i : i + 1]) for i in range(10)))
            big = await batcher.predict(A[10:60])
            # 10 rows in one turn with at most 4 a batch: 4, 4, then the 2 left, all inline.
            again = await asyncio.gather(*(capped.predict(A[i : i + 1]) for i in range(10)))
            return [*small, big, *again]
        finally:
            batcher.close()
            capped.close()

    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    results = asyncio.run(main())
    got = np.concatenate([preds for preds, _ in results])
    np.testing.assert_allclose(got[:60], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[60:], expected[:10], rtol=1e-12, atol=1e-12)
    assert threads[0] == (10, loop_thread)  # the ten singles together, on the loop
    assert threads[1][0] == 50
    assert threads[1][1] != loop_thread
    assert threads[2:] == [(4, loop_thread), (4, loop_thread), (2, loop_thread)]


# ------------------------------------------------------------ tested library versions
@pytest.mark.parametrize(
    ("estimator", "package", "version"),
    [
        ("hist_gradient_boosting", "scikit-learn", "1.99.0"),
        ("hist_gradient_boosting", "scikit-learn", "1.4.2"),
        ("ridge", "scikit-learn", "2.0.0"),
        ("lightgbm", "lightgbm", "5.0.0"),
        ("lightgbm", "lightgbm", "4.2.0"),
    ],
)
def test_an_untested_library_version_serves_through_the_pipeline_with_one_warning(
    data: tuple[Any, Any, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    estimator: str,
    package: str,
    version: str,
) -> None:
    from housing_mlops.inference import loaded_model as predictor

    X, y, profile = data
    cand = CandidateConfig(name="c", estimator=estimator, params=CANDIDATES[estimator])
    pipeline = build_pipeline(cand, FEATURES_CFG, 42, n_jobs=1).fit(X, y)
    real = predictor.installed_version
    monkeypatch.setattr(
        predictor, "installed_version", lambda name: version if name == package else real(name)
    )
    monkeypatch.setattr(predictor, "_warned", set())
    with caplog.at_level("WARNING", logger=predictor.__name__):
        first = build_loaded_model(pipeline, ModelMeta("m", "1"), profile)
        again = build_loaded_model(pipeline, ModelMeta("m", "2"), profile)  # a hot reload
    assert not first.fast_path and not again.fast_path
    np.testing.assert_allclose(
        first.predict(X.to_numpy(dtype=np.float64)), pipeline.predict(X), rtol=1e-12
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert f"{package} {version} is outside the fast path's tested range" in warnings[0]
    assert "pipeline.predict" in warnings[0]


def test_lightgbm_version_does_not_matter_for_other_estimators(
    data: tuple[Any, Any, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from housing_mlops.inference import loaded_model as predictor

    X, y, profile = data
    cand = CandidateConfig(name="c", estimator="ridge", params=CANDIDATES["ridge"])
    pipeline = build_pipeline(cand, FEATURES_CFG, 42, n_jobs=1).fit(X, y)
    real = predictor.installed_version
    monkeypatch.setattr(
        predictor, "installed_version", lambda name: "9.0" if name == "lightgbm" else real(name)
    )
    _, fast = choose_predict(pipeline, profile)
    assert fast


# ------------------------------------------------------------------- compiled trees
def _lightgbm(data: tuple[Any, Any, dict[str, Any]]) -> Any:
    X, y, _ = data
    cand = CandidateConfig(name="c", estimator="lightgbm", params=CANDIDATES["lightgbm"])
    return build_pipeline(cand, FEATURES_CFG, 42, n_jobs=1).fit(X, y)


def _answers_like_the_pipeline(model: Any, pipeline: Any, X: Any) -> None:
    want = pipeline.predict(X)
    np.testing.assert_allclose(model.predict(X.to_numpy()), want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.predict(X.to_numpy()[:1]), want[:1], rtol=0, atol=1e-9)


def _compiled(data: tuple[Any, Any, dict[str, Any]], cache: Any, version: str) -> Any:
    """A LightGBM pipeline and its version ``version`` loaded with compiled trees
    (``always``, built into ``cache``)."""
    pipeline = _lightgbm(data)
    model = build_loaded_model(
        pipeline,
        ModelMeta("m", version),
        data[2],
        compiled_trees="always",
        compile_cache=str(cache),
        model_key=version * 64,
    )
    assert model.info()["trees"] == "compiled"
    return pipeline, model


def test_compiled_trees_always_serve_the_pipelines_numbers(
    data: tuple[Any, Any, dict[str, Any]], tmp_path: Any
) -> None:
    X, _, _ = data
    pipeline, model = _compiled(data, tmp_path, "1")
    assert model.info()["fast_path"] is True
    assert list(tmp_path.glob("lightgbm-*.so")), "the library is cached for the next start"
    _answers_like_the_pipeline(model, pipeline, X)


def test_compiled_trees_auto_builds_in_the_background_then_reuses_the_cache(
    data: tuple[Any, Any, dict[str, Any]], tmp_path: Any
) -> None:
    import time

    X, _, profile = data
    pipeline = _lightgbm(data)
    kwargs: dict[str, Any] = {
        "compiled_trees": "auto",
        "compile_cache": str(tmp_path),
        "model_key": "b" * 64,
    }
    model = build_loaded_model(pipeline, ModelMeta("m", "1"), profile, **kwargs)
    # Served at once by LightGBM's booster while the compiler runs.
    assert model.info()["trees"] == "lightgbm"
    assert model.info()["trees_building"] is True
    _answers_like_the_pipeline(model, pipeline, X)
    deadline = time.monotonic() + 300
    while model.info()["trees_building"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert model.info()["trees"] == "compiled"
    _answers_like_the_pipeline(model, pipeline, X)
    # The next load (a restart, a hot reload) takes them from the cache before serving.
    again = build_loaded_model(pipeline, ModelMeta("m", "2"), profile, **kwargs)
    assert again.info()["trees"] == "compiled"
    assert again.info()["trees_building"] is False


def test_compiled_trees_of_small_batches_run_off_the_event_loop(
    data: tuple[Any, Any, dict[str, Any]], tmp_path: Any
) -> None:
    """Concurrent single rows of a model with compiled trees: the loop computes the
    features and the library's own thread the trees (``off_loop_batches``), and every
    request gets its own row's answer, the pipeline's to 1e-9, from the model that made it."""
    import os

    X, _, _ = data
    pipeline, model = _compiled(data, tmp_path, "3")
    A = X.to_numpy(dtype=np.float64)
    want = pipeline.predict(X)

    async def main() -> tuple[list[Any], MicroBatcher, int | None]:
        batcher = MicroBatcher(lambda: model, window_s=0, max_rows=16, inline_rows=16)
        batcher.start()
        try:
            # Three waves of 100 single rows: batches of at most 16, one after the other.
            got = []
            for wave in range(3):
                rows = range(wave * 100, wave * 100 + 100)
                got += await asyncio.gather(*(batcher.predict(A[i : i + 1]) for i in rows))
            fd = batcher._eventfd
            await batcher.drain()
            return got, batcher, fd
        finally:
            batcher.close()

    results, batcher, fd = asyncio.run(main())
    got = np.concatenate([preds for preds, _ in results])
    np.testing.assert_allclose(got, want[:300], rtol=0, atol=1e-9)
    assert all(used.meta.version == "3" for _, used in results)
    if hasattr(os, "eventfd"):
        assert batcher.off_loop_batches == batcher.batches >= 300 // 16
        assert fd is not None
        with pytest.raises(OSError):
            os.fstat(fd)  # drain closed the eventfd
    else:
        assert batcher.off_loop_batches == 0


def test_a_batcher_reused_by_a_new_event_loop_still_answers(
    data: tuple[Any, Any, dict[str, Any]], tmp_path: Any
) -> None:
    """An event loop that ended without ``drain`` (a test client, a restarted app) must not
    leave the next loop's batches waiting for an eventfd nobody watches."""
    X, _, _ = data
    pipeline, model = _compiled(data, tmp_path, "5")
    A = X.to_numpy(dtype=np.float64)
    want = pipeline.predict(X.iloc[:20])
    batcher = MicroBatcher(lambda: model, window_s=0, max_rows=16, inline_rows=16)

    async def some_rows() -> np.ndarray:
        calls = (batcher.predict(A[i : i + 1]) for i in range(20))
        got = await asyncio.wait_for(asyncio.gather(*calls), timeout=30)
        return np.concatenate([preds for preds, _ in got])

    first = asyncio.run(some_rows())  # no drain: the loop just ends
    second = asyncio.run(some_rows())
    np.testing.assert_allclose(first, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(second, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("setting", ["never", "always"])
def test_compiled_trees_leave_other_models_and_never_alone(
    data: tuple[Any, Any, dict[str, Any]], tmp_path: Any, setting: str
) -> None:
    X, y, profile = data
    ridge = build_pipeline(
        CandidateConfig(name="r", estimator="ridge", params=CANDIDATES["ridge"]),
        FEATURES_CFG,
        42,
        n_jobs=1,
    ).fit(X, y)
    pipelines = {"ridge": ridge, "lightgbm": _lightgbm(data)}
    for name, pipeline in pipelines.items():
        if setting == "always" and name == "lightgbm":
            continue  # covered above
        model = build_loaded_model(
            pipeline,
            ModelMeta("m", "1"),
            profile,
            compiled_trees=setting,
            compile_cache=str(tmp_path),
            model_key="c" * 64,
        )
        info = model.info()
        assert info["trees"] == ("lightgbm" if name == "lightgbm" else "estimator")
        # The estimator inside the residual correction, and the correction's settings.
        assert info["estimator"] == ("LGBMRegressor" if name == "lightgbm" else "Pipeline")
        assert info["residual_correction"] == {"neighbours": 5, "weight": 0.4}
        _answers_like_the_pipeline(model, pipeline, X)
    assert not list(tmp_path.glob("lightgbm-*.so"))


def test_requests_left_behind_by_max_rows_fail_too_when_no_model_is_loaded() -> None:
    """The challenger's batcher right after its alias was removed (canary): every request
    waiting there must fail at once (the champion then answers it), not only those of the
    first batch; the rest used to wait for a request that never came (the mode is off now)."""

    async def main() -> list[Any]:
        # serve's defaults: at most 256 rows a micro-batch, up to 1,000 rows a request.
        batcher = MicroBatcher(lambda: None, window_s=0, max_rows=256, inline_rows=64)
        # One house, then 300 in the same turn: the second goes in a batch of its own.
        calls = [batcher.predict(np.zeros((n, 8))) for n in (1, 300)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)

    results = asyncio.run(main())
    assert [str(r) for r in results] == ["no model loaded"] * 2
