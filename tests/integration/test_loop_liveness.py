"""``/healthz`` answers 503 once a background loop has stopped or hangs, and only then.

A loop that hung without raising (a call that never returned) or whose task ended left events
unrouted or undelivered behind it while ``/healthz`` answered 200, so a liveness probe never had
the process restarted. The faults are a database call that never returns (a connection wedged
where no timeout reaches it) and a ``CancelledError`` escaping a library call; the rest is the
real server, database and receiver, with ``INGESTLAYER_LIVENESS_SECONDS`` set small. A busy
server with a slow destination, and one whose database is out of reach, stay 200.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestlayer import metrics
from ingestlayer.runtime import Runtime
from tests.support.freezing_proxy import FreezingProxy
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for
from tests.support.server import test_settings as settings_for

# Small, so that a silence is seen within seconds; the checks of a healthy server run for
# several times as long.
BOUND = 2.0


def wedged(real: Callable[..., Awaitable[Any]], gate: asyncio.Event, hit: list[int]) -> Any:
    """``real``, but every call waits for ``gate`` first: a call that does not return."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        hit.append(1)
        await gate.wait()
        return await real(*args, **kwargs)

    return call


def cancelled_once(real: Callable[..., Awaitable[Any]], hit: list[int]) -> Any:
    """``real``, but its first call raises the ``CancelledError`` a library let escape."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        hit.append(1)
        if len(hit) == 1:
            raise asyncio.CancelledError
        return await real(*args, **kwargs)

    return call


async def called(hit: list[int]) -> bool:
    return bool(hit)


async def health(server: RunningServer) -> tuple[int, str]:
    status, body = await server.request("GET", "/healthz")
    return status, body["error"]["message"] if status != 200 else ""


async def silences(server: RunningServer) -> dict[str, float]:
    """``ingestlayer_loop_silence_seconds`` by loop, as scraped from ``/metrics``."""
    async with server.session.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.labels["loop"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ingestlayer_loop_silence_seconds"
        for sample in family.samples
    }


async def green(server: RunningServer) -> bool:
    return (await health(server))[0] == 200


async def unhealthy(server: RunningServer) -> str | None:
    status, message = await health(server)
    return message if status == 503 else None


async def endpoint(server: RunningServer, url: str, **extra: Any) -> None:
    status, body = await server.request("POST", "/v1/endpoints", json={"url": url, "events": ["*"], **extra})
    assert status == 201, body


async def ingest_in_background(server: RunningServer, n: int) -> asyncio.Task[Any]:
    """An ingest whose answer the test does not wait for (its transaction may never end)."""
    return asyncio.create_task(server.ingest("order.placed", {"n": n}))


@pytest.mark.parametrize(
    ("method", "loop", "what"),
    [
        ("lease_route_jobs", "router", "the router"),
        ("lease_deliveries", "dispatcher", "the dispatcher's lease loop"),
        ("insert_events", "ingest", "the ingest group committer"),
        ("record_attempts", "attempt_writer", "the dispatcher's attempt writer"),
    ],
)
async def test_a_loop_that_hangs_fails_the_liveness_probe(
    db_url: str, receiver: Receiver, method: str, loop: str, what: str
) -> None:
    """The loop's call never returns: /healthz names the loop once it has been silent past the
    bound, and only it; the metric shows its silence; once the call returns, all is well."""
    server = await start_server(db_url, liveness_seconds=BOUND)
    gate = asyncio.Event()
    hit: list[int] = []
    pending: list[asyncio.Task[Any]] = []
    try:
        await endpoint(server, receiver.url + "/hook")
        assert await health(server) == (200, "")
        store = server.runtime.store
        setattr(store, method, wedged(getattr(store, method), gate, hit))
        if loop in ("ingest", "attempt_writer"):
            # Their loops wait for work without a timeout: only work reaches the wedged call.
            pending.append(await ingest_in_background(server, 1))
        await wait_for(lambda: called(hit), timeout=10)

        message = await wait_for(lambda: unhealthy(server), timeout=BOUND + 15)
        assert message.startswith(f"{what} has not run for "), message
        assert message.endswith("a restart is needed (stored events wait for it)"), message
        assert message.count("has not run") == 1, message  # the other loops go on
        seen = await silences(server)
        assert seen[loop] > BOUND, seen
        others = {name: s for name, s in seen.items() if name not in (loop, "clock")}
        assert all(s < BOUND for s in others.values()), seen

        gate.set()  # the call returns: the loop goes round again, and the probe is green
        await wait_for(lambda: green(server), timeout=15)
    finally:
        gate.set()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.wait_for(server.stop(), 30)


@pytest.mark.parametrize(
    ("method", "what"),
    [
        ("lease_route_jobs", "the router"),
        ("record_attempts", "the dispatcher's attempt writer"),
    ],
)
async def test_a_loop_that_ended_fails_the_liveness_probe(
    db_url: str, receiver: Receiver, method: str, what: str
) -> None:
    """A ``CancelledError`` from a call inside the loop is not an ``Exception``: it passed every
    handler and the supervisor, and the loop ended for good while /healthz said ok."""
    server = await start_server(db_url, liveness_seconds=BOUND)
    hit: list[int] = []
    try:
        await endpoint(server, receiver.url + "/hook")
        store = server.runtime.store
        setattr(store, method, cancelled_once(getattr(store, method), hit))
        if method == "record_attempts":
            await server.ingest("order.placed", {"n": 1})  # an attempt to record
        await wait_for(lambda: called(hit), timeout=10)

        # At once, not after the bound: an ended loop never comes back.
        message = await wait_for(lambda: unhealthy(server), timeout=5)
        assert message.startswith(f"{what} has stopped (cancelled) and has not run for "), message
        # It stays so: the remedy is a restart.
        _, body = await server.request("GET", "/healthz")
        assert body["error"]["message"].startswith(f"{what} has stopped"), body
    finally:
        await asyncio.wait_for(server.stop(), 30)


async def test_an_ingest_committer_that_ended_fails_the_liveness_probe(sqlite_url: str) -> None:
    """On SQLite the committer awaits each transaction itself: a ``CancelledError`` from one
    ended it, and every ingest after it waited for an answer for ever."""
    server = await start_server(sqlite_url, liveness_seconds=BOUND)
    hit: list[int] = []
    store = server.runtime.store
    store.insert_events = cancelled_once(store.insert_events, hit)  # type: ignore[method-assign]
    pending = await ingest_in_background(server, 1)
    try:
        await wait_for(lambda: called(hit), timeout=10)
        message = await wait_for(lambda: unhealthy(server), timeout=5)
        assert message.startswith("the ingest group committer has stopped (cancelled)"), message
        assert "has not run" in message and "router" not in message, message
    finally:
        await asyncio.wait_for(server.stop(), 30)
        await asyncio.gather(pending, return_exceptions=True)


async def test_a_busy_server_with_a_slow_destination_stays_live(db_url: str, receiver: Receiver) -> None:
    """Bursts of events routed and delivered, and a destination that answers only after twice
    the bound: no loop goes silent meanwhile (its sends run in tasks of their own)."""
    # A bound of its own, twice the others': a pass over a burst on a machine shared with other
    # tests must not read as silence (this test guards against false alarms, not for them).
    bound = 2 * BOUND
    slow = await Receiver().start()
    slow.default = Reply(delay=2 * bound)
    server = await start_server(db_url, liveness_seconds=bound)
    try:
        await endpoint(server, receiver.url + "/fast", events=["order.*"])
        await endpoint(server, slow.url + "/slow", events=["order.slow"])
        # The slow send first, so that it is in flight through the bursts (and its wait overlaps
        # theirs).
        status, _ = await server.ingest("order.slow", {"n": 0})
        assert status == 202
        statuses: list[int] = []
        for i in range(4):
            status, body = await server.request(
                "POST",
                "/v1/events",
                key=server.ingest_key,
                json={"batch": [{"type": "order.placed", "payload": {"i": i, "n": n}} for n in range(1000)]},
            )
            assert status == 202, body
            statuses.append((await health(server))[0])

        async def all_delivered() -> bool:
            statuses.append((await health(server))[0])
            # The bursts' 4,000 and the slow event, which order.* takes too.
            return len(receiver.requests) >= 4001 and any(r.answered_at for r in slow.requests)

        await wait_for(all_delivered, timeout=120, interval=0.1)
        assert set(statuses) == {200}, statuses
        seen = await silences(server)
        # (The clock's sync pauses a minute between passes, on purpose.)
        assert all(s < bound for name, s in seen.items() if name != "clock"), seen
    finally:
        await asyncio.wait_for(server.stop(), 30)
        await slow.stop()


@pytest.mark.parametrize("outage", ["frozen", "refused"])
async def test_a_server_whose_database_is_away_stays_live(
    pg_url: str, receiver: Receiver, outage: str
) -> None:
    """The loops retry, and keep going round: a restart would not bring the database back.
    Ingest and the attempt writer meet the outage too: events sent, an attempt to record."""
    proxy = await FreezingProxy.to(pg_url)
    # A frozen database holds each call for the timeout (a free connection, then the statement):
    # the bound is several times that, as the default (120 s) is for the default (30 s).
    bound = 3.0
    server = await start_server(proxy.url(pg_url), liveness_seconds=bound, database_timeout=0.3)
    receiver.default = Reply(delay=0.5)
    try:
        await endpoint(server, receiver.url + "/hook")
        _, sent = await server.ingest("order.placed", {"n": 1})
        await wait_for(lambda: asyncio.sleep(0, bool(receiver.requests)), timeout=15)  # in flight
        if outage == "frozen":
            proxy.flowing.clear()
        else:
            await proxy.refuse()
        statuses: list[int] = []
        most: dict[str, float] = {}
        # Twice the bound: a loop that stopped going round while the database was away would
        # be silent past it (and /healthz 503) for the second half.
        until = time.monotonic() + 2 * bound

        async def outlasted() -> bool:
            statuses.append((await health(server))[0])
            status, body = await server.ingest("order.placed", {"n": 2})
            assert status == 503, body
            for name, s in (await silences(server)).items():
                most[name] = max(most.get(name, 0.0), s)
            return time.monotonic() > until

        await wait_for(outlasted, timeout=60, interval=0.1)
        assert set(statuses) == {200}, statuses
        assert most["attempt_writer"] > 0, most  # it was retrying, not waiting for work
        await proxy.restore()

        async def delivered() -> bool:
            _, ev = await server.request("GET", f"/v1/events/{sent['id']}")
            return [d["status"] for d in ev["deliveries"]] == ["delivered"]

        await wait_for(delivered, timeout=30)
        assert (await health(server))[0] == 200
    finally:
        await proxy.restore()
        await asyncio.wait_for(server.stop(), 30)
        await proxy.close()


@pytest.mark.parametrize(
    ("api", "worker", "loops"),
    [
        (True, False, {"ingest"}),
        (False, True, {"router", "dispatcher", "attempt_writer"}),
        (True, True, {"ingest", "router", "dispatcher", "attempt_writer"}),
    ],
)
async def test_only_the_loops_a_process_runs_count(
    sqlite_url: str, api: bool, worker: bool, loops: set[str]
) -> None:
    """``api`` runs no router or dispatcher, ``worker`` no ingest committer: their silence is
    not a failure, and they have no series."""
    rt = Runtime(settings_for(sqlite_url, liveness_seconds=BOUND), api=api, worker=worker)
    await rt.start()
    try:
        assert set(rt.liveness.watched()) == loops
        assert rt.liveness.problems() == []
        (family,) = [f for f in metrics.REGISTRY.collect() if f.name == "ingestlayer_loop_silence_seconds"]
        assert {sample.labels["loop"] for sample in family.samples} == loops
    finally:
        await rt.shutdown()
