"""A delivery, or a destination, whose stored row cannot be used fails its own attempts, each
recorded with why, on the destination's retry schedule and dead after it (so replay delivers
once the operator fixes it); every other destination's deliveries go on meanwhile.

Before, a destination whose stored configuration did not parse failed the reading of every
destination its lease needed: the whole lease was handed back and taken again each second, and
no delivery leased with it went out. A delivery whose body did not parse, or a destination whose
stored ``concurrency`` was not a number, raised past the attempt's handling: the delivery stayed
leased, no attempt recorded, and was taken again each time its lease ran out, for ever, with a
traceback each time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select, update

from ingestlayer.ids import new_id
from ingestlayer.secretbox import SecretBox
from ingestlayer.store.schema import deliveries, destinations
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05], "jitter": 0}
GOOD_DELIVERIES = 6


@dataclass(frozen=True)
class Broken:
    """One way a stored row cannot be used: what is done to the row, and the words of the error
    each attempt records."""

    destination: Callable[[dict[str, Any]], dict[str, Any]] | None  # new column values from its config
    body: str | None  # the delivery's stored body, if that is what is broken
    error: str
    # Whether its own retry schedule can still be read (else the default one applies, whose
    # second attempt is a minute after the first).
    own_schedule: bool = True


CASES = {
    "configuration not JSON": Broken(
        lambda cfg: {"config": orjson.dumps(cfg).decode()[:-7]},
        None,
        "its stored configuration cannot be read:",
        own_schedule=False,
    ),
    "configuration not an object": Broken(
        lambda cfg: {"config": '["webhook.out"]'},
        None,
        "its stored configuration is not a JSON object",
        own_schedule=False,
    ),
    "concurrency not a number": Broken(
        lambda cfg: {"config": orjson.dumps({**cfg, "concurrency": "4"}).decode()},
        None,
        "invalid configuration: concurrency:",
    ),
    "kind this version does not know": Broken(
        lambda cfg: {"kind": "carrier-pigeon"},
        None,
        "unknown destination kind 'carrier-pigeon'",
    ),
    "body not JSON": Broken(
        None,
        '{"id": "evt_1", "type": "order.paid", "payl',
        "the delivery's stored body cannot be read (not JSON:",
    ),
    "body not an event": Broken(
        None, '["order.paid"]', "the delivery's stored body cannot be read (a JSON list, not an event object)"
    ),
}


async def _apply(server: RunningServer, **urls: str) -> dict[str, str]:
    """A pipeline sending to a webhook.out at each URL (named by its keyword), retried on FAST:
    the destinations' ids, by name."""
    destinations = [{"name": name, "webhook.out": {"url": url}, "retry": FAST} for name, url in urls.items()]
    await server.apply(
        {"pipelines": [{"name": "p", "source": {"match": ["order.*"]}, "destinations": destinations}]}
    )
    return await _destination_ids(server)


async def _destination_ids(server: RunningServer) -> dict[str, str]:
    status, listed = await server.request("GET", "/v1/destinations")
    assert status == 200, listed
    return {d["name"]: d["id"] for d in listed["data"]}


async def _add_deliveries(
    server: RunningServer, rows: list[tuple[str, str, float]], retry_base: int = 0
) -> list[str]:
    """Deliveries due as the router leaves them: (destination id, body, due_at) each."""
    made = []
    now = time.time()
    async with server.runtime.store.engines.write.begin() as conn:
        for destination_id, body, due_at in rows:
            did = new_id("dlv")
            await conn.execute(
                insert(deliveries).values(
                    id=did,
                    project_id=server.project_id,
                    event_id=new_id("evt"),
                    event_type="order.paid",
                    pipeline_id="pip_x",
                    destination_id=destination_id,
                    status="pending",
                    attempts=0,
                    retry_base=retry_base,
                    body=body,
                    due_at=due_at,
                    created_at=now,
                    updated_at=now,
                )
            )
            made.append(did)
    return made


