"""The service's live-quality gauges: ``housing_live_rmse``, ``housing_live_labelled_rows``
and ``housing_model_holdout_rmse`` (serving.live_quality).

Real SQLite request logs; true values go into ``feedback`` by plain SQL
(``helpers.add_feedback``, the stand-in for POST /feedback until it is merged). The
last test runs the app on a real uvicorn server and reads ``/metrics`` over HTTP while
labels arrive: the gauges follow them within the refresh interval.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ServerThread, add_feedback, champion_challenger_rows, wait_until
from synthetic import FEATURES, make_frame, write_config

from housing_mlops import store
from housing_mlops.config import load_config
from housing_mlops.inference.loaded_model import ModelMeta
from housing_mlops.serving.live_quality import LiveQualityCollector

START = 1_700_000_000.0


def _metric(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None if absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        if name == metric and dict(re.findall(r'(\w+)="([^"]*)"', rest)) == labels:
            return float(value)
    return None


def _exposition(collector: LiveQualityCollector) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def _log(path: Path, n: int = 300) -> list[Any]:
    rows = champion_challenger_rows(n, start=START)
    sink = store.open_sink(path)
    try:
        sink.write([store.row_values(r) for r in rows])
    finally:
        sink.close()
    return rows


def test_gauges_give_each_models_live_rmse_over_the_window_and_its_holdout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requests.db"
    rows = _log(path)
    answered = [r for r in rows if r.status == 200]
    # Every answered row of the first 100 requests is labelled 0.5 above the answer, the
    # later ones 0.2 above: a window over the later ones only sees 0.2.
    add_feedback(
        path,
        [
            (r.request_id, r.row_index, r.prediction + (0.5 if r.ts < START + 6000 else 0.2))
            for r in answered
        ],
    )
    served = [
        ("champion", ModelMeta(name="m", version="1", metrics={"holdout_rmse": 0.25})),
        ("challenger", ModelMeta(name="m", version="2", metrics={"holdout_rmse": 0.22})),
        ("challenger", ModelMeta(name="m", version="3")),  # no holdout metric recorded
    ]
    collector = LiveQualityCollector(path, lambda: served, interval_s=60, window_s=86400)
    text = _exposition(collector)
    # Before the first refresh: holdout only, no live numbers (not zeros).
    assert _metric(text, "housing_model_holdout_rmse", role="champion", model_version="1") == 0.25
    assert _metric(text, "housing_live_labelled_rows", role="champion", model_version="1") is None

    end = START + 300 * 60
    collector.refresh(now=end)  # the whole log is inside the day
    text = _exposition(collector)
    champion_rows = sum(1 for r in answered if r.role == "champion")
    assert (
        _metric(text, "housing_live_labelled_rows", role="champion", model_version="1")
        == champion_rows
    )
    errors = [0.5 if r.ts < START + 6000 else 0.2 for r in answered if r.role == "champion"]
    expected = math.sqrt(sum(e * e for e in errors) / len(errors))
    got = _metric(text, "housing_live_rmse", role="champion", model_version="1")
    assert got == pytest.approx(expected, rel=1e-12)
    # The challenger: its canary rows and the rows it shadowed.
    shadowed = sum(1 for r in answered if r.shadow_prediction is not None)
    canary = sum(1 for r in answered if r.role == "challenger")
    assert (
        _metric(text, "housing_live_labelled_rows", role="challenger", model_version="2")
        == shadowed + canary
    )
    # A served model without labels: 0 rows and no RMSE; without a holdout metric: none.
    assert _metric(text, "housing_live_labelled_rows", role="challenger", model_version="3") == 0
    assert _metric(text, "housing_live_rmse", role="challenger", model_version="3") is None
    assert _metric(text, "housing_model_holdout_rmse", role="challenger", model_version="3") is None

    # A window of the last 200 minutes: only the rows labelled 0.2 above.
    short = LiveQualityCollector(path, lambda: served, interval_s=60, window_s=200 * 60)
    short.refresh(now=end)
    got = _metric(_exposition(short), "housing_live_rmse", role="champion", model_version="1")
    assert got == pytest.approx(0.2, rel=1e-12)


def test_an_unreachable_log_keeps_the_last_numbers(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    rows = [r for r in _log(path, 50) if r.status == 200]
    add_feedback(path, [(r.request_id, r.row_index, r.prediction + 0.1) for r in rows[:20]])
    up = [True]
    collector = LiveQualityCollector(
        path, lambda: [], interval_s=60, window_s=86400, reachable=lambda: up[0]
    )
    collector.refresh(now=START + 3600)
    before = _exposition(collector)
    up[0] = False
    add_feedback(path, [(r.request_id, r.row_index, r.prediction + 0.9) for r in rows[20:40]])
    collector.refresh(now=START + 3600)
    assert _exposition(collector) == before
    assert _metric(before, "housing_live_rmse", role="champion", model_version="1") == (
        pytest.approx(0.1)
    )
    # No log at all: no live numbers, and no error.
    empty = LiveQualityCollector(tmp_path / "none.db", lambda: [], interval_s=60, window_s=60)
    empty.refresh()
    assert "housing_live_rmse{" not in _exposition(empty)


def _app(
    tmp_path: Path, interval_s: float, request_log: str | None = None
) -> tuple[Any, Any, dict[str, float]]:
    """The real app serving a small linear model (holdout RMSE 0.3 in its metadata); its
    request log in ``tmp_path`` unless ``request_log`` names another."""
    from sklearn.linear_model import LinearRegression

    from housing_mlops.serving.app import create_app
    from housing_mlops.serving.predictor import build_served_model

    frame = make_frame(200, seed=2)
    pipeline = LinearRegression().fit(frame[list(FEATURES)], frame["MedHouseVal"])
    meta = ModelMeta(name="m", version="1", alias="champion", metrics={"holdout_rmse": 0.3})
    model = build_served_model(pipeline, meta, None, max_batch_size=20)
    settings = load_config(
        write_config(
            tmp_path,
            {
                "serve": {
                    "request_log": request_log or str(tmp_path / "requests.db"),
                    "spool_dir": str(tmp_path / "spool"),
                    "reload_interval_s": 0,
                    "log_flush_interval_s": 0.1,
                    "live_quality_interval_s": interval_s,
                }
            },
        )
    )
    house = {c: float(frame[c].iloc[0]) for c in FEATURES}
    return create_app(settings, model), settings, house


def _logged(log: Any) -> int:
    db = store.open_readonly(log)
    if db is None:
        return 0
    try:
        return int(store.serving_stats(db)["rows"])
    finally:
        db.close()


def _predict_and_label(
    client: httpx.Client, log: Any, house: dict[str, float], offset: float
) -> None:
    """Five answered requests, each labelled ``offset`` above its answer once logged."""
    answers = []
    for _ in range(5):
        response = client.post("/predict", json=house)
        assert response.status_code == 200
        answers.append((response.json()["request_id"], response.json()["prediction"]))
    wait_until(lambda: _logged(log) >= 5, timeout=10, what="rows in the log")
    add_feedback(log, [(rid, 0, pred + offset) for rid, pred in answers])


def test_the_service_exports_the_gauges_and_follows_new_labels(tmp_path: Path) -> None:
    app, settings, house = _app(tmp_path, interval_s=0.2)
    log = settings.serve.request_log
    with (
        ServerThread(app, log_level="error") as server,
        httpx.Client(base_url=server.base, timeout=10) as client,
    ):

        def gauge(name: str) -> float | None:
            return _metric(client.get("/metrics").text, name, role="champion", model_version="1")

        assert gauge("housing_model_holdout_rmse") == 0.3
        _predict_and_label(client, log, house, 0.4)
        wait_until(lambda: gauge("housing_live_labelled_rows") == 5, timeout=10, what="the labels")
        assert gauge("housing_live_rmse") == pytest.approx(0.4, rel=1e-9)


def test_interval_zero_switches_the_gauges_off(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app, settings, house = _app(tmp_path, interval_s=0)
    with TestClient(app) as client:
        _predict_and_label(client, settings.serve.request_log, house, 0.4)
        text = client.get("/metrics").text
    assert _metric(text, "housing_model_holdout_rmse", role="champion", model_version="1") == 0.3
    assert "housing_live_labelled_rows{" not in text and "housing_live_rmse{" not in text


def test_a_stop_does_not_wait_for_a_refresh_stuck_on_a_locked_table(
    tmp_path: Path, pg_url: str
) -> None:
    """A PostgreSQL log whose ``requests`` table is locked (``VACUUM FULL``, ``CLUSTER``, a
    long migration) holds the live-quality refresh's query until the lock goes. A stop
    (SIGTERM) must still end the service: it used to wait for that query after its own
    shutdown (asyncio's default executor is joined at exit), for as long as the lock
    lasted."""
    import psycopg

    store.create_log(pg_url)
    app, _, _ = _app(tmp_path, interval_s=0.2, request_log=pg_url)

    def waiting_for_the_lock() -> bool:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'housing-mlops' AND wait_event_type = 'Lock'"
            ).fetchone()
        return bool(row and row[0])

    with psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        server = ServerThread(app, log_level="error")
        try:
            server.__enter__()
            wait_until(waiting_for_the_lock, 20, "the refresh to wait for the lock")
            server.server.should_exit = True
            server.thread.join(15)
            stopped = not server.thread.is_alive()
        finally:
            locker.rollback()  # the lock goes: a stuck stop ends now
            server.thread.join(20)
    assert stopped, "the service did not stop while a refresh waited for a locked table"
