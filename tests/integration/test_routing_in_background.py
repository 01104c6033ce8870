"""Events whose pipelines wait on a call (here a model, for ``classify``) are routed in tasks of
their own: a slow call holds up no other event's routing, keeps its route job leased however long
it takes, and is neither lost nor counted as an attempt when a shutdown cuts it short."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from ingestlayer import clock, metrics
from ingestlayer.delivery import held_routes
from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.schema import route_jobs
from ingestlayer.store.store import Store
from tests.support.chat_server import ChatServer
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server, wait_for

API_KEY = "sk-background-routing-7c9e"
TICKET = "support.ticket.created"


class GatedModel:
    """A model server whose answers wait until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.server = ChatServer(api_key=API_KEY, answer=self._answer)

    async def _answer(self, _body: dict[str, Any]) -> str:
        await self.gate.wait()
        return "critical"


@pytest.fixture
async def gated() -> AsyncIterator[GatedModel]:
    model = GatedModel()
    await model.server.start()
    yield model
    model.gate.set()
    await model.server.stop()


@pytest.fixture
async def prompt() -> AsyncIterator[ChatServer]:
    server = await ChatServer(api_key=API_KEY, answer=lambda _body: "critical").start()
    yield server
    await server.stop()


def recipe(model_url: str, hook_url: str, **classify: Any) -> dict[str, Any]:
    step = {
        "field": "urgency",
        "labels": "low | critical",
        "fallback": "low",
        "provider": "openai",
        "base_url": model_url,
        "model": "test-model",
        "api_key": "ref:llm-key",
        "prompt": "$event.subject",
        **classify,
    }
    return {
        "pipelines": [
            {
                "name": "escalations",
                "source": {"match": [TICKET]},
                "steps": [{"classify": step}],
                "destinations": [{"webhook.out": {"url": hook_url}}],
            }
        ]
    }


async def configure(server: RunningServer, admin_key: str, document: dict[str, Any]) -> None:
    status, body = await server.request("PUT", "/v1/secrets/llm-key", key=admin_key, json={"value": API_KEY})
    assert status == 200, body
    status, body = await server.request("POST", "/v1/apply", key=admin_key, json={"document": document})
    assert status == 200, body


async def send(server: RunningServer, ingest_key: str, subject: str) -> str:
    status, body = await server.request(
        "POST", "/v1/events", key=ingest_key, json={"type": TICKET, "payload": {"subject": subject}}
    )
    assert status == 202, body
    event_id: str = body["id"]
    return event_id


async def trace_of(server: RunningServer, event_id: str) -> Any:
    status, body = await server.request("GET", f"/v1/events/{event_id}")
    assert status == 200, body
    return body["trace"]


async def route_job(store: Store, event_id: str) -> tuple[float, int] | None:
    """The event's route job: (due_at, attempts), or None once it is routed."""
    async with store.engines.read.connect() as conn:
        row = (
            await conn.execute(
                select(route_jobs.c.due_at, route_jobs.c.attempts).where(route_jobs.c.event_id == event_id)
            )
        ).first()
    return None if row is None else (row[0], row[1])


async def test_a_slow_model_in_one_project_holds_up_no_other_project(
    server: RunningServer, receiver: Receiver, gated: GatedModel, prompt: ChatServer
) -> None:
    await configure(server, server.admin_key, recipe(gated.server.url, receiver.url + "/slow"))
    _, other_ingest, other_admin = await server.runtime.store.create_project("other")
    await configure(server, other_admin, recipe(prompt.url, receiver.url + "/prompt"))

    slow_event = await send(server, server.ingest_key, "Checkout is down")
    await wait_for(lambda: _true(gated.server.active == 1))
    # The other project's ticket is routed and delivered while the first one's call waits.
    prompt_event = await send(server, other_ingest, "Login is down")
    await wait_for(lambda: _true(any(r.path == "/prompt" for r in receiver.requests)), timeout=10)
    assert gated.server.active == 1
    assert await trace_of(server, slow_event) is None
    (prompt_hook,) = [r for r in receiver.requests if r.path == "/prompt"]
    assert prompt_hook.json()["id"] == prompt_event

    # The slow call answers: that ticket is routed and delivered too, once.
    gated.gate.set()
    await wait_for(lambda: _true(any(r.path == "/slow" for r in receiver.requests)), timeout=10)
    (slow_hook,) = [r for r in receiver.requests if r.path == "/slow"]
    assert slow_hook.json()["payload"] == {"subject": "Checkout is down", "urgency": "critical"}
    assert gated.server.calls == 1 and prompt.calls == 1


async def test_a_call_that_outlasts_the_route_lease_keeps_its_event_leased(
    db_url: str, receiver: Receiver, gated: GatedModel
) -> None:
    server = await start_server(db_url, route_lease_seconds=1.0)
    try:
        await configure(server, server.admin_key, recipe(gated.server.url, receiver.url + "/hooks"))
        event_id = await send(server, server.ingest_key, "Checkout is down")
        await wait_for(lambda: _true(gated.server.active == 1))
        # Three leases long: the router renews the lease, so no other router may take the
        # event meanwhile (it would call the model again and route the event twice).
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.0
        while loop.time() < until:
            job = await route_job(server.runtime.store, event_id)
            assert job is not None and job[0] > clock.now(), "the event's route job became due"
            await asyncio.sleep(0.05)
        gated.gate.set()
        await wait_for(lambda: _true(len(receiver.requests) == 1), timeout=10)
        assert await route_job(server.runtime.store, event_id) is None
        assert gated.server.calls == 1
        (pipeline,) = await trace_of(server, event_id)
        assert pipeline["outcome"] == "routed"
    finally:
        await server.stop()


