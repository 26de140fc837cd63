"""The prediction service on a real uvicorn server (what only a real server shows): requests
that never get an answer from the service, and a property-based run of the service's own
OpenAPI schema (schemathesis: positive and negative data for every operation).

The model is a real fitted pipeline on synthetic data, served without MLflow
(``create_app`` takes the loaded model); tests/test_serving_e2e.py covers the registry.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from helpers import ServerThread
from synthetic import make_frame, write_config

from housing_mlops.config import load_config
from housing_mlops.drift import build_profile
from housing_mlops.features import FEATURES
from housing_mlops.inference.loaded_model import LoadedModel, ModelMeta
from housing_mlops.models import build_pipeline
from housing_mlops.serving.app import create_app
from housing_mlops.serving.predictor import build_served_model

MAX_BATCH = 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A fitted HistGradientBoosting pipeline with its training profile (hence ranges)."""
    settings = load_config(write_config(tmp_path_factory.mktemp("model")))
    frame = make_frame(500, seed=3)
    X, y = frame[FEATURES], frame["MedHouseVal"]
    pipeline = build_pipeline(settings.train.candidates[1], settings.features, 42, n_jobs=1)
    pipeline.fit(X, y)
    profile = build_profile({c: X[c].to_numpy() for c in FEATURES}, 200)
    meta = ModelMeta(name="test-housing", version="1", alias="champion", run_id="run1")
    return build_served_model(pipeline, meta, profile, max_batch_size=MAX_BATCH)


def _settings(tmp_path: Path) -> Any:
    overrides = {
        "serve": {
            "request_log": str(tmp_path / "requests.db"),
            "max_batch_size": MAX_BATCH,
            "max_body_bytes": 16384,
            "reload_interval_s": 0,
            "log_flush_interval_s": 0.2,
        }
    }
    return load_config(write_config(tmp_path, overrides))


def _samples(text: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric in a Prometheus text exposition, keyed by its labels."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        if name == metric:
            out[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', rest)))] = float(value)
    return out


def _raw_request(port: int, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a hand-written request in parts, then read whatever comes back until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        for part in body_parts:
            time.sleep(0.05)  # separate packets: the app is reading the body by now
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


# -------------------------------------------------- requests the service never answered
@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_requests_without_an_answer_are_not_counted_as_server_errors(
    tmp_path: Path, model: LoadedModel, http: str
) -> None:
    app = create_app(_settings(tmp_path), model)
    with ServerThread(app, http) as server:
        # 1. A client that promises 500 bytes, sends 12 and leaves.
        head = (
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n"
        )
        assert _raw_request(server.port, head, [b'{"MedInc": 1']) == b""
        # 2. A malformed chunked body: uvicorn itself answers 400 and closes.
        head = (
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = _raw_request(server.port, head, [b"zz\r\nnot a chunk\r\n0\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.1 400 ")
        # 3. A request that was answered, with its real status.
        r = httpx.post(
            f"{server.base}/predict", content=b"{}", headers={"content-type": "text/plain"}
        )
        assert r.status_code == 415

        # Wait until the service has seen both connections close (counted somewhere).
        deadline = time.time() + 10
        while True:
            text = httpx.get(f"{server.base}/metrics").text
            predict = _predict_statuses(text)
            aborted = _samples(text, "housing_http_requests_aborted_total").get(
                (("handler", "/predict"), ("method", "POST")), 0.0
            )
            if aborted + sum(predict.values()) >= 3:
                break
            assert time.time() < deadline, f"the unanswered requests were not seen: {text}"
            time.sleep(0.05)
    # No phantom 5xx for the 5xx alert: only what the service really sent, with its status.
    assert predict == {"415": 1.0}
    assert aborted == 2
    durations = _samples(text, "housing_http_request_duration_seconds_count")
    # A rejection has no role (no model answered).
    assert durations[(("handler", "/predict"), ("role", ""))] == 1.0


def _predict_statuses(text: str) -> dict[str, float]:
    answered = _samples(text, "housing_http_requests_total")
    return {
        dict(labels)["status"]: value
        for labels, value in answered.items()
        if dict(labels)["handler"] == "/predict"
    }


# ------------------------------------------------- the OpenAPI schema, property-based
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model: LoadedModel) -> Iterator[ServerThread]:
    """One server for the schema run (reload over HTTP off: no token configured)."""
    saved = os.environ.pop("HOUSING_RELOAD_TOKEN", None)
    app = create_app(_settings(tmp_path_factory.mktemp("served")), model)
    try:
        with ServerThread(app) as server:
            yield server
    finally:
        if saved is not None:
            os.environ["HOUSING_RELOAD_TOKEN"] = saved


REJECTIONS = [400, 413, 415, 422]  # the documented ways /predict says no


def _bedrooms_not_above_rooms(context: Any, case: Any) -> Any:
    """``map_case`` hook: the one rule JSON Schema cannot state (``AveBedrms <= AveRooms``,
    in the schema's descriptions) is met by swapping the two values in generated *positive*
    bodies. Both ranges allow the swap (bedrooms' range lies below rooms'); negative bodies
    stay as generated."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    body = case.body
    houses = body.get("instances", [body]) if isinstance(body, dict) else []
    for house in houses:
        if isinstance(house, dict) and house.get("AveBedrms", 0) > house.get("AveRooms", 0):
            house["AveBedrms"], house["AveRooms"] = house["AveRooms"], house["AveBedrms"]
    return case


@pytest.fixture(scope="module")
def api_schema(served: ServerThread) -> Any:
    import schemathesis
    from schemathesis.config import SchemathesisConfig

    # A body invalid by the schema must be rejected with one of the documented 4xx: a batch
    # over maxItems can also be over serve.max_body_bytes, and 413 is the right answer then.
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
    )
    schema = schemathesis.openapi.from_url(f"{served.base}/openapi.json", config=config)
    schema.hook("map_case")(_bedrooms_not_above_rooms)
    return schema


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_schema_holds_for_generated_requests(
    api_schema: Any, served: ServerThread, mode: str
) -> None:
    """Every documented operation with generated data: no 5xx, documented status codes,
    content types, headers and bodies; a body valid by the schema is accepted (2xx) and
    one invalid by it is rejected (4xx)."""
    from schemathesis import GenerationMode

    generation_mode = GenerationMode(mode)
    failures: dict[str, str] = {}
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        inputs = [operation.body, operation.query, operation.headers, operation.path_parameters]
        if generation_mode.is_negative and not any(len(i) for i in inputs):
            continue  # nothing to make invalid
        tested.append(operation.label)

        @hypothesis.given(case=operation.as_strategy(generation_mode=generation_mode))
        @hypothesis.settings(
            max_examples=60,
            deadline=None,
            database=None,  # no .hypothesis/ folder in the working tree
            derandomize=True,  # the same cases on every run: a red CI is a real finding
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        )
        def call(case: Any) -> None:
            case.call_and_validate(base_url=served.base, timeout=30)

        try:
            call()
        except Exception as exc:  # noqa: BLE001 - report every operation's failure at once
            failures[operation.label] = str(exc)
    assert "POST /predict" in tested
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # The run really exercised /predict: answers for generated valid bodies, 422s for the rest.
    statuses = _predict_statuses(httpx.get(f"{served.base}/metrics").text)
    print(f"POST /predict statuses so far: {statuses}")
    assert statuses.get("200" if generation_mode.is_positive else "422", 0) >= 20
