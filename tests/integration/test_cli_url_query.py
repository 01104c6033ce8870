"""``--url`` with a query or a fragment: refused in one line that does not repeat them.

Commands append their own paths to the address; a query's values (often a token) were kept, sent
to a path they broke, and printed in every message that named the server."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import at_once, cli, one_line_error
from tests.support.processes import free_port


async def test_a_query_or_fragment_in_the_url_is_refused_without_repeating_it(tmp_path: Path) -> None:
    port = free_port()
    urls = (f"http://127.0.0.1:{port}/?token=sekrit-token", f"http://127.0.0.1:{port}#sekrit-token")
    commands = (("events",), ("send", "a.b", "{}"))
    runs = await at_once(
        *(cli(*args, "--url", url, "--key", "il_admin_x", cwd=tmp_path) for url in urls for args in commands)
    )
    for run in runs:
        one_line_error(run, "--url must not carry a query or fragment (host 127.0.0.1)")
        assert "sekrit" not in run.out + run.err, run
