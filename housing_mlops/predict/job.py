"""What a `housing predict` run works on: the job, the model package and the lineage.

``make_job`` resolves the input and output: everything a user can get wrong is checked
before the model is loaded (a missing input, a directory without Parquet, an output that
cannot be written, a bad option), so a mistake costs no MLflow round trip.
``load_package`` and ``with_trees`` load the model; ``lineage`` is what every output
carries. The engines (``predict.local``, ``predict.spark``) build on this module and share
the scoring (``predict.scoring``) and the rules (``housing_mlops.validation``);
``predict.runner`` runs a job on one of them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from housing_mlops.columns import FEATURES
from housing_mlops.errors import ConfigError, DataError, UsageError
from housing_mlops.files import file_sha256, temp_file_beside
from housing_mlops.predict.scoring import ADDED_COLUMNS

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]
ENGINES = ("local", "spark")
ON_ERROR = ("fail", "skip")
COMPILE = ("auto", "always", "never")
# How many bad rows an `--on-error fail` message names.
SHOWN_REJECTIONS = 5
LINEAGE_PREFIX = "housing."
# The default output and rejects of a glob input (beside its first match): never matched.
GLOB_OUTPUTS = ("predictions.parquet", "predictions.rejects.parquet")


@dataclass(frozen=True)
class InputFiles:
    """The resolved input: its files (in reading order) and their format."""

    spec: str
    files: list[Path]
    format: str  # "parquet" or "csv"

    def sha256(self) -> str:
        """The input's hash: the file's sha256, or for several parts the sha256 of
        ``name sha256`` lines (so renaming or changing any part changes it)."""
        if len(self.files) == 1:
            return file_sha256(self.files[0])
        lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class PredictJob:
    """What to score, with which model, where to write, and how to treat bad rows."""

    input: InputFiles
    output: Path
    output_format: str  # "parquet" or "csv"
    rejects: Path | None
    on_error: str = "fail"
    engine: str = "local"
    spark_master: str | None = None  # None: local[*], or the master spark-submit set
    version: int | None = None
    alias: str | None = None
    batch_rows: int = 65_536
    compile: str = "auto"  # compiled trees: auto (big inputs, or already cached) / always / never
    extra: dict[str, Any] = field(default_factory=dict)


def _format_of(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise UsageError(f"{what} {path} must end in .parquet or .csv (the extension sets the format)")


def resolve_input(spec: str) -> InputFiles:
    """A CSV or Parquet file, a directory of Parquet parts, or a glob of Parquet parts."""
    # A glob is quoted, so the shell leaves its ~ alone: expand it here, as a shell would.
    spec = os.path.expanduser(spec)
    path = Path(spec)
    if path.is_file():
        try:
            fmt = _format_of(path, "input")
        except UsageError as exc:
            raise DataError(str(exc)) from None
        if path.stat().st_size == 0:
            raise DataError(f"input {path} is empty (0 bytes)")
        return InputFiles(spec, [path], fmt)
    if path.is_dir():
        parts = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in (".parquet", ".pq")
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
        if not parts:
            raise DataError(f"input directory {path} holds no Parquet files (*.parquet)")
        return InputFiles(spec, parts, "parquet")
    if glob.has_magic(spec):
        # A glob's default output (and rejects) lands in the folder of its first match,
        # where `*.parquet` would read it back as an input next time: those names never match.
        matches = sorted(
            Path(p)
            for p in glob.glob(spec, recursive=True)
            if Path(p).is_file() and Path(p).name not in GLOB_OUTPUTS
        )
        if not matches:
            raise DataError(f"no file matches the input pattern {spec!r}")
        formats = {_format_of(p, "input") for p in matches}
        if formats != {"parquet"}:
            raise DataError(f"the input pattern {spec!r} must match Parquet files only")
        return InputFiles(spec, matches, "parquet")
    raise DataError(f"input {spec} does not exist")


def default_output(inp: InputFiles) -> Path:
    """Beside the input: ``test.parquet`` -> ``test.predictions.parquet``; a directory
    ``parts/`` -> ``parts.predictions.parquet``; a glob -> ``predictions.parquet`` in the folder
    of the first match (a name globs skip, so the same command runs again)."""
    path = Path(inp.spec)
    if path.is_file():
        return path.with_name(f"{path.stem}.predictions.parquet")
    if path.is_dir():
        return path.resolve().with_name(f"{path.resolve().name}.predictions.parquet")
    return inp.files[0].parent / GLOB_OUTPUTS[0]


def _is_previous_output(folder: Path) -> bool:
    """Whether ``folder`` is what the Spark engine writes (Parquet or CSV: part-* files and
    Spark's own _SUCCESS / .crc entries) or empty: a new output may replace it whole."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    return all(
        (e.is_file() and e.name.startswith("part-")) or e.name.startswith(("_", "."))
        for e in entries
    )


