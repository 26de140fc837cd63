"""The Spark engine of `housing predict`: the only module that imports pyspark.

The driver reads the model once (registry: sha256 check) and broadcasts its skops bytes,
the reference profile and the registry reference; each executor's Python worker loads it
once (``load_model_bytes``: sha256 again, skops allow-list, never pickle) and keeps it for
every later batch and task. ``mapInArrow`` runs the shared scoring (``predict.scoring``:
the /predict rules, then the service's predict function) on Arrow batches, without a
pandas round trip; Spark writes the valid rows as a directory of Parquet (or CSV) parts
beside the output path, renamed into place when the job succeeded. With all rows valid
that is one Spark job (read, score, write): the row ids of Parquet come from the footers
and Spark's row index, the counts from accumulators. Refused rows cost a second job (the
rejects, or the first bad rows of the error message); a CSV a counting pass first.

Master: ``--spark-master`` (default ``local[*]``), or the one ``spark-submit`` set; a new
session starts in a thread while the driver reads the model (``SparkStart``).
The Python workers run ``PYSPARK_PYTHON`` (default: this interpreter, e.g. the venv's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import sys
import threading
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
from housing_mlops.validation import Rejection, invalid_rows

INSTALL_HINT = (
    "--engine spark needs the spark extra: pip install 'housing-mlops[spark]' "
    "(and Java 17: apt-get install openjdk-17-jre-headless on Debian)"
)
_ERROR_COLUMN = f"_housing_{ERROR}"
# Spark job groups (the Spark UI, the status tracker): the scoring job, and the jobs that
# read the input again for its refused rows (only when there are some).
JOB_GROUP = "housing-predict"
REFUSED_GROUP = "housing-predict-refused"
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


def _new_session(master: str | None) -> Any:
    """A new session on ``master`` (``local[*]`` by default, or the one spark-submit set)."""
    from pyspark.sql import SparkSession

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
    return spark


class SparkStart:
    """The session a run scores on: the active one (spark-submit, tests), or a new one
    started in a thread as soon as the run begins, so the JVM's start-up (seconds) overlaps
    the driver's reading of the model from the registry. ``close`` stops a session
    started here (waiting for its start first); an active one is left running."""

    def __init__(self, master: str | None) -> None:
        from pyspark.sql import SparkSession

        # pyspark warns about every pandas release newer than it was tested with; the
        # scoring itself is checked against the local engine by the tests.
        warnings.filterwarnings("ignore", message="PySpark does not yet", category=FutureWarning)
        self.master = master
        self._spark: Any = SparkSession.getActiveSession()  # in this thread, as before
        self._created = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self._spark is None:
            self._thread = threading.Thread(
                target=self._start, name="housing-spark-start", daemon=True
            )
            self._thread.start()

    def _start(self) -> None:
        try:
            self._spark = _new_session(self.master)
            self._created = True
        except BaseException as exc:  # noqa: BLE001 - raised again by ``session``
            self._error = exc

    def session(self) -> Any:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._spark

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._created and self._spark is not None:
            self._created = False
            self._spark.stop()


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


def _partition_offsets(df: Any) -> tuple[dict[int, int], int]:
    """CSV: row id of each partition's first row, from counts per scan partition (one pass
    over the input: a CSV has no footer to count from); and how many partitions hold rows."""
    from pyspark.sql.functions import spark_partition_id

    counts = dict(df.groupBy(spark_partition_id().alias("p")).count().collect())
    offsets, start = {}, 0
    for p in range(df.rdd.getNumPartitions()):
        offsets[p] = start
        start += int(counts.get(p, 0))
    return offsets, sum(1 for c in counts.values() if c)


def _file_keys(spark: Any, path: Path) -> list[str]:
    """How Spark may spell ``path`` in ``_metadata.file_path``: the Hadoop URI of the
    file (``file:///a%20b``) and the form its file listing gives (``file:/a%20b``)."""
    jvm = spark.sparkContext._jvm
    uri = str(jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(path.resolve().as_uri())).toUri())
    keys = [uri]
    if uri.startswith("file:///"):
        keys.append("file:/" + uri.removeprefix("file:///"))
    return keys


