"""Signed webhook ingress: Stripe, GitHub, Standard Webhooks and generic HMAC senders.

Requests are signed with the senders' own libraries where they exist (``stripe``,
``standardwebhooks``) and by the documented algorithm where they do not (GitHub).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import stripe
from standardwebhooks import Webhook

from ingestlayer.secretbox import SecretBox
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server, wait_for

STRIPE_SECRET = "whsec_stripe_test_secret_1234567890"
GITHUB_SECRET = "It's a Secret to Everybody"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_SECRET = "billing-shared-secret"

STRIPE_EVENT = {
    "id": "evt_1PxStripe",
    "object": "event",
    "type": "invoice.payment_failed",
    "data": {"object": {"id": "in_123", "amount_due": 12000, "customer": "cus_9"}},
}


async def configure(server: RunningServer, receiver: Receiver) -> dict[str, str]:
    await server.set_secret("stripe", STRIPE_SECRET)
    await server.set_secret("github", GITHUB_SECRET)
    await server.set_secret("standard", STANDARD_SECRET)
    await server.set_secret("billing", HMAC_SECRET)
    result = await server.apply(
        {
            "sources": [
                {"name": "stripe", "verify": "stripe", "secret": "ref:stripe"},
                {"name": "github", "verify": "github", "secret": "ref:github", "type_prefix": "github."},
                {"name": "std", "verify": "standard-webhooks", "secret": "ref:standard"},
                {
                    "name": "billing",
                    "verify": "hmac-sha256",
                    "secret": "ref:billing",
                    "header": "X-Billing-Signature",
                    "encoding": "base64",
                    "prefix": "sha256=",
                    "timestamp_header": "X-Billing-Timestamp",
                    "event_type": "body:event",
                    "idempotency_key": "header:X-Billing-Id",
                },
                {"name": "open", "verify": "none"},
            ],
            "pipelines": [
                {
                    "name": "all-inbound",
                    "source": {"match": ["*"]},
                    "destinations": [{"webhook.out": {"url": receiver.url + "/in"}}],
                }
            ],
        }
    )
    paths = {c["name"]: c["ingress_path"] for c in result["changes"] if c["kind"] == "source"}
    assert set(paths) == {"stripe", "github", "std", "billing", "open"}
    return paths


async def post(server: RunningServer, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with server.session.post(server.url + path, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_stripe_signed_event_is_accepted_deduplicated_and_routed(
    server: RunningServer, receiver: Receiver
) -> None:
    paths = await configure(server, receiver)
    body = orjson.dumps(STRIPE_EVENT)
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    status, first = await post(server, paths["stripe"], body, {"Stripe-Signature": header})
    assert status == 202, first
    # Stripe retries with the same event id: stored once, routed once.
    status, again = await post(server, paths["stripe"], body, {"Stripe-Signature": header})
    assert status == 200 and again == {"id": first["id"], "duplicate": True}
    status, event = await server.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "invoice.payment_failed"
    assert event["source"] == "stripe"
    assert event["payload"] == STRIPE_EVENT
    await wait_for(lambda: _arrived(receiver, 1))
    assert receiver.requests[0].json()["payload"]["data"]["object"]["id"] == "in_123"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b, h: (b + b" ", h), "no Stripe-Signature v1 signature matches"),
        (lambda b, h: (b, {}), "missing Stripe-Signature header"),
        (lambda b, h: (b, {"Stripe-Signature": "garbage"}), "malformed Stripe-Signature"),
        (
            lambda b, h: (
                b,
                {
                    "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                        b.decode(), STRIPE_SECRET, timestamp=int(time.time()) - 600
                    )
                },
            ),
            "s off (tolerance 300 s)",  # 600 s, or 601 on a slow machine
        ),
        (
            lambda b, h: (
                b,
                {
                    "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                        b.decode(), "whsec_wrong"
                    )
                },
            ),
            "no Stripe-Signature v1 signature matches",
        ),
    ],
)
async def test_stripe_bad_signatures_get_401_with_the_reason(
    server: RunningServer, receiver: Receiver, mutate: Any, reason: str
) -> None:
    paths = await configure(server, receiver)
    body = orjson.dumps(STRIPE_EVENT)
    header = {
        "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    }
    bad_body, bad_headers = mutate(body, header)
    status, err = await post(server, paths["stripe"], bad_body, bad_headers)
    assert status == 401
    assert err["error"]["code"] == "invalid_signature"
    assert reason in err["error"]["message"]
    status, listed = await server.request("GET", "/v1/events")
    assert listed["data"] == []  # nothing stored


async def test_github_signature_type_and_delivery_id(server: RunningServer, receiver: Receiver) -> None:
    paths = await configure(server, receiver)
    body = b'{"ref":"refs/heads/main","commits":[]}'
    sig = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": sig, "X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-cc78"}
    status, first = await post(server, paths["github"], body, headers)
    assert status == 202
    status, again = await post(server, paths["github"], body, headers)
    assert status == 200 and again["duplicate"] is True
    _, event = await server.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "github.push"
    assert event["idempotency_key"] == "github:72d3162e-cc78"
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    status, err = await post(server, paths["github"], body, headers)
    assert status == 401 and "does not match" in err["error"]["message"]


async def test_standard_webhooks_signed_by_the_reference_library(
    server: RunningServer, receiver: Receiver
) -> None:
    paths = await configure(server, receiver)
    body = '{"type":"invoice.paid","data":{"invoiceId":"inv_1"}}'
    now = datetime.now(UTC)
    sig = Webhook(STANDARD_SECRET).sign("msg_2Lh9", now, body)
    headers = {
        "webhook-id": "msg_2Lh9",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sig,
    }
    status, first = await post(server, paths["std"], body.encode(), headers)
    assert status == 202, first
    _, event = await server.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "invoice.paid" and event["idempotency_key"] == "std:msg_2Lh9"
    stale = datetime.fromtimestamp(time.time() - 400, UTC)
    headers.update(
        {
            "webhook-timestamp": str(int(stale.timestamp())),
            "webhook-signature": Webhook(STANDARD_SECRET).sign("msg_2Lh9", stale, body),
        }
    )
    status, err = await post(server, paths["std"], body.encode(), headers)
    assert status == 401 and "off (tolerance 300 s)" in err["error"]["message"]


async def test_standard_webhooks_under_svix_header_names(server: RunningServer, receiver: Receiver) -> None:
    """Svix-powered senders send the standard's three headers as svix-id, svix-timestamp and
    svix-signature: verified, keyed and deduplicated the same way."""
    paths = await configure(server, receiver)
    body = '{"type":"user.created","data":{"id":"user_29w83"}}'
    now = datetime.now(UTC)
    headers = {
        "svix-id": "msg_p5jXN8",
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(STANDARD_SECRET).sign("msg_p5jXN8", now, body),
    }
    status, first = await post(server, paths["std"], body.encode(), headers)
    assert status == 202, first
    _, event = await server.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "user.created" and event["idempotency_key"] == "std:msg_p5jXN8"
    status, again = await post(server, paths["std"], body.encode(), headers)
    assert status == 200 and again == {"id": first["id"], "duplicate": True}
    # Signed for another message id: refused under either name.
    forged = {**headers, "svix-id": "msg_other"}
    status, err = await post(server, paths["std"], body.encode(), forged)
    assert status == 401 and "no webhook-signature v1 signature matches" in err["error"]["message"]
    # With webhook-id present, the standard's names alone are read: no mix of the two.
    mixed = {"webhook-id": "msg_p5jXN8", **headers}
    status, err = await post(server, paths["std"], body.encode(), mixed)
    assert status == 401 and "missing webhook-timestamp header" in err["error"]["message"]


async def test_generic_hmac_with_timestamp_header(server: RunningServer, receiver: Receiver) -> None:
    paths = await configure(server, receiver)
    body = b'{"event":"subscription.suspended","data":{"subscriptionId":"sub_1"}}'
    ts = str(int(time.time()))
    digest = hmac.new(HMAC_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).digest()
    headers = {
        "X-Billing-Signature": "sha256=" + base64.b64encode(digest).decode(),
        "X-Billing-Timestamp": ts,
        "X-Billing-Id": "b-77",
    }
    status, first = await post(server, paths["billing"], body, headers)
    assert status == 202, first
    _, event = await server.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "subscription.suspended"
    headers["X-Billing-Timestamp"] = str(int(ts) + 1)  # the timestamp is signed too
    status, _ = await post(server, paths["billing"], body, headers)
    assert status == 401


async def test_unsigned_source_bad_bodies_and_unknown_source(
    server: RunningServer, receiver: Receiver
) -> None:
    paths = await configure(server, receiver)
    status, _ = await post(server, paths["open"], b'{"type":"form.submitted","email":"a@b.co"}', {})
    assert status == 202
    status, err = await post(server, paths["open"], b"not json", {})
    assert status == 400 and err["error"]["code"] == "invalid_json"
    status, err = await post(server, paths["open"], b'{"no_type": 1}', {})
    assert status == 422 and err["error"]["field"] == "body:type"
    status, err = await post(server, "/v1/ingress/src_doesnotexist", b"{}", {})
    assert status == 404
    status, err = await post(server, paths["open"], b'{"type":"x","pad":"' + b"a" * 300_000 + b'"}', {})
    assert status == 413


async def test_sources_are_listed_with_ingress_paths_and_never_show_secrets(
    server: RunningServer, receiver: Receiver
) -> None:
    paths = await configure(server, receiver)
    status, body = await server.request("GET", "/v1/sources")
    assert status == 200
    listed = {s["name"]: s for s in body["data"]}
    assert listed["stripe"]["ingress_path"] == paths["stripe"]
    raw = orjson.dumps(body).decode()
    for secret in (STRIPE_SECRET, GITHUB_SECRET, STANDARD_SECRET, HMAC_SECRET):
        assert secret not in raw
    status, err = await server.request(
        "POST", "/v1/sources", json={"name": "bad", "verify": "stripe", "secret": "whsec_inline"}
    )
    assert status == 422 and "reference" in err["error"]["message"]
    status, err = await server.request("POST", "/v1/sources", json={"name": "bad", "verify": "github"})
    assert status == 422 and "needs a secret" in err["error"]["message"]


async def _arrived(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


async def test_ingress_shares_the_projects_ingest_rate_limit(sqlite_url: str, receiver: Receiver) -> None:
    server = await start_server(sqlite_url, ingest_rate_limit=3)
    try:
        paths = await configure(server, receiver)
        started = time.monotonic()
        answers = [
            await post(server, paths["open"], b'{"type":"form.submitted","n":%d}' % i, {}) for i in range(8)
        ]
        elapsed = time.monotonic() - started
        statuses = [status for status, _ in answers]
        accepted = statuses.count(202)
        # One second's burst, and what refilled meanwhile (more than one only if a loaded machine
        # took long over the eight).
        assert 3 <= accepted <= max(4, 3 + 3 * elapsed), (statuses, elapsed)
        assert statuses.count(429) == 8 - accepted
        assert all(body["error"]["code"] == "rate_limited" for status, body in answers if status == 429)
        # The same bucket as POST /v1/events: the project is held back there too.
        status, _ = await server.ingest("form.submitted", {"via": "api"})
        assert status == 429
        # A forged signature is refused before it can spend the allowance.
        await asyncio.sleep(1.5)
        forged = {"X-Billing-Signature": "bad"}
        for _ in range(5):
            assert (await post(server, paths["billing"], b'{"event":"x.y"}', forged))[0] == 401
        status, _ = await post(server, paths["open"], b'{"type":"form.submitted","late":true}', {})
        assert status == 202
    finally:
        await server.stop()


async def test_sources_give_the_ingress_url_when_the_public_address_is_known(
    sqlite_url: str, receiver: Receiver
) -> None:
    server = await start_server(sqlite_url, public_url="https://hooks.acme.example/")
    try:
        paths = await configure(server, receiver)
        _, body = await server.request("GET", "/v1/sources")
        listed = {s["name"]: s for s in body["data"]}
        assert listed["stripe"]["ingress_url"] == "https://hooks.acme.example" + paths["stripe"]
        _, one = await server.request("GET", "/v1/sources/github")
        assert one["ingress_url"] == "https://hooks.acme.example" + paths["github"]
    finally:
        await server.stop()
    # Without it, only the path: the server cannot know how senders reach it.
    other = await start_server(sqlite_url, project="acme-2")
    try:
        await configure(other, receiver)
        _, body = await other.request("GET", "/v1/sources")
        assert {s["ingress_url"] for s in body["data"]} == {None}
    finally:
        await other.stop()


async def test_a_source_is_replaced_by_put_on_its_name_or_id(sqlite_url: str) -> None:
    server = await start_server(sqlite_url)
    try:
        created = {"name": "billing", "verify": "hmac-sha256", "secret": "env:BILLING_SECRET"}
        status, made = await server.request("PUT", "/v1/sources/billing", json=created)
        assert status == 201, made
        changed = {"verify": "hmac-sha256", "secret": "env:BILLING_SECRET", "header": "X-Billing-Signature"}
        status, body = await server.request("PUT", f"/v1/sources/{made['id']}", json=changed)
        assert status == 200, body
        assert body["id"] == made["id"] and body["name"] == "billing"  # the same ingress address
        _, one = await server.request("GET", "/v1/sources/billing")
        assert one["config"]["header"] == "X-Billing-Signature", one
        status, err = await server.request("PUT", "/v1/sources/billing", json={**changed, "name": "other"})
        assert status == 422 and err["error"]["field"] == "name", err
        status, err = await server.request("PUT", "/v1/sources/billing", json={"verify": "stripe"})
        assert status == 422, err  # replaced whole: stripe needs a secret
        _, listed = await server.request("GET", "/v1/sources")
        assert [s["name"] for s in listed["data"]] == ["billing"]
    finally:
        await server.stop()


async def test_a_source_is_found_by_its_name_or_id_and_an_unknown_one_is_named_in_a_404(
    sqlite_url: str,
) -> None:
    server = await start_server(sqlite_url)
    try:
        created = {"name": "billing", "verify": "hmac-sha256", "secret": "env:BILLING_SECRET"}
        status, made = await server.request("POST", "/v1/sources", json=created)
        assert status == 201, made
        for key in ("billing", made["id"]):
            status, one = await server.request("GET", f"/v1/sources/{key}")
            assert status == 200 and one["id"] == made["id"], one
        for method in ("GET", "DELETE"):
            status, err = await server.request(method, "/v1/sources/nope")
            assert status == 404 and err["error"]["message"] == "no source 'nope'", (method, err)
        status, _ = await server.request("DELETE", "/v1/sources/billing")
        assert status == 204
        status, err = await server.request("GET", f"/v1/sources/{made['id']}")
        assert status == 404 and err["error"]["message"] == f"no source {made['id']!r}", err
    finally:
        await server.stop()


async def test_a_source_secret_stored_under_another_master_key_is_a_503(
    server: RunningServer, receiver: Receiver
) -> None:
    """The operator's misconfiguration, as for a missing secret: 503 with Retry-After, the
    secret not named; it was a 500 (the decryption error escaped)."""
    paths = await configure(server, receiver)
    stray = SecretBox("not-this-servers-master-key").encrypt(GITHUB_SECRET)
    await server.runtime.store.set_secret(server.project_id, "github", stray)
    server.runtime.dispatcher.resolver.forget(server.project_id)
    body = b'{"ref":"refs/heads/main","commits":[]}'
    sig = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": sig, "X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-dd01"}
    async with server.session.post(server.url + paths["github"], data=body, headers=headers) as resp:
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "60"
        text = await resp.text()
    assert "not configured on the server" in text and "github" not in text  # the secret's name


@pytest.mark.parametrize("value", ["", "  "])
async def test_a_source_whose_secret_is_empty_refuses_every_webhook(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """`secret: env:VAR` with VAR set but empty (docker-compose's ${VAR} when VAR is undefined):
    a GitHub signature made with an empty key was taken, so anyone could send the source signed
    events. Now a 503, as for a secret that is not set, and nothing stored."""
    monkeypatch.setenv("AUDIT_EMPTY_SECRET", value)
    server = await start_server(sqlite_url, env_secrets=("AUDIT_EMPTY_SECRET",))
    try:
        status, created = await server.request(
            "POST", "/v1/sources", json={"name": "gh", "verify": "github", "secret": "env:AUDIT_EMPTY_SECRET"}
        )
        assert status == 201, created
        body = b'{"forged": true}'
        sig = "sha256=" + hmac.new(value.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-Hub-Signature-256": sig, "X-GitHub-Event": "push", "X-GitHub-Delivery": "forged-1"}
        async with server.session.post(
            server.url + created["ingress_path"], data=body, headers=headers
        ) as resp:
            text = await resp.text()
            assert resp.status == 503, text
            assert resp.headers["Retry-After"] == "60"
        assert "unusable" in text and "empty" in text
        _, listed = await server.request("GET", "/v1/events")
        assert listed["data"] == []
    finally:
        await server.stop()


async def test_an_ingest_key_cannot_take_a_signed_webhooks_idempotency_key_first(
    server: RunningServer, receiver: Receiver
) -> None:
    """A signed webhook's key is its source's name and the sender's id. Stored as such, an event
    sent with an ingest key and the key ``stripe:evt_1PxStripe`` took it first: the verified
    Stripe event was then answered 200 duplicate (so Stripe never retried) and dropped."""
    paths = await configure(server, receiver)
    status, forged = await server.ingest(
        "invoice.paid", {"forged": True}, idempotency_key=f"stripe:{STRIPE_EVENT['id']}"
    )
    assert status == 202, forged
    body = orjson.dumps(STRIPE_EVENT)
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    status, genuine = await post(server, paths["stripe"], body, {"Stripe-Signature": header})
    assert status == 202 and genuine["duplicate"] is False, genuine
    assert genuine["id"] != forged["id"]
    status, event = await server.request("GET", f"/v1/events/{genuine['id']}")
    assert event["payload"] == STRIPE_EVENT and event["source"] == "stripe"
    # Shown as it always was; a redelivery is still the same event.
    assert event["idempotency_key"] == f"stripe:{STRIPE_EVENT['id']}"
    status, again = await post(server, paths["stripe"], body, {"Stripe-Signature": header})
    assert status == 200 and again == {"id": genuine["id"], "duplicate": True}


@pytest.mark.parametrize("key", ["\x1fstripe:evt_1", "tab\there", "line\nbreak", "del\x7f"])
async def test_idempotency_keys_with_control_characters_are_refused(server: RunningServer, key: str) -> None:
    status, body = await server.ingest("a.b", {}, idempotency_key=key)
    assert status == 422, body
    assert body["error"]["field"] == "idempotency_key"
    assert "without control characters" in body["error"]["message"]
    status, body = await server.request(
        "POST",
        "/v1/events",
        key=server.ingest_key,
        json={"batch": [{"type": "a.b", "payload": {}, "idempotency_key": key}]},
    )
    assert status == 422 and body["error"]["field"] == "batch[0].idempotency_key", body
