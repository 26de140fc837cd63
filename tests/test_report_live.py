"""`housing report`'s "Champion vs challenger" section and its pure live-quality helpers.

The request logs are real SQLite logs written through the store's sink; true values go
into the ``feedback`` table by plain SQL (``helpers.add_feedback``: the stand-in for
POST /feedback until that endpoint is merged). The section with a registry (holdout RMSE
beside live RMSE) is tested on test_report.py's full state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import add_feedback, champion_challenger_rows
from synthetic import write_config

from housing_mlops import store
from housing_mlops.cli import run
from housing_mlops.config import load_config
from housing_mlops.report import live_quality
from housing_mlops.store import LabelledRows

HOUR = 3600.0


def _labelled(
    ts: list[float],
    version: list[str],
    role: list[str | None],
    pred: list[float],
    actual: list[float],
    shadow: list[float | None] | None = None,
) -> LabelledRows:
    n = len(ts)
    shadow = shadow or [None] * n
    objects = lambda values: np.array(values, dtype=object)  # noqa: E731
    return LabelledRows(
        ts=np.array(ts, dtype=float),
        model_version=objects(version),
        role=objects(role),
        prediction=np.array(pred, dtype=float),
        shadow_version=objects(["2" if s is not None else None for s in shadow]),
        shadow_prediction=np.array([np.nan if s is None else s for s in shadow], dtype=float),
        actual=np.array(actual, dtype=float),
        received_at=np.array(ts, dtype=float) + 10,
    )


def test_each_version_is_scored_on_its_own_rows_and_the_challenger_on_its_shadow() -> None:
    rows = _labelled(
        ts=[0.0, 10.0, 20.0, 30.0],
        version=["1", "1", "2", "1"],
        role=["champion", None, "challenger", "champion"],  # None: logged before roles
        pred=[1.0, 2.0, 3.0, 4.0],
        actual=[1.5, 2.5, 2.0, 4.0],
        shadow=[1.0, None, None, 5.0],
    )
    got = {(q["role"], q["model_version"]): q for q in live_quality.per_version(rows)}
    assert list(got) == [("champion", "1"), ("challenger", "2")]  # the champion first
    champion, challenger = got["champion", "1"], got["challenger", "2"]
    assert champion["rows"] == 3
    assert champion["rmse"] == pytest.approx(np.sqrt((0.25 + 0.25 + 0.0) / 3))
    assert champion["mae"] == pytest.approx(1.0 / 3)
    # The canary row (error 1.0) and the two shadowed rows (errors 0.5 and 1.0).
    assert challenger["rows"] == 3
    assert challenger["rmse"] == pytest.approx(np.sqrt((1.0 + 0.25 + 1.0) / 3))
    (pair,) = live_quality.paired(rows)
    assert (pair["model_version"], pair["shadow_version"], pair["rows"]) == ("1", "2", 2)
    assert pair["rmse"] == pytest.approx(np.sqrt(0.25 / 2))
    assert pair["shadow_rmse"] == pytest.approx(np.sqrt(1.25 / 2))


def test_live_rmse_over_time_is_bucketed_by_hour_or_day_by_the_span() -> None:
    assert live_quality.bucket_seconds(0.0, 2 * 86400.0) == HOUR
    assert live_quality.bucket_seconds(0.0, 2 * 86400.0 + 1) == 86400.0
    rows = _labelled(
        ts=[7200.0, 7300.0, 10900.0],
        version=["1", "1", "1"],
        role=["champion"] * 3,
        pred=[1.0, 1.0, 1.0],
        actual=[1.0, 2.0, 4.0],
    )
    series = live_quality.over_time(rows, HOUR)
    assert series == {
        ("champion", "1"): [
            {"start": 7200.0, "rows": 2, "rmse": pytest.approx(np.sqrt(0.5))},
            {"start": 10800.0, "rows": 1, "rmse": 3.0},
        ]
    }
    assert live_quality.traffic_shares([{"rows": 3}, {"rows": 1}]) == [0.75, 0.25]


def _report(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str, str]:
    code = run(["--config", str(config), "report", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    markdown = Path(result["markdown"]).read_text()
    live = markdown.split("## Champion vs challenger")[1]
    return result, markdown, live


def test_a_log_without_a_challenger_or_labels_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    rows = [r for r in champion_challenger_rows(40) if r.role != "challenger"]
    for r in rows:
        r.shadow_version = r.shadow_prediction = None
    sink = store.open_sink(load_config(config).serve.request_log)
    sink.write([store.row_values(r) for r in rows])
    sink.close()
    result, markdown, live = _report(config, capsys)
    assert result["sections"]["serving"] == "ok" and result["sections"]["live"] == "empty"
    blocks = [b for b in live.strip().split("\n\n") if b.strip()]
    assert blocks == [
        "> No challenger has served and no true values have arrived yet: nothing to compare. "
        "Run `housing promote --to challenger`, serve with `--challenger-mode shadow` and "
        "send labels (`POST /feedback` or `housing feedback FILE`)."
    ]
    assert "live_rmse.png" not in markdown
    assert not (tmp_path / "reports" / "report_files" / "live_rmse.png").exists()


def test_challenger_traffic_without_labels_shows_traffic_and_divergence_but_no_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    sink = store.open_sink(load_config(config).serve.request_log)
    sink.write([store.row_values(r) for r in champion_challenger_rows(100)])
    sink.close()
    result, _, live = _report(config, capsys)
    assert result["sections"]["live"] == "ok"
    # 80 champion rows in 70 requests (10 two-row batches), 20 canary rows: 80 % / 20 %;
    # per-request latency p99: the champion's 20 ms batches, the canary's 4..6 ms.
    assert "| champion | 1 | 80 | 80.0 % | 70 | 4 | 20 |" in live, live
    assert "| challenger | 2 | 20 | 20.0 % | 20 | 5 | 6 |" in live, live
    # Divergence on the 60 shadowed rows: 0.1 * (i % 5) for i % 10 < 6, mean 1/6.
    assert "| v1 | v2 | 60 | 0.1667 | 0.4 |" in live, live
    assert "No true values yet" in live and "live_rmse.png" not in live


def test_labels_give_live_rmse_per_version_paired_and_over_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    log = load_config(config).serve.request_log
    rows = champion_challenger_rows(300)  # 5 hours
    sink = store.open_sink(log)
    sink.write([store.row_values(r) for r in rows])
    sink.close()
    answered = [r for r in rows if r.status == 200]
    add_feedback(log, [(r.request_id, r.row_index, r.prediction + 0.3) for r in answered])
    result, markdown, live = _report(config, capsys)
    assert result["sections"]["live"] == "ok"
    # The champion is 0.3 off on every row it answered; no registry: holdout unknown.
    assert "| champion | 1 | 240 | 0.3 | 0.3 | – | – |" in live, live
    # The challenger: 60 canary rows (0.3 off) and 180 shadowed rows (|0.3 - 0.1 k| off).
    shadow_err = [0.3 - 0.1 * (i % 5) for i in range(300) if i % 10 < 6]
    canary_err = [0.3] * 60
    expected = float(np.sqrt(np.mean(np.square(shadow_err + canary_err))))
    assert f"| challenger | 2 | 240 | {expected:.4g} |" in live, live
    paired_rmse = float(np.sqrt(np.mean(np.square(shadow_err))))
    assert f"| v1 | v2 | 180 | 0.3 | {paired_rmse:.4g} |" in live, live
    assert "![Live RMSE per hour](report_files/live_rmse.png)" in live
    png = tmp_path / "reports" / "report_files" / "live_rmse.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
