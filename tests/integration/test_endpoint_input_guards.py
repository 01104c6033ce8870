"""``/v1/endpoints`` input that used to be taken and then broke the endpoint: explicit nulls in a
PATCH, a bearer token reused as a signing key, header names and values HTTP cannot carry,
unsendable or empty secrets, and descriptions of any length."""

from __future__ import annotations

from typing import Any

import pytest

from ingestlayer.sdk.webhooks import WebhookVerificationError
from ingestlayer.urlmask import MASK
from tests.support.api import FAST_RETRY, add_endpoint, error_of
from tests.support.receiver import Received, Receiver
from tests.support.server import RunningServer, wait_for

HOOK = "https://hooks.example.com/in"


async def deliver(server: RunningServer, receiver: Receiver, type_: str = "invoice.created") -> Received:
    """Send an event and wait for the endpoint to deliver it; the request the receiver got."""
    status, body = await server.ingest(type_, {"n": 1})
    assert status == 202, body

    async def check() -> dict[str, Any] | None:
        _, ev = await server.request("GET", f"/v1/events/{body['id']}")
        deliveries: list[dict[str, Any]] = ev["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["status"] in ("delivered", "dead") else None

    delivery = await wait_for(check)
    assert delivery["status"] == "delivered", delivery
    got = [r for r in receiver.requests if r.headers.get("X-Ingestlayer-Event") == type_]
    assert got, receiver.requests
    return got[-1]


async def stored_headers(server: RunningServer) -> list[dict[str, str]]:
    """Each destination's inline headers as stored (answers show their values masked)."""
    cfg = await server.runtime.store.load_project_config(server.project_id)
    return [d.config["settings"].get("headers", {}) for d in cfg.destinations.values()]


async def refused(
    server: RunningServer, method: str, path: str, body: dict[str, Any], field: str
) -> dict[str, Any]:
    """The request is a 422 naming ``field``; its error."""
    status, resp = await server.request(method, path, json=body)
    assert status == 422, (body, resp)
    err = error_of(resp)
    assert err["code"] == "validation_error" and err.get("field") == field, (body, err)
    return err


# ---- explicit nulls in a PATCH ---------------------------------------------------------------------------


NOT_NULLABLE = (
    "url",
    "events",
    "auth",
    "secret",
    "signing",
    "format",
    "headers",
    "secret_headers",
    "timeout",
    "enabled",
)


async def test_null_for_a_field_that_cannot_be_null_is_a_422_and_changes_nothing(
    server: RunningServer, receiver: Receiver
) -> None:
    ep = await add_endpoint(
        server, receiver, signing="standard", format="data", headers={"X-Team": "billing"}, timeout=5
    )
    path = f"/v1/endpoints/{ep['id']}"
    _, before = await server.request("GET", path)
    for name in NOT_NULLABLE:
        err = await refused(server, "PATCH", path, {name: None}, name)
        assert "null" in err["message"], err
        # Beside a valid change too: nothing of the PATCH is applied.
        await refused(server, "PATCH", path, {"description": "x", name: None}, name)
    _, after = await server.request("GET", path)
    assert after == before
    # Still signed both ways with its secret, with its headers: neither reset to a default.
    got = await deliver(server, receiver)
    assert got.headers["X-Team"] == "billing" and "webhook-signature" in got.headers
    assert got.verify(ep["secret"]) == {"type": "invoice.created", "data": {"n": 1}}


async def test_null_clears_the_description_and_the_retry_policy(
    server: RunningServer, receiver: Receiver
) -> None:
    ep = await add_endpoint(server, receiver, description="billing")
    path = f"/v1/endpoints/{ep['id']}"
    assert ep["description"] == "billing" and ep["retry"] == FAST_RETRY
    status, patched = await server.request("PATCH", path, json={"description": None, "retry": None})
    assert status == 200, patched
    assert patched["description"] is None and patched["retry"] is None  # the default policy
    assert patched["auth"] == "hmac" and patched["events"] == ep["events"]
    assert (await deliver(server, receiver)).verify(ep["secret"])


# ---- leaving auth: bearer --------------------------------------------------------------------------------


TOKEN = "dG9rZW4tb2YtdGhlLXJlY2VpdmVyLTEyMzQ="  # base64, so it would pass as a Standard Webhooks key


@pytest.mark.parametrize(
    "switch",
    [{"auth": "hmac"}, {"auth": "none", "signing": "standard"}, {"auth": "hmac", "signing": "standard"}],
)
async def test_leaving_bearer_for_signing_makes_a_new_secret(
    server: RunningServer, receiver: Receiver, switch: dict[str, str]
) -> None:
    ep = await add_endpoint(server, receiver, auth="bearer", secret=TOKEN)
    assert "secret" not in ep
    first = await deliver(server, receiver, "invoice.created")
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"

    status, patched = await server.request("PATCH", f"/v1/endpoints/{ep['id']}", json=switch)
    assert status == 200, patched
    secret = patched["secret"]  # the token went out in clear in every request: never a signing key
    assert secret.startswith("whsec_") and secret != TOKEN
    _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert "secret" not in got

    signed = await deliver(server, receiver, "invoice.paid")
    assert "Authorization" not in signed.headers
    assert signed.verify(secret)["type"] == "invoice.paid"
    with pytest.raises(WebhookVerificationError):
        signed.verify(TOKEN)


async def test_a_bearer_token_left_behind_never_signs_later(
    server: RunningServer, receiver: Receiver
) -> None:
    ep = await add_endpoint(server, receiver, auth="bearer", secret=TOKEN)
    path = f"/v1/endpoints/{ep['id']}"
    status, plain = await server.request("PATCH", path, json={"auth": "none"})
    assert status == 200 and "secret" not in plain, plain
    status, patched = await server.request("PATCH", path, json={"auth": "hmac"})
    assert status == 200, patched
    secret = patched["secret"]
    assert secret != TOKEN
    signed = await deliver(server, receiver)
    assert signed.verify(secret)
    with pytest.raises(WebhookVerificationError):
        signed.verify(TOKEN)


# ---- headers ---------------------------------------------------------------------------------------------


BAD_NAMES = ["X Bad\r\nInjected", "<b>BOLD</b>", "", "X-Naïve", "X:Colon", "X-Tab\t"]
BAD_VALUES = ["a\r\nX-Injected: 1", "line\nbreak", "cr\rhere", "nul\x00", "bell\x07", "del\x7f", "snow ☃"]


async def test_headers_http_cannot_carry_are_a_422_on_create_and_patch(
    server: RunningServer, receiver: Receiver
) -> None:
    ok = {"url": HOOK, "events": ["invoice.created"]}
    for name in BAD_NAMES:
        err = await refused(server, "POST", "/v1/endpoints", {**ok, "headers": {name: "v"}}, "headers")
        assert "header name" in err["message"], err
    for value in BAD_VALUES:
        err = await refused(server, "POST", "/v1/endpoints", {**ok, "headers": {"X-Team": value}}, "headers")
        # Named by the header; the value itself (often a credential) is not repeated.
        assert "X-Team" in err["message"] and value not in err["message"], err
    _, listed = await server.request("GET", "/v1/endpoints")
    assert listed["data"] == []

    # What HTTP does carry is taken, and delivered: a tab inside a value, latin-1 text.
    good = {"X-Team": "billing", "X-Note": "a\tb", "X-City": "Zürich"}
    ep = await add_endpoint(server, receiver, headers=good)
    assert ep["headers"] == dict.fromkeys(good, MASK)  # answers show the names only
    assert await stored_headers(server) == [good]
    got = await deliver(server, receiver)
    assert got.headers["X-Team"] == "billing"

    path = f"/v1/endpoints/{ep['id']}"
    for bad in [{BAD_NAMES[0]: "v"}, {"X-Team": BAD_VALUES[0]}]:
        await refused(server, "PATCH", path, {"headers": bad}, "headers")
    assert await stored_headers(server) == [good]


async def test_destination_headers_http_cannot_carry_are_a_422(server: RunningServer) -> None:
    cases: list[dict[str, Any]] = [
        {"headers": {"X Bad\r\nInjected": "v"}},
        {"headers": {"X-Team": "a\r\nX-Injected: 1"}},
        {"secret_headers": {"<b>BOLD</b>": "ref:token"}},
    ]
    for settings in cases:
        dest = {"name": "hooks", "webhook.out": {"url": HOOK, **settings}}
        field = next(iter(settings))
        await refused(server, "POST", "/v1/destinations", dest, f"webhook.out.{field}")
        status, body = await server.request("POST", "/v1/apply", json={"document": {"destinations": [dest]}})
        assert status == 422 and error_of(body)["field"] == f"destinations[0].webhook.out.{field}", body
    _, listed = await server.request("GET", "/v1/destinations")
    assert listed["data"] == []


# ---- secrets ---------------------------------------------------------------------------------------------


BAD_TOKENS = ["tok\r\nX-Injected: 1", "tok\n", "tok\x00en", "tok\ten", "tok\x1b[0m", "токен"]


async def test_a_bearer_token_http_cannot_carry_is_a_422(server: RunningServer, receiver: Receiver) -> None:
    ok = {"url": HOOK, "events": ["invoice.created"], "auth": "bearer"}
    for token in BAD_TOKENS:
        err = await refused(server, "POST", "/v1/endpoints", {**ok, "secret": token}, "secret")
        assert token not in err["message"], err
    _, listed = await server.request("GET", "/v1/endpoints")
    assert listed["data"] == []

    bearer = await add_endpoint(server, receiver, auth="bearer", secret="tok_123")
    signed = await add_endpoint(server, receiver)
    for token in BAD_TOKENS:
        await refused(server, "PATCH", f"/v1/endpoints/{bearer['id']}", {"secret": token}, "secret")
        patch = {"auth": "bearer", "secret": token}
        await refused(server, "PATCH", f"/v1/endpoints/{signed['id']}", patch, "secret")
    _, same = await server.request("GET", f"/v1/endpoints/{signed['id']}")
    assert same["auth"] == "hmac"
    status, _ = await server.request("DELETE", f"/v1/endpoints/{signed['id']}")
    assert status == 204
    # A token HTTP carries is taken, and goes out (latin-1 text too).
    status, body = await server.request("PATCH", f"/v1/endpoints/{bearer['id']}", json={"secret": "tök_456"})
    assert status == 200, body
    got = await deliver(server, receiver)
    # On the wire as latin-1 bytes (the receiver's server reads headers as UTF-8, escaping the rest).
    assert got.headers["Authorization"].encode("utf-8", "surrogateescape") == b"Bearer t\xf6k_456"


async def test_an_empty_secret_is_a_422(server: RunningServer, receiver: Receiver) -> None:
    ok = {"url": HOOK, "events": ["invoice.created"]}
    for auth in ("hmac", "bearer", "none"):
        for blank in ("", "   ", "\t\n"):
            await refused(server, "POST", "/v1/endpoints", {**ok, "auth": auth, "secret": blank}, "secret")
    ep = await add_endpoint(server, receiver)
    for blank in ("", "   "):
        await refused(server, "PATCH", f"/v1/endpoints/{ep['id']}", {"secret": blank}, "secret")
    # The secret made on create still signs.
    assert (await deliver(server, receiver)).verify(ep["secret"])


# ---- description -----------------------------------------------------------------------------------------


async def test_a_description_is_at_most_500_characters(server: RunningServer, receiver: Receiver) -> None:
    ok = {"url": HOOK, "events": ["invoice.created"]}
    for size in (501, 1_000_000):
        err = await refused(server, "POST", "/v1/endpoints", {**ok, "description": "d" * size}, "description")
        assert "500" in err["message"], err
    ep = await add_endpoint(server, receiver, description="é" * 500)
    assert ep["description"] == "é" * 500
    path = f"/v1/endpoints/{ep['id']}"
    await refused(server, "PATCH", path, {"description": "d" * 501}, "description")
    _, same = await server.request("GET", path)
    assert same["description"] == "é" * 500


async def test_a_bearer_token_cannot_also_sign_standard_webhooks(srv: RunningServer) -> None:
    """One secret sent in clear as the bearer token and used as the signing key: the signature
    then proved nothing. Refused on endpoints and on webhook.out destinations alike."""
    bearer = {
        "url": HOOK,
        "auth": "bearer",
        "secret": "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=",
        "signing": "standard",
    }
    err = await refused(srv, "POST", "/v1/endpoints", {**bearer, "events": ["a.b"]}, "signing")
    assert "cannot also sign" in err["message"]
    doc = {
        "destinations": [
            {"name": "partner", "webhook.out": {**bearer, "secret": "ref:partner-token"}},
        ]
    }
    status, body = await srv.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422, body
    assert error_of(body)["field"] == "destinations[0].webhook.out.signing"
    assert "cannot also sign" in error_of(body)["message"]
    # Signing with a bearer token in a header of its own is the way.
    fine = {
        "url": HOOK,
        "signing": "standard",
        "secret": "ref:signing",
        "secret_headers": {"Authorization": "ref:tok"},
    }
    status, body = await srv.request(
        "POST", "/v1/apply", json={"document": {"destinations": [{"name": "p2", "webhook.out": fine}]}}
    )
    assert status == 200, body


def test_a_stored_bearer_that_signs_still_loads() -> None:
    """Configurations stored before the check above still load and send as they did."""
    from ingestlayer.destinations.registry import build_destination

    stored = {"url": HOOK, "auth": "bearer", "secret": "ref:tok", "signing": "standard"}
    assert build_destination("webhook.out", stored).config.signing == "standard"
