"""The tracking-server path for real: train, evaluate, promote and serve over HTTP.

The Compose stack runs an MLflow tracking server on PostgreSQL with proxied artifacts; Docker
cannot run here, so this test starts the same kind of server as a subprocess on loopback:
`mlflow server --serve-artifacts` with a SQLite backend store, and again with a PostgreSQL
backend store when Debian's PostgreSQL (initdb/pg_ctl) is installed (started in a temp dir as
the unprivileged `postgres` user when the tests run as root). The real `housing train`,
`evaluate` and `promote` talk to it through MLFLOW_TRACKING_URI only, then `housing serve`
loads the champion from it and answers a prediction.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, ready, running, sample_row, serve_command, tail, wait_until
from synthetic import write_config

MLFLOW = Path(sys.executable).parent / "mlflow"
MODEL_NAME = "test-housing"  # registered_model_name in tests/synthetic.py

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def backend_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    else:
        pytest.importorskip("psycopg2", reason="psycopg2-binary (dev extra) is needed by MLflow")
        server = request.getfixturevalue("postgres")  # the session's PostgreSQL (conftest)
        url = server.create_database("mlflow")
        # psycopg2 explicitly: SQLAlchemy 2.1 maps postgresql:// to psycopg 3.
        yield url.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_train_evaluate_promote_and_serve_through_a_tracking_server(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    from helpers import write_processed

    from housing_mlops.cli import run
    from housing_mlops.config import load_config

    (tmp_path / "server").mkdir()
    artifacts = tmp_path / "server" / "artifacts"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    config = write_config(tmp_path)
    write_processed(load_config(config))
    # Only the environment says where MLflow is: the config still names a local SQLite file.
    client_env = {**os.environ, "MLFLOW_TRACKING_URI": url}

    with contextlib.ExitStack() as stack:
        store_uri = stack.enter_context(backend_store(backend, tmp_path, request))
        server = stack.enter_context(
            running(
                [
                    str(MLFLOW),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    store_uri,
                    "--serve-artifacts",
                    "--artifacts-destination",
                    str(artifacts),
                ],
                tmp_path / "mlflow-server.log",
                env=server_env,
            )
        )
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
            120,
            f"mlflow server ({backend}) /health",
            server,
            tmp_path / "mlflow-server.log",
        )

        # The real CLI commands, in this process (saves three interpreter starts).
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        for args in (["train", "--model", "ridge"], ["evaluate"], ["promote"]):
            code = run(["--config", str(config), *args])
            assert code == 0, f"housing {args[0]}: {capsys.readouterr().err[-2000:]}"

        # The registry lives on the server, the model files in its artifact store (uploaded
        # through the server's proxy), and nothing was written to the local store.
        import mlflow

        champion = mlflow.MlflowClient(url, url).get_model_version_by_alias(MODEL_NAME, "champion")
        assert champion.version == "1"
        assert any(p.is_file() for p in artifacts.rglob("*")), "no artifact reached the server"
        assert not (tmp_path / "mlruns").exists(), "the CLI wrote to the local store"

        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        api = stack.enter_context(
            running(serve_command(config, api_port), tmp_path / "serve.log", env=client_env)
        )
        wait_until(lambda: ready(api_url), 90, "housing serve /ready", api, tmp_path / "serve.log")
        answer = httpx.post(f"{api_url}/predict", json=sample_row(), timeout=10)
        assert answer.status_code == 200, answer.text + tail(tmp_path / "serve.log")
        body = answer.json()
        assert body["model_name"] == MODEL_NAME and body["model_version"] == "1"
        assert 0.0 < body["prediction"] < 7.0
        info = httpx.get(f"{api_url}/model/info", timeout=10).json()
        assert info["run_id"] == champion.run_id and info["alias"] == "champion"
