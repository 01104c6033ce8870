"""Webhooks → "Add Endpoint": ``/v1/endpoints``, as a user of the REST API sets one up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from ingestlayer.sdk.webhooks import WebhookVerificationError
from ingestlayer.timefmt import parse_iso
from tests.support.api import error_of
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05], "jitter": 0}
INVOICE = {"invoice_id": "in_1", "amount": 4200, "currency": "eur", "lines": [{"sku": "pro", "qty": 1}]}


async def add_endpoint(server: RunningServer, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    body = {
        "url": receiver.url + "/billing",
        "events": ["invoice.created", "invoice.failed"],
        "format": "data",
        "retry": FAST,
        **extra,
    }
    status, created = await server.request("POST", "/v1/endpoints", json=body)
    assert status == 201, created
    result: dict[str, Any] = created
    return result


async def routed(server: RunningServer, event_id: str) -> dict[str, Any]:
    """The event once the router has handled it (its route job, written with it, is gone)."""

    async def check() -> bool:
        return await server.runtime.store.pending_route_jobs() == 0

    await wait_for(check)
    status, ev = await server.request("GET", f"/v1/events/{event_id}")
    assert status == 200
    result: dict[str, Any] = ev
    return result


async def delivered(server: RunningServer, event_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        if len(ev["deliveries"]) == 1 and ev["deliveries"][0]["status"] in ("delivered", "dead"):
            d: dict[str, Any] = ev["deliveries"][0]
            return d
        return None

    result: dict[str, Any] = await wait_for(check)
    return result


async def send(server: RunningServer, type_: str, payload: dict[str, Any] | None = None) -> str:
    status, body = await server.ingest(type_, payload if payload is not None else INVOICE)
    assert status == 202, body
    eid: str = body["id"]
    return eid


async def not_delivered(server: RunningServer, event_id: str) -> None:
    ev = await routed(server, event_id)
    assert ev["deliveries"] == [], ev


# ---- create, receive, verify ------------------------------------------------------------------------


async def test_added_endpoint_receives_its_event_types_signed(
    server: RunningServer, receiver: Receiver
) -> None:
    created = await add_endpoint(server, receiver)
    secret = created["secret"]
    assert created["id"].startswith("ep_")
    assert secret.startswith("whsec_") and len(secret) >= 32
    assert created["events"] == ["invoice.created", "invoice.failed"]
    assert created["url"] == receiver.url + "/billing"
    assert (created["format"], created["auth"], created["enabled"]) == ("data", "hmac", True)

    # The secret is shown once: never again in a read.
    for path in (f"/v1/endpoints/{created['id']}", "/v1/endpoints", "/v1/destinations", "/v1/pipelines"):
        async with server.session.get(server.url + path, headers=server.auth()) as resp:
            assert resp.status == 200
            raw = await resp.read()
        assert secret.encode() not in raw, path
        assert secret[6:].encode() not in raw, path
    _, got = await server.request("GET", f"/v1/endpoints/{created['id']}")
    assert "secret" not in got
    assert {k: v for k, v in got.items() if k not in ("updated_at",)} == {
        k: v for k, v in created.items() if k not in ("secret", "updated_at")
    }

    created_id = await send(server, "invoice.created", INVOICE)
    failed_id = await send(server, "invoice.failed", {"invoice_id": "in_2", "reason": "card_declined"})
    paid_id = await send(server, "invoice.paid", {"invoice_id": "in_3"})

    d1 = await delivered(server, created_id)
    d2 = await delivered(server, failed_id)
    assert d1["status"] == d2["status"] == "delivered"
    await not_delivered(server, paid_id)
    await asyncio.sleep(0.1)

    assert len(receiver.requests) == 2
    by_type = {r.headers["X-Ingestlayer-Event"]: r for r in receiver.requests}
    assert set(by_type) == {"invoice.created", "invoice.failed"}
    req = by_type["invoice.created"]
    assert req.path == "/billing"
    assert req.verify(secret) == {"type": "invoice.created", "data": INVOICE}
    assert by_type["invoice.failed"].verify(secret) == {
        "type": "invoice.failed",
        "data": {"invoice_id": "in_2", "reason": "card_declined"},
    }
    assert req.headers["X-Ingestlayer-Delivery"] == d1["id"]
    with pytest.raises(WebhookVerificationError):
        req.verify("whsec_" + "A" * 43)


async def test_endpoint_with_wildcard_and_ingestlayer_format(srv: RunningServer, receiver: Receiver) -> None:
    created = await add_endpoint(srv, receiver, events=["invoice.*"], format="ingestlayer")
    eid = await send(srv, "invoice.paid", {"n": 1})
    await delivered(srv, eid)
    body = receiver.requests[0].verify(created["secret"])
    assert body["id"] == eid and body["type"] == "invoice.paid" and body["payload"] == {"n": 1}
    await not_delivered(srv, await send(srv, "invoices.paid", {}))


async def test_endpoint_with_its_own_secret_and_no_auth(srv: RunningServer, receiver: Receiver) -> None:
    own = await add_endpoint(srv, receiver, secret="my-own-signing-secret", events=["a.b"])
    assert "secret" not in own  # nothing generated, nothing to show
    plain = await add_endpoint(srv, receiver, auth="none", events=["c.d"])
    assert "secret" not in plain and plain["auth"] == "none"

    await delivered(srv, await send(srv, "a.b", {}))
    await delivered(srv, await send(srv, "c.d", {}))
    signed, unsigned = sorted(receiver.requests, key=lambda r: r.headers["X-Ingestlayer-Event"])
    assert signed.verify("my-own-signing-secret") == {"type": "a.b", "data": {}}
    assert "X-Ingestlayer-Signature" not in unsigned.headers
    assert unsigned.json() == {"type": "c.d", "data": {}}


# ---- list, patch, disable, rotate, delete --------------------------------------------------------------


async def test_list_and_patch_events(srv: RunningServer, receiver: Receiver) -> None:
    a = await add_endpoint(srv, receiver)
    b = await add_endpoint(srv, receiver, events=["user.*"], description="signups")
    _, listed = await srv.request("GET", "/v1/endpoints")
    assert sorted(e["id"] for e in listed["data"]) == sorted([a["id"], b["id"]])
    assert all("secret" not in e for e in listed["data"])
    assert {e["id"]: e["description"] for e in listed["data"]}[b["id"]] == "signups"

    status, patched = await srv.request(
        "PATCH", f"/v1/endpoints/{a['id']}", json={"events": ["invoice.paid"]}
    )
    assert status == 200, patched
    assert patched["events"] == ["invoice.paid"]
    assert patched["url"] == a["url"] and patched["format"] == "data"  # the rest is kept
    assert "secret" not in patched

    await not_delivered(srv, await send(srv, "invoice.created"))
    paid = await send(srv, "invoice.paid")
    await delivered(srv, paid)
    assert [r.headers["X-Ingestlayer-Event"] for r in receiver.requests] == ["invoice.paid"]
    # The secret survived the PATCH.
    assert receiver.requests[0].verify(a["secret"])["type"] == "invoice.paid"

    status, patched = await srv.request(
        "PATCH", f"/v1/endpoints/{a['id']}", json={"url": receiver.url + "/moved"}
    )
    assert status == 200 and patched["url"] == receiver.url + "/moved"
    await delivered(srv, await send(srv, "invoice.paid"))
    assert receiver.requests[-1].path == "/moved"


async def test_disable_and_reenable(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    status, off = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"enabled": False})
    assert status == 200 and off["enabled"] is False
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["enabled"] is False

    await not_delivered(srv, await send(srv, "invoice.created"))
    await asyncio.sleep(0.1)
    assert receiver.requests == []

    status, on = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"enabled": True})
    assert status == 200 and on["enabled"] is True
    eid = await send(srv, "invoice.created")
    assert (await delivered(srv, eid))["status"] == "delivered"
    assert len(receiver.requests) == 1
    assert receiver.requests[0].verify(ep["secret"])["type"] == "invoice.created"


async def test_rotate_secret(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    old = ep["secret"]
    assert ep["rotation_ends_at"] is None
    await delivered(srv, await send(srv, "invoice.created"))
    assert receiver.requests[0].verify(old)

    before = time.time()
    status, rotated = await srv.request("POST", f"/v1/endpoints/{ep['id']}/rotate-secret")
    assert status == 200, rotated
    assert rotated["id"] == ep["id"]
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    # By default the old secret still signs for a day, beside the new one.
    ends = parse_iso(rotated["rotation_ends_at"])
    assert before + 86_400 - 5 < ends < time.time() + 86_400 + 5
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert "secret" not in got and got["rotation_ends_at"] == rotated["rotation_ends_at"]

    # Receivers that know either secret accept the next delivery: it carries both signatures.
    await delivered(srv, await send(srv, "invoice.failed"))
    during = receiver.requests[-1]
    assert during.headers["X-Ingestlayer-Signature"].count("v1=") == 2
    assert during.verify(new)["type"] == "invoice.failed"
    assert during.verify(old)["type"] == "invoice.failed"
    # A patch leaves the rotation as it is.
    _, patched = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"description": "billing"})
    assert patched["rotation_ends_at"] == rotated["rotation_ends_at"]

    # Rotating with keep_old_for 0 cuts over at once: only the newest secret signs.
    status, again = await srv.request(
        "POST", f"/v1/endpoints/{ep['id']}/rotate-secret", json={"keep_old_for": 0}
    )
    assert status == 200 and again["rotation_ends_at"] is None
    await delivered(srv, await send(srv, "invoice.created"))
    latest = receiver.requests[-1]
    assert latest.headers["X-Ingestlayer-Signature"].count("v1=") == 1
    assert latest.verify(again["secret"])["type"] == "invoice.created"
    for retired in (old, new):
        with pytest.raises(WebhookVerificationError):
            latest.verify(retired)


async def test_a_rotation_ends_by_itself(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    status, rotated = await srv.request(
        "POST", f"/v1/endpoints/{ep['id']}/rotate-secret", json={"keep_old_for": 0.5}
    )
    assert status == 200 and rotated["rotation_ends_at"]
    await asyncio.sleep(0.7)
    await delivered(srv, await send(srv, "invoice.created"))
    last = receiver.requests[-1]
    assert last.headers["X-Ingestlayer-Signature"].count("v1=") == 1
    assert last.verify(rotated["secret"])
    with pytest.raises(WebhookVerificationError):
        last.verify(ep["secret"])
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["rotation_ends_at"] is None
    # Out of range: a negative time, or more than 30 days.
    for bad in (-1, 31 * 86_400):
        status, body = await srv.request(
            "POST", f"/v1/endpoints/{ep['id']}/rotate-secret", json={"keep_old_for": bad}
        )
        assert status == 422 and error_of(body)["field"] == "keep_old_for", body
    # Deleting the endpoint removes both of its secrets.
    status, _ = await srv.request("DELETE", f"/v1/endpoints/{ep['id']}")
    assert status == 204
    _, secrets = await srv.request("GET", "/v1/secrets")
    assert [s["name"] for s in secrets["data"]] == []


async def test_patching_to_signed_makes_a_secret_shown_once(srv: RunningServer, receiver: Receiver) -> None:
    plain = await add_endpoint(srv, receiver, auth="none")
    url = f"/v1/endpoints/{plain['id']}"
    status, patched = await srv.request("PATCH", url, json={"auth": "hmac"})
    assert status == 200, patched
    secret = patched["secret"]
    assert secret.startswith("whsec_") and patched["auth"] == "hmac"
    _, got = await srv.request("GET", url)
    assert "secret" not in got

    d = await delivered(srv, await send(srv, "invoice.created"))
    assert d["status"] == "delivered"
    assert receiver.requests[-1].verify(secret)["type"] == "invoice.created"
    # Later patches keep that secret and show nothing.
    status, again = await srv.request("PATCH", url, json={"description": "billing"})
    assert status == 200 and "secret" not in again
    await delivered(srv, await send(srv, "invoice.failed"))
    assert receiver.requests[-1].verify(secret)["type"] == "invoice.failed"
    # A bearer token is the receiver's own: it must be sent, not taken from the signing secret.
    status, body = await srv.request("PATCH", url, json={"auth": "bearer"})
    assert status == 422 and error_of(body)["field"] == "secret"
    status, body = await srv.request("PATCH", url, json={"auth": "bearer", "secret": "tok_123"})
    assert status == 200 and "secret" not in body


async def test_standard_signing_needs_a_base64_secret(srv: RunningServer, receiver: Receiver) -> None:
    ok = {"url": receiver.url + "/std", "events": ["invoice.failed"], "signing": "standard"}
    status, body = await srv.request("POST", "/v1/endpoints", json={**ok, "secret": "my-own-signing-secret"})
    assert status == 422 and error_of(body)["field"] == "secret"
    assert "base64" in error_of(body)["message"] and "my-own" not in error_of(body)["message"]
    # An endpoint signing with its own secret cannot switch to Standard Webhooks with it.
    own = await add_endpoint(srv, receiver, secret="my-own-signing-secret", events=["a.b"])
    status, body = await srv.request("PATCH", f"/v1/endpoints/{own['id']}", json={"signing": "standard"})
    assert status == 422 and "rotate" in error_of(body)["message"]
    _, got = await srv.request("GET", f"/v1/endpoints/{own['id']}")
    assert got["signing"] == "ingestlayer"

    # A secret replaced behind the endpoint's back fails its deliveries with the reason.
    status, std = await srv.request("POST", "/v1/endpoints", json={**ok, "retry": FAST})
    assert status == 201, std
    # (Not through the API: PUT /v1/secrets refuses an endpoint's own secret.)
    status, body = await srv.request("PUT", f"/v1/secrets/endpoint-{std['id']}", json={"value": "x"})
    assert status == 409 and "PATCH" in error_of(body)["message"], body
    rt = srv.runtime
    await rt.store.set_secret(srv.project_id, f"endpoint-{std['id']}", rt.box.encrypt("not base64!"))
    rt.dispatcher.resolver.forget(srv.project_id)
    d = await delivered(srv, await send(srv, "invoice.failed"))
    assert d["status"] == "dead"
    _, full = await srv.request("GET", f"/v1/deliveries/{d['id']}")
    errors = [a["error"] for a in full["attempts"]]
    assert len(errors) == 2
    assert all(e.startswith("the signing secret cannot be used") and "base64" in e for e in errors), errors
    assert not [r for r in receiver.requests if r.path == "/std"]


async def test_delete_endpoint(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    keep = await add_endpoint(srv, receiver, events=["user.*"])
    status, _ = await srv.request("DELETE", f"/v1/endpoints/{ep['id']}")
    assert status == 204
    for method, path in [
        ("GET", f"/v1/endpoints/{ep['id']}"),
        ("PATCH", f"/v1/endpoints/{ep['id']}"),
        ("DELETE", f"/v1/endpoints/{ep['id']}"),
        ("POST", f"/v1/endpoints/{ep['id']}/rotate-secret"),
    ]:
        status, body = await srv.request(method, path, json={} if method == "PATCH" else None)
        assert status == 404, (method, path, body)
        assert error_of(body)["code"] == "not_found"
    _, listed = await srv.request("GET", "/v1/endpoints")
    assert [e["id"] for e in listed["data"]] == [keep["id"]]
    _, dests = await srv.request("GET", "/v1/destinations")
    assert ep["destination_id"] not in {d["id"] for d in dests["data"]}
    # Its signing secret goes with it.
    _, secrets = await srv.request("GET", "/v1/secrets")
    assert [s for s in secrets["data"] if ep["id"] in s["name"]] == []
    await not_delivered(srv, await send(srv, "invoice.created"))
    assert receiver.requests == []


async def test_endpoints_survive_apply_prune(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    status, body = await srv.request("POST", "/v1/apply", json={"document": {}, "prune": True})
    assert status == 200 and body["changes"] == []
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["id"] == ep["id"]
    await delivered(srv, await send(srv, "invoice.created"))


# ---- test send ----------------------------------------------------------------------------------


async def test_destination_test_send_logs_its_first_attempt(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    status, d = await srv.request("POST", f"/v1/destinations/{ep['destination_id']}/test")
    assert status == 200, d
    assert d["id"].startswith("dlv_")
    assert d["status"] == "delivered"
    assert d["event_type"] == "ingestlayer.test"
    assert d["destination_id"] == ep["destination_id"]
    (attempt,) = d["attempts"]
    assert attempt["n"] == 1 and attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["response_excerpt"] == '{"received": true}'

    (req,) = receiver.requests
    assert req.headers["X-Ingestlayer-Delivery"] == d["id"]
    body = req.verify(ep["secret"])
    assert body["type"] == "ingestlayer.test"
    # The test delivery is listed like any other, with its event.
    status, listed = await srv.request("GET", f"/v1/deliveries/{d['id']}")
    assert status == 200 and listed["status"] == "delivered"
    status, ev = await srv.request("GET", f"/v1/events/{d['event_id']}")
    assert status == 200 and ev["type"] == "ingestlayer.test"

    # A failing receiver: the answer still carries the first attempt, with its status.
    receiver.default = Reply(status=500, body=b"down for maintenance")
    status, d = await srv.request("POST", f"/v1/destinations/{ep['destination_id']}/test")
    assert status == 200
    assert d["status"] in ("retrying", "dead", "delivering")
    assert d["attempts"][0]["status_code"] == 500
    assert d["attempts"][0]["response_excerpt"] == "down for maintenance"

    status, body = await srv.request("POST", "/v1/destinations/dst_nope/test")
    assert status == 404 and error_of(body)["code"] == "not_found"


# ---- validation ----------------------------------------------------------------------------------


async def test_endpoint_validation(srv: RunningServer) -> None:
    ok = {"url": "https://hooks.example.com/in", "events": ["invoice.created"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**ok, "events": []}, "events"),
        ({**ok, "events": ["invoice..created"]}, "events[0]"),
        ({**ok, "events": ["invoice.created", "has space"]}, "events[1]"),
        ({**ok, "url": "ftp://x.example"}, "url"),
        ({**ok, "url": "not a url"}, "url"),
        ({"events": ["a.b"]}, "url"),
        ({"url": ok["url"]}, "events"),
        ({**ok, "auth": "bearer"}, "secret"),
        ({**ok, "signing": "standard", "secret": "whsec_not-base64!"}, "secret"),
        ({**ok, "auth": "basic"}, "auth"),
        ({**ok, "format": "xml"}, "format"),
        ({**ok, "colour": "red"}, "colour"),
        ({**ok, "headers": {"X-Ingestlayer-Signature": "forged"}}, "headers"),
        ({**ok, "retry": {"schedule": "often"}}, "retry"),
        ({**ok, "timeout": 0}, "timeout"),
    ]
    for body, field in cases:
        status, resp = await srv.request("POST", "/v1/endpoints", json=body)
        assert status == 422, (body, resp)
        err = error_of(resp)
        assert err["code"] == "validation_error"
        assert err.get("field", "").endswith(field) or err.get("field", "").startswith(field), (body, err)
    _, listed = await srv.request("GET", "/v1/endpoints")
    assert listed["data"] == []
    _, pipes = await srv.request("GET", "/v1/pipelines")
    assert pipes["data"] == []

    # A pipeline id is not an endpoint id.
    await srv.apply(
        {
            "pipelines": [
                {
                    "name": "p",
                    "source": {"match": ["*"]},
                    "destinations": [{"webhook.out": {"url": ok["url"]}}],
                }
            ]
        }
    )
    _, pipes = await srv.request("GET", "/v1/pipelines")
    status, body = await srv.request("GET", f"/v1/endpoints/{pipes['data'][0]['id']}")
    assert status == 404
    error_of(body)

    # PATCH validates too, and a failed PATCH changes nothing.
    _, ep = await srv.request("POST", "/v1/endpoints", json=ok)
    for patch in ({"events": []}, {"events": ["bad type"]}, {"url": "nope"}, {"nope": 1}):
        status, body = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json=patch)
        assert status == 422, (patch, body)
        error_of(body)
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["events"] == ["invoice.created"] and got["url"] == ok["url"]
    raw = orjson.dumps(got)
    assert ep["secret"].encode() not in raw
