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
  rate, the distribution of predictions.

Whatever is missing (no model, no data, no traffic, no drift run) gives a section that
says so and what to run; one failing section never stops the others. Plots are PNGs,
base64-embedded in the HTML (no external CSS, JS or fonts: it opens offline) and written
as files in ``report_files/`` beside the Markdown. Every file is written atomically
(temporary file, then rename), so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from housing_mlops.errors import HousingError

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
ASSETS_DIR = "report_files"
IMPORTANCE_ROWS = 1000
IMPORTANCE_REPEATS = 3
HISTORY_RUNS = 30


# --------------------------------------------------------------------- building blocks
@dataclass
class Section:
    """One report section, rendered twice (HTML and Markdown) from the same blocks."""

    key: str
    title: str
    status: str = "ok"  # ok | empty | error
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def text(self, value: str) -> Section:
        self.blocks.append(("text", value))
        return self

    def note(self, value: str) -> Section:
        self.blocks.append(("note", value))
        return self

    def heading(self, value: str) -> Section:
        self.blocks.append(("heading", value))
        return self

    def table(self, rows: list[dict[str, Any]], columns: list[str]) -> Section:
        self.blocks.append(("table", (rows, columns)))
        return self

    def image(self, name: str, png: bytes, alt: str) -> Section:
        self.blocks.append(("image", (name, png, alt)))
        return self


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not np.isfinite(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(value)


def _when(ts: float | None) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- sections
def _champion_and_leaderboard(settings: Any) -> tuple[Section, Section, Any]:
    from housing_mlops import registry

    champion = Section("champion", "Champion")
    board = Section("leaderboard", "Leaderboard")
    uri = registry.tracking_uri(settings)
    # A local SQLite store that does not exist holds no model: say so without letting
    # MLflow create (and migrate) an empty database as a side effect of reading.
    no_store = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file()
    versions = [] if no_store else registry.list_versions(settings)
    if not versions:
        msg = "No model is registered yet: run `housing train`, `housing evaluate` and "
        msg += "`housing promote`."
        champion.status = board.status = "empty"
        return champion.note(msg), board.note(msg), None
    champ = next((v for v in versions if "champion" in (v.aliases or ())), None)
    if champ is None:
        champ_alias = registry.get_alias_version(settings, "champion")
        champ = next((v for v in versions if v.version == champ_alias), None)

    rows = []
    for ref in sorted(versions, key=_board_key):
        m = ref.metrics
        rows.append(
            {
                "version": ref.version,
                "candidate": ref.tags.get("candidate", "–"),
                "aliases": ", ".join(ref.aliases) or "–",
                "cv RMSE": _pm(m.get("cv_rmse_mean"), m.get("cv_rmse_std")),
                "cv MAE": m.get("cv_mae_mean"),
                "cv R²": m.get("cv_r2_mean"),
                "holdout RMSE": m.get("holdout_rmse"),
                "holdout MAE": m.get("holdout_mae"),
                "holdout R²": m.get("holdout_r2"),
                "holdout MAPE": m.get("holdout_mape"),
                "data version": (ref.data_version or "–")[:12],
                "created": ref.created_at or "–",
            }
        )
    board.text(
        f"{len(versions)} registered version(s) of `{settings.mlflow.registered_model_name}`, "
        "best holdout RMSE first (versions not yet evaluated last, by CV RMSE)."
    )
    board.table(rows, list(rows[0]))

    if champ is None:
        champion.status = "empty"
        champion.note("No version carries the `champion` alias yet: run `housing promote`.")
        return champion, board, None
    m = champ.metrics
    champion.table(
        [
            {"": "version", "value": champ.version},
            {"": "candidate", "value": champ.tags.get("candidate", "–")},
            {"": "aliases", "value": ", ".join(champ.aliases) or "champion"},
            {"": "data version", "value": champ.data_version or "–"},
            {"": "run id", "value": champ.run_id},
            {"": "registered", "value": champ.created_at or "–"},
            {"": "git commit", "value": champ.tags.get("git_commit", "–")},
        ],
        ["", "value"],
    )
    champion.heading("Metrics")
    metric_rows = [
        {
            "metric": label,
            "cross-validation (train)": _pm(m.get(f"cv_{key}_mean"), m.get(f"cv_{key}_std")),
            "holdout (test)": m.get(f"holdout_{key}"),
        }
        for key, label in (
            ("rmse", "RMSE"),
            ("mae", "MAE"),
            ("r2", "R²"),
            ("mape", "MAPE"),
            ("max_error", "max error"),
        )
        if m.get(f"cv_{key}_mean") is not None or m.get(f"holdout_{key}") is not None
    ]
    if metric_rows:
        champion.table(metric_rows, ["metric", "cross-validation (train)", "holdout (test)"])
        if m.get("holdout_rmse") is None:
            champion.note("Not evaluated on the test split yet: run `housing evaluate`.")
    else:
        champion.note("The champion's run has no metrics recorded.")
    champion.heading("Promotion history")
    history = _promotion_history(versions)
    if history:
        champion.table(history, ["at", "version", "kind", "replaced"])
    else:
        champion.note("No promotion recorded in the version tags.")
    return champion, board, champ


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _board_key(ref: Any) -> tuple[int, float, int]:
    m = ref.metrics
    if m.get("holdout_rmse") is not None:
        return (0, float(m["holdout_rmse"]), int(ref.version))
    cv = m.get("cv_rmse_mean")
    return (1, float(cv) if cv is not None else float("inf"), int(ref.version))


def _promotion_history(versions: list[Any]) -> list[dict[str, Any]]:
    events = []
    for ref in versions:
        try:
            history = json.loads(ref.tags.get("promotion_history", "[]"))
        except ValueError:
            continue
        for entry in history if isinstance(history, list) else []:
            if isinstance(entry, dict):
                events.append(
                    {
                        "at": entry.get("at", "–"),
                        "version": ref.version,
                        "kind": entry.get("kind", "–"),
                        "replaced": entry.get("replaced") or "–",
                    }
                )
    return sorted(events, key=lambda e: str(e["at"]), reverse=True)


def _evaluation(settings: Any, champ: Any) -> Section:
    section = Section("evaluation", "Evaluation of the champion (test split)")
    if champ is None:
        section.status = "empty"
        return section.note("No champion to evaluate yet: run `housing promote`.")
    from housing_mlops import evaluate, featurize, registry

    x_test, y_test = featurize.load_split(settings, "test")
    model = registry.load_model(settings, champ)
    y = y_test.to_numpy(dtype=float)
    pred = np.asarray(model.predict(x_test), dtype=float)
    overall = evaluate.compute_metrics(y, pred)
    section.text(
        f"Version {champ.version} on {len(y)} test rows: RMSE {overall['rmse']:.4f}, "
        f"MAE {overall['mae']:.4f}, R² {overall['r2']:.4f}, "
        f"MAPE {100 * overall['mape']:.1f} %, max error {overall['max_error']:.3f} "
        "(target in $100k)."
    )

    fig = _figure(9.6, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hexbin(y, pred, gridsize=45, mincnt=1, cmap="viridis", bins="log")
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax1.plot([lo, hi], [lo, hi], color="crimson", linewidth=1)
    ax1.set_xlabel("actual ($100k)")
    ax1.set_ylabel("predicted ($100k)")
    ax1.set_title("Predicted vs actual")
    resid = pred - y
    ax2.scatter(pred, resid, s=3, alpha=0.25)
    ax2.axhline(0, color="crimson", linewidth=1)
    ax2.set_xlabel("predicted ($100k)")
    ax2.set_ylabel("residual (predicted − actual)")
    ax2.set_title("Residuals")
    section.image("predicted_vs_actual.png", _png(fig), "Predicted vs actual and residuals")

    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ax.hist(resid, bins=80, color="steelblue")
    ax.axvline(0, color="crimson", linewidth=1)
    ax.set_xlabel("residual ($100k)")
    ax.set_ylabel("rows")
    ax.set_title("Residual distribution")
    section.image("residuals.png", _png(fig), "Residual distribution")

    section.heading("Error by slice")
    slices = evaluate.slice_metrics(y, pred, evaluate.slice_masks(x_test, settings.evaluate))
    slice_rows = [
        {"slice": name, "rows": m["rows"], "RMSE": m["rmse"], "MAE": m["mae"], "R²": m["r2"]}
        for name, m in slices.items()
    ]
    section.table(slice_rows, ["slice", "rows", "RMSE", "MAE", "R²"])
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    names = [r["slice"] for r in slice_rows]
    ax.bar(names, [r["RMSE"] for r in slice_rows], color="slategray")
    ax.axhline(overall["rmse"], color="crimson", linewidth=1, label="overall")
    ax.set_ylabel("RMSE ($100k)")
    ax.set_title("Error by slice")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    section.image("error_by_slice.png", _png(fig), "RMSE by slice")

    section.heading("Permutation feature importance")
    importance = _permutation_importance(model, x_test, y, settings.train.seed)
    section.text(
        f"Increase in RMSE when one raw feature is shuffled ({IMPORTANCE_REPEATS} repeats on a "
        f"random subsample of {min(IMPORTANCE_ROWS, len(y))} test rows); the pipeline's own "
        "feature engineering is included, so this is what the model owes to each input."
    )
    section.table(importance, ["feature", "RMSE increase", "std"])
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ordered = importance[::-1]
    ax.barh(
        [r["feature"] for r in ordered],
        [r["RMSE increase"] for r in ordered],
        xerr=[r["std"] for r in ordered],
        color="darkseagreen",
    )
    ax.set_xlabel("RMSE increase ($100k)")
    ax.set_title("Permutation importance")
    section.image("permutation_importance.png", _png(fig), "Permutation feature importance")
    return section


def _permutation_importance(model: Any, x: Any, y: np.ndarray, seed: int) -> list[dict]:
    from sklearn.inspection import permutation_importance

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(y), size=min(IMPORTANCE_ROWS, len(y)), replace=False))
    result = permutation_importance(
        model,
        x.iloc[take],
        y[take],
        scoring="neg_root_mean_squared_error",
        n_repeats=IMPORTANCE_REPEATS,
        random_state=seed,
        n_jobs=1,
    )
    rows = [
        {"feature": name, "RMSE increase": float(m), "std": float(s)}
        for name, m, s in zip(
            x.columns, result.importances_mean, result.importances_std, strict=True
        )
    ]
    return sorted(rows, key=lambda r: r["RMSE increase"], reverse=True)


