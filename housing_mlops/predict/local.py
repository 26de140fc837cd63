"""The local engine: stream the input in Arrow record batches, score each, stream it out.

Memory stays bounded by the batch size (``PredictJob.batch_rows``), not the file size:
pyarrow reads one batch of the Parquet/CSV input at a time, and ``ParquetWriter`` /
``CSVWriter`` append each scored batch to a temporary file beside the output, renamed into
place only when every row is done. An error or an interrupt removes the temporary file, so
a previous output stays as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from housing_mlops.columns import FEATURES
from housing_mlops.errors import DataError, UsageError
from housing_mlops.files import temp_file_beside
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

CSV_BLOCK_BYTES = 8 << 20  # type inference of pass-through CSV columns sees 8 MB


def _dataset(job: PredictJob) -> Any:
    import pyarrow.dataset as ds

    files = [str(p) for p in job.input.files]
    if job.input.format == "csv":
        import pyarrow.csv as pcsv

        fmt = ds.CsvFileFormat(
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.float64() for name in FEATURES}
            ),
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        )
        return ds.dataset(files, format=fmt)
    return ds.dataset(files, format="parquet")


def _arrow_error(job: PredictJob, exc: Exception) -> DataError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"cannot read {job.input.spec}: {text}")


def open_input(job: PredictJob) -> tuple[Any, pa.Schema, int | None]:
    """The dataset, its schema (checked: every feature, numeric) and its row count (None
    for CSV, whose count would cost a full read)."""
    try:
        dataset = _dataset(job)
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as exc:
        if "Empty CSV file" in str(exc):
            return _empty(job)
        raise _arrow_error(job, exc) from None
    check_columns(schema.names, str(job.input.spec))
    for name in FEATURES:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise not_numeric(name, str(kind), str(job.input.spec))
    total = None
    if job.input.format == "parquet":
        try:
            total = int(dataset.count_rows())
        except (pa.ArrowInvalid, OSError) as exc:
            raise _arrow_error(job, exc) from None
        if total == 0:
            raise DataError(f"input {job.input.spec} holds no rows")
    return dataset, schema, total


def _empty(job: PredictJob) -> Any:
    raise DataError(f"input {job.input.spec} is empty (no header, no rows)")


def _batches(job: PredictJob, dataset: Any) -> Iterator[pa.RecordBatch]:
    # Batches come in file order and row order (the scanner sequences them).
    scanner = dataset.scanner(batch_size=job.batch_rows, use_threads=True)
    it = iter(scanner.to_batches())
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise _arrow_error(job, exc) from None
        if batch.num_rows:
            yield batch


def features(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray | None]:
    """The 8 features as an n x 8 float64 array (nulls as NaN) and the null mask."""
    cols = []
    nulls = []
    any_null = False
    for name in FEATURES:
        col = batch.column(name)
        if col.null_count:
            any_null = True
        nulls.append(col.is_null().to_numpy(zero_copy_only=False))
        cols.append(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
    X = np.column_stack(cols).astype(np.float64, copy=False)
    return X, (np.column_stack(nulls) if any_null else None)


def _score(model: Any, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, ScoredBatch]:
    X, missing = features(batch)
    return batch, score_batch(model, X, missing)


class _Writer:
    """A Parquet or CSV writer on a temporary path; ``commit`` renames it into place.

    A write that fails (a full disk, a file-size limit) is a UsageError naming the option
    (``what``: --output or --rejects), as a folder that cannot be written is: exit 2, one
    line, and the temporary file goes with the run, so a previous output stays whole."""

    def __init__(self, final: Path, fmt: str, schema: pa.Schema, tmp: Path, what: str) -> None:
        self.final, self.tmp, self.fmt, self.what = final, tmp, fmt, what
        with self._writing():
            if fmt == "parquet":
                import pyarrow.parquet as pq

                self._w: Any = pq.ParquetWriter(str(tmp), schema, compression="snappy")
            else:
                import pyarrow.csv as pcsv

                self._w = pcsv.CSVWriter(str(tmp), schema.remove_metadata())
        self._open = True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._open = False  # a writer that failed is not closed again
            reason = exc.strerror or str(exc)
            raise UsageError(
                f"cannot write {self.what} {self.final}: {reason} (a previous file there "
                "is as it was): free space, or choose another folder"
            ) from None

    def write(self, batch: pa.RecordBatch) -> None:
        with self._writing():
            self._w.write_batch(batch)

    def close(self) -> None:
        if self._open:
            self._open = False
            with self._writing():
                self._w.close()

    def commit(self) -> None:
        with self._writing():
            replace_output(self.tmp, self.final)


def _added(n: int, offset: int, ids: np.ndarray, preds: np.ndarray, ref: Any) -> list[pa.Array]:
    return [
        pa.array(preds, pa.float64()),
        pa.array(np.round(preds * 100_000.0, 2), pa.float64()),
        pa.repeat(pa.scalar(str(ref.version), pa.string()), n),
        pa.repeat(pa.scalar(ref.run_id, pa.string()), n),
        pa.array(ids + offset, pa.int64()),
    ]


def score_local(
    job: PredictJob, package: ModelPackage, lineage: dict[str, str], progress: Progress
) -> dict[str, Any]:
    """Score ``job`` in this process; return the counts (rows in, scored, rejected) and the
    seconds from the loaded model to the written output."""
    dataset, schema, total = open_input(job)
    loading = "loading the model (skops, fast-path check)"
    if package.trees == "compile":
        loading += "; compiled trees (built once per model and machine, then cached)"
    progress(loading, 0, None)
    # One batch per core, each with one tree-evaluation thread (see ``in_order``).
    workers = package.threads
    model, trees = dataclasses.replace(package, threads=1).load_for_scoring()
    scoring_started = time.perf_counter()
    ref = package.ref
    out_schema = schema.append(pa.field(PREDICTION, pa.float64()))
    out_schema = out_schema.append(pa.field(PREDICTION_USD, pa.float64()))
    out_schema = out_schema.append(pa.field(MODEL_VERSION, pa.string()))
    out_schema = out_schema.append(pa.field(RUN_ID, pa.string()))
    out_schema = out_schema.append(pa.field(ROW_ID, pa.int64()))
    out_schema = out_schema.with_metadata(lineage)
    rej_schema = (
        pa.schema([pa.field(ROW_ID, pa.int64()), *schema])
        .append(pa.field(ERROR, pa.string()))
        .with_metadata(lineage)
    )
    rows_in = scored = rejected = 0
    label = f"scoring {Path(job.input.spec).name}"
    with contextlib.ExitStack() as stack:
        out = _Writer(
            job.output,
            job.output_format,
            out_schema,
            stack.enter_context(temp_file_beside(job.output)),
            "--output",
        )
        stack.callback(out.close)
        rej = None
        if job.rejects is not None:
            rej = _Writer(
                job.rejects,
                "csv" if job.rejects.suffix.lower() == ".csv" else "parquet",
                rej_schema,
                stack.enter_context(temp_file_beside(job.rejects)),
                "--rejects",
            )
            stack.callback(rej.close)
        progress(label, 0, total)
        pool = stack.enter_context(in_order(workers))
        for batch, result in pool(lambda b: _score(model, b), _batches(job, dataset)):
            n = batch.num_rows
            if result.rejections and job.on_error == "fail":
                raise DataError(bad_rows_message(result.rejections, rows_in, more=False))
            ids = np.flatnonzero(result.valid)
            kept = batch if len(ids) == n else batch.take(pa.array(ids))
            columns = list(kept.columns) + _added(len(ids), rows_in, ids, result.predictions, ref)
            out.write(pa.RecordBatch.from_arrays(columns, schema=out_schema))
            if result.rejections and rej is not None:
                bad = np.flatnonzero(~result.valid)
                refused = batch.take(pa.array(bad))
                reasons = pa.array([r.text() for r in result.rejections], pa.string())
                rej.write(
                    pa.RecordBatch.from_arrays(
                        [pa.array(bad + rows_in, pa.int64()), *refused.columns, reasons],
                        schema=rej_schema,
                    )
                )
            rows_in += n
            scored += len(ids)
            rejected += n - len(ids)
            progress(label, rows_in, total)
        if rows_in == 0:
            raise DataError(f"input {job.input.spec} holds no rows")
        out.close()
        if rej is not None:
            rej.close()
            rej.commit()
        out.commit()
    return {
        "rows_in": rows_in,
        "scored": scored,
        "rejected": rejected,
        "scoring_seconds": time.perf_counter() - scoring_started,
        # Whether the compiled trees were really used (only asked for when "compile").
        **({"trees": trees} if package.trees == "compile" else {}),
    }
