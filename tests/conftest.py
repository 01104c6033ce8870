"""Shared fixtures: databases on both backends, an in-process server, a real receiver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestlayer import clock, ids
from tests.support.browser import chromium_browser
from tests.support.databases import PgTemplates, SqliteTemplates, require_pg
from tests.support.fake_discord import FakeDiscord
from tests.support.fake_notion import FakeNotion
from tests.support.fake_telegram import FakeTelegram
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server


@pytest.fixture(autouse=True)
def _ids_back_on_time() -> Iterator[None]:
    """Ids never go back in time within a process (ingestlayer.ids), so ids made while a test
    had moved the database clock ahead would keep every later test's ids in that future: after
    such a test, id generation starts over from the real clock."""
    state, head = dict(ids._state), list(ids._head)
    yield
    if ids._state["ms"] > (time.time() + 5) * 1000:
        ids._state.update(state)
        ids._head[:] = head


@pytest.fixture(autouse=True)
def _database_clock_as_a_new_process_has_it() -> Iterator[None]:
    """The database clock's offset is a process global (ingestlayer.clock), measured when a
    runtime starts on PostgreSQL. A new process starts at 0; so does every test: an offset
    measured by an earlier test (a few milliseconds either way under load) would otherwise move
    this test's "now" against the times it stamps itself."""
    clock.CLOCK.offset = 0.0
    yield
    clock.CLOCK.offset = 0.0


# What ingestlayer makes in the working directory when given no path: a test that leaves one in
# the checkout has used the defaults where it meant its own files (and the next test may use them).
_DEFAULT_FILES = ("ingestlayer.db", "ingestlayer.db-wal", "ingestlayer.db-shm", "ingestlayer.key")


@pytest.fixture(autouse=True)
def _nothing_left_in_the_working_directory() -> Iterator[None]:
    before = {name for name in _DEFAULT_FILES if Path(name).exists()}
    yield
    left = [name for name in _DEFAULT_FILES if name not in before and Path(name).exists()]
    for name in left:
        Path(name).unlink(missing_ok=True)
    if left:
        pytest.fail(f"the test left {', '.join(left)} in {Path.cwd()}: give it files of its own")


@pytest.fixture(scope="session")
def pg_templates() -> Iterator[PgTemplates]:
    templates = PgTemplates()
    yield templates
    # The server may be gone at teardown; then there is nothing to clean.
    with contextlib.suppress(Exception):
        templates.drop_all()


@pytest.fixture(scope="session")
def sqlite_templates(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplates:
    return SqliteTemplates(tmp_path_factory.mktemp("sqlite"))


@pytest.fixture
def pg_url(pg_templates: PgTemplates) -> Iterator[str]:
    require_pg()
    yield pg_templates.new_database()
    pg_templates.drop_finished()


@pytest.fixture
def sqlite_url(sqlite_templates: SqliteTemplates) -> str:
    return sqlite_templates.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(
    request: pytest.FixtureRequest, sqlite_templates: SqliteTemplates, pg_templates: PgTemplates
) -> Iterator[str]:
    """A fresh, migrated database: the test runs once on each backend."""
    if request.param == "postgres":
        require_pg()
        yield pg_templates.new_database()
        pg_templates.drop_finished()
    else:
        yield sqlite_templates.new_database()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[RunningServer]:
    s = await start_server(db_url)
    yield s
    await s.stop()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
async def srv(sqlite_url: str) -> AsyncIterator[RunningServer]:
    """A server on SQLite only: for HTTP-contract checks the database does not change."""
    s = await start_server(sqlite_url)
    yield s
    await s.stop()


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, through Playwright (skipped without it, except in CI)."""
    async for browser in chromium_browser():
        yield browser


# The chat and Notion services' local stand-ins (tests/support), one per test that names them.
@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = await FakeTelegram().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def notion() -> AsyncIterator[FakeNotion]:
    fake = await FakeNotion().start()
    yield fake
    await fake.stop()
