"""The raw frame, its validation, the canonical split and the files featurize writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from synthetic import make_frame, write_config

from housing_mlops import data, featurize
from housing_mlops.config import Settings, config_hash, load_config
from housing_mlops.errors import DataError

# The data version of the real archive: the same on every machine and every run.
REAL_CONTENT_HASH = "1691300b22d5c67f6ba8d9c13c7dd1d1312091a20ed184b3f79baa5d498bb23b"


@pytest.fixture(scope="module")
def real(real_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fetch + featurize on the real archive, once for this module."""
    root = tmp_path_factory.mktemp("real")
    settings = load_config(write_config(root))
    fetched = data.fetch(settings, source=str(real_archive))
    featurized = featurize.featurize(settings)
    return {"settings": settings, "fetched": fetched, "featurized": featurized, "root": root}


def settings_with_raw(tmp_path: Path, frame: pd.DataFrame) -> Settings:
    """Settings whose data/raw holds ``frame`` with a consistent manifest (as fetch writes)."""
    settings = load_config(write_config(tmp_path))
    raw = Path(settings.paths.raw_dir)
    raw.mkdir(parents=True)
    frame.to_parquet(raw / data.RAW_PARQUET)
    manifest = {"source": "test", "content_hash": data.frame_content_hash(frame)}
    (raw / data.MANIFEST).write_text(json.dumps(manifest))
    return settings


# ------------------------------------------------------------------ real archive
def test_real_archive_gives_the_standard_frame(real: dict[str, Any]) -> None:
    fetched = real["fetched"]
    assert fetched["rows"] == 20_640
    assert fetched["archive_sha256"] == (
        "aaa5c9a6afe2225cc2aed2723682ae403280c4a3695a2ddda4ffb5d8215ea681"
    )
    frame = pd.read_parquet(fetched["parquet"])
    assert list(frame.columns) == data.COLUMNS
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    first = frame.iloc[0]
    expected = {
        "MedInc": 8.3252,
        "HouseAge": 41,
        "AveRooms": 6.984127,
        "AveBedrms": 1.023810,
        "Population": 322,
        "AveOccup": 2.555556,
        "Latitude": 37.88,
        "Longitude": -122.23,
        "MedHouseVal": 4.526,
    }
    for column, value in expected.items():
        assert first[column] == pytest.approx(value, abs=1e-6), column
    assert frame["MedHouseVal"].max() == pytest.approx(5.00001)
    assert int((frame["MedHouseVal"] > 5).sum()) == 965  # the capped districts


def test_real_content_hash_is_stable_across_runs(
    real: dict[str, Any], real_archive: Path, tmp_path: Path
) -> None:
    assert real["fetched"]["content_hash"] == REAL_CONTENT_HASH
    # A second, independent fetch into another folder gives the same data version.
    again = data.fetch(load_config(write_config(tmp_path)), source=str(real_archive))
    assert again["content_hash"] == REAL_CONTENT_HASH
    frame = pd.read_parquet(again["parquet"])
    assert data.frame_content_hash(frame) == REAL_CONTENT_HASH


def test_real_split_is_the_canonical_one(real: dict[str, Any]) -> None:
    settings = real["settings"]
    result = real["featurized"]
    assert (result["train_rows"], result["test_rows"]) == (16_512, 4_128)
    x_train, y_train = featurize.load_split(settings, "train")
    x_test, y_test = featurize.load_split(settings, "test")
    assert list(x_train.columns) == data.FEATURES and y_train.name == data.TARGET
    assert len(x_train) == len(y_train) == 16_512 and len(x_test) == len(y_test) == 4_128
    # Original row numbers are kept: disjoint, together all rows, and the well-known
    # first rows of train_test_split(test_size=0.2, random_state=42).
    assert set(x_train.index).isdisjoint(x_test.index)
    assert sorted([*x_train.index, *x_test.index]) == list(range(20_640))
    assert list(x_train.index[:5]) == [14196, 8267, 17445, 14265, 2271]
    assert list(x_test.index[:5]) == [20046, 3024, 15663, 20484, 9814]
    raw = pd.read_parquet(real["fetched"]["parquet"])
    pd.testing.assert_frame_equal(x_test, raw.loc[x_test.index, data.FEATURES])


