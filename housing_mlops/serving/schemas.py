"""Request validation for ``/predict``: pydantic v2 models built from the training data.

Every request is checked by pydantic (in Rust, straight from the JSON bytes):

- the 8 raw features, all required, JSON numbers only (strict: ``"1.5"`` and ``true`` are
  rejected), finite (NaN and infinity rejected), unknown fields rejected;
- each feature inside an allowed range (``validation.feature_ranges``: the training range
  widened by ``RANGE_MARGIN``, within physical bounds; the one definition, which
  ``housing predict`` enforces on files too);
- ``AveBedrms`` not above ``AveRooms``;
- a batch ``{"instances": [...]}`` holds 1 to ``serve.max_batch_size`` rows.

The ranges depend on the model (its profile), so each loaded model carries its own
request models (``RequestModels``); ``/model/info`` shows them, and the OpenAPI schema of
``POST /predict`` is generated from them (``predict_openapi``), with the response bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_core import InitErrorDetails, from_json

from housing_mlops.columns import FEATURES

# The rules themselves (ranges, physical bounds, the bedrooms rule) live in the validation
# module, shared with `housing predict`; here they become pydantic models.
from housing_mlops.validation import (
    PHYSICAL_BOUNDS as PHYSICAL_BOUNDS,
)
from housing_mlops.validation import (
    RANGE_MARGIN,
    FeatureRange,
    bedrooms_reason,
    feature_ranges,
)


def _bedrooms_not_above_rooms(cls: type, value: float, info: ValidationInfo) -> float:
    rooms = info.data.get("AveRooms")
    if rooms is not None and value > rooms:
        raise ValueError(bedrooms_reason(value, rooms))
    return value


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class RequestModels:
    """The pydantic models of one loaded model: a single house and a batch."""

    house: type[BaseModel]
    batch: type[BaseModel]
    ranges: dict[str, FeatureRange]
    max_batch_size: int

    def input_schema(self) -> dict[str, Any]:
        """What ``/model/info`` shows: ranges, rules and the JSON schema of one house."""
        return {
            "features": list(FEATURES),
            "ranges": {name: r.as_dict() for name, r in self.ranges.items()},
            "range_margin": RANGE_MARGIN,
            "rules": [
                "all 8 features are required JSON numbers (no strings, booleans or null)",
                "NaN and infinity are rejected",
                "unknown fields are rejected",
                "AveBedrms must not be greater than AveRooms",
                f"a batch {{'instances': [...]}} holds 1 to {self.max_batch_size} rows",
                f"ranges: the training data's min/max widened by {RANGE_MARGIN:g} of the range "
                "on each side, intersected with physical bounds (California's bounding box, "
                "positive income, rooms, population and occupancy)",
            ],
            "json_schema": self.house.model_json_schema(),
        }

    def parse_body(self, body: bytes) -> tuple[list[BaseModel], bool]:
        """The validated houses of a ``/predict`` body, and whether it was a single house.

        The JSON is parsed once, then the parsed object's shape decides: an object with an
        ``instances`` key is a batch, anything else is validated as one house (so a list
        or a string is "not a JSON object"). Raises pydantic's ValidationError, malformed
        JSON included (``json_invalid``, as pydantic reports it).
        """
        try:
            # The common case in one pass: one valid house, parsed and validated straight
            # from the bytes (the same parser and model as below, half the time). A batch,
            # or anything invalid, fails here and takes the path below, which decides the
            # shape and reports the errors.
            return [self.house.__pydantic_validator__.validate_json(body)], True
        except ValidationError:
            pass
        try:
            # pydantic's own JSON parser: the same error text as its model_validate_json,
            # and NaN/Infinity parse, so they are reported on their field (not finite).
            data = from_json(body)
        except ValueError as exc:
            detail = InitErrorDetails(
                type="json_invalid", loc=(), input="", ctx={"error": str(exc)}
            )
            raise ValidationError.from_exception_data(self.house.__name__, [detail]) from None
        if isinstance(data, dict) and "instances" in data:
            return self.batch.model_validate(data).instances, False  # type: ignore[attr-defined]
        return [self.house.model_validate(data)], True


def build_request_models(
    profile: dict[str, Any] | None, max_batch_size: int = 1000
) -> RequestModels:
    """Pydantic models enforcing the ranges derived from ``profile`` (None: physics only)."""
    ranges = feature_ranges(profile)
    fields: dict[str, Any] = {
        name: (
            float,
            Field(
                ...,
                gt=r.gt,
                ge=r.ge,
                le=r.le,
                description=r.description,
            ),
        )
        for name, r in ranges.items()
    }
    house = create_model(
        "House",
        __config__=_STRICT,
        __doc__="One census block group: the 8 raw features.",
        __validators__={
            "bedrooms_not_above_rooms": field_validator("AveBedrms")(
                classmethod(_bedrooms_not_above_rooms)  # type: ignore[dict-item]
            )
        },
        **fields,
    )
    batch = create_model(
        "Batch",
        __config__=_STRICT,
        __doc__=f"Several houses at once (1 to {max_batch_size}).",
        instances=(list[house], Field(..., min_length=1, max_length=max_batch_size)),
    )
    return RequestModels(house=house, batch=batch, ranges=ranges, max_batch_size=max_batch_size)


def format_errors(
    errors: list[dict[str, Any]], max_batch_size: int, *, batch: bool = False
) -> list[dict[str, Any]]:
    """Pydantic errors as the 422 body lists them: path, field, reason, type.

    ``batch``: the errors are of a ``{"instances": [...]}`` body (``ValidationError.title``
    is the batch model's), whose only top-level key is ``instances``."""
    out = []
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        etype = e.get("type", "value_error")
        msg = e.get("msg", "invalid value")
        if etype == "too_long" and loc == ["instances"]:
            ctx = e.get("ctx") or {}
            actual = ctx.get("actual_length")
            got = f"{actual} rows" if actual is not None else "too many rows"
            msg = (
                f"batch has {got}; the limit is {max_batch_size} rows per request "
                "(serve.max_batch_size)"
            )
        elif etype == "json_invalid":
            msg = f"body is not valid JSON: {(e.get('ctx') or {}).get('error', msg)}"
        elif etype == "model_type" and not loc:
            msg = "body must be a JSON object: one house, or {'instances': [...]}"
        elif etype == "model_type":
            msg = "Input should be an object"  # JSON's words (pydantic's are Python's)
        elif etype == "list_type":
            msg = "Input should be a valid array"
        elif etype == "extra_forbidden" and batch and len(loc) == 1:
            msg = "unknown field; a batch body holds only 'instances'"
        elif etype == "extra_forbidden":
            msg = f"unknown field; expected only {', '.join(FEATURES)}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(
            {
                "loc": ["body", *loc],
                "field": _path(loc) or "<body>",
                "msg": msg,
                "type": etype,
            }
        )
    return out


