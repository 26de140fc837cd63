"""The human account of a drift check: the lines printed under ``housing drift``'s table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from housing_mlops.drift.statistics import PREDICTION


def _names(columns: Sequence[str]) -> str:
    """'MedInc', 'MedInc and the prediction', 'MedInc, AveRooms and the prediction'."""
    words = ["the prediction" if c == PREDICTION else c for c in columns]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The human account of a drift check, printed under the table (one line each).

    ``result`` is check_drift's result (or a stored run with its scores). The lines say
    which columns are marked drift and warn, whether the dataset rule fired and why, the
    verdict with the exit code it gives and the reason, and the notes (sample, other
    versions, stored run id). The exit code follows the same rule as ``housing drift``:
    6 when any column (a feature or the prediction) is marked drift, else 0; dataset drift
    always comes with a column marked drift (``dataset_verdict``), so no line contradicts
    another.
    """
    scores = result.get("scores") or []
    marked = [s["feature"] for s in scores if s.get("verdict") == "drift"]
    warned = [s["feature"] for s in scores if s.get("verdict") == "warn"]
    thresholds = result.get("thresholds") or {}
    drifting = list(result.get("drifting_features") or [])
    hard = list(result.get("hard_limit_features") or [])
    dataset = bool(result.get("dataset_drift"))

    def number(key: str, spec: str = "g") -> str:
        value = thresholds.get(key)
        return "?" if value is None else format(float(value), spec)

    rule = (
        f"{len(drifting)}/{result.get('features', 0)} features drifting, share "
        f"{float(result.get('drift_share') or 0.0):.2f}, threshold {number('drift_share', '.2f')}; "
    )
    if hard:
        rule += f"hard limit passed by {', '.join(hard)}"
    else:
        rule += (
            f"no drifting feature past the hard limits, PSI {number('hard_limit_psi')} or "
            f"Wasserstein {number('hard_limit_wasserstein')}"
        )
    lines = [
        f"Dataset drift: {'YES' if dataset else 'no'} ({rule})",
        f"Columns marked drift: {', '.join(marked) if marked else 'none'}",
    ]
    if warned:
        lines.append(f"Columns marked warn: {', '.join(warned)}")
    if marked:
        verb = "is" if len(marked) == 1 else "are"
        why = f"{_names(marked)} {verb} marked drift"
        if not dataset:
            why += " (a column marked drift fails the check even without dataset drift)"
        lines.append(f"Verdict: drift, exit 6: {why}")
    elif warned:
        lines.append(
            f"Verdict: warn, exit 0: no column is marked drift ({_names(warned)} only warn)"
        )
    else:
        lines.append("Verdict: ok, exit 0: no column is marked drift or warn")

    rows, sampled = result.get("rows"), result.get("sampled_rows")
    if rows is not None and sampled is not None and sampled < rows:
        lines.append(f"Judged on a uniform sample of {sampled} of {rows} rows")
    others = result.get("other_versions") or {}
    if others:
        listed = ", ".join(f"v{v}: {n} rows" for v, n in others.items())
        lines.append(f"Other versions in the window ({listed}): judge them with --model-version N")
    if result.get("run_id") is not None:
        lines.append(f"Stored as drift run {result['run_id']}")
    return lines
