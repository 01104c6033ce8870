"""A `serve` process on SQLite whose storage fails under it, seen from outside.

- A full disk: the process's RLIMIT_FSIZE is lowered while it runs, so that SQLite can no
  longer grow its files (``write`` fails with EFBIG, as with ENOSPC; Python ignores SIGXFSZ),
  then raised again: no root, no small file system needed. Events are answered ``202`` or
  ``503`` with ``Retry-After``, never a 500; deliveries sent meanwhile are recorded once the
  disk has room; every event answered ``202`` is delivered; the log holds a few lines.
- The database file removed under the running server: SQLite goes on writing to the file it
  opened. Events used to be answered ``202`` into a file no directory named any more, lost when
  the process stopped. Now they are refused, and the log says how to get the data back.
"""

from __future__ import annotations

import asyncio
import re
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Cluster, Keys, Proc, wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RETRY = {"schedule": [0, 0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "jitter": 0}
# Each of these events takes ~25 pages of the log, and recording an attempt several: neither fits
# under the limit below (its own stderr, a few lines, does).
PAD = "x" * 100_000
FULL_AT_BYTES = 16 * 1024


def pipeline(receiver_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [{"webhook.out": {"url": receiver_url + "/hooks"}, "retry": RETRY}],
            }
        ]
    }


def set_file_size_limit(proc: Proc, soft: int) -> None:
    """The disk is full for ``proc`` past ``soft`` bytes of any file (RLIM_INFINITY: not at all)."""
    _, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))


async def send(
    cluster: Cluster, proc: Proc, keys: Keys, i: int, pad: str = ""
) -> tuple[int, Any, str | None]:
    assert cluster.session is not None
    async with cluster.session.post(
        proc.url + "/v1/events",
        json={"type": "order.created", "payload": {"i": i, "pad": pad}},
        headers={"Authorization": f"Bearer {keys.ingest}", "Idempotency-Key": f"order-{i}"},
    ) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")


def delivered_events(receiver: Receiver) -> set[str]:
    return {r.json()["id"] for r in receiver.requests}


async def test_a_full_disk_refuses_with_503_and_everything_accepted_is_delivered_once_it_has_room(
    sqlite_url: str, tmp_path: Path
) -> None:
    receiver = await Receiver().start()
    # Slow answers: deliveries are in flight, their outcomes unrecorded, as the disk fills.
    receiver.default = Reply(delay=1.5)
    try:
        async with Cluster(tmp_path, sqlite_url, lease_seconds=120) as cluster:
            keys = await cluster.init_project()
            await cluster.apply(pipeline(receiver.url))
            serve = await cluster.start("serve")
            accepted: set[str] = set()
            for i in range(10):
                status, body, _ = await send(cluster, serve, keys, i)
                assert status == 202, body
                accepted.add(body["id"])
            await wait_until(lambda: len(receiver.requests) == 10, 10, "the first deliveries sent", serve)

            set_file_size_limit(serve, FULL_AT_BYTES)
            answers: dict[int, int] = {}

            def full_for_both() -> bool:
                """Events refused, and the outcomes of the deliveries in flight (answered 1.5 s
                after they were sent) not recorded: the disk stays full until both are seen."""
                log = serve.log()
                return (
                    answers.get(503, 0) >= 20
                    and "storing ingested events failed" in log
                    and "recording attempts failed" in log
                )

            ends = time.monotonic() + 30
            i = 10
            while not full_for_both():
                assert time.monotonic() < ends, (answers, serve.describe())
                status, body, retry_after = await send(cluster, serve, keys, i, PAD)
                answers[status] = answers.get(status, 0) + 1
                if status == 202:  # stored, though the disk is full: it must be delivered
                    accepted.add(body["id"])
                else:
                    assert status == 503, body
                    assert retry_after is not None and int(retry_after) >= 1
                    assert "may not have been stored" in body["error"]["message"], body
                i += 1
                await asyncio.sleep(0.02)
            assert answers.get(503, 0) >= 20, answers
            # Reads go on; the process is alive and says it could not store.
            status, body = await cluster.request(serve, "GET", "/v1/deliveries?limit=1", key=keys.admin)
            assert status == 200, body
            assert serve.returncode is None

            set_file_size_limit(serve, resource.RLIM_INFINITY)
            # What the clients were asked to do: send again with the same key.
            for again in range(10, i):
                status, body, _ = await send(cluster, serve, keys, again, PAD)
                assert status in (200, 202), body
                accepted.add(body["id"])
            await wait_until(
                lambda: delivered_events(receiver) >= accepted,
                30,
                "every accepted event delivered",
                serve,
                progress=lambda: f"{len(delivered_events(receiver) & accepted)} of {len(accepted)}",
            )
            await cluster.wait_for_counts(serve, keys.admin, {"delivered": len(accepted)}, 30, serve)
            # The ten sent as the disk filled were recorded once it had room, not sent again.
            by_delivery = receiver.by_delivery()
            assert all(len(copies) == 1 for copies in by_delivery.values()), {
                d: len(c) for d, c in by_delivery.items() if len(c) > 1
            }
            deliveries = await cluster.all_deliveries(serve, keys.admin)
            assert {d["attempt_count"] for d in deliveries} == {1}

            log = serve.log()
            assert "Traceback" not in log, log
            assert "storing ingested events failed" in log, log
            assert "recording attempts failed" in log, log
            assert len(log.splitlines()) < 40, log
    finally:
        await receiver.stop()


