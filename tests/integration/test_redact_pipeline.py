"""``redact.pii`` end to end: per-destination masking, the trace, and free-text scanning."""

from __future__ import annotations

from typing import Any

from tests.support.receiver import Received, Receiver
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05, 0.05], "jitter": 0}


async def received(receiver: Receiver, count: int) -> dict[str, Received]:
    async def enough() -> bool:
        return len(receiver.requests) >= count

    await wait_for(enough)
    return {r.path: r for r in receiver.requests}


async def trace_of(server: RunningServer, event_id: str) -> list[dict[str, Any]]:
    async def routed() -> list[dict[str, Any]] | None:
        status, body = await server.request("GET", f"/v1/events/{event_id}")
        assert status == 200, body
        return body["trace"] if body.get("trace") else None

    result: list[dict[str, Any]] = await wait_for(routed)
    return result


async def test_masked_for_chat_whole_for_warehouse(server: RunningServer, receiver: Receiver) -> None:
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "signups",
                    "source": {"match": ["user.signed_up"]},
                    "steps": [{"redact.pii": {"detect": ["email", "ip"], "destinations": ["chat"]}}],
                    "destinations": [
                        {
                            "webhook.out": {"url": receiver.url + "/warehouse", "name": "warehouse"},
                            "retry": FAST,
                        },
                        {"webhook.out": {"url": receiver.url + "/chat", "name": "chat"}, "retry": FAST},
                    ],
                }
            ]
        }
    )
    payload = {
        "user_id": "u_1",
        "email": "ada@acme.com",
        "plan": "pro",
        "ip": "203.0.113.9",
        "profile": {"phone": "(415) 555-2671", "seen_from": ["2001:db8::7"]},
    }
    status, body = await server.ingest("user.signed_up", payload)
    assert status == 202, body

    by_path = await received(receiver, 2)
    assert set(by_path) == {"/warehouse", "/chat"}
    assert by_path["/warehouse"].json()["payload"] == payload
    assert by_path["/chat"].json()["payload"] == {
        "user_id": "u_1",
        "email": "a***@acme.com",
        "plan": "pro",
        "ip": "203.0.113.***",
        # `detect: [email, ip]`: the phone number is not this step's business.
        "profile": {"phone": "(415) 555-2671", "seen_from": ["2001:db8:0:0:****:****:****:****"]},
    }
    assert b"ada@acme.com" not in by_path["/chat"].body and b"203.0.113.9" not in by_path["/chat"].body

    (pipeline,) = await trace_of(server, body["id"])
    assert pipeline["outcome"] == "routed"
    assert sorted(pipeline["destinations"]) == ["chat", "warehouse"]
    (entry,) = [s for s in pipeline["steps"] if s["step"] == "redact.pii"]
    assert entry["destination"] == "chat"
    assert entry["outcome"] == "changed"
    assert sorted(entry["changed"]) == ["email", "ip", "profile"]
    assert entry["notes"] == ["redacted 1 email, 2 ip"]
    assert "ada@acme.com" not in str(entry) and "203.0.113.9" not in str(entry)

    # The stored event keeps the payload whole: only the chat delivery was masked.
    status, stored = await server.request("GET", f"/v1/events/{body['id']}")
    assert status == 200 and stored["payload"] == payload


async def test_steps_after_a_scoped_redaction_are_traced_per_copy_and_when_reads_that_copy(
    server: RunningServer, receiver: Receiver
) -> None:
    """A step after `redact.pii: {destinations: [chat]}` runs again on chat's copy, which it reads
    masked. That run was missing from the trace, and chat's `when` was decided on the other copy:
    chat was sent a label that contradicted the condition that routed it."""
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "tickets",
                    "source": {"match": ["ticket.opened"]},
                    "steps": [
                        {"redact.pii": {"detect": ["email"], "destinations": ["chat"]}},
                        {
                            "classify": {
                                "field": "urgency",
                                "labels": ["low", "high"],
                                "provider": "keywords",
                                "rules": [{"label": "high", "any": ["ada"]}],
                                "default": "low",
                            }
                        },
                    ],
                    "destinations": [
                        {"webhook.out": {"url": receiver.url + "/all", "name": "all"}, "retry": FAST},
                        {
                            "webhook.out": {"url": receiver.url + "/chat", "name": "chat"},
                            "when": "urgency = high",
                            "retry": FAST,
                        },
                        {
                            "webhook.out": {"url": receiver.url + "/chat-low", "name": "chat-low"},
                            "when": "urgency = low",
                            "retry": FAST,
                        },
                    ],
                }
            ]
        }
    )
    # chat-low has no copy of its own: it reads the event as the steps left it (high), and is
    # passed over; chat's copy says low: passed over too, as what it would be sent says.
    _, body = await server.ingest("ticket.opened", {"email": "ada@acme.com"})
    (pipeline,) = await trace_of(server, body["id"])
    classified = [s for s in pipeline["steps"] if s["step"] == "classify"]
    assert [(s.get("destination"), s["notes"][0].split(" from")[0]) for s in classified] == [
        (None, "label high"),
        ("chat", "label low"),  # chat's copy reads a***@acme.com: no "ada" in it
    ]
    assert sorted(pipeline["destinations"]) == ["all"]
    by_path = await received(receiver, 1)
    assert by_path["/all"].json()["payload"]["urgency"] == "high"


