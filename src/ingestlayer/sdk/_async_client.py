"""The asyncio :class:`AsyncClient`, on :mod:`aiohttp`: the twin of the blocking ``Client``."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiohttp

from ingestlayer.sdk._base import IngestResult, _Base, _Event, _halves, logger
from ingestlayer.sdk._errors import (
    ErrorCallback,
    IngestlayerError,
    QueueFullError,
    ValidationError,
)
from ingestlayer.sdk._sync_client import Client
from ingestlayer.sdk._transport import (
    DEFAULT_BASE_URL,
    EVENTS_PATH,
    GROUP_PATH,
    IDENTIFY_PATH,
    batch_body,
    batch_index,
    chunks,
)

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
                if self._closed:
                    # Closed while this call waited for room: nothing would send the event (the
                    # close has handed over what it held), so it is refused, not lost.
                    raise IngestlayerError("this client was closed while the event waited for room")
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
                batch = [self._pending.popleft() for _ in range(count)]
                self._inflight = list(batch)
                try:
                    # Sliced from the batch as taken: each part sent leaves _inflight (_settled),
                    # and the next slice of a shrunk _inflight came back empty, losing its events.
                    for part in chunks([len(e.raw) for e in batch], self.batch_size):
                        await self._deliver(batch[part])
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
                self._settled(pending)
                return
            except ValidationError as exc:
                index = batch_index(exc.field)
                if index is not None and index < len(pending):
                    self._settled_report(exc, [pending.pop(index)])
                    continue
                if len(pending) > 1:
                    for half in _halves(pending):
                        await self._deliver(half)
                    return
                self._settled_report(exc, pending)
                return
            except IngestlayerError as exc:
                self._settled_report(exc, pending)
                return

    def _settled(self, events: list[_Event]) -> None:
        """Out of the batch in hand: a close() that gives up reports only what is still unsent
        (an event rejected alone was reported a second time, with the batch)."""
        done = {id(e) for e in events}
        self._inflight = [e for e in self._inflight if id(e) not in done]

    def _settled_report(self, error: IngestlayerError, events: list[_Event]) -> None:
        self._settled(events)
        self._report(error, events)

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
