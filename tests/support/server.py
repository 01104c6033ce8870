"""An ingestlayer server running in the test's event loop, on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import uvicorn

from ingestlayer.app import create_app
from ingestlayer.config import Settings
from ingestlayer.http_protocol import http_protocol
from ingestlayer.runtime import Runtime

TEST_SECRET_KEY = "test-master-key-not-for-production"


def test_settings(database_url: str, **overrides: Any) -> Settings:
    base = Settings(
        database_url=database_url,
        allow_private_destinations=True,
        secret_key=TEST_SECRET_KEY,
        poll_interval=0.01,
        shutdown_grace_seconds=2.0,
        # Tests reference their own variables with env:; the server's INGESTLAYER_* stay refused.
        env_secrets=("*",),
    )
    return base.with_overrides(**overrides)


@dataclass
class RunningServer:
    url: str
    runtime: Runtime
    project_id: str
    ingest_key: str
    admin_key: str
    session: aiohttp.ClientSession
    _server: uvicorn.Server
    _task: asyncio.Task[None]

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        h = {**self.auth(key), **(headers or {})}
        async with self.session.request(method, self.url + path, json=json, data=data, headers=h) as resp:
            raw = await resp.read()
            try:
                body = await resp.json(content_type=None) if raw else None
            except ValueError:
                body = raw
            return resp.status, body

    async def ingest(self, type_: str, payload: dict[str, Any], **extra: Any) -> tuple[int, Any]:
        return await self.request(
            "POST", "/v1/events", key=self.ingest_key, json={"type": type_, "payload": payload, **extra}
        )

    async def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.request("POST", "/v1/apply", json={"document": document})
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def set_secret(self, name: str, value: str) -> None:
        status, body = await self.request("PUT", f"/v1/secrets/{name}", json={"value": value})
        assert status == 200, body

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._task
        await self.session.close()


async def start_server(database_url: str, *, project: str = "acme", **overrides: Any) -> RunningServer:
    settings = test_settings(database_url, **overrides)
    rt = Runtime(settings)
    project_id, ingest_key, admin_key = await rt.store.create_project(project)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it every response waits for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(rt),
        lifespan="on",
        log_config=None,
        access_log=False,
        http=http_protocol(settings),  # as the servers run it: held to the settings' HTTP limits
        proxy_headers=False,  # as the servers run it: the app reads them (app.py)
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    return RunningServer(
        url=f"http://127.0.0.1:{port}",
        runtime=rt,
        project_id=project_id,
        ingest_key=ingest_key,
        admin_key=admin_key,
        session=aiohttp.ClientSession(),
        _server=server,
        _task=task,
    )


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def final_delivery(server: RunningServer, event_id: str, timeout: float = 10) -> dict[str, Any]:
    """The first delivery of ``event_id`` once it is delivered or dead (polled as a user would)."""

    async def done() -> dict[str, Any] | None:
        status, event = await server.request("GET", f"/v1/events/{event_id}")
        if status != 200 or not event["deliveries"]:
            return None
        _, d = await server.request("GET", f"/v1/deliveries/{event['deliveries'][0]['id']}")
        return d if d["status"] in ("delivered", "dead") else None

    result: dict[str, Any] = await wait_for(done, timeout)
    return result
