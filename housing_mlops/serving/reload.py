"""Hot reload: follow the registry's ``champion`` (and ``challenger``) alias without
restarting the service.

``ModelWatcher.check`` asks which version the alias points at; when it differs from the
served one, the new version is loaded in a worker thread *beside* the old one and then
swapped in with a single reference assignment (``ModelHolder.swap``). Batches already
dispatched keep the model they captured, so requests in flight finish on the old model. A
failed load keeps the old model serving, is logged, counted in
``housing_model_reload_failures_total`` and shown in ``/model/info`` (``last_reload_error``).
The service (``Service.check_models``) calls ``check`` of both watchers every
``serve.reload_interval_s`` (0 switches that off), and ``POST /model/reload`` on demand.

The service has one holder and one watcher per role. The challenger's watcher
(``unload_when_missing``) also unloads the challenger when its alias is removed; a
challenger that fails to load never touches the champion's holder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from housing_mlops.inference.loaded_model import LoadedModel
from housing_mlops.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


class ModelHolder:
    """The one reference to the model serving ``role``; swapping it is atomic."""

    def __init__(
        self, metrics: ServingMetrics, model: LoadedModel | None = None, role: str = "champion"
    ) -> None:
        self.metrics = metrics
        self.role = role
        self.model: LoadedModel | None = None
        self.last_reload_error: str | None = None
        self.last_reload_at: float | None = None
        if model is not None:
            self.swap(model)

    def current(self) -> LoadedModel | None:
        return self.model

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        old, self.model = self.model, model
        m = model.meta
        self.metrics.set_model(m.name, m.version, m.alias, m.run_id, role=self.role)
        return old

    def clear(self) -> LoadedModel | None:
        """Stop serving this role (batches already dispatched finish on the old model)."""
        old, self.model = self.model, None
        self.metrics.unset_model(self.role)
        return old


@dataclass(frozen=True)
class ReloadResult:
    reloaded: bool
    version: str | None
    previous_version: str | None
    error: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "reloaded": self.reloaded,
            "version": self.version,
            "previous_version": self.previous_version,
            "error": self.error,
            "detail": self.detail,
        }


class ModelWatcher:
    """Checks the alias and swaps in new versions; see the module docstring."""

    def __init__(
        self,
        holder: ModelHolder,
        alias_version: Callable[[], str | None],
        loader: Callable[[str], LoadedModel],
        interval_s: float,
        alias: str = "champion",
        unload_when_missing: bool = False,
    ) -> None:
        self.holder = holder
        self.alias_version = alias_version
        self.loader = loader
        self.interval_s = float(interval_s)
        self.alias = alias
        self.unload_when_missing = unload_when_missing
        self._lock = asyncio.Lock()

    async def check(self) -> ReloadResult:
        """Load and swap in the alias's version if it changed; never raises for a bad load."""
        async with self._lock:
            holder = self.holder
            current = holder.model
            previous = current.meta.version if current is not None else None
            alias = self.alias
            try:
                target = await asyncio.to_thread(self.alias_version)
            except Exception as exc:  # noqa: BLE001
                return self._failed(previous, None, f"could not read the {alias} alias: {exc}")
            if target is None:
                if self.unload_when_missing:
                    holder.last_reload_error = None
                    if current is None:
                        return ReloadResult(False, None, None, detail=f"no {alias} alias")
                    holder.clear()
                    holder.last_reload_at = time.time()
                    holder.metrics.reloads.inc()
                    log.info("model watcher: the %s alias was removed; unloaded it", alias)
                    return ReloadResult(
                        True, None, previous, detail=f"no {alias} alias any more: unloaded"
                    )
                return ReloadResult(
                    False, previous, previous, detail=f"no {alias} alias; keeping the model"
                )
            target = str(target)
            if target == previous:
                return ReloadResult(
                    False, previous, previous, detail=f"already serving version {target}"
                )
            log.info("model watcher: %s is now version %s; loading it", alias, target)
            try:
                new = await asyncio.to_thread(self.loader, target)
            except Exception as exc:  # noqa: BLE001
                return self._failed(previous, target, f"loading version {target} failed: {exc}")
            holder.swap(new)
            holder.last_reload_error = None
            holder.last_reload_at = time.time()
            holder.metrics.reloads.inc()
            log.info("model watcher: %s now version %s (was %s)", alias, target, previous)
            return ReloadResult(True, target, previous, detail=f"now serving version {target}")

    def _failed(self, previous: str | None, target: str | None, message: str) -> ReloadResult:
        from datetime import UTC, datetime

        stamp = datetime.now(tz=UTC).isoformat(timespec="seconds")
        self.holder.last_reload_error = f"{stamp}: {message}"
        self.holder.metrics.reload_failures.inc()
        log.error(
            "model watcher: %s; %s still version %s",
            message,
            self.alias,
            previous,
            exc_info=True,
        )
        return ReloadResult(False, previous, previous, error=message)
