"""The notion destination through the real server, against a local Notion API that validates
requests as Notion does (tests/support/fake_notion.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_delivery import final_delivery
from tests.support.fake_notion import FakeNotion
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}
SCHEMA = {
    "Name": "title",
    "Plan": "select",
    "Seats": "number",
    "Tags": "multi_select",
    "Signed up": "date",
    "Paid": "checkbox",
    "Email": "email",
    "Website": "url",
    "Notes": "rich_text",
}
PROPERTIES: dict[str, Any] = {
    "Name": {"type": "title", "value": "$event.email signed up"},
    "Plan": {"type": "select", "value": "$event.plan"},
    "Seats": {"type": "number", "value": "$event.seats"},
    "Tags": {"type": "multi_select", "value": "$event.tags"},
    "Signed up": {"type": "date", "value": "$event.occurred_at"},
    "Paid": {"type": "checkbox", "value": "$event.paid"},
    "Email": {"type": "email", "value": "$event.email"},
    "Website": {"type": "url", "value": "$event.website"},
    "Notes": {"type": "rich_text", "value": "$event.notes"},
}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # What is under test is the destination; one store backend is enough here.
    return sqlite_url


def notion_doc(fake: FakeNotion, database_id: str, **settings: Any) -> dict[str, Any]:
    retry = settings.pop("retry", FAST)
    config = {
        "token": "ref:notion",
        "database_id": database_id,
        "properties": PROPERTIES,
        "api_base": fake.url,
        **settings,
    }
    return {
        "pipelines": [
            {
                "name": "signups-to-notion",
                "source": {"match": ["user.*"]},
                "destinations": [{"notion": config, "retry": retry}],
            }
        ]
    }


async def setup(server: RunningServer, notion: FakeNotion, **settings: Any) -> str:
    dbid = notion.add_database(SCHEMA)
    await server.set_secret("notion", notion.token)
    await server.apply(notion_doc(notion, settings.pop("database_id", dbid), **settings))
    return dbid


SIGNUP = {
    "email": "zoë@acme.com",
    "plan": "pro, annual",
    "seats": "12",
    "tags": ["b2b", "trial", "b2b"],
    "paid": "yes",
    "website": "https://acme.com",
    "notes": "x" * 4500,
}


async def test_page_created_with_notion_property_shapes(server: RunningServer, notion: FakeNotion) -> None:
    dbid = await setup(server, notion)
    _, body = await server.ingest("user.signed_up", SIGNUP)
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    (page,) = notion.pages
    assert page["parent"]["database_id"] == dbid
    props = page["properties"]
    assert props["Name"] == {"title": [{"type": "text", "text": {"content": "zoë@acme.com signed up"}}]}
    assert props["Plan"] == {"select": {"name": "pro annual"}}  # Notion refuses commas in options
    assert props["Seats"] == {"number": 12}
    assert props["Tags"] == {"multi_select": [{"name": "b2b"}, {"name": "trial"}]}
    assert props["Signed up"]["date"]["start"].startswith(d["created_at"][:10])
    assert props["Paid"] == {"checkbox": True}
    assert props["Email"] == {"email": "zoë@acme.com"}
    assert props["Website"] == {"url": "https://acme.com"}
    # 4,500 characters: three text objects of at most 2,000 (Notion's limit per object).
    chunks = [t["text"]["content"] for t in props["Notes"]["rich_text"]]
    assert [len(c) for c in chunks] == [2000, 2000, 500]
    call = notion.requests[0]
    assert call.headers["Authorization"] == f"Bearer {notion.token}"
    assert call.headers["Notion-Version"] == "2022-06-28"
    assert call.headers["Content-Type"] == "application/json"
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 200
    assert page["id"] in attempt["response_excerpt"]


async def test_values_that_do_not_fit_become_empty(server: RunningServer, notion: FakeNotion) -> None:
    await setup(server, notion)
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co", "seats": "many", "paid": "no"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    props = notion.pages[0]["properties"]
    assert props["Seats"] == {"number": None}
    assert props["Plan"] == {"select": None}
    assert props["Tags"] == {"multi_select": []}
    assert props["Paid"] == {"checkbox": False}
    assert props["Website"] == {"url": None}
    assert props["Notes"] == {"rich_text": []}


async def test_a_url_past_notions_limit_is_sent_empty_not_cut(
    server: RunningServer, notion: FakeNotion
) -> None:
    await setup(server, notion)
    website = "https://acme.com/?ref=" + "r" * 2000
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co", "website": website})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    assert notion.pages[0]["properties"]["Website"] == {"url": None}


async def test_an_event_too_large_for_one_notion_request_is_cut_to_fit(
    server: RunningServer, notion: FakeNotion
) -> None:
    """Two text properties of 80,000 CJK characters each: every property within Notion's
    limits, the request over its 500 KB (400 validation_error, and the delivery went dead)."""
    props = {**PROPERTIES, "Name": {"type": "title", "value": "$event.notes"}}
    await setup(server, notion, properties=props)
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co", "notes": "漢" * 80_000})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    (page,) = notion.pages
    name = "".join(t["text"]["content"] for t in page["properties"]["Name"]["title"])
    notes = "".join(t["text"]["content"] for t in page["properties"]["Notes"]["rich_text"])
    assert name.endswith("…") or notes.endswith("…")
    assert len(name) + len(notes) > 100_000  # cut to fit, not emptied


async def test_rate_limit_honours_retry_after(server: RunningServer, notion: FakeNotion) -> None:
    await setup(server, notion)
    notion.fail_next(429, retry_after=1)
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [429, 200]
    assert "rate_limited" in d["attempts"][0]["error"]
    first, second = notion.requests
    # The schedule says 0.05 s; Notion asked for 1 s.
    assert second.at - first.at >= 0.95
    assert len(notion.pages) == 1


async def test_conflict_and_server_errors_are_retried(server: RunningServer, notion: FakeNotion) -> None:
    await setup(server, notion)
    notion.fail_next(409)
    notion.fail_next(503)
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [409, 503, 200]
    assert "conflict_error" in d["attempts"][0]["error"]


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("bad-token", 401, "unauthorized: API token is invalid."),
        ("unknown-database", 404, "object_not_found: Could not find database with ID"),
        ("restricted", 403, "restricted_resource: API token does not have access to this resource."),
        ("unknown-property", 400, "validation_error: Owner is not a property that exists."),
        ("wrong-type", 400, "validation_error: Plan is expected to be select."),
    ],
)
async def test_permanent_errors_are_dead_at_once_with_notions_message(
    server: RunningServer, notion: FakeNotion, case: str, status: int, message: str
) -> None:
    dbid = notion.add_database(SCHEMA)
    settings: dict[str, Any] = {}
    token = notion.token
    if case == "bad-token":
        token = "secret_revoked_token"
    elif case == "unknown-database":
        settings["database_id"] = "0" * 32
    elif case == "restricted":
        notion.restricted.add(dbid)
    elif case == "unknown-property":
        settings["properties"] = {**PROPERTIES, "Owner": {"type": "rich_text", "value": "$event.owner"}}
    elif case == "wrong-type":
        settings["properties"] = {**PROPERTIES, "Plan": {"type": "number", "value": "$event.plan"}}
    await server.set_secret("notion", token)
    await server.apply(notion_doc(notion, settings.pop("database_id", dbid), **settings))
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co", "plan": "pro"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "dead", d
    (attempt,) = d["attempts"]  # permanent: no retry
    assert attempt["status_code"] == status
    assert f"Notion {status} {message}" in attempt["error"]
    assert token not in attempt["error"]
    assert notion.pages == []


async def test_inline_token_is_rejected_naming_the_field(server: RunningServer, notion: FakeNotion) -> None:
    doc = notion_doc(notion, "0" * 32)
    doc["pipelines"][0]["destinations"][0]["notion"]["token"] = "secret_pasted_inline_abc123"
    status, body = await server.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422
    assert body["error"]["field"] == "pipelines[0].destinations[0].notion.token"
    assert "ref:NAME" in body["error"]["message"]
    assert "secret_pasted_inline_abc123" not in str(body)


async def test_test_send_from_the_api(server: RunningServer, notion: FakeNotion) -> None:
    await setup(server, notion)
    status, listed = await server.request("GET", "/v1/destinations")
    (dest,) = listed["data"]
    status, body = await server.request("POST", f"/v1/destinations/{dest['id']}/test")
    assert status == 200, body
    assert body["status"] == "delivered", body
    assert notion.pages[0]["properties"]["Name"]["title"][0]["text"]["content"] == " signed up"


async def test_dedupe_property_keeps_one_page_across_lost_answers_and_replays(
    server: RunningServer, notion: FakeNotion
) -> None:
    dbid = notion.add_database({**SCHEMA, "Delivery": "rich_text"})
    await server.set_secret("notion", notion.token)
    await server.apply(notion_doc(notion, dbid, dedupe_property="Delivery"))
    notion.lose_answer_next(504)  # Notion creates the page, the answer never arrives
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [504, 200]
    assert '"existing":true' in d["attempts"][1]["response_excerpt"]
    (page,) = notion.pages
    assert page["properties"]["Delivery"] == {"rich_text": [{"type": "text", "text": {"content": d["id"]}}]}
    assert notion.queries == [
        {"filter": {"property": "Delivery", "rich_text": {"equals": d["id"]}}, "page_size": 1}
    ]
    # A replay of the delivered delivery finds the page too.
    await server.request("POST", f"/v1/deliveries/{d['id']}/replay")

    async def replayed() -> dict[str, Any] | None:
        _, again = await server.request("GET", f"/v1/deliveries/{d['id']}")
        return again if again["status"] == "delivered" and len(again["attempts"]) == 3 else None

    await wait_for(replayed)
    assert len(notion.pages) == 1


async def test_without_dedupe_a_lost_answer_makes_a_second_page(
    server: RunningServer, notion: FakeNotion
) -> None:
    await setup(server, notion)
    notion.lose_answer_next(504)
    _, body = await server.ingest("user.signed_up", {"email": "a@b.co"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert len(notion.pages) == 2 and notion.queries == []  # what dedupe_property is for