def _with_row_ids(spark: Any, job: PredictJob, df: Any) -> tuple[Any, dict[int, int] | None, int]:
    """The input with its row ids, without a pass over the data when it can; and how many
    scan partitions hold rows (the tasks that really score).

    Parquet: a column ``row_id`` = the rows of the files before this one (their footers,
    read here) + the row's index in its file (Spark's ``_metadata.row_index``): the input
    order (files in name order, rows in file order), whatever partitions Spark makes.
    CSV: no such column; the offsets of each scan partition (one counting pass), from
    which each task numbers its rows.

    Spark splits a Parquet file by bytes, but a row group is read whole by the split
    holding its middle: a file of one row group in two splits is one task with rows and
    one empty task. So the busy partitions are at most the row groups."""
    from pyspark.sql import functions as F

    # A column of the input named ``_metadata`` would hide Spark's: count rows instead.
    if job.input.format != "parquet" or "_metadata" in df.columns:
        offsets, busy = _partition_offsets(df)
        return df, offsets, busy
    import pyarrow.parquet as pq

    index = F.col("_metadata.row_index")
    footers = [pq.ParquetFile(path).metadata for path in job.input.files]
    groups = sum(m.num_row_groups for m in footers)
    # One row group is one busy task, however Spark splits: no need to plan the scan here.
    busy = 1 if groups <= 1 else min(df.rdd.getNumPartitions(), groups)
    if len(footers) == 1:
        return df.withColumn(ROW_ID, index), None, busy
    pairs: list[Any] = []
    start = 0
    for path, meta in zip(job.input.files, footers, strict=True):
        pairs += [x for key in _file_keys(spark, path) for x in (F.lit(key), F.lit(start))]
        start += meta.num_rows
    # A file missing from the map fails the job (ANSI element_at) instead of a wrong id.
    first = F.element_at(F.create_map(*pairs), F.col("_metadata.file_path"))
    return df.withColumn(ROW_ID, first.cast("bigint") + index), None, busy


class _Counter:
    """Row ids of a task's batches when the input has no ``row_id`` column (CSV)."""

    def __init__(self, offsets: dict[int, int] | None) -> None:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        self.position = (offsets or {}).get(ctx.partitionId() if ctx else 0, 0)

    def ids(self, batch: Any) -> Any:
        import pyarrow as pa

        names = batch.schema.names
        n = batch.num_rows
        if ROW_ID in names:
            ids = batch.column(names.index(ROW_ID))
        else:
            ids = pa.array(np.arange(self.position, self.position + n, dtype=np.int64))
        self.position += n
        return ids


