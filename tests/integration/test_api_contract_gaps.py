"""Contracts a user relies on that no other test pins down.

``Retry-After`` honoured on a 503 (and not on a 500), bulk replay filtered by destination, time
window and status, the ``/v1/sources`` lifecycle across projects, and the deliveries' exact
``User-Agent``.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import update

import ingestlayer
from ingestlayer.store.schema import deliveries
from ingestlayer.timefmt import parse_iso
from tests.support.api import error_of
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for

FAST = {"schedule": [0, 0.05, 0.05], "jitter": 0}
ONE_SHOT = {"schedule": [0]}  # any failure is final: the delivery is dead after one attempt


def one_destination(url: str, retry: dict[str, Any] = FAST) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [{"webhook.out": {"url": url + "/hooks"}, "name": "hooks", "retry": retry}],
            }
        ]
    }


def two_destinations(url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [
                    {"webhook.out": {"url": url + "/alpha"}, "name": "alpha", "retry": ONE_SHOT},
                    {"webhook.out": {"url": url + "/beta"}, "name": "beta", "retry": ONE_SHOT},
                ],
            }
        ]
    }


async def get_delivery(server: RunningServer, delivery_id: str) -> dict[str, Any]:
    status, d = await server.request("GET", f"/v1/deliveries/{delivery_id}")
    assert status == 200, d
    result: dict[str, Any] = d
    return result


async def finished(server: RunningServer, delivery_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        d = await get_delivery(server, delivery_id)
        return d if d["status"] in ("delivered", "dead") else None

    result: dict[str, Any] = await wait_for(check)
    return result


async def deliveries_of(server: RunningServer, event_id: str, n: int = 1) -> dict[str, dict[str, Any]]:
    """The event's deliveries by destination name, once all ``n`` are delivered or dead."""

    async def check() -> list[dict[str, Any]] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        dels: list[dict[str, Any]] = ev["deliveries"]
        if len(dels) == n and all(d["status"] in ("delivered", "dead") for d in dels):
            return dels
        return None

    dels = await wait_for(check)
    return {d["destination"]: await get_delivery(server, d["id"]) for d in dels}


async def ingest_and_settle(server: RunningServer, payload: dict[str, Any], n: int = 1) -> dict[str, Any]:
    status, body = await server.ingest("order.placed", payload)
    assert status == 202, body
    return await deliveries_of(server, body["id"], n)


def arrivals(receiver: Receiver, delivery_id: str) -> list[float]:
    return [r.at for r in receiver.by_delivery().get(delivery_id, [])]


def waited_after(attempt: dict[str, Any]) -> float:
    """The wait the attempt log announces after an attempt: from its end to its next_retry_at."""
    ended: float = parse_iso(attempt["started_at"]) + attempt["duration_ms"] / 1000
    return parse_iso(attempt["next_retry_at"]) - ended


# ---- Retry-After ---------------------------------------------------------------------------------


