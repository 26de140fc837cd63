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
says so and what to run; one failing section never stops the others, except a request log
that is not a usable database: exit 4, as for every reader of the log. Plots are PNGs,
base64-embedded in the HTML (no external CSS, JS or fonts: it opens offline) and written
as files in ``report_files/`` beside the Markdown. Everything is written into a staging
folder first and renamed into place at the end, so a reader never sees half a report and
a failed write leaves the previous one as it was.
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

from housing_mlops.errors import HousingError, UnusableLogError

if TYPE_CHECKING:
    from housing_mlops.report.page import Section

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
ASSETS_DIR = "report_files"


def _write_report(out: Path, sections: list[Section], markdown: str, html: str) -> Path:
    """Write the PNGs, the Markdown and the HTML into a staging folder in ``out``, then swap
    them in at the end (the assets, then the Markdown, then the HTML that embeds them): a
    failure on the way leaves the previous report as it was and no staging behind."""
    staging = Path(tempfile.mkdtemp(prefix=f".{ASSETS_DIR}.", dir=out))
    try:
        assets = staging / ASSETS_DIR
        assets.mkdir()  # its mode follows the umask, as a folder made by the user
        for section in sections:
            for image in section.images:
                (assets / image.name).write_bytes(image.png)
        for name, text in ((MARKDOWN_NAME, markdown), (HTML_NAME, html)):
            (staging / name).write_text(text, encoding="utf-8")  # mode: the umask's
        final = out / ASSETS_DIR
        old = None
        if final.exists():
            old = out / f".{ASSETS_DIR}.old-{os.getpid()}-{time.time_ns()}"
            final.rename(old)
        try:
            assets.rename(final)
        except OSError:
            if old is not None:
                old.rename(final)
            raise
        os.replace(staging / MARKDOWN_NAME, out / MARKDOWN_NAME)
        os.replace(staging / HTML_NAME, out / HTML_NAME)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _safe(section: Section, build: Callable[[], Section]) -> Section:
    """Run a section builder; a failure becomes a section that says what went wrong.

    Except a request log that is not a usable database (damaged past the pages the
    up-front check reads): exit 4 like every other reader, before anything is written.
    """
    try:
        return build()
    except UnusableLogError:
        raise
    except HousingError as exc:
        section.status = "empty"
        return section.note(str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken section must not sink the report
        log.warning("report section %r failed", section.key, exc_info=True)
        section.status = "error"
        return section.note(f"This section could not be built: {type(exc).__name__}: {exc}")


def _out_error(given: bool) -> tuple[str, type[HousingError]]:
    """The option that named the folder and its error: --out is usage (exit 2), the
    config's paths.reports_dir is config (exit 3)."""
    from housing_mlops.errors import ConfigError, UsageError

    return ("--out", UsageError) if given else ("paths.reports_dir", ConfigError)


def _prepare_out(out: Path, given: bool) -> list[Path]:
    """Make sure ``out`` is a folder the report can be written to, before building it.

    Creates it (and missing parents) when needed and proves a file can be created there
    (returns the folders it made, deepest first);
    a real attempt, because root passes os.access on folders it still cannot write
    (/proc, /sys, read-only mounts). On failure the folders made here are removed again
    and a UsageError (``--out``) or ConfigError (``paths.reports_dir``) says so.
    """
    name, error = _out_error(given)
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
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Take back the folders ``_prepare_out`` made (deepest first), if still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _sections(settings: Any, stage: Callable[[str], None]) -> list[Section]:
    """Build every section in order, naming each stage as it starts."""
    from housing_mlops.report.page import Section
    from housing_mlops.report.sections import (
        champion_and_leaderboard,
        champion_vs_challenger,
        drift,
        evaluation,
        serving,
    )

    state: dict[str, Any] = {"champ": None}

    def models() -> Section:
        champion, board, champ = champion_and_leaderboard(settings)
        state["champ"] = champ
        state["board"] = board
        return champion

    stage("reading MLflow: champion and leaderboard")
    champion = _safe(Section("champion", "Champion"), models)
    board = state.get("board")
    evaluation_section = Section("evaluation", "Evaluation of the champion (test split)")
    if board is None:
        # The registry failed: the same message for the sections that need it, not
        # "No champion to evaluate yet: run `housing promote`" under a champion it hides.
        board = Section("leaderboard", "Leaderboard", status=champion.status)
        evaluation_section.status = champion.status
        board.blocks = list(champion.blocks)
        evaluation_section.blocks = list(champion.blocks)
    else:
        stage("evaluating the champion on the test split and plotting")
        evaluation_section = _safe(evaluation_section, lambda: evaluation(settings, state["champ"]))
    stage("reading drift runs from the request log and plotting")
    drift_section = _safe(Section("drift", "Drift"), lambda: drift(settings))
    stage("reading serving statistics from the request log and plotting")
    serving_section = _safe(Section("serving", "Serving"), lambda: serving(settings))
    stage("reading champion vs challenger and live quality from the request log")
    live_section = _safe(
        Section("live", "Champion vs challenger"), lambda: champion_vs_challenger(settings)
    )
    return [champion, board, evaluation_section, drift_section, serving_section, live_section]


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
    from housing_mlops.timestamps import readable_utc

    def stage(description: str) -> None:
        if progress is not None:
            progress(description)

    # A request log that is not a database is the user's to fix (exit 4), not a section
    # note under an exit 0: check it before anything is built or written.
    store.check_request_log(settings.serve.request_log)
    out = Path(out_dir) if out_dir is not None else Path(settings.paths.reports_dir)
    made = _prepare_out(out, given=out_dir is not None)
    try:
        sections = _sections(settings, stage)
    except UnusableLogError:  # damaged past what check_request_log reads: exit 4, no trace
        _remove_empty(made)
        raise

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
    md_path, html_path = out / MARKDOWN_NAME, out / HTML_NAME
    markdown = render.render_markdown(title, meta, sections, ASSETS_DIR)
    html = render.render_html(title, meta, sections)
    try:
        assets = _write_report(out, sections, markdown, html)
    except OSError as exc:  # a full disk, a folder that changed under us
        name, error = _out_error(out_dir is not None)
        raise error(
            f"cannot write the report to {name} {out} ({exc.strerror or exc}): nothing was "
            "replaced; free space or choose a folder you can write to"
        ) from None
    return {
        "html": html_path,
        "markdown": md_path,
        "assets": assets,
        "images": sum(len(s.images) for s in sections),
        "sections": {s.key: s.status for s in sections},
    }
