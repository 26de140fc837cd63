"""One `housing predict` run: load the model, score the job on its engine, sum up.

It stands above the engines (``predict.spark``, which reuses ``predict.local``) and above
``predict.job`` (the job, the model package, the lineage) that they build on; none of them
imports it, so the run's orchestration is in one place.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from housing_mlops.predict.job import (
    PredictJob,
    Progress,
    TreesUsed,
    check_parts,
    lineage,
    load_package,
    with_trees,
)


def run(settings: Any, job: PredictJob, progress: Progress | None = None) -> dict[str, Any]:
    """Score ``job`` and return the summary (rows in, scored, rejected, seconds, rows/s).

    ``seconds`` is the whole run; ``rows_per_s`` is over ``scoring_seconds``: for the local
    engine the time after the model was loaded (and its fast path checked), for Spark the time
    after the model was read and the input hashed (what is left of Spark's start-up, which
    began with the run, included), so a small file does not show the model's load time as
    a scoring rate."""
    started = time.perf_counter()
    say = progress or (lambda *_: None)
    check_parts(job.input)  # before Spark or the registry: a wrong part costs nothing
    with contextlib.ExitStack() as stack:
        spark_start = None
        if job.engine == "spark":
            from housing_mlops.predict.spark import SparkStart, spark_available

            spark_available()  # the install hint before any MLflow round trip
            # The JVM starts while the model is read (stopped at the end, error or not).
            spark_start = SparkStart(job.spark_master)
            stack.callback(spark_start.close)
        say("reading the model from the registry", 0, None)
        package = load_package(settings, job.version, job.alias)
        say("hashing the input", 0, None)
        input_sha = job.input.sha256()
        meta = lineage(job, package, input_sha)
        package, trees = with_trees(settings, job, package, say)
        scoring_started = time.perf_counter()
        if job.engine == "spark":
            from housing_mlops.predict.spark import score_spark

            counts: dict[str, Any] = score_spark(job, package, meta, say, spark_start)
        else:
            from housing_mlops.predict.local import score_local

            counts = score_local(job, package, meta, say)
    ended = time.perf_counter()
    seconds = ended - started
    scoring = float(counts.get("scoring_seconds", ended - scoring_started))
    trees = counts.get("trees") or trees or TreesUsed("lightgbm")
    ref = package.ref
    return {
        "input": str(job.input.spec),
        "input_files": len(job.input.files),
        "input_sha256": input_sha,
        "output": str(job.output),
        "rejects": str(job.rejects) if job.rejects is not None else None,
        "engine": job.engine,
        "spark_master": counts.get("master"),
        "rows_in": counts["rows_in"],
        "scored": counts["scored"],
        "rejected": counts["rejected"],
        "seconds": round(seconds, 3),
        "scoring_seconds": round(scoring, 3),
        "rows_per_s": round(counts["rows_in"] / scoring, 1) if scoring > 0 else None,
        "trees": {
            "evaluator": trees.evaluator,
            "compile_seconds": round(trees.compile_seconds, 3),
            "cached": trees.cached,
            "reason": trees.reason,
        },
        "model": {
            "name": ref.name,
            "version": str(ref.version),
            "alias": ref.alias,
            "run_id": ref.run_id,
            "data_version": ref.data_version,
        },
    }
