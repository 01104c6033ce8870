"""``secret_headers`` on ``/v1/endpoints``: a header whose value is a credential (an API key the
receiver wants) is stored as a reference to a secret, resolved at send, and never shown by
answers or the attempt log, as on ``webhook.out`` destinations."""

from __future__ import annotations

import re
from typing import Any

from ingestlayer.urlmask import MASK
from tests.integration.test_dashboard import endpoint_form
from tests.integration.test_endpoint_input_guards import deliver, refused
from tests.support.api import add_endpoint
from tests.support.dashboard_client import Browser, signed_in
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer

API_KEY = "sk_live_endpoint-header-value-0123456789"
HOOK = "https://hooks.example.com/in"


async def _attempts(server: RunningServer, event_id: str) -> list[dict[str, Any]]:
    _, ev = await server.request("GET", f"/v1/events/{event_id}")
    _, d = await server.request("GET", f"/v1/deliveries/{ev['deliveries'][0]['id']}")
    attempts: list[dict[str, Any]] = d["attempts"]
    return attempts


async def test_a_secret_header_goes_out_resolved_and_answers_show_the_reference(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.set_secret("acme-api-key", API_KEY)
    # The receiver answers with the request it got, headers and all, as httpbin does.
    receiver.default = Reply(echo=True)
    ep = await add_endpoint(
        server,
        receiver,
        headers={"X-Team": "billing"},
        secret_headers={"X-Api-Key": "ref:acme-api-key"},
    )
    assert ep["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"}
    assert ep["headers"] == {"X-Team": MASK}  # inline values are shown masked; sent as written below

    got = await deliver(server, receiver)
    assert got.headers["X-Api-Key"] == API_KEY and got.headers["X-Team"] == "billing"
    assert got.verify(ep["secret"])["type"] == "invoice.created"  # still signed

    # The value is nowhere in answers: the endpoint, the list, the event and its attempt log
    # (where the receiver's echo of it is scrubbed).
    event_id = got.json()["id"]
    (attempt,) = await _attempts(server, event_id)
    assert attempt["status_code"] == 200 and '"X-Api-Key"' in attempt["response_excerpt"]
    assert API_KEY not in attempt["response_excerpt"]
    for path in (
        "/v1/endpoints",
        f"/v1/endpoints/{ep['id']}",
        f"/v1/events/{event_id}",
        "/v1/deliveries",
        "/v1/destinations",
        "/v1/secrets",
    ):
        status, body = await server.request("GET", path)
        assert status == 200, (path, body)
        assert API_KEY not in str(body), path
    _, shown = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert shown["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"}
    _, listed_eps = await server.request("GET", "/v1/endpoints")
    assert listed_eps["data"][0]["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"}

    # The secret is in use: deleting it is a 409 naming the endpoint.
    status, body = await server.request("DELETE", "/v1/secrets/acme-api-key")
    assert status == 409, body
    assert ep["id"] in body["error"]["message"]

    # A PATCH without the field keeps the secret headers; a new value of the secret goes out.
    path = f"/v1/endpoints/{ep['id']}"
    status, patched = await server.request("PATCH", path, json={"description": "billing", "headers": {}})
    assert status == 200, patched
    assert patched["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"} and patched["headers"] == {}
    await server.set_secret("acme-api-key", API_KEY + "-2")
    got = await deliver(server, receiver, "invoice.paid")
    assert got.headers["X-Api-Key"] == API_KEY + "-2" and "X-Team" not in got.headers

    # Replaced, then cleared: the secret is free to delete once nothing names it.
    await server.set_secret("other-key", "sk_other-0123456789")
    status, patched = await server.request(
        "PATCH", path, json={"secret_headers": {"X-Other-Key": "ref:other-key"}}
    )
    assert status == 200 and patched["secret_headers"] == {"X-Other-Key": "ref:other-key"}, patched
    status, body = await server.request("DELETE", "/v1/secrets/acme-api-key")
    assert status == 204, body
    status, patched = await server.request("PATCH", path, json={"secret_headers": {}})
    assert status == 200 and patched["secret_headers"] == {}, patched
    got = await deliver(server, receiver, "invoice.voided")
    assert "X-Api-Key" not in got.headers and "X-Other-Key" not in got.headers
    status, body = await server.request("DELETE", "/v1/secrets/other-key")
    assert status == 204, body


async def test_secret_headers_are_checked_as_webhook_out_checks_them(
    srv: RunningServer, receiver: Receiver
) -> None:
    ok = {"url": HOOK, "events": ["invoice.created"]}
    cases: list[tuple[dict[str, Any], str]] = [
        # The value itself instead of a reference: refused, and not repeated.
        ({"secret_headers": {"X-Api-Key": API_KEY}}, "ref:NAME"),
        ({"secret_headers": {"X-Api-Key": "ref:bad name"}}, "secret names"),
        ({"secret_headers": {"X-Ingestlayer-Event": "ref:k"}}, "cannot be overridden"),
        ({"secret_headers": {"X Bad\r\nInjected": "ref:k"}}, "not a valid header name"),
        ({"headers": {"x-api-key": "a"}, "secret_headers": {"X-Api-Key": "ref:k"}}, "both"),
        (
            {"auth": "bearer", "secret": "tok_123", "secret_headers": {"Authorization": "ref:k"}},
            "auth: bearer sets Authorization",
        ),
    ]
    for extra, why in cases:
        err = await refused(srv, "POST", "/v1/endpoints", {**ok, **extra}, "secret_headers")
        assert why in err["message"] and API_KEY not in err["message"], err
    _, listed = await srv.request("GET", "/v1/endpoints")
    assert listed["data"] == []

    # The same cases on webhook.out name the same field (the clash of both fields too).
    for extra, why in cases[:5]:
        dest = {"name": "hooks", "webhook.out": {"url": HOOK, **extra}}
        err = await refused(srv, "POST", "/v1/destinations", dest, "webhook.out.secret_headers")
        assert why in err["message"], err

    ep = await add_endpoint(srv, receiver, secret_headers={"X-Api-Key": "ref:acme-api-key"})
    path = f"/v1/endpoints/{ep['id']}"
    for extra, _ in cases[:5]:
        await refused(srv, "PATCH", path, extra, "secret_headers")
    await refused(srv, "PATCH", path, {"secret_headers": None}, "secret_headers")
    await refused(srv, "PATCH", path, {"headers": {"X-API-KEY": "inline"}}, "secret_headers")
    _, same = await srv.request("GET", path)
    assert same["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"} and same["headers"] == {}

    # An endpoint's own secrets (its signing secret, its bearer token) are the endpoint's to
    # replace and delete: a header cannot name them, this endpoint's or another's.
    other = await add_endpoint(srv, receiver)
    for name in (f"endpoint-{ep['id']}", f"endpoint-{other['id']}", f"endpoint-{other['id']}.2"):
        err = await refused(
            srv, "PATCH", path, {"secret_headers": {"X-Key": f"ref:{name}"}}, "secret_headers"
        )
        assert "manages itself" in err["message"], err
    _, same = await srv.request("GET", path)
    assert same["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"}
    # A secret of a name like theirs that no endpoint has is an ordinary one.
    status, body = await srv.request(
        "PATCH", path, json={"secret_headers": {"X-Key": "ref:endpoint-ep_gone"}}
    )
    assert status == 200, body


async def test_editing_an_endpoint_in_the_dashboard_keeps_its_secret_headers(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.set_secret("acme-api-key", API_KEY)
    ep = await add_endpoint(server, receiver, auth="none", secret_headers={"X-Api-Key": "ref:acme-api-key"})
    browser = Browser(server.url)
    try:
        await signed_in(browser, server)
        page = await browser.get(f"/webhooks/endpoints/{ep['id']}")
        # Shown as the reference, the value nowhere.
        assert "X-Api-Key: ref:acme-api-key" in page.text and API_KEY not in page.text
        shown = re.search(r'name="retry"[^>]*value="([^"]*)"', page.text)
        form = endpoint_form(
            ep, events="invoice.*", retry=shown.group(1) if shown else "", description="edited"
        )
        saved = await browser.follow(await browser.post(f"/webhooks/endpoints/{ep['id']}", form))
        assert "Endpoint saved" in saved.text
    finally:
        await browser.close()
    _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["description"] == "edited"
    assert got["secret_headers"] == {"X-Api-Key": "ref:acme-api-key"}
    assert (await deliver(server, receiver)).headers["X-Api-Key"] == API_KEY
