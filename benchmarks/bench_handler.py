"""The service's own CPU per ``/predict`` request, without the HTTP server.

    .venv/bin/python benchmarks/bench_handler.py [--config CONFIG] [--requests 40000]

``housing serve``'s app (``create_app``: the champion of the config's registry, its
request log, metrics and micro-batcher, started as the server starts it) is called
in-process the way uvicorn calls it, from 16 concurrent clients each sending the
single-row example house one request after the other, on uvloop. No sockets and no HTTP
parsing: what is left is exactly the service's work (validation, the micro-batch and the
model, the answer, the request log, the metrics). It prints the process CPU time per
request (every thread: event loop, predictor, request-log writer), the event loop
thread's share and the mean rows per micro-batch. CPU time is steadier than wall time on
a shared machine; compare runs made back to back. A lever for ``housing serve`` shows
here first, without the server's noise (``bench_serve.py`` then says what it gives over
HTTP). The request log goes to a temporary SQLite file, not the config's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from housing_mlops.serving.schemas import EXAMPLE_HOUSE


async def _drive(app: Any, requests: int, clients: int) -> None:
    body = json.dumps(EXAMPLE_HOUSE).encode()
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    left = requests

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def one_request() -> None:
        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "headers": headers,
            "query_string": b"",
        }
        await app(scope, receive, send)
        if statuses != [200]:
            raise RuntimeError(f"/predict answered {statuses}")

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one_request()

    await asyncio.gather(*(client() for _ in range(clients)))


async def _run(config: Path, requests: int, clients: int) -> dict[str, Any]:
    from housing_mlops.config import load_config
    from housing_mlops.serving.app import create_app

    settings = load_config(config)
    app = create_app(settings, wait_for_model=True)
    service = app.service
    await service.startup(wait_for_model=True)
    try:
        deadline = time.time() + 300
        while service.holder.model is not None and service.holder.model.trees_building:
            if time.time() > deadline:
                break
            await asyncio.sleep(0.2)
        model = service.holder.model
        trees = model.info().get("trees") if model is not None else None
        await _drive(app, min(2000, requests), clients)  # warm-up
        batches0, rows0 = service.batcher.batches, service.batcher.rows
        cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        await _drive(app, requests, clients)
        wall1, loop1 = time.perf_counter(), time.thread_time()
        batches = service.batcher.batches - batches0
        rows = service.batcher.rows - rows0
    finally:
        # Shutting down writes the queued log rows: their CPU counts (the writer's work).
        await service.shutdown()
    cpu1 = time.process_time()
    return {
        "requests": requests,
        "clients": clients,
        "trees": trees,
        "cpu_us_per_request": 1e6 * (cpu1 - cpu0) / requests,
        "loop_cpu_us_per_request": 1e6 * (loop1 - loop0) / requests,
        "wall_requests_per_s": requests / (wall1 - wall0),
        "rows_per_batch": rows / batches if batches else None,
        "load1": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HOUSING_REQUEST_LOG"] = str(Path(tmp) / "requests.db")
        os.environ["HOUSING_SPOOL_DIR"] = str(Path(tmp) / "spool")
        result = uvloop.run(_run(args.config, args.requests, args.clients))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"bench-handler: cpu_us={result['cpu_us_per_request']:.1f} "
            f"loop_cpu_us={result['loop_cpu_us_per_request']:.1f} "
            f"rows_per_batch={result['rows_per_batch']:.2f} "
            f"wall_rps={result['wall_requests_per_s']:.0f} trees={result['trees']} "
            f"requests={result['requests']} clients={result['clients']} "
            f"load1={result['load1']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
