"""The pipeline factory: every estimator builds, fits and survives a skops round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException
from synthetic import make_frame

from housing_mlops.config import CandidateConfig, FeaturesConfig
from housing_mlops.features import FEATURES, TARGET
from housing_mlops.models import SKOPS_TRUSTED_TYPES, ResidualCorrected, build_pipeline

SMALL = {
    "ridge": {"alpha": 1.0},
    "random_forest": {"n_estimators": 10, "min_samples_leaf": 2},
    "hist_gradient_boosting": {"max_iter": 20},
    "lightgbm": {"n_estimators": 30, "num_leaves": 15},
}
FEATURES_CFG = FeaturesConfig(knn_neighbors=[4, 16], knn_folds=3)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(500, seed=2)


def _candidate(estimator: str, engineered: bool = True) -> CandidateConfig:
    return CandidateConfig(
        name=estimator.replace("_", "-"),
        estimator=estimator,
        params=SMALL[estimator],
        engineered_features=engineered,
    )


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame) -> dict[str, object]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # HistGradientBoosting's OpenMP crawls on a busy box
        return {
            est: build_pipeline(_candidate(est), FEATURES_CFG, seed=42).fit(
                frame[FEATURES], frame[TARGET]
            )
            for est in SMALL
        }


@pytest.mark.parametrize("estimator", list(SMALL))
def test_pipeline_has_features_then_model_and_learns(
    estimator: str, fitted: dict[str, object], frame: pd.DataFrame
) -> None:
    pipe = fitted[estimator]
    assert [name for name, _ in pipe.steps] == ["features", "model"]  # type: ignore[attr-defined]
    test = make_frame(300, seed=8)
    pred = pipe.predict(test[FEATURES])  # type: ignore[attr-defined]
    assert pred.shape == (300,) and np.isfinite(pred).all()
    # better than predicting the training mean on unseen rows
    baseline = np.sqrt(np.mean((test[TARGET] - frame[TARGET].mean()) ** 2))
    assert np.sqrt(np.mean((test[TARGET] - pred) ** 2)) < 0.8 * baseline


def test_lightgbm_is_quiet_and_deterministic() -> None:
    pipe = build_pipeline(_candidate("lightgbm"), FEATURES_CFG, seed=3, n_jobs=2)
    final = pipe.named_steps["model"]
    assert isinstance(final, ResidualCorrected)  # the default config's residual correction
    params = final.estimator.get_params()
    assert params["verbose"] == -1 and params["deterministic"] is True
    assert params["random_state"] == 3 and params["n_jobs"] == 2


def test_residual_correction_adds_the_mean_residual_of_the_nearest_training_blocks(
    frame: pd.DataFrame,
) -> None:
    from sklearn.base import clone

    pipe = build_pipeline(_candidate("lightgbm"), FEATURES_CFG, seed=4)
    pipe.fit(frame[FEATURES], frame[TARGET])
    final = pipe.named_steps["model"]
    k, weight = FEATURES_CFG.residual_neighbors, FEATURES_CFG.residual_weight
    assert (final.neighbours, final.weight) == (k, weight) and k > 0
    # What the step kept: the residuals of its estimator on the rows it was fitted on (the
    # out-of-fold features of fit_transform), in the training rows' order.
    features = clone(pipe.named_steps["features"])
    A = features.fit_transform(frame[FEATURES], frame[TARGET])
    inner = final.estimator_
    np.testing.assert_array_equal(
        final.residuals_, frame[TARGET].to_numpy() - inner.predict(A[:, :-k])
    )
    test = make_frame(200, seed=11)[FEATURES]
    Z = pipe.named_steps["features"].transform(test)
    rows = Z[:, -k:].astype(int)
    want = inner.predict(Z[:, :-k]) + final.residuals_[rows].sum(axis=1) * (weight / k)
    np.testing.assert_array_equal(pipe.predict(test), want)
    assert not np.array_equal(pipe.predict(test), inner.predict(Z[:, :-k]))


def test_without_residual_correction_the_row_numbers_are_gone_and_nothing_else_changes(
    frame: pd.DataFrame,
) -> None:
    test = make_frame(100, seed=12)[FEATURES]
    off = FEATURES_CFG.model_copy(update={"residual_neighbors": 0})
    plain = build_pipeline(_candidate("lightgbm"), off, seed=4)
    plain.fit(frame[FEATURES], frame[TARGET])
    assert not isinstance(plain.named_steps["model"], ResidualCorrected)
    assert not any("row" in name for name in plain.named_steps["features"].get_feature_names_out())
    zero = FEATURES_CFG.model_copy(update={"residual_weight": 0.0})
    corrected = build_pipeline(_candidate("lightgbm"), zero, seed=4)
    corrected.fit(frame[FEATURES], frame[TARGET])
    # Weight 0: the estimator alone, fitted without the row-number columns.
    np.testing.assert_array_equal(corrected.predict(test), plain.predict(test))


def test_residual_correction_needs_its_row_columns() -> None:
    from sklearn.linear_model import Ridge

    with pytest.raises(ValueError, match="more than its 5 neighbour row columns"):
        ResidualCorrected(Ridge(), neighbours=5).fit(np.ones((10, 5)), np.ones(10))


def test_same_seed_same_predictions(frame: pd.DataFrame) -> None:
    test = make_frame(100, seed=9)[FEATURES]
    preds = [
        build_pipeline(_candidate("lightgbm"), FEATURES_CFG, seed=5)
        .fit(frame[FEATURES], frame[TARGET])
        .predict(test)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(preds[0], preds[1])


def test_raw_feature_candidate_sees_only_the_eight_features(frame: pd.DataFrame) -> None:
    pipe = build_pipeline(_candidate("ridge", engineered=False), FEATURES_CFG, seed=1)
    pipe.fit(frame[FEATURES], frame[TARGET])
    assert list(pipe.named_steps["features"].get_feature_names_out()) == FEATURES
    assert pipe.named_steps["model"].n_features_in_ == 8


@pytest.mark.parametrize("estimator", list(SMALL))
def test_mlflow_skops_round_trip_predicts_exactly_the_same(
    estimator: str,
    fitted: dict[str, object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow.sklearn

    pipe = fitted[estimator]
    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        pipe,
        str(path),
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        # explicit requirements: inferring them re-imports the model in a subprocess (slow)
        pip_requirements=["scikit-learn", "lightgbm", "skops"],
    )
    test = make_frame(200, seed=11)[FEATURES]
    expected = pipe.predict(test)  # type: ignore[attr-defined]

    # the safe route: our reviewed list, not the one stored inside the artifact
    loaded = skops.io.load(path / "model.skops", trusted=SKOPS_TRUSTED_TYPES)
    np.testing.assert_array_equal(loaded.predict(test), expected)
    # a single row and a numpy batch after loading (the KD-tree is rebuilt lazily). The
    # row against the same row before saving: a ridge's one-row product may round its last
    # bit differently from a batch's (BLAS), with or without a round trip.
    one = test.iloc[[3]]
    np.testing.assert_array_equal(loaded.predict(one), pipe.predict(one))  # type: ignore[attr-defined]
    np.testing.assert_allclose(loaded.predict(one), expected[3:4], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(loaded.predict(test.to_numpy()), expected)

    # MLflow's own loader (it needs the explicit opt-in to deserialise anything)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    via_mlflow = mlflow.sklearn.load_model(str(path))
    np.testing.assert_array_equal(via_mlflow.predict(test), expected)


def test_loading_with_an_empty_trusted_list_is_refused(
    fitted: dict[str, object], tmp_path: Path
) -> None:
    target = tmp_path / "lgbm.skops"
    skops.io.dump(fitted["lightgbm"], target)
    with pytest.raises(UntrustedTypesFoundException, match="SpatialFeatures"):
        skops.io.load(target, trusted=[])


def test_trusted_list_covers_every_estimator_and_nothing_unused(
    fitted: dict[str, object],
) -> None:
    needed: set[str] = set()
    for pipe in fitted.values():
        needed |= set(skops.io.get_untrusted_types(data=skops.io.dumps(pipe)))
    assert needed == set(SKOPS_TRUSTED_TYPES)
