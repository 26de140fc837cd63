"""``POST /feedback``: true values for answered requests, mounted by ``serving.app``.

Body: one object ``{"request_id": str, "actual": float, "row_index": int = 0}`` or a JSON
array of them (at most ``serve.max_batch_size``). ``actual`` is the true value in $100k,
like the predictions.

======  ====================================================================================
status  meaning
======  ====================================================================================
200     ``{"received": n, "applied": n, "unknown": n, "duplicate": n}``: unknown ids (the
        request row may not be flushed to the log yet, about a second) and rows labelled
        already are skipped and counted, the rest stored in one transaction
401     no Bearer token; 403 a wrong one
404     feedback over HTTP is off: the variable named by ``serve.feedback_token_env``
        (``HOUSING_FEEDBACK_TOKEN``) is unset or empty (as ``/model/reload``)
413     body larger than ``serve.max_body_bytes``; 415 ``Content-Type`` not JSON
422     malformed JSON, a malformed item, a non-finite ``actual``, an empty or too large
        batch: nothing is applied, ``detail`` lists every problem (``loc``, ``field``,
        ``msg``, ``type``, as ``/predict``)
503     the request log cannot be written right now (database down, or a table locked
        for longer than ``store.SERVICE_STATEMENT_TIMEOUT_MS``, 5 s): nothing was
        applied, send it again later
======  ====================================================================================

The body is checked before the token (413, 415, 422 first, as the OpenAPI schema says of a
body that breaks it; the schema is public anyway); the token before the database is touched.
The database write runs in a daemon thread of its own (``serving.daemon_thread``), so the
event loop keeps answering /predict and a stop never waits for it.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from housing_mlops.errors import HousingError
from housing_mlops.serving.auth import check_bearer, json_response
from housing_mlops.serving.daemon_thread import in_daemon_thread
from housing_mlops.serving.schemas import format_errors
from housing_mlops.store.feedback import MAX_ROW_INDEX

log = logging.getLogger(__name__)


def _whole_number(value: Any) -> Any:
    """JSON Schema's integer includes 3.0: take it as 3 (1.5, strings, booleans stay bad)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class FeedbackItem(BaseModel):
    """The true value of one answered prediction row."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    request_id: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00]+$",  # PostgreSQL text cannot hold NUL
        description="The request_id /predict returned.",
    )
    actual: float = Field(
        allow_inf_nan=False, description="The true value in $100k (finite), like predictions."
    )
    row_index: Annotated[int, BeforeValidator(_whole_number)] = Field(
        0, ge=0, le=MAX_ROW_INDEX, description="The row of a batch request (0: a single house)."
    )


_json = json_response


def _unprocessable(detail: list[dict[str, Any]]) -> Response:
    return _json(422, {"detail": detail})


def _problem(msg: str, etype: str, loc: list[Any] | None = None) -> dict[str, Any]:
    return {"loc": ["body", *(loc or [])], "field": "<body>", "msg": msg, "type": etype}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _read_body(request: Request, max_body: int) -> bytes | Response:
    """The body of a JSON request, or the 415 / 413 answer. Read as it arrives and stopped
    at the limit: a chunked body without Content-Length is never held in memory past
    ``max_body`` bytes (as /predict does)."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        got = content_type.split(";", 1)[0].strip() or "none"
        return _json(415, {"detail": f"Content-Type must be application/json, got {got}"})
    too_large = _json(413, {"detail": f"request body too large: the limit is {max_body} bytes"})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        return too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_items(
    body: bytes, items_adapter: TypeAdapter[list[FeedbackItem]], max_items: int
) -> list[FeedbackItem] | Response:
    """The feedback items of a body (one object or an array of at most ``max_items``), or
    the 422 answer naming every problem."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _unprocessable([_problem(f"body is not valid JSON: {exc}", "json_invalid")])
    many = isinstance(parsed, list)
    if not many and not isinstance(parsed, dict):
        return _unprocessable(
            [_problem("body must be a JSON object or an array of objects", "model_type")]
        )
    raw = parsed if many else [parsed]
    if not raw:
        return _unprocessable([_problem("the batch is empty", "too_short")])
    if len(raw) > max_items:
        return _unprocessable(
            [
                _problem(
                    f"batch has {len(raw)} items; the limit is {max_items} per request "
                    "(serve.max_batch_size)",
                    "too_long",
                )
            ]
        )
    try:
        return items_adapter.validate_python(raw)
    except ValidationError as err:
        errors: list[dict[str, Any]] = [dict(e) for e in err.errors(include_url=False)]
        if not many:  # one object: no [0] in the paths
            errors = [{**e, "loc": tuple(e["loc"])[1:]} for e in errors]
        detail = format_errors(errors, max_items)
        for entry in detail:
            if entry["type"] == "extra_forbidden":
                entry["msg"] = "unknown field; expected only request_id, actual, row_index"
        return _unprocessable(detail)


def mount_feedback(app: FastAPI, settings: Any) -> None:
    """Add ``POST /feedback`` to ``app`` (see the module docstring)."""
    from housing_mlops import store

    serve_cfg = settings.serve
    location = store.parse_log_location(serve_cfg.request_log)
    max_items = serve_cfg.max_batch_size
    max_body = serve_cfg.max_body_bytes
    items_adapter = TypeAdapter(list[FeedbackItem])

    def apply(labels: list[tuple[str, int, float]]) -> Any:
        # A bounded session: a locked table is a 503 within seconds, not a request (and a
        # thread) waiting for the lock.
        return store.apply_feedback(
            location,
            labels,
            source="api",
            all_or_nothing=False,
            statement_timeout_ms=store.SERVICE_STATEMENT_TIMEOUT_MS,
        )

    item_schema = FeedbackItem.model_json_schema()
    body_schema = {
        "anyOf": [
            item_schema,
            {"type": "array", "items": item_schema, "minItems": 1, "maxItems": max_items},
        ]
    }

    @app.post(
        "/feedback",
        summary="True values for answered requests (Authorization: Bearer <token>)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        },
        responses={
            200: {"description": "counts: received, applied, unknown, duplicate"},
            401: {"description": "no Bearer token"},
            403: {"description": "wrong token"},
            404: {"description": "feedback over HTTP is off: no token configured"},
            413: {"description": "body too large"},
            415: {"description": "Content-Type is not application/json"},
            422: {"description": "malformed body or item, non-finite actual: nothing applied"},
            503: {"description": "the request log cannot be written now: nothing applied"},
        },
    )
    async def feedback(request: Request) -> Response:
        body = await _read_body(request, max_body)
        if isinstance(body, Response):
            return body
        items = _parse_items(body, items_adapter, max_items)
        if isinstance(items, Response):
            return items
        refused = check_bearer(
            request, serve_cfg.feedback_token_env, endpoint="feedback", kind="feedback"
        )
        if refused is not None:
            return refused
        labels = [(i.request_id, i.row_index, i.actual) for i in items]
        try:
            result = await in_daemon_thread(apply, labels, name="feedback")
        except (store.LogUnavailable, HousingError) as exc:
            log.warning("POST /feedback: the request log cannot take labels: %s", exc)
            return _json(
                503,
                {"detail": f"the request log cannot take labels right now, try again: {exc}"},
                {"retry-after": "5"},
            )
        return _json(
            200,
            {
                "received": result.received,
                "applied": result.applied,
                "unknown": result.unknown,
                "duplicate": result.duplicate,
            },
        )