async def _set_destination(server: RunningServer, destination_id: str, values: dict[str, Any]) -> None:
    async with server.runtime.store.engines.write.begin() as conn:
        await conn.execute(
            update(destinations)
            .where(destinations.c.id == destination_id)
            .values(**values, updated_at=time.time())
        )


async def _stored_destination(server: RunningServer, destination_id: str) -> dict[str, Any]:
    async with server.runtime.store.engines.read.connect() as conn:
        row = (await conn.execute(select(destinations).where(destinations.c.id == destination_id))).one()
    return dict(row._mapping)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_row_that_cannot_be_used_fails_its_own_attempts_and_holds_up_nothing(
    case: str, server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    broken = CASES[case]
    caplog.set_level(logging.INFO, logger="ingestlayer.delivery")
    ids = await _apply(server, good=receiver.url + "/good", bad=receiver.url + "/bad")
    good, bad = ids["good"], ids["bad"]
    stored = await _stored_destination(server, bad)
    if broken.destination is not None:
        await _set_destination(server, bad, broken.destination(orjson.loads(stored["config"])))
    body = orjson.dumps({"id": "evt_1", "type": "order.paid", "payload": {"n": 1}}).decode()
    now = time.time()
    # The broken one is the oldest due: it comes first in every lease, with the others.
    [stuck] = await _add_deliveries(server, [(bad, broken.body or body, now - 60)])
    flowing = await _add_deliveries(server, [(good, body, now)] * GOOD_DELIVERIES)
    server.runtime.dispatcher.wake.set()

    async def finished(delivery_id: str) -> dict[str, Any] | None:
        found = await server.runtime.store.get_delivery(server.project_id, delivery_id)
        assert found is not None
        return found if found["status"] in ("delivered", "dead") else None

    async def failed_once(delivery_id: str) -> dict[str, Any] | None:
        found = await server.runtime.store.get_delivery(server.project_id, delivery_id)
        assert found is not None
        return found if found["status"] == "retrying" else None

    for delivery_id in flowing:
        assert (await wait_for(lambda d=delivery_id: finished(d)))["status"] == "delivered"
    if broken.own_schedule:
        ended = await wait_for(lambda: finished(stuck))
        assert ended["status"] == "dead", ended
        assert len(ended["attempt_log"]) == len(FAST["schedule"]), ended
    else:
        ended = await wait_for(lambda: failed_once(stuck))
        assert len(ended["attempt_log"]) == 1, ended
        assert ended["due_at"] > time.time() + 30, ended  # the default schedule's minute, not at once
    attempts = ended["attempt_log"]
    for attempt in attempts:
        assert broken.error in attempt["error"], attempt
        assert attempt["status_code"] is None
    assert broken.error in ended["last_error"]
    assert [r.path for r in receiver.requests].count("/good") == GOOD_DELIVERIES
    assert "/bad" not in [r.path for r in receiver.requests]
    # A line for each attempt, none with a traceback.
    about = [r for r in caplog.records if stuck in r.getMessage()]
    assert len(about) == len(attempts), [r.getMessage() for r in about]
    assert not [r for r in caplog.records if r.exc_info], caplog.text

    # Fixed by the operator, the delivery is replayed and goes out.
    if broken.destination is not None:
        await _set_destination(server, bad, {"config": stored["config"], "kind": stored["kind"]})
    else:
        async with server.runtime.store.engines.write.begin() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id == stuck).values(body=body))
    status, replayed = await server.request("POST", f"/v1/deliveries/{stuck}/replay")
    assert status == 200, replayed
    assert (await wait_for(lambda: finished(stuck)))["status"] == "delivered"
    assert [r.path for r in receiver.requests].count("/bad") == 1
    status, shown = await server.request("GET", f"/v1/deliveries/{stuck}")
    assert status == 200 and shown["status"] == "delivered", shown
    assert [a["error"] is not None for a in shown["attempts"]] == [True] * len(attempts) + [False], shown


def _partner_pipeline(receiver: Receiver, token: str) -> dict[str, Any]:
    """A pipeline to the receiver's /partner whose header X-Partner-Token is the secret ``token``
    names, retried on the FAST schedule."""
    return {
        "name": "partner",
        "source": {"match": ["order.*"]},
        "destinations": [
            {
                "name": "partner",
                "webhook.out": {
                    "url": receiver.url + "/partner",
                    "secret_headers": {"X-Partner-Token": token},
                },
                "retry": FAST,
            }
        ],
    }


