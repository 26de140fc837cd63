"""The challenger in the service: shadow and canary on a real uvicorn server, the request
log on SQLite and PostgreSQL, hot reload of both aliases through a real MLflow registry,
and the metrics' role label (one worker, and two workers in Prometheus multiprocess mode).

Most tests serve two genuinely different in-memory pipelines (champion: HistGradientBoosting
version "1"; challenger: Ridge version "2"), so "which model answered" shows in the numbers.
The registry tests use the session's trained store (tests/helpers.py champion_config).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import (
    HOUSING,
    ServerThread,
    champion_config,
    fit_two_versions,
    free_port,
    wait_until,
)
from synthetic import make_frame, write_config

from housing_mlops import registry
from housing_mlops.config import load_config
from housing_mlops.features import FEATURES
from housing_mlops.inference.loaded_model import LoadedModel, ModelMeta
from housing_mlops.serving.app import create_app
from housing_mlops.serving.metrics import ServingMetrics
from housing_mlops.serving.predictor import build_served_model
from housing_mlops.serving.routing import canary_point, routes_to_challenger
from housing_mlops.serving.shadow import ShadowScorer
from housing_mlops.store import LoggedRequest

TOKEN = "s3cret-reload"  # noqa: S105 - a test token


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Champion "1" (hist GB) and challenger "2" (ridge), fitted on the same rows."""
    fitted = fit_two_versions(tmp_path_factory.mktemp("pipes"))
    X = fitted["X"]
    fitted["rows"] = [{k: float(v) for k, v in X.iloc[i].items()} for i in range(len(X))]
    return fitted


def _loaded(pipes: dict[str, Any], version: str, alias: str) -> LoadedModel:
    meta = ModelMeta(name="test-housing", version=version, alias=alias, run_id=f"run{version}")
    return build_served_model(pipes["pipes"][version], meta, pipes["profile"])


def _settings(tmp_path: Path, log: str | None = None, **serve: Any) -> Any:
    overrides = {
        "serve": {
            "request_log": log or str(tmp_path / "requests.db"),
            "spool_dir": str(tmp_path / "spool"),
            "reload_interval_s": 0,
            "log_flush_interval_s": 0.2,
            **serve,
        }
    }
    return load_config(write_config(tmp_path, overrides))


def _app(
    settings: Any,
    pipes: dict[str, Any],
    challenger: LoadedModel | None = None,
    **kwargs: Any,
) -> Any:
    """The app with in-memory champion "1" and ``challenger`` (default: ridge "2")."""
    challenger = challenger or _loaded(pipes, "2", "challenger")
    return create_app(
        settings,
        _loaded(pipes, "1", "champion"),
        loader=lambda v: _loaded(pipes, "1", "champion"),
        alias_version=lambda: "1",
        challenger=challenger,
        challenger_alias_version=lambda: challenger.meta.version,
        challenger_loader=lambda v: challenger,
        **kwargs,
    )


def _expected(pipes: dict[str, Any], version: str, rows: list[dict[str, float]]) -> np.ndarray:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=FEATURES)
    return np.asarray(pipes["pipes"][version].predict(frame), dtype=np.float64)


def _log_rows(location: str | Path) -> list[dict[str, Any]]:
    """Every answered row of the request log (SQLite path or PostgreSQL URL)."""
    log = str(location)
    sql = (
        "SELECT request_id, row_index, model_version, prediction, role, shadow_version, "
        "shadow_prediction, status FROM requests WHERE status = 200 ORDER BY id"
    )
    if log.startswith("postgresql://"):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(log, connect_timeout=5, row_factory=dict_row) as conn:
            return list(conn.execute(sql).fetchall())
    lite = sqlite3.connect(log)
    lite.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in lite.execute(sql)]
    finally:
        lite.close()


