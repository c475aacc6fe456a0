"""Model runtimes: what computes a model version's outputs, chosen and verified at push.

A *runtime* is anything with ``predict(x)``, ``predict_proba(x)`` (classifiers) and
``classes_``: the :class:`Runtime` protocol. The worker asks the runtime, never the estimator.

- ``sklearn``: the estimator itself (a fitted scikit-learn estimator already is a Runtime).
- ``treelite``: :class:`TreeliteRuntime`, tree ensembles (random forests, extra trees,
  gradient boosting, histogram gradient boosting; bare, or as the final step of a Pipeline
  whose preprocessing still runs in scikit-learn) evaluated by treelite's GTIL, in C,
  without scikit-learn's per-call overhead (~4 ms for a 100-tree forest, whatever the rows).

Contracts:

- The choice is made at push (:func:`choose`) and recorded in the manifest
  (:class:`RuntimeRecord`). An accelerated runtime is chosen only when it reproduces
  scikit-learn on verification rows (the ``--sample`` file, else rows generated from the
  inferred schema and the trees' own split thresholds): labels equal to ``model.predict``
  and probabilities / values within ``tolerance`` (1e-9 unless the operator gives one).
  Otherwise scikit-learn is kept and the record says why.
- :class:`TreeliteRuntime` computes labels the way the estimator's own ``predict`` does
  (argmax of the probabilities for forests, ``raw >= 0`` / ``raw > 0`` for binary gradient
  boosting, argmax of the raw scores for multiclass). A row whose decision is within
  :data:`TIE_MARGIN` of a tie is recomputed by the estimator itself, so a rounding
  difference can never flip a label.
- Workers build the runtime once per model version (:func:`load`), when the model is loaded
  (before the pool forks when models are preloaded). A record verified with another treelite
  version than the installed one falls back to scikit-learn, with a warning.
- This module imports only pydantic at import time: the API reads :class:`RuntimeRecord`
  from manifests and must never load model code.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from predq.shared.errors import RegistryError
from predq.shared.registry.manifest import DEFAULT_TOLERANCE as DEFAULT_TOLERANCE
from predq.shared.registry.manifest import RUNTIMES as RUNTIMES
from predq.shared.registry.manifest import Requested as Requested
from predq.shared.registry.manifest import RuntimeName as RuntimeName
from predq.shared.registry.manifest import RuntimeRecord as RuntimeRecord
from predq.shared.registry.manifest import Speed as Speed
from predq.shared.registry.manifest import Verification as Verification

if TYPE_CHECKING:
    import pandas as pd

    from predq.shared.registry.manifest import Manifest

log = logging.getLogger("predq.runtimes")

#: Decisions closer than this to a tie (or to 0 for binary boosting) are left to sklearn.
TIE_MARGIN = 1e-7
#: Rows generated when no sample is given.
GENERATED_ROWS = 512
SPEED_ROWS = (10, 320)

_TREE_ENSEMBLES = {
    "RandomForestClassifier": "forest_clf",
    "ExtraTreesClassifier": "forest_clf",
    "RandomForestRegressor": "forest_reg",
    "ExtraTreesRegressor": "forest_reg",
    "GradientBoostingClassifier": "gb_clf",
    "GradientBoostingRegressor": "gb_reg",
    "HistGradientBoostingClassifier": "hgb_clf",
    "HistGradientBoostingRegressor": "hgb_reg",
}


class Runtime(Protocol):
    """What the worker calls. A fitted scikit-learn estimator is one as it is."""

    classes_: Any

    def predict(self, x: Any) -> Any: ...

    def predict_proba(self, x: Any) -> Any: ...


class RuntimeRefused(RegistryError):
    """The requested runtime cannot serve this model (push refuses it)."""


# -- treelite ---------------------------------------------------------------------------


def treelite_version() -> str | None:
    try:
        import treelite
    except ImportError:
        return None
    return str(treelite.__version__)


def _split(estimator: Any) -> tuple[Any, Any]:
    """(preprocessing or None, final estimator)."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        pre = estimator[:-1] if len(estimator.steps) > 1 else None
        return pre, estimator[-1]
    return None, estimator


