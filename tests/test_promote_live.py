"""`housing promote --to challenger` and `housing promote --from-live` on a real MLflow
registry, with the live evidence written to a real request log (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import answered_row, copy_store, trained_store, write_log_rows

from housing_mlops import registry, store
from housing_mlops.cli import run
from housing_mlops.config import Settings, with_request_log
from housing_mlops.promote import promote_from_live


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread() -> Iterator[None]:
    import lightgbm  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Versions 1 (ridge) and 2 (hist_gb), both evaluated; ridge is better offline."""
    from housing_mlops.evaluate import evaluate

    base = trained_store(tmp_path_factory)[0]
    settings = copy_store(base, tmp_path_factory.mktemp("evaluated-live"))
    evaluate(settings)
    return settings


def _cli(
    capsys: pytest.CaptureFixture[str], settings: Settings, *args: str
) -> tuple[int, Any, str]:
    code = run(["--config", str(settings.source), "promote", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if "--json" in args and out.strip() else out, err


def _aliases(settings: Settings) -> dict[str, str | None]:
    return {
        alias: registry.get_alias_version(settings, alias)
        for alias in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS_CHAMPION)
    }


def _with_max_rmse(settings: Settings, tmp_path: Path, max_rmse: float) -> Settings:
    import yaml

    from housing_mlops.config import load_config

    assert settings.source is not None
    raw = yaml.safe_load(settings.source.read_text())
    raw.setdefault("promote", {})["max_rmse"] = max_rmse
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_to_challenger_uses_the_offline_thresholds_not_the_improvement(
    evaluated: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = copy_store(evaluated, tmp_path)
    assert _cli(capsys, settings)[0] == 0  # version 1 (the better one) becomes champion

    # A threshold it misses: refused, exit 6, nothing moved.
    strict = _with_max_rmse(settings, tmp_path, 0.001)
    code, out, err = _cli(capsys, strict, "--to", "challenger", "--json")
    assert code == 6
    assert out["version"] == "2" and out["target"] == "challenger" and out["promoted"] is False
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "Refused: version 2 (hist_gb) not promoted to challenger against champion version 1: "
        "holdout_rmse"
    )
    assert "is above the limit 0.0010" in last
    assert _aliases(settings)[registry.CHALLENGER] is None

    # Worse than the champion offline, within the thresholds: it becomes the challenger
    # (live traffic decides), with the reason recorded, and the champion's value beside it.
    champion_rmse = registry.resolve(settings, version=1).metrics["holdout_rmse"]
    code, out, err = _cli(capsys, settings, "--to", "challenger", "--dry-run")
    assert code == 0, err
    assert f"│ champion                     │ {champion_rmse:.4f}" in out, out
    code, out, err = _cli(capsys, settings, "--to", "challenger", "--json")
    assert code == 0, err
    assert out["version"] == "2" and out["challenger_after"] == "2" and out["promoted"] is True
    assert out["champion_value"] == pytest.approx(champion_rmse)
    assert out["candidate_value"] > champion_rmse
    assert _aliases(settings) == {"champion": "1", "challenger": "2", "previous-champion": None}
    tags = registry.resolve(settings, version=2).tags
    assert tags["challenger_at"] and "need not beat the champion" in tags["challenger_reason"]
    assert json.loads(tags["promotion_history"])[-1]["kind"] == "challenger"
    # Again: the best candidate is the challenger already. Nothing to move, a decision
    # (exit 6), as when the champion's best contender does not beat it.
    for dry_run in ([], ["--dry-run"]):
        code, out, err = _cli(capsys, settings, "--to", "challenger", *dry_run, "--json")
        assert code == 6, err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(
                f"Refused: {'dry run: ' if dry_run else ''}version 2 (hist_gb) not promoted to "
                "challenger: it is the challenger already, and still the best evaluated candidate"
            )
        )
        assert out["promoted"] is False and out["challenger_after"] == "2"
        assert out["champion_value"] == pytest.approx(champion_rmse)
    code, _, err = _cli(capsys, settings)
    last = err.strip().splitlines()[-1]
    assert code == 6 and last.startswith("Refused: version 2 (hist_gb) not promoted against")
    # A version named with --version that holds the alias already: exit 5 for both aliases.
    code, _, err = _cli(capsys, settings, "--to", "challenger", "--version", "2")
    assert code == 5 and "Error: version 2 is already the challenger" in err
    code, _, err = _cli(capsys, settings, "--to", "challenger", "--version", "1")
    assert code == 5 and "Error: version 1 is already the champion" in err
    code, _, err = _cli(capsys, settings, "--version", "1")
    assert code == 5 and "Error: version 1 is already the champion" in err
    code, _, err = _cli(capsys, settings, "--to", "nobody")
    assert code == 2 and "Error: --to takes champion or challenger, not 'nobody'" in err

    # The offline gate may also make the challenger champion: then it is no challenger.
    registry.set_alias(settings, registry.CHAMPION, "2")
    registry.set_alias(settings, registry.CHALLENGER, "1")
    code, out, err = _cli(capsys, settings, "--json")
    assert code == 0 and out["version"] == "1", err
    assert _aliases(settings) == {"champion": "1", "challenger": None, "previous-champion": "2"}


