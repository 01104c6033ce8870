"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.dashboard_client import Browser
from tests.support.server import RunningServer


@pytest.fixture
async def browser(server: RunningServer) -> AsyncIterator[Browser]:
    """A dashboard browser on the test's server (each database in turn)."""
    b = Browser(server.url)
    yield b
    await b.close()


@pytest.fixture
async def lite(srv: RunningServer) -> AsyncIterator[Browser]:
    """A browser on a SQLite-only server: for checks that do not depend on the database."""
    b = Browser(srv.url)
    yield b
    await b.close()
