"""Holdout evaluation of registered versions: pure metric functions plus one side-effecting
``evaluate`` that logs results to each version's MLflow run.

Metrics (``compute_metrics``): RMSE, MAE, R², MAPE (a fraction: 0.17 means 17 %) and max
error, all in the target's unit ($100k).

Slices (``slice_masks``), each with the same metrics:

- ``income_q1`` .. ``income_q5``: quintiles of MedInc over the evaluated rows;
- ``north`` / ``south``: Latitude at or above / below ``evaluate.north_south_latitude``;
- ``coastal`` / ``inland``: a row is coastal when its distance to the California coastline
  (``geography.COAST``, the same polyline the model's distance-to-coast feature uses;
  ``geography.distance_to_coast_km``) is at most ``evaluate.coastal_km`` kilometres;
  inland otherwise.

Behavioural checks (``behavioural_checks``): raising MedInc by 10 % for every row, all else
equal, must raise the mean prediction; every prediction must lie inside
[``evaluate.plausible_min``, ``evaluate.plausible_max``]. Results are recorded as metrics
and tags; ``housing promote`` refuses a candidate whose checks failed.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from housing_mlops.errors import ModelError, UsageError
from housing_mlops.geography import distance_to_coast_km
from housing_mlops.timestamps import iso_utc

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from housing_mlops.config import EvaluateConfig, Settings
    from housing_mlops.registry import ModelRef

# progress(description, steps_done, steps_total): the same hook as train.ProgressHook.
ProgressHook = Callable[[str, int, int], None]
STEPS_PER_VERSION = 3  # load the model; predict, metrics and checks; plots and logging

CHECK_UPLIFT = 1.10  # MedInc multiplied by this in the monotonicity check


# ------------------------------------------------------------------------ pure parts
def compute_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """RMSE, MAE, R², MAPE (fraction) and max error of predictions against targets."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"need equally long, non-empty arrays, got {y.shape} and {p.shape}")
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": r2,
        "mape": float(np.mean(np.abs(err) / np.maximum(np.abs(y), 1e-12))),
        "max_error": float(np.max(np.abs(err))),
    }


def slice_masks(X: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, np.ndarray]:
    """Boolean row masks of the documented slices (see the module docstring)."""
    income = X["MedInc"].to_numpy(dtype=float)
    edges = np.quantile(income, [0.2, 0.4, 0.6, 0.8])
    quintile = np.searchsorted(edges, income, side="right")  # 0..4
    masks = {f"income_q{q + 1}": quintile == q for q in range(5)}
    lat = X["Latitude"].to_numpy(dtype=float)
    masks["north"] = lat >= cfg.north_south_latitude
    masks["south"] = ~masks["north"]
    coastal = distance_to_coast_km(lat, X["Longitude"].to_numpy(dtype=float)) <= cfg.coastal_km
    masks["coastal"] = coastal
    masks["inland"] = ~coastal
    return masks


