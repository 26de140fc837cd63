"""Score one batch of rows: validate with the shared rules, predict the valid rows.

numpy only (plus the loaded model): both engines call it, the local one in this process,
the Spark one inside each executor's Python worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from housing_mlops.validation import Rejection, invalid_rows

# The output columns `housing predict` adds to the input's own.
PREDICTION = "prediction"
PREDICTION_USD = "prediction_usd"
MODEL_VERSION = "model_version"
RUN_ID = "run_id"
ROW_ID = "row_id"
ADDED_COLUMNS = (PREDICTION, PREDICTION_USD, MODEL_VERSION, RUN_ID, ROW_ID)
# The rejects file: the row id, the input columns and why the row was refused.
ERROR = "error"


@dataclass(frozen=True)
class ScoredBatch:
    """Predictions for the valid rows of a batch, and the rejected rows."""

    valid: np.ndarray  # bool mask over the batch's rows
    predictions: np.ndarray  # one per valid row, in row order ($100k)
    rejections: list[Rejection]

    @property
    def predictions_usd(self) -> np.ndarray:
        # The service's rounding: round(p * 100_000, 2).
        return np.round(self.predictions * 100_000.0, 2)


def score_batch(model: Any, X: np.ndarray, missing: np.ndarray | None = None) -> ScoredBatch:
    """Validate ``X`` (n x 8, ``FEATURES`` order) with ``model.requests.ranges``, then predict
    the valid rows with ``model.predict``: the function ``/predict`` calls."""
    bad, rejections = invalid_rows(X, model.requests.ranges, missing)
    valid = ~bad
    rows = X[valid]
    predictions = (
        np.asarray(model.predict(np.ascontiguousarray(rows)), dtype=np.float64).reshape(-1)
        if len(rows)
        else np.empty(0, dtype=np.float64)
    )
    return ScoredBatch(valid=valid, predictions=predictions, rejections=rejections)
