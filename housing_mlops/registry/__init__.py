"""The one module that talks to MLflow: tracking runs, the model registry and artifacts.

Embedded default: a SQLite backend store (``sqlite:///mlruns/mlflow.db``, relative to the
working directory) and a local artifact folder (``mlruns/artifacts``), so nothing needs a
server. ``mlflow.tracking_uri`` in the config or ``MLFLOW_TRACKING_URI`` points at a real
tracking server instead (``http(s)://...``); an unreachable server is a ``ModelError``.

Models are addressed by registry *aliases* (``champion``, ``previous-champion``), never
by the deprecated stages.

The package: ``registry.connection`` (tracking URI, client, errors), ``registry.read``
(versions, aliases, safe model loading, reference profiles) and ``registry.write`` (runs,
registration, tags, aliases). Callers use the names re-exported here. No other module of
housing_mlops imports ``mlflow``.
"""

from housing_mlops.registry.connection import (
    configure,
    store_exists,
    tracking_uri,
)
from housing_mlops.registry.read import (
    CHALLENGER,
    CHAMPION,
    MODEL_ARTIFACT,
    MODEL_FILE,
    PREVIOUS_CHAMPION,
    PROFILE_ARTIFACT,
    SHA_TAG,
    ModelRef,
    get_alias_version,
    list_versions,
    load_model,
    load_model_bytes,
    load_reference_profile,
    read_model_bytes,
    resolve,
)
from housing_mlops.registry.write import (
    delete_alias,
    log_candidate,
    log_evaluation,
    set_alias,
    set_version_tags,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_ARTIFACT",
    "MODEL_FILE",
    "PREVIOUS_CHAMPION",
    "PROFILE_ARTIFACT",
    "SHA_TAG",
    "ModelRef",
    "configure",
    "delete_alias",
    "get_alias_version",
    "list_versions",
    "load_model",
    "load_model_bytes",
    "load_reference_profile",
    "log_candidate",
    "log_evaluation",
    "read_model_bytes",
    "resolve",
    "set_alias",
    "set_version_tags",
    "store_exists",
    "tracking_uri",
]