async def test_scan_all_strips_pii_from_a_ticket_body(server: RunningServer, receiver: Receiver) -> None:
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "escalations",
                    "source": {"match": ["support.ticket.created"]},
                    "steps": [{"redact.pii": None}],  # `- redact.pii:` with no settings: everything
                    "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}, "retry": FAST}],
                }
            ]
        }
    )
    ticket = {
        "ticket_id": "T-1042",
        "subject": "Charged twice",
        "body": (
            "Hi, I'm ada@acme.com. Please call me back at (415) 555-2671: my card "
            "4242 4242 4242 4242 was charged twice on 2024-05-01 for order #100234."
        ),
        "customer_tier": "pro",
        "channel": "email",
    }
    _, body = await server.ingest("support.ticket.created", ticket)
    by_path = await received(receiver, 1)
    sent = by_path["/hooks"].json()["payload"]
    assert sent == {
        **ticket,
        "body": (
            "Hi, I'm a***@acme.com. Please call me back at (***) ***-2671: my card "
            "**** **** **** 4242 was charged twice on 2024-05-01 for order #100234."
        ),
    }
    (pipeline,) = await trace_of(server, body["id"])
    (entry,) = pipeline["steps"]
    assert entry["step"] == "redact.pii" and "destination" not in entry
    assert entry["changed"] == ["body"]
    assert entry["notes"] == ["redacted 1 email, 1 phone, 1 card"]


async def test_a_failed_scoped_redaction_blocks_that_destination(
    server: RunningServer, receiver: Receiver
) -> None:
    # hash mode with a key that does not exist: the step fails for `chat`; skipping it would
    # send chat the unmasked email, so chat receives nothing and the trace says why.
    doc = {
        "pipelines": [
            {
                "name": "signups",
                "source": {"match": ["user.signed_up"]},
                "steps": [
                    {
                        "redact.pii": {
                            "detect": ["email"],
                            "mode": "hash",
                            "hash_key": "ref:missing-key",
                            "destinations": ["chat"],
                            "on_error": "skip",
                        }
                    }
                ],
                "destinations": [
                    {"webhook.out": {"url": receiver.url + "/warehouse", "name": "warehouse"}, "retry": FAST},
                    {"webhook.out": {"url": receiver.url + "/chat", "name": "chat"}, "retry": FAST},
                ],
            }
        ]
    }
    await server.apply(doc)
    _, body = await server.ingest("user.signed_up", {"email": "ada@acme.com"})
    trace = await trace_of(server, body["id"])
    assert trace[0]["destinations"] == ["warehouse"]
    assert "chat" in trace[0]["blocked"]
    await wait_for(lambda: _count(receiver, 1))
    assert [r.path for r in receiver.requests] == ["/warehouse"]


async def test_scoped_destination_names_are_checked(server: RunningServer, receiver: Receiver) -> None:
    status, err = await server.request(
        "POST",
        "/v1/apply",
        json={
            "document": {
                "pipelines": [
                    {
                        "name": "p",
                        "source": {"match": ["a.b"]},
                        "steps": [{"redact.pii": {"destinations": ["chta"]}}],
                        "destinations": [{"webhook.out": {"url": receiver.url, "name": "chat"}}],
                    }
                ]
            }
        },
    )
    assert status == 422
    assert err["error"]["field"] == "pipelines[0].steps[0].redact.pii.destinations"
    assert "'chta' is not a destination of this pipeline" in err["error"]["message"]


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n
