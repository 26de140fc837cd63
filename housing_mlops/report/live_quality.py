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


def rmse(prediction: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(prediction) - np.asarray(actual)) ** 2)))


def mae(prediction: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(prediction) - np.asarray(actual))))


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


def _keys(s: Scored) -> list[tuple[str, str | None]]:
    return sorted(
        {
            (str(r), None if v is None else str(v))
            for r, v in zip(s.role, s.model_version, strict=True)
        },
        key=lambda k: (k[0] != "champion", k[0], str(k[1])),
    )


def _mask(s: Scored, key: tuple[str, str | None]) -> np.ndarray:
    role, version = key
    return np.array(
        [r == role and v == version for r, v in zip(s.role, s.model_version, strict=True)],
        dtype=bool,
    )


def per_version(rows: Any) -> list[dict[str, Any]]:
    """Overall live RMSE and MAE per (role, version), with its number of labelled rows."""
    s = scored(rows)
    out = []
    for key in _keys(s):
        m = _mask(s, key)
        out.append(
            {
                "role": key[0],
                "model_version": key[1],
                "rows": int(m.sum()),
                "rmse": rmse(s.prediction[m], s.actual[m]),
                "mae": mae(s.prediction[m], s.actual[m]),
            }
        )
    return out


def paired(rows: Any) -> list[dict[str, Any]]:
    """Both models on the same rows: per (answering version, shadow version) pair."""
    shadow = np.isfinite(rows.shadow_prediction)
    pairs = sorted(
        {
            (str(v), str(sv))
            for v, sv in zip(rows.model_version[shadow], rows.shadow_version[shadow], strict=True)
        }
    )
    out = []
    for version, shadow_version in pairs:
        m = shadow & np.array(
            [
                str(v) == version and str(sv) == shadow_version
                for v, sv in zip(rows.model_version, rows.shadow_version, strict=True)
            ],
            dtype=bool,
        )
        out.append(
            {
                "model_version": version,
                "shadow_version": shadow_version,
                "rows": int(m.sum()),
                "rmse": rmse(rows.prediction[m], rows.actual[m]),
                "shadow_rmse": rmse(rows.shadow_prediction[m], rows.actual[m]),
            }
        )
    return out


def bucket_seconds(first_ts: float, last_ts: float) -> float:
    """Per hour for up to two days of labelled requests, per day beyond."""
    return HOUR if last_ts - first_ts <= HOURLY_SPAN_S else DAY


def over_time(rows: Any, bucket_s: float) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    """Live RMSE per (role, version) and time bucket (UTC-aligned, by request time)."""
    s = scored(rows)
    buckets = np.floor(s.ts / bucket_s) * bucket_s
    out: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for key in _keys(s):
        m = _mask(s, key)
        series = []
        for start in np.unique(buckets[m]):
            b = m & (buckets == start)
            series.append(
                {
                    "start": float(start),
                    "rows": int(b.sum()),
                    "rmse": rmse(s.prediction[b], s.actual[b]),
                }
            )
        out[key] = series
    return out


def traffic_shares(versions: list[dict[str, Any]]) -> list[float]:
    """Each entry's share of the answered rows (``store.role_stats`` versions)."""
    total = sum(int(v["rows"]) for v in versions)
    return [int(v["rows"]) / total if total else 0.0 for v in versions]
