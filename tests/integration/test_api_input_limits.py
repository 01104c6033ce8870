"""Limits and checks a sweep of every route with bad input found missing."""

from __future__ import annotations

import asyncio
import time

from tests.support.api import error_of
from tests.support.server import RunningServer, start_server


async def test_entity_routes_check_the_kind_and_id_first(srv: RunningServer) -> None:
    for method in ("GET", "DELETE"):
        status, body = await srv.request(method, "/v1/entities/User/u1")
        assert status == 422 and error_of(body)["field"] == "kind", body
        status, body = await srv.request(method, f"/v1/entities/user/{'u' * 256}")
        assert status == 422 and error_of(body)["field"] == "id", body
    status, body = await srv.request("PUT", f"/v1/entities/user/{'u' * 256}", json={"traits": {}})
    assert status == 422 and error_of(body)["field"] == "id", body


async def test_traits_have_the_per_event_size_limit(srv: RunningServer) -> None:
    big = {"notes": "x" * (257 * 1024)}
    status, body = await srv.request(
        "POST", "/v1/identify", key=srv.ingest_key, json={"user_id": "u", "traits": big}
    )
    assert status == 413 and error_of(body)["field"] == "traits", body
    status, body = await srv.request(
        "POST", "/v1/entities/bulk", json={"entities": [{"kind": "user", "id": "u", "traits": big}]}
    )
    assert status == 413 and error_of(body)["field"] == "entities[0].traits", body
    status, _ = await srv.request("GET", "/v1/entities/user/u")
    assert status == 404


async def test_a_batch_idempotency_key_leaves_room_for_the_index(srv: RunningServer) -> None:
    batch = {"batch": [{"type": "a.b"} for _ in range(12)]}
    headers = {"Idempotency-Key": "k" * 253}
    status, body = await srv.request("POST", "/v1/events", key=srv.ingest_key, json=batch, headers=headers)
    assert status == 422 and error_of(body)["field"] == "Idempotency-Key", body
    assert "at most 252" in error_of(body)["message"]
    headers = {"Idempotency-Key": "k" * 252}
    status, body = await srv.request("POST", "/v1/events", key=srv.ingest_key, json=batch, headers=headers)
    assert status == 202, body


async def test_a_batch_item_that_is_not_an_object_is_named(srv: RunningServer) -> None:
    batch = {"batch": [{"type": "a.b"}, 5]}
    status, body = await srv.request("POST", "/v1/events", key=srv.ingest_key, json=batch)
    assert status == 422
    assert error_of(body)["message"] == "batch[1] must be an event object"
    assert error_of(body)["field"] == "batch[1]"


async def test_the_last_admin_key_cannot_be_revoked(srv: RunningServer) -> None:
    _, keys = await srv.request("GET", "/v1/keys")
    (admin,) = [k for k in keys["data"] if k["kind"] == "admin"]
    status, body = await srv.request("DELETE", f"/v1/keys/{admin['id']}")
    assert status == 409 and "last admin key" in error_of(body)["message"], body
    status, made = await srv.request("POST", "/v1/keys", json={"kind": "admin", "name": "second"})
    assert status == 201, made
    status, _ = await srv.request("DELETE", f"/v1/keys/{admin['id']}")
    assert status == 204
    status, _ = await srv.request("GET", "/v1/keys", key=made["key"])
    assert status == 200


async def test_secret_and_key_names(srv: RunningServer) -> None:
    fullwidth = "".join(chr(0xFF00 + ord(c) - 0x20) for c in "secret")  # passes str.isalnum()
    for name in (fullwidth, "s" * 201):
        status, body = await srv.request("PUT", f"/v1/secrets/{name}", json={"value": "v"})
        assert status == 422 and error_of(body)["field"] == "name", (name, body)
    status, _ = await srv.request("PUT", "/v1/secrets/acme-hooks.v2", json={"value": "v"})
    assert status == 200
    for name in ("n" * 201, "line\nbreak"):
        status, body = await srv.request("POST", "/v1/keys", json={"kind": "ingest", "name": name})
        assert status == 422 and error_of(body)["field"] == "name", (name, body)


async def test_nul_characters_are_refused_where_postgresql_cannot_store_them(server: RunningServer) -> None:
    """On PostgreSQL a NUL in a text column fails the statement: in a URL that was a 500, and in
    an idempotency key it failed the whole ingest group, other clients' events included."""
    results = await asyncio.gather(
        server.request(
            "POST", "/v1/events", key=server.ingest_key, json={"type": "a.b", "idempotency_key": "a\x00b"}
        ),
        server.ingest("a.b", {"n": 1}),
    )
    (status, body), (ok, _) = results
    assert status == 422 and error_of(body)["field"] == "idempotency_key", body
    assert ok == 202
    for path in ("/v1/events/evt_%00", "/v1/events?type=a%00", "/v1/entities/user/u%00"):
        status, body = await server.request("GET", path)
        assert status == 400 and "NUL" in error_of(body)["message"], (path, body)
    status, body = await server.request(
        "POST", "/v1/identify", key=server.ingest_key, json={"user_id": "u\x00", "traits": {}}
    )
    assert status == 422 and error_of(body)["field"] == "user_id", body
    # Inside JSON values (payloads, traits) a NUL is stored escaped, and comes back.
    status, sent = await server.ingest("a.b", {"note": "x\x00y"})
    assert status == 202
    _, ev = await server.request("GET", f"/v1/events/{sent['id']}")
    assert ev["payload"] == {"note": "x\x00y"}


