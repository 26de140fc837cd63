"""Live quality for the report, as pure functions of labelled rows (no I/O).

The input is what ``store.labelled_rows`` returns: answered rows joined to their true
value. Each model version is scored on the rows it answered and, for a challenger in
shadow mode, on the rows it scored in shadow (``shadow_prediction``): that is how both
models of a shadow deployment get a live RMSE although only the champion answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

HOUR = 3600.0
DAY = 86400.0
# Up to this span of labelled requests, live RMSE over time is drawn per hour, else per day.
HOURLY_SPAN_S = 2 * DAY


@dataclass(frozen=True)
class Scored:
    """One prediction of a labelled row by one (role, version): answered or in shadow."""

    ts: np.ndarray
    role: np.ndarray  # object (str)
    model_version: np.ndarray  # object (str or None)
    prediction: np.ndarray
    actual: np.ndarray


def scored(rows: Any) -> Scored:
    """Every (role, version) prediction of the labelled rows: answered, then shadow.

    A row without a role was logged before roles existed: the champion answered it.
    """
    role = np.array(["champion" if r is None else str(r) for r in rows.role], dtype=object)
    shadow = np.isfinite(rows.shadow_prediction)
    n_shadow = int(shadow.sum())
    return Scored(
        ts=np.concatenate([rows.ts, rows.ts[shadow]]),
        role=np.concatenate([role, np.full(n_shadow, "challenger", dtype=object)]),
        model_version=np.concatenate([rows.model_version, rows.shadow_version[shadow]]),
        prediction=np.concatenate([rows.prediction, rows.shadow_prediction[shadow]]),
        actual=np.concatenate([rows.actual, rows.actual[shadow]]),
    )


def _groups(s: Scored) -> tuple[list[tuple[str, str | None]], np.ndarray]:
    """The (role, version) keys, the champion's first, and each prediction's key number."""
    pairs = [
        (str(r), None if v is None else str(v))
        for r, v in zip(s.role.tolist(), s.model_version.tolist(), strict=True)
    ]
    keys = sorted(set(pairs), key=lambda k: (k[0] != "champion", k[0], str(k[1])))
    number = {key: i for i, key in enumerate(keys)}
    return keys, np.fromiter((number[p] for p in pairs), dtype=np.int64, count=len(pairs))


def per_version(rows: Any) -> list[dict[str, Any]]:
    """Overall live RMSE and MAE per (role, version), with its number of labelled rows."""
    s = scored(rows)
    keys, group = _groups(s)
    error = s.prediction - s.actual
    n = np.bincount(group, minlength=len(keys))
    sse = np.bincount(group, weights=error**2, minlength=len(keys))
    sae = np.bincount(group, weights=np.abs(error), minlength=len(keys))
    return [
        {
            "role": key[0],
            "model_version": key[1],
            "rows": int(n[i]),
            "rmse": float(np.sqrt(sse[i] / n[i])),
            "mae": float(sae[i] / n[i]),
        }
        for i, key in enumerate(keys)
    ]


def paired(rows: Any) -> list[dict[str, Any]]:
    """Both models on the same rows: per (answering version, shadow version) pair."""
    shadow = np.isfinite(rows.shadow_prediction)
    pairs = [
        (str(v), str(sv))
        for v, sv in zip(
            rows.model_version[shadow].tolist(), rows.shadow_version[shadow].tolist(), strict=True
        )
    ]
    keys = sorted(set(pairs))
    number = {key: i for i, key in enumerate(keys)}
    group = np.fromiter((number[p] for p in pairs), dtype=np.int64, count=len(pairs))
    actual = rows.actual[shadow]
    n = np.bincount(group, minlength=len(keys))
    sse = np.bincount(group, weights=(rows.prediction[shadow] - actual) ** 2, minlength=len(keys))
    shadow_sse = np.bincount(
        group, weights=(rows.shadow_prediction[shadow] - actual) ** 2, minlength=len(keys)
    )
    return [
        {
            "model_version": version,
            "shadow_version": shadow_version,
            "rows": int(n[i]),
            "rmse": float(np.sqrt(sse[i] / n[i])),
            "shadow_rmse": float(np.sqrt(shadow_sse[i] / n[i])),
        }
        for i, (version, shadow_version) in enumerate(keys)
    ]


def bucket_seconds(first_ts: float, last_ts: float) -> float:
    """Per hour for up to two days of labelled requests, per day beyond."""
    return HOUR if last_ts - first_ts <= HOURLY_SPAN_S else DAY


def over_time(rows: Any, bucket_s: float) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    """Live RMSE per (role, version) and time bucket (UTC-aligned, by request time)."""
    s = scored(rows)
    keys, group = _groups(s)
    buckets = np.floor(s.ts / bucket_s) * bucket_s
    starts, bucket = np.unique(buckets, return_inverse=True)
    cell = group * len(starts) + bucket.reshape(-1)
    size = len(keys) * len(starts)
    n = np.bincount(cell, minlength=size).reshape(len(keys), len(starts))
    sse = np.bincount(cell, weights=(s.prediction - s.actual) ** 2, minlength=size).reshape(
        len(keys), len(starts)
    )
    return {
        key: [
            {
                "start": float(starts[j]),
                "rows": int(n[i, j]),
                "rmse": float(np.sqrt(sse[i, j] / n[i, j])),
            }
            for j in range(len(starts))
            if n[i, j]
        ]
        for i, key in enumerate(keys)
    }


def traffic_shares(versions: list[dict[str, Any]]) -> list[float]:
    """Each entry's share of the answered rows (``store.role_stats`` versions)."""
    total = sum(int(v["rows"]) for v in versions)
    return [int(v["rows"]) / total if total else 0.0 for v in versions]
