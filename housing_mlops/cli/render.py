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


# ------------------------------------------------------------------------- promote
def promote_summary(result: Row) -> None:
    if result["dry_run"]:
        outcome = f"dry run: version {result['version']} would become champion"
    else:
        outcome = f"version {result['version']} is now champion"
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
            "time": f"{result['seconds']:.2f} s (scoring {result['scoring_seconds']:.2f} s"
            + (f", {rate:,.0f} rows/s)" if rate is not None else ")"),
        },
        title="housing predict",
    )
