"""The API's hand-built task messages are what a Celery producer would send."""

import base64

import orjson
import redis
from celery import Celery

from predq.shared.jobstore.messages import PREDICT_TASK, predict_message


def test_message_matches_celerys_own(redis_url: str) -> None:
    app = Celery(broker=redis_url, set_as_current=False)
    client = redis.Redis.from_url(redis_url)
    try:
        app.send_task(PREDICT_TASK, args=["j1", "iris", "1", 10], task_id="j1",
                      queue="celery-ref")
        theirs = orjson.loads(client.rpop("celery-ref"))
    finally:
        client.delete("celery-ref", "_kombu.binding.celery-ref")
        app.close()
    ours = orjson.loads(predict_message("j1", "iris", "1", 10, "celery-ref"))
    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for key in ("task", "id", "root_id", "argsrepr", "kwargsrepr", "retries", "timelimit"):
        assert ours["headers"][key] == theirs["headers"][key]
    assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"]
    assert orjson.loads(base64.b64decode(ours["body"])) == \
        orjson.loads(base64.b64decode(theirs["body"]))
