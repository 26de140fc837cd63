"""Reading the registry: versions and aliases as ``ModelRef``, safe model loading, profiles.

Safe loading: models are saved by ``mlflow.sklearn`` in the skops format. ``load_model``
does not use MLflow's loader, which trusts the type list written into the artifact's own
MLmodel file; it verifies the sha256 of ``model.skops`` recorded as the version tag
``model_sha256`` at registration, then calls ``skops.io.load`` with the reviewed
``models.SKOPS_TRUSTED_TYPES``. A changed file or an untrusted type is a ``ModelError``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import ModelError
from housing_mlops.files import file_sha256
from housing_mlops.registry.connection import (
    configure,
    mlflow_client,
    mlflow_errors,
    store_exists,
    tracking_uri,
)
from housing_mlops.timestamps import iso_utc_ms

if TYPE_CHECKING:  # pragma: no cover
    from housing_mlops.config import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
MODEL_ARTIFACT = "model"
MODEL_FILE = "model.skops"
PROFILE_ARTIFACT = "reference/profile.json"
SHA_TAG = "model_sha256"


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


def to_ref(client: Any, mv: Any, aliases: list[str], alias: str | None = None) -> ModelRef:
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
        created_at=iso_utc_ms(mv.creation_timestamp),
        aliases=tuple(sorted(aliases)),
    )


def model_exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _no_store_hint(settings: Settings) -> str:
    return (
        f"there is no MLflow store at {tracking_uri(settings)} yet: start with "
        "`housing train`, or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
    )


def _alias_advice(alias: str, aliases: dict[str, list[str]]) -> str:
    """What sets ``alias``: `housing promote` moves champion, challenger and
    previous-champion only; any other name (`predict --alias bogus`) was told to run
    `housing promote`, which never sets it."""
    if alias == CHAMPION:
        return "run `housing promote` first"
    if alias == CHALLENGER:
        return "run `housing promote --to challenger` first"
    if alias == PREVIOUS_CHAMPION:
        return "it is set when `housing promote` replaces a champion"
    used = sorted({a for names in aliases.values() for a in names})
    return (
        f"`housing promote` sets only {CHAMPION}, {CHALLENGER} and {PREVIOUS_CHAMPION} "
        f"(aliases in use: {', '.join(used) or 'none'}): name one of them, or a version "
        "with --model-version N"
    )


def resolve(settings: Settings, version: int | None = None, alias: str = CHAMPION) -> ModelRef:
    """The registered version ``version``, or else the one carrying ``alias``.

    Readers never create a store: a local SQLite store that does not exist (nothing
    trained, or a mistyped tracking URI) has no version, and is left uncreated."""
    name = settings.mlflow.registered_model_name
    if not store_exists(settings):
        if version is not None:
            what = f"model '{name}' has no version {version} (registered versions: none; "
        else:
            what = f"no model has the alias '{alias}' yet: run `housing promote` first ("
        raise ModelError(f"{what}{_no_store_hint(settings)})")
    client = mlflow_client(settings)
    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"looking up model '{name}'"):
        aliases = _aliases_by_version(client, name)
        if version is not None:
            try:
                mv = client.get_model_version(name, str(version))
            except MlflowException:
                known = ", ".join(v.version for v in list_versions(settings)) or "none"
                raise ModelError(
                    f"model '{name}' has no version {version} (registered versions: {known})"
                ) from None
            return to_ref(client, mv, aliases.get(str(mv.version), []))
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            hint = ""
            if not model_exists(client, name):
                hint = f" (no version of '{name}' is registered either: start with `housing train`)"
            raise ModelError(
                f"no model has the alias '{alias}' yet: {_alias_advice(alias, aliases)}{hint}"
            ) from None
        return to_ref(client, mv, aliases.get(str(mv.version), []), alias=alias)


def list_versions(settings: Settings) -> list[ModelRef]:
    """Every registered version of the configured model, oldest first (none, without
    creating it, when the local store does not exist)."""
    name = settings.mlflow.registered_model_name
    if not store_exists(settings):
        return []
    client = mlflow_client(settings)
    with mlflow_errors(f"listing versions of model '{name}'"):
        if not model_exists(client, name):
            return []
        aliases = _aliases_by_version(client, name)
        versions = client.search_model_versions(f"name='{name}'")
        refs = [to_ref(client, mv, aliases.get(str(mv.version), [])) for mv in versions]
    return sorted(refs, key=lambda r: int(r.version))


def get_alias_version(settings: Settings, alias: str) -> str | None:
    """The version carrying ``alias``, or None (also when the local store does not exist)."""
    name = settings.mlflow.registered_model_name
    if not store_exists(settings):
        return None
    client = mlflow_client(settings)
    with mlflow_errors(f"reading alias '{alias}' of model '{name}'"):
        for version, aliases in _aliases_by_version(client, name).items():
            if alias in aliases:
                return version
    return None


def _download_model(settings: Settings, ref: ModelRef, dst: Path) -> Path:
    """Download the version's model folder into ``dst``; return the path of model.skops."""
    import mlflow
    import yaml

    with mlflow_errors(f"downloading model '{ref.name}' version {ref.version}"):
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
    return load_model_bytes(ref, read_model_bytes(settings, ref), trusted_types)


