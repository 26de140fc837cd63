"""Small synthetic California-like data and throwaway configs for fast tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from housing_mlops.columns import FEATURES, TARGET  # noqa: F401 - re-exported for tests

if TYPE_CHECKING:
    import pandas as pd


def make_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A pandas frame with the 8 raw features and a target that depends on them."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    med_inc = rng.lognormal(1.2, 0.45, n).clip(0.5, 15.0)
    lat = rng.uniform(32.6, 41.9, n)
    lon = rng.uniform(-124.3, -114.4, n)
    rooms = rng.normal(5.3, 1.0, n).clip(1.5, 12)
    frame = pd.DataFrame(
        {
            "MedInc": med_inc,
            "HouseAge": rng.integers(1, 53, n).astype(float),
            "AveRooms": rooms,
            "AveBedrms": (rooms * rng.uniform(0.15, 0.25, n)).clip(0.5, None),
            "Population": rng.integers(50, 4000, n).astype(float),
            "AveOccup": rng.normal(2.9, 0.6, n).clip(1.0, 8.0),
            "Latitude": lat,
            "Longitude": lon,
        }
    )
    target = 0.45 * med_inc - 0.05 * (lat - 36) + 0.02 * frame["HouseAge"] / 10
    frame[TARGET] = (target + rng.normal(0, 0.3, n)).clip(0.15, 5.00001)
    return frame


def write_config(tmp_path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write a config with every path inside tmp_path and small, fast candidates."""
    import yaml

    config: dict[str, Any] = {
        "paths": {
            "raw_dir": str(tmp_path / "data" / "raw"),
            "processed_dir": str(tmp_path / "data" / "processed"),
            "reports_dir": str(tmp_path / "reports"),
        },
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            "artifact_location": str(tmp_path / "mlruns" / "artifacts"),
            "experiment_name": "test-housing",
            "registered_model_name": "test-housing",
        },
        "features": {"knn_neighbors": [8], "knn_folds": 3, "profile_sample_size": 200},
        "train": {
            "cv_folds": 3,
            "seed": 42,
            "n_jobs": 1,
            "candidates": [
                {"name": "ridge", "estimator": "ridge", "params": {"alpha": 1.0}},
                {
                    "name": "hist_gb",
                    "estimator": "hist_gradient_boosting",
                    "params": {"max_iter": 30},
                },
            ],
        },
        "promote": {"max_rmse": 1.0, "min_r2": 0.3},
        "serve": {
            "request_log": str(tmp_path / "data" / "requests.db"),
            "spool_dir": str(tmp_path / "data" / "spool"),
        },
        "drift": {"min_rows": 50},
    }
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
