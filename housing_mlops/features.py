"""Feature engineering as one scikit-learn transformer, used in training AND serving.

``SpatialFeatures`` takes the 8 raw California Housing features (a DataFrame selected by
column name, or a 2-D array in ``FEATURES`` order) and adds:

- ratio features (bedrooms per room, rooms per person, households, log population);
- coordinates rotated by a few angles (trees split on axis-aligned lines; rotations let
  them cut the diagonal coast and valleys);
- great-circle distances to the big cities and to the coastline (``geography``);
- out-of-fold neighbour target means on latitude/longitude (k nearest blocks);
- optionally (``context_neighbors`` k > 0), the block against its neighbourhood: the
  distance to the nearest training block, and the block's house age, rooms, population and
  occupancy minus their mean over the k nearest training blocks (a young block among old
  ones, a crowded one among roomy ones);
- optionally (``neighbour_ids``), the row numbers of the nearest training blocks, for a
  final step that corrects its predictions by their residuals (``models.ResidualCorrected``).

The neighbour means are the only target-based features. ``fit_transform`` (what a
Pipeline calls during ``fit``) computes them out-of-fold: a training row's value comes
from neighbours in the other folds only, so its own target never leaks into its feature.
``transform`` (prediction time) uses the whole training set.

State is plain numpy arrays so the fitted transformer goes through skops. The KD-tree used
for neighbour lookups is a cache rebuilt from the stored arrays (``_tree``): scipy's
``cKDTree`` is a C extension type that skops cannot serialise, so ``__getstate__`` drops it
and the first ``transform`` after loading rebuilds it (a few milliseconds).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from housing_mlops.columns import FEATURES, TARGET  # noqa: F401 - TARGET re-exported
from housing_mlops.geography import CITIES, COAST

_I_INC, _I_AGE, _I_ROOMS, _I_BEDRMS, _I_POP, _I_OCCUP, _I_LAT, _I_LON = range(8)
# Ratio features: bedrooms per room, rooms per person, households (population / occupancy).
# Index arrays, not lists: numpy converts a list on every use (a served row pays it).
_RATIO_NUM = np.array([_I_BEDRMS, _I_ROOMS, _I_POP], dtype=np.intp)
_RATIO_DEN = np.array([_I_ROOMS, _I_OCCUP, _I_OCCUP], dtype=np.intp)
# The raw features compared with the neighbourhood's (``context_neighbors``). Bedrooms
# too gave a worse CV (README, "The model").
_CONTEXT = np.array([_I_AGE, _I_ROOMS, _I_POP, _I_OCCUP], dtype=np.intp)
_CONTEXT_NAMES = [FEATURES[i] for i in _CONTEXT]

_EARTH_KM = 6371.0
# Neighbour search works in a local equirectangular projection (km-ish units).
_LAT0 = 36.0
_LON_SCALE = math.cos(math.radians(_LAT0))
_KM_PER_DEGREE = math.pi * _EARTH_KM / 180.0
# Latitude and longitude are neighbours in FEATURES: a slice (a view, no copy).
_PROJECT_COLUMNS = slice(_I_LAT, _I_LON + 1)
assert _I_LON == _I_LAT + 1
_PROJECT_SCALE = np.array([1.0, _LON_SCALE])


_CITY_LAT = np.radians([lat for _, lat, _ in CITIES])
_CITY_LON = np.radians([lon for _, _, lon in CITIES])
_COAST_LAT = np.radians([lat for lat, _ in COAST])
_COAST_LON = np.radians([lon for _, lon in COAST])
# Cities then coast points in one reference array: one haversine call per transform (for a
# single served row the cost is the number of numpy calls, not their size).
_REF_LAT = np.concatenate([_CITY_LAT, _COAST_LAT])
_REF_LON = np.concatenate([_CITY_LON, _COAST_LON])
_REF_COS_LAT = np.cos(_REF_LAT)


def _haversine_km(
    lat: np.ndarray,
    lon: np.ndarray,
    ref_lat: np.ndarray,
    ref_lon: np.ndarray,
    ref_cos_lat: np.ndarray | None = None,
) -> np.ndarray:
    """Great-circle km from each (lat, lon) in degrees to each reference point (radians);
    ``ref_cos_lat`` is ``np.cos(ref_lat)`` when the caller has it precomputed."""
    phi = np.radians(lat)[:, None]
    dphi = phi - ref_lat
    dlmb = np.radians(lon)[:, None] - ref_lon
    cos_ref = np.cos(ref_lat) if ref_cos_lat is None else ref_cos_lat
    a = np.sin(dphi * 0.5) ** 2 + np.cos(phi) * cos_ref * np.sin(dlmb * 0.5) ** 2
    return (2 * _EARTH_KM) * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


@functools.lru_cache(maxsize=8)
def _neighbour_columns(
    ks: tuple[int, ...], kmax: int, nearest: bool, kth: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each k (at most ``kmax``, the neighbours found), its column in the neighbour arrays,
    and the distance columns to give (the nearest block's, then each k-th's), made once
    instead of on every transform."""
    kk = np.minimum(ks, kmax)
    last = kk - 1
    dcols = np.concatenate([[0] if nearest else [], last if kth else []]).astype(np.intp)
    return kk, last, dcols


