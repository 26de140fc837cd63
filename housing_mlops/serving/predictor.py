"""The model behind ``/predict``: a registered version loaded for the service.

``inference.loaded_model`` does the loading (the fast path checked against the pipeline,
compiled trees); this module adds what only the service needs, the request models that
validate ``/predict`` bodies against the version's reference profile
(``serving.schemas``), and reads the version from the registry with the ``serve:``
settings.
"""

from __future__ import annotations

from typing import Any

from housing_mlops.inference.loaded_model import (
    LoadedModel,
    ModelMeta,
    build_loaded_model,
    reference_profile_or_none,
)
from housing_mlops.serving.schemas import build_request_models


def build_served_model(
    pipeline: Any,
    meta: ModelMeta,
    profile: dict[str, Any] | None,
    max_batch_size: int = 1000,
    threads: int = 1,
    compiled_trees: str = "never",
    compile_cache: str | None = None,
    model_key: str | None = None,
) -> LoadedModel:
    """``inference.loaded_model.build_loaded_model`` with the service's request models
    (batches of at most ``max_batch_size`` houses)."""
    return build_loaded_model(
        pipeline,
        meta,
        profile,
        threads=threads,
        compiled_trees=compiled_trees,
        compile_cache=compile_cache,
        model_key=model_key,
        requests=build_request_models(profile, max_batch_size),
    )


def load_from_registry(
    settings: Any, version: int | str | None = None, alias: str = "champion"
) -> tuple[LoadedModel, dict[str, Any] | None]:
    """Resolve ``@alias`` (or ``version``), load it safely and wrap it for serving.

    Returns the loaded model and the version's reference profile (None when the registry
    has none); the caller hands the profile to the store's drift cache.
    """
    from housing_mlops import registry

    ref = registry.resolve(
        settings, version=int(version) if version is not None else None, alias=alias
    )
    pipeline = registry.load_model(settings, ref)
    profile = reference_profile_or_none(settings, ref)
    meta = ModelMeta.from_ref(ref)
    aliases = getattr(ref, "aliases", None) or ()
    if alias != registry.CHAMPION and alias in aliases:
        # The challenger, resolved by version (hot reload): say so, whatever else it carries.
        meta = ModelMeta(**{**meta.__dict__, "alias": alias})
    elif meta.alias is None and registry.CHAMPION in aliases:
        # Resolved by version (hot reload, --model-version) but it is the champion.
        meta = ModelMeta(**{**meta.__dict__, "alias": registry.CHAMPION})
    model = build_served_model(
        pipeline,
        meta,
        profile,
        max_batch_size=settings.serve.max_batch_size,
        threads=settings.serve.predictor_threads,
        compiled_trees=settings.serve.compiled_trees,
        compile_cache=settings.predict.compile_cache or None,
        model_key=(getattr(ref, "tags", None) or {}).get(registry.SHA_TAG),
    )
    return model, profile