async def test_a_full_project_waits_its_turn_without_spending_attempts(
    server: RunningServer, receiver: Receiver, gated: GatedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held_routes, "PROJECT_HELD", 2)
    put_off_before = metrics.REGISTRY.get_sample_value("ingestlayer_routing_put_off_total") or 0.0
    await configure(
        server, server.admin_key, recipe(gated.server.url, receiver.url + "/hooks", max_concurrency=8)
    )
    events = [await send(server, server.ingest_key, f"Ticket {i}") for i in range(5)]
    await wait_for(lambda: _true(gated.server.active == 2))
    await asyncio.sleep(0.3)  # more passes: the project still holds two
    assert gated.server.active == 2
    store = server.runtime.store
    jobs = [await route_job(store, e) for e in events]
    waiting = [job for job in jobs if job is not None and job[1] == 0]
    assert len(waiting) == 3, jobs  # given back uncounted, due again later
    assert metrics.REGISTRY.get_sample_value("ingestlayer_routing_held_events") == 2
    put_off = metrics.REGISTRY.get_sample_value("ingestlayer_routing_put_off_total") or 0.0
    assert put_off - put_off_before >= 3

    gated.gate.set()
    await wait_for(lambda: _true(len(receiver.requests) == 5), timeout=15)
    assert sorted(r.json()["id"] for r in receiver.requests) == sorted(events)
    assert gated.server.calls == 5 and gated.server.max_active == 2
    assert [await route_job(store, e) for e in events] == [None] * 5


async def test_a_call_cut_short_by_shutdown_is_due_again_uncounted(
    db_url: str, receiver: Receiver, gated: GatedModel
) -> None:
    server = await start_server(db_url, shutdown_grace_seconds=0.5)
    store_url = db_url
    try:
        await configure(server, server.admin_key, recipe(gated.server.url, receiver.url + "/hooks"))
        event_id = await send(server, server.ingest_key, "Checkout is down")
        await wait_for(lambda: _true(gated.server.active == 1))
    finally:
        await server.stop()
    check = Store.from_url(store_url)
    try:
        job = await route_job(check, event_id)
        assert job is not None, "the event was routed without its model's answer"
        due_at, attempts = job
        assert due_at <= clock.now() and attempts == 0
    finally:
        await check.close()

    # The next process routes it, with the model's answer.
    gated.gate.set()
    again = await start_server(db_url, project="next")
    try:
        await wait_for(lambda: _true(len(receiver.requests) == 1), timeout=10)
        assert receiver.requests[0].json()["id"] == event_id
    finally:
        await again.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_call_finishing_in_the_shutdown_grace_keeps_its_lease_and_is_stored(
    db_url: str, receiver: Receiver, gated: GatedModel
) -> None:
    """The grace period may be longer than a route lease: the lease is renewed meanwhile, so no
    other worker takes the event (and calls the model again) while this one finishes it."""
    server = await start_server(db_url, route_lease_seconds=1.0, shutdown_grace_seconds=4.0)
    store = server.runtime.store
    stopping: asyncio.Task[None] | None = None
    try:
        await configure(server, server.admin_key, recipe(gated.server.url, receiver.url + "/hooks"))
        event_id = await send(server, server.ingest_key, "Checkout is down")
        await wait_for(lambda: _true(gated.server.active == 1))
        server.runtime.begin_shutdown()  # as SIGTERM does: the grace period starts
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.0  # two leases into the grace
        while loop.time() < until:
            job = await route_job(store, event_id)
            assert job is not None and job[0] > clock.now(), "the event's route job became due"
            await asyncio.sleep(0.05)
        gated.gate.set()
        await wait_for(lambda: _true(gated.server.active == 0))
        stopping = asyncio.create_task(server.stop())
        await wait_for(lambda: _true(stopping.done()), timeout=15)
        check = Store.from_url(db_url)
        try:
            assert await route_job(check, event_id) is None  # routed, not given back
        finally:
            await check.close()
        assert gated.server.calls == 1
    finally:
        if stopping is None:
            await server.stop()


async def test_a_worker_holding_all_it_may_still_routes_events_that_need_no_call(
    server: RunningServer, receiver: Receiver, gated: GatedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the worker's cap of events held, the router leased nothing at all: events of other
    projects, whose pipelines need no call, waited for the slow model too."""
    monkeypatch.setattr(held_routes, "MAX_HELD", 1)
    # The model's call outlasts the test: it must not end in a timeout and free the worker.
    await configure(server, server.admin_key, recipe(gated.server.url, receiver.url + "/slow", timeout=60))
    await send(server, server.ingest_key, "Checkout is down")
    await wait_for(lambda: _true(gated.server.active == 1))
    other_id, _, other_admin = await server.runtime.store.create_project("other")
    plain = {
        "pipelines": [
            {
                "name": "all",
                "source": {"match": ["order.*"]},
                "destinations": [{"webhook.out": {"url": receiver.url + "/plain"}}],
            }
        ]
    }
    status, body = await server.request("POST", "/v1/apply", key=other_admin, json={"document": plain})
    assert status == 200, body
    # Stored for the router (as by another process's ingest): a route job due now.
    now = clock.now()
    event = NewEvent(new_id("evt"), other_id, "order.placed", "{}", None, "sdk", now, now)
    await server.runtime.store.insert_events([event])
    await wait_for(lambda: _true(any(r.path == "/plain" for r in receiver.requests)), timeout=10)
    assert gated.server.active == 1 and server.runtime.router.held() == 1  # the slow call still waits
