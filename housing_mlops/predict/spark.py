"""The Spark engine of `housing predict`: the only module that imports pyspark.

The driver reads the model once (registry: sha256 check) and broadcasts its skops bytes,
the reference profile and the registry reference; each executor's Python worker loads it
once (``load_model_bytes``: sha256 again, skops allow-list, never pickle) and keeps it for
every later batch and task. ``mapInPandas`` runs the shared scoring (``predict.scoring``:
the /predict rules, then the service's predict function) on Arrow batches; Spark writes
the result as a directory of Parquet (or CSV) parts beside the output path, renamed into
place when the job succeeded. Row ids are consecutive in Spark's read order (the input
order for a single file), from per-partition counts.

Master: ``--spark-master`` (default ``local[*]``), or the one ``spark-submit`` set.
The Python workers run ``PYSPARK_PYTHON`` (default: this interpreter, e.g. the venv's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from housing_mlops.columns import FEATURES
from housing_mlops.errors import ConfigError, DataError, HousingError
from housing_mlops.predict.job import (
    ModelPackage,
    PredictJob,
    Progress,
    bad_rows_message,
    check_columns,
    not_numeric,
    replace_output,
)
from housing_mlops.predict.scoring import (
    ERROR,
    MODEL_VERSION,
    PREDICTION,
    PREDICTION_USD,
    ROW_ID,
    RUN_ID,
    ScoredBatch,
    in_order,
    score_batch,
)
from housing_mlops.validation import Rejection

INSTALL_HINT = (
    "--engine spark needs the spark extra: pip install 'housing-mlops[spark]' "
    "(and Java 17: apt-get install openjdk-17-jre-headless on Debian)"
)
_ERROR_COLUMN = f"_housing_{ERROR}"
# Per Python worker (Spark reuses them across tasks): model key -> loaded model.
_LOADED: dict[str, Any] = {}


def spark_available() -> None:
    """Raise ConfigError (exit 3) with the install command when pyspark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    java_home = os.environ.get("JAVA_HOME")
    if not shutil.which("java") and not (java_home and Path(java_home, "bin", "java").exists()):
        raise ConfigError(
            "--engine spark needs Java 17 on PATH (or JAVA_HOME): "
            "apt-get install openjdk-17-jre-headless on Debian"
        )


def _executor_model(package: ModelPackage) -> Any:
    ref = package.ref
    key = f"{ref.name}/{ref.version}/{ref.tags.get('model_sha256', '')}"
    model = _LOADED.get(key)
    if model is None:
        model = _LOADED[key] = package.load()
    return model


def _session(master: str | None) -> tuple[Any, bool]:
    """The active session (spark-submit, tests), or a new one on ``master``; and whether
    it was created here (then it is stopped at the end)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    python = os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName("housing-predict")
        .config("spark.pyspark.python", python)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # our progress lines instead
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "65536")
        .config("spark.sql.session.timeZone", "UTC")
    )
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit set the master
    if master is not None or not under_submit:
        builder = builder.master(master or "local[*]")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def _read(spark: Any, job: PredictJob) -> Any:
    from pyspark.sql.types import BooleanType, NumericType

    files = [str(p) for p in job.input.files]
    if job.input.format == "csv":
        df = spark.read.csv(files, header=True, inferSchema=True, mode="FAILFAST")
    else:
        df = spark.read.parquet(*files)
    check_columns(df.columns, str(job.input.spec))
    for name in FEATURES:
        kind = df.schema[name].dataType
        if not isinstance(kind, NumericType) or isinstance(kind, BooleanType):
            raise not_numeric(name, kind.simpleString(), str(job.input.spec))
    return df


def _partition_offsets(df: Any) -> dict[int, int]:
    """Row id of each partition's first row: counts per scan partition, accumulated."""
    from pyspark.sql.functions import spark_partition_id

    counts = dict(df.groupBy(spark_partition_id().alias("p")).count().collect())
    offsets, start = {}, 0
    for p in range(df.rdd.getNumPartitions()):
        offsets[p] = start
        start += int(counts.get(p, 0))
    return offsets


def _scorer(package_bc: Any, offsets_bc: Any, workers: int) -> Any:
    def score(batches: Iterator[Any]) -> Iterator[Any]:
        from pyspark import TaskContext

        model = _executor_model(package_bc.value)
        ref = package_bc.value.ref
        ctx = TaskContext.get()
        position = offsets_bc.value.get(ctx.partitionId() if ctx else 0, 0)

        def one(pdf: Any) -> tuple[Any, ScoredBatch]:
            X = pdf[FEATURES].to_numpy(dtype=np.float64, na_value=np.nan)
            return pdf, score_batch(model, X)

        with in_order(workers) as pool:
            for pdf, result in pool(one, batches):
                n = len(pdf)
                predictions = np.full(n, np.nan)
                predictions[result.valid] = result.predictions
                errors = np.full(n, None, dtype=object)
                for r in result.rejections:
                    errors[r.row] = r.text()
                yield pdf.assign(
                    **{
                        PREDICTION: predictions,
                        PREDICTION_USD: np.round(predictions * 100_000.0, 2),
                        MODEL_VERSION: str(ref.version),
                        RUN_ID: ref.run_id,
                        ROW_ID: np.arange(position, position + n, dtype=np.int64),
                        _ERROR_COLUMN: errors,
                    }
                )
                position += n

    return score


