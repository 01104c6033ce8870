"""Watch a store's write transactions: what the database looks like after each one commits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingestlayer.store.store import Store


class WriteLog:
    """Stands in for ``store.engines.write``; after each write transaction commits, ``probe``
    runs (on the read engine) and its answer is appended to ``seen``."""

    def __init__(self, store: Store, probe: Callable[[], Awaitable[Any]]) -> None:
        self._engine: AsyncEngine = store.engines.write
        self._probe = probe
        self.seen: list[Any] = []
        store.engines.write = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.begin() as conn:
            yield conn
        self.seen.append(await self._probe())
