"""`housing serve` with parts of its work switched off: what the service costs without them.

    .venv/bin/python benchmarks/floor_app.py [--bare] -- --config C serve --port PORT

For ``bench_serve.py --only floor``; not a way to serve. The micro-batcher answers every row
with 0.0 instead of predicting it (no feature transform, no trees); with ``--bare`` the
request log and the Prometheus metrics are switched off too (their per-request calls become
no-ops). Everything else is `housing serve`'s own code, run by the ``housing`` command as
usual: reading and validating the body, the micro-batcher's futures, the answer and its
headers, uvicorn. Driven beside the ceiling, it shows how close the service can come to the
ceiling whatever its model costs. The replacements are made here, on the classes, before the
command starts: the package has no switch for them, and should not have one.
"""

from __future__ import annotations

import sys
from typing import Any


def switch_off(bare: bool) -> None:
    import numpy as np

    from housing_mlops.serving import batching

    def zeros(self: Any, model: Any, X: np.ndarray, batch: Any) -> bool:
        batching._resolve(batch, np.zeros(X.shape[0]), model)
        return True

    # Every batch of at most serve.microbatch_inline_rows rows (all of them under the
    # benchmark's single-row load) goes through here first.
    batching.MicroBatcher._start_off_loop = zeros  # type: ignore[method-assign]
    if bare:
        from housing_mlops.serving.metrics import ServingMetrics
        from housing_mlops.store.writer import RequestLogWriter

        RequestLogWriter.submit_values = lambda self, values: len(values)  # type: ignore[method-assign]
        ServingMetrics.observe_http = lambda self, *a, **k: None  # type: ignore[method-assign]
        ServingMetrics.observe_predictions = lambda self, *a, **k: None  # type: ignore[method-assign]


def main() -> None:
    args = sys.argv[1:]
    bare = "--bare" in args[: args.index("--")] if "--" in args else False
    rest = args[args.index("--") + 1 :] if "--" in args else args
    switch_off(bare)
    from housing_mlops.cli import main as housing

    sys.argv = ["housing", *rest]
    housing()


if __name__ == "__main__":
    main()
