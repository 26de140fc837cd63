"""In-process tests of the prediction service: every endpoint and validation rule, the
request log and the metrics after a known sequence of requests, the reload token.

The models are real fitted pipelines (``models.build_pipeline`` on synthetic data) served
without MLflow: ``create_app`` takes the loaded model directly. The registry path is
covered by tests/test_serving_e2e.py.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import wait_until
from synthetic import make_frame, write_config

from housing_mlops.config import load_config
from housing_mlops.drift import build_profile
from housing_mlops.features import FEATURES
from housing_mlops.inference.loaded_model import LoadedModel, ModelMeta
from housing_mlops.models import build_pipeline
from housing_mlops.serving.app import create_app
from housing_mlops.serving.predictor import build_served_model

TOKEN = "s3cret-token"  # noqa: S105 - a test token


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fitted HistGradientBoosting pipeline, its profile and a few request rows."""
    tmp = tmp_path_factory.mktemp("trained")
    settings = load_config(write_config(tmp))
    frame = make_frame(600, seed=1)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    candidate = settings.train.candidates[1]  # hist_gb
    pipeline = build_pipeline(candidate, settings.features, 42, n_jobs=1).fit(X, y)
    profile = build_profile({c: X[c].to_numpy() for c in FEATURES}, 200)
    return {"pipeline": pipeline, "profile": profile, "X": X, "settings": settings}


def _model(trained: dict[str, Any], version: str = "1") -> LoadedModel:
    meta = ModelMeta(
        name="test-housing",
        version=version,
        alias="champion",
        run_id=f"run{version}",
        metrics={"holdout_rmse": 0.3},
        data_version="abc123",
    )
    return build_served_model(trained["pipeline"], meta, trained["profile"], max_batch_size=20)


def _settings(tmp_path: Path, **serve: Any) -> Any:
    overrides = {
        "serve": {
            "request_log": str(tmp_path / "requests.db"),
            "max_batch_size": 20,
            "max_body_bytes": 16384,
            "reload_interval_s": 0,
            "log_flush_interval_s": 0.2,
            **serve,
        }
    }
    return load_config(write_config(tmp_path, overrides))


@pytest.fixture
def client(tmp_path: Path, trained: dict[str, Any]) -> Any:
    app = create_app(_settings(tmp_path), _model(trained))
    with TestClient(app) as c:
        yield c


def _row(trained: dict[str, Any], i: int = 0) -> dict[str, float]:
    return {k: float(v) for k, v in trained["X"].iloc[i].items()}


def _post_raw(client: Any, body: bytes, content_type: str = "application/json") -> Any:
    return client.post("/predict", content=body, headers={"content-type": content_type})


def _log_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from requests order by id")]
    finally:
        conn.close()


