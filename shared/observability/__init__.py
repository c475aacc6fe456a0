"""Observability: the metric catalogue and the log format."""
