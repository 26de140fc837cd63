"""Ground truth in bulk: `housing feedback FILE` and `housing evaluate --live` on 100,000 rows.

For each backend (SQLite, and PostgreSQL in a throwaway cluster from bench_drift, or
--pg-url): log N answered and shadowed requests, write a CSV of their true values, then time

- ``store.apply_feedback`` in this process (the transaction alone);
- ``housing feedback labels.csv`` in a fresh process (reading the file, checking every row,
  the transaction; the labels are removed first so it applies them again);
- ``housing evaluate --live --json`` (labelled rows read, RMSE/MAE/R² per version and role,
  bootstrap intervals with promote.bootstrap_samples resamples, the paired comparison);
- ``POST /feedback`` through the app (TestClient, in process): 200 requests of one label,
  then one of 100 labels (each request opens its own connection to the log).

Prints one line per measurement and a last ``bench-feedback: key=value ...`` line. Timings
are printed, never asserted (there is no pass/fail here).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_drift import run_cli, throwaway_postgres  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fill_log(location: Any, n: int) -> tuple[list[str], np.ndarray]:
    from housing_mlops import store
    from housing_mlops.store import LoggedRequest

    rng = np.random.default_rng(0)
    actual = rng.uniform(0.5, 5.0, n)
    champion = actual + rng.normal(0, 0.5, n)
    challenger = actual + rng.normal(0, 0.45, n)
    ids = [f"bench-{i:07d}" for i in range(n)]
    now = time.time()
    sink = store.open_sink(location)
    try:
        for start in range(0, n, 20_000):
            sink.write(
                [
                    store.row_values(
                        LoggedRequest(
                            ts=now - n + i,
                            request_id=ids[i],
                            row_index=0,
                            model_name="bench",
                            model_version="1",
                            features=[1.0] * 8,
                            prediction=float(champion[i]),
                            latency_ms=1.0,
                            status=200,
                            role="champion",
                            shadow_version="2",
                            shadow_prediction=float(challenger[i]),
                        )
                    )
                    for i in range(start, min(n, start + 20_000))
                ]
            )
    finally:
        sink.close()
    return ids, actual


def clear_labels(location: Any) -> None:
    from housing_mlops import store

    conn = store.open_log(location, create=False)
    assert conn is not None
    with conn:
        conn.execute("DELETE FROM feedback")
    conn.close()


def measure(name: str, location: Any, n: int, tmp: Path) -> dict[str, float]:
    from housing_mlops import store

    log(f"{name}: logging {n:,} shadowed requests")
    ids, actual = fill_log(location, n)
    labels = list(zip(ids, [0] * n, actual.tolist(), strict=True))
    started = time.perf_counter()
    result = store.apply_feedback(location, labels, source="bench", all_or_nothing=True)
    in_process = time.perf_counter() - started
    assert result.applied == n, result.as_dict()
    log(f"{name}: store.apply_feedback of {n:,} labels: {in_process:.2f} s")

    clear_labels(location)
    csv = tmp / f"labels-{name}.csv"
    csv.write_text(
        "request_id,actual\n"
        + "".join(f"{i},{a!r}\n" for i, a in zip(ids, actual.tolist(), strict=True))
    )
    common = ["--config", str(REPO / "configs" / "default.yaml"), "--request-log", str(location)]
    wall, cpu, rss, code = run_cli(["feedback", str(csv), *common, "--json"])
    assert code == 0, f"housing feedback exited {code}"
    log(
        f"{name}: housing feedback ({n:,} rows CSV): {wall:.2f} s wall, {cpu:.2f} s CPU, "
        f"{rss:.0f} MB"
    )
    live_wall, live_cpu, live_rss, code = run_cli(["evaluate", "--live", *common, "--json"])
    assert code == 0, f"housing evaluate --live exited {code}"
    log(
        f"{name}: housing evaluate --live ({n:,} labelled rows, 2 groups + 1 paired comparison, "
        f"1000 resamples): {live_wall:.2f} s wall, {live_cpu:.2f} s CPU, {live_rss:.0f} MB"
    )
    single_p50, single_p95, batch_ms = api_latency(location, ids, tmp / name)
    log(
        f"{name}: POST /feedback one label p50 {single_p50:.1f} ms, p95 {single_p95:.1f} ms; "
        f"100 labels {batch_ms:.1f} ms"
    )
    return {
        f"{name}_api_single_p50_ms": single_p50,
        f"{name}_api_batch100_ms": batch_ms,
        f"{name}_apply_s": in_process,
        f"{name}_cli_feedback_s": wall,
        f"{name}_evaluate_live_s": live_wall,
    }


def api_latency(location: Any, ids: list[str], tmp: Path) -> tuple[float, float, float]:
    """POST /feedback latencies in ms: (p50, p95 of 200 single labels, one of 100 labels)."""
    import logging
    import os
    import statistics

    import yaml
    from fastapi.testclient import TestClient

    from housing_mlops.config import load_config
    from housing_mlops.serving.app import create_app

    clear_labels(location)
    tmp.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["serve"].update({"request_log": str(location), "reload_interval_s": 0})
    config["serve"]["spool_dir"] = str(tmp / "spool")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    settings = load_config(tmp / "config.yaml")
    os.environ[settings.serve.feedback_token_env] = "bench"
    logging.getLogger("housing_mlops").setLevel(logging.CRITICAL)  # no model: not needed here

    def no_model(version: str | None) -> Any:
        raise RuntimeError("no model in this benchmark")

    app = create_app(settings, None, loader=no_model, alias_version=lambda: None)
    auth = {"authorization": "Bearer bench"}
    times = []
    with TestClient(app) as client:
        for request_id in ids[:200]:
            started = time.perf_counter()
            r = client.post(
                "/feedback", json={"request_id": request_id, "actual": 1.0}, headers=auth
            )
            times.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200 and r.json()["applied"] == 1, r.text
        batch = [{"request_id": i, "actual": 1.0} for i in ids[200:300]]
        started = time.perf_counter()
        r = client.post("/feedback", json=batch, headers=auth)
        batch_ms = (time.perf_counter() - started) * 1000
        assert r.json()["applied"] == 100, r.text
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], batch_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg-url", help="an empty PostgreSQL database instead of a throwaway one")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    results: dict[str, float] = {"rows": float(args.rows)}
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp_name:
        tmp = Path(tmp_name)
        results.update(measure("sqlite", tmp / "requests.db", args.rows, tmp))
        if not args.no_pg:

            @contextlib.contextmanager
            def given(url: str) -> Iterator[str]:
                yield url

            with given(args.pg_url) if args.pg_url else throwaway_postgres() as url:
                results.update(measure("postgresql", url, args.rows, tmp))
    print("bench-feedback: " + " ".join(f"{k}={v:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
