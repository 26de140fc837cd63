"""Cross-validate, fit, log and register every configured candidate.

For each candidate of the ``train:`` section: K-fold cross-validation on the train split
(``KFold(cv_folds, shuffle=True, random_state=seed)``) gives mean and std of RMSE, MAE and
R²; the candidate is then fitted on the whole train split, logged as one MLflow run
(params, metrics, tags, dataset lineage, model with signature and input example, the
reference profile) and registered as a new version of the configured model. All versions
of one ``train`` call share a ``train_batch`` tag, which is what ``housing evaluate``
picks by default.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import ModelError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from housing_mlops.config import CandidateConfig, Settings

# progress(description, steps_done, steps_total)
ProgressHook = Callable[[str, int, int], None]


def select_candidates(settings: Settings, only: Sequence[str] | None) -> list[CandidateConfig]:
    """The configured candidates, restricted to ``only`` (UsageError on unknown names)."""
    candidates = list(settings.train.candidates)
    if not only:
        return candidates
    names = [c.name for c in candidates]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UsageError(
            f"unknown candidate {', '.join(repr(n) for n in unknown)}: "
            f"choose from {', '.join(names)}"
        )
    wanted = set(only)
    return [c for c in candidates if c.name in wanted]


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the working tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def limit_threads(n_jobs: int) -> Any:
    """Cap OpenMP/BLAS pools at ``train.n_jobs`` while training (HistGradientBoosting uses
    every core otherwise, and oversubscribed OpenMP pools spin: on a busy 2-core machine a
    fit can be 20x slower). Returns the limiter; call ``restore_original_limits()``."""
    # threadpoolctl only sees libraries that are loaded, so load the OpenMP users first.
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    try:
        import lightgbm  # noqa: F401
    except ImportError:  # pragma: no cover - lightgbm is a dependency
        pass
    return threadpool_limits(limits=n_jobs)


def new_batch_id() -> str:
    return f"{datetime.now(tz=UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def candidate_params(candidate: CandidateConfig, settings: Settings, rows: int) -> dict[str, Any]:
    """What identifies a candidate's training, as flat MLflow params."""
    feats = settings.features
    params: dict[str, Any] = {
        "candidate": candidate.name,
        "estimator": candidate.estimator,
        "engineered_features": candidate.engineered_features,
        "cv_folds": settings.train.cv_folds,
        "seed": settings.train.seed,
        "train_rows": rows,
    }
    if candidate.engineered_features:
        params.update(
            {
                "features.rotations_deg": list(feats.rotations_deg),
                "features.city_distances": feats.city_distances,
                "features.knn_neighbors": list(feats.knn_neighbors),
                "features.knn_folds": feats.knn_folds,
            }
        )
    params.update({f"model.{k}": v for k, v in sorted(candidate.params.items())})
    return params


