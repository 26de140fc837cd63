"""The prediction service: ``create_app(settings)`` builds the FastAPI app, ``run_server``
runs it on uvicorn.

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
result, 500 when loading the new version failed (the old one keeps serving).

The hot path stays lean: a pure ASGI middleware (``ServingMiddleware``, no
``BaseHTTPMiddleware``) times every request for the metrics and answers ``POST /predict``
itself: it checks content type and size while reading the body, then
``Service.answer_predict`` validates the raw bytes with pydantic (in Rust), predicts through
the micro-batcher and answers with orjson-encoded bytes, skipping FastAPI's routing,
dependency and exception layers. FastAPI never sees ``POST /predict``: its route only
carries the OpenAPI documentation, generated (``schemas.predict_openapi``) from the served
model's own validating models, so the documented ranges and batch limit are the enforced
ones; it is regenerated when a reload swaps the model. 422 bodies are shaped in one place
(``Service.validation_failure``). Request-log rows are queued for a background writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from housing_mlops.serving.metrics import ServingMetrics
from housing_mlops.serving.predictor import LoadedModel, MicroBatcher
from housing_mlops.serving.reload import ModelHolder, ModelWatcher
from housing_mlops.serving.schemas import (
    RequestModels,
    build_request_models,
    format_errors,
    metric_field,
    predict_openapi,
)
from housing_mlops.store import LOG_COLUMNS, RequestLogWriter

log = logging.getLogger(__name__)

CONFIG_ENV = "HOUSING_SERVE_CONFIG"
MODEL_VERSION_ENV = "HOUSING_SERVE_MODEL_VERSION"
HANDLERS = frozenset(
    {
        "/predict",
        "/health",
        "/ready",
        "/model/info",
        "/model/reload",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
    }
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_NO_FEATURES = (None,) * 8
_JSON = "application/json"
assert len(LOG_COLUMNS) == 17  # noqa: S101 - the row tuples below follow this layout

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=_JSON, headers=headers)


class Service:
    """Everything one app instance owns: model holder, batcher, request log, metrics."""

    def __init__(
        self,
        settings: Any,
        model: LoadedModel | None,
        model_version: int | None,
        loader: Callable[[str | None], LoadedModel] | None,
        alias_version: Callable[[], str | None] | None,
    ) -> None:
        from housing_mlops.serving.drift_collector import DriftCollector

        self.settings = settings
        serve = settings.serve
        self.model_name = settings.mlflow.registered_model_name
        self.pinned_version = model_version
        self.metrics = ServingMetrics()
        self.metrics.add_collector(DriftCollector(serve.request_log))
        self.holder = ModelHolder(self.metrics, model)
        self.batcher = MicroBatcher(
            self.holder.current,
            window_s=serve.microbatch_window_ms / 1000.0,
            max_rows=serve.microbatch_max_rows,
            threads=serve.predictor_threads,
        )
        self.writer = RequestLogWriter(
            serve.request_log,
            flush_interval_s=serve.log_flush_interval_s,
            max_queue=serve.log_queue_size,
            on_flush=self.metrics.on_log_flush,
        )
        self.loader = loader or self._registry_loader
        self.watcher = ModelWatcher(
            self.holder,
            alias_version or self._registry_alias_version,
            self.loader,
            serve.reload_interval_s,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._rid_prefix = secrets.token_hex(6)
        self._rid_counter = itertools.count(1)

    # -- registry access (only through housing_mlops.registry)
    def _registry_loader(self, version: str | None) -> LoadedModel:
        from housing_mlops.serving.predictor import load_from_registry

        if version is None and self.pinned_version is not None:
            version = str(self.pinned_version)
        return load_from_registry(self.settings, version)

    def _registry_alias_version(self) -> str | None:
        from housing_mlops import registry

        return registry.get_alias_version(self.settings, "champion")

    # -- lifecycle
    async def startup(self, wait_for_model: bool = False) -> None:
        self.writer.start()
        self.batcher.start()
        if self.holder.model is None and wait_for_model:
            # A worker of a multi-worker server: accept connections only once loaded.
            self.holder.swap(await asyncio.to_thread(self.loader, None))
        if self.holder.model is None:
            self._tasks.append(asyncio.create_task(self._initial_load()))
        elif self.pinned_version is None and self.settings.serve.reload_interval_s > 0:
            self._tasks.append(asyncio.create_task(self.watcher.run()))

    async def _initial_load(self) -> None:
        delay = max(1.0, min(self.settings.serve.reload_interval_s or 5.0, 30.0))
        while self.holder.model is None:
            try:
                model = await asyncio.to_thread(self.loader, None)
            except Exception as exc:  # noqa: BLE001 - keep trying; /ready says 503 meanwhile
                self.holder.last_reload_error = f"initial load failed: {exc}"
                self.metrics.reload_failures.inc()
                log.exception("could not load the model; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
            else:
                self.holder.swap(model)
                self.holder.last_reload_error = None
        if self.pinned_version is None and self.settings.serve.reload_interval_s > 0:
            await self.watcher.run()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # uvicorn has answered every in-flight request by now: flush them all to SQLite.
        await asyncio.to_thread(self.batcher.close)
        await asyncio.to_thread(self.writer.close)
        self.metrics.process_exit()

    # -- /predict
    def new_request_id(self) -> str:
        # A random per-process prefix and a counter: unique, and cheaper than uuid4.
        return f"{self._rid_prefix}{next(self._rid_counter):x}"

    def validation_failure(
        self, scope: Scope, errors: list[dict[str, Any]]
    ) -> tuple[int, bytes, str]:
        """The 422 answer: every bad field with path and reason; counted and logged."""
        shaped = format_errors(errors, self.settings.serve.max_batch_size)
        for err in shaped:
            self.metrics.validation_errors.labels(metric_field(err)).inc()
        rid = scope.get("housing.request_id") or self.new_request_id()
        if scope.get("path") == "/predict":
            summary = "; ".join(f"{e['field']}: {e['msg']}" for e in shaped)
            self.log_rejected(scope, 422, summary)
        return 422, orjson.dumps({"detail": shaped, "request_id": rid}), rid

    async def answer_predict(self, scope: Scope, body: bytes) -> tuple[int, bytes, str]:
        """Validate, predict (micro-batched), log; returns (status, JSON bytes, request id)."""
        rid = scope.get("housing.request_id") or self.new_request_id()
        model = self.holder.model
        if model is None:
            self.log_rejected(scope, 503, "no model loaded yet")
            return 503, orjson.dumps({"detail": "no model loaded yet", "request_id": rid}), rid
        try:
            if b'"instances"' in body:
                try:
                    batch = model.requests.batch.model_validate_json(body)
                except ValidationError as exc:
                    errors = exc.errors(include_url=False)
                    if any(e["type"] == "missing" and e["loc"] == ("instances",) for e in errors):
                        # "instances" only appeared inside a value: report it as one house.
                        rows = [model.requests.house.model_validate_json(body)]
                        single = True
                    else:
                        raise
                else:
                    rows = batch.instances  # type: ignore[attr-defined]
                    single = False
            else:
                rows = [model.requests.house.model_validate_json(body)]
                single = True
        except ValidationError as exc:
            return self.validation_failure(scope, exc.errors(include_url=False))  # type: ignore[arg-type]
        values = [tuple(r.__dict__.values()) for r in rows]
        X = np.array(values, dtype=np.float64)
        try:
            preds, used = await self.batcher.predict(X)
        except Exception as exc:  # noqa: BLE001 - a model failure, not bad input
            log.exception("prediction failed")
            self.log_rejected(scope, 500, f"prediction failed: {exc}")
            return 500, orjson.dumps({"detail": "prediction failed", "request_id": rid}), rid
        version = used.meta.version
        name = used.meta.name
        pred_list = preds.tolist()
        if single:
            p = pred_list[0]
            payload: dict[str, Any] = {
                "request_id": rid,
                "model_name": name,
                "model_version": version,
                "prediction": p,
                "prediction_usd": round(p * 100_000.0, 2),
            }
        else:
            payload = {
                "request_id": rid,
                "model_name": name,
                "model_version": version,
                "count": len(pred_list),
                "predictions": pred_list,
                "predictions_usd": [round(p * 100_000.0, 2) for p in pred_list],
            }
        content = orjson.dumps(payload)
        self.metrics.observe_predictions(version, pred_list)
        ts = scope["housing.ts"]
        latency = (time.perf_counter() - scope["housing.t0"]) * 1000.0
        self.writer.submit(
            [
                (ts, rid, i, name, version, *row, pred, latency, 200, None)
                for i, (row, pred) in enumerate(zip(values, pred_list, strict=True))
            ]
        )
        return 200, content, rid

    # -- request log
    def log_rejected(self, scope: Scope, status: int, error: str) -> None:
        ts = scope.get("housing.ts") or time.time()
        t0 = scope.get("housing.t0")
        latency = (time.perf_counter() - t0) * 1000.0 if t0 else None
        rid = scope.get("housing.request_id") or self.new_request_id()
        self.writer.submit(
            [
                (
                    ts,
                    rid,
                    0,
                    self.model_name,
                    None,
                    *_NO_FEATURES,
                    None,
                    latency,
                    status,
                    error[:2000],
                )
            ]
        )


# ------------------------------------------------------------------ ASGI middleware
class ServingMiddleware:
    """Pure ASGI: HTTP metrics for every request; size/type checks and body for /predict."""

    def __init__(self, app: FastAPI, service: Service) -> None:
        self.app = app
        self.fastapi = app
        self.service = service
        self.max_body = service.settings.serve.max_body_bytes

    @property
    def state(self) -> Any:
        """The FastAPI app's state (``state.service`` is the ``Service``)."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        status = 0  # no answer sent (yet)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if method == "POST" and path == "/predict":
                scope["housing.t0"] = t0
                scope["housing.ts"] = time.time()
                body = await self._gate(scope, receive, send_wrapper)
                if body is None:
                    return
                status, content, rid = await self.service.answer_predict(scope, body)
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode()),
                            (b"x-request-id", rid.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": content})
                return
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if not status:
                status = 500  # uvicorn answers an app's exception with a 500
            raise
        finally:
            handler = path if path in HANDLERS else "other"
            if status:
                self.service.metrics.observe_http(handler, method, status, time.perf_counter() - t0)
            else:
                # The connection closed before any answer: the client left mid-body, or
                # uvicorn rejected a malformed body with its own 400. Not a 5xx of ours.
                self.service.metrics.observe_aborted(handler, method)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """Check and read a /predict body; None when a response has already been sent."""
        content_type = b""
        content_length = -1
        request_id = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = -1
            elif key == b"x-request-id":
                text = value.decode("latin-1")
                if _REQUEST_ID.match(text):
                    request_id = text
        request_id = request_id or self.service.new_request_id()
        scope["housing.request_id"] = request_id
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != b"application/json" and not (
            media.startswith(b"application/") and media.endswith(b"+json")
        ):
            got = media.decode("latin-1") or "none"
            await self._reject(
                scope, send, 415, f"Content-Type must be application/json, got {got}"
            )
            return None
        limit = self.max_body
        if content_length > limit:
            await self._reject(scope, send, 413, self._too_large(content_length))
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    await self._reject(scope, send, 413, self._too_large(None))
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        scope["housing.body"] = body
        return body

    def _too_large(self, length: int | None) -> str:
        got = f"{length} bytes" if length is not None else "more than that"
        return f"request body too large: the limit is {self.max_body} bytes, got {got}"

    async def _reject(self, scope: Scope, send: Send, status: int, message: str) -> None:
        rid = scope["housing.request_id"]
        self.service.log_rejected(scope, status, message)
        body = orjson.dumps({"detail": message, "request_id": rid})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", rid.encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------- the app
def create_app(
    settings: Any,
    model: LoadedModel | None = None,
    *,
    model_version: int | None = None,
    loader: Callable[[str | None], LoadedModel] | None = None,
    alias_version: Callable[[], str | None] | None = None,
    wait_for_model: bool = False,
) -> ServingMiddleware:
    """The ASGI app serving ``model`` (or the registry's champion, loaded at startup).

    It is the FastAPI app wrapped in ``ServingMiddleware`` (``.fastapi`` is the FastAPI
    app, ``.state.service`` the ``Service``); only the wrapper answers ``POST /predict``.

    ``loader(version or None)`` and ``alias_version()`` default to the registry; tests
    pass their own to serve in-memory pipelines. ``model_version`` pins a version (the
    watcher is then off). Without ``model`` the app loads one at startup: in the
    background (``/ready`` says 503 meanwhile), or before serving with ``wait_for_model``.
    """
    from housing_mlops import __version__

    service = Service(settings, model, model_version, loader, alias_version)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.startup(wait_for_model)
        try:
            yield
        finally:
            await service.shutdown()

    # FastAPI's /docs and /redoc pages load their JavaScript from a CDN; these load the
    # packaged copies (under /static-offline-docs), so the docs work without internet.
    app = FastAPIOffline(
        title="housing-mlops prediction service",
        version=__version__,
        description="Median house value of a California block group (in $100k and in US "
        "dollars) from the 8 raw census features. The ranges in the schema of POST /predict "
        "are those of the served model version (also in GET /model/info).",
        lifespan=lifespan,
    )
    app.state.service = service
    holder = service.holder
    metrics = service.metrics
    serve_cfg = settings.serve

    @app.post(
        "/predict",
        summary="Predict the median house value of one block group or a batch",
    )
    async def predict() -> Response:
        # Only the OpenAPI entry (filled in by `openapi` below): ServingMiddleware answers
        # POST /predict before FastAPI routes anything.
        raise RuntimeError("POST /predict is answered by ServingMiddleware; serve create_app()")

    @app.get("/health", summary="The process is alive")
    async def health() -> Response:
        return _json(200, {"status": "ok"})

    @app.get(
        "/ready",
        summary="200 once a model is loaded, else 503",
        responses={503: {"description": "no model loaded yet"}},
    )
    async def ready() -> Response:
        model = holder.model
        if model is None:
            return _json(503, {"status": "loading", "last_reload_error": holder.last_reload_error})
        return _json(200, {"status": "ready", "model_version": model.meta.version})

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
                "microbatch": {
                    "window_ms": serve_cfg.microbatch_window_ms,
                    "max_rows": serve_cfg.microbatch_max_rows,
                    "predictor_threads": serve_cfg.predictor_threads,
                    "batches": service.batcher.batches,
                    "rows": service.batcher.rows,
                },
            }
        )
        return _json(200, info)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text format)",
        response_class=PlainTextResponse,
        responses={200: {"description": "the Prometheus text exposition format"}},
    )
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post(
        "/model/reload",
        summary="Reload the champion now (Authorization: Bearer <token>)",
        responses={
            401: {"description": "no Bearer token"},
            403: {"description": "wrong token"},
            404: {"description": "reload over HTTP is off: no token configured"},
            409: {"description": "a --model-version is pinned"},
            500: {"description": "the new version failed to load; the old one keeps serving"},
        },
    )
    async def reload_model(request: Request) -> Response:
        env = serve_cfg.reload_token_env
        token = os.environ.get(env, "")
        if not token:
            return _json(404, {"detail": f"model reload over HTTP is off: set {env} to enable it"})
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _json(
                401,
                {"detail": "missing Bearer token (Authorization: Bearer <token>)"},
                {"www-authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _json(403, {"detail": "wrong reload token"})
        if service.pinned_version is not None:
            return _json(
                409,
                {
                    "detail": f"serving pinned version {service.pinned_version}; "
                    "restart without --model-version to follow the champion"
                },
            )
        result = await service.watcher.check()
        return _json(500 if result.error else 200, result.as_dict())

    generate_openapi = app.openapi  # FastAPI's own, cached in app.openapi_schema
    # The request models the cached schema documents (not the model: no reference that
    # would keep a replaced pipeline in memory).
    documented: list[RequestModels | None] = [None]

    def openapi() -> dict[str, Any]:
        """FastAPI's schema with POST /predict documented from the served model's
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
            spec["paths"]["/predict"]["post"].update(operation)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
            documented[0] = requests
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    openapi()  # now, so a schema that cannot be built fails at startup, not on /docs

    # Outermost, so /predict also skips FastAPI's own per-request work (telemetry checks,
    # error middleware); everything else passes through to FastAPI.
    return ServingMiddleware(app, service)


def app_from_env() -> Any:
    """uvicorn factory for ``--workers`` > 1: settings come from ``$HOUSING_SERVE_CONFIG``."""
    from housing_mlops.config import load_config

    settings = load_config(os.environ[CONFIG_ENV])
    version = os.environ.get(MODEL_VERSION_ENV)
    return create_app(
        settings, model_version=int(version) if version else None, wait_for_model=True
    )


# --------------------------------------------------------------------------- server
def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a busy port is a clear error (exit 2), and nobody
    can take the port while the model loads."""
    from housing_mlops.errors import UsageError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port"
        ) from None
    return sock


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown (the process then dies
        of the signal: 143, or a KeyboardInterrupt). A drained, flushed stop is a normal
        exit for `housing serve`: exit 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        captured.clear()

    return GracefulServer


def _check_request_log(path: Path) -> None:
    import sqlite3

    from housing_mlops.errors import ConfigError
    from housing_mlops.store import open_db

    try:
        open_db(path).close()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot open the request log {path}: {exc} (check serve.request_log)"
        ) from None


