"""What predq's custom Celery consumer strategies share: turning a message into a Request.

Both the micro-batching predict task and the threaded webhook task replace Celery's default
strategy (which would hand each message to the pool alone). This is the part of Celery's own
``celery.worker.strategy.default`` they both need, written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import signals
from celery.utils.imports import symbol_by_name
from celery.worker.request import create_request_cls
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2


def request_factory(task: Any, app: Any, consumer: Any) -> Callable[..., Any]:
    """``make(message, body, ack, reject) -> Request``, with ``task_received`` sent."""
    hostname = consumer.hostname
    eventer = consumer.event_dispatcher
    connection_errors = consumer.connection_errors
    req_cls = create_request_cls(symbol_by_name(task.Request), task, consumer.pool,
                                 hostname, eventer, app=app)

    def make(message: Any, body: Any, ack: Any, reject: Any) -> Any:
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = (message.body, message.headers, False,
                                           app.uses_utc_timezone())
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        req = req_cls(message, on_ack=ack, on_reject=reject, app=app, hostname=hostname,
                      eventer=eventer, task=task, body=body, headers=headers,
                      decoded=decoded, utc=utc, connection_errors=connection_errors)
        signals.task_received.send(sender=consumer, request=req)
        return req

    return make
