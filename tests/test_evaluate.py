"""`housing evaluate`: pure metrics, slices and checks; logging to the version's run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import copy_store, empty_store_config, trained_store
from synthetic import FEATURES, make_frame, write_config

from housing_mlops import registry
from housing_mlops.cli import run
from housing_mlops.config import EvaluateConfig, Settings
from housing_mlops.evaluate import (
    behavioural_checks,
    compute_metrics,
    distance_to_coast_km,
    slice_masks,
)


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    # OpenMP pools (HistGradientBoosting, LightGBM) spin and crawl on a busy 2-core box.
    # threadpoolctl only limits libraries already loaded: load the OpenMP users first.
    import lightgbm  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# ----------------------------------------------------------------------- pure parts
def test_compute_metrics_on_a_small_example() -> None:
    m = compute_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["mae"] == pytest.approx(1 / 3)
    assert m["r2"] == pytest.approx(0.5)  # 1 - 1/2
    assert m["mape"] == pytest.approx((1 / 3) / 3)
    assert m["max_error"] == pytest.approx(1.0)
    perfect = compute_metrics([0.5, 1.5], [0.5, 1.5])
    assert perfect["rmse"] == 0.0 and perfect["r2"] == 1.0
    with pytest.raises(ValueError):
        compute_metrics([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("place", "lat", "lon", "coastal"),
    [
        ("San Francisco", 37.77, -122.42, True),
        ("Santa Monica", 34.02, -118.49, True),
        ("San Diego", 32.72, -117.16, True),
        ("Eureka", 40.80, -124.16, True),
        ("Fresno", 36.74, -119.79, False),
        ("Sacramento", 38.58, -121.49, False),
        ("Palm Springs", 33.83, -116.55, False),
        ("Redding", 40.59, -122.39, False),
    ],
)
def test_coastal_rule_matches_geography(place: str, lat: float, lon: float, coastal: bool) -> None:
    km = float(distance_to_coast_km([lat], [lon])[0])
    assert (km <= EvaluateConfig().coastal_km) is coastal, f"{place}: {km:.0f} km"


def test_slices_partition_the_rows() -> None:
    X = make_frame(500, seed=3)[FEATURES]
    masks = slice_masks(X, EvaluateConfig(north_south_latitude=37.0))
    quintiles = [masks[f"income_q{i}"] for i in range(1, 6)]
    assert sum(int(m.sum()) for m in quintiles) == 500
    assert all(95 <= m.sum() <= 105 for m in quintiles)
    # Higher quintiles hold higher incomes.
    assert X["MedInc"][quintiles[0]].max() <= X["MedInc"][quintiles[4]].min()
    assert (masks["north"] == (X["Latitude"] >= 37.0)).all()
    assert not (masks["north"] & masks["south"]).any()
    assert (masks["coastal"] ^ masks["inland"]).all()


class _Linear:
    """A stand-in model: prediction = a * MedInc + b (enough to exercise the checks)."""

    def __init__(self, a: float, b: float = 0.0) -> None:
        self.a, self.b = a, b

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.a * X["MedInc"].to_numpy() + self.b


def test_behavioural_checks_catch_wrong_direction_and_implausible_values() -> None:
    X = make_frame(200, seed=1)[FEATURES]
    cfg = EvaluateConfig()
    good = behavioural_checks(_Linear(0.4), X, cfg)
    assert good["passed"]
    assert good["checks"]["medinc_uplift"]["value"] > 0
    backwards = behavioural_checks(_Linear(-0.1, 3.0), X, cfg)
    assert not backwards["passed"]
    assert not backwards["checks"]["medinc_uplift"]["passed"]
    absurd = behavioural_checks(_Linear(0.4, 50.0), X, cfg)
    assert not absurd["checks"]["plausible_range"]["passed"]
    assert absurd["checks"]["plausible_range"]["value"] == 200


# --------------------------------------------------------------------- side effects
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[dict[str, Any]]]:
    from housing_mlops.evaluate import evaluate

    settings = copy_store(trained_store(tmp_path_factory)[0], tmp_path_factory.mktemp("eval"))
    return settings, evaluate(settings)


def test_default_evaluates_the_latest_batch_and_logs_to_each_run(evaluated) -> None:
    import mlflow

    settings, rows = evaluated
    assert [r["version"] for r in rows] == ["1", "2"]
    client = mlflow.MlflowClient(registry.tracking_uri(settings))
    for row in rows:
        ref = registry.resolve(settings, version=int(row["version"]))
        assert ref.tags["evaluated"] == "true"
        assert ref.tags["checks_passed"] == "true"
        for key in ("rmse", "mae", "r2", "mape", "max_error"):
            assert ref.metrics[f"holdout_{key}"] == pytest.approx(row[key])
        assert ref.metrics["slice_coastal_rmse"] == pytest.approx(row["slices"]["coastal"]["rmse"])
        files = {a.path for a in client.list_artifacts(ref.run_id, "evaluation")}
        assert {
            "evaluation/predicted_vs_actual.png",
            "evaluation/residuals.png",
            "evaluation/slices.json",
            "evaluation/checks.json",
        } <= files
        inputs = client.get_run(ref.run_id).inputs
        assert inputs is not None
        contexts = {
            {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs.dataset_inputs
        }
        assert contexts == {"training", "evaluation"}
        assert set(row["slices"]) == {
            *(f"income_q{i}" for i in range(1, 6)),
            "north",
            "south",
            "coastal",
            "inland",
        }
        assert sum(row["slices"][f"income_q{i}"]["rows"] for i in range(1, 6)) == 120
        assert row["champion_version"] is None and row["rmse_vs_champion"] is None


def test_plots_are_real_pngs(evaluated, tmp_path: Path) -> None:
    import mlflow

    settings, rows = evaluated
    client = mlflow.MlflowClient(registry.tracking_uri(settings))
    local = client.download_artifacts(rows[0]["run_id"], "evaluation/residuals.png", str(tmp_path))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_holdout_metrics_match_an_independent_computation(evaluated) -> None:
    from housing_mlops import featurize

    settings, rows = evaluated
    X, y = featurize.load_split(settings, "test")
    ref = registry.resolve(settings, version=1)
    pred = registry.load_model(settings, ref).predict(X)
    rmse = float(np.sqrt(np.mean((pred - y.to_numpy()) ** 2)))
    assert rows[0]["rmse"] == pytest.approx(rmse)


def test_cli_json_for_one_version_compares_with_the_champion(
    evaluated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = copy_store(evaluated[0], tmp_path)
    registry.set_alias(settings, registry.CHAMPION, "1")
    code = run(["--config", str(settings.source), "evaluate", "--version", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [row] = json.loads(captured.out)
    champion_rmse = registry.resolve(settings, version=1).metrics["holdout_rmse"]
    assert row["version"] == "2"
    assert row["champion_version"] == "1"
    assert row["rmse_vs_champion"] == pytest.approx(row["rmse"] - champion_rmse)


def test_cli_table_and_errors(
    evaluated, tmp_path_factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = copy_store(evaluated[0], tmp_path / "copy")
    assert run(["--config", str(settings.source), "evaluate", "--version", "1"]) == 0
    out = capsys.readouterr().out
    assert "holdout" in out and "coastal" in out and "income_q5" in out

    assert run(["--config", str(settings.source), "evaluate", "--version", "9"]) == 5
    assert "no model version 9 (registered versions: 1, 2)" in capsys.readouterr().err

    empty = empty_store_config(tmp_path_factory, tmp_path / "empty")
    assert run(["--config", str(empty), "evaluate"]) == 5
    assert "Error: no trained model versions: run `housing train` first" in capsys.readouterr().err


def test_progress_reports_each_stage_of_each_version(evaluated, tmp_path: Path) -> None:
    from housing_mlops.evaluate import evaluate

    settings = copy_store(evaluated[0], tmp_path)
    calls: list[tuple[str, int, int]] = []
    rows = evaluate(settings, all_versions=True, progress=lambda *call: calls.append(call))
    assert [r["version"] for r in rows] == ["1", "2"]
    assert [done for _, done, _ in calls] == [0, 1, 2, 3, 3, 4, 5, 6]
    assert {total for _, _, total in calls} == {6}
    descriptions = [d for d, _, _ in calls]
    assert descriptions[0] == "version 1 (ridge): loading the model"
    assert descriptions[3] == "version 1 (ridge): evaluated"
    assert descriptions[4] == "version 2 (hist_gb): loading the model"
    assert any("logging to MLflow" in d for d in descriptions)
    assert descriptions[-1] == "version 2 (hist_gb): evaluated"


def test_version_and_all_together_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert run(["--config", str(config), "evaluate", "--version", "1", "--all"]) == 2
    assert capsys.readouterr().err == (
        "Error: --version and --all are exclusive: give one\nTry 'housing evaluate -h' for help.\n"
    )
    assert not (tmp_path / "mlruns").exists()  # refused before the registry is read
