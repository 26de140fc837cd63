"""The ``housing`` command: thin wrappers over the library modules.

Each command parses options, calls one library function and prints the result. Heavy
libraries (mlflow, sklearn, pandas, lightgbm) are imported inside the commands so that
``housing --help`` stays fast. ``run`` is the one place that maps errors to exit codes.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from housing_mlops import __version__
from housing_mlops.errors import (
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    HousingError,
    NotAvailableYet,
)

# Plain Click help and errors (no Rich panels): one `Error:` line is the contract, and
# boolean flags show no `<bool>` metavar.
app = typer.Typer(
    name="housing",
    help="California Housing from raw data to a monitored prediction service.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DEFAULT_CONFIG = Path("configs/default.yaml")
CONFIG_HELP = "YAML config file (default configs/default.yaml)."
VERBOSE_HELP = "Debug logging and tracebacks on errors."


@dataclass
class AppState:
    config_path: Path
    verbose: bool

    def settings(self):  # type: ignore[no-untyped-def]
        from housing_mlops.config import load_config

        return load_config(self.config_path)


def _root_state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):  # invoked without the callback (tests)
        root.obj = AppState(DEFAULT_CONFIG, False)
    return root.obj


def _state(ctx: typer.Context) -> AppState:
    return _root_state(ctx)


def _set_config(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:  # given after the subcommand: wins over the one before it
        _root_state(ctx).config_path = value
    return value


def _set_verbose(ctx: typer.Context, value: bool) -> bool:
    if value:
        _root_state(ctx).verbose = True
        _configure_logging(True)
    return value


# Declared once, accepted by every subcommand too (like DVC's parent parser), so
# `housing train --config x.yaml` and `housing --config x.yaml train` mean the same.
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", metavar="PATH", help=CONFIG_HELP, callback=_set_config),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP, callback=_set_verbose)
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"housing {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        Path,
        typer.Option("--config", "-c", metavar="PATH", help=CONFIG_HELP, show_default=False),
    ] = DEFAULT_CONFIG,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP)] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """California Housing from raw data to a monitored prediction service.

    --config/-c and --verbose/-v work before or after the command:
    `housing train --config configs/default.yaml` = `housing -c configs/default.yaml train`.
    """
    ctx.obj = AppState(config_path=config, verbose=verbose)
    _configure_logging(verbose)


def _configure_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from housing_mlops.output import stderr

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=stderr, show_path=False, rich_tracebacks=verbose)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("housing_mlops").setLevel(logging.DEBUG if verbose else logging.INFO)


def _not_yet(command: str, issue: str) -> None:
    raise NotAvailableYet(f"`housing {command}` is not implemented yet ({issue} has not landed)")


# --------------------------------------------------------------------------- fetch
@app.command()
def fetch(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="PATH_OR_URL",
            help="Local path, file:// or http(s):// URL of the archive (offline route). "
            "Default: $HOUSING_DATA_ARCHIVE, else the configured URLs.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download even if cached.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Download and verify the California Housing archive; write data/raw/."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TransferSpeedColumn,
    )

    from housing_mlops.data import fetch as fetch_archive
    from housing_mlops.output import StageProgress, print_json, print_kv, stderr

    settings = _state(ctx).settings()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=stderr,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def progress(label: str, done: int, total: int | None) -> None:
        if not tasks:  # started on the first byte: a cached fetch shows no bar at all
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    # A bar on a terminal; a line per source elsewhere (a bar leaves blank lines there).
    lines = StageProgress("fetch", terminal=False)
    try:
        with lines:
            hook = progress if stderr.is_terminal else lines
            result = fetch_archive(settings, source=source, force=force, progress=hook)
    finally:
        if tasks:
            bar.stop()
    if as_json:
        print_json(result)
        return
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


# ----------------------------------------------------------------------- featurize
@app.command()
def featurize(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Validate the raw data, split train/test, write data/processed/ and a reference profile."""
    from housing_mlops.data import featurize as featurize_raw
    from housing_mlops.output import print_json, print_kv

    settings = _state(ctx).settings()
    result = featurize_raw(settings)
    if as_json:
        print_json(result)
        return
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
@app.command()
def train(
    ctx: typer.Context,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", metavar="NAME", help="Train only this candidate (repeatable)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Cross-validate and fit every configured candidate; log and register them in MLflow."""
    from housing_mlops.output import StageProgress, print_json, print_table
    from housing_mlops.train import train as train_candidates

    settings = _state(ctx).settings()
    with StageProgress("train") as progress:
        rows = train_candidates(settings, only=model, progress=progress)
    if as_json:
        print_json(rows)
        return
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
@app.command()
def evaluate(
    ctx: typer.Context,
    version: Annotated[
        int | None, typer.Option("--version", metavar="N", min=1, help="Model version.")
    ] = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Every version.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Holdout metrics, slices, plots and behavioural checks for registered versions."""
    from housing_mlops.evaluate import evaluate as evaluate_versions
    from housing_mlops.output import StageProgress, print_json, print_table

    settings = _state(ctx).settings()
    with StageProgress("evaluate") as progress:
        rows = evaluate_versions(
            settings, version=version, all_versions=all_versions, progress=progress
        )
    if as_json:
        print_json(rows)
        return

    def failed(r: dict) -> str:  # type: ignore[type-arg]
        bad = [name for name, c in r["checks"].items() if not c["passed"]]
        return "pass" if not bad else "FAIL: " + ", ".join(bad)

    def versus(r: dict) -> str:  # type: ignore[type-arg]
        if r["version"] == r["champion_version"]:
            return "champion"
        return "-" if r["rmse_vs_champion"] is None else f"{r['rmse_vs_champion']:+.4f}"

    table = [
        {
            **{k: r[k] for k in ("version", "candidate", "rmse", "mae", "r2", "mape")},
            "checks": failed(r),
            "Δrmse": versus(r),
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
@app.command()
def promote(
    ctx: typer.Context,
    version: Annotated[
        int | None, typer.Option("--version", metavar="N", min=1, help="Model version.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Judge, change nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Override the gate.")] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Swap champion and previous-champion.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Move the `champion` alias to the best evaluated candidate if it passes the gate."""
    from housing_mlops.output import print_json, print_kv
    from housing_mlops.promote import promote as promote_version

    settings = _state(ctx).settings()
    result = promote_version(
        settings, version=version, dry_run=dry_run, force=force, rollback=rollback
    )
    if as_json:
        print_json(result)
        return
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
@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Bind address.",
            show_default="serve.host in the config, 127.0.0.1",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            metavar="PORT",
            min=1,
            max=65535,
            help="TCP port, 1-65535.",
            show_default="serve.port in the config, 8000",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            help="Uvicorn worker processes.",
            show_default="serve.workers, 1",
        ),
    ] = None,
    model_version: Annotated[
        int | None,
        typer.Option(
            "--model-version", metavar="N", min=1, help="Serve this version, not @champion."
        ),
    ] = None,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the champion model over HTTP (FastAPI on uvicorn)."""
    state = _state(ctx)
    settings = state.settings()
    from housing_mlops.output import stderr
    from housing_mlops.serving.server import run_server

    def announce(info: dict) -> None:  # type: ignore[type-arg]
        stderr.print(
            f"Serving {info['model']} version {info['version']} at {info['url']} "
            f"({info['workers']} worker(s); docs at {info['url']}/docs; "
            f"request log {info['request_log']}). Ctrl+C to stop."
        )

    run_server(
        settings,
        host=host,
        port=port,
        workers=workers,
        model_version=model_version,
        config_path=state.config_path,
        on_ready=announce,
    )


# --------------------------------------------------------------------------- drift
@app.command()
def drift(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Window start: 30m, 12h, 7d, 2w or ISO-8601.",
            show_default="drift.default_since in the config, 7d",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="WHEN", help="Window end; same forms.", show_default="now"),
    ] = None,
    model_version: Annotated[
        int | None,
        typer.Option(
            "--model-version", metavar="N", min=1, help="Only requests served by this version."
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            metavar="PATH",
            help="Profile JSON to compare with instead of the serving version's training "
            "profile (e.g. data/processed/reference_profile.json).",
        ),
    ] = None,
    refresh_reference: Annotated[
        bool,
        typer.Option(
            "--refresh-reference", help="Fetch the version's training profile from MLflow again."
        ),
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Compare logged requests with the training data; exit 6 when drift is found.

    Exit codes: 0 nothing marked drift, 6 a feature or the prediction marked drift,
    7 not enough data (no log, fewer than drift.min_rows rows, no reference profile).
    """
    from housing_mlops.drift import check_drift, summary_lines
    from housing_mlops.errors import DriftFound
    from housing_mlops.output import print_json, stdout

    settings = _state(ctx).settings()
    result = check_drift(
        settings,
        since,
        until,
        model_version,
        reference_path=reference,
        refresh_reference=refresh_reference,
    )
    if as_json:
        print_json({**result, "scores": [_drop_hist(s) for s in result["scores"]]})
    else:
        colour = {"ok": "green", "warn": "yellow", "drift": "bold red"}
        rows = [
            {
                "feature": s["feature"],
                "rows": s["rows"],
                "ref mean": f"{s['ref_mean']:.4g}",
                "cur mean": f"{s['cur_mean']:.4g}",
                "PSI": f"{s['psi']:.3f}",
                "KS": f"{s['ks']:.3f}",
                "p": f"{s['ks_pvalue']:.1e}" if s["ks_pvalue"] < 1e-3 else f"{s['ks_pvalue']:.3f}",
                "Wasserstein": f"{s['wasserstein_norm']:.3f}",
                "verdict": f"[{colour[s['verdict']]}]{s['verdict']}[/]",
            }
            for s in result["scores"]
        ]
        window = result["window"]
        _print_drift_table(
            rows,
            title=(
                f"Drift of model version {result['model_version']}: {result['rows']} requests "
                f"{window['since']} .. {window['until']} vs {result['reference']['source']}"
            ),
        )
        stdout.print("\n".join(summary_lines(result)), highlight=False, soft_wrap=True)
    if result["any_drift"]:
        marked = [s["feature"] for s in result["scores"] if s["verdict"] == "drift"]
        raise DriftFound(f"{', '.join(marked)} marked drift (exit 6)")


def _print_drift_table(rows: list[dict], title: str) -> None:  # type: ignore[type-arg]
    from rich import box
    from rich.table import Table

    from housing_mlops.output import print_renderable, stdout

    columns = ["feature", "rows", "ref mean", "cur mean", "PSI", "KS", "p", "Wasserstein"]
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
    for col in [*columns, "verdict"]:
        table.add_column(col, no_wrap=True, justify="left" if col == "feature" else "right")
    for row in rows:
        table.add_row(*[str(row[c]) for c in [*columns, "verdict"]])
    stdout.print(title, highlight=False, soft_wrap=True)
    print_renderable(table)


def _drop_hist(score: dict) -> dict:  # type: ignore[type-arg]
    return {k: v for k, v in score.items() if k != "hist"}


# -------------------------------------------------------------------------- report
@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", metavar="DIR", help="Output folder.", show_default="paths.reports_dir, reports"
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write a self-contained HTML report and its Markdown twin."""
    from housing_mlops.output import StageProgress, print_json, print_kv
    from housing_mlops.report import build_report

    settings = _state(ctx).settings()
    with StageProgress("report") as progress:
        result = build_report(settings, out, progress=progress.stage)
    if as_json:
        print_json(result)
    else:
        print_kv(
            {
                "html": result["html"],
                "markdown": result["markdown"],
                "images": f"{result['images']} (embedded; also in {result['assets']})",
                **{f"section {k}": v for k, v in result["sections"].items()},
            },
            title="housing report",
        )


# ---------------------------------------------------------------------- entry point
def _click_exception_types() -> tuple[type[Exception], type[Exception]]:
    """Click's exception base and its usage error (Typer >= 0.29 carries its own Click)."""
    from typer._click.exceptions import ClickException
    from typer._click.exceptions import UsageError as ClickUsageError

    return ClickException, ClickUsageError


def _usage_error_lines(exc: Exception, usage_type: type[Exception]) -> list[str]:
    message = exc.format_message()  # type: ignore[attr-defined]
    lines = [f"Error: {message}"]
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, usage_type) and ctx is not None:
        lines.append(f"Try '{ctx.command_path} -h' for help.")
    return lines


def _print_decision(exc: HousingError, as_json: bool) -> None:
    """A decision (exit 6) prints its object on stdout under --json, then its line."""
    if as_json and exc.payload is not None:
        from housing_mlops.output import print_json

        print_json(exc.payload)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: the one place errors become exit codes.

    Every failure is one line on stderr, `Error: ...` (a usage error adds a
    `Try 'housing X -h' for help.` hint), and a documented exit code. A decision that is
    not a failure (the gate refusing, drift found) prints its own label instead.
    """
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in args)
    as_json = "--json" in args
    click_error, click_usage_error = _click_exception_types()
    try:
        result = command.main(args=args, prog_name="housing", standalone_mode=False)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except click_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `housing`: the help, exit 0
            print(exc.format_message())  # type: ignore[attr-defined]
            return EXIT_OK
        print("\n".join(_usage_error_lines(exc, click_usage_error)), file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    except HousingError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        _print_decision(exc, as_json)
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if type(exc).__name__ == "Abort":  # Click's abort (Ctrl+D at a prompt)
            print("Error: aborted", file=sys.stderr)
            return 130
        if verbose:
            import traceback

            traceback.print_exc()
        print(
            f"Error: unexpected {type(exc).__name__}: {exc} (rerun with -v for the traceback)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    # Without standalone mode Click returns typer.Exit's code (or the command's None).
    return result if isinstance(result, int) else EXIT_OK


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
