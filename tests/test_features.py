"""The feature transformer: fitted on train only, no target leakage, same output however called."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from synthetic import make_frame

from housing_mlops.config import FeaturesConfig
from housing_mlops.features import FEATURES, TARGET, SpatialFeatures, build_preprocessor
from housing_mlops.geography import CITIES, COAST


def real_frame(archive: Path) -> pd.DataFrame:
    """The sklearn-style frame built straight from the StatLib archive."""
    with tarfile.open(archive) as tf:
        member = tf.extractfile("CaliforniaHousing/cal_housing.data")
        assert member is not None
        raw = np.loadtxt(io.BytesIO(member.read()), delimiter=",")
    lon, lat, age, rooms, bedrms, pop, hh, inc, val = raw.T
    return pd.DataFrame(
        {
            "MedInc": inc,
            "HouseAge": age,
            "AveRooms": rooms / hh,
            "AveBedrms": bedrms / hh,
            "Population": pop,
            "AveOccup": pop / hh,
            "Latitude": lat,
            "Longitude": lon,
            TARGET: val / 1e5,
        }
    )


def grid_blocks() -> tuple[pd.DataFrame, np.ndarray]:
    """400 blocks on a 20 x 20 grid 0.2 degrees apart (about 20 km), random targets: every
    block's nearest other block is a grid step away."""
    gx, gy = np.meshgrid(np.arange(20), np.arange(20))
    X = make_frame(400, seed=3)[FEATURES].copy()
    X["Latitude"] = 33.0 + gy.ravel() * 0.2
    X["Longitude"] = -122.0 + gx.ravel() * 0.2
    return X, np.random.default_rng(0).normal(2.0, 1.0, 400)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(600, seed=1)


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame) -> SpatialFeatures:
    return build_preprocessor(FeaturesConfig(), seed=7).fit(frame[FEATURES], frame[TARGET])


def _state(t: SpatialFeatures) -> dict[str, object]:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(t).items()}


def test_output_width_matches_feature_names(fitted: SpatialFeatures, frame: pd.DataFrame) -> None:
    out = fitted.transform(frame[FEATURES])
    names = fitted.get_feature_names_out()
    assert out.shape == (len(frame), len(names))
    assert list(names[:8]) == FEATURES
    assert "knn8_target_mean" in names and "knn32_target_mean" in names
    assert "knn32_distance_km" in names
    assert len(set(names)) == len(names)


def _km(lat: float, lon: float, ref_lat: float, ref_lon: float) -> float:
    """Great-circle km, scalar math: an independent check of the vectorised one."""
    p1, p2 = math.radians(lat), math.radians(ref_lat)
    dp, dl = p2 - p1, math.radians(ref_lon - lon)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(a, 1.0)))


def test_every_named_column_holds_what_its_name_says(
    fitted: SpatialFeatures, frame: pd.DataFrame
) -> None:
    rows = frame[FEATURES].iloc[:40].copy()
    rows.iloc[0, FEATURES.index("AveRooms")] = 0.0  # a zero denominator gives 0, not inf
    rows.iloc[1, FEATURES.index("AveOccup")] = 0.0
    names = list(fitted.get_feature_names_out())
    out = pd.DataFrame(fitted.transform(rows), columns=names)
    r = rows.reset_index(drop=True)

    ratio = lambda a, b: np.where(b > 0, a / b.where(b > 0, 1.0), 0.0)  # noqa: E731
    np.testing.assert_allclose(out["bedrooms_per_room"], ratio(r.AveBedrms, r.AveRooms))
    np.testing.assert_allclose(out["rooms_per_person"], ratio(r.AveRooms, r.AveOccup))
    np.testing.assert_allclose(out["households"], ratio(r.Population, r.AveOccup))
    assert out["bedrooms_per_room"][0] == 0.0 and out["households"][1] == 0.0
    for deg in fitted.rotations_deg:
        rad = math.radians(deg)
        x = r.Longitude * math.cos(rad) + r.Latitude * math.sin(rad)
        np.testing.assert_allclose(out[f"rot{deg:g}_x"], x, rtol=1e-12)
        y = r.Latitude * math.cos(rad) - r.Longitude * math.sin(rad)
        np.testing.assert_allclose(out[f"rot{deg:g}_y"], y, rtol=1e-12)

    for i in range(len(r)):
        lat, lon = r.Latitude[i], r.Longitude[i]
        cities = {name: _km(lat, lon, clat, clon) for name, clat, clon in CITIES}
        for name, km in cities.items():
            assert out[f"dist_{name}_km"][i] == pytest.approx(km, rel=1e-9)
        assert out["dist_nearest_city_km"][i] == pytest.approx(min(cities.values()), rel=1e-9)
        coast = min(_km(lat, lon, clat, clon) for clat, clon in COAST)
        assert out["dist_coast_km"][i] == pytest.approx(coast, rel=1e-9)

    # Neighbour means and distances by brute force over the stored training points.
    points, targets = fitted.knn_points_, fitted.knn_targets_
    query = np.column_stack([r.Latitude, r.Longitude * math.cos(math.radians(36.0))])
    for i in range(len(r)):
        d = np.hypot(*(points - query[i]).T)
        order = np.argsort(d, kind="stable")
        for k in (8, 32):
            assert out[f"knn{k}_target_mean"][i] == pytest.approx(targets[order[:k]].mean())
            km = d[order[k - 1]] * math.pi * 6371.0 / 180.0
            assert out[f"knn{k}_distance_km"][i] == pytest.approx(km, rel=1e-9)


