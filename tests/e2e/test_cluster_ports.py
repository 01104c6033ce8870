"""The process harness starts a server again on another port when the one it picked was taken
before the server bound it: with three test workers, other processes' connections take ports
of the same range. The check read "address already in use" and the server says "Address
already in use", so the retry never ran and the test failed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.processes import Cluster


async def test_a_port_taken_before_the_server_binds_it_is_replaced(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports: Iterator[int] = iter([taken.getsockname()[1], processes.free_port()])
        monkeypatch.setattr(processes, "free_port", lambda: next(ports))
        async with Cluster(tmp_path, sqlite_url) as cluster:
            await cluster.init_project()
            proc = await cluster.start("serve")
            assert proc.port != taken.getsockname()[1]
            assert proc.returncode is None
