"""The prediction service as an ASGI app: ``create_app(settings)``.

Endpoints: ``POST /predict`` (one house, or ``{"instances": [...]}``), ``GET /health``,
``GET /ready``, ``GET /model/info``, ``GET /metrics``, ``POST /model/reload``, the OpenAPI
schema at ``/openapi.json`` and its docs at ``/docs`` and ``/redoc`` (their JavaScript, CSS
and icon served by the service itself from the fastapi-offline package: no CDN needed).

Status codes of ``/predict`` (bad input never gives a 500):

- 200 the prediction(s); 503 no model loaded yet;
- 413 body larger than ``serve.max_body_bytes`` (by ``Content-Length`` or as streamed);
- 415 ``Content-Type`` is not ``application/json``;
- 422 anything else wrong with the body, malformed JSON included: ``detail`` lists every
  bad field with its ``loc`` (path), ``field``, ``msg`` (reason) and ``type``; a batch over
  ``serve.max_batch_size`` names the limit.

``POST /model/reload``: 404 when no token is configured (the variable named by
``serve.reload_token_env`` is unset or empty: the endpoint is off), 401 without a Bearer
token, 403 with a wrong one, 409 when a ``--model-version`` is pinned, 200 with the
result, 500 when loading the new version failed (the old one keeps serving). It follows
the ``champion`` alias and, with ``serve.challenger_mode`` shadow or canary, the
``challenger`` alias too (the result's ``challenger`` part).

``POST /feedback`` (true values for answered requests) is mounted from ``serving.feedback``,
which documents its status codes.

``POST /predict`` is the raw ASGI ``PredictEndpoint`` (``serving.asgi``), not a FastAPI
handler, so FastAPI cannot document it: ``_document_predict`` below adds its operation,
generated (``schemas.predict_openapi``) from the served model's own validating models, so
the documented ranges and batch limit are the enforced ones; it is regenerated when a
reload swaps the model. The other routes are ordinary FastAPI handlers. The service state lives in
``serving.state``, the uvicorn runner in ``serving.server``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.routing import Route

from housing_mlops.inference.loaded_model import LoadedModel
from housing_mlops.serving.asgi import PredictEndpoint, ServingMiddleware
from housing_mlops.serving.auth import check_bearer, json_response
from housing_mlops.serving.daemon_thread import in_daemon_thread
from housing_mlops.serving.feedback import mount_feedback
from housing_mlops.serving.schemas import RequestModels, build_request_models, predict_openapi
from housing_mlops.serving.state import Service

_PREDICT_SUMMARY = "Predict the median house value of one block group or a batch"
# The operation id FastAPI would give a ``predict`` handler on POST /predict.
_PREDICT_OPERATION_ID = "predict_predict_post"


_json = json_response


def create_app(
    settings: Any,
    model: LoadedModel | None = None,
    *,
    model_version: int | None = None,
    loader: Callable[[str | None], LoadedModel] | None = None,
    alias_version: Callable[[], str | None] | None = None,
    wait_for_model: bool = False,
    challenger: LoadedModel | None = None,
    challenger_loader: Callable[[str], LoadedModel] | None = None,
    challenger_alias_version: Callable[[], str | None] | None = None,
) -> ServingMiddleware:
    """The ASGI app serving ``model`` (or the registry's champion, loaded at startup).

    It is the FastAPI app wrapped in ``ServingMiddleware`` (``.app`` is the FastAPI app,
    ``.service`` the ``Service``).

    ``loader(version or None)`` and ``alias_version()`` default to the registry; tests
    pass their own to serve in-memory pipelines. ``model_version`` pins a version (the
    watcher is then off). Without ``model`` the app loads one at startup: in the
    background (``/ready`` says 503 meanwhile), or before serving with ``wait_for_model``.

    The challenger (``serve.challenger_mode`` shadow or canary) likewise: ``challenger``
    preloaded, ``challenger_loader(version)`` and ``challenger_alias_version()``, which
    default to the registry's ``challenger`` alias when ``alias_version`` does too (a test
    passing its own ``alias_version`` and no ``challenger_alias_version`` has none).
    """
    service = Service(
        settings,
        model,
        model_version,
        loader,
        alias_version,
        challenger=challenger,
        challenger_loader=challenger_loader,
        challenger_alias_version=challenger_alias_version,
    )
    predict = PredictEndpoint(service)
    app = _app_with_offline_docs(_service_lifespan(service, wait_for_model))
    # Registration order is the order of the OpenAPI paths and of the router's matching.
    _mount_predict(app, predict)
    _mount_health(app, service)
    _mount_model_info(app, service, settings.serve)
    _mount_admin(app, service, settings.serve)
    mount_feedback(app, settings)
    _document_predict(app, service, settings.serve)  # last: the schema is built from the routes
    # Outermost, so POST /predict also skips FastAPI's own per-request work (telemetry
    # checks, error middleware); everything else passes through to FastAPI.
    return ServingMiddleware(app, predict)


def _service_lifespan(
    service: Service, wait_for_model: bool
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: the service starts (and loads a model) before serving, and
    stops after."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.startup(wait_for_model)
        try:
            yield
        finally:
            await service.shutdown()

    return lifespan


def _app_with_offline_docs(
    lifespan: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]],
) -> FastAPI:
    """The FastAPI app, with /docs and /redoc served without internet."""
    from housing_mlops import __version__

    # FastAPI's /docs and /redoc pages load their JavaScript from a CDN; these load the
    # packaged copies (under /static-offline-docs), so the docs work without internet.
    return FastAPIOffline(
        title="housing-mlops prediction service",
        version=__version__,
        description="Median house value of a California block group (in $100k and in US "
        "dollars) from the 8 raw census features. The ranges in the schema of POST /predict "
        "are those of the served model version (also in GET /model/info).",
        lifespan=lifespan,
    )


def _mount_predict(app: FastAPI, predict: PredictEndpoint) -> None:
    """Add ``POST /predict``: the raw ASGI endpoint, documented by ``_document_predict``."""
    # A raw ASGI route: FastAPI routes to it (405 for other methods, the trailing-slash
    # redirect) but cannot document it; `_document_predict` does. ServingMiddleware calls
    # the same endpoint for POST /predict before FastAPI's own layers.
    app.router.routes.append(Route("/predict", predict, methods=["POST"], include_in_schema=False))


def _mount_health(app: FastAPI, service: Service) -> None:
    """Add ``GET /health`` (the process is alive) and ``GET /ready`` (a model is loaded)."""
    holder = service.holder
    writer = service.writer

    @app.get("/health", summary="The process is alive")
    async def health() -> Response:
        return _json(200, {"status": "ok"})

    @app.get(
        "/ready",
        summary="200 once a model is loaded, else 503; says whether the request log is degraded",
        responses={503: {"description": "no model loaded yet"}},
    )
    async def ready() -> Response:
        # A request log whose database is unreachable does not make the replica unready:
        # it keeps answering and spools the rows ("request_log": "degraded").
        log_state = "degraded" if writer.degraded else "ok"
        model = holder.model
        if model is None:
            return _json(
                503,
                {
                    "status": "loading",
                    "last_reload_error": holder.last_reload_error,
                    "request_log": log_state,
                },
            )
        return _json(
            200,
            {"status": "ready", "model_version": model.meta.version, "request_log": log_state},
        )


def _mount_model_info(app: FastAPI, service: Service, serve_cfg: Any) -> None:
    """Add ``GET /model/info``: the champion and the challenger, with how they are served."""
    holder = service.holder

    @app.get(
        "/model/info",
        summary="The served model, its metrics and its input schema",
        responses={503: {"description": "no model loaded yet"}},
    )
    async def model_info() -> Response:
        model = holder.model
        if model is None:
            return _json(
                503,
                {"detail": "no model loaded yet", "last_reload_error": holder.last_reload_error},
            )
        return _json(200, _champion_info(model, service, serve_cfg))


def _champion_info(model: LoadedModel, service: Service, serve_cfg: Any) -> dict[str, Any]:
    """The body of /model/info: the served model's own info, how the service serves it
    (reloads, limits, request log, micro-batching), then the challenger's part."""
    holder = service.holder
    writer = service.writer
    info = model.info()
    info.update(
        {
            "pinned_version": service.pinned_version,
            "reload_interval_s": serve_cfg.reload_interval_s
            if service.pinned_version is None
            else 0,
            "last_reload_at": holder.last_reload_at,
            "last_reload_error": holder.last_reload_error,
            "input_schema": model.requests.input_schema(),
            "max_body_bytes": serve_cfg.max_body_bytes,
            "instance": service.instance,
            "request_log": {
                "location": service.log_display,
                "state": "degraded" if writer.degraded else "ok",
                "queued_rows": writer.depth,
                "spooled_rows": writer.spooled,
            },
            "microbatch": {
                "window_ms": serve_cfg.microbatch_window_ms,
                "max_rows": serve_cfg.microbatch_max_rows,
                "inline_rows": serve_cfg.microbatch_inline_rows,
                "predictor_threads": serve_cfg.predictor_threads,
                "batches": service.batcher.batches,
                "rows": service.batcher.rows,
                "off_loop_batches": service.batcher.off_loop_batches,
            },
            "role": "champion",
            **_challenger_info(service, serve_cfg),
        }
    )
    return info


