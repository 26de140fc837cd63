"""The one module that talks to MLflow: tracking runs, the model registry and artifacts.

Embedded default: a SQLite backend store (``sqlite:///mlruns/mlflow.db``, relative to the
working directory) and a local artifact folder (``mlruns/artifacts``), so nothing needs a
server. ``mlflow.tracking_uri`` in the config or ``MLFLOW_TRACKING_URI`` points at a real
tracking server instead (``http(s)://...``); an unreachable server is a ``ModelError``.

Models are addressed by registry *aliases* (``champion``, ``previous-champion``), never
by the deprecated stages.

Safe loading: models are saved by ``mlflow.sklearn`` in the skops format. ``load_model``
does not use MLflow's loader, which trusts the type list written into the artifact's own
MLmodel file; it verifies the sha256 of ``model.skops`` recorded as the version tag
``model_sha256`` at registration, then calls ``skops.io.load`` with the reviewed
``models.SKOPS_TRUSTED_TYPES``. A changed file or an untrusted type is a ``ModelError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from housing_mlops.config import Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
MODEL_ARTIFACT = "model"
MODEL_FILE = "model.skops"
PROFILE_ARTIFACT = "reference/profile.json"
SHA_TAG = "model_sha256"
# MLflow's dataset digest column holds 36 characters; the full hash goes into a tag.
_DIGEST_LEN = 32

# (tracking uri, experiment name) -> experiment id, so repeated calls skip the lookup.
_experiments: dict[tuple[str, str], str] = {}


# ------------------------------------------------------------------------- references
@dataclass(frozen=True)
class ModelRef:
    """One registered model version, with what the CLI, server and report need to show."""

    name: str
    version: str
    run_id: str
    alias: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None
    created_at: str | None = None  # ISO-8601 UTC
    aliases: tuple[str, ...] = ()  # every alias on this version (``alias`` is one of them)

    @property
    def candidate(self) -> str | None:
        return self.tags.get("candidate")


# ---------------------------------------------------------------------- configuration
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
    path.mkdir(parents=True, exist_ok=True)
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
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - configured http(s) URI
            return
    except urllib.error.HTTPError:
        return  # something answered: reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}): start it, or fix "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


@contextlib.contextmanager
def _mlflow_errors(action: str) -> Iterator[None]:
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
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
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
    with _mlflow_errors(f"opening the MLflow store {uri}"):
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


def _client(settings: Settings) -> Any:
    import mlflow

    configure(settings)
    uri = tracking_uri(settings)
    return mlflow.MlflowClient(uri, uri)


# ------------------------------------------------------------------------- read side
def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _aliases_by_version(client: Any, name: str) -> dict[str, list[str]]:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def _to_ref(client: Any, mv: Any, aliases: list[str], alias: str | None = None) -> ModelRef:
    run_tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        run_tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        metrics = dict(run.data.metrics)
    tags = {**run_tags, **dict(mv.tags or {})}
    if alias is None and aliases:
        alias = CHAMPION if CHAMPION in aliases else sorted(aliases)[0]
    return ModelRef(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        alias=alias,
        source=mv.source or "",
        tags=tags,
        metrics=metrics,
        data_version=run_tags.get("data_version"),
        created_at=_iso(mv.creation_timestamp),
        aliases=tuple(sorted(aliases)),
    )


def _model_exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def resolve(settings: Settings, version: int | None = None, alias: str = CHAMPION) -> ModelRef:
    """The registered version ``version``, or else the one carrying ``alias``."""
    name = settings.mlflow.registered_model_name
    client = _client(settings)
    from mlflow.exceptions import MlflowException

    with _mlflow_errors(f"looking up model '{name}'"):
        aliases = _aliases_by_version(client, name)
        if version is not None:
            try:
                mv = client.get_model_version(name, str(version))
            except MlflowException:
                known = ", ".join(v.version for v in list_versions(settings)) or "none"
                raise ModelError(
                    f"model '{name}' has no version {version} (registered versions: {known})"
                ) from None
            return _to_ref(client, mv, aliases.get(str(mv.version), []))
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            hint = ""
            if not _model_exists(client, name):
                hint = f" (no version of '{name}' is registered either: start with `housing train`)"
            raise ModelError(
                f"no model has the alias '{alias}' yet: run `housing promote` first{hint}"
            ) from None
        return _to_ref(client, mv, aliases.get(str(mv.version), []), alias=alias)


def list_versions(settings: Settings) -> list[ModelRef]:
    """Every registered version of the configured model, oldest first."""
    name = settings.mlflow.registered_model_name
    client = _client(settings)
    with _mlflow_errors(f"listing versions of model '{name}'"):
        if not _model_exists(client, name):
            return []
        aliases = _aliases_by_version(client, name)
        versions = client.search_model_versions(f"name='{name}'")
        refs = [_to_ref(client, mv, aliases.get(str(mv.version), [])) for mv in versions]
    return sorted(refs, key=lambda r: int(r.version))


def get_alias_version(settings: Settings, alias: str) -> str | None:
    """The version carrying ``alias``, or None."""
    name = settings.mlflow.registered_model_name
    client = _client(settings)
    with _mlflow_errors(f"reading alias '{alias}' of model '{name}'"):
        for version, aliases in _aliases_by_version(client, name).items():
            if alias in aliases:
                return version
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_model(settings: Settings, ref: ModelRef, dst: Path) -> Path:
    """Download the version's model folder into ``dst``; return the path of model.skops."""
    import mlflow
    import yaml

    with _mlflow_errors(f"downloading model '{ref.name}' version {ref.version}"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ref.name}/{ref.version}",
            dst_path=str(dst),
            tracking_uri=tracking_uri(settings),
        )
    mlmodel = Path(local) / "MLmodel"
    if not mlmodel.is_file():
        raise ModelError(f"model '{ref.name}' version {ref.version} has no MLmodel file")
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("sklearn", {})
    if flavor.get("serialization_format") != "skops":
        raise ModelError(
            f"refusing to load model '{ref.name}' version {ref.version}: serialization format "
            f"{flavor.get('serialization_format')!r} is not skops"
        )
    return Path(local) / str(flavor.get("pickled_model", MODEL_FILE))


