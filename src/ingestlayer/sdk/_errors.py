"""The SDK's exceptions, all subclasses of :class:`IngestlayerError`, and the ``on_error`` callback type.

Re-exported by :mod:`ingestlayer.sdk.client` and :mod:`ingestlayer.sdk`; import them from there.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any


class IngestlayerError(Exception):
    """Base class of every error the SDK raises.

    Attributes (``None`` where they do not apply):

    * ``status``: the HTTP status of the last answer (``None`` when rejected before sending, or when
      no answer came);
    * ``code``: the server's error code, e.g. ``"validation_error"``;
    * ``field``: the request field the server (or the SDK) blamed, e.g. ``"type"`` or
      ``"batch[3].payload"``;
    * ``retry_after``: seconds the server asked us to wait (429/503);
    * ``attempts``: how many requests were made before giving up.

    Example::

        try:
            client.ingest("feature used", {})
        except IngestlayerError as exc:
            print(exc.status, exc.code, exc.field)  # 422 validation_error type
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.retry_after = retry_after
        self.attempts = attempts

    def __str__(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.field is not None:
            details.append(f"field {self.field}")
        if self.attempts > 1:
            details.append(f"after {self.attempts} attempts")
        return f"{self.message} ({', '.join(details)})" if details else self.message


class APIError(IngestlayerError):
    """The server answered with an HTTP error not covered by a more specific class (404, 409, …)."""


class AuthenticationError(APIError):
    """401 or 403: the API key is missing, wrong, revoked, or not allowed to do this. Never retried."""


class ValidationError(APIError):
    """400, 413 or 422 (or rejected locally before sending): ``field`` names what is wrong. Never retried.

    Example::

        try:
            client.ingest("feature.used", {"blob": "x" * 300_000})
        except ValidationError as exc:
            assert exc.status == 413 and exc.field == "payload"
    """


class RateLimitError(APIError):
    """429 after every retry (or with a ``Retry-After`` longer than ``max_retry_wait``)."""


class ServerError(APIError):
    """A 5xx answer after every retry: the event may not be stored; retrying later is safe."""


class ConnectionError(IngestlayerError, builtins.ConnectionError):
    """The server could not be reached (refused, reset, timed out, TLS failure) after every retry.

    It is also a :class:`builtins.ConnectionError` (an :class:`OSError`), so generic network-error
    handlers catch it too.
    """


class QueueFullError(IngestlayerError):
    """``background=True`` and ``max_queue_size`` events are already waiting to be sent.

    The events in the batch being sent count: they are not sent yet either.
    """


#: ``on_error(error, events)``: called from the background sender with the events it gave up on
#: (each as the JSON object that was sent: ``type``, ``payload``, ``idempotency_key``, …).
ErrorCallback = Callable[[IngestlayerError, list[dict[str, Any]]], None]
