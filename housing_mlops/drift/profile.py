"""The reference profile: what drift checks compare requests with, built from the train split.

A *profile* summarises a frame (the train split, or a model's predictions on it) so that
later windows of logged requests can be compared with it without the training data:
per column count, mean, std, min, max, 101 quantiles (0..100 %) and a fixed-size random
sample (the same rows for every column). ``housing featurize`` writes the features'
profile beside the split; ``housing train`` stores one (features and the model's
predictions) with each registered version. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PROFILE_FORMAT = 1


def build_profile(
    columns: Mapping[str, Any], sample_size: int = 5000, seed: int = 42
) -> dict[str, Any]:
    """Summarise equally long 1-D columns into a JSON-serialisable profile."""
    arrays = {name: np.asarray(values, dtype=float) for name, values in columns.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    n = lengths.pop()
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n, size=min(sample_size, n), replace=False)) if n else np.array([])
    profile: dict[str, Any] = {"format": PROFILE_FORMAT, "rows": int(n), "columns": {}}
    for name, a in arrays.items():
        profile["columns"][name] = {
            "count": int(a.size),
            "mean": float(a.mean()) if n else None,
            "std": float(a.std(ddof=1)) if n > 1 else 0.0,
            "min": float(a.min()) if n else None,
            "max": float(a.max()) if n else None,
            "quantiles": [float(q) for q in np.quantile(a, np.linspace(0, 1, 101))] if n else [],
            "sample": [float(v) for v in a[take.astype(int)]] if n else [],
        }
    return profile


def _numbers(values: Any, *, empty: bool) -> bool:
    return (
        isinstance(values, list)
        and (empty or bool(values))
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
            for v in values
        )
    )


def profile_problem(profile: Any) -> str | None:
    """Why ``profile`` (read from JSON) cannot be compared with, or None when it can: an
    object whose ``columns`` map each name to a non-empty finite ``sample`` (and, when
    present, finite ``quantiles`` and numeric ``mean`` / ``std``)."""
    if not isinstance(profile, dict):
        return f"expected a JSON object with 'columns', got {type(profile).__name__}"
    columns = profile.get("columns")
    if not isinstance(columns, dict) or not columns:
        return "'columns' must be an object mapping each column to its summary"
    for name, column in columns.items():
        if not isinstance(column, dict):
            return f"column {name!r} must be an object"
        if not _numbers(column.get("sample"), empty=False):
            return f"column {name!r} needs 'sample', a non-empty list of finite numbers"
        if "quantiles" in column and not _numbers(column["quantiles"], empty=True):
            return f"column {name!r}: 'quantiles' must be a list of finite numbers"
        for key in ("mean", "std"):
            value = column.get(key)
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool)
            ):
                return f"column {name!r}: '{key}' must be a number"
    return None
