"""A configuration row whose stored text cannot be read at all (not JSON, edited by hand in the
database) can be replaced or deleted by what fixes configurations: ``apply``, the REST calls on
that pipeline, destination or endpoint. Reading the project's configuration used to raise the
JSON decoder's error, so each of them failed with a 500, and the row could only be fixed by hand.
Meanwhile the events its pipeline takes wait, as for any configuration that cannot be compiled.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from sqlalchemy import LargeBinary, Table, Text, cast, literal, update

from ingestlayer.api.manage import run_apply
from ingestlayer.config import Settings
from ingestlayer.delivery.router import Router
from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.schema import destinations, pipelines, sources
from ingestlayer.store.store import Store
from tests.support.dashboard_client import Browser, signed_in
from tests.support.server import TEST_SECRET_KEY, RunningServer, wait_for

HOOK = "http://127.0.0.1:9/hooks"  # never called: the dispatcher does not run here
NOT_JSON = '{"source": {"match": ["feature.*"]}, "steps": [,'


def _document(*names: str) -> dict[str, Any]:
    return {
        "destinations": [{"name": "audit", "webhook.out": {"url": HOOK}}],
        "pipelines": [
            {"name": name, "source": {"match": [f"{name}.*"]}, "destinations": [{"ref": "audit"}]}
            for name in names
        ],
    }


async def _spoil(store: Store, table: Table, project_id: str, name: str, text: str = NOT_JSON) -> None:
    """Overwrite a row's stored configuration, as a hand in the database could."""
    async with store.engines.write.begin() as conn:
        res = await conn.execute(
            update(table).where(table.c.project_id == project_id, table.c.name == name).values(config=text)
        )
        assert res.rowcount == 1


def _event(project_id: str, type_: str) -> NewEvent:
    now = time.time()
    return NewEvent(new_id("evt"), project_id, type_, "{}", None, "api", now, now)


async def test_apply_replaces_and_deletes_rows_that_are_not_json(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        project_id, _, _ = await store.create_project("p")
        await run_apply(store, project_id, _document("feature", "order"), dry_run=False, prune=False)
        await _spoil(store, pipelines, project_id, "feature")
        await _spoil(store, pipelines, project_id, "order")
        await _spoil(store, destinations, project_id, "audit", "[1, 2")

        # Meanwhile the events the pipeline takes wait, saying why.
        router = Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))
        waiting = _event(project_id, "feature.used")
        await store.insert_events([waiting])
        assert await router.run_once() == 1
        stored = await store.get_event(project_id, waiting.id)
        assert stored is not None and stored.trace is not None
        (entry,) = stored.trace
        assert entry["outcome"] == "retrying"
        assert "pipeline 'feature' cannot be compiled" in entry["steps"][0]["error"]
        assert "its stored configuration cannot be read" in entry["steps"][0]["error"]

        # A dry run says what the apply does with each: replaced, deleted.
        plan = await run_apply(store, project_id, _document("feature"), dry_run=True, prune=True)
        changes = {(c["kind"], c["name"]): c for c in plan["changes"]}
        assert {key: c["action"] for key, c in changes.items()} == {
            ("destination", "audit"): "update",
            ("pipeline", "feature"): "update",
            ("pipeline", "order"): "delete",
        }
        assert changes[("pipeline", "feature")]["diff"].startswith(
            "# stored/feature: its stored configuration cannot be read: "
        )
        assert "; replaced\n" in changes[("pipeline", "feature")]["diff"]
        assert "match:" in changes[("pipeline", "feature")]["diff"]  # what the file stores
        assert changes[("pipeline", "order")]["diff"].endswith("; deleted\n")

        await run_apply(store, project_id, _document("feature"), dry_run=False, prune=True)
        cfg = await store.load_project_config(project_id)
        assert [(p.name, p.config["source"]["match"], p.unreadable) for p in cfg.pipelines] == [
            ("feature", ["feature.*"], None)
        ]
        assert [(d.name, d.config["settings"]["url"]) for d in cfg.destinations.values()] == [("audit", HOOK)]
        again = await run_apply(store, project_id, _document("feature"), dry_run=False, prune=True)
        assert {c["action"] for c in again["changes"]} == {"unchanged"}
    finally:
        await store.close()


