"""What a challenger in shadow costs the champion: `housing serve` with shadow off vs on.

    .venv/bin/python benchmarks/bench_shadow.py [--config CONFIG] [--rounds 3] [--duration 10]
    make bench-shadow

Two `housing serve` processes (one worker each) serve the same champion and challenger, one
with ``--challenger-mode off`` and one with ``--challenger-mode shadow``, each with its own
SQLite request log. Both stay up; the same load (`wrk` + a Lua script when installed, else
the Python generator of bench_serve.py: 16 connections, one single-row POST /predict)
drives one at a time, interleaved over ``--rounds`` (off, shadow, then shadow, off, ...) so
a change in the machine's load falls on both. Printed: requests/s and p99 of every run,
the medians per mode and the ratios (issue 12's target: p99 with shadow at most 1.2x, and
requests/s at least 70%, of shadow off), plus what the shadow service did (rows scored by
the challenger, dropped, failed) and the machine's load average.

Which models: the config's ``champion`` and ``challenger`` when its registry has both;
otherwise a throwaway store (bench_serve.py's ``make_temp_store``) gets two versions of
the same candidate (default: the hist_gradient_boosting one, fitted twice), the first made
challenger and the second champion, so the challenger costs what the champion does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # type: ignore[import-not-found]  # noqa: E402 - a sibling script
    BIN,
    ROOT,
    ROW,
    drive,
    free_port,
    log,
    make_temp_store,
    stop,
    wait_http,
)

MODES = ("off", "shadow")
LABEL = {"off": "shadow off", "shadow": "shadow on"}


def has_both(settings: Any) -> bool:
    from housing_mlops import registry
    from housing_mlops.errors import ModelError

    try:
        return all(
            registry.get_alias_version(settings, alias) is not None
            for alias in (registry.CHAMPION, registry.CHALLENGER)
        )
    except ModelError:
        return False


def make_store(base: Path, tmp: Path, candidate: str | None) -> Path:
    """A throwaway store: version 1 challenger, version 2 champion (same candidate)."""
    from housing_mlops import registry
    from housing_mlops.config import load_config

    config = make_temp_store(base, tmp, candidate)
    settings = load_config(config)
    first = registry.get_alias_version(settings, registry.CHAMPION)
    assert first is not None
    registry.set_alias(settings, registry.CHALLENGER, first)
    config = make_temp_store(base, tmp, candidate)  # a second fit, now the champion
    return config


def start(config: Path, mode: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp / f"requests-{mode}.db"
    env = {**os.environ, "HOUSING_REQUEST_LOG": str(db)}
    err = (tmp / f"serve-{mode}.log").open("wb")
    cmd = [str(BIN / "housing"), "--config", str(config), "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--challenger-mode", mode], stdout=subprocess.DEVNULL, stderr=err, env=env
    )
    return proc, base, db


def shadow_state(base: str) -> dict[str, Any]:
    import httpx

    info = httpx.get(f"{base}/model/info", timeout=10).json()
    return {
        "mode": info["challenger_mode"],
        "champion": info["version"],
        "challenger": (info.get("challenger") or {}).get("version"),
        **info["shadow"],
    }


def logged(db: Path) -> tuple[int, int]:
    """(answered rows, rows with a shadow prediction) in a request log."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT count(*), count(shadow_prediction) FROM requests WHERE status = 200"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, interleaved")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--temp-store", action="store_true", help="never use the config's store")
    parser.add_argument(
        "--candidate",
        default=None,
        help="candidate fitted twice for the throwaway store (default: hist_gradient_boosting)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    from housing_mlops.config import load_config

    tool = args.loadgen
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    tmp = Path(tempfile.mkdtemp(prefix="housing-bench-shadow-"))
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        config = args.config.resolve()
        if args.temp_store or not has_both(load_config(config)):
            config = make_store(config, tmp, args.candidate)
            store = f"temporary store {tmp}"
        else:
            store = f"the config's store ({load_config(config).mlflow.tracking_uri})"
        for mode in MODES:
            procs[mode] = start(config, mode, tmp)
        for mode, (proc, base, _) in procs.items():
            try:
                wait_http(f"{base}/ready", proc)
            except RuntimeError:
                log((tmp / f"serve-{mode}.log").read_text(errors="replace")[-3000:])
                raise
        state = shadow_state(procs["shadow"][1])
        if state["mode"] != "shadow":
            raise SystemExit(f"bench: the shadow service is not in shadow mode: {state}")
        body = json.dumps(ROW)
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                url = f"{procs[mode][1]}/predict"
                drive(url, body, args.warmup, args.connections, tool, tmp)
                log(f"bench: round {r + 1}/{args.rounds}, {LABEL[mode]}: {args.duration:.0f} s")
                runs[mode].append(drive(url, body, args.duration, args.connections, tool, tmp))
        shadow = shadow_state(procs["shadow"][1])
    finally:
        codes = {mode: stop(proc) for mode, (proc, _, _) in procs.items()}
    # Stopped: every answered row is in its log (the shadow scorer drains first).
    rows = {mode: logged(db) for mode, (_, _, db) in procs.items()}
    shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    summary: dict[str, Any] = {
        "model_store": store,
        "champion": shadow["champion"],
        "challenger": shadow["challenger"],
        "load_generator": tool,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "runs": runs,
        "median": {m: {"rps": median(m, "rps"), "p99_ms": median(m, "p99_ms")} for m in MODES},
        "shadow_service": shadow,
        "logged_rows": {m: {"answered": a, "with_shadow": s} for m, (a, s) in rows.items()},
        "exit_codes": codes,
    }
    off, on = summary["median"]["off"], summary["median"]["shadow"]
    summary["ratio_rps"] = on["rps"] / off["rps"] if off["rps"] else None
    summary["ratio_p99"] = on["p99_ms"] / off["p99_ms"] if off["p99_ms"] else None
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"bench-shadow: {args.connections} connections, {args.rounds} x {args.duration:.0f} s "
        f"per mode (interleaved), {tool}"
    )
    print(
        f"models: champion version {shadow['champion']}, challenger version "
        f"{shadow['challenger']} ({store})"
    )
    print(f"{'run':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for r in range(args.rounds):
        for mode in MODES:
            run = runs[mode][r]
            print(
                f"{f'{LABEL[mode]}, round {r + 1}':<22}{run['rps']:>10.1f}{run['p50_ms']:>10.2f}"
                f"{run['p99_ms']:>10.2f}{run['errors']:>8}"
            )
    for mode in MODES:
        m = summary["median"][mode]
        print(f"{f'{LABEL[mode]}, median':<22}{m['rps']:>10.1f}{'':>10}{m['p99_ms']:>10.2f}")
    print(
        f"ratio shadow on / off: requests/s {summary['ratio_rps']:.0%} (target >= 70%), "
        f"p99 {summary['ratio_p99']:.2f}x (target <= 1.20x)"
    )
    lr = summary["logged_rows"]["shadow"]
    print(
        f"shadow service: {shadow['scored_rows']} rows scored by the challenger in "
        f"{shadow['batches']} calls ({shadow['scored_rows'] / max(shadow['batches'], 1):.1f} "
        "rows per call), "
        f"{shadow['dropped_rows']} dropped (queue full), {shadow['error_rows']} failed; "
        f"request log: {lr['with_shadow']} of {lr['answered']} answered rows carry the "
        "shadow prediction"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (shared with other work: compare the ratios, not the "
        "absolute numbers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
