"""Request validation of ``/predict`` without a server: ranges, rules, batch limits, errors.

The ranges are the training range from the model's profile widened by 25% of its width on
each side, intersected with physical bounds; the boundaries (inclusive or exclusive, which
side wins) are what a client hits first, so each one is checked on both sides here. The
HTTP layer around it is covered in test_serving_app.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from housing_mlops import columns
from housing_mlops.serving import schemas
from housing_mlops.serving.schemas import RequestModels, build_request_models

FEATURES = list(columns.FEATURES)
HOUSE = schemas.EXAMPLE_HOUSE
DESCRIPTION = {name: bound.description for name, bound in schemas.PHYSICAL_BOUNDS.items()}

# A profile whose widened ranges fall on every side of the physical bounds:
#   MedInc      1..5      -> 0 (exactly the exclusive physical bound: stays exclusive) .. 6
#   HouseAge    4..52     -> -8 (below physics: >= 0 wins) .. 64
#   AveRooms    3..11     -> 1 .. 13 (inside physics: the profile's bounds, inclusive)
#   AveBedrms   1..3      -> 0.5 .. 3.5
#   Population  10..1010  -> -240 (below physics: > 0 wins) .. 1260
#   AveOccup    no min/max in the profile -> physics only
#   Latitude    33..41    -> 31 .. 43 (outside California on both sides: 32.5 .. 42.1 win)
#   Longitude   -123..-119 -> -124 .. -118 (inside California: the profile wins)
PROFILE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "MedInc": (1.0, 5.0),
    "HouseAge": (4.0, 52.0),
    "AveRooms": (3.0, 11.0),
    "AveBedrms": (1.0, 3.0),
    "Population": (10.0, 1010.0),
    "AveOccup": (None, None),
    "Latitude": (33.0, 41.0),
    "Longitude": (-123.0, -119.0),
}
# A house inside those ranges.
IN_PROFILE = {
    "MedInc": 3.0,
    "HouseAge": 30.0,
    "AveRooms": 6.0,
    "AveBedrms": 1.0,
    "Population": 500.0,
    "AveOccup": 3.0,
    "Latitude": 37.0,
    "Longitude": -121.0,
}


def profile(ranges: dict[str, tuple[float | None, float | None]]) -> dict[str, Any]:
    return {"columns": {name: {"min": lo, "max": hi} for name, (lo, hi) in ranges.items()}}


def problems(models: RequestModels, body: Any) -> list[dict[str, Any]]:
    """The 422 detail a client gets for ``body`` (empty when it is accepted)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        models.parse_body(raw)
    except ValidationError as exc:
        return schemas.format_errors(
            exc.errors(include_url=False),  # type: ignore[arg-type]
            models.max_batch_size,
            batch=exc.title == models.batch.__name__,
        )
    return []


def reasons(models: RequestModels, **changes: Any) -> dict[str, str]:
    """{field: reason} for a house with ``changes`` ({} when it is accepted).

    The house is the OpenAPI example, or one inside PROFILE_RANGES for models built from it.
    """
    base = HOUSE if models.ranges["MedInc"].le is None else IN_PROFILE
    return {e["field"]: e["msg"] for e in problems(models, {**base, **changes})}


def accepted(models: RequestModels, **changes: Any) -> bool:
    return reasons(models, **changes) == {}


# ----------------------------------------------------------------- physical bounds only
def test_without_a_profile_the_ranges_are_the_physical_bounds() -> None:
    models = build_request_models(None)
    shown = {name: r.as_dict() for name, r in models.ranges.items()}
    physical = {"source": "physical"}
    assert shown == {
        "MedInc": {**physical, "description": DESCRIPTION["MedInc"], "exclusive_minimum": 0.0},
        "HouseAge": {**physical, "description": DESCRIPTION["HouseAge"], "minimum": 0.0},
        "AveRooms": {**physical, "description": DESCRIPTION["AveRooms"], "exclusive_minimum": 0.0},
        "AveBedrms": {**physical, "description": DESCRIPTION["AveBedrms"], "minimum": 0.0},
        "Population": {
            **physical,
            "description": DESCRIPTION["Population"],
            "exclusive_minimum": 0.0,
        },
        "AveOccup": {**physical, "description": DESCRIPTION["AveOccup"], "exclusive_minimum": 0.0},
        "Latitude": {
            **physical,
            "description": DESCRIPTION["Latitude"],
            "minimum": 32.5,
            "maximum": 42.1,
        },
        "Longitude": {
            **physical,
            "description": DESCRIPTION["Longitude"],
            "minimum": -124.5,
            "maximum": -114.0,
        },
    }
    assert models.input_schema()["ranges"] == shown