async def test_the_rest_calls_replace_and_delete_rows_that_are_not_json(server: RunningServer) -> None:
    store = server.runtime.store
    project_id = server.project_id
    status, body = await server.request("POST", "/v1/apply", json={"document": _document("feature", "order")})
    assert status == 200, body
    for name in ("feature", "order"):
        await _spoil(store, pipelines, project_id, name)
    await _spoil(store, destinations, project_id, "audit")

    # Read: an empty stand-in, not a 500.
    status, body = await server.request("GET", "/v1/pipelines")
    assert status == 200, body
    assert sorted(p["name"] for p in body["data"]) == ["feature", "order"]
    status, body = await server.request("GET", "/v1/destinations/audit")
    assert status == 200, body

    # Replaced.
    pipeline = {"source": {"match": ["feature.*"]}, "destinations": [{"ref": "audit"}]}
    status, body = await server.request("PUT", "/v1/pipelines/feature", json=pipeline)
    assert status == 200, body
    assert body["source"] == {"match": ["feature.*"]}
    status, body = await server.request("PUT", "/v1/destinations/audit", json={"webhook.out": {"url": HOOK}})
    assert status == 200, body
    assert body["config"]["url"] == HOOK
    # Deleted.
    status, body = await server.request("DELETE", "/v1/pipelines/order")
    assert status == 204, body
    cfg = await store.load_project_config(project_id)
    assert [p.name for p in cfg.pipelines] == ["feature"]
    assert not [p for p in cfg.pipelines if p.unreadable] and not [
        d for d in cfg.destinations.values() if d.unreadable
    ]

    # A destination no pipeline uses any more, spoilt: deleted too.
    status, body = await server.request(
        "POST", "/v1/destinations", json={"name": "spare", "webhook.out": {"url": HOOK}}
    )
    assert status == 201, body
    await _spoil(store, destinations, project_id, "spare")
    status, body = await server.request("DELETE", "/v1/destinations/spare")
    assert status == 204, body


async def test_an_endpoint_that_is_not_json_says_so_on_a_change_and_can_be_deleted(
    server: RunningServer,
) -> None:
    """A patch or a rotation starts from the stored configuration: with none to start from, a
    409 says what to do. Deleting it takes its destination and secrets with it."""
    store = server.runtime.store
    status, body = await server.request("POST", "/v1/endpoints", json={"url": HOOK, "events": ["order.*"]})
    assert status == 201, body
    endpoint_id = body["id"]
    async with store.engines.write.begin() as conn:
        await conn.execute(update(pipelines).where(pipelines.c.id == endpoint_id).values(config=NOT_JSON))

    status, body = await server.request("GET", f"/v1/endpoints/{endpoint_id}")
    assert status == 200, body
    for method, path, payload in (
        ("PATCH", f"/v1/endpoints/{endpoint_id}", {"events": ["order.placed"]}),
        ("POST", f"/v1/endpoints/{endpoint_id}/rotate-secret", None),
    ):
        status, body = await server.request(method, path, json=payload)
        assert status == 409, body
        message = body["error"]["message"]
        assert message.startswith(f"endpoint {endpoint_id}: its stored configuration cannot be read: ")
        assert message.endswith(f"delete it (DELETE /v1/endpoints/{endpoint_id}) and add it again")

    status, body = await server.request("DELETE", f"/v1/endpoints/{endpoint_id}")
    assert status == 204, body
    cfg = await store.load_project_config(server.project_id)
    assert cfg.pipelines == [] and cfg.destinations == {}
    assert await store.list_secrets(server.project_id) == []