def test_processed_manifest_links_back_to_the_raw_version(real: dict[str, Any]) -> None:
    settings = real["settings"]
    manifest = featurize.read_processed_manifest(settings)
    assert manifest["raw_content_hash"] == REAL_CONTENT_HASH
    assert manifest["config_hash"] == config_hash(settings)
    assert (manifest["train_rows"], manifest["test_rows"]) == (16_512, 4_128)
    assert (manifest["test_size"], manifest["seed"]) == (0.2, 42)
    processed = Path(settings.paths.processed_dir)
    train = pd.read_parquet(processed / "train.parquet")
    assert manifest["train_hash"] == data.frame_content_hash(train)
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["package_version"] == "0.1.0"


def test_reference_profile_summarises_the_train_features(real: dict[str, Any]) -> None:
    settings = real["settings"]
    profile = json.loads(
        (Path(settings.paths.processed_dir) / "reference_profile.json").read_text()
    )
    assert profile["rows"] == 16_512
    assert list(profile["columns"]) == data.FEATURES
    x_train, _ = featurize.load_split(settings, "train")
    lat = profile["columns"]["Latitude"]
    assert lat["mean"] == pytest.approx(x_train["Latitude"].mean())
    assert lat["quantiles"][50] == pytest.approx(x_train["Latitude"].median())
    assert len(lat["sample"]) == settings.features.profile_sample_size == 200


def test_featurize_is_deterministic(real: dict[str, Any]) -> None:
    settings = real["settings"]
    processed = Path(settings.paths.processed_dir)
    before = (processed / "reference_profile.json").read_bytes()
    first = featurize.read_processed_manifest(settings)
    again = featurize.featurize(settings)
    assert (again["train_hash"], again["test_hash"]) == (first["train_hash"], first["test_hash"])
    assert (processed / "reference_profile.json").read_bytes() == before


def test_schema_violations_in_real_data_name_rows_and_columns(
    real: dict[str, Any], tmp_path: Path
) -> None:
    frame = pd.read_parquet(real["fetched"]["parquet"])
    frame.loc[7, "AveRooms"] = np.nan
    frame.loc[[3, 9000], "Latitude"] = 45.0
    settings = settings_with_raw(tmp_path, frame)
    with pytest.raises(DataError) as err:
        featurize.featurize(settings)
    message = str(err.value)
    assert "AveRooms has NaN/inf in 1 row(s): 7" in message
    assert "Latitude outside [32.0, 42.1] in 2 row(s): 3, 9000" in message
    assert not Path(settings.paths.processed_dir, "manifest.json").exists()


# -------------------------------------------------------------- schema (synthetic)
@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("MedInc", 0.0, "MedInc outside (0.0, 20.0] in 1 row(s): 4"),
        ("Longitude", -100.0, "Longitude outside [-124.5, -114.0] in 1 row(s): 4"),
        ("MedHouseVal", 7.5, "MedHouseVal outside [0.14, 5.00001] in 1 row(s): 4"),
        ("AveOccup", np.inf, "AveOccup has NaN/inf in 1 row(s): 4"),
        ("HouseAge", 53.0, "HouseAge outside [1.0, 52.0] in 1 row(s): 4"),
    ],
)
def test_validate_frame_names_column_and_row(column: str, value: float, expected: str) -> None:
    frame = make_frame(50, seed=1)
    featurize.validate_frame(frame)  # the synthetic frame itself is valid
    frame.loc[4, column] = value
    with pytest.raises(DataError, match="^raw data failed validation: ") as err:
        featurize.validate_frame(frame)
    assert expected in str(err.value)


def test_validate_frame_lists_only_the_first_rows() -> None:
    frame = make_frame(50, seed=1)
    frame.loc[10:19, "Population"] = -1.0
    with pytest.raises(DataError) as err:
        featurize.validate_frame(frame)
    assert "Population outside [1.0, 50000.0] in 10 row(s): 10, 11, 12, 13, 14, ..." in str(
        err.value
    )


def test_validate_frame_checks_columns_and_dtypes() -> None:
    frame = make_frame(20)
    with pytest.raises(DataError, match=r"missing \['AveOccup'\], unexpected \['Occ'\]"):
        featurize.validate_frame(frame.rename(columns={"AveOccup": "Occ"}))
    with pytest.raises(DataError, match=r"non-float columns \(HouseAge: int64\)"):
        featurize.validate_frame(frame.astype({"HouseAge": "int64"}))


