"""POST /feedback over HTTP (FastAPI's TestClient on the real app): the token, every bad
body answered 4xx with nothing applied (never a 500), labels joined to the requests the
service answered and logged, and 503 when the log's database is down."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import wait_until
from synthetic import make_frame, write_config

from housing_mlops import store
from housing_mlops.config import load_config
from housing_mlops.drift import build_profile
from housing_mlops.features import FEATURES
from housing_mlops.inference.loaded_model import ModelMeta
from housing_mlops.models import build_pipeline
from housing_mlops.serving.app import create_app
from housing_mlops.serving.predictor import build_served_model

TOKEN = "fb-s3cret"  # noqa: S105 - a test token
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from threadpoolctl import threadpool_limits

    settings = load_config(write_config(tmp_path_factory.mktemp("m")))
    frame = make_frame(300, seed=2)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    with threadpool_limits(limits=1):
        pipeline = build_pipeline(settings.train.candidates[0], settings.features, 42).fit(X, y)
    meta = ModelMeta(
        name="test-housing",
        version="1",
        alias="champion",
        run_id="run1",
        metrics={"holdout_rmse": 0.3},
        data_version="abc",
    )
    profile = build_profile({c: X[c].to_numpy() for c in FEATURES}, 200)
    return {"loaded": build_served_model(pipeline, meta, profile, max_batch_size=20), "X": X}


def _settings(tmp_path: Path, request_log: Any) -> Any:
    serve = {
        "request_log": str(request_log),
        "max_batch_size": 20,
        "max_body_bytes": 4096,
        "reload_interval_s": 0,
        "log_flush_interval_s": 0.1,
    }
    return load_config(write_config(tmp_path, {"serve": serve}))


@pytest.fixture
def client(tmp_path: Path, model: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("HOUSING_FEEDBACK_TOKEN", TOKEN)
    app = create_app(_settings(tmp_path, tmp_path / "requests.db"), model["loaded"])
    with TestClient(app) as c:
        c.log_path = tmp_path / "requests.db"
        yield c


def _labels(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT request_id, row_index, actual, source FROM feedback ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def _answered(client: Any, model: Any, rows: int = 1) -> str:
    """POST /predict (one house, or a batch of ``rows``) and wait until it is logged."""
    houses = [{k: float(v) for k, v in model["X"].iloc[i].items()} for i in range(rows)]
    body = houses[0] if rows == 1 else {"instances": houses}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    request_id = r.json()["request_id"]

    def logged() -> bool:
        conn = sqlite3.connect(client.log_path)
        try:
            n = conn.execute(
                "SELECT count(*) FROM requests WHERE request_id = ?", [request_id]
            ).fetchone()[0]
        finally:
            conn.close()
        return bool(n == rows)

    wait_until(logged, 10, "the request row in the log")
    return str(request_id)


def test_labels_join_the_answered_requests(client: Any, model: Any) -> None:
    one = _answered(client, model)
    batch = _answered(client, model, rows=3)
    r = client.post(
        "/feedback",
        json=[
            {"request_id": one, "actual": 2.5},
            {"request_id": batch, "row_index": 2.0, "actual": 1.75},  # 2.0 is an integer
            {"request_id": batch, "row_index": 9, "actual": 1.0},  # no such row
            {"request_id": "never-seen", "actual": 1.0},
        ],
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 4, "applied": 2, "unknown": 2, "duplicate": 0}
    assert _labels(client.log_path) == [(one, 0, 2.5, "api"), (batch, 2, 1.75, "api")]
    # One object works too; a second label for the same row is a duplicate, skipped.
    r = client.post("/feedback", json={"request_id": one, "actual": 3.0}, headers=AUTH)
    assert r.json() == {"received": 1, "applied": 0, "unknown": 0, "duplicate": 1}
    r = client.post("/feedback", json={"request_id": batch, "actual": 3.0}, headers=AUTH)
    assert r.json()["applied"] == 1
    conn = store.open_readonly(client.log_path)
    assert conn is not None
    assert sorted(store.labelled_rows(conn).actual.tolist()) == [1.75, 2.5, 3.0]
    conn.close()


def test_the_token_is_required(client: Any, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"request_id": "x", "actual": 1.0}
    r = client.post("/feedback", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/feedback", json=body, headers={"authorization": TOKEN}).status_code == 401
    r = client.post("/feedback", json=body, headers={"authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json() == {"detail": "wrong feedback token"}
    monkeypatch.delenv("HOUSING_FEEDBACK_TOKEN")
    r = client.post("/feedback", json=body, headers=AUTH)
    assert r.status_code == 404
    assert (
        r.json()["detail"] == "feedback over HTTP is off: set HOUSING_FEEDBACK_TOKEN to enable it"
    )


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed JSON", b'{"request_id": "a", ', "json_invalid"),
    ("NaN", b'{"request_id": "a", "actual": NaN}', "json_invalid"),
    ("Infinity", b'{"request_id": "a", "actual": Infinity}', "json_invalid"),
    ("huge number", b'{"request_id": "a", "actual": 1e999}', "json_invalid"),
    ("actual as text", b'{"request_id": "a", "actual": "2.5"}', "float_type"),
    ("actual as bool", b'{"request_id": "a", "actual": true}', "float_type"),
    ("no actual", b'{"request_id": "a"}', "missing"),
    ("no request_id", b'{"actual": 1.0}', "missing"),
    ("empty request_id", b'{"request_id": "", "actual": 1.0}', "string_too_short"),
    ("request_id a number", b'{"request_id": 7, "actual": 1.0}', "string_type"),
    ("NUL in request_id", b'{"request_id": "a\\u0000b", "actual": 1.0}', "string_pattern_mismatch"),
    ("negative row", b'{"request_id": "a", "actual": 1.0, "row_index": -1}', "greater_than_equal"),
    ("row as fraction", b'{"request_id": "a", "actual": 1.0, "row_index": 1.5}', "int_type"),
    ("row as text", b'{"request_id": "a", "actual": 1.0, "row_index": "1"}', "int_type"),
    ("row too big", b'{"request_id": "a", "actual": 1.0, "row_index": 1e20}', "less_than_equal"),
    ("unknown field", b'{"request_id": "a", "actual": 1.0, "price": 2}', "extra_forbidden"),
    ("a string", b'"a"', "model_type"),
    ("null", b"null", "model_type"),
    ("empty batch", b"[]", "too_short"),
    ("a list of numbers", b"[1, 2]", "model_type"),
]


@pytest.mark.parametrize(("case", "body", "etype"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_get_422_and_change_nothing(
    client: Any, model: Any, case: str, body: bytes, etype: str
) -> None:
    good = _answered(client, model)
    r = client.post("/feedback", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422, (case, r.text)
    detail = r.json()["detail"]
    assert etype in {d["type"] for d in detail}, detail
    assert all(d["loc"][0] == "body" and d["msg"] for d in detail)
    # A batch with the same bad item after a good one: nothing applied either.
    if body.startswith(b"{") and etype != "json_invalid":
        batch = b'[{"request_id": "' + good.encode() + b'", "actual": 1.0}, ' + body + b"]"
        r = client.post(
            "/feedback", content=batch, headers={**AUTH, "content-type": "application/json"}
        )
        assert r.status_code == 422, (case, r.text)
        assert r.json()["detail"][0]["loc"][:2] == ["body", 1]
    assert _labels(client.log_path) == []


def test_size_type_and_batch_limits(client: Any) -> None:
    item = {"request_id": "a", "actual": 1.0}
    r = client.post("/feedback", json=[item] * 21, headers=AUTH)
    assert r.status_code == 422
    assert "the limit is 20 per request (serve.max_batch_size)" in r.json()["detail"][0]["msg"]
    r = client.post(
        "/feedback", content=b"request_id=a", headers={**AUTH, "content-type": "text/plain"}
    )
    assert r.status_code == 415
    r = client.post(
        "/feedback",
        content=b"[" + b" " * 5000 + b"]",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 413


def test_a_database_outage_is_503_and_nothing_is_applied(
    tmp_path: Path, model: Any, postgres: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOUSING_FEEDBACK_TOKEN", TOKEN)
    from helpers import answered_row, write_log_rows

    write_log_rows(pg_url, [answered_row("known")])
    app = create_app(_settings(tmp_path, pg_url), model["loaded"])
    with TestClient(app) as c:
        with postgres.down():
            r = c.post("/feedback", json={"request_id": "known", "actual": 1.0}, headers=AUTH)
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith("the request log cannot take labels right now")
            assert postgres.password not in r.text
            assert r.headers["retry-after"] == "5"
        # Back up: the same label is applied (nothing was half-written before).
        r = c.post("/feedback", json={"request_id": "known", "actual": 1.0}, headers=AUTH)
        assert r.status_code == 200 and r.json()["applied"] == 1


def test_feedback_over_real_http_while_predictions_keep_flowing(
    tmp_path: Path, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On uvicorn: a batch answered by /predict, labelled by POST /feedback (labels that
    arrive before the row is flushed are unknown and can be sent again)."""
    import httpx
    from helpers import ServerThread

    monkeypatch.setenv("HOUSING_FEEDBACK_TOKEN", TOKEN)
    log_path = tmp_path / "requests.db"
    app = create_app(_settings(tmp_path, log_path), model["loaded"])
    houses = [{k: float(v) for k, v in model["X"].iloc[i].items()} for i in range(3)]
    with ServerThread(app) as server, httpx.Client(base_url=server.base, timeout=10) as http:
        answer = http.post("/predict", json={"instances": houses}).json()
        labels = [
            {"request_id": answer["request_id"], "row_index": i, "actual": 1.0 + i}
            for i in range(3)
        ]

        def labelled() -> bool:
            r = http.post("/feedback", json=labels, headers=AUTH)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["applied"] + body["unknown"] + body["duplicate"] == 3
            return bool(body["duplicate"] == 3)  # every row labelled (now or before)

        wait_until(labelled, 10, "the labels to be applied")
        assert http.post("/predict", json=houses[0]).status_code == 200
    conn = store.open_readonly(log_path)
    assert conn is not None
    rows = store.labelled_rows(conn)
    conn.close()
    assert rows.actual.tolist() == [1.0, 2.0, 3.0]
    assert rows.prediction.tolist() == pytest.approx(answer["predictions"])


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(client: Any) -> None:
    import asyncio

    import httpx

    sent: list[int] = []

    async def chunks() -> Any:  # no Content-Length: chunked, 1 MB against a 4096-byte limit
        for _ in range(1000):
            sent.append(1)
            yield b" " * 1000

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)  # hands the body over as it is read
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            headers = {**AUTH, "content-type": "application/json"}
            return await http.post("/feedback", content=chunks(), headers=headers)

    r = asyncio.run(post())
    assert r.status_code == 413
    assert r.json() == {"detail": "request body too large: the limit is 4096 bytes"}
    assert len(sent) <= 6  # stopped at the limit, not after the whole megabyte
    assert _labels(client.log_path) == []


def test_feedback_requests_are_counted_under_their_own_handler(client: Any) -> None:
    import re

    from housing_mlops.serving.asgi import HANDLERS

    r = client.post("/feedback", json={"request_id": "nope", "actual": 1.0}, headers=AUTH)
    assert r.status_code == 200
    text = client.get("/metrics").text
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("housing_http_requests_total{") and 'handler="/feedback"' in line
    ]
    assert len(counted) == 1 and 'status="200"' in counted[0], counted
    assert float(counted[0].rpartition(" ")[2]) == 1.0
    assert not any(
        line.startswith("housing_http_requests_total{") and 'handler="other"' in line
        for line in text.splitlines()
    )
    # Every route the app has is a handler of its own (a mount's files stay "other").
    paths = {
        route.path
        for route in client.app.app.routes  # ServingMiddleware -> FastAPI
        if not re.search(r"\{", route.path) and type(route).__name__ != "Mount"
    }
    assert paths <= HANDLERS, paths - HANDLERS
