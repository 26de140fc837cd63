"""Reference profiles and drift statistics: pure numpy/scipy, no I/O.

A *profile* summarises a frame (the train split, or a model's predictions on it) so that
later windows of logged requests can be compared with it without the training data:
per column count, mean, std, min, max, 101 quantiles (0..100 %) and a fixed-size random
sample (the same rows for every column).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from housing_mlops.columns import FEATURES

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


# ====================================================================== drift statistics
#
# Everything below compares a *current* window (a uniform sample of logged requests) with a
# reference profile (above). The functions are pure: arrays in, numbers out.
#
# Why samples and not every logged row: a week of traffic can hold millions of rows, and
# turning each into Python objects costs seconds. The window is read as a uniform random
# sample of at most ``drift.sample_rows`` rows (store.window_sample), which changes the
# statistics by far less than the thresholds they are compared with:
#
# * KS: by the Dvoretzky-Kiefer-Wolfowitz inequality the sample CDF is within
#   sqrt(ln(2/a) / 2n) of the window's CDF everywhere with probability 1 - a; for
#   n = 50,000 and a = 0.001 that is 0.0087, so the KS statistic moves by < 0.01.
# * Wasserstein-1 is the integral of |F - G|, so it moves by at most the same CDF error
#   times the spread of the data; normalised by the reference std that is ~0.01 against a
#   warn threshold of 0.05.
# * PSI on B bins: each bin share has a standard error sqrt(p(1-p)/n) <= 0.0023 at
#   n = 50,000; the sampling bias of PSI is about (B - 1) / n ~ 0.0002, against bands of
#   0.1 / 0.2.
#
# The reference side is the profile's stored random sample (5,000 training rows by
# default), its 101 quantiles (exact over the full train split) and its exact std.

#: Columns judged, in display order: the 8 raw features, then the model's prediction.
PREDICTION = "prediction"

#: Bin share used in place of 0 in PSI (an empty bin would make the log infinite).
PSI_EPSILON = 1e-4

#: Histogram bins stored per column for the report's reference-vs-current plots.
HISTOGRAM_BINS = 30

VERDICTS = ("ok", "warn", "drift")


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


def _names(columns: Sequence[str]) -> str:
    """'MedInc', 'MedInc and the prediction', 'MedInc, AveRooms and the prediction'."""
    words = ["the prediction" if c == PREDICTION else c for c in columns]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The human account of a drift check, printed under the table (one line each).

    ``result`` is check_drift's result (or a stored run with its scores). The lines say
    which columns are marked drift and warn, whether the dataset rule fired and why, the
    verdict with the exit code it gives and the reason, and the notes (sample, other
    versions, stored run id). The exit code follows the same rule as ``housing drift``:
    6 when any column (a feature or the prediction) is marked drift, else 0; dataset drift
    always comes with a column marked drift (``dataset_verdict``), so no line contradicts
    another.
    """
    scores = result.get("scores") or []
    marked = [s["feature"] for s in scores if s.get("verdict") == "drift"]
    warned = [s["feature"] for s in scores if s.get("verdict") == "warn"]
    thresholds = result.get("thresholds") or {}
    drifting = list(result.get("drifting_features") or [])
    hard = list(result.get("hard_limit_features") or [])
    dataset = bool(result.get("dataset_drift"))

    def number(key: str, spec: str = "g") -> str:
        value = thresholds.get(key)
        return "?" if value is None else format(float(value), spec)

    rule = (
        f"{len(drifting)}/{result.get('features', 0)} features drifting, share "
        f"{float(result.get('drift_share') or 0.0):.2f}, threshold {number('drift_share', '.2f')}; "
    )
    if hard:
        rule += f"hard limit passed by {', '.join(hard)}"
    else:
        rule += (
            f"no drifting feature past the hard limits, PSI {number('hard_limit_psi')} or "
            f"Wasserstein {number('hard_limit_wasserstein')}"
        )
    lines = [
        f"Dataset drift: {'YES' if dataset else 'no'} ({rule})",
        f"Columns marked drift: {', '.join(marked) if marked else 'none'}",
    ]
    if warned:
        lines.append(f"Columns marked warn: {', '.join(warned)}")
    if marked:
        verb = "is" if len(marked) == 1 else "are"
        why = f"{_names(marked)} {verb} marked drift"
        if not dataset:
            why += " (a column marked drift fails the check even without dataset drift)"
        lines.append(f"Verdict: drift, exit 6: {why}")
    elif warned:
        lines.append(
            f"Verdict: warn, exit 0: no column is marked drift ({_names(warned)} only warn)"
        )
    else:
        lines.append("Verdict: ok, exit 0: no column is marked drift or warn")

    rows, sampled = result.get("rows"), result.get("sampled_rows")
    if rows is not None and sampled is not None and sampled < rows:
        lines.append(f"Judged on a uniform sample of {sampled} of {rows} rows")
    others = result.get("other_versions") or {}
    if others:
        listed = ", ".join(f"v{v}: {n} rows" for v, n in others.items())
        lines.append(f"Other versions in the window ({listed}): judge them with --model-version N")
    if result.get("run_id") is not None:
        lines.append(f"Stored as drift run {result['run_id']}")
    return lines


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


