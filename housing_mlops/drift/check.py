"""A drift check: read a window of logged requests and the serving version's profile, judge it.

The side-effecting half of drift detection: the request log and drift tables through
``housing_mlops.store``, the reference profile through ``housing_mlops.registry``; the
judging itself is ``drift.statistics.compare_window``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from housing_mlops import registry, store
from housing_mlops.columns import FEATURES
from housing_mlops.drift.profile import profile_problem
from housing_mlops.drift.statistics import PREDICTION, compare_window
from housing_mlops.drift.window import resolve_window
from housing_mlops.errors import HousingError, InsufficientDataError
from housing_mlops.timestamps import iso_utc


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
    if reference_path is not None:
        path = Path(reference_path)
        try:
            profile = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InsufficientDataError(
                f"cannot read the reference profile {path}: {exc}"
            ) from None
        problem = profile_problem(profile)
        if problem is not None:
            raise InsufficientDataError(
                f"cannot read the reference profile {path}: {problem} "
                "(a profile as `housing featurize` writes it: reference_profile.json)"
            )
        return profile, str(path)
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


# The drift settings a result records, so a stored run says which limits judged it.
_THRESHOLDS = (
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
    sample of that size (``drift.statistics`` says why that is enough); ``rows`` is always
    the exact count. The result is stored in the drift tables (``run_id``).

    Raises InsufficientDataError (exit 7) when the log is missing, the window holds no
    rows or fewer than ``drift.min_rows``, or the reference profile cannot be loaded.
    A version's profile is fetched from MLflow once and then read from a cache table in
    the request log (``refresh_reference`` fetches it again).
    """
    cfg = settings.drift
    now = time.time() if now is None else now
    since_ts, until_ts = resolve_window(since, until, cfg.default_since, now)
    version = None if model_version is None else str(model_version)
    log_path, db = _open_request_log(settings)
    try:
        # A damaged file met past its first page: exit 4 naming the log, not exit 1.
        with store.damaged_log_errors(log_path):
            counts = _versions_in_window(db, log_path, since_ts, until_ts, version, cfg.min_rows)
            chosen = counts[0]
            profile, source = _load_reference(
                settings,
                db,
                chosen["model_name"],
                chosen["model_version"],
                reference_path,
                refresh_reference,
            )
            current = _sample_window(db, since_ts, until_ts, chosen, cfg.sample_rows)
            judged = _judge_window(profile, current, cfg, source)
            result = _drift_result(
                since_ts, until_ts, counts, current, profile, source, judged, cfg
            )
            if save:
                result["run_id"] = store.save_drift_run(db, result)
            return result
    finally:
        db.close()


def _open_request_log(settings: Any) -> tuple[Any, Any]:
    """The request log's location (it prints without a password) and an open connection.

    Raises InsufficientDataError when there is no log: it is never created here."""
    log_path = store.parse_log_location(settings.serve.request_log)
    db = store.open_log(log_path, create=False)
    if db is None:
        raise InsufficientDataError(
            f"no request log at {log_path}: start `housing serve` and send it traffic "
            "(for example `python -m housing_mlops.traffic --rows 500`) first"
        )
    return log_path, db


def _versions_in_window(
    db: Any,
    log_path: Any,
    since_ts: float,
    until_ts: float,
    version: str | None,
    min_rows: int,
) -> list[dict[str, Any]]:
    """The answered rows per model version in the window (``version`` only, when given),
    the one to judge first: the one that served the most.

    Raises InsufficientDataError when the window holds no rows, or the version to judge
    fewer than ``min_rows``."""
    window_text = f"between {iso_utc(since_ts)} and {iso_utc(until_ts)}"
    counts = store.window_counts(db, since_ts, until_ts, version)
    if not counts:
        which = f" served by model version {version}" if version else ""
        raise InsufficientDataError(
            f"no answered requests{which} {window_text} in {log_path}: "
            "widen --since or send traffic first"
        )
    chosen = counts[0]
    if chosen["rows"] < min_rows:
        raise InsufficientDataError(
            f"only {chosen['rows']} answered request(s) from model version "
            f"{chosen['model_version']} {window_text}; drift needs at least "
            f"{min_rows} (drift.min_rows): widen --since or send more traffic"
        )
    return counts


def _sample_window(
    db: Any, since_ts: float, until_ts: float, chosen: dict[str, Any], sample_rows: int
) -> dict[str, Any]:
    """The features and predictions of the chosen version's rows in the window: all of
    them, or a deterministic uniform sample of about ``sample_rows``."""
    fraction = min(1.0, sample_rows / chosen["rows"])
    return store.window_sample(
        db,
        since_ts,
        until_ts,
        chosen["model_version"],
        [*FEATURES, PREDICTION],
        fraction=fraction,
    )


def _judge_window(profile: dict, current: dict[str, Any], cfg: Any, source: str) -> dict[str, Any]:
    """``compare_window``'s verdict, each score marked ``ks_significant`` at its alpha.

    Raises InsufficientDataError when the profile and the log share no column."""
    judged = compare_window(profile, current, cfg)
    if not judged["scores"]:
        raise InsufficientDataError(
            f"the reference profile ({source}) shares no column with the request log"
        )
    for score in judged["scores"]:
        score["ks_significant"] = bool(score["ks_pvalue"] < judged["ks_alpha"])
    return judged


def _drift_result(
    since_ts: float,
    until_ts: float,
    counts: list[dict[str, Any]],
    current: dict[str, Any],
    profile: dict,
    source: str,
    judged: dict[str, Any],
    cfg: Any,
) -> dict[str, Any]:
    """The result of a check as it is returned and stored: the window, the version judged
    (and the others seen), the reference, the thresholds, then the verdict."""
    chosen = counts[0]
    return {
        "created_at": time.time(),
        "window": {
            "since": iso_utc(since_ts),
            "until": iso_utc(until_ts),
            "since_ts": since_ts,
            "until_ts": until_ts,
        },
        "model_name": chosen["model_name"],
        "model_version": chosen["model_version"],
        "rows": int(chosen["rows"]),
        "sampled_rows": int(current[FEATURES[0]].size),
        "other_versions": {c["model_version"]: c["rows"] for c in counts[1:]},
        "reference": {"source": source, "rows": profile.get("rows")},
        "thresholds": {k: getattr(cfg, k) for k in _THRESHOLDS},
        **judged,
    }
