"""``ingestlayer worker --port N``: the worker's ``/healthz``, ``/readyz`` and ``/metrics``.

A worker makes the attempts and routes the events, so its counters are most of what an operator
watches (``docs/monitoring.md``); with ``api`` and ``worker`` run apart, they were nowhere to
scrape. The same three routes as the API's, from the same module, on a port of their own: no
other route, no key, so keep the port off the public internet like any metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import uvicorn
from fastapi import FastAPI

from ingestlayer.api import health
from ingestlayer.api.errors import install_error_handlers
from ingestlayer.api.head_requests import HeadAsGet
from ingestlayer.runtime import Runtime

log = logging.getLogger("ingestlayer")


class _ProbeServer(uvicorn.Server):
    """uvicorn without its signal handlers: the worker's own take SIGTERM and SIGINT, drain the
    attempts in flight, and stop this server last."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def probes_app(rt: Runtime) -> FastAPI:
    app = FastAPI(title="ingestlayer worker", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.runtime = rt
    app.include_router(health.router)
    install_error_handlers(app)
    return app


@contextlib.asynccontextmanager
async def serve_probes(rt: Runtime, sock: socket.socket | None) -> AsyncIterator[None]:
    """Serve the probes on ``sock`` (bound by :func:`ingestlayer.listen.listening_socket`) while
    the block runs; nothing when it is None."""
    if sock is None:
        yield
        return
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        HeadAsGet(cast(Any, probes_app(rt))),
        host=host,
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
    )
    server = _ProbeServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="worker-probes")
    listening = asyncio.create_task(server.listening.wait())
    # The socket is bound already; should the server still fail to start, its task ends first.
    await asyncio.wait([task, listening], return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if task.done():
        task.result()  # re-raise what ended it
        raise OSError(f"the worker's probes stopped before listening on {host}:{port}")
    # An error that ends the server's task while the worker runs (a bug in uvicorn's loop) was
    # seen by nobody until the shutdown, which then ended in that traceback: exit status 1 after
    # a clean drain. It is logged when it happens instead; the probes' socket stays open and
    # answered (the task's end does not close it).
    task.add_done_callback(_say_why_it_stopped)
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):  # logged when it ended
            await task


def _say_why_it_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker's probe server failed", exc_info=task.exception())
