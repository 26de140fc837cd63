"""Send rows of the test split to a running prediction service, optionally shifted.

For demos, drift checks and load tests::

    python -m housing_mlops.traffic --url http://127.0.0.1:8000 --rows 500 --rate 100 \\
        --shift MedInc=1.2

Rows are drawn from the processed test split (``housing featurize``) in a shuffled order
(cycling when more rows are asked for than the split holds); ``--shift FEATURE=FACTOR``
multiplies a feature (repeatable), which is how the drift demo fakes a changed
population. ``--rate`` is in rows per second (0: as fast as the server answers), spread
over ``--concurrency`` connections; ``--batch-size`` > 1 sends ``{"instances": [...]}``.
Rows the service rejects (a shift can push values out of the accepted ranges) are
counted by status, not retried. Prints a summary (or ``--json``); exit 0 when at least
one row was answered, 1 when none was (or when ``--feedback-share`` was asked for and no
label reached the service), 2 for bad options.

Ground truth: ``--feedback-share F`` posts the true value (the split's ``MedHouseVal``)
of a share F of the answered rows to ``POST /feedback``, keyed by the request id the
service returned (and the row's position in a batch), ``--feedback-delay`` seconds after
the last row was sent (the service writes its request log every second; a label that
arrives before its row is counted ``unknown``), in batches, with the Bearer token from
``--feedback-token`` or ``HOUSING_FEEDBACK_TOKEN``. The summary says how many labels the
service applied, did not know (``unknown``) or already had (``duplicate``).

It uses httpx, the project's one HTTP client library, directly rather than through
``housing_mlops.download``: it is an async load generator for our own service, not a
download, and must not retry (a retry would distort the load it measures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from housing_mlops.columns import FEATURES
from housing_mlops.errors import HousingError, UsageError


def parse_shift(values: Sequence[str] | None) -> dict[str, float]:
    """``["MedInc=1.2"]`` -> ``{"MedInc": 1.2}``; UsageError for unknown features or factors."""
    shift: dict[str, float] = {}
    for item in values or []:
        name, sep, factor = item.partition("=")
        name = name.strip()
        if not sep or name not in FEATURES:
            raise UsageError(
                f"--shift {item!r}: use FEATURE=FACTOR with FEATURE one of {', '.join(FEATURES)}"
            )
        try:
            value = float(factor)
        except ValueError:
            raise UsageError(
                f"--shift {item!r}: FACTOR must be a number, e.g. MedInc=1.2"
            ) from None
        if not np.isfinite(value):
            raise UsageError(f"--shift {item!r}: FACTOR must be finite")
        shift[name] = value
    return shift


def _order(size: int, n: int, seed: int) -> np.ndarray:
    """Which source rows to send, in order: shuffled, cycling when ``n`` > ``size``."""
    rng = np.random.default_rng(seed)
    reps = -(-n // size)
    return np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]


def prepare_rows(
    frame: Any, n: int, shift: Mapping[str, float] | None = None, seed: int = 0
) -> list[dict[str, float]]:
    """``n`` request bodies from ``frame`` (shuffled, cycling), with features multiplied."""
    if n < 0:
        raise UsageError("--rows must be >= 0")
    values = np.asarray(frame[list(FEATURES)], dtype=float)
    if len(values) == 0:
        raise UsageError("no rows to send: the source frame is empty")
    if n == 0:
        return []
    chosen = values[_order(len(values), n, seed)]
    for name, factor in (shift or {}).items():
        chosen[:, FEATURES.index(name)] *= factor
    return [dict(zip(FEATURES, map(float, row), strict=True)) for row in chosen]


def prepare_targets(target: Any, n: int, seed: int = 0) -> list[float]:
    """The true values of the rows ``prepare_rows`` gives for the same ``n`` and ``seed``."""
    values = np.asarray(target, dtype=float)
    if n <= 0 or len(values) == 0:
        return []
    return [float(v) for v in values[_order(len(values), n, seed)]]


def choose_feedback(answered: int, share: float, seed: int = 0) -> list[int]:
    """Positions (sorted) of ``round(share * answered)`` answered rows, a uniform choice."""
    if not 0.0 <= share <= 1.0:
        raise UsageError("--feedback-share must be between 0 and 1")
    k = int(round(share * answered))
    rng = np.random.default_rng(seed + 1_000_003)
    return sorted(int(i) for i in rng.choice(answered, size=k, replace=False)) if k else []


async def _send_all(
    url: str,
    rows: list[dict[str, float]],
    rate: float,
    batch_size: int,
    concurrency: int,
    timeout: float,
    transport: Any = None,
) -> dict[str, Any]:
    import httpx

    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    statuses: Counter[str] = Counter()
    row_statuses: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    # The request id of each answered batch (None until answered with 200).
    request_ids: list[str | None] = [None] * len(batches)
    latencies: list[float] = []
    failures: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)
    endpoint = url.rstrip("/") + "/predict"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as client:

        async def send(number: int, batch: list[dict[str, float]]) -> None:
            body: Any = batch[0] if batch_size == 1 else {"instances": batch}
            start = time.perf_counter()
            try:
                response = await client.post(endpoint, json=body)
            except httpx.HTTPError as exc:
                statuses["error"] += 1
                row_statuses["error"] += len(batch)
                message = f"{type(exc).__name__}: {exc}"
                if len(failures) < 5 and message not in failures:
                    failures.append(message)
            else:
                latencies.append((time.perf_counter() - start) * 1000.0)
                statuses[str(response.status_code)] += 1
                row_statuses[str(response.status_code)] += len(batch)
                if response.status_code == 200:
                    request_ids[number] = _request_id(response)
                    roles[response.headers.get("x-model-role", "champion")] += len(batch)
            finally:
                semaphore.release()

        tasks = []
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            if rate > 0:
                delay = t0 + i * batch_size / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await semaphore.acquire()
            tasks.append(asyncio.create_task(send(i, batch)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0

    lat = np.asarray(latencies)
    return {
        "url": endpoint,
        "rows": len(rows),
        "requests": len(batches),
        "ok_rows": row_statuses.get("200", 0),
        "status": dict(sorted(statuses.items())),
        "row_status": dict(sorted(row_statuses.items())),
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(len(rows) / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": (
            {
                "p50": round(float(np.percentile(lat, 50)), 2),
                "p99": round(float(np.percentile(lat, 99)), 2),
            }
            if lat.size
            else {}
        ),
        "failures": failures,
        "rows_by_role": dict(sorted(roles.items())),
        # (request id, row index, position in ``rows``) of every answered row.
        "answered": [
            (rid, j, number * batch_size + j)
            for number, rid in enumerate(request_ids)
            if rid is not None
            for j in range(len(batches[number]))
        ],
    }


def _request_id(response: Any) -> str | None:
    """The id the service gave the request: in the JSON body, else the X-Request-ID header."""
    try:
        body = response.json()
    except ValueError:
        body = None
    rid = body.get("request_id") if isinstance(body, dict) else None
    return str(rid) if rid else response.headers.get("x-request-id")


async def _post_feedback(
    url: str,
    labels: list[dict[str, Any]],
    token: str,
    batch_size: int,
    timeout: float,
    transport: Any = None,
) -> dict[str, Any]:
    import httpx

    endpoint = url.rstrip("/") + "/feedback"
    counts: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        for start in range(0, len(labels), batch_size):
            chunk = labels[start : start + batch_size]
            try:
                response = await client.post(endpoint, json=chunk, headers=headers)
            except httpx.HTTPError as exc:
                statuses["error"] += 1
                message = f"{type(exc).__name__}: {exc}"
            else:
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    body = response.json()
                    for key in ("applied", "unknown", "duplicate"):
                        counts[key] += int(body.get(key, 0))
                    continue
                message = f"HTTP {response.status_code}: {response.text[:200]}"
            if len(failures) < 5 and message not in failures:
                failures.append(message)
    return {
        "url": endpoint,
        "labels": len(labels),
        "applied": counts["applied"],
        "unknown": counts["unknown"],
        "duplicate": counts["duplicate"],
        "status": dict(sorted(statuses.items())),
        "failures": failures,
    }


def send_feedback(
    url: str,
    summary: dict[str, Any],
    targets: Sequence[float],
    share: float,
    token: str,
    delay_s: float = 2.0,
    batch_size: int = 1000,
    seed: int = 0,
    timeout: float = 10.0,
    transport: Any = None,
) -> dict[str, Any]:
    """POST the true value of a ``share`` of the rows ``send_rows`` got answers for.

    ``targets`` are the true values of the rows sent, in the same order
    (``prepare_targets``). Waits ``delay_s`` first, so the service has logged the rows;
    sends ``batch_size`` labels per request. Returns the counts the service reported.
    """
    if delay_s < 0:
        raise UsageError("--feedback-delay must be >= 0")
    if batch_size < 1:
        raise UsageError("the feedback batch size must be >= 1")
    if not token:
        raise UsageError(
            "--feedback-share needs the service's feedback token: set "
            "HOUSING_FEEDBACK_TOKEN or pass --feedback-token"
        )
    answered = summary["answered"]
    labels = [
        {"request_id": rid, "row_index": j, "actual": float(targets[position])}
        for rid, j, position in (answered[i] for i in choose_feedback(len(answered), share, seed))
    ]
    if delay_s:
        time.sleep(delay_s)
    return asyncio.run(_post_feedback(url, labels, token, batch_size, timeout, transport))


def send_rows(
    url: str,
    rows: list[dict[str, float]],
    rate: float = 100.0,
    batch_size: int = 1,
    concurrency: int = 8,
    timeout: float = 10.0,
    transport: Any = None,
) -> dict[str, Any]:
    """POST ``rows`` to ``{url}/predict`` at ``rate`` rows/s (0 = unpaced); returns a summary.

    ``summary["answered"]`` lists ``(request id, row index in its request, position in
    rows)`` for every answered row: what ``send_feedback`` labels (``main`` leaves it out
    of what it prints).

    ``transport`` is an optional httpx transport (e.g. ``httpx.ASGITransport(app)``).
    """
    if batch_size < 1 or concurrency < 1:
        raise UsageError("--batch-size and --concurrency must be >= 1")
    if rate < 0:
        raise UsageError("--rate must be >= 0 (0 sends as fast as the server answers)")
    return asyncio.run(
        _send_all(url, rows, float(rate), int(batch_size), int(concurrency), timeout, transport)
    )


PROG = "python -m housing_mlops.traffic"


def check_url(url: str) -> None:
    """An http(s) URL with a host, before anything is sent: ``localhost:8000`` (no scheme)
    would otherwise fail on every row and read as a service that is down."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise UsageError(f"--url {url!r} is not a URL ({exc}): use http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--url {url!r} is not an http(s) URL: use http://HOST:PORT, e.g. http://127.0.0.1:8000"
        )
    # The generator adds /predict (and /feedback) itself: `--url http://…:8000/predict`
    # posted to /predict/predict, 404 on every row.
    endpoint = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if endpoint in ("predict", "feedback"):
        base = parts._replace(path=parts.path.rstrip("/")[: -len(endpoint) - 1]).geturl()
        raise UsageError(
            f"--url {url!r} names the /{endpoint} endpoint: give the service's base URL "
            f"({base}); /predict and /feedback are added to it"
        )