def slice_metrics(
    y_true: Any, y_pred: Any, masks: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """``compute_metrics`` per slice (plus its row count); empty slices are left out."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    out: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        if mask.sum() == 0:
            continue
        out[name] = {"rows": int(mask.sum()), **compute_metrics(y[mask], p[mask])}
    return out


def behavioural_checks(model: Any, X: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, Any]:
    """MedInc +10 % raises the mean prediction; every prediction is inside the plausible range."""
    base = np.asarray(model.predict(X), dtype=float)
    richer = X.copy()
    richer["MedInc"] = richer["MedInc"] * CHECK_UPLIFT
    uplift = float(np.mean(np.asarray(model.predict(richer), dtype=float)) - np.mean(base))
    outside = int(np.sum((base < cfg.plausible_min) | (base > cfg.plausible_max)))
    checks = {
        "medinc_uplift": {
            "passed": uplift > 0,
            "value": uplift,
            "rule": "mean prediction rises when MedInc is raised by 10 % for every row",
        },
        "plausible_range": {
            "passed": outside == 0,
            "value": outside,
            "rule": f"every prediction within [{cfg.plausible_min}, {cfg.plausible_max}]",
        },
    }
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def write_plots(y_true: Any, y_pred: Any, folder: Path, title: str) -> dict[str, Path]:
    """The report's predicted-vs-actual and residual charts (``housing_mlops.plots``) as PNG files
    in ``folder``, titled with ``title`` (the version)."""
    from housing_mlops import plots

    folder.mkdir(parents=True, exist_ok=True)
    charts = {
        "predicted_vs_actual": plots.predicted_vs_actual_png(
            y_true, y_pred, f"{title}: predicted vs actual"
        ),
        "residuals": plots.residual_histogram_png(y_true, y_pred, f"{title}: residuals"),
    }
    paths: dict[str, Path] = {}
    for name, png in charts.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(png)
    return paths


# ----------------------------------------------------------------------- side effects
def select_versions(
    refs: list[ModelRef], version: int | None, all_versions: bool
) -> list[ModelRef]:
    """``--version N``, ``--all``, or by default the versions of the latest training batch."""
    if not refs:
        raise ModelError("no trained model versions: run `housing train` first")
    if version is not None:
        chosen = [r for r in refs if r.version == str(version)]
        if not chosen:
            known = ", ".join(r.version for r in refs)
            raise ModelError(f"no model version {version} (registered versions: {known})")
        return chosen
    if all_versions:
        return list(refs)
    latest = max(refs, key=lambda r: int(r.version))
    batch = latest.tags.get("train_batch")
    if not batch:
        return [latest]
    return [r for r in refs if r.tags.get("train_batch") == batch]


def _metric_row(ref: ModelRef) -> dict[str, float]:
    return {k[len("holdout_") :]: v for k, v in ref.metrics.items() if k.startswith("holdout_")}


def evaluate(
    settings: Settings,
    version: int | None = None,
    all_versions: bool = False,
    progress: ProgressHook | None = None,
) -> list[dict[str, Any]]:
    """Evaluate versions on the test split, log the results to their runs, compare with
    the champion; one result row per version.

    ``progress(description, done, total)`` is called as each version enters a stage
    (``STEPS_PER_VERSION`` steps per version) and once more when it is done.
    """
    import pandas as pd

    from housing_mlops import featurize, registry
    from housing_mlops.features import TARGET

    if version is not None and all_versions:  # before any registry round trip
        raise UsageError("--version and --all are exclusive: give one")
    refs = registry.list_versions(settings)
    chosen = select_versions(refs, version, all_versions)
    manifest = featurize.read_processed_manifest(settings)
    X, y = featurize.load_split(settings, "test")
    cfg = settings.evaluate
    masks = slice_masks(X, cfg)
    test_frame = pd.concat([X, y.rename(TARGET)], axis=1)
    test_source = Path(settings.paths.processed_dir) / "test.parquet"
    data_version = str(manifest.get("raw_content_hash", ""))
    test_hash = str(manifest.get("test_hash", "")) or data_version

    total = STEPS_PER_VERSION * len(chosen)
    rows: list[dict[str, Any]] = []
    for n, ref in enumerate(chosen):
        label = f"version {ref.version} ({ref.tags.get('candidate', '?')})"

        def report(stage: str, step: int, _base: int = n * STEPS_PER_VERSION) -> None:
            if progress:
                progress(stage, _base + step, total)

        report(f"{label}: loading the model", 0)
        model = registry.load_model(settings, ref)
        report(f"{label}: predicting {len(X)} holdout rows, slices and checks", 1)
        pred = np.asarray(model.predict(X), dtype=float)
        overall = compute_metrics(y, pred)
        slices = slice_metrics(y, pred, masks)
        checks = behavioural_checks(model, X, cfg)
        metrics = {f"holdout_{k}": v for k, v in overall.items() if math.isfinite(v)}
        for name, values in slices.items():
            for key in ("rmse", "mae", "r2"):
                if math.isfinite(values[key]):
                    metrics[f"slice_{name}_{key}"] = values[key]
        metrics["holdout_medinc_uplift"] = checks["checks"]["medinc_uplift"]["value"]
        metrics["holdout_out_of_range_rows"] = float(checks["checks"]["plausible_range"]["value"])
        metrics["holdout_checks_passed"] = 1.0 if checks["passed"] else 0.0
        report(f"{label}: plots and logging to MLflow", 2)
        when = iso_utc()
        with tempfile.TemporaryDirectory(prefix="housing-eval-") as tmp:
            plots = write_plots(y, pred, Path(tmp), label)
            registry.log_evaluation(
                settings,
                ref,
                metrics=metrics,
                run_tags={"eval_data_version": data_version, "evaluated_at": when},
                version_tags={
                    "evaluated": "true",
                    "evaluated_at": when,
                    "eval_data_version": data_version,
                    "checks_passed": str(checks["passed"]).lower(),
                },
                artifacts={"evaluation": list(plots.values())},
                documents={
                    "evaluation/slices.json": slices,
                    "evaluation/checks.json": checks,
                    "evaluation/metrics.json": overall,
                },
                test_frame=test_frame,
                test_source=test_source,
                test_hash=test_hash,
            )
        rows.append(
            {
                "version": ref.version,
                "candidate": ref.tags.get("candidate"),
                **overall,
                "checks_passed": checks["passed"],
                "checks": checks["checks"],
                "slices": slices,
                "plots": [f"evaluation/{p.name}" for p in plots.values()],
                "run_id": ref.run_id,
                "data_version": data_version,
            }
        )
        report(f"{label}: evaluated", STEPS_PER_VERSION)
    _compare_with_champion(settings, rows)
    return rows


def _compare_with_champion(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Add the champion's holdout RMSE/R² and the difference to each row (in place)."""
    from housing_mlops import registry

    champion_version = registry.get_alias_version(settings, registry.CHAMPION)
    champion: dict[str, float] = {}
    if champion_version is not None:
        evaluated_now = [r for r in rows if r["version"] == champion_version]
        if evaluated_now:
            champion = {k: evaluated_now[0][k] for k in ("rmse", "r2")}
        else:
            champion = _metric_row(registry.resolve(settings, version=int(champion_version)))
    for row in rows:
        row["champion_version"] = champion_version
        row["champion_rmse"] = champion.get("rmse")
        row["champion_r2"] = champion.get("r2")
        row["rmse_vs_champion"] = row["rmse"] - champion["rmse"] if "rmse" in champion else None
