"""The model registry: a directory of immutable model versions, their manifests and aliases.

Layout (see docs/design.md)::

    <root>/<name>/aliases.json             {"production": "2"}
    <root>/<name>/<version>/manifest.json  a :class:`Manifest`
    <root>/<name>/<version>/model.joblib   the artifact (or model.skops)

Contracts:

- This module never imports sklearn, numpy or joblib at import time: the API reads manifests
  and must never load model code. :meth:`Registry.push` imports them lazily.
- Every name, version and alias is checked against the regexes below before it touches the
  filesystem, so a request for ``../x`` is a :class:`ModelNotFound`, never a path outside root.
- A version, once written, is never rewritten. :meth:`Registry.push` builds it in a staging
  directory and renames it into place, so readers see either no version or a complete one.
- Parsed manifests and :class:`ModelInfo` are cached keyed by the files' stat, so a repeated
  :meth:`Registry.resolve` costs a few ``stat`` calls, not a JSON parse. Cache entries are
  only ever replaced whole, which is safe without locks in threads and asyncio alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from predq.shared.errors import ModelNotFound, RegistryError, VersionNotFound

# What a version is lives in predq.shared.registry.manifest; its names stay importable from here.
from predq.shared.registry.manifest import NAME_RE as NAME_RE
from predq.shared.registry.manifest import VERSION_RE as VERSION_RE
from predq.shared.registry.manifest import Feature as Feature
from predq.shared.registry.manifest import FeatureType as FeatureType
from predq.shared.registry.manifest import Manifest as Manifest
from predq.shared.registry.manifest import Scalar as Scalar
from predq.shared.registry.manifest import sha256_file as sha256_file
from predq.shared.registry.manifest import RuntimeRecord

# Starts with a letter, so an alias can never be all digits (and never shadow a version).
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
DEFAULT_ALIAS = "production"
MANIFEST_FILE = "manifest.json"
ALIASES_FILE = "aliases.json"

_T = TypeVar("_T")
_Stamp = tuple[int, int, int, int]
_ALIASES = TypeAdapter(dict[str, str])


class ModelInfo(BaseModel):
    """A registered model: its versions (ascending), aliases and default version."""

    model_config = ConfigDict(frozen=True)

    name: str
    versions: list[str]
    aliases: dict[str, str]
    default_version: str


def _q(value: str) -> str:
    """``repr`` of a user-supplied string, shortened so error details stay small."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _stamp(path: Path) -> _Stamp | None:
    """What changes when a file is replaced or a directory gains or loses entries."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_nlink)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Registry:
    """The model registry rooted at ``root`` (``PREDQ_REGISTRY_ROOT``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self._cache: dict[tuple[str, Path], tuple[Any, Any]] = {}

    # -- reading ---------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        """Every model with at least one version, sorted by name. A missing root is empty."""
        try:
            names = sorted(p.name for p in self.root.iterdir() if NAME_RE.fullmatch(p.name))
        except FileNotFoundError:
            return []
        infos = []
        for name in names:
            try:
                infos.append(self.model_info(name))
            except ModelNotFound:
                continue
        return infos

    def model_info(self, name: str) -> ModelInfo:
        """The versions and aliases of ``name``; :class:`ModelNotFound` if it has none."""
        model_dir = self._model_dir(name)
        stamp = (_stamp(model_dir), _stamp(model_dir / ALIASES_FILE))
        if stamp[0] is None:
            raise ModelNotFound(f"model {_q(name)} is not registered")
        return self._cached("info", model_dir, stamp, lambda: self._read_info(name))

    def resolve(self, name: str, version_or_alias: str | None = None) -> Manifest:
        """The manifest of a version, an alias, or (``None``) the default version."""
        info = self.model_info(name)
        ref = version_or_alias
        if ref is None:
            version = info.default_version
        elif VERSION_RE.fullmatch(ref):
            version = ref
        elif ALIAS_RE.fullmatch(ref) and ref in info.aliases:
            version = info.aliases[ref]
        else:
            raise VersionNotFound(
                f"model {_q(name)} has no version or alias {_q(ref)}; versions: "
                f"{', '.join(info.versions)}; aliases: {', '.join(info.aliases) or 'none'}"
            )
        if version not in info.versions:
            if ref is None or not VERSION_RE.fullmatch(ref):
                alias = _q(ref or DEFAULT_ALIAS)
                raise RegistryError(f"alias {alias} of {_q(name)} points at missing v{version}")
            raise _no_version(info, version)
        return self.manifest(name, version)

    def manifest(self, name: str, version: str) -> Manifest:
        """The manifest of an exact version (:class:`VersionNotFound` if there is none)."""
        model_dir = self._model_dir(name)
        if not VERSION_RE.fullmatch(version):
            raise VersionNotFound(f"model {_q(name)} has no version {_q(version)}")
        path = model_dir / version / MANIFEST_FILE
        stamp = _stamp(path)
        if stamp is None:
            if _stamp(model_dir) is None:
                raise ModelNotFound(f"model {_q(name)} is not registered")
            raise VersionNotFound(f"model {_q(name)} has no version {_q(version)}")
        manifest = self._cached("manifest", path, stamp, lambda: self._read_manifest(path))
        if (manifest.name, manifest.version) != (name, version):
            raise RegistryError(
                f"{path} describes {manifest.name} version {manifest.version}, "
                f"not {name} version {version}"
            )
        return manifest

    def artifact_path(self, manifest: Manifest) -> Path:
        """Where the artifact of ``manifest`` lives; always inside the registry root."""
        if not NAME_RE.fullmatch(manifest.name) or not VERSION_RE.fullmatch(manifest.version):
            raise RegistryError(f"manifest names an invalid model {_q(manifest.name)}")
        path = (self.root / manifest.name / manifest.version / manifest.artifact).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise RegistryError(f"artifact of {manifest.name} v{manifest.version} leaves root")
        return path

    # -- writing ---------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` of ``name`` at an existing ``version`` (replaces aliases.json)."""
        if not ALIAS_RE.fullmatch(alias):
            raise RegistryError(
                f"invalid alias {_q(alias)}: use {ALIAS_RE.pattern} (a letter first)"
            )
        info = self.model_info(name)
        if version not in info.versions:
            raise _no_version(info, version)
        aliases = {**self._read_aliases(self._model_dir(name)), alias: version}
        data = json.dumps(dict(sorted(aliases.items())), indent=2).encode() + b"\n"
        _write_atomic(self._model_dir(name) / ALIASES_FILE, data)

    @staticmethod
    def check_new_version(name: str, version: str | None, aliases: Sequence[str]) -> None:
        """Refuse (:class:`RegistryError`) a name, version or alias a new version cannot have."""
        if not NAME_RE.fullmatch(name):
            raise RegistryError(f"invalid model name {_q(name)}: use {NAME_RE.pattern}")
        if version is not None and not re.fullmatch(r"0|[1-9][0-9]{0,17}", version):
            raise RegistryError(f"invalid version {_q(version)}: use a number like 1, 2, 3")
        for alias in aliases:
            if not ALIAS_RE.fullmatch(alias):
                raise RegistryError(f"invalid alias {_q(alias)}: use {ALIAS_RE.pattern}")

    def add_version(
        self,
        name: str,
        *,
        version: str | None,
        aliases: Sequence[str],
        fmt: str,
        write_artifact: Callable[[Path], None],
        fields: dict[str, Any],
        runtime: RuntimeRecord,
        trusted_types: list[str] | None = None,
    ) -> Manifest:
        """Store a new version of ``name``: ``write_artifact(path)`` writes ``model.<fmt>``,
        ``fields`` are the inferred manifest fields. The version is the next integer unless
        given; an existing version is never overwritten (:class:`RegistryError`).
        ``predq.push.push_model`` (the CLI's side: load, infer, choose the runtime) calls it.
        """
        self.check_new_version(name, version, aliases)
        model_dir = self.root / name
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"cannot create {model_dir}: {e}") from e
        version = version or self._next_version(name)
        self._check_free(name, version)
        staging = model_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            stored = staging / f"model.{fmt}"
            write_artifact(stored)
            manifest = Manifest(
                name=name,
                version=version,
                format=fmt,  # type: ignore[arg-type]  # checked by the caller
                artifact=stored.name,
                sha256=sha256_file(stored),
                size_bytes=stored.stat().st_size,
                created_at=datetime.now(UTC),
                trusted_types=list(trusted_types) if trusted_types else None,
                runtime=runtime,
                **fields,
            )
            _write_atomic(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._commit_version(staging, name, version)
        for alias in aliases:
            self.set_alias(name, alias, version)
        return manifest

    # -- internals -------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ModelNotFound(f"model {_q(str(name))} is not registered")
        return self.root / name

    def _cached(self, kind: str, path: Path, stamp: Any, load: Callable[[], _T]) -> _T:
        hit = self._cache.get((kind, path))
        if hit is not None and hit[0] == stamp:
            return hit[1]  # type: ignore[no-any-return]
        value = load()
        self._cache[(kind, path)] = (stamp, value)
        return value

    def _read_info(self, name: str) -> ModelInfo:
        model_dir = self._model_dir(name)
        try:
            entries = list(model_dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        versions = sorted(
            (
                p.name
                for p in entries
                if VERSION_RE.fullmatch(p.name) and (p / MANIFEST_FILE).is_file()
            ),
            key=int,
        )
        if not versions:
            raise ModelNotFound(f"model {_q(name)} has no registered version")
        aliases = self._read_aliases(model_dir)
        return ModelInfo(
            name=name,
            versions=versions,
            aliases=aliases,
            default_version=aliases.get(DEFAULT_ALIAS, versions[-1]),
        )

    @staticmethod
    def _read_aliases(model_dir: Path) -> dict[str, str]:
        try:
            raw = (model_dir / ALIASES_FILE).read_bytes()
        except FileNotFoundError:
            return {}
        try:
            aliases = _ALIASES.validate_json(raw)
        except ValidationError as e:
            raise RegistryError(f"{model_dir / ALIASES_FILE} is not a JSON object") from e
        bad = [
            a
            for a, v in aliases.items()
            if not ALIAS_RE.fullmatch(a) or not VERSION_RE.fullmatch(v)
        ]
        if bad:
            raise RegistryError(f"{model_dir / ALIASES_FILE} has invalid aliases: {bad}")
        return aliases

    @staticmethod
    def _read_manifest(path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise RegistryError(f"{path} is not a valid manifest: {e}") from e

    def _next_version(self, name: str) -> str:
        """One more than the highest version directory of ``name`` (staged ones excluded)."""
        try:
            entries = (self.root / name).iterdir()
            existing = [int(p.name) for p in entries if VERSION_RE.fullmatch(p.name)]
        except FileNotFoundError:
            existing = []
        return str(max(existing, default=0) + 1)

    def _check_free(self, name: str, version: str) -> None:
        if (self.root / name / version).exists():
            raise RegistryError(f"model {name} version {version} already exists")

    def _commit_version(self, staging: Path, name: str, version: str) -> None:
        """Rename a complete staging directory to ``<name>/<version>``; never overwrite."""
        try:
            self._check_free(name, version)
            # rename() of a directory fails when the target exists and is not empty, so two
            # concurrent pushes of the same version cannot both win.
            os.rename(staging, self.root / name / version)
        except OSError as e:
            raise RegistryError(f"model {name} version {version} already exists") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _no_version(info: ModelInfo, version: str) -> VersionNotFound:
    versions = ", ".join(info.versions)
    return VersionNotFound(f"model {_q(info.name)} has no version {_q(version)}; has {versions}")
