"""The rules every house must satisfy before a model scores it: one definition, two enforcers.

``/predict`` enforces them per JSON request with pydantic (``serving.schemas`` builds its
models from ``feature_ranges``); ``housing predict`` enforces them per column batch with
numpy (``invalid_rows``), on this machine or on Spark executors. Both read the ranges,
bounds and the bedrooms rule from here, and a test checks that they reject the same rows
for the same fields.

- each feature inside an allowed range (``feature_ranges``): the training data's range
  from the model's reference profile widened by ``RANGE_MARGIN`` of its width on each side,
  intersected with hard physical bounds (``PHYSICAL_BOUNDS``: latitude and longitude inside
  California's bounding box, positive income, rooms, population and occupancy, ...);
- finite numbers (NaN and infinity rejected; a missing value too);
- ``AveBedrms`` not above ``AveRooms`` (judged once both are valid on their own).

Only numpy here: this module runs inside Spark's Python workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def bedrooms_reason(bedrooms: float, rooms: float) -> str:
    """The reason given when ``AveBedrms`` is above ``AveRooms`` (both enforcers say it)."""
    return f"AveBedrms ({bedrooms:g}) must not be greater than AveRooms ({rooms:g})"


# pydantic's own words for the same failures, so a file's rejects read like a 422 body.
FINITE_REASON = "Input should be a finite number"
MISSING_REASON = "Input should be a valid number (the value is missing)"


def _bound(value: float) -> str:
    # As pydantic prints a bound: 0 and 42.1, not 0.0 and 42.100000.
    return str(int(value)) if value == int(value) and abs(value) < 1e16 else repr(value)


@dataclass(frozen=True)
class Rejection:
    """One rejected row: its 0-based position in the batch and every (field, reason)."""

    row: int
    errors: tuple[tuple[str, str], ...]

    def text(self) -> str:
        return "; ".join(f"{field}: {reason}" for field, reason in self.errors)


def invalid_rows(
    X: np.ndarray, ranges: Mapping[str, FeatureRange], missing: np.ndarray | None = None
) -> tuple[np.ndarray, list[Rejection]]:
    """The rows of ``X`` (n x 8 float64, columns in ``FEATURES`` order) that break a rule.

    Returns a boolean mask (True = rejected) and one ``Rejection`` per rejected row, in
    row order. ``missing`` (n x 8 bool) marks null cells (they are NaN in ``X``). The same
    rules as the pydantic models of ``/predict``: the bedrooms rule is judged only when
    both AveBedrms and AveRooms passed their own checks, as pydantic's field validator.
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    failed: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (mask, reason per row)
    for j, name in enumerate(FEATURES):
        col = X[:, j]
        reason = np.full(n, "", dtype=object)
        bad = np.zeros(n, dtype=bool)
        r = ranges[name]
        # Later assignments win where several apply; each row gets the first failing check
        # in pydantic's order (type/finite, then lower bound, then upper bound).
        if r.le is not None:
            m = col > r.le
            reason[m] = f"Input should be less than or equal to {_bound(r.le)}"
            bad |= m
        if r.ge is not None:
            m = col < r.ge
            reason[m] = f"Input should be greater than or equal to {_bound(r.ge)}"
            bad |= m
        if r.gt is not None:
            m = col <= r.gt
            reason[m] = f"Input should be greater than {_bound(r.gt)}"
            bad |= m
        m = ~np.isfinite(col)
        reason[m] = FINITE_REASON
        bad |= m
        if missing is not None:
            m = missing[:, j]
            reason[m] = MISSING_REASON
            bad |= m
        failed[name] = (bad, reason)
    rooms_j, beds_j = FEATURES.index("AveRooms"), FEATURES.index("AveBedrms")
    both_ok = ~failed["AveRooms"][0] & ~failed["AveBedrms"][0]
    above = both_ok & (X[:, beds_j] > X[:, rooms_j])
    if above.any():
        beds_bad, beds_reason = failed["AveBedrms"]
        for i in np.flatnonzero(above):
            beds_reason[i] = bedrooms_reason(float(X[i, beds_j]), float(X[i, rooms_j]))
        failed["AveBedrms"] = (beds_bad | above, beds_reason)
    mask = np.zeros(n, dtype=bool)
    for bad, _ in failed.values():
        mask |= bad
    rejections = [
        Rejection(
            row=int(i),
            errors=tuple(
                (name, str(reason[i])) for name, (bad, reason) in failed.items() if bad[i]
            ),
        )
        for i in np.flatnonzero(mask)
    ]
    return mask, rejections
