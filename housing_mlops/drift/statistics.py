"""Drift statistics: PSI, Kolmogorov-Smirnov, Wasserstein, per-column and dataset verdicts.

Pure numpy: arrays and a reference profile (``drift.profile``) in, numbers and verdicts
out; nothing here reads the request log or the registry (``drift.check`` does).

A *current* window (a uniform sample of logged requests) is compared with a reference
profile column by column (``compare_column``), then as a whole (``dataset_verdict``).

Why samples and not every logged row: a week of traffic can hold millions of rows, and
turning each into Python objects costs seconds. The window is read as a uniform random
sample of at most ``drift.sample_rows`` rows (store.window_sample), which changes the
statistics by far less than the thresholds they are compared with:

* KS: by the Dvoretzky-Kiefer-Wolfowitz inequality the sample CDF is within
  sqrt(ln(2/a) / 2n) of the window's CDF everywhere with probability 1 - a; for
  n = 50,000 and a = 0.001 that is 0.0087, so the KS statistic moves by < 0.01.
* Wasserstein-1 is the integral of |F - G|, so it moves by at most the same CDF error
  times the spread of the data; normalised by the reference std that is ~0.01 against a
  warn threshold of 0.05.
* PSI on B bins: each bin share has a standard error sqrt(p(1-p)/n) <= 0.0023 at
  n = 50,000; the sampling bias of PSI is about (B - 1) / n ~ 0.0002, against bands of
  0.1 / 0.2.

The reference side is the profile's stored random sample (5,000 training rows by
default), its 101 quantiles (exact over the full train split) and its exact std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from housing_mlops.columns import FEATURES

#: Columns judged, in display order: the 8 raw features, then the model's prediction.
PREDICTION = "prediction"

#: Bin share used in place of 0 in PSI (an empty bin would make the log infinite).
PSI_EPSILON = 1e-4

#: Histogram bins stored per column for the report's reference-vs-current plots.
HISTOGRAM_BINS = 30


def psi_edges(quantiles: Any, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's 1/bins quantiles (duplicates from ties collapse).

    ``quantiles`` are the profile's 101 percentiles; the outer bins are open-ended, so
    current values outside the training range land in the first or last bin.
    """
    q = np.asarray(quantiles, dtype=float)
    if q.size < 2:
        return np.array([], dtype=float)
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    # Interpolate on the stored percentile grid (exact when 100 is a multiple of bins).
    inner = np.interp(levels, np.linspace(0.0, 1.0, q.size), q)
    return np.unique(inner)


def bin_shares(values: Any, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    v = np.asarray(values, dtype=float)
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1)
    return counts / max(v.size, 1)


