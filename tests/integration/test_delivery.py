"""Events reach a real receiver signed, are retried on failure, go dead, and can be replayed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from ingestlayer.sdk.webhooks import WebhookVerificationError
from tests.support.receiver import Receiver, Reply, serve_app, serve_handler
from tests.support.refusals import refuse_inserts
from tests.support.server import RunningServer, start_server, wait_for

SECRET = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}


def webhook_pipeline(url: str, **settings: Any) -> dict[str, Any]:
    retry = settings.pop("retry", FAST)
    return {
        "pipelines": [
            {
                "name": "features",
                "source": {"match": ["feature.*"]},
                "steps": [{"filter.match": "feature in {export, api, webhook}"}],
                "destinations": [{"webhook.out": {"url": url + "/hooks", **settings}, "retry": retry}],
            }
        ]
    }


async def delivery_of(server: RunningServer, event_id: str) -> dict[str, Any]:
    status, body = await server.request("GET", f"/v1/events/{event_id}")
    assert status == 200
    assert len(body["deliveries"]) == 1, body
    status, d = await server.request("GET", f"/v1/deliveries/{body['deliveries'][0]['id']}")
    assert status == 200
    result: dict[str, Any] = d
    return result


async def final_delivery(server: RunningServer, event_id: str, timeout: float = 10) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        status, body = await server.request("GET", f"/v1/events/{event_id}")
        if status != 200 or not body["deliveries"]:
            return None
        d = await delivery_of(server, event_id)
        return d if d["status"] in ("delivered", "dead") else None

    result: dict[str, Any] = await wait_for(done, timeout)
    return result


async def test_signed_delivery_verifies_at_the_receiver(server: RunningServer, receiver: Receiver) -> None:
    await server.set_secret("acme-hooks", SECRET)
    await server.apply(webhook_pipeline(receiver.url, auth="hmac", secret="ref:acme-hooks"))
    status, body = await server.ingest("feature.used", {"user_id": "u1", "feature": "csv.export", "count": 1})
    assert status == 202 and body["duplicate"] is False
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert req.path == "/hooks"
    # What a receiver checks: our own verify(), and the documented headers.
    event = req.verify(SECRET)
    assert event == {
        "id": body["id"],
        "type": "feature.used",
        "occurred_at": event["occurred_at"],
        "payload": {"user_id": "u1", "feature": "csv.export", "count": 1},
    }
    h = req.headers
    assert h["Content-Type"] == "application/json"
    assert h["User-Agent"].startswith("ingestlayer/")
    assert h["X-Ingestlayer-Event"] == "feature.used"
    assert h["X-Ingestlayer-Delivery"] == d["id"]
    assert h["X-Ingestlayer-Attempt"] == "1"
    assert "webhook-signature" not in {k.lower() for k in h}
    with pytest.raises(WebhookVerificationError):
        req.verify("whsec_d3Jvbmctc2VjcmV0")
    # The attempt log has what the dashboard shows.
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["response_excerpt"] == '{"received": true}'
    assert attempt["duration_ms"] >= 0


async def test_filtered_events_are_not_delivered(server: RunningServer, receiver: Receiver) -> None:
    await server.apply(webhook_pipeline(receiver.url))
    _, kept = await server.ingest("feature.used", {"feature": "api"})
    _, dropped = await server.ingest("feature.used", {"feature": "csv.import"})
    await final_delivery(server, kept["id"])
    status, body = await server.request("GET", f"/v1/events/{dropped['id']}")
    assert status == 200
    assert body["deliveries"] == []
    assert body["trace"][0]["outcome"] == "dropped"
    assert "filter.match" in body["trace"][0]["steps"][0]["reason"]
    assert [r.json()["id"] for r in receiver.requests] == [kept["id"]]


async def test_standard_webhooks_signature_accepted_by_reference_library(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.set_secret("std", SECRET)
    await server.apply(webhook_pipeline(receiver.url, auth="hmac", secret="ref:std", signing="standard"))
    _, body = await server.ingest("feature.used", {"feature": "webhook"})
    d = await final_delivery(server, body["id"])
    req = receiver.requests[0]
    payload = Webhook(SECRET).verify(req.body, req.headers)
    assert payload["id"] == body["id"]
    assert req.headers["webhook-id"] == d["id"]
    req.verify(SECRET)  # our header is sent alongside


async def test_bearer_auth_and_data_format(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOKEN", "tok-123")
    await server.apply(webhook_pipeline(receiver.url, auth="bearer", secret="env:ACME_TOKEN", format="data"))
    _, body = await server.ingest("feature.used", {"feature": "api", "n": 2})
    await final_delivery(server, body["id"])
    req = receiver.requests[0]
    assert req.headers["Authorization"] == "Bearer tok-123"
    assert req.json() == {"type": "feature.used", "data": {"feature": "api", "n": 2}}


async def test_retries_until_the_receiver_recovers(server: RunningServer, receiver: Receiver) -> None:
    receiver.fail_times(2, status=503)
    await server.apply(webhook_pipeline(receiver.url))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [503, 503, 200]
    assert [a["n"] for a in d["attempts"]] == [1, 2, 3]
    # One delivery id across retries, attempt numbers counting up: receivers can dedupe.
    assert {r.headers["X-Ingestlayer-Delivery"] for r in receiver.requests} == {d["id"]}
    assert [r.headers["X-Ingestlayer-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert d["attempts"][0]["next_retry_at"] is not None
    assert d["attempts"][-1]["next_retry_at"] is None


async def test_dead_after_the_schedule_then_replay_delivers(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.default = Reply(status=500, body=b"boom " * 400)
    await server.apply(webhook_pipeline(receiver.url))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "dead"
    assert len(d["attempts"]) == 4  # the schedule's length
    assert all(a["status_code"] == 500 for a in d["attempts"])
    assert len(d["attempts"][0]["response_excerpt"].encode()) <= 1024
    status, listed = await server.request("GET", "/v1/deliveries?status=dead")
    assert [x["id"] for x in listed["data"]] == [d["id"]]

    receiver.default = Reply(status=200)
    status, replay = await server.request("POST", f"/v1/deliveries/{d['id']}/replay")
    assert status == 200 and replay["replayed"] == [d["id"]]
    after = await final_delivery(server, body["id"])
    assert after["id"] == d["id"] and after["status"] == "delivered"
    assert [a["n"] for a in after["attempts"]] == [1, 2, 3, 4, 5]
    assert receiver.requests[-1].headers["X-Ingestlayer-Attempt"] == "5"


async def test_bulk_replay_of_dead_deliveries(server: RunningServer, receiver: Receiver) -> None:
    receiver.default = Reply(status=410)
    await server.apply(webhook_pipeline(receiver.url, retry={"schedule": [0]}))
    ids = []
    for i in range(5):
        _, body = await server.ingest("feature.used", {"feature": "api", "i": i})
        ids.append(body["id"])
    for eid in ids:
        assert (await final_delivery(server, eid))["status"] == "dead"
    receiver.default = Reply(status=204)
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"status": ["dead"]})
    assert status == 200 and body["count"] == 5
    for eid in ids:
        assert (await final_delivery(server, eid))["status"] == "delivered"


async def test_retry_after_is_honoured(server: RunningServer, receiver: Receiver) -> None:
    receiver.plan = [Reply(status=429, headers={"Retry-After": "1"})]
    await server.apply(webhook_pipeline(receiver.url))
    _, body = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    first, second = receiver.requests
    # The schedule says 0.05 s; the server asked for 1 s, and got at least that.
    assert second.at - first.at >= 0.95


class RateLimited:
    """A receiver that takes ``rate`` requests per ``window`` seconds (fixed windows) and answers
    the rest 429 with the time left in the window as ``Retry-After``, as Discord's and Slack's
    webhooks do."""

    def __init__(self, rate: int, window: float) -> None:
        self.rate, self.window = rate, window
        self.windows: dict[int, int] = {}
        self.delivered: list[str] = []
        self.too_many = 0

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        n = int(now // self.window)
        self.windows[n] = self.windows.get(n, 0) + 1
        if self.windows[n] > self.rate:
            self.too_many += 1
            left = (n + 1) * self.window - now
            return web.Response(status=429, headers={"Retry-After": f"{left:.3f}"})
        self.delivered.append(request.headers["X-Ingestlayer-Delivery"])
        return web.Response(status=200)


async def test_a_rate_limited_receiver_gets_every_delivery_without_spending_them_on_429s(
    server: RunningServer,
) -> None:
    """40 events to a receiver that takes 6 requests a half second, with 5 attempts each: a 429
    used to delay only its own delivery, the others kept coming, each spent an attempt on its own
    429, and 10 of the 40 ended dead. The destination is now paused until the time it asks for,
    then sent fewer at once: every delivery arrives."""
    limited = RateLimited(rate=6, window=0.5)
    url, runner = await serve_handler(limited.handle)
    try:
        retry = {"schedule": [0, 0.1, 0.1, 0.1, 0.1], "jitter": 0}
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "limited",
                        "source": {"match": ["burst.*"]},
                        "destinations": [{"webhook.out": {"url": url + "/hook"}, "retry": retry}],
                    }
                ]
            }
        )
        await ingest_batch(server, "burst.happened", 40)

        async def settled() -> dict[str, int] | None:
            _, body = await server.request("GET", "/v1/deliveries?limit=1")
            counts = {s: body["counts"].get(s, 0) for s in ("delivered", "dead")}
            return counts if counts["delivered"] + counts["dead"] == 40 else None

        counts = await wait_for(settled, 60)
        assert counts == {"delivered": 40, "dead": 0}, (counts, limited.too_many)
        assert len(set(limited.delivered)) == 40
    finally:
        await runner.cleanup()


async def test_timeout_counts_as_failure(server: RunningServer, receiver: Receiver) -> None:
    # The retry, answered at once, must beat the timeout even on a loaded machine.
    receiver.plan = [Reply(status=200, delay=1.5)]
    await server.apply(webhook_pipeline(receiver.url, timeout=1.0))
    _, body = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert "timed out" in d["attempts"][0]["error"]
    assert d["attempts"][1]["status_code"] == 200


async def test_connection_refused_is_retried_then_dead(server: RunningServer) -> None:
    await server.apply(webhook_pipeline("http://127.0.0.1:9", retry={"schedule": [0, 0.01]}))
    _, body = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "dead"
    assert all("connection error" in a["error"] for a in d["attempts"])


async def test_when_conditions_fan_out(server: RunningServer, receiver: Receiver) -> None:
    doc = {
        "pipelines": [
            {
                "name": "plans",
                "source": {"match": ["feature.used"]},
                "destinations": [
                    {"webhook.out": {"url": receiver.url + "/free", "when": 'plan = "free"'}},
                    {"webhook.out": {"url": receiver.url + "/all"}},
                ],
            }
        ]
    }
    await server.apply(doc)
    await server.ingest("feature.used", {"plan": "free"})
    await server.ingest("feature.used", {"plan": "pro"})
    await wait_for(lambda: _count(receiver, 3))
    await asyncio.sleep(0.1)  # nothing more arrives
    paths = sorted(r.path for r in receiver.requests)
    assert paths == ["/all", "/all", "/free"]


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


async def test_a_destination_concurrency_limit_holds_and_others_go_on(
    server: RunningServer, receiver: Receiver
) -> None:
    """`concurrency: 2` on one destination: never more than two of its requests at once, all
    of its deliveries made, and another destination of the same events not held back."""
    receiver.default = Reply(delay=0.2)
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "fan",
                    "source": {"match": ["slow.*"]},
                    "destinations": [
                        {"webhook.out": {"url": receiver.url + "/limited"}, "concurrency": 2, "retry": FAST},
                        {"webhook.out": {"url": receiver.url + "/open"}, "retry": FAST},
                    ],
                }
            ]
        }
    )
    _, shown = await server.request("GET", "/v1/destinations")
    assert sorted(d["concurrency"] for d in shown["data"] if d["concurrency"]) == [2]
    status, body = await server.request(
        "POST", "/v1/events", key=server.ingest_key, json={"batch": [{"type": "slow.e"} for _ in range(10)]}
    )
    assert status == 202, body

    async def all_delivered() -> bool:
        _, page = await server.request("GET", "/v1/deliveries?limit=100")
        return len(page["data"]) == 20 and all(d["status"] == "delivered" for d in page["data"])

    await wait_for(all_delivered, timeout=15)
    paths = [r.path for r in receiver.requests]
    assert paths.count("/limited") == 10 and paths.count("/open") == 10
    assert receiver.max_inflight["/limited"] == 2
    assert receiver.max_inflight["/open"] > 2  # the limit is that destination's alone

    # A limit that is not a whole number from 1 up is refused with its path.
    status, body = await server.request(
        "POST",
        "/v1/apply",
        json={
            "document": {
                "pipelines": [
                    {
                        "name": "bad",
                        "source": {"match": ["*"]},
                        "destinations": [{"webhook.out": {"url": receiver.url}, "concurrency": 0}],
                    }
                ]
            }
        },
    )
    assert status == 422 and body["error"]["field"].endswith("concurrency"), body


class SlowReceiver:
    """A receiver that answers after ``delay`` seconds, or not until ``release`` is set."""

    def __init__(self, delay: float | None = None) -> None:
        self.delay = delay
        self.release = asyncio.Event()
        self.now = 0
        self.answered = 0
        self.seen_at_arrival: list[int] = []  # how many were in flight as each request arrived
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.now += 1
        self.seen_at_arrival.append(self.now)
        try:
            if self.delay is None:
                await self.release.wait()
            else:
                await asyncio.sleep(self.delay)
        finally:
            self.now -= 1
        self.answered += 1
        return web.Response(status=200)

    async def __aenter__(self) -> SlowReceiver:
        app = web.Application()
        app.router.add_post("/slow", self._handle)
        base, self._runner = await serve_app(app)
        self.url = base + "/slow"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def two_destinations(slow_url: str, fine_url: str, **slow_extra: Any) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "slow",
                "source": {"match": ["slow.*"]},
                "destinations": [{"webhook.out": {"url": slow_url}, "retry": FAST, **slow_extra}],
            },
            {
                "name": "fine",
                "source": {"match": ["fine.*"]},
                "destinations": [{"webhook.out": {"url": fine_url}, "retry": FAST}],
            },
        ]
    }


async def ingest_batch(server: RunningServer, type_: str, n: int) -> None:
    batch = [{"type": type_, "payload": {"i": i}} for i in range(n)]
    status, body = await server.request("POST", "/v1/events", key=server.ingest_key, json={"batch": batch})
    assert status == 202, body


@pytest.mark.parametrize("own_concurrency", [None, 100], ids=["default", "concurrency-100"])
async def test_a_hanging_receiver_leaves_slots_to_other_destinations(
    db_url: str, receiver: Receiver, own_concurrency: int | None
) -> None:
    """A receiver that never answers, with a backlog, holds at most a quarter of the process's
    slots (4 of 16: none of its attempts has ended yet), and another destination's deliveries
    are made meanwhile, not after its attempts time out. Its project setting `concurrency: 100`
    does not change that: it took all 16 slots."""
    extra = {} if own_concurrency is None else {"concurrency": own_concurrency}
    async with SlowReceiver() as stuck:
        server = await start_server(db_url, delivery_concurrency=16)
        try:
            await server.apply(two_destinations(stuck.url, receiver.url + "/fine", **extra))
            await ingest_batch(server, "slow.e", 40)

            async def four_hanging() -> bool:
                return stuck.now == 4

            await wait_for(four_hanging)
            await ingest_batch(server, "fine.e", 10)

            async def fine_delivered() -> bool:
                return len(receiver.requests) == 10

            # webhook.out gives up on a request after 10 s: these must arrive while the 4 hang.
            await wait_for(fine_delivered, timeout=8)
            assert (stuck.now, max(stuck.seen_at_arrival), stuck.answered) == (4, 4, 0)
            _, page = await server.request("GET", "/v1/deliveries?status=pending&limit=100")
            assert len(page["data"]) == 36  # the rest of its backlog waits in the table, due
        finally:
            # Answered first, or the server's stop waits out its shutdown grace for the four.
            stuck.release.set()
            await server.stop()


async def test_a_project_whose_endpoints_hang_leaves_other_projects_room(
    db_url: str, receiver: Receiver
) -> None:
    """Four destinations of one project that hang from their first request, each with a
    backlog, held every slot of a process (a quarter each: 4 of 16) until their first attempts
    timed out, and another project's deliveries waited behind them. A project now holds at most
    three quarters of the slots, whatever its number of destinations."""
    async with SlowReceiver() as stuck:
        server = await start_server(db_url, delivery_concurrency=16)
        try:
            hanging = [
                {
                    "name": f"hang-{i}",
                    "source": {"match": ["slow.*"]},
                    "destinations": [{"webhook.out": {"url": stuck.url}, "retry": FAST}],
                }
                for i in range(4)
            ]
            await server.apply({"pipelines": hanging})
            await ingest_batch(server, "slow.e", 10)  # 40 deliveries

            async def hanging() -> bool:
                return stuck.now >= 12

            await wait_for(hanging)
            _, other_ingest, other_admin = await server.runtime.store.create_project("other")
            status, body = await server.request(
                "POST",
                "/v1/apply",
                key=other_admin,
                json={"document": two_destinations(receiver.url + "/unused", receiver.url + "/fine")},
            )
            assert status == 200, body
            for i in range(5):
                status, body = await server.request(
                    "POST", "/v1/events", key=other_ingest, json={"type": "fine.e", "payload": {"i": i}}
                )
                assert status == 202, body

            async def fine_delivered() -> bool:
                return len(receiver.requests) == 5

            # webhook.out gives up on a request after 10 s: these must arrive while the 12 hang.
            await wait_for(fine_delivered, timeout=8)
            assert (stuck.now, max(stuck.seen_at_arrival), stuck.answered) == (12, 12, 0)
        finally:
            # Answered first, or the server's stop waits out its shutdown grace for the twelve.
            stuck.release.set()
            await server.stop()


async def in_flight_at_arrivals(
    db_url: str, receiver: Receiver, *, delay: float, events: int, slow_seconds: float, timeout: float
) -> list[int]:
    """Deliver ``events`` to a receiver answering after ``delay`` from a server of 16 slots:
    how many of its requests were in flight as each arrived, once all were answered."""
    async with SlowReceiver(delay=delay) as slow:
        server = await start_server(db_url, delivery_concurrency=16, slow_destination_seconds=slow_seconds)
        try:
            await server.apply(two_destinations(slow.url, receiver.url + "/fine"))
            await ingest_batch(server, "slow.e", events)

            async def all_answered() -> bool:
                return slow.answered == events

            await wait_for(all_answered, timeout=timeout)
            return list(slow.seen_at_arrival)
        finally:
            await server.stop()


async def test_a_slow_destination_is_held_to_a_few_slots(db_url: str, receiver: Receiver) -> None:
    """Until one of its attempts has ended, a destination gets a quarter of the slots (4 of 16);
    once one took longer than slow_destination_seconds, no new slot until it has fewer than an
    eighth of them (2 of 16) in flight; every delivery is made."""
    # Answers slow enough that the whole first wave is in flight at once, however slowly a
    # loaded machine opens its connections.
    seen = await in_flight_at_arrivals(db_url, receiver, delay=0.5, events=14, slow_seconds=0.05, timeout=15)
    first_wave, later = seen[:4], seen[4:]
    assert max(first_wave) == 4  # nothing has ended yet: a quarter of the slots
    assert later and max(later) <= 2


async def test_a_destination_that_answers_gets_three_quarters_of_the_slots(
    db_url: str, receiver: Receiver
) -> None:
    """A quarter of the slots only until its first attempts end: a receiver answering in time
    (0.3 s, under slow_destination_seconds) then has up to three quarters (12 of 16) in flight."""
    seen = await in_flight_at_arrivals(db_url, receiver, delay=0.3, events=40, slow_seconds=2.0, timeout=20)
    assert max(seen[:4]) == 4
    assert max(seen) == 12


async def test_a_receiver_echoing_credentials_does_not_put_them_in_the_log(server: RunningServer) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"you_sent": dict(request.headers)}, status=500)

    app = web.Application()
    app.router.add_post("/echo", echo)
    base, runner = await serve_app(app)
    token, api_key = "tok-SUPER-SECRET-123456", "key-ALSO-SECRET-654321"
    try:
        await server.set_secret("echo-token", token)
        await server.set_secret("echo-api-key", api_key)
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "echoed",
                        "source": {"match": ["echo.*"]},
                        "destinations": [
                            {
                                "webhook.out": {
                                    "url": base + "/echo",
                                    "auth": "bearer",
                                    "secret": "ref:echo-token",
                                    "secret_headers": {"X-Api-Key": "ref:echo-api-key"},
                                },
                                "retry": {"schedule": [0], "jitter": 0},
                            }
                        ],
                    }
                ]
            }
        )
        _, ev = await server.ingest("echo.me", {"n": 1})
        d = await final_delivery(server, ev["id"])
        (attempt,) = d["attempts"]
        assert attempt["status_code"] == 500 and "you_sent" in attempt["response_excerpt"]
        assert "Bearer <redacted>" in attempt["response_excerpt"]
        assert '"X-Api-Key": "<redacted>"' in attempt["response_excerpt"]  # sent, then scrubbed
        for path in (
            f"/v1/deliveries/{d['id']}",
            f"/v1/events/{ev['id']}",
            "/v1/deliveries",
            "/v1/destinations",
        ):
            _, body = await server.request("GET", path)
            assert token not in str(body) and api_key not in str(body), path
        # A credential header is a reference, never the value itself.
        status, body = await server.request(
            "POST",
            "/v1/destinations",
            json={
                "name": "inline",
                "webhook.out": {"url": "https://a.example", "secret_headers": {"X-Api-Key": "k1"}},
            },
        )
        assert status == 422 and body["error"]["field"].endswith("secret_headers"), body
    finally:
        await runner.cleanup()


async def test_a_receiver_answering_nul_bytes_is_recorded_and_not_sent_again(
    server: RunningServer, receiver: Receiver
) -> None:
    """PostgreSQL cannot store NUL in text: an answer holding one failed the recording of every
    attempt in its batch, whose deliveries stayed leased and were sent again once the leases
    ran out (the one with the NUL every time)."""
    receiver.plan = [Reply(status=503, body=b"busy\x00\x00retry")]
    receiver.default = Reply(status=200, body=b"\x00\x01binary ack")
    await server.apply(webhook_pipeline(receiver.url))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [503, 200]
    assert d["attempts"][0]["response_excerpt"] == "busy\ufffd\ufffdretry"
    assert d["attempts"][1]["response_excerpt"] == "\ufffd\x01binary ack"
    assert len(receiver.requests) == 2


async def test_an_attempt_the_database_refuses_leaves_the_others_recorded(
    server: RunningServer, receiver: Receiver
) -> None:
    """Attempts are recorded in batches; when the database refuses one row, the others of its
    batch are recorded on their own instead of staying leased (to be sent again)."""
    store = server.runtime.store
    # The database refuses the attempts of one event type.
    await refuse_inserts(
        store, "attempts", "(SELECT event_type FROM deliveries WHERE id = NEW.delivery_id) = 'feature.poison'"
    )
    # Answered together, so that their attempts are recorded together.
    receiver.default = Reply(status=200, delay=0.3)
    await server.apply(webhook_pipeline(receiver.url))
    events = [{"type": "feature.used", "payload": {"feature": "export", "i": i}} for i in range(15)]
    events.insert(7, {"type": "feature.poison", "payload": {"feature": "export"}})
    status, body = await server.request("POST", "/v1/events", key=server.ingest_key, json={"batch": events})
    assert status == 202, body

    async def fifteen_delivered() -> bool:
        _, page = await server.request("GET", "/v1/deliveries?status=delivered&limit=100")
        return len(page["data"]) == 15

    await wait_for(fifteen_delivered)
    _, page = await server.request("GET", "/v1/deliveries?limit=100")
    by_type: dict[str, list[str]] = {}
    for d in page["data"]:
        by_type.setdefault(d["event_type"], []).append(d["status"])
    assert by_type == {"feature.used": ["delivered"] * 15, "feature.poison": ["delivering"]}
    ids = [r.headers["X-Ingestlayer-Delivery"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 16


async def test_bulk_replay_answers_at_most_limit(server: RunningServer, receiver: Receiver) -> None:
    """``limit`` bounds one request; a full page gives ``next_after``, where the next one starts.
    The receiver still fails, so the replayed deliveries are dead again before the next request:
    sending the same filter again took the same ones, page after page."""
    receiver.default = Reply(status=410)
    await server.apply(webhook_pipeline(receiver.url, retry={"schedule": [0]}))
    ids = []
    for i in range(3):
        _, body = await server.ingest("feature.used", {"feature": "api", "i": i})
        ids.append(body["id"])
    dead = sorted([(await final_delivery(server, eid))["id"] for eid in ids])
    two_dead = {"status": ["dead"], "limit": 2}
    status, body = await server.request("POST", "/v1/deliveries/replay", json=two_dead)
    assert status == 200 and body == {"replayed": dead[:2], "count": 2, "next_after": dead[1]}

    async def dead_again() -> bool | None:
        _, page = await server.request("GET", "/v1/deliveries?status=dead")
        return {d["id"]: d["attempt_count"] for d in page["data"]} == {
            dead[0]: 2,
            dead[1]: 2,
            dead[2]: 1,
        } or None

    await wait_for(dead_again)
    status, body = await server.request(
        "POST", "/v1/deliveries/replay", json={**two_dead, "after": body["next_after"]}
    )
    assert status == 200 and body == {"replayed": dead[2:], "count": 1, "next_after": None}
    status, body = await server.request("POST", "/v1/deliveries/replay", json={**two_dead, "after": "dlv_1"})
    assert status == 422 and body["error"]["field"] == "after"
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"limit": 100_001})
    assert status == 422


async def test_slow_destinations_together_leave_half_the_slots(db_url: str, receiver: Receiver) -> None:
    """Eight receivers slow to answer (one project can make eight), an eighth of the slots each
    (2 of 16), held every slot between them. Known to be slow, together they now hold half (8 of
    16) at most, and another destination's deliveries go on beside them."""
    in_flight, seen, answered = 0, [], 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, answered
        await request.read()
        in_flight += 1
        seen.append(in_flight)
        try:
            await asyncio.sleep(0.4)
        finally:
            in_flight -= 1
        answered += 1
        return web.Response(status=200)

    base, runner = await serve_handler(slow)
    server = await start_server(db_url, delivery_concurrency=16, slow_destination_seconds=0.05)
    try:
        destinations = [{"webhook.out": {"url": f"{base}/slow/{i}"}, "retry": FAST} for i in range(8)]
        await server.apply(
            {
                "pipelines": [
                    {"name": "slow", "source": {"match": ["slow.*"]}, "destinations": destinations},
                    {
                        "name": "fine",
                        "source": {"match": ["fine.*"]},
                        "destinations": [{"webhook.out": {"url": receiver.url + "/fine"}, "retry": FAST}],
                    },
                ]
            }
        )
        await ingest_batch(server, "slow.e", 1)  # one delivery to each: each is known slow after it

        async def first_answered() -> bool:
            return answered == 8

        await wait_for(first_answered, timeout=10)
        await ingest_batch(server, "slow.e", 4)  # 32 more, 4 to each
        await ingest_batch(server, "fine.e", 20)

        async def all_answered() -> bool:
            return answered == 40 and len(receiver.requests) == 20

        await wait_for(all_answered, timeout=30)
        assert len(seen) == 40
        assert max(seen[8:]) == 8, seen  # 16 before: 2 each
    finally:
        await server.stop()
        await runner.cleanup()