def _metric(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None if absent)."""
    import re

    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if name == metric and found == labels:
            return float(value)
    return None


# ------------------------------------------------------------------------- predict
def test_single_prediction_equals_pipeline_predict(client: Any, trained: dict[str, Any]) -> None:
    row = _row(trained, 3)
    r = client.post("/predict", json=row)
    assert r.status_code == 200
    body = r.json()
    expected = float(trained["pipeline"].predict(trained["X"].iloc[[3]])[0])
    assert body["prediction"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert body["prediction_usd"] == pytest.approx(expected * 100_000, abs=0.01)
    assert body["model_name"] == "test-housing"
    assert body["model_version"] == "1"
    assert r.headers["x-request-id"] == body["request_id"]


def test_batch_predictions_equal_pipeline_predict(client: Any, trained: dict[str, Any]) -> None:
    rows = [_row(trained, i) for i in range(20)]
    r = client.post("/predict", json={"instances": rows})
    assert r.status_code == 200
    body = r.json()
    expected = trained["pipeline"].predict(trained["X"].iloc[:20])
    assert body["count"] == 20
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-12, atol=1e-12)
    assert body["predictions_usd"][0] == pytest.approx(expected[0] * 100_000, abs=0.01)


def test_client_request_id_is_echoed(client: Any, trained: dict[str, Any]) -> None:
    r = client.post("/predict", json=_row(trained), headers={"x-request-id": "abc-123"})
    assert r.json()["request_id"] == "abc-123"
    assert r.headers["x-request-id"] == "abc-123"


def test_integer_json_numbers_are_accepted(client: Any, trained: dict[str, Any]) -> None:
    row = _row(trained)
    row["HouseAge"] = 30  # JSON integer for a float field
    assert client.post("/predict", json=row).status_code == 200


# ---------------------------------------------------------------------- validation
def _with(trained: dict[str, Any], **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = _row(trained)
    for key, value in changes.items():
        if value is _DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"MedInc": _DROP}, "MedInc", "Field required"),
        ({"Bogus": 1.0}, "Bogus", "unknown field"),
        ({"MedInc": "3.5"}, "MedInc", "valid number"),
        ({"HouseAge": True}, "HouseAge", "valid number"),
        ({"AveOccup": None}, "AveOccup", "valid number"),
        ({"MedInc": 0.0}, "MedInc", "greater than 0"),
        ({"MedInc": -2.0}, "MedInc", "greater than 0"),
        ({"AveOccup": 0.0}, "AveOccup", "greater than or equal"),
        ({"Latitude": 45.0}, "Latitude", "less than or equal to 42.1"),
        ({"Latitude": 20.0}, "Latitude", "greater than or equal to 32.5"),
        ({"Longitude": -100.0}, "Longitude", "less than or equal to -114"),
        ({"Population": 1e9}, "Population", "less than or equal"),
        ({"AveRooms": 1.5, "AveBedrms": 2.0}, "AveBedrms", "must not be greater than AveRooms"),
    ],
)
def test_invalid_field_gets_422_naming_it(
    client: Any, trained: dict[str, Any], changes: dict[str, Any], field: str, reason: str
) -> None:
    r = client.post("/predict", json=_with(trained, **changes))
    assert r.status_code == 422
    detail = r.json()["detail"]
    match = [d for d in detail if d["field"] == field]
    assert match, detail
    assert match[0]["loc"] == ["body", field]
    assert reason in match[0]["msg"]


def test_an_unknown_key_beside_instances_names_the_batch_key_not_the_features(
    client: Any, trained: dict[str, Any]
) -> None:
    r = client.post("/predict", json={"instances": [_row(trained)], "x": 1})
    assert r.status_code == 422
    assert r.json()["detail"] == [
        {
            "loc": ["body", "x"],
            "field": "x",
            "msg": "unknown field; a batch body holds only 'instances'",
            "type": "extra_forbidden",
        }
    ]
    # Inside a house of the batch, an unknown key is still one of a house's.
    r = client.post("/predict", json={"instances": [_with(trained, Bogus=1.0)]})
    assert r.status_code == 422
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body", "instances", 0, "Bogus"]
    assert detail["msg"] == f"unknown field; expected only {', '.join(FEATURES)}"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_rejected(
    client: Any, trained: dict[str, Any], literal: bytes
) -> None:
    row = _row(trained)
    body = (
        b"{"
        + b",".join(
            f'"{k}":'.encode() + (literal if k == "MedInc" else repr(v).encode())
            for k, v in row.items()
        )
        + b"}"
    )
    r = _post_raw(client, body)
    assert r.status_code == 422
    fields = [d["field"] for d in r.json()["detail"]]
    assert fields in (["MedInc"], ["<body>"])  # 1e400 overflows to inf; NaN literals parse


def test_every_bad_field_is_listed(client: Any, trained: dict[str, Any]) -> None:
    row = _with(trained, MedInc=-1.0, Latitude=50.0, Extra=1, HouseAge=_DROP)
    r = client.post("/predict", json=row)
    assert r.status_code == 422
    assert sorted(d["field"] for d in r.json()["detail"]) == [
        "Extra",
        "HouseAge",
        "Latitude",
        "MedInc",
    ]


def test_batch_errors_carry_the_row_path(client: Any, trained: dict[str, Any]) -> None:
    rows = [_row(trained, 0), _with(trained, MedInc=-1.0), _with(trained, Longitude="x")]
    r = client.post("/predict", json={"instances": rows})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(d["field"], d["loc"]) for d in detail] == [
        ("instances[1].MedInc", ["body", "instances", 1, "MedInc"]),
        ("instances[2].Longitude", ["body", "instances", 2, "Longitude"]),
    ]


def test_the_word_instances_inside_a_single_house_is_not_a_batch(
    client: Any, trained: dict[str, Any]
) -> None:
    r = client.post("/predict", json={**_row(trained), "note": "instances"})
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["detail"]] == ["note"]


def test_batch_over_the_limit_names_the_limit(client: Any, trained: dict[str, Any]) -> None:
    rows = [_row(trained, 0)] * 21
    r = client.post("/predict", json={"instances": rows})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["field"] == "instances"
    assert "limit is 20 rows" in err["msg"] and "21 rows" in err["msg"]


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        (b'{"MedInc": 1,', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'"hello"', "must be a JSON object"),
        (b'{"instances": []}', "at least 1 item"),
        (b'{"instances": 5}', "valid array"),
        (b'{"instances": [1]}', "Input should be an object"),
        (b'{"MedInc": 1} x', "not valid JSON: trailing characters at line 1 column 15"),
    ],
)
def test_malformed_bodies_get_422(client: Any, body: bytes, msg: str) -> None:
    r = _post_raw(client, body)
    assert r.status_code == 422
    assert msg in r.json()["detail"][0]["msg"]


def test_nan_and_infinity_are_reported_on_their_field(client: Any, trained: dict[str, Any]) -> None:
    import json

    body = json.dumps(_row(trained)).replace(str(_row(trained)["MedInc"]), "NaN")
    body = body.replace(str(_row(trained)["Latitude"]), "Infinity")
    r = _post_raw(client, body.encode())
    assert r.status_code == 422
    detail = {d["field"]: d["msg"] for d in r.json()["detail"]}
    assert detail == {
        "MedInc": "Input should be a finite number",
        "Latitude": "Input should be a finite number",
    }


def test_other_methods_on_predict_get_405_and_a_trailing_slash_redirects(client: Any) -> None:
    r = client.get("/predict")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    assert r.json() == {"detail": "Method Not Allowed"}
    r = client.post("/predict/", json={}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/predict")


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00garbage",
        b"{" * 5000,
        b"[" * 5000 + b"]" * 5000,
        b"null",
        b'{"instances": null}',
        b'{"instances": [null, 1, "x", {}]}',
        b'{"instances": {"MedInc": 1}}',
        b'{"MedInc": ' + b"9" * 5000 + b"}",
        b'{"MedInc": {"nested": [1, 2, {"deeper": true}]}}',
        b'{"": 1, "\u0000": 2}',
    ],
)
def test_hostile_bodies_get_422_never_500(client: Any, body: bytes) -> None:
    r = _post_raw(client, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_gets_415(
    client: Any, trained: dict[str, Any], content_type: str
) -> None:
    import json

    body = json.dumps(_row(trained)).encode()
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]


def test_json_content_type_with_charset_is_accepted(client: Any, trained: dict[str, Any]) -> None:
    import json

    r = _post_raw(client, json.dumps(_row(trained)).encode(), "application/json; charset=utf-8")
    assert r.status_code == 200


def test_oversized_body_gets_413_by_content_length(client: Any) -> None:
    r = _post_raw(client, b" " * 20000)
    assert r.status_code == 413
    assert "limit is 16384 bytes" in r.json()["detail"]


def test_oversized_streamed_body_gets_413(client: Any) -> None:
    def chunks() -> Any:  # no Content-Length: chunked transfer
        for _ in range(20):
            yield b" " * 1000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# ----------------------------------------------------------------- other endpoints
def test_health_ready_and_model_info(client: Any) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {
        "status": "ready",
        "model_version": "1",
        "request_log": "ok",
    }
    info = client.get("/model/info").json()
    assert info["request_log"]["state"] == "ok"
    assert info["request_log"]["location"].endswith("requests.db")
    assert info["instance"]  # <hostname>:<pid> unless serve.instance names it
    assert info["name"] == "test-housing"
    assert info["version"] == "1"
    assert info["alias"] == "champion"
    assert info["run_id"] == "run1"
    assert info["metrics"] == {"holdout_rmse": 0.3}
    assert info["data_version"] == "abc123"
    assert info["loaded_at"].endswith("+00:00")
    assert info["fast_path"] is True
    assert info["last_reload_error"] is None
    ranges = info["input_schema"]["ranges"]
    assert set(ranges) == set(FEATURES)
    assert ranges["Latitude"]["minimum"] >= 32.5 and ranges["Latitude"]["maximum"] <= 42.1
    assert ranges["MedInc"]["exclusive_minimum"] == 0.0
    assert "AveBedrms must not be greater than AveRooms" in info["input_schema"]["rules"]


def test_ranges_follow_the_reference_profile(client: Any, trained: dict[str, Any]) -> None:
    info = client.get("/model/info").json()
    pop = trained["X"]["Population"]
    width = pop.max() - pop.min()
    assert info["input_schema"]["ranges"]["Population"]["maximum"] == pytest.approx(
        pop.max() + 0.25 * width, abs=1e-3
    )


# ----------------------------------------------------------------- OpenAPI and docs
def _resolve(spec: dict[str, Any], schema: Any) -> Any:
    """``schema`` with its ``#/components/schemas/...`` references inlined."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref is not None:
            return _resolve(spec, spec["components"]["schemas"][ref.rsplit("/", 1)[1]])
        return {k: _resolve(spec, v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(spec, v) for v in schema]
    return schema


def _predict_schemas(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/predict"]["post"]
    house = _resolve(spec, spec["components"]["schemas"]["House"])
    return spec, {"post": post, "house": house}


def _documented_answer(spec: dict[str, Any], r: Any) -> None:
    """Fails unless the response's status, headers and body are what /openapi.json says."""
    from jsonschema import Draft202012Validator

    documented = spec["paths"]["/predict"]["post"]["responses"]
    assert str(r.status_code) in documented, f"{r.status_code} is not documented"
    answer = documented[str(r.status_code)]
    assert set(answer["content"]) == {"application/json"}
    assert r.headers["content-type"] == "application/json"
    for header in answer["headers"]:
        assert r.headers[header]
    schema = _resolve(spec, answer["content"]["application/json"]["schema"])
    Draft202012Validator(schema).validate(r.json())


def test_openapi_states_the_enforced_ranges_and_batch_limit(
    client: Any, trained: dict[str, Any]
) -> None:
    spec, doc = _predict_schemas(client)
    body = doc["post"]["requestBody"]["content"]["application/json"]
    assert body["example"]["Latitude"] == 37.88
    house = doc["house"]
    assert sorted(house["required"]) == sorted(FEATURES)
    assert house["additionalProperties"] is False
    assert "AveBedrms must not be greater than AveRooms" in house["description"]
    ranges = client.get("/model/info").json()["input_schema"]["ranges"]
    for name in FEATURES:
        field = house["properties"][name]
        assert field["type"] == "number"
        assert field.get("minimum") == ranges[name].get("minimum"), name
        assert field.get("exclusiveMinimum") == ranges[name].get("exclusive_minimum"), name
        assert field["maximum"] == ranges[name]["maximum"], name
    # The documented edges are the enforced ones: on the edge accepted, past it rejected.
    props = house["properties"]
    top = {n: props[n]["maximum"] for n in FEATURES}
    low = {
        n: props[n]["minimum"] if "minimum" in props[n] else props[n]["exclusiveMinimum"] + 1e-6
        for n in FEATURES
    }
    assert client.post("/predict", json=top).status_code == 200
    assert client.post("/predict", json=low).status_code == 200
    for name in FEATURES:
        f = props[name]
        under = f["minimum"] - 1e-3 if "minimum" in f else f["exclusiveMinimum"]
        for row in ({**top, name: f["maximum"] + 1e-3}, {**low, name: under}):
            r = client.post("/predict", json=row)
            assert r.status_code == 422, (name, row)
            assert name in [d["field"] for d in r.json()["detail"]]
    batch = spec["components"]["schemas"]["Batch"]["properties"]["instances"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 20)  # serve.max_batch_size here
    assert client.post("/predict", json={"instances": [top] * 20}).status_code == 200
    assert client.post("/predict", json={"instances": [top] * 21}).status_code == 422


def test_openapi_documents_the_real_answers_of_predict(
    client: Any, trained: dict[str, Any]
) -> None:
    spec, _ = _predict_schemas(client)
    single = client.post("/predict", json=_row(trained))
    assert set(single.json()) == {
        "request_id",
        "model_name",
        "model_version",
        "role",
        "prediction",
        "prediction_usd",
    }
    batch = client.post("/predict", json={"instances": [_row(trained, i) for i in range(3)]})
    assert set(batch.json()) == {
        "request_id",
        "model_name",
        "model_version",
        "role",
        "count",
        "predictions",
        "predictions_usd",
    }
    too_large = _post_raw(client, b" " * 20000)
    wrong_type = _post_raw(client, b"{}", "text/plain")
    invalid = client.post("/predict", json=_with(trained, MedInc=-1.0))
    malformed = _post_raw(client, b'{"MedInc": 1,')
    answers = [single, batch, too_large, wrong_type, invalid, malformed]
    assert [r.status_code for r in answers] == [200, 200, 413, 415, 422, 422]
    for r in answers:
        _documented_answer(spec, r)


def test_openapi_documents_the_answer_without_a_model(tmp_path: Path) -> None:
    def failing_loader(version: str | None) -> LoadedModel:
        raise RuntimeError("registry is down")

    app = create_app(_settings(tmp_path), None, loader=failing_loader)
    with TestClient(app) as c:
        spec = c.get("/openapi.json").json()
        r = c.post("/predict", json={"MedInc": 1.0})
        assert r.status_code == 503
        _documented_answer(spec, r)
        assert c.get("/ready").status_code == 503
        assert "503" in spec["paths"]["/ready"]["get"]["responses"]


def test_metrics_are_documented_as_plain_text(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    documented = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(documented) == ["text/plain"]
    r = client.get("/metrics")
    assert r.headers["content-type"].split(";")[0] == "text/plain"


def test_openapi_follows_a_hot_reload_to_other_ranges(
    tmp_path: Path, trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOUSING_RELOAD_TOKEN", TOKEN)
    X = trained["X"]
    small = X[X["Population"] < 1000]  # version 2 was trained on smaller blocks only
    profile2 = build_profile({c: small[c].to_numpy() for c in FEATURES}, 200)
    meta2 = ModelMeta(name="test-housing", version="2", alias="champion", run_id="run2")
    version2 = build_served_model(trained["pipeline"], meta2, profile2, max_batch_size=20)
    alias = {"version": "1"}
    app = create_app(
        _settings(tmp_path),
        _model(trained),
        loader=lambda v: version2,
        alias_version=lambda: alias["version"],
    )

    def population_max(c: Any) -> float:
        _, doc = _predict_schemas(c)
        return float(doc["house"]["properties"]["Population"]["maximum"])

    with TestClient(app) as c:
        before = population_max(c)
        row = {**_row(trained), "Population": before}
        assert c.post("/predict", json=row).status_code == 200
        alias["version"] = "2"
        r = c.post("/model/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.json()["version"] == "2"
        after = population_max(c)
        enforced = c.get("/model/info").json()["input_schema"]["ranges"]["Population"]
        assert after == enforced["maximum"] < before
        assert c.post("/predict", json=row).status_code == 422
        assert c.post("/predict", json={**row, "Population": after}).status_code == 200


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {".js": "javascript", ".css": "text/css", ".png": "image/png"}),
        ("/redoc", {".js": "javascript", ".png": "image/png"}),
    ],
)
def test_docs_pages_load_everything_from_the_service(
    client: Any, page: str, assets: dict[str, str]
) -> None:
    import re

    r = client.get(page)
    assert r.status_code == 200
    html = r.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {Path(u).suffix for u in urls} == set(assets)
    for url in urls:
        assert url.startswith("/")
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert assets[Path(url).suffix] in asset.headers["content-type"], url
        assert len(asset.content) > 1000, url
    assert "'/openapi.json'" in html or '"/openapi.json"' in html


def test_not_ready_until_a_model_loads(tmp_path: Path) -> None:
    def failing_loader(version: str | None) -> LoadedModel:
        raise RuntimeError("registry is down")

    app = create_app(_settings(tmp_path), None, loader=failing_loader)
    with TestClient(app) as c:
        wait_until(lambda: c.get("/ready").json().get("last_reload_error"), 10, "a load error")
        r = c.get("/ready")
        assert r.status_code == 503
        assert "registry is down" in r.json()["last_reload_error"]
        assert c.get("/health").status_code == 200
        r = c.post("/predict", json={"MedInc": 1.0})
        assert r.status_code == 503


# ------------------------------------------------------------ log rows and metrics
def test_log_rows_and_metrics_after_a_known_sequence(
    tmp_path: Path, trained: dict[str, Any]
) -> None:
    settings = _settings(tmp_path)
    app = create_app(settings, _model(trained))
    rows = [_row(trained, i) for i in range(3)]
    with TestClient(app) as c:
        ok1 = c.post("/predict", json=rows[0]).json()
        ok2 = c.post("/predict", json={"instances": rows}).json()
        bad = c.post("/predict", json=_with(trained, MedInc=-1.0, Latitude=99.0))
        wrong_type = c.post("/predict", content=b"{}", headers={"content-type": "text/plain"})
        assert (bad.status_code, wrong_type.status_code) == (422, 415)
        text = c.get("/metrics").text
        assert _metric(text, "housing_predictions_total", model_version="1", role="champion") == 4
        assert (
            _metric(text, "housing_prediction_value_count", model_version="1", role="champion") == 4
        )
        assert (
            _metric(
                text,
                "housing_http_requests_total",
                handler="/predict",
                method="POST",
                status="200",
                role="champion",
            )
            == 2
        )
        assert (
            _metric(
                text,
                "housing_http_requests_total",
                handler="/predict",
                method="POST",
                status="422",
                role="",
            )
            == 1
        )
        assert (
            _metric(
                text,
                "housing_http_requests_total",
                handler="/predict",
                method="POST",
                status="415",
                role="",
            )
            == 1
        )
        durations = "housing_http_request_duration_seconds_count"
        assert _metric(text, durations, handler="/predict", role="champion") == 2
        assert _metric(text, durations, handler="/predict", role="") == 2
        assert _metric(text, "housing_validation_errors_total", field="MedInc") == 1
        assert _metric(text, "housing_validation_errors_total", field="Latitude") == 1
        assert (
            _metric(
                text,
                "housing_model_info",
                name="test-housing",
                version="1",
                alias="champion",
                run_id="run1",
            )
            == 1
        )
        assert (_metric(text, "housing_model_loaded_timestamp_seconds") or 0) > 1.7e9
        assert _metric(text, "housing_model_reloads_total") == 0
        assert _metric(text, "housing_model_reload_failures_total") == 0
        # The writer flushes at least every 0.2 s here.

        def flushed_metrics() -> str | None:
            text = c.get("/metrics").text
            return text if _metric(text, "housing_request_log_rows_total") == 6 else None

        text = wait_until(flushed_metrics, 10, "the request log metrics after a flush")
        assert _metric(text, "housing_request_log_queue_depth") == 0
        assert _metric(text, "housing_request_log_dropped_total") == 0
        assert (_metric(text, "housing_request_log_last_flush_timestamp_seconds") or 0) > 1.7e9
    logged = _log_rows(settings.serve.request_log)
    answered = [r for r in logged if r["status"] == 200]
    rejected = [r for r in logged if r["status"] != 200]
    assert len(answered) == 4 and len(rejected) == 2
    assert [r["request_id"] for r in answered] == [ok1["request_id"]] + [ok2["request_id"]] * 3
    assert [r["row_index"] for r in answered] == [0, 0, 1, 2]
    for logged_row, sent, pred in zip(answered[1:], rows, ok2["predictions"], strict=True):
        assert {k: logged_row[k] for k in FEATURES} == sent
        assert logged_row["prediction"] == pred
        assert logged_row["model_version"] == "1"
        assert logged_row["model_name"] == "test-housing"
        assert logged_row["latency_ms"] > 0
        assert logged_row["error"] is None
    assert answered[0]["prediction"] == ok1["prediction"]
    assert [r["status"] for r in rejected] == [422, 415]
    assert "MedInc" in rejected[0]["error"] and "Latitude" in rejected[0]["error"]
    assert "Content-Type" in rejected[1]["error"]
    assert all(r["MedInc"] is None and r["prediction"] is None for r in rejected)
    assert all(math.isfinite(r["ts"]) and r["ts"] > 1.7e9 for r in logged)


def test_drift_collector_is_on_the_metrics_registry(client: Any) -> None:
    # The drift helper's collector is registered; the endpoint serves without error.
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


# --------------------------------------------------------------------- reload token
@pytest.fixture
def reload_client(tmp_path: Path, trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("HOUSING_RELOAD_TOKEN", raising=False)
    app = create_app(
        _settings(tmp_path),
        _model(trained),
        loader=lambda v: _model(trained, str(v)),
        alias_version=lambda: "1",
    )
    with TestClient(app) as c:
        yield c


def test_reload_is_off_without_a_configured_token(reload_client: Any) -> None:
    r = reload_client.post("/model/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404
    assert "HOUSING_RELOAD_TOKEN" in r.json()["detail"]


def test_reload_token_missing_wrong_right(
    reload_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOUSING_RELOAD_TOKEN", TOKEN)
    r = reload_client.post("/model/reload")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert reload_client.post("/model/reload", headers={"authorization": TOKEN}).status_code == 401
    wrong = reload_client.post("/model/reload", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    ok = reload_client.post("/model/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.json()["reloaded"] is False
    assert ok.json()["version"] == "1"


def test_pinned_version_refuses_reload(
    tmp_path: Path, trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOUSING_RELOAD_TOKEN", TOKEN)
    app = create_app(_settings(tmp_path), _model(trained), model_version=1)
    with TestClient(app) as c:
        r = c.post("/model/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 409
        assert c.get("/model/info").json()["pinned_version"] == 1


def test_rows_carry_the_instance_and_a_sqlite_log_needs_no_spool(
    tmp_path: Path, trained: dict[str, Any]
) -> None:
    app = create_app(_settings(tmp_path, instance="api-7"), _model(trained))
    with TestClient(app) as c:
        assert c.post("/predict", json=_row(trained)).status_code == 200
        assert c.get("/model/info").json()["instance"] == "api-7"
    conn = sqlite3.connect(tmp_path / "requests.db")
    try:
        logged = conn.execute("select instance, status from requests").fetchall()
    finally:
        conn.close()
    assert logged == [("api-7", 200)]
    # The spool is for a database that can be away; a SQLite log works as it always did.
    assert not (tmp_path / "data" / "spool").exists()