def db_files(sqlite_url: str) -> list[Path]:
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


async def readyz(cluster: Cluster, proc: Proc) -> tuple[int, Any]:
    assert cluster.session is not None
    async with cluster.session.get(proc.url + "/readyz") as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_database_file_removed_under_the_server_is_not_written_to_as_if_stored(
    sqlite_url: str, tmp_path: Path
) -> None:
    receiver = await Receiver().start()
    try:
        async with Cluster(tmp_path, sqlite_url) as cluster:
            keys = await cluster.init_project()
            await cluster.apply(pipeline(receiver.url))
            serve = await cluster.start("serve")
            status, body, _ = await send(cluster, serve, keys, 0)
            assert status == 202, body

            for path in db_files(sqlite_url):
                path.unlink()

            await wait_until(lambda: _status_is(cluster, serve, 503), 5, "/readyz to notice", serve)
            status, body = await readyz(cluster, serve)
            assert "the database file was removed or replaced" in body["error"]["message"], body
            # Events: not answered 202 into a file nobody can read after this process.
            status, body, retry_after = await send(cluster, serve, keys, 1)
            assert status == 503, body
            assert retry_after == "30"
            message = body["error"]["message"]
            assert "the database file was removed or replaced while the server ran" in message, body
            # Nor the management API's writes.
            status, body = await cluster.request(
                serve, "POST", "/v1/keys", key=keys.admin, json={"kind": "admin", "name": "lost"}
            )
            assert status == 503, body
            # Alive: a restart would let go of the only copy of the data.
            assert cluster.session is not None
            async with cluster.session.get(serve.url + "/healthz") as resp:
                assert resp.status == 200
            errors = [line for line in serve.log().splitlines() if " ERROR " in line]
            assert len(errors) == 1, serve.log()
            assert "was removed while the server ran" in errors[0]
            assert f"/proc/{serve.pid}/fd/" in errors[0]  # where to copy it back from
    finally:
        await receiver.stop()


async def test_a_removed_database_is_recovered_as_the_log_line_says(sqlite_url: str, tmp_path: Path) -> None:
    """The events accepted before the file was removed, still owed their deliveries, are all
    delivered after the files named in the log are put back and the server restarted."""
    receiver = await Receiver().start()
    receiver.default = Reply(status=503)  # the destination is down: deliveries wait in the database
    try:
        async with Cluster(tmp_path, sqlite_url) as cluster:
            keys = await cluster.init_project()
            await cluster.apply(pipeline(receiver.url))
            serve = await cluster.start("serve")
            accepted = set()
            for i in range(5):
                status, body, _ = await send(cluster, serve, keys, i)
                assert status == 202, body
                accepted.add(body["id"])
            await wait_until(lambda: len(receiver.requests) >= 5, 10, "first attempts", serve)

            files = db_files(sqlite_url)
            for path in files:
                path.unlink()
            await wait_until(lambda: _status_is(cluster, serve, 503), 5, "/readyz to notice", serve)
            line = next(line for line in serve.log().splitlines() if " ERROR " in line)
            held = re.findall(r"/proc/\d+/fd/\d+", line)
            assert len(held) == 2, line
            saved = [tmp_path / "saved.db", tmp_path / "saved.db-wal"]
            for source, copy in zip(held, saved, strict=True):
                shutil.copyfile(source, copy)

            serve.signal(signal.SIGTERM)
            assert await serve.wait_exit(30) == 0
            for copy, path in zip(saved, files[:2], strict=True):
                shutil.copyfile(copy, path)
            files[2].unlink(missing_ok=True)
            receiver.default = Reply()
            serve = await cluster.start("serve")
            await wait_until(
                lambda: delivered_events(receiver) == accepted, 30, "every accepted event delivered", serve
            )
            await cluster.wait_for_counts(serve, keys.admin, {"delivered": 5}, 30, serve)
    finally:
        await receiver.stop()


async def _status_is(cluster: Cluster, proc: Proc, status: int) -> bool:
    return (await readyz(cluster, proc))[0] == status
