"""Score one batch of rows: validate with the shared rules, predict the valid rows.

numpy only (plus the loaded model): both engines call it, the local one in this process,
the Spark one inside each executor's Python worker.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from housing_mlops.validation import Rejection, invalid_rows

_In = TypeVar("_In")
_Out = TypeVar("_Out")
InOrder = Callable[[Callable[[_In], _Out], Iterable[_In]], Iterator[_Out]]

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
    """Validate ``X`` (n x 8, ``FEATURES`` order) with ``model.ranges``, then predict
    the valid rows with ``model.predict``: the function ``/predict`` calls."""
    bad, rejections = invalid_rows(X, model.ranges, missing)
    valid = ~bad
    rows = X[valid]
    predictions = (
        np.asarray(model.predict(np.ascontiguousarray(rows)), dtype=np.float64).reshape(-1)
        if len(rows)
        else np.empty(0, dtype=np.float64)
    )
    return ScoredBatch(valid=valid, predictions=predictions, rejections=rejections)


@contextlib.contextmanager
def in_order(workers: int) -> Iterator[InOrder[Any, Any]]:
    """A ``map(fn, items)`` that runs ``fn`` on ``workers`` items at a time in threads and
    yields the results in input order (``workers`` <= 1: a plain serial map).

    Batches are scored one per core, each by one tree-evaluation thread, so the cores also
    share the feature transform and validation (numpy, the KD-tree and LightGBM release the
    GIL) and no OpenMP team waits on a thread the OS parked on a busy machine. At most
    ``workers + 1`` items are in flight (bounded memory) and the caller handles one result
    (writes it) while the pool works on the next. An error is raised when its item's turn
    comes, so everything before it is handled as in a serial loop; leaving the context
    cancels what has not started and waits for what has.
    """
    if workers <= 1:
        yield lambda fn, items: map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="housing-score") as pool:
        try:

            def mapped(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
                pending: deque[Future[Any]] = deque()
                for item in items:
                    pending.append(pool.submit(fn, item))
                    if len(pending) > workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()

            yield mapped
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
