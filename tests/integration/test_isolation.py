"""Nothing crosses projects (SPEC §1), and tenants cannot reach the internal network (SPEC §11)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingestlayer import clock
from ingestlayer.ids import encode_ulid
from tests.support.api import error_of
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server, wait_for

FAST = {"schedule": [0, 0.05], "jitter": 0}


async def finished(server: RunningServer, delivery_id: str, key: str | None = None) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, d = await server.request("GET", f"/v1/deliveries/{delivery_id}", key=key)
        assert status == 200, d
        return d if d["status"] in ("delivered", "dead") else None

    result: dict[str, Any] = await wait_for(check)
    return result


async def first_delivery(server: RunningServer, event_id: str, key: str | None = None) -> dict[str, Any]:
    async def check() -> str | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}", key=key)
        return ev["deliveries"][0]["id"] if ev["deliveries"] else None

    return await finished(server, await wait_for(check), key)


def pipeline(url: str, name: str = "to-receiver") -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": name,
                "source": {"match": ["order.*"]},
                "destinations": [{"webhook.out": {"url": url}, "retry": FAST}],
            }
        ]
    }


async def test_projects_cannot_see_or_touch_each_other(server: RunningServer, receiver: Receiver) -> None:
    a = server
    # Project A: a pipeline, an event and its delivery, an endpoint, a secret, a key.
    await a.set_secret("a-secret", "a-secret-value")
    applied = await a.apply(pipeline(receiver.url + "/a"))
    a_pipeline = next(c for c in applied["changes"] if c["kind"] == "pipeline")
    a_dest = next(c for c in applied["changes"] if c["kind"] == "destination")
    _, a_event = await a.ingest("order.placed", {"secret_sauce": "A-only"}, idempotency_key="same-key")
    a_dlv = await first_delivery(a, a_event["id"])
    assert a_dlv["status"] == "delivered"
    _, a_ep = await a.request("POST", "/v1/endpoints", json={"url": receiver.url + "/ep", "events": ["x.y"]})
    _, a_key = await a.request("POST", "/v1/keys", json={"kind": "ingest", "name": "a-extra"})

    # Project B on the same server.
    _, b_ingest, b_admin = await a.runtime.store.create_project("other")

    async def as_b(method: str, path: str, json: Any = None) -> tuple[int, Any]:
        return await a.request(method, path, key=b_admin, json=json)

    not_found = [
        ("GET", f"/v1/events/{a_event['id']}", None),
        ("GET", f"/v1/deliveries/{a_dlv['id']}", None),
        ("POST", f"/v1/deliveries/{a_dlv['id']}/replay", None),
        ("GET", f"/v1/pipelines/{a_pipeline['id']}", None),
        ("GET", "/v1/pipelines/to-receiver", None),
        ("DELETE", f"/v1/pipelines/{a_pipeline['id']}", None),
        ("GET", f"/v1/destinations/{a_dest['id']}", None),
        ("DELETE", f"/v1/destinations/{a_dest['id']}", None),
        ("POST", f"/v1/destinations/{a_dest['id']}/test", None),
        ("GET", f"/v1/deliveries?destination={a_dest['id']}", None),
        ("GET", f"/v1/endpoints/{a_ep['id']}", None),
        ("PATCH", f"/v1/endpoints/{a_ep['id']}", {"enabled": False}),
        ("POST", f"/v1/endpoints/{a_ep['id']}/rotate-secret", None),
        ("DELETE", f"/v1/endpoints/{a_ep['id']}", None),
        ("DELETE", f"/v1/keys/{a_key['id']}", None),
        ("DELETE", "/v1/secrets/a-secret", None),
    ]
    for method, path, json in not_found:
        status, body = await as_b(method, path, json)
        assert status == 404, (method, path, body)
        assert error_of(body)["code"] == "not_found"

    # B's lists hold none of A's rows.
    for path in (
        "/v1/events",
        "/v1/deliveries",
        "/v1/pipelines",
        "/v1/destinations",
        "/v1/endpoints",
        "/v1/secrets",
    ):
        status, body = await as_b("GET", path)
        assert status == 200 and body["data"] == [], (path, body)
    _, body = await as_b("GET", "/v1/deliveries")
    assert body["counts"] == {}
    _, body = await as_b("GET", f"/v1/deliveries?event_id={a_event['id']}")
    assert body["data"] == []
    _, body = await as_b("GET", "/v1/keys")
    assert len(body["data"]) == 2 and a_key["id"] not in {k["id"] for k in body["data"]}
    status, body = await as_b("POST", "/v1/deliveries/replay", {"status": ["delivered", "dead"]})
    assert status == 200 and body["count"] == 0

    # Nothing of A's changed: the delivery was not replayed, the rest still works.
    again = await finished(a, a_dlv["id"])
    assert again["attempt_count"] == 1 and len(again["attempts"]) == 1
    _, ep = await a.request("GET", f"/v1/endpoints/{a_ep['id']}")
    assert ep["enabled"] is True
    assert (await a.request("GET", f"/v1/pipelines/{a_pipeline['id']}"))[0] == 200
    _, secrets = await a.request("GET", "/v1/secrets")
    assert "a-secret" in {s["name"] for s in secrets["data"]}
    status, _ = await a.request("POST", "/v1/events", key=a_key["key"], json={"type": "still.works"})
    assert status == 202

    # The same names in B are B's own: applying creates, and A's pipeline is untouched.
    b_applied = await a.request(
        "POST", "/v1/apply", key=b_admin, json={"document": pipeline(receiver.url + "/b")}
    )
    assert b_applied[0] == 200
    assert set(b_applied[1]["summary"]) == {"create"}
    _, a_pipe = await a.request("GET", "/v1/pipelines/to-receiver")
    _, b_pipe = await as_b("GET", "/v1/pipelines/to-receiver")
    assert a_pipe["id"] != b_pipe["id"]
    assert a_pipe["id"] == a_pipeline["id"]

    # The same idempotency key in both projects: two distinct events, each routed by its own project.
    status, b_event = await a.request(
        "POST",
        "/v1/events",
        key=b_ingest,
        json={"type": "order.placed", "payload": {"for": "B"}, "idempotency_key": "same-key"},
    )
    assert status == 202, b_event
    assert b_event["duplicate"] is False and b_event["id"] != a_event["id"]
    b_dlv = await first_delivery(a, b_event["id"], key=b_admin)
    assert b_dlv["status"] == "delivered"
    paths = sorted(r.path for r in receiver.requests)
    assert paths == ["/a", "/b"]
    assert receiver.requests[-1].json()["payload"] == {"for": "B"}
    # A still sees only its own event.
    _, a_events = await a.request("GET", "/v1/events")
    assert {e["id"] for e in a_events["data"]} >= {a_event["id"]}
    assert b_event["id"] not in {e["id"] for e in a_events["data"]}
    # And A's repeat of its key is still A's first event.
    status, dup = await a.ingest("order.placed", {}, idempotency_key="same-key")
    assert (status, dup["id"]) == (200, a_event["id"])


async def test_keys_are_bound_to_their_project(server: RunningServer) -> None:
    _, b_ingest, b_admin = await server.runtime.store.create_project("other")
    status, b_event = await server.request("POST", "/v1/events", key=b_ingest, json={"type": "b.only"})
    assert status == 202
    status, body = await server.request("GET", f"/v1/events/{b_event['id']}")  # A's admin key
    assert status == 404
    status, body = await server.request("GET", f"/v1/events/{b_event['id']}", key=b_admin)
    assert status == 200 and body["type"] == "b.only"
    _, a_events = await server.request("GET", "/v1/events")
    assert a_events["data"] == []


def ulid_value(an_id: str) -> int:
    """The 128-bit value of an ingestlayer id (``evt_01J…``)."""
    value = 0
    for digit in an_id.split("_", 1)[1]:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(digit)
    return value


async def test_a_project_cannot_guess_another_projects_source_ids(server: RunningServer) -> None:
    """A source's id is its ingress URL, which takes no API key (with verify: none, nothing else
    authenticates the sender). Ids count up within a millisecond, so a source another project
    made in the millisecond of an event id this project was given had that id plus one: this
    project could post events into the other's pipelines, or learn its sources exist (401, not
    404)."""
    _, _, b_admin = await server.runtime.store.create_project("other")
    # Project B's source is made in the millisecond of an id project A is given: with the clock
    # held back behind the ids made so far, every id counts on from the last one.
    clock.CLOCK.offset -= 3600
    try:
        status, sent = await server.ingest("probe.sent", {})
        assert status == 202, sent
        status, src = await server.request(
            "POST", "/v1/sources", key=b_admin, json={"name": "inbound", "verify": "none"}
        )
    finally:
        clock.CLOCK.offset += 3600
    assert status == 201, src
    seen = ulid_value(sent["id"])
    guesses = [f"src_{encode_ulid(seen + k)}" for k in range(1, 1001)]
    assert src["id"] not in guesses
    for guess in guesses[:10]:
        status, body = await server.request("POST", f"/v1/ingress/{guess}", json={"type": "injected.by_a"})
        assert status == 404 and error_of(body)["code"] == "not_found", (guess, status, body)
    _, b_events = await server.request("GET", "/v1/events", key=b_admin)
    assert b_events["data"] == []
    # B's own sender still reaches it.
    status, body = await server.request("POST", f"/v1/ingress/{src['id']}", json={"type": "b.hook"})
    assert status == 202, body


# ---- egress -------------------------------------------------------------------------------------------


async def test_private_destinations_are_refused(sqlite_url: str, receiver: Receiver) -> None:
    server = await start_server(sqlite_url, allow_private_destinations=False)
    port = receiver.url.rsplit(":", 1)[1]
    targets = [
        receiver.url + "/loopback",
        f"http://localhost:{port}/name",
        f"http://[::1]:{port}/v6",
        "http://10.1.2.3/internal",
        "http://169.254.169.254/latest/meta-data",
        f"http://0.0.0.0:{port}/any",
    ]
    try:
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "sneaky",
                        "source": {"match": ["*"]},
                        "destinations": [
                            {"webhook.out": {"url": url}, "retry": {"schedule": [0, 0.01, 0.01], "jitter": 0}}
                            for url in targets
                        ],
                    }
                ]
            }
        )
        _, ev = await server.ingest("probe.internal", {"x": 1})

        async def all_finished() -> list[dict[str, Any]] | None:
            _, body = await server.request("GET", "/v1/deliveries")
            data: list[dict[str, Any]] = body["data"]
            done = len(data) == len(targets) and all(d["status"] in ("delivered", "dead") for d in data)
            return data if done else None

        deliveries = await wait_for(all_finished)
        for d in deliveries:
            assert d["event_id"] == ev["id"]
            assert d["status"] == "dead", d
            full = await finished(server, d["id"])
            # Refused before any request: one attempt, no status code, the reason given.
            assert len(full["attempts"]) == 1, full
            assert full["attempts"][0]["status_code"] is None
            assert "private" in full["attempts"][0]["error"] or "local" in full["attempts"][0]["error"]
        # The loopback one says it is private, and how to allow it.
        by_dest = {d["destination"]: d for d in deliveries}
        loop = by_dest["sneaky/webhook.out"]
        assert "private" in loop["last_error"]

        # The dashboard's "send test event" is refused the same way.
        _, ep = await server.request(
            "POST", "/v1/endpoints", json={"url": receiver.url + "/ep", "events": ["z.z"]}
        )
        status, d = await server.request("POST", f"/v1/destinations/{ep['destination_id']}/test")
        assert status == 200
        assert d["status"] == "dead" and "private" in d["attempts"][0]["error"]

        await asyncio.sleep(0.1)
        assert receiver.requests == []  # never contacted
    finally:
        await server.stop()


async def test_env_references_read_only_what_the_operator_lists(
    sqlite_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project's admin writes `env:` references: they must not be able to have the server's
    environment (its master key, its database's password) sent to a URL of theirs."""
    monkeypatch.setenv("OPERATOR_ONLY", "operator-value-4242")
    monkeypatch.setenv("WAREHOUSE_TOKEN", "warehouse-token-1234")
    monkeypatch.setenv("INGESTLAYER_SECRET_KEY", "master-key-should-never-leave")
    server = await start_server(sqlite_url, env_secrets=("WAREHOUSE_*",))
    try:
        refs = ["env:OPERATOR_ONLY", "env:INGESTLAYER_SECRET_KEY", "env:WAREHOUSE_TOKEN"]
        for i, ref in enumerate(refs):
            status, dest = await server.request(
                "POST",
                "/v1/destinations",
                json={
                    "name": f"probe-{i}",
                    "webhook.out": {"url": f"{receiver.url}/p{i}", "auth": "bearer", "secret": ref},
                    "retry": {"schedule": [0], "jitter": 0},
                },
            )
            assert status == 201, dest
            status, d = await server.request("POST", f"/v1/destinations/{dest['id']}/test")
            assert status == 200, d
            if ref == "env:WAREHOUSE_TOKEN":  # listed by the operator: it works
                assert d["status"] == "delivered"
                continue
            assert d["status"] == "dead"
            error = d["attempts"][0]["error"]
            assert "INGESTLAYER_ENV_SECRETS" in error or "never readable" in error, error
        sent = {r.path: r.headers.get("Authorization") for r in receiver.requests}
        assert sent == {"/p2": "Bearer warehouse-token-1234"}  # nothing else left the server
    finally:
        await server.stop()
    # With the operator's wildcard, the server's own settings are still never read.
    server = await start_server(sqlite_url, project="acme-2", env_secrets=("*",))
    try:
        status, dest = await server.request(
            "POST",
            "/v1/destinations",
            json={
                "name": "probe-all",
                "webhook.out": {
                    "url": f"{receiver.url}/all",
                    "auth": "bearer",
                    "secret": "env:INGESTLAYER_SECRET_KEY",
                },
                "retry": {"schedule": [0], "jitter": 0},
            },
        )
        assert status == 201, dest
        status, d = await server.request("POST", f"/v1/destinations/{dest['id']}/test")
        assert d["status"] == "dead" and "never readable" in d["attempts"][0]["error"]
        assert not [r for r in receiver.requests if r.path == "/all"]
    finally:
        await server.stop()