def _challenger_info(service: Service, serve_cfg: Any) -> dict[str, Any]:
    """The challenger's part of /model/info: the mode in effect and why, the model."""
    challenger = service.challenger.model
    part: dict[str, Any] | None = None
    if challenger is not None:
        part = challenger.info()
        part["role"] = "challenger"
    shadow = service.shadow
    return {
        "challenger_mode": service.mode,
        "challenger_mode_configured": service.configured_mode,
        "challenger_mode_reason": service.mode_reason(),
        "challenger": part,
        "challenger_last_reload_error": service.challenger.last_reload_error,
        "challenger_last_reload_at": service.challenger.last_reload_at,
        "canary": {
            "share": service.canary_share,
            "key_header": serve_cfg.canary_key_header,
        },
        "shadow": {
            "queue_size": serve_cfg.shadow_queue_size,
            "queued_rows": shadow.depth,
            "scored_rows": shadow.scored,
            "batches": shadow.batches,
            "dropped_rows": shadow.dropped,
            "error_rows": shadow.errors,
        },
    }


def _mount_admin(app: FastAPI, service: Service, serve_cfg: Any) -> None:
    """Add the operators' routes: ``GET /metrics`` and ``POST /model/reload`` (see the
    module docstring for its status codes)."""
    metrics = service.metrics

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text format)",
        response_class=PlainTextResponse,
        responses={200: {"description": "the Prometheus text exposition format"}},
    )
    async def prometheus_metrics() -> Response:
        # In a thread: the drift collector reads the request log, which may be a remote
        # database that is slow or unreachable right now; /predict must not wait for it.
        # A daemon thread of its own, not the default executor: see serving.daemon_thread.
        body, content_type = await in_daemon_thread(metrics.render, name="metrics")
        return Response(body, media_type=content_type)

    @app.post(
        "/model/reload",
        summary="Reload the champion (and challenger) now (Authorization: Bearer <token>)",
        responses={
            401: {"description": "no Bearer token"},
            403: {"description": "wrong token"},
            404: {"description": "reload over HTTP is off: no token configured"},
            409: {"description": "a --model-version is pinned"},
            500: {
                "description": "a new version (champion or challenger) failed to load; the "
                "old one keeps serving"
            },
        },
    )
    async def reload_model(request: Request) -> Response:
        refused = check_bearer(
            request, serve_cfg.reload_token_env, endpoint="model reload", kind="reload"
        )
        if refused is not None:
            return refused
        if service.pinned_version is not None:
            return _json(
                409,
                {
                    "detail": f"serving pinned version {service.pinned_version}; "
                    "restart without --model-version to follow the champion"
                },
            )
        result, challenger = await service.check_models()
        failed = bool(result.error or (challenger is not None and challenger.error))
        body = {
            **result.as_dict(),
            "challenger": challenger.as_dict() if challenger is not None else None,
        }
        return _json(500 if failed else 200, body)


