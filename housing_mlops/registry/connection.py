"""The MLflow connection: tracking URI, client, quiet settings and error translation.

``configure`` points MLflow at the configured store and experiment (failing in seconds
when a tracking server does not answer: ``download.unreachable_reason``); every other
registry call goes through ``client`` and wraps MLflow calls in ``mlflow_errors``, which
turns any failure into a ``ModelError`` saying what was being done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops import download
from housing_mlops.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from housing_mlops.config import Settings

# (tracking uri, experiment name) -> experiment id, so repeated calls skip the lookup.
_experiments: dict[tuple[str, str], str] = {}


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def tracking_uri(settings: Settings) -> str:
    """The tracking URI with a relative SQLite path made absolute (against the cwd)."""
    uri = settings.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        db_path = Path(uri[len(prefix) :])
        if not db_path.is_absolute():
            db_path = Path.cwd() / db_path
        return prefix + str(db_path.resolve())
    return uri


def store_exists(settings: Settings) -> bool:
    """False when the tracking store is a local SQLite file that does not exist yet.

    Such a store holds no model; readers check this first so that reading never makes
    MLflow create (and migrate) an empty database. Any other store counts as existing.
    """
    uri = tracking_uri(settings)
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or Path(uri[len(prefix) :]).is_file()


def _artifact_location(settings: Settings, uri: str) -> str | None:
    location = settings.mlflow.artifact_location
    if "://" in location:
        return location
    if _is_remote(uri):
        # A local folder means nothing to a remote server: let it use its own root.
        return None
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # not the store's fault: name the key that holds this folder
        raise ModelError(
            f"cannot create the artifact folder {path} ({exc.strerror or exc}): fix "
            "mlflow.artifact_location / HOUSING_MLFLOW_ARTIFACT_LOCATION"
        ) from None
    return path.resolve().as_uri()


# MLflow's HTTP client settings for a tracking server, applied only where the user has not
# set the variable. MLflow's own defaults (120 s per request, 7 retries with exponential
# backoff) keep a command waiting for many minutes when a server's /health answers but its
# API hangs (a stuck database, a proxy that never answers). Here each request waits at most
# 5 s for the connection or for the next bytes of the answer (not for a whole upload) and is
# tried twice: about 11 s before exit 5. Set the variables yourself for a slow server.
HTTP_CLIENT_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def _quiet_mlflow() -> None:
    # No run links, emoji or registration chatter on stdout; synchronous logging so a
    # finished command has really written everything.
    for name, value in (
        ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
        ("MLFLOW_PRINT_MODEL_URLS_ON_CREATION", "false"),
        ("MLFLOW_ENABLE_ASYNC_LOGGING", "false"),
        *HTTP_CLIENT_DEFAULTS.items(),
        ("GIT_PYTHON_REFRESH", "quiet"),
        # No usage telemetry to the internet (tests and air-gapped hosts).
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ):
        os.environ.setdefault(name, value)
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _check_reachable(uri: str) -> None:
    """Fail fast (seconds, not minutes of retries) when a tracking server is down."""
    reason = download.unreachable_reason(uri.rstrip("/") + "/health", timeout=5.0)
    if reason is not None:  # any HTTP answer, even an error status, means reachable
        raise ModelError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}): start it, or fix "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


@contextlib.contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """Turn MLflow/store failures into ModelError with what we were doing."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, requests, sqlalchemy...
        from mlflow.exceptions import MlflowException

        if _no_answer(exc):
            import mlflow

            uri = mlflow.get_tracking_uri()
            timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
            raise ModelError(
                f"cannot reach the MLflow tracking server at {uri}: {action} got no answer "
                f"(MLFLOW_HTTP_REQUEST_TIMEOUT={timeout}s, MLFLOW_HTTP_REQUEST_MAX_RETRIES="
                f"{retries}): check the server and its backend store, or fix "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI"
            ) from exc
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        first_line = (message or type(exc).__name__).strip().splitlines()[0][:300]
        raise ModelError(f"{action} failed: {first_line}") from exc


def _no_answer(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a timeout or lost connection to the server."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, requests.exceptions.SSLError):
            return False  # it answered, with a certificate we refuse: not "no answer"
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    _quiet_mlflow()
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way, no permission, a read-only disk
            raise ModelError(
                f"cannot create the folder {folder} of the MLflow store {uri} "
                f"({exc.strerror or exc}): fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
            ) from None
    if _is_remote(uri):
        _check_reachable(uri)
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which load_config reads as an
    # override: a later config in this process would silently use this store. Undo that.
    exported = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for name, value in exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    key = (uri, settings.mlflow.experiment_name)
    if key in _experiments:
        return _experiments[key]
    with mlflow_errors(f"opening the MLflow store {uri}"):
        client = mlflow.MlflowClient(uri, uri)
        experiment = client.get_experiment_by_name(settings.mlflow.experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(
                settings.mlflow.experiment_name,
                artifact_location=_artifact_location(settings, uri),
            )
        else:
            experiment_id = experiment.experiment_id
    _experiments[key] = experiment_id
    return experiment_id


def mlflow_client(settings: Settings) -> Any:
    """An MlflowClient on the configured store (configuring MLflow first)."""
    import mlflow

    configure(settings)
    uri = tracking_uri(settings)
    return mlflow.MlflowClient(uri, uri)
