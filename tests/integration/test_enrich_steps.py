"""The entity store API and the enrich steps, through a running server on both databases."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05], "jitter": 0}


def pipeline(receiver: Receiver, match: str, steps: list[Any], name: str = "p") -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": name,
                "source": {"match": [match]},
                "steps": steps,
                "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}, "retry": FAST}],
            }
        ]
    }


async def arrived(receiver: Receiver, n: int) -> list[dict[str, Any]]:
    await wait_for(lambda: _at_least(receiver, n))
    return [r.json()["payload"] for r in receiver.requests]


async def _at_least(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


async def trace_of(server: RunningServer, event_id: str) -> list[dict[str, Any]]:
    async def get() -> list[dict[str, Any]] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        return ev["trace"]

    result: list[dict[str, Any]] = await wait_for(get)
    return result


async def test_identify_group_and_entities_api(server: RunningServer) -> None:
    status, _ = await server.request(
        "POST",
        "/v1/identify",
        key=server.ingest_key,
        json={"user_id": "u1", "traits": {"name": "Ada", "x": 1}},
    )
    assert status == 200
    status, _ = await server.request(
        "POST",
        "/v1/group",
        key=server.ingest_key,
        json={"user_id": "u1", "account_id": "acc_1", "traits": {"plan": "free", "owner": "sam@acme.com"}},
    )
    assert status == 200
    _, user = await server.request("GET", "/v1/entities/user/u1")
    assert user["traits"] == {"name": "Ada", "x": 1, "account_id": "acc_1"}
    await server.request(
        "POST", "/v1/identify", key=server.ingest_key, json={"user_id": "u1", "traits": {"x": None}}
    )
    _, user = await server.request("GET", "/v1/entities/user/u1")
    assert user["traits"] == {"name": "Ada", "account_id": "acc_1"}  # merged; null removed a trait
    status, put = await server.request(
        "PUT", "/v1/entities/company/acme.com", json={"traits": {"name": "Acme"}}
    )
    assert status == 200 and put["traits"] == {"name": "Acme"}
    status, bulk = await server.request(
        "POST",
        "/v1/entities/bulk",
        json={
            "entities": [
                {"kind": "company", "id": f"c{i}.com", "traits": {"name": f"C{i}"}} for i in range(50)
            ]
        },
    )
    assert status == 200 and bulk["upserted"] == 50
    _, c7 = await server.request("GET", "/v1/entities/company/c7.com")
    assert c7["traits"] == {"name": "C7"}
    # Reading entities needs an admin key; bad input names the field.
    status, _ = await server.request("GET", "/v1/entities/user/u1", key=server.ingest_key)
    assert status == 403
    status, err = await server.request("POST", "/v1/identify", key=server.ingest_key, json={"traits": {}})
    assert status == 422 and err["error"]["field"] == "user_id"
    status, err = await server.request("PUT", "/v1/entities/Bad Kind/x", json={"traits": {}})
    assert status == 422 and err["error"]["field"] == "kind"
    assert (await server.request("DELETE", "/v1/entities/company/c7.com"))[0] == 204
    assert (await server.request("GET", "/v1/entities/company/c7.com"))[0] == 404


async def test_enrich_entity_attaches_account_plan_owner(server: RunningServer, receiver: Receiver) -> None:
    await server.request(
        "POST",
        "/v1/group",
        json={"user_id": "u1", "account_id": "acc_1", "traits": {"plan": "scale", "owner": "sam@acme.com"}},
    )
    await server.apply(
        pipeline(
            receiver,
            "feature.used",
            [
                {"filter.match": "feature in {export, api, webhook}"},
                {
                    "enrich.entity": {
                        "from": "user_id",
                        "entity": "user",
                        "attach": ["account", "plan", "owner"],
                    }
                },
            ],
        )
    )
    _, known = await server.ingest("feature.used", {"user_id": "u1", "feature": "csv.export", "count": 1})
    _, unknown = await server.ingest("feature.used", {"user_id": "u404", "feature": "api", "plan": "free"})
    payloads = await arrived(receiver, 2)
    by_user = {p["user_id"]: p for p in payloads}
    assert by_user["u1"] == {
        "user_id": "u1",
        "feature": "csv.export",
        "count": 1,
        "account": "acc_1",
        "plan": "scale",
        "owner": "sam@acme.com",
    }
    # A missing entity leaves nulls (keeping what the sender set) and the trace says why.
    assert by_user["u404"]["account"] is None and by_user["u404"]["owner"] is None
    assert by_user["u404"]["plan"] == "free"
    trace = await trace_of(server, unknown["id"])
    enrich = trace[0]["steps"][1]
    assert enrich["step"] == "enrich.entity" and "user u404 not found" in enrich["notes"]
    trace = await trace_of(server, known["id"])
    assert trace[0]["steps"][1]["added"] == ["account", "plan", "owner"]


async def test_enrich_person_from_identify_company_and_provider(
    server: RunningServer, receiver: Receiver
) -> None:
    people = Receiver()
    await people.start()
    try:
        people.default = Reply(status=200, body=b'{"person": {"title": "CTO"}, "company": {"country": "DE"}}')
        await server.request(
            "PUT", "/v1/entities/company/acme.com", json={"traits": {"name": "Acme", "country": "US"}}
        )
        await server.request("POST", "/v1/identify", json={"user_id": "u2", "traits": {"role": "Engineer"}})
        await server.set_secret("people-api", "people-token")
        await server.apply(
            pipeline(
                receiver,
                "user.signed_up",
                [
                    {
                        "enrich.person": {
                            "from": "email",
                            "provider": {
                                "url": people.url + "/lookup?email={email}",
                                "headers": {"Authorization": "Bearer $secret"},
                                "secret": "ref:people-api",
                                "mapping": {
                                    "role": "person.title",
                                    "country": "company.country",
                                    "company": "company.name",
                                },
                            },
                        }
                    },
                ],
            )
        )
        await server.ingest("user.signed_up", {"user_id": "u2", "email": "ada@acme.com"})
        await server.ingest("user.signed_up", {"user_id": "u3", "email": "bob@gmail.com"})
        await server.ingest("user.signed_up", {"user_id": "u4", "email": "cy@unknown.io"})
        await server.ingest("user.signed_up", {"user_id": "u5", "email": "cy@unknown.io"})
        payloads = {p["user_id"]: p for p in await arrived(receiver, 4)}
        # identify traits first, then the company entity: no provider call needed for u2.
        assert payloads["u2"] | {} == {
            "user_id": "u2",
            "email": "ada@acme.com",
            "company": "Acme",
            "role": "Engineer",
            "country": "US",
        }
        # free mail: no company, whatever the provider says.
        assert payloads["u3"]["company"] is None and payloads["u3"]["role"] == "CTO"
        assert payloads["u4"]["role"] == "CTO" and payloads["u4"]["country"] == "DE"
        assert payloads["u5"] == payloads["u4"] | {"user_id": "u5"}
        # u3 and u4 asked the provider; u5 was answered from the cache; the secret was substituted.
        assert len(people.requests) == 2
        assert {r.headers["Authorization"] for r in people.requests} == {"Bearer people-token"}
    finally:
        await people.stop()


async def test_pipelines_calling_a_provider_with_different_keys_do_not_share_its_answers(
    server: RunningServer, receiver: Receiver
) -> None:
    """The provider's answers were cached by URL, mapping and email only: a second pipeline of
    the project, calling the same provider with another key (another account, another plan),
    was given the first one's answer and never asked."""
    people = Receiver()
    await people.start()
    try:
        people.default = Reply(status=200, body=b'{"title": "from the provider"}')
        await server.set_secret("key-a", "token-a")
        await server.set_secret("key-b", "token-b")

        def one(name: str, secret: str) -> dict[str, Any]:
            provider = {
                "url": people.url + "/lookup?email={email}",
                "headers": {"Authorization": "Bearer $secret"},
                "secret": f"ref:{secret}",
                "mapping": {"role": "title"},
            }
            return {
                "name": name,
                "source": {"match": ["user.signed_up"]},
                "steps": [{"enrich.person": {"from": "email", "provider": provider}}],
                "destinations": [{"webhook.out": {"url": f"{receiver.url}/{name}"}, "retry": FAST}],
            }

        await server.apply({"pipelines": [one("a", "key-a"), one("b", "key-b")]})
        await server.ingest("user.signed_up", {"user_id": "u9", "email": "eve@corp.io"})
        await arrived(receiver, 2)
        asked_with = sorted(r.headers["Authorization"] for r in people.requests)
        assert asked_with == ["Bearer token-a", "Bearer token-b"]
        # The same pipeline again is answered from its own cache.
        await server.ingest("user.signed_up", {"user_id": "u10", "email": "eve@corp.io"})
        await arrived(receiver, 4)
        assert len(people.requests) == 2
    finally:
        await people.stop()


