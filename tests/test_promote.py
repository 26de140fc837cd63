"""`housing promote`: the pure gate rule, and alias moves in a real MLflow store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import copy_store, empty_store_config, trained_store
from synthetic import write_config

from housing_mlops import registry
from housing_mlops.cli import run
from housing_mlops.config import PromoteConfig, Settings
from housing_mlops.errors import GateRejected
from housing_mlops.promote import _best, _evaluated, promote, should_promote


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread() -> Iterator[None]:
    # OpenMP pools (HistGradientBoosting, LightGBM) spin and crawl on a busy 2-core box.
    # threadpoolctl only limits libraries already loaded: load the OpenMP users first.
    import lightgbm  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _m(rmse: float, r2: float = 0.9, **extra: float) -> dict[str, float]:
    return {"holdout_rmse": rmse, "holdout_mae": rmse * 0.7, "holdout_r2": r2, **extra}


# ------------------------------------------------------------------------ gate rule
CFG = PromoteConfig(metric="rmse", max_rmse=0.45, min_r2=0.85, min_improvement=0.0)


def test_gate_passes_a_good_first_model() -> None:
    decision = should_promote(_m(0.40), None, CFG)
    assert decision.passed
    assert "no champion yet" in decision.reason


def test_gate_enforces_absolute_thresholds_even_without_champion() -> None:
    too_high = should_promote(_m(0.46), None, CFG)
    assert not too_high.passed
    assert "holdout_rmse 0.4600 is above the limit 0.4500" in too_high.reason
    too_low = should_promote(_m(0.40, r2=0.80), None, CFG)
    assert not too_low.passed
    assert "holdout_r2 0.8000 is below the limit 0.8500" in too_low.reason


def test_gate_requires_beating_the_champion() -> None:
    better = should_promote(_m(0.40), _m(0.42), CFG)
    assert better.passed and better.champion_value == 0.42
    worse = should_promote(_m(0.43), _m(0.42), CFG)
    assert not worse.passed
    assert "0.4300" in worse.reason and "0.4200" in worse.reason
    assert "rule:" in worse.reason
    tie = should_promote(_m(0.42), _m(0.42), CFG)
    assert not tie.passed  # a tie never churns the alias


def test_gate_margin_and_metric_direction() -> None:
    margin = CFG.model_copy(update={"min_improvement": 0.01})
    assert not should_promote(_m(0.415), _m(0.42), margin).passed
    assert should_promote(_m(0.405), _m(0.42), margin).passed
    by_r2 = CFG.model_copy(update={"metric": "r2"})
    assert should_promote(_m(0.40, r2=0.90), _m(0.40, r2=0.88), by_r2).passed
    assert not should_promote(_m(0.40, r2=0.88), _m(0.40, r2=0.90), by_r2).passed


def test_gate_rejects_unevaluated_or_misbehaving_candidates() -> None:
    assert not should_promote({"cv_rmse_mean": 0.3}, None, CFG).passed
    failed = should_promote(_m(0.40, holdout_checks_passed=0.0), None, CFG)
    assert not failed.passed and "behavioural checks failed" in failed.reason
    # A champion without holdout metrics cannot block a good candidate.
    assert should_promote(_m(0.40), {"cv_rmse_mean": 0.3}, CFG).passed


def test_gate_thresholds_are_inclusive() -> None:
    # rule: holdout_rmse <= max_rmse and holdout_r2 >= min_r2; exactly at the limit passes.
    at_limits = should_promote(_m(CFG.max_rmse, r2=CFG.min_r2), None, CFG)
    assert at_limits.passed, at_limits.reason
    assert not should_promote(_m(CFG.max_rmse + 1e-9, r2=CFG.min_r2), None, CFG).passed
    assert not should_promote(_m(CFG.max_rmse, r2=CFG.min_r2 - 1e-9), None, CFG).passed


def test_gate_improvement_exactly_at_the_margin_passes() -> None:
    # Binary-exact numbers, so "exactly at the margin" is exact in floating point too.
    margin = CFG.model_copy(update={"min_improvement": 0.125})
    at = should_promote(_m(0.375), _m(0.5), margin)
    assert at.passed, at.reason
    assert at.candidate_value == 0.375 and at.champion_value == 0.5
    assert "by 0.1250" in at.reason
    assert not should_promote(_m(0.4375), _m(0.5), margin).passed  # improvement 0.0625
    by_r2 = CFG.model_copy(update={"metric": "r2", "min_improvement": 0.0625})
    assert should_promote(_m(0.25, r2=0.9375), _m(0.25, r2=0.875), by_r2).passed
    assert not should_promote(_m(0.25, r2=0.90625), _m(0.25, r2=0.875), by_r2).passed
    # Higher r2 is better: a worse r2 is a negative improvement, not a larger one.
    worse = should_promote(_m(0.25, r2=0.875), _m(0.25, r2=0.9375), by_r2)
    assert not worse.passed and "improvement -0.0625" in worse.reason


def test_gate_mae_metric_is_lower_is_better() -> None:
    by_mae = CFG.model_copy(update={"metric": "mae"})
    assert should_promote(_m(0.25), _m(0.375), by_mae).passed  # mae 0.175 vs 0.2625
    assert not should_promote(_m(0.375), _m(0.25), by_mae).passed


def test_every_decision_carries_the_champions_value() -> None:
    """The champion's value is shown beside the candidate's also when the gate does not
    compare them: a challenger, a threshold refusal."""
    challenger = should_promote(_m(0.44), _m(0.40), CFG, to="challenger")
    assert challenger.passed and challenger.champion_value == 0.40
    refused = should_promote(_m(0.44, r2=0.1), _m(0.40), CFG)
    assert not refused.passed and refused.champion_value == 0.40
    assert should_promote(_m(0.44), None, CFG, to="challenger").champion_value is None


@pytest.mark.parametrize("missing", ["holdout_rmse", "holdout_r2", "holdout_mae"])
def test_gate_rejects_a_candidate_missing_any_one_metric(missing: str) -> None:
    by_mae = CFG.model_copy(update={"metric": "mae"})
    metrics = {k: v for k, v in _m(0.40).items() if k != missing}
    decision = should_promote(metrics, None, by_mae)
    assert not decision.passed
    assert decision.reason == "no holdout metrics: run `housing evaluate` first"


def test_gate_treats_non_finite_metrics_as_missing() -> None:
    assert not should_promote(_m(float("nan")), None, CFG).passed
    assert not should_promote(_m(0.40, r2=float("inf")), None, CFG).passed
    # A champion whose metric is NaN cannot be beaten or lost to: the thresholds decide.
    decision = should_promote(_m(0.40), _m(float("nan")), CFG)
    assert decision.passed and decision.champion_value is None
    assert "the champion has no holdout metric" in decision.reason


def test_gate_checks_passed_flag() -> None:
    assert should_promote(_m(0.40, holdout_checks_passed=1.0), None, CFG).passed
    assert not should_promote(_m(0.40, holdout_checks_passed=0.0), None, CFG).passed


def test_gate_reason_says_whether_there_is_a_champion() -> None:
    assert "no champion yet" in should_promote(_m(0.40), None, CFG).reason
    assert "no champion yet" in should_promote(_m(0.40), {}, CFG).reason
    without = should_promote(_m(0.40), {"cv_rmse_mean": 0.3}, CFG)
    assert "the champion has no holdout metric" in without.reason


def _ref(version: int, evaluated: bool = True, **metrics: float) -> registry.ModelRef:
    return registry.ModelRef(
        name="m",
        version=str(version),
        run_id=f"run{version}",
        alias=None,
        source="",
        tags={"evaluated": "true"} if evaluated else {},
        metrics=metrics,
    )


def test_only_versions_tagged_evaluated_with_holdout_metrics_are_candidates() -> None:
    assert _evaluated(_ref(1, holdout_rmse=0.4))
    assert not _evaluated(_ref(2))  # tagged evaluated, but no holdout metrics
    assert not _evaluated(_ref(3, evaluated=False, holdout_rmse=0.4))  # metrics, no tag
    assert not _evaluated(_ref(4, cv_rmse_mean=0.4))


def test_best_candidate_by_metric_direction_then_newest() -> None:
    refs = [
        _ref(1, holdout_rmse=0.40, holdout_r2=0.80),
        _ref(2, holdout_rmse=0.35, holdout_r2=0.85),
        _ref(3, holdout_rmse=0.45, holdout_r2=0.90),
    ]
    assert _best(refs, "rmse").version == "2"  # lowest rmse
    assert _best(refs, "r2").version == "3"  # highest r2
    tie = [_ref(4, holdout_rmse=0.35), _ref(5, holdout_rmse=0.35), _ref(3, holdout_rmse=0.35)]
    assert _best(tie, "rmse").version == "5"  # on a tie the newest version
    # A version without the metric never wins, whichever direction is better.
    assert _best([_ref(6), _ref(7, holdout_rmse=0.9)], "rmse").version == "7"
    assert _best([_ref(6), _ref(7, holdout_r2=0.1)], "r2").version == "7"


# ------------------------------------------------------------------- registry moves
@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    """'trained': versions 1 (ridge) and 2 (hist_gb), not evaluated; 'evaluated': both
    evaluated. On the synthetic data ridge has the lower holdout RMSE."""
    from housing_mlops.evaluate import evaluate

    base = trained_store(tmp_path_factory)[0]
    evaluated = copy_store(base, tmp_path_factory.mktemp("evaluated"))
    evaluate(evaluated)
    return {"trained": base, "evaluated": evaluated}


def _cli(capsys: pytest.CaptureFixture[str], settings: Settings, *args: str) -> tuple[int, Any]:
    code = run(["--config", str(settings.source), "promote", *args])
    captured = capsys.readouterr()
    out = json.loads(captured.out) if "--json" in args and captured.out.strip() else captured.out
    return code, (out, captured.err)


def _aliases(settings: Settings) -> tuple[str | None, str | None]:
    return (
        registry.get_alias_version(settings, registry.CHAMPION),
        registry.get_alias_version(settings, registry.PREVIOUS_CHAMPION),
    )


def test_promote_reject_force_gate_and_rollback(
    stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = copy_store(stores["evaluated"], tmp_path)
    v1 = registry.resolve(settings, version=1).metrics["holdout_rmse"]
    v2 = registry.resolve(settings, version=2).metrics["holdout_rmse"]
    assert v1 < v2  # ridge (1) is the better candidate on the synthetic data

    # First promotion: the best evaluated candidate, no champion to beat.
    code, (out, err) = _cli(capsys, settings, "--json")
    assert code == 0, err
    assert out["version"] == "1" and out["promoted"] is True
    assert _aliases(settings) == ("1", None)
    assert registry.resolve(settings).tags["promotion_kind"] == "gate"

    # Only the worse candidate is left: rejected, exit 6, both numbers and the rule.
    code, (_, err) = _cli(capsys, settings)
    assert code == 6
    assert "version 2 (hist_gb) not promoted against champion version 1" in err
    assert f"{v2:.4f}" in err and f"{v1:.4f}" in err and "rule:" in err
    assert _aliases(settings) == ("1", None)

    # Human override: recorded as tags; the old champion becomes previous-champion.
    code, (out, err) = _cli(capsys, settings, "--version", "2", "--force", "--json")
    assert code == 0, err
    assert out["gate_passed"] is False and out["action"] == "force"
    assert _aliases(settings) == ("2", "1")
    forced = registry.resolve(settings)
    assert forced.version == "2"
    assert forced.tags["promoted_by_force"] == "true"
    assert forced.tags["forced_gate_result"] == "rejected"
    assert forced.tags["forced_at"]

    # The gate now prefers version 1 over the forced champion.
    code, (out, err) = _cli(capsys, settings, "--json")
    assert code == 0, err
    assert out["version"] == "1" and out["champion_before"] == "2"
    assert _aliases(settings) == ("1", "2")

    # Rollback swaps the two aliases; history is kept on the version.
    code, (out, err) = _cli(capsys, settings, "--rollback", "--json")
    assert code == 0, err
    assert _aliases(settings) == ("2", "1")
    history = json.loads(registry.resolve(settings, version=2).tags["promotion_history"])
    assert [h["kind"] for h in history] == ["force", "rollback"]
    history1 = json.loads(registry.resolve(settings, version=1).tags["promotion_history"])
    assert [h["kind"] for h in history1] == ["gate", "gate"]


def test_dry_run_changes_nothing(stores, tmp_path: Path, capsys) -> None:
    settings = copy_store(stores["evaluated"], tmp_path)
    code, (out, err) = _cli(capsys, settings, "--dry-run", "--json")
    assert code == 0, err
    assert out["dry_run"] is True and out["promoted"] is False and out["version"] == "1"
    assert _aliases(settings) == (None, None)
    code, (out, _) = _cli(capsys, settings, "--dry-run")
    assert "dry run: version 1 would become champion" in out


def test_gate_thresholds_from_config_reject_with_exit_6(stores, tmp_path: Path, capsys) -> None:
    settings = copy_store(stores["evaluated"], tmp_path)
    (tmp_path / "strict").mkdir()
    strict = write_config(
        tmp_path / "strict",
        {
            "paths": {"processed_dir": str(settings.paths.processed_dir)},
            "mlflow": settings.mlflow.model_dump(),
            "promote": {"max_rmse": 0.1, "min_r2": 0.3},
        },
    )
    code = run(["--config", str(strict), "promote"])
    err = capsys.readouterr().err
    assert code == 6
    assert "above the limit 0.1000 (rule: holdout_rmse <= promote.max_rmse)" in err
    assert _aliases(settings) == (None, None)


def test_nothing_to_promote_says_what_to_run(
    stores, tmp_path_factory, tmp_path: Path, capsys
) -> None:
    trained_only = copy_store(stores["trained"], tmp_path / "t")
    code, (_, err) = _cli(capsys, trained_only)
    assert code == 5
    assert "Error: no evaluated candidate: run `housing evaluate` first" in err

    empty = empty_store_config(tmp_path_factory, tmp_path / "empty")
    assert run(["--config", str(empty), "promote"]) == 5
    assert "run `housing train` first" in capsys.readouterr().err


def test_bad_requests_are_clear_errors(stores, tmp_path: Path, capsys) -> None:
    settings = copy_store(stores["evaluated"], tmp_path)
    code, (_, err) = _cli(capsys, settings, "--version", "7")
    assert code == 5 and "no model version 7 (registered versions: 1, 2)" in err
    code, (_, err) = _cli(capsys, settings, "--force")
    assert code == 2 and "--force needs --version N" in err
    code, (_, err) = _cli(capsys, settings, "--rollback")
    assert code == 5 and "nothing to roll back to" in err
    trained_only = copy_store(stores["trained"], tmp_path / "t")
    code, (_, err) = _cli(capsys, trained_only, "--version", "1")
    assert code == 5 and "run `housing evaluate --version 1` first" in err


def test_refusal_carries_the_same_decision_object_as_a_success(
    stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = copy_store(stores["evaluated"], tmp_path)
    would = promote(settings, dry_run=True)  # the shape a successful decision has
    promote(settings)  # version 1 becomes champion; only the worse version 2 is left
    v1 = registry.resolve(settings, version=1).metrics["holdout_rmse"]
    v2 = registry.resolve(settings, version=2).metrics["holdout_rmse"]

    with pytest.raises(GateRejected) as refused:
        promote(settings, dry_run=True)
    payload = refused.value.payload
    assert isinstance(payload, dict)
    assert set(payload) == set(would)
    assert payload["version"] == "2" and payload["candidate"] == "hist_gb"
    assert payload["action"] == "gate" and payload["dry_run"] is True
    assert payload["promoted"] is False and payload["gate_passed"] is False
    assert payload["metric"] == "holdout_rmse"
    assert payload["candidate_value"] == pytest.approx(v2)
    assert payload["champion_value"] == pytest.approx(v1)
    assert payload["champion_before"] == payload["champion_after"] == "1"
    assert "does not beat the champion's" in payload["reason"]

    # Through the CLI: exit 6, the same object as JSON on stdout, the refusal on stderr.
    code, (out, err) = _cli(capsys, settings, "--json")
    assert code == 6, err
    assert out == json.loads(json.dumps({**payload, "dry_run": False}))
    assert err.strip().splitlines()[-1].startswith("Refused: version 2 (hist_gb) not promoted")
    assert _aliases(settings) == ("1", None)


def test_dry_run_names_newer_versions_that_were_not_evaluated(
    stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from housing_mlops.evaluate import evaluate

    # Versions 1 and 2 trained, only version 1 evaluated: the gate cannot see version 2.
    settings = copy_store(stores["trained"], tmp_path)
    evaluate(settings, version=1)
    code, (out, err) = _cli(capsys, settings, "--dry-run", "--json")
    assert code == 0, err
    assert out["version"] == "1"
    assert out["unevaluated_newer_versions"] == ["2"]
    assert "newer version 2 not evaluated" in out["reason"]
    assert "housing evaluate --all" in out["reason"]

    code, (text, err) = _cli(capsys, settings, "--dry-run")
    assert code == 0, err
    assert "newer version 2 not evaluated" in text

    # With every version evaluated there is nothing to mention.
    evaluated = copy_store(stores["evaluated"], tmp_path / "all")
    code, (out, err) = _cli(capsys, evaluated, "--dry-run", "--json")
    assert code == 0, err
    assert out["unevaluated_newer_versions"] == [] and "note:" not in out["reason"]


class _GonePipe:
    """stdout whose reader has left (`housing promote --json | head -1`)."""

    def __init__(self) -> None:
        import os

        self._fd = os.open(os.devnull, os.O_WRONLY)

    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False


def test_a_refusal_piped_to_a_reader_that_left_gets_no_traceback(
    stores, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from housing_mlops import cli

    settings = copy_store(stores["evaluated"], tmp_path)
    promote(settings)  # version 1 becomes champion: promoting again is refused (exit 6)
    argv = ["housing", "promote", "-c", str(settings.source), "--json"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "stdout", _GonePipe())
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert exited.value.code == 141
