"""Processed data: validate the raw frame, split it, write data/processed/ and its profile.

``featurize`` checks the frame ``fetch`` wrote against the schema (``validate_frame``:
columns, dtypes, finite values inside ``SCHEMA_RANGES``), splits it deterministically
(``split.test_size``, ``split.seed``), and writes the train/test parquet files, the
reference profile of the training features (``drift.profile.build_profile``; drift
compares requests with it) and, last, a manifest with the content hashes. ``load_split``
reads a split back, verified against that manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops import __version__, data
from housing_mlops.columns import FEATURES, TARGET
from housing_mlops.data import COLUMNS
from housing_mlops.errors import ConfigError, DataError, UsageError
from housing_mlops.timestamps import iso_utc

if TYPE_CHECKING:
    import pandas as pd

    from housing_mlops.config import Settings

TRAIN_PARQUET = "train.parquet"
TEST_PARQUET = "test.parquet"
REFERENCE_PROFILE = "reference_profile.json"
MANIFEST = data.MANIFEST

# Plausible ranges (inclusive bounds; None = unbounded). The real data lies well inside
# them; values outside point at a broken or foreign file rather than unusual districts.
SCHEMA_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    # column: (low, high, low_exclusive)
    "MedInc": (0.0, 20.0, True),
    "HouseAge": (1.0, 52.0, False),
    "AveRooms": (0.0, 200.0, True),
    "AveBedrms": (0.0, 50.0, True),
    "Population": (1.0, 50_000.0, False),
    "AveOccup": (0.0, 2_000.0, True),
    "Latitude": (32.0, 42.1, False),
    "Longitude": (-124.5, -114.0, False),
    "MedHouseVal": (0.14, 5.00001, False),
}


def validate_frame(df: pd.DataFrame, label: str = "raw data", max_rows: int = 5) -> None:
    """Raise DataError naming offending columns and rows unless ``df`` fits the schema."""
    import numpy as np

    columns = [str(c) for c in df.columns]
    if columns != COLUMNS:
        missing = [c for c in COLUMNS if c not in columns]
        extra = [c for c in columns if c not in COLUMNS]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        if not detail:
            detail.append(f"order {columns}")
        raise DataError(f"{label} has the wrong columns ({', '.join(detail)}); expected {COLUMNS}")
    wrong = [f"{c}: {df[c].dtype}" for c in COLUMNS if df[c].dtype.kind != "f"]
    if wrong:
        raise DataError(f"{label} has non-float columns ({', '.join(wrong)})")
    if len(df) == 0:
        raise DataError(f"{label} has no rows")

    problems: list[str] = []

    def _rows(mask: np.ndarray) -> str:
        idx = [str(i) for i in df.index[mask][:max_rows]]
        more = "" if mask.sum() <= max_rows else ", ..."
        return f"{int(mask.sum())} row(s): {', '.join(idx)}{more}"

    for col in COLUMNS:
        values = df[col].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            problems.append(f"{col} has NaN/inf in {_rows(bad)}")
        low, high, low_open = SCHEMA_RANGES[col]
        finite = np.where(bad, np.nan, values)
        with np.errstate(invalid="ignore"):
            out = np.zeros(len(values), dtype=bool)
            if low is not None:
                out |= (finite <= low) if low_open else (finite < low)
            if high is not None:
                out |= finite > high
        if out.any():
            bracket = "(" if low_open else "["
            problems.append(f"{col} outside {bracket}{low}, {high}] in {_rows(out)}")
    if problems:
        raise DataError(f"{label} failed validation: " + "; ".join(problems))


def _check_split_sizes(test_size: float, rows: int) -> None:
    """Both splits non-empty, counted as ``train_test_split`` counts them (the test rows
    rounded up, the train rows down): a valid fraction can still empty one on this data."""
    import math

    n_test = math.ceil(test_size * rows)
    n_train = math.floor((1 - test_size) * rows)
    if n_test < 1 or n_train < 1 or n_test + n_train > rows:
        raise ConfigError(
            f"split.test_size {test_size} leaves {max(n_train, 0)} train and {n_test} test "
            f"row(s) of the {rows} rows: choose a fraction that keeps rows in both (e.g. 0.2)"
        )


def featurize(settings: Settings) -> dict[str, Any]:
    """Validate the raw frame, split it deterministically and write data/processed/."""
    frame, raw_manifest = data.read_raw_frame(settings)
    from sklearn.model_selection import train_test_split

    from housing_mlops.config import config_hash
    from housing_mlops.drift.profile import build_profile

    validate_frame(frame, label=f"raw data {Path(settings.paths.raw_dir) / data.RAW_PARQUET}")
    # Hash check ran on the columns-ok path; a frame with other columns failed validation.
    data_version = str(raw_manifest["content_hash"])

    _check_split_sizes(settings.split.test_size, len(frame))
    train, test = train_test_split(
        frame, test_size=settings.split.test_size, random_state=settings.split.seed
    )
    out = Path(settings.paths.processed_dir)
    data.ensure_dir(out)
    paths = {
        name: out / fname for name, fname in (("train", TRAIN_PARQUET), ("test", TEST_PARQUET))
    }
    data.write_parquet(paths["train"], train)
    data.write_parquet(paths["test"], test)

    profile = build_profile(
        {f: train[f].to_numpy() for f in FEATURES},
        sample_size=settings.features.profile_sample_size,
        seed=settings.split.seed,
    )
    data.write_json(out / REFERENCE_PROFILE, profile)

    manifest = {
        "raw_content_hash": data_version,
        "train_hash": data.frame_content_hash(train),
        "test_hash": data.frame_content_hash(test),
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "test_size": settings.split.test_size,
        "seed": settings.split.seed,
        "features": list(FEATURES),
        "target": TARGET,
        "config_hash": config_hash(settings),
        "created_at": iso_utc(),
        "package_version": __version__,
    }
    # The manifest goes last: its presence means the split above is complete.
    data.write_json(out / MANIFEST, manifest)
    return {
        **manifest,
        "data_version": data_version,
        "train_path": str(paths["train"]),
        "test_path": str(paths["test"]),
        "profile_path": str(out / REFERENCE_PROFILE),
        "manifest_path": str(out / MANIFEST),
    }


def read_processed_manifest(settings: Settings) -> dict[str, Any]:
    """The manifest written by ``featurize``; DataError if featurize has not run."""
    path = Path(settings.paths.processed_dir) / MANIFEST
    return data.read_json_object(path, "run `housing featurize` first")


def load_split(settings: Settings, name: str) -> tuple[pd.DataFrame, pd.Series]:
    """(X, y) of the ``train`` or ``test`` split, verified against the processed manifest."""
    files = {"train": TRAIN_PARQUET, "test": TEST_PARQUET}
    if name not in files:
        raise UsageError(f"unknown split {name!r}: use 'train' or 'test'")
    path = Path(settings.paths.processed_dir) / files[name]
    if not path.is_file():
        raise DataError(f"no {name} split at {path}: run `housing featurize` first")
    manifest = read_processed_manifest(settings)
    frame = data.read_parquet(path, "housing featurize")
    if data.frame_content_hash(frame) != manifest.get(f"{name}_hash"):
        raise DataError(
            f"{path} does not match {Path(settings.paths.processed_dir) / MANIFEST}: "
            "rerun `housing featurize`"
        )
    return frame[FEATURES], frame[TARGET]
