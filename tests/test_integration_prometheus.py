"""The dashboard and the alerts against a real Prometheus scraping real `housing serve` replicas.

Docker cannot run here, so the Compose stack is not started; instead Debian's `prometheus`
binary and two installed `housing serve` replicas run as subprocesses on loopback (the
replicas on 127.0.0.2 and 127.0.0.3, the same port, as replicas on a Compose network; each
with its own SQLite request log), with a Prometheus config made from
deploy/prometheus/prometheus.yml: global 1 s scrape interval, the alert rules of
deploy/prometheus/alerts.yml, and the housing-api job as shipped except its discovery.
Docker's DNS (which answers `api` with one address per replica) cannot run here, so the
job's `dns_sd_configs` is swapped for a `file_sd_configs` listing both replicas with the
label DNS discovery attaches (`__meta_dns_name`), going through the same relabeling.

After real traffic (valid predictions, a batch and some 422s, split over the replicas)
every PromQL query of every dashboard panel and every alert expression goes through
Prometheus' HTTP query API: none may fail, the traffic panels must return data, the sums
over replicas must equal the traffic sent and the per-replica panels must show each one.

The load balancer: Debian's nginx runs deploy/nginx/api.conf as shipped except its listen
address, the upstream port and the resolver, which points at a small DNS server in this
file standing in for Docker's: it answers `api` with both replicas' addresses plus one
where nothing listens (a replica that stopped but is still in DNS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ready, running, sample_row, serve_command, tail, wait_until
from synthetic import write_config

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "housing.json"
NGINX_CONF = REPO / "deploy" / "nginx" / "api.conf"
HOUSING = Path(sys.executable).parent / "housing"

# Two replicas on one port, as on a Compose network; the third address has no replica.
REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3")
GONE_REPLICA = "127.0.0.4"

# Panels whose queries must return data once the service has answered requests.
TRAFFIC_PANELS = {
    "Request rate",
    "Error rate",
    "Latency of /predict (p50, p95, p99)",
    "Validation errors by field",
    "Replicas up",
    "Request rate by replica",
    "Latency of /predict by replica (p99)",
    "Predictions by model version",
    "Distribution of predictions",
    "Model version over time",
    "Model version by replica",
    "Request log writer",
    "Request log by replica",
    "Traffic share by role",
    "Latency of /predict by role (p99)",
    "Labelled rows",  # 0 for the served champion: no label has arrived
}
# Per-replica panels: every query returns one series per replica.
PER_REPLICA_PANELS = {
    "Request rate by replica",
    "Latency of /predict by replica (p99)",
    "Model version by replica",
    "Request log by replica",
}
# Grafana's built-in variables, as Grafana would expand them for a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}

pytestmark = pytest.mark.slow


def _mandatory() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1"


def _require(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"Debian's `{name}` is not installed (apt-get install {package})"
        if _mandatory():
            pytest.fail(msg + ": CI must install it")
        pytest.skip(msg)
    return path


def _shared_port() -> int:
    """A port free on every replica address (and the gone one)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((REPLICA_HOSTS[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in (*REPLICA_HOSTS[1:], GONE_REPLICA):
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on every replica address")


def prometheus_config(targets: list[str], targets_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml for loopback: 1 s scrapes, the alert rules by
    absolute path, and the housing-api job as shipped, its DNS discovery replaced by a file
    with the same targets and the label DNS discovery sets (the relabeling stays)."""
    shipped = yaml.safe_load(PROMETHEUS_YML.read_text())
    [job] = [j for j in shipped["scrape_configs"] if j["job_name"] == "housing-api"]
    [dns] = job.pop("dns_sd_configs")
    assert dns["type"] == "A" and "static_configs" not in job
    targets_file.write_text(
        json.dumps([{"targets": targets, "labels": {"__meta_dns_name": dns["names"][0]}}])
    )
    job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [job],
    }


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two `housing serve` replicas on a tiny champion plus a Prometheus scraping both."""
    prometheus = _require("prometheus", "prometheus")
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

    api_port = _shared_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        prom_port = int(probe.getsockname()[1])
    instances = [f"{host}:{api_port}" for host in REPLICA_HOSTS]
    prom_config = tmp / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump(prometheus_config(instances, tmp / "api-targets.json")))
    prom_url = f"http://127.0.0.1:{prom_port}"
    with running(
        [
            prometheus,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        tmp / "prometheus.log",
    ) as prom:
        replicas = []
        with running(*_replica(config, tmp, 0, api_port)) as api1:
            with running(*_replica(config, tmp, 1, api_port)) as api2:
                for i, proc in enumerate((api1, api2)):
                    url = f"http://{instances[i]}"
                    log = tmp / f"serve-{i + 1}.log"
                    wait_until(partial(ready, url), 90, f"replica {i + 1} /ready", proc, log)
                    replicas.append({"url": url, "instance": instances[i], "proc": proc})
                wait_until(
                    lambda: httpx.get(f"{prom_url}/-/ready", timeout=2).status_code == 200,
                    60,
                    "prometheus /-/ready",
                    prom,
                    tmp / "prometheus.log",
                )
                yield {"replicas": replicas, "port": api_port, "prom": prom_url, "tmp": tmp}
                for i, proc in enumerate((api1, api2)):
                    if proc.poll() is not None:
                        print(tail(tmp / f"serve-{i + 1}.log"))  # noqa: T201
        if prom.poll() is not None:
            print(tail(tmp / "prometheus.log"))  # noqa: T201


def _replica(
    config: Path, tmp: Path, index: int, port: int
) -> tuple[list[str], Path, dict[str, str]]:
    """(command, log, env) of one replica: its own address and its own SQLite log (the
    shared PostgreSQL log has its own tests), named like `serve.instance` would name it."""
    command = serve_command(config, port)
    command[command.index("--host") + 1] = REPLICA_HOSTS[index]
    env = {
        **os.environ,
        "HOUSING_REQUEST_LOG": str(tmp / f"requests-{index + 1}.db"),
        "HOUSING_INSTANCE": f"replica-{index + 1}",
    }
    return command, tmp / f"serve-{index + 1}.log", env


def query(prom_url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def _scalar(prom_url: str, expr: str) -> float:
    result = query(prom_url, expr)["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _by_instance(prom_url: str, expr: str) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in query(prom_url, expr)["result"]}


@pytest.fixture(scope="module")
def traffic(stack: dict[str, Any]) -> dict[str, Any]:
    """Real requests, split unevenly over the replicas so that each one's numbers are its
    own: replica 1 answers 20 single rows; replica 2 answers 10 single rows, one batch of
    5 and 8 invalid bodies (422)."""
    prom = stack["prom"]
    first, second = stack["replicas"]
    # A first scrape of both before the traffic, so rate() has a baseline to compare with.
    wait_until(lambda: _scalar(prom, 'sum(up{job="housing-api"})') == 2, 30, "a first scrape")
    row = sample_row()
    with httpx.Client(base_url=first["url"], timeout=10) as client:
        for i in range(20):
            answer = client.post("/predict", json={**row, "HouseAge": float(1 + i)})
            assert answer.status_code == 200, answer.text
    with httpx.Client(base_url=second["url"], timeout=10) as client:
        for i in range(10):
            answer = client.post("/predict", json={**row, "HouseAge": float(21 + i)})
            assert answer.status_code == 200, answer.text
        assert client.post("/predict", json={"instances": [row] * 5}).status_code == 200
        for i in range(8):
            bad = {**row, "MedInc": -1.0} if i % 2 else {**row, "Latitude": 80.0}
            assert client.post("/predict", json=bad).status_code == 422
        client.get("/model/info")
    predictions = {first["instance"]: 20.0, second["instance"]: 15.0}
    wait_until(
        lambda: _by_instance(prom, "sum by (instance) (housing_predictions_total)") == predictions,
        30,
        "the predictions of both replicas to show up in Prometheus",
    )
    # Two more scrapes (1 s apart) so every rate() window has two points after the traffic.
    after = time.time()
    wait_until(
        lambda: _scalar(prom, 'min(timestamp(up{job="housing-api"}))') >= after + 2,
        30,
        "two scrapes of both replicas after the traffic",
    )
    return {"predictions": predictions, "invalid": {second["instance"]: 8.0}}


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


def _exported(prom_url: str, metric: str) -> bool:
    return bool(query(prom_url, f"count({metric})")["result"])


# ---------------------------------------------------------------------------- tests
def test_prometheus_finds_both_replicas_through_the_shipped_job(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    """Each replica is its own target, relabeled as the Compose stack relabels them."""
    targets = httpx.get(f"{stack['prom']}/api/v1/targets", timeout=10).json()["data"]
    api = [t for t in targets["activeTargets"] if t["labels"]["job"] == "housing-api"]
    assert sorted(t["labels"]["instance"] for t in api) == sorted(
        r["instance"] for r in stack["replicas"]
    )
    assert all(t["health"] == "up" for t in api), api
    assert {t["labels"].get("service") for t in api} == {"api"}  # from __meta_dns_name


def test_every_dashboard_query_runs_and_traffic_panels_have_data(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    prom = stack["prom"]
    queries = _dashboard_queries()
    assert "$" not in "".join(e for _, e in queries), "an unexpanded Grafana variable"
    with_data: dict[str, list[bool]] = {}
    instances_seen: dict[str, list[set[str]]] = {}
    for title, expr in queries:
        result = query(prom, expr)["result"]
        with_data.setdefault(title, []).append(bool(result))
        instances_seen.setdefault(title, []).append(
            {r["metric"].get("instance", "") for r in result}
        )
    assert TRAFFIC_PANELS <= set(with_data)
    empty = sorted(t for t in TRAFFIC_PANELS if not any(with_data[t]))
    assert empty == [], f"traffic panels without data: {empty}"
    # Every quantile and every prediction query has data, not just one of the targets.
    for title in ("Latency of /predict (p50, p95, p99)", "Predictions by model version"):
        assert all(with_data[title]), title
    # Per-replica panels show every replica, in each of their queries.
    both = {r["instance"] for r in stack["replicas"]}
    for title in PER_REPLICA_PANELS:
        assert all(seen == both for seen in instances_seen[title]), (title, instances_seen[title])
    # The spool panel's metrics come with the PostgreSQL writer; where the service exports
    # them (idle: 0 spooled rows, not degraded) the panel shows both replicas too.
    spool = "Request log spool and database writes"
    if _exported(prom, "housing_request_log_spooled_rows"):
        assert instances_seen[spool][0] == both


def test_dashboard_numbers_match_the_traffic_sent(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    prom = stack["prom"]
    first, second = (r["instance"] for r in stack["replicas"])
    predictions = query(prom, "sum by (model_version) (housing_predictions_total)")["result"]
    assert [p["metric"]["model_version"] for p in predictions] == ["1"]
    assert float(predictions[0]["value"][1]) == sum(traffic["predictions"].values())
    statuses = {
        r["metric"]["status"]: float(r["value"][1])
        for r in query(prom, 'sum by (status) (housing_http_requests_total{handler="/predict"})')[
            "result"
        ]
    }
    assert statuses == {"200": 31.0, "422": 8.0}
    # Per replica: what each one answered, nothing counted twice or on the wrong one.
    answered = _by_instance(
        prom, 'sum by (instance) (housing_http_requests_total{handler="/predict", status="200"})'
    )
    assert answered == {first: 20.0, second: 11.0}
    assert _by_instance(prom, "sum by (instance) (housing_validation_errors_total)").keys() == {
        second
    }
    fields = {
        r["metric"]["field"]
        for r in query(prom, "sum by (field) (housing_validation_errors_total)")["result"]
    }
    assert {"MedInc", "Latitude"} <= fields
    served = query(prom, "max by (instance, version) (housing_model_info) == 1")["result"]
    assert sorted((s["metric"]["instance"], s["metric"]["version"]) for s in served) == [
        (first, "1"),
        (second, "1"),
    ]
    assert _scalar(prom, 'count(up{job="housing-api"} == 1)') == 2


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
    # Two healthy replicas with fresh traffic fire none of them.
    firing = [
        a["labels"]["alertname"]
        for a in httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        if a["state"] == "firing"
    ]
    assert firing == []
    # The request-log alerts have what they need where the service exports it: a healthy
    # replica spools nothing and is not degraded, so their expressions are empty.
    if _exported(prom, "housing_request_log_spooled_rows"):
        assert query(prom, dict(_alert_rules())["RequestLogSpooling"])["result"] == []
        assert _by_instance(prom, "housing_request_log_degraded") == {
            r["instance"]: 0.0 for r in stack["replicas"]
        }


# ------------------------------------------------------------------ load balancer
class StandInDns:
    """A DNS server on 127.0.0.1 (UDP) answering A queries for one name with fixed
    addresses, as Docker's embedded DNS answers a Compose service name with one address
    per replica. Any other name: NXDOMAIN. Only what nginx's resolver asks is handled."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name, self.addresses = name.lower(), addresses
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StandInDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                packet, client = self.sock.recvfrom(512)
            except OSError:
                return  # closed
            self.queries += 1
            self.sock.sendto(self._answer(packet), client)

    def _answer(self, packet: bytes) -> bytes:
        (ident,) = struct.unpack("!H", packet[:2])
        labels, i = [], 12
        while packet[i]:
            labels.append(packet[i + 1 : i + 1 + packet[i]].decode().lower())
            i += packet[i] + 1
        question = packet[12 : i + 5]  # name, its terminating 0, type and class
        qtype = struct.unpack("!H", packet[i + 1 : i + 3])[0]
        if ".".join(labels) != self.name:
            return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question
        answers = [] if qtype != 1 else self.addresses
        header = struct.pack("!HHHHHH", ident, 0x8180, 1, len(answers), 0, 0)
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(a) for a in answers
        )
        return header + question + records


def _predictions_by_replica(replicas: list[dict[str, Any]]) -> list[float]:
    """housing_predictions_total of each replica, read from its own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = []
    for replica in replicas:
        text = httpx.get(f"{replica['url']}/metrics", timeout=5).text
        counts.append(
            sum(
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "housing_predictions_total"
            )
        )
    return counts


def test_the_load_balancer_spreads_requests_over_every_replica_and_skips_a_gone_one(
    stack: dict[str, Any], traffic: dict[str, Any]
) -> None:
    """Last in this module: it adds traffic the dashboard tests above do not expect."""
    nginx = _require("nginx", "nginx-light")
    tmp: Path = stack["tmp"] / "lb"
    tmp.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        lb_port = int(probe.getsockname()[1])
    addresses = [*REPLICA_HOSTS, GONE_REPLICA]
    with StandInDns("api", addresses) as dns:
        shipped = NGINX_CONF.read_text()
        conf, swaps = re.subn(
            r"resolver 127\.0\.0\.11 ", f"resolver 127.0.0.1:{dns.port} ", shipped
        )
        conf, more = re.subn(r"listen 8080;", f"listen 127.0.0.1:{lb_port};", conf)
        conf, most = re.subn(r"http://api:8000;", f"http://api:{stack['port']};", conf)
        assert (swaps, more, most) == (1, 1, 1), "deploy/nginx/api.conf changed shape"
        (tmp / "api.conf").write_text(conf)
        # As the image's nginx.conf includes conf.d/; one process, so it runs as this user.
        (tmp / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/error.log warn;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  include {tmp}/api.conf;\n}}\n"
        )
        lb_url = f"http://127.0.0.1:{lb_port}"
        command = [
            nginx,
            "-p",
            str(tmp),
            "-e",
            str(tmp / "error.log"),
            "-c",
            str(tmp / "nginx.conf"),
        ]
        with running(command, tmp / "nginx.out") as proc:
            wait_until(lambda: ready(lb_url), 30, "nginx to answer /ready", proc, tmp / "error.log")
            before = _predictions_by_replica(stack["replicas"])
            row = sample_row()
            sent = 60
            with httpx.Client(base_url=lb_url, timeout=10) as client:
                statuses = [
                    client.post("/predict", json={**row, "HouseAge": float(1 + i % 40)}).status_code
                    for i in range(sent)
                ]
                metrics = client.get("/metrics")
            assert dns.queries > 0, "nginx did not ask the (stand-in) DNS server"
        after = _predictions_by_replica(stack["replicas"])
    # The replica that is gone (nothing listens at its address) costs no request...
    assert statuses == [200] * sent
    # ...every request was answered once, and by both live replicas, not always the same.
    answered = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(answered) == sent
    assert all(n > 0 for n in answered), answered
    # One random replica's numbers through the balancer would mislead: not forwarded.
    assert metrics.status_code == 404
