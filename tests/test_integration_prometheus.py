"""The dashboard and the alerts against a real Prometheus scraping a real `housing serve`.

Docker cannot run here, so the Compose stack is not started; instead Debian's `prometheus`
binary and the installed `housing serve` run as subprocesses on loopback (free ports, temp
storage, 1 s scrape interval), with a generated Prometheus config that points at the served
port and loads deploy/prometheus/alerts.yml. After real traffic (valid predictions, a batch
and some 422s) every PromQL query of every dashboard panel and every alert expression goes
through Prometheus' HTTP query API: none may fail, and the traffic panels must return data.
That proves the dashboard and the alerts match the metrics the service really exports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import free_port, ready, running, sample_row, serve_command, tail, wait_until
from synthetic import write_config

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "housing.json"
HOUSING = Path(sys.executable).parent / "housing"

# Panels whose queries must return data once the service has answered requests.
TRAFFIC_PANELS = {
    "Request rate",
    "Error rate",
    "Latency of /predict (p50, p95, p99)",
    "Validation errors by field",
    "Predictions by model version",
    "Distribution of predictions",
    "Model version over time",
    "Request log writer",
}
# Grafana's built-in variables, as Grafana would expand them for a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------- fixtures
def _require_prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        msg = "Debian's `prometheus` server is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true" or os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + ": CI must install it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`housing serve` on a tiny champion plus a Prometheus scraping it every second."""
    prometheus = _require_prometheus()
    from helpers import write_processed

    from housing_mlops.config import load_config

    tmp = tmp_path_factory.mktemp("prom-stack")
    config = write_config(
        tmp, {"serve": {"request_log": str(tmp / "requests.db"), "log_flush_interval_s": 0.2}}
    )
    settings = load_config(config)
    write_processed(settings)
    # In-process (the tracking-server test runs the same steps through the CLI).
    from housing_mlops.evaluate import evaluate
    from housing_mlops.promote import promote
    from housing_mlops.train import train

    train(settings, only=["ridge"])
    evaluate(settings)
    promote(settings)

    api_port, prom_port = free_port(), free_port()
    prom_config = tmp / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "housing-api",
                        "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}],
                    }
                ],
            }
        )
    )
    api_url = f"http://127.0.0.1:{api_port}"
    prom_url = f"http://127.0.0.1:{prom_port}"
    with (
        running(serve_command(config, api_port), tmp / "serve.log") as api,
        running(
            [
                prometheus,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            tmp / "prometheus.log",
        ) as prom,
    ):
        wait_until(lambda: ready(api_url), 90, "housing serve /ready", api, tmp / "serve.log")
        wait_until(
            lambda: httpx.get(f"{prom_url}/-/ready", timeout=2).status_code == 200,
            60,
            "prometheus /-/ready",
            prom,
            tmp / "prometheus.log",
        )
        yield {"api": api_url, "prom": prom_url, "tmp": tmp}
        if api.poll() is not None or prom.poll() is not None:
            print(tail(tmp / "serve.log"), tail(tmp / "prometheus.log"))  # noqa: T201


def query(prom_url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def _scalar(prom_url: str, expr: str) -> float:
    result = query(prom_url, expr)["result"]
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def traffic(stack: dict[str, Any]) -> dict[str, Any]:
    """Real requests: 30 single rows, one batch of 5, 8 invalid bodies (422)."""
    api, prom = stack["api"], stack["prom"]
    # A first scrape before the traffic, so rate() has a baseline to compare with.
    wait_until(lambda: _scalar(prom, 'up{job="housing-api"}') == 1, 30, "a first scrape")
    row = sample_row()
    with httpx.Client(base_url=api, timeout=10) as client:
        for i in range(30):
            answer = client.post("/predict", json={**row, "HouseAge": float(1 + i)})
            assert answer.status_code == 200, answer.text
        assert client.post("/predict", json={"instances": [row] * 5}).status_code == 200
        for i in range(8):
            bad = {**row, "MedInc": -1.0} if i % 2 else {**row, "Latitude": 80.0}
            assert client.post("/predict", json=bad).status_code == 422
        client.get("/model/info")
    sent = 35
    wait_until(
        lambda: _scalar(prom, "sum(housing_predictions_total)") >= sent,
        30,
        "the predictions to show up in Prometheus",
    )
    # Two more scrapes (1 s apart) so every rate() window has two points after the traffic.
    after = time.time()
    wait_until(
        lambda: _scalar(prom, 'timestamp(up{job="housing-api"})') >= after + 2,
        30,
        "two scrapes after the traffic",
    )
    return {"predictions": sent, "invalid": 8}


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def _alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"] if "alert" in r]


# ---------------------------------------------------------------------------- tests
def test_every_dashboard_query_runs_and_traffic_panels_have_data(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    queries = _dashboard_queries()
    assert "$" not in "".join(e for _, e in queries), "an unexpanded Grafana variable"
    with_data: dict[str, list[bool]] = {}
    for title, expr in queries:
        result = query(stack["prom"], expr)["result"]
        with_data.setdefault(title, []).append(bool(result))
    assert TRAFFIC_PANELS <= set(with_data)
    empty = sorted(t for t in TRAFFIC_PANELS if not any(with_data[t]))
    assert empty == [], f"traffic panels without data: {empty}"
    # Every quantile and every prediction query has data, not just one of the targets.
    for title in ("Latency of /predict (p50, p95, p99)", "Predictions by model version"):
        assert all(with_data[title]), title


def test_dashboard_numbers_match_the_traffic_sent(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    prom = stack["prom"]
    predictions = query(prom, "sum by (model_version) (housing_predictions_total)")["result"]
    assert [p["metric"]["model_version"] for p in predictions] == ["1"]
    assert float(predictions[0]["value"][1]) == traffic["predictions"]
    statuses = {
        r["metric"]["status"]: float(r["value"][1])
        for r in query(prom, 'sum by (status) (housing_http_requests_total{handler="/predict"})')[
            "result"
        ]
    }
    assert statuses == {"200": 31.0, "422": float(traffic["invalid"])}
    fields = {
        r["metric"]["field"]
        for r in query(prom, "sum by (field) (housing_validation_errors_total)")["result"]
    }
    assert {"MedInc", "Latitude"} <= fields
    served = query(prom, "housing_model_info == 1")["result"]
    assert [s["metric"]["version"] for s in served] == ["1"]


def test_every_alert_expression_runs_and_prometheus_evaluates_the_rules(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    prom = stack["prom"]
    for _name, expr in _alert_rules():
        query(prom, expr)  # asserts status == success
    # Prometheus loaded alerts.yml and every rule evaluated without error.
    rules = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(loaded) == {name for name, _ in _alert_rules()}
    wait_until(
        lambda: all(
            r.get("health") == "ok"
            for g in httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
            for r in g["rules"]
        ),
        15,
        "every alert rule to evaluate with health ok",
    )
    # A healthy service with fresh traffic fires none of them.
    firing = [
        a["labels"]["alertname"]
        for a in httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        if a["state"] == "firing"
    ]
    assert firing == []
