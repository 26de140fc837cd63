"""Every `housing` subcommand: parse options, call one library function, print the result.

Heavy libraries (mlflow, sklearn, pandas, lightgbm) and the output formatting
(``cli.render``) are imported inside the commands so that ``housing --help`` stays fast.
A command's docstring is its ``--help`` text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from housing_mlops.cli.app import ConfigOpt, JsonOpt, RequestLogOpt, VerboseOpt, app, state


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
    from housing_mlops.cli import render
    from housing_mlops.data import fetch as fetch_archive
    from housing_mlops.errors import UsageError

    if source is not None and not source.strip():  # an unset "$ARCHIVE"
        raise UsageError("--from is empty: give the archive's path or URL")
    settings = state(ctx).settings()
    with render.download_progress("fetch") as progress:
        result = fetch_archive(settings, source=source, force=force, progress=progress)
    render.emit(result, as_json, render.fetch_summary)


# ----------------------------------------------------------------------- featurize
@app.command()
def featurize(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Validate the raw data, split train/test, write data/processed/ and a reference profile."""
    from housing_mlops.cli import render
    from housing_mlops.featurize import featurize as featurize_raw

    result = featurize_raw(state(ctx).settings())
    render.emit(result, as_json, render.featurize_summary)


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
    from housing_mlops.cli import render
    from housing_mlops.output import StageProgress
    from housing_mlops.train import train as train_candidates

    settings = state(ctx).settings()
    with StageProgress("train") as progress:
        rows = train_candidates(settings, only=model, progress=progress)
    render.emit(rows, as_json, render.train_table)


# ------------------------------------------------------------------------ evaluate
@app.command()
def evaluate(
    ctx: typer.Context,
    version: Annotated[
        int | None, typer.Option("--version", metavar="N", min=1, help="Model version.")
    ] = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Every version.")] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Live quality instead: RMSE, MAE, R² per served version and role on the "
            "logged requests that have true values (POST /feedback, `housing feedback`).",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="With --live: requests since 30m, 12h, 7d, 2w or an ISO-8601 time.",
            show_default="every labelled request",
        ),
    ] = None,
    request_log: RequestLogOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Holdout metrics, slices, plots and behavioural checks for registered versions.

    With --live: live RMSE (with its bootstrap interval), MAE and R² per model version and
    role on the labelled requests, and challenger vs champion on the same rows. No
    labelled request yet is not an error: it says so, exit 0.
    """
    from housing_mlops.cli import render
    from housing_mlops.errors import UsageError

    if not live:
        if since is not None or request_log is not None:
            raise UsageError("--since and --request-log go with --live")
        from housing_mlops.evaluate import evaluate as evaluate_versions
        from housing_mlops.output import StageProgress

        settings = state(ctx).settings()
        with StageProgress("evaluate") as progress:
            rows = evaluate_versions(
                settings, version=version, all_versions=all_versions, progress=progress
            )
        render.emit(rows, as_json, render.evaluate_tables)
        return
    if version is not None or all_versions:
        raise UsageError("--live judges every served version: drop --version/--all")
    from housing_mlops.live import live_quality

    result = live_quality(state(ctx).settings(request_log), since)
    render.emit(result, as_json, render.live_quality_tables)


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
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="champion|challenger",
            help="The alias to move. challenger: the best evaluated candidate of the latest "
            "training (or --version N), through the same gate.",
        ),
    ] = "champion",
    from_live: Annotated[
        bool,
        typer.Option(
            "--from-live",
            help="Make the challenger champion if its live RMSE beats the champion's on "
            "comparable labelled rows (promote.min_live_rows, promote.live_confidence).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Move the `champion` alias to the best evaluated candidate if it passes the gate.

    Exit codes: 0 promoted (or would be, --dry-run), 2 conflicting options, 5 nothing to
    promote, an unknown version or --version N that holds the alias already, 6 a gate
    refused (offline, the best candidate is the challenger already, or with --from-live: no
    challenger, too few labelled rows, or not better with the configured confidence).
    """
    from housing_mlops.cli import render

    settings = state(ctx).settings()
    if from_live:
        from housing_mlops.errors import UsageError
        from housing_mlops.promote import promote_from_live

        if version is not None or force or rollback or to != "champion":
            raise UsageError(
                "--from-live cannot be combined with --version, --force, --rollback or --to"
            )
        result = promote_from_live(settings, dry_run=dry_run)
    else:
        from housing_mlops.promote import promote as promote_version

        result = promote_version(
            settings, version=version, dry_run=dry_run, force=force, rollback=rollback, to=to
        )
    render.emit(result, as_json, render.promote_summary)


