"""Send events to ingestlayer from Python: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the REST API of SPEC §7 (``POST /v1/events``, ``/v1/identify``, ``/v1/group``) and share
one behaviour:

* **Idempotency.** Every event carries an idempotency key: yours, or a random UUID generated when you
  pass none. A retried request re-sends the *same* key, so the server stores the event once however
  many attempts it took.
* **Retries** with exponential backoff and jitter on network errors (refused, reset, timed out), on
  429 (waiting exactly as long as ``Retry-After`` asks, up to ``max_retry_wait``) and on 5xx
  (except 501). Other 4xx answers are never retried: they raise at once.
* **Typed errors**, all subclasses of :class:`IngestlayerError`: :class:`AuthenticationError`
  (401/403), :class:`ValidationError` (400/413/422, with the offending ``field``),
  :class:`RateLimitError` (429, after the retries), :class:`ServerError` (5xx, after the retries),
  :class:`ConnectionError` (the server could not be reached, after the retries) and :class:`APIError`
  for any other HTTP error.
* **Background batching** (``background=True``): :meth:`Client.ingest` only queues the event; a
  background thread (an asyncio task for :class:`AsyncClient`) sends batches of up to ``batch_size``
  events, at least every ``flush_interval`` seconds. :meth:`~Client.flush` waits until everything
  queued so far is sent, :meth:`~Client.close` flushes and stops, and an :mod:`atexit` hook flushes
  whatever is left when the interpreter exits. An event the server rejects (a bad type, too large)
  or that could not be sent after every retry is passed to ``on_error`` (by default: logged on the
  ``ingestlayer.sdk`` logger); the other events of its batch are still delivered.

Example::

    from ingestlayer.sdk import Client

    client = Client("il_ingest_…", base_url="http://127.0.0.1:8000")
    result = client.ingest(
        "user.signed_up",
        {"user_id": "u_1", "email": "ada@acme.com", "plan": "pro"},
        idempotency_key="u_1",  # one signup per user, ever
    )
    print(result.id, result.duplicate)  # evt_01J… False

    with Client("il_ingest_…", background=True) as batching:
        for i in range(1000):
            batching.ingest("feature.used", {"user_id": f"u_{i}", "feature": "csv.export", "count": 1})
    # leaving the block flushed every event
"""

# The code lives in private modules, one job each; this module is their public home (and
# ``ingestlayer.sdk`` re-exports it):
#   _errors.py        the exceptions and the ErrorCallback type
#   _base.py          what both clients share: settings, validation, decoding answers, retry
#                     policy, IngestResult, and the "ingestlayer.sdk" logger
#   _sync_http.py     the blocking client's keep-alive HTTP/1.1 connections
#   _sync_client.py   Client, its background sender thread, and the fork handling
#   _async_client.py  AsyncClient, on aiohttp
#   _transport.py     endpoints, wire format, backoff math (no I/O)

from __future__ import annotations

from ingestlayer.sdk._async_client import AsyncClient
from ingestlayer.sdk._base import (
    IngestResult,
    logger,  # noqa: F401  (still ingestlayer.sdk.client.logger)
)
from ingestlayer.sdk._errors import (
    APIError,
    AuthenticationError,
    ConnectionError,
    ErrorCallback,
    IngestlayerError,
    QueueFullError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from ingestlayer.sdk._sync_client import Client

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
]
