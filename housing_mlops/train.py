"""Cross-validate, fit, log and register every configured candidate.

For each candidate of the ``train:`` section: K-fold cross-validation on the train split
(``KFold(cv_folds, shuffle=True, random_state=seed)``) gives mean and std of RMSE, MAE and
R²; the candidate is then fitted on the whole train split, logged as one MLflow run
(params, metrics, tags, dataset lineage, model with signature and input example, the
reference profile) and registered as a new version of the configured model. All versions
of one ``train`` call share a ``train_batch`` tag, which is what ``housing evaluate``
picks by default.

The folds and the final fits run in ``train.cv_workers`` processes (joblib); each fold
fits the feature transform once and shares it between the candidates (``fit_candidates``).
"""

from __future__ import annotations

import secrets
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import ConfigError, ModelError, UsageError

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


def _summarise(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean and std over folds of RMSE, MAE and R²."""
    import numpy as np

    out: dict[str, float] = {}
    for key in ("rmse", "mae", "r2"):
        values = [fold[key] for fold in scores]
        out[f"cv_{key}_mean"] = float(np.mean(values))
        out[f"cv_{key}_std"] = float(np.std(values))
    return out


def _fold_task(
    candidates: list[CandidateConfig],
    features_cfg: Any,
    seed: int,
    n_jobs: int,
    X: Any,
    y: Any,
    fit_idx: Any,
    val_idx: Any,
) -> list[dict[str, float] | str]:
    """One CV fold of every candidate, in a worker process or in this one.

    The feature transform is fitted once per fold (per kind of features: engineered or
    raw) and shared by the candidates, which then fit their estimator on its output:
    exactly what each candidate's Pipeline would compute (``Pipeline.fit`` is
    ``fit_transform`` then ``estimator.fit``; ``predict`` is ``transform`` then
    ``predict``), without recomputing the neighbour lookups per candidate. A candidate
    whose params are wrong gives its message instead of metrics.
    """
    from housing_mlops import models
    from housing_mlops.evaluate import compute_metrics

    limiter = limit_threads(n_jobs)
    try:
        X_fit, y_fit, X_val = X.iloc[fit_idx], y.iloc[fit_idx], X.iloc[val_idx]
        transformed: dict[bool, tuple[Any, Any]] = {}
        out: list[dict[str, float] | str] = []
        for candidate in candidates:
            engineered = bool(candidate.engineered_features)
            try:
                if engineered not in transformed:
                    pre = models.build_preprocessor(features_cfg, engineered=engineered, seed=seed)
                    transformed[engineered] = (
                        pre.fit_transform(X_fit, y_fit),
                        pre.transform(X_val),
                    )
                A, B = transformed[engineered]
                est = models.build_final(candidate, features_cfg, seed, n_jobs=n_jobs)
                est.fit(A, y_fit)
                out.append(compute_metrics(y.iloc[val_idx], est.predict(B)))
            except (ValueError, TypeError) as exc:
                out.append(str(exc))
        return out
    finally:
        limiter.restore_original_limits()


def _fit_task(
    candidate: CandidateConfig, features_cfg: Any, seed: int, n_jobs: int, X: Any, y: Any
) -> tuple[Any, float, Any] | str:
    """The candidate's Pipeline fitted on the whole train split: (model, fit seconds,
    predictions on the train split), or the error message."""
    from housing_mlops import models

    limiter = limit_threads(n_jobs)
    try:
        model = models.build_pipeline(candidate, features_cfg, seed, n_jobs=n_jobs)
        started = time.perf_counter()
        model.fit(X, y)
        fit_time = time.perf_counter() - started
        return model, fit_time, model.predict(X)
    except (ValueError, TypeError) as exc:
        return str(exc)
    finally:
        limiter.restore_original_limits()


def _failed(candidate: CandidateConfig, message: str) -> ModelError:
    return ModelError(
        f"training candidate '{candidate.name}' failed: {message} (check its params in the config)"
    )


def fit_candidates(
    settings: Settings,
    candidates: list[CandidateConfig],
    X: Any,
    y: Any,
    on_fold: Callable[[int], None] | None = None,
) -> Iterator[tuple[CandidateConfig, dict[str, float], Any, float, Any]]:
    """Cross-validate every candidate, then fit each on the whole train split.

    Yields ``(candidate, cv metrics, fitted pipeline, fit seconds, train predictions)`` in
    config order, as each final fit is done (the caller logs one while the next fits).
    The K folds and the final fits run as tasks in ``train.cv_workers`` processes (1: in
    this process); every task seeds its own models, so the numbers do not depend on the
    number of workers. ``on_fold(i)`` is called as fold i (of every candidate) is done.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import KFold

    cfg = settings.train
    folds = KFold(n_splits=cfg.cv_folds, shuffle=True, random_state=cfg.seed)
    args = (settings.features, cfg.seed, cfg.n_jobs)
    tasks = [
        delayed(_fold_task)(candidates, *args, X, y, fit_idx, val_idx)
        for fit_idx, val_idx in folds.split(X)
    ]
    tasks += [delayed(_fit_task)(candidate, *args, X, y) for candidate in candidates]
    workers = min(cfg.cv_workers, len(tasks))
    # Ordered results: the folds first, then the final fits in config order.
    results = Parallel(n_jobs=workers, return_as="generator")(tasks)
    try:
        yield from _collect(candidates, cfg.cv_folds, results, on_fold)
    finally:
        # Stop the tasks still queued (a failed candidate, a failed logging) without
        # joblib's warning about results computed and not used.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.close()