async def test_a_secret_the_master_key_cannot_decrypt_is_never_sent_and_dies_on_schedule(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator changed INGESTLAYER_SECRET_KEY (or lost the key file) after storing it: each
    attempt fails saying so, nothing is sent with a wrong or empty secret, the delivery dies on
    its schedule, and replays once the secret is set again."""
    caplog.set_level(logging.INFO, logger="ingestlayer.delivery")
    # As `serve` does when it starts: the database records the server's key. The secret below was
    # stored under another (by an earlier version, before the database kept its key).
    await server.runtime.check_master_key()
    await server.runtime.store.set_secret(
        server.project_id, "partner", SecretBox("the-master-key-before").encrypt("partner-token")
    )
    await server.apply(
        {
            "pipelines": [
                _partner_pipeline(receiver, "ref:partner"),
                {
                    "name": "other",
                    "source": {"match": ["order.*"]},
                    "destinations": [{"name": "other", "webhook.out": {"url": receiver.url + "/other"}}],
                },
            ]
        }
    )
    status, ev = await server.ingest("order.paid", {"n": 1})
    assert status == 202, ev

    async def ended() -> dict[str, dict[str, Any]] | None:
        _, got = await server.request("GET", f"/v1/events/{ev['id']}")
        by_name = {d["destination"]: d for d in got["deliveries"]}
        done = len(by_name) == 2 and all(d["status"] in ("delivered", "dead") for d in by_name.values())
        return by_name if done else None

    by_name = await wait_for(ended)
    assert by_name["other"]["status"] == "delivered"
    dead = by_name["partner"]
    assert dead["status"] == "dead" and dead["attempt_count"] == len(FAST["schedule"]), dead
    assert "secret ref:partner cannot be decrypted" in dead["last_error"], dead
    assert [r.path for r in receiver.requests] == ["/other"]
    assert not [r for r in caplog.records if r.exc_info], caplog.text

    await server.set_secret("partner", "partner-token")
    status, replayed = await server.request("POST", f"/v1/deliveries/{dead['id']}/replay")
    assert status == 200, replayed
    await wait_for(lambda: _delivered(server, dead["id"]))
    [sent] = [r for r in receiver.requests if r.path == "/partner"]
    assert sent.headers["X-Partner-Token"] == "partner-token"


async def _delivered(server: RunningServer, delivery_id: str) -> bool:
    _, d = await server.request("GET", f"/v1/deliveries/{delivery_id}")
    return bool(d["status"] == "delivered")


async def test_a_destination_that_raises_logs_one_line_an_attempt_and_its_traceback_once(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A destination's bug (here: bodies without the fields its format needs) failed each attempt
    with a traceback of its own beside the attempt's line: a flood for a busy destination."""
    caplog.set_level(logging.INFO, logger="ingestlayer.delivery")
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "data",
                    "source": {"match": ["order.*"]},
                    "destinations": [
                        {
                            "name": "data",
                            "webhook.out": {"url": receiver.url + "/data", "format": "data"},
                            "retry": FAST,
                        }
                    ],
                }
            ]
        }
    )
    destination = (await _destination_ids(server))["data"]
    now = time.time()
    stuck = await _add_deliveries(server, [(destination, '{"id": "evt_1"}', now)] * 3)
    server.runtime.dispatcher.wake.set()

    async def dead(delivery_id: str) -> dict[str, Any] | None:
        found = await server.runtime.store.get_delivery(server.project_id, delivery_id)
        return found if found is not None and found["status"] == "dead" else None

    for delivery_id in stuck:
        ended = await wait_for(lambda d=delivery_id: dead(d))
        assert [a["error"] for a in ended["attempt_log"]] == ["internal error: KeyError"] * 2, ended
    lines = [r for r in caplog.records if any(d in r.getMessage() for d in stuck)]
    assert len(lines) == 2 * len(stuck), [r.getMessage() for r in lines]
    assert len([r for r in caplog.records if r.exc_info]) == 1, caplog.text
    assert receiver.requests == []