def load_model(settings: Settings, ref: ModelRef, trusted_types: list[str] | None = None) -> Any:
    """Load a version's scikit-learn Pipeline safely (checksum, then skops allow-list)."""
    configure(settings)
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    if trusted_types is None:
        from housing_mlops.models import SKOPS_TRUSTED_TYPES

        trusted_types = list(SKOPS_TRUSTED_TYPES)
    expected = ref.tags.get(SHA_TAG)
    if not expected:
        raise ModelError(
            f"refusing to load model '{ref.name}' version {ref.version}: no {SHA_TAG} tag was "
            "recorded at registration (retrain with `housing train`)"
        )
    with tempfile.TemporaryDirectory(prefix="housing-model-") as tmp:
        path = _download_model(settings, ref, Path(tmp))
        if not path.is_file():
            raise ModelError(f"model '{ref.name}' version {ref.version}: {path.name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"refusing to load model '{ref.name}' version {ref.version}: the artifact's "
                f"sha256 {actual[:12]}... differs from {expected[:12]}... recorded at "
                "registration (the file was changed)"
            )
        try:
            return skops.io.load(path, trusted=trusted_types)
        except UntrustedTypesFoundException as exc:
            raise ModelError(
                f"refusing to load model '{ref.name}' version {ref.version}: it contains "
                f"types outside the reviewed allow-list: {exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - corrupt or incompatible file
            raise ModelError(
                f"cannot load model '{ref.name}' version {ref.version}: {type(exc).__name__}: {exc}"
            ) from exc


def load_reference_profile(settings: Settings, ref: ModelRef) -> dict[str, Any]:
    """The reference profile stored with the version's run at training time."""
    client = _client(settings)
    with tempfile.TemporaryDirectory(prefix="housing-profile-") as tmp:
        with _mlflow_errors(f"reading the reference profile of version {ref.version}"):
            listed = {a.path for a in client.list_artifacts(ref.run_id, "reference")}
            if PROFILE_ARTIFACT not in listed:
                raise ModelError(
                    f"model '{ref.name}' version {ref.version} has no {PROFILE_ARTIFACT} "
                    "artifact (retrain with `housing train`)"
                )
            local = client.download_artifacts(ref.run_id, PROFILE_ARTIFACT, tmp)
        return json.loads(Path(local).read_text())


# ------------------------------------------------------------------------ write side
def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in ("mlflow", "scikit-learn", "skops", "lightgbm", "numpy", "pandas", "scipy"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    from housing_mlops import __version__

    # The pipeline's feature transformer lives in this package.
    pins.append(f"housing-mlops=={__version__}")
    return pins


def _dataset(frame: pd.DataFrame, source: Path, name: str, content_hash: str) -> Any:
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
        return from_pandas(
            frame,
            source=source.resolve().as_uri(),
            name=name,
            digest=content_hash[:_DIGEST_LEN],
            targets="MedHouseVal" if "MedHouseVal" in frame.columns else None,
        )


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    if _model_exists(client, name):
        return
    try:
        client.create_registered_model(name, description="California Housing price model")
    except MlflowException as exc:  # created concurrently
        if "already exists" not in str(exc).lower():
            raise


def log_candidate(
    settings: Settings,
    *,
    run_name: str,
    model: Any,
    X_train: pd.DataFrame,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    run_tags: Mapping[str, str],
    version_tags: Mapping[str, str],
    train_frame: pd.DataFrame,
    train_source: Path,
    train_hash: str,
    profile: Mapping[str, Any],
) -> ModelRef:
    """One run for a fitted candidate: params, metrics, tags, lineage, model, profile;
    then a new registered version tagged with the model file's sha256."""
    experiment_id = configure(settings)
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from housing_mlops.models import SKOPS_TRUSTED_TYPES

    client = _client(settings)
    name = settings.mlflow.registered_model_name
    with _mlflow_errors(f"logging run '{run_name}'"):
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            mlflow.log_params({k: _param_value(v) for k, v in params.items()})
            mlflow.log_metrics(dict(metrics))
            mlflow.set_tags(dict(run_tags))
            mlflow.log_input(
                _dataset(train_frame, train_source, "california-housing-train", train_hash),
                context="training",
            )
            mlflow.log_dict(dict(profile), PROFILE_ARTIFACT)
            example = X_train.head(5)
            signature = infer_signature(example, model.predict(example))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = mlflow.sklearn.log_model(
                    model,
                    name=MODEL_ARTIFACT,
                    signature=signature,
                    input_example=example,
                    serialization_format="skops",
                    skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
                    pip_requirements=_pip_requirements(),
                )
            run_id = run.info.run_id
        with tempfile.TemporaryDirectory(prefix="housing-sha-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{info.artifact_path.rstrip('/')}/{MODEL_FILE}", dst_path=tmp
            )
            sha = sha256_file(Path(local))
        _ensure_registered_model(client, name)
        mv = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags={**dict(version_tags), SHA_TAG: sha},
            model_id=info.model_id,
        )
        return _to_ref(client, mv, [])


def _param_value(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def log_evaluation(
    settings: Settings,
    ref: ModelRef,
    *,
    metrics: Mapping[str, float],
    run_tags: Mapping[str, str],
    version_tags: Mapping[str, str],
    artifacts: Mapping[str, list[Path]],
    documents: Mapping[str, Any],
    test_frame: pd.DataFrame,
    test_source: Path,
    test_hash: str,
) -> None:
    """Add holdout results to the version's training run and tag the version."""
    configure(settings)
    import mlflow

    client = _client(settings)
    with _mlflow_errors(f"logging the evaluation of version {ref.version}"):
        with mlflow.start_run(run_id=ref.run_id):
            mlflow.log_metrics(dict(metrics))
            mlflow.set_tags(dict(run_tags))
            mlflow.log_input(
                _dataset(test_frame, test_source, "california-housing-test", test_hash),
                context="evaluation",
            )
            for artifact_path, files in artifacts.items():
                for local in files:
                    mlflow.log_artifact(str(local), artifact_path=artifact_path)
            for artifact_file, payload in documents.items():
                mlflow.log_dict(payload, artifact_file)
        for key, value in version_tags.items():
            client.set_model_version_tag(ref.name, ref.version, key, str(value))


def set_version_tags(settings: Settings, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a registered version (promotion history, evaluation flags)."""
    client = _client(settings)
    name = settings.mlflow.registered_model_name
    with _mlflow_errors(f"tagging version {version}"):
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))


def set_alias(settings: Settings, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
    client = _client(settings)
    name = settings.mlflow.registered_model_name
    with _mlflow_errors(f"setting alias '{alias}' on version {version}"):
        client.set_registered_model_alias(name, alias, str(version))


def delete_alias(settings: Settings, alias: str) -> None:
    """Remove ``alias`` if it exists."""
    client = _client(settings)
    name = settings.mlflow.registered_model_name
    from mlflow.exceptions import MlflowException

    with _mlflow_errors(f"deleting alias '{alias}'"):
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException:
            pass


def now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")