async def test_enrich_person_keeps_the_company_a_user_was_identified_with(
    server: RunningServer, receiver: Receiver
) -> None:
    # Free mail says nothing of a company; what the user was identified with still stands.
    await server.request("POST", "/v1/identify", json={"user_id": "u6", "traits": {"company": "Indie Ltd"}})
    await server.apply(pipeline(receiver, "user.signed_up", [{"enrich.person": {"from": "email"}}]))
    await server.ingest("user.signed_up", {"user_id": "u6", "email": "dee@gmail.com"})
    await server.ingest("user.signed_up", {"user_id": "u7", "email": "eve@gmail.com"})
    payloads = {p["user_id"]: p for p in await arrived(receiver, 2)}
    assert payloads["u6"]["company"] == "Indie Ltd"
    assert payloads["u7"]["company"] is None


async def test_the_lookup_provider_is_not_followed_through_a_redirect(
    server: RunningServer, receiver: Receiver
) -> None:
    internal = Receiver()
    await internal.start()
    redirector = Receiver()
    await redirector.start()
    try:
        internal.default = Reply(status=200, body=b'{"title": "INTERNAL-CREDS"}')
        redirector.default = Reply(status=302, headers={"Location": internal.url + "/meta"})
        provider = {"url": redirector.url + "/p?e={email}", "mapping": {"role": "title"}, "cache_ttl": 0}
        step = {"enrich.person": {"provider": provider, "on_error": "skip"}}
        await server.apply(pipeline(receiver, "user.signed_up", [step]))
        _, ev = await server.ingest("user.signed_up", {"user_id": "u8", "email": "ann@corp.io"})
        (payload,) = await arrived(receiver, 1)
        assert payload.get("role") is None
        trace = await trace_of(server, ev["id"])
        assert trace[0]["steps"][0]["outcome"] == "skipped" and "HTTP 302" in trace[0]["steps"][0]["error"]
        assert len(redirector.requests) == 1 and internal.requests == []  # never followed
    finally:
        await redirector.stop()
        await internal.stop()


