"""Deserialized models, loaded once per worker process and kept by (name, version)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from predq.shared.registry import runtimes
from predq.shared.registry.serialization import load_estimator
from predq.shared.registry.store import Manifest, Registry


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    load_seconds: float = 0.0
    by_model: dict[tuple[str, str], list[int]] = field(default_factory=dict)


class ModelCache:
    """An LRU of loaded models. Every first load checks the artifact's sha256 first.

    What it keeps per version is the model's *runtime* (predq.shared.registry.runtimes): the
    estimator
    itself, or the accelerated runtime its manifest chose at push, built once at load.

    Loading goes only through the registry: a model is named by (name, version), never by a
    path, so nothing a request says can make a worker open another file.
    """

    def __init__(self, registry: Registry, size: int) -> None:
        self.registry = registry
        self.size = size
        self._models: OrderedDict[tuple[str, str], tuple[Manifest, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, name: str, version: str) -> tuple[Manifest, Any]:
        """The manifest and the runtime of one model version (built once, then shared).

        Raises ModelNotFound / VersionNotFound / IntegrityError / RegistryError.
        """
        key = (name, version)
        with self._lock:
            hit = self._models.get(key)
            if hit is not None:
                self._models.move_to_end(key)
                self.stats.hits += 1
                self.stats.by_model.setdefault(key, [0, 0])[1] += 1
                return hit
        import time

        t0 = time.perf_counter()
        manifest = self.registry.manifest(name, version)
        estimator = load_estimator(
            self.registry.artifact_path(manifest),
            fmt=manifest.format,
            expected_sha256=manifest.sha256,
            trusted_types=manifest.trusted_types,
        )
        runtime = runtimes.load(manifest, estimator)
        with self._lock:
            self._models[key] = (manifest, runtime)
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            self.stats.loads += 1
            self.stats.load_seconds += time.perf_counter() - t0
            self.stats.by_model.setdefault(key, [0, 0])[0] += 1
        return manifest, runtime
