"""A replay sends again only to destinations that exist and are enabled.

Replayed to a disabled or deleted destination, a delivery ended ``dead`` again at once, used up
an attempt and counted as replayed; a bulk replay took every such one along, and, dead again,
they matched the next request too. Deliveries of a deleted destination are still listed under
its ``dst_`` id, which the filters now accept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ingestlayer import cli as cli_module
from ingestlayer.cli_backend import RemoteBackend, ReplayFilter
from ingestlayer.timefmt import parse_iso
from tests.support.cli import at_once, cli, ok
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for

ONE_SHOT = {"schedule": [0], "jitter": 0}


async def endpoint(server: RunningServer, receiver: Receiver, path: str) -> dict[str, Any]:
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": receiver.url + path, "events": ["order.*"], "retry": ONE_SHOT}
    )
    assert status == 201, ep
    result: dict[str, Any] = ep
    return result


async def dead_deliveries(server: RunningServer, event_id: str) -> dict[str, dict[str, Any]]:
    """The event's deliveries by destination id, once both are dead."""

    async def check() -> dict[str, dict[str, Any]] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        found = {d["destination_id"]: d for d in ev["deliveries"]}
        return found if len(found) == 2 and {d["status"] for d in found.values()} == {"dead"} else None

    result: dict[str, dict[str, Any]] = await wait_for(check)
    return result


async def test_replay_leaves_deliveries_to_disabled_and_deleted_destinations_alone(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.default = Reply(status=500)
    live, off = await endpoint(server, receiver, "/live"), await endpoint(server, receiver, "/off")
    _, ev = await server.ingest("order.placed", {"n": 1})
    by_dest = await dead_deliveries(server, ev["id"])
    live_dlv, off_dlv = by_dest[live["destination_id"]], by_dest[off["destination_id"]]
    receiver.default = Reply(status=200)

    status, _ = await server.request("PATCH", f"/v1/endpoints/{off['id']}", json={"enabled": False})
    assert status == 200
    status, body = await server.request("POST", f"/v1/deliveries/{off_dlv['id']}/replay")
    assert status == 409 and "is disabled: enable it, then replay" in body["error"]["message"], body
    status, body = await server.request(
        "POST", "/v1/deliveries/replay", json={"destination": off["id"], "status": ["dead"]}
    )
    assert status == 409 and body["error"]["field"] == "destination", body

    # Every dead delivery: only the enabled destination's is replayed.
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"status": ["dead"]})
    assert status == 200 and body["replayed"] == [live_dlv["id"]], body
    status, off_now = await server.request("GET", f"/v1/deliveries/{off_dlv['id']}")
    assert off_now["status"] == "dead" and off_now["attempt_count"] == 1, off_now

    # Deleted: still listed under its dst_ id, and not replayed.
    status, _ = await server.request("DELETE", f"/v1/endpoints/{off['id']}")
    assert status == 204
    status, page = await server.request("GET", f"/v1/deliveries?destination={off['destination_id']}")
    assert status == 200 and [d["id"] for d in page["data"]] == [off_dlv["id"]], page
    status, body = await server.request("POST", f"/v1/deliveries/{off_dlv['id']}/replay")
    assert status == 409 and "was deleted" in body["error"]["message"], body
    status, body = await server.request(
        "POST", "/v1/deliveries/replay", json={"destination": off["destination_id"]}
    )
    assert status == 409 and "was deleted" in body["error"]["message"], body
    status, body = await server.request("GET", "/v1/deliveries?destination=dst_nope")
    assert status == 404 and body["error"]["field"] == "destination"


