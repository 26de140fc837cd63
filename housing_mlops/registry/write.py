"""Writing to the registry: a run per trained candidate, evaluation results, tags, aliases."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.files import file_sha256
from housing_mlops.registry.connection import configure, mlflow_client, mlflow_errors
from housing_mlops.registry.read import (
    MODEL_ARTIFACT,
    MODEL_FILE,
    PROFILE_ARTIFACT,
    SHA_TAG,
    ModelRef,
    model_exists,
    to_ref,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from housing_mlops.config import Settings

# MLflow's dataset digest column holds 36 characters; the full hash goes into a tag.
_DIGEST_LEN = 32


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

    if model_exists(client, name):
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

    client = mlflow_client(settings)
    name = settings.mlflow.registered_model_name
    with mlflow_errors(f"logging run '{run_name}'"):
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
            sha = file_sha256(Path(local))
        _ensure_registered_model(client, name)
        mv = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags={**dict(version_tags), SHA_TAG: sha},
            model_id=info.model_id,
        )
        return to_ref(client, mv, [])


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

    client = mlflow_client(settings)
    with mlflow_errors(f"logging the evaluation of version {ref.version}"):
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
    client = mlflow_client(settings)
    name = settings.mlflow.registered_model_name
    with mlflow_errors(f"tagging version {version}"):
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))


def set_alias(settings: Settings, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
    client = mlflow_client(settings)
    name = settings.mlflow.registered_model_name
    with mlflow_errors(f"setting alias '{alias}' on version {version}"):
        client.set_registered_model_alias(name, alias, str(version))


def delete_alias(settings: Settings, alias: str) -> None:
    """Remove ``alias`` if it exists."""
    client = mlflow_client(settings)
    name = settings.mlflow.registered_model_name
    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"deleting alias '{alias}'"):
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException:
            pass
