"""The serving ceiling: a constant-answer raw ASGI app on the same uvicorn as `housing serve`.

    .venv/bin/python benchmarks/ceiling_app.py PORT

uvicorn with httptools and uvloop (what ``housing serve`` runs on), one worker, no access
log. Every POST reads its whole body and gets the same JSON answer, about the size of
``housing serve``'s: no parsing, no model, no log, no metrics. What a request costs the
server alone, so ``bench_serve.py`` can say how close ``housing serve`` comes to it.
"""

from __future__ import annotations

import sys
from typing import Any

ANSWER = (
    b'{"request_id":"00000000000000000000000000000000","model_name":"california-housing",'
    b'"model_version":"1","role":"champion","prediction":4.526,"prediction_usd":452600.0}'
)
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(ANSWER)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body as a real endpoint must
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
