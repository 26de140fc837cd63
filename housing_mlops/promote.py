"""Gated promotion through registry aliases.

``should_promote`` is the pure, config-driven gate (``promote:`` section):

1. the candidate has holdout metrics (``housing evaluate`` ran) and passed its behavioural
   checks;
2. absolute thresholds: ``holdout_rmse <= max_rmse`` and ``holdout_r2 >= min_r2``;
3. if there is a champion with holdout metrics, the candidate beats it on ``metric``
   (rmse/mae: lower is better, r2: higher is better) by at least ``min_improvement`` and
   by more than zero, so a tie never churns the alias.

``promote`` picks the best evaluated version that is not the champion (by ``metric``),
asks the gate and on success moves ``champion`` to it and the old champion to
``previous-champion``. ``--rollback`` swaps those two aliases; ``--version N --force`` is
the human override, recorded on the version as ``promoted_by_force``/``forced_at`` tags.
Each promotion also sets ``promoted_at``/``promotion_kind`` and appends to the version's
``promotion_history`` tag (JSON list), which the report shows.

The result is one decision object (version, action, reason, metric, candidate and champion
values, dry_run, promoted, ...); a refusal raises ``GateRejected`` carrying that same object
as its ``payload``. Newer registered versions that were never evaluated are not candidates:
``unevaluated_newer_versions`` lists them and the reason says so, so a dry run does not
silently judge an old batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import GateRejected, ModelError, UsageError
from housing_mlops.timestamps import iso_utc

if TYPE_CHECKING:  # pragma: no cover
    from housing_mlops.config import PromoteConfig, Settings
    from housing_mlops.registry import ModelRef

LOWER_IS_BETTER = {"rmse": True, "mae": True, "r2": False}
HISTORY_LIMIT = 20


@dataclass(frozen=True)
class Decision:
    passed: bool
    reason: str
    metric: str
    candidate_value: float | None
    champion_value: float | None = None


def _get(metrics: Mapping[str, float] | None, name: str) -> float | None:
    if not metrics:
        return None
    value = metrics.get(f"holdout_{name}")
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def should_promote(
    candidate_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    promote_cfg: PromoteConfig,
) -> Decision:
    """The gate: absolute thresholds, then a strict improvement over the champion.

    Metrics are keyed like the MLflow run (``holdout_rmse``, ``holdout_r2``, ...).
    """
    metric = promote_cfg.metric
    value = _get(candidate_metrics, metric)
    rmse = _get(candidate_metrics, "rmse")
    r2 = _get(candidate_metrics, "r2")
    if value is None or rmse is None or r2 is None:
        return Decision(False, "no holdout metrics: run `housing evaluate` first", metric, value)
    if candidate_metrics.get("holdout_checks_passed") == 0.0:
        return Decision(
            False,
            "behavioural checks failed (see evaluation/checks.json in its run)",
            metric,
            value,
        )
    if rmse > promote_cfg.max_rmse:
        return Decision(
            False,
            f"holdout_rmse {rmse:.4f} is above the limit {promote_cfg.max_rmse:.4f} "
            "(rule: holdout_rmse <= promote.max_rmse)",
            metric,
            value,
        )
    if r2 < promote_cfg.min_r2:
        return Decision(
            False,
            f"holdout_r2 {r2:.4f} is below the limit {promote_cfg.min_r2:.4f} "
            "(rule: holdout_r2 >= promote.min_r2)",
            metric,
            value,
        )
    absolute = (
        f"holdout_rmse {rmse:.4f} <= {promote_cfg.max_rmse:.4f} and "
        f"holdout_r2 {r2:.4f} >= {promote_cfg.min_r2:.4f}"
    )
    champion = _get(champion_metrics, metric)
    if champion is None:
        why = "no champion yet" if not champion_metrics else "the champion has no holdout metric"
        return Decision(True, f"{why}; passes the thresholds: {absolute}", metric, value)
    lower = LOWER_IS_BETTER[metric]
    improvement = champion - value if lower else value - champion
    margin = promote_cfg.min_improvement
    direction = "champion - candidate" if lower else "candidate - champion"
    rule = (
        f"rule: {direction} holdout_{metric} must be > 0 and >= promote.min_improvement {margin:g}"
    )
    if improvement > 0 and improvement >= margin:
        return Decision(
            True,
            f"holdout_{metric} {value:.4f} beats the champion's {champion:.4f} by "
            f"{improvement:.4f} ({rule}); {absolute}",
            metric,
            value,
            champion,
        )
    return Decision(
        False,
        f"holdout_{metric} {value:.4f} does not beat the champion's {champion:.4f} "
        f"(improvement {improvement:+.4f}; {rule})",
        metric,
        value,
        champion,
    )


def _evaluated(ref: ModelRef) -> bool:
    return ref.tags.get("evaluated") == "true" and "holdout_rmse" in ref.metrics


def _best(refs: list[ModelRef], metric: str) -> ModelRef:
    lower = LOWER_IS_BETTER[metric]

    def key(ref: ModelRef) -> tuple[float, int]:
        value = ref.metrics.get(f"holdout_{metric}", math.inf if lower else -math.inf)
        # Best metric first; on a tie the newest version wins.
        return (value if lower else -value, -int(ref.version))

    return min(refs, key=key)


def _history_tag(ref: ModelRef, entry: dict[str, Any]) -> str:
    try:
        history = json.loads(ref.tags.get("promotion_history", "[]"))
        if not isinstance(history, list):
            history = []
    except ValueError:
        history = []
    history.append(entry)
    return json.dumps(history[-HISTORY_LIMIT:], separators=(",", ":"))


def _label(ref: ModelRef) -> str:
    return f"version {ref.version} ({ref.tags.get('candidate', '?')})"


def _rollback(settings: Settings, dry_run: bool) -> dict[str, Any]:
    from housing_mlops import registry

    champion = registry.get_alias_version(settings, registry.CHAMPION)
    previous = registry.get_alias_version(settings, registry.PREVIOUS_CHAMPION)
    if previous is None:
        raise ModelError(
            f"nothing to roll back to: no version has the alias '{registry.PREVIOUS_CHAMPION}'"
        )
    result = {
        "action": "rollback",
        "promoted": not dry_run,
        "dry_run": dry_run,
        "version": previous,
        "champion_before": champion,
        "champion_after": previous,
        "previous_champion_after": champion,
        "reason": f"rollback: version {previous} back to champion, version {champion} set aside",
    }
    if dry_run:
        return result
    now = iso_utc()
    ref = registry.resolve(settings, version=int(previous))
    registry.set_alias(settings, registry.CHAMPION, previous)
    if champion is not None:
        registry.set_alias(settings, registry.PREVIOUS_CHAMPION, champion)
        registry.set_version_tags(settings, champion, {"demoted_at": now})
    else:
        registry.delete_alias(settings, registry.PREVIOUS_CHAMPION)
    registry.set_version_tags(
        settings,
        previous,
        {
            "promoted_at": now,
            "promotion_kind": "rollback",
            "promotion_history": _history_tag(
                ref, {"at": now, "kind": "rollback", "replaced": champion}
            ),
        },
    )
    return result


def promote(
    settings: Settings,
    version: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    rollback: bool = False,
) -> dict[str, Any]:
    """Move ``champion`` to the best evaluated candidate if the gate passes.

    Raises GateRejected (exit 6) when the gate says no, with the decision object (the
    dict a success returns, ``promoted`` false) as its payload; ModelError when there is
    nothing to promote or the version is unknown.
    """
    from housing_mlops import registry

    if rollback:
        if version is not None or force:
            raise UsageError("--rollback cannot be combined with --version or --force")
        return _rollback(settings, dry_run)
    if force and version is None:
        raise UsageError("--force needs --version N: the override is for one chosen version")

    refs = registry.list_versions(settings)
    if not refs:
        raise ModelError("no trained model versions: run `housing train` first")
    champion_version = registry.get_alias_version(settings, registry.CHAMPION)
    champion = next((r for r in refs if r.version == champion_version), None)
    metric = settings.promote.metric

    if version is not None:
        candidate = next((r for r in refs if r.version == str(version)), None)
        if candidate is None:
            known = ", ".join(r.version for r in refs)
            raise ModelError(f"no model version {version} (registered versions: {known})")
        if candidate.version == champion_version:
            raise ModelError(f"version {version} is already the champion")
        if not force and not _evaluated(candidate):
            raise ModelError(
                f"version {version} has not been evaluated: run "
                f"`housing evaluate --version {version}` first"
            )
    else:
        pool = [r for r in refs if _evaluated(r) and r.version != champion_version]
        if not pool:
            if champion is not None and _evaluated(champion):
                raise ModelError(
                    f"no evaluated candidate besides the champion (version {champion_version}): "
                    "run `housing train` and `housing evaluate` first"
                )
            raise ModelError("no evaluated candidate: run `housing evaluate` first")
        candidate = _best(pool, metric)

    decision = should_promote(
        candidate.metrics, champion.metrics if champion is not None else None, settings.promote
    )
    # The gate judged only evaluated versions: say so when newer ones were left out.
    unevaluated = [
        r.version
        for r in refs
        if int(r.version) > int(candidate.version)
        and r.version != champion_version
        and not _evaluated(r)
    ]
    notes = []
    if unevaluated:
        which = ", ".join(unevaluated)
        notes.append(
            f"newer version{'s' if len(unevaluated) > 1 else ''} {which} not evaluated, so "
            "not considered: run `housing evaluate --all` first to include "
            f"{'them' if len(unevaluated) > 1 else 'it'}"
        )
    reason = "; ".join([decision.reason, *(f"note: {n}" for n in notes)])
    result: dict[str, Any] = {
        "action": "force" if force else "gate",
        "version": candidate.version,
        "candidate": candidate.tags.get("candidate"),
        "metric": f"holdout_{metric}",
        "candidate_value": decision.candidate_value,
        "champion_value": decision.champion_value,
        "gate_passed": decision.passed,
        "reason": reason,
        "champion_before": champion_version,
        "dry_run": dry_run,
        "decision": asdict(decision),
        "unevaluated_newer_versions": unevaluated,
        "notes": notes,
    }
    if not decision.passed and not force:
        against = f" against champion version {champion_version}" if champion else ""
        prefix = "dry run: " if dry_run else ""
        raise GateRejected(
            f"{prefix}{_label(candidate)} not promoted{against}: {reason}",
            payload={**result, "promoted": False, "champion_after": champion_version},
        )
    if dry_run:
        return {**result, "promoted": False, "champion_after": champion_version}

    now = iso_utc()
    if champion_version is not None:
        registry.set_alias(settings, registry.PREVIOUS_CHAMPION, champion_version)
        registry.set_version_tags(settings, champion_version, {"demoted_at": now})
    registry.set_alias(settings, registry.CHAMPION, candidate.version)
    tags: dict[str, Any] = {
        "promoted_at": now,
        "promotion_kind": "force" if force else "gate",
        "promotion_reason": decision.reason[:500],
        "promotion_history": _history_tag(
            candidate,
            {"at": now, "kind": "force" if force else "gate", "replaced": champion_version},
        ),
    }
    if force:
        tags.update(
            {
                "promoted_by_force": "true",
                "forced_at": now,
                "forced_gate_result": "passed" if decision.passed else "rejected",
            }
        )
    registry.set_version_tags(settings, candidate.version, tags)
    return {
        **result,
        "promoted": True,
        "champion_after": candidate.version,
        "previous_champion_after": champion_version,
    }
