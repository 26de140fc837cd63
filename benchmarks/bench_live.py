"""Benchmark: the champion-vs-challenger readers over a large request log.

Writes N answered requests (default 1,000,000 over the last day: 90 % answered by the
champion, 60 % of those shadowed by the challenger, 10 % answered by the challenger as a
canary) and true values for a share of them (default 20 %) into a temporary SQLite log
(or an empty PostgreSQL database with ``--pg-url``), then times what reads it:

* ``live_error_sums`` over the last day: what the service's live-quality gauges run every
  ``serve.live_quality_interval_s`` (60 s), in a worker thread;
* ``role_stats`` and ``labelled_rows``: what ``housing report``'s "Champion vs challenger"
  section reads, and the whole section (tables and the live-RMSE plot).

Prints one line per measurement (best of ``--runs``) and a last ``bench-live:`` line. No
target is asserted: the numbers go in the README.

    python benchmarks/bench_live.py [--rows 1000000] [--label-share 0.2] [--runs 3]
    python benchmarks/bench_live.py --pg-url postgresql://user:pw@host/empty_db
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from housing_mlops import columns, store  # noqa: E402

FEATURES = list(columns.FEATURES)
CHUNK = 100_000


def write_log(where: Path | str, n: int, label_share: float, seed: int = 1) -> float:
    """N requests and their labels; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    now = time.time()
    sink = store.open_sink(where)
    labels: list[tuple[str, int, float, float, str]] = []
    try:
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            ts = now - 86_000 + 86_000 * (start + np.arange(size)) / n
            pred = rng.uniform(0.5, 5.0, size)
            actual = pred + rng.normal(0, 0.45, size)
            kind = rng.random(size)
            features = rng.uniform(1.0, 10.0, (size, len(FEATURES)))
            rows = []
            for i in range(size):
                canary = kind[i] < 0.1
                shadowed = not canary and kind[i] < 0.64
                rid = f"r{start + i}"
                rows.append(
                    store.row_values(
                        store.LoggedRequest(
                            ts=float(ts[i]),
                            request_id=rid,
                            row_index=0,
                            model_name="m",
                            model_version="2" if canary else "1",
                            features=features[i].tolist(),
                            prediction=float(pred[i]),
                            latency_ms=float(1.0 + 4.0 * kind[i]),
                            status=200,
                            role="challenger" if canary else "champion",
                            shadow_version="2" if shadowed else None,
                            shadow_prediction=float(pred[i] + 0.05) if shadowed else None,
                        )
                    )
                )
                if kind[i] * 7.919 % 1.0 < label_share:
                    labels.append((rid, 0, float(actual[i]), now, "bench"))
            sink.write(rows)
    finally:
        sink.close()
    conn = store.open_log(where, create=False)
    assert conn is not None
    try:
        with conn:
            conn.executemany(
                "INSERT INTO feedback (request_id, row_index, actual, received_at, source) "
                "VALUES (?, ?, ?, ?, ?)",
                labels,
            )
    finally:
        conn.close()
    return time.perf_counter() - t0


def best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--label-share", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg-url", default=None, help="an empty PostgreSQL database")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        where: Path | str = args.pg_url or Path(tmp) / "requests.db"
        took = write_log(where, args.rows, args.label_share)
        print(f"wrote {args.rows:,} requests and their labels in {took:.1f} s to {where}")

        def read(reader: Callable[..., Any], **kw: Any) -> Any:
            db = store.open_readonly(where)
            assert db is not None
            try:
                return reader(db, **kw)
            finally:
                db.close()

        since = time.time() - 86_400
        sums_s, sums = best_of(args.runs, lambda: read(store.live_error_sums, since_ts=since))
        labelled = sum(s["rows"] for s in sums if s["role"] == "champion")
        print(f"live_error_sums (gauges, last day): {sums_s:.2f} s, {labelled:,} champion labels")
        stats_s, _ = best_of(args.runs, lambda: read(store.role_stats))
        print(f"role_stats (report): {stats_s:.2f} s")
        rows_s, rows = best_of(args.runs, lambda: read(store.labelled_rows))
        print(f"labelled_rows (report): {rows_s:.2f} s, {len(rows):,} rows")

        from housing_mlops.config import load_config
        from housing_mlops.report.sections import champion_vs_challenger

        config = Path(tmp) / "config.yaml"
        config.write_text(
            "train: {candidates: [{name: ridge, estimator: ridge}]}\n"
            f"mlflow: {{tracking_uri: 'sqlite:///{tmp}/mlruns/mlflow.db'}}\n"
            f"serve: {{request_log: '{where}'}}\n"
        )
        settings = load_config(config)
        section_s, section = best_of(1, lambda: champion_vs_challenger(settings))
        print(f"report section 'Champion vs challenger': {section_s:.2f} s ({section.status})")
        print(
            f"bench-live: rows={args.rows} labels={len(rows)} gauges_s={sums_s:.3f} "
            f"role_stats_s={stats_s:.3f} labelled_rows_s={rows_s:.3f} section_s={section_s:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