def _check_writable(path: Path, what: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {path}: the folder {parent} does not exist")
    if path.is_dir() and not _is_previous_output(path):
        raise UsageError(
            f"cannot write {what} {path}: it is a directory, not an earlier output of "
            "`housing predict` (Spark's part-* files): choose another path"
        )
    # A real file, not os.access: root passes os.access on folders it still cannot write
    # (/proc, /sys, read-only mounts), and the run would fail only after the scoring.
    try:
        with temp_file_beside(path, suffix=".probe"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(
            f"cannot write {what} {path}: the folder {parent} is not writable ({reason})"
        ) from None


def _check_not_input(path: Path, what: str, inp: InputFiles) -> None:
    """A path this run replaces (a file, or a folder of Spark parts removed whole) must not
    be an input, hold one, or lie inside an input folder (a next run would read it)."""
    target = path.resolve()
    files = [f.resolve() for f in inp.files]
    if target in files:
        raise UsageError(f"{what} {path} is the input file: choose another path")
    folder = Path(inp.spec)
    if folder.is_dir():
        root = folder.resolve()
        if target == root:
            raise UsageError(f"{what} {path} is the input folder: choose another path")
        if root in target.parents:
            raise UsageError(
                f"{what} {path} is inside the input folder {folder}: choose a path outside it"
            )
    inside = next((f for f, r in zip(inp.files, files, strict=True) if target in r.parents), None)
    if inside is not None:
        raise UsageError(f"{what} {path} holds the input file {inside}: choose another path")


def make_job(
    input_spec: str,
    output: Path | None = None,
    *,
    version: int | None = None,
    alias: str | None = None,
    engine: str = "local",
    spark_master: str | None = None,
    on_error: str = "fail",
    rejects: Path | None = None,
    compile: str = "auto",  # noqa: A002 - the option's name
) -> PredictJob:
    """Check the options and paths (no model loaded yet); raise Usage/DataError."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if compile not in COMPILE:
        raise UsageError(f"--compile must be one of {', '.join(COMPILE)}, not {compile!r}")
    if on_error not in ON_ERROR:
        raise UsageError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    if version is not None and alias is not None:
        raise UsageError("--model-version and --alias are exclusive: give one")
    if spark_master is not None and engine != "spark":
        raise UsageError("--spark-master needs --engine spark")
    if rejects is not None and on_error != "skip":
        raise UsageError("--rejects needs --on-error skip (with fail, a bad row stops the run)")
    if not input_spec.strip():
        # `housing predict "$FILE"` with FILE unset: read as the current folder, every
        # Parquet file under it was scored and the output written into its parent.
        raise UsageError("INPUT is empty: name a CSV or Parquet file, a folder or a quoted glob")
    inp = resolve_input(input_spec)
    out = Path(output) if output is not None else default_output(inp)
    out_format = _format_of(out, "--output")
    _check_not_input(out, "--output", inp)
    _check_writable(out, "--output")
    if on_error == "skip" and rejects is None:
        rejects = out.with_name(f"{out.name.removesuffix(out.suffix)}.rejects{out.suffix}")
    if rejects is not None:
        _format_of(rejects, "--rejects")
        if rejects.resolve() == out.resolve():
            raise UsageError("--rejects and --output must be different files")
        # The rejects file is replaced like the output: never over an input (a given
        # --rejects, or the default OUTPUT.rejects.EXT that happens to be one).
        _check_not_input(rejects, "--rejects", inp)
        _check_writable(rejects, "--rejects")
    return PredictJob(
        input=inp,
        output=out,
        output_format=out_format,
        rejects=rejects,
        on_error=on_error,
        engine=engine,
        spark_master=spark_master,
        version=version,
        alias=alias,
        compile=compile,
    )


def estimated_rows(inp: InputFiles) -> int:
    """Rows in the input: exact for Parquet (footers only), estimated for CSV (size / 60
    bytes, about a row of the test split written as CSV)."""
    if inp.format == "parquet":
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(f).metadata.num_rows for f in inp.files)
        except Exception:  # noqa: BLE001 - a bad file is reported by the engine itself
            return 0
    return sum(f.stat().st_size for f in inp.files) // 60


def check_columns(names: list[str], source: str) -> None:
    """Every feature present, none of the columns `housing predict` adds."""
    missing = [f for f in FEATURES if f not in names]
    if missing:
        raise DataError(
            f"{source} lacks the feature column(s) {', '.join(missing)} "
            f"(needed: {', '.join(FEATURES)}; other columns pass through)"
        )
    clash = [c for c in ADDED_COLUMNS if c in names]
    if clash:
        raise DataError(
            f"{source} already has the column(s) {', '.join(clash)} that `housing predict` "
            "adds: rename or drop them (is it a predictions file?)"
        )


def check_parts(inp: InputFiles) -> None:
    """Every part's own columns (its footer), not only those of the part an engine takes as
    the schema of all: a part holding the columns `housing predict` adds (an earlier output
    left among the parts) would be scored again, its extra columns dropped, and a part
    lacking a feature would read as rows of nulls. DataError naming the part."""
    if inp.format != "parquet" or len(inp.files) < 2:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in inp.files:
        source = f"part {part} of {inp.spec}"
        try:
            schema = pq.read_schema(part)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read {source}: {exc}") from None
        check_columns(schema.names, source)
        for name in FEATURES:
            kind = schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                raise not_numeric(name, str(kind), source)


def replace_output(new: Path, final: Path) -> None:
    """Move a finished output (a file, or Spark's folder of parts) into place. An older
    output of the other kind is moved aside first and removed only after the rename."""
    import shutil
    import uuid

    old = None
    if final.is_dir() or (new.is_dir() and final.exists()):
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def not_numeric(name: str, kind: str, source: str) -> DataError:
    """A feature column of text (or booleans, dates, ...): the whole file is refused."""
    words = {"string": "text", "large_string": "text", "bool": "boolean", "boolean": "boolean"}
    return DataError(
        f"column {name} of {source} holds {words.get(kind, kind)} values, not numbers "
        "(the features must be numeric columns)"
    )


def bad_rows_message(rejections: list[Any], offset: int, more: bool) -> str:
    """``--on-error fail``: the first bad rows by row id, field and reason."""
    shown = "; ".join(f"row {offset + r.row}: {r.text()}" for r in rejections[:SHOWN_REJECTIONS])
    tail = " (and more)" if more or len(rejections) > SHOWN_REJECTIONS else ""
    return (
        f"input rows break the input rules of /predict: {shown}{tail}. Nothing was written; "
        "fix the rows, or score the rest with --on-error skip (rejects go to --rejects)"
    )


# ------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class TreesUsed:
    """Which tree evaluator scored: ``compiled`` or ``lightgbm`` (and why not compiled)."""

    evaluator: str
    compile_seconds: float = 0.0
    cached: bool = False
    reason: str | None = None
    library: Path | None = None


@dataclass(frozen=True)
class ModelPackage:
    """The model as shipped to whoever scores: the verified model.skops bytes, the registry
    reference (its sha256 tag is checked again on load) and the reference profile (the
    ranges). Plain data: Spark sends it to executors, which load it once each.

    ``trees``: ``lightgbm`` (the booster scores), or ``compile`` (use the compiled trees,
    ``inference.compiled``: from ``trees_blob`` when the driver shipped them, else built or
    taken from the cache in ``trees_cache``); ``trees_required`` makes a model that cannot
    use them an error (``--compile always``) instead of a note."""

    ref: Any
    blob: bytes
    profile: dict[str, Any] | None
    threads: int
    trees: str = "lightgbm"
    trees_required: bool = False
    trees_cache: str | None = None
    trees_blob: bytes | None = None

    @property
    def model_key(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()

    def load(self) -> Any:
        """The serving wrapper (fast path checked against ``pipeline.predict``, ranges)."""
        return self.load_for_scoring()[0]

    def load_for_scoring(self) -> tuple[Any, TreesUsed]:
        """The serving wrapper, with the compiled trees in its predict when asked for and
        they give exactly LightGBM's numbers; and which evaluator it uses."""
        from housing_mlops import registry
        from housing_mlops.inference.loaded_model import ModelMeta, build_loaded_model

        pipeline = registry.load_model_bytes(self.ref, self.blob)
        model = build_loaded_model(
            pipeline, ModelMeta.from_ref(self.ref), self.profile, threads=self.threads
        )
        if self.trees != "compile":
            return model, TreesUsed("lightgbm")
        return self._with_compiled(model, pipeline)

    def _with_compiled(self, model: Any, pipeline: Any) -> tuple[Any, TreesUsed]:
        import dataclasses

        import numpy as np

        from housing_mlops.inference import compiled
        from housing_mlops.inference.loaded_model import check_rows

        try:
            booster = compiled.lightgbm_booster(pipeline)
            if booster is None:
                raise compiled.NotCompilable("the model is not a LightGBM model")
            if not model.fast_path:
                raise compiled.NotCompilable("the model scores through pipeline.predict")
            if self.trees_blob is not None:
                info = booster.dump_model(num_iteration=1)
                lib = compiled.load_bytes(
                    self.trees_blob, int(info["max_feature_idx"]) + 1, booster.num_trees()
                )
            else:
                cache = Path(self.trees_cache) if self.trees_cache else None
                lib = compiled.build(booster, self.model_key, cache)
            check = np.vstack([check_rows(self.profile), check_rows(None)])
            predict = compiled.compiled_predict(model, lib, check)
        except compiled.NotCompilable as exc:
            if self.trees_required:
                raise ConfigError(f"--compile always: {exc}") from None
            log.info("compiled trees not used: %s", exc)
            return model, TreesUsed("lightgbm", reason=str(exc))
        used = TreesUsed("compiled", lib.seconds, lib.cached, library=lib.path)
        return dataclasses.replace(model, predict=predict), used


def with_trees(
    settings: Any, job: PredictJob, package: ModelPackage, say: Progress
) -> tuple[ModelPackage, TreesUsed | None]:
    """Decide whether this run uses compiled trees (``job.compile``) and prepare them:
    ``auto`` compiles for an input of at least ``predict.compile_min_rows`` rows (a compile
    costs about 15-40 s here, once per model) or when the model's are already cached."""
    import dataclasses

    from housing_mlops.inference import compiled

    cfg = settings.predict
    cache = cfg.compile_cache or None
    if job.compile == "never":
        return package, TreesUsed("lightgbm", reason="--compile never")
    cache_path = Path(cache) if cache else None
    if job.compile == "auto":
        rows = estimated_rows(job.input)
        if rows < cfg.compile_min_rows and not compiled.is_cached(package.model_key, cache_path):
            # A CSV's rows are not counted before it is read: say the number is a guess,
            # or it reads as a count that disagrees with the summary's `rows in`.
            counted = (
                f"{rows:,} rows"
                if job.input.format == "parquet"
                else f"about {rows:,} rows estimated from the CSV's size"
            )
            return package, TreesUsed(
                "lightgbm",
                reason=f"auto: {counted}, fewer than predict.compile_min_rows "
                f"{cfg.compile_min_rows:,}, and none cached",
            )
    package = dataclasses.replace(
        package, trees="compile", trees_required=job.compile == "always", trees_cache=cache
    )
    if job.engine != "spark":
        return package, None  # built (or read from the cache) where the model is loaded
    # Spark: the driver builds them once and ships the library with the model. Already
    # cached (built from this model file's sha256 and this compiler): shipped as they are,
    # without loading the model here (each executor checks them against LightGBM anyway).
    if compiled.is_cached(package.model_key, cache_path):
        library = compiled.library_path(package.model_key, cache_path)
        if library is not None:
            used = TreesUsed("compiled", 0.0, cached=True, library=library)
            return dataclasses.replace(package, trees_blob=library.read_bytes()), used
    say("compiled trees (built once per model and machine, then cached)", 0, None)
    _, used = package.load_for_scoring()
    if used.evaluator != "compiled" or used.library is None:
        return dataclasses.replace(package, trees="lightgbm"), used
    return dataclasses.replace(package, trees_blob=used.library.read_bytes()), used


def load_package(settings: Any, version: int | None, alias: str | None) -> ModelPackage:
    """Resolve ``@champion`` (or ``alias`` / ``version``) and read it with the service's
    safe loading: sha256 against the registration tag, skops with the reviewed types."""
    from housing_mlops import registry
    from housing_mlops.inference.loaded_model import reference_profile_or_none

    ref = registry.resolve(settings, version=version, alias=alias or registry.CHAMPION)
    blob = registry.read_model_bytes(settings, ref)
    profile = reference_profile_or_none(settings, ref)
    threads = max(1, min(os.cpu_count() or 1, 8))
    return ModelPackage(ref=ref, blob=blob, profile=profile, threads=threads)


def lineage(job: PredictJob, package: ModelPackage, input_sha256: str) -> dict[str, str]:
    """Key-value metadata of the output: which model scored which input, when."""
    from housing_mlops import __version__
    from housing_mlops.timestamps import iso_utc

    ref = package.ref
    meta = {
        "model_name": ref.name,
        "model_version": str(ref.version),
        "model_alias": ref.alias or "",
        "run_id": ref.run_id,
        "data_version": ref.data_version or "",
        "input": str(job.input.spec),
        "input_files": json.dumps([str(p) for p in job.input.files]),
        "input_sha256": input_sha256,
        "engine": job.engine,
        "scored_at": iso_utc(),
        "package_version": __version__,
    }
    return {f"{LINEAGE_PREFIX}{k}": v for k, v in meta.items()}


def read_lineage(path: Path) -> dict[str, str]:
    """The lineage of a predictions file written by either engine (a Parquet file, or
    Spark's directory of parts, where it rides in the `prediction` column's metadata)."""
    import pyarrow.parquet as pq

    path = Path(path)
    first = path
    if path.is_dir():
        first = sorted(p for p in path.glob("*.parquet"))[0]
    meta = pq.read_schema(first).metadata or {}
    out = {
        k.decode()[len(LINEAGE_PREFIX) :]: v.decode()
        for k, v in meta.items()
        if k.decode().startswith(LINEAGE_PREFIX)
    }
    spark_schema = meta.get(b"org.apache.spark.sql.parquet.row.metadata")
    if not out and spark_schema:
        for fld in json.loads(spark_schema).get("fields", []):
            for k, v in (fld.get("metadata") or {}).items():
                if k.startswith(LINEAGE_PREFIX):
                    out[k[len(LINEAGE_PREFIX) :]] = str(v)
    return out