@pytest.mark.parametrize("name", ["MedInc", "AveRooms", "Population", "AveOccup"])
def test_positive_quantities_reject_zero_and_accept_just_above(name: str) -> None:
    models = build_request_models(None)
    changes: dict[str, float] = {name: 0.0}
    if name == "AveRooms":
        changes["AveBedrms"] = 0.0  # so only the rooms bound is broken
    assert reasons(models, **changes) == {name: "Input should be greater than 0"}
    assert accepted(models, **{name: 1e-9, "AveBedrms": 0.0})


@pytest.mark.parametrize("name", ["HouseAge", "AveBedrms"])
def test_non_negative_quantities_accept_zero_and_reject_below(name: str) -> None:
    models = build_request_models(None)
    assert accepted(models, **{name: 0.0})
    assert reasons(models, **{name: -1e-9}) == {name: "Input should be greater than or equal to 0"}


@pytest.mark.parametrize(
    ("name", "low", "high"), [("Latitude", 32.5, 42.1), ("Longitude", -124.5, -114.0)]
)
def test_coordinates_must_lie_in_californias_box_edges_included(
    name: str, low: float, high: float
) -> None:
    models = build_request_models(None)
    assert accepted(models, **{name: low}) and accepted(models, **{name: high})
    assert reasons(models, **{name: low - 1e-6}) == {
        name: f"Input should be greater than or equal to {low:g}"
    }
    assert reasons(models, **{name: high + 1e-6}) == {
        name: f"Input should be less than or equal to {high:g}"
    }


# ------------------------------------------------------------- profile within physics
def test_profile_ranges_are_widened_by_a_quarter_and_cut_by_physics() -> None:
    models = build_request_models(profile(PROFILE_RANGES))
    bounds = {
        name: {k: v for k, v in r.as_dict().items() if k != "description"}
        for name, r in models.ranges.items()
    }
    both = "profile+physical"
    assert bounds == {
        "MedInc": {"source": both, "exclusive_minimum": 0.0, "maximum": 6.0},
        "HouseAge": {"source": both, "minimum": 0.0, "maximum": 64.0},
        "AveRooms": {"source": both, "minimum": 1.0, "maximum": 13.0},
        "AveBedrms": {"source": both, "minimum": 0.5, "maximum": 3.5},
        "Population": {"source": both, "exclusive_minimum": 0.0, "maximum": 1260.0},
        "AveOccup": {"source": "physical", "exclusive_minimum": 0.0},
        "Latitude": {"source": both, "minimum": 32.5, "maximum": 42.1},
        "Longitude": {"source": both, "minimum": -124.0, "maximum": -118.0},
    }