# ========================================================================= time windows
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ACCEPTED_TIME_FORMS = (
    "a duration such as 30m, 12h, 7d or 2w (units s, m, h, d, w), or an ISO-8601 "
    "timestamp such as 2026-01-31 or 2026-01-31T12:00:00Z (no zone means UTC)"
)


def parse_when(value: str, now: float, option: str = "--since") -> float:
    """Epoch seconds (UTC) for a duration back from ``now`` or an ISO-8601 timestamp.

    Raises UsageError naming the accepted forms for anything else, the empty string and
    times outside the years 1 to 9999 included (``99999999999d`` back from now, or
    9999-12-31 at UTC-14, which is year 10000 in UTC).
    """
    import re
    from datetime import UTC, datetime

    from housing_mlops.errors import UsageError

    text = (value or "").strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.lower())
    if match:
        ts = now - float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{option} {value!r} is not a time: use {ACCEPTED_TIME_FORMS}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ts = when.timestamp()
    # Every time is printed back (window text, stored run), so it must be a datetime.
    try:
        _iso(ts)
    except (OverflowError, ValueError, OSError):
        raise UsageError(
            f"{option} {value!r} is out of range (times must fall in the years 1 to 9999 "
            f"UTC): use {ACCEPTED_TIME_FORMS}"
        ) from None
    return ts


def resolve_window(
    since: str | None, until: str | None, default_since: str, now: float
) -> tuple[float, float]:
    """(since_ts, until_ts) from the CLI values; until defaults to now. since < until."""
    from housing_mlops.errors import UsageError

    # None means the option was not given; an empty value was given and is malformed.
    until_ts = parse_when(until, now, "--until") if until is not None else now
    # Durations count back from now for both ends (``--since 2h --until 1h`` is the hour
    # that ended an hour ago), as in journalctl and git.
    since_ts = parse_when(default_since if since is None else since, now, "--since")
    if since_ts >= until_ts:
        raise UsageError(
            f"the window is empty: --since ({_iso(since_ts)}) must be before "
            f"--until ({_iso(until_ts)})"
        )
    return since_ts, until_ts


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ========================================================================= a drift check
def _load_reference(
    settings: Any,
    db: Any,
    model_name: str | None,
    model_version: str,
    reference_path: Any,
    refresh: bool = False,
) -> tuple[dict, str]:
    """The reference profile and a description of where it came from.

    ``reference_path`` wins; otherwise the version's training profile from the registry,
    through the cache in the request-log database (store.cached_reference).
    """
    import json
    from pathlib import Path

    from housing_mlops import registry, store
    from housing_mlops.errors import HousingError, InsufficientDataError

    if reference_path is not None:
        path = Path(reference_path)
        try:
            return json.loads(path.read_text()), str(path)
        except (OSError, ValueError) as exc:
            raise InsufficientDataError(
                f"cannot read the reference profile {path}: {exc}"
            ) from None
    name = model_name or settings.mlflow.registered_model_name
    uri = registry.tracking_uri(settings)
    source = f"registry:{name}/{model_version}"
    if not refresh:
        cached = store.cached_reference(db, uri, name, model_version)
        if cached is not None:
            return cached, source
    try:
        if name != settings.mlflow.registered_model_name:
            raise InsufficientDataError(
                f"the requests were served by model '{name}', but the config's registered "
                f"model is '{settings.mlflow.registered_model_name}'"
            )
        ref = registry.resolve(settings, version=int(model_version))
        profile = registry.load_reference_profile(settings, ref)
    except (HousingError, ValueError) as exc:
        raise InsufficientDataError(
            f"no reference profile for model version {model_version}: {exc} "
            "(drift compares requests with the training profile stored with the version "
            "that served them; pass --reference PROFILE.json to compare with another one)"
        ) from None
    store.cache_reference(db, uri, name, model_version, ref.run_id, profile)
    return profile, source


