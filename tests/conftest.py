"""Shared fixtures: the real archive (optional locally, mandatory in CI) and isolation."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


def _real_archive() -> Path | None:
    value = os.environ.get("HOUSING_DATA_ARCHIVE")
    candidates = [Path(value)] if value else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "cal_housing.tgz")
    for path in candidates:
        if path.is_file():
            return path
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Compiled trees (housing predict, housing serve) go to a cache of the test run's own,
    # never the user's ~/.cache; every process a test starts inherits it.
    import shutil
    import tempfile

    cache = tempfile.mkdtemp(prefix="housing-test-trees-")
    os.environ["HOUSING_COMPILE_CACHE"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


@pytest.fixture(scope="session")
def real_archive() -> Path:
    """The real StatLib archive; skipped (or failed under HOUSING_REQUIRE_REAL_DATA=1)."""
    path = _real_archive()
    if path is None:
        msg = (
            "real California Housing archive not found: set HOUSING_DATA_ARCHIVE "
            "or place it at ../shared/data/cal_housing.tgz"
        )
        if os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit deployment overrides from the developer's shell."""
    for name in (
        "MLFLOW_TRACKING_URI",
        "HOUSING_MLFLOW_ARTIFACT_LOCATION",
        "HOUSING_REGISTERED_MODEL",
        "HOUSING_SERVE_HOST",
        "HOUSING_SERVE_PORT",
        "HOUSING_SERVE_WORKERS",
        "HOUSING_REQUEST_LOG",
        "HOUSING_INSTANCE",
        "HOUSING_SPOOL_DIR",
    ):
        monkeypatch.delenv(name, raising=False)


def _logged_request(row: dict[str, Any]) -> Any:
    """A request-log row given as {column: value} (missing columns NULL) as the typed row."""
    from housing_mlops.columns import FEATURES
    from housing_mlops.store import LoggedRequest

    features: list[Any] = [row.get(name) for name in FEATURES]
    return LoggedRequest(
        ts=row["ts"],
        request_id=row["request_id"],
        row_index=row.get("row_index", 0),
        model_name=row.get("model_name"),
        model_version=row.get("model_version"),
        features=None if all(v is None for v in features) else features,
        prediction=row.get("prediction"),
        latency_ms=row.get("latency_ms"),
        status=row["status"],
        error=row.get("error"),
        instance=row.get("instance"),
        role=row.get("role"),
        shadow_version=row.get("shadow_version"),
        shadow_prediction=row.get("shadow_prediction"),
    )


@pytest.fixture(scope="session")
def write_request_log() -> Callable[[Path, list[dict[str, Any]]], None]:
    """``write_request_log(path, rows)``: rows ({column: value}) into the request log at
    ``path`` (created when missing) through the service's own writer; a postgresql://
    URL through the store's sink (one transaction)."""

    def write(path: Path | str, rows: list[dict[str, Any]]) -> None:
        from housing_mlops import store
        from housing_mlops.store import RequestLogWriter

        if store.is_log_url(path):
            sink = store.open_sink(path)
            try:
                sink.write([store.row_values(_logged_request(row)) for row in rows])
            finally:
                sink.close()
            return

        writer = RequestLogWriter(path, flush_interval_s=60, max_queue=len(rows) + 1)
        writer.start()
        writer.submit([_logged_request(row) for row in rows])
        writer.close()
        assert writer.written == len(rows), "the request log writer dropped rows"

    return write


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One real PostgreSQL server for the session (``helpers.PostgresServer``): skipped
    without initdb/pg_ctl, failed instead in CI. ``postgres.create_database()`` gives a
    fresh database; ``postgres.down()`` stops it for an outage."""
    pytest.importorskip("psycopg", reason="psycopg (a dependency) is not installed")
    from helpers import PostgresServer

    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A ``postgresql://`` URL (with a password) of a fresh, empty database."""
    return str(postgres.create_database())


@pytest.fixture(scope="session")
def spark_session() -> Any:
    """One local[2] SparkSession for the whole test session (a JVM start costs seconds).

    Skipped with the reason when pyspark or Java is missing; under
    HOUSING_REQUIRE_SPARK=1 (CI, `.ci/run`) that is a failure instead."""
    import sys

    from helpers import spark_missing

    reason = spark_missing()
    if reason is not None:
        if os.environ.get("HOUSING_REQUIRE_SPARK") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("housing-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        # Small splits, so a test file spans several partitions (row ids across them).
        .config("spark.sql.files.maxPartitionBytes", "65536")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """OpenMP pools spin on a busy 2-core machine: fit and predict on one thread (a module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
