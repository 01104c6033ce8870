"""Senders whose event types are not dotted names: Shopify's topics (``orders/create``) and
Zendesk's (``zen:event-type:ticket.created``). They were refused with a 422, which the sender
retries and in the end stops sending; their separators now become dots."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson

from tests.integration.test_ingress import post
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

SHOPIFY_SECRET = "shpss_test_0123456789abcdef"
ORDER = {"id": 820982911946154508, "email": "jon@example.com", "total_price": "199.00"}


async def test_a_shopify_topic_becomes_a_dotted_event_type_that_pipelines_match(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.set_secret("shopify", SHOPIFY_SECRET)
    result = await server.apply(
        {
            "sources": [
                {
                    "name": "shopify",
                    "verify": "hmac-sha256",
                    "secret": "ref:shopify",
                    "header": "X-Shopify-Hmac-Sha256",
                    "encoding": "base64",
                    "event_type": "header:X-Shopify-Topic",
                    "idempotency_key": "header:X-Shopify-Webhook-Id",
                    "type_prefix": "shopify.",
                },
                {"name": "zendesk", "verify": "none", "event_type": "body:type"},
            ],
            "pipelines": [
                {
                    "name": "orders",
                    "source": {"match": ["shopify.orders.*"]},
                    "destinations": [{"webhook.out": {"url": receiver.url + "/orders"}}],
                }
            ],
        }
    )
    paths = {c["name"]: c["ingress_path"] for c in result["changes"] if c["kind"] == "source"}
    body = orjson.dumps(ORDER)
    signature = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    headers = {
        "X-Shopify-Hmac-Sha256": signature,
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "Content-Type": "application/json",
    }
    status, answer = await post(server, paths["shopify"], body, headers)
    assert status == 202, answer
    _, event = await server.request("GET", f"/v1/events/{answer['id']}")
    assert event["type"] == "shopify.orders.create"
    assert event["payload"] == ORDER
    await wait_for(lambda: _arrived(receiver))
    (delivered,) = receiver.requests
    assert delivered.json()["type"] == "shopify.orders.create"

    zendesk = orjson.dumps({"type": "zen:event-type:ticket.created", "detail": {"id": "35436"}})
    status, answer = await post(server, paths["zendesk"], zendesk, {"Content-Type": "application/json"})
    assert status == 202, answer
    _, event = await server.request("GET", f"/v1/events/{answer['id']}")
    assert event["type"] == "zen.event-type.ticket.created"

    # Anything else that is no event name is still refused, naming where the type was read.
    bad = orjson.dumps({"type": "ticket created!"})
    status, answer = await post(server, paths["zendesk"], bad, {"Content-Type": "application/json"})
    assert status == 422 and answer["error"]["field"] == "body:type", answer


async def _arrived(receiver: Receiver) -> bool:
    return len(receiver.requests) >= 1


async def test_a_type_prefix_no_event_name_can_start_with_is_refused_naming_it(server: RunningServer) -> None:
    """Put before every type, such a prefix made every request to the source a 422."""
    for prefix in ("shopify/", "shop ify.", "shopify..", "ünï."):
        source = {"name": "shopify", "verify": "none", "type_prefix": prefix}
        status, body = await server.request("POST", "/v1/sources", json=source)
        assert status == 422, body
        assert body["error"]["field"] == "type_prefix", body
        assert "letters, digits, _ and -, separated by dots" in body["error"]["message"], body
    for prefix in ("shopify.", "shopify", "acme-shop.", ""):
        source = {"name": "shop", "verify": "none", "type_prefix": prefix}
        status, body = await server.request("PUT", "/v1/sources/shop", json=source)
        assert status in (200, 201), body
