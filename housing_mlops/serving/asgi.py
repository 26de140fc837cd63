"""The fast path: ``POST /predict`` as a raw ASGI endpoint, and the layer that puts it in
front of the FastAPI app.

``PredictEndpoint`` checks content type and size while reading the body, parses and
validates it once (``RequestModels.parse_body``, pydantic in Rust), predicts through the
micro-batcher and answers with orjson-encoded bytes. Every answer, rejections included, is
queued for the request log as ``LoggedRequest`` rows.

With a challenger (``Service.mode``): in canary mode the stable hash of the
``serve.canary_key_header`` value (else of the request id) picks the model that answers
(``serving.routing``); in shadow mode the champion answers and the rows go to the shadow
scorer, which logs them once the challenger has scored them (``serving.shadow``). Answers
say which model answered: headers ``X-Model-Version`` and ``X-Model-Role``, and ``role`` in
the body.

It is the endpoint of FastAPI's ``/predict`` route (so routing is FastAPI's: 405 for other
methods, the trailing-slash redirect), and ``ServingMiddleware``, outermost, also calls it
directly for ``POST /predict``: the hot path then skips FastAPI's middleware, routing and
exception layers. The middleware also times every request for the metrics. FastAPI does
not generate the documentation of a raw ASGI route: ``serving.app`` adds it to the schema.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from housing_mlops.inference.loaded_model import LoadedModel
from housing_mlops.serving.routing import routes_to_challenger
from housing_mlops.serving.schemas import format_errors, metric_field
from housing_mlops.serving.state import Service
from housing_mlops.store import LoggedRequest, answered_values

log = logging.getLogger(__name__)

# Every route of the app (a test checks the list against create_app's routes): the
# `handler` label of the HTTP metrics; anything else is "other" (a bounded label set).
HANDLERS = frozenset(
    {
        "/predict",
        "/feedback",
        "/health",
        "/ready",
        "/model/info",
        "/model/reload",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServingMiddleware:
    """Pure ASGI, outermost: HTTP metrics for every request; ``POST /predict`` goes
    straight to ``predict``, everything else to FastAPI (``app``)."""

    def __init__(self, app: ASGIApp, predict: PredictEndpoint) -> None:
        self.app = app
        self.predict = predict
        self.service = predict.service

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
                # No send wrapper on the hot path: the endpoint puts its status in the
                # scope (``housing.status``) before it sends the answer.
                await self.predict(scope, receive, send)
            else:
                await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = status or scope.get("housing.status", 0)
            if not status:
                status = 500  # uvicorn answers an app's exception with a 500
            raise
        finally:
            status = status or scope.get("housing.status", 0)
            handler = path if path in HANDLERS else "other"
            if status:
                self.service.metrics.observe_http(
                    handler, method, status, time.perf_counter() - t0, scope.get("housing.role", "")
                )
            else:
                # The connection closed before any answer: the client left mid-body, or
                # uvicorn rejected a malformed body with its own 400. Not a 5xx of ours.
                self.service.metrics.observe_aborted(handler, method)


class PredictEndpoint:
    """``POST /predict`` as a raw ASGI app (see the module docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.max_body = service.settings.serve.max_body_bytes
        self.canary_header = service.settings.serve.canary_key_header.lower().encode("latin-1")
        self._fallback_logged = -60.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "housing.t0" not in scope:  # reached through FastAPI's routing
            scope["housing.t0"] = time.perf_counter()
        scope["housing.ts"] = time.time()
        body = await self._gate(scope, receive, send)
        if body is not None:
            status, content, rid = await self._predict(scope, body)
            headers = [(b"x-request-id", rid.encode())]
            answered: LoadedModel | None = scope.get("housing.model")
            if answered is not None:
                headers.append((b"x-model-version", answered.meta.version.encode()))
                headers.append((b"x-model-role", scope["housing.role"].encode()))
            scope["housing.status"] = status
            await _send_json(send, status, content, headers)

    # ---------------------------------------------------------------- reading the body
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
            elif key == self.canary_header:
                scope["housing.canary_key"] = value.decode("latin-1")
        scope["housing.request_id"] = request_id or self.service.new_request_id()
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
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, length: int | None) -> str:
        got = f"{length} bytes" if length is not None else "more than that"
        return f"request body too large: the limit is {self.max_body} bytes, got {got}"

    async def _reject(self, scope: Scope, send: Send, status: int, message: str) -> None:
        rid = scope["housing.request_id"]
        self._log_rejected(scope, status, message)
        body = orjson.dumps({"detail": message, "request_id": rid})
        # The rest of the body is not read: close the connection rather than drain it.
        headers = [(b"x-request-id", rid.encode()), (b"connection", b"close")]
        scope["housing.status"] = status
        await _send_json(send, status, body, headers)

    # ---------------------------------------------------------------------- answering
    async def _predict(self, scope: Scope, body: bytes) -> tuple[int, bytes, str]:
        """Validate, predict (micro-batched), log; returns (status, JSON bytes, request id)."""
        rid: str = scope["housing.request_id"]
        service = self.service
        model = service.holder.model
        if model is None:
            self._log_rejected(scope, 503, "no model loaded yet")
            return 503, orjson.dumps({"detail": "no model loaded yet", "request_id": rid}), rid
        mode = service.mode
        role = "champion"
        batcher = service.batcher
        if mode == "canary":
            challenger = service.challenger.model
            key = scope.get("housing.canary_key") or rid
            if challenger is not None and routes_to_challenger(key, service.canary_share):
                # The challenger's own validation: its reference ranges decide.
                model, role, batcher = challenger, "challenger", service.challenger_batcher
        try:
            houses, single = model.requests.parse_body(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            batch = exc.title == model.requests.batch.__name__
            return self._invalid(scope, errors, batch)  # type: ignore[arg-type]
        values = [tuple(house.__dict__.values()) for house in houses]
        X = np.array(values, dtype=np.float64)
        try:
            try:
                preds, used = await batcher.predict(X)
            except Exception:
                if role != "challenger":
                    raise
                # A canary challenger that fails (or was just removed): the champion answers.
                now = time.monotonic()
                if now - self._fallback_logged >= 60.0:  # not a traceback per request
                    self._fallback_logged = now
                    log.exception("the challenger failed to predict; the champion answers")
                role = "champion"
                preds, used = await service.batcher.predict(X)
        except Exception as exc:  # noqa: BLE001 - a model failure, not bad input
            log.exception("prediction failed")
            self._log_rejected(scope, 500, f"prediction failed: {exc}")
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
                "role": role,
                "prediction": p,
                "prediction_usd": round(p * 100_000.0, 2),
            }
        else:
            payload = {
                "request_id": rid,
                "model_name": name,
                "model_version": version,
                "role": role,
                "count": len(pred_list),
                "predictions": pred_list,
                "predictions_usd": [round(p * 100_000.0, 2) for p in pred_list],
            }
        content = orjson.dumps(payload)
        scope["housing.model"] = used
        scope["housing.role"] = role
        service.metrics.observe_predictions(version, pred_list, role)
        ts = scope["housing.ts"]
        instance = service.instance
        latency = (time.perf_counter() - scope["housing.t0"]) * 1000.0
        if mode != "shadow":
            # The rows' column values straight away (no LoggedRequest objects to convert).
            service.writer.submit_values(
                answered_values(ts, rid, name, version, values, pred_list, latency, instance, role)
            )
            return 200, content, rid
        rows = [
            LoggedRequest(
                ts=ts,
                request_id=rid,
                row_index=i,
                model_name=name,
                model_version=version,
                features=row,
                prediction=pred,
                latency_ms=latency,
                status=200,
                instance=instance,
                role=role,
            )
            for i, (row, pred) in enumerate(zip(values, pred_list, strict=True))
        ]
        # In shadow the scorer logs the rows once the challenger has scored them; when its
        # queue is full (or it is not running) they are logged here, without a shadow.
        if not service.shadow.submit(X, rows):
            service.writer.submit(rows)
        return 200, content, rid

    def _invalid(
        self, scope: Scope, errors: list[dict[str, Any]], batch: bool = False
    ) -> tuple[int, bytes, str]:
        """The 422 answer: every bad field with path and reason; counted and logged."""
        shaped = format_errors(errors, self.service.settings.serve.max_batch_size, batch=batch)
        for err in shaped:
            self.service.metrics.validation_errors.labels(metric_field(err)).inc()
        summary = "; ".join(f"{e['field']}: {e['msg']}" for e in shaped)
        self._log_rejected(scope, 422, summary)
        rid: str = scope["housing.request_id"]
        return 422, orjson.dumps({"detail": shaped, "request_id": rid}), rid

    def _log_rejected(self, scope: Scope, status: int, error: str) -> None:
        self.service.writer.submit(
            [
                LoggedRequest(
                    ts=scope["housing.ts"],
                    request_id=scope["housing.request_id"],
                    row_index=0,
                    model_name=self.service.model_name,
                    model_version=None,
                    features=None,
                    prediction=None,
                    latency_ms=(time.perf_counter() - scope["housing.t0"]) * 1000.0,
                    status=status,
                    error=error[:2000],
                    instance=self.service.instance,
                )
            ]
        )


async def _send_json(
    send: Send, status: int, content: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