def _samples(text: str, metric: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of one metric in a Prometheus exposition, keyed by its label set."""
    import re

    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        if name == metric:
            out[frozenset(re.findall(r'(\w+)="([^"]*)"', rest))] = float(value)
    return out


def _sum(text: str, metric: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in _samples(text, metric).items() if want <= k)


# ----------------------------------------------------------------- canary routing
def _binomial_bounds(n: int, p: float, z: float = 4.5) -> tuple[float, float]:
    sd = (n * p * (1 - p)) ** 0.5
    return n * p - z * sd, n * p + z * sd


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_canary_share_over_10000_keys_is_within_binomial_bounds(share: float) -> None:
    # Keys as clients send them (ids) and as the service makes them (prefix + counter).
    for keys in (
        [f"client-{i}" for i in range(10_000)],
        [f"3fa9c2d41b7e{i:x}" for i in range(1, 10_001)],
    ):
        hits = sum(routes_to_challenger(k, share) for k in keys)
        lo, hi = _binomial_bounds(len(keys), share)
        assert lo <= hits <= hi, f"{hits} of 10,000 keys to the challenger at share {share}"


def test_canary_shares_nothing_at_0_and_everything_at_1() -> None:
    keys = [f"k{i}" for i in range(2000)]
    assert not any(routes_to_challenger(k, 0.0) for k in keys)
    assert all(routes_to_challenger(k, 1.0) for k in keys)


def test_a_key_maps_to_the_same_model_in_every_process() -> None:
    """Workers and replicas are separate processes: the route must not depend on the
    process (Python's own hash() is salted per process and would fail this)."""
    keys = [f"client-{i}" for i in range(200)]
    here = [canary_point(k) for k in keys]
    code = (
        "import json, sys; from housing_mlops.serving.routing import canary_point; "
        "print(json.dumps([canary_point(k) for k in json.loads(sys.argv[1])]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(keys)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert json.loads(out) == here
    # Raising the share only moves keys to the challenger, never back.
    at_10 = {k for k in keys if routes_to_challenger(k, 0.1)}
    at_30 = {k for k in keys if routes_to_challenger(k, 0.3)}
    assert at_10 < at_30


def test_canary_over_http_sticks_each_key_to_one_model(
    tmp_path: Path, pipes: dict[str, Any]
) -> None:
    settings = _settings(tmp_path, challenger_mode="canary", canary_share=0.3)
    app = _app(settings, pipes)
    rows = pipes["rows"][:120]
    champion, challenger = _expected(pipes, "1", rows), _expected(pipes, "2", rows)
    answers: list[tuple[str, str, str, float, int]] = []
    with ServerThread(app) as server, httpx.Client(base_url=server.base, timeout=10) as http:
        for _ in range(2):  # every key twice: it must land on the same model
            for i, row in enumerate(rows):
                r = http.post("/predict", json=row, headers={"X-Client-Key": f"client-{i}"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert (r.headers["x-model-role"], r.headers["x-model-version"]) == (
                    body["role"],
                    body["model_version"],
                )
                answers.append(
                    (f"client-{i}", body["role"], body["request_id"], body["prediction"], i)
                )
        # No key header: the request id decides (the client's X-Request-ID here).
        by_id = {}
        for i in range(40):
            rid = f"req-{i}"
            r = http.post("/predict", json=rows[i], headers={"X-Request-ID": rid})
            by_id[rid] = r.json()["role"]
        info = http.get("/model/info").json()
        text = http.get("/metrics").text
    for key, role, _, pred, i in answers:
        expected_role = "challenger" if routes_to_challenger(key, 0.3) else "champion"
        assert role == expected_role, key
        want = challenger[i] if role == "challenger" else champion[i]
        assert pred == pytest.approx(want, rel=1e-9, abs=1e-9)
    first, second = answers[: len(rows)], answers[len(rows) :]
    assert [a[1] for a in first] == [a[1] for a in second]
    shared = sum(a[1] == "challenger" for a in first)
    assert 0 < shared < len(rows)
    assert by_id == {
        rid: "challenger" if routes_to_challenger(rid, 0.3) else "champion" for rid in by_id
    }
    assert info["challenger_mode"] == "canary"
    assert info["challenger"]["version"] == "2" and info["version"] == "1"
    # Metrics: requests and predictions by role, as the clients saw them.
    total_challenger = 2 * shared + sum(r == "challenger" for r in by_id.values())
    total = 2 * len(rows) + len(by_id)
    requests = "housing_http_requests_total"
    assert _sum(text, requests, handler="/predict", role="challenger") == total_challenger
    assert _sum(text, requests, handler="/predict", role="champion") == total - total_challenger
    assert (
        _sum(text, "housing_predictions_total", model_version="2", role="challenger")
        == total_challenger
    )
    assert (
        _sum(text, "housing_http_request_duration_seconds_count", role="challenger")
        == total_challenger
    )
    # The log says who answered each row.
    logged = {r["request_id"]: r for r in _log_rows(settings.serve.request_log)}
    assert len(logged) == total
    for _key, role, rid, pred, _ in answers:
        row = logged[rid]
        assert (row["role"], row["model_version"], row["prediction"]) == (
            role,
            "2" if role == "challenger" else "1",
            pred,
        )
        assert row["shadow_version"] is None and row["shadow_prediction"] is None


def test_the_readme_canary_example_answers_as_it_shows(
    tmp_path: Path, pipes: dict[str, Any]
) -> None:
    """The README's canary example, sent to a canary service at the default canary_share,
    is answered by the model it shows (its key had been one the champion answers)."""
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    example = readme.split("housing serve --challenger-mode canary\n", 1)[1].split("```")[0]
    key = re.search(r"X-Client-Key: ([\w-]+)", example)
    role = re.search(r"^# x-model-role: (\w+)$", example, flags=re.M)
    assert key and role, example
    assert f'"role":"{role[1]}"' in example  # the body shows the same role as the header
    default_share = load_config(repo / "configs" / "default.yaml").serve.canary_share
    settings = _settings(tmp_path, challenger_mode="canary", canary_share=default_share)
    with ServerThread(_app(settings, pipes)) as server:
        r = httpx.post(
            f"{server.base}/predict", json=pipes["rows"][0], headers={"X-Client-Key": key[1]}
        )
    assert r.status_code == 200, r.text
    assert (r.headers["x-model-role"], r.json()["role"]) == (role[1], role[1])


# ------------------------------------------------------------------------- shadow
@pytest.fixture(params=["sqlite", "postgresql"])
def log_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "requests.db")
    return str(request.getfixturevalue("pg_url"))


def test_shadow_logs_both_predictions_and_answers_with_the_champion(
    tmp_path: Path, pipes: dict[str, Any], log_location: str
) -> None:
    settings = _settings(tmp_path, log_location, challenger_mode="shadow")
    app = _app(settings, pipes)
    rows = pipes["rows"][:200]
    answers: dict[str, list[float]] = {}
    sent: dict[str, list[int]] = {}
    errors: list[str] = []

    def client(part: int) -> None:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            for j in range(part * 50, part * 50 + 50, 5):
                # Singles and batches of 4 mixed: row_index must line up in both.
                if j % 2:
                    idx = [j]
                    r = http.post("/predict", json=rows[j])
                else:
                    idx = list(range(j, j + 4))
                    r = http.post("/predict", json={"instances": [rows[i] for i in idx]})
                if r.status_code != 200 or r.headers["x-model-role"] != "champion":
                    errors.append(f"{r.status_code} {r.headers.get('x-model-role')} {r.text}")
                    continue
                body = r.json()
                answers[body["request_id"]] = body.get("predictions", [body.get("prediction")])
                sent[body["request_id"]] = idx

    with ServerThread(app) as server:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        info = httpx.get(f"{server.base}/model/info").json()
    # The server has stopped: the shadow scorer drained into the writer, which flushed.
    assert errors == []
    assert info["challenger_mode"] == "shadow" and info["challenger"]["version"] == "2"
    champion, challenger = _expected(pipes, "1", rows), _expected(pipes, "2", rows)
    logged = _log_rows(log_location)
    expected_rows = sum(len(v) for v in sent.values())
    assert len(logged) == expected_rows, "rows lost or duplicated"
    assert len({(r["request_id"], r["row_index"]) for r in logged}) == expected_rows
    for row in logged:
        i = sent[row["request_id"]][row["row_index"]]
        # The client got the champion's answer, and so says the log...
        assert answers[row["request_id"]][row["row_index"]] == row["prediction"]
        assert row["prediction"] == pytest.approx(champion[i], rel=1e-9, abs=1e-9)
        assert (row["role"], row["model_version"]) == ("champion", "1")
        # ...with the challenger's prediction of the same row beside it.
        assert row["shadow_version"] == "2"
        assert row["shadow_prediction"] == pytest.approx(challenger[i], rel=1e-9, abs=1e-9)
    assert not np.allclose(champion, challenger)  # two models that really differ


class _BrokenModel:
    """A stand-in for a challenger's predict: the real pipelines never raise or hang on
    valid rows, so the failure has to be injected to show the answer does not depend on it.
    ``hold`` blocks every call until it is set (a hung challenger; a CPU-bound slow one
    is what `make bench-shadow` measures)."""

    def __init__(self, fail: bool = False, hold: threading.Event | None = None) -> None:
        self.fail = fail
        self.hold = hold
        self.calls = 0
        self.rows: list[int] = []  # rows of each call

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows.append(X.shape[0])
        if self.hold is not None:
            self.hold.wait(30)
        if self.fail:
            raise RuntimeError("challenger exploded")
        return np.full(X.shape[0], 9.0)


def _broken_challenger(pipes: dict[str, Any], predict: _BrokenModel) -> LoadedModel:
    real = _loaded(pipes, "2", "challenger")
    real.predict = predict
    return real


def test_a_failing_challenger_never_changes_the_answer(
    tmp_path: Path, pipes: dict[str, Any]
) -> None:
    settings = _settings(tmp_path, challenger_mode="shadow")
    broken = _BrokenModel(fail=True)
    app = _app(settings, pipes, challenger=_broken_challenger(pipes, broken))
    rows = pipes["rows"][:30]
    with ServerThread(app) as server, httpx.Client(base_url=server.base, timeout=10) as http:
        got = [http.post("/predict", json=row) for row in rows]
        assert [r.status_code for r in got] == [200] * len(rows)

        def errors_counted() -> float:
            text = http.get("/metrics").text
            return _sum(text, "housing_shadow_errors_total") == len(rows)

        wait_until(errors_counted, 10, "the challenger's failures in the metrics")
        info = http.get("/model/info").json()
    assert broken.calls > 0
    champion = _expected(pipes, "1", rows)
    assert [r.json()["prediction"] for r in got] == pytest.approx(champion, rel=1e-9, abs=1e-9)
    assert {r.json()["role"] for r in got} == {"champion"}
    assert info["shadow"]["error_rows"] == len(rows)
    logged = _log_rows(settings.serve.request_log)
    assert len(logged) == len(rows)
    assert all(r["shadow_prediction"] is None and r["shadow_version"] is None for r in logged)
    assert [r["prediction"] for r in logged] == [r.json()["prediction"] for r in got]


def test_a_failing_canary_challenger_hands_the_request_to_the_champion(
    tmp_path: Path, pipes: dict[str, Any]
) -> None:
    settings = _settings(tmp_path, challenger_mode="canary", canary_share=1.0)
    broken = _BrokenModel(fail=True)
    app = _app(settings, pipes, challenger=_broken_challenger(pipes, broken))
    rows = pipes["rows"][:5]
    with ServerThread(app) as server, httpx.Client(base_url=server.base, timeout=10) as http:
        got = [http.post("/predict", json=row) for row in rows]
    assert broken.calls == len(rows)  # every request went to the challenger first
    assert [r.status_code for r in got] == [200] * len(rows)
    assert {(r.headers["x-model-role"], r.headers["x-model-version"]) for r in got} == {
        ("champion", "1")
    }
    champion = _expected(pipes, "1", rows)
    assert [r.json()["prediction"] for r in got] == pytest.approx(champion, rel=1e-9, abs=1e-9)
    logged = _log_rows(settings.serve.request_log)
    assert [(r["role"], r["model_version"]) for r in logged] == [("champion", "1")] * len(rows)


def test_a_hung_challenger_never_delays_the_answer_and_no_row_is_lost(
    tmp_path: Path, pipes: dict[str, Any]
) -> None:
    """Every answer arrives while the challenger is blocked on its first batch; the queue
    (4 rows) fills, the rest is dropped and counted; all rows reach the log once."""
    settings = _settings(tmp_path, challenger_mode="shadow", shadow_queue_size=4)
    hold = threading.Event()
    hung = _BrokenModel(hold=hold)
    app = _app(settings, pipes, challenger=_broken_challenger(pipes, hung))
    rows = pipes["rows"][:40]
    try:
        with ServerThread(app) as server, httpx.Client(base_url=server.base, timeout=10) as http:
            got = [http.post("/predict", json=row) for row in rows]
            # Still blocked: none of these answers waited for the challenger.
            assert not hold.is_set()
            assert [r.status_code for r in got] == [200] * len(rows)
            wait_until(lambda: hung.calls == 1, 10, "the challenger to hold its first batch")
            text = http.get("/metrics").text
            dropped = _sum(text, "housing_shadow_dropped_total")
            queued = http.get("/model/info").json()["shadow"]["queued_rows"]
            # Kept: the batch it holds and what fits in the queue; the rest was dropped.
            assert queued <= 4
            assert dropped + hung.rows[0] + queued == len(rows)
            assert dropped >= len(rows) - 4 - hung.rows[0] > 0
            hold.set()  # the challenger answers; the server drains and stops
    finally:
        hold.set()
    champion = _expected(pipes, "1", rows)
    assert [r.json()["prediction"] for r in got] == pytest.approx(champion, rel=1e-9, abs=1e-9)
    logged = _log_rows(settings.serve.request_log)
    assert sorted(r["request_id"] for r in logged) == sorted(r.json()["request_id"] for r in got)
    shadowed = [r for r in logged if r["shadow_prediction"] is not None]
    assert len(shadowed) == len(rows) - dropped
    assert {r["shadow_prediction"] for r in shadowed} == {9.0}


def _champion_row(i: int) -> LoggedRequest:
    """A request-log row the champion answered, waiting for its shadow prediction."""
    return LoggedRequest(
        ts=0.0,
        request_id=f"r{i}",
        row_index=0,
        model_name="m",
        model_version="1",
        features=(0.0,) * 8,
        prediction=1.0,
        latency_ms=1.0,
        status=200,
        role="champion",
    )


def test_shutdown_does_not_wait_forever_for_a_hung_challenger_nor_log_twice() -> None:
    """ShadowScorer.close gives up after its timeout: the rows it holds are logged
    without a shadow prediction, and not again when the challenger finally returns."""
    hold = threading.Event()
    meta = ModelMeta(name="m", version="7", alias="challenger")
    predict = _BrokenModel(hold=hold)
    model = LoadedModel(meta=meta, pipeline=None, predict=predict, fast_path=False, loaded_at=0.0)
    logged: list[LoggedRequest] = []

    def submit(rows: list[LoggedRequest]) -> int:
        logged.extend(rows)
        return len(rows)

    scorer = ShadowScorer(lambda: model, submit, ServingMetrics(), max_rows=100, batch_rows=2)
    scorer.start()

    for i in range(6):
        assert scorer.submit(np.zeros((1, 8)), [_champion_row(i)])
    thread = scorer._thread
    assert thread is not None
    wait_until(lambda: predict.calls == 1, 5, "the challenger to hold its first batch")
    scorer.close(timeout=0.3)
    assert sorted(r.request_id for r in logged) == [f"r{i}" for i in range(6)]
    assert all(r.shadow_prediction is None for r in logged)
    hold.set()  # the challenger returns now: its batch was already logged
    thread.join(10)
    assert not thread.is_alive()
    assert len(logged) == 6
    assert not scorer.submit(np.zeros((1, 8)), [_champion_row(9)])  # closed: the caller logs it


def test_the_event_loop_scores_shadow_batches_when_the_scorer_thread_cannot() -> None:
    """With inline champion batches the loop holds the GIL under load and the scorer's
    thread falls behind (half the rows dropped in `make bench-shadow` before this): with
    ``help_on_loop`` a full batch is scored on the loop right after the answers that
    filled it. Here the thread is stuck on its first batch (its predict blocks: injected,
    as a thread starved of the GIL cannot be produced on demand); the loop still scores
    the rest, and every row is logged exactly once when the thread returns."""
    import asyncio

    hold = threading.Event()
    scored_on: list[str] = []

    def predict(X: np.ndarray) -> np.ndarray:
        name = threading.current_thread().name
        scored_on.append(name)
        if name != "MainThread":
            hold.wait(30)
        return np.full(X.shape[0], 9.0)

    meta = ModelMeta(name="m", version="7", alias="challenger")
    model = LoadedModel(meta=meta, pipeline=None, predict=predict, fast_path=False, loaded_at=0.0)
    logged: list[LoggedRequest] = []

    def submit(rows: list[LoggedRequest]) -> int:
        logged.extend(rows)
        return len(rows)

    scorer = ShadowScorer(
        lambda: model, submit, ServingMetrics(), max_rows=100, batch_rows=2, help_on_loop=True
    )
    scorer.start()

    async def traffic() -> None:
        for i in range(20):
            assert scorer.submit(np.zeros((1, 8)), [_champion_row(i)])
            await asyncio.sleep(0.002)  # a few loop turns between requests

    asyncio.run(traffic())
    on_loop = [r for r in logged if r.shadow_prediction == 9.0]
    assert scored_on.count("MainThread") >= 5
    assert len(on_loop) >= 10  # scored and logged while the thread was stuck
    hold.set()
    scorer.close(timeout=10)
    assert sorted(r.request_id for r in logged) == sorted(f"r{i}" for i in range(20))
    assert all(r.shadow_prediction == 9.0 for r in logged)


def test_a_pinned_version_turns_the_challenger_off_and_says_so(
    tmp_path: Path, pipes: dict[str, Any]
) -> None:
    from fastapi.testclient import TestClient

    settings = _settings(tmp_path, challenger_mode="shadow")
    app = _app(settings, pipes, model_version=1)
    with TestClient(app) as c:
        r = c.post("/predict", json=pipes["rows"][0])
        info = c.get("/model/info").json()
    assert r.headers["x-model-role"] == "champion" and r.headers["x-model-version"] == "1"
    assert info["challenger_mode"] == "off"
    assert info["challenger_mode_configured"] == "shadow"
    assert "pinned" in info["challenger_mode_reason"]
    assert info["challenger"] is None
    logged = _log_rows(settings.serve.request_log)
    assert [(r["role"], r["shadow_version"]) for r in logged] == [("champion", None)]


def test_unquoted_off_in_yaml_means_off(tmp_path: Path) -> None:
    import yaml

    config = write_config(tmp_path, {"serve": {"challenger_mode": "shadow"}})
    text = config.read_text()
    assert "challenger_mode: shadow" in text
    # YAML 1.1 reads an unquoted off as false; it still means the mode off.
    config.write_text(text.replace("challenger_mode: shadow", "challenger_mode: off"))
    assert yaml.safe_load(config.read_text())["serve"]["challenger_mode"] is False
    assert load_config(config).serve.challenger_mode == "off"


# --------------------------------------------------------------- registry, reload
def _reload(base: str) -> httpx.Response:
    return httpx.post(
        f"{base}/model/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    )


def _registry_settings(config: Path, mode: str, interval: float) -> Any:
    settings = load_config(config)
    serve = settings.serve.model_copy(
        update={
            "challenger_mode": mode,
            "reload_interval_s": interval,
            "log_flush_interval_s": 0.2,
            "request_log": config.parent / "requests.db",
        }
    )
    return settings.model_copy(update={"serve": serve})


def test_reload_follows_the_challenger_alias_in_a_real_registry(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions 1 (ridge) and 2 (hist GB, champion) of a real MLflow store: the
    challenger alias is added, moved, broken and removed while the service runs."""
    monkeypatch.setenv("HOUSING_RELOAD_TOKEN", TOKEN)
    settings = _registry_settings(champion_config(tmp_path_factory, "2"), "shadow", 0)
    row = {k: float(v) for k, v in make_frame(3, seed=5)[FEATURES].iloc[0].items()}
    app = create_app(settings)
    with ServerThread(app) as server:
        base = server.base
        wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200, 60, "the champion")
        info = httpx.get(f"{base}/model/info").json()
        assert (info["version"], info["challenger"], info["challenger_mode"]) == ("2", None, "off")
        assert "no model version has the challenger alias" in info["challenger_mode_reason"]
        # Added.
        registry.set_alias(settings, registry.CHALLENGER, "1")
        r = _reload(base)
        assert r.status_code == 200, r.text
        assert r.json()["challenger"]["version"] == "1"
        info = httpx.get(f"{base}/model/info").json()
        assert info["challenger"]["version"] == "1" and info["challenger"]["alias"] == "challenger"
        assert info["challenger_mode"] == "shadow" and info["challenger_mode_reason"] is None
        answer = httpx.post(f"{base}/predict", json=row).json()
        assert (answer["model_version"], answer["role"]) == ("2", "champion")
        # Moved (here onto the champion's version: a second copy, scored in shadow).
        registry.set_alias(settings, registry.CHALLENGER, "2")
        assert _reload(base).json()["challenger"]["version"] == "2"
        assert httpx.get(f"{base}/model/info").json()["challenger"]["version"] == "2"
        # Broken: version 1's recorded checksum no longer matches its file. The challenger
        # reload fails (500, reported), the champion serves on, the old challenger too.
        registry.set_version_tags(settings, "1", {registry.SHA_TAG: "0" * 64})
        registry.set_alias(settings, registry.CHALLENGER, "1")
        r = _reload(base)
        assert r.status_code == 500
        assert r.json()["error"] is None and "sha256" in r.json()["challenger"]["error"]
        info = httpx.get(f"{base}/model/info").json()
        assert info["challenger_last_reload_error"] and info["challenger"]["version"] == "2"
        assert httpx.post(f"{base}/predict", json=row).json()["model_version"] == "2"
        # Removed.
        registry.delete_alias(settings, registry.CHALLENGER)
        r = _reload(base)
        assert r.status_code == 200 and r.json()["challenger"]["version"] is None
        info = httpx.get(f"{base}/model/info").json()
        assert (info["challenger"], info["challenger_mode"]) == (None, "off")
        text = httpx.get(f"{base}/metrics").text
    # housing_model_info: the champion stays 1, the unloaded challenger dropped to 0.
    model_info = _samples(text, "housing_model_info")
    live = {dict(k)["alias"]: dict(k)["version"] for k, v in model_info.items() if v == 1}
    assert live == {"champion": "2"}
    # The shadow predictions made while version 1 was the challenger count under its role.
    assert _sum(text, "housing_predictions_total", model_version="1", role="challenger") == 1


def test_the_watcher_picks_up_a_challenger_without_a_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = _registry_settings(champion_config(tmp_path_factory, "2"), "canary", 0.2)
    app = create_app(settings)
    with ServerThread(app) as server:
        base = server.base
        wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200, 60, "the champion")
        registry.set_alias(settings, registry.CHALLENGER, "1")

        def challenger() -> Any:
            return httpx.get(f"{base}/model/info").json()["challenger"]

        assert wait_until(challenger, 60, "the watcher to load the challenger")["version"] == "1"
        registry.delete_alias(settings, registry.CHALLENGER)
        wait_until(lambda: challenger() is None, 60, "the watcher to unload the challenger")


# ------------------------------------------------------- `housing serve`, 2 workers
@pytest.mark.slow
def test_two_workers_canary_metrics_add_up_by_role(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`housing serve --workers 2 --challenger-mode canary`: both workers route by the same
    hash, and /metrics (multiprocess mode) adds their requests up per role."""
    config = champion_config(tmp_path_factory, "2")
    settings = load_config(config)
    registry.set_alias(settings, registry.CHALLENGER, "1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = config.parent / "serve.log"
    env = {**os.environ, "HOUSING_REQUEST_LOG": str(config.parent / "requests.db")}
    cmd = [
        str(HOUSING),
        "--config",
        str(config),
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        "--challenger-mode",
        "canary",
    ]
    frame = make_frame(60, seed=9)
    rows = [{c: float(frame[c].iloc[i]) for c in FEATURES} for i in range(60)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(
                lambda: httpx.get(f"{base}/ready", timeout=2).status_code == 200,
                120,
                "two workers",
                proc=proc,
                log=log,
            )
            info = httpx.get(f"{base}/model/info").json()
            assert info["challenger_mode"] == "canary", info
            roles: dict[str, str] = {}
            for i, row in enumerate(rows):  # a new connection each: both workers answer
                key = f"client-{i}"
                r = httpx.post(f"{base}/predict", json=row, headers={"X-Client-Key": key})
                assert r.status_code == 200, r.text
                roles[key] = r.headers["x-model-role"]
            assert roles == {
                k: "challenger" if routes_to_challenger(k, 0.1) else "champion" for k in roles
            }
            n_challenger = sum(v == "challenger" for v in roles.values())
            requests = "housing_http_requests_total"

            def added_up() -> str | None:
                text = httpx.get(f"{base}/metrics").text
                done = _sum(text, requests, handler="/predict", status="200") == len(rows)
                return text if done else None

            text = wait_until(added_up, 20, "both workers' requests in /metrics")
            assert _sum(text, requests, handler="/predict", role="challenger") == n_challenger
            assert _sum(text, "housing_predictions_total", role="champion") == (
                len(rows) - n_challenger
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "challenger version 1 in canary mode" in " ".join(log.read_text().split())


def test_bad_challenger_mode_option_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = subprocess.run(
        [str(HOUSING), "--config", str(config), "serve", "--challenger-mode", "sideways"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "Error: --challenger-mode must be off, shadow or canary, not 'sideways'" in out.stderr
