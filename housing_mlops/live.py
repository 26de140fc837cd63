"""Live quality: how well each served model does on the requests that got a true value.

The statistics are pure numpy functions of arrays (easy to test with small ones):

- ``regression_metrics``: RMSE, MAE and R² of predictions against true values;
- ``bootstrap_rmse_ci``: a percentile bootstrap interval of the RMSE (rows resampled with
  replacement, ``promote.bootstrap_samples`` times, seeded: the same rows give the same
  interval);
- ``paired_difference``: two models scored on the SAME rows (a challenger in shadow and
  the champion that answered): both RMSEs, ``RMSE_challenger - RMSE_champion`` and its
  paired bootstrap interval (each resample draws the same rows for both models, so the
  row-to-row variation that both share cancels out);
- ``unpaired_difference``: the same for two groups of different rows (the challenger's
  canary rows and the champion's rows of the same period), each group resampled on its
  own.

``live_quality(settings, since)`` reads the labelled rows of the request log and computes
them per model version and role (``champion``, ``challenger`` for canary answers,
``shadow`` for a challenger's shadow predictions), plus every comparison; it is what
``housing evaluate --live`` prints and ``housing promote --from-live`` decides on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import UsageError
from housing_mlops.timestamps import iso_utc

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from housing_mlops.config import Settings
    from housing_mlops.store import LabelledRows

#: Seed of every bootstrap: the same rows and labels always give the same interval.
BOOTSTRAP_SEED = 20260101
#: Resampled row indices held in memory at once (chunks of bootstrap samples).
_BOOTSTRAP_CELLS = 4_000_000


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    """RMSE, MAE and R² (None when undefined: no rows, or R² of constant true values)."""
    import numpy as np

    y = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.size == 0:
        return {"rmse": None, "mae": None, "r2": None}
    err = y - p
    sse = float(np.sum(err**2))
    sst = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(sse / y.size)),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - sse / sst if sst > 0 else None,
    }


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _bootstrap_mse(
    squared: list[np.ndarray], samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per resample, the mean of each array of squared errors over the SAME drawn rows.

    All arrays have the same length n; ``samples`` resamples of n rows with replacement,
    drawn in chunks so memory stays bounded whatever n.
    """
    import numpy as np

    n = squared[0].shape[0]
    out = [np.empty(samples, dtype=np.float64) for _ in squared]
    step = max(1, _BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, samples, step):
        count = min(step, samples - start)
        rows = rng.integers(0, n, size=(count, n))
        for values, target in zip(squared, out, strict=True):
            target[start : start + count] = values[rows].mean(axis=1)
    return out