def _drift(settings: Any) -> Section:
    from housing_mlops import store

    section = Section("drift", "Drift")
    db = store.open_readonly(settings.serve.request_log)
    if db is None:
        section.status = "empty"
        return section.note(
            f"No request log at {settings.serve.request_log} yet, so no drift run: serve "
            "traffic, then run `housing drift`."
        )
    try:
        latest = store.latest_drift_run(db)
        history = store.drift_history(db, HISTORY_RUNS)
        score_history = _score_history(db, [r["id"] for r in history])
    finally:
        db.close()
    if latest is None:
        section.status = "empty"
        return section.note("No drift run stored yet: run `housing drift --since 7d`.")

    section.text(
        f"Latest run #{latest['id']} at {_when(latest['created_at'])}: model version "
        f"{latest.get('model_version')}, {latest.get('rows')} requests from "
        f"{_when(latest.get('since_ts'))} to {_when(latest.get('until_ts'))}, compared with "
        f"{latest.get('reference')}. Verdict **{latest.get('verdict')}**; dataset drift: "
        f"**{'yes' if latest.get('dataset_drift') else 'no'}** "
        f"({latest.get('drifting')}/{latest.get('features')} features drifting)."
        + (
            f" Judged on a uniform sample of {latest.get('sampled_rows')} rows."
            if (latest.get("sampled_rows") or 0) < (latest.get("rows") or 0)
            else ""
        )
    )
    rows = [
        {
            "feature": s["feature"],
            "rows": s["rows"],
            "ref mean": s["ref_mean"],
            "cur mean": s["cur_mean"],
            "PSI": s["psi"],
            "KS": s["ks"],
            "p": s["ks_pvalue"],
            "Wasserstein": s["wasserstein_norm"],
            "verdict": s["verdict"],
        }
        for s in latest["scores"]
    ]
    section.table(rows, list(rows[0]) if rows else ["feature"])
    flagged = [s for s in latest["scores"] if s["verdict"] in ("drift", "warn") and s.get("hist")]
    if flagged:
        section.heading("Reference vs current (columns marked drift or warn)")
        for score in flagged:
            section.image(
                f"drift_{score['feature']}.png",
                _histogram_png(score),
                f"{score['feature']}: reference vs current",
            )
    else:
        section.note("No column was marked drift or warn in the latest run: nothing to plot.")

    section.heading("Drift history")
    section.table(
        [
            {
                "run": r["id"],
                "at": _when(r["created_at"]),
                "version": r.get("model_version"),
                "rows": r.get("rows"),
                "drifting": ", ".join(r.get("drifting_features") or []) or "–",
                "dataset drift": bool(r.get("dataset_drift")),
                "verdict": r.get("verdict"),
            }
            for r in history
        ],
        ["run", "at", "version", "rows", "drifting", "dataset drift", "verdict"],
    )
    if len(history) > 1:
        section.image("drift_history.png", _history_png(score_history), "Drift history")
    return section


