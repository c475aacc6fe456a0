"""API keys: only their sha256 digests are configured; the key itself is never stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from predq.shared.settings import ALL_SCOPES, ApiKeySpec, Settings

KEY_PREFIX = "pq_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the owner of the jobs it creates, and what it may do."""

    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


ANONYMOUS = Principal("anonymous", frozenset(ALL_SCOPES))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (show it once; configure only its hash)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_spec(name: str, key: str, scopes: tuple[str, ...] = ALL_SCOPES) -> ApiKeySpec:
    return ApiKeySpec(name=name, sha256=hash_key(key), scopes=scopes)  # type: ignore[arg-type]


class KeyRing:
    """Looks up a bearer key by its digest, in constant time per configured key."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self._specs = list(settings.api_keys)

    def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        found = None
        for spec in self._specs:
            if hmac.compare_digest(spec.sha256, digest):
                found = spec
        if found is None:
            return None
        return Principal(found.name, frozenset(found.scopes))
