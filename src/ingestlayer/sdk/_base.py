"""What :class:`~ingestlayer.sdk.client.Client` and :class:`~ingestlayer.sdk.client.AsyncClient` share.

Settings and their validation, building an event's JSON, decoding answers into results or typed
errors, the retry policy, and reporting what could not be sent to ``on_error``. No I/O here: each
client sends through its own transport.
"""

from __future__ import annotations

import builtins
import http.client
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingestlayer.sdk._errors import (
    APIError,
    AuthenticationError,
    ConnectionError,
    ErrorCallback,
    IngestlayerError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from ingestlayer.sdk._transport import (
    MAX_BATCH_ITEMS,
    USER_AGENT,
    Endpoint,
    backoff_delay,
    dumps,
    error_details,
    header,
    new_idempotency_key,
    occurred_at_value,
    parse_retry_after,
)

# The logger every SDK module writes to: users configure it by this name, and the docs name it.
logger = logging.getLogger("ingestlayer.sdk")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the server answered for one event.

    ``duplicate`` is True when the server already held an event with this idempotency key (it then
    returns that first event's ``id`` and routes nothing again). When the SDK generated the key
    itself, a retry that finds its own earlier attempt stored is *not* reported as a duplicate.
    """

    id: str
    duplicate: bool
    idempotency_key: str


def _log_error(error: IngestlayerError, events: list[dict[str, Any]]) -> None:
    keys = ", ".join(str(e.get("idempotency_key")) for e in events[:5])
    more = f" and {len(events) - 5} more" if len(events) > 5 else ""
    logger.error("ingestlayer: %d event(s) not sent (%s): keys %s%s", len(events), error, keys, more)


@dataclass(slots=True)
class _Event:
    doc: dict[str, Any]
    raw: bytes
    key: str
    generated_key: bool


_RETRYABLE_5XX_EXCLUDED = frozenset({501, 505})


def _halves(events: list[_Event]) -> tuple[list[_Event], list[_Event]]:
    """Split a batch the server refused as a whole, without naming an event.

    That happens for a number beyond 64 bits anywhere in the body (422 without a field), a proxy or
    server with a smaller body limit than ours (413, e.g. nginx's 1 MiB default) or fewer events per
    request (413 on ``batch``). Halving until the requests pass isolates the event(s) at fault, so
    one bad event costs its own delivery, not that of every event sent with it.
    """
    middle = len(events) // 2
    return events[:middle], events[middle:]


class _Base:
    """Settings, validation and request preparation shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        timeout: float,
        max_retries: int,
        batch_size: int,
        flush_interval: float,
        background: bool,
        backoff_base: float,
        backoff_max: float,
        max_retry_wait: float,
        max_queue_size: int,
        shutdown_timeout: float,
        on_error: ErrorCallback | None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key is required: an ingest key (il_ingest_…) from `ingestlayer init`")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if not 1 <= batch_size <= MAX_BATCH_ITEMS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_ITEMS}, got {batch_size!r}")
        if flush_interval < 0 or backoff_base < 0 or backoff_max < 0 or max_retry_wait < 0:
            raise ValueError("flush_interval, backoff_base, backoff_max and max_retry_wait must be >= 0")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size!r}")
        self.api_key = api_key.strip()
        self._endpoint = Endpoint.parse(base_url)
        self.base_url = self._endpoint.url
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.batch_size = int(batch_size)
        self.flush_interval = float(flush_interval)
        self.background = bool(background)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_wait = float(max_retry_wait)
        self.max_queue_size = int(max_queue_size)
        self.shutdown_timeout = float(shutdown_timeout)
        self._on_error: ErrorCallback = on_error or _log_error

    def __repr__(self) -> str:
        mode = ", background=True" if self.background else ""
        return f"{type(self).__name__}(base_url={self.base_url!r}{mode})"

    # -- request preparation --

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _event(
        self,
        type: str,
        payload: Mapping[str, Any] | None,
        idempotency_key: str | None,
        occurred_at: datetime | str | float | None,
    ) -> _Event:
        if not isinstance(type, str) or not type:
            raise ValidationError(
                "type must be a non-empty string: a dotted event name such as 'feature.used'", field="type"
            )
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise ValidationError(
                f"payload must be a mapping (a JSON object), got {builtins.type(payload).__name__}",
                field="payload",
            )
        generated = idempotency_key is None
        key = new_idempotency_key() if idempotency_key is None else idempotency_key
        if not isinstance(key, str) or not 0 < len(key) <= 255:
            raise ValidationError(
                "idempotency_key must be a string of 1 to 255 characters", field="idempotency_key"
            )
        doc: dict[str, Any] = {"type": type, "payload": dict(payload), "idempotency_key": key}
        try:
            occurred = occurred_at_value(occurred_at)
        except TypeError as exc:
            raise ValidationError(str(exc), field="occurred_at") from None
        if occurred is not None:
            doc["occurred_at"] = occurred
        try:
            raw = dumps(doc)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"payload is not JSON-serializable: {exc}", field="payload") from None
        return _Event(doc, raw, key, generated)

    @staticmethod
    def _entity_body(user_id: str, traits: Mapping[str, Any] | None, **ids: str) -> bytes:
        for name, value in {"user_id": user_id, **ids}.items():
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{name} must be a non-empty string", field=name)
        if traits is not None and not isinstance(traits, Mapping):
            raise ValidationError("traits must be a mapping (a JSON object)", field="traits")
        try:
            return dumps({"user_id": user_id, **ids, "traits": dict(traits or {})})
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"traits are not JSON-serializable: {exc}", field="traits") from None

    # -- responses --

    @staticmethod
    def _error(status: int, headers: Mapping[str, str], data: bytes, attempts: int) -> APIError:
        code, message, blamed = error_details(data)
        if message is None:
            snippet = data[:200].decode("utf-8", "replace").strip()
            message = f"unexpected answer from the server: {snippet or http.client.responses.get(status, '')}"
        retry_after = parse_retry_after(header(headers, "Retry-After"))
        cls: type[APIError]
        if status in (401, 403):
            cls = AuthenticationError
        elif status in (400, 413, 422):
            cls = ValidationError
        elif status == 429:
            cls = RateLimitError
        elif status >= 500:
            cls = ServerError
        else:
            cls = APIError
        return cls(
            message, status=status, code=code, field=blamed, retry_after=retry_after, attempts=attempts
        )

    @staticmethod
    def _decode(status: int, data: bytes, attempts: int) -> Any:
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError:
            raise APIError(
                f"the server answered {status} with a body that is not JSON",
                status=status,
                code="invalid_response",
                attempts=attempts,
            ) from None

    @staticmethod
    def _result(data: Any, event: _Event, attempts: int) -> IngestResult:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise APIError("the server's answer has no event id", code="invalid_response", attempts=attempts)
        duplicate = bool(data.get("duplicate", False))
        if duplicate and event.generated_key and attempts > 1:
            # Our key is unique to this call: the "earlier" event is our own lost first attempt.
            duplicate = False
        return IngestResult(id=data["id"], duplicate=duplicate, idempotency_key=event.key)

    def _retry_delay(self, error: IngestlayerError, attempts: int) -> float | None:
        """Seconds to wait before trying again, or None to give up and raise ``error``."""
        if attempts > self.max_retries:
            return None
        retryable = isinstance(error, ConnectionError | RateLimitError) or (
            isinstance(error, ServerError) and error.status not in _RETRYABLE_5XX_EXCLUDED
        )
        if not retryable:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_wait else None
        return backoff_delay(attempts, self.backoff_base, self.backoff_max)

    def _connection_error(self, exc: BaseException, attempts: int) -> ConnectionError:
        reason = str(exc) or type(exc).__name__
        err = ConnectionError(f"could not reach {self.base_url}: {reason}", attempts=attempts)
        err.__cause__ = exc
        return err

    def _report(self, error: IngestlayerError, events: list[_Event]) -> None:
        try:
            self._on_error(error, [e.doc for e in events])
        except Exception:  # a broken callback must not kill the sender
            logger.exception("ingestlayer: the on_error callback raised")
