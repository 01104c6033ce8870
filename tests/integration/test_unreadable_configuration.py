"""A project whose stored configuration this version cannot compile (written by a newer or an
older version, or edited by hand in the database) holds up no other project's events, and loses
none of its own: the events a pipeline it cannot compile would take wait, their trace saying
why, are routed again with the usual back-off (by the configuration fixed meanwhile, if it is),
and at their last attempt end with the error in their trace.

It used to go one of two ways. A pipeline whose steps or destinations could not be compiled was
skipped: the events it takes were routed without it, to nothing if it was their only pipeline,
never to be delivered. A source that could not be read failed the whole router pass: every
event leased in it, every project's, was leased again with the one when the lease ran out, and
failed with it again, for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from ingestlayer.api.manage import run_apply
from ingestlayer.config import Settings
from ingestlayer.delivery.router import MAX_ROUTE_ATTEMPTS, ROUTE_RETRY_DELAYS, Router
from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.runtime import Runtime
from ingestlayer.store.schema import route_jobs
from ingestlayer.store.store import Store
from tests.support.receiver import Receiver
from tests.support.routing import route_all
from tests.support.server import TEST_SECRET_KEY, RunningServer, wait_for

HOOK = "http://127.0.0.1:9/hooks"  # never called where the dispatcher does not run


def _config(url: str = HOOK) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "features",
                "source": {"match": ["feature.*"]},
                "steps": [{"filter.match": 'plan = "free"'}],
                "destinations": [{"webhook.out": {"url": url}}],
            },
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [{"webhook.out": {"url": url}}],
            },
        ]
    }


# What a stored pipeline can hold that this version cannot compile.
def _when_refused(config: dict[str, Any]) -> dict[str, Any]:
    """A destination's condition the expression parser refuses (edited by hand)."""
    routes = [{**config["destinations"][0], "when": "plan = = free"}]
    return {**config, "destinations": routes}


def _step_unknown(config: dict[str, Any]) -> dict[str, Any]:
    """A step this version does not have (written by a newer one)."""
    return {**config, "steps": [{"name": "enrich.weather", "config": {"from": "city"}}]}


def _source_unreadable(config: dict[str, Any]) -> dict[str, Any]:
    """A source without the list of types this version reads (written by a newer one): which
    events the pipeline takes is unknown."""
    return {**config, "source": {"types": config["source"]["match"]}}


async def _project(store: Store, name: str, url: str = HOOK) -> str:
    project_id, _, _ = await store.create_project(name)
    await run_apply(store, project_id, _config(url), dry_run=False, prune=False)
    return project_id


async def _break(store: Store, project_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Store the project's ``features`` pipeline changed, as an older version or a hand could
    leave it: straight into its row, past apply's checks."""
    cfg = await store.load_project_config(project_id)
    (features,) = [p for p in cfg.pipelines if p.name == "features"]
    row = {"id": features.id, "name": features.name, "config": change(features.config), "enabled": True}
    await store.apply_config(project_id, [], [row])


def _event(project_id: str, type_: str) -> NewEvent:
    now = time.time()
    return NewEvent(new_id("evt"), project_id, type_, '{"plan": "free"}', None, "api", now, now)


async def _due_now(store: Store, event_ids: list[str], attempts: int | None = None) -> None:
    """The events' route jobs due now, as once their back-off has passed (after ``attempts``
    routing attempts, if given)."""
    values: dict[str, Any] = {"due_at": 0.0}
    if attempts is not None:
        values["attempts"] = attempts
    async with store.engines.write.begin() as conn:
        await conn.execute(update(route_jobs).where(route_jobs.c.event_id.in_(event_ids)).values(**values))


async def _delivered_events(store: Store, project_id: str) -> set[str]:
    return {d["event_id"] for d in await store.list_deliveries(project_id, limit=1000)}


async def _trace(store: Store, project_id: str, event_id: str) -> Any:
    stored = await store.get_event(project_id, event_id)
    assert stored is not None  # never lost
    return stored.trace


def _router(store: Store) -> Router:
    return Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))