async def test_a_source_that_is_not_json_answers_503_until_it_is_applied_again(server: RunningServer) -> None:
    """The sender retries a 5xx: its webhooks are received once the source is fixed."""
    document = {"sources": [{"name": "open", "verify": "none"}]}
    result = await server.apply(document)
    (path,) = [c["ingress_path"] for c in result["changes"] if c["kind"] == "source"]
    await _spoil(server.runtime.store, sources, server.project_id, "open")
    body = b'{"type": "form.submitted"}'
    async with server.session.post(server.url + path, data=body) as resp:
        answer = await resp.json(content_type=None)
        assert resp.status == 503, answer
        assert answer["error"]["message"].startswith(
            "source 'open': its stored configuration cannot be read: "
        )
        assert resp.headers["Retry-After"] == "60"

    await server.apply(document)
    async with server.session.post(server.url + path, data=body) as resp:
        assert resp.status == 202, await resp.text()


async def test_a_source_this_version_refuses_answers_503_and_never_repeats_its_secret(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON, but not a source this version takes (edited by hand: a secret written inline, an
    unknown scheme; or written by another version): a bare 500 whose logged traceback quoted the
    secret, at the request of anyone who knows the URL."""
    document = {"sources": [{"name": "open", "verify": "none"}]}
    result = await server.apply(document)
    (path,) = [c["ingress_path"] for c in result["changes"] if c["kind"] == "source"]
    inline = '{"name": "open", "verify": "stripe", "secret": "whsec_written_inline_by_hand"}'
    for stored, field in ((inline, "secret"), ('{"name": "open", "verify": "bogus"}', "verify")):
        await _spoil(server.runtime.store, sources, server.project_id, "open", stored)
        async with server.session.post(server.url + path, data=b'{"type": "form.submitted"}') as resp:
            text = await resp.text()
            assert resp.status == 503, text
            assert resp.headers["Retry-After"] == "60"
        message = orjson.loads(text)["error"]["message"]
        assert message.startswith(f"source 'open': its stored configuration cannot be used: {field}: ")
        assert "whsec_written_inline_by_hand" not in text + caplog.text

    await server.apply(document)
    async with server.session.post(server.url + path, data=b'{"type": "form.submitted"}') as resp:
        assert resp.status == 202, await resp.text()


async def _first_failed_delivery(server: RunningServer) -> dict[str, Any]:
    """Send a feature.used event; its delivery, once an attempt has failed."""
    status, body = await server.request(
        "POST", "/v1/events", key=server.ingest_key, json={"type": "feature.used", "payload": {}}
    )
    assert status == 202, body

    async def failed() -> dict[str, Any] | None:
        listed = await server.runtime.store.list_deliveries(server.project_id, limit=10)
        return next((d for d in listed if d.get("last_error")), None)

    found: dict[str, Any] = await wait_for(failed, timeout=15)
    return found


async def test_deliveries_to_a_destination_that_is_not_json_are_retried_saying_why(
    server: RunningServer,
) -> None:
    """Routed as usual (the pipeline can be read); each attempt fails with the reason, and is
    retried on the destination's schedule, as for a destination whose settings fail their checks.
    Other destinations' deliveries go on."""
    await server.apply(_document("feature"))
    await _spoil(server.runtime.store, destinations, server.project_id, "audit")
    delivery = await _first_failed_delivery(server)
    assert delivery["status"] == "retrying"
    assert delivery["last_error"].startswith("destination 'audit': its stored configuration cannot be read: ")


# ---- text that is not UTF-8 (SQLite only: PostgreSQL refuses to store it) ---------------------


async def _spoil_bytes(store: Store, table: Table, project_id: str, name: str) -> None:
    """A row whose configuration is not UTF-8 (a hand, in another encoding): SQLite's driver
    raises an OperationalError reading it as text, the class a database outage raises."""
    not_utf8 = '{"source": {"match": ["caf\xe9.*"]}}'.encode("latin-1")
    async with store.engines.write.begin() as conn:
        res = await conn.execute(
            update(table)
            .where(table.c.project_id == project_id, table.c.name == name)
            .values(config=cast(literal(not_utf8, LargeBinary), Text))
        )
        assert res.rowcount == 1


async def test_a_row_that_is_not_utf8_holds_back_its_own_project_only(sqlite_url: str) -> None:
    """Every router pass used to fail as if the database were down: every project's events
    stalled. Now the broken project's wait, its trace saying why, and apply fixes it."""
    store = Store.from_url(sqlite_url)
    try:
        good, _, _ = await store.create_project("good")
        broken, _, _ = await store.create_project("broken")
        for project_id in (good, broken):
            await run_apply(store, project_id, _document("feature"), dry_run=False, prune=False)
        await _spoil_bytes(store, pipelines, broken, "feature")
        others = [_event(good, "feature.used") for _ in range(2)]
        waiting = _event(broken, "feature.used")
        await store.insert_events([others[0], waiting, others[1]])
        router = Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))

        assert await router.run_once() == 3
        assert {d["event_id"] for d in await store.list_deliveries(good, limit=10)} == {e.id for e in others}
        stored = await store.get_event(broken, waiting.id)
        assert stored is not None and stored.trace is not None
        (entry,) = stored.trace
        assert entry["outcome"] == "retrying"
        error = entry["steps"][0]["error"]
        assert "pipeline 'feature' cannot be compiled" in error and "not valid UTF-8" in error

        result = await run_apply(store, broken, _document("feature"), dry_run=False, prune=False)
        (change,) = [c for c in result["changes"] if c["kind"] == "pipeline"]
        assert change["action"] == "update" and "not valid UTF-8" in change["diff"]
        assert await router.run_once() == 1  # made due by the change
        assert [d["event_id"] for d in await store.list_deliveries(broken, limit=10)] == [waiting.id]
    finally:
        await store.close()


