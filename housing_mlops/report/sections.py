"""The report's sections: each gathers its data and describes itself as blocks.

Each builder returns a ``report.page.Section``, a list of blocks (text, note, heading,
table, image) that ``report.render`` turns into HTML and Markdown alike. The builders read
the registry (champion, leaderboard), the test split (evaluation), and the request log and
drift tables through ``housing_mlops.store`` (drift, serving); charts come from
``housing_mlops.plots``. A builder that finds nothing to show returns a section with status
``empty`` and a note saying what to run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from housing_mlops import plots
from housing_mlops.report.page import Section
from housing_mlops.report.render import format_value
from housing_mlops.timestamps import readable_utc

T = TypeVar("T")

IMPORTANCE_ROWS = 1000
IMPORTANCE_REPEATS = 3
HISTORY_RUNS = 30


def champion_and_leaderboard(settings: Any) -> tuple[Section, Section, Any]:
    from housing_mlops import registry

    champion = Section("champion", "Champion")
    board = Section("leaderboard", "Leaderboard")
    # A local store that does not exist holds no model: say so without letting MLflow
    # create (and migrate) an empty database as a side effect of reading.
    versions = registry.list_versions(settings) if registry.store_exists(settings) else []
    if not versions:
        msg = "No model is registered yet: run `housing train`, `housing evaluate` and "
        msg += "`housing promote`."
        champion.status = board.status = "empty"
        return champion.note(msg), board.note(msg), None
    champ = next((v for v in versions if registry.CHAMPION in (v.aliases or ())), None)
    if champ is None:
        champ_alias = registry.get_alias_version(settings, registry.CHAMPION)
        champ = next((v for v in versions if v.version == champ_alias), None)

    rows = []
    for ref in sorted(versions, key=_board_key):
        m = ref.metrics
        rows.append(
            {
                "version": ref.version,
                "candidate": ref.tags.get("candidate", "–"),
                "aliases": ", ".join(ref.aliases) or "–",
                "cv RMSE": _pm(m.get("cv_rmse_mean"), m.get("cv_rmse_std")),
                "cv MAE": m.get("cv_mae_mean"),
                "cv R²": m.get("cv_r2_mean"),
                "holdout RMSE": m.get("holdout_rmse"),
                "holdout MAE": m.get("holdout_mae"),
                "holdout R²": m.get("holdout_r2"),
                "holdout MAPE": m.get("holdout_mape"),
                "data version": (ref.data_version or "–")[:12],
                "created": ref.created_at or "–",
            }
        )
    board.text(
        f"{len(versions)} registered version(s) of `{settings.mlflow.registered_model_name}`, "
        "best holdout RMSE first (versions not yet evaluated last, by CV RMSE)."
    )
    board.table(rows, list(rows[0]))

    if champ is None:
        champion.status = "empty"
        champion.note("No version carries the `champion` alias yet: run `housing promote`.")
        return champion, board, None
    m = champ.metrics
    champion.table(
        [
            {"": "version", "value": champ.version},
            {"": "candidate", "value": champ.tags.get("candidate", "–")},
            {"": "aliases", "value": ", ".join(champ.aliases) or registry.CHAMPION},
            {"": "data version", "value": champ.data_version or "–"},
            {"": "run id", "value": champ.run_id},
            {"": "registered", "value": champ.created_at or "–"},
            {"": "git commit", "value": champ.tags.get("git_commit", "–")},
        ],
        ["", "value"],
    )
    champion.heading("Metrics")
    metric_rows = [
        {
            "metric": label,
            "cross-validation (train)": _pm(m.get(f"cv_{key}_mean"), m.get(f"cv_{key}_std")),
            "holdout (test)": m.get(f"holdout_{key}"),
        }
        for key, label in (
            ("rmse", "RMSE"),
            ("mae", "MAE"),
            ("r2", "R²"),
            ("mape", "MAPE"),
            ("max_error", "max error"),
        )
        if m.get(f"cv_{key}_mean") is not None or m.get(f"holdout_{key}") is not None
    ]
    if metric_rows:
        champion.table(metric_rows, ["metric", "cross-validation (train)", "holdout (test)"])
        if m.get("holdout_rmse") is None:
            champion.note("Not evaluated on the test split yet: run `housing evaluate`.")
    else:
        champion.note("The champion's run has no metrics recorded.")
    champion.heading("Promotion history")
    history = _promotion_history(versions)
    if history:
        champion.table(history, ["at", "version", "kind", "replaced"])
    else:
        champion.note("No promotion recorded in the version tags.")
    return champion, board, champ


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _board_key(ref: Any) -> tuple[int, float, int]:
    m = ref.metrics
    if m.get("holdout_rmse") is not None:
        return (0, float(m["holdout_rmse"]), int(ref.version))
    cv = m.get("cv_rmse_mean")
    return (1, float(cv) if cv is not None else float("inf"), int(ref.version))


def _promotion_history(versions: list[Any]) -> list[dict[str, Any]]:
    events = []
    for ref in versions:
        try:
            history = json.loads(ref.tags.get("promotion_history", "[]"))
        except ValueError:
            continue
        for entry in history if isinstance(history, list) else []:
            if isinstance(entry, dict):
                events.append(
                    {
                        "at": entry.get("at", "–"),
                        "version": ref.version,
                        "kind": entry.get("kind", "–"),
                        "replaced": entry.get("replaced") or "–",
                    }
                )
    return sorted(events, key=lambda e: str(e["at"]), reverse=True)


def evaluation(settings: Any, champ: Any) -> Section:
    section = Section("evaluation", "Evaluation of the champion (test split)")
    if champ is None:
        section.status = "empty"
        return section.note("No champion to evaluate yet: run `housing promote`.")
    from housing_mlops import evaluate, featurize, registry

    x_test, y_test = featurize.load_split(settings, "test")
    model = registry.load_model(settings, champ)
    y = y_test.to_numpy(dtype=float)
    pred = np.asarray(model.predict(x_test), dtype=float)
    overall = evaluate.compute_metrics(y, pred)
    section.text(
        f"Version {champ.version} on {len(y)} test rows: RMSE {overall['rmse']:.4f}, "
        f"MAE {overall['mae']:.4f}, R² {overall['r2']:.4f}, "
        f"MAPE {100 * overall['mape']:.1f} %, max error {overall['max_error']:.3f} "
        "(target in $100k)."
    )

    section.image(
        "predicted_vs_actual.png",
        plots.predicted_vs_actual_png(y, pred),
        "Predicted vs actual and residuals",
    )

    section.image("residuals.png", plots.residual_histogram_png(y, pred), "Residual distribution")

    section.heading("Error by slice")
    slices = evaluate.slice_metrics(y, pred, evaluate.slice_masks(x_test, settings.evaluate))
    slice_rows = [
        {"slice": name, "rows": m["rows"], "RMSE": m["rmse"], "MAE": m["mae"], "R²": m["r2"]}
        for name, m in slices.items()
    ]
    section.table(slice_rows, ["slice", "rows", "RMSE", "MAE", "R²"])
    chart = plots.error_by_slice_png(
        list(slices), [m["rmse"] for m in slices.values()], overall["rmse"]
    )
    section.image("error_by_slice.png", chart, "RMSE by slice")

    section.heading("Permutation feature importance")
    importance = _permutation_importance(model, x_test, y, settings.train.seed)
    section.text(
        f"Increase in RMSE when one raw feature is shuffled ({IMPORTANCE_REPEATS} repeats on a "
        f"random subsample of {min(IMPORTANCE_ROWS, len(y))} test rows); the pipeline's own "
        "feature engineering is included, so this is what the model owes to each input."
    )
    section.table(importance, ["feature", "RMSE increase", "std"])
    section.image(
        "permutation_importance.png",
        plots.permutation_importance_png(importance),
        "Permutation feature importance",
    )
    return section


def _permutation_importance(model: Any, x: Any, y: np.ndarray, seed: int) -> list[dict]:
    from sklearn.inspection import permutation_importance

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(y), size=min(IMPORTANCE_ROWS, len(y)), replace=False))
    result = permutation_importance(
        model,
        x.iloc[take],
        y[take],
        scoring="neg_root_mean_squared_error",
        n_repeats=IMPORTANCE_REPEATS,
        random_state=seed,
        n_jobs=1,
    )
    rows = [
        {"feature": name, "RMSE increase": float(m), "std": float(s)}
        for name, m, s in zip(
            x.columns, result.importances_mean, result.importances_std, strict=True
        )
    ]
    return sorted(rows, key=lambda r: r["RMSE increase"], reverse=True)


def _read_log(settings: Any, read: Callable[[Any], T]) -> T | None:
    """``read`` on a read-only connection to the request log; None when there is no log.

    The one way the sections read the log: a damaged one stops the report with the
    UnusableLogError (exit 4) that every reader of the log gives.
    """
    from housing_mlops import store

    db = store.open_readonly(settings.serve.request_log)
    if db is None:
        return None
    with store.damaged_log_errors(settings.serve.request_log):
        try:
            return read(db)
        finally:
            db.close()


def _no_log(settings: Any, section: Section, then: str) -> Section:
    from housing_mlops import store

    section.status = "empty"
    where = store.parse_log_location(settings.serve.request_log)
    return section.note(f"No request log at {where}{then}")


def drift(settings: Any) -> Section:
    from housing_mlops import store

    section = Section("drift", "Drift")

    def read(db: Any) -> tuple[Any, Any, Any]:
        history = store.drift_history(db, HISTORY_RUNS)
        scores = store.drift_score_history(db, [r["id"] for r in history])
        return store.latest_drift_run(db), history, scores

    runs = _read_log(settings, read)
    if runs is None:
        return _no_log(
            settings, section, " yet, so no drift run: serve traffic, then run `housing drift`."
        )
    latest, history, score_history = runs
    if latest is None:
        section.status = "empty"
        return section.note("No drift run stored yet: run `housing drift --since 7d`.")

    section.text(
        f"Latest run #{latest['id']} at {readable_utc(latest['created_at'])}: model version "
        f"{latest.get('model_version')}, {latest.get('rows')} requests from "
        f"{readable_utc(latest.get('since_ts'))} to {readable_utc(latest.get('until_ts'))}, "
        "compared with "
        f"{latest.get('reference')}. Verdict **{latest.get('verdict')}**; dataset drift: "
        f"**{'yes' if latest.get('dataset_drift') else 'no'}** "
        f"({latest.get('drifting')}/{latest.get('features')} features drifting)."
        + (
            f" Judged on a uniform sample of {latest.get('sampled_rows')} rows."
            if (latest.get("sampled_rows") or 0) < (latest.get("rows") or 0)
            else ""
        )
    )
    rows = [
        {
            "feature": s["feature"],
            "rows": s["rows"],
            "ref mean": s["ref_mean"],
            "cur mean": s["cur_mean"],
            "PSI": s["psi"],
            "KS": s["ks"],
            "p": s["ks_pvalue"],
            "Wasserstein": s["wasserstein_norm"],
            "verdict": s["verdict"],
        }
        for s in latest["scores"]
    ]
    section.table(rows, list(rows[0]) if rows else ["feature"])
    flagged = [s for s in latest["scores"] if s["verdict"] in ("drift", "warn") and s.get("hist")]
    if flagged:
        section.heading("Reference vs current (columns marked drift or warn)")
        for score in flagged:
            section.image(
                f"drift_{score['feature']}.png",
                _drift_histogram(score),
                f"{score['feature']}: reference vs current",
            )
    else:
        section.note("No column was marked drift or warn in the latest run: nothing to plot.")

    section.heading("Drift history")
    section.table(
        [
            {
                "run": r["id"],
                "at": readable_utc(r["created_at"]),
                "version": r.get("model_version"),
                "rows": r.get("rows"),
                "drifting": ", ".join(r.get("drifting_features") or []) or "–",
                "dataset drift": bool(r.get("dataset_drift")),
                "verdict": r.get("verdict"),
            }
            for r in history
        ],
        ["run", "at", "version", "rows", "drifting", "dataset drift", "verdict"],
    )
    if len(history) > 1:
        section.image("drift_history.png", plots.drift_history_png(score_history), "Drift history")
    return section


def _drift_histogram(score: dict[str, Any]) -> bytes:
    title = (
        f"{score['feature']}: {score['verdict']} (PSI {format_value(score.get('psi'))}, "
        f"Wasserstein/std {format_value(score.get('wasserstein_norm'))})"
    )
    return plots.drift_histogram_png(score["feature"], score["hist"], title)


def serving(settings: Any) -> Section:
    from housing_mlops import store

    section = Section("serving", "Serving")
    stats = _read_log(settings, store.serving_stats)
    if stats is None:
        return _no_log(
            settings,
            section,
            ": no traffic yet. Start `housing serve` and send requests "
            "(e.g. `python -m housing_mlops.traffic`).",
        )
    if not stats["rows"]:
        section.status = "empty"
        return section.note("The request log is empty: no traffic yet.")
    lat = stats["latency_ms"]
    section.table(
        [
            {"": "logged rows", "value": stats["rows"]},
            {"": "requests", "value": stats["requests"]},
            {"": "first request", "value": readable_utc(stats["first_ts"])},
            {"": "last request", "value": readable_utc(stats["last_ts"])},
            {"": "error rate (rows)", "value": f"{100 * stats['error_rate']:.2f} %"},
            {"": "latency p50 (ms)", "value": lat.get("p50")},
            {"": "latency p95 (ms)", "value": lat.get("p95")},
            {"": "latency p99 (ms)", "value": lat.get("p99")},
            {
                "": "rows by model version",
                "value": ", ".join(
                    f"v{r['model_version']}: {r['rows']}" for r in stats["by_version"]
                )
                or "–",
            },
            *(
                [
                    {
                        "": "rows by replica",
                        "value": ", ".join(
                            f"{r['instance']}: {r['rows']}" for r in stats["by_instance"]
                        ),
                    }
                ]
                if stats["by_instance"]
                else []
            ),
        ],
        ["", "value"],
    )
    if lat:
        largest = stats["largest_batch"]
        section.text(
            f"Latency is per request (the server-side time of the whole request), over "
            f"{lat['requests']} requests: a batch of N rows counts once, not N times"
            + (f" (largest batch here: {largest} rows)." if largest > 1 else ".")
        )
    section.heading("Requests per day")
    section.table(stats["per_day"], ["day", "requests", "rows", "errors"])
    chart = plots.requests_per_day_png(stats["per_day"])
    section.image("requests_per_day.png", chart, "Requests per day")
    predictions = stats["predictions"]
    if predictions.size:
        chart = plots.predictions_png(predictions)
        section.image("predictions.png", chart, "Distribution of predictions")
    return section


NO_CHALLENGER = (
    "No challenger has served and no true values have arrived yet: nothing to compare. "
    "Run `housing promote --to challenger`, serve with `--challenger-mode shadow` and send "
    "labels (`POST /feedback` or `housing feedback FILE`)."
)


def _holdout_rmse(settings: Any) -> dict[str, float]:
    """Every registered version's offline holdout RMSE (empty when the registry has none)."""
    from housing_mlops import registry

    if not registry.store_exists(settings):
        return {}
    return {
        str(ref.version): float(ref.metrics["holdout_rmse"])
        for ref in registry.list_versions(settings)
        if ref.metrics.get("holdout_rmse") is not None
    }


