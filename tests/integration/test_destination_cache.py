"""A worker keeps each destination it sends to built (its pools, its connections) only while
leases need it: one deleted, or not needed for IDLE_DESTINATION_SECONDS, is closed and dropped.
A project creating and deleting endpoints used to grow every worker's cache for good."""

from __future__ import annotations

import pytest

from ingestlayer.delivery import dispatcher
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for


async def test_a_deleted_destination_leaves_the_workers_cache(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.default = Reply(status=200)
    built = server.runtime.dispatcher._dests

    async def delivered_through(events: list[str]) -> str:
        status, ep = await server.request(
            "POST", "/v1/endpoints", json={"url": receiver.url + "/hook", "events": events}
        )
        assert status == 201, ep
        _, ev = await server.ingest(events[0], {"n": 1})

        async def done() -> bool | None:
            _, got = await server.request("GET", f"/v1/events/{ev['id']}")
            return (bool(got["deliveries"]) and got["deliveries"][0]["status"] == "delivered") or None

        await wait_for(done)
        destination_id: str = ep["destination_id"]
        assert destination_id in built
        status, _ = await server.request("DELETE", f"/v1/endpoints/{ep['id']}")
        assert status == 204
        return destination_id

    first = await delivered_through(["a.one"])
    monkeypatch.setattr(dispatcher, "IDLE_DESTINATION_SECONDS", 0.0)
    server.runtime.dispatcher._next_idle_sweep = 0.0
    second = await delivered_through(["a.two"])  # its lease sweeps the idle, deleted first
    assert first not in built
    assert second in built  # needed by the lease that swept
