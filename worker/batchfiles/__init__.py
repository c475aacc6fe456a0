"""Batch files on the worker: chunk tasks, vectorized validation, the lane."""