def test_transform_of_unseen_data_does_not_change_the_fitted_state(
    fitted: SpatialFeatures,
) -> None:
    before = _state(fitted)
    other = make_frame(300, seed=99)
    first = fitted.transform(make_frame(50, seed=5)[FEATURES])
    fitted.transform(other[FEATURES])
    after = _state(fitted)
    for key, value in before.items():
        if key.startswith("_tree"):
            continue  # lazily built lookup cache, derived from the fitted arrays
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, after[key])
        else:
            assert value == after[key], key
    np.testing.assert_array_equal(first, fitted.transform(make_frame(50, seed=5)[FEATURES]))
    # the fitted neighbour set is the training rows, not whatever was transformed later
    assert fitted.knn_points_.shape[0] == 600


def test_neighbour_means_in_fit_transform_exclude_each_rows_own_target() -> None:
    # Every block sits alone on a wide grid and its target is pure noise: the 1-nearest
    # neighbour of a training row is the row itself, so a leaking feature would equal y.
    X, y = grid_blocks()
    t = SpatialFeatures(knn_neighbors=(1, 4), knn_folds=5, random_state=0)
    names = list(t.fit(X, y).get_feature_names_out())
    col, dist = names.index("knn1_target_mean"), names.index("knn1_distance_km")

    fitted = t.fit_transform(X, y)
    assert not np.any(np.isclose(fitted[:, col], y))
    assert abs(np.corrcoef(fitted[:, col], y)[0, 1]) < 0.2
    assert fitted[:, dist].min() > 10  # the nearest OTHER block is a grid step (~20 km) away

    # transform (serving) uses the whole train set: the same rows now find themselves,
    # which is exactly what fit_transform must not do.
    served = t.transform(X)
    np.testing.assert_allclose(served[:, col], y)
    np.testing.assert_allclose(served[:, dist], 0.0)


def test_neighbour_rows_are_other_folds_while_fitting_and_the_nearest_when_serving() -> None:
    # The row numbers a ResidualCorrected final step reads: never the row itself while
    # fitting (its residual would leak), the nearest block (itself) when transforming a
    # training row, and the other features exactly as without them.
    X, y = grid_blocks()
    n = len(X)
    t = SpatialFeatures(knn_neighbors=(4, 8), knn_folds=5, neighbour_ids=3, random_state=0)
    fitted = t.fit_transform(X, y)
    names = list(t.get_feature_names_out())
    assert names[-3:] == ["neighbour1_row", "neighbour2_row", "neighbour3_row"]
    assert fitted.shape[1] == len(names)
    rows = fitted[:, -3:].astype(int)
    assert (rows >= 0).all() and (rows < n).all()
    assert not (rows == np.arange(n)[:, None]).any()
    served = t.transform(X)
    np.testing.assert_array_equal(served[:, -3], np.arange(n))
    # The second nearest of a grid block is a grid neighbour: 0.2 degrees of longitude away.
    second = served[:, -2].astype(int)
    np.testing.assert_allclose(
        np.abs(X["Longitude"].to_numpy()[second] - X["Longitude"].to_numpy()), 0.2, atol=1e-9
    )
    plain = SpatialFeatures(knn_neighbors=(4, 8), knn_folds=5, random_state=0)
    np.testing.assert_array_equal(plain.fit_transform(X, y), fitted[:, :-3])
    np.testing.assert_array_equal(plain.transform(X), served[:, :-3])


