"""Registry: runs and versions in a real MLflow SQLite store, safe loading, references.

The store helpers (``make_settings``, ``copy_store``, ``trained_store``) live in helpers.py:
processed data written per the data contract from ``synthetic.make_frame``, and a throwaway
SQLite tracking store in tmp_path.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import DATA_VERSION, trained_store
from synthetic import write_config

from housing_mlops import registry
from housing_mlops.config import Settings, load_config
from housing_mlops.errors import ModelError


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    # OpenMP pools (HistGradientBoosting, LightGBM) spin and crawl on a busy 2-core box.
    # threadpoolctl only limits libraries already loaded: load the OpenMP users first.
    import lightgbm  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[dict[str, Any]]]:
    return trained_store(tmp_path_factory)


def test_each_candidate_is_a_run_with_params_metrics_tags_and_lineage(trained) -> None:
    import mlflow

    settings, rows = trained
    client = mlflow.MlflowClient(registry.tracking_uri(settings))
    assert [r["candidate"] for r in rows] == ["ridge", "hist_gb"]
    for row in rows:
        run = client.get_run(row["run_id"])
        assert (
            run.data.params["estimator"]
            == {"ridge": "ridge", "hist_gb": "hist_gradient_boosting"}[row["candidate"]]
        )
        assert run.data.params["cv_folds"] == "3"
        for key in ("cv_rmse_mean", "cv_rmse_std", "cv_mae_mean", "cv_r2_mean", "fit_time_s"):
            assert np.isfinite(run.data.metrics[key])
        tags = run.data.tags
        assert tags["data_version"] == DATA_VERSION
        assert tags["candidate"] == row["candidate"]
        assert len(tags["config_hash"]) == 64
        assert tags["package_version"]
        assert len(tags.get("git_commit", "x" * 40)) == 40
        assert run.inputs is not None
        [dataset_input] = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "california-housing-train"
        assert dataset_input.dataset.digest == tags["train_hash"][:32]
        assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


def test_versions_are_registered_with_checksum_batch_and_signature(trained) -> None:
    settings, rows = trained
    refs = registry.list_versions(settings)
    assert [r.version for r in refs] == [r["version"] for r in rows] == ["1", "2"]
    assert {r.tags["train_batch"] for r in refs} == {rows[0]["train_batch"]}
    for ref, row in zip(refs, rows, strict=True):
        assert ref.run_id == row["run_id"]
        assert len(ref.tags[registry.SHA_TAG]) == 64
        assert ref.data_version == DATA_VERSION
        assert ref.metrics["cv_rmse_mean"] == pytest.approx(row["cv_rmse_mean"])
        assert ref.alias is None
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{settings.mlflow.registered_model_name}/2")
    assert info.signature.inputs.input_names()[:2] == ["MedInc", "HouseAge"]
    assert info.flavors["sklearn"]["serialization_format"] == "skops"


def test_reloaded_model_predicts_exactly_what_the_fitted_one_did(trained) -> None:
    from housing_mlops import featurize, models

    settings, _ = trained
    X, y = featurize.load_split(settings, "train")
    X_test, _ = featurize.load_split(settings, "test")
    for ref in registry.list_versions(settings):
        candidate = next(c for c in settings.train.candidates if c.name == ref.tags["candidate"])
        fitted = models.build_pipeline(
            candidate, settings.features, settings.train.seed, settings.train.n_jobs
        ).fit(X, y)
        loaded = registry.load_model(settings, ref)
        np.testing.assert_array_equal(loaded.predict(X_test), fitted.predict(X_test))


def test_reference_profile_covers_features_and_train_predictions(trained) -> None:
    settings, _ = trained
    ref = registry.resolve(settings, version=2)
    profile = registry.load_reference_profile(settings, ref)
    assert profile["rows"] == 480
    assert "prediction" in profile["columns"]
    assert "MedInc" in profile["columns"]
    assert len(profile["columns"]["prediction"]["sample"]) == 200
    import mlflow

    with mlflow.start_run(experiment_id=registry.configure(settings)) as bare:
        pass  # a run without a profile
    orphan = dataclasses.replace(ref, run_id=bare.info.run_id)
    with pytest.raises(ModelError, match="has no reference/profile.json artifact"):
        registry.load_reference_profile(settings, orphan)


def test_load_refuses_types_outside_the_allow_list(trained) -> None:
    settings, _ = trained
    ref = registry.resolve(settings, version=2)  # HistGradientBoosting: TreePredictor etc.
    with pytest.raises(ModelError, match="outside the reviewed allow-list"):
        registry.load_model(settings, ref, trusted_types=[])


def test_load_refuses_a_changed_artifact(trained, tmp_path: Path) -> None:
    import skops.io
    from sklearn.linear_model import LinearRegression

    settings, _ = trained
    ref = registry.resolve(settings, version=1)
    store = Path(settings.mlflow.artifact_location)
    [model_file] = [
        p for p in store.rglob(registry.MODEL_FILE) if ref.source.split("/")[-1] in str(p)
    ]
    original = model_file.read_bytes()
    # A perfectly loadable, but different, model: only the checksum can catch it.
    skops.io.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), model_file)
    try:
        with pytest.raises(ModelError, match="differs from .* recorded at registration"):
            registry.load_model(settings, ref)
    finally:
        model_file.write_bytes(original)
    assert registry.load_model(settings, ref) is not None


def test_resolve_explains_missing_alias_and_unknown_version(trained) -> None:
    settings, _ = trained
    with pytest.raises(
        ModelError, match=r"no model has the alias 'champion' yet: run `housing promote` first"
    ):
        registry.resolve(settings)
    with pytest.raises(ModelError, match=r"has no version 99 \(registered versions: 1, 2\)"):
        registry.resolve(settings, version=99)
    assert registry.get_alias_version(settings, "champion") is None


def test_empty_store_says_to_train_first(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    assert registry.list_versions(settings) == []
    with pytest.raises(ModelError, match="start with `housing train`"):
        registry.resolve(settings)
    assert registry.get_alias_version(settings, "champion") is None
    # Readers create nothing: the embedded store is made by the first writer (train).
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["promote", "--dry-run"], "Error: no trained model versions: run `housing train` first"),
        (["evaluate"], "Error: no trained model versions: run `housing train` first"),
        (
            ["predict", "{d}/in.parquet", "-o", "{d}/o.parquet"],
            "Error: no model has the alias 'champion' yet: run `housing promote` first (there "
            "is no MLflow store at sqlite:///{d}/mlrnus/mlflow.db yet: start with `housing "
            "train`, or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI)",
        ),
        (
            ["predict", "{d}/in.parquet", "-o", "{d}/o.parquet", "--model-version", "2"],
            "Error: model 'test-housing' has no version 2 (registered versions: none; there is "
            "no MLflow store at sqlite:///{d}/mlrnus/mlflow.db yet",
        ),
    ],
)
def test_readers_at_a_mistyped_tracking_uri_create_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], message: str
) -> None:
    from synthetic import make_frame

    from housing_mlops.cli import run

    typo = tmp_path / "mlrnus" / "mlflow.db"
    config = write_config(tmp_path, {"mlflow": {"tracking_uri": f"sqlite:///{typo}"}})
    make_frame(20).to_parquet(tmp_path / "in.parquet")
    args = [a.format(d=tmp_path) for a in command]
    assert run(["-c", str(config), *args]) == 5
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(message.format(d=tmp_path)), err
    assert "Traceback" not in err
    assert not typo.parent.exists()
    assert not (tmp_path / "mlruns").exists()  # nor the artifact folder
    assert not (tmp_path / "o.parquet").exists()


def test_unreachable_tracking_server_is_a_quick_model_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_config(
        write_config(tmp_path, {"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"}})
    )
    started = time.monotonic()
    with pytest.raises(
        ModelError, match=f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"
    ):
        registry.resolve(settings)
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_tracking_server_whose_api_hangs_is_reported_unreachable(tmp_path: Path) -> None:
    """/health answers but every API call hangs: exit 5 in seconds, not minutes of retries.

    A fake server is justified here: a real MLflow server cannot be made to hang on
    purpose, and a hanging API behind a live /health (a stuck database, a proxy that
    accepts and never answers) is exactly the hostile case under test.
    """
    import os
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._answer()

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self._answer()

        def _answer(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return
            release.wait(120)  # the API hangs until the test is over

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["MLFLOW_TRACKING_URI"] = url
    housing = Path(sys.executable).parent / "housing"
    try:
        started = time.monotonic()
        try:
            result = subprocess.run(
                [str(housing), "--config", str(config), "evaluate"],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("`housing evaluate` was still waiting for the hung server after 60 s")
        elapsed = time.monotonic() - started
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
    print(f"hanging tracking server reported after {elapsed:.1f}s")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 5, result.stderr[-2000:]
    assert lines[-1].startswith(f"Error: cannot reach the MLflow tracking server at {url}")
    assert elapsed < 30  # generous: the bound is ~11 s of MLflow timeouts plus start-up