def _naming(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("change", [_when_refused, _step_unknown], ids=["when", "step"])
async def test_a_pipeline_that_cannot_be_compiled_holds_back_only_the_events_it_takes(
    db_url: str, change: Callable[[dict[str, Any]], dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestlayer")
    store = Store.from_url(db_url)
    try:
        good = await _project(store, "good")
        broken = await _project(store, "broken")
        await _break(store, broken, change)
        features = [_event(broken, "feature.used") for _ in range(3)]
        orders = [_event(broken, "order.placed")]
        others = [_event(good, "feature.used") for _ in range(4)]
        await store.insert_events([others[0], features[0], others[1], orders[0], *features[1:], *others[2:]])
        router = _router(store)

        assert await router.run_once() == 8  # one pass, not failed
        assert await _delivered_events(store, good) == {e.id for e in others}
        # The project's other pipeline routes as before; the events the broken one takes wait.
        assert await _delivered_events(store, broken) == {orders[0].id}
        assert await store.pending_route_jobs() == 3
        for ev in features:
            (entry,) = await _trace(store, broken, ev.id)
            assert entry["outcome"] == "retrying"
            (step,) = entry["steps"]
            assert "pipeline 'features' cannot be compiled" in step["error"]
            assert step["note"] == f"attempt 1 failed; routed again in {ROUTE_RETRY_DELAYS[0]:g} s"
        # The log says which project and why: once when compiling, once for the pass; the events
        # are counted, not named one by one with a traceback each.
        said = _naming(caplog, broken)
        assert len(said) == 2 and sum(r.exc_info is not None for r in said) == 1
        line = said[1].getMessage()
        assert "cannot be compiled" in line and "waiting until its configuration is fixed: 3" in line
        assert not any(ev.id in r.getMessage() for r in caplog.records for ev in features)

        # Its back-off passed, an event is tried again (the configuration is not compiled again),
        # and at its last attempt it ends, without deliveries, the reason in its trace.
        caplog.clear()
        await _due_now(store, [features[0].id])
        await _due_now(store, [features[1].id], attempts=MAX_ROUTE_ATTEMPTS - 1)
        assert await router.run_once() == 2
        (entry,) = await _trace(store, broken, features[0].id)
        assert entry["outcome"] == "retrying" and entry["steps"][0]["note"].startswith("attempt 2 failed")
        (entry,) = await _trace(store, broken, features[1].id)
        assert entry["outcome"] == "failed" and "cannot be compiled" in entry["steps"][0]["error"]
        assert f"gave up after {MAX_ROUTE_ATTEMPTS} attempts" in entry["steps"][0]["note"]
        assert await store.pending_route_jobs() == 2
        (said,) = _naming(caplog, broken)
        assert said.exc_info is None
        assert f"given up on after {MAX_ROUTE_ATTEMPTS} attempts: 1" in said.getMessage()

        # The configuration fixed, the events that waited are routed by it.
        await run_apply(store, broken, _config(), dry_run=False, prune=False)
        await _due_now(store, [features[0].id, features[2].id])
        assert await router.run_once() == 2
        assert await store.pending_route_jobs() == 0
        assert await _delivered_events(store, broken) == {orders[0].id, features[0].id, features[2].id}
        (entry,) = await _trace(store, broken, features[0].id)
        assert entry["pipeline"] == "features" and entry["outcome"] == "routed"
    finally:
        await store.close()


async def test_a_source_that_cannot_be_read_holds_back_its_project_only(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Which events the pipeline takes is unknown: all its project's wait, and no other's."""
    caplog.set_level(logging.WARNING, logger="ingestlayer")
    store = Store.from_url(db_url)
    try:
        good = await _project(store, "good")
        broken = await _project(store, "broken")
        await _break(store, broken, _source_unreadable)
        waiting = [_event(broken, "feature.used"), _event(broken, "order.placed")]
        others = [_event(good, "feature.used"), _event(good, "order.placed")]
        await store.insert_events([others[0], *waiting, others[1]])
        router = _router(store)

        assert await router.run_once() == 4  # this pass failed whole, and every one after it
        assert await _delivered_events(store, good) == {e.id for e in others}
        assert await _delivered_events(store, broken) == set()
        assert await store.pending_route_jobs() == 2
        for ev in waiting:
            (entry,) = await _trace(store, broken, ev.id)
            assert entry["outcome"] == "retrying"
            assert "source.match must be a list of event types" in entry["steps"][0]["error"]
        assert len(_naming(caplog, "routing a pass")) == 0  # no pass failed

        await run_apply(store, broken, _config(), dry_run=False, prune=False)
        await _due_now(store, [e.id for e in waiting])
        assert await router.run_once() == 2
        assert await _delivered_events(store, broken) == {e.id for e in waiting}
    finally:
        await store.close()


async def test_an_error_past_routings_own_handling_holds_back_only_its_events(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the pass itself (here, one project's compiled configuration failing to say which
    pipelines take a type) fails that project's events alone, each routed again after the usual
    back-off; the pass used to fail whole, every project's events in it leased again and again."""
    caplog.set_level(logging.WARNING, logger="ingestlayer")
    store = Store.from_url(db_url)
    try:
        good = await _project(store, "good")
        broken = await _project(store, "broken")
        router = _router(store)
        compiled = (await router.configs.get_many({broken}))[broken]

        def takes(event_type: str) -> bool:
            raise RuntimeError("injected: a bug past routing's handling of each event")

        monkeypatch.setattr(compiled, "takes", takes)
        waiting = [_event(broken, "feature.used"), _event(broken, "order.placed")]
        others = [_event(good, "feature.used") for _ in range(3)]
        await store.insert_events([others[0], *waiting, *others[1:]])

        assert await router.run_once() == 5
        assert await _delivered_events(store, good) == {e.id for e in others}
        assert await store.pending_route_jobs() == 2
        for ev in waiting:
            (entry,) = await _trace(store, broken, ev.id)
            assert entry["outcome"] == "retrying"
            assert (
                entry["steps"][0]["error"]
                == "RuntimeError: injected: a bug past routing's handling of each event"
            )
        # One traceback for the pass; a line, without one, for each event held back.
        assert sum(r.exc_info is not None for r in caplog.records) == 1
        assert all(len(_naming(caplog, ev.id)) == 1 for ev in waiting)

        # At its last attempt, an event still failing ends with the error in its trace.
        await _due_now(store, [e.id for e in waiting], attempts=MAX_ROUTE_ATTEMPTS - 1)
        assert await router.run_once() == 2
        assert await store.pending_route_jobs() == 0
        for ev in waiting:
            (entry,) = await _trace(store, broken, ev.id)
            assert entry["outcome"] == "failed" and "injected" in entry["steps"][0]["error"]
    finally:
        await store.close()


async def _send_both(
    server: RunningServer, receiver: Receiver, broken_ingest: str
) -> tuple[list[str], list[str]]:
    """Three events to the broken project and three to the server's own, sent together so that
    the group commit and the router's passes mix the two; every one is answered 202. Returns the
    broken project's event ids and the others', once the others are delivered."""

    async def send(key: str, n: int) -> tuple[int, Any]:
        body = {"type": "feature.used", "payload": {"plan": "free", "n": n}}
        return await server.request("POST", "/v1/events", key=key, json=body)

    answers = await asyncio.gather(
        *(send(key, n) for n in range(3) for key in (broken_ingest, server.ingest_key))
    )
    assert [status for status, _ in answers] == [202] * 6
    waiting = [body["id"] for _, body in answers[0::2]]
    others = [body["id"] for _, body in answers[1::2]]

    async def delivered() -> bool:
        return {r.json()["id"] for r in receiver.requests} >= set(others)

    await wait_for(delivered, timeout=15)
    return waiting, others


async def _retrying_traces(
    server: RunningServer, admin_key: str, event_ids: list[str]
) -> list[dict[str, Any]]:
    """Each event's one trace entry, once it says its routing waits to be tried again."""

    async def retrying(event_id: str) -> Any:
        _, ev = await server.request("GET", f"/v1/events/{event_id}", key=admin_key)
        trace = ev["trace"]
        return trace if trace and trace[0]["outcome"] == "retrying" else None

    entries = []
    for event_id in event_ids:
        (entry,) = await wait_for(lambda event_id=event_id: retrying(event_id), timeout=15)
        entries.append(entry)
    return entries


async def _admin(server: RunningServer, name: str) -> tuple[str, str, str]:
    """Another project on the server: its id, ingest key and admin key."""
    return await server.runtime.store.create_project(name)


async def test_serve_keeps_delivering_other_projects_and_answers_202_for_the_broken_one(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """In ``serve`` ingest hands events to the router in the process: the broken project's are
    accepted and wait; the others' are delivered; once the configuration is fixed with apply,
    the ones that waited are delivered too."""
    caplog.set_level(logging.WARNING, logger="ingestlayer")
    store = server.runtime.store
    url = receiver.url + "/hook"
    await run_apply(store, server.project_id, _config(url), dry_run=False, prune=False)
    broken, broken_ingest, broken_admin = await _admin(server, "broken")
    await run_apply(store, broken, _config(url), dry_run=False, prune=False)
    await _break(store, broken, _source_unreadable)

    waiting, others = await _send_both(server, receiver, broken_ingest)
    for entry in await _retrying_traces(server, broken_admin, waiting):
        assert "source.match must be a list of event types" in entry["steps"][0]["error"]
    assert not _naming(caplog, "router pass failed") and not _naming(caplog, "routing a pass")

    status, body = await server.request(
        "POST", "/v1/apply", key=broken_admin, json={"document": _config(url)}
    )
    assert status == 200, body  # routed at once, not after their back-off

    async def all_delivered() -> bool:
        return {r.json()["id"] for r in receiver.requests} >= set(others + waiting)

    await wait_for(all_delivered, timeout=15)


async def test_serve_answers_202_and_delivers_the_rest_when_one_projects_routing_fails(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bug as above, in ``serve``, where ingest routes what it can before the insert:
    that failed the insert, and the project's requests were answered 503 for as long as the bug
    lasted (the group commit, retried request by request, stored the others'). Ingest's routing
    is a shortcut: the router routes what it could not."""
    store = server.runtime.store
    url = receiver.url + "/hook"
    await run_apply(store, server.project_id, _config(url), dry_run=False, prune=False)
    broken, broken_ingest, broken_admin = await _admin(server, "broken")
    await run_apply(store, broken, _config(url), dry_run=False, prune=False)
    configs = server.runtime.router.configs
    await configs.get_many({server.project_id})  # compiled: ingest routes by it
    compiled = (await configs.get_many({broken}))[broken]

    def takes(event_type: str) -> bool:
        raise RuntimeError("injected: a bug past routing's handling of each event")

    monkeypatch.setattr(compiled, "takes", takes)

    waiting, _ = await _send_both(server, receiver, broken_ingest)
    for entry in await _retrying_traces(server, broken_admin, waiting):
        assert "injected" in entry["steps"][0]["error"]


async def test_api_and_worker_processes(db_url: str) -> None:
    """``api`` compiles configurations itself, after the insert, to route at ingest: a broken
    project's must not stop the others' from being compiled (nor fail the group commit), and its
    events must get route jobs, not be taken for events no pipeline takes. ``worker`` then holds
    back only those."""
    settings = Settings.from_env().with_overrides(database_url=db_url, secret_key=TEST_SECRET_KEY)
    api = Runtime(settings, api=True, worker=False)
    worker = Runtime(settings, api=False, worker=True)
    api.committer.start()
    store = api.store
    try:
        good = await _project(store, "good")
        broken = await _project(store, "broken")
        await _break(store, broken, _when_refused)

        def batch() -> list[NewEvent]:
            return [
                _event(good, "feature.used"),
                _event(broken, "feature.used"),
                _event(broken, "order.placed"),
            ]

        # One group commit holding both projects' events; then ingest compiles their
        # configurations in the background.
        first = batch()
        results = await api.committer.submit(first)
        assert [r.id for r in results] == [e.id for e in first]
        await wait_for(lambda: _both_compiled(api, good, broken), timeout=30)

        # Now ingest routes what it can: the good project's event, and none of the broken one's
        # (the one its broken pipeline takes must not be stored as taken by no pipeline).
        second = batch()
        await api.committer.submit(second)
        assert await store.pending_route_jobs() == 3 + 2

        assert await route_all(worker.router) == 5
        assert await _delivered_events(store, good) == {first[0].id, second[0].id}
        assert await _delivered_events(store, broken) == {first[2].id, second[2].id}
        assert await store.pending_route_jobs() == 2
        for ev in (first[1], second[1]):
            (entry,) = await _trace(store, broken, ev.id)
            assert entry["outcome"] == "retrying" and "cannot be compiled" in entry["steps"][0]["error"]
    finally:
        await worker.shutdown()
        await api.shutdown()


async def _both_compiled(api: Runtime, good: str, broken: str) -> bool:
    configs = api.router.configs
    return configs.current(good) is not None and configs.current(broken) is not None


async def _job(store: Store, event_id: str) -> Any:
    async with store.engines.read.connect() as conn:
        return (await conn.execute(select(route_jobs).where(route_jobs.c.event_id == event_id))).first()


async def _set_a_secret(store: Store, project_id: str) -> None:
    await store.set_secret(project_id, "unused", b"ciphertext")


async def _apply_the_fix(store: Store, project_id: str) -> None:
    await run_apply(store, project_id, _config(), dry_run=False, prune=False)


@pytest.mark.parametrize("change", [_apply_the_fix, _set_a_secret], ids=["apply", "secret"])
async def test_a_change_of_the_configuration_routes_the_waiting_events_at_once(
    db_url: str, change: Callable[[Store, str], Any]
) -> None:
    """Events waiting on a routing back-off (up to half an hour) are due as soon as their
    project's configuration changes, which may be the fix: they waited out the back-off. A job
    leased by a router at that moment is left to it; another project's waiting jobs wait on."""
    store = Store.from_url(db_url)
    try:
        broken = await _project(store, "broken")
        other = await _project(store, "other")
        await _break(store, broken, _step_unknown)
        await _break(store, other, _step_unknown)
        waiting = [_event(broken, "feature.used") for _ in range(2)]
        leased = _event(broken, "feature.used")
        elsewhere = _event(other, "feature.used")
        await store.insert_events([*waiting, elsewhere])
        router = _router(store)
        # Their fifth attempt fails: routed again in ten minutes.
        await _due_now(store, [*(e.id for e in waiting), elsewhere.id], attempts=4)
        assert await router.run_once() == 3
        (entry,) = await _trace(store, broken, waiting[0].id)
        assert entry["steps"][0]["note"] == f"attempt 5 failed; routed again in {ROUTE_RETRY_DELAYS[4]:g} s"
        assert await router.run_once() == 0  # nothing due
        await store.insert_events([leased])
        lease = await store.lease_route_jobs(10, 60.0)
        assert [e.id for e in lease.events] == [leased.id]

        await change(store, broken)
        assert (await _job(store, leased.id)).due_at == lease.token  # still the router's
        assert await router.run_once() == 2  # the waiting ones, not the leased one, nor the other's
        (entry,) = await _trace(store, broken, waiting[0].id)
        if change is _apply_the_fix:
            assert await _delivered_events(store, broken) == {e.id for e in waiting}
            assert entry["outcome"] == "routed"
        else:  # not the fix: they wait again
            assert entry["steps"][0]["note"].startswith("attempt 6 failed")
        assert (await _job(store, elsewhere.id)).due_at > time.time() + ROUTE_RETRY_DELAYS[3]
        # The router that holds the lease stores its routing.
        await store.complete_routing(lease, [], {})
        assert await _job(store, leased.id) is None
    finally:
        await store.close()


async def test_a_fix_applied_while_a_router_routes_by_the_broken_configuration_routes_the_event_at_once(
    db_url: str,
) -> None:
    """The fix may come while another process's router is routing an event by the broken
    configuration: the change leaves a leased job to its router, which then put it back on its
    back-off (ten minutes here) though the configuration it failed by was already replaced. It is
    due at once instead, and routed by the fix."""
    store = Store.from_url(db_url)
    try:
        broken = await _project(store, "broken")
        await _break(store, broken, _step_unknown)
        event = _event(broken, "feature.used")
        await store.insert_events([event])
        await _due_now(store, [event.id], attempts=4)  # its fifth attempt: ten minutes after it
        router = _router(store)
        real = store.defer_route_jobs

        async def fixed_meanwhile(*args: Any, **kwargs: Any) -> None:
            await _apply_the_fix(store, broken)  # by another process, after the router compiled
            await real(*args, **kwargs)

        store.defer_route_jobs = fixed_meanwhile  # type: ignore[method-assign]
        assert await router.run_once() == 1
        store.defer_route_jobs = real  # type: ignore[method-assign]
        assert await _delivered_events(store, broken) == set()

        assert await router.run_once() == 1  # due at once, not in ten minutes
        assert await _delivered_events(store, broken) == {event.id}
        (entry,) = await _trace(store, broken, event.id)
        assert entry["outcome"] == "routed"
    finally:
        await store.close()


LITERAL_KEY = "sk-LITERAL-STEP-KEY-8842"


def _literal_key(config: dict[str, Any]) -> dict[str, Any]:
    """A step holding a key itself where a reference belongs (a hand, or a version before the
    check): the step's settings fail their checks."""
    provider = {"url": "https://people.example.com/lookup?email={email}", "secret": LITERAL_KEY}
    step = {"name": "enrich.person", "config": {"provider": {**provider, "mapping": {"company": "c"}}}}
    return {**config, "steps": [step]}


async def test_a_setting_that_fails_its_checks_is_named_in_the_log_never_quoted(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestlayer")
    store = Store.from_url(db_url)
    try:
        broken = await _project(store, "broken")
        await _break(store, broken, _literal_key)
        event = _event(broken, "feature.used")
        await store.insert_events([event])
        assert await _router(store).run_once() == 1
        (entry,) = await _trace(store, broken, event.id)
        # The trace and the log name the setting and say what is wrong with it, never the key.
        refused = "provider.secret: Value error, secret must be a secret reference"
        assert refused in entry["steps"][0]["error"]
        (said,) = [r for r in _naming(caplog, "cannot be compiled") if r.levelno == logging.ERROR]
        assert refused in said.message
        assert LITERAL_KEY not in caplog.text and LITERAL_KEY not in str(entry)
    finally:
        await store.close()


async def test_a_fix_applied_during_the_last_attempt_routes_the_event_instead_of_ending_it(
    db_url: str,
) -> None:
    """The fix may land while a router makes an event's last attempt by the broken configuration
    (a slow step, another process): the event used to end then with no deliveries, the fix come
    too late for it. It is tried again at once, by the fix; without a change it still ends."""
    store = Store.from_url(db_url)
    try:
        broken = await _project(store, "broken")
        await _break(store, broken, _step_unknown)
        fixed_in_time, left_broken = _event(broken, "feature.used"), _event(broken, "feature.used")
        await store.insert_events([fixed_in_time])
        router = _router(store)
        real = router.configs.get_many

        async def fixed_once_compiled(*args: Any, **kwargs: Any) -> Any:
            compiled = await real(*args, **kwargs)
            await _apply_the_fix(store, broken)  # by another process, after the router compiled
            return compiled

        # Its last attempt, by the broken configuration, while the fix is applied.
        await _due_now(store, [fixed_in_time.id], attempts=MAX_ROUTE_ATTEMPTS - 1)
        router.configs.get_many = fixed_once_compiled  # type: ignore[method-assign]
        assert await router.run_once() == 1
        router.configs.get_many = real  # type: ignore[method-assign]
        assert await _delivered_events(store, broken) == set()
        (entry,) = await _trace(store, broken, fixed_in_time.id)
        assert entry["outcome"] == "retrying", entry  # not given up on
        assert await router.run_once() == 1  # due at once
        assert await _delivered_events(store, broken) == {fixed_in_time.id}
        (entry,) = await _trace(store, broken, fixed_in_time.id)
        assert entry["outcome"] == "routed"

        # With no change during its last attempt, an event still ends there.
        await _break(store, broken, _step_unknown)
        await store.insert_events([left_broken])
        await _due_now(store, [left_broken.id], attempts=MAX_ROUTE_ATTEMPTS - 1)
        assert await router.run_once() == 1
        (entry,) = await _trace(store, broken, left_broken.id)
        assert entry["outcome"] == "failed"
        assert (
            entry["steps"][0]["note"]
            == f"gave up after {MAX_ROUTE_ATTEMPTS} attempts; the event has no deliveries"
        )
        assert await _job(store, left_broken.id) is None

        # One more try, not one per change: a configuration that changes during every pass (and
        # stays broken) does not keep an event past the try after its last attempt.
        changing = _event(broken, "feature.used")
        await store.insert_events([changing])
        await _due_now(store, [changing.id], attempts=MAX_ROUTE_ATTEMPTS - 1)

        async def changed_once_compiled(*args: Any, **kwargs: Any) -> Any:
            compiled = await real(*args, **kwargs)
            await _set_a_secret(store, broken)  # a change, not the fix
            return compiled

        router.configs.get_many = changed_once_compiled  # type: ignore[method-assign]
        assert await router.run_once() == 1
        assert (await _trace(store, broken, changing.id))[0]["outcome"] == "retrying"
        assert await router.run_once() == 1  # the one more try, during which it changes again
        router.configs.get_many = real  # type: ignore[method-assign]
        (entry,) = await _trace(store, broken, changing.id)
        assert entry["outcome"] == "failed", entry
        assert await _job(store, changing.id) is None
    finally:
        await store.close()