def _model_label(role: str, version: str | None) -> str:
    return f"{role} v{version}" if version is not None else role


def champion_vs_challenger(settings: Any) -> Section:
    from housing_mlops import store

    section = Section("live", "Champion vs challenger")
    read = _read_log(settings, lambda db: (store.role_stats(db), store.labelled_rows(db)))
    if read is None:
        return _no_log(
            settings, section, ": no traffic yet, so no champion or challenger to compare."
        )
    traffic, labelled = read
    versions, shadow = traffic["versions"], traffic["shadow"]
    challenger = any(v["role"] == "challenger" for v in versions) or bool(shadow)
    if not challenger and not len(labelled):
        section.status = "empty"
        return section.note(NO_CHALLENGER)
    section.heading("Traffic and latency")
    _traffic_by_model(section, versions)
    if shadow:
        section.heading("Prediction divergence (shadow)")
        _shadow_divergence(section, shadow)
    section.heading("Live quality")
    if not len(labelled):
        return section.note(
            "No true values yet: live RMSE appears here once labels arrive "
            "(`POST /feedback` or `housing feedback FILE`)."
        )
    _live_quality(section, labelled, _holdout_rmse(settings))
    return section


def _traffic_by_model(section: Section, versions: list[dict[str, Any]]) -> None:
    """Rows, share and latency of each model that answered."""
    from housing_mlops.report import live_quality

    shares = live_quality.traffic_shares(versions)
    section.table(
        [
            {
                "role": v["role"],
                "version": v["model_version"],
                "rows": v["rows"],
                "share": f"{100 * share:.1f} %",
                "requests": v["requests"],
                "latency p50 (ms)": v["latency_ms"].get("p50"),
                "latency p99 (ms)": v["latency_ms"].get("p99"),
            }
            for v, share in zip(versions, shares, strict=True)
        ],
        ["role", "version", "rows", "share", "requests", "latency p50 (ms)", "latency p99 (ms)"],
    )
    section.text(
        "Rows each model answered (the client got its prediction); latency per request, "
        "as in the serving section."
    )


