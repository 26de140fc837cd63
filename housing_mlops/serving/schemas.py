"""Request validation for ``/predict``: pydantic v2 models built from the training data.

Every request is checked by pydantic (in Rust, straight from the JSON bytes):

- the 8 raw features, all required, JSON numbers only (strict: ``"1.5"`` and ``true`` are
  rejected), finite (NaN and infinity rejected), unknown fields rejected;
- each feature inside an allowed range (``feature_ranges``): the training data's range
  from the model's reference profile widened by ``RANGE_MARGIN`` of its width on each side,
  intersected with hard physical bounds (``PHYSICAL_BOUNDS``: latitude and longitude inside
  California's bounding box, positive income, rooms, population and occupancy, ...);
- ``AveBedrms`` not above ``AveRooms``;
- a batch ``{"instances": [...]}`` holds 1 to ``serve.max_batch_size`` rows.

The ranges depend on the model (its profile), so each loaded model carries its own
request models (``RequestModels``); ``/model/info`` shows them, and the OpenAPI schema of
``POST /predict`` is generated from them (``predict_openapi``), with the response bodies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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

# Each side of the training range is widened by this share of its width: requests a bit
# outside what the model saw are still answered (and show up in drift), absurd ones are not.
RANGE_MARGIN = 0.25

# California's bounding box (rounded outwards): latitude 32.53..42.01, longitude
# -124.41..-114.13.
CA_LATITUDE = (32.5, 42.1)
CA_LONGITUDE = (-124.5, -114.0)


@dataclass(frozen=True)
class PhysicalBound:
    lower: float | None
    lower_inclusive: bool
    upper: float | None
    description: str


PHYSICAL_BOUNDS: dict[str, PhysicalBound] = {
    "MedInc": PhysicalBound(0.0, False, None, "median income of the block, in $10,000 (> 0)"),
    "HouseAge": PhysicalBound(0.0, True, None, "median house age in years (>= 0)"),
    "AveRooms": PhysicalBound(0.0, False, None, "average rooms per household (> 0)"),
    "AveBedrms": PhysicalBound(
        0.0, True, None, "average bedrooms per household (>= 0, not above AveRooms)"
    ),
    "Population": PhysicalBound(0.0, False, None, "block population (> 0)"),
    "AveOccup": PhysicalBound(0.0, False, None, "average household members (> 0)"),
    "Latitude": PhysicalBound(
        CA_LATITUDE[0], True, CA_LATITUDE[1], "degrees north, inside California"
    ),
    "Longitude": PhysicalBound(
        CA_LONGITUDE[0], True, CA_LONGITUDE[1], "degrees east, inside California"
    ),
}


@dataclass(frozen=True)
class FeatureRange:
    """The allowed interval of one feature: ``gt``/``ge`` below, ``le`` above (None = open)."""

    name: str
    description: str
    gt: float | None
    ge: float | None
    le: float | None
    source: str  # "profile+physical" or "physical"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description, "source": self.source}
        if self.gt is not None:
            out["exclusive_minimum"] = self.gt
        if self.ge is not None:
            out["minimum"] = self.ge
        if self.le is not None:
            out["maximum"] = self.le
        return out


def feature_ranges(profile: dict[str, Any] | None) -> dict[str, FeatureRange]:
    """Allowed ranges: the profile's min/max widened by ``RANGE_MARGIN``, within physics."""
    columns = (profile or {}).get("columns", {})
    ranges: dict[str, FeatureRange] = {}
    for name in FEATURES:
        phys = PHYSICAL_BOUNDS[name]
        lo: float | None = phys.lower
        lo_inclusive = phys.lower_inclusive
        hi: float | None = phys.upper
        source = "physical"
        col = columns.get(name) or {}
        cmin, cmax = col.get("min"), col.get("max")
        if cmin is not None and cmax is not None and math.isfinite(cmin) and math.isfinite(cmax):
            margin = RANGE_MARGIN * max(float(cmax) - float(cmin), 0.0)
            plo, phi = float(cmin) - margin, float(cmax) + margin
            if lo is None or plo > lo:
                lo, lo_inclusive = _round_down(plo), True
            if hi is None or phi < hi:
                hi = _round_up(phi)
            source = "profile+physical"
        ranges[name] = FeatureRange(
            name=name,
            description=phys.description,
            gt=None if lo is None or lo_inclusive else lo,
            ge=lo if lo is not None and lo_inclusive else None,
            le=hi,
            source=source,
        )
    return ranges


def _round_down(x: float) -> float:
    # Round to 4 significant decimals so the documented bound is readable and still
    # at least as wide as computed.
    return math.floor(x * 1e4) / 1e4


def _round_up(x: float) -> float:
    return math.ceil(x * 1e4) / 1e4


def _bedrooms_not_above_rooms(cls: type, value: float, info: ValidationInfo) -> float:
    rooms = info.data.get("AveRooms")
    if rooms is not None and value > rooms:
        raise ValueError(f"AveBedrms ({value:g}) must not be greater than AveRooms ({rooms:g})")
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


def format_errors(errors: list[dict[str, Any]], max_batch_size: int) -> list[dict[str, Any]]:
    """Pydantic errors as the 422 body lists them: path, field, reason, type."""
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
    prediction: float = Field(description="median house value in $100k")
    prediction_usd: float = Field(description="median house value in US dollars")


class BatchPrediction(BaseModel):
    """The answer for a batch {"instances": [...]}: one prediction per row, in order."""

    model_config = _DOCUMENTED
    request_id: str = Field(description="this request's id (also the X-Request-ID header)")
    model_name: str = Field(description="registered model name")
    model_version: str = Field(description="registry version that made the predictions")
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

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "description": description,
            "headers": _REQUEST_ID_HEADER,
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
