"""The micro-batching Celery consumer: celery-batches adapted to predq."""
