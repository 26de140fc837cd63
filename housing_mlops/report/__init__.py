"""The project report: one self-contained HTML file and its Markdown twin.

``build_report(settings, out_dir)`` gathers, each in its own section:

* the champion: version, candidate, data version, metrics, promotion history (the
  ``promotion_history`` version tag written by ``housing promote``);
* a leaderboard of every registered version with its CV and holdout metrics;
* evaluation of the champion on the test split: predicted vs actual, residuals, error by
  slice (the slices of ``housing evaluate``), permutation feature importance on a test
  subsample;
* the latest drift run (table, reference-vs-current histograms of the columns marked
  drift or warn) and the drift history;
* serving statistics from the request log: requests per day, latency p50/p95/p99, error
  rate, the distribution of predictions;
* champion vs challenger (issue 12): traffic share and latency per role and version, the
  prediction divergence on shadowed rows, and live RMSE (overall, paired on shadowed
  rows, and over time per hour or day) once true values have arrived.

Whatever is missing (no model, no data, no traffic, no drift run) gives a section that
says so and what to run; one failing section never stops the others. Plots are PNGs,
base64-embedded in the HTML (no external CSS, JS or fonts: it opens offline) and written
as files in ``report_files/`` beside the Markdown. Every file is written atomically
(temporary file, then rename), so a reader never sees half a report.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops import files
from housing_mlops.errors import HousingError

if TYPE_CHECKING:
    from housing_mlops.report.sections import Section

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
ASSETS_DIR = "report_files"


def _write_assets(out: Path, sections: list[Section]) -> Path:
    """Write the PNGs into a fresh folder, then swap it in for the old one."""
    final = out / ASSETS_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{ASSETS_DIR}.", dir=out))
    os.chmod(staging, 0o777 & ~files.current_umask())
    for section in sections:
        for image in section.images:
            (staging / image.name).write_bytes(image.png)
    old = None
    if final.exists():
        old = out / f".{ASSETS_DIR}.old-{os.getpid()}-{time.time_ns()}"
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _safe(section: Section, build: Callable[[], Section]) -> Section:
    """Run a section builder; a failure becomes a section that says what went wrong."""
    try:
        return build()
    except HousingError as exc:
        section.status = "empty"
        return section.note(str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken section must not sink the report
        log.warning("report section %r failed", section.key, exc_info=True)
        section.status = "error"
        return section.note(f"This section could not be built: {type(exc).__name__}: {exc}")


def _prepare_out(out: Path, given: bool) -> None:
    """Make sure ``out`` is a folder the report can be written to, before building it.

    Creates it (and missing parents) when needed and proves a file can be created there;
    a real attempt, because root passes os.access on folders it still cannot write
    (/proc, /sys, read-only mounts). On failure the folders made here are removed again
    and a UsageError (``--out``) or ConfigError (``paths.reports_dir``) says so.
    """
    from housing_mlops.errors import ConfigError, UsageError

    name = "--out" if given else "paths.reports_dir"
    error = UsageError if given else ConfigError
    advice = "choose a folder you can write to"
    if out.exists() and not out.is_dir():
        raise error(f"{name} {out} is a file, not a folder: {advice}")
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".report-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
        what = "cannot be created" if made and not out.is_dir() else "is not writable"
        reason = exc.strerror or str(exc)
        raise error(f"{name} {out} {what} ({reason}): {advice}") from None


def build_report(
    settings: Any,
    out_dir: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the HTML report and its Markdown twin; returns their paths and section states.

    ``progress``, when given, is called with a short description as each stage starts
    (MLflow, evaluation, drift, request log, writing): the CLI shows it on stderr.
    """
    from housing_mlops import __version__, store
    from housing_mlops.report import render
    from housing_mlops.report.sections import (
        Section,
        champion_and_leaderboard,
        champion_vs_challenger,
        drift,
        evaluation,
        serving,
    )
    from housing_mlops.timestamps import readable_utc

    def stage(description: str) -> None:
        if progress is not None:
            progress(description)

    # A request log that is not a database is the user's to fix (exit 4), not a section
    # note under an exit 0: check it before anything is built or written.
    store.check_request_log(settings.serve.request_log)
    out = Path(out_dir) if out_dir is not None else Path(settings.paths.reports_dir)
    _prepare_out(out, given=out_dir is not None)

    state: dict[str, Any] = {"champ": None}

    def models() -> Section:
        champion, board, champ = champion_and_leaderboard(settings)
        state["champ"] = champ
        state["board"] = board
        return champion

    stage("reading MLflow: champion and leaderboard")
    champion = _safe(Section("champion", "Champion"), models)
    board = state.get("board")
    if board is None:  # the registry failed: the same message for both sections
        board = Section("leaderboard", "Leaderboard", status=champion.status)
        board.blocks = list(champion.blocks)
    stage("evaluating the champion on the test split and plotting")
    evaluation_section = _safe(
        Section("evaluation", "Evaluation of the champion (test split)"),
        lambda: evaluation(settings, state["champ"]),
    )
    stage("reading drift runs from the request log and plotting")
    drift_section = _safe(Section("drift", "Drift"), lambda: drift(settings))
    stage("reading serving statistics from the request log and plotting")
    serving_section = _safe(Section("serving", "Serving"), lambda: serving(settings))
    stage("reading champion vs challenger and live quality from the request log")
    live_section = _safe(
        Section("live", "Champion vs challenger"), lambda: champion_vs_challenger(settings)
    )
    sections = [champion, board, evaluation_section, drift_section, serving_section, live_section]

    meta = [f"Generated {readable_utc(time.time())} by housing-mlops {__version__}."]
    try:
        from housing_mlops import featurize

        manifest = featurize.read_processed_manifest(settings)
        meta.append(
            f"Data version `{str(manifest.get('raw_content_hash', '?'))[:16]}`: "
            f"{manifest.get('train_rows')} train / {manifest.get('test_rows')} test rows."
        )
    except HousingError:
        meta.append("No processed data yet (`housing featurize`).")
    title = "California Housing: model, drift and serving report"

    stage(f"writing {HTML_NAME}, {MARKDOWN_NAME} and {ASSETS_DIR}/ to {out}")
    assets = _write_assets(out, sections)
    md_path, html_path = out / MARKDOWN_NAME, out / HTML_NAME
    markdown = render.render_markdown(title, meta, sections, ASSETS_DIR)
    files.atomic_write_text(md_path, markdown)
    files.atomic_write_text(html_path, render.render_html(title, meta, sections))
    return {
        "html": html_path,
        "markdown": md_path,
        "assets": assets,
        "images": sum(len(s.images) for s in sections),
        "sections": {s.key: s.status for s in sections},
    }
