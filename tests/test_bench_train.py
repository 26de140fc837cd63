"""`make bench-train` times the served row the way `housing serve` serves it.

The README's "one row" column and the model goal of issue 14 ("no higher per-row serving
cost than the champion") are read off this benchmark, so it must time the path the service
settles on: a LightGBM model's compiled trees when ``serve.compiled_trees`` allows them (and
a C compiler exists), LightGBM's booster when it says never. A real registry, a real
LightGBM champion, really compiled.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import champion_config, register_champion

from housing_mlops.config import CandidateConfig

ROOT = Path(__file__).resolve().parent.parent
_NO_CC = shutil.which(os.environ.get("CC") or "cc") is None


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_train", ROOT / "benchmarks" / "bench_train.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lgbm_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    config = champion_config(tmp_path_factory)  # versions 1 ridge, 2 hist_gb
    candidate = CandidateConfig(
        name="lightgbm",
        estimator="lightgbm",
        params={"n_estimators": 40, "num_leaves": 15, "learning_rate": 0.1},
    )
    return config, register_champion(config, seed=5, candidate=candidate)


@pytest.mark.skipif(_NO_CC, reason="no C compiler (cc): apt-get install gcc")
def test_the_lightgbm_row_is_timed_on_its_compiled_trees(
    lgbm_config: tuple[Path, str], tmp_path: Path
) -> None:
    config, version = lgbm_config
    costs = _bench().row_costs(config, tmp_path, [version, "2"], repeat=40)
    lgbm = costs[version]
    assert lgbm["trees"] == "compiled"
    assert lgbm["max_abs_diff"] <= 1e-9  # the pipeline's numbers
    assert lgbm["row_us"] > 0 and lgbm["load_s"] > 0
    # Compiled fresh into the benchmark's own folder, not the user's cache.
    assert any((tmp_path / "compiled-trees").glob("lightgbm-*.so"))
    assert costs["2"]["trees"] == "estimator"  # hist_gb: its own fast path


def test_compiled_trees_never_times_lightgbm_itself(
    lgbm_config: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOUSING_SERVE_COMPILED_TREES", "never")
    config, version = lgbm_config
    costs = _bench().row_costs(config, tmp_path, [version], repeat=40)
    assert costs[version]["trees"] == "lightgbm"
    assert costs[version]["max_abs_diff"] <= 1e-9
    assert not (tmp_path / "compiled-trees").exists()
