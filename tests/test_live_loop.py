"""The whole live loop, as the demo runs it: a real `housing serve` with a challenger in
shadow, the traffic generator posting true values for half of what it sent, then
`housing evaluate --live`, `housing report` and `housing promote --from-live`.

Every piece is the real one (a registry copy with two versions, uvicorn over HTTP, the
SQLite request log, POST /feedback with its token, the CLI), so this is where the three
parts meet: the live RMSE of each model must be the offline RMSE of that model on exactly
the rows that got a label.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import HOUSING, champion_config, free_port, ready, wait_until

from housing_mlops import registry
from housing_mlops.columns import FEATURES
from housing_mlops.config import load_config

pytestmark = pytest.mark.slow

TOKEN = "loop-test-token"


def _env(config: Path) -> dict[str, str]:
    env = {**os.environ, "HOUSING_FEEDBACK_TOKEN": TOKEN}
    env.pop("HOUSING_RELOAD_TOKEN", None)
    env["HOUSING_REQUEST_LOG"] = str(config.parent / "requests.db")
    return env


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOUSING), "-c", str(config), *args],
        env=_env(config),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_shadow_traffic_with_labels_gives_each_model_its_offline_rmse_on_those_rows(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = champion_config(tmp_path_factory)  # version 2 (hist_gb) is the champion
    settings = load_config(config)
    registry.set_alias(settings, registry.CHALLENGER, "1")  # ridge in shadow
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = config.parent / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(HOUSING), "-c", str(config), "serve", "--port", str(port)]
            + ["--challenger-mode", "shadow"],
            env=_env(config),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: ready(url), 60, "housing serve /ready", proc=server, log=log)
        info = httpx.get(f"{url}/model/info").json()
        assert info["challenger_mode"] == "shadow" and info["challenger"]["version"] == "1"
        traffic = subprocess.run(
            [sys.executable, "-m", "housing_mlops.traffic", "-c", str(config), "--url", url]
            + ["--rows", "300", "--rate", "0", "--seed", "3", "--batch-size", "3"]
            + ["--feedback-share", "0.5", "--feedback-delay", "2", "--json"],
            env=_env(config),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert traffic.returncode == 0, traffic.stderr
        sent = json.loads(traffic.stdout)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()[-3000:]
    feedback = sent["feedback"]
    assert feedback["applied"] == 150 and feedback["unknown"] == feedback["duplicate"] == 0

    # The labelled rows, straight from the log: the features the service saw, both
    # predictions and the true value.
    db = sqlite3.connect(config.parent / "requests.db")
    cols = ", ".join(f"r.{c}" for c in FEATURES)
    rows = db.execute(
        f"SELECT {cols}, r.prediction, r.shadow_prediction, r.role, r.model_version, "  # noqa: S608
        "r.shadow_version, f.actual FROM feedback f JOIN requests r "
        "ON r.request_id = f.request_id AND r.row_index = f.row_index"
    ).fetchall()
    db.close()
    assert len(rows) == 150
    data = np.array([r[:10] for r in rows], dtype=np.float64)
    assert {(r[10], r[11], r[12]) for r in rows} == {("champion", "2", "1")}
    X, actual = data[:, :8], np.array([r[13] for r in rows])
    models = {
        v: registry.load_model(settings, registry.resolve(settings, version=v)) for v in (1, 2)
    }
    import pandas as pd

    frame = pd.DataFrame(X, columns=FEATURES)
    offline = {v: models[v].predict(frame) for v in (1, 2)}
    # What was logged is what each model computes for those rows.
    assert np.abs(data[:, 8] - offline[2]).max() <= 1e-9
    assert np.abs(data[:, 9] - offline[1]).max() <= 1e-9

    def rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred - actual) ** 2)))

    live = _cli(config, "evaluate", "--live", "--json")
    assert live.returncode == 0, live.stderr
    result = json.loads(live.stdout)
    assert result["labelled_rows"] == 150
    by = {(m["model_version"], m["role"], m["scored"]): m for m in result["models"]}
    assert set(by) == {("2", "champion", "answered"), ("1", "challenger", "shadow")}
    assert by[("2", "champion", "answered")]["rmse"] == pytest.approx(rmse(offline[2]), rel=1e-9)
    assert by[("1", "challenger", "shadow")]["rmse"] == pytest.approx(rmse(offline[1]), rel=1e-9)
    (paired,) = [c for c in result["comparisons"] if c["kind"] == "paired"]
    assert paired["rows"] == 150
    assert paired["difference"] == pytest.approx(rmse(offline[1]) - rmse(offline[2]), rel=1e-9)

    # The report shows both models' live RMSE; the live gate decides on the same rows.
    report = _cli(config, "report", "--out", str(tmp_path_factory.mktemp("report")), "--json")
    assert report.returncode == 0, report.stderr
    md = Path(json.loads(report.stdout)["markdown"]).read_text()
    assert "Champion vs challenger" in md
    assert f"{rmse(offline[2]):.4f}" in md and f"{rmse(offline[1]):.4f}" in md
    gate = _cli(config, "promote", "--from-live", "--dry-run", "--json")
    decision: dict[str, Any] = json.loads(gate.stdout)
    # 150 labelled rows is below promote.min_live_rows (200): refused, saying so.
    assert gate.returncode == 6 and "too few labelled rows" in decision["reason"]
