"""URLs holding ``'``, ``"``, a backtick, ``<`` or ``>`` are masked whole on the dashboard.

The dashboard used to find URLs in what it shows by a pattern that ended a URL at the first
quote, backtick or angle bracket, so the query after one (``/it's/in?token=…``) was shown as
typed: in an endpoint's card heading, a destination's ``url``, the YAML, an ``enrich.person``
provider's URL. A setting that is a URL is now masked whole, and a URL inside free text runs to
the next space. ``'`` is a valid URL character and is taken as typed; ``"``, ``<``, ``>`` and
backticks are refused in new URLs (tests/integration/test_url_characters.py), and those stored
before the check still load, masked as well. Every page is read as a browser gets it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingestlayer.api.dashboard_views import MASK, mask, mask_urls_in, scrub_text
from tests.integration.test_dashboard import endpoint_form
from tests.integration.test_url_characters import store_as_an_earlier_version_did
from tests.support.dashboard_client import Browser, signed_in
from tests.support.server import RunningServer

APOSTROPHE_URL = "https://hooks.example.com/it's/in?token=APOSTROPHETOKEN1"
YAML_URL = "https://hooks.example.com/team's-hook?token=YAMLHOOKTOKEN2"
PROVIDER_URL = "https://people.example.com/o'reilly/person?email={email}&api_key=PROVIDERKEY3"
API_BASE = "https://tg-proxy.example.com/o'bot?key=APIBASEKEY4"
# What an earlier version stored: URLs that are refused now, but load and are shown masked.
STORED_URLS = {
    "quote": 'https://hooks.example.com/a"b?token=QUOTETOKEN5',
    "backtick": "https://hooks.example.com/c?x=a`b&token=BACKTICKTOKEN6",
    "angle": "https://hooks.example.com/<d>?token=ANGLETOKEN7",
    "quoted-password": 'https://ops:PASS"WORD8@hooks.example.com/e',
}
SECRETS = [
    "APOSTROPHETOKEN1",
    "YAMLHOOKTOKEN2",
    "PROVIDERKEY3",
    "APIBASEKEY4",
    "QUOTETOKEN5",
    "BACKTICKTOKEN6",
    "ANGLETOKEN7",
    "WORD8",
]
EDIT_FIELD = re.compile(r'<input id="f-url" name="url" type="text" inputmode="url" required value="([^"]*)"')


@pytest.fixture
async def browser(srv: RunningServer) -> AsyncIterator[Browser]:
    b = Browser(srv.url)
    yield b
    await b.close()


async def add_endpoint(server: RunningServer, url: str) -> dict[str, Any]:
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": url, "events": ["leak.*"], "auth": "none"}
    )
    assert status == 201, ep
    result: dict[str, Any] = ep
    return result


def test_a_url_setting_is_masked_whole_and_free_text_to_the_next_space() -> None:
    assert mask({"url": APOSTROPHE_URL}) == {"url": f"https://hooks.example.com/it's/in?token={MASK}"}
    assert mask({"provider": {"url": PROVIDER_URL}}) == {
        "provider": {"url": f"https://people.example.com/o'reilly/person?email={{email}}&api_key={MASK}"}
    }
    assert mask({"api_base": API_BASE}) == {"api_base": f"https://tg-proxy.example.com/o'bot?key={MASK}"}
    for url in STORED_URLS.values():
        shown = str(mask({"url": url})["url"])
        assert MASK in shown and not any(s in shown for s in SECRETS), shown
    # Free text: a URL may hold a quote, and may be quoted; the closing quote stays the text's.
    assert (
        mask_urls_in(f"see '{APOSTROPHE_URL}'.") == f"see 'https://hooks.example.com/it's/in?token={MASK}'."
    )
    assert mask_urls_in('url "https://h/a"b?token=T1234" sent') == f'url "https://h/a"b?token={MASK}" sent'
    assert mask_urls_in("(https://h/x?t=T1234), <https://h/a<b?t=T1234>") == (
        f"(https://h/x?t={MASK}), <https://h/a<b?t={MASK}>"
    )
    assert mask_urls_in("`https://h/q?a=x`y&t=T1234`") == f"`https://h/q?a={MASK}&t={MASK}`"
    # What follows a quote inside the URL is never given back to the text, a query least of all.
    assert mask_urls_in("'https://h/p'?token=T1234") == f"'https://h/p'?token={MASK}"
    assert mask_urls_in("https://h/p?e={email}") == "https://h/p?e={email}"
    # A target that is the URL itself, with a quote in it.
    settings = {"url": APOSTROPHE_URL}
    assert "APOSTROPHETOKEN1" not in scrub_text(APOSTROPHE_URL, settings)


async def test_urls_with_quotes_backticks_or_angle_brackets_never_show_their_credentials(
    srv: RunningServer, browser: Browser
) -> None:
    server = srv
    ep = await add_endpoint(server, APOSTROPHE_URL)
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "people",
                    "source": {"match": ["user.*"]},
                    "steps": [
                        {
                            "enrich.person": {
                                "provider": {"url": PROVIDER_URL, "mapping": {"company": "company.name"}}
                            }
                        }
                    ],
                    "destinations": [
                        {"webhook.out": {"url": YAML_URL}, "name": "team-hook"},
                        {"telegram": {"bot_token": "ref:tg", "chat_id": 1, "api_base": API_BASE}},
                    ],
                }
            ]
        }
    )
    stored: list[dict[str, Any]] = []
    for url in STORED_URLS.values():
        # Added with a URL the checks take, then given the URL an earlier version stored.
        old = await add_endpoint(server, "https://hooks.example.com/placeholder?token=x")
        await store_as_an_earlier_version_did(server, old["destination_id"], url)
        stored.append(old)

    await signed_in(browser, server)
    pages: dict[str, str] = {}
    for path in (
        "/pipelines",
        "/webhooks/endpoints",
        "/webhooks/logs",
        "/webhooks/dead",
        *(f"/webhooks/endpoints/{e['id']}" for e in [ep, *stored]),
    ):
        page = await browser.get(path)
        assert page.status == 200, (path, page.status)
        text = page.text
        if path.startswith("/webhooks/endpoints/"):
            # The edit form's URL field too holds the URL masked (saving it unchanged keeps it).
            field = EDIT_FIELD.search(text)
            assert field is not None and MASK in field.group(1), path
        for secret in SECRETS:
            assert secret not in text, (path, secret)
        pages[path] = text

    cards = pages["/pipelines"]
    # The card heading, the destination's url and the YAML each show the URL, masked.
    assert cards.count(f"https://hooks.example.com/it&#39;s/in?token={MASK}") >= 3, cards
    assert f"https://hooks.example.com/team&#39;s-hook?token={MASK}" in cards
    assert f"o&#39;reilly/person?email={{email}}&amp;api_key={MASK}" in cards
    assert f"https://tg-proxy.example.com/o&#39;bot?key={MASK}" in cards
    assert f"https://hooks.example.com/a&#34;b?token={MASK}" in cards
    assert f"https://hooks.example.com/&lt;d&gt;?token={MASK}" in cards
    assert f"https://ops:{MASK}@hooks.example.com/e" in cards


DESCRIBED_URL = "https://admin:DESCPASSWORD9@internal.example.com/hook?token=DESCTOKEN10"
DESCRIPTION_FIELD = re.compile(r'<input id="f-description" name="description" value="([^"]*)"')


async def test_a_url_in_a_description_is_masked_and_saving_the_form_unchanged_keeps_it(
    srv: RunningServer, browser: Browser
) -> None:
    """Descriptions are free text: a URL written in one (a mirror's address, a runbook link with
    its token) is shown masked on every page, in the YAML view and in the edit form; the form
    sent back with the description as shown keeps the one stored."""
    description = f"mirror of {DESCRIBED_URL} (see runbook)"
    status, ep = await srv.request(
        "POST",
        "/v1/endpoints",
        json={
            "url": "https://hooks.example.com/in",
            "events": ["a.b"],
            "auth": "none",
            "description": description,
        },
    )
    assert status == 201, ep
    await srv.apply(
        {
            "pipelines": [
                {
                    "name": "described",
                    "description": description,
                    "source": {"match": ["user.*"]},
                    "destinations": [{"webhook.out": {"url": "https://hooks.example.com/d"}}],
                }
            ]
        }
    )
    await signed_in(browser, srv)
    shown = f"mirror of https://admin:{MASK}@internal.example.com/hook?token={MASK} (see runbook)"
    for path in ("/pipelines", "/webhooks/endpoints", f"/webhooks/endpoints/{ep['id']}"):
        page = await browser.get(path)
        assert page.status == 200, (path, page.status)
        assert "DESCPASSWORD9" not in page.text and "DESCTOKEN10" not in page.text, path
        assert shown in page.text, path
    field = DESCRIPTION_FIELD.search(page.text)
    assert field is not None and field.group(1) == shown

    form = endpoint_form(ep, events="a.b", description=shown)
    saved = await browser.follow(await browser.post(f"/webhooks/endpoints/{ep['id']}", form))
    assert "Endpoint saved" in saved.text
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["description"] == description
    # Edited, the description is stored as sent.
    await browser.post(f"/webhooks/endpoints/{ep['id']}", {**form, "description": "no link now"})
    _, got = await srv.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["description"] == "no link now"
