"""Canary routing: which model answers a request, from a stable hash of a key.

The key is the client's ``serve.canary_key_header`` value (default ``X-Client-Key``), else
the request id. Its sha256 maps to a point in [0, 1); the challenger answers when the
point is below ``serve.canary_share``. sha256 (not Python's ``hash``, salted per process)
gives every worker and replica the same answer, so a client key sticks to one model, and
raising the share only moves keys from the champion to the challenger, never back.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def canary_point(key: str) -> float:
    """The key's place in [0, 1): the first 8 bytes of its sha256, big-endian."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def routes_to_challenger(key: str, share: float) -> bool:
    """True when the request keyed by ``key`` goes to the challenger at ``share``."""
    return canary_point(key) < share
