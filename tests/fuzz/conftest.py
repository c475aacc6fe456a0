"""The fuzz tests run against the same stack as the end-to-end tests (``stack``; ``keys``
comes from tests/conftest.py)."""

from tests.e2e.conftest import Stack, stack

__all__ = ["Stack", "stack"]
