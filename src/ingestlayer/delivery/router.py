"""The router: lease route jobs, run pipelines, write deliveries, in that order.

Steps run outside any transaction; the deliveries and the job's removal are then committed
together, and only for jobs whose lease is still ours, so a slow or killed router can never
route an event twice or lose it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ingestlayer.config import Settings
from ingestlayer.pipeline.runner import CompiledProject, compile_project, route_event
from ingestlayer.records import NewDelivery, RouteLease
from ingestlayer.store.store import Store

log = logging.getLogger("ingestlayer.router")

# Back-off for an event whose routing raised: it stays queued and is tried again.
ROUTE_RETRY_DELAY = 5.0


class ConfigCache:
    """Compiled project configuration, refreshed when the project's config_version moves."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._compiled: dict[str, CompiledProject] = {}

    async def get_many(self, project_ids: set[str]) -> dict[str, CompiledProject]:
        versions = await self._store.config_versions(project_ids)
        out: dict[str, CompiledProject] = {}
        for pid in project_ids:
            version = versions.get(pid)
            if version is None:
                continue
            cached = self._compiled.get(pid)
            if cached is None or cached.version != version:
                cached = compile_project(await self._store.load_project_config(pid))
                self._compiled[pid] = cached
            out[pid] = cached
        return out


class Router:
    def __init__(
        self, store: Store, settings: Settings, on_routed: Callable[[int], None] | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.configs = ConfigCache(store)
        self._on_routed = on_routed
        self.wake = asyncio.Event()

    async def run_once(self) -> int:
        """Route one batch; return how many events it took."""
        lease = await self.store.lease_route_jobs(
            self.settings.route_batch, self.settings.route_lease_seconds
        )
        if not lease.events:
            return 0
        projects = await self.configs.get_many({e.project_id for e in lease.events})
        new: list[NewDelivery] = []
        traces: dict[str, list[dict[str, Any]]] = {}
        failed: dict[str, str] = {}
        for ev in lease.events:
            compiled = projects.get(ev.project_id)
            if compiled is None:  # project deleted: nothing to route to
                traces[ev.id] = []
                continue
            try:
                dels, trace = await route_event(compiled, ev)
            except Exception as exc:
                log.exception("routing event %s failed; it will be retried", ev.id)
                failed[ev.id] = f"{type(exc).__name__}: {exc}"
                continue
            new.extend(dels)
            if trace:
                traces[ev.id] = trace
        if failed:
            await self._defer(lease, failed)
            lease = RouteLease(lease.token, [e for e in lease.events if e.id not in failed])
        if lease.events:
            created = await self.store.complete_routing(lease, new, traces)
            if self._on_routed is not None and created:
                self._on_routed(created)
        return len(lease.events) + len(failed)

    async def _defer(self, lease: RouteLease, failed: dict[str, str]) -> None:
        await self.store.defer_route_jobs(lease, failed, ROUTE_RETRY_DELAY)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                took = await self.run_once()
            except Exception:
                log.exception("router pass failed; retrying shortly")
                took = 0
                await asyncio.sleep(1.0)
            if took == 0:
                self.wake.clear()
                waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(
                    waiters, timeout=self.settings.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                for w in waiters:
                    w.cancel()