def test_a_retrain_of_the_champion_on_the_same_data_is_not_a_challenger() -> None:
    from housing_mlops.promote import _latest_batch_pool
    from housing_mlops.registry import ModelRef

    def ref(version: str, candidate: str, data: str, sha: str, rmse: float) -> ModelRef:
        tags = {"candidate": candidate, "train_batch": "b2", "model_sha256": sha}
        tags["evaluated"] = "true"
        return ModelRef(
            name="m",
            version=version,
            run_id=f"r{version}",
            alias=None,
            source="",
            tags=tags,
            metrics={"holdout_rmse": rmse, "holdout_r2": 0.9, "holdout_mae": 0.3},
            data_version=data,
        )

    champion = ModelRef(
        name="m",
        version="4",
        run_id="r4",
        alias="champion",
        source="",
        tags={"candidate": "lightgbm", "train_batch": "b1", "model_sha256": "aaa"},
        data_version="d1",
    )
    rerun = [
        ref("7", "hist_gb", "d1", "bbb", 0.41),
        ref("8", "lightgbm", "d1", "ccc", 0.39),  # same candidate, same data: the champion
        ref("9", "ridge", "d1", "aaa", 0.60),  # the champion's very file
    ]
    _, pool = _latest_batch_pool([champion, *rerun], champion)
    assert [r.version for r in pool] == ["7"]
    # New data: the retrained lightgbm is a real challenger.
    fresh = [ref("7", "hist_gb", "d2", "bbb", 0.41), ref("8", "lightgbm", "d2", "ccc", 0.39)]
    _, pool = _latest_batch_pool([champion, *fresh], champion)
    assert [r.version for r in pool] == ["7", "8"]


def _live_settings(evaluated: Settings, tmp_path: Path, log: Any) -> Settings:
    """A registry copy with champion 2 and challenger 1, logging to ``log``."""
    settings = with_request_log(copy_store(evaluated, tmp_path), str(log))
    registry.set_alias(settings, registry.CHAMPION, "2")
    registry.set_alias(settings, registry.CHALLENGER, "1")
    return settings


def _shadowed(log: Any, n: int, challenger_noise: float, *, start: int = 0, seed: int = 0) -> None:
    """``n`` labelled requests answered by the champion (v2, error sd 0.5) and shadowed
    by the challenger (v1, error sd ``challenger_noise``)."""
    rng = np.random.default_rng(seed)
    actual = rng.uniform(0.5, 5.0, n)
    champion = actual + rng.normal(0, 0.5, n)
    challenger = actual + rng.normal(0, challenger_noise, n)
    ids = [f"s{start + i}" for i in range(n)]
    write_log_rows(
        log,
        [
            answered_row(
                ids[i],
                ts=1000.0 + start + i,
                version="2",
                prediction=float(champion[i]),
                shadow_version="1",
                shadow_prediction=float(challenger[i]),
            )
            for i in range(n)
        ],
    )
    labels = [(ids[i], 0, float(actual[i])) for i in range(n)]
    assert store.apply_feedback(log, labels, source="t", all_or_nothing=True).applied == n


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return tmp_path / "live.db"
    return request.getfixturevalue("pg_url")