def _document_predict(app: FastAPI, service: Service, serve_cfg: Any) -> None:
    """Make ``app.openapi`` (``/openapi.json``, ``/docs``) FastAPI's schema plus POST
    /predict, and build it now. Call it after every route is mounted: the schema is cached."""
    holder = service.holder
    generate_openapi = app.openapi  # FastAPI's own, cached in app.openapi_schema
    # The request models the cached schema documents (not the model: no reference that
    # would keep a replaced pipeline in memory).
    documented: list[RequestModels | None] = [None]

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus POST /predict, documented from the served model's
        validating models; rebuilt when a reload swaps the model."""
        model = holder.model
        requests = model.requests if model is not None else None
        if app.openapi_schema is None or documented[0] is not requests:
            app.openapi_schema = None
            spec = generate_openapi()
            operation, components = predict_openapi(
                requests or build_request_models(None, serve_cfg.max_batch_size),
                serve_cfg.max_body_bytes,
            )
            post = {
                "summary": _PREDICT_SUMMARY,
                "operationId": _PREDICT_OPERATION_ID,
                "responses": operation.pop("responses"),
                **operation,
            }
            spec["paths"] = {"/predict": {"post": post}, **spec["paths"]}
            spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
            documented[0] = requests
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    openapi()  # now, so a schema that cannot be built fails at startup, not on /docs
