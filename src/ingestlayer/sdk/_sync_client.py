"""The blocking :class:`Client`: requests on the calling thread, batches on a background thread.

Also the fork handling: a forked child gives each live client its own sender thread and connections.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from ingestlayer.sdk._base import IngestResult, _Base, _Event, _halves, logger
from ingestlayer.sdk._errors import (
    ErrorCallback,
    IngestlayerError,
    QueueFullError,
    ValidationError,
)
from ingestlayer.sdk._sync_http import _NETWORK_ERRORS, _SyncHTTP
from ingestlayer.sdk._transport import (
    DEFAULT_BASE_URL,
    EVENTS_PATH,
    GROUP_PATH,
    IDENTIFY_PATH,
    batch_body,
    batch_index,
    chunks,
)


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


# How often a background ingest() looks for room in a full queue (only while the server is down).
_QUEUE_FULL_POLL = 0.01
# The shortest request a deadline leaves room for (a zero socket timeout would mean non-blocking).
_MIN_REQUEST_TIMEOUT = 0.01
# How often a flush() waiting for the sender looks whether close() has finished meanwhile.
FLUSH_POLL_SECONDS = 0.1


# Live sync clients, so a forked child can give each its own sender thread and connections.
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reinit_after_fork)


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
        self._close_finished = threading.Event()  # close() has sent or reported every event
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
        # A close() that began after the check above stops the sender before it reaches this
        # marker, which is then never answered: waited for in slices, it is over once close() is.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = (
                FLUSH_POLL_SECONDS
                if deadline is None
                else min(FLUSH_POLL_SECONDS, deadline - time.monotonic())
            )
            if marker.done.wait(max(0.0, left)) or self._close_finished.is_set():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

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
        self._close_finished.set()
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
