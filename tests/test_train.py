"""`housing train`: candidates, reproducibility, subsets, output and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_settings, trained_store
from synthetic import write_config

from housing_mlops import featurize, registry
from housing_mlops.cli import run
from housing_mlops.errors import UsageError
from housing_mlops.train import select_candidates, train


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread() -> Iterator[None]:
    # OpenMP pools (HistGradientBoosting, LightGBM) spin and crawl on a busy 2-core box.
    # threadpoolctl only limits libraries already loaded: load the OpenMP users first.
    import lightgbm  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def test_unknown_model_is_a_usage_error_listing_valid_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    code = run(["--config", str(config), "train", "--model", "xgboost"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Error: unknown candidate 'xgboost': choose from ridge, hist_gb" in err


def test_model_option_selects_a_subset_in_config_order(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert [c.name for c in select_candidates(settings, ["hist_gb", "ridge"])] == [
        "ridge",
        "hist_gb",
    ]
    assert [c.name for c in select_candidates(settings, None)] == ["ridge", "hist_gb"]
    with pytest.raises(UsageError):
        select_candidates(settings, ["ridge", "nope"])


def test_train_before_featurize_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    code = run(["--config", str(config), "train"])
    assert code == 4
    assert "run `housing featurize` first" in capsys.readouterr().err


def test_a_store_folder_that_cannot_be_made_is_exit_5_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file where the store's folder should be (or a folder without permission): the
    # mkdir's OSError was "Error: unexpected NotADirectoryError" (exit 1).
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    uri = f"sqlite:///{blocker}/mlruns/mlflow.db"
    make_settings(tmp_path, {"mlflow": {"tracking_uri": uri}})  # config.yaml, processed data
    code = run(["--config", str(tmp_path / "config.yaml"), "train", "--model", "ridge"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert err.splitlines() == [
        f"Error: cannot create the folder {blocker}/mlruns of the MLflow store {uri} "
        "(Not a directory): fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
    ]


def test_more_cv_folds_than_train_rows_is_exit_3_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # KFold refused it from inside the training: "Error: unexpected ValueError: Cannot have
    # number of splits n_splits=100000 greater than the number of samples" (exit 1).
    settings = make_settings(tmp_path, {"train": {"cv_folds": 100_000}})
    config = tmp_path / "config.yaml"
    code = run(["--config", str(config), "train", "--model", "ridge"])
    err = capsys.readouterr().err
    assert code == 3, err
    rows = len(featurize.load_split(settings, "train")[0])
    assert err.splitlines() == [
        f"Error: train.cv_folds 100000 in {config} is more than the {rows} rows of the train "
        "split: lower it (the default is 5)"
    ]
    assert not (tmp_path / "mlruns").exists()  # nothing registered, no store made


def test_an_artifact_folder_that_cannot_be_made_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It read "opening the MLflow store sqlite:///…/mlflow.db failed: [Errno 20] Not a
    # directory: …", sending users to a store that was fine.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    make_settings(tmp_path, {"mlflow": {"artifact_location": str(blocker / "artifacts")}})
    code = run(["--config", str(tmp_path / "config.yaml"), "train", "--model", "ridge"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert err.splitlines() == [
        f"Error: cannot create the artifact folder {blocker}/artifacts (Not a directory): fix "
        "mlflow.artifact_location / HOUSING_MLFLOW_ARTIFACT_LOCATION"
    ]


def test_rerun_with_same_config_and_data_gives_same_metrics(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, first_rows = trained_store(tmp_path_factory)
    ridge_first = next(r for r in first_rows if r["candidate"] == "ridge")
    # Train ridge again, into a fresh store, through the CLI with --json.
    config = write_config(tmp_path, {"paths": {"processed_dir": str(settings.paths.processed_dir)}})
    code = run(["--config", str(config), "train", "--model", "ridge", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [again] = json.loads(captured.out)  # stdout holds the JSON document and nothing else
    assert again["candidate"] == "ridge"
    assert again["version"] == "1"
    for key in ("cv_rmse_mean", "cv_rmse_std", "cv_mae_mean", "cv_r2_mean", "cv_r2_std"):
        assert again[key] == ridge_first[key], key
    assert again["data_version"] == ridge_first["data_version"]
    assert again["train_batch"] != ridge_first["train_batch"]


def test_a_second_training_adds_versions_under_a_new_batch(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from helpers import copy_store

    base, _ = trained_store(tmp_path_factory)
    settings = copy_store(base, tmp_path)
    seen: list[tuple[str, int, int]] = []
    rows = train(settings, only=["ridge"], progress=lambda d, n, t: seen.append((d, n, t)))
    assert rows[0]["version"] == "3"
    refs = registry.list_versions(settings)
    assert [r.version for r in refs] == ["1", "2", "3"]
    assert refs[2].tags["train_batch"] != refs[0].tags["train_batch"]
    # Progress went from 0 to the total (3 folds + fit + logging).
    assert seen[0][1] == 0
    assert seen[-1][1] == seen[-1][2] == 5


def test_results_table_lists_each_candidate(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import copy_store

    settings = copy_store(trained_store(tmp_path_factory)[0], tmp_path)
    code = run(["--config", str(settings.source), "train", "-m", "ridge"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ridge" in out and "±" in out and "housing evaluate" in out
    assert "hist_gb" not in out


def _reference_cv(settings: Any, candidate: Any) -> dict[str, float]:
    """What cross-validation means: each candidate's own Pipeline, fitted fold by fold."""
    import numpy as np
    from sklearn.model_selection import KFold

    from housing_mlops import featurize, models
    from housing_mlops.evaluate import compute_metrics

    X, y = featurize.load_split(settings, "train")
    folds = KFold(settings.train.cv_folds, shuffle=True, random_state=settings.train.seed)
    scores = []
    for fit_idx, val_idx in folds.split(X):
        pipeline = models.build_pipeline(candidate, settings.features, settings.train.seed)
        pipeline.fit(X.iloc[fit_idx], y.iloc[fit_idx])
        scores.append(compute_metrics(y.iloc[val_idx], pipeline.predict(X.iloc[val_idx])))
    return {
        f"cv_{key}_{stat}": float(fn([s[key] for s in scores]))
        for key in ("rmse", "mae", "r2")
        for stat, fn in (("mean", np.mean), ("std", np.std))
    }


