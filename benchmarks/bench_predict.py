"""Benchmark `housing predict` against MLflow's own batch paths on the same champion.

    .venv/bin/python benchmarks/bench_predict.py [--config CONFIG] [--rows 1000000]
    make bench-predict                     # add EXTRAS=dev,spark for the Spark half

Which model: as ``bench_serve.py`` (its ``make_temp_store`` is reused): the config's
``champion`` when there is one (after ``make demo``), else a throwaway store with the
config's LightGBM candidate (``--candidate``) fitted on the real train split.

The file: the test split (``data/processed/test.parquet``, or the one built in the
throwaway store) without the rows the /predict rules refuse (so every engine scores
every row), resampled with replacement (seed 0) to ``--rows`` rows, as Parquet.

Six runs, each a separate process (wall time from start to exit, peak RSS by
``wait4``), one at a time:

- ours, local, three times: ``housing predict FILE -o OUT.parquet`` (validation, model,
  Parquet out) with ``--compile never`` (LightGBM's trees), then ``--compile always`` in an
  empty cache (the compile is in its time) and again (the compiled trees from the cache);
- MLflow, local: ``mlflow.pyfunc.load_model("models:/NAME@champion").predict`` on the
  file read with pandas (no output written: in its favour);
- ours, Spark: ``housing predict --engine spark --spark-master local[2] --compile always``
  (the compiled trees from the cache, shipped to the executors);
- MLflow, Spark: ``mlflow.pyfunc.spark_udf(..., env_manager="local")`` on the same
  ``local[2]`` session settings, writing Parquet.

Prints rows/s, CPU seconds, peak RSS, the ratios (wall; CPU for the local pair) and
the largest difference between the predictions (the Spark half needs pyspark and Java;
``--skip-spark`` leaves it out, ``--only-spark`` runs only it, ``--repeat N`` runs the
Spark pair N times alternating which goes first, medians reported, with the CPU of each
run's whole process tree read from /proc: the JVM and its Python workers). ``--json`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import has_champion, log, make_temp_store  # noqa: E402

PYFUNC_LOCAL = """
import sys, time
import numpy as np, pandas as pd, mlflow
from housing_mlops.columns import FEATURES
uri, path, out = sys.argv[1:4]
model = mlflow.pyfunc.load_model(uri)
frame = pd.read_parquet(path, columns=FEATURES)
pred = np.asarray(model.predict(frame), dtype=np.float64).reshape(-1)
np.save(out, pred)
"""

SPARK_UDF = """
import os, sys
import mlflow
from pyspark.sql import SparkSession
from pyspark.sql.functions import col
from housing_mlops.columns import FEATURES
uri, path, out = sys.argv[1:4]
spark = (
    SparkSession.builder.master("local[2]").appName("bench-spark-udf")
    .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    .config("spark.sql.execution.arrow.maxRecordsPerBatch", "65536")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")
df = spark.read.parquet(path)
df.withColumn("prediction", udf(*[col(c) for c in FEATURES])).write.parquet(out)
spark.stop()
"""


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """CPU seconds (user + system) so far of ``root``'s descendants, from /proc, into
    ``seen`` (pid -> the highest value read: a process's last reading before it ended)."""
    parents: dict[int, int] = {}
    ticks: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for pid, cpu in ticks.items():
        p = parents.get(pid)
        while p is not None and p not in (root, 0, 1):
            p = parents.get(p)
        if p == root:
            seen[pid] = max(seen.get(pid, 0.0), cpu)


def timed(cmd: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, CPU seconds and the peak RSS of that process (MB), and
    the CPU seconds of the whole process tree (Spark's JVM and Python workers included)."""
    import threading

    started = time.perf_counter()
    seen: dict[int, float] = {}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                _tree_cpu(proc.pid, seen)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        poller.join()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"bench: {cmd[:3]} exited {proc.returncode}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "wall_s": round(wall, 2),
        # user + system CPU of the process and the children it reaped: what the run cost,
        # which the machine's load hardly changes. Not Spark's: pyspark leaves its JVM
        # (and the Python workers under it) unreaped, so only the driver's CPU is seen.
        "cpu_s": round(cpu, 2),
        # The process and every descendant read from /proc every 0.2 s (a process's last
        # 0.2 s may be missed): Spark's JVM and Python workers included.
        "tree_cpu_s": round(cpu + sum(seen.values()), 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def make_input(config: Path, rows: int, tmp: Path) -> tuple[Path, int]:
    """The test split without refused rows, resampled to ``rows`` rows (seed 0)."""
    import numpy as np
    import pandas as pd

    from housing_mlops import registry
    from housing_mlops.columns import FEATURES
    from housing_mlops.config import load_config
    from housing_mlops.validation import feature_ranges, invalid_rows

    settings = load_config(config)
    test = pd.read_parquet(Path(settings.paths.processed_dir) / "test.parquet")
    ref = registry.resolve(settings)
    profile = registry.load_reference_profile(settings, ref)
    bad, _ = invalid_rows(test[FEATURES].to_numpy(dtype=np.float64), feature_ranges(profile))
    test = test[~bad].reset_index(drop=True)
    idx = np.random.default_rng(0).integers(0, len(test), rows)
    path = tmp / f"bench_{rows}.parquet"
    test.iloc[idx].reset_index(drop=True).to_parquet(path, index=False)
    return path, int(bad.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--temp-store", action="store_true", help="never use the config's store")
    parser.add_argument("--candidate", default="lightgbm", help="for the throwaway store")
    parser.add_argument("--skip-spark", action="store_true", help="only the local engines")
    parser.add_argument(
        "--only-spark", action="store_true", help="only the Spark pair (ours, spark_udf)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the Spark pair N times, alternating"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    import numpy as np
    import pyarrow.parquet as pq

    from housing_mlops import registry
    from housing_mlops.config import load_config

    tmp = Path(tempfile.mkdtemp(prefix="housing-bench-predict-"))
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        config = args.config.resolve()
        settings = load_config(config)
        if args.temp_store or not has_champion(settings):
            config = make_temp_store(config, tmp, args.candidate)
            settings = load_config(config)
            store = f"temporary store {tmp}"
        else:
            store = f"the config's store ({settings.mlflow.tracking_uri})"
        ref = registry.resolve(settings)
        uri = f"models:/{ref.name}@{registry.CHAMPION}"
        log(f"bench: champion {ref.name} version {ref.version} ({ref.candidate}); {store}")
        data, refused = make_input(config, args.rows, tmp)
        log(f"bench: {args.rows:,} rows in {data} ({refused} refused test rows left out)")
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": registry.tracking_uri(settings),
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        }
        housing = [str(BIN / "housing"), "-c", str(config), "predict", str(data)]

        # Compiled trees in a cache of their own: the first compiled run builds them
        # (compile included in its time), the second finds them cached.
        env["HOUSING_COMPILE_CACHE"] = str(tmp / "trees")
        ours_out = tmp / "ours.parquet"
        runs = [
            ("housing predict (local, LightGBM trees)", "never", tmp / "ours-lgbm.parquet"),
            ("housing predict (local, compiling)", "always", tmp / "ours-cold.parquet"),
            ("housing predict (local, compiled)", "always", ours_out),
        ]
        ours = None
        if args.only_spark:
            # The compiled trees into the cache first (untimed, on a few rows), so the Spark
            # run finds them cached as it does after the local runs.
            few = tmp / "few.parquet"
            pq.write_table(pq.read_table(data).slice(0, 1000), few)
            timed(
                [*housing[:-1], str(few), "-o", str(tmp / "few.out.parquet")]
                + ["--compile", "always"],
                env,
                tmp / "few.log",
            )
        else:
            outputs = {}
            for name, mode, out in runs:
                log(f"bench: {name} ...")
                results[name] = timed(
                    [*housing, "-o", str(out), "--compile", mode], env, tmp / f"{out.stem}.log"
                )
                outputs[name] = pq.read_table(out, columns=["prediction"]).column(0).to_numpy()
            results["max_abs_diff_compiled_vs_lightgbm"] = float(
                np.abs(outputs[runs[0][0]] - outputs[runs[2][0]]).max()
            )
            log("bench: mlflow.pyfunc.load_model(...).predict ...")
            theirs_out = tmp / "pyfunc.npy"
            results["mlflow.pyfunc predict"] = timed(
                [sys.executable, "-c", PYFUNC_LOCAL, uri, str(data), str(theirs_out)],
                env,
                tmp / "pyfunc.log",
            )
            ours = pq.read_table(ours_out, columns=["prediction"]).column(0).to_numpy()
            theirs = np.load(theirs_out)
            results["max_abs_diff_local"] = float(np.abs(ours - theirs).max())
        if not args.skip_spark:
            ours_name = "housing predict (spark local[2])"
            udf_name = "mlflow.pyfunc.spark_udf (local[2])"
            walls: dict[str, list[float]] = {ours_name: [], udf_name: []}
            cpus: dict[str, list[float]] = {ours_name: [], udf_name: []}
            for i in range(max(1, args.repeat)):
                spark_out = tmp / f"ours-spark-{i}.parquet"
                udf_out = tmp / f"spark-udf-{i}.parquet"
                pair = [
                    (
                        ours_name,
                        [*housing, "--engine", "spark", "--spark-master", "local[2]"]
                        + ["-o", str(spark_out), "--compile", "always"],
                    ),
                    (udf_name, [sys.executable, "-c", SPARK_UDF, uri, str(data), str(udf_out)]),
                ]
                for name, cmd in pair if i % 2 == 0 else pair[::-1]:
                    log(f"bench: {name} (run {i + 1}) ...")
                    tag = "ours" if name == ours_name else "udf"
                    r = timed(cmd, env, tmp / f"{tag}-{i}.log")
                    walls[name].append(r["wall_s"])
                    cpus[name].append(r["tree_cpu_s"])
                mine = pq.read_table(spark_out, columns=["row_id", "prediction"]).to_pandas()
                mine = mine.sort_values("row_id")["prediction"].to_numpy()
                udf = pq.read_table(udf_out, columns=["prediction"]).column(0).to_numpy()
                results["max_abs_diff_spark"] = max(
                    results.get("max_abs_diff_spark", 0.0), float(np.abs(mine - udf).max())
                )
                if ours is not None:
                    results["max_abs_diff_spark_vs_local"] = float(np.abs(mine - ours).max())
                shutil.rmtree(spark_out, ignore_errors=True)
                shutil.rmtree(udf_out, ignore_errors=True)
            for name, times in walls.items():
                # The median of the runs (alternating order); every run's wall time kept.
                results[name] = {
                    "wall_s": float(np.median(times)),
                    "cpu_s": None,
                    "tree_cpu_s": float(np.median(cpus[name])),
                    "peak_rss_mb": None,
                    "runs_wall_s": times,
                    "runs_tree_cpu_s": cpus[name],
                }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in results.values():
        if isinstance(r, dict):
            r["rows_per_s"] = round(args.rows / r["wall_s"], 0)
    summary: dict[str, Any] = {
        "rows": args.rows,
        "model": f"{ref.name} version {ref.version} ({ref.candidate})",
        "model_store": store,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    pairs = [
        ("local", "housing predict (local, compiled)", "mlflow.pyfunc predict"),
        ("local, compile included", "housing predict (local, compiling)", "mlflow.pyfunc predict"),
        ("local, LightGBM", "housing predict (local, LightGBM trees)", "mlflow.pyfunc predict"),
        ("spark", "housing predict (spark local[2])", "mlflow.pyfunc.spark_udf (local[2])"),
    ]
    summary["ratios"] = {
        key: round(results[theirs]["wall_s"] / results[ours]["wall_s"], 2)
        for key, ours, theirs in pairs
        if ours in results and theirs in results
    }
    summary["cpu_ratios"] = {
        key: round(results[theirs]["cpu_s"] / results[ours]["cpu_s"], 2)
        for key, ours, theirs in pairs[:3]  # the local engines (see ``timed``)
        if ours in results and theirs in results
    }
    if pairs[3][1] in results and pairs[3][2] in results:  # Spark: the whole process trees
        ours_r, theirs_r = results[pairs[3][1]], results[pairs[3][2]]
        summary["cpu_ratios"]["spark"] = round(theirs_r["tree_cpu_s"] / ours_r["tree_cpu_s"], 2)
        # Run by run (each pair back to back), the wall ratio.
        summary["spark_pair_ratios"] = [
            round(t / o, 2)
            for o, t in zip(ours_r["runs_wall_s"], theirs_r["runs_wall_s"], strict=True)
        ]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.rows:,} rows, {summary['model']}, {summary['cpus']} CPUs")
    print(f"load average before {summary['loadavg_before']}, after {summary['loadavg_after']}")
    for name, r in results.items():
        if isinstance(r, dict):
            if r["cpu_s"] is None:
                runs_ = ", ".join(f"{w:.2f}" for w in r["runs_wall_s"])
                cpus_ = ", ".join(f"{c:.1f}" for c in r["runs_tree_cpu_s"])
                print(
                    f"  {name:38s} {r['wall_s']:8.2f} s  {r['rows_per_s']:>10,.0f} rows/s  "
                    f"(median of {len(r['runs_wall_s'])}: {runs_} s); CPU of all its "
                    f"processes (JVM, Python workers) {r['tree_cpu_s']:.1f} s ({cpus_})"
                )
                continue
            print(
                f"  {name:38s} {r['wall_s']:8.2f} s  {r['rows_per_s']:>10,.0f} rows/s  "
                f"CPU {r['cpu_s']:7.1f} s  peak RSS {r['peak_rss_mb']:,.0f} MB (that process)"
            )
    for key, ratio in summary["ratios"].items():
        cpu = summary["cpu_ratios"].get(key)
        less = f"; {cpu}x less CPU" if cpu is not None else ""
        print(f"  ratio ({key}): ours {ratio}x faster (wall, process start to exit){less}")
    if "spark_pair_ratios" in summary:
        print(f"  ratio (spark) run by run: {summary['spark_pair_ratios']}")
    for key in (
        "max_abs_diff_local",
        "max_abs_diff_compiled_vs_lightgbm",
        "max_abs_diff_spark",
        "max_abs_diff_spark_vs_local",
    ):
        if key in results:
            print(f"  {key}: {results[key]:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