async def test_the_cli_replays_every_match_a_page_at_a_time(
    server: RunningServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``ingestlayer replay`` took the first 10,000 matches and said nothing of the rest; run
    again, it took the same ones (dead again) and never the others."""
    receiver.default = Reply(status=500)
    await endpoint(server, receiver, "/hook")
    for i in range(5):
        await server.ingest("order.placed", {"n": i})

    async def dead(attempts: int) -> list[str] | None:
        _, page = await server.request("GET", "/v1/deliveries?status=dead")
        found = [d for d in page["data"] if d["attempt_count"] == attempts]
        return [d["id"] for d in found] if len(found) == 5 else None

    await wait_for(lambda: dead(1))
    monkeypatch.setattr(cli_module, "REPLAY_PAGE", 2)
    backend = RemoteBackend(server.url, server.admin_key)
    try:
        assert await cli_module._replay_pages(backend, ReplayFilter(["dead"]), None) == 5
        assert capsys.readouterr().err.split() == [
            "replayed",
            "2",
            "so",
            "far…",
            "replayed",
            "4",
            "so",
            "far…",
        ]
        await wait_for(lambda: dead(2))  # every one replayed once, and dead again
        assert await cli_module._replay_pages(backend, ReplayFilter(["dead"]), 3) == 3
        assert capsys.readouterr().err.split() == ["replayed", "2", "so", "far…"]  # not "3 so far"
    finally:
        await backend.close()

    async def settled() -> list[int] | None:
        _, page = await server.request("GET", "/v1/deliveries?status=dead")
        counts = sorted(d["attempt_count"] for d in page["data"])
        return counts if sum(counts) == 13 else None

    assert await wait_for(settled) == [2, 2, 3, 3, 3]  # --limit 3: three of them, once each


@pytest.fixture
async def sqlite_server(sqlite_url: str) -> AsyncIterator[RunningServer]:
    """One database is enough here: the CLI's filters go to the same store calls as the API's."""
    s = await start_server(sqlite_url)
    yield s
    await s.stop()


async def test_the_cli_lists_by_destination_and_events_by_time(
    sqlite_server: RunningServer, receiver: Receiver, tmp_path: Path
) -> None:
    """``deliveries --destination`` (a deleted one's too, by its dst_ id) and ``events --since
    --until``, on the database and through a server."""
    server = sqlite_server
    receiver.default = Reply(status=200)
    keep, gone = await endpoint(server, receiver, "/keep"), await endpoint(server, receiver, "/gone")
    _, ev = await server.ingest("order.placed", {"n": 1})

    async def settled() -> list[dict[str, Any]] | None:
        _, got = await server.request("GET", f"/v1/events/{ev['id']}")
        found: list[dict[str, Any]] = got["deliveries"]
        return found if len(found) == 2 and {d["status"] for d in found} == {"delivered"} else None

    by_dest = {d["destination_id"]: d["id"] for d in await wait_for(settled)}
    assert set(by_dest) == {keep["destination_id"], gone["destination_id"]}
    status, _ = await server.request("DELETE", f"/v1/endpoints/{gone['id']}")
    assert status == 204
    _, stored = await server.request("GET", f"/v1/events/{ev['id']}")
    received = parse_iso(stored["received_at"])
    window = ("--since", repr(received - 1), "--until", repr(received + 1))
    on_db: dict[str, Any] = {"db_url": server.runtime.settings.database_url}
    remote = ("--url", server.url, "--key", server.admin_key)
    tails = (
        (keep["id"], keep["destination_id"]),
        (gone["destination_id"], gone["destination_id"]),
    )
    # Every command only reads: all at once, a few at a time.
    runs = await at_once(
        *(
            run
            for where, kw in (((), on_db), (remote, {}))
            for run in (
                cli(
                    "deliveries",
                    "--destination",
                    gone["destination_id"],
                    "--json",
                    *where,
                    cwd=tmp_path,
                    **kw,
                ),
                cli("events", *window, "--json", *where, cwd=tmp_path, **kw),
            )
        ),
        cli("deliveries", "--destination", keep["id"], "--json", cwd=tmp_path, **on_db),
        cli("deliveries", "--destination", "nope", cwd=tmp_path, **on_db),
        cli("events", "--since", repr(received + 1), "--json", cwd=tmp_path, **on_db),
        # tail reads --destination as the rest do (it took only current names and ids on the database).
        *(
            cli("tail", "--destination", ref, "-n", "5", "--for", "0", "--no-events", cwd=tmp_path, **on_db)
            for ref, _ in tails
        ),
        # A type filter the API refuses is refused on the database too (it listed nothing, exit 0).
        cli("events", "--type", "*.created", cwd=tmp_path, **on_db),
    )
    *by_mode, keep_run, missing, later, tail_keep, tail_gone, bad = runs
    for where, (dels, evs) in zip(("database", "server"), (by_mode[:2], by_mode[2:]), strict=True):
        assert [d["id"] for d in ok(dels).json()] == [by_dest[gone["destination_id"]]], (where, dels.out)
        assert [e["id"] for e in ok(evs).json()] == [ev["id"]], (where, evs.out)
    assert [d["id"] for d in ok(keep_run).json()] == [by_dest[keep["destination_id"]]], keep_run.out
    assert missing.rc == 1 and "no destination 'nope'" in missing.err, missing
    assert ok(later).json() == [], later.out
    for (ref, wanted), run in zip(tails, (tail_keep, tail_gone), strict=True):
        assert by_dest[wanted] in ok(run).out, (ref, run.out)
    assert bad.rc == 1 and "type must be an event type or a prefix of one ending in *" in bad.err, bad