async def test_retry_after_on_a_503_delays_the_next_attempt(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.plan = [Reply(status=503, headers={"Retry-After": "1"})]
    await server.apply(one_destination(receiver.url))
    d = (await ingest_and_settle(server, {"n": 1}))["hooks"]
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [503, 200]
    first, second = arrivals(receiver, d["id"])
    # The schedule says 0.05 s; the receiver asked for 1 s and got it, not much more (the exact
    # wait is the attempt log's; arrival times only get later on a loaded machine).
    assert 0.95 <= second - first < 5, second - first
    # The attempt log announces the same wait, counted from the end of the attempt.
    announced = waited_after(d["attempts"][0])
    assert 0.95 <= announced < 1.8, d["attempts"][0]


async def test_retry_after_on_a_500_is_not_honoured(server: RunningServer, receiver: Receiver) -> None:
    # Only 429 and 503 mean "come back later"; a 500's Retry-After is ignored.
    receiver.plan = [Reply(status=500, headers={"Retry-After": "2"})]
    await server.apply(one_destination(receiver.url))
    d = (await ingest_and_settle(server, {"n": 1}))["hooks"]
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [500, 200]
    first, second = arrivals(receiver, d["id"])
    assert second - first < 1.9, second - first  # not the 2 s asked for (which it could not beat)
    announced = waited_after(d["attempts"][0])
    assert announced < 0.5, d["attempts"][0]  # the schedule's 0.05 s, not 2 s


# ---- replaying one delivery that a worker takes meanwhile --------------------------------------


async def test_replaying_a_delivery_a_worker_took_meanwhile_is_a_409(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay reads the delivery, then updates it unless it is being attempted; a worker may
    lease it in between. The update then leaves it alone, and the answer must say so: a 200
    "replayed" for a delivery that was not replayed promised a new attempt that never came."""
    receiver.default = Reply(status=500)
    await server.apply(one_destination(receiver.url, ONE_SHOT))
    (delivery,) = (await ingest_and_settle(server, {"n": 1})).values()
    assert delivery["status"] == "dead", delivery
    store = server.runtime.store
    read = store.get_delivery

    async def read_then_leased(project_id: str, delivery_id: str) -> Any:
        found = await read(project_id, delivery_id)
        async with store.engines.write.begin() as conn:  # a worker leases it right after the read
            await conn.execute(
                update(deliveries).where(deliveries.c.id == delivery_id).values(status="delivering")
            )
        return found

    monkeypatch.setattr(store, "get_delivery", read_then_leased)
    status, body = await server.request("POST", f"/v1/deliveries/{delivery['id']}/replay")
    assert status == 409 and "being attempted right now" in error_of(body)["message"], body
    monkeypatch.undo()
    _, got = await server.request("GET", f"/v1/deliveries/{delivery['id']}")
    assert got["status"] == "delivering" and got["attempt_count"] == 1, got  # untouched by the replay


# ---- bulk replay filters -------------------------------------------------------------------------


async def test_bulk_replay_by_destination_name_or_id(server: RunningServer, receiver: Receiver) -> None:
    receiver.default = Reply(status=500)
    await server.apply(two_destinations(receiver.url))
    first = await ingest_and_settle(server, {"n": 1}, n=2)
    second = await ingest_and_settle(server, {"n": 2}, n=2)
    assert {d["status"] for ev in (first, second) for d in ev.values()} == {"dead"}
    alpha_ids = sorted(ev["alpha"]["id"] for ev in (first, second))
    beta_ids = sorted(ev["beta"]["id"] for ev in (first, second))
    beta_destination_id = first["beta"]["destination_id"]
    assert beta_destination_id != first["alpha"]["destination_id"]

    receiver.default = Reply(status=200)
    # By name: only alpha's dead deliveries.
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"destination": "alpha"})
    assert status == 200, body
    assert body == {"replayed": alpha_ids, "count": 2, "next_after": None}
    for did in beta_ids:  # untouched, right after the call
        d = await get_delivery(server, did)
        assert d["status"] == "dead" and d["attempt_count"] == 1, d
    for did in alpha_ids:
        d = await finished(server, did)
        assert d["status"] == "delivered" and d["id"] == did
        assert [a["n"] for a in d["attempts"]] == [1, 2]
        assert [r.headers["X-Ingestlayer-Attempt"] for r in receiver.by_delivery()[did]] == ["1", "2"]
    for did in beta_ids:  # and still untouched once alpha's are done
        d = await get_delivery(server, did)
        assert d["status"] == "dead" and d["attempt_count"] == 1, d
        assert len(receiver.by_delivery()[did]) == 1

    # By id: beta's.
    status, body = await server.request(
        "POST", "/v1/deliveries/replay", json={"destination": beta_destination_id}
    )
    assert status == 200, body
    assert body == {"replayed": beta_ids, "count": 2, "next_after": None}
    for did in beta_ids:
        d = await finished(server, did)
        assert d["status"] == "delivered" and [a["n"] for a in d["attempts"]] == [1, 2]
    for did in alpha_ids:  # delivered ones are not dead: the default filter leaves them alone
        assert (await get_delivery(server, did))["attempt_count"] == 2

    # A destination that does not exist is a 404 naming the field, not "replay everything".
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"destination": "gamma"})
    assert status == 404
    assert error_of(body)["field"] == "destination"


async def test_bulk_replay_by_time_window_and_status(server: RunningServer, receiver: Receiver) -> None:
    await server.apply(one_destination(receiver.url, retry=ONE_SHOT))
    created: list[dict[str, Any]] = []
    # before the window: dead; in it: dead, delivered; after it: dead.
    for i, reply in enumerate([500, 500, 200, 500]):
        receiver.default = Reply(status=reply)
        created.append((await ingest_and_settle(server, {"n": i}))["hooks"])
        await asyncio.sleep(0.05)  # distinct creation times, milliseconds apart at least
    before, dead_in, delivered_in, after = created
    assert [d["status"] for d in created] == ["dead", "dead", "delivered", "dead"]
    # The window: since is inclusive (the API's own ISO 8601 time, with Z), until exclusive (any
    # ISO 8601 offset names the same instant).
    since = dead_in["created_at"]
    until_utc = datetime.fromisoformat(after["created_at"].replace("Z", "+00:00"))
    until_text = until_utc.replace(tzinfo=None).isoformat()  # naive: taken as UTC
    until_offset = until_utc.astimezone(timezone(timedelta(hours=2))).isoformat()  # "…+02:00"
    assert parse_iso(until_text) == parse_iso(until_offset) == parse_iso(after["created_at"])

    receiver.default = Reply(status=200)
    # status delivered, in the window: the delivered one only, not the dead one beside it.
    status, body = await server.request(
        "POST",
        "/v1/deliveries/replay",
        json={"status": ["delivered"], "since": since, "until": until_offset},
    )
    assert status == 200, body
    assert body == {"replayed": [delivered_in["id"]], "count": 1, "next_after": None}
    again = await wait_for(lambda: _attempted(server, delivered_in["id"], 2))
    assert again["status"] == "delivered" and [a["n"] for a in again["attempts"]] == [1, 2]
    assert (await get_delivery(server, dead_in["id"]))["status"] == "dead"

    # status dead, in the window: the dead one there; the dead ones outside stay dead.
    status, body = await server.request(
        "POST", "/v1/deliveries/replay", json={"status": ["dead"], "since": since, "until": until_text}
    )
    assert status == 200, body
    assert body == {"replayed": [dead_in["id"]], "count": 1, "next_after": None}
    d = await finished(server, dead_in["id"])
    assert d["status"] == "delivered" and [a["n"] for a in d["attempts"]] == [1, 2]
    assert [r.headers["X-Ingestlayer-Attempt"] for r in receiver.by_delivery()[d["id"]]] == ["1", "2"]
    for outside in (before, after):
        d = await get_delivery(server, outside["id"])
        assert d["status"] == "dead" and d["attempt_count"] == 1, d
        assert len(receiver.by_delivery()[outside["id"]]) == 1
    assert (await get_delivery(server, delivered_in["id"]))["attempt_count"] == 2

    # `since` alone is inclusive too: from the last one on, only it.
    status, body = await server.request(
        "POST", "/v1/deliveries/replay", json={"status": ["dead"], "since": after["created_at"]}
    )
    assert status == 200 and body == {"replayed": [after["id"]], "count": 1, "next_after": None}, body
    assert (await finished(server, after["id"]))["status"] == "delivered"
    assert (await get_delivery(server, before["id"]))["status"] == "dead"

    # Not a timestamp: a 422 naming the field, and nothing replayed.
    for field in ("since", "until"):
        status, body = await server.request("POST", "/v1/deliveries/replay", json={field: "yesterday"})
        assert status == 422, body
        assert error_of(body)["field"] == field
    assert (await get_delivery(server, before["id"]))["status"] == "dead"


async def _attempted(server: RunningServer, delivery_id: str, n: int) -> dict[str, Any] | None:
    d = await get_delivery(server, delivery_id)
    return d if d["attempt_count"] >= n and d["status"] in ("delivered", "dead") else None


# ---- sources -------------------------------------------------------------------------------------


async def ingress_post(server: RunningServer, path: str, body: bytes) -> tuple[int, Any]:
    async with server.session.post(server.url + path, data=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_sources_create_read_update_delete_and_isolation(server: RunningServer) -> None:
    status, created = await server.request("POST", "/v1/sources", json={"name": "forms", "verify": "none"})
    assert status == 201, created
    sid = created["id"]
    assert sid.startswith("src_")
    assert created["name"] == "forms" and created["enabled"] is True
    assert created["ingress_path"] == f"/v1/ingress/{sid}"
    assert created["config"]["verify"] == "none"

    for key in ("forms", sid):
        status, got = await server.request("GET", f"/v1/sources/{key}")
        assert status == 200 and got == created, (key, got)
    status, accepted = await ingress_post(server, created["ingress_path"], b'{"type":"submitted"}')
    assert status == 202, accepted
    _, ev = await server.request("GET", f"/v1/events/{accepted['id']}")
    assert ev["type"] == "submitted" and ev["source"] == "forms"

    # Update: the same name again keeps the id and the ingress path, and the change applies.
    status, updated = await server.request(
        "POST", "/v1/sources", json={"name": "forms", "verify": "none", "type_prefix": "form."}
    )
    assert status == 200, updated  # 201 only when it is created
    assert updated["id"] == sid and updated["ingress_path"] == created["ingress_path"]
    assert updated["config"]["type_prefix"] == "form."
    _, got = await server.request("GET", f"/v1/sources/{sid}")
    assert got["config"]["type_prefix"] == "form."
    status, accepted = await ingress_post(server, created["ingress_path"], b'{"type":"submitted"}')
    assert status == 202, accepted
    _, ev = await server.request("GET", f"/v1/events/{accepted['id']}")
    assert ev["type"] == "form.submitted"
    _, listed = await server.request("GET", "/v1/sources")
    assert [s["id"] for s in listed["data"]] == [sid]

    # Another project cannot see it, list it or delete it, by name or by id.
    _, _, other_admin = await server.runtime.store.create_project("other")
    for method in ("GET", "DELETE"):
        for key in ("forms", sid):
            status, body = await server.request(method, f"/v1/sources/{key}", key=other_admin)
            assert status == 404, (method, key, body)
            assert error_of(body)["code"] == "not_found"
    status, body = await server.request("GET", "/v1/sources", key=other_admin)
    assert status == 200 and body["data"] == []
    status, got = await server.request("GET", f"/v1/sources/{sid}")
    assert status == 200 and got["id"] == sid
    assert (await ingress_post(server, created["ingress_path"], b'{"type":"still.here"}'))[0] == 202

    # Delete: 204 with no body; the ingress path is gone and so is the listing.
    status, body = await server.request("DELETE", f"/v1/sources/{sid}")
    assert status == 204 and body is None
    status, body = await ingress_post(server, created["ingress_path"], b'{"type":"submitted"}')
    assert status == 404
    assert error_of(body)["code"] == "not_found"
    _, listed = await server.request("GET", "/v1/sources")
    assert listed["data"] == []
    for key in ("forms", sid):
        status, body = await server.request("GET", f"/v1/sources/{key}")
        assert status == 404, body
    status, body = await server.request("DELETE", "/v1/sources/forms")
    assert status == 404, body


async def test_source_delete_by_name(server: RunningServer) -> None:
    status, created = await server.request("POST", "/v1/sources", json={"name": "hooks", "verify": "none"})
    assert status == 201, created
    status, body = await server.request("DELETE", "/v1/sources/hooks")
    assert status == 204 and body is None
    assert (await ingress_post(server, created["ingress_path"], b'{"type":"x.y"}'))[0] == 404


# ---- User-Agent ----------------------------------------------------------------------------------


async def test_deliveries_carry_the_exact_user_agent(srv: RunningServer, receiver: Receiver) -> None:
    receiver.plan = [Reply(status=500)]
    await srv.apply(one_destination(receiver.url))
    d = (await ingest_and_settle(srv, {"n": 1}))["hooks"]
    assert d["status"] == "delivered"
    expected = f"ingestlayer/{ingestlayer.__version__}"
    assert [r.headers["User-Agent"] for r in receiver.requests] == [expected, expected]
    # A test send from the API is a delivery like any other.
    status, sent = await srv.request("POST", "/v1/destinations/hooks/test")
    assert status == 200 and sent["status"] == "delivered", sent
    assert receiver.requests[-1].headers["User-Agent"] == expected
    assert len(receiver.requests) == 3


# ---- a lease shorter than an attempt ---------------------------------------------------------------


async def test_an_attempt_longer_than_its_lease_is_cut_short_not_sent_twice_at_once(
    sqlite_url: str, receiver: Receiver
) -> None:
    """With INGESTLAYER_DELIVERY_LEASE_SECONDS below a destination's timeout, an attempt still
    running when its lease ended was retaken and sent again beside itself, again and again (5
    requests at once for one delivery, seen). It is now cut short at its lease, as a timeout."""
    server = await start_server(sqlite_url, delivery_lease_seconds=2.0)
    try:
        receiver.plan = [Reply(status=200, delay=3.0)]  # the first attempt outlasts the lease
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "slow",
                        "source": {"match": ["order.*"]},
                        "destinations": [
                            {
                                "webhook.out": {"url": receiver.url + "/slow", "timeout": 40},
                                "name": "slow",
                                "retry": FAST,
                            }
                        ],
                    }
                ]
            }
        )
        status, body = await server.ingest("order.placed", {"n": 1})
        assert status == 202, body
        (delivery,) = (await deliveries_of(server, body["id"])).values()
        assert delivery["status"] == "delivered", delivery
        attempts = delivery["attempts"]
        assert "cut short after 1." in attempts[0]["error"], attempts[0]
        assert "at the end of the delivery's lease" in attempts[0]["error"], attempts[0]
        assert [a["n"] for a in attempts] == [1, 2] and len(receiver.requests) == 2, attempts
        # Each attempt ended before the next began: never two at once.
        for one, after in itertools.pairwise(attempts):
            ended = parse_iso(one["started_at"]) + one["duration_ms"] / 1000
            assert ended <= parse_iso(after["started_at"]) + 0.01, attempts
    finally:
        await server.stop()
