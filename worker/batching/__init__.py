"""Micro-batching: a framework-free flush policy, and the Celery consumer that applies it."""