def bootstrap_rmse_ci(
    actual: np.ndarray,
    predicted: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the RMSE; None with fewer than 2 rows."""
    import numpy as np

    y = np.asarray(actual, dtype=np.float64)
    if y.size < 2:
        return None
    squared = (y - np.asarray(predicted, dtype=np.float64)) ** 2
    (mse,) = _bootstrap_mse([squared], samples, np.random.default_rng(seed))
    return _interval(np.sqrt(mse), confidence)


def paired_difference(
    actual: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Both models on the same rows: their RMSEs, ``challenger - champion`` and its
    paired bootstrap interval (None with fewer than 2 rows). Negative: the challenger
    is better."""
    import numpy as np

    y = np.asarray(actual, dtype=np.float64)
    sq_champion = (y - np.asarray(champion, dtype=np.float64)) ** 2
    sq_challenger = (y - np.asarray(challenger, dtype=np.float64)) ** 2
    result: dict[str, Any] = {
        "kind": "paired",
        "rows": int(y.size),
        "champion_rmse": float(np.sqrt(sq_champion.mean())) if y.size else None,
        "challenger_rmse": float(np.sqrt(sq_challenger.mean())) if y.size else None,
        "difference": None,
        "difference_ci": None,
    }
    if y.size:
        result["difference"] = result["challenger_rmse"] - result["champion_rmse"]
    if y.size >= 2:
        a, b = _bootstrap_mse([sq_champion, sq_challenger], samples, np.random.default_rng(seed))
        result["difference_ci"] = list(_interval(np.sqrt(b) - np.sqrt(a), confidence))
    return result


def unpaired_difference(
    champion_actual: np.ndarray,
    champion_pred: np.ndarray,
    challenger_actual: np.ndarray,
    challenger_pred: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Two models on different rows (canary): RMSEs, ``challenger - champion`` and a
    two-sample bootstrap interval (each group resampled on its own)."""
    import numpy as np

    sq_a = (np.asarray(champion_actual, float) - np.asarray(champion_pred, float)) ** 2
    sq_b = (np.asarray(challenger_actual, float) - np.asarray(challenger_pred, float)) ** 2
    result: dict[str, Any] = {
        "kind": "unpaired",
        "rows": int(sq_b.size),
        "champion_rows": int(sq_a.size),
        "champion_rmse": float(np.sqrt(sq_a.mean())) if sq_a.size else None,
        "challenger_rmse": float(np.sqrt(sq_b.mean())) if sq_b.size else None,
        "difference": None,
        "difference_ci": None,
    }
    if sq_a.size and sq_b.size:
        result["difference"] = result["challenger_rmse"] - result["champion_rmse"]
    if sq_a.size >= 2 and sq_b.size >= 2:
        rng = np.random.default_rng(seed)
        (a,) = _bootstrap_mse([sq_a], samples, rng)
        (b,) = _bootstrap_mse([sq_b], samples, rng)
        result["difference_ci"] = list(_interval(np.sqrt(b) - np.sqrt(a), confidence))
    return result


# ------------------------------------------------------------------ from the request log
def _role(value: Any) -> str | None:
    return None if value is None else str(value)


def _group_rows(rows: LabelledRows, samples: int, confidence: float) -> list[dict[str, Any]]:
    """One entry per (model version, role, how scored) with labelled rows: the answers the
    clients got (``scored`` ``answered``; role champion/challenger, or None for rows logged
    before roles), then every challenger's shadow predictions (role ``challenger``,
    ``scored`` ``shadow``: the same role name as the report and the live-RMSE gauges)."""
    import numpy as np

    groups: list[dict[str, Any]] = []

    def add(
        version: str, role: str | None, mask: np.ndarray, predicted: np.ndarray, scored: str
    ) -> None:
        y, p = rows.actual[mask], predicted[mask]
        groups.append(
            {
                "model_version": version,
                "role": role,
                "scored": scored,
                "rows": int(y.size),
                **regression_metrics(y, p),
                "rmse_ci": _as_list(
                    bootstrap_rmse_ci(y, p, samples=samples, confidence=confidence)
                ),
                "first_ts": iso_utc(float(rows.ts[mask].min())),
                "last_ts": iso_utc(float(rows.ts[mask].max())),
            }
        )

    keys = sorted(
        {(str(v), _role(r)) for v, r in zip(rows.model_version, rows.role, strict=True)},
        key=lambda k: (_version_key(k[0]), k[1] or ""),
    )
    versions = rows.model_version.astype(str)
    roles = np.array([r or "" for r in rows.role], dtype=object)
    for version, role in keys:
        mask = (versions == version) & (roles == (role or ""))
        add(version, role, mask, rows.prediction, "answered")
    shadowed = np.isfinite(rows.shadow_prediction)
    shadow_versions = sorted({str(v) for v in rows.shadow_version[shadowed]}, key=_version_key)
    shadow_of = rows.shadow_version.astype(str)
    for version in shadow_versions:
        mask = shadowed & (shadow_of == version)
        add(version, "challenger", mask, rows.shadow_prediction, "shadow")
    return groups


def _as_list(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [pair[0], pair[1]]


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def shadow_pairs(rows: LabelledRows, champion_version: str, challenger_version: str) -> np.ndarray:
    """The rows answered by ``champion_version`` and shadowed by ``challenger_version``."""
    import numpy as np

    return (
        (rows.model_version.astype(str) == champion_version)
        & (rows.shadow_version.astype(str) == challenger_version)
        & np.isfinite(rows.shadow_prediction)
    )


def canary_groups(
    rows: LabelledRows, champion_version: str, challenger_version: str
) -> tuple[np.ndarray, np.ndarray]:
    """(champion rows, challenger rows) of a canary: the challenger's answers, and the
    champion's answers over the same period (first to last challenger answer).

    Canary routing is a hash of the client key or the request id, so in one period the
    two groups are comparable samples of the same traffic; rows from before or after
    the canary ran would compare different periods instead.
    """
    import numpy as np

    versions = rows.model_version.astype(str)
    roles = np.array([r or "champion" for r in rows.role], dtype=object)
    challenger = (versions == challenger_version) & (roles == "challenger")
    champion = (versions == champion_version) & (roles == "champion")
    if challenger.any():
        first, last = rows.ts[challenger].min(), rows.ts[challenger].max()
        champion &= (rows.ts >= first) & (rows.ts <= last)
    else:
        champion &= False
    return champion, challenger


def compare(
    rows: LabelledRows,
    champion_version: str,
    challenger_version: str,
    *,
    samples: int,
    confidence: float,
) -> list[dict[str, Any]]:
    """Every comparison of the two versions the rows allow: paired on shadowed rows,
    unpaired on canary rows (each only when such rows exist)."""
    out: list[dict[str, Any]] = []
    pairs = shadow_pairs(rows, champion_version, challenger_version)
    if pairs.any():
        out.append(
            paired_difference(
                rows.actual[pairs],
                rows.prediction[pairs],
                rows.shadow_prediction[pairs],
                samples=samples,
                confidence=confidence,
            )
        )
    champion, challenger = canary_groups(rows, champion_version, challenger_version)
    if challenger.any():
        out.append(
            unpaired_difference(
                rows.actual[champion],
                rows.prediction[champion],
                rows.actual[challenger],
                rows.prediction[challenger],
                samples=samples,
                confidence=confidence,
            )
        )
    for entry in out:
        entry["champion_version"] = champion_version
        entry["challenger_version"] = challenger_version
    return out


def _all_comparisons(rows: LabelledRows, samples: int, confidence: float) -> list[dict[str, Any]]:
    """Every (champion, challenger) version pair seen in the rows: shadowed rows, and
    canary answers (role ``challenger``) against the version that answered the rest."""
    import numpy as np

    pairs: set[tuple[str, str]] = set()
    shadowed = np.isfinite(rows.shadow_prediction)
    for answered, shadow in zip(
        rows.model_version[shadowed], rows.shadow_version[shadowed], strict=True
    ):
        pairs.add((str(answered), str(shadow)))
    roles = np.array([r or "champion" for r in rows.role], dtype=object)
    champions = {str(v) for v in rows.model_version[roles == "champion"]}
    for canary in {str(v) for v in rows.model_version[roles == "challenger"]}:
        for champion in champions - {canary}:
            pairs.add((champion, canary))
    out: list[dict[str, Any]] = []
    for champion, challenger in sorted(
        pairs, key=lambda p: (_version_key(p[0]), _version_key(p[1]))
    ):
        for entry in compare(rows, champion, challenger, samples=samples, confidence=confidence):
            if entry["difference"] is not None:
                out.append(entry)
    return out


def read_labelled(settings: Settings, since_ts: float | None = None) -> LabelledRows:
    """The labelled rows of the configured request log (none when there is no log)."""
    from housing_mlops import store

    conn = store.open_readonly(settings.serve.request_log)
    try:
        with store.damaged_log_errors(settings.serve.request_log):
            return store.labelled_rows(conn, since_ts=since_ts)
    finally:
        if conn is not None:
            conn.close()


def live_quality(
    settings: Settings, since: str | None = None, *, now: float | None = None
) -> dict[str, Any]:
    """Live RMSE, MAE and R² per model version and role, with bootstrap intervals, and
    the paired (shadow) and unpaired (canary) comparisons: ``housing evaluate --live``.

    ``since``: a duration (7d) or ISO time; None means every labelled row.
    """
    from housing_mlops.drift.window import parse_when
    from housing_mlops.store import check_request_log, parse_log_location

    now = time.time() if now is None else now
    since_ts = parse_when(since, now, "--since") if since is not None else None
    if since_ts is not None and since_ts >= now:
        # As drift's window: a mistyped year would read "No labelled requests ... send
        # true values", sending users to label what is labelled already.
        raise UsageError(
            f"the window is empty: --since ({iso_utc(since_ts)}) must be before now "
            f"({iso_utc(now)})"
        )
    cfg = settings.promote
    samples, confidence = cfg.bootstrap_samples, cfg.live_confidence
    # No log at all (a mistyped --request-log) is said as such: "No labelled requests ...
    # send true values" sent users to label requests logged elsewhere.
    log_exists = check_request_log(settings.serve.request_log)
    rows = read_labelled(settings, since_ts)
    return {
        "request_log": str(parse_log_location(settings.serve.request_log)),
        "request_log_exists": log_exists,
        "since": iso_utc(since_ts) if since_ts is not None else None,
        "until": iso_utc(now),
        "labelled_rows": len(rows),
        "confidence": cfg.live_confidence,
        "bootstrap_samples": cfg.bootstrap_samples,
        "models": _group_rows(rows, samples, confidence) if len(rows) else [],
        "comparisons": _all_comparisons(rows, samples, confidence) if len(rows) else [],
    }


def summary_line(entry: Mapping[str, Any], confidence: float) -> str:
    """One comparison in words: both RMSEs, the difference and its interval."""
    ci = entry.get("difference_ci")
    interval = f", {confidence:.0%} CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
    rows = (
        f"the same {entry['rows']} shadowed rows"
        if entry["kind"] == "paired"
        else f"{entry['rows']} canary rows vs {entry['champion_rows']} champion rows of the "
        "same period"
    )
    return (
        f"challenger version {entry['challenger_version']} live RMSE "
        f"{entry['challenger_rmse']:.4f} vs champion version {entry['champion_version']}'s "
        f"{entry['champion_rmse']:.4f} on {rows}: difference {entry['difference']:+.4f}"
        f"{interval}"
    )
