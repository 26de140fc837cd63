"""Hot reload on a real uvicorn server: the champion alias moves while clients keep sending
requests; every request succeeds, each client sees the old version then the new one, and a
version that fails to load leaves the old model serving (logs, metrics, /model/info).

The registry is replaced by two callables (which version the alias points at, and how to
load a version) so the test needs no MLflow; tests/test_serving_e2e.py covers the registry.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import ServerThread, fit_two_versions, wait_until
from synthetic import write_config

from housing_mlops.config import load_config
from housing_mlops.inference.loaded_model import LoadedModel, ModelMeta
from housing_mlops.serving.app import create_app
from housing_mlops.serving.predictor import build_served_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two genuinely different fitted pipelines: version 1 (hist GB) and 2 (ridge)."""
    return fit_two_versions(tmp_path_factory.mktemp("versions"))


def test_hot_reload_under_concurrent_requests(tmp_path: Path, versions: dict[str, Any]) -> None:
    alias = {"version": "1"}
    loads: list[str] = []

    def loader(version: str | None) -> LoadedModel:
        v = version or alias["version"]
        if v == "3":
            raise RuntimeError("artifact checksum mismatch")
        loads.append(v)
        time.sleep(0.2)  # a slow load: requests keep flowing on the old model meanwhile
        meta = ModelMeta(name="test-housing", version=v, alias="champion", run_id=f"run{v}")
        return build_served_model(versions["pipes"][v], meta, versions["profile"])

    settings = load_config(
        write_config(
            tmp_path,
            {
                "serve": {
                    "request_log": str(tmp_path / "requests.db"),
                    "reload_interval_s": 0.1,
                    "log_flush_interval_s": 0.2,
                }
            },
        )
    )
    app = create_app(settings, loader(None), loader=loader, alias_version=lambda: alias["version"])
    X = versions["X"]
    rows = [{k: float(v) for k, v in X.iloc[i].items()} for i in range(8)]
    expected = {v: p.predict(X.iloc[:8]) for v, p in versions["pipes"].items()}
    stop = threading.Event()
    seen: dict[int, list[tuple[str, int, float]]] = {}
    failures: list[str] = []

    def client(n: int) -> None:
        out = seen.setdefault(n, [])
        with httpx.Client(base_url=base, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post("/predict", json=rows[n])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                body = r.json()
                out.append((body["model_version"], n, body["prediction"]))

    with ServerThread(app) as server:
        base = server.base
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: all(seen.get(n) for n in range(8)), 20, "every client got an answer")
        alias["version"] = "2"
        deadline = time.time() + 10
        while httpx.get(f"{base}/model/info").json()["version"] != "2":
            assert time.time() < deadline, "the watcher did not switch to version 2"
            time.sleep(0.05)
        wait_until(
            lambda: all(seen[n][-1][0] == "2" for n in range(8)), 20, "every client saw version 2"
        )
        # A broken version: the old model keeps serving.
        alias["version"] = "3"
        deadline = time.time() + 10
        while httpx.get(f"{base}/model/info").json()["last_reload_error"] is None:
            assert time.time() < deadline, "the failed reload was not reported"
            time.sleep(0.05)
        # Every client gets answers after the failed reload too (from the old model).
        answered = {n: len(seen[n]) for n in range(8)}
        wait_until(
            lambda: all(len(seen[n]) > answered[n] + 2 for n in range(8)),
            20,
            "answers after the failed reload",
        )
        stop.set()
        for t in threads:
            t.join(10)
        info = httpx.get(f"{base}/model/info").json()
        metrics = httpx.get(f"{base}/metrics").text

    assert failures == []
    assert info["version"] == "2"
    assert "version 3" in info["last_reload_error"]
    assert "checksum mismatch" in info["last_reload_error"]
    assert "housing_model_reloads_total 1.0" in metrics
    assert "housing_model_reload_failures_total" in metrics
    assert (
        'housing_model_info{alias="champion",name="test-housing",run_id="run2",version="2"} 1.0'
        in metrics
    )
    assert (
        'housing_model_info{alias="champion",name="test-housing",run_id="run1",version="1"} 0.0'
        in metrics
    )
    failures_line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("housing_model_reload_failures_total")
    )
    assert float(failures_line.split()[-1]) >= 1
    for n, answers in seen.items():
        got = [v for v, _, _ in answers]
        assert got, f"client {n} got no answer"
        # Each client sees version 1, then version 2, never back.
        switch = got.index("2") if "2" in got else len(got)
        assert set(got[:switch]) <= {"1"} and set(got[switch:]) <= {"2"}, got
        assert "1" in got and "2" in got
        for v, i, pred in answers:
            assert pred == pytest.approx(float(expected[v][i]), rel=1e-12, abs=1e-12)
    # The two versions really differ, so the check above tells them apart.
    assert not np.allclose(expected["1"], expected["2"])
