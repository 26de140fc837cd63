"""What one running service holds: the served models (champion, and the challenger when
``serve.challenger_mode`` is shadow or canary), reload bookkeeping, the micro-batchers, the
shadow scorer, the request-log writer and the metrics, with their start-up and shutdown.

Models come from the registry through ``load_served_model``, which also hands the
version's training profile to the store's drift cache, so ``housing drift`` later finds
it without importing MLflow (seconds saved on its first check of a version).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import sys
from collections.abc import Callable
from typing import Any

from housing_mlops.inference.loaded_model import HGB_COMPILED_MAX_ROWS, LoadedModel, ModelMeta
from housing_mlops.serving.batching import MicroBatcher
from housing_mlops.serving.metrics import ServingMetrics
from housing_mlops.serving.reload import ModelHolder, ModelWatcher, ReloadResult
from housing_mlops.serving.shadow import ShadowScorer
from housing_mlops.store import RequestLogWriter, parse_log_location

log = logging.getLogger(__name__)


CHAMPION = "champion"
CHALLENGER = "challenger"
#: The service's GIL switch interval (Python's default is 5 ms). The request-log writer
#: thread runs Python while it formats a flush (a PostgreSQL COPY row by row); each time it
#: holds the GIL the event loop waits up to this long. `make bench-serve`'s PostgreSQL-log
#: p99 went from 21-22 ms to 8-10 ms with 1 ms (2 A/B pairs, `bench_serve.py --only logs`),
#: requests/s and CPU per request unchanged (README "Serving", levers table).
GIL_SWITCH_INTERVAL_S = 0.001


def load_served_model(
    settings: Any, version: int | str | None = None, alias: str = CHAMPION
) -> LoadedModel:
    """The registry's ``alias`` (or ``version``), ready to serve; its profile is cached."""
    from housing_mlops.serving.predictor import load_from_registry

    model, profile = load_from_registry(settings, version, alias=alias)
    if profile is not None:
        cache_profile_for_drift(settings, model.meta, profile)
    return model


def cache_profile_for_drift(settings: Any, meta: ModelMeta, profile: dict[str, Any]) -> None:
    """Keep a served version's training profile in the request log's drift cache.

    A failure only costs drift that speed-up, so it is logged, not raised.
    """
    from housing_mlops import registry, store

    try:
        conn = store.open_log(settings.serve.request_log, create=True)
        try:
            uri = registry.tracking_uri(settings)
            store.cache_reference(conn, uri, meta.name, meta.version, meta.run_id, profile)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - an optimisation, never a reason not to serve
        log.warning("could not cache the reference profile for drift: %s", exc)


def instance_name(configured: str) -> str:
    """The replica's name on its request-log rows: ``serve.instance``, else ``<host>:<pid>``."""
    import os
    import socket

    return configured or f"{socket.gethostname()}:{os.getpid()}"