def check_numbers(args: argparse.Namespace) -> None:
    """The numeric options, before anything is sent. argparse takes ``nan``, ``inf`` and
    negatives: ``--timeout 0`` failed every row as a timeout ("is `housing serve`
    running?" to a service that was up), ``--feedback-delay nan`` ended in a traceback
    after the rows were sent, ``--seed -1`` in numpy's."""
    if not args.feedback_delay >= 0 or math.isinf(args.feedback_delay):
        raise UsageError("--feedback-delay must be >= 0 (seconds)")
    if not 0 < args.timeout < math.inf:
        raise UsageError("--timeout must be > 0 (seconds per request)")
    if not args.rate >= 0:
        raise UsageError("--rate must be >= 0 (0 sends as fast as the server answers)")
    if args.seed < 0:
        raise UsageError("--seed must be >= 0")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is a UsageError: one `Error:` line and exit 2 like every
    other mistake, not argparse's usage block and its lowercase `error:` line."""

    def error(self, message: str) -> Any:  # noqa: D102 - argparse's hook
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Send rows of the test split to a running housing service.",
    )
    p.add_argument("--url", default=None, help="Service base URL (default: serve.host/port).")
    p.add_argument("--rows", type=int, default=500, help="Rows to send (default 500).")
    p.add_argument(
        "--rate", type=float, default=100.0, help="Rows per second; 0 = unpaced (default 100)."
    )
    p.add_argument(
        "--shift",
        action="append",
        default=[],
        metavar="FEATURE=FACTOR",
        help="Multiply a feature, e.g. MedInc=1.2 (repeatable).",
    )
    p.add_argument("--batch-size", type=int, default=1, help="Rows per request (default 1).")
    p.add_argument("--concurrency", type=int, default=8, help="Parallel connections (default 8).")
    p.add_argument(
        "--split", default="test", choices=["test", "train"], help="Source split (default test)."
    )
    p.add_argument("--seed", type=int, default=0, help="Shuffle seed (default 0).")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="Per-request timeout in seconds (default 10)."
    )
    p.add_argument(
        "--feedback-share",
        type=float,
        default=0.0,
        metavar="F",
        help="Post the true value of this share (0..1) of the answered rows to /feedback.",
    )
    p.add_argument(
        "--feedback-delay",
        type=float,
        default=2.0,
        metavar="S",
        help="Seconds to wait after the last row before posting labels (default 2).",
    )
    p.add_argument(
        "--feedback-token",
        default=None,
        help="Bearer token for POST /feedback (default: $HOUSING_FEEDBACK_TOKEN).",
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("configs/default.yaml"),
        help="Config: serve.host/port for the default --url, and the data to send "
        "(default configs/default.yaml).",
    )
    p.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    return p


