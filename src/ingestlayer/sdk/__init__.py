"""The ingestlayer Python SDK: send events, and verify the webhooks ingestlayer delivers.

* :class:`Client` / :class:`AsyncClient` send events (``ingest``), ``identify`` users and ``group``
  them into accounts, with retries, idempotency keys and optional background batching
  (:mod:`ingestlayer.sdk.client`).
* :func:`verify` checks a delivered webhook's signature in your receiver
  (:mod:`ingestlayer.sdk.webhooks`, standard library only).

Example::

    from ingestlayer.sdk import Client

    with Client("il_ingest_…", base_url="http://127.0.0.1:8000") as client:
        client.ingest("feature.used", {"user_id": "u_1", "feature": "csv.export", "count": 1})
"""

from ingestlayer.sdk.client import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionError,
    ErrorCallback,
    IngestlayerError,
    IngestResult,
    QueueFullError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from ingestlayer.sdk.webhooks import WebhookVerificationError, verify

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectionError",
    "ErrorCallback",
    "IngestResult",
    "IngestlayerError",
    "QueueFullError",
    "RateLimitError",
    "ServerError",
    "ValidationError",
    "WebhookVerificationError",
    "verify",
]