def run_server(
    settings: Any,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    model_version: int | None = None,
    config_path: Path | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. Fails fast (ModelError) when there is no champion."""
    import shutil
    import tempfile

    import uvicorn

    from housing_mlops import registry
    from housing_mlops.errors import UsageError
    from housing_mlops.serving.predictor import load_from_registry

    _Server = _graceful_server_class()
    serve = settings.serve
    host = host or serve.host
    port = port or serve.port
    workers = workers or serve.workers
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    # Before binding anything: is there a model to serve? (ModelError -> exit 5)
    ref = registry.resolve(settings, version=model_version)
    _check_request_log(Path(serve.request_log))
    sock = _bind(host, port)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "auto",  # uvloop when installed
        "http": "auto",  # httptools when installed
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,  # client addresses are not used; saves a layer per request
        "log_level": "info",
        "timeout_graceful_shutdown": 30,
    }
    summary = {
        "model": ref.name,
        "version": str(ref.version),
        "url": f"http://{host}:{port}",
        "workers": workers,
        "request_log": str(serve.request_log),
    }
    if workers == 1:
        with sock:
            model = load_from_registry(settings, model_version)
            app = create_app(settings, model, model_version=model_version)
            if on_ready:
                on_ready(summary)
            _Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        return
    # uvicorn's supervisor binds the port itself for its workers (checked free just now).
    sock.close()
    source = config_path or settings.source
    if source is None:
        raise UsageError("--workers > 1 needs a config file (--config)")
    prom_dir = tempfile.mkdtemp(prefix="housing-prometheus-")
    saved = {
        k: os.environ.get(k) for k in (CONFIG_ENV, MODEL_VERSION_ENV, "PROMETHEUS_MULTIPROC_DIR")
    }
    os.environ[CONFIG_ENV] = str(Path(source).resolve())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    if model_version is not None:
        os.environ[MODEL_VERSION_ENV] = str(model_version)
    else:
        os.environ.pop(MODEL_VERSION_ENV, None)
    try:
        if on_ready:
            on_ready(summary)
        uvicorn.run(
            "housing_mlops.serving.app:app_from_env", factory=True, workers=workers, **common
        )
    finally:
        shutil.rmtree(prom_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