def read_model_bytes(settings: Settings, ref: ModelRef) -> bytes:
    """The bytes of a version's model.skops, checked against the sha256 recorded at
    registration. For engines that ship the model to other processes (Spark executors),
    which then load it with ``load_model_bytes`` (the check runs again there)."""
    configure(settings)
    expected = _expected_sha256(ref)
    with tempfile.TemporaryDirectory(prefix="housing-model-") as tmp:
        path = _download_model(settings, ref, Path(tmp))
        if not path.is_file():
            raise ModelError(f"model '{ref.name}' version {ref.version}: {path.name} is missing")
        actual = file_sha256(path)
        _check_sha256(ref, actual, expected)
        return path.read_bytes()


def _expected_sha256(ref: ModelRef) -> str:
    expected = ref.tags.get(SHA_TAG)
    if not expected:
        raise ModelError(
            f"refusing to load model '{ref.name}' version {ref.version}: no {SHA_TAG} tag was "
            "recorded at registration (retrain with `housing train`)"
        )
    return expected


def _check_sha256(ref: ModelRef, actual: str, expected: str) -> None:
    if actual != expected:
        raise ModelError(
            f"refusing to load model '{ref.name}' version {ref.version}: the artifact's "
            f"sha256 {actual[:12]}... differs from {expected[:12]}... recorded at "
            "registration (the file was changed)"
        )


def load_model_bytes(ref: ModelRef, blob: bytes, trusted_types: list[str] | None = None) -> Any:
    """A Pipeline from model.skops bytes: sha256 against the version's tag, then skops with
    the reviewed allow-list (never pickle). Needs no tracking server: runs on executors."""
    import hashlib

    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    if trusted_types is None:
        from housing_mlops.models import SKOPS_TRUSTED_TYPES

        trusted_types = list(SKOPS_TRUSTED_TYPES)
    _check_sha256(ref, hashlib.sha256(blob).hexdigest(), _expected_sha256(ref))
    try:
        return skops.io.loads(blob, trusted=trusted_types)
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
    client = mlflow_client(settings)
    with tempfile.TemporaryDirectory(prefix="housing-profile-") as tmp:
        with mlflow_errors(f"reading the reference profile of version {ref.version}"):
            listed = {a.path for a in client.list_artifacts(ref.run_id, "reference")}
            if PROFILE_ARTIFACT not in listed:
                raise ModelError(
                    f"model '{ref.name}' version {ref.version} has no {PROFILE_ARTIFACT} "
                    "artifact (retrain with `housing train`)"
                )
            local = client.download_artifacts(ref.run_id, PROFILE_ARTIFACT, tmp)
        return json.loads(Path(local).read_text())
