"""A registered model ready to predict: a loaded version and its fast predict path.

What ``housing serve`` (``serving.predictor``) and ``housing predict`` (``predict.job``) both
run, so neither stage imports the other.

Where a single-row request's time goes with ``Pipeline.predict(DataFrame)`` is pandas and
scikit-learn's per-call checks, not the trees. So a loaded model keeps a *fast path*: the
pipeline's steps called directly on a float64 numpy array in ``FEATURES`` order, and the
final estimator called as cheaply as it allows (LightGBM's booster on numpy, a forest with
one job). The fast path is checked against ``pipeline.predict(DataFrame)`` on sample rows
when the model is loaded and is only used when it agrees to float precision; otherwise the
model serves through the pipeline itself (slower, same answers). The fast path reads
private attributes of fitted estimators, so it is only tried with the scikit-learn and
LightGBM versions it was checked against (``TESTED_VERSIONS``); with any other version the
model serves through the pipeline, and the log says so once.

A LightGBM model can go one step further: its trees as compiled C (``inference.compiled``,
the only module that loads native code; ``serve.compiled_trees``). They replace the
booster in the fast path only after the same check as the fast path against
``pipeline.predict`` and exactly LightGBM's numbers on the check rows. When they are not
cached yet (``auto``), a background thread builds them after the load and swaps
``LoadedModel.predict`` once they pass: the batcher reads ``model.predict`` per batch, so
the next batch uses them and readiness never waits for the compiler.

Micro-batching of concurrent requests is the service's (``serving.batching``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from housing_mlops.columns import FEATURES
from housing_mlops.validation import FeatureRange, feature_ranges

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]

# Up to this many rows, HistGradientBoosting predictions use the vectorised tree walk.
HGB_COMPILED_MAX_ROWS = 32

# Versions the fast path was checked against, [lowest, first untested) as (major, minor):
# scikit-learn's private tree layout (HistGradientBoosting ``_predictors``, ``nodes``,
# ``_baseline_prediction``, ``_loss``), checked on 1.9.1; LightGBM's ``booster_.predict``
# with ``num_threads``, checked on 4.7.0. The lower ends are the project's minimum
# requirements. Widen a range only after the serving tests pass on the new version.
TESTED_VERSIONS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "scikit-learn": ((1, 5), (1, 10)),
    "lightgbm": ((4, 3), (5, 0)),
}
_warned: set[str] = set()


@dataclass(frozen=True)
class ModelMeta:
    """What the registry says about the served version (shown by ``/model/info``)."""

    name: str
    version: str
    alias: str | None = None
    run_id: str | None = None
    source: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None
    created_at: Any = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_ref(cls, ref: Any) -> ModelMeta:
        created = getattr(ref, "created_at", None)
        return cls(
            name=str(ref.name),
            version=str(ref.version),
            alias=getattr(ref, "alias", None),
            run_id=getattr(ref, "run_id", None),
            source=getattr(ref, "source", None),
            metrics=dict(getattr(ref, "metrics", None) or {}),
            data_version=getattr(ref, "data_version", None),
            created_at=created.isoformat()
            if created is not None and hasattr(created, "isoformat")
            else created,
            tags=dict(getattr(ref, "tags", None) or {}),
        )


@dataclass
class LoadedModel:
    """One model version ready to predict: pipeline, fast predict, metadata (and, served,
    the request models)."""

    meta: ModelMeta
    pipeline: Any
    predict: PredictFn
    fast_path: bool
    loaded_at: float
    # Which trees the fast path evaluates: "lightgbm" (the booster or the estimator's own
    # predict) or "compiled" (``inference.compiled``; may switch once after the load).
    trees: str = "estimator"
    trees_building: bool = False  # compiled trees being built in the background
    # The allowed range of each feature (``validation.feature_ranges`` of the version's
    # reference profile): what ``housing predict`` checks rows against.
    ranges: dict[str, FeatureRange] = field(default_factory=dict)
    # The service's request models (``serving.schemas.RequestModels``, from the same
    # ranges); None for batch scoring.
    requests: Any = None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.meta.name,
            "version": self.meta.version,
            "alias": self.meta.alias,
            "run_id": self.meta.run_id,
            "source": self.meta.source,
            "metrics": self.meta.metrics,
            "data_version": self.meta.data_version,
            "created_at": self.meta.created_at,
            "loaded_at": _iso(self.loaded_at),
            "fast_path": self.fast_path,
            "trees": self.trees,
            "trees_building": self.trees_building,
            **_final_step(self.pipeline),
        }


def _final_step(pipeline: Any) -> dict[str, Any]:
    """``estimator``: the class of the model's estimator; ``residual_correction``: its
    ``ResidualCorrected`` settings (None without one)."""
    from housing_mlops.models import ResidualCorrected

    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    if isinstance(final, ResidualCorrected):
        return {
            "estimator": type(final.estimator).__name__,
            "residual_correction": {"neighbours": final.neighbours, "weight": final.weight},
        }
    return {"estimator": type(final).__name__, "residual_correction": None}


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


# ------------------------------------------------------------------------ fast path
def compile_hist_gradient_boosting(est: Any) -> PredictFn | None:
    """All trees of a fitted HistGradientBoostingRegressor as flat numpy arrays.

    scikit-learn predicts tree by tree: a Python loop over hundreds of Cython calls, each
    opening an OpenMP region, which costs milliseconds for a handful of rows (and holds
    the GIL between trees). Here every tree is walked at once: one level per step over an
    (n_rows, n_trees) array of node indices. Leaves point to themselves, so walking
    ``max_depth`` steps lands every tree on its leaf. Leaf values are then added in
    sklearn's order (baseline, tree 1, tree 2, ...) with a sequential ``cumsum``, so the
    sums are the same floating-point operations. Decision rule as in sklearn's
    ``_predict_from_raw_data``: ``x <= threshold`` goes left, NaN follows
    ``missing_go_to_left``. Categorical splits or several trees per iteration: None.
    """
    predictors = getattr(est, "_predictors", None)
    if not predictors or getattr(est, "n_trees_per_iteration_", 1) != 1:
        return None
    trees = [it[0] for it in predictors]
    if any(t.nodes["is_categorical"].any() for t in trees):
        return None
    sizes = np.array([len(t.nodes) for t in trees])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    nodes = np.concatenate([t.nodes for t in trees])
    owner_offset = np.repeat(offsets, sizes)
    own = np.arange(len(nodes), dtype=np.int64)
    leaf = nodes["is_leaf"].astype(bool)
    left = np.where(leaf, own, nodes["left"].astype(np.int64) + owner_offset)
    right = np.where(leaf, own, nodes["right"].astype(np.int64) + owner_offset)
    # child[2 * node] is the left child, child[2 * node + 1] the right one.
    child = np.empty(2 * len(nodes), dtype=np.int64)
    child[0::2] = left
    child[1::2] = right
    feature = np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64)
    threshold = nodes["num_threshold"].astype(np.float64)
    missing_left = nodes["missing_go_to_left"].astype(bool)
    value = nodes["value"].astype(np.float64)
    depth = int(nodes["depth"].max())
    roots = offsets
    baseline = float(np.asarray(est._baseline_prediction).ravel()[0])
    inverse = est._loss.link.inverse
    n_features = int(est.n_features_in_)

    def predict(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"expected {n_features} features, got shape {X.shape}")
        n = X.shape[0]
        flat = np.ascontiguousarray(X).ravel()
        node = np.broadcast_to(roots, (n, len(roots))).copy()
        row_start = (np.arange(n, dtype=np.int64) * n_features)[:, None]
        has_nan = bool(np.isnan(flat).any())
        for _ in range(depth):
            x = flat.take(row_start + feature.take(node))
            if has_nan:
                go_right = ~(x <= threshold.take(node))
                go_right &= ~(np.isnan(x) & missing_left.take(node))
            else:
                go_right = x > threshold.take(node)  # == not (x <= t) without NaN
            node = child.take(2 * node + go_right)
        leaves = value.take(node)
        acc = np.empty((n, leaves.shape[1] + 1), dtype=np.float64)
        acc[:, 0] = baseline
        acc[:, 1:] = leaves
        raw = np.cumsum(acc, axis=1)[:, -1]
        return np.asarray(inverse(raw), dtype=np.float64)

    return predict


def _estimator_fn(est: Any, threads: int) -> PredictFn:
    """The cheapest correct call of a fitted final estimator on a 2-D float64 array."""
    from sklearn.pipeline import Pipeline

    from housing_mlops.models import ResidualCorrected

    if isinstance(est, ResidualCorrected):
        inner_fn = _estimator_fn(est.estimator_, threads)

        def corrected(X: np.ndarray) -> np.ndarray:
            A, correction = est.split(X)
            return np.asarray(inner_fn(A), dtype=np.float64).reshape(-1) + correction

        return corrected
    if isinstance(est, Pipeline):
        inner = [step for _, step in est.steps[:-1]]
        last = _estimator_fn(est.steps[-1][1], threads)

        def nested(X: np.ndarray) -> np.ndarray:
            for step in inner:
                X = step.transform(X)
            return last(X)

        return nested
    booster = (
        getattr(est, "booster_", None) if type(est).__module__.startswith("lightgbm") else None
    )
    if booster is not None:
        # LGBMRegressor.predict goes through pandas/sklearn checks; the booster does not.
        def lgbm(X: np.ndarray) -> np.ndarray:
            return booster.predict(X, num_threads=threads)

        return lgbm
    if type(est).__name__ == "HistGradientBoostingRegressor":
        compiled = compile_hist_gradient_boosting(est)
        if compiled is not None:
            sklearn_predict = est.predict

            def hgb(X: np.ndarray) -> np.ndarray:
                # The level-by-level walk wins for micro-batches; sklearn's per-tree
                # Cython loop wins for big batches (both give identical numbers).
                if X.shape[0] <= HGB_COMPILED_MAX_ROWS:
                    return compiled(X)
                return np.asarray(sklearn_predict(X), dtype=np.float64)

            return hgb
    if hasattr(est, "n_jobs") and type(est).__name__.startswith("RandomForest"):
        # joblib's thread pool costs milliseconds per call for a handful of rows.
        est.n_jobs = threads
    return est.predict


def make_fast_predict(pipeline: Any, threads: int = 1) -> PredictFn:
    """Steps of the pipeline on numpy + the estimator's cheapest call; no pandas."""
    steps = [step for _, step in pipeline.steps[:-1]]
    final = _estimator_fn(pipeline.steps[-1][1], threads)

    def predict(X: np.ndarray) -> np.ndarray:
        for step in steps:
            X = step.transform(X)
        return np.asarray(final(X), dtype=np.float64).reshape(-1)

    return predict


