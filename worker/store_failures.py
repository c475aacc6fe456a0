"""What a flapping Redis did to a job: recorded on the job, and told when the job is failed.

A batch can fail outside its jobs after its claim worked: the model ran, then Redis refused
the finish (a restart, a failover, a network blip). The batch is requeued after a pause
(``predq.worker.batching.consumer``), and every claim counts a delivery, so a Redis that keeps
failing at the
wrong moment makes the claim fail the job as ``PoisonJob`` ("its worker died each time") when
no worker died. So:

- :func:`record` (pool process, right after such a failure, best effort) adds 1 to the job
  hash's ``store_failures`` and keeps the error in ``store_error``, for each job of the batch
  that is ``running`` (that is, claimed: a batch that failed before its claim did not cost a
  delivery);
- when the claim (``predq.shared.jobstore.scripts``) fails such a job after too many deliveries,
the error
  says so: ``ResultNotStored``, how many times Redis failed after the claim, the last error,
  and how many deliveries ended otherwise (a dying worker), in the same atomic step.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from predq.shared.jobstore.keys import Keys

log = logging.getLogger("predq.worker.store_failures")

# KEYS: job hashes.  ARGV: the error (text, at most 500 characters).
_RECORD = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'running' then
    redis.call('HINCRBY', key, 'store_failures', 1)
    redis.call('HSET', key, 'store_error', ARGV[1])
    n = n + 1
  end
end
return n
"""

#: Pauses between the tries of :func:`record` (Redis has just failed; a blip passes).
RECORD_PAUSES_S = (0.2, 0.5, 1.0)


def record(client: Any, keys: Keys, job_ids: list[str], error: str,
           pauses: tuple[float, ...] = RECORD_PAUSES_S) -> int:
    """Count a store failure on each claimed job of a failed batch; how many. Never raises.

    Tried again after each of ``pauses`` (Redis has just failed, and a blip passes), then
    given up (the job may then end as a plain ``PoisonJob``).
    """
    if not job_ids:
        return 0
    keys_ = [keys.job(j) for j in job_ids]
    for attempt in range(len(pauses) + 1):
        try:
            return int(client.eval(_RECORD, len(keys_), *keys_, error[:500]))
        except Exception as e:  # Redis is failing: this is best effort by nature
            if attempt == len(pauses):
                log.info("could not record the store failure of %d job(s): %r",
                         len(job_ids), e)
                return 0
            time.sleep(pauses[attempt])
    return 0