async def test_on_error_policies(server: RunningServer, receiver: Receiver) -> None:
    down = Receiver()
    await down.start()
    try:
        down.default = Reply(status=500)
        provider = {
            "url": down.url + "/x?e={email}",
            "mapping": {"role": "title"},
            "timeout": 1,
            "cache_ttl": 0,
        }
        doc = {
            "pipelines": [
                {
                    "name": policy,
                    "source": {"match": [f"{policy}.test"]},
                    "steps": [{"enrich.person": {"provider": provider, "on_error": policy}}],
                    "destinations": [{"webhook.out": {"url": f"{receiver.url}/{policy}"}}],
                }
                for policy in ("skip", "drop", "retry")
            ]
        }
        await server.apply(doc)
        _, skipped = await server.ingest("skip.test", {"email": "a@corp.io"})
        _, dropped = await server.ingest("drop.test", {"email": "a@corp.io"})
        _, retried = await server.ingest("retry.test", {"email": "a@corp.io"})
        await wait_for(lambda: _at_least(receiver, 1))
        trace = await trace_of(server, skipped["id"])
        assert trace[0]["steps"][0]["outcome"] == "skipped" and "HTTP 500" in trace[0]["steps"][0]["error"]
        trace = await trace_of(server, dropped["id"])
        assert trace[0]["outcome"] == "dropped" and "HTTP 500" in trace[0]["steps"][0]["error"]
        # retry: the event is routed again later; once the provider recovers it goes through.
        down.default = Reply(status=200, body=b'{"title": "CFO"}')
        await wait_for(lambda: _at_least(receiver, 2), timeout=15)
        assert sorted(r.path for r in receiver.requests) == ["/retry", "/skip"]
        retry_payload = next(r.json()["payload"] for r in receiver.requests if r.path == "/retry")
        assert retry_payload["role"] == "CFO"
        assert len(down.requests) >= 4  # skip, drop, the failed retry, the successful one
        _ = retried
    finally:
        await down.stop()


async def test_a_provider_asking_to_wait_is_waited_for_before_the_event_is_routed_again(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A lookup answered 429 with Retry-After: 120, under on_error: retry, was tried again after
    the router's own schedule (1 s, 5 s, 30 s), each try another 429 the provider had asked not
    to get."""
    busy = Receiver()
    await busy.start()
    try:
        busy.default = Reply(status=429, headers={"Retry-After": "120"})
        provider = {"url": busy.url + "/x?e={email}", "mapping": {"role": "title"}, "cache_ttl": 0}
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "people",
                        "source": {"match": ["user.*"]},
                        "steps": [{"enrich.person": {"provider": provider, "on_error": "retry"}}],
                        "destinations": [{"webhook.out": {"url": f"{receiver.url}/people"}}],
                    }
                ]
            }
        )
        caplog.set_level(logging.WARNING, logger="ingestlayer")
        _, ev = await server.ingest("user.signed_up", {"email": "ann@corp.io"})

        def decided() -> list[str]:
            return [r.getMessage() for r in caplog.records if ev["id"] in r.getMessage()]

        async def waits() -> bool:
            return bool(decided())

        await wait_for(waits)
        (line,) = decided()
        assert (
            "enrich.person" in line and "answered HTTP 429" in line and line.endswith("routing again in 120s")
        )
        assert len(busy.requests) == 1

        # While it waits, the event says why it has no deliveries yet (its trace was null). Stored
        # as the job is put back, just after the line is logged.
        async def waiting_trace() -> dict[str, Any] | None:
            status, stored = await server.request("GET", f"/v1/events/{ev['id']}")
            assert status == 200
            return stored if stored["trace"] else None

        stored = await wait_for(waiting_trace)
        assert stored["deliveries"] == []
        (waiting,) = stored["trace"]
        assert waiting["outcome"] == "retrying"
        (step,) = waiting["steps"]
        assert (
            "answered HTTP 429" in step["error"] and step["note"] == "attempt 1 failed; routed again in 120 s"
        )
        assert step["next_attempt_at"] > stored["received_at"]
    finally:
        await busy.stop()