def make_pipeline_predict(pipeline: Any) -> PredictFn:
    """The reference path: ``pipeline.predict`` on a DataFrame with named columns."""
    import pandas as pd

    def predict(X: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(X, columns=FEATURES)
        return np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1)

    return predict


def check_rows(profile: dict[str, Any] | None, n: int = 256) -> np.ndarray:
    """Rows to compare the fast path with ``pipeline.predict``: the profile's sample."""
    cols = (profile or {}).get("columns", {})
    samples = [cols.get(name, {}).get("sample") for name in FEATURES]
    if all(samples) and len({len(s) for s in samples}) == 1:
        X = np.column_stack([np.asarray(s, dtype=np.float64) for s in samples])[:n]
        if len(X):
            return X
    # No profile: a few plausible blocks across the state.
    rng = np.random.default_rng(0)
    m = 64
    rooms = rng.uniform(3, 8, m)
    return np.column_stack(
        [
            rng.uniform(0.5, 15, m),
            rng.uniform(1, 52, m),
            rooms,
            rooms * rng.uniform(0.15, 0.3, m),
            rng.uniform(50, 5000, m),
            rng.uniform(1.5, 5, m),
            rng.uniform(32.6, 41.9, m),
            rng.uniform(-124.3, -114.4, m),
        ]
    )


