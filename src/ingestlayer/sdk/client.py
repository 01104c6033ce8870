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

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import http.client
import json
import logging
import math
import os
import queue
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiohttp

from ingestlayer.sdk._transport import (
    DEFAULT_BASE_URL,
    EVENTS_PATH,
    GROUP_PATH,
    IDENTIFY_PATH,
    MAX_BATCH_ITEMS,
    USER_AGENT,
    Endpoint,
    backoff_delay,
    batch_body,
    batch_index,
    chunks,
    dumps,
    error_details,
    header,
    new_idempotency_key,
    occurred_at_value,
    parse_retry_after,
)

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

logger = logging.getLogger("ingestlayer.sdk")


# --- errors ------------------------------------------------------------------------------------------


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


# --- results -----------------------------------------------------------------------------------------


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


#: ``on_error(error, events)``: called from the background sender with the events it gave up on
#: (each as the JSON object that was sent: ``type``, ``payload``, ``idempotency_key``, …).
ErrorCallback = Callable[[IngestlayerError, list[dict[str, Any]]], None]


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


@dataclass(slots=True)
class _Flush:
    stop: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class _Cutoff:
    """When a sync sender stops trying: at ``deadline`` (``time.monotonic()``), or once ``stop()``ped.

    The background thread's is stopped by a close() that gave up; the AsyncClient's exit hook,
    which may not start a thread, sends from its own with a deadline instead.
    """

    def __init__(self, deadline: float = math.inf) -> None:
        self._deadline = deadline
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def remaining(self) -> float:
        """Seconds left for trying; 0 or less once cut off."""
        return 0.0 if self._stopped.is_set() else self._deadline - time.monotonic()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` before a retry; False (at once) if the cutoff comes first."""
        if seconds >= self.remaining():
            return False  # waiting would only end in giving up
        return not self._stopped.wait(seconds)


_RETRYABLE_5XX_EXCLUDED = frozenset({501, 505})
# How often a background ingest() looks for room in a full queue (only while the server is down).
_QUEUE_FULL_POLL = 0.01
# The shortest request a deadline leaves room for (a zero socket timeout would mean non-blocking).
_MIN_REQUEST_TIMEOUT = 0.01


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


# --- the blocking client -----------------------------------------------------------------------------

# Live sync clients, so a forked child can give each its own sender thread and connections.
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reinit_after_fork)

_NETWORK_ERRORS = (OSError, http.client.HTTPException)
_STALE_CONNECTION = (http.client.RemoteDisconnected, builtins.ConnectionResetError, BrokenPipeError)


class _SyncHTTP:
    """Keep-alive HTTP/1.1 connections over :mod:`http.client`, one per calling thread."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        # Each open connection and the thread it belongs to (only that thread uses it).
        self._open: dict[http.client.HTTPConnection, threading.Thread] = {}
        self._ssl = ssl.create_default_context() if endpoint.scheme == "https" else None

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(
                self._endpoint.host, self._endpoint.port, timeout=self._timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._endpoint.host, self._endpoint.port, timeout=self._timeout)
        self._local.conn = conn
        with self._lock:
            # A thread that ended leaves its keep-alive connection behind, and nothing else would
            # close it before close(): with a thread per request (ThreadingHTTPServer, some WSGI
            # servers, to_thread callers) that was one socket leaked per request.
            orphans = [c for c, owner in self._open.items() if not owner.is_alive()]
            for orphan in orphans:
                del self._open[orphan]
            self._open[conn] = threading.current_thread()
        for orphan in orphans:
            orphan.close()
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._open.pop(conn, None)
        conn.close()

    def _once(
        self,
        conn: http.client.HTTPConnection,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, dict[str, str], bytes]:
        conn.timeout = timeout  # for connect()
        if conn.sock is not None:  # a kept-alive connection
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", self._endpoint.prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            self._drop(conn)
            raise
        if resp.will_close:
            self._drop(conn)
        return resp.status, dict(resp.getheaders()), data

    def post(
        self, path: str, body: bytes, headers: dict[str, str], timeout: float | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; ``timeout`` (default: the client's) bounds connecting and each read."""
        timeout = self._timeout if timeout is None else timeout
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            return self._once(self._connect(), path, body, headers, timeout)
        try:
            return self._once(conn, path, body, headers, timeout)
        except _STALE_CONNECTION:
            # The server closed the idle keep-alive connection: once more on a fresh one, at once.
            # (Re-sending is safe: the event's idempotency key travels with it.)
            pass
        return self._once(self._connect(), path, body, headers, timeout)

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), {}
        for conn in conns:
            conn.close()


class Client(_Base):
    """A blocking ingestlayer client; safe to share between threads.

    ``api_key`` is an ingest key (``il_ingest_…``). ``timeout`` bounds each HTTP request, in seconds;
    ``max_retries`` is the number of retries after the first attempt (so up to ``max_retries + 1``
    requests). With ``background=True``, :meth:`ingest` queues the event and returns ``None`` at
    once; a daemon thread sends batches of up to ``batch_size`` events at least every
    ``flush_interval`` seconds, and the queue is flushed when the client is closed or the interpreter
    exits (waiting up to ``shutdown_timeout`` seconds, then handing what is unsent to ``on_error``).

    Keyword-only tuning: ``backoff_base``/``backoff_max`` (seconds; the n-th retry waits about
    ``min(backoff_max, backoff_base * 2**(n-1))``, half of it random), ``max_retry_wait`` (the
    longest ``Retry-After`` we sleep through; a longer one raises :class:`RateLimitError` at once),
    ``max_queue_size`` (the most events not sent yet, the batch being sent included: past it,
    ``ingest`` waits up to ``timeout`` for room, then raises :class:`QueueFullError`) and ``on_error``
    (see :data:`ErrorCallback`).

    Example::

        >>> client = Client("il_ingest_example", base_url="https://events.example.com")
        >>> client
        Client(base_url='https://events.example.com:443')
        >>> client.close()
        True
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10,
        max_retries: int = 5,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        background: bool = False,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_wait: float = 60.0,
        max_queue_size: int = 10_000,
        shutdown_timeout: float = 10.0,
        on_error: ErrorCallback | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            timeout,
            max_retries,
            batch_size,
            flush_interval,
            background,
            backoff_base,
            backoff_max,
            max_retry_wait,
            max_queue_size,
            shutdown_timeout,
            on_error,
        )
        self._http = _SyncHTTP(self._endpoint, self.timeout)
        self._lock = threading.Lock()
        self._closed = False
        self._queue: queue.Queue[_Event | _Flush] | None = None
        self._thread: threading.Thread | None = None
        # Every event accepted and neither sent nor reported yet (queued, or in the sender's hands),
        # by id(); guarded by _lock. Whoever takes an event out of it, the sender once it is done
        # or close() giving up, owns its fate: so it is reported once, and this bounds the backlog.
        self._unsent: dict[int, _Event] = {}
        self._cutoff = _Cutoff()
        if self.background:
            self._start_sender()
            atexit.register(self._atexit)
        _CLIENTS.add(self)

    def _start_sender(self) -> None:
        # Unbounded: ingest() bounds the events itself (max_queue_size counts those in the
        # sender's hands too), and a flush marker then never waits for room.
        self._queue = queue.Queue()
        self._unsent = {}
        self._cutoff = _Cutoff()
        self._thread = threading.Thread(target=self._run, name="ingestlayer-sdk-sender", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child (gunicorn with preload, multiprocessing, Celery workers): the sender
        thread did not come along, the connections are the parent's sockets and the lock may be
        held by a thread that is gone. Start afresh; what the parent queued is the parent's to send."""
        self._lock = threading.Lock()
        self._http = _SyncHTTP(self._endpoint, self.timeout)
        if self._queue is not None and not self._closed:
            self._start_sender()

    # -- public API --

    def ingest(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | str | float | None = None,
    ) -> IngestResult | None:
        """Send one event; return the server's answer, or ``None`` when ``background=True`` (queued).

        ``type`` is a dotted name (``feature.used``); ``payload`` a JSON-serialisable mapping
        (datetimes, dates, UUIDs and Decimals are encoded as strings); ``idempotency_key`` makes a
        repeat of the same event count once (one is generated when omitted); ``occurred_at`` is a
        datetime (naive = local time), an ISO 8601 string or unix seconds (default: when received).

        Raises :class:`ValidationError` at once for a payload that cannot be sent; without
        ``background``, any :class:`IngestlayerError` once retries are exhausted.

        Example::

            result = client.ingest("feature.used", {"user_id": "u_1", "feature": "csv.export", "count": 1})
            assert result is not None and result.id.startswith("evt_")
        """
        event = self._event(type, payload, idempotency_key, occurred_at)
        if self._queue is None:
            if self._closed:
                raise IngestlayerError("this client is closed")
            data, attempts = self._post(EVENTS_PATH, event.raw)
            return self._result(data, event, attempts)
        deadline = time.monotonic() + self.timeout
        while True:
            with self._lock:  # so that no event lands behind close()'s stop marker
                if self._closed:
                    raise IngestlayerError("this client is closed")
                if len(self._unsent) < self.max_queue_size:
                    self._unsent[id(event)] = event
                    self._queue.put_nowait(event)
                    return None
            # Wait for room *outside* the lock: holding it through a blocking put made every other
            # thread queue up behind this one, each waiting its own timeout after the previous.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueFullError(
                    f"{self.max_queue_size} events are already waiting to be sent; is the server reachable?"
                )
            time.sleep(min(remaining, _QUEUE_FULL_POLL))

    def identify(self, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create or update the ``user`` entity ``user_id`` with ``traits`` (``POST /v1/identify``).

        Sent at once even with ``background=True``, retried like events (an upsert is idempotent).
        Returns the server's JSON answer.

        Example::

            client.identify("u_1", {"email": "ada@acme.com", "plan": "pro"})
        """
        data, _ = self._post(IDENTIFY_PATH, self._entity_body(user_id, traits))
        return data if isinstance(data, dict) else {"result": data}

    def group(self, user_id: str, account_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach user ``user_id`` to account ``account_id`` and set the account's ``traits``.

        ``POST /v1/group``; sent at once, retried like :meth:`identify`.

        Example::

            client.group("u_1", "acct_acme", {"name": "Acme", "plan": "scale"})
        """
        data, _ = self._post(GROUP_PATH, self._entity_body(user_id, traits, account_id=account_id))
        return data if isinstance(data, dict) else {"result": data}

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event queued before this call is sent (or given to ``on_error``).

        Returns False if ``timeout`` seconds passed first. Without ``background`` there is nothing
        to flush.
        """
        # Closed: every event was sent or given to on_error by close(), and a sender that close()
        # gave up on answers no marker (it would be waited for forever).
        if self._closed or self._queue is None or self._thread is None or not self._thread.is_alive():
            return True
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush the queue, stop the sender thread and close connections. Idempotent.

        Returns False if the queue could not be flushed within ``timeout`` seconds: every event
        not sent by then (queued, or in the batch being sent) goes to ``on_error``.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        flushed = True
        if self._queue is not None and self._thread is not None:
            atexit.unregister(self._atexit)
            if self._thread.is_alive():
                marker = _Flush(stop=True)
                self._queue.put(marker)
                flushed = marker.done.wait(timeout)
                if flushed:
                    self._thread.join(timeout)  # it ends right after answering the marker
                else:
                    self._abandon(timeout)
        self._http.close()
        return flushed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --

    def _atexit(self) -> None:
        self.close(timeout=self.shutdown_timeout)

    def _abandon(self, timeout: float | None) -> None:
        """close() timed out: report every unsent event to ``on_error`` and stop the sender.

        They would never be sent (the process is usually exiting: the daemon thread dies with it),
        and a log line was all the application learnt of them: ``on_error`` gets them instead, e.g.
        to spill them to disk. That includes the batch the sender is retrying; it stops after
        its current attempt and reports none of them again.
        """
        assert self._queue is not None
        self._cutoff.stop()  # first, so that the sender starts no new attempt meanwhile
        markers: list[_Flush] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Flush):
                markers.append(item)
        self._queue.put(_Flush(stop=True))  # wakes a sender that is waiting for events
        self._give_up(
            IngestlayerError(f"not sent: close() gave up after {timeout}s (is the server reachable?)")
        )
        for marker in markers:  # other threads' flush(): their events are sent or reported now
            marker.done.set()

    def _give_up(self, error: IngestlayerError) -> None:
        """Hand every event not sent yet to ``on_error`` with ``error``."""
        with self._lock:
            leftovers = list(self._unsent.values())
            self._unsent.clear()
        if leftovers:
            self._report(error, leftovers)

    def _send_within(self, events: list[_Event], seconds: float) -> None:
        """Send ``events`` from the calling thread for about ``seconds`` at most, then report the rest.

        For the AsyncClient's exit hook: the interpreter is exiting, so no thread may be started.
        """
        self._cutoff = _Cutoff(time.monotonic() + seconds)
        with self._lock:
            self._unsent.update((id(e), e) for e in events)
        self._send_batch(events)
        self._give_up(
            IngestlayerError(f"not sent: the exit hook gave up after {seconds}s (is the server reachable?)")
        )

    def _post(self, path: str, body: bytes, cutoff: _Cutoff | None = None) -> tuple[Any, int]:
        """POST with retries; return ``(decoded JSON, attempts)`` or raise the last error.

        With a ``cutoff`` (the batch senders), no retry starts after it and no request outlasts it.
        """
        headers = self._headers()
        attempts = 0
        while True:
            attempts += 1
            error: IngestlayerError
            timeout = self.timeout
            if cutoff is not None:
                timeout = min(timeout, max(_MIN_REQUEST_TIMEOUT, cutoff.remaining()))
            try:
                status, resp_headers, data = self._http.post(path, body, headers, timeout)
            except _NETWORK_ERRORS as exc:
                error = self._connection_error(exc, attempts)
            else:
                if 200 <= status < 300:
                    return self._decode(status, data, attempts), attempts
                error = self._error(status, resp_headers, data, attempts)
            delay = self._retry_delay(error, attempts)
            if delay is None:
                raise error
            logger.debug("ingestlayer: %s; retrying in %.2fs", error, delay)
            if cutoff is None:
                time.sleep(delay)
            elif not cutoff.sleep(delay):
                raise error

    def _run(self) -> None:
        assert self._queue is not None
        buffer: list[_Event] = []
        deadline = 0.0
        while True:
            try:
                if buffer:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get()
            except queue.Empty:
                item = None  # the batch waited flush_interval: send it
            if isinstance(item, _Event):
                buffer.append(item)
                if len(buffer) == 1:
                    deadline = time.monotonic() + self.flush_interval
                if len(buffer) < self.batch_size:
                    continue
            self._send_batch(buffer)
            buffer = []
            if isinstance(item, _Flush):
                item.done.set()
                if item.stop:
                    return
            if self._cutoff.remaining() <= 0:
                return  # close() gave up and reported what was left

    def _send_batch(self, events: list[_Event]) -> None:
        try:
            for part in chunks([len(e.raw) for e in events], self.batch_size):
                self._deliver(events[part])
        except Exception as exc:  # never let the sender thread die
            logger.exception("ingestlayer: unexpected error while sending a batch")
            # Report what it left unsent, rather than leave it holding places in the queue forever.
            self._settle(events, IngestlayerError(f"not sent: unexpected error in the SDK: {exc!r}"))

    def _deliver(self, events: list[_Event]) -> None:
        pending = list(events)
        while pending and self._cutoff.remaining() > 0:  # else whoever cut it off reports them
            try:
                self._post(EVENTS_PATH, batch_body([e.raw for e in pending]), self._cutoff)
                self._settle(pending)
                return
            except ValidationError as exc:
                index = batch_index(exc.field)
                if index is not None and index < len(pending):
                    # One bad event rejects the whole request: report it and send the rest again.
                    self._settle([pending.pop(index)], exc)
                    continue
                if len(pending) > 1:
                    for half in _halves(pending):
                        self._deliver(half)
                    return
                self._settle(pending, exc)
                return
            except IngestlayerError as exc:
                self._settle(pending, exc)
                return

    def _settle(self, events: list[_Event], error: IngestlayerError | None = None) -> None:
        """The sender is done with ``events``: sent, or given up on with ``error`` (reported).

        Those a close() that gave up already took and reported are not reported again.
        """
        with self._lock:
            mine = [e for e in events if self._unsent.pop(id(e), None) is not None]
        if error is not None and mine:
            self._report(error, mine)


# --- the asyncio client ------------------------------------------------------------------------------

_ASYNC_NETWORK_ERRORS = (aiohttp.ClientError, OSError)


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`, on :mod:`aiohttp`: same arguments, same behaviour.

    Every method is a coroutine. With ``background=True`` an asyncio task sends the batches; it is
    started on demand in the running loop. Use ``async with`` (or ``await client.close()``) so the
    last events are sent and the HTTP session is closed; if the loop ends first (``asyncio.run``
    returning), an :mod:`atexit` hook still sends the leftovers, synchronously, for up to
    ``shutdown_timeout`` seconds (what is unsent then goes to ``on_error``). An
    ``aiohttp.ClientSession`` of your own may be passed as ``session`` (it is then not closed).

    Example::

        async with AsyncClient("il_ingest_…") as client:
            result = await client.ingest("feature.used", {"user_id": "u_1", "feature": "api", "count": 3})
            await client.identify("u_1", {"plan": "pro"})
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10,
        max_retries: int = 5,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        background: bool = False,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_wait: float = 60.0,
        max_queue_size: int = 10_000,
        shutdown_timeout: float = 10.0,
        on_error: ErrorCallback | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            timeout,
            max_retries,
            batch_size,
            flush_interval,
            background,
            backoff_base,
            backoff_max,
            max_retry_wait,
            max_queue_size,
            shutdown_timeout,
            on_error,
        )
        self._session = session
        self._owns_session = session is None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._pending: deque[_Event] = deque()
        self._inflight: list[_Event] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._flush_now = False
        if self.background:
            atexit.register(self._atexit)

    # -- public API --

    async def ingest(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | str | float | None = None,
    ) -> IngestResult | None:
        """Send one event (see :meth:`Client.ingest`); ``None`` when ``background=True`` (queued).

        Example::

            result = await client.ingest("user.signed_up", {"user_id": "u_1"}, idempotency_key="u_1")
        """
        event = self._event(type, payload, idempotency_key, occurred_at)
        if self._closed:
            raise IngestlayerError("this client is closed")
        if not self.background:
            data, attempts = await self._post(EVENTS_PATH, event.raw)
            return self._result(data, event, attempts)
        wake, idle = self._events()
        if self._queue_full():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while self._queue_full():
                if loop.time() >= deadline:
                    raise QueueFullError(
                        f"{self.max_queue_size} events are already waiting to be sent; is the server up?"
                    )
                self._flush_now = True
                wake.set()
                await asyncio.sleep(0.01)
        self._pending.append(event)
        idle.clear()
        self._ensure_task()
        if len(self._pending) == 1 or len(self._pending) >= self.batch_size:
            wake.set()  # start the interval clock, or send a full batch now
        return None

    async def identify(self, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST /v1/identify``: see :meth:`Client.identify`.

        Example::

            await client.identify("u_1", {"email": "ada@acme.com"})
        """
        data, _ = await self._post(IDENTIFY_PATH, self._entity_body(user_id, traits))
        return data if isinstance(data, dict) else {"result": data}

    async def group(
        self, user_id: str, account_id: str, traits: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``POST /v1/group``: see :meth:`Client.group`.

        Example::

            await client.group("u_1", "acct_acme", {"plan": "scale"})
        """
        data, _ = await self._post(GROUP_PATH, self._entity_body(user_id, traits, account_id=account_id))
        return data if isinstance(data, dict) else {"result": data}

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is sent (or given to ``on_error``); False on timeout."""
        if not self._pending and not self._inflight:
            return True
        wake, idle = self._events()
        self._flush_now = True
        self._ensure_task()
        wake.set()
        try:
            await asyncio.wait_for(idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Flush, then close the HTTP session (unless it was passed in). Idempotent."""
        if self._closed:
            return True
        self._closed = True
        flushed = True
        if self.background:
            flushed = await self.flush(timeout)
            atexit.unregister(self._atexit)
            task, self._task = self._task, None
            if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not flushed:
                # Nothing will send them now (the exit hook is gone too): hand them to on_error
                # rather than lose them with only a count in the log.
                leftovers = [*self._inflight, *self._pending]
                self._inflight, self._pending = [], deque()
                if leftovers:
                    error = IngestlayerError(
                        f"not sent: close() gave up after {timeout}s (is the server reachable?)"
                    )
                    self._report(error, leftovers)
        await self._close_session()
        return flushed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals --

    def _queue_full(self) -> bool:
        # The batch being sent counts too: max_queue_size bounds every event not sent yet.
        return len(self._pending) + len(self._inflight) >= self.max_queue_size

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._wake is None or self._idle is None:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._idle.set()
        return self._wake, self._idle

    def _ensure_task(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        if self._inflight:
            # A sender task died mid-send (its loop ended): send those events again, same keys.
            self._pending.extendleft(reversed(self._inflight))
            self._inflight = []
        if task is not None and task.get_loop() is not loop:
            self._wake, self._idle = None, None
            self._events()[1].clear()
        self._task = loop.create_task(self._run(), name="ingestlayer-sdk-sender")

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or (self._owns_session and (session.closed or self._session_loop is not loop)):
            session = aiohttp.ClientSession()
            self._session, self._session_loop = session, loop
        return session

    async def _post(self, path: str, body: bytes) -> tuple[Any, int]:
        session = self._get_session()
        headers = self._headers()
        url = self.base_url + path
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        attempts = 0
        while True:
            attempts += 1
            error: IngestlayerError
            try:
                async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                    data = await resp.read()
                    status, resp_headers = resp.status, dict(resp.headers)
            except _ASYNC_NETWORK_ERRORS as exc:
                error = self._connection_error(exc, attempts)
            else:
                if 200 <= status < 300:
                    return self._decode(status, data, attempts), attempts
                error = self._error(status, resp_headers, data, attempts)
            delay = self._retry_delay(error, attempts)
            if delay is None:
                raise error
            logger.debug("ingestlayer: %s; retrying in %.2fs", error, delay)
            await asyncio.sleep(delay)

    async def _run(self) -> None:
        """The sender task: lives as long as the client (or its event loop)."""
        loop = asyncio.get_running_loop()
        wake, idle = self._events()
        try:
            while True:
                if not self._pending:
                    self._flush_now = False
                    idle.set()
                    wake.clear()
                    await wake.wait()
                    continue
                if not self._flush_now and len(self._pending) < self.batch_size:
                    # Give the batch until flush_interval after its first event to fill up.
                    deadline = loop.time() + self.flush_interval
                    while not self._flush_now and len(self._pending) < self.batch_size:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        wake.clear()
                        try:
                            await asyncio.wait_for(wake.wait(), remaining)
                        except TimeoutError:
                            break
                count = min(self.batch_size, len(self._pending))
                self._inflight = [self._pending.popleft() for _ in range(count)]
                try:
                    for part in chunks([len(e.raw) for e in self._inflight], self.batch_size):
                        await self._deliver(self._inflight[part])
                except Exception:  # never let the sender task die with events in hand
                    logger.exception("ingestlayer: unexpected error while sending a batch")
                self._inflight = []
        except asyncio.CancelledError:
            # close(), or the loop shutting down (asyncio.run returning): unsent events stay queued
            # for the exit hook, and the connections are released while a loop still runs.
            await self._close_session()
            raise

    async def _close_session(self) -> None:
        session = self._session
        if self._owns_session and session is not None and not session.closed:
            with contextlib.suppress(Exception):
                await session.close()

    async def _deliver(self, events: list[_Event]) -> None:
        pending = list(events)
        while pending:
            try:
                await self._post(EVENTS_PATH, batch_body([e.raw for e in pending]))
                return
            except ValidationError as exc:
                index = batch_index(exc.field)
                if index is not None and index < len(pending):
                    self._report(exc, [pending.pop(index)])
                    continue
                if len(pending) > 1:
                    for half in _halves(pending):
                        await self._deliver(half)
                    return
                self._report(exc, pending)
                return
            except IngestlayerError as exc:
                self._report(exc, pending)
                return

    def _atexit(self) -> None:
        """The loop is gone with events unsent (``asyncio.run`` returned): send them synchronously.

        Within ``shutdown_timeout``, as a sync client's exit does; what is unsent then goes to
        ``on_error``. From this thread: no thread may be started while the interpreter exits.
        """
        if self._closed:
            return
        self._closed = True
        leftovers = [*self._inflight, *self._pending]
        self._inflight, self._pending = [], deque()
        session = self._session
        if self._owns_session and session is not None and not session.closed:
            # The loop ended without cancelling our task (it normally does): mark the session
            # closed so aiohttp does not complain; the OS reclaims the sockets at exit.
            connector = session.connector
            session.detach()
            if connector is not None:
                with contextlib.suppress(Exception):
                    connector._close()
        if not leftovers:
            return
        sender = Client(
            self.api_key,
            self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            batch_size=self.batch_size,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            max_retry_wait=self.max_retry_wait,
            on_error=self._on_error,
        )
        try:
            sender._send_within(leftovers, self.shutdown_timeout)
        finally:
            sender.close()