def test_from_live_refuses_too_few_rows_and_worse_then_promotes_when_better(
    evaluated: Settings, tmp_path: Path, log: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _live_settings(evaluated, tmp_path, log)
    before = _aliases(settings)

    # 150 labelled shadow rows: fewer than promote.min_live_rows (200).
    _shadowed(log, 150, challenger_noise=0.3)
    with pytest.raises(Exception) as refused:
        promote_from_live(settings)
    assert type(refused.value).__name__ == "GateRejected"
    assert str(refused.value) == (
        "challenger version 1 vs champion version 2: too few labelled rows: 150 shadowed and "
        "0 canary rows of the challenger, need promote.min_live_rows 200 of either (send true "
        "values with POST /feedback or `housing feedback FILE`)"
    )
    assert _aliases(settings) == before

    # 400 more where the challenger is clearly worse: refused, with the numbers.
    _shadowed(log, 400, challenger_noise=0.9, start=1000, seed=1)
    with pytest.raises(Exception) as refused:
        promote_from_live(settings)
    payload = refused.value.payload  # type: ignore[attr-defined]
    evidence = payload["evidence"]
    assert evidence["kind"] == "paired" and evidence["rows"] == 550
    assert evidence["difference"] > 0 and evidence["difference_ci"][1] > 0
    assert "not better: challenger version 1 live RMSE" in str(refused.value)
    assert "rule: the upper end of the 95% bootstrap interval" in str(refused.value)
    assert _aliases(settings) == before
    decision = json.loads(registry.resolve(settings, version=1).tags["live_decision"])
    assert decision["passed"] is False and decision["evidence"]["rows"] == 550


def test_from_live_promotes_a_better_challenger_and_keeps_the_previous_champion(
    evaluated: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "live.db"
    settings = _live_settings(evaluated, tmp_path, log)
    _shadowed(log, 300, challenger_noise=0.3)

    # A dry run judges and changes nothing.
    result = promote_from_live(settings, dry_run=True)
    assert result["gate_passed"] is True and result["promoted"] is False
    assert _aliases(settings) == {"champion": "2", "challenger": "1", "previous-champion": None}

    result = promote_from_live(settings)
    assert result["promoted"] is True and result["action"] == "live"
    assert result["evidence"]["rows"] == 300 and result["evidence"]["difference_ci"][1] < 0
    assert _aliases(settings) == {"champion": "1", "challenger": None, "previous-champion": "2"}
    new = registry.resolve(settings, version=1).tags
    assert new["promotion_kind"] == "live"
    assert json.loads(new["live_decision"])["passed"] is True
    assert json.loads(new["promotion_history"])[-1] == {
        "at": new["promoted_at"],
        "kind": "live",
        "replaced": "2",
    }
    assert registry.resolve(settings, version=2).tags["demoted_at"]

    # Rollback brings the previous champion back.
    from housing_mlops.promote import promote

    promote(settings, rollback=True)
    assert _aliases(settings)["champion"] == "2"

    # The challenger alias is gone (it became champion): nothing more to judge.
    with pytest.raises(Exception, match="^no challenger: no version has the alias"):
        promote_from_live(settings)


def test_from_live_cli_exit_codes(
    evaluated: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = copy_store(evaluated, tmp_path)  # its config logs to tmp_path/data/requests.db
    code, _, err = _cli(capsys, settings, "--from-live")
    assert code == 6
    assert err.strip() == (
        "Refused: no challenger: no version has the alias 'challenger' (run `housing promote "
        "--to challenger` and serve it in shadow or canary first)"
    )
    registry.set_alias(settings, registry.CHALLENGER, "1")
    code, _, err = _cli(capsys, settings, "--from-live")
    assert code == 6
    assert err.strip() == (
        "Refused: no champion to compare challenger version 1 with: run `housing promote "
        "--version 1` to promote it on its holdout metrics"
    )
    registry.set_alias(settings, registry.CHAMPION, "2")
    _shadowed(settings.serve.request_log, 250, challenger_noise=0.3)
    code, out, err = _cli(capsys, settings, "--from-live", "--dry-run", "--json")
    assert code == 0, err
    assert out["gate_passed"] is True and out["dry_run"] is True and out["promoted"] is False
    code, out, err = _cli(capsys, settings, "--from-live")
    assert code == 0, err
    assert "version 1 is now champion" in out and "paired, 250 rows" in out
    assert _aliases(settings) == {"champion": "1", "challenger": None, "previous-champion": "2"}
    code, _, err = _cli(capsys, settings, "--from-live", "--version", "1")
    assert code == 2
    assert (
        "Error: --from-live cannot be combined with --version, --force, --rollback or --to" in err
    )


def test_from_live_without_a_request_log_says_so(
    evaluated: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped HOUSING_REQUEST_LOG read "too few labelled rows: 0 shadowed and 0 canary
    # rows … (send true values with POST /feedback …)": labels the log elsewhere had.
    missing = tmp_path / "typo.db"
    settings = _live_settings(evaluated, tmp_path, missing)
    with pytest.raises(Exception) as refused:
        promote_from_live(settings)
    assert type(refused.value).__name__ == "GateRejected"
    assert str(refused.value) == (
        f"challenger version 1 vs champion version 2: no request log at {missing}, so no "
        "labelled row: point serve.request_log or HOUSING_REQUEST_LOG at the service's log"
    )
    assert not missing.exists()
    assert _aliases(settings) == {"champion": "2", "challenger": "1", "previous-champion": None}


def test_canary_evidence_promotes_when_better(
    evaluated: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "live.db"
    settings = _live_settings(evaluated, tmp_path, log)
    rng = np.random.default_rng(5)
    n = 1200
    actual = rng.uniform(0.5, 5.0, n)
    canary = np.arange(n) % 5 == 0  # every fifth request answered by the challenger
    noise = np.where(canary, 0.2, 0.6)
    pred = actual + rng.normal(0, 1, n) * noise
    write_log_rows(
        log,
        [
            answered_row(
                f"k{i}",
                ts=1000.0 + i,
                version="1" if canary[i] else "2",
                role="challenger" if canary[i] else "champion",
                prediction=float(pred[i]),
            )
            for i in range(n)
        ],
    )
    store.apply_feedback(
        log, [(f"k{i}", 0, float(actual[i])) for i in range(n)], source="t", all_or_nothing=True
    )
    result = promote_from_live(settings)
    assert result["promoted"] is True
    assert result["evidence"]["kind"] == "unpaired"
    # The champion's rows of the canary's period: up to its last answer (request 1195).
    in_period = int((~canary[:1196]).sum())
    assert result["evidence"]["rows"] == 240 and result["evidence"]["champion_rows"] == in_period
    assert _aliases(settings) == {"champion": "1", "challenger": None, "previous-champion": "2"}