def treelite_ineligible(estimator: Any) -> str | None:
    """Why treelite cannot run ``estimator`` (None when it may, subject to verification)."""
    if treelite_version() is None:
        return "treelite is not installed"
    try:
        _, final = _split(estimator)
    except ImportError:
        return "scikit-learn is not installed"
    name = type(final).__name__
    module = type(final).__module__
    if name not in _TREE_ENSEMBLES or not module.startswith("sklearn.ensemble"):
        return f"{name} is not a tree ensemble treelite imports"
    if getattr(final, "n_outputs_", 1) != 1:
        return f"{name} predicts several outputs"
    return None


class TreeliteRuntime:
    """A tree ensemble (maybe the last step of a Pipeline) evaluated by treelite's GTIL.

    ``predict_proba(x)`` then ``predict(x)`` on the same object share one pass: the labels
    of the last ``predict_proba`` input are kept (per thread) for the next ``predict`` only,
    so the worker's ``predict_proba`` then ``predict`` costs one GTIL call.
    """

    name = "treelite"

    def __init__(self, estimator: Any) -> None:
        import numpy as np
        import treelite

        why = treelite_ineligible(estimator)
        if why:
            raise RuntimeRefused(why)
        self.estimator = estimator
        self.pre, self.final = _split(estimator)
        self.kind = _TREE_ENSEMBLES[type(self.final).__name__]
        # scikit-learn casts inputs to float32 for its trees and forests (the thresholds
        # are float64); histogram gradient boosting keeps float64.
        self._dtype = np.float64 if self.kind.startswith("hgb") else np.float32
        self.model = treelite.sklearn.import_model(self.final)
        self.version = treelite_version()
        self.is_classifier = self.kind.endswith("_clf")
        if self.is_classifier:
            self.classes_ = self.final.classes_
            self.n_classes = len(self.classes_)
        self._local = threading.local()
        #: Whether the input must stay a DataFrame (a Pipeline's preprocessing may select
        #: columns by name); a bare ensemble reads a float matrix in the manifest's order.
        self.wants_frame = self.pre is not None
        if self.kind.startswith("hgb"):
            self._binary_strict = True  # HistGradientBoosting: raw > 0
        else:
            self._binary_strict = False  # GradientBoosting: raw >= 0

    # -- the Runtime protocol ----------------------------------------------------------
    def predict(self, x: Any) -> Any:
        if not self.is_classifier:
            return self._values(x)
        last = getattr(self._local, "last", None)
        self._local.last = None
        if last is not None and last[0]() is x:  # right after predict_proba(x): one pass
            return last[1]
        return self._classify(x)[0]

    def predict_proba(self, x: Any) -> Any:
        if not self.is_classifier:
            raise AttributeError("a regressor has no predict_proba")
        labels, proba = self._classify(x)
        try:  # a weak reference: the runtime never keeps a batch alive
            self._local.last = (weakref.ref(x), labels)
        except TypeError:  # not weak-referenceable (a list, say): no shared pass
            self._local.last = None
        return proba

    # -- internals -------------------------------------------------------------------
    def _matrix(self, x: Any) -> Any:
        import numpy as np

        if self.pre is not None:
            x = self.pre.transform(x)
        if hasattr(x, "toarray"):  # sparse: treelite would read absent entries as missing
            x = x.toarray()
        arr = np.asarray(x, dtype=self._dtype)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2-D input, got shape {arr.shape}")
        return np.ascontiguousarray(arr, dtype=np.float64)

    def _gtil(self, arr: Any, margin: bool) -> Any:
        import treelite.gtil

        out = treelite.gtil.predict(self.model, arr, nthread=1, pred_margin=margin)
        return out.reshape(arr.shape[0], -1)

    def _values(self, x: Any) -> Any:
        import numpy as np

        arr = self._matrix(x)
        out = self._gtil(arr, margin=False)
        if out.shape[1] != 1:
            raise ValueError(f"treelite returned {out.shape[1]} values per row")
        return np.asarray(out[:, 0], dtype=np.float64)

    def _classify(self, x: Any) -> tuple[Any, Any]:
        """(labels, probabilities): labels exactly as the estimator's ``predict``."""
        import numpy as np

        idx, proba, near = self._decide(self._matrix(x))
        labels = np.asarray(self.classes_).take(idx)
        if near.any():  # a (near) tie: let the estimator decide those rows itself
            rows = np.flatnonzero(near)
            sub = x.iloc[rows] if hasattr(x, "iloc") else x[rows]
            names = getattr(self.estimator, "feature_names_in_", None)
            if names is not None and not hasattr(sub, "iloc"):  # fitted on a DataFrame
                import pandas as pd

                sub = pd.DataFrame(sub, columns=list(names))
            labels = labels.copy()
            labels[rows] = np.asarray(self.estimator.predict(sub))
        return labels, proba

    def near_ties(self, x: Any) -> Any:
        """Which rows of ``x`` are decided by the estimator itself (a near tie)."""
        return self._decide(self._matrix(x))[2]

    def _decide(self, arr: Any) -> tuple[Any, Any, Any]:
        """(class index, probabilities, near-tie mask) of a float64 matrix."""
        import numpy as np

        k = self.n_classes
        if self.kind == "forest_clf":
            proba = self._gtil(arr, margin=False)
            if proba.shape[1] != k:
                raise ValueError(f"treelite returned {proba.shape[1]} classes, not {k}")
            idx, near = _argmax_with_ties(proba)
        else:
            raw = self._gtil(arr, margin=True)
            proba = _raw_to_proba(raw, k)
            if raw.shape[1] == 1:
                r = raw[:, 0]
                idx = ((r > 0) if self._binary_strict else (r >= 0)).astype(np.intp)
                near = np.abs(r) <= TIE_MARGIN
            else:
                idx, near = _argmax_with_ties(raw)
        if proba.shape[0] != arr.shape[0]:
            raise ValueError("treelite returned the wrong number of rows")
        return idx, proba, near