def test_featurize_on_a_small_frame_splits_by_the_configured_fraction(tmp_path: Path) -> None:
    settings = settings_with_raw(tmp_path, make_frame(200, seed=3))
    result = featurize.featurize(settings)
    assert (result["train_rows"], result["test_rows"]) == (160, 40)
    x_test, y_test = featurize.load_split(settings, "test")
    assert x_test.shape == (40, 8)
    processed = Path(settings.paths.processed_dir)
    assert sorted(p.name for p in processed.iterdir()) == [
        "manifest.json",
        "reference_profile.json",
        "test.parquet",
        "train.parquet",
    ]


@pytest.mark.parametrize("test_size", [0.99999, 0.999])
def test_a_test_size_that_empties_a_split_is_a_config_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], test_size: float
) -> None:
    from housing_mlops.cli import run

    settings_with_raw(tmp_path, make_frame(200, seed=3))
    config = write_config(tmp_path, {"split": {"test_size": test_size}})
    assert run(["-c", str(config), "featurize"]) == 3
    err = capsys.readouterr().err
    assert err == (
        f"Error: split.test_size {test_size} leaves 0 train and 200 test row(s) of the 200 "
        "rows: choose a fraction that keeps rows in both (e.g. 0.2)\n"
    )
    assert not (tmp_path / "data" / "processed").exists()


# ----------------------------------------------------------------- missing / tampered
def test_featurize_before_fetch_says_run_fetch(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    with pytest.raises(DataError, match=r"run `housing fetch` first$"):
        featurize.featurize(settings)


def test_load_split_before_featurize_says_run_featurize(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    with pytest.raises(DataError, match=r"run `housing featurize` first$"):
        featurize.load_split(settings, "train")
    with pytest.raises(DataError, match=r"run `housing featurize` first$"):
        featurize.read_processed_manifest(settings)


def test_modified_raw_parquet_is_refused(tmp_path: Path) -> None:
    frame = make_frame(100, seed=2)
    settings = settings_with_raw(tmp_path, frame)
    frame.loc[0, "MedInc"] += 0.5  # still valid, but not what the manifest recorded
    frame.to_parquet(Path(settings.paths.raw_dir) / data.RAW_PARQUET)
    with pytest.raises(DataError, match=r"does not match its manifest .* rerun `housing fetch"):
        featurize.featurize(settings)


def test_modified_split_is_refused(tmp_path: Path) -> None:
    settings = settings_with_raw(tmp_path, make_frame(100, seed=2))
    featurize.featurize(settings)
    train_path = Path(settings.paths.processed_dir) / "train.parquet"
    train = pd.read_parquet(train_path)
    train.to_parquet(train_path.with_name("test.parquet"))
    with pytest.raises(DataError, match=r"test.parquet does not match .*rerun `housing featurize`"):
        featurize.load_split(settings, "test")


# ------------------------------------------------------------------ content hash
def test_content_hash_depends_on_values_order_and_names() -> None:
    frame = make_frame(30)
    base = data.frame_content_hash(frame)
    assert data.frame_content_hash(frame.copy()) == base
    changed = frame.copy()
    changed.iloc[5, 2] = np.nextafter(changed.iloc[5, 2], np.inf)  # one ulp
    assert data.frame_content_hash(changed) != base
    assert data.frame_content_hash(frame.iloc[::-1]) != base
    assert data.frame_content_hash(frame.rename(columns={"MedInc": "Income"})) != base
    assert data.frame_content_hash(frame.reset_index(drop=True).set_index(frame.index + 1)) != base


def test_content_hash_accepts_a_labelled_index() -> None:
    frame = make_frame(5).set_index(pd.Index(list("abcde")))
    renamed = frame.set_index(pd.Index(list("abcdf")))
    assert data.frame_content_hash(frame) != data.frame_content_hash(renamed)


def test_content_hash_survives_parquet(tmp_path: Path) -> None:
    frame = make_frame(30).iloc[5:25]
    frame.to_parquet(tmp_path / "f.parquet")
    again = pd.read_parquet(tmp_path / "f.parquet")
    assert data.frame_content_hash(again) == data.frame_content_hash(frame)


def test_featurize_output_folder_blocked_by_a_file(tmp_path: Path) -> None:
    settings = settings_with_raw(tmp_path, make_frame(50))
    processed = Path(settings.paths.processed_dir)
    shutil.rmtree(processed, ignore_errors=True)
    processed.parent.mkdir(parents=True, exist_ok=True)
    processed.write_text("in the way")
    with pytest.raises(DataError, match=r"^cannot write to .*processed: a file is in the way"):
        featurize.featurize(settings)