def installed_version(package: str) -> str | None:
    """The installed version of a distribution (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _uses_lightgbm(est: Any) -> bool:
    from housing_mlops.models import ResidualCorrected

    while True:
        if hasattr(est, "steps"):  # a nested Pipeline: its final step predicts
            est = est.steps[-1][1]
        elif isinstance(est, ResidualCorrected):  # the estimator inside predicts
            est = est.estimator
        else:
            return type(est).__module__.startswith("lightgbm")


def untested_version(pipeline: Any) -> str | None:
    """Why the fast path is not tried for ``pipeline``: a library version outside
    ``TESTED_VERSIONS`` (None when every library it relies on is inside its range)."""
    import re

    packages = ["scikit-learn"]
    if _uses_lightgbm(pipeline):
        packages.append("lightgbm")
    for package in packages:
        (lo, hi) = TESTED_VERSIONS[package]
        found = installed_version(package)
        match = re.match(r"(\d+)\.(\d+)", found or "")
        if match is None or not lo <= (int(match[1]), int(match[2])) < hi:
            return (
                f"{package} {found} is outside the fast path's tested range "
                f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"
            )
    return None


def choose_predict(
    pipeline: Any, profile: dict[str, Any] | None, threads: int = 1
) -> tuple[PredictFn, bool]:
    """The fast path if it matches ``pipeline.predict(DataFrame)`` on sample rows, else that."""
    reference = make_pipeline_predict(pipeline)
    X = check_rows(profile)
    expected = reference(X)  # also warms the pipeline's caches (a KD-tree, ...)
    untested = untested_version(pipeline)
    if untested is not None:
        if untested not in _warned:  # once per process, not at every hot reload
            _warned.add(untested)
            log.warning("%s: serving through pipeline.predict", untested)
        return reference, False
    try:
        fast = make_fast_predict(pipeline, threads)
        agrees = agrees_with_pipeline(fast, X, expected)
    except Exception:  # noqa: BLE001 - any failure means: serve through the pipeline
        log.warning(
            "fast predict path failed its check; serving via pipeline.predict", exc_info=True
        )
        return reference, False
    if agrees:
        return fast, True
    log.warning("fast predict path disagrees with pipeline.predict; serving via the pipeline")
    return reference, False


def agrees_with_pipeline(fast: PredictFn, X: np.ndarray, expected: np.ndarray) -> bool:
    """The fast path's gate: ``fast`` on ``X`` whole, in 16-row and in 1-row batches within
    1e-9 of ``expected`` (``pipeline.predict`` on ``X``). Exceptions propagate."""
    got = fast(X)
    # Micro-batch sizes too: some estimators switch strategy with the batch size.
    small = np.concatenate([fast(X[i : i + 16]) for i in range(0, len(X), 16)])
    single = np.concatenate([fast(X[i : i + 1]) for i in range(min(len(X), 8))])
    return bool(
        np.allclose(got, expected, rtol=1e-9, atol=1e-9)
        and np.allclose(small, expected, rtol=1e-9, atol=1e-9)
        and np.allclose(single, expected[: len(single)], rtol=1e-9, atol=1e-9)
    )


# ------------------------------------------------------------------- compiled trees
def use_compiled_trees(
    model: LoadedModel,
    profile: dict[str, Any] | None,
    model_key: str | None,
    cache_dir: str | None,
    build: bool,
) -> bool:
    """Put the compiled trees of ``model`` (a LightGBM fast path) in its ``predict`` when
    they pass the fast path's gate (1e-9 of ``pipeline.predict``) and give exactly the
    booster's numbers. ``build``: compile them when they are not cached. Returns whether
    ``model.predict`` now uses them; never raises (the model keeps its fast path)."""
    from pathlib import Path

    from housing_mlops.inference import compiled

    cache = Path(cache_dir) if cache_dir else None
    try:
        booster = compiled.lightgbm_booster(model.pipeline)
        if booster is None or not model.fast_path:
            return False
        if not model_key:
            raise compiled.NotCompilable("the version has no model sha256 to cache them by")
        if not build and not compiled.is_cached(model_key, cache):
            return False
        lib = compiled.build(booster, model_key, cache)
        X = np.vstack([check_rows(profile), check_rows(None)])
        predict = compiled.compiled_predict(model, lib, X)
        if not agrees_with_pipeline(predict, X, make_pipeline_predict(model.pipeline)(X)):
            raise compiled.NotCompilable("they disagree with pipeline.predict")
    except Exception as exc:  # noqa: BLE001 - NotCompilable or a compiler surprise
        log.warning(
            "compiled trees not used for %s version %s: %s",
            model.meta.name,
            model.meta.version,
            exc,
        )
        return False
    # One attribute store: the batcher reads model.predict per batch.
    model.predict = predict
    model.trees = "compiled"
    log.info(
        "compiled trees in use for %s version %s (%s, %.1f s to build)",
        model.meta.name,
        model.meta.version,
        "cached" if lib.cached else "built now",
        lib.seconds,
    )
    return True


def _compile_in_background(
    model: LoadedModel, profile: dict[str, Any] | None, model_key: str, cache_dir: str | None
) -> None:
    def run() -> None:
        try:
            use_compiled_trees(model, profile, model_key, cache_dir, build=True)
        finally:
            model.trees_building = False

    model.trees_building = True
    thread = threading.Thread(
        target=run,
        name=f"compile-trees-{model.meta.version}",
        daemon=True,
    )
    thread.start()


def build_loaded_model(
    pipeline: Any,
    meta: ModelMeta,
    profile: dict[str, Any] | None,
    threads: int = 1,
    compiled_trees: str = "never",
    compile_cache: str | None = None,
    model_key: str | None = None,
    requests: Any = None,
) -> LoadedModel:
    """Wrap a fitted pipeline for predicting (also warms caches such as the KD-tree).

    ``compiled_trees`` (``serve.compiled_trees``): ``never``; ``always`` = compiled (or
    taken from ``compile_cache``) before this returns; ``auto`` = taken from the cache when
    there, else compiled in a background thread and swapped in when they pass. They are
    cached by ``model_key``, the sha256 of the version's model file."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        predict, fast = choose_predict(pipeline, profile, threads)
    model = LoadedModel(
        meta=meta,
        pipeline=pipeline,
        predict=predict,
        fast_path=fast,
        loaded_at=time.time(),
        ranges=feature_ranges(profile),
        requests=requests,
        trees="lightgbm" if _uses_lightgbm(pipeline) else "estimator",
    )
    if compiled_trees != "never" and fast and model.trees == "lightgbm":
        if compiled_trees == "always" or not model_key:
            use_compiled_trees(model, profile, model_key, compile_cache, build=True)
        elif not use_compiled_trees(model, profile, model_key, compile_cache, build=False):
            _compile_in_background(model, profile, model_key, compile_cache)
    return model


def reference_profile_or_none(settings: Any, ref: Any) -> dict[str, Any] | None:
    """The version's reference profile, or None (validation then uses physical bounds only:
    the service and ``housing predict`` both say so in the log)."""
    from housing_mlops import registry

    try:
        return registry.load_reference_profile(settings, ref)
    except Exception as exc:  # noqa: BLE001 - validate with physical bounds only
        log.warning(
            "no reference profile for %s version %s (%s): validating physical bounds only",
            ref.name,
            ref.version,
            exc,
        )
        return None
