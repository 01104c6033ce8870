"""The CLI starts without loading what only the server or the database needs.

Every command (and ``--help``) imported FastAPI, the server's runtime and Alembic at start-up:
1.3 s before anything ran. Commands that use the database load its layers when they open it.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("fastapi", "alembic", "sqlalchemy", "aiohttp", "ingestlayer.runtime")


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    return {name for name in HEAVY if name in out}


def test_importing_the_cli_loads_no_server_or_database_layer() -> None:
    assert _loaded_after("import ingestlayer.cli") == set()


def test_the_check_sees_those_layers_when_they_are_loaded() -> None:
    # The same probe after opening a local store: it finds what it looks for.
    assert {"sqlalchemy", "alembic"} <= _loaded_after(
        "import ingestlayer.store.store, ingestlayer.store.migrate as m\nm.alembic_config('sqlite://')"
    )