def _staging(final: Path) -> Path:
    return final.parent / f".{final.name}.spark-{uuid.uuid4().hex[:8]}"


def _write(df: Any, fmt: str, path: Path) -> None:
    writer = df.write.mode("error")
    if fmt == "csv":
        writer.option("header", True).csv(str(path))
    else:
        writer.parquet(str(path))


def _spark_errors() -> Any:
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JError)


def score_spark(
    job: PredictJob, package: ModelPackage, lineage: dict[str, str], progress: Progress
) -> dict[str, Any]:
    """Score ``job`` on Spark; return the counts (rows in, scored, rejected) and the master."""
    from pyspark import StorageLevel
    from pyspark.sql.functions import col
    from pyspark.sql.functions import count as count_
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    progress(f"starting Spark ({job.spark_master or 'local[*]'})", 0, None)
    # pyspark warns about every pandas release newer than it was tested with; the scoring
    # itself is checked against the local engine by the tests.
    warnings.filterwarnings("ignore", message="PySpark does not yet", category=FutureWarning)
    spark_failures = _spark_errors()
    spark, created = _session(job.spark_master)
    staged: list[Path] = []
    scored = None
    try:
        master = spark.sparkContext.master
        progress(f"reading {Path(job.input.spec).name} on {master}", 0, None)
        df = _read(spark, job)
        offsets = _partition_offsets(df)
        sc = spark.sparkContext
        # Spark runs one task per core: one tree-evaluation thread per task, not one per
        # core per task (LightGBM would oversubscribe the executor's cores). With fewer
        # partitions than cores (a file of one row group is one partition), each task
        # scores that many of its Arrow batches at once instead (``in_order``).
        package_bc = sc.broadcast(dataclasses.replace(package, threads=1))
        workers = max(1, min(package.threads, sc.defaultParallelism // max(1, len(offsets))))
        offsets_bc = sc.broadcast(offsets)
        fields = [
            StructField(PREDICTION, DoubleType()),
            StructField(PREDICTION_USD, DoubleType()),
            StructField(MODEL_VERSION, StringType()),
            StructField(RUN_ID, StringType()),
            StructField(ROW_ID, LongType()),
            StructField(_ERROR_COLUMN, StringType()),
        ]
        schema = StructType([*df.schema.fields, *fields])
        scored = df.mapInPandas(_scorer(package_bc, offsets_bc, workers), schema).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        progress(f"scoring on {master}", 0, None)
        totals = scored.agg(count_("*").alias("rows"), count_(_ERROR_COLUMN).alias("bad"))
        row = totals.collect()[0]
        rows_in, rejected = int(row["rows"]), int(row["bad"])
        if rows_in == 0:
            raise DataError(f"input {job.input.spec} holds no rows")
        bad_rows = scored.filter(col(_ERROR_COLUMN).isNotNull())
        if rejected and job.on_error == "fail":
            first = bad_rows.orderBy(ROW_ID).limit(6).select(ROW_ID, _ERROR_COLUMN).collect()
            shown = [Rejection(int(r[ROW_ID]), _split(str(r[_ERROR_COLUMN]))) for r in first]
            raise DataError(bad_rows_message(shown, 0, more=rejected > len(shown)))
        progress(f"writing {job.output.name}", 0, None)
        good = scored.filter(col(_ERROR_COLUMN).isNull()).drop(_ERROR_COLUMN)
        good = good.withMetadata(PREDICTION, lineage)
        out_stage = _staging(job.output)
        staged.append(out_stage)
        _write(good, job.output_format, out_stage)
        rej_stage = None
        if job.rejects is not None:
            rej_stage = _staging(job.rejects)
            staged.append(rej_stage)
            refused = bad_rows.select(
                ROW_ID, *[col(f"`{c}`") for c in df.columns], col(_ERROR_COLUMN).alias(ERROR)
            ).withMetadata(ERROR, lineage)
            _write(refused, "csv" if job.rejects.suffix.lower() == ".csv" else "parquet", rej_stage)
        if rej_stage is not None and job.rejects is not None:
            replace_output(rej_stage, job.rejects)
        replace_output(out_stage, job.output)
        return {
            "rows_in": rows_in,
            "scored": rows_in - rejected,
            "rejected": rejected,
            "master": master,
        }
    except spark_failures as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HousingError(f"Spark job failed: {text} (rerun with -v for the trace)") from exc
    finally:
        for path in staged:
            shutil.rmtree(path, ignore_errors=True)
        if scored is not None:
            with contextlib.suppress(Exception):
                scored.unpersist()
        if created:
            spark.stop()


def _split(text: str) -> tuple[tuple[str, str], ...]:
    """``field: reason; field: reason`` back into pairs (for the fail message)."""
    pairs = []
    for part in text.split("; "):
        field, _, reason = part.partition(": ")
        pairs.append((field, reason))
    return tuple(pairs)