def _path(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def metric_field(error: dict[str, Any]) -> str:
    """A bounded label for ``housing_validation_errors_total{field}``."""
    loc = error.get("loc", [])
    last = next((p for p in reversed(loc) if isinstance(p, str) and p != "body"), None)
    if error.get("type") == "extra_forbidden":
        return "<unknown>"
    if last in FEATURES or last == "instances":
        return last
    return "<body>"


# ---------------------------------------------------------------- OpenAPI of /predict
# POST /predict is a raw ASGI endpoint (serving.asgi: no FastAPI body parameter), so its
# operation is documented here: the request schemas are generated from the very pydantic
# models that validate (ranges and batch limit as enforced for the loaded model), the
# response schemas describe what ``PredictEndpoint`` sends.
EXAMPLE_HOUSE: dict[str, float] = {
    "MedInc": 8.3252,
    "HouseAge": 41.0,
    "AveRooms": 6.984,
    "AveBedrms": 1.024,
    "Population": 322.0,
    "AveOccup": 2.556,
    "Latitude": 37.88,
    "Longitude": -122.23,
}
_DOCUMENTED = ConfigDict(extra="forbid")


class Prediction(BaseModel):
    """The answer for one house."""

    model_config = _DOCUMENTED
    request_id: str = Field(description="this request's id (also the X-Request-ID header)")
    model_name: str = Field(description="registered model name")
    model_version: str = Field(description="registry version that made the prediction")
    role: Literal["champion", "challenger"] = Field(
        description="which model answered: the champion, or the challenger in canary mode "
        "(also the X-Model-Role header)"
    )
    prediction: float = Field(description="median house value in $100k")
    prediction_usd: float = Field(description="median house value in US dollars")


class BatchPrediction(BaseModel):
    """The answer for a batch {"instances": [...]}: one prediction per row, in order."""

    model_config = _DOCUMENTED
    request_id: str = Field(description="this request's id (also the X-Request-ID header)")
    model_name: str = Field(description="registered model name")
    model_version: str = Field(description="registry version that made the predictions")
    role: Literal["champion", "challenger"] = Field(
        description="which model answered: the champion, or the challenger in canary mode "
        "(also the X-Model-Role header)"
    )
    count: int = Field(description="number of rows predicted")
    predictions: list[float] = Field(description="median house values in $100k")
    predictions_usd: list[float] = Field(description="median house values in US dollars")


class ErrorMessage(BaseModel):
    """A rejected request: the reason in one sentence."""

    model_config = _DOCUMENTED
    detail: str
    request_id: str


class FieldError(BaseModel):
    """One bad field of a request body."""

    model_config = _DOCUMENTED
    loc: list[str | int] = Field(description='path to the field, e.g. ["body", "MedInc"]')
    field: str = Field(description="the path as text, e.g. instances[3].MedInc (<body>: all)")
    msg: str = Field(description="the reason")
    type: str = Field(description="pydantic error type")


class InvalidRequest(BaseModel):
    """A body that failed validation: every bad field with its path and reason."""

    model_config = _DOCUMENTED
    detail: list[FieldError]
    request_id: str


_REF = "#/components/schemas/{model}"
_REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "the request id: the client's own X-Request-ID when valid "
        "(1-64 of A-Z a-z 0-9 . _ : -), else a new one",
        "schema": {"type": "string"},
    }
}


