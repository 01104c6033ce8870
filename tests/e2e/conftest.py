"""Fixtures the end-to-end tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database on each backend, its PostgreSQL run marked ``postgres`` (``pg_url``
    fails under CI=true without one): the test runs once on each."""
    url: str = request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param])
    return url