async def test_an_error_past_the_attempts_handling_is_recorded_and_ends_the_delivery(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery row the retry schedule cannot be applied to (its retry base past its attempts,
    as no version writes) raised past the attempt once its receiver failed: left leased, with
    nothing in its attempt log, it was sent again each time the lease ran out, for ever, with a
    traceback each time."""
    caplog.set_level(logging.INFO, logger="ingestlayer.delivery")
    failing = await Receiver().start()
    try:
        failing.fail_times(1)
        ids = await _apply(server, p=failing.url + "/p", q=receiver.url + "/q")
        body = orjson.dumps({"id": "evt_1", "type": "order.paid", "payload": {"n": 1}}).decode()
        now = time.time()
        [stuck] = await _add_deliveries(server, [(ids["p"], body, now)], retry_base=5)
        [fine] = await _add_deliveries(server, [(ids["q"], body, now)])
        server.runtime.dispatcher.wake.set()

        async def ended(delivery_id: str) -> dict[str, Any] | None:
            found = await server.runtime.store.get_delivery(server.project_id, delivery_id)
            return found if found is not None and found["status"] in ("delivered", "dead") else None

        assert (await wait_for(lambda: ended(fine)))["status"] == "delivered"
        dead = await wait_for(lambda: ended(stuck))
        assert dead["status"] == "dead", dead
        assert [a["error"] for a in dead["attempt_log"]] == ["internal error: ValueError"], dead
        lines = [r for r in caplog.records if stuck in r.getMessage()]
        assert len(lines) == 1 and "failed unexpectedly" in lines[0].getMessage(), caplog.text
        assert len(failing.requests) == 1

        # Replayed, with its receiver answering now, it goes out.
        status, replayed = await server.request("POST", f"/v1/deliveries/{stuck}/replay")
        assert status == 200, replayed
        assert (await wait_for(lambda: ended(stuck)))["status"] == "delivered"
        assert len(failing.requests) == 2
    finally:
        await failing.stop()


async def test_a_secret_set_empty_in_the_environment_is_never_sent(
    server: RunningServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PARTNER_TOKEN=`` in an env file: the request went out with an empty credential."""
    monkeypatch.setenv("IL_TEST_PARTNER_TOKEN", "")
    await server.apply({"pipelines": [_partner_pipeline(receiver, "env:IL_TEST_PARTNER_TOKEN")]})
    status, ev = await server.ingest("order.paid", {"n": 1})
    assert status == 202, ev

    async def dead() -> dict[str, Any] | None:
        _, got = await server.request("GET", f"/v1/events/{ev['id']}")
        found = [d for d in got["deliveries"] if d["status"] == "dead"]
        return found[0] if found else None

    ended = await wait_for(dead)
    assert ended["last_error"] == "secret env:IL_TEST_PARTNER_TOKEN is empty in the worker's environment"
    assert receiver.requests == []


async def test_a_stored_retry_schedule_that_cannot_be_used_is_said(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Its deliveries go on the default schedule; that used to happen without a word."""
    destination = (await _apply(server, p=receiver.url + "/p"))["p"]
    stored = orjson.loads((await _stored_destination(server, destination))["config"])
    await _set_destination(
        server, destination, {"config": orjson.dumps({**stored, "retry": {"schedule": "soon"}}).decode()}
    )
    body = orjson.dumps({"id": "evt_1", "type": "order.paid", "payload": {"n": 1}}).decode()
    [sent] = await _add_deliveries(server, [(destination, body, time.time())])
    server.runtime.dispatcher.wake.set()

    async def delivered() -> bool:
        found = await server.runtime.store.get_delivery(server.project_id, sent)
        return found is not None and found["status"] == "delivered"

    await wait_for(delivered)
    said = [r.getMessage() for r in caplog.records if destination in r.getMessage()]
    assert len(said) == 1 and "retry schedule that cannot be used" in said[0], said
    assert "the default applies" in said[0]