def test_cv_in_worker_processes_with_a_shared_transform_equals_each_pipeline_alone(
    tmp_path: Path,
) -> None:
    # The folds run in 2 processes and each fold fits the feature transform once for all
    # candidates; the numbers must be exactly those of every candidate's own Pipeline,
    # including a candidate on the raw features (a different transform).
    from housing_mlops import featurize
    from housing_mlops.train import fit_candidates

    candidates = [
        {"name": "ridge", "estimator": "ridge", "params": {"alpha": 1.0}},
        {"name": "lgbm", "estimator": "lightgbm", "params": {"n_estimators": 20}},
        {
            "name": "raw_hgb",
            "estimator": "hist_gradient_boosting",
            "params": {"max_iter": 20},
            "engineered_features": False,
        },
    ]
    results = {}
    for workers in (2, 1):
        settings = make_settings(
            _mkdir(tmp_path / str(workers)),
            {"train": {"cv_folds": 3, "cv_workers": workers, "candidates": candidates}},
        )
        X, y = featurize.load_split(settings, "train")
        results[workers] = list(fit_candidates(settings, settings.train.candidates, X, y))
    assert [r[0].name for r in results[2]] == ["ridge", "lgbm", "raw_hgb"]
    for (candidate, cv, model, _, train_pred), (_, cv_one, _, _, pred_one) in zip(
        results[2], results[1], strict=True
    ):
        assert cv == cv_one == _reference_cv(settings, candidate), candidate.name
        # The final fit came back from a worker: it predicts what it predicted there.
        assert (model.predict(X) == train_pred).all()
        assert (train_pred == pred_one).all()
    # The raw candidate really saw other features than the engineered ones.
    assert results[2][2][1]["cv_rmse_mean"] != results[2][1][1]["cv_rmse_mean"]


def test_bad_candidate_params_in_a_worker_fail_naming_the_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidates = [
        {"name": "ridge", "estimator": "ridge", "params": {"alpha": 1.0}},
        {"name": "broken", "estimator": "hist_gradient_boosting", "params": {"max_iter": -1}},
    ]
    settings = make_settings(tmp_path, {"train": {"cv_workers": 2, "candidates": candidates}})
    code = run(["--config", str(settings.source), "train"])
    err = capsys.readouterr().err
    assert code == 5
    assert "Error: training candidate 'broken' failed" in err
    assert "Traceback" not in err
    # The candidate before it was logged whole, as when the folds ran in this process.
    assert [r.tags["candidate"] for r in registry.list_versions(settings)] == ["ridge"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