def _argmax_with_ties(scores: Any) -> tuple[Any, Any]:
    import numpy as np

    idx = np.argmax(scores, axis=1)
    if scores.shape[1] < 2:
        return idx, np.zeros(scores.shape[0], dtype=bool)
    top2 = np.partition(scores, -2, axis=1)[:, -2:]
    return idx, (top2[:, 1] - top2[:, 0]) <= TIE_MARGIN


def _raw_to_proba(raw: Any, k: int) -> Any:
    """scikit-learn's inverse links: the logistic (binary) or the softmax (multiclass)."""
    import numpy as np
    from scipy.special import expit, softmax

    if raw.shape[1] == 1:
        p1 = expit(raw[:, 0])
        return np.column_stack([1.0 - p1, p1])
    if raw.shape[1] != k:
        raise ValueError(f"treelite returned {raw.shape[1]} scores for {k} classes")
    return softmax(raw, axis=1)


# -- loading in the worker ----------------------------------------------------------------


def load(manifest: Manifest, estimator: Any) -> Any:
    """The runtime of a loaded model version: the estimator, or its accelerated form."""
    record = getattr(manifest, "runtime", None)
    if record is None or record.name == "sklearn":
        return estimator
    if record.name == "treelite":
        installed = treelite_version()
        if installed is None or installed != record.library_version:
            log.warning("model %s v%s was verified with treelite %s, %s is installed: "
                        "serving it with scikit-learn", manifest.name, manifest.version,
                        record.library_version, installed or "none")
            return estimator
        try:
            runtime = TreeliteRuntime(estimator)
        except Exception as e:  # never worse than sklearn
            log.warning("model %s v%s: treelite runtime failed to build (%r): serving it "
                        "with scikit-learn", manifest.name, manifest.version, e)
            return estimator
        log.info("model %s v%s runs on treelite %s", manifest.name, manifest.version,
                 installed)
        return runtime
    log.warning("model %s v%s names an unknown runtime %r: serving it with scikit-learn",
                manifest.name, manifest.version, record.name)
    return estimator


