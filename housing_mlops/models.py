"""Estimator factory: one scikit-learn Pipeline per configured candidate.

``build_pipeline`` is the single place a model is built. Every pipeline takes the 8 raw
features (``features.FEATURES``) and has two steps: ``"features"`` (the transformer from
``features.py``) and ``"model"`` (the estimator).

``SKOPS_TRUSTED_TYPES`` is the reviewed list of non-default types any pipeline built here
contains. Loading must pass THIS list to skops (``skops.io.load(path, trusted=...)``), not
the list an artifact's MLmodel file carries, which the artifact itself could have widened.
"""

from __future__ import annotations

from typing import Any

from housing_mlops.features import build_preprocessor

# Reviewed: each entry is a class whose state is plain numbers/arrays/strings. Tree node
# arrays (sklearn Tree, TreePredictor, the LightGBM model text) are indexed without bounds
# checks, so a crafted file could crash the process: that is why registry.py also checks
# the artifact's sha256 recorded at registration before loading.
SKOPS_TRUSTED_TYPES: list[str] = [
    # our transformer: numpy arrays + plain Python (the KD-tree is rebuilt after load)
    "housing_mlops.features.SpatialFeatures",
    # RandomForestRegressor's decision trees
    "sklearn.tree._tree.Tree",
    # HistGradientBoostingRegressor's trees
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # LightGBM: the booster's state is its text model dump plus parameter dicts
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMRegressor",
    "collections.OrderedDict",
]

ESTIMATORS = ("ridge", "random_forest", "hist_gradient_boosting", "lightgbm")


def build_estimator(kind: str, params: dict[str, Any], seed: int, n_jobs: int = 1) -> Any:
    """The bare estimator for ``kind`` with the candidate's params over our defaults."""
    params = dict(params)
    if kind == "ridge":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        return Pipeline([("scale", StandardScaler()), ("ridge", Ridge(**params))])
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        # One thread unless the config says otherwise: a threaded forest sums its trees in
        # whatever order the threads finish, so predictions wobble in the last bit (a reloaded
        # model would not predict *exactly* the same), and serving one row through a thread
        # pool costs more than it saves.
        params.setdefault("n_jobs", 1)
        params.setdefault("random_state", seed)
        return RandomForestRegressor(**params)
    if kind == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingRegressor

        params.setdefault("random_state", seed)
        return HistGradientBoostingRegressor(**params)
    if kind == "lightgbm":
        from lightgbm import LGBMRegressor

        params.setdefault("n_jobs", n_jobs)
        params.setdefault("random_state", seed)
        params.setdefault("verbose", -1)
        params.setdefault("deterministic", True)
        params.setdefault("force_row_wise", True)
        return LGBMRegressor(**params)
    raise ValueError(f"unknown estimator {kind!r}; expected one of {ESTIMATORS}")


def build_pipeline(candidate_cfg: Any, features_cfg: Any, seed: int, n_jobs: int = 1) -> Any:
    """A Pipeline (steps "features", "model") for one candidate of the ``train:`` section."""
    from sklearn.pipeline import Pipeline

    engineered = bool(getattr(candidate_cfg, "engineered_features", True))
    return Pipeline(
        [
            ("features", build_preprocessor(features_cfg, engineered=engineered, seed=seed)),
            (
                "model",
                build_estimator(
                    candidate_cfg.estimator, dict(candidate_cfg.params), seed, n_jobs=n_jobs
                ),
            ),
        ]
    )
