"""How each command shows its result on stdout: a Rich table, or JSON under --json.

The library returns plain dicts; this module turns them into what a user reads. Progress
goes to stderr (``output.StageProgress``, ``download_progress``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from housing_mlops.output import (
    StageProgress,
    print_json,
    print_kv,
    print_renderable,
    print_table,
    stderr,
    stdout,
)

Row = dict[str, Any]


def emit(
    result: Any,
    as_json: bool,
    show: Callable[[Any], None],
    to_json: Callable[[Any], Any] | None = None,
) -> None:
    """Print ``result`` as JSON (through ``to_json`` when given) or with ``show``."""
    if as_json:
        print_json(to_json(result) if to_json else result)
    else:
        show(result)


# --------------------------------------------------------------------------- fetch
@contextmanager
def download_progress(title: str) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress hook ``(label, done, total)`` for downloads, on stderr.

    A bar per source on a terminal; elsewhere a line per source, since a bar leaves blank
    lines in logs and pipes. The bar starts on the first byte: a cached fetch shows none.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=stderr,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def on_bar(label: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    lines = StageProgress(title, terminal=False)
    try:
        with lines:
            yield on_bar if stderr.is_terminal else lines
    finally:
        if tasks:
            bar.stop()


def fetch_summary(result: Row) -> None:
    print_kv(
        {
            "archive": result["archive"],
            "archive sha256": result["archive_sha256"],
            "cached": "yes (checksum matched, not downloaded)" if result["cached"] else "no",
            "source": result["source"],
            "parquet": result["parquet"],
            "rows": result["rows"],
            "content hash (data version)": result["content_hash"],
            "manifest": result["manifest"],
        },
        title="housing fetch",
    )


def featurize_summary(result: Row) -> None:
    print_kv(
        {
            "data version (raw content hash)": result["data_version"],
            "train rows": result["train_rows"],
            "test rows": result["test_rows"],
            "split": f"test_size={result['test_size']} seed={result['seed']}",
            "train": result["train_path"],
            "test": result["test_path"],
            "reference profile": result["profile_path"],
            "manifest": result["manifest_path"],
        },
        title="housing featurize",
    )


# --------------------------------------------------------------------------- train
def train_table(rows: list[Row]) -> None:
    table = [
        {
            "candidate": r["candidate"],
            "version": r["version"],
            "cv rmse": f"{r['cv_rmse_mean']:.4f} ± {r['cv_rmse_std']:.4f}",
            "cv mae": f"{r['cv_mae_mean']:.4f}",
            "cv r2": f"{r['cv_r2_mean']:.4f}",
            "fit s": f"{r['fit_time_s']:.1f}",
        }
        for r in rows
    ]
    batch = rows[0]["train_batch"] if rows else "-"
    print_table(
        table,
        ["candidate", "version", "cv rmse", "cv mae", "cv r2", "fit s"],
        title=f"housing train (batch {batch}; next: `housing evaluate`)",
    )


# ------------------------------------------------------------------------ evaluate
def _checks(row: Row) -> str:
    bad = [name for name, c in row["checks"].items() if not c["passed"]]
    return "pass" if not bad else "FAIL: " + ", ".join(bad)


def _versus_champion(row: Row) -> str:
    if row["version"] == row["champion_version"]:
        return "champion"
    return "-" if row["rmse_vs_champion"] is None else f"{row['rmse_vs_champion']:+.4f}"


def evaluate_tables(rows: list[Row]) -> None:
    """One table of holdout metrics, then one table of slices per version."""
    table = [
        {
            **{k: r[k] for k in ("version", "candidate", "rmse", "mae", "r2", "mape")},
            "checks": _checks(r),
            "Δrmse": _versus_champion(r),
        }
        for r in rows
    ]
    champion = rows[0]["champion_version"] if rows else None
    title = "housing evaluate: holdout (test split); Δrmse vs " + (
        f"champion v{champion}" if champion else "champion (none yet)"
    )
    cols = ["version", "candidate", "rmse", "mae", "r2", "mape", "checks", "Δrmse"]
    print_table(table, cols, title=title)
    for r in rows:
        slices = [{"slice": name, **m} for name, m in r["slices"].items()]
        print_table(
            slices,
            ["slice", "rows", "rmse", "mae", "r2", "mape", "max_error"],
            title=f"version {r['version']} ({r['candidate']}) by slice",
        )


def _ci(pair: list[float] | None) -> str | None:
    return None if not pair else f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def live_quality_tables(result: Row) -> None:
    """``evaluate --live``: one row per version and role, then the comparisons."""
    window = f"since {result['since']}" if result["since"] else "all time"
    if not result.get("request_log_exists", True):
        stdout.print(
            f"No request log at {result['request_log']}: no request is logged, so none is "
            "labelled (serve traffic with `housing serve` first, or point serve.request_log, "
            "HOUSING_REQUEST_LOG or --request-log at the log).",
            highlight=False,
            markup=False,
        )
        return
    if not result["labelled_rows"]:
        stdout.print(
            f"No labelled requests in {result['request_log']} ({window}): send true values "
            "with POST /feedback or `housing feedback FILE`, then run this again.",
            highlight=False,
            markup=False,
        )
        return
    level = f"{result['confidence']:.0%}"
    rows = [
        {
            "version": m["model_version"],
            "role": (m["role"] or "-") + (" (shadow)" if m.get("scored") == "shadow" else ""),
            "rows": m["rows"],
            "rmse": m["rmse"],
            f"rmse {level} CI": _ci(m["rmse_ci"]),
            "mae": m["mae"],
            "r2": m["r2"],
            "last request": m["last_ts"],
        }
        for m in result["models"]
    ]
    print_table(
        rows,
        ["version", "role", "rows", "rmse", f"rmse {level} CI", "mae", "r2", "last request"],
        title=f"housing evaluate --live: {result['labelled_rows']} labelled rows ({window}; "
        f"bootstrap of {result['bootstrap_samples']})",
    )
    if result["comparisons"]:
        comparisons = [
            {
                "champion": c["champion_version"],
                "challenger": c["challenger_version"],
                "rows": c["kind"] == "paired"
                and f"{c['rows']} shadowed (same rows)"
                or f"{c['rows']} canary vs {c['champion_rows']}",
                "champion rmse": c["champion_rmse"],
                "challenger rmse": c["challenger_rmse"],
                "difference": c["difference"],
                f"{level} CI": _ci(c["difference_ci"]),
            }
            for c in result["comparisons"]
        ]
        print_table(
            comparisons,
            [
                "champion",
                "challenger",
                "rows",
                "champion rmse",
                "challenger rmse",
                "difference",
                f"{level} CI",
            ],
            title="challenger vs champion (difference = challenger - champion; < 0 is better)",
        )


# ------------------------------------------------------------------------ feedback
def feedback_summary(result: Row) -> None:
    pairs: dict[str, Any] = {
        "file": result["file"],
        "request log": result["request_log"],
        "rows": result["received"],
        "applied": result["applied"],
        "unknown": result["unknown"],
        "duplicate": result["duplicate"],
        "invalid": result["invalid"],
        "seconds": result["seconds"],
    }
    for reason, examples in result["examples"].items():
        for example in examples[:3]:
            pairs[f"{reason}: row {example['position'] + 1}"] = (
                f"{example['request_id']} [{example['row_index']}]: {example['reason']}"
            )
    print_kv(pairs, title="housing feedback")


# ------------------------------------------------------------------------- promote
def promote_summary(result: Row) -> None:
    target = result.get("target", "champion")
    if result["dry_run"]:
        outcome = f"dry run: version {result['version']} would become {target}"
    else:
        outcome = f"version {result['version']} is now {target}"
    pairs = {
        "result": outcome,
        "action": result["action"],
        "reason": result["reason"],
        "newer versions not evaluated": ", ".join(
            str(v) for v in result.get("unevaluated_newer_versions") or []
        )
        or None,
        "champion before": result.get("champion_before"),
        "previous-champion now": result.get("previous_champion_after"),
    }
    if target == "challenger" or result.get("action") == "live":
        pairs["challenger before"] = result.get("challenger_before")
    evidence = result.get("evidence")
    if evidence:
        ci = evidence.get("difference_ci")
        pairs.update(
            {
                "live evidence": f"{evidence['kind']}, {evidence['rows']} rows",
                "challenger live RMSE": evidence.get("challenger_rmse"),
                "champion live RMSE": evidence.get("champion_rmse"),
                "difference": evidence.get("difference"),
                f"{result['confidence']:.0%} CI": f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else None,
            }
        )
    if "metric" in result:
        pairs.update(
            {
                "metric": result["metric"],
                "candidate": result["candidate_value"],
                "champion": result["champion_value"],
            }
        )
    print_kv(pairs, title="housing promote")


# --------------------------------------------------------------------------- serve
def serving_banner(info: Row) -> None:
    mode = info.get("challenger_mode", "off")
    challenger = info.get("challenger_version")
    if mode == "off":
        also = ""
    elif challenger is None:
        also = f"; challenger mode {mode}, but no version has the challenger alias yet"
    else:
        also = f"; challenger version {challenger} in {mode} mode"
    stderr.print(
        f"Serving {info['model']} version {info['version']} at {info['url']} "
        f"({info['workers']} worker(s); docs at {info['url']}/docs; "
        f"request log {info['request_log']}{also}). Ctrl+C to stop."
    )


# --------------------------------------------------------------------------- drift
DRIFT_COLUMNS = ["feature", "rows", "ref mean", "cur mean", "PSI", "KS", "p", "Wasserstein"]
VERDICT_STYLE = {"ok": "green", "warn": "yellow", "drift": "bold red"}


def drift_json(result: Row) -> Row:
    """The drift result without the per-feature histograms (plot data, not a finding)."""
    scores = [{k: v for k, v in s.items() if k != "hist"} for s in result["scores"]]
    return {**result, "scores": scores}


def _drift_row(score: Row) -> Row:
    p = score["ks_pvalue"]
    return {
        "feature": score["feature"],
        "rows": score["rows"],
        "ref mean": f"{score['ref_mean']:.4g}",
        "cur mean": f"{score['cur_mean']:.4g}",
        "PSI": f"{score['psi']:.3f}",
        "KS": f"{score['ks']:.3f}",
        "p": f"{p:.1e}" if p < 1e-3 else f"{p:.3f}",
        "Wasserstein": f"{score['wasserstein_norm']:.3f}",
        "verdict": f"[{VERDICT_STYLE[score['verdict']]}]{score['verdict']}[/]",
    }


def drift_report(result: Row) -> None:
    """The title line, one row per feature with a coloured verdict, then the summary."""
    from rich import box
    from rich.table import Table

    from housing_mlops.drift import summary_lines

    window = result["window"]
    stdout.print(
        f"Drift of model version {result['model_version']}: {result['rows']} requests "
        f"{window['since']} .. {window['until']} vs {result['reference']['source']}",
        highlight=False,
        soft_wrap=True,
    )
    columns = [*DRIFT_COLUMNS, "verdict"]
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
    for col in columns:
        table.add_column(col, no_wrap=True, justify="left" if col == "feature" else "right")
    for row in map(_drift_row, result["scores"]):
        table.add_row(*[str(row[c]) for c in columns])
    print_renderable(table)
    stdout.print("\n".join(summary_lines(result)), highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------- report
def report_summary(result: Row) -> None:
    print_kv(
        {
            "html": result["html"],
            "markdown": result["markdown"],
            "images": f"{result['images']} (embedded; also in {result['assets']})",
            **{f"section {k}": v for k, v in result["sections"].items()},
        },
        title="housing report",
    )


# ------------------------------------------------------------------------- predict
def _trees(trees: Row) -> str:
    if trees.get("evaluator") == "compiled":
        if trees.get("cached"):
            return "compiled (from the cache)"
        return f"compiled (built in {trees.get('compile_seconds', 0):.1f} s, now cached)"
    reason = trees.get("reason")
    return "LightGBM" + (f" ({reason})" if reason else "")


def predict_summary(result: Row) -> None:
    model = result["model"]
    rejects = f" (rejects: {result['rejects']})" if result.get("rejects") else ""
    rate = result.get("rows_per_s")
    print_kv(
        {
            "output": result["output"],
            "rows in": f"{result['rows_in']:,}",
            "scored": f"{result['scored']:,}",
            "rejected": f"{result['rejected']:,}{rejects}",
            "model": f"{model['name']} version {model['version']}"
            + (f" (@{model['alias']})" if model.get("alias") else ""),
            "engine": result["engine"]
            + (f" on {result['spark_master']}" if result.get("spark_master") else ""),
            "trees": _trees(result.get("trees") or {}),
            "time": f"{result['seconds']:.2f} s (scoring {result['scoring_seconds']:.2f} s"
            + (f", {rate:,.0f} rows/s)" if rate is not None else ")"),
        },
        title="housing predict",
    )