def _score_history(db: Any, run_ids: list[int]) -> dict[str, list[tuple[float, float]]]:
    if not run_ids:
        return {}
    marks = ", ".join("?" * len(run_ids))
    rows = db.execute(
        "SELECT r.created_at, s.feature, s.wasserstein_norm FROM drift_scores s "  # noqa: S608
        f"JOIN drift_runs r ON r.id = s.run_id WHERE r.id IN ({marks}) ORDER BY r.created_at",
        run_ids,
    ).fetchall()
    out: dict[str, list[tuple[float, float]]] = {}
    for created, feature, value in rows:
        if value is not None:
            out.setdefault(feature, []).append((created, value))
    return out


def _histogram_png(score: dict[str, Any]) -> bytes:
    hist = score["hist"]
    edges = np.asarray(hist["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    fig = _figure(6.4, 3.0)
    ax = fig.add_subplot()
    ax.bar(centers, hist["reference"], width=width, alpha=0.55, label="reference (training)")
    ax.bar(centers, hist["current"], width=width, alpha=0.55, label="current (requests)")
    ax.set_title(
        f"{score['feature']}: {score['verdict']} (PSI {_fmt(score.get('psi'))}, "
        f"Wasserstein/std {_fmt(score.get('wasserstein_norm'))})"
    )
    ax.set_xlabel(score["feature"])
    ax.set_ylabel("share of rows")
    ax.legend()
    return _png(fig)


def _history_png(history: dict[str, list[tuple[float, float]]]) -> bytes:
    fig = _figure(7.4, 3.4)
    ax = fig.add_subplot()
    for feature, points in history.items():
        xs = [datetime.fromtimestamp(t, tz=UTC) for t, _ in points]
        ax.plot(xs, [v for _, v in points], marker="o", markersize=3, label=feature)
    ax.axhline(0.1, color="crimson", linewidth=1, linestyle="--", label="drift threshold")
    ax.set_ylabel("Wasserstein / reference std")
    ax.set_title("Normalised Wasserstein distance per run")
    ax.legend(fontsize=7, ncols=2)
    fig.autofmt_xdate()
    return _png(fig)


def _serving(settings: Any) -> Section:
    from housing_mlops import store

    section = Section("serving", "Serving")
    db = store.open_readonly(settings.serve.request_log)
    if db is None:
        section.status = "empty"
        return section.note(
            f"No request log at {settings.serve.request_log}: no traffic yet. Start "
            "`housing serve` and send requests (e.g. `python -m housing_mlops.traffic`)."
        )
    try:
        stats = store.serving_stats(db)
    finally:
        db.close()
    if not stats["rows"]:
        section.status = "empty"
        return section.note("The request log is empty: no traffic yet.")
    lat = stats["latency_ms"]
    section.table(
        [
            {"": "logged rows", "value": stats["rows"]},
            {"": "requests", "value": stats["requests"]},
            {"": "first request", "value": _when(stats["first_ts"])},
            {"": "last request", "value": _when(stats["last_ts"])},
            {"": "error rate (rows)", "value": f"{100 * stats['error_rate']:.2f} %"},
            {"": "latency p50 (ms)", "value": lat.get("p50")},
            {"": "latency p95 (ms)", "value": lat.get("p95")},
            {"": "latency p99 (ms)", "value": lat.get("p99")},
            {
                "": "rows by model version",
                "value": ", ".join(
                    f"v{r['model_version']}: {r['rows']}" for r in stats["by_version"]
                )
                or "–",
            },
        ],
        ["", "value"],
    )
    if lat:
        largest = stats["largest_batch"]
        section.text(
            f"Latency is per request (the server-side time of the whole request), over "
            f"{lat['requests']} requests: a batch of N rows counts once, not N times"
            + (f" (largest batch here: {largest} rows)." if largest > 1 else ".")
        )
    section.heading("Requests per day")
    section.table(stats["per_day"], ["day", "requests", "rows", "errors"])
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot()
    days = [d["day"] for d in stats["per_day"]]
    width = 0.6 if len(days) < 4 else 0.8
    ax.bar(days, [d["rows"] for d in stats["per_day"]], width, color="steelblue", label="rows")
    errors = [d["errors"] or 0 for d in stats["per_day"]]
    ax.bar(days, errors, width, color="crimson", label="errors")
    ax.set_ylabel("rows")
    ax.set_title("Traffic per day (UTC)")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    section.image("requests_per_day.png", _png(fig), "Requests per day")
    predictions = stats["predictions"]
    if predictions.size:
        fig = _figure(6.4, 3.0)
        ax = fig.add_subplot()
        ax.hist(predictions, bins=60, color="darkseagreen")
        ax.set_xlabel("prediction ($100k)")
        ax.set_ylabel("rows")
        ax.set_title(f"Distribution of predictions ({predictions.size} answered rows sampled)")
        section.image("predictions.png", _png(fig), "Distribution of predictions")
    return section


# ---------------------------------------------------------------------------- render
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2733;padding:0 1rem;line-height:1.45}
h1{border-bottom:3px solid #2b6cb0;padding-bottom:.3rem}
h2{margin-top:2.4rem;border-bottom:1px solid #cbd5e0;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #cbd5e0;padding:.25rem .55rem;text-align:right}
th{background:#edf2f7}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#f7fafc}
.note{background:#fffbea;border-left:4px solid #d69e2e;padding:.5rem .8rem}
.drift{color:#c53030;font-weight:bold}.warn{color:#b7791f}.ok{color:#2f855a}
img{max-width:100%;display:block;margin:.6rem 0}
nav a{margin-right:1rem}
code{background:#edf2f7;padding:0 .2rem}
"""


def _inline_md(text: str) -> str:
    """The little Markdown used in texts (`code`, **bold**) as HTML, escaped."""
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _render_html(title: str, meta: list[str], sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>" + "<br>".join(_inline_md(m) for m in meta) + "</p>",
        "<nav>"
        + "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
        + "</nav>",
    ]
    for s in sections:
        parts.append(f'<h2 id="{s.key}">{html.escape(s.title)}</h2>')
        for kind, value in s.blocks:
            if kind == "text":
                parts.append(f"<p>{_inline_md(value)}</p>")
            elif kind == "note":
                parts.append(f'<p class="note">{_inline_md(value)}</p>')
            elif kind == "heading":
                parts.append(f"<h3>{html.escape(value)}</h3>")
            elif kind == "table":
                rows, columns = value
                head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
                body = []
                for row in rows:
                    cells = []
                    for c in columns:
                        text = html.escape(_fmt(row.get(c)))
                        if c == "verdict" and row.get(c) in ("ok", "warn", "drift"):
                            text = f'<span class="{row[c]}">{text}</span>'
                        cells.append(f"<td>{text}</td>")
                    body.append("<tr>" + "".join(cells) + "</tr>")
                parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
            elif kind == "image":
                name, png, alt = value
                data = base64.b64encode(png).decode("ascii")
                parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _render_markdown(title: str, meta: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", "", *[f"{m}  " for m in meta], ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for kind, value in s.blocks:
            if kind == "text":
                lines += [value, ""]
            elif kind == "note":
                lines += [f"> {value}", ""]
            elif kind == "heading":
                lines += [f"### {value}", ""]
            elif kind == "table":
                rows, columns = value
                lines.append("| " + " | ".join(c or " " for c in columns) + " |")
                lines.append("|" + "|".join("---" for _ in columns) + "|")
                lines += [
                    "| " + " | ".join(_md_cell(r.get(c)) for c in columns) + " |" for r in rows
                ]
                lines.append("")
            elif kind == "image":
                name, _, alt = value
                lines += [f"![{alt}]({ASSETS_DIR}/{name})", ""]
    return "\n".join(lines)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_assets(out: Path, sections: list[Section]) -> Path:
    """Write the PNGs into a fresh folder, then swap it in for the old one."""
    final = out / ASSETS_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{ASSETS_DIR}.", dir=out))
    os.chmod(staging, 0o777 & ~_umask())
    for s in sections:
        for kind, value in s.blocks:
            if kind == "image":
                name, png, _ = value
                (staging / name).write_bytes(png)
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
        champion, board, champ = _champion_and_leaderboard(settings)
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
    evaluation = _safe(
        Section("evaluation", "Evaluation of the champion (test split)"),
        lambda: _evaluation(settings, state["champ"]),
    )
    stage("reading drift runs from the request log and plotting")
    drift_section = _safe(Section("drift", "Drift"), lambda: _drift(settings))
    stage("reading serving statistics from the request log and plotting")
    serving = _safe(Section("serving", "Serving"), lambda: _serving(settings))
    sections = [champion, board, evaluation, drift_section, serving]

    meta = [f"Generated {_when(time.time())} by housing-mlops {__version__}."]
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
    _atomic_write(md_path, _render_markdown(title, meta, sections).encode("utf-8"))
    _atomic_write(html_path, _render_html(title, meta, sections).encode("utf-8"))
    return {
        "html": html_path,
        "markdown": md_path,
        "assets": assets,
        "images": sum(1 for s in sections for k, _ in s.blocks if k == "image"),
        "sections": {s.key: s.status for s in sections},
    }
