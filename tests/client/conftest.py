"""The client tests reuse the end-to-end stack (real uvicorn, workers and Redis)."""

from tests.e2e.conftest import Stack, stack  # noqa: F401  (the fixture, re-exported)
