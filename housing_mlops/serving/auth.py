"""The Bearer token of the service's write endpoints (POST /model/reload, POST /feedback).

Each endpoint reads its token from an environment variable named in the config; an unset or
empty variable turns the endpoint off (404), so a service started without one exposes no
write endpoint at all.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


def check_bearer(request: Request, env: str, *, endpoint: str, kind: str) -> Response | None:
    """None when the request carries the token in ``$env``; else the answer to send: 404
    (``endpoint`` over HTTP is off), 401 (no Bearer token) or 403 (a wrong ``kind`` token)."""
    token = os.environ.get(env, "")
    if not token:
        off = f"{endpoint} over HTTP is off: set {env} to enable it"
        return json_response(404, {"detail": off})
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return json_response(
            401,
            {"detail": "missing Bearer token (Authorization: Bearer <token>)"},
            {"www-authenticate": "Bearer"},
        )
    # Constant-time: the comparison must not tell how much of a guess was right.
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return json_response(403, {"detail": f"wrong {kind} token"})
    return None