# ------------------------------------------------------------------------ feedback
@app.command()
def feedback(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="CSV or Parquet with columns request_id, actual ($100k) and optional row_index.",
            show_default=False,
        ),
    ],
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Apply the good rows and report the bad ones (default: any bad row, nothing "
            "applied).",
        ),
    ] = False,
    request_log: RequestLogOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Store true values for logged requests from a file, in one transaction.

    Bad rows: unknown (no answered request with that request_id and row_index), duplicate
    (labelled already, or twice in the file), invalid (empty id, negative row_index,
    non-finite actual). Exit codes: 0 applied, 3 no request log or it cannot be written
    (or a PostgreSQL log that cannot be reached), 4 a bad file, any bad row without
    --skip-bad (nothing applied), or a request log that is not a SQLite database.
    """
    from housing_mlops.cli import render
    from housing_mlops.feedback import apply_feedback_file
    from housing_mlops.output import StageProgress

    settings = state(ctx).settings(request_log)
    with StageProgress("feedback") as progress:
        result = apply_feedback_file(settings, path, skip_bad=skip_bad, progress=progress)
    render.emit(result, as_json, render.feedback_summary)


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
    challenger_mode: Annotated[
        str | None,
        typer.Option(
            "--challenger-mode",
            metavar="off|shadow|canary",
            help="What the @challenger version does: nothing, score every request off the "
            "hot path (logged beside the answer), or answer serve.canary_share of them.",
            show_default="serve.challenger_mode, off",
        ),
    ] = None,
    request_log: RequestLogOpt = None,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the champion model over HTTP (FastAPI on uvicorn)."""
    options = state(ctx)
    settings = options.settings(request_log)
    from housing_mlops.cli import render
    from housing_mlops.serving.server import run_server

    run_server(
        settings,
        host=host,
        port=port,
        workers=workers,
        model_version=model_version,
        config_path=options.config_path,
        on_ready=render.serving_banner,
        challenger_mode=challenger_mode,
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
    request_log: RequestLogOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Compare logged requests with the training data; exit 6 when drift is found.

    Exit codes: 0 nothing marked drift, 2 a malformed --since/--until, 3 a PostgreSQL
    log that cannot be reached, 4 a request log that is not a SQLite database (or is
    damaged), 6 a feature or the prediction marked drift, 7 not enough data (no log, fewer
    than drift.min_rows rows, no reference profile).
    """
    from housing_mlops.cli import render
    from housing_mlops.drift.check import check_drift
    from housing_mlops.errors import DriftFound, UsageError

    if reference is not None and refresh_reference:
        # The refresh would be silently ignored: --reference replaces the stored profile.
        raise UsageError(
            "--refresh-reference refreshes the version's profile from MLflow; with "
            "--reference PATH that profile is not used: drop one of them"
        )
    result: dict[str, Any] = check_drift(
        state(ctx).settings(request_log),
        since,
        until,
        model_version,
        reference_path=reference,
        refresh_reference=refresh_reference,
    )
    render.emit(result, as_json, render.drift_report, to_json=render.drift_json)
    if result["any_drift"]:
        marked = [s["feature"] for s in result["scores"] if s["verdict"] == "drift"]
        raise DriftFound(f"{', '.join(marked)} marked drift (exit 6)")


# -------------------------------------------------------------------------- report
@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", metavar="DIR", help="Output folder.", show_default="paths.reports_dir, reports"
        ),
    ] = None,
    request_log: RequestLogOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write a self-contained HTML report and its Markdown twin."""
    from housing_mlops.cli import render
    from housing_mlops.errors import UsageError
    from housing_mlops.output import StageProgress
    from housing_mlops.report import build_report

    # As a Path, `--out ""` (an unset "$DIR") was ".": the report landed in the current
    # folder without a word.
    if out is not None and not out.strip():
        raise UsageError("--out is empty: give the folder to write the report to")
    settings = state(ctx).settings(request_log)
    with StageProgress("report") as progress:
        result = build_report(
            settings, Path(out) if out is not None else None, progress=progress.stage
        )
    render.emit(result, as_json, render.report_summary)


# ------------------------------------------------------------------------- predict
@app.command()
def predict(
    ctx: typer.Context,
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A CSV or Parquet file, a directory of Parquet parts, or a quoted glob.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Where to write: .parquet or .csv (the extension sets the format).",
            show_default="INPUT with a .predictions.parquet suffix",
        ),
    ] = None,
    model_version: Annotated[
        int | None,
        typer.Option("--model-version", metavar="N", min=1, help="Score with this version."),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", metavar="NAME", help="Score with the version this alias names."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", metavar="local|spark", help="Score in this process, or on Apache Spark."
        ),
    ] = "local",
    spark_master: Annotated[
        str | None,
        typer.Option(
            "--spark-master",
            metavar="URL",
            help="Spark master: local[*], spark://host:7077, yarn, ... (--engine spark).",
            show_default="local[*]",
        ),
    ] = None,
    on_error: Annotated[
        str,
        typer.Option(
            "--on-error",
            metavar="fail|skip",
            help="A row breaking the /predict rules: stop with exit 4 (nothing written), or "
            "skip it and write it with its reasons to --rejects.",
        ),
    ] = "fail",
    rejects: Annotated[
        Path | None,
        typer.Option(
            "--rejects",
            metavar="PATH",
            help="Rejected rows and their reasons (.parquet or .csv; --on-error skip).",
            show_default="OUTPUT with a .rejects suffix",
        ),
    ] = None,
    compile_trees: Annotated[
        str | None,
        typer.Option(
            "--compile",
            metavar="auto|always|never",
            help="Score a LightGBM model's trees as compiled C (same numbers, about 2.7x "
            "faster; built once per model with cc, then cached): auto for inputs of "
            "predict.compile_min_rows rows or when already cached.",
            show_default="predict.compile (auto)",
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score a file with the registered model (@champion), locally or on Apache Spark.

    Every row is checked with the rules of POST /predict. Exit codes: 2 a bad option or an
    output path that cannot be written, 3 the spark extra or Java missing (--engine spark)
    or --compile always on a model or machine that cannot compile its trees,
    4 a missing, empty or malformed input or (with --on-error fail) a row breaking the
    rules, 5 no such model.
    """
    from housing_mlops.cli import render
    from housing_mlops.output import StageProgress
    from housing_mlops.predict import make_job, run

    settings = state(ctx).settings()
    job = make_job(
        input_path,
        output,
        version=model_version,
        alias=alias,
        engine=engine,
        spark_master=spark_master,
        on_error=on_error,
        rejects=rejects,
        compile=compile_trees or settings.predict.compile,
    )
    with StageProgress("predict") as progress:
        result = run(settings, job, progress=progress)
    render.emit(result, as_json, render.predict_summary)