def check_drift(
    settings: Any,
    since: str | None = None,
    until: str | None = None,
    model_version: int | str | None = None,
    reference_path: Any = None,
    now: float | None = None,
    save: bool = True,
    refresh_reference: bool = False,
) -> dict[str, Any]:
    """Compare logged requests in a time window with the serving model's training profile.

    The window holds the answered (status 200) requests with ``since <= ts < until``. Each
    model version is judged against its own training profile; when the window holds
    several versions and none is requested, the version that served the most rows is
    judged (the others are listed in ``other_versions``: rerun with --model-version).
    Windows larger than ``drift.sample_rows`` are judged on a deterministic uniform
    sample of that size (see the module notes for why that is enough); ``rows`` is always
    the exact count. The result is stored in the drift tables (``run_id``).

    Raises InsufficientDataError (exit 7) when the log is missing, the window holds no
    rows or fewer than ``drift.min_rows``, or the reference profile cannot be loaded.
    A version's profile is fetched from MLflow once and then read from a cache table in
    the request log (``refresh_reference`` fetches it again).
    """
    import time

    from housing_mlops import store
    from housing_mlops.errors import InsufficientDataError

    cfg = settings.drift
    now = time.time() if now is None else now
    since_ts, until_ts = resolve_window(since, until, cfg.default_since, now)
    version = None if model_version is None else str(model_version)
    window_text = f"between {_iso(since_ts)} and {_iso(until_ts)}"
    which = f" served by model version {version}" if version else ""

    log_path = settings.serve.request_log
    db = store.connect(log_path)  # None when there is no log: drift never creates one
    if db is None:
        raise InsufficientDataError(
            f"no request log at {log_path}: start `housing serve` and send it traffic "
            "(for example `python -m housing_mlops.traffic --rows 500`) first"
        )
    try:
        counts = store.window_counts(db, since_ts, until_ts, version)
        if not counts:
            raise InsufficientDataError(
                f"no answered requests{which} {window_text} in {log_path}: "
                "widen --since or send traffic first"
            )
        chosen = counts[0]
        if chosen["rows"] < cfg.min_rows:
            raise InsufficientDataError(
                f"only {chosen['rows']} answered request(s) from model version "
                f"{chosen['model_version']} {window_text}; drift needs at least "
                f"{cfg.min_rows} (drift.min_rows): widen --since or send more traffic"
            )
        profile, source = _load_reference(
            settings,
            db,
            chosen["model_name"],
            chosen["model_version"],
            reference_path,
            refresh_reference,
        )
        fraction = min(1.0, cfg.sample_rows / chosen["rows"])
        current = store.window_sample(
            db,
            since_ts,
            until_ts,
            chosen["model_version"],
            [*FEATURES, PREDICTION],
            fraction=fraction,
        )
        judged = compare_window(profile, current, cfg)
        if not judged["scores"]:
            raise InsufficientDataError(
                f"the reference profile ({source}) shares no column with the request log"
            )
        result: dict[str, Any] = {
            "created_at": time.time(),
            "window": {
                "since": _iso(since_ts),
                "until": _iso(until_ts),
                "since_ts": since_ts,
                "until_ts": until_ts,
            },
            "model_name": chosen["model_name"],
            "model_version": chosen["model_version"],
            "rows": int(chosen["rows"]),
            "sampled_rows": int(current[FEATURES[0]].size),
            "other_versions": {c["model_version"]: c["rows"] for c in counts[1:]},
            "reference": {"source": source, "rows": profile.get("rows")},
            "thresholds": {
                k: getattr(cfg, k)
                for k in (
                    "psi_bins",
                    "psi_warn",
                    "psi_drift",
                    "wasserstein_warn",
                    "wasserstein_drift",
                    "ks_pvalue",
                    "drift_share",
                    "hard_limit_psi",
                    "hard_limit_wasserstein",
                )
            },
            **judged,
        }
        for score in result["scores"]:
            score["ks_significant"] = bool(score["ks_pvalue"] < judged["ks_alpha"])
        if save:
            result["run_id"] = store.save_drift_run(db, result)
        return result
    finally:
        db.close()