# -- choosing and verifying at push --------------------------------------------------------


def choose(estimator: Any, fields: dict[str, Any], *, sample: pd.DataFrame | None,
           requested: str | None = None, tolerance: float | None = None) -> RuntimeRecord:
    """Pick, verify and time the runtime of a model about to be pushed.

    ``fields`` are the inferred manifest fields (features, task, named_features, ...).
    ``requested``: None or "auto" (the fastest verified runtime), "sklearn", "treelite".
    ``tolerance``: the largest accepted |difference| (default 1e-9). Raises
    :class:`RuntimeRefused` when an explicitly requested runtime cannot serve the model.
    """
    req = requested or "auto"
    if req not in ("auto", *RUNTIMES):
        raise RuntimeRefused(f"unknown runtime {req!r}: use auto, {', '.join(RUNTIMES)}")
    tol = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if not (math.isfinite(tol) and tol >= 0):
        raise RuntimeRefused(f"tolerance must be a finite number >= 0, not {tolerance!r}")
    if req == "sklearn":
        return RuntimeRecord(name="sklearn", requested="sklearn",
                             reason="requested by the operator")
    why = treelite_ineligible(estimator)
    if why:
        if req == "treelite":
            raise RuntimeRefused(f"runtime treelite cannot serve this model: {why}")
        return RuntimeRecord(name="sklearn", requested="auto", reason=f"kept: {why}")
    try:
        runtime = TreeliteRuntime(estimator)
        x, source = verification_frame(estimator, fields, sample)
        verification = verify(estimator, runtime, x, fields["task"], tol, source,
                              x_runtime=worker_input(runtime, x))
    except Exception as e:
        if req == "treelite":
            raise RuntimeRefused(f"runtime treelite could not be verified: "
                                f"{type(e).__name__}: {e}") from e
        return RuntimeRecord(name="sklearn", requested="auto",
                             reason=f"kept: treelite could not be verified "
                                    f"({type(e).__name__}: {e})"[:500])
    if not verification.passed:
        what = _mismatch(verification, tol)
        if req == "treelite":
            hint = "" if tolerance is not None else " (pass an explicit --tolerance to accept it)"
            raise RuntimeRefused(f"runtime treelite does not reproduce scikit-learn: {what}"
                                f"{hint}")
        return RuntimeRecord(name="sklearn", requested="auto", tolerance=tol,
                             verification=verification, library_version=runtime.version,
                             reason=f"kept: treelite {what}")
    speed = measure_speed(estimator, runtime, x, fields["task"])
    return RuntimeRecord(name="treelite", requested=req, tolerance=tol,  # type: ignore[arg-type]
                         verification=verification, speed=speed,
                         library_version=runtime.version)


def _mismatch(v: Verification, tol: float) -> str:
    if v.labels_equal is False:
        return f"gives other labels than model.predict on {v.rows} verification rows"
    return (f"differs from scikit-learn by up to {v.max_abs_diff:.3g} (> tolerance {tol:g}) "
            f"on {v.rows} verification rows")


def _outputs(model: Any, x: Any, task: str) -> tuple[Any, Any]:
    """(labels or None, probabilities or values) of a runtime or an estimator."""
    import numpy as np

    if task == "regression":
        return None, np.asarray(model.predict(x), dtype=np.float64)
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    return np.asarray(model.predict(x)), proba


def worker_input(runtime: Any, x: Any) -> Any:
    """``x`` as the worker hands it to ``runtime``: a float matrix unless it wants a frame."""
    import numpy as np

    if getattr(runtime, "wants_frame", True) or not hasattr(x, "to_numpy"):
        return x
    return np.column_stack([x[c].to_numpy().astype(np.float64, copy=False) for c in x.columns])