async def test_identify_and_group_spend_the_projects_ingest_allowance(db_url: str) -> None:
    """An ingest key could write traits as fast as the database took them, unlimited."""
    server = await start_server(db_url, ingest_rate_limit=3)
    try:
        statuses = []
        started = time.monotonic()
        for i in range(10):
            path, body = ("/v1/identify", {"user_id": f"u{i}", "traits": {"n": i}})
            if i % 2:
                path, body = ("/v1/group", {"user_id": f"u{i}", "account_id": "acme", "traits": {}})
            status, answer = await server.request("POST", path, key=server.ingest_key, json=body)
            statuses.append(status)
            if status == 429:
                assert error_of(answer)["code"] == "rate_limited", answer
        elapsed = time.monotonic() - started
        # One second's burst, and what refilled meanwhile (more only if a loaded machine was slow).
        accepted = statuses.count(200)
        assert 3 <= accepted <= max(4, 3 + 3 * elapsed) and statuses.count(429) == 10 - accepted, statuses
        # The same bucket as events.
        status, _ = await server.ingest("a.b", {})
        assert status == 429
    finally:
        await server.stop()


async def test_list_lengths_and_yes_no_fields_are_refused_in_plain_words(srv: RunningServer) -> None:
    # Pydantic's own words leaked: "List should have at least 1 item after validation, not 0",
    # "Input should be a valid boolean, unable to interpret input".
    pipeline = {"name": "p", "source": {"match": ["a.b"]}, "destinations": []}
    cases = [
        (
            "/v1/endpoints",
            {"url": "https://example.com/h", "events": []},
            "events",
            "must hold at least 1 item",
        ),
        ("/v1/entities/bulk", {"entities": []}, "entities", "must hold at least 1 item"),
        (
            "/v1/entities/bulk",
            {"entities": [{"kind": "user", "id": "u"}] * 1001},
            "entities",
            "must hold at most 1000 items, not 1001",
        ),
        (
            "/v1/apply",
            {"document": {"pipelines": [pipeline]}},
            "pipelines[0].destinations",
            "must hold at least 1 item",
        ),
        ("/v1/apply", {"document": {}, "dry_run": "maybe"}, "dry_run", "must be true or false"),
        ("/v1/apply", {"document": {}, "prune": [1]}, "prune", "must be true or false"),
    ]
    for path, sent, field, words in cases:
        status, body = await srv.request("POST", path, json=sent)
        assert status == 422, (path, body)
        assert error_of(body)["field"] == field, (path, body)
        assert error_of(body)["message"] == f"{field}: {words}", (path, body)
    # The same mistake in the query string, as it was said there.
    status, body = await srv.request("POST", "/v1/apply?dry_run=maybe", json={"document": {}})
    assert status == 422 and error_of(body)["field"] == "dry_run", body
    assert error_of(body)["message"].startswith("dry_run must be true or false"), body
    # Nothing was applied meanwhile.
    status, body = await srv.request("GET", "/v1/pipelines")
    assert status == 200 and body["data"] == [], body


async def test_fields_held_to_a_pattern_are_refused_in_words_not_as_the_pattern(srv: RunningServer) -> None:
    # Pydantic's words leaked the regular expressions: "String should match pattern
    # '^[a-z][a-z0-9_\-]{0,63}$'", "… pattern '^[^\x00-\x1f\x7f]*$'".
    kind_rule = "must be 1 to 64 lower-case letters, digits, _ or -, starting with a letter"
    cases = [
        (
            "POST",
            "/v1/entities/bulk",
            {"entities": [{"kind": "Bad Kind!", "id": "x", "traits": {}}]},
            "entities[0].kind",
            f"entities[0].kind: {kind_rule}",
        ),
        ("PUT", "/v1/entities/Bad%20Kind/x", {"traits": {}}, "kind", f"kind {kind_rule}"),
        # A trailing newline passed a `^…$` rule read with re.match (`$` matches before it).
        (
            "POST",
            "/v1/entities/bulk",
            {"entities": [{"kind": "user\n", "id": "x", "traits": {}}]},
            "entities[0].kind",
            f"entities[0].kind: {kind_rule}",
        ),
        ("PUT", "/v1/entities/user%0A/x", {"traits": {}}, "kind", f"kind {kind_rule}"),
        (
            "POST",
            "/v1/keys",
            {"kind": "ingest", "name": "a\x01b"},
            "name",
            "name: must not contain control characters",
        ),
    ]
    for method, path, sent, field, message in cases:
        status, body = await srv.request(method, path, json=sent)
        assert status == 422, (path, body)
        assert error_of(body)["field"] == field, (path, body)
        assert error_of(body)["message"] == message, (path, body)
        assert "pattern" not in error_of(body)["message"]
    # What the rules allow is still taken.
    one = {"entities": [{"kind": "user_2", "id": "x", "traits": {}}]}
    status, _ = await srv.request("POST", "/v1/entities/bulk", json=one)
    assert status == 200
    status, _ = await srv.request("POST", "/v1/keys", json={"kind": "ingest", "name": "backend\tjobs"})
    assert status == 422  # a tab is a control character too
    status, _ = await srv.request("POST", "/v1/keys", json={"kind": "ingest", "name": "backend jobs"})
    assert status == 201