def cross_validate(
    settings: Settings,
    candidate: CandidateConfig,
    X: Any,
    y: Any,
    on_fold: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Mean and std of RMSE, MAE and R² over shuffled K folds (deterministic by seed)."""
    import numpy as np
    from sklearn.model_selection import KFold

    from housing_mlops import models
    from housing_mlops.evaluate import compute_metrics

    folds = KFold(n_splits=settings.train.cv_folds, shuffle=True, random_state=settings.train.seed)
    scores: dict[str, list[float]] = {"rmse": [], "mae": [], "r2": []}
    for i, (fit_idx, val_idx) in enumerate(folds.split(X)):
        pipeline = models.build_pipeline(
            candidate, settings.features, settings.train.seed, n_jobs=settings.train.n_jobs
        )
        pipeline.fit(X.iloc[fit_idx], y.iloc[fit_idx])
        metrics = compute_metrics(y.iloc[val_idx], pipeline.predict(X.iloc[val_idx]))
        for key in scores:
            scores[key].append(metrics[key])
        if on_fold:
            on_fold(i + 1)
    out: dict[str, float] = {}
    for key, values in scores.items():
        out[f"cv_{key}_mean"] = float(np.mean(values))
        out[f"cv_{key}_std"] = float(np.std(values))
    return out


def train(
    settings: Settings, only: Sequence[str] | None = None, progress: ProgressHook | None = None
) -> list[dict[str, Any]]:
    """Cross-validate, fit, log and register each candidate; one result row per candidate."""
    import pandas as pd

    from housing_mlops import __version__, featurize, models, registry
    from housing_mlops.config import config_hash
    from housing_mlops.drift import build_profile
    from housing_mlops.evaluate import compute_metrics
    from housing_mlops.features import FEATURES, TARGET

    candidates = select_candidates(settings, only)
    manifest = featurize.read_processed_manifest(settings)
    X, y = featurize.load_split(settings, "train")
    registry.configure(settings)  # an unreachable store fails before minutes of training

    batch = new_batch_id()
    folds = settings.train.cv_folds
    steps_per = folds + 2  # folds, final fit, logging
    total = steps_per * len(candidates)
    common_tags = {
        "data_version": str(manifest.get("raw_content_hash", "")),
        "train_hash": str(manifest.get("train_hash", "")),
        "config_hash": config_hash(settings),
        "package_version": __version__,
        "train_batch": batch,
    }
    commit = git_commit(Path(settings.source).parent if settings.source else None)
    if commit:
        common_tags["git_commit"] = commit
    train_source = Path(settings.paths.processed_dir) / "train.parquet"
    train_frame = pd.concat([X, y.rename(TARGET)], axis=1)

    results: list[dict[str, Any]] = []
    limiter = limit_threads(settings.train.n_jobs)
    try:
        for n, candidate in enumerate(candidates):
            base = n * steps_per

            def report(desc: str, done: int, _base: int = base) -> None:
                if progress:
                    progress(desc, _base + done, total)

            def on_fold(i: int, name: str = candidate.name) -> None:
                report(f"{name}: cross-validation {i}/{folds}", i)

            on_fold(0)
            try:
                cv = cross_validate(settings, candidate, X, y, on_fold=on_fold)
                report(f"{candidate.name}: fit on {len(X)} rows", folds)
                model = models.build_pipeline(
                    candidate, settings.features, settings.train.seed, n_jobs=settings.train.n_jobs
                )
                started = time.perf_counter()
                model.fit(X, y)
                fit_time = time.perf_counter() - started
                train_pred = model.predict(X)
            except (ValueError, TypeError) as exc:
                raise ModelError(
                    f"training candidate '{candidate.name}' failed: {exc} (check its params in "
                    "the config)"
                ) from exc
            report(f"{candidate.name}: logging to MLflow", folds + 1)
            metrics = {
                **cv,
                "fit_time_s": fit_time,
                "train_rmse": compute_metrics(y, train_pred)["rmse"],
            }
            profile = build_profile(
                {**{f: X[f].to_numpy() for f in FEATURES}, "prediction": train_pred},
                sample_size=settings.features.profile_sample_size,
                seed=settings.split.seed,
            )
            ref = registry.log_candidate(
                settings,
                run_name=f"{candidate.name}-{batch}",
                model=model,
                X_train=X,
                params=candidate_params(candidate, settings, len(X)),
                metrics=metrics,
                run_tags={**common_tags, "candidate": candidate.name},
                version_tags={
                    "candidate": candidate.name,
                    "estimator": candidate.estimator,
                    "train_batch": batch,
                    "data_version": common_tags["data_version"],
                },
                train_frame=train_frame,
                train_source=train_source,
                train_hash=common_tags["train_hash"] or common_tags["data_version"],
                profile=profile,
            )
            report(f"{candidate.name}: registered version {ref.version}", steps_per)
            results.append(
                {
                    "candidate": candidate.name,
                    "estimator": candidate.estimator,
                    "version": ref.version,
                    "run_id": ref.run_id,
                    **cv,
                    "fit_time_s": fit_time,
                    "train_batch": batch,
                    "data_version": common_tags["data_version"],
                }
            )
    finally:
        limiter.restore_original_limits()
    return results
