"""California geography shared by the features and the evaluation: big cities, one coastline.

One definition of the coast for both users: ``features.SpatialFeatures`` derives a
distance-to-coast feature from it, and ``evaluate.slice_masks`` calls a block coastal
when ``distance_to_coast_km`` is at most ``evaluate.coastal_km``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# (name, latitude, longitude)
CITIES: list[tuple[str, float, float]] = [
    ("sf", 37.7749, -122.4194),
    ("la", 34.0522, -118.2437),
    ("sd", 32.7157, -117.1611),
    ("sj", 37.3382, -121.8863),
    ("sac", 38.5816, -121.4944),
]

# The California coast as a polyline, north (Oregon border) to south (Mexican border),
# (lat, lon). The model's features use great-circle distances to its vertices; the
# evaluation slices use the distance to its segments (``distance_to_coast_km``).
COAST: list[tuple[float, float]] = [
    (41.99, -124.21),
    (41.75, -124.20),
    (41.20, -124.12),
    (40.80, -124.20),
    (40.44, -124.40),
    (40.00, -124.02),
    (39.60, -123.79),
    (39.20, -123.77),
    (38.90, -123.70),
    (38.50, -123.20),
    (38.30, -123.05),
    (38.00, -122.95),
    (37.90, -122.65),
    (37.81, -122.48),
    (37.70, -122.50),
    (37.50, -122.48),
    (37.20, -122.40),
    (36.95, -122.05),
    (36.90, -121.90),
    (36.60, -121.90),
    (36.30, -121.90),
    (35.90, -121.47),
    (35.60, -121.15),
    (35.30, -120.88),
    (35.00, -120.63),
    (34.60, -120.64),
    (34.45, -120.45),
    (34.42, -119.80),
    (34.35, -119.40),
    (34.15, -119.20),
    (34.03, -118.80),
    (34.00, -118.50),
    (33.85, -118.40),
    (33.74, -118.29),
    (33.75, -118.10),
    (33.60, -117.90),
    (33.45, -117.70),
    (33.20, -117.38),
    (33.00, -117.28),
    (32.80, -117.26),
    (32.70, -117.20),
    (32.53, -117.12),
]

KM_PER_DEG_LAT = 111.2


def distance_to_coast_km(lat: Any, lon: Any) -> np.ndarray:
    """Distance in km from each point to the nearest segment of ``COAST``.

    Straight segments between the listed points, measured on a local flat-earth
    projection: accurate to a few km at this scale.
    """
    lat = np.asarray(lat, dtype=float)[:, None]
    lon = np.asarray(lon, dtype=float)[:, None]
    coast = np.asarray(COAST, dtype=float)
    kx = KM_PER_DEG_LAT * math.cos(math.radians(37.0))  # km per degree of longitude here
    px, py = lon * kx, lat * KM_PER_DEG_LAT
    ax, ay = coast[:-1, 1] * kx, coast[:-1, 0] * KM_PER_DEG_LAT
    bx, by = coast[1:, 1] * kx, coast[1:, 0] * KM_PER_DEG_LAT
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx**2 + dy**2), 0.0, 1.0)
    dist = np.hypot(px - (ax + t * dx), py - (ay + t * dy))
    return np.asarray(dist.min(axis=1))
