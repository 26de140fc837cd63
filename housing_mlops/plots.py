"""Every chart the project draws, as PNG bytes: the only module that imports matplotlib.

The report embeds these charts; ``housing evaluate`` logs the predicted-vs-actual and
residual charts of each version to its MLflow run (the same functions, with the version
named in a title above them). Figures are drawn on the Agg canvas directly (no pyplot,
no global state, no display needed).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

# The normalised Wasserstein distance at which the default config marks drift (a guide
# line in the drift-history chart).
DRIFT_LINE = 0.1


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


def predicted_vs_actual_png(y_true: Any, y_pred: Any, title: str | None = None) -> bytes:
    """Predicted vs actual (hexbin, log counts) beside residuals vs predicted."""
    y = np.asarray(y_true, dtype=float)
    pred = np.asarray(y_pred, dtype=float)
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
    if title:
        fig.suptitle(title)
    return _png(fig)


def residual_histogram_png(y_true: Any, y_pred: Any, title: str | None = None) -> bytes:
    """The distribution of residuals (predicted − actual)."""
    resid = np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ax.hist(resid, bins=80, color="steelblue")
    ax.axvline(0, color="crimson", linewidth=1)
    ax.set_xlabel("residual ($100k)")
    ax.set_ylabel("rows")
    ax.set_title("Residual distribution")
    if title:
        fig.suptitle(title)
    return _png(fig)


def error_by_slice_png(names: Sequence[str], rmse: Sequence[float], overall: float) -> bytes:
    """RMSE per slice as bars, the overall RMSE as a line."""
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    ax.bar(list(names), list(rmse), color="slategray")
    ax.axhline(overall, color="crimson", linewidth=1, label="overall")
    ax.set_ylabel("RMSE ($100k)")
    ax.set_title("Error by slice")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    return _png(fig)


def permutation_importance_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Horizontal bars of RMSE increase (with std) per feature, the largest on top."""
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ordered = list(rows)[::-1]
    ax.barh(
        [r["feature"] for r in ordered],
        [r["RMSE increase"] for r in ordered],
        xerr=[r["std"] for r in ordered],
        color="darkseagreen",
    )
    ax.set_xlabel("RMSE increase ($100k)")
    ax.set_title("Permutation importance")
    return _png(fig)


def drift_histogram_png(feature: str, hist: Mapping[str, Any], title: str) -> bytes:
    """Reference vs current shares on the bins a drift check stored for one column."""
    edges = np.asarray(hist["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    fig = _figure(6.4, 3.0)
    ax = fig.add_subplot()
    ax.bar(centers, hist["reference"], width=width, alpha=0.55, label="reference (training)")
    ax.bar(centers, hist["current"], width=width, alpha=0.55, label="current (requests)")
    ax.set_title(title)
    ax.set_xlabel(feature)
    ax.set_ylabel("share of rows")
    ax.legend()
    return _png(fig)


def drift_history_png(history: Mapping[str, Sequence[tuple[float, float]]]) -> bytes:
    """Normalised Wasserstein distance per feature over the stored drift runs."""
    fig = _figure(7.4, 3.4)
    ax = fig.add_subplot()
    for feature, points in history.items():
        xs = [datetime.fromtimestamp(t, tz=UTC) for t, _ in points]
        ax.plot(xs, [v for _, v in points], marker="o", markersize=3, label=feature)
    ax.axhline(DRIFT_LINE, color="crimson", linewidth=1, linestyle="--", label="drift threshold")
    ax.set_ylabel("Wasserstein / reference std")
    ax.set_title("Normalised Wasserstein distance per run")
    ax.legend(fontsize=7, ncols=2)
    fig.autofmt_xdate()
    return _png(fig)


def requests_per_day_png(per_day: Sequence[Mapping[str, Any]]) -> bytes:
    """Logged rows and errors per UTC day."""
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot()
    days = [d["day"] for d in per_day]
    width = 0.6 if len(days) < 4 else 0.8
    ax.bar(days, [d["rows"] for d in per_day], width, color="steelblue", label="rows")
    errors = [d["errors"] or 0 for d in per_day]
    ax.bar(days, errors, width, color="crimson", label="errors")
    ax.set_ylabel("rows")
    ax.set_title("Traffic per day (UTC)")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    return _png(fig)


def predictions_png(predictions: np.ndarray) -> bytes:
    """The distribution of the predictions answered (a sample of them)."""
    fig = _figure(6.4, 3.0)
    ax = fig.add_subplot()
    ax.hist(predictions, bins=60, color="darkseagreen")
    ax.set_xlabel("prediction ($100k)")
    ax.set_ylabel("rows")
    ax.set_title(f"Distribution of predictions ({predictions.size} answered rows sampled)")
    return _png(fig)


def live_rmse_png(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    holdout: Mapping[str, float],
    bucket: str,
) -> bytes:
    """Live RMSE per model over time (one line per role/version), holdout RMSE dashed.

    ``series`` maps a label (e.g. ``champion v3``) to buckets ``{start, rows, rmse}``;
    ``holdout`` maps the same labels to the version's offline holdout RMSE.
    """
    fig = _figure(7.4, 3.4)
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(series.items()):
        color = f"C{i}"
        xs = [datetime.fromtimestamp(p["start"], tz=UTC) for p in points]
        ax.plot(xs, [p["rmse"] for p in points], marker="o", markersize=3, color=color, label=label)
        if label in holdout:
            ax.axhline(
                holdout[label],
                color=color,
                linewidth=1,
                linestyle="--",
                label=f"{label} holdout",
            )
    ax.set_ylabel("RMSE ($100k)")
    ax.set_title(f"Live RMSE per {bucket} (labelled requests, by request time, UTC)")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return _png(fig)
