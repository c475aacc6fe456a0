"""``predq models inspect``: the "pickle vs joblib" table, measured on the user's own model.

For each way predq could store the model (pickle, joblib uncompressed and memory-mapped,
joblib with zlib and lz4 compression, skops) it measures the file size, the dump and load
time, and whether several worker processes can share the model's arrays (only a memory-mapped
load leaves them in the page cache, shared); then the predict latency at 1, 10, 100 and
1,000 rows for each runtime predq could run it on. It ends with what predq would store and run,
and why. Everything is measured here and now: nothing is quoted from a table.

The rows come from ``--sample`` (resampled to 1,000) or are generated from the schema predq
infers for the model, so any model that ``predq models push`` accepts can be inspected.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROW_COUNTS = (1, 10, 100, 1000)


@dataclass
class FormatResult:
    format: str
    bytes: int | None
    dump_ms: float | None
    load_ms: float | None
    shared_between_processes: bool
    shared_bytes: int
    note: str = ""


@dataclass
class RuntimeResult:
    runtime: str
    latency_ms: dict[int, float]
    matches_sklearn: bool | None
    note: str = ""


def _best_ms(fn: Callable[[], Any], repeat: int = 5, budget_s: float = 2.0) -> float:
    """The fastest of up to ``repeat`` runs (bounded by ``budget_s``), in ms."""
    best = float("inf")
    start = time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return best * 1000


def _array_bytes(obj: Any, seen: set[int] | None = None, depth: int = 0) -> tuple[int, int]:
    """(bytes of numpy arrays reachable from obj, of which memory-mapped)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base, np.ndarray) and base.base is not None and \
                not isinstance(base, np.memmap):
            base = base.base  # type: ignore[assignment]
        is_mapped = isinstance(obj, np.memmap) or isinstance(base, np.memmap) or \
            type(base).__name__ == "mmap"
        return obj.nbytes, obj.nbytes if is_mapped else 0
    total = mapped = 0
    children: Any = ()
    if isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, list | tuple):
        children = obj
    elif hasattr(obj, "__dict__"):
        children = vars(obj).values()
    for child in children:
        t, m = _array_bytes(child, seen, depth + 1)
        total, mapped = total + t, mapped + m
    return total, mapped


def measure_formats(model: Any, workdir: Path) -> list[FormatResult]:
    import joblib

    results: list[FormatResult] = []

    def one(name: str, dump: Callable[[Path], None], load: Callable[[Path], Any],
            mmap: bool = False, note: str = "") -> None:
        path = workdir / name.replace(" ", "_")
        try:
            t = time.perf_counter()
            dump(path)
            dump_ms = (time.perf_counter() - t) * 1000
            load_ms = _best_ms(lambda: load(path), repeat=3)
            shared = 0
            if mmap:
                _, shared = _array_bytes(load(path))
            results.append(FormatResult(name, path.stat().st_size, dump_ms, load_ms,
                                        shared > 0, shared, note))
        except Exception as e:  # a missing optional package or an unsupported estimator
            results.append(FormatResult(name, None, None, None, False, 0,
                                        f"unavailable: {type(e).__name__}: {e}"[:160]))

    def pickle_dump(p: Path) -> None:
        p.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))

    one("pickle", pickle_dump, lambda p: pickle.loads(p.read_bytes()),
        note="each process holds its own copy")
    one("joblib", lambda p: joblib.dump(model, p), lambda p: joblib.load(p, mmap_mode="r"),
        mmap=True, note="arrays memory-mapped read-only: processes share the page cache")
    one("joblib zlib-3", lambda p: joblib.dump(model, p, compress=("zlib", 3)), joblib.load,
        note="compressed files cannot be memory-mapped")
    one("joblib lz4", lambda p: joblib.dump(model, p, compress=("lz4", 3)), joblib.load,
        note="needs the lz4 package; cannot be memory-mapped")

    def skops_dump(p: Path) -> None:
        import skops.io as sio

        sio.dump(model, p)

    def skops_load(p: Path) -> Any:
        import skops.io as sio

        return sio.load(p, trusted=sio.get_untrusted_types(file=p))

    one("skops", skops_dump, skops_load, note="no pickle: safe to load from untrusted sources")
    return results


def runtimes_for(model: Any) -> dict[str, Callable[[pd.DataFrame], Any]]:
    """The prediction callables of every runtime predq could run ``model`` on."""
    fn = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    found: dict[str, Callable[[pd.DataFrame], Any]] = {"sklearn": fn}
    from predq.shared.registry.runtimes import (
        TreeliteRuntime,
        treelite_ineligible,
        worker_input,
    )

    if treelite_ineligible(model) is None:
        try:
            rt = TreeliteRuntime(model)
        except Exception:  # treelite cannot import this ensemble: sklearn only
            return found
        call = rt.predict_proba if hasattr(model, "predict_proba") else rt.predict
        found["treelite"] = lambda x: call(worker_input(rt, x))
    return found


