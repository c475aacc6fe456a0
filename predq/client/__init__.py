"""predq's Python client: predictions, jobs and batch files without writing HTTP by hand.

    from predq.client import Client
    c = Client("http://127.0.0.1:8000", api_key="pq_...")   # or PREDQ_URL / PREDQ_API_KEY
    c.predict("churn", df)                    # DataFrame in -> DataFrame out
    job = c.submit("churn", rows); job.wait(); job.outputs
    b = c.batch("churn", "customers.parquet", id_column="customer_id")
    b.wait(progress=True); b.download("scores.parquet"); b.errors()

:class:`AsyncClient` has the same methods, awaited. Needs only httpx and pydantic (pandas for
DataFrames, tqdm for progress bars): nothing of the server side.
"""

from predq.client._async import AsyncBatch, AsyncClient, AsyncJob
from predq.client._sync import Batch, Client, Job
from predq.client.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    JobFailed,
    NotFound,
    PredqError,
    RateLimited,
    ServerUnavailable,
    Unauthorized,
    WaitTimeout,
)
from predq.client.types import BatchInfo, FileInfo, JobAccepted, JobInfo, ModelDetail, ModelSummary

__all__ = [
    "AsyncBatch", "AsyncClient", "AsyncJob", "Batch", "BatchInfo", "Client", "Conflict",
    "FileInfo", "Forbidden", "InvalidInput", "Job", "JobAccepted", "JobFailed", "JobInfo",
    "ModelDetail", "ModelSummary", "NotFound", "PredqError", "RateLimited",
    "ServerUnavailable", "Unauthorized", "WaitTimeout",
]