def test_context_columns_compare_a_block_with_its_nearest_blocks() -> None:
    # A block against its neighbourhood: its house age, rooms, population and occupancy
    # minus their mean over the k nearest training blocks (those of the other folds while
    # fitting, every training block when transforming), and the distance to the nearest.
    X, y = grid_blocks()
    # neighbour_ids: the rows the context came from, to check it against
    t = SpatialFeatures(
        knn_neighbors=(4, 8), knn_folds=5, context_neighbors=4, neighbour_ids=4, random_state=0
    )
    fitted = t.fit_transform(X, y)
    names = list(t.get_feature_names_out())
    context = ["HouseAge", "AveRooms", "Population", "AveOccup"]
    assert names[-8:-4] == [f"{c}_minus_knn4_mean" for c in context]
    assert names[-11:-8] == ["nearest_block_km", "knn4_distance_km", "knn8_distance_km"]
    assert fitted.shape[1] == len(names)
    cols = [names.index(f"{c}_minus_knn4_mean") for c in context]
    raw = X[context].to_numpy()
    for out in (fitted, t.transform(X)):
        near = out[:, -4:].astype(int)
        np.testing.assert_allclose(out[:, cols], raw - raw[near].mean(axis=1), atol=1e-9)
    # Out of fold while fitting: the nearest other block is a grid step (~20 km) away;
    # a training row sent to the service finds itself at 0 km.
    near_km = names.index("nearest_block_km")
    assert fitted[:, near_km].min() > 10
    np.testing.assert_allclose(t.transform(X)[:, near_km], 0.0)
    # Off (0), the other columns are exactly as before; a transformer saved before the
    # parameter existed has none.
    plain = SpatialFeatures(knn_neighbors=(4, 8), knn_folds=5, random_state=0)
    keep = [names.index(c) for c in plain.fit(X, y).get_feature_names_out()]
    np.testing.assert_array_equal(plain.fit_transform(X, y), fitted[:, keep])
    np.testing.assert_array_equal(plain.transform(X), t.transform(X)[:, keep])
    state = plain.__getstate__()
    state.pop("context_neighbors")
    old = SpatialFeatures.__new__(SpatialFeatures)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.transform(X), plain.transform(X))
    with pytest.raises(ValueError, match="context_neighbors"):
        SpatialFeatures(context_neighbors=-1).fit(X, y)


def test_one_row_gives_the_same_output_as_that_row_inside_a_frame(
    fitted: SpatialFeatures, frame: pd.DataFrame
) -> None:
    batch = fitted.transform(frame[FEATURES])
    for i in (0, 17, 599):
        one = fitted.transform(frame[FEATURES].iloc[[i]])
        np.testing.assert_array_equal(one[0], batch[i])
        np.testing.assert_array_equal(
            fitted.transform(frame[FEATURES].to_numpy()[i : i + 1])[0], batch[i]
        )


def test_numpy_input_in_feature_order_equals_dataframe_in_any_column_order(
    fitted: SpatialFeatures, frame: pd.DataFrame
) -> None:
    shuffled = frame[list(reversed(FEATURES)) + [TARGET]]
    from_frame = fitted.transform(shuffled)
    from_numpy = fitted.transform(frame[FEATURES].to_numpy())
    np.testing.assert_array_equal(from_frame, from_numpy)

    a = SpatialFeatures(random_state=3).fit_transform(shuffled, frame[TARGET])
    b = SpatialFeatures(random_state=3).fit_transform(frame[FEATURES].to_numpy(), frame[TARGET])
    np.testing.assert_array_equal(a, b)