@functools.lru_cache(maxsize=8)
def _rotation(degrees: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The rotated coordinates' factors, computed once per tuple of angles (not per row):
    interleaved (x, y) per angle, x = lon cos + lat sin and y = lon (-sin) + lat cos, so
    ``lon * on_lon + lat * on_lat`` gives every rotated column in three numpy calls."""
    angles = np.radians(np.asarray(degrees, dtype=np.float64))
    cos, sin = np.cos(angles), np.sin(angles)
    on_lon = np.empty(2 * angles.size)
    on_lat = np.empty(2 * angles.size)
    on_lon[0::2], on_lon[1::2] = cos, -sin
    on_lat[0::2], on_lat[1::2] = sin, cos
    return on_lon, on_lat


def _as_matrix(X: Any) -> np.ndarray:
    """The 8 raw features as a float64 (n, 8) array; frames are selected by column name."""
    if hasattr(X, "columns"):
        missing = [c for c in FEATURES if c not in X.columns]
        if missing:
            raise ValueError(f"input is missing feature column(s): {missing}")
        if list(X.columns) == FEATURES:
            return np.asarray(X.to_numpy(dtype=np.float64))  # fast path (serving)
        return np.asarray(X[FEATURES].to_numpy(dtype=np.float64))
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == len(FEATURES):
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != len(FEATURES):
        raise ValueError(
            f"expected a 2-D array with {len(FEATURES)} columns in order {FEATURES}, "
            f"got shape {arr.shape}"
        )
    return arr


class SpatialFeatures(  # type: ignore[call-arg]  # sklearn declares the keyword untyped
    TransformerMixin, BaseEstimator, auto_wrap_output_keys=None
):
    """Raw features plus ratios, rotated coordinates, distances and neighbour target means.

    With ``neighbour_ids`` n > 0 the last n columns are the row numbers (in the training
    rows' order, as floats) of each row's n nearest training blocks, nearest first: those of
    the other folds while fitting, of the whole training set when transforming. They come
    from the same neighbour query as the target means (no second lookup); they are not
    features for the estimator, which ``models.ResidualCorrected`` keeps them from.

    ``auto_wrap_output_keys=None``: scikit-learn's ``set_output`` wrapper around
    ``transform`` (it looks up the output configuration on every call) is left out; the
    output is always a numpy array, and a served row saves about 3 us.
    """

    # Models saved before the parameters existed load without them: none.
    neighbour_ids: int = 0
    context_neighbors: int = 0

    def __init__(
        self,
        engineered: bool = True,
        rotations_deg: tuple[float, ...] = (15.0, 30.0, 45.0, 60.0, 75.0),
        city_distances: bool = True,
        knn_neighbors: tuple[int, ...] = (8, 32),
        knn_folds: int = 10,
        knn_distances: bool = True,
        random_state: int = 0,
        neighbour_ids: int = 0,
        context_neighbors: int = 0,
    ) -> None:
        self.engineered = engineered
        self.rotations_deg = rotations_deg
        self.city_distances = city_distances
        self.knn_neighbors = knn_neighbors
        self.knn_folds = knn_folds
        self.knn_distances = knn_distances
        self.random_state = random_state
        self.neighbour_ids = neighbour_ids
        self.context_neighbors = context_neighbors

    # --- fitting -----------------------------------------------------------------------

    def _knn_ks(self) -> list[int]:
        if not self.engineered:
            return []
        return sorted({int(k) for k in self.knn_neighbors})

    def fit(self, X: Any, y: Any = None) -> SpatialFeatures:
        self._fit_state(X, y)
        return self

    def _fit_state(self, X: Any, y: Any) -> np.ndarray:
        M = _as_matrix(X)
        self.n_features_in_ = len(FEATURES)
        self.feature_names_in_ = np.asarray(FEATURES, dtype=object)
        ks = self._knn_ks()
        if ks:
            if y is None:
                raise ValueError("SpatialFeatures needs y to fit neighbour target means")
            yv = np.asarray(y, dtype=np.float64).reshape(-1)
            if yv.shape[0] != M.shape[0]:
                raise ValueError("X and y have different numbers of rows")
            if any(k < 1 for k in ks):
                raise ValueError(f"knn_neighbors must be positive, got {ks}")
            if int(self.neighbour_ids) < 0:
                raise ValueError(f"neighbour_ids must be 0 or more, got {self.neighbour_ids}")
            if int(self.context_neighbors) < 0:
                raise ValueError(
                    f"context_neighbors must be 0 or more, got {self.context_neighbors}"
                )
            self.knn_points_ = self._project(M)
            self.knn_targets_ = yv.copy()
            context = self._context(ks)
            if context:
                # One row per context feature (a gather along rows is cheapest), divided
                # by the number of neighbours once here: a served row sums for the mean.
                scale = 1.0 / min(context, M.shape[0])
                self.knn_context_ = np.ascontiguousarray(M[:, _CONTEXT].T * scale)
        self._tree = None
        self._tree_lock = threading.Lock()
        return M

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit, then transform the training rows with OUT-OF-FOLD neighbour means."""
        M = self._fit_state(X, y)
        ks = self._knn_ks()
        out, j = self._base_features(M, self._knn_width(ks))
        if ks:
            self._oof_knn(M, self.knn_points_, self.knn_targets_, ks, out[:, j:])
        return out

    def _knn_width(self, ks: list[int]) -> int:
        context = 1 + _CONTEXT.size if self._context(ks) else 0
        return len(ks) * (2 if self.knn_distances else 1) + context + self._ids(ks)

    def _context(self, ks: list[int]) -> int:
        """How many neighbours the context columns compare with (none without neighbours)."""
        return int(self.context_neighbors) if ks else 0

    def _ids(self, ks: list[int]) -> int:
        """How many neighbour row numbers follow the neighbour features (none without them)."""
        return int(self.neighbour_ids) if ks else 0

    def _oof_knn(
        self, M: np.ndarray, points: np.ndarray, targets: np.ndarray, ks: list[int], out: np.ndarray
    ) -> None:
        from scipy.spatial import cKDTree

        n = points.shape[0]
        folds = max(2, int(self.knn_folds))
        rng = np.random.default_rng(self.random_state)
        assignment = rng.permutation(n) % folds
        for fold in range(folds):
            held = np.flatnonzero(assignment == fold)
            kept = np.flatnonzero(assignment != fold)
            if held.size == 0:
                continue
            tree = cKDTree(points[kept])
            out[held] = self._knn_stats(tree, targets[kept], M[held], ks, rows=kept)

    def _knn_stats(
        self,
        tree: Any,
        targets: np.ndarray,
        M: np.ndarray,
        ks: list[int],
        out: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """For the raw rows ``M``: the mean target of the k nearest blocks for each k; then
        (optionally) the distance in km to the k-th one, a local density (dense = urban)
        that trees use alongside; then (``context_neighbors``) the distance to the nearest
        block and the row's context features minus their neighbourhood means; then
        (``neighbour_ids``) the row numbers of the nearest blocks. ``rows`` maps the tree's
        points to training rows when it holds a subset of them. Written into ``out``
        (n, width) when given."""
        n = M.shape[0]
        ids = self._ids(ks)
        context = self._context(ks)
        kmax = min(max(max(ks), ids, context), tree.n)
        dist, idx = tree.query(self._project(M), k=kmax)
        kk, last, dcols = _neighbour_columns(tuple(ks), kmax, context > 0, self.knn_distances)
        if out is None:
            out = np.empty((n, self._knn_width(ks)), dtype=np.float64)
        # k = 1 gives 1-D results: reshape is a view otherwise.
        idx = idx.reshape(n, kmax)
        # The ufuncs' own methods (add.accumulate is cumsum, minimum.reduce is min): the
        # same numbers without numpy's Python wrappers, about 1 us each on a served row.
        # (take along an axis: 0.25 us where indexing [:, index array] is 0.9 for a row.)
        sums = np.add.accumulate(targets[idx], axis=1).take(last, axis=1)
        np.divide(sums, kk, out=out[:, : len(ks)])
        j = len(ks)
        if dcols.size:
            # The nearest block's distance (context) and the k-th neighbours': one product.
            d = out[:, j : j + dcols.size]
            np.multiply(dist.reshape(n, kmax).take(dcols, axis=1), _KM_PER_DEGREE, out=d)
            j += dcols.size
        if context:
            near = idx[:, :context] if rows is None else rows[idx[:, :context]]
            # knn_context_ is already divided by the number of neighbours: the sum is the
            # mean, added in neighbour order row by row (a served row gets a batch's bits).
            # (take along rows, then a sum over each row's neighbours: 1.4 against 2.1 us for
            # one served row, 2.3 against 3.8 for eight, than indexing (n, k, 4) arrays.)
            mean = np.add.reduce(self.knn_context_.take(near, axis=1), axis=-1)
            fitted = min(context, self.knn_context_.shape[1])
            if near.shape[1] != fitted:  # a training fold smaller than the neighbours
                mean *= fitted / near.shape[1]
            np.subtract(M.take(_CONTEXT, axis=1), mean.T, out=out[:, j : j + _CONTEXT.size])
            j += _CONTEXT.size
        if ids:
            # Fewer training blocks than ids (a tiny training set): the farthest repeats.
            nearest = idx[:, :ids] if kmax >= ids else idx[:, np.minimum(np.arange(ids), kmax - 1)]
            out[:, j : j + ids] = nearest if rows is None else rows[nearest]
        return out

    @staticmethod
    def _project(M: np.ndarray) -> np.ndarray:
        # Degrees scaled so one unit is roughly the same distance north-south and east-west.
        return M[:, _PROJECT_COLUMNS] * _PROJECT_SCALE

    # --- transforming ------------------------------------------------------------------

    def _get_tree(self) -> Any:
        tree = getattr(self, "_tree", None)
        if tree is None:
            from scipy.spatial import cKDTree

            lock = getattr(self, "_tree_lock", None)
            if lock is None:
                lock = self._tree_lock = threading.Lock()
            with lock:
                tree = getattr(self, "_tree", None)
                if tree is None:
                    tree = cKDTree(self.knn_points_)
                    self._tree = tree
        return tree

    def transform(self, X: Any) -> np.ndarray:
        if not hasattr(self, "n_features_in_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("SpatialFeatures is not fitted yet: call fit first")
        M = _as_matrix(X)
        ks = self._knn_ks()
        out, j = self._base_features(M, self._knn_width(ks))
        if ks:
            self._knn_stats(self._get_tree(), self.knn_targets_, M, ks, out[:, j:])
        return out

    def _base_features(self, M: np.ndarray, extra: int = 0) -> tuple[np.ndarray, int]:
        """The non-target features in a new (n, width + extra) array, and their width (the
        neighbour features go in the ``extra`` columns after them)."""
        # One preallocated output and a handful of vectorised operations: serving calls
        # this for single rows, where per-operation overhead (not size) dominates.
        n = M.shape[0]
        if not self.engineered:
            out = np.empty((n, len(FEATURES) + extra), dtype=np.float64)
            out[:, :8] = M
            return out, len(FEATURES)
        on_lon, on_lat = _rotation(tuple(self.rotations_deg))
        n_dist = len(CITIES) + 2 if self.city_distances else 0
        width = len(FEATURES) + 4 + on_lon.size + n_dist
        out = np.empty((n, width + extra), dtype=np.float64)
        out[:, :8] = M
        lat = M[:, _I_LAT]
        lon = M[:, _I_LON]
        # bedrooms per room, rooms per person, households: one division (0 where the
        # denominator is not positive).
        # (take: 0.2 us where indexing M[:, index array] is 0.9 for a served row.)
        den = M.take(_RATIO_DEN, axis=1)
        ratios = out[:, 8:11]
        ratios.fill(0.0)
        np.divide(M.take(_RATIO_NUM, axis=1), den, out=ratios, where=den > 0)
        out[:, 11] = np.log1p(np.maximum(M[:, _I_POP], 0.0))
        j = 12
        if on_lon.size:
            # Elementwise, not a matrix product: BLAS may round a 1-row product differently
            # from the same row inside a batch. lat cos - lon sin is computed as
            # lon (-sin) + lat cos: the same bits (negation and the order of a sum of two
            # are exact), in three calls instead of eight.
            rotated = out[:, j : j + on_lon.size]
            np.multiply(lon[:, None], on_lon, out=rotated)
            rotated += lat[:, None] * on_lat
            j += on_lon.size
        if self.city_distances:
            n_city = len(CITIES)
            dist = _haversine_km(lat, lon, _REF_LAT, _REF_LON, _REF_COS_LAT)
            out[:, j : j + n_city] = dist[:, :n_city]
            np.minimum.reduce(dist[:, :n_city], axis=1, out=out[:, j + n_city])
            np.minimum.reduce(dist[:, n_city:], axis=1, out=out[:, j + n_city + 1])
        return out, width

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = list(FEATURES)
        if self.engineered:
            names += ["bedrooms_per_room", "rooms_per_person", "households", "log_population"]
            for deg in self.rotations_deg:
                names += [f"rot{deg:g}_x", f"rot{deg:g}_y"]
            if self.city_distances:
                names += [f"dist_{name}_km" for name, _, _ in CITIES]
                names += ["dist_nearest_city_km", "dist_coast_km"]
            ks = self._knn_ks()
            context = self._context(ks)
            names += [f"knn{k}_target_mean" for k in ks]
            names += ["nearest_block_km"] if context else []
            if self.knn_distances:
                names += [f"knn{k}_distance_km" for k in ks]
            names += [f"{name}_minus_knn{context}_mean" for name in _CONTEXT_NAMES if context]
            names += [f"neighbour{i + 1}_row" for i in range(self._ids(ks))]
        return np.asarray(names, dtype=object)

    # --- serialisation -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # The KD-tree (a C extension object) and the lock are caches rebuilt on demand;
        # leaving them out keeps the state to numpy arrays and plain Python for skops.
        state = super().__getstate__()
        state = dict(state)
        state.pop("_tree", None)
        state.pop("_tree_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tree = None
        self._tree_lock = threading.Lock()


def build_preprocessor(features_cfg: Any = None, engineered: bool = True, seed: int = 0) -> Any:
    """The feature transformer for a pipeline, configured from the ``features:`` section
    (its defaults when ``features_cfg`` is None)."""
    if features_cfg is None:
        from housing_mlops.config import FeaturesConfig

        features_cfg = FeaturesConfig()
    return SpatialFeatures(
        engineered=engineered,
        rotations_deg=tuple(float(d) for d in features_cfg.rotations_deg),
        city_distances=bool(features_cfg.city_distances),
        knn_neighbors=tuple(int(k) for k in features_cfg.knn_neighbors),
        knn_folds=int(features_cfg.knn_folds),
        knn_distances=bool(getattr(features_cfg, "knn_distances", True)),
        random_state=seed,
        neighbour_ids=int(getattr(features_cfg, "residual_neighbors", 0)) if engineered else 0,
        context_neighbors=int(getattr(features_cfg, "context_neighbors", 0)),
    )