@pytest.mark.parametrize(
    ("name", "inside", "outside", "reason"),
    [
        # The widened lower edge equals the exclusive physical bound: it stays exclusive.
        ("MedInc", 1e-9, 0.0, "Input should be greater than 0"),
        ("MedInc", 6.0, 6.0001, "Input should be less than or equal to 6"),
        ("HouseAge", 0.0, -0.5, "Input should be greater than or equal to 0"),
        ("HouseAge", 64.0, 64.0001, "Input should be less than or equal to 64"),
        ("AveRooms", 1.0, 0.9999, "Input should be greater than or equal to 1"),
        ("AveRooms", 13.0, 13.0001, "Input should be less than or equal to 13"),
        ("Population", 1e-9, 0.0, "Input should be greater than 0"),
        ("Population", 1260.0, 1260.0001, "Input should be less than or equal to 1260"),
        ("AveOccup", 1e6, 0.0, "Input should be greater than 0"),
        ("Latitude", 32.5, 32.4999, "Input should be greater than or equal to 32.5"),
        ("Latitude", 42.1, 42.1001, "Input should be less than or equal to 42.1"),
        ("Longitude", -124.0, -124.0001, "Input should be greater than or equal to -124"),
        ("Longitude", -118.0, -117.9999, "Input should be less than or equal to -118"),
    ],
)
def test_each_profile_bound_is_enforced_on_its_edge(
    name: str, inside: float, outside: float, reason: str
) -> None:
    models = build_request_models(profile(PROFILE_RANGES))
    assert accepted(models, **{name: inside})
    assert reasons(models, **{name: outside}) == {name: reason}


def test_bounds_are_rounded_outwards_to_four_decimals() -> None:
    """A constant training column (width 0): its value rounded down and up, still allowed."""
    models = build_request_models(profile({"AveOccup": (2.55555, 2.55555)}))
    occup = models.ranges["AveOccup"].as_dict()
    assert (occup["minimum"], occup["maximum"]) == (2.5555, 2.5556)
    assert accepted(models, AveOccup=2.55555)
    assert not accepted(models, AveOccup=2.5554) and not accepted(models, AveOccup=2.5557)


@pytest.mark.parametrize(
    "column",
    [
        {"min": float("nan"), "max": 5.0},
        {"min": 1.0, "max": float("inf")},
        {"min": None, "max": 5.0},
        {"min": 1.0, "max": None},
        {"min": 1.0},
    ],
)
def test_an_incomplete_or_non_finite_profile_column_falls_back_to_physics(
    column: dict[str, Any],
) -> None:
    models = build_request_models({"columns": {"MedInc": column}})
    assert models.ranges["MedInc"].as_dict() == {
        "description": DESCRIPTION["MedInc"],
        "source": "physical",
        "exclusive_minimum": 0.0,
    }
    assert accepted(models, MedInc=1e6)


# ------------------------------------------------------------------------ field rules
def test_bedrooms_may_equal_rooms_but_not_exceed_them() -> None:
    models = build_request_models(None)
    assert accepted(models, AveRooms=2.0, AveBedrms=2.0)
    assert reasons(models, AveRooms=2.0, AveBedrms=2.5) == {
        "AveBedrms": "AveBedrms (2.5) must not be greater than AveRooms (2)"
    }
    # An invalid AveRooms is reported once, not compared with.
    assert reasons(models, AveRooms="2", AveBedrms=2.5) == {
        "AveRooms": "Input should be a valid number"
    }


def test_strings_and_non_finite_numbers_are_rejected() -> None:
    models = build_request_models(None)
    assert reasons(models, MedInc="3.5") == {"MedInc": "Input should be a valid number"}
    body = json.dumps(HOUSE).replace(str(HOUSE["MedInc"]), "NaN").encode()
    assert [(e["field"], e["msg"]) for e in problems(models, body)] == [
        ("MedInc", "Input should be a finite number")
    ]


def test_a_single_house_and_a_batch_are_told_apart() -> None:
    models = build_request_models(None)
    houses, single = models.parse_body(json.dumps(HOUSE).encode())
    assert single is True and [h.model_dump() for h in houses] == [HOUSE]
    other = {**HOUSE, "MedInc": 2.0}
    body = json.dumps({"instances": [HOUSE, other]}).encode()
    houses, single = models.parse_body(body)
    assert single is False and [h.model_dump() for h in houses] == [HOUSE, other]