def _call_rows(fn: Callable[[Any], Any], rows: Any, n: int) -> Any:
    return fn(rows[:n])


def measure_runtimes(model: Any, rows: pd.DataFrame) -> list[RuntimeResult]:
    results = []
    reference = None
    for name, fn in runtimes_for(model).items():
        try:
            latency = {n: _best_ms(partial(_call_rows, fn, rows, n), repeat=20, budget_s=1.5)
                       for n in ROW_COUNTS}
            out = np.asarray(fn(rows))
            if reference is None:
                reference, matches = out, None
            else:
                matches = bool(out.shape == reference.shape and np.allclose(
                    out, reference, rtol=0, atol=1e-9))
            results.append(RuntimeResult(name, latency, matches))
        except Exception as e:
            results.append(RuntimeResult(name, {}, False,
                                         f"failed: {type(e).__name__}: {e}"[:160]))
    return results


def sample_rows(model: Any, sample: Path | None, n: int = max(ROW_COUNTS)) -> pd.DataFrame:
    """``n`` input rows: from the sample file (resampled), or generated from the schema."""
    if sample is not None:
        frame = pd.read_csv(sample)
        return frame.sample(n, replace=len(frame) < n, random_state=0).reset_index(drop=True)
    from predq.introspect import infer_manifest_fields

    fields = infer_manifest_fields(model, sample=None, accepts_missing=None)
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {}
    for feat in fields["features"]:
        f = feat.model_dump()
        name, ftype = f["name"], f["type"]
        cats = f.get("categories")
        if cats:
            cols[name] = rng.choice(np.asarray(cats, dtype=object), n)
        elif ftype == "integer":
            cols[name] = rng.integers(0, 10, n)
        elif ftype == "boolean":
            cols[name] = rng.integers(0, 2, n).astype(bool)
        elif ftype == "string":
            cols[name] = np.asarray([f"s{i % 7}" for i in range(n)], dtype=object)
        else:
            cols[name] = rng.normal(size=n)
    frame = pd.DataFrame(cols)
    if not fields.get("named_features", True):
        return frame.to_numpy()  # type: ignore[return-value]
    return frame


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def recommend(formats: list[FormatResult], runtimes: list[RuntimeResult]) -> dict[str, str]:
    by = {f.format: f for f in formats}
    joblib_r = by.get("joblib")
    store = "joblib"
    why = "predq stores uncompressed joblib: it loads memory-mapped"
    if joblib_r and joblib_r.shared_bytes:
        why += f", so worker processes share {_size(joblib_r.shared_bytes)} of arrays"
    base_bytes = joblib_r.bytes if joblib_r else None
    small = [(f.format, f.bytes) for f in formats if f.bytes and base_bytes
             and f.bytes < base_bytes * 0.5 and "zlib" in f.format]
    if small and base_bytes:
        fmt, size = small[0]
        why += (f"; {fmt} would be {_size(size)} instead of {_size(base_bytes)}, "
                "but each process would hold its own copy")
    ok = [r for r in runtimes if r.latency_ms and (r.matches_sklearn in (None, True))]
    best = min(ok, key=lambda r: r.latency_ms.get(10, float("inf"))) if ok else None
    run = best.runtime if best else "sklearn"
    run_why = "the fastest runtime that reproduces sklearn's outputs within 1e-9"
    if best and best.runtime != "sklearn":
        base = next(r for r in runtimes if r.runtime == "sklearn")
        run_why += (f": {base.latency_ms[10] / max(best.latency_ms[10], 1e-6):.1f}x faster "
                    "than sklearn at 10 rows")
    return {"store": store, "store_why": why, "run": run, "run_why": run_why}


class ModelLoadError(Exception):
    """The file is not a model joblib can load (with the reason)."""


def inspect_model(path: Path, sample: Path | None = None) -> dict[str, Any]:
    import joblib

    try:
        model = joblib.load(path)
    except Exception as e:  # a text file, a truncated file, a class joblib cannot import
        raise ModelLoadError(f"cannot load {path} as a joblib model: {type(e).__name__}: "
                             f"{e}") from e
    rows = sample_rows(model, sample)
    with tempfile.TemporaryDirectory(prefix="predq-inspect-") as tmp:
        formats = measure_formats(model, Path(tmp))
    runtimes = measure_runtimes(model, rows)
    return {"model": type(model).__name__, "path": str(path),
            "formats": [asdict(f) for f in formats],
            "runtimes": [asdict(r) for r in runtimes],
            "recommendation": recommend(formats, runtimes)}
