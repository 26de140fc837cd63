"""The California Housing columns every stage agrees on: scikit-learn's names, in its order.

The one definition: the data frame, the feature transformer, the request schema and log,
drift and the traffic generator all import it from here (no heavy imports in this module).
"""

from __future__ import annotations

FEATURES: list[str] = [
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
]
TARGET = "MedHouseVal"