def psi(reference_shares: Any, current_shares: Any, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index: sum((c - r) * ln(c / r)) with empty bins set to epsilon."""
    r = np.clip(np.asarray(reference_shares, dtype=float), epsilon, None)
    c = np.clip(np.asarray(current_shares, dtype=float), epsilon, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _kolmogorov_sf(x: float) -> float:
    """Survival function of the Kolmogorov distribution, Q(x) = 2 sum (-1)^(k-1) e^(-2k^2x^2)."""
    if x <= 0.2:  # Q(0.2) = 1 - 5e-11: the series needs many terms here and adds nothing
        return 1.0
    k = np.arange(1, 101, dtype=float)
    terms = np.exp(-2.0 * (k * x) ** 2) * np.where(k % 2 == 1, 1.0, -1.0)
    return float(min(max(2.0 * terms.sum(), 0.0), 1.0))


def ks_2samp(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic two-sided p-value.

    The statistic is exactly scipy.stats.ks_2samp's (max CDF gap over the pooled sample).
    The p-value uses the limiting Kolmogorov distribution at sqrt(en) * D with Stephens'
    small-sample correction, en = n m / (n + m); for the window sizes judged here (at least
    ``min_rows`` rows against thousands of reference rows) it agrees with scipy's to a few
    percent. Written in numpy so a drift check does not pay the 1 s import of scipy.stats.
    """
    a = np.sort(np.asarray(reference, dtype=float))
    b = np.sort(np.asarray(current, dtype=float))
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    pooled = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, pooled, side="right") / n
    cdf_b = np.searchsorted(b, pooled, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = n * m / (n + m)
    sqrt_en = np.sqrt(en)
    return d, _kolmogorov_sf((sqrt_en + 0.12 + 0.11 / sqrt_en) * d)


def wasserstein(reference: Any, current: Any) -> float:
    """Wasserstein-1 (earth mover's) distance between two samples: the integral of |F - G|.

    Same definition and result as scipy.stats.wasserstein_distance (unweighted).
    """
    a = np.sort(np.asarray(reference, dtype=float))
    b = np.sort(np.asarray(current, dtype=float))
    if a.size == 0 or b.size == 0:
        return float("nan")
    pooled = np.sort(np.concatenate([a, b]))
    deltas = np.diff(pooled)
    cdf_a = np.searchsorted(a, pooled[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, pooled[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * deltas))


def wasserstein_scale(reference_column: Mapping[str, Any]) -> tuple[float, str | None]:
    """The divisor that makes Wasserstein unit-free: the reference std.

    A constant reference column (std 0) has no spread to compare with; its distance is
    divided by max(|reference mean|, 1) instead, i.e. read as a relative change of the
    constant (an unchanged constant scores 0, a constant 1.0 becoming 0.0 scores 1.0).
    """
    std = float(reference_column.get("std") or 0.0)
    if std > 0 and np.isfinite(std):
        return std, None
    mean = float(reference_column.get("mean") or 0.0)
    return max(abs(mean), 1.0), "constant in the reference: distance relative to its value"


def verdict_for(
    psi_value: float, wasserstein_norm: float, ks_pvalue: float, thresholds: Any, alpha: float
) -> str:
    """ok / warn / drift from effect sizes, with the KS test as a guard against noise.

    The effect sizes decide: the normalised Wasserstein distance (warn/drift thresholds,
    0.05 / 0.1 by default) and PSI on the usual 0.1 / 0.2 bands; either one reaching its
    drift threshold is a candidate drift, either reaching its warn threshold a warn. A
    candidate drift is kept only when the KS p-value is below ``alpha`` (``ks_pvalue``
    Bonferroni-divided by the columns judged); otherwise it is reported as warn.

    Why: on a few hundred rows the distances themselves are noisy (on the real data a
    200-row window drawn from the training distribution reaches a normalised Wasserstein
    of 0.1 to 0.2 for one column in five), while on large windows every p-value is tiny
    and flags differences too small to matter. Requiring both a material and a
    significant difference keeps each failure mode from raising alarms alone; the
    p-value never marks drift by itself.
    """
    if psi_value >= thresholds.psi_drift or wasserstein_norm >= thresholds.wasserstein_drift:
        return "drift" if ks_pvalue < alpha else "warn"
    if psi_value >= thresholds.psi_warn or wasserstein_norm >= thresholds.wasserstein_warn:
        return "warn"
    return "ok"


def _histogram(ref: np.ndarray, cur: np.ndarray) -> dict[str, list[float]]:
    """Shares on common equal-width bins spanning both samples' 0.5-99.5 % range."""
    lo = float(min(np.quantile(ref, 0.005), np.quantile(cur, 0.005)))
    hi = float(max(np.quantile(ref, 0.995), np.quantile(cur, 0.995)))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    r = np.histogram(np.clip(ref, lo, hi), bins=edges)[0] / ref.size
    c = np.histogram(np.clip(cur, lo, hi), bins=edges)[0] / cur.size
    return {
        "edges": [round(float(e), 6) for e in edges],
        "reference": [round(float(x), 6) for x in r],
        "current": [round(float(x), 6) for x in c],
    }


def compare_column(
    reference_column: Mapping[str, Any],
    current: Any,
    thresholds: Any,
    alpha: float | None = None,
) -> dict[str, Any]:
    """All statistics and the verdict for one column (a profile entry vs current values).

    ``thresholds`` is the ``drift`` config section (psi_bins, psi_warn/drift,
    wasserstein_warn/drift, ks_pvalue); ``alpha`` the KS significance level for a drift
    mark (default ``ks_pvalue``). NaNs in ``current`` are ignored.
    """
    cur = np.asarray(current, dtype=float)
    cur = cur[np.isfinite(cur)]
    ref = np.asarray(reference_column.get("sample") or [], dtype=float)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("both the reference sample and the current values must be non-empty")
    quantiles = reference_column.get("quantiles") or np.quantile(ref, np.linspace(0, 1, 101))
    edges = psi_edges(quantiles, thresholds.psi_bins)
    psi_value = psi(bin_shares(ref, edges), bin_shares(cur, edges))
    ks_stat, ks_p = ks_2samp(ref, cur)
    distance = wasserstein(ref, cur)
    scale, note = wasserstein_scale(reference_column)
    w_norm = distance / scale
    return {
        "rows": int(cur.size),
        "ref_mean": float(reference_column.get("mean", float(ref.mean()))),
        "cur_mean": float(cur.mean()),
        "ref_std": float(reference_column.get("std") or 0.0),
        "cur_std": float(cur.std(ddof=1)) if cur.size > 1 else 0.0,
        "psi": psi_value,
        "ks": ks_stat,
        "ks_pvalue": ks_p,
        "wasserstein": distance,
        "wasserstein_norm": w_norm,
        "verdict": verdict_for(
            psi_value, w_norm, ks_p, thresholds, thresholds.ks_pvalue if alpha is None else alpha
        ),
        "note": note,
        "hist": _histogram(ref, cur),
    }


def dataset_verdict(scores: Sequence[Mapping[str, Any]], thresholds: Any) -> dict[str, Any]:
    """Dataset-level verdict from per-column scores.

    Dataset drift when the share of *input features* marked drift reaches ``drift_share``,
    or when an input feature *marked drift* passes a hard limit (PSI >= hard_limit_psi or
    normalised Wasserstein >= hard_limit_wasserstein). A feature kept at warn by the KS
    guard never counts, however far it moved: on a small window that distance is noise.
    So dataset drift always comes with at least one column marked drift (exit 6). The
    prediction is judged and shown like a feature, and a drifting prediction fails the
    check (exit 6), but it does not count towards the feature share.
    """
    features = [s for s in scores if s.get("kind", "feature") == "feature"]
    drifting = [s["feature"] for s in features if s["verdict"] == "drift"]
    warning = [s["feature"] for s in features if s["verdict"] == "warn"]
    hard = [
        s["feature"]
        for s in features
        if s["verdict"] == "drift"
        and (
            s["psi"] >= thresholds.hard_limit_psi
            or s["wasserstein_norm"] >= thresholds.hard_limit_wasserstein
        )
    ]
    share = len(drifting) / len(features) if features else 0.0
    dataset_drift = bool(features) and (share >= thresholds.drift_share or bool(hard))
    any_drift = any(s["verdict"] == "drift" for s in scores)
    any_warn = any(s["verdict"] == "warn" for s in scores)
    return {
        "features": len(features),
        "drifting_features": drifting,
        "warning_features": warning,
        "hard_limit_features": hard,
        "drift_share": share,
        "dataset_drift": dataset_drift,
        "any_drift": any_drift,
        "verdict": "drift" if any_drift else ("warn" if any_warn else "ok"),
    }


def compare_window(
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    thresholds: Any,
    columns: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Judge every column present in both the reference profile and the current window.

    Returns {"scores": [per-column dicts with "feature" and "kind"], "ks_alpha": the
    corrected significance level, **dataset_verdict}.
    """
    ref_columns = reference.get("columns", {})
    wanted = [c for c in columns or (*FEATURES, PREDICTION) if c in ref_columns and c in current]
    alpha = thresholds.ks_pvalue / max(len(wanted), 1)  # Bonferroni over the columns judged
    scores: list[dict[str, Any]] = []
    for name in wanted:
        entry = compare_column(ref_columns[name], current[name], thresholds, alpha)
        scores.append(
            {"feature": name, "kind": "prediction" if name == PREDICTION else "feature", **entry}
        )
    return {"scores": scores, "ks_alpha": alpha, **dataset_verdict(scores, thresholds)}
