"""JSON nested too deeply is refused where it comes in, and never breaks what reads it later.

A payload nested 254 levels or more was a plain-text 500 (orjson writes at most 254); one nested
253 levels was stored, after which ``GET /v1/events`` answered 500 for good, as the listing wraps
the payload deeper than responses can carry. Now payloads, traits and webhook bodies may nest at
most MAX_JSON_DEPTH levels (a 422 ``too_deep`` naming the field), and events stored before the
limit are listed with their deepest parts as JSON text.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import yaml

from ingestlayer.api.render import RENDER_DEPTH
from ingestlayer.ids import new_id
from ingestlayer.json_depth import MAX_JSON_DEPTH
from ingestlayer.records import NewEvent
from tests.support.api import error_of
from tests.support.server import RunningServer


def nest(depth: int, leaf: Any = 1) -> Any:
    """A value ``depth`` levels deep: objects and arrays in turn, ``leaf`` innermost."""
    value = leaf
    for level in range(depth):
        value = {"k": value, "n": level} if level % 2 else [value, level]
    return value


def deep_object(depth: int) -> dict[str, Any]:
    """A JSON object ``depth`` levels deep, counting itself."""
    return {"deep": nest(depth - 1), "plan": "pro"}


def deep_text(depth: int) -> bytes:
    """deep_object(depth) as JSON text, at depths no JSON writer takes."""
    head, tail = [], []
    for level in reversed(range(depth - 1)):
        head.append(b'{"k": ' if level % 2 else b"[")
        tail.append(f', "n": {level}}}'.encode() if level % 2 else f", {level}]".encode())
    return b'{"deep": ' + b"".join(head) + b"1" + b"".join(reversed(tail)) + b', "plan": "pro"}'


def event_text(type_: str, depth: int) -> bytes:
    return b'{"type": "' + type_.encode() + b'", "payload": ' + deep_text(depth) + b"}"


async def post_raw(server: RunningServer, path: str, body: bytes, key: str | None = None) -> tuple[int, Any]:
    return await server.request(
        "POST", path, key=key or server.ingest_key, data=body, headers={"Content-Type": "application/json"}
    )


def too_deep(status: int, body: Any, field: str | None) -> str:
    assert status == 422, (status, body)
    err = error_of(body)
    assert err["code"] == "too_deep", err
    assert err.get("field") == field, err
    assert f"at most {MAX_JSON_DEPTH} levels" in err["message"], err
    message: str = err["message"]
    return message


async def listed(server: RunningServer) -> list[dict[str, Any]]:
    status, body = await server.request("GET", "/v1/events?limit=5")
    assert status == 200, body
    data: list[dict[str, Any]] = body["data"]
    return data


# ---- events -----------------------------------------------------------------------------------


async def test_a_payload_nested_deeper_than_the_limit_is_a_422_naming_it(srv: RunningServer) -> None:
    # Just over the limit, where orjson refused to write (254+), and the depth that used to be
    # stored and then break the listing (253).
    for depth in (MAX_JSON_DEPTH + 1, 253, 254, 300, 1000):
        status, body = await post_raw(srv, "/v1/events", event_text("deep.sent", depth))
        message = too_deep(status, body, "payload")
        assert message.startswith("payload is nested"), message
        if depth <= 254:
            assert f"{depth} levels deep" in message, message
    assert await listed(srv) == []


async def test_a_body_too_deep_for_any_parser_is_the_same_422(srv: RunningServer) -> None:
    body = b'{"type": "deep.sent", "payload": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    status, err = await post_raw(srv, "/v1/events", body)
    assert "the request body" in too_deep(status, err, None)


async def test_a_deep_payload_in_a_batch_is_named_by_its_place(srv: RunningServer) -> None:
    items = [orjson.dumps({"type": "ok.sent", "payload": {"i": i}}) for i in range(5)]
    for depth in (MAX_JSON_DEPTH + 1, 253, 600):
        items[3] = event_text("deep.sent", depth)
        status, body = await post_raw(srv, "/v1/events", b'{"batch": [' + b", ".join(items) + b"]}")
        assert too_deep(status, body, "batch[3].payload").startswith("batch[3].payload is nested")
    assert await listed(srv) == []  # the batch is validated whole: nothing was stored


async def test_the_limit_is_exact_a_payload_at_it_is_stored_and_read_back(server: RunningServer) -> None:
    # Small payloads are checked after serialising, large ones (over 2 KiB) as they are.
    stored = []
    for pad in ("", "x" * 5000):
        for depth in (MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH):
            payload = {**deep_object(depth), "pad": pad}
            status, body = await server.ingest("deep.sent", payload)
            status_b, batch = await post_raw(
                server, "/v1/events", orjson.dumps({"batch": [{"type": "deep.batch", "payload": payload}]})
            )
            if depth > MAX_JSON_DEPTH:
                assert f"{depth} levels deep" in too_deep(status, body, "payload")
                too_deep(status_b, batch, "batch[0].payload")
        assert status == 202 and status_b == 202, (body, batch)
        status, event = await server.request("GET", f"/v1/events/{body['id']}")
        assert status == 200 and event["payload"] == payload
        stored += [payload, payload]
    assert [e["payload"] for e in await listed(server)] == stored[::-1][:5]


async def test_brackets_inside_strings_neither_count_nor_hide_depth(srv: RunningServer) -> None:
    # Shallow, with strings full of brackets and escapes: accepted.
    shallow = {"s": "[" * 500 + '\\"{' * 100, "t": ["}" * 300, "]"], "u": {"v": '\\"\\\\'}}
    status, body = await srv.ingest("brackets.sent", shallow)
    assert status == 202, body
    # One level too deep, with strings placed so that a scan of the text that kept them would see
    # it well within the limit: still refused.
    value: Any = 1
    for level in range(MAX_JSON_DEPTH):
        value = {"close": "}}]", "v": value, "open": "{[{"} if level % 2 else ["]}]", value, "[{["]
    status, body = await srv.ingest("brackets.sent", {"v": value})
    assert f"{MAX_JSON_DEPTH + 1} levels deep" in too_deep(status, body, "payload")


async def test_an_event_stored_deep_before_the_limit_does_not_break_the_listing(
    server: RunningServer,
) -> None:
    # Stored as the ingest path used to store it, bypassing the API: 253 levels, the depth that
    # made GET /v1/events answer 500 for good.
    deep = deep_object(253)
    now = time.time()
    stored = NewEvent(
        id=new_id("evt"),
        project_id=server.project_id,
        type="legacy.deep",
        payload_json=orjson.dumps(deep).decode(),
        idempotency_key=None,
        source="sdk",
        occurred_at=now,
        received_at=now,
    )
    await server.runtime.store.insert_events([stored])
    status, fresh = await server.ingest("fresh.sent", {"a": 1})
    assert status == 202, fresh

    events = await listed(server)
    assert [e["type"] for e in events] == ["fresh.sent", "legacy.deep"]
    assert events[0]["payload"] == {"a": 1}
    shown = events[1]["payload"]
    # The first RENDER_DEPTH levels as they are, below them the stored JSON text: nothing lost.
    assert shown["plan"] == "pro"
    node: Any = shown
    for _ in range(RENDER_DEPTH):
        assert isinstance(node, dict | list), node
        node = node["deep"] if "deep" in node else node["k"] if isinstance(node, dict) else node[0]
    assert isinstance(node, str)
    assert _restore(shown) == deep
    status, one = await server.request("GET", f"/v1/events/{stored.id}")
    assert status == 200 and _restore(one["payload"]) == deep


def _restore(shown: Any, depth: int = 1) -> Any:
    """A rendered payload with the JSON text below RENDER_DEPTH read back."""
    if depth > RENDER_DEPTH and isinstance(shown, str):
        return orjson.loads(shown)
    if isinstance(shown, dict):
        return {k: _restore(v, depth + 1) for k, v in shown.items()}
    if isinstance(shown, list):
        return [_restore(v, depth + 1) for v in shown]
    return shown


# ---- entities ---------------------------------------------------------------------------------


async def test_deep_traits_are_a_422_on_every_entity_route(server: RunningServer) -> None:
    deep = deep_object(MAX_JSON_DEPTH + 1)
    for depth in (MAX_JSON_DEPTH + 1, 300, 700):
        body = b'{"user_id": "u1", "traits": ' + deep_text(depth) + b"}"
        status, err = await post_raw(server, "/v1/identify", body)
        too_deep(status, err, "traits")
    status, body = await server.request(
        "POST", "/v1/group", key=server.ingest_key, json={"user_id": "u1", "account_id": "a1", "traits": deep}
    )
    too_deep(status, body, "traits")
    for method in ("PUT", "PATCH"):
        status, body = await server.request(method, "/v1/entities/user/u1", json={"traits": deep})
        too_deep(status, body, "traits")
    entities = [{"kind": "user", "id": "u2", "traits": {}}, {"kind": "user", "id": "u3", "traits": deep}]
    status, body = await server.request("POST", "/v1/entities/bulk", json={"entities": entities})
    too_deep(status, body, "entities[1].traits")
    assert (await server.request("GET", "/v1/entities/user/u1"))[0] == 404
    assert (await server.request("GET", "/v1/entities/user/u2"))[0] == 404  # one transaction

    # Exactly at the limit: stored and read back.
    traits = deep_object(MAX_JSON_DEPTH)
    status, body = await server.request(
        "POST", "/v1/identify", key=server.ingest_key, json={"user_id": "u1", "traits": traits}
    )
    assert status == 200, body
    status, user = await server.request("GET", "/v1/entities/user/u1")
    assert status == 200 and user["traits"] == traits


async def test_traits_too_deep_for_the_json_module_are_the_same_422(srv: RunningServer) -> None:
    # FastAPI reads these bodies with the json module, which raises RecursionError.
    body = b'{"user_id": "u1", "traits": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    status, err = await post_raw(srv, "/v1/identify", body)
    assert "the request body" in too_deep(status, err, None)


async def test_traits_with_a_number_over_64_bits_are_a_422_not_a_500(srv: RunningServer) -> None:
    status, body = await srv.request(
        "POST", "/v1/identify", key=srv.ingest_key, json={"user_id": "u1", "traits": {"n": 2**70}}
    )
    assert status == 422, body
    assert error_of(body)["code"] == "number_out_of_range" and body["error"]["field"] == "traits"


# ---- signed inbound webhooks ------------------------------------------------------------------


async def test_a_webhook_body_nested_too_deeply_is_a_422(server: RunningServer) -> None:
    result = await server.apply({"sources": [{"name": "open", "verify": "none"}]})
    (path,) = [c["ingress_path"] for c in result["changes"] if c["kind"] == "source"]
    for depth in (MAX_JSON_DEPTH + 1, 253, 300, 1000):
        body = b'{"type": "form.submitted", "x": ' + deep_text(depth - 1) + b"}"
        async with server.session.post(server.url + path, data=body) as resp:
            too_deep(resp.status, await resp.json(content_type=None), None)
    async with server.session.post(server.url + path, data=b"[" * 1100 + b"]" * 1100) as resp:
        too_deep(resp.status, await resp.json(content_type=None), None)
    assert await listed(server) == []

    at_limit = {"type": "form.submitted", **deep_object(MAX_JSON_DEPTH)}
    async with server.session.post(server.url + path, data=orjson.dumps(at_limit)) as resp:
        assert resp.status == 202, await resp.text()
    assert [e["payload"] for e in await listed(server)] == [at_limit]


async def test_a_configuration_nested_too_deeply_is_refused(
    srv: RunningServer,
) -> None:
    """A pipeline whose settings nest past the limit was stored, and GET /v1/pipelines then
    failed for good (its configuration is rendered back as JSON)."""
    deep: Any = "x"
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = {"k": deep}
    doc = {
        "pipelines": [
            {
                "name": "deep",
                "source": {"match": ["*"]},
                "destinations": [{"webhook.out": {"url": "https://example.com/h", "headers": {"X": "1"}}}],
                "steps": [{"transform": {"set": {"deep": deep}}}],
            }
        ]
    }
    status, body = await srv.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422 and "nests more than 64 levels" in body["error"]["message"], body
    text = yaml.safe_dump(doc)
    async with srv.session.post(
        srv.url + "/v1/apply",
        data=text,
        headers={"Authorization": f"Bearer {srv.admin_key}", "Content-Type": "application/yaml"},
    ) as resp:
        assert resp.status == 422, await resp.text()
    status, listed = await srv.request("GET", "/v1/pipelines")
    assert status == 200 and not [p for p in listed["data"] if p["name"] == "deep"]


async def test_numbers_beyond_a_double_are_out_of_range_not_invalid_json(srv: RunningServer) -> None:
    """An integer of 400 digits, or 1e400, is JSON that no parser here can hold: refused as the
    number it is (422 number_out_of_range), not as text that is not JSON (400)."""
    status, source = await srv.request("POST", "/v1/sources", json={"name": "open", "verify": "none"})
    assert status == 201, source
    for number in (b"9" * 400, b"-" + b"9" * 400, b"1e400"):
        event = b'{"type": "n.x", "payload": {"n": ' + number + b"}}"
        for path, body, key, field in (
            ("/v1/events", event, srv.ingest_key, "payload.n"),
            ("/v1/events", b'{"batch": [' + event + b"]}", srv.ingest_key, "batch[0].payload.n"),
            (
                "/v1/identify",
                b'{"user_id": "u1", "traits": {"n": ' + number + b"}}",
                srv.ingest_key,
                "traits.n",
            ),
            (
                "/v1/apply",
                b'{"document": {"pipelines": [{"n": ' + number + b"}]}}",
                srv.admin_key,
                "document.pipelines[0].n",
            ),
            (f"/v1/ingress/{source['id']}", event, srv.ingest_key, "payload.n"),
        ):
            status, err = await post_raw(srv, path, body, key)
            assert status == 422, (path, number[:5], err)
            assert error_of(err)["code"] == "number_out_of_range", (path, err)
            assert "numbers must fit in 64 bits" in err["error"]["message"], err
            assert err["error"].get("field") == field, (path, number[:5], err)
            assert f"{field}: numbers" in err["error"]["message"], err
    # Not a number at all: still not JSON.
    status, err = await post_raw(srv, "/v1/events", b'{"type": "n.x", "payload": {"n": 9e}}')
    assert status == 400 and error_of(err)["code"] == "invalid_json", err
    status, listed = await srv.request("GET", "/v1/events")
    assert listed["data"] == []
