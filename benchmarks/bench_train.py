"""Benchmark `housing train` with a config (the default one): wall and CPU time, CV and
holdout RMSE of every candidate, and what one served row costs with each.

    .venv/bin/python benchmarks/bench_train.py [--config configs/default.yaml] [--json]
    make bench-train

Runs in a throwaway folder (its own data, MLflow store): `housing fetch` (from
``$HOUSING_DATA_ARCHIVE`` or ``../shared/data/cal_housing.tgz``) and `housing featurize`
first (not timed), then `housing train` (timed: wall and the CPU seconds of it and its
worker processes) and `housing evaluate` (holdout RMSE of every candidate). Per-row serving
cost: each registered version loaded as `housing serve` loads it (sha256, skops, fast path
checked against ``pipeline.predict``, and a LightGBM model's trees compiled to C as
`housing serve` uses them once built: ``serve.compiled_trees`` auto/always with a C
compiler; compiled fresh into the throwaway folder, so the compile time is measured too),
then the median time of one single-row predict on that served path, and of
``pipeline.predict`` on a one-row DataFrame, over the same rows (round robin over the
versions).

Prints a table, the machine's load average (before and after: wall figures mean little on
a busy machine; CPU seconds less so), and a last line a script can parse:

    bench-train: train_wall_s=W train_cpu_s=C load1=L best=NAME cv_rmse=R holdout_rmse=H \
        row_us=U trees=T

(One line, wrapped here. ``best`` is the candidate with the lowest CV RMSE: chosen without
the holdout.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def housing(config: Path, cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "housing"), "--config", str(config), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        log(proc.stderr)
        raise SystemExit(f"housing {' '.join(args)} failed with exit {proc.returncode}")
    return proc.stdout


def archive() -> str:
    found = os.environ.get("HOUSING_DATA_ARCHIVE") or str(
        ROOT.parent / "shared" / "data" / "cal_housing.tgz"
    )
    if not Path(found).exists() and "://" not in found:
        raise SystemExit(f"no data archive at {found}: set HOUSING_DATA_ARCHIVE")
    return found


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def row_costs(config: Path, cwd: Path, versions: list[str], repeat: int) -> dict[str, Any]:
    """Median seconds of one single-row predict per version: the path `housing serve`
    settles on (fast path; a LightGBM model's compiled trees unless ``serve.compiled_trees``
    is never or there is no C compiler) and ``pipeline.predict``."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from housing_mlops import registry
    from housing_mlops.config import load_config
    from housing_mlops.inference.loaded_model import (
        ModelMeta,
        build_loaded_model,
        check_rows,
        make_pipeline_predict,
    )

    old = Path.cwd()
    limiter = threadpool_limits(limits=1)  # as `housing serve` (serve.predictor_threads)
    os.chdir(cwd)  # the config's relative paths (store, data) are the benchmark's
    try:
        settings = load_config(config)
        # `auto` serves the compiled trees once its background build is done: measure that
        # state (built here before timing). A fresh cache: the compile time is measured too.
        compiled = "never" if settings.serve.compiled_trees == "never" else "always"
        cache = cwd / "compiled-trees"
        models: dict[str, Any] = {}
        build_s: dict[str, float] = {}
        rows: Any = None
        for version in versions:
            ref = registry.resolve(settings, version=int(version))
            pipeline = registry.load_model(settings, ref)
            profile = registry.load_reference_profile(settings, ref)
            started = time.perf_counter()
            model = build_loaded_model(
                pipeline,
                ModelMeta.from_ref(ref),
                profile,
                threads=settings.serve.predictor_threads,
                compiled_trees=compiled,
                compile_cache=str(cache),
                model_key=(ref.tags or {}).get(registry.SHA_TAG),
            )
            build_s[version] = time.perf_counter() - started
            models[version] = (model, make_pipeline_predict(pipeline))
            rows = check_rows(profile, n=repeat) if rows is None else rows
        # Round robin over the versions, row by row: a change of machine load hits all alike.
        fast: dict[str, list[float]] = {v: [] for v in versions}
        slow: dict[str, list[float]] = {v: [] for v in versions}
        for i in range(len(rows)):
            row = rows[i : i + 1]
            for version, (model, reference) in models.items():
                t0 = time.perf_counter()
                model.predict(row)
                t1 = time.perf_counter()
                fast[version].append(t1 - t0)
                if i < repeat // 4:
                    reference(row)
                    slow[version].append(time.perf_counter() - t1)
        out: dict[str, Any] = {}
        for version, (model, reference) in models.items():
            out[version] = {
                "fast_path": model.fast_path,
                "trees": model.trees,
                "load_s": build_s[version],
                "row_us": statistics.median(fast[version]) * 1e6,
                "pipeline_row_us": statistics.median(slow[version]) * 1e6,
                "max_abs_diff": float(np.max(np.abs(model.predict(rows) - reference(rows)))),
            }
        return out
    finally:
        os.chdir(old)
        limiter.restore_original_limits()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--repeat", type=int, default=2000, help="rows timed per version")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = args.config.resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        log(f"bench-train: folder {work}; fetch and featurize (not timed)")
        housing(config, work, "fetch", "--from", archive())
        housing(config, work, "featurize")
        load_before = os.getloadavg()
        log("bench-train: housing train (timed)")
        cpu0, t0 = children_cpu(), time.perf_counter()
        trained = json.loads(housing(config, work, "train", "--json"))
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        load_after = os.getloadavg()
        log("bench-train: housing evaluate")
        evaluated = {
            r["version"]: r for r in json.loads(housing(config, work, "evaluate", "--json"))
        }
        log("bench-train: per-row predict cost of each version")
        costs = row_costs(config, work, [r["version"] for r in trained], args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = [
        {
            "candidate": r["candidate"],
            "version": r["version"],
            "cv_rmse": r["cv_rmse_mean"],
            "cv_rmse_std": r["cv_rmse_std"],
            "holdout_rmse": evaluated[r["version"]]["rmse"],
            "holdout_r2": evaluated[r["version"]]["r2"],
            **costs[r["version"]],
        }
        for r in trained
    ]
    best = min(rows, key=lambda r: r["cv_rmse"])  # chosen by CV, never by the holdout
    result = {
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "load_before": load_before,
        "load_after": load_after,
        "cpus": os.cpu_count(),
        "candidates": rows,
        "best": best["candidate"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{'candidate':<16}{'CV RMSE':>18}{'holdout':>10}{'R²':>7}{'row µs':>9}"
            f"{'pipeline µs':>13}{'served by':>11}{'load s':>8}"
        )
        for r in rows:
            cv = f"{r['cv_rmse']:.4f} ± {r['cv_rmse_std']:.4f}"
            print(
                f"{r['candidate']:<16}{cv:>18}{r['holdout_rmse']:>10.4f}{r['holdout_r2']:>7.3f}"
                f"{r['row_us']:>9.0f}{r['pipeline_row_us']:>13.0f}{r['trees']:>11}"
                f"{r['load_s']:>8.1f}" + ("" if r["fast_path"] else "  (no fast path)")
            )
        print(
            f"housing train: {wall:.1f} s wall, {cpu:.1f} s CPU on {os.cpu_count()} cores; "
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
        )
    print(
        f"bench-train: train_wall_s={wall:.1f} train_cpu_s={cpu:.1f} "
        f"load1={load_before[0]:.2f} best={best['candidate']} cv_rmse={best['cv_rmse']:.4f} "
        f"holdout_rmse={best['holdout_rmse']:.4f} row_us={best['row_us']:.1f} "
        f"trees={best['trees']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
