"""The model manager: which models are in memory, and when they leave.

The default model is loaded at start and never evicted. Others load on first use and are
kept while they fit: at most `max_models` in memory, within a memory budget, and unloaded
after `idle_seconds` without use. Before a load, available memory is checked against the
model's estimated size, idle models are evicted to make room, and if it still does not fit
the load fails with a clear error rather than waking the kernel's OOM killer.

Blocking and thread-safe: it runs where inference runs (the worker process, or a thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from service.engines.base import Engine
from service.errors import ModelBusy, ModelUnavailable
from service.inference.memory import available_bytes
from service.settings import Settings

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Parameters of the published Whisper sizes, for estimating memory before a load.
_PARAMS_M = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large": 1550, "turbo": 809}
# Resident bytes per parameter once loaded (fp32 weights plus working buffers), measured
# loosely; the estimate only has to be on the safe side.
_BYTES_PER_PARAM = 6
# Headroom left for decoding buffers and the rest of the system.
_RESERVE_MIB = 256


def estimated_mib(name: str) -> int:
    base = name.split("/")[-1].removesuffix(".en").split("-")[0].split(".")[0]
    params = _PARAMS_M.get(base, _PARAMS_M["large"] if "large" in name else 244)
    return params * _BYTES_PER_PARAM


def _give_memory_back() -> None:
    """Collect, then ask glibc to return freed heap pages to the kernel (RSS really drops)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def process_rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / MIB


@dataclass
class LoadedModel:
    name: str
    model: Any
    loaded_at: float
    last_used: float
    load_seconds: float
    approx_mib: float
    in_use: int = 0

    def describe(self, default: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "default": self.name == default,
            "in_use": self.in_use > 0,
            "approx_memory_mb": round(self.approx_mib, 1),
            "load_seconds": round(self.load_seconds, 2),
            "loaded_at": self.loaded_at,
            "last_used": self.last_used,
        }


class ModelManager:
    def __init__(
        self,
        engine: Engine,
        default: str,
        max_models: int = 2,
        memory_budget_mib: int = 0,
        idle_seconds: float = 300.0,
    ) -> None:
        self.engine = engine
        self.default = default
        self.max_models = max(1, max_models)
        self.memory_budget_mib = memory_budget_mib
        self.idle_seconds = idle_seconds
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._loading = threading.Lock()  # one load at a time: two big loads at once is how OOMs start

    @classmethod
    def for_settings(cls, engine: Engine, settings: Settings) -> ModelManager:
        return cls(
            engine,
            settings.model,
            max_models=settings.max_models,
            memory_budget_mib=settings.model_memory_mb,
            idle_seconds=settings.model_idle_seconds,
        )

    # -- queries ------------------------------------------------------------------------
    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [entry.describe(self.default) for entry in self._loaded.values()]

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._loaded

    # -- use ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[Any]:
        """The model, loaded if need be, pinned against eviction while the block runs."""
        entry = self.load(name)
        with self._lock:
            entry.in_use += 1
        try:
            yield entry.model
        finally:
            with self._lock:
                entry.in_use -= 1
                entry.last_used = time.time()

    def load(self, name: str) -> LoadedModel:
        with self._lock:
            entry = self._loaded.get(name)
            if entry is not None:
                entry.last_used = time.time()
                return entry
        with self._loading:
            with self._lock:  # loaded by another thread while this one waited
                entry = self._loaded.get(name)
                if entry is not None:
                    return entry
            self._make_room(name)
            before = process_rss_mib()
            started = time.monotonic()
            model = self.engine.load(name)
            seconds = time.monotonic() - started
            grown = max(0.0, process_rss_mib() - before)
            now = time.time()
            entry = LoadedModel(name, model, now, now, seconds, grown or float(estimated_mib(name)))
            with self._lock:
                self._loaded[name] = entry
            log.info("model %s loaded in %.1f s (about %.0f MiB)", name, seconds, entry.approx_mib)
            return entry

    def unload(self, name: str) -> bool:
        """Unload a model by hand. The default model and models in use stay."""
        with self._lock:
            entry = self._loaded.get(name)
            if entry is None:
                return False
            if name == self.default:
                raise ModelBusy(f"{name} is the default model; it stays loaded.")
            if entry.in_use:
                raise ModelBusy(f"{name} is in use by a running job; try again when it is done.")
            del self._loaded[name]
        del entry
        _give_memory_back()
        log.info("model %s unloaded", name)
        return True

    def evict_idle(self, now: float | None = None) -> list[str]:
        if self.idle_seconds < 0:
            return []
        now = time.time() if now is None else now
        with self._lock:
            idle = [
                e.name
                for e in self._loaded.values()
                if e.name != self.default and not e.in_use and now - e.last_used >= self.idle_seconds
            ]
        return [name for name in idle if self._evict(name, "idle")]

    # -- room -----------------------------------------------------------------------------
    def _evictable(self) -> list[LoadedModel]:
        with self._lock:
            entries = [e for e in self._loaded.values() if e.name != self.default and not e.in_use]
        return sorted(entries, key=lambda e: e.last_used)  # least recently used first

    def _evict(self, name: str, why: str) -> bool:
        with self._lock:
            entry = self._loaded.get(name)
            if entry is None or entry.in_use or name == self.default:
                return False
            del self._loaded[name]
        del entry
        _give_memory_back()
        log.info("model %s unloaded (%s)", name, why)
        return True

    def _make_room(self, name: str) -> None:
        """Evict least recently used models until `name` fits the count, budget and free memory."""
        need = estimated_mib(name)
        while True:
            with self._lock:
                count = len(self._loaded)
                held = sum(e.approx_mib for e in self._loaded.values())
            over_count = count >= self.max_models
            # The default model must load whatever the budget; it still counts against it.
            over_budget = name != self.default and 0 < self.memory_budget_mib < held + need
            short = _available_mib() < need + _RESERVE_MIB
            if not (over_count or over_budget or short):
                return
            victims = self._evictable()
            if not victims:
                break
            self._evict(victims[0].name, "to make room for " + name)
        available = _available_mib()
        if available < need + _RESERVE_MIB:
            raise ModelUnavailable(
                f"Not enough memory to load model {name}: it needs about {need} MiB and "
                f"{available:.0f} MiB is available. Use a smaller model or free memory."
            )
        if name != self.default and 0 < self.memory_budget_mib < held + need:
            raise ModelUnavailable(
                f"Model {name} (about {need} MiB) does not fit the model memory budget of "
                f"{self.memory_budget_mib} MiB next to the models in use."
            )
        # Over the count limit with every other model in use: load anyway, briefly over.


def _available_mib() -> float:
    """Memory a load may use: under a container's cgroup limit, not just the host's free memory."""
    available = available_bytes()
    return (available if available is not None else psutil.virtual_memory().available) / MIB
