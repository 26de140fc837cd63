"""``housing serve``: the service on uvicorn (the only module that imports uvicorn).

One worker serves the app built here: the port is taken (listening) first, then the model
loads, then uvicorn answers what waited in the backlog. Several workers are uvicorn's
supervisor starting processes that each build the app through ``app_from_env`` (settings
from ``$HOUSING_SERVE_CONFIG``), with Prometheus in multiprocess mode so ``/metrics`` adds
up every worker.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CONFIG_ENV = "HOUSING_SERVE_CONFIG"
MODEL_VERSION_ENV = "HOUSING_SERVE_MODEL_VERSION"
# config.ENV_OVERRIDES: serve.instance, serve.request_log, serve.spool_dir,
# serve.challenger_mode
INSTANCE_ENV = "HOUSING_INSTANCE"
REQUEST_LOG_ENV = "HOUSING_REQUEST_LOG"
SPOOL_DIR_ENV = "HOUSING_SPOOL_DIR"
CHALLENGER_MODE_ENV = "HOUSING_SERVE_CHALLENGER_MODE"


def app_from_env() -> Any:
    """uvicorn factory for ``--workers`` > 1: settings come from ``$HOUSING_SERVE_CONFIG``."""
    from housing_mlops.config import load_config
    from housing_mlops.serving.app import create_app

    settings = load_config(os.environ[CONFIG_ENV])
    version = os.environ.get(MODEL_VERSION_ENV)
    return create_app(
        settings, model_version=int(version) if version else None, wait_for_model=True
    )


CHALLENGER_MODES = ("off", "shadow", "canary")


def with_challenger_mode(settings: Any, mode: str) -> Any:
    """``settings`` with ``serve.challenger_mode`` replaced (``--challenger-mode``)."""
    from housing_mlops.errors import UsageError

    if mode not in CHALLENGER_MODES:
        raise UsageError(f"--challenger-mode must be off, shadow or canary, not '{mode}'")
    serve = settings.serve.model_copy(update={"challenger_mode": mode})
    return settings.model_copy(update={"serve": serve})


def _challenger_version(settings: Any) -> str | None:
    """The registry's challenger version for the banner (None: none, or not readable now;
    the service reports a load failure in /model/info)."""
    from housing_mlops import registry
    from housing_mlops.errors import HousingError

    try:
        return registry.get_alias_version(settings, registry.CHALLENGER)
    except HousingError:
        return None


# uvicorn's default: what its Config passes to listen() when it gets the socket.
BACKLOG = 2048


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound and listening now: a busy port is a clear error (exit 2),
    and nobody can take the port while the model loads.

    Bound alone, the port is not taken: with SO_REUSEADDR (uvicorn's and most servers'
    sockets) another process can bind it too, and whichever listens first gets the traffic.
    Listening at once closes that window; connections that arrive while the model loads
    wait in the backlog and are answered when uvicorn starts accepting (its ``sockets``
    argument takes a listening socket: asyncio's ``create_server(sock=...)`` only calls
    ``listen()`` again, which keeps it listening)."""
    from housing_mlops.errors import UsageError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hosts = "0.0.0.0 listens on every interface, 127.0.0.1 on this machine only"
        if isinstance(exc, socket.gaierror):
            fix = f"the host {host!r} cannot be resolved: pass another --host ({hosts})"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = f"{host} is not an address of this machine: pass another --host ({hosts})"
        elif exc.errno in (errno.EADDRINUSE, errno.EACCES):
            fix = "pass another --port"
        else:
            fix = "check --host and --port"
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}): {fix}") from None
    return sock


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown (the process then dies
        of the signal: 143, or a KeyboardInterrupt). A drained, flushed stop is a normal
        exit for `housing serve`: exit 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        captured.clear()

    return GracefulServer


@contextlib.contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block; restore them after."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_server(
    settings: Any,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    model_version: int | None = None,
    config_path: Path | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    challenger_mode: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. Fails fast (ModelError) when there is no champion.

    ``challenger_mode`` (``--challenger-mode``) overrides ``serve.challenger_mode``."""
    import uvicorn

    from housing_mlops import registry, store
    from housing_mlops.errors import UsageError
    from housing_mlops.serving.app import create_app
    from housing_mlops.serving.metrics import multiprocess_directory
    from housing_mlops.serving.state import instance_name, load_served_model

    server_class = _graceful_server_class()
    if challenger_mode is not None:
        settings = with_challenger_mode(settings, challenger_mode)
    serve = settings.serve
    host = host or serve.host
    port = port or serve.port
    workers = workers or serve.workers
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    # Before binding anything: is there a model to serve? (ModelError -> exit 5)
    ref = registry.resolve(settings, version=model_version)
    store.create_log(serve.request_log)  # a log it cannot write: ConfigError, before binding
    if store.parse_log_location(serve.request_log).kind == "postgresql":
        store.check_spool_dir(serve.spool_dir)  # where rows wait in an outage: writable?
    sock = _bind(host, port)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "auto",  # uvloop when installed
        "http": "auto",  # httptools when installed
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,  # client addresses are not used; saves a layer per request
        "log_level": "info",
        "timeout_graceful_shutdown": 30,
    }
    instance = instance_name(serve.instance)
    summary: dict[str, Any] = {
        "model": ref.name,
        "version": str(ref.version),
        "url": f"http://{host}:{port}",
        "workers": workers,
        "request_log": str(store.parse_log_location(serve.request_log)),  # password: ***
        # Every worker's rows carry the replica's name (workers share this process's).
        "instance": instance,
        "challenger_mode": serve.challenger_mode if model_version is None else "off",
        "challenger_version": _challenger_version(settings)
        if model_version is None and serve.challenger_mode != "off"
        else None,
    }
    if workers == 1:
        with sock:
            model = load_served_model(settings, model_version)
            app = create_app(settings, model, model_version=model_version)
            if on_ready:
                on_ready(summary)
            server_class(uvicorn.Config(app, **common)).run(sockets=[sock])
        return
    # uvicorn's supervisor binds the port itself for its workers (checked free just now;
    # it listens at once, and the workers load the model afterwards).
    sock.close()
    source = config_path or settings.source
    if source is None:
        raise UsageError("--workers > 1 needs a config file (--config)")
    worker_env = {
        CONFIG_ENV: str(Path(source).resolve()),
        MODEL_VERSION_ENV: None if model_version is None else str(model_version),
        INSTANCE_ENV: instance,
        # The workers read the config file again: what the command line (--request-log)
        # or the environment chose must reach them too.
        REQUEST_LOG_ENV: str(serve.request_log),
        SPOOL_DIR_ENV: str(serve.spool_dir),
        CHALLENGER_MODE_ENV: serve.challenger_mode,
    }
    with multiprocess_directory(), _environ(worker_env):
        if on_ready:
            on_ready(summary)
        uvicorn.run(
            "housing_mlops.serving.server:app_from_env", factory=True, workers=workers, **common
        )
