"""A URL written inline with credentials is never repeated by the API, and round trips still work.

``https://ops:PASSWORD@host/hook?token=TOKEN`` is stored as written and sent as written (the
password as HTTP Basic, the token in the query). Every management answer (a destination, an
endpoint, a pipeline's step, an apply's diff) shows it masked, as the dashboard does. A client that
fetches one, edits something else and sends it back sends the masked form: it means the stored
URL, which is kept; a masked form that is not the stored URL's is refused, naming the field.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from ingestlayer.urlmask import MASK
from tests.integration.test_echoed_credentials import delivered
from tests.integration.test_url_characters import CLASSIFY
from tests.support.dashboard_client import Browser, signed_in
from tests.support.receiver import Receiver
from tests.support.server import RunningServer

PASSWORD = "inline-password-7a3f"
TOKEN = "inline-query-token-9c2e"
STEP_KEY = "inline-step-apikey-5d1b"


def leaks(answer: Any) -> list[str]:
    return [s for s in (PASSWORD, TOKEN, STEP_KEY) if s in str(answer)]


def inline_url(receiver: Receiver, path: str = "/hook") -> str:
    return receiver.url.replace("http://", f"http://ops:{PASSWORD}@") + f"{path}?token={TOKEN}"


def document(url: str, step_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "steps": [
                    {
                        "enrich.person": {
                            "from": "email",
                            "provider": {"url": step_url, "mapping": {"company": "company.name"}},
                            "on_error": "skip",
                        }
                    }
                ],
                "destinations": [{"webhook.out": {"url": url}, "name": "ops-hook"}],
            }
        ]
    }


async def delivered_to(server: RunningServer, receiver: Receiver, n: int) -> None:
    """Event ``n`` reaches the receiver at the stored URL: its path, token and Basic credentials."""
    got = await delivered(server, receiver, n)
    assert got.path == "/hook"
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()


async def test_a_destination_and_a_pipeline_fetched_and_sent_back_keep_their_urls(
    server: RunningServer, receiver: Receiver
) -> None:
    step_url = f"https://people.example.com/lookup?email={{email}}&apikey={STEP_KEY}"
    applied = await server.apply(document(inline_url(receiver), step_url))
    assert leaks(applied) == [], applied  # the diff of what was created, too
    await delivered_to(server, receiver, 1)

    status, dest = await server.request("GET", "/v1/destinations/ops-hook")
    assert status == 200 and leaks(dest) == [], dest
    assert (
        dest["config"]["url"]
        == receiver.url.replace("http://", f"http://ops:{MASK}@") + f"/hook?token={MASK}"
    )
    status, pipe = await server.request("GET", "/v1/pipelines/orders")
    assert status == 200 and leaks(pipe) == [], pipe
    assert pipe["steps"][0]["enrich.person"]["provider"]["url"].endswith(f"&apikey={MASK}")

    # Sent back as fetched, with another change: the URLs stay the stored ones.
    dest["config"]["timeout"] = 5
    status, put = await server.request("PUT", "/v1/destinations/ops-hook", json=dest)
    assert status == 200 and put["config"]["timeout"] == 5 and leaks(put) == [], put
    pipe["description"] = "orders, enriched"
    pipe["steps"].insert(0, {"filter.match": "n > 0"})  # the enrichment moves down a place
    status, put = await server.request("PUT", "/v1/pipelines/orders", json=pipe)
    assert status == 200 and leaks(put) == [], put
    assert [next(iter(s)) for s in put["steps"]] == ["filter.match", "enrich.person"]
    cfg = await server.runtime.store.load_project_config(server.project_id)
    (orders,) = [p for p in cfg.pipelines if p.name == "orders"]
    assert orders.config["steps"][1]["config"]["provider"]["url"] == step_url  # the stored one, whole
    pipe["steps"].pop(0)
    status, put = await server.request("PUT", "/v1/pipelines/orders", json=pipe)
    assert status == 200, put
    _, stored = await server.request(
        "POST", "/v1/apply", json={"document": document(inline_url(receiver), step_url), "dry_run": True}
    )
    changed = {c["name"]: c for c in stored["changes"]}
    # Against the file with the real URLs: only what was edited differs, and no diff shows them.
    assert changed["ops-hook"]["action"] == "update" and "timeout" in changed["ops-hook"]["diff"]
    assert changed["orders"]["action"] == "update" and "description" in changed["orders"]["diff"]
    assert leaks(stored) == [], stored
    await delivered_to(server, receiver, 2)

    # A masked URL that is not the stored one's (its path edited) would be a URL no one can call.
    dest["config"]["url"] = dest["config"]["url"].replace("/hook", "/other")
    status, refused = await server.request("PUT", "/v1/destinations/ops-hook", json=dest)
    assert status == 422 and refused["error"]["field"] == "config.url", refused
    assert MASK in refused["error"]["message"]
    # Nor is one taken in a document, where nothing is fetched back.
    masked_doc = document(dest["config"]["url"], step_url)
    status, refused = await server.request("POST", "/v1/apply", json={"document": masked_doc})
    assert status == 422 and refused["error"]["field"].endswith("webhook.out.url"), refused
    await delivered_to(server, receiver, 3)


async def test_a_url_refused_as_no_http_url_is_not_repeated_in_the_refusal(server: RunningServer) -> None:
    for url in (
        f"htps://ops:{PASSWORD}@llm.example.com/v1",  # a scheme mistyped
        f"llm.example.com/v1?key={TOKEN}",  # none at all
    ):
        step = {"classify": {**CLASSIFY, "base_url": url}}
        doc = {
            "pipelines": [
                {
                    "name": "triage",
                    "source": {"match": ["ticket"]},
                    "steps": [step],
                    "destinations": [{"webhook.out": {"url": "https://hooks.example.com/in"}}],
                }
            ]
        }
        status, refused = await server.request("POST", "/v1/apply", json={"document": doc})
        assert status == 422 and refused["error"]["field"].endswith("classify.base_url"), refused
        assert leaks(refused) == [], refused
        assert "must be an absolute http:// or https:// URL" in refused["error"]["message"], refused


async def test_an_endpoint_shows_its_url_masked_and_keeps_it_through_a_patch(
    server: RunningServer, receiver: Receiver
) -> None:
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": inline_url(receiver), "events": ["order.*"], "auth": "none"}
    )
    assert status == 201 and leaks(ep) == [] and MASK in ep["url"], ep
    await delivered_to(server, receiver, 1)

    for patch in ({"description": "billing"}, {"url": ep["url"], "timeout": 4}):
        status, patched = await server.request("PATCH", f"/v1/endpoints/{ep['id']}", json=patch)
        assert status == 200 and patched["url"] == ep["url"] and leaks(patched) == [], patched
    await delivered_to(server, receiver, 2)

    edited = ep["url"].replace("127.0.0.1", "localhost")
    status, refused = await server.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"url": edited})
    assert status == 422 and refused["error"]["field"] == "url", refused
    _, listed = await server.request("GET", "/v1/endpoints")
    assert leaks(listed) == [] and listed["data"][0]["url"] == ep["url"], listed
    # A new URL, written whole, replaces it.
    status, patched = await server.request(
        "PATCH", f"/v1/endpoints/{ep['id']}", json={"url": receiver.url + "/hook"}
    )
    assert status == 200 and patched["url"] == receiver.url + "/hook", patched


async def test_the_dashboards_endpoint_form_shows_the_url_masked_and_saving_keeps_it(
    server: RunningServer, receiver: Receiver
) -> None:
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": inline_url(receiver), "events": ["order.*"], "auth": "none"}
    )
    assert status == 201, ep
    browser = Browser(server.url)
    try:
        await signed_in(browser, server)
        page = await browser.get(f"/webhooks/endpoints/{ep['id']}")
        assert page.status == 200 and leaks(page.text) == [], leaks(page.text)
        field = re.search(r'name="url" type="text" inputmode="url" required value="([^"]*)"', page.text)
        assert field is not None and html.unescape(field.group(1)) == ep["url"], page.text[-3000:]
        # Saved as the page shows it, with only the description changed.
        form = {
            "url": html.unescape(field.group(1)),
            "events": "order.*",
            "auth": "none",
            "signing": "ingestlayer",
            "format": "ingestlayer",
            "timeout": "10",
            "retry": "",
            "description": "edited in the dashboard",
        }
        saved = await browser.follow(await browser.post(f"/webhooks/endpoints/{ep['id']}", form))
        assert "Endpoint saved" in saved.text, saved.text[-2000:]
    finally:
        await browser.close()
    _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["description"] == "edited in the dashboard" and got["url"] == ep["url"], got
    await delivered_to(server, receiver, 1)