_MODEL_HEADERS = {
    "X-Model-Version": {
        "description": "the registry version that answered",
        "schema": {"type": "string"},
    },
    "X-Model-Role": {
        "description": "champion, or challenger (canary mode: serve.canary_share of the "
        "client keys)",
        "schema": {"type": "string", "enum": ["champion", "challenger"]},
    },
}


def predict_openapi(
    requests: RequestModels, max_body_bytes: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI operation of ``POST /predict`` and the component schemas it refers to.

    The body schemas come from ``requests`` (the loaded model's validating models), so a
    body valid by the schema is accepted; the one rule JSON Schema cannot state
    (``AveBedrms`` not above ``AveRooms``) is in the descriptions.
    """
    from pydantic.json_schema import models_json_schema

    documented: list[tuple[type[BaseModel], Any]] = [
        (requests.house, "validation"),
        (requests.batch, "validation"),
        (Prediction, "serialization"),
        (BatchPrediction, "serialization"),
        (ErrorMessage, "serialization"),
        (InvalidRequest, "serialization"),
    ]
    _, top = models_json_schema(documented, ref_template=_REF)
    components: dict[str, Any] = top["$defs"]
    house = requests.house.__name__
    components[house]["description"] = (
        "One census block group: the 8 raw features, all required JSON numbers inside the "
        "ranges of the served model (its training range widened by "
        f"{RANGE_MARGIN:g} of the range on each side, within physical bounds). "
        "AveBedrms must not be greater than AveRooms."
    )

    def ref(model: type[BaseModel] | str) -> dict[str, str]:
        name = model if isinstance(model, str) else model.__name__
        return {"$ref": _REF.format(model=name)}

    def answer(
        description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "description": description,
            "headers": {**_REQUEST_ID_HEADER, **(headers or {})},
            "content": {"application/json": {"schema": schema}},
        }

    operation = {
        "description": 'One house, or a batch `{"instances": [...]}` of 1 to '
        f"{requests.max_batch_size} houses (at most {max_body_bytes} bytes). "
        "The allowed ranges are those of the served model version (also in "
        "`GET /model/info`); every bad field is reported at once (422).",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [ref(house), ref(requests.batch.__name__)]},
                    "example": EXAMPLE_HOUSE,
                }
            },
        },
        "responses": {
            "200": answer(
                "the prediction in $100k and in US dollars (a batch: one per row, in order)",
                {"oneOf": [ref(Prediction), ref(BatchPrediction)]},
                _MODEL_HEADERS,
            ),
            "413": answer(
                f"body larger than {max_body_bytes} bytes (serve.max_body_bytes)",
                ref(ErrorMessage),
            ),
            "415": answer("Content-Type is not application/json", ref(ErrorMessage)),
            "422": answer(
                "invalid body (malformed JSON included): every bad field with path and reason",
                ref(InvalidRequest),
            ),
            "500": answer("the model failed to predict", ref(ErrorMessage)),
            "503": answer("no model loaded yet", ref(ErrorMessage)),
        },
    }
    return operation, components