async def test_rows_that_are_not_utf8_are_read_replaced_and_deleted_through_the_api(
    srv: RunningServer,
) -> None:
    store = srv.runtime.store
    await srv.apply(_document("feature", "order"))
    await _spoil_bytes(store, pipelines, srv.project_id, "order")
    await _spoil_bytes(store, destinations, srv.project_id, "audit")
    status, body = await srv.request("GET", "/v1/pipelines")
    assert status == 200, body
    status, body = await srv.request("PUT", "/v1/destinations/audit", json={"webhook.out": {"url": HOOK}})
    assert status == 200, body
    status, body = await srv.request("DELETE", "/v1/pipelines/order")
    assert status == 204, body
    cfg = await store.load_project_config(srv.project_id)
    assert [p.name for p in cfg.pipelines] == ["feature"]
    assert [d.unreadable for d in cfg.destinations.values()] == [None]


async def test_deliveries_to_a_destination_that_is_not_utf8_are_retried_saying_why(
    srv: RunningServer,
) -> None:
    """The dispatcher reads destinations on the hot path, outside SQLAlchemy: its lease failed
    as if the database were down, every destination's deliveries with it."""
    await srv.apply(_document("feature"))
    await _spoil_bytes(srv.runtime.store, destinations, srv.project_id, "audit")
    delivery = await _first_failed_delivery(srv)
    assert delivery["status"] == "retrying" and "not valid UTF-8" in delivery["last_error"]


async def test_deliveries_to_a_destination_whose_name_is_not_utf8_are_retried_saying_why(
    srv: RunningServer,
) -> None:
    """Its name, read as text on the dispatcher's hot path, failed every lease as an outage: no
    project's deliveries went out while the row was there."""
    document = _document("feature")
    document["destinations"][0]["retry"] = {"schedule": [0] + [0.2] * 20, "jitter": 0}
    await srv.apply(document)
    status, body = await srv.request(
        "POST", "/v1/events", key=srv.ingest_key, json={"type": "feature.used", "payload": {}}
    )
    assert status == 202, body

    async def last_error() -> str | None:
        listed = await srv.runtime.store.list_deliveries(srv.project_id, limit=10)
        return next((d["last_error"] for d in listed if d.get("last_error")), None)

    assert "connection" in await wait_for(last_error, timeout=15)  # HOOK refuses it, retried
    async with srv.runtime.store.engines.write.begin() as conn:
        await conn.execute(
            update(destinations)
            .where(destinations.c.project_id == srv.project_id, destinations.c.name == "audit")
            .values(name=cast(literal(b"caf\xe9", LargeBinary), Text), updated_at=time.time())
        )

    async def told() -> str | None:
        error = await last_error()
        return error if error is not None and "UTF-8" in error else None

    assert await wait_for(told, timeout=15) == "destination 'caf\ufffd': its stored name is not UTF-8"


