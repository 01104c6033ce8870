"""Secret rotation: every rotated-out secret signs until its own promised end, however many
rotations follow; ``rotation_ends_at`` tells when the last of them stops. Also: the errors of
``/v1/endpoints`` name the request's own fields."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ingestlayer.api import endpoints
from ingestlayer.sdk.webhooks import WebhookVerificationError, verify
from ingestlayer.timefmt import parse_iso
from tests.support.api import FAST_RETRY, add_endpoint, error_of
from tests.support.receiver import Received, Receiver
from tests.support.server import RunningServer, wait_for

FAST = FAST_RETRY
DAY = 86_400


async def rotate(server: RunningServer, endpoint_id: str, **body: Any) -> dict[str, Any]:
    status, rotated = await server.request(
        "POST", f"/v1/endpoints/{endpoint_id}/rotate-secret", json=body or None
    )
    assert status == 200, rotated
    result: dict[str, Any] = rotated
    return result


async def next_request(server: RunningServer, receiver: Receiver) -> Received:
    """Send an event; return the request the receiver got for it."""
    status, body = await server.ingest("invoice.created", {"n": 1})
    assert status == 202, body
    eid = body["id"]

    async def check() -> bool:
        _, ev = await server.request("GET", f"/v1/events/{eid}")
        return any(d["status"] == "delivered" for d in ev["deliveries"])

    await wait_for(check)
    return receiver.requests[-1]


def signed_by(req: Received, secret: str) -> bool:
    try:
        req.verify(secret)
    except WebhookVerificationError:
        return False
    return True


def standard_signed_by(req: Received, secret: str) -> bool:
    """Checked on the Standard Webhooks headers alone (the SDK prefers ours when present)."""
    headers = {k: v for k, v in req.headers.items() if k.lower() != "x-ingestlayer-signature"}
    try:
        verify(secret, headers, req.body)
    except WebhookVerificationError:
        return False
    return True


async def stored_secrets(server: RunningServer) -> list[str]:
    _, listed = await server.request("GET", "/v1/secrets")
    return [s["name"] for s in listed["data"]]


@pytest.mark.parametrize("signing", ["ingestlayer", "standard"])
async def test_a_second_rotation_keeps_the_first_old_secret_signing(
    server: RunningServer, receiver: Receiver, signing: str
) -> None:
    ep = await add_endpoint(server, receiver, signing=signing)
    original = ep["secret"]
    start = time.time()
    first = await rotate(server, ep["id"])
    second = await rotate(server, ep["id"])

    # The original secret was promised a day by the first rotation: the second did not cut it short.
    req = await next_request(server, receiver)
    for secret in (second["secret"], first["secret"], original):
        assert signed_by(req, secret)
    assert req.headers["X-Ingestlayer-Signature"].count("v1=") == 3
    if signing == "standard":
        assert req.headers["webhook-signature"].count("v1,") == 3
        for secret in (second["secret"], first["secret"], original):
            assert standard_signed_by(req, secret)
    with pytest.raises(WebhookVerificationError):
        req.verify("whsec_" + "A" * 43)

    # Truthful times: each old secret's own end, and the rotation's, when the last one stops.
    first_end = parse_iso(first["rotation_ends_at"])
    assert start + DAY - 5 < first_end < time.time() + DAY + 5
    assert second["rotation_ends_at"] >= first["rotation_ends_at"]
    assert [parse_iso(p["signs_until"]) for p in second["previous_secrets"]] == [
        parse_iso(second["rotation_ends_at"]),
        first_end,
    ]
    _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["rotation_ends_at"] == second["rotation_ends_at"]
    assert got["previous_secrets"] == second["previous_secrets"]
    # Every secret still signing is stored under its own name: the endpoint's, listed as such.
    # Each secret keeps its name while it signs; a new one gets a name of its own.
    names = [f"endpoint-{ep['id']}", f"endpoint-{ep['id']}.2", f"endpoint-{ep['id']}.3"]
    assert await stored_secrets(server) == names


async def test_each_old_secret_stops_at_its_own_end(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    original = ep["secret"]
    # The original: a few seconds more, so the next delivery is signed with it even when a loaded
    # machine is slow to send it.
    short = await rotate(srv, ep["id"], keep_old_for=3.0)
    long = await rotate(srv, ep["id"])  # the first new one: a day more
    req = await next_request(srv, receiver)
    assert all(signed_by(req, s) for s in (long["secret"], short["secret"], original))
    assert parse_iso(long["rotation_ends_at"]) > time.time() + DAY - 5
    assert len(long["previous_secrets"]) == 2

    await asyncio.sleep(max(0.0, parse_iso(short["rotation_ends_at"]) - time.time()) + 0.2)
    req = await next_request(srv, receiver)
    assert req.headers["X-Ingestlayer-Signature"].count("v1=") == 2
    assert signed_by(req, long["secret"]) and signed_by(req, short["secret"])
    assert not signed_by(req, original)
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["rotation_ends_at"] == long["rotation_ends_at"]
    assert got["previous_secrets"] == [{"signs_until": long["rotation_ends_at"]}]

    # A patch keeps the rotation going, and lets the expired secret go.
    status, patched = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"description": "billing"})
    assert status == 200 and patched["previous_secrets"] == got["previous_secrets"]
    assert await stored_secrets(srv) == [f"endpoint-{ep['id']}.2", f"endpoint-{ep['id']}.3"]
    req = await next_request(srv, receiver)
    assert signed_by(req, long["secret"]) and signed_by(req, short["secret"])

    # keep_old_for 0 cuts over at once: every old secret stops, and is deleted.
    final = await rotate(srv, ep["id"], keep_old_for=0)
    assert final["rotation_ends_at"] is None and final["previous_secrets"] == []
    req = await next_request(srv, receiver)
    assert req.headers["X-Ingestlayer-Signature"].count("v1=") == 1
    assert signed_by(req, final["secret"])
    assert not any(signed_by(req, s) for s in (long["secret"], short["secret"], original))
    assert await stored_secrets(srv) == [f"endpoint-{ep['id']}"]


async def test_a_secret_set_by_hand_ends_every_rotation(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    await rotate(srv, ep["id"])
    await rotate(srv, ep["id"])
    status, patched = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"secret": "whsec_my-own"})
    assert status == 200, patched
    assert patched["rotation_ends_at"] is None and patched["previous_secrets"] == []
    req = await next_request(srv, receiver)
    assert req.headers["X-Ingestlayer-Signature"].count("v1=") == 1 and signed_by(req, "whsec_my-own")
    assert await stored_secrets(srv) == [f"endpoint-{ep['id']}.4"]


async def test_old_secrets_signing_at_once_are_bounded(srv: RunningServer, receiver: Receiver) -> None:
    ep = await add_endpoint(srv, receiver)
    secrets = [ep["secret"]]
    for _ in range(10):
        secrets.append((await rotate(srv, ep["id"]))["secret"])
    status, body = await srv.request("POST", f"/v1/endpoints/{ep['id']}/rotate-secret")
    assert status == 409, body
    assert "keep_old_for" in error_of(body)["message"]
    # Refused whole: nothing changed, and all eleven still sign.
    req = await next_request(srv, receiver)
    assert req.headers["X-Ingestlayer-Signature"].count("v1=") == 11
    assert all(signed_by(req, s) for s in secrets)
    final = await rotate(srv, ep["id"], keep_old_for=0)
    assert (await next_request(srv, receiver)).headers["X-Ingestlayer-Signature"].count("v1=") == 1
    assert signed_by(receiver.requests[-1], final["secret"])


# ---- errors name the request's fields ------------------------------------------------------------


async def test_endpoint_errors_name_the_request_fields(srv: RunningServer, receiver: Receiver) -> None:
    ok = {"url": "https://hooks.example.com/in", "events": ["invoice.created"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**ok, "url": "ftp://x"}, "url"),
        ({**ok, "url": "not a url"}, "url"),
        ({**ok, "timeout": 0}, "timeout"),
        ({**ok, "headers": {"X-Ingestlayer-Signature": "forged"}}, "headers"),
    ]
    for body, field in cases:
        status, resp = await srv.request("POST", "/v1/endpoints", json=body)
        assert status == 422, (body, resp)
        err = error_of(resp)
        assert err.get("field") == field, (body, err)
        assert err["message"].startswith(f"{field}: "), err
        assert "webhook.out" not in err["message"], err
    status, resp = await srv.request("POST", "/v1/endpoints", json={**ok, "retry": {"schedule": "often"}})
    assert status == 422
    err = error_of(resp)
    assert err["field"].startswith("retry") and "webhook.out" not in err["message"], err

    _, ep = await srv.request("POST", "/v1/endpoints", json=ok)
    status, resp = await srv.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"url": "ftp://x"})
    assert status == 422 and error_of(resp)["field"] == "url", resp

    # signing: standard with the endpoint's own secret, which is not base64: the field is `signing`.
    own = await add_endpoint(srv, receiver, secret="my-own-signing-secret")
    status, resp = await srv.request("PATCH", f"/v1/endpoints/{own['id']}", json={"signing": "standard"})
    assert status == 422, resp
    err = error_of(resp)
    assert err["field"] == "signing" and "rotate" in err["message"], err
    assert "my-own" not in err["message"]


# ---- changes at the same moment ------------------------------------------------------------------
# Each endpoint change reads the configuration and writes it back. Two at once each wrote what
# it had read: a patch undid a disable, or deleted the secret a rotation had just stored (every
# delivery then failed: "secret … does not exist"), and of two rotations the first one's secret,
# already handed out, never signed. They now write only over what they read, again otherwise.

ROUNDS = 4


async def test_a_patch_and_a_rotation_at_once_both_hold(server: RunningServer, receiver: Receiver) -> None:
    for round_ in range(ROUNDS):
        ep = await add_endpoint(server, receiver)
        (rotated_status, rotated), (patched_status, patched) = await asyncio.gather(
            server.request("POST", f"/v1/endpoints/{ep['id']}/rotate-secret"),
            server.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"description": f"round {round_}"}),
        )
        assert rotated_status == 200 and patched_status == 200, (rotated, patched)
        _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
        assert got["description"] == f"round {round_}" and len(got["previous_secrets"]) == 1, got
        req = await next_request(server, receiver)
        assert signed_by(req, rotated["secret"]) and signed_by(req, ep["secret"]), round_
        status, body = await server.request("DELETE", f"/v1/endpoints/{ep['id']}")
        assert status == 204, body


async def test_two_patches_at_once_both_hold(server: RunningServer, receiver: Receiver) -> None:
    for round_ in range(ROUNDS):
        ep = await add_endpoint(server, receiver)
        results = await asyncio.gather(
            server.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"enabled": False}),
            server.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"description": "note"}),
            server.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"events": ["invoice.*"]}),
        )
        assert [status for status, _ in results] == [200, 200, 200], results
        _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
        assert (got["enabled"], got["description"], got["events"]) == (False, "note", ["invoice.*"]), round_


async def test_every_secret_two_rotations_at_once_hand_out_signs(
    server: RunningServer, receiver: Receiver
) -> None:
    for round_ in range(ROUNDS):
        ep = await add_endpoint(server, receiver)
        first, second = await asyncio.gather(rotate(server, ep["id"]), rotate(server, ep["id"]))
        req = await next_request(server, receiver)
        for secret in (ep["secret"], first["secret"], second["secret"]):
            assert signed_by(req, secret), round_
        status, body = await server.request("DELETE", f"/v1/endpoints/{ep['id']}")
        assert status == 204, body
    # Nothing is left behind of the deleted endpoints' secrets.
    assert await stored_secrets(server) == []


async def test_a_configuration_read_before_a_rotation_still_signs_with_the_old_secret(
    server: RunningServer, receiver: Receiver
) -> None:
    """A worker that read the endpoint just before a rotation committed and resolves its secrets
    just after must still sign with the secret the receiver has, not with the new one alone."""
    ep = await add_endpoint(server, receiver)
    store, resolver = server.runtime.store, server.runtime.dispatcher.resolver
    (before,) = (await store.get_destinations([ep["destination_id"]])).values()
    await rotate(server, ep["id"])
    resolver.forget(server.project_id)  # as another process is told at the rotation's commit
    refs = before.config["settings"]["secret"]
    refs = refs if isinstance(refs, list) else [refs]
    assert [await resolver(server.project_id, ref) for ref in refs] == [ep["secret"]]


async def test_many_endpoint_changes_at_once_all_succeed(server: RunningServer, receiver: Receiver) -> None:
    """Changes to one project's configuration take turns within a process: twelve creations,
    then twelve deletions, at once. Each tried five times at once against the others, and a
    third of them answered 409 (the deleted ones then stayed, with their secrets)."""
    created = await asyncio.gather(*(add_endpoint(server, receiver) for _ in range(12)))
    assert len({ep["id"] for ep in created}) == 12
    deleted = await asyncio.gather(*(server.request("DELETE", f"/v1/endpoints/{ep['id']}") for ep in created))
    assert [status for status, _ in deleted] == [204] * 12, deleted
    _, listed = await server.request("GET", "/v1/endpoints")
    assert listed["data"] == []
    assert await stored_secrets(server) == []


async def endpoint_secrets(server: RunningServer, endpoint_id: str) -> list[str]:
    _, listed = await server.request("GET", "/v1/secrets")
    return sorted(
        s["name"] for s in listed["data"] if (s.get("managed_by") or {}).get("endpoint_id") == endpoint_id
    )


async def test_secrets_whose_rotation_ended_are_deleted_without_another_change(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotated-out secret stops signing at its end, and used to stay stored (and named in the
    configuration) until the endpoint's next change. The api's sweep now drops it by itself."""
    ep = await add_endpoint(server, receiver)
    old = ep["secret"]
    rotated = await rotate(server, ep["id"], keep_old_for=1.0)
    assert len(await endpoint_secrets(server, ep["id"])) == 2
    assert signed_by(await next_request(server, receiver), old)  # still signing, until its end
    version = (await server.runtime.store.load_project_config(server.project_id)).version
    assert await endpoints.drop_finished_rotations(server.runtime, server.project_id) == 0
    assert (await server.runtime.store.load_project_config(server.project_id)).version == version

    # Past its end, the sweep (every ROTATION_SWEEP_SECONDS) drops it: nothing else changes.
    monkeypatch.setattr(endpoints, "ROTATION_SWEEP_SECONDS", 0.2)
    server.runtime.supervise("rotations-test", lambda: endpoints.sweep_finished_rotations(server.runtime))
    await asyncio.sleep(1.0)

    async def dropped() -> bool:
        return len(await endpoint_secrets(server, ep["id"])) == 1

    await wait_for(dropped, timeout=10)
    _, now = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert now["previous_secrets"] == [] and now["rotation_ends_at"] is None, now
    assert {k: now[k] for k in ("url", "events", "auth", "enabled")} == {
        k: ep[k] for k in ("url", "events", "auth", "enabled")
    }
    _, dest = await server.request("GET", f"/v1/destinations/{ep['destination_id']}")
    assert isinstance(dest["config"]["secret"], str) and "rotation_ends_at" not in dest["config"], dest
    request = await next_request(server, receiver)
    assert signed_by(request, rotated["secret"]) and not signed_by(request, old)