def verify(estimator: Any, runtime: Any, x: Any, task: str, tolerance: float,
           source: str, x_runtime: Any = None) -> Verification:
    """Compare ``runtime`` with ``estimator`` on ``x``: labels equal, numbers within tol."""
    import numpy as np

    want_labels, want = _outputs(estimator, x, task)
    got_labels, got = _outputs(runtime, x if x_runtime is None else x_runtime, task)
    n = int(want.shape[0])
    if got.shape != want.shape:
        return Verification(rows=n, source=source, passed=False,  # type: ignore[arg-type]
                            labels_equal=None if want_labels is None else False,
                            max_abs_diff=math.inf)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, diff)
    max_diff = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
    labels_equal = None
    if want_labels is not None:
        labels_equal = bool(got_labels.shape == want_labels.shape
                            and (got_labels == want_labels).all()
                            and got_labels.dtype.kind == want_labels.dtype.kind)
    passed = max_diff <= tolerance and labels_equal is not False
    return Verification(rows=n, source=source,  # type: ignore[arg-type]
                        labels_equal=labels_equal, max_abs_diff=max_diff, passed=passed)


def measure_speed(estimator: Any, runtime: Any, x: Any, task: str,
                  sizes: Sequence[int] = SPEED_ROWS, repeat: int = 5) -> list[Speed]:
    """Median wall time of one call (predict_proba + predict for classifiers) at each size."""
    import numpy as np

    if getattr(runtime, "is_classifier", False):  # time the usual case: rows treelite decides alone
        keep = np.flatnonzero(~runtime.near_ties(x))
        if keep.size:
            x = x.iloc[keep] if hasattr(x, "iloc") else x[keep]
    out = []
    for rows in sizes:
        part = _take(x, rows)

        def call(model: Any, part: Any = part) -> float:
            t = time.perf_counter()
            _outputs(model, part, task)
            return time.perf_counter() - t

        call(estimator)
        fast = worker_input(runtime, part)  # what the worker hands the runtime
        call(runtime, fast)
        sk = sorted(call(estimator) for _ in range(repeat))[repeat // 2] * 1000
        rt = sorted(call(runtime, fast) for _ in range(repeat))[repeat // 2] * 1000
        out.append(Speed(rows=rows, sklearn_ms=round(sk, 4), runtime_ms=round(rt, 4),
                         speedup=round(sk / rt, 1) if rt > 0 else 0.0))
    return out


def _take(x: Any, rows: int) -> Any:
    """The first ``rows`` rows of ``x``, repeated as often as needed."""
    import numpy as np

    n = x.shape[0]
    idx = np.arange(rows) % n
    return x.iloc[idx].reset_index(drop=True) if hasattr(x, "iloc") else x[idx]


# -- verification rows --------------------------------------------------------------------


def verification_frame(estimator: Any, fields: dict[str, Any], sample: pd.DataFrame | None,
                       n: int = GENERATED_ROWS, seed: int = 0) -> tuple[Any, str]:
    """The model's input for verification, built exactly as the worker builds a batch.

    The sample's rows (when given) and rows generated from the schema: each feature's
    categories, else random numbers at several scales, plus the trees' own split
    thresholds and their float neighbours (where a ``<=`` decides), plus missing values
    when the model accepts them. Rows go through :mod:`predq.shared.jobstore.codec` like a job's inputs.
    """
    columns_sample: dict[str, list[Any]] | None = None
    features = fields["features"]
    if sample is not None and len(sample):
        columns_sample = _sample_columns(sample, features, fields["named_features"])
    generated = _generate_columns(estimator, fields, n, seed)
    names = [f.name for f in features]
    if columns_sample is not None:
        cols = {k: columns_sample[k] + generated[k] for k in names}
        source = "sample+generated"
    else:
        cols = generated
        source = "generated"
    frame = encode_frame(fields, cols)
    try:  # rows the estimator itself rejects are no test of the runtime: drop them
        _outputs(estimator, frame, fields["task"])
    except Exception:
        if columns_sample is None:
            raise
        frame = encode_frame(fields, columns_sample)
        source = "sample"
    return frame, source


def encode_frame(fields: dict[str, Any], cols: dict[str, list[Any]]) -> Any:
    """Columns of plain values -> codec bytes -> the worker's frame (see build_frame)."""
    import numpy as np

    from predq.shared.jobstore import codec

    features = fields["features"]
    n = len(cols[features[0].name]) if features else 0
    data = codec.encode(n, [(f.name, f.type, cols[f.name]) for f in features])
    _, decoded = codec.decode(data)
    names = [f.name for f in features]
    # The same as predq.worker.predict.build_frame (shared/ may not import worker/).
    if fields["named_features"]:
        import pandas as pd

        return pd.DataFrame({k: decoded[k] for k in names}, columns=names, copy=False)
    return np.column_stack([decoded[k].astype(np.float64, copy=False) for k in names])


def _plain(v: Any) -> Any:
    """A pandas/numpy cell as a JSON-ish Python value; NaN/NA -> None."""
    import pandas as pd

    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


def _sample_columns(sample: pd.DataFrame, features: list[Any], named: bool
                    ) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {}
    for i, f in enumerate(features):
        series = sample[f.name] if named else sample.iloc[:, i]
        values = [_plain(v) for v in series.tolist()]
        cols[f.name] = [_coerce(v, f.type) for v in values]
    return cols


def _coerce(v: Any, kind: str) -> Any:
    if v is None:
        return None
    try:
        if kind == "number":
            return float(v)
        if kind == "integer":
            return int(v)
        if kind == "boolean":
            return bool(v)
        return str(v)
    except (TypeError, ValueError):
        return None


def _thresholds(estimator: Any, n_features: int) -> dict[int, Any]:
    """Split thresholds per input feature of a bare tree ensemble (none for pipelines)."""
    import numpy as np

    pre, final = _split(estimator)
    if pre is not None:
        return {}
    found: dict[int, list[Any]] = {}
    trees = []
    for est in np.ravel(getattr(final, "estimators_", [])):
        tree = getattr(est, "tree_", None)
        if tree is not None:
            trees.append((tree.feature, tree.threshold))
    for predictors in getattr(final, "_predictors", []):  # HistGradientBoosting
        for p in predictors:
            nodes = p.nodes
            mask = ~nodes["is_leaf"].astype(bool)
            trees.append((nodes["feature_idx"][mask].astype(np.int64),
                          nodes["num_threshold"][mask]))
    for feat, thr in trees:
        for j, t in zip(feat.tolist(), thr.tolist(), strict=True):
            if 0 <= j < n_features:
                found.setdefault(j, []).append(t)
    out = {}
    for j, v in found.items():
        arr = np.unique(np.asarray(v, dtype=np.float64))
        out[j] = arr[np.isfinite(arr)]  # a missing-value split has an infinite threshold
    return out


def _generate_columns(estimator: Any, fields: dict[str, Any], n: int, seed: int
                      ) -> dict[str, list[Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    features = fields["features"]
    thresholds = _thresholds(estimator, len(features))
    missing = bool(fields.get("accepts_missing"))
    cols: dict[str, list[Any]] = {}
    for j, f in enumerate(features):
        if f.categories:
            values = [f.categories[i] for i in rng.integers(0, len(f.categories), n)]
        elif f.type == "string":
            values = [f"v{i}" for i in rng.integers(0, 5, n)]
        elif f.type == "boolean":
            values = [bool(b) for b in rng.integers(0, 2, n)]
        elif f.type == "integer":
            values = [int(i) for i in rng.integers(-3, 100, n)]
        else:
            scale = rng.choice([1.0, 10.0, 100.0, 1000.0], n)
            nums = rng.normal(0.0, 1.0, n) * scale
            thr = thresholds.get(j)
            if thr is not None and thr.size:  # at, just below and just above the splits
                picks = thr[rng.integers(0, thr.size, n)]
                f32 = picks.astype(np.float32).astype(np.float64)
                kind = rng.integers(0, 5, n)
                nums = np.select(
                    [kind == 0, kind == 1, kind == 2, kind == 3],
                    [picks, np.nextafter(picks, -np.inf), np.nextafter(picks, np.inf), f32],
                    nums)
            values = [float(v) for v in nums]
        if missing and f.type in ("number", "integer"):
            holes = rng.random(n) < 0.1
            values = [None if h else v for v, h in zip(values, holes, strict=True)]
        cols[f.name] = values
    return cols