def test_missing_column_or_wrong_width_is_a_clear_error(fitted: SpatialFeatures) -> None:
    frame = make_frame(5)[FEATURES].drop(columns=["AveOccup"])
    with pytest.raises(ValueError, match="AveOccup"):
        fitted.transform(frame)
    with pytest.raises(ValueError, match="8 columns"):
        fitted.transform(np.zeros((2, 7)))


def test_fit_transform_is_deterministic_given_the_seed(frame: pd.DataFrame) -> None:
    X, y = frame[FEATURES], frame[TARGET]
    a = SpatialFeatures(random_state=1).fit_transform(X, y)
    b = SpatialFeatures(random_state=1).fit_transform(X, y)
    c = SpatialFeatures(random_state=2).fit_transform(X, y)
    np.testing.assert_array_equal(a, b)
    col = list(SpatialFeatures().fit(X, y).get_feature_names_out()).index("knn8_target_mean")
    assert not np.array_equal(a[:, col], c[:, col])  # a different fold assignment


def test_clone_and_get_params_round_trip(fitted: SpatialFeatures, frame: pd.DataFrame) -> None:
    params = fitted.get_params()
    assert params["knn_neighbors"] == (8, 32) and params["random_state"] == 7
    twin = clone(fitted)
    assert not hasattr(twin, "knn_points_")
    assert twin.get_params() == params
    refit = twin.fit(frame[FEATURES], frame[TARGET])
    np.testing.assert_array_equal(
        refit.transform(frame[FEATURES]), fitted.transform(frame[FEATURES])
    )
    twin.set_params(
        knn_neighbors=(4,),
        rotations_deg=(45.0,),
        city_distances=False,
        knn_distances=False,
        neighbour_ids=0,
        context_neighbors=0,
    )
    out = twin.fit(frame[FEATURES], frame[TARGET]).transform(frame[FEATURES])
    assert out.shape[1] == len(twin.get_feature_names_out())
    assert list(twin.get_feature_names_out()[-1:]) == ["knn4_target_mean"]


def test_raw_mode_passes_the_eight_features_through(frame: pd.DataFrame) -> None:
    t = build_preprocessor(FeaturesConfig(), engineered=False).fit(frame[FEATURES])
    np.testing.assert_array_equal(t.transform(frame[FEATURES]), frame[FEATURES].to_numpy())
    assert list(t.get_feature_names_out()) == FEATURES


def test_neighbour_means_need_a_target(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="needs y"):
        SpatialFeatures().fit(frame[FEATURES])


def test_no_nan_or_inf_on_the_real_data(real_archive: Path) -> None:
    df = real_frame(real_archive)
    t = build_preprocessor(FeaturesConfig(), seed=42)
    train, test = df.iloc[:16000], df.iloc[16000:]
    fitted_out = t.fit_transform(train[FEATURES], train[TARGET])
    assert np.isfinite(fitted_out).all()
    assert np.isfinite(t.transform(test[FEATURES])).all()
    # neighbour means are averages of real targets, so they stay inside the target range
    names = list(t.get_feature_names_out())
    out = t.transform(test[FEATURES])
    knn = out[:, [names.index("knn8_target_mean"), names.index("knn32_target_mean")]]
    assert knn.min() >= df[TARGET].min() and knn.max() <= df[TARGET].max()
    # distances in km: inside California (~1,200 km long), never negative
    km = out[:, names.index("knn32_distance_km")]
    assert 0 <= km.min() and km.max() < 400


def test_spatial_features_beat_the_raw_features_on_the_canonical_split(
    real_archive: Path,
) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    df = real_frame(real_archive)
    train, test = train_test_split(df, test_size=0.2, random_state=42)

    def holdout_rmse(engineered: bool) -> float:
        pipe = make_pipeline(
            build_preprocessor(FeaturesConfig(), engineered=engineered, seed=42),
            HistGradientBoostingRegressor(max_iter=200, random_state=42),
        ).fit(train[FEATURES], train[TARGET])
        return float(np.sqrt(np.mean((pipe.predict(test[FEATURES]) - test[TARGET]) ** 2)))

    # one OpenMP thread: two threads on a busy 2-core box were ~25x slower
    with threadpool_limits(limits=1):
        raw, engineered = holdout_rmse(False), holdout_rmse(True)
    assert raw > 0.44  # the usual California Housing figure for a boosted model
    assert engineered < raw - 0.04
