"""Estimator factory: one scikit-learn Pipeline per configured candidate.

``build_pipeline`` is the single place a model is built. Every pipeline takes the 8 raw
features (``features.FEATURES``) and has two steps: ``"features"`` (the transformer from
``features.py``) and ``"model"`` (the estimator; on the engineered features, with
``features.residual_neighbors`` > 0, the estimator inside ``ResidualCorrected``).

``SKOPS_TRUSTED_TYPES`` is the reviewed list of non-default types any pipeline built here
contains. Loading must pass THIS list to skops (``skops.io.load(path, trusted=...)``), not
the list an artifact's MLmodel file carries, which the artifact itself could have widened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from housing_mlops.features import build_preprocessor

# Reviewed: each entry is a class whose state is plain numbers/arrays/strings. Tree node
# arrays (sklearn Tree, TreePredictor, the LightGBM model text) are indexed without bounds
# checks, so a crafted file could crash the process: that is why registry.py also checks
# the artifact's sha256 recorded at registration before loading.
SKOPS_TRUSTED_TYPES: list[str] = [
    # our transformer: numpy arrays + plain Python (the KD-tree is rebuilt after load)
    "housing_mlops.features.SpatialFeatures",
    # our final step around the estimator: the estimator, a weight, the training residuals
    "housing_mlops.models.ResidualCorrected",
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


class ResidualCorrected(RegressorMixin, BaseEstimator):
    """An estimator whose predictions get ``weight`` x the mean residual of the nearest
    training blocks: residuals of prices that stay after the model, shared by neighbours
    (a block's street, school or view), are partly passed on to the blocks around it.

    It is the final step after ``SpatialFeatures(neighbour_ids=neighbours)``, whose last
    ``neighbours`` columns are the row numbers of each row's nearest training blocks; the
    estimator sees the columns before them. ``fit`` fits it, then keeps the residuals of its
    own predictions on the rows it was fitted on (``residuals_``, in the training rows'
    order, which is the order of those row numbers). ``predict`` is the estimator's
    prediction plus the correction (``split``): the row numbers come from the neighbour
    query of the target means, so a served row costs a gather and a sum more. Measured in
    the README ("The model").
    """

    def __init__(self, estimator: Any = None, neighbours: int = 5, weight: float = 0.4) -> None:
        self.estimator = estimator
        self.neighbours = neighbours
        self.weight = weight

    def fit(self, X: Any, y: Any) -> ResidualCorrected:
        from sklearn.base import clone

        A = np.asarray(X, dtype=np.float64)
        k = int(self.neighbours)
        if k < 1 or A.ndim != 2 or A.shape[1] <= k:
            raise ValueError(
                f"ResidualCorrected needs more than its {k} neighbour row columns, got {A.shape}"
            )
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        self.estimator_ = clone(self.estimator)
        self.estimator_.fit(A[:, :-k], target)
        fitted = np.asarray(self.estimator_.predict(A[:, :-k]), dtype=np.float64).reshape(-1)
        self.residuals_ = target - fitted
        self.n_features_in_ = A.shape[1]
        return self

    def split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The estimator's input (``X`` without the neighbour row columns, contiguous) and
        the correction to add to its predictions: ``weight`` x the mean training residual
        of each row's nearest blocks. One call for both: a served row pays per call."""
        k = int(self.neighbours)
        # A sum and one product rather than mean(): microseconds less per served call.
        near = self.residuals_[X[:, -k:].astype(np.intp)]
        correction = np.add.reduce(near, axis=1) * (float(self.weight) / k)
        return np.ascontiguousarray(X[:, :-k], dtype=np.float64), correction

    def predict(self, X: Any) -> np.ndarray:
        A, correction = self.split(np.asarray(X, dtype=np.float64))
        inner = np.asarray(self.estimator_.predict(A), dtype=np.float64)
        return inner.reshape(-1) + correction


def build_final(candidate_cfg: Any, features_cfg: Any, seed: int, n_jobs: int = 1) -> Any:
    """The candidate's final step: its estimator, inside ``ResidualCorrected`` when the
    features give neighbour row numbers (engineered features, ``residual_neighbors`` > 0)."""
    if features_cfg is None:  # build_preprocessor's defaults: the config's
        from housing_mlops.config import FeaturesConfig

        features_cfg = FeaturesConfig()
    est = build_estimator(candidate_cfg.estimator, dict(candidate_cfg.params), seed, n_jobs)
    neighbours = int(getattr(features_cfg, "residual_neighbors", 0))
    if neighbours and bool(getattr(candidate_cfg, "engineered_features", True)):
        weight = float(getattr(features_cfg, "residual_weight", 0.4))
        return ResidualCorrected(est, neighbours=neighbours, weight=weight)
    return est


def build_pipeline(candidate_cfg: Any, features_cfg: Any, seed: int, n_jobs: int = 1) -> Any:
    """A Pipeline (steps "features", "model") for one candidate of the ``train:`` section."""
    from sklearn.pipeline import Pipeline

    engineered = bool(getattr(candidate_cfg, "engineered_features", True))
    return Pipeline(
        [
            ("features", build_preprocessor(features_cfg, engineered=engineered, seed=seed)),
            ("model", build_final(candidate_cfg, features_cfg, seed, n_jobs=n_jobs)),
        ]
    )
