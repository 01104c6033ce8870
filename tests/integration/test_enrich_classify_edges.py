"""Edge cases of the enrich and classify steps met with real data: a model that wraps its JSON in
prose, entities changed between two events, a lookup provider answering garbage."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from ingestlayer.pipeline.event import StepContext, StepServices
from ingestlayer.pipeline.steps.classify import parse_answer
from ingestlayer.pipeline.steps.enrich_person import EnrichPerson, EnrichPersonConfig
from tests.integration.test_classify_pipeline import API_KEY as CHAT_KEY
from tests.integration.test_classify_pipeline import answer, classify_entry, received, routed, send, ticket
from tests.integration.test_classify_pipeline import setup as classify_setup
from tests.integration.test_enrich_steps import trace_of
from tests.support.chat_server import ChatServer
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for

LABELS = ["low", "high", "critical"]


def pipeline(receiver: Receiver, match: str, steps: list[Any]) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "p",
                "source": {"match": [match]},
                "steps": steps,
                "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}}],
            }
        ]
    }


async def arrived(receiver: Receiver, n: int) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len(receiver.requests) >= n

    await wait_for(enough)
    return [r.json()["payload"] for r in receiver.requests]


# ---- classify: structured answers inside prose ------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # The reasoning comes first and mentions a label the model ruled out.
        ('Answer: {"reasoning": "not critical, nothing is down", "label": "low"}', "low"),
        ('Here you go:\n```json\n{"reasoning": "not critical", "label": "low"}\n```', "low"),
        ('```json\n{"reasoning": "not critical", "label": "low"}\n```\nHope that helps!', "low"),
        ("Sure:\n```\nhigh\n```\nnot critical though", "high"),
        ('{"label": "high"} - the customer is angry, not critical', "high"),
        # The model named a label outside the schema: that is its answer, not a label mentioned
        # in its reasoning; the step's fallback applies.
        ('{"label": "medium", "reason": "not critical"}', None),
        ('{"label": "medium"} (could also be high)', None),
        ('The label is: {"urgency": "medium", "why": "between low and high"}', None),
    ],
)
def test_json_in_prose_or_fences_is_read_as_json(answer: str, expected: str | None) -> None:
    assert parse_answer(answer, LABELS, "urgency") == expected


# ---- enrich.entity: entities changed between events --------------------------------------------------


async def test_enrich_entity_sees_traits_changed_through_the_api_right_away(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.apply(
        pipeline(receiver, "feature.used", [{"enrich.entity": {"attach": ["account", "plan"]}}])
    )
    # The first event comes before the user is known: "not found" must not stick either.
    await server.ingest("feature.used", {"user_id": "u1", "n": 1})
    await arrived(receiver, 1)
    await server.request(
        "POST", "/v1/group", json={"user_id": "u1", "account_id": "acc_1", "traits": {"plan": "free"}}
    )
    await server.ingest("feature.used", {"user_id": "u1", "n": 2})
    await arrived(receiver, 2)
    status, _ = await server.request(
        "PATCH", "/v1/entities/account/acc_1", json={"traits": {"plan": "scale"}}
    )
    assert status == 200
    await server.ingest("feature.used", {"user_id": "u1", "n": 3})
    payloads = {p["n"]: p for p in await arrived(receiver, 3)}
    assert payloads[1]["account"] is None
    assert (payloads[2]["account"], payloads[2]["plan"]) == ("acc_1", "free")
    assert payloads[3]["plan"] == "scale"


async def test_enrich_entity_says_which_attached_fields_it_did_not_find(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.request(
        "POST", "/v1/group", json={"user_id": "u1", "account_id": "acc_1", "traits": {"plan": "free"}}
    )
    await server.apply(
        pipeline(
            receiver, "feature.used", [{"enrich.entity": {"attach": ["account", "plan", "owner", "seats"]}}]
        )
    )
    _, ev = await server.ingest("feature.used", {"user_id": "u1"})
    (payload,) = await arrived(receiver, 1)
    assert payload["owner"] is None and payload["seats"] is None
    step = (await trace_of(server, ev["id"]))[0]["steps"][0]
    assert "not found on account acc_1 or user u1: owner, seats" in step["notes"]


# ---- enrich.person: a lookup provider answering garbage ------------------------------------------


@pytest.mark.parametrize("body", [b"<html>Service Unavailable</html>", b'["CFO"]', b'"ok"'])
async def test_a_lookup_answer_that_is_no_json_object_is_a_step_error_and_not_cached(
    server: RunningServer, receiver: Receiver, body: bytes
) -> None:
    people = await Receiver().start()
    try:
        people.default = Reply(status=200, body=body)
        provider = {"url": people.url + "/p?e={email}", "mapping": {"role": "title"}, "timeout": 2}
        await server.apply(
            pipeline(receiver, "signup", [{"enrich.person": {"attach": ["role"], "provider": provider}}])
        )
        _, first = await server.ingest("signup", {"email": "a@corp.io"})
        step = (await trace_of(server, first["id"]))[0]["steps"][0]
        assert step["outcome"] == "skipped"
        assert "lookup provider 127.0.0.1 answered 200 without a JSON object" in step["error"]
        # The garbage was not cached: once the provider answers properly, the role is found.
        people.default = Reply(status=200, body=b'{"title": "CFO"}')
        await server.ingest("signup", {"email": "a@corp.io"})
        payloads = await arrived(receiver, 2)
        assert [p.get("role") for p in payloads] == [None, "CFO"]
    finally:
        await people.stop()


async def test_a_lookup_answer_past_a_mebibyte_is_a_step_error_not_memory(
    server: RunningServer, receiver: Receiver
) -> None:
    # A provider that streams on until the timeout must not grow the worker's memory with it.
    people = await Receiver().start()
    try:
        people.default = Reply(status=200, body=b'{"title": "' + b"x" * (2 << 20) + b'"}')
        provider = {"url": people.url + "/p?e={email}", "mapping": {"role": "title"}, "timeout": 5}
        await server.apply(
            pipeline(receiver, "signup", [{"enrich.person": {"attach": ["role"], "provider": provider}}])
        )
        _, ev = await server.ingest("signup", {"email": "a@corp.io"})
        step = (await trace_of(server, ev["id"]))[0]["steps"][0]
        assert step["outcome"] == "skipped"
        assert "lookup provider 127.0.0.1: the response is larger than 1048576 bytes" in step["error"]
        (payload,) = await arrived(receiver, 1)
        assert payload.get("role") is None
    finally:
        await people.stop()


# ---- classify: many identical events at once, a rate-limited model ------------------------------


@pytest.fixture
async def chat() -> AsyncIterator[ChatServer]:
    server = await ChatServer(api_key=CHAT_KEY, answer=answer).start()
    yield server
    await server.stop()


async def test_fifty_identical_tickets_at_once_make_one_model_call(
    server: RunningServer, receiver: Receiver, chat: ChatServer
) -> None:
    await classify_setup(server, chat, receiver)
    chat.delay = 0.5  # all fifty arrive while the first call is in flight
    payload = ticket("T-1", "Site down", "Checkout returns 502")
    ids = await asyncio.gather(*(send(server, payload) for _ in range(50)))
    events = [await routed(server, event_id) for event_id in ids]
    assert chat.calls == 1
    assert all(classify_entry(ev)["outcome"] == "changed" for ev in events)
    await wait_for(lambda: received(receiver, 50))
    assert {r.json()["payload"]["urgency"] for r in receiver.requests} == {"critical"}


async def test_a_rate_limited_model_yields_the_fallback_on_the_trace_and_never_the_key(
    server: RunningServer, receiver: Receiver, chat: ChatServer
) -> None:
    await classify_setup(server, chat, receiver, fallback="critical")
    chat.fail_next(429)
    event = await routed(server, await send(server, ticket("T-2", "Question", "How do I export?")))
    (note,) = classify_entry(event)["notes"]
    assert note.startswith("label critical (fallback): openai: answered HTTP 429")
    assert CHAT_KEY not in orjson.dumps(event).decode()


async def test_a_rate_limited_model_without_a_fallback_is_asked_again_when_it_said(
    server: RunningServer, receiver: Receiver, chat: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    await classify_setup(server, chat, receiver, on_error="retry", fallback=None)
    chat.retry_after = "90"
    chat.fail_next(429)
    caplog.set_level(logging.WARNING, logger="ingestlayer")
    event_id = await send(server, ticket("T-3", "Question", "How do I export?"))

    async def decided() -> list[str]:
        return [r.getMessage() for r in caplog.records if event_id in r.getMessage()]

    (line,) = await wait_for(decided)
    assert "answered HTTP 429" in line and line.endswith("routing again in 90s"), line
    assert chat.calls == 1


def test_own_free_mail_domains_are_compared_as_domains_from_addresses() -> None:
    config = EnrichPersonConfig.model_validate({"free_mail_domains": [" Mail.Example. ", "posteo.de"]})
    step = EnrichPerson(config)
    assert {"mail.example", "posteo.de", "gmail.com"} <= step.free_mail


async def test_a_lookup_that_outlives_its_waiters_fails_quietly_and_a_timeout_says_so(
    receiver: Receiver,
) -> None:
    """At a shutdown the router gives back events waiting on a lookup (their waits are
    cancelled); the lookup itself, shared by them, went on and failed for nobody, and was logged
    as "Task exception was never retrieved", once per lookup. A timed-out lookup said only
    "failed: TimeoutError"."""
    receiver.default = Reply(status=200, delay=1.0)
    config = EnrichPersonConfig.model_validate(
        {
            "provider": {
                "url": receiver.url + "/p?e={email}",
                "mapping": {"role": "title"},
                "timeout": 0.3,
                "cache_ttl": 0,
            }
        }
    )
    step = EnrichPerson(config)
    session = aiohttp.ClientSession()

    async def http() -> aiohttp.ClientSession:
        return session

    async def no_secret(_project: str, _ref: str) -> str:
        raise LookupError

    services = StepServices(
        entities=None, cache=None, http=http, resolve_secret=no_secret, allow_private=True
    )  # type: ignore[arg-type]
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        ctx = StepContext("prj_1", "p", services)
        with pytest.raises(RuntimeError, match=r"did not answer within 0\.3 s"):
            await step._lookup("ann@corp.io", "corp.io", ctx)

        waiter = asyncio.ensure_future(
            step._lookup("bob@corp.io", "corp.io", StepContext("prj_1", "p", services))
        )
        await asyncio.sleep(0.05)
        waiter.cancel()  # given back at a shutdown
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.6)  # the lookup itself times out meanwhile
        del waiter
        gc.collect()
        await asyncio.sleep(0)
        assert not step._inflight
        assert [c for c in unretrieved if "never retrieved" in str(c.get("message"))] == []
    finally:
        loop.set_exception_handler(None)
        await session.close()