def _shadow_divergence(section: Section, shadow: list[dict[str, Any]]) -> None:
    """How far the shadow predictions stand from the answers the clients got."""
    section.table(
        [
            {
                "answered by": f"v{s['model_version']}",
                "shadow": f"v{s['shadow_version']}",
                "shadowed rows": s["rows"],
                "mean abs. difference": s["mean_abs_diff"],
                "p95 abs. difference": s["p95_abs_diff"],
            }
            for s in shadow
        ],
        [
            "answered by",
            "shadow",
            "shadowed rows",
            "mean abs. difference",
            "p95 abs. difference",
        ],
    )
    section.text(
        "Absolute difference between the answer and the shadow prediction, in $100k, on "
        "the rows the challenger scored in shadow (the client got the champion's answer)."
    )


def _live_quality(section: Section, labelled: Any, holdout: dict[str, float]) -> None:
    """Live RMSE per version beside its holdout RMSE, paired on shadowed rows, over time."""
    from housing_mlops.report import live_quality

    overall = live_quality.per_version(labelled)
    section.table(
        [
            {
                "role": q["role"],
                "version": q["model_version"],
                "labelled rows": q["rows"],
                "live RMSE": q["rmse"],
                "live MAE": q["mae"],
                "holdout RMSE": holdout.get(str(q["model_version"])),
                "live / holdout": q["rmse"] / holdout[str(q["model_version"])]
                if holdout.get(str(q["model_version"]))
                else None,
            }
            for q in overall
        ],
        [
            "role",
            "version",
            "labelled rows",
            "live RMSE",
            "live MAE",
            "holdout RMSE",
            "live / holdout",
        ],
    )
    first, last = float(labelled.ts.min()), float(labelled.ts.max())
    section.text(
        f"On {len(labelled)} labelled rows (requests from {readable_utc(first)} to "
        f"{readable_utc(last)}); a challenger in shadow is scored on the rows it shadowed."
    )
    pairs = live_quality.paired(labelled)
    if pairs:
        section.table(
            [
                {
                    "champion": f"v{p['model_version']}",
                    "challenger": f"v{p['shadow_version']}",
                    "same rows": p["rows"],
                    "champion RMSE": p["rmse"],
                    "challenger RMSE": p["shadow_rmse"],
                }
                for p in pairs
            ],
            ["champion", "challenger", "same rows", "champion RMSE", "challenger RMSE"],
        )
        section.text("Both models on the same labelled rows (paired comparison).")
    bucket_s = live_quality.bucket_seconds(first, last)
    bucket = "hour" if bucket_s == live_quality.HOUR else "day"
    series = {
        _model_label(role, version): points
        for (role, version), points in live_quality.over_time(labelled, bucket_s).items()
    }
    holdout_by_label = {
        _model_label(q["role"], q["model_version"]): holdout[str(q["model_version"])]
        for q in overall
        if str(q["model_version"]) in holdout
    }
    section.image(
        "live_rmse.png",
        plots.live_rmse_png(series, holdout_by_label, bucket),
        f"Live RMSE per {bucket}",
    )