# ----------------------------------------------------------------------- batch limits
def test_a_batch_holds_one_to_max_batch_size_rows() -> None:
    models = build_request_models(None, max_batch_size=3)
    assert problems(models, {"instances": [HOUSE] * 3}) == []
    assert problems(models, {"instances": [HOUSE]}) == []
    assert problems(models, {"instances": [HOUSE] * 4}) == [
        {
            "loc": ["body", "instances"],
            "field": "instances",
            "msg": "batch has 4 rows; the limit is 3 rows per request (serve.max_batch_size)",
            "type": "too_long",
        }
    ]
    (empty,) = problems(models, {"instances": []})
    assert empty["field"] == "instances" and "at least 1 item" in empty["msg"]
    assert "a batch {'instances': [...]} holds 1 to 3 rows" in models.input_schema()["rules"]


# -------------------------------------------------------------- error texts and labels
@pytest.mark.parametrize(
    ("body", "detail", "label"),
    [
        (
            {**HOUSE, "MedInc": -1.0},
            [("MedInc", ["body", "MedInc"], "Input should be greater than 0")],
            "MedInc",
        ),
        (
            {"instances": [HOUSE, {**HOUSE, "Latitude": 50.0}]},
            [
                (
                    "instances[1].Latitude",
                    ["body", "instances", 1, "Latitude"],
                    "Input should be less than or equal to 42.1",
                )
            ],
            "Latitude",
        ),
        (
            {**HOUSE, "Bogus": 1},
            [("Bogus", ["body", "Bogus"], f"unknown field; expected only {', '.join(FEATURES)}")],
            "<unknown>",
        ),
        (
            {"instances": 5},
            [("instances", ["body", "instances"], "Input should be a valid array")],
            "instances",
        ),
        (
            {"instances": [HOUSE], "x": 1},
            [("x", ["body", "x"], "unknown field; a batch body holds only 'instances'")],
            "<unknown>",
        ),
        (
            {"instances": [1]},
            [("instances[0]", ["body", "instances", 0], "Input should be an object")],
            "instances",
        ),
        (
            [HOUSE],
            [
                (
                    "<body>",
                    ["body"],
                    "body must be a JSON object: one house, or {'instances': [...]}",
                )
            ],
            "<body>",
        ),
        (
            b'{"MedInc": 1',
            [
                (
                    "<body>",
                    ["body"],
                    "body is not valid JSON: EOF while parsing an object at line 1 column 12",
                )
            ],
            "<body>",
        ),
    ],
)
def test_each_error_names_its_field_reason_and_metric_label(
    body: Any, detail: list[tuple[str, list[Any], str]], label: str
) -> None:
    errors = problems(build_request_models(None), body)
    assert [(e["field"], e["loc"], e["msg"]) for e in errors] == detail
    assert [schemas.metric_field(e) for e in errors] == [label]


def test_the_openapi_operation_requires_a_body_within_the_enforced_ranges() -> None:
    models = build_request_models(profile(PROFILE_RANGES), max_batch_size=7)
    operation, components = schemas.predict_openapi(models, max_body_bytes=1000)
    assert operation["requestBody"]["required"] is True
    house = components["House"]["properties"]
    assert house["Longitude"]["minimum"] == -124.0 and house["Longitude"]["maximum"] == -118.0
    assert house["MedInc"]["exclusiveMinimum"] == 0.0
    assert components["Batch"]["properties"]["instances"]["maxItems"] == 7


def test_one_pass_validation_gives_the_two_step_house_in_feature_order() -> None:
    """``parse_body`` validates a single house straight from the bytes: the house must be
    the one the parse-then-validate path gives, its values in ``FEATURES`` order whatever
    the JSON key order (the service builds the model's input row from that order)."""
    from pydantic_core import from_json

    from housing_mlops.columns import FEATURES

    models = build_request_models(None)
    shuffled = dict(reversed(list({**HOUSE, "HouseAge": 41, "Population": 1e3}.items())))
    body = json.dumps(shuffled).encode()
    (house,), single = models.parse_body(body)
    reference = models.house.model_validate(from_json(body))
    assert single is True
    assert list(house.__dict__) == list(FEATURES)
    assert tuple(house.__dict__.values()) == tuple(reference.__dict__.values())
    assert all(type(v) is float for v in house.__dict__.values())