class Service:
    """Everything one app instance owns: model holder, batcher, request log, metrics."""

    def __init__(
        self,
        settings: Any,
        model: LoadedModel | None,
        model_version: int | None,
        loader: Callable[[str | None], LoadedModel] | None,
        alias_version: Callable[[], str | None] | None,
        challenger: LoadedModel | None = None,
        challenger_loader: Callable[[str], LoadedModel] | None = None,
        challenger_alias_version: Callable[[], str | None] | None = None,
    ) -> None:
        from housing_mlops.serving.drift_collector import DriftCollector
        from housing_mlops.serving.live_quality import LiveQualityCollector

        self.settings = settings
        serve = settings.serve
        self.model_name = settings.mlflow.registered_model_name
        self.pinned_version = model_version
        self.metrics = ServingMetrics()
        self.holder = ModelHolder(self.metrics, model)
        # The challenger: loaded only for shadow or canary, and never with a pinned
        # version (the service then serves exactly that version).
        self.configured_mode: str = serve.challenger_mode
        self.canary_share = float(serve.canary_share)
        self.challenger_enabled = self.configured_mode != "off" and model_version is None
        self.batcher = MicroBatcher(
            self.holder.current,
            window_s=serve.microbatch_window_ms / 1000.0,
            max_rows=serve.microbatch_max_rows,
            threads=serve.predictor_threads,
            inline_rows=serve.microbatch_inline_rows,
        )
        self.challenger = ModelHolder(
            self.metrics, challenger if self.challenger_enabled else None, role=CHALLENGER
        )
        self.challenger_batcher = MicroBatcher(
            self.challenger.current,
            window_s=serve.microbatch_window_ms / 1000.0,
            max_rows=serve.microbatch_max_rows,
            threads=serve.predictor_threads,
            inline_rows=serve.microbatch_inline_rows,
        )
        self.instance = instance_name(serve.instance)
        location = parse_log_location(serve.request_log)
        # Safe to show (/model/info, logs): a URL's password is replaced by ***.
        self.log_display = str(location)
        self.writer = RequestLogWriter(
            location,
            flush_interval_s=serve.log_flush_interval_s,
            max_queue=serve.log_queue_size,
            on_flush=self.metrics.on_log_flush,
            # Only a database that can be away needs the spool; a SQLite log next to the
            # process keeps today's behaviour (a failed write is dropped and counted).
            spool_dir=serve.spool_dir if location.kind == "postgresql" else None,
            instance=self.instance,
        )
        writer = self.writer
        self.shadow = ShadowScorer(
            self.challenger.current,
            writer.submit,
            self.metrics,
            max_rows=serve.shadow_queue_size,
            # At most 32 rows a call: the largest batch HistGradientBoosting's vectorised
            # walk takes (sklearn's own path costs 2.5x more for 33 rows than for 32).
            batch_rows=min(serve.microbatch_max_rows, HGB_COMPILED_MAX_ROWS),
            threads=serve.predictor_threads,
            # The champion predicting on the event loop starves the scorer's thread of the
            # GIL (`make bench-shadow`: half the rows dropped, p99 1.44x): the loop helps.
            help_on_loop=serve.microbatch_inline_rows > 0,
        )
        self.metrics.add_collector(DriftCollector(location, reachable=lambda: not writer.degraded))
        self.live_quality = LiveQualityCollector(
            location,
            self.served_models,
            serve.live_quality_interval_s,
            serve.live_quality_window_s,
            reachable=lambda: not writer.degraded,
        )
        self.metrics.add_collector(self.live_quality)
        self.loader = loader or self._registry_loader
        self.watcher = ModelWatcher(
            self.holder,
            alias_version or self._registry_alias_version,
            self.loader,
            serve.reload_interval_s,
        )
        if challenger_alias_version is None and alias_version is None:
            challenger_alias_version = self._registry_challenger_version
        self.challenger_watcher = ModelWatcher(
            self.challenger,
            # No challenger source (tests serving in-memory models): never a challenger.
            challenger_alias_version or (lambda: None),
            challenger_loader or self._registry_challenger_loader,
            serve.reload_interval_s,
            alias=CHALLENGER,
            unload_when_missing=True,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._rid_prefix = secrets.token_hex(6)
        self._rid_counter = itertools.count(1)

    def served_models(self) -> list[tuple[str, ModelMeta]]:
        """The models answering now, with their role (for the live-quality gauges)."""
        # The challenger's model is None unless it is loaded (shadow or canary mode).
        served = [("champion", self.holder.model), ("challenger", self.challenger.model)]
        return [(role, model.meta) for role, model in served if model is not None]

    # -- registry access (only through housing_mlops.registry)
    def _registry_loader(self, version: str | None) -> LoadedModel:
        if version is None and self.pinned_version is not None:
            version = str(self.pinned_version)
        return load_served_model(self.settings, version)

    def _registry_alias_version(self) -> str | None:
        from housing_mlops import registry

        return registry.get_alias_version(self.settings, registry.CHAMPION)

    def _registry_challenger_loader(self, version: str) -> LoadedModel:
        return load_served_model(self.settings, version, alias=CHALLENGER)

    def _registry_challenger_version(self) -> str | None:
        from housing_mlops import registry

        return registry.get_alias_version(self.settings, registry.CHALLENGER)

    # -- the challenger's part
    @property
    def mode(self) -> str:
        """The challenger mode in effect: the configured one while a challenger is loaded
        (and no version is pinned), else ``off``."""
        if self.challenger.model is None:
            return "off"
        return self.configured_mode

    def mode_reason(self) -> str | None:
        """Why the configured mode is not in effect (None when it is)."""
        if self.configured_mode == "off":
            return None
        if self.pinned_version is not None:
            return f"version {self.pinned_version} is pinned (--model-version): no challenger"
        if self.challenger.model is None:
            error = self.challenger.last_reload_error
            if error:
                return f"the challenger failed to load: {error}"
            return "no model version has the challenger alias"
        return None

    async def check_models(self) -> tuple[ReloadResult, ReloadResult | None]:
        """Follow both aliases now (the challenger's only when it is enabled)."""
        champion = await self.watcher.check()
        challenger = await self.challenger_watcher.check() if self.challenger_enabled else None
        return champion, challenger

    async def _watch(self) -> None:
        """Check both aliases every ``reload_interval_s`` (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.watcher.interval_s)
            try:
                await self.check_models()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watcher must outlive any single failure
                log.exception("model watcher: unexpected error")

    async def _load_challenger(self) -> None:
        if self.challenger_enabled and self.challenger.model is None:
            await self.challenger_watcher.check()

    # -- lifecycle
    async def startup(self, wait_for_model: bool = False) -> None:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.writer.start()
        self.batcher.start()
        if self.settings.serve.live_quality_interval_s > 0:
            self._tasks.append(asyncio.create_task(self.live_quality.run()))
        if self.challenger_enabled and self.configured_mode == "shadow":
            self.shadow.start()
        if self.holder.model is None and wait_for_model:
            # A worker of a multi-worker server: accept connections only once loaded.
            self.holder.swap(await asyncio.to_thread(self.loader, None))
        if self.holder.model is None:
            self._tasks.append(asyncio.create_task(self._initial_load()))
            return
        # The challenger before the first request (a failure is reported, not raised).
        await self._load_challenger()
        _freeze_heap()
        if self.pinned_version is None and self.settings.serve.reload_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._watch()))

    async def _initial_load(self) -> None:
        delay = max(1.0, min(self.settings.serve.reload_interval_s or 5.0, 30.0))
        while self.holder.model is None:
            try:
                model = await asyncio.to_thread(self.loader, None)
            except Exception as exc:  # noqa: BLE001 - keep trying; /ready says 503 meanwhile
                self.holder.last_reload_error = f"initial load failed: {exc}"
                self.metrics.reload_failures.inc()
                log.exception("could not load the model; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
            else:
                self.holder.swap(model)
                self.holder.last_reload_error = None
        await self._load_challenger()
        _freeze_heap()
        if self.pinned_version is None and self.settings.serve.reload_interval_s > 0:
            await self._watch()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # uvicorn has answered every in-flight request by now: flush them all to the log
        # (or to the spool while its database is unreachable).
        await self.batcher.drain()
        await self.challenger_batcher.drain()
        await asyncio.to_thread(self.batcher.close)
        await asyncio.to_thread(self.challenger_batcher.close)
        # The shadow scorer hands its rows to the writer: it closes first.
        await asyncio.to_thread(self.shadow.close)
        await asyncio.to_thread(self.writer.close)
        self.metrics.process_exit()

    def new_request_id(self) -> str:
        # A random per-process prefix and a counter: unique, and cheaper than uuid4.
        return f"{self._rid_prefix}{next(self._rid_counter):x}"


def _freeze_heap() -> None:
    """Move everything alive once the models are loaded (the modules, the models, their
    KD-trees) out of the garbage collector's sight. Its full collections otherwise walk that
    heap: tens of milliseconds each under load, the p99 of ``make bench-serve``. Reference
    counting still frees them; only cycles among them (a model a hot reload replaced, if
    it holds any) are never collected."""
    import gc

    gc.collect()
    gc.freeze()