def _scorer(
    package_bc: Any, offsets_bc: Any, workers: int, inputs: list[str], counts: tuple[Any, Any]
) -> Any:
    """``mapInArrow``: each Arrow batch validated and scored; only the valid rows come out,
    with the added columns; ``counts`` (accumulators) get the rows seen and refused."""
    rows_acc, bad_acc = counts

    def score(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from housing_mlops.predict.local import features

        batches = iter(batches)
        head = next(batches, None)
        if head is None:  # a task without rows (a split without a row group's middle)
            return
        model = _executor_model(package_bc.value)  # once per Python worker, not per task
        ref = package_bc.value.ref
        counter = _Counter(offsets_bc.value if offsets_bc is not None else None)
        batches = itertools.chain([head], batches)

        def one(item: tuple[Any, Any]) -> tuple[Any, Any, ScoredBatch]:
            batch, ids = item
            X, missing = features(batch)
            return batch, ids, score_batch(model, X, missing)

        version = pa.scalar(str(ref.version), pa.string())
        run_id = pa.scalar(ref.run_id, pa.string())
        names = [*inputs, PREDICTION, PREDICTION_USD, MODEL_VERSION, RUN_ID, ROW_ID]
        with in_order(workers) as pool:
            # The ids are taken here, in batch order, before the pool's threads see a batch.
            numbered = ((batch, counter.ids(batch)) for batch in batches)
            for batch, ids, result in pool(one, numbered):
                n = batch.num_rows
                kept = np.flatnonzero(result.valid)
                columns = [batch.column(name) for name in inputs]
                if len(kept) < n:
                    take = pa.array(kept)
                    columns = [c.take(take) for c in columns]
                    ids = ids.take(take)
                rows_acc.add(n)
                bad_acc.add(n - len(kept))
                predictions = result.predictions
                yield pa.RecordBatch.from_arrays(
                    [
                        *columns,
                        pa.array(predictions, pa.float64()),
                        pa.array(np.round(predictions * 100_000.0, 2), pa.float64()),
                        pa.repeat(version, len(kept)),
                        pa.repeat(run_id, len(kept)),
                        ids,
                    ],
                    names=names,
                )

    return score


def _refuser(package_bc: Any, offsets_bc: Any, inputs: list[str]) -> Any:
    """``mapInArrow`` for the error path: only the refused rows, with their row id and
    why (the same rules as the scoring, no prediction)."""

    def refuse(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from housing_mlops.predict.local import features

        counter = _Counter(offsets_bc.value if offsets_bc is not None else None)
        for batch in batches:
            ids = counter.ids(batch)
            X, missing = features(batch)
            ranges = _executor_model(package_bc.value).ranges
            bad, rejections = invalid_rows(X, ranges, missing)
            if not rejections:
                continue
            take = pa.array(np.flatnonzero(bad))
            yield pa.RecordBatch.from_arrays(
                [
                    ids.take(take),
                    *[batch.column(name).take(take) for name in inputs],
                    pa.array([r.text() for r in rejections], pa.string()),
                ],
                names=[ROW_ID, *inputs, _ERROR_COLUMN],
            )

    return refuse


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
    job: PredictJob,
    package: ModelPackage,
    lineage: dict[str, str],
    progress: Progress,
    start: SparkStart | None = None,
) -> dict[str, Any]:
    """Score ``job`` on Spark; return the counts (rows in, scored, rejected) and the master.

    The common case is one Spark job: read, validate and score (``mapInArrow``), write the
    valid rows. The rows seen and refused are counted by accumulators in that job: Spark
    applies a result task's accumulator updates once (a retried or speculative attempt's
    are dropped), and the job has one stage (no shuffle), so the counts are exact. Only
    when rows were refused does a second job read the input again for them (the rejects
    file, or the first bad rows of the ``--on-error fail`` message)."""
    from pyspark.sql.functions import col
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    progress(f"starting Spark ({job.spark_master or 'local[*]'})", 0, None)
    spark_failures = _spark_errors()
    own = start is None
    start = start or SparkStart(job.spark_master)
    staged: list[Path] = []
    try:
        spark = start.session()
        master = spark.sparkContext.master
        progress(f"reading {Path(job.input.spec).name} on {master}", 0, None)
        df = _read(spark, job)
        inputs = list(df.columns)
        source, offsets, busy = _with_row_ids(spark, job, df)
        sc = spark.sparkContext
        # Spark runs one task per core: one tree-evaluation thread per task, not one per
        # core per task (LightGBM would oversubscribe the executor's cores). With fewer
        # partitions holding rows than cores (a file of one row group is one task with
        # rows), each task scores that many of its Arrow batches at once (``in_order``).
        package_bc = sc.broadcast(dataclasses.replace(package, threads=1))
        workers = max(1, min(package.threads, sc.defaultParallelism // max(1, busy)))
        offsets_bc = sc.broadcast(offsets) if offsets is not None else None
        counts = (sc.accumulator(0), sc.accumulator(0))
        added = [
            StructField(PREDICTION, DoubleType()),
            StructField(PREDICTION_USD, DoubleType()),
            StructField(MODEL_VERSION, StringType()),
            StructField(RUN_ID, StringType()),
            StructField(ROW_ID, LongType()),
        ]
        good = source.mapInArrow(
            _scorer(package_bc, offsets_bc, workers, inputs, counts),
            StructType([*df.schema.fields, *added]),
        ).withMetadata(PREDICTION, lineage)
        progress(f"scoring on {master}, writing {job.output.name}", 0, None)
        out_stage = _staging(job.output)
        staged.append(out_stage)
        sc.setJobGroup(JOB_GROUP, f"housing predict {Path(job.input.spec).name}: score, write")
        _write(good, job.output_format, out_stage)
        sc.setJobGroup(REFUSED_GROUP, f"housing predict {Path(job.input.spec).name}: rejects")
        rows_in, rejected = int(counts[0].value), int(counts[1].value)
        if rows_in == 0:
            raise DataError(f"input {job.input.spec} holds no rows")
        refused = source.mapInArrow(
            _refuser(package_bc, offsets_bc, inputs),
            StructType(
                [StructField(ROW_ID, LongType()), *df.schema.fields]
                + [StructField(_ERROR_COLUMN, StringType())]
            ),
        )
        if rejected and job.on_error == "fail":
            first = refused.orderBy(ROW_ID).limit(6).select(ROW_ID, _ERROR_COLUMN).collect()
            shown = [Rejection(int(r[ROW_ID]), _split(str(r[_ERROR_COLUMN]))) for r in first]
            raise DataError(bad_rows_message(shown, 0, more=rejected > len(shown)))
        rej_stage = None
        if job.rejects is not None:
            progress(f"writing {job.rejects.name}", 0, None)
            rej_stage = _staging(job.rejects)
            staged.append(rej_stage)
            if not rejected:  # nothing to read again for: an empty rejects file
                refused = spark.createDataFrame([], refused.schema)
            refused = refused.select(
                ROW_ID, *[col(f"`{c}`") for c in inputs], col(_ERROR_COLUMN).alias(ERROR)
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
        with contextlib.suppress(*spark_failures, AttributeError):
            start.session().sparkContext._jsc.clearJobGroup()
        if own:
            start.close()


def _split(text: str) -> tuple[tuple[str, str], ...]:
    """``field: reason; field: reason`` back into pairs (for the fail message)."""
    pairs = []
    for part in text.split("; "):
        field, _, reason = part.partition(": ")
        pairs.append((field, reason))
    return tuple(pairs)
