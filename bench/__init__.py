"""predq's benchmark: ``python -m bench.run`` (see docs/benchmarks.md)."""
