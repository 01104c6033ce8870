"""The support-escalation recipe end to end: classify (an OpenAI-compatible model, the key a stored
secret) → ``filter.match: urgency = critical`` → webhook. Labels are cached in the store, so a
ticket seen before costs no model call, even after a restart; a slow model yields the fallback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.chat_server import ChatServer, user_text
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server, wait_for

API_KEY = "sk-integration-5d41402abc4b2a76"
FAST = {"schedule": [0, 0.05, 0.05], "jitter": 0}
TICKET_TYPE = "support.ticket.created"


def answer(body: dict[str, Any]) -> str:
    """A stand-in model: outages are critical, refunds high, the rest low (answered loosely)."""
    text = user_text(body).lower()
    if "outage" in text or "down" in text:
        return "Critical."
    if "refund" in text:
        return '{"urgency": "high"}'
    return "low"


def recipe(chat_url: str, receiver_url: str, **classify: Any) -> dict[str, Any]:
    step = {
        "field": "urgency",
        "labels": "low | high | critical",
        "fallback": "low",
        "provider": "openai",
        "base_url": chat_url,
        "model": "test-model",
        "api_key": "ref:llm-key",
        "system": "You triage support tickets for Acme.",
        "prompt": "Tier: $event.customer_tier\nSubject: $event.subject\n\n$event.body",
        **classify,
    }
    return {
        "pipelines": [
            {
                "name": "support-escalations",
                "source": {"match": [TICKET_TYPE]},
                "steps": [{"classify": step}, {"filter.match": "urgency = critical"}],
                "destinations": [{"webhook.out": {"url": receiver_url + "/hooks"}, "retry": FAST}],
            }
        ]
    }


def ticket(ticket_id: str, subject: str, body: str, tier: str = "pro") -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "subject": subject,
        "body": body,
        "customer_tier": tier,
        "channel": "email",
    }


@pytest.fixture
async def chat() -> AsyncIterator[ChatServer]:
    server = await ChatServer(api_key=API_KEY, answer=answer).start()
    yield server
    await server.stop()


async def setup(server: RunningServer, chat: ChatServer, receiver: Receiver, **classify: Any) -> None:
    await server.set_secret("llm-key", API_KEY)
    await server.apply(recipe(chat.url, receiver.url, **classify))


async def send(server: RunningServer, payload: dict[str, Any]) -> str:
    status, body = await server.request(
        "POST", "/v1/events", key=server.ingest_key, json={"type": TICKET_TYPE, "payload": payload}
    )
    assert status == 202, body
    event_id: str = body["id"]
    return event_id


async def routed(server: RunningServer, event_id: str) -> dict[str, Any]:
    """The event once routed: its trace is written."""

    async def check() -> dict[str, Any] | None:
        status, body = await server.request("GET", f"/v1/events/{event_id}")
        return body if status == 200 and body.get("trace") else None

    result: dict[str, Any] = await wait_for(check, timeout=10)
    return result


async def received(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


def classify_entry(event: dict[str, Any]) -> dict[str, Any]:
    (pipeline,) = event["trace"]
    step: dict[str, Any] = pipeline["steps"][0]
    assert step["step"] == "classify"
    return step


async def test_only_critical_tickets_reach_the_webhook(
    server: RunningServer, receiver: Receiver, chat: ChatServer
) -> None:
    await setup(server, chat, receiver)
    critical = ticket("T-1", "Outage in EU", "The dashboard is down for all our users")
    high = ticket("T-2", "Refund", "I was charged twice, please refund")
    low = ticket("T-3", "Feature idea", "Dark mode would be nice")
    ids = [await send(server, p) for p in (critical, high, low)]
    events = [await routed(server, i) for i in ids]

    await wait_for(lambda: received(receiver, 1))
    (hook,) = receiver.requests
    delivered = hook.json()
    assert delivered["id"] == ids[0]
    assert delivered["payload"] == {**critical, "urgency": "critical"}

    assert [classify_entry(e)["notes"] for e in events] == [
        ["label critical from openai"],
        ["label high from openai"],
        ["label low from openai"],
    ]
    assert classify_entry(events[0])["added"] == ["urgency"]
    assert [e["trace"][0]["outcome"] for e in events] == ["routed", "dropped", "dropped"]
    assert events[1]["deliveries"] == [] and events[2]["deliveries"] == []

    # What the model was sent: the stored secret as a Bearer key, the labels, the rendered prompt.
    # The three events are routed concurrently, so their calls may reach the model in any order.
    assert chat.calls == 3
    by_subject = {r.user.split("\n")[1]: r for r in chat.requests}
    assert sorted(by_subject) == ["Subject: Feature idea", "Subject: Outage in EU", "Subject: Refund"]
    first = by_subject["Subject: Outage in EU"]
    assert first.headers["Authorization"] == f"Bearer {API_KEY}"
    assert first.system.startswith("You triage support tickets for Acme.")
    assert "low, high, critical" in first.system
    assert first.user == "Tier: pro\nSubject: Outage in EU\n\nThe dashboard is down for all our users"
    # The key appears nowhere in what the API shows.
    assert all(API_KEY not in str(e) for e in events)


async def test_same_ticket_twice_is_one_model_call_even_across_a_restart(
    server: RunningServer, receiver: Receiver, chat: ChatServer, db_url: str
) -> None:
    await setup(server, chat, receiver)
    payload = ticket("T-9", "Site down", "Checkout returns 502 since 09:00", tier="enterprise")
    first = await routed(server, await send(server, payload))
    second = await routed(server, await send(server, payload))
    assert chat.calls == 1
    assert classify_entry(first)["notes"] == ["label critical from openai"]
    assert classify_entry(second)["notes"] == ["label critical from openai (cached)"]

    await wait_for(lambda: received(receiver, 2))

    # A new process on the same database: the label comes from the store's step cache.
    await server.stop()
    fresh = await start_server(db_url, project="restarted")
    restarted = dataclasses.replace(
        fresh, project_id=server.project_id, ingest_key=server.ingest_key, admin_key=server.admin_key
    )
    try:
        third = await routed(restarted, await send(restarted, payload))
        assert classify_entry(third)["notes"] == ["label critical from openai (cached)"]
        assert chat.calls == 1
        await wait_for(lambda: received(receiver, 3))
        assert all(r.json()["payload"]["urgency"] == "critical" for r in receiver.requests)
    finally:
        await fresh.stop()


async def test_a_model_timeout_uses_the_fallback_label(
    server: RunningServer, receiver: Receiver, chat: ChatServer
) -> None:
    # Failing open: when the model cannot answer in time, escalate rather than lose the ticket.
    # A timeout the answering model meets even on a loaded machine, and the slow one never does.
    await setup(server, chat, receiver, fallback="critical", timeout=1)
    chat.delay = 3.0
    payload = ticket("T-5", "Question", "How do I export a CSV?")
    slow = await routed(server, await send(server, payload))
    entry = classify_entry(slow)
    assert entry["notes"] == ["label critical (fallback): openai: timed out after 1s"]
    await wait_for(lambda: received(receiver, 1))
    assert receiver.requests[0].json()["payload"]["urgency"] == "critical"

    # The fallback was not cached: once the model answers, the same ticket gets its real label.
    chat.delay = 0.0
    again = await routed(server, await send(server, payload))
    assert classify_entry(again)["notes"] == ["label low from openai"]
    assert again["trace"][0]["outcome"] == "dropped"
    assert chat.calls == 2


async def test_without_a_fallback_a_failing_model_follows_on_error(
    server: RunningServer, receiver: Receiver, chat: ChatServer
) -> None:
    await setup(server, chat, receiver, fallback=None, on_error="skip")
    chat.fail_next(503)
    event = await routed(server, await send(server, ticket("T-7", "Outage", "All down")))
    entry = classify_entry(event)
    assert entry["outcome"] == "skipped"
    assert entry["error"] == (
        "ClassifyError: openai: answered HTTP 503: The server had an error while processing your "
        "request. (no fallback label is set)"
    )
    # Skipped: no urgency, so the filter drops it — recorded, never silent.
    assert event["trace"][0]["outcome"] == "dropped"
    assert receiver.requests == []
