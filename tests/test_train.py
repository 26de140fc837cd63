"""`housing train`: candidates, reproducibility, subsets, output and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_settings, trained_store
from synthetic import write_config

from housing_mlops import registry
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
