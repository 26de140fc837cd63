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

``promote(settings, to="challenger")`` moves the ``challenger`` alias instead, through the
same gate (the service then runs it in shadow or canary); without ``--version`` the
candidate is the best evaluated version of the latest training (``train_batch``) that is
not the champion.

``promote_from_live`` is the live gate (``housing promote --from-live``): the challenger
becomes champion only with at least ``promote.min_live_rows`` labelled rows compared with
the champion on comparable rows (paired on shadowed rows, else its canary answers against
the champion's of the same period, see ``live``), and only when the upper end of the
``promote.live_confidence`` bootstrap interval of ``RMSE_challenger - RMSE_champion`` is
below zero. The decision and its evidence go into tags on both versions either way
(``live_decision``); a promotion moves ``champion`` to the challenger, the old champion to
``previous-champion`` and removes ``challenger``.
"""

from __future__ import annotations

import json
import math
import time
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
    *,
    to: str = "champion",
) -> Decision:
    """The gate: absolute thresholds, then a strict improvement over the champion.

    Metrics are keyed like the MLflow run (``holdout_rmse``, ``holdout_r2``, ...). For a
    challenger (``to="challenger"``) the gate stops after the thresholds and checks: it is
    served to find out on live traffic whether it beats the champion, which
    ``should_promote_live`` then decides; asking it to win offline first would leave
    nothing to try (the offline runner-up never beats the champion's holdout).
    """
    metric = promote_cfg.metric
    value = _get(candidate_metrics, metric)
    rmse = _get(candidate_metrics, "rmse")
    r2 = _get(candidate_metrics, "r2")
    # The champion's value goes with every decision, also one that does not compare with
    # it (a challenger, a threshold refusal): the user weighs the candidate against it.
    champion = _get(champion_metrics, metric)
    if value is None or rmse is None or r2 is None:
        return Decision(
            False, "no holdout metrics: run `housing evaluate` first", metric, value, champion
        )
    if candidate_metrics.get("holdout_checks_passed") == 0.0:
        return Decision(
            False,
            "behavioural checks failed (see evaluation/checks.json in its run)",
            metric,
            value,
            champion,
        )
    if rmse > promote_cfg.max_rmse:
        return Decision(
            False,
            f"holdout_rmse {rmse:.4f} is above the limit {promote_cfg.max_rmse:.4f} "
            "(rule: holdout_rmse <= promote.max_rmse)",
            metric,
            value,
            champion,
        )
    if r2 < promote_cfg.min_r2:
        return Decision(
            False,
            f"holdout_r2 {r2:.4f} is below the limit {promote_cfg.min_r2:.4f} "
            "(rule: holdout_r2 >= promote.min_r2)",
            metric,
            value,
            champion,
        )
    absolute = (
        f"holdout_rmse {rmse:.4f} <= {promote_cfg.max_rmse:.4f} and "
        f"holdout_r2 {r2:.4f} >= {promote_cfg.min_r2:.4f}"
    )
    if to == "challenger":
        return Decision(
            True,
            f"passes the thresholds: {absolute} (a challenger need not beat the champion "
            "offline: its live RMSE decides, `housing promote --from-live`)",
            metric,
            value,
            champion,
        )
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


def _same_model(ref: ModelRef, champion: ModelRef | None) -> bool:
    """Is ``ref`` the champion again: the same model file, or the same candidate trained on
    the same data (a rerun of the same training: same seed, same trees)?"""
    if champion is None:
        return False
    sha = ref.tags.get("model_sha256")
    if sha and sha == champion.tags.get("model_sha256"):
        return True
    candidate = ref.tags.get("candidate")
    return (
        candidate is not None
        and candidate == champion.tags.get("candidate")
        and ref.data_version is not None
        and ref.data_version == champion.data_version
    )


def _latest_batch_pool(
    refs: list[ModelRef], champion: ModelRef | None
) -> tuple[str | None, list[ModelRef]]:
    """(the newest version's train_batch, its evaluated versions that are not the champion
    nor a retrain of it on the same data, which would serve the same answers)."""
    newest = max(refs, key=lambda r: int(r.version))
    batch = newest.tags.get("train_batch")
    same = [r for r in refs if r.tags.get("train_batch") == batch] if batch else [newest]
    champion_version = champion.version if champion is not None else None
    return batch, [
        r
        for r in same
        if _evaluated(r) and r.version != champion_version and not _same_model(r, champion)
    ]


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


TARGETS = ("champion", "challenger")


def promote(
    settings: Settings,
    version: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    rollback: bool = False,
    to: str = "champion",
) -> dict[str, Any]:
    """Move ``champion`` (or ``challenger``, ``to``) to the best evaluated candidate if
    the gate passes.

    Raises GateRejected (exit 6) when the gate says no, with the decision object (the
    dict a success returns, ``promoted`` false) as its payload; ModelError when there is
    nothing to promote or the version is unknown.
    """
    from housing_mlops import registry

    if to not in TARGETS:
        raise UsageError(f"--to takes champion or challenger, not {to!r}")
    if rollback:
        if version is not None or force or to != "champion":
            raise UsageError("--rollback cannot be combined with --version, --force or --to")
        return _rollback(settings, dry_run)
    if force and version is None:
        raise UsageError("--force needs --version N: the override is for one chosen version")

    refs = registry.list_versions(settings)
    if not refs:
        raise ModelError("no trained model versions: run `housing train` first")
    champion_version = registry.get_alias_version(settings, registry.CHAMPION)
    champion = next((r for r in refs if r.version == champion_version), None)
    challenger_version = registry.get_alias_version(settings, registry.CHALLENGER)
    metric = settings.promote.metric
    candidate, already_challenger = _candidate(
        refs, champion, champion_version, challenger_version, version, to, force, metric
    )

    decision = should_promote(
        candidate.metrics,
        champion.metrics if champion is not None else None,
        settings.promote,
        to=to,
    )
    unevaluated, notes = _unevaluated_newer(refs, candidate, champion_version)
    reason = "; ".join([decision.reason, *(f"note: {n}" for n in notes)])
    result: dict[str, Any] = {
        "action": "force" if force else "gate",
        "target": to,
        "version": candidate.version,
        "candidate": candidate.tags.get("candidate"),
        "metric": f"holdout_{metric}",
        "candidate_value": decision.candidate_value,
        "champion_value": decision.champion_value,
        "gate_passed": decision.passed,
        "reason": reason,
        "champion_before": champion_version,
        "challenger_before": challenger_version,
        "dry_run": dry_run,
        "decision": asdict(decision),
        "unevaluated_newer_versions": unevaluated,
        "notes": notes,
    }
    prefix = "dry run: " if dry_run else ""
    if not decision.passed and not force:
        against = f" against champion version {champion_version}" if champion else ""
        target = " to challenger" if to == "challenger" else ""
        raise GateRejected(
            f"{prefix}{_label(candidate)} not promoted{target}{against}: {reason}",
            payload={**result, "promoted": False, "champion_after": champion_version},
        )
    if already_challenger:
        why = (
            "it is the challenger already, and still the best evaluated candidate of the "
            "latest training: nothing to move (train and evaluate new candidates, or name "
            "one with --version N)"
        )
        raise GateRejected(
            f"{prefix}{_label(candidate)} not promoted to challenger: {why}",
            payload={
                **result,
                "reason": "; ".join([why, *(f"note: {n}" for n in notes)]),
                "promoted": False,
                "champion_after": champion_version,
                "challenger_after": challenger_version,
            },
        )
    if dry_run:
        return {**result, "promoted": False, "champion_after": champion_version}
    if to == "challenger":
        return _set_challenger(settings, candidate, decision, force, result)
    return _set_champion(settings, candidate, decision, force, result)


def _candidate(
    refs: list[ModelRef],
    champion: ModelRef | None,
    champion_version: str | None,
    challenger_version: str | None,
    version: int | None,
    to: str,
    force: bool,
    metric: str,
) -> tuple[ModelRef, bool]:
    """The version the gate judges: ``version`` when named, else the best evaluated one
    (for the challenger, of the latest training). The flag: the best is the challenger
    already (a decision to move nothing, exit 6). A named version that already holds the
    alias, is unknown or is not evaluated (without ``force``) is a ModelError (exit 5)."""
    if to == "challenger":
        if version is None:
            batch, pool = _latest_batch_pool(refs, champion)
            if not pool:
                which = f" (train_batch {batch})" if batch else ""
                raise ModelError(
                    f"no evaluated candidate of the latest training{which} besides the "
                    "champion and retrains of it on the same data: run `housing evaluate "
                    "--all` (or `housing train` first), or name one with --version N"
                )
            best = _best(pool, metric)
            return best, best.version == challenger_version
        if str(version) == challenger_version:
            raise ModelError(f"version {version} is already the challenger")

    if version is None:
        pool = [r for r in refs if _evaluated(r) and r.version != champion_version]
        if not pool:
            if champion is not None and _evaluated(champion):
                raise ModelError(
                    f"no evaluated candidate besides the champion (version {champion_version}): "
                    "run `housing train` and `housing evaluate` first"
                )
            raise ModelError("no evaluated candidate: run `housing evaluate` first")
        return _best(pool, metric), False
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
    return candidate, False


def _unevaluated_newer(
    refs: list[ModelRef], candidate: ModelRef, champion_version: str | None
) -> tuple[list[str], list[str]]:
    """The versions newer than ``candidate`` that the gate could not judge (not evaluated),
    and the note that says so (none when there are none)."""
    unevaluated = [
        r.version
        for r in refs
        if int(r.version) > int(candidate.version)
        and r.version != champion_version
        and not _evaluated(r)
    ]
    if not unevaluated:
        return [], []
    which = ", ".join(unevaluated)
    many = len(unevaluated) > 1
    note = (
        f"newer version{'s' if many else ''} {which} not evaluated, so not considered: run "
        f"`housing evaluate --all` first to include {'them' if many else 'it'}"
    )
    return unevaluated, [note]


def _set_champion(
    settings: Settings,
    candidate: ModelRef,
    decision: Decision,
    force: bool,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Make ``candidate`` the champion: the old one becomes ``previous-champion``, the
    promotion is recorded on the version, and a challenger that made it leaves its alias."""
    from housing_mlops import registry

    now = iso_utc()
    champion_version = result["champion_before"]
    if champion_version is not None:
        registry.set_alias(settings, registry.PREVIOUS_CHAMPION, champion_version)
        registry.set_version_tags(settings, champion_version, {"demoted_at": now})
    registry.set_alias(settings, registry.CHAMPION, candidate.version)
    kind = "force" if force else "gate"
    tags: dict[str, Any] = {
        "promoted_at": now,
        "promotion_kind": kind,
        "promotion_reason": decision.reason[:500],
        "promotion_history": _history_tag(
            candidate, {"at": now, "kind": kind, "replaced": champion_version}
        ),
    }
    if force:
        tags.update(_forced_tags(now, decision))
    registry.set_version_tags(settings, candidate.version, tags)
    if result["challenger_before"] == candidate.version:  # the challenger made it offline
        registry.delete_alias(settings, registry.CHALLENGER)
    return {
        **result,
        "promoted": True,
        "champion_after": candidate.version,
        "previous_champion_after": champion_version,
    }


def _forced_tags(now: str, decision: Decision) -> dict[str, str]:
    """What a ``--force`` records on the version: when, and what the gate had said."""
    return {
        "promoted_by_force": "true",
        "forced_at": now,
        "forced_gate_result": "passed" if decision.passed else "rejected",
    }


def _set_challenger(
    settings: Settings,
    candidate: ModelRef,
    decision: Decision,
    force: bool,
    result: dict[str, Any],
) -> dict[str, Any]:
    from housing_mlops import registry

    now = iso_utc()
    kind = "challenger-force" if force else "challenger"
    registry.set_alias(settings, registry.CHALLENGER, candidate.version)
    tags: dict[str, Any] = {
        "challenger_at": now,
        "challenger_reason": decision.reason[:500],
        "promotion_history": _history_tag(
            candidate,
            {"at": now, "kind": kind, "replaced": result["challenger_before"]},
        ),
    }
    if force:
        tags.update(_forced_tags(now, decision))
    registry.set_version_tags(settings, candidate.version, tags)
    return {
        **result,
        "promoted": True,
        "champion_after": result["champion_before"],
        "challenger_after": candidate.version,
    }


# ------------------------------------------------------------------------ live gate
@dataclass(frozen=True)
class LiveDecision:
    passed: bool
    reason: str
    evidence: dict[str, Any] | None


def should_promote_live(
    comparisons: list[dict[str, Any]], promote_cfg: PromoteConfig
) -> LiveDecision:
    """The live gate over ``live.compare``'s comparisons of challenger and champion.

    The evidence is the paired comparison (shadowed rows) when it has at least
    ``min_live_rows`` rows, else the unpaired canary one when that has; the challenger
    passes when the upper end of the ``live_confidence`` interval of
    ``RMSE_challenger - RMSE_champion`` is below zero.
    """
    need = promote_cfg.min_live_rows
    by_kind = {c["kind"]: c for c in comparisons}
    evidence = next(
        (by_kind[k] for k in ("paired", "unpaired") if k in by_kind and by_kind[k]["rows"] >= need),
        None,
    )
    if evidence is None:
        paired = by_kind.get("paired", {}).get("rows", 0)
        canary = by_kind.get("unpaired", {}).get("rows", 0)
        return LiveDecision(
            False,
            f"too few labelled rows: {paired} shadowed and {canary} canary rows of the "
            f"challenger, need promote.min_live_rows {need} of either (send true values "
            "with POST /feedback or `housing feedback FILE`)",
            by_kind.get("paired") or by_kind.get("unpaired"),
        )
    from housing_mlops.live import summary_line

    ci = evidence["difference_ci"]
    confidence = promote_cfg.live_confidence
    line = summary_line(evidence, confidence)
    rule = (
        f"rule: the upper end of the {confidence:.0%} bootstrap interval of "
        "RMSE_challenger - RMSE_champion must be < 0"
    )
    if ci is not None and ci[1] < 0:
        return LiveDecision(True, f"{line} ({rule})", evidence)
    return LiveDecision(False, f"not better: {line} ({rule})", evidence)


def promote_from_live(
    settings: Settings, dry_run: bool = False, since: str | None = None
) -> dict[str, Any]:
    """Make the challenger champion when its live RMSE beats the champion's.

    Raises GateRejected (exit 6) when there is no challenger or champion, too few
    labelled rows, or the challenger is not better with the configured confidence; the
    payload is the decision object with its evidence.
    """
    from housing_mlops import registry

    cfg = settings.promote
    champion = registry.get_alias_version(settings, registry.CHAMPION)
    challenger = registry.get_alias_version(settings, registry.CHALLENGER)
    result = _live_result_before(cfg, champion, challenger, dry_run)
    champion, challenger = _aliases_to_compare(result)
    _require_request_log(settings, result)
    comparisons = _compare_live(settings, champion, challenger, since)
    decision = should_promote_live(comparisons, cfg)
    reason = f"challenger version {challenger} vs champion version {champion}: {decision.reason}"
    result.update(
        {
            "comparisons": comparisons,
            "evidence": decision.evidence,
            "gate_passed": decision.passed,
            "reason": reason,
        }
    )
    now = iso_utc()
    record = _live_decision_record(now, decision, champion, challenger)
    if not decision.passed:
        if not dry_run:
            registry.set_version_tags(
                settings, challenger, {"live_decision": record, "live_decision_at": now}
            )
        raise _live_refusal(result, reason)
    if dry_run:
        return {**result, "promoted": False, "champion_after": champion}
    _make_challenger_champion(settings, champion, challenger, decision, record, now)
    return {
        **result,
        "promoted": True,
        "champion_after": challenger,
        "previous_champion_after": champion,
        "challenger_after": None,
    }


def _live_result_before(
    cfg: PromoteConfig, champion: str | None, challenger: str | None, dry_run: bool
) -> dict[str, Any]:
    """The decision object of a live promotion before any evidence is read: the aliases
    as they are and the gate's settings."""
    return {
        "action": "live",
        "target": "champion",
        "version": challenger,
        "champion_before": champion,
        "challenger_before": challenger,
        "dry_run": dry_run,
        "min_live_rows": cfg.min_live_rows,
        "confidence": cfg.live_confidence,
        "bootstrap_samples": cfg.bootstrap_samples,
        "evidence": None,
        "comparisons": [],
        "gate_passed": False,
    }


def _live_refusal(result: dict[str, Any], reason: str) -> GateRejected:
    """The GateRejected of a live promotion: ``reason`` (after "dry run: " on a dry run),
    its payload the decision object as it stands, nothing promoted."""
    prefix = "dry run: " if result["dry_run"] else ""
    return GateRejected(
        f"{prefix}{reason}",
        payload={
            **result,
            "reason": reason,
            "promoted": False,
            "champion_after": result["champion_before"],
        },
    )


def _aliases_to_compare(result: dict[str, Any]) -> tuple[str, str]:
    """The champion and challenger versions; refused, saying what to run first, when
    either alias is missing: there is nothing to compare."""
    from housing_mlops import registry

    champion, challenger = result["champion_before"], result["challenger_before"]
    if challenger is None:
        raise _live_refusal(
            result,
            f"no challenger: no version has the alias '{registry.CHALLENGER}' (run "
            "`housing promote --to challenger` and serve it in shadow or canary first)",
        )
    if champion is None:
        raise _live_refusal(
            result,
            f"no champion to compare challenger version {challenger} with: run "
            f"`housing promote --version {challenger}` to promote it on its holdout metrics",
        )
    return champion, challenger


def _require_request_log(settings: Settings, result: dict[str, Any]) -> None:
    """Refused, naming it, when there is no request log: a mistyped HOUSING_REQUEST_LOG
    read "too few labelled rows: 0 … (send true values …)", sending users to label
    requests that are logged elsewhere."""
    from housing_mlops import store

    if not store.check_request_log(settings.serve.request_log):
        raise _live_refusal(
            result,
            f"challenger version {result['challenger_before']} vs champion version "
            f"{result['champion_before']}: no request log at "
            f"{store.parse_log_location(settings.serve.request_log)}, so no labelled row: "
            "point serve.request_log or HOUSING_REQUEST_LOG at the service's log",
        )


def _compare_live(
    settings: Settings, champion: str, challenger: str, since: str | None
) -> list[dict[str, Any]]:
    """``live.compare``'s comparisons of challenger and champion on the labelled rows
    logged since ``since`` (all of them without it)."""
    from housing_mlops.drift.window import parse_when
    from housing_mlops.live import compare, read_labelled

    cfg = settings.promote
    since_ts = parse_when(since, time.time(), "--since") if since is not None else None
    rows = read_labelled(settings, since_ts)
    return compare(
        rows, champion, challenger, samples=cfg.bootstrap_samples, confidence=cfg.live_confidence
    )


def _live_decision_record(now: str, decision: LiveDecision, champion: str, challenger: str) -> str:
    """The ``live_decision`` tag: the decision and its evidence as compact JSON."""
    return json.dumps(
        {
            "at": now,
            "passed": decision.passed,
            "champion": champion,
            "challenger": challenger,
            "reason": decision.reason[:300],
            "evidence": decision.evidence,
        },
        separators=(",", ":"),
        default=float,
    )


def _make_challenger_champion(
    settings: Settings,
    champion: str,
    challenger: str,
    decision: LiveDecision,
    record: str,
    now: str,
) -> None:
    """Move the aliases (the champion becomes ``previous-champion``, the challenger
    ``champion``, ``challenger`` is removed) and record the decision on both versions."""
    from housing_mlops import registry

    ref = registry.resolve(settings, version=int(challenger))
    registry.set_alias(settings, registry.PREVIOUS_CHAMPION, champion)
    registry.set_alias(settings, registry.CHAMPION, challenger)
    registry.delete_alias(settings, registry.CHALLENGER)
    registry.set_version_tags(
        settings, champion, {"demoted_at": now, "live_decision": record, "live_decision_at": now}
    )
    registry.set_version_tags(
        settings,
        challenger,
        {
            "promoted_at": now,
            "promotion_kind": "live",
            "promotion_reason": decision.reason[:500],
            "live_decision": record,
            "live_decision_at": now,
            "promotion_history": _history_tag(
                ref, {"at": now, "kind": "live", "replaced": champion}
            ),
        },
    )
