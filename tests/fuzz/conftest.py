"""The fuzz tests run against the same stack as the end-to-end tests (``keys``, ``stack``)."""

from tests.e2e.conftest import Stack, keys, stack

__all__ = ["Stack", "keys", "stack"]