async def test_a_name_that_is_not_utf8_holds_back_its_own_project_only(sqlite_url: str) -> None:
    """Told apart from an outage by the driver's words: the project's events wait (the words
    quote the row, so the trace does not); the other projects' are routed."""
    store = Store.from_url(sqlite_url)
    try:
        good, _, _ = await store.create_project("good")
        broken, _, _ = await store.create_project("broken")
        for project_id in (good, broken):
            await run_apply(store, project_id, _document("feature"), dry_run=False, prune=False)
        async with store.engines.write.begin() as conn:
            await conn.execute(
                update(pipelines)
                .where(pipelines.c.project_id == broken)
                .values(name=cast(literal(b"caf\xe9", LargeBinary), Text))
            )
        ok, waiting = _event(good, "feature.used"), _event(broken, "feature.used")
        await store.insert_events([waiting, ok])
        router = Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))

        assert await router.run_once() == 2
        assert [d["event_id"] for d in await store.list_deliveries(good, limit=10)] == [ok.id]
        stored = await store.get_event(broken, waiting.id)
        assert stored is not None and stored.trace is not None
        (entry,) = stored.trace
        assert entry["outcome"] == "retrying"
        assert entry["steps"][0]["error"].endswith(
            "its configuration cannot be read: a stored row holds text that is not UTF-8"
        )
    finally:
        await store.close()


async def test_the_dashboards_pages_show_a_project_with_rows_that_are_not_json(
    server: RunningServer, browser: Browser
) -> None:
    """Its pages show them, empty (an endpoint's page answered 500); saving an endpoint's form,
    which starts from what is stored, says what to do instead."""
    await server.apply(_document("feature"))
    status, body = await server.request(
        "POST", "/v1/endpoints", json={"url": HOOK, "events": ["order.*"], "auth": "none"}
    )
    assert status == 201, body
    endpoint_id = body["id"]
    store = server.runtime.store
    await _spoil(store, pipelines, server.project_id, "feature")
    await _spoil(store, destinations, server.project_id, "audit")
    async with store.engines.write.begin() as conn:
        await conn.execute(update(pipelines).where(pipelines.c.id == endpoint_id).values(config=NOT_JSON))
    await signed_in(browser, server)
    for path in ("/", "/pipelines", "/events", "/webhooks/endpoints", f"/webhooks/endpoints/{endpoint_id}"):
        page = await browser.get(path)
        assert page.status == 200, (path, page.text[:300])
    form = {
        "url": HOOK,
        "events": "order.*",
        "auth": "none",
        "signing": "ingestlayer",
        "format": "ingestlayer",
        "timeout": "10",
        "retry": "",
        "description": "",
    }
    page = await browser.post(f"/webhooks/endpoints/{endpoint_id}", form)
    assert page.status == 422, (page.status, page.text[:300])  # the form's errors, shown on it
    assert "its stored configuration cannot be read" in page.text
    assert f"delete it (DELETE /v1/endpoints/{endpoint_id}) and add it again" in page.text


async def test_apply_prune_leaves_the_destination_of_an_endpoint_that_is_not_json(
    server: RunningServer,
) -> None:
    """Its pipeline no longer says which destination is its own: found by its name, it is still
    the endpoint's, not a destination the document left out."""
    status, body = await server.request("POST", "/v1/endpoints", json={"url": HOOK, "events": ["order.*"]})
    assert status == 201, body
    endpoint_id, destination_id = body["id"], body["destination_id"]
    store = server.runtime.store
    async with store.engines.write.begin() as conn:
        await conn.execute(update(pipelines).where(pipelines.c.id == endpoint_id).values(config=NOT_JSON))
    status, body = await server.request(
        "POST", "/v1/apply?prune=true", json={"document": _document("feature")}
    )
    assert status == 200, body
    assert not [c for c in body["changes"] if c["action"] == "delete"]
    cfg = await store.load_project_config(server.project_id)
    assert destination_id in cfg.destinations
