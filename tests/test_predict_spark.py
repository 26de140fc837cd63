"""`housing predict --engine spark`: on a real Spark (local[2], and a standalone cluster).

Few tests on purpose: every Spark job starts Python workers on a 2-core machine. The
in-process tests share one local[2] session (``spark_session`` in conftest), which the
engine picks up as the active session; the cluster test runs the installed `housing`
against a master and a worker started from the pyspark package. Without pyspark or Java
they skip with the reason; CI (HOUSING_REQUIRE_SPARK=1) makes them mandatory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import HOUSING, champion_config, spark_missing, spark_standalone
from synthetic import make_frame

from housing_mlops.cli import run
from housing_mlops.predict import read_lineage

pytestmark = pytest.mark.slow

_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"
_SPLIT = "spark.sql.files.maxPartitionBytes"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return champion_config(tmp_path_factory)


def _listings(tmp_path: Path, n: int = 3000) -> tuple[Path, pd.DataFrame]:
    frame = make_frame(n, seed=21).assign(listing_id=[f"L{i:05d}" for i in range(n)])
    frame.loc[10, "MedInc"] = -1.0
    bedrooms_above_rooms = [n * 2 // 3, n - 100]  # 2000 and 2900 of 3000
    frame.loc[bedrooms_above_rooms, "AveRooms"] = 1.8
    frame.loc[bedrooms_above_rooms, "AveBedrms"] = 1.9
    src = tmp_path / "listings.parquet"
    # Several row groups: Spark may split the file; the row ids must still follow it.
    frame.to_parquet(src, row_group_size=700)
    return src, frame


def _local(config: Path, src: Path, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    out, rejects = tmp_path / "local.parquet", tmp_path / "local.rejects.parquet"
    args = ["-o", str(out), "--on-error", "skip", "--rejects", str(rejects)]
    assert run(["-c", str(config), "predict", str(src), *args]) == 0
    return pq.read_table(out).to_pandas(), pq.read_table(rejects).to_pandas()


def _same(spark_out: pd.DataFrame, local_out: pd.DataFrame) -> None:
    spark_out = spark_out.sort_values("row_id").reset_index(drop=True)
    assert spark_out.columns.tolist() == local_out.columns.tolist()
    np.testing.assert_array_equal(spark_out["row_id"], local_out["row_id"])
    np.testing.assert_array_equal(spark_out["listing_id"], local_out["listing_id"])
    diff = np.abs(spark_out["prediction"].to_numpy() - local_out["prediction"].to_numpy())
    assert diff.max() <= 1e-9
    assert spark_out["prediction_usd"].tolist() == local_out["prediction_usd"].tolist()


def test_spark_engine_equals_the_local_engine(
    spark_session: Any, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, frame = _listings(tmp_path)
    assert spark_session.read.parquet(str(src)).rdd.getNumPartitions() > 1
    local_out, local_rejects = _local(config, src, tmp_path)
    capsys.readouterr()
    out, rejects = tmp_path / "spark.parquet", tmp_path / "spark.rejects.parquet"
    args = ["--engine", "spark", "-o", str(out), "--on-error", "skip", "--json"]
    assert run(["-c", str(config), "predict", str(src), *args, "--rejects", str(rejects)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows_in"], summary["scored"], summary["rejected"]) == (3000, 2997, 3)
    assert summary["engine"] == "spark" and summary["spark_master"] == "local[2]"
    assert out.is_dir() and (out / "_SUCCESS").exists()  # written by Spark, in parts
    spark_out = pq.read_table(out).to_pandas()
    _same(spark_out, local_out)
    # Part files in name order hold the rows in input order: no sort needed to read them.
    np.testing.assert_array_equal(spark_out["row_id"], local_out["row_id"])
    spark_rejects = pq.read_table(rejects).to_pandas().sort_values("row_id")
    assert spark_rejects["row_id"].tolist() == [10, 2000, 2900]
    assert spark_rejects["error"].tolist() == local_rejects["error"].tolist()
    lineage = read_lineage(out)
    assert lineage["model_version"] == "2" and lineage["engine"] == "spark"
    assert lineage["input_sha256"] == read_lineage(tmp_path / "local.parquet")["input_sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_second_spark_run_replaces_its_csv_folder_of_parts(
    spark_session: Any, config: Path, tmp_path: Path
) -> None:
    # Spark writes CSV as a folder of parts too; the next run replaces it (as the README
    # says of an older output) instead of refusing a directory.
    src, frame = _listings(tmp_path, n=300)
    out = tmp_path / "scored.csv"
    args = ["--engine", "spark", "-o", str(out), "--on-error", "skip"]
    for _ in range(2):
        assert run(["-c", str(config), "predict", str(src), *args]) == 0
        assert out.is_dir() and (out / "_SUCCESS").exists()
        parts = sorted(out.glob("part-*.csv"))
        scored = pd.concat([pd.read_csv(p) for p in parts])
        assert sorted(scored["row_id"]) == [i for i in range(300) if i not in (10, 200)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_one_partition_scores_its_batches_two_at_a_time_in_order(
    spark_session: Any, config: Path, tmp_path: Path
) -> None:
    # One row group is one partition on a 2-core session: its task scores its Arrow
    # batches (200 rows here, 15 of them) two at a time; rows and row ids keep file order.
    src, _ = _listings(tmp_path)
    single = tmp_path / "one-group.parquet"
    pq.write_table(pq.read_table(src), single, row_group_size=10_000)
    local_out, _ = _local(config, single, tmp_path)
    conf = spark_session.conf
    saved = {k: conf.get(k) for k in (_BATCH, _SPLIT)}
    conf.set(_BATCH, "200")
    conf.set(_SPLIT, str(128 << 20))
    try:
        assert spark_session.read.parquet(str(single)).rdd.getNumPartitions() == 1
        out = tmp_path / "spark.parquet"
        args = ["--engine", "spark", "-o", str(out), "--on-error", "skip"]
        assert run(["-c", str(config), "predict", str(single), *args]) == 0
    finally:
        for key, value in saved.items():
            conf.set(key, value)
    spark_out = pq.read_table(out).to_pandas()
    np.testing.assert_array_equal(spark_out["row_id"], local_out["row_id"])  # no sort
    _same(spark_out, local_out)


def _jobs(spark: Any, group: str) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


def test_parts_of_several_files_get_the_input_order_in_one_job(
    spark_session: Any, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Three files of several row groups and different sizes: Spark splits them and packs
    # the splits biggest first, yet the row ids follow the input (files in name order, rows
    # in file order), from the footers and Spark's row index: no pass to count rows first.
    from housing_mlops.predict.spark import JOB_GROUP, REFUSED_GROUP

    src, frame = _listings(tmp_path, n=3000)
    parts = tmp_path / "parts dir"  # a space: Spark spells the paths as URIs
    (parts / "b").mkdir(parents=True)
    bounds = [(0, 400, "a-0.parquet"), (400, 2400, "a-1.parquet"), (2400, 3000, "b/c.parquet")]
    for lo, hi, name in bounds:
        frame.iloc[lo:hi].to_parquet(parts / name, row_group_size=150, index=False)
    files = [str(parts / name) for _, _, name in bounds]
    packed = spark_session.read.parquet(*files).rdd.getNumPartitions()
    assert packed > 3
    local_out, local_rejects = _local(config, parts, tmp_path)
    capsys.readouterr()
    assert local_out["listing_id"].tolist() == [
        f"L{i:05d}" for i in range(3000) if i not in (10, 2000, 2900)
    ]
    before = {g: _jobs(spark_session, g) for g in (JOB_GROUP, REFUSED_GROUP)}
    out, rejects = tmp_path / "spark.parquet", tmp_path / "spark.rejects.parquet"
    args = ["--engine", "spark", "-o", str(out), "--on-error", "skip", "--json"]
    assert run(["-c", str(config), "predict", str(parts), *args, "--rejects", str(rejects)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows_in"], summary["scored"], summary["rejected"]) == (3000, 2997, 3)
    _same(pq.read_table(out).to_pandas(), local_out)
    spark_rejects = pq.read_table(rejects).to_pandas().sort_values("row_id")
    assert spark_rejects["row_id"].tolist() == local_rejects["row_id"].tolist() == [10, 2000, 2900]
    # One job scored and wrote everything; the refused rows took one more (the rejects).
    assert _jobs(spark_session, JOB_GROUP) - before[JOB_GROUP] == 1
    assert _jobs(spark_session, REFUSED_GROUP) - before[REFUSED_GROUP] == 1

    # All rows valid: one job in all, nothing read twice; row ids 0..n-1 in input order.
    clean = tmp_path / "clean"
    clean.mkdir()
    good = frame.drop(index=[10, 2000, 2900]).reset_index(drop=True)
    for i, (lo, hi) in enumerate([(0, 1500), (1500, 2997)]):
        good.iloc[lo:hi].to_parquet(clean / f"part-{i}.parquet", row_group_size=200, index=False)
    before = {g: _jobs(spark_session, g) for g in (JOB_GROUP, REFUSED_GROUP)}
    out = tmp_path / "clean.parquet"
    assert run(["-c", str(config), "predict", str(clean), "--engine", "spark", "-o", str(out)]) == 0
    assert _jobs(spark_session, JOB_GROUP) - before[JOB_GROUP] == 1
    assert _jobs(spark_session, REFUSED_GROUP) == before[REFUSED_GROUP]
    scored = pq.read_table(out).to_pandas().sort_values("row_id")
    assert scored["row_id"].tolist() == list(range(2997))
    assert scored["listing_id"].tolist() == good["listing_id"].tolist()
    # --on-error skip with nothing refused: an empty rejects file, with its columns.
    rejects = tmp_path / "clean.rejects.parquet"
    args = ["--engine", "spark", "-o", str(out), "--on-error", "skip", "--rejects", str(rejects)]
    assert run(["-c", str(config), "predict", str(clean), *args]) == 0
    empty = pq.read_table(rejects)
    assert empty.num_rows == 0 and empty.column_names == ["row_id", *good.columns, "error"]
    assert pq.read_table(out).num_rows == 2997


def test_a_column_named_like_sparks_metadata_passes_through(
    spark_session: Any, config: Path, tmp_path: Path
) -> None:
    # Spark's hidden ``_metadata`` (row index) is shadowed by the input's own column: the
    # engine numbers the rows by counting instead, and the column passes through untouched.
    frame = make_frame(900, seed=5).assign(_metadata=[f"m{i}" for i in range(900)])
    src = tmp_path / "meta.parquet"
    frame.to_parquet(src, row_group_size=200, index=False)
    out = tmp_path / "meta.predictions.parquet"
    assert run(["-c", str(config), "predict", str(src), "--engine", "spark", "-o", str(out)]) == 0
    scored = pq.read_table(out).to_pandas()
    assert scored["row_id"].tolist() == list(range(900))
    assert scored["_metadata"].tolist() == frame["_metadata"].tolist()


def test_spark_on_error_fail_writes_nothing(
    spark_session: Any, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = _listings(tmp_path, n=500)
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"previous output")
    assert run(["-c", str(config), "predict", str(src), "--engine", "spark", "-o", str(out)]) == 4
    err = capsys.readouterr().err
    assert "Error: input rows break the input rules of /predict: row 10: MedInc: " in err
    assert "Traceback" not in err
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listings.parquet", "scored.parquet"]


@pytest.mark.skipif(
    spark_missing() is not None and os.environ.get("HOUSING_REQUIRE_SPARK") != "1",
    reason=str(spark_missing()),
)
def test_standalone_cluster_scores_like_the_local_engine(config: Path, tmp_path: Path) -> None:
    """A real standalone cluster (master + worker processes), the installed command,
    ``--spark-master spark://127.0.0.1:PORT``, CSV input."""
    src, frame = _listings(tmp_path, n=1500)
    csv = tmp_path / "listings.csv"
    frame.to_csv(csv, index=False)
    local_out, _ = _local(config, src, tmp_path)
    out = tmp_path / "cluster.parquet"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    with spark_standalone(tmp_path) as master:
        proc = subprocess.run(
            [str(HOUSING), "-c", str(config), "predict", str(csv), "--engine", "spark"]
            + ["--spark-master", master, "-o", str(out), "--on-error", "skip", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["spark_master"] == master
    assert (summary["scored"], summary["rejected"]) == (1497, 3)
    _same(pq.read_table(out).to_pandas(), local_out)
