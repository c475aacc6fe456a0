"""Loading and saving estimators: joblib (trusted pickles) or skops (typed, opt-in trust).

Contracts:

- :func:`load_estimator` with ``expected_sha256`` hashes the file before any byte of it is
  unpickled, and raises :class:`IntegrityError` on a mismatch or a missing file.
- A model pickled by another scikit-learn version never loads silently: its
  ``InconsistentVersionWarning`` becomes a :class:`RegistryError`.
- Uncompressed joblib files are memory-mapped read-only (``mmap_mode="r"``), so the processes
  of one worker share the model's arrays through the page cache.
- joblib, sklearn and skops are imported inside the functions: importing this module is cheap.

``warnings.catch_warnings`` changes process-wide state; loads are meant to happen in worker
processes (prefork) or the CLI, not concurrently in threads of one process.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import Any

from predq.shared.errors import IntegrityError, RegistryError
from predq.shared.registry.manifest import sha256_file

FORMATS = ("joblib", "skops")
# Every pickle of protocol >= 2 starts with the PROTO opcode. Compressed joblib files start
# with their compressor's magic (zlib, gzip, bz2, xz, lz4) instead and cannot be mmap-ed.
_PICKLE_PROTO = b"\x80"


def load_estimator(
    path: Path,
    *,
    fmt: str,
    expected_sha256: str | None,
    trusted_types: list[str] | None = None,
    mmap: bool = True,
) -> Any:
    """Load the estimator stored at ``path`` in format ``fmt`` ("joblib" or "skops").

    Raises :class:`IntegrityError` when ``expected_sha256`` is given and the file is missing
    or differs, and :class:`RegistryError` when the file cannot be loaded: another
    scikit-learn version, untrusted skops types, skops not installed, a broken file.
    """
    from sklearn.exceptions import InconsistentVersionWarning

    path = Path(path)
    if fmt not in FORMATS:
        raise RegistryError(f"unknown model format {fmt!r} of {path}: use joblib or skops")
    if expected_sha256 is not None:
        _check_sha256(path, expected_sha256)
    elif not path.is_file():
        raise RegistryError(f"model file {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            if fmt == "skops":
                return _load_skops(path, trusted_types)
            return _load_joblib(path, mmap=mmap)
        except InconsistentVersionWarning as w:
            raise RegistryError(
                f"model file {path} was saved with scikit-learn {w.original_sklearn_version} "
                f"but this process runs {w.current_sklearn_version}: re-train it or install "
                f"scikit-learn {w.original_sklearn_version}, then push it again"
            ) from w
        except RegistryError:
            raise
        except Exception as e:  # unpickling runs arbitrary code: anything can go wrong
            raise RegistryError(_load_failure(path, fmt, e)) from e


#: First bytes of the files a joblib load may meet, and what to call them.
_MAGIC = (
    (b"\x80", "a pickle"),
    (b"\x78", "a zlib-compressed joblib file"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bz2-compressed file"),
    (b"\xfd7zXZ", "an xz-compressed file"),
    (b"\x04\x22\x4d\x18", "an lz4-compressed file"),
    (b"PK\x03\x04", "a ZIP archive (a .skops file? pass --format skops)"),
    (b"\x93NUMPY", "a NumPy .npy array, not a model"),
    (b"\x89HDF", "an HDF5 file (a Keras model?), not a scikit-learn model"),
)


def describe_file(path: Path) -> str:
    """What the file at ``path`` looks like, from its first bytes (for error messages)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of an unknown kind"
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    kind = ("a JSON file" if first[:1] in "{[" and first else
            "a CSV file" if "," in first else "a text file")
    return f"{kind} (it starts with {first[:40]!r})"


def _load_failure(path: Path, fmt: str, e: Exception) -> str:
    """The message of a model file that cannot be loaded, with the usual fix when known."""
    missing = _missing_class(e)
    if missing is not None:
        module, name = missing
        if module == "__main__" or module.endswith(".__main__"):
            return (
                f"model file {path} needs the class {name!r}, which was defined in __main__ (a "
                "notebook or a script) and so cannot be imported here. Move the class into a "
                "module (e.g. my_models.py), import it from there, fit and save the model "
                "again, and make that module importable by `predq models push` and by the "
                "workers (pip install it, or put its directory on PYTHONPATH)"
            )
        needed = f"the module {module!r}" if name == "*" else f"{module}.{name}"
        return (
            f"model file {path} needs {needed}, which cannot be imported here "
            f"({type(e).__name__}: {e}). Make the module {module!r} importable by `predq "
            "models push` and by the workers (pip install it, or put its directory on "
            "PYTHONPATH)"
        )
    what = describe_file(path)
    if fmt == "joblib" and not what.startswith(("a pickle", "a zlib", "a gzip", "a bz2",
                                                 "an xz", "an lz4")):
        return (f"model file {path} is not a joblib file: it is {what}. Push the file that "
                "joblib.dump(model, path) wrote")
    return f"cannot load model file {path} ({fmt}, {what}): {type(e).__name__}: {e}"


def _missing_class(e: Exception) -> tuple[str, str] | None:
    """(module, name) when unpickling failed because a class or its module is missing."""
    import re

    if isinstance(e, ModuleNotFoundError) and e.name:
        return e.name, "*"
    if isinstance(e, AttributeError):
        m = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(e))
        if m:
            return m.group(2), m.group(1)
    return None


def dump_estimator(estimator: Any, path: Path, fmt: str) -> None:
    """Save ``estimator`` to ``path`` atomically; joblib files are written uncompressed."""
    path = Path(path)
    if fmt not in FORMATS:
        raise RegistryError(f"unknown model format {fmt!r}: use joblib or skops")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "skops":
            _skops_io().dump(estimator, tmp)
        else:
            import joblib

            joblib.dump(estimator, tmp, compress=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_sha256(path: Path, expected: str) -> None:
    try:
        actual = sha256_file(path)
    except FileNotFoundError as e:
        raise IntegrityError(f"model file {path} is missing") from e
    except OSError as e:
        raise IntegrityError(f"model file {path} cannot be read: {e}") from e
    if actual != expected.lower():
        raise IntegrityError(
            f"model file {path} has sha256 {actual}, but its manifest says {expected}: "
            "the file was changed after it was registered"
        )


def _load_joblib(path: Path, *, mmap: bool) -> Any:
    import joblib

    with open(path, "rb") as f:
        mmap_ok = mmap and f.read(1) == _PICKLE_PROTO
    return joblib.load(path, mmap_mode="r" if mmap_ok else None)


def _load_skops(path: Path, trusted_types: list[str] | None) -> Any:
    sio = _skops_io()
    try:
        return sio.load(path, trusted=list(trusted_types) if trusted_types else None)
    except sio.exceptions.UntrustedTypesFoundException as e:
        untrusted = sio.get_untrusted_types(file=path)
        raise RegistryError(
            f"model file {path} holds types that are not trusted: {untrusted}. Review them, "
            "then register with --trusted-type for each one you trust"
        ) from e


def _skops_io() -> Any:
    try:
        import skops.io
        import skops.io.exceptions
    except ImportError as e:
        raise RegistryError(
            "skops is not installed: pip install 'predq[skops]' to use .skops models"
        ) from e
    return skops.io