def _collect(
    candidates: list[CandidateConfig],
    n_folds: int,
    results: Iterator[Any],
    on_fold: Callable[[int], None] | None,
) -> Iterator[tuple[CandidateConfig, dict[str, float], Any, float, Any]]:
    scores: list[list[dict[str, float] | str]] = []
    for i in range(n_folds):
        scores.append(next(results))
        if on_fold:
            on_fold(i + 1)
    for n, candidate in enumerate(candidates):
        fold_scores = []
        for fold in scores:
            score = fold[n]
            if isinstance(score, str):
                raise _failed(candidate, score)
            fold_scores.append(score)
        fitted = next(results)
        if isinstance(fitted, str):
            raise _failed(candidate, fitted)
        model, fit_time, train_pred = fitted
        yield candidate, _summarise(fold_scores), model, fit_time, train_pred


def train(
    settings: Settings, only: Sequence[str] | None = None, progress: ProgressHook | None = None
) -> list[dict[str, Any]]:
    """Cross-validate, fit, log and register each candidate; one result row per candidate."""
    import pandas as pd

    from housing_mlops import __version__, featurize, registry
    from housing_mlops.config import config_hash
    from housing_mlops.drift import build_profile
    from housing_mlops.evaluate import compute_metrics
    from housing_mlops.features import FEATURES, TARGET

    candidates = select_candidates(settings, only)
    manifest = featurize.read_processed_manifest(settings)
    X, y = featurize.load_split(settings, "train")
    if settings.train.cv_folds > len(X):  # KFold's own error read as "unexpected" (exit 1)
        raise ConfigError(
            f"train.cv_folds {settings.train.cv_folds} in {settings.source or 'the config'} is "
            f"more than the {len(X)} rows of the train split: lower it (the default is 5)"
        )
    registry.configure(settings)  # an unreachable store fails before minutes of training

    batch = new_batch_id()
    folds = settings.train.cv_folds
    # Steps: the K folds (every candidate), then a final fit and the logging per candidate.
    total = folds + 2 * len(candidates)
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

    def report(desc: str, done: int) -> None:
        if progress:
            progress(desc, done, total)

    def on_fold(i: int) -> None:
        names = ", ".join(c.name for c in candidates)
        report(f"{names}: cross-validation {i}/{folds}", i)

    results: list[dict[str, Any]] = []
    limiter = limit_threads(settings.train.n_jobs)
    try:
        on_fold(0)
        fitted = fit_candidates(settings, candidates, X, y, on_fold=on_fold)
        for n, (candidate, cv, model, fit_time, train_pred) in enumerate(fitted):
            done = folds + 2 * n
            report(f"{candidate.name}: fitted on {len(X)} rows; logging to MLflow", done + 1)
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
            report(f"{candidate.name}: registered version {ref.version}", done + 2)
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
