"""Secrets in use cannot be deleted (409, naming the user), endpoints' signing secrets are listed
as theirs and cannot be deleted through /v1/secrets; and the other management listing, API
keys, gives its times as ISO 8601 like every other route."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from ingestlayer.secretbox import SecretBox
from ingestlayer.timefmt import parse_iso
from tests.support.api import FAST_RETRY, add_endpoint, error_of
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

FAST = FAST_RETRY


async def delivered_once(server: RunningServer, event_type: str) -> dict[str, Any]:
    status, body = await server.ingest(event_type, {"n": 1})
    assert status == 202, body
    eid = body["id"]

    async def check() -> dict[str, Any] | None:
        _, ev = await server.request("GET", f"/v1/events/{eid}")
        done = [d for d in ev["deliveries"] if d["status"] in ("delivered", "dead")]
        return done[0] if done else None

    result: dict[str, Any] = await wait_for(check)
    return result


async def test_endpoint_secrets_are_listed_as_the_endpoints_and_cannot_be_deleted(
    server: RunningServer, receiver: Receiver
) -> None:
    ep = await add_endpoint(server, receiver)
    status, rotated = await server.request("POST", f"/v1/endpoints/{ep['id']}/rotate-secret")
    assert status == 200, rotated
    await server.set_secret("acme-hooks", "whsec_user-secret-value")

    async with server.session.get(server.url + "/v1/secrets", headers=server.auth()) as resp:
        assert resp.status == 200
        raw = await resp.read()
    listed = orjson.loads(raw)["data"]
    managed = {"managed_by": {"endpoint_id": ep["id"]}}
    assert listed == [
        {"name": "acme-hooks"},
        {"name": f"endpoint-{ep['id']}", **managed},
        {"name": f"endpoint-{ep['id']}.2", **managed},
    ]
    for value in (ep["secret"], rotated["secret"], "whsec_user-secret-value"):
        assert value.encode() not in raw

    # Neither the current nor the rotated-out secret can be deleted: the endpoint would break.
    for name in (f"endpoint-{ep['id']}", f"endpoint-{ep['id']}.2"):
        status, body = await server.request("DELETE", f"/v1/secrets/{name}")
        assert status == 409, (name, body)
        err = error_of(body)
        assert err["code"] == "conflict"
        assert ep["id"] in err["message"] and "rotate-secret" in err["message"], err
    _, after = await server.request("GET", "/v1/secrets")
    assert [s["name"] for s in after["data"]] == [s["name"] for s in listed]

    # The endpoint still delivers, signed by both secrets.
    d = await delivered_once(server, "invoice.created")
    assert d["status"] == "delivered", d
    req = receiver.requests[-1]
    assert req.verify(rotated["secret"]) and req.verify(ep["secret"])

    # Deleting the endpoint deletes its secrets; an unused user secret can be deleted.
    status, _ = await server.request("DELETE", f"/v1/endpoints/{ep['id']}")
    assert status == 204
    _, gone = await server.request("GET", "/v1/secrets")
    assert gone["data"] == [{"name": "acme-hooks"}]
    status, _ = await server.request("DELETE", "/v1/secrets/acme-hooks")
    assert status == 204
    status, body = await server.request("DELETE", "/v1/secrets/acme-hooks")
    assert status == 404 and error_of(body)["code"] == "not_found"


async def test_a_secret_a_destination_uses_cannot_be_deleted(server: RunningServer) -> None:
    for name in ("acme-hooks", "acme-api-key", "pii-key", "stripe-signing", "spare"):
        await server.set_secret(name, f"value-of-{name}")
    await server.apply(
        {
            "destinations": [
                {
                    "name": "acme-webhook",
                    "webhook.out": {
                        "url": "https://hooks.acme.example/in",
                        "auth": "hmac",
                        "secret": "ref:acme-hooks",
                    },
                },
                {
                    "name": "acme-api",
                    "webhook.out": {
                        "url": "https://api.acme.example/in",
                        "secret_headers": {"X-Api-Key": "ref:acme-api-key"},
                    },
                },
                {
                    # Several destinations use it: each is named.
                    "name": "acme-backup",
                    "webhook.out": {
                        "url": "https://backup.acme.example/in",
                        "auth": "hmac",
                        "secret": ["ref:acme-hooks", "ref:spare-not-stored"],
                    },
                },
            ],
            "pipelines": [
                {
                    "name": "billing",
                    "source": {"match": ["invoice.*"]},
                    "steps": [{"redact.pii": {"mode": "hash", "hash_key": "ref:pii-key"}}],
                    "destinations": [{"ref": "acme-webhook"}, {"ref": "acme-api"}, {"ref": "acme-backup"}],
                }
            ],
            "sources": [{"name": "stripe", "verify": "stripe", "secret": "ref:stripe-signing"}],
        }
    )
    expected = {
        "acme-hooks": ["destination 'acme-backup'", "destination 'acme-webhook'"],
        "acme-api-key": ["destination 'acme-api'"],
        "pii-key": ["pipeline 'billing'"],
        "stripe-signing": ["source 'stripe'"],
    }
    for name, users in expected.items():
        status, body = await server.request("DELETE", f"/v1/secrets/{name}")
        assert status == 409, (name, body)
        err = error_of(body)
        assert err["code"] == "conflict"
        for user in users:
            assert user in err["message"], (name, err)
        assert f"value-of-{name}" not in err["message"]
    # A user secret is listed by its name alone, used or not.
    _, listed = await server.request("GET", "/v1/secrets")
    assert listed["data"] == [{"name": n} for n in sorted([*expected, "spare"])]

    # Unused: deleted. Once nothing references it any more, the used one can go too.
    status, _ = await server.request("DELETE", "/v1/secrets/spare")
    assert status == 204
    status, _ = await server.request("DELETE", "/v1/pipelines/billing")
    assert status == 204
    status, _ = await server.request("DELETE", "/v1/secrets/pii-key")
    assert status == 204
    status, _ = await server.request("DELETE", "/v1/destinations/acme-api")
    assert status == 204
    status, _ = await server.request("DELETE", "/v1/secrets/acme-api-key")
    assert status == 204
    status, body = await server.request("DELETE", "/v1/secrets/acme-hooks")
    assert status == 409 and "acme-webhook" in error_of(body)["message"]


# ---- API keys ------------------------------------------------------------------------------------


async def test_keys_list_times_as_iso_8601(srv: RunningServer) -> None:
    before = time.time()
    status, made = await srv.request("POST", "/v1/keys", json={"kind": "ingest", "name": "backend"})
    assert status == 201, made
    status, _ = await srv.request("DELETE", f"/v1/keys/{made['id']}")
    assert status == 204
    status, listed = await srv.request("GET", "/v1/keys")
    assert status == 200
    by_id = {k["id"]: k for k in listed["data"]}
    for key in listed["data"]:
        assert isinstance(key["created_at"], str) and key["created_at"].endswith("Z"), key
        parse_iso(key["created_at"])
    mine = by_id[made["id"]]
    assert before - 1 < parse_iso(mine["created_at"]) < time.time() + 1
    assert isinstance(mine["revoked_at"], str) and mine["revoked_at"].endswith("Z")
    assert parse_iso(mine["created_at"]) <= parse_iso(mine["revoked_at"]) < time.time() + 1
    live = [k for k in listed["data"] if k["id"] != made["id"]]
    assert live and all(k["revoked_at"] is None for k in live)


async def test_a_secret_stored_under_another_master_key_fails_its_attempts_cleanly(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Its attempts fail with a message saying so and are retried, like a missing secret's;
    the destination raised before, logging a traceback for every attempt ("internal error:
    SecretDecryptError"), and a signed source answered 500."""
    stored_elsewhere = SecretBox("not-this-servers-master-key").encrypt("partner-token")
    await server.runtime.store.set_secret(server.project_id, "partner", stored_elsewhere)
    status, body = await server.request(
        "POST",
        "/v1/apply",
        json={
            "document": {
                "pipelines": [
                    {
                        "name": "partner",
                        "source": {"match": ["order.*"]},
                        "destinations": [
                            {
                                "webhook.out": {
                                    "url": receiver.url + "/partner",
                                    "secret_headers": {"X-Partner-Token": "ref:partner"},
                                },
                                "retry": {"schedule": [0, 3600], "jitter": 0},
                            }
                        ],
                    }
                ]
            }
        },
    )
    assert status == 200, body
    status, body = await server.ingest("order.paid", {"n": 1})
    assert status == 202, body
    eid = body["id"]

    async def retrying() -> dict[str, Any] | None:
        _, ev = await server.request("GET", f"/v1/events/{eid}")
        found = [d for d in ev["deliveries"] if d["status"] == "retrying"]
        return found[0] if found else None

    d = await wait_for(retrying)
    assert d["last_error"].startswith("secret ref:partner cannot be decrypted"), d
    assert "ingestlayer secrets set partner" in d["last_error"]
    assert receiver.requests == []
    assert "Traceback" not in caplog.text and "raised on delivery" not in caplog.text