def _none_answered(summary: Mapping[str, Any]) -> str:
    """The error line when no row got a 200: a service that answered (a 422 for every
    shifted row, a batch over serve.max_batch_size) is running, so asking whether it is
    sent users to restart a healthy service."""
    refused = {k: v for k, v in summary["status"].items() if k != "error"}
    if refused:
        return (
            f"Error: no row was answered by {summary['url']}: the service refused every "
            f"request (statuses {summary['status']}): check --batch-size (at most "
            "serve.max_batch_size) and --shift (rows outside the model's ranges get 422)"
        )
    detail = "; ".join(summary["failures"]) or f"statuses {summary['status']}"
    return f"Error: no row was answered by {summary['url']} ({detail}): is `housing serve` running?"


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    """The summary on stdout: JSON, or a line (and one for the labels)."""
    shift = summary["shift"]
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        lat = summary["latency_ms"]
        print(
            f"sent {summary['rows']} rows in {summary['requests']} requests to {summary['url']} "
            f"in {summary['elapsed_s']} s ({summary['rows_per_s']} rows/s); "
            f"rows by status {summary['row_status']}"
            + (f"; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms" if lat else "")
            + (f"; shift {shift}" if shift else "")
        )
        feedback = summary.get("feedback")
        if feedback is not None:
            print(
                f"feedback: posted {feedback['labels']} labels to {feedback['url']}: "
                f"applied {feedback['applied']}, unknown {feedback['unknown']}, "
                f"duplicate {feedback['duplicate']}"
                + (f"; responses {feedback['status']}" if feedback["labels"] else "")
            )
    sys.stdout.flush()  # inside the caller's try: a reader that left is EPIPE here


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m housing_mlops.traffic``; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
        from housing_mlops.config import load_config
        from housing_mlops.featurize import load_split

        shift = parse_shift(args.shift)
        share = float(args.feedback_share)
        if not 0.0 <= share <= 1.0:
            raise UsageError("--feedback-share must be between 0 and 1")
        check_numbers(args)
        token = ""
        if share > 0:
            env = "HOUSING_FEEDBACK_TOKEN"
            token = args.feedback_token or os.environ.get(env, "")
            if not token:
                raise UsageError(
                    f"--feedback-share needs the service's feedback token: set {env} "
                    "or pass --feedback-token"
                )
        settings = load_config(args.config)
        url = args.url or f"http://{settings.serve.host}:{settings.serve.port}"
        check_url(url)
        frame, target = load_split(settings, args.split)
        rows = prepare_rows(frame, args.rows, shift, args.seed)
        summary = send_rows(url, rows, args.rate, args.batch_size, args.concurrency, args.timeout)
        if share > 0:
            if args.feedback_delay:
                print(
                    f"waiting {args.feedback_delay:g} s for the request log, then posting labels",
                    file=sys.stderr,
                )
            summary["feedback"] = send_feedback(
                url,
                summary,
                prepare_targets(target, args.rows, args.seed),
                share,
                token,
                delay_s=args.feedback_delay,
                batch_size=settings.serve.max_batch_size,
                seed=args.seed,
                timeout=args.timeout,
            )
    except HousingError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if exc.exit_code == 2:  # as `housing` does for every usage error
            print(f"Try '{PROG} -h' for help.", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl+C while sending: as `housing` says it, not a traceback
        import warnings

        # A connection cut while it opened leaves a coroutine never awaited; its warning at
        # exit would follow the one line.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        print("Error: interrupted", file=sys.stderr)
        return 130
    summary.pop("answered", None)
    summary["shift"] = shift
    try:
        _print_summary(summary, args.json)
    except BrokenPipeError:
        # `… --json | head`: the reader left. As `housing` ends then: 141 (128 + SIGPIPE),
        # no traceback, and nothing more written to the closed pipe at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    if summary["rows"] and not summary["ok_rows"]:
        print(_none_answered(summary), file=sys.stderr)
        return 1
    feedback = summary.get("feedback")
    if feedback and feedback["labels"] and "200" not in feedback["status"]:
        detail = "; ".join(feedback["failures"]) or f"statuses {feedback['status']}"
        print(
            f"Error: no label was accepted by {feedback['url']} ({detail}): is the "
            "feedback token the service's (HOUSING_FEEDBACK_TOKEN)?",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
