"""Configuration requests that used to fail with a 500, change something else than was asked,
or leave a pipeline routing to nothing (found by a sweep of every route with bad input)."""

from __future__ import annotations

from typing import Any

from tests.support.api import error_of
from tests.support.server import RunningServer

HOOK = "http://127.0.0.1:9/hook"
HUGE = 10**30


async def send_raw(
    server: RunningServer, method: str, path: str, data: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    headers = {**server.auth(), "Content-Type": content_type}
    async with server.session.request(method, server.url + path, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_prune_keeps_the_destinations_the_document_routes_to(server: RunningServer) -> None:
    status, _ = await server.request(
        "POST", "/v1/destinations", json={"name": "keep-me", "webhook.out": {"url": HOOK}}
    )
    assert status == 201
    await server.request("POST", "/v1/destinations", json={"name": "unused", "webhook.out": {"url": HOOK}})
    doc = {"pipelines": [{"name": "pr", "source": {"match": ["pr.*"]}, "destinations": [{"ref": "keep-me"}]}]}
    status, body = await server.request("POST", "/v1/apply", json={"document": doc, "prune": True})
    assert status == 200, body
    assert [(c["action"], c["name"]) for c in body["changes"] if c["action"] != "unchanged"] == [
        ("create", "pr"),
        ("delete", "unused"),
    ]
    _, pipeline = await server.request("GET", "/v1/pipelines/pr")
    assert pipeline["destinations"][0]["kind"] == "webhook.out"
    again = await server.apply(doc)
    assert again["summary"] == {"unchanged": 1}


async def test_an_endpoint_is_changed_through_the_endpoints_api_only(server: RunningServer) -> None:
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": HOOK, "events": ["b.*"], "auth": "hmac"}
    )
    assert status == 201, ep
    dest_name = f"endpoint:{ep['id']}"

    # A pipeline routing to it would route to nothing once the endpoint is deleted.
    doc = {
        "pipelines": [{"name": "uses-ep", "source": {"match": ["b.*"]}, "destinations": [{"ref": dest_name}]}]
    }
    status, body = await server.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422 and error_of(body)["field"] == "pipelines[0].destinations[0].ref", body
    assert f"PATCH /v1/endpoints/{ep['id']}" in error_of(body)["message"]

    # Its destination cannot be rewritten (here: its signing dropped) by name or by id.
    status, got = await server.request("GET", f"/v1/destinations/{dest_name}")
    assert status == 200
    for path in (f"/v1/destinations/{dest_name}", f"/v1/destinations/{got['id']}"):
        status, body = await server.request("PUT", path, json={"webhook.out": {"url": HOOK + "/other"}})
        assert status == 422, body
    # Nor its pipeline replaced or deleted through /v1/pipelines.
    status, body = await server.request(
        "PUT", f"/v1/pipelines/{ep['id']}", json={"source": {"match": ["x.*"]}}
    )
    assert status == 409, body
    status, body = await server.request("DELETE", f"/v1/pipelines/{ep['id']}")
    assert status == 409 and f"/v1/endpoints/{ep['id']}" in error_of(body)["message"]

    status, same = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert same["url"] == HOOK and same["auth"] == "hmac"
    _, secrets = await server.request("GET", "/v1/secrets")
    assert [s["managed_by"] for s in secrets["data"]] == [{"endpoint_id": ep["id"]}]


async def test_numbers_over_64_bits_in_a_configuration_are_a_422(server: RunningServer) -> None:
    status, body = await server.request(
        "POST",
        "/v1/destinations",
        json={"name": "hi", "webhook.out": {"url": HOOK}, "retry": {"schedule": [0, HUGE]}},
    )
    assert status == 422 and error_of(body)["field"] == "retry.schedule[1]", body
    doc = {"destinations": [{"name": "hi", "webhook.out": {"url": HOOK}, "retry": {"schedule": [0, HUGE]}}]}
    for dry_run in (True, False):
        status, body = await server.request("POST", "/v1/apply", json={"document": doc, "dry_run": dry_run})
        assert status == 422 and error_of(body)["field"] == "destinations[0].retry.schedule[1]", body
    retry = {"max_attempts": 3, "base": HUGE, "factor": 2, "max": 10}
    status, body = await server.request(
        "POST", "/v1/endpoints", json={"url": HOOK, "events": ["a.b"], "retry": retry}
    )
    assert status == 422 and "64 bits" in error_of(body)["message"], body


async def test_nan_and_infinity_are_not_json(server: RunningServer) -> None:
    for body in (b'{"user_id": "n", "traits": {"a": NaN}}', b'{"user_id": "n", "traits": {"a": Infinity}}'):
        status, err = await send_raw(server, "POST", "/v1/identify", body)
        assert status == 400 and error_of(err)["code"] == "invalid_json", err
    status, _ = await server.request("GET", "/v1/entities/user/n")
    assert status == 404
    doc = b'{"document": {"destinations": [{"name": "d", "webhook.out": {"url": "%s"}, ' % HOOK.encode()
    status, err = await send_raw(
        server, "POST", "/v1/apply", doc + b'"retry": {"schedule": [0, Infinity]}}]}}'
    )
    assert status == 400 and error_of(err)["code"] == "invalid_json", err
    status, err = await send_raw(server, "POST", "/v1/identify", '{"user_id": "u"}'.encode("utf-16"))
    assert status == 400, err


async def test_apply_refuses_an_empty_yaml_upload_and_other_content_types(server: RunningServer) -> None:
    await server.request("POST", "/v1/destinations", json={"name": "keep", "webhook.out": {"url": HOOK}})
    for body in (b"", b"# nothing here\n"):
        status, err = await send_raw(server, "POST", "/v1/apply?prune=1", body, "application/yaml")
        assert status == 400 and "empty" in error_of(err)["message"], err
    status, err = await send_raw(server, "POST", "/v1/apply", b'{"document": {}}', "text/plain")
    assert status == 415, err
    status, ok = await send_raw(
        server, "POST", "/v1/apply", b'{"document": {}}', "application/json; charset=utf-8"
    )
    assert status == 200, ok
    _, dests = await server.request("GET", "/v1/destinations")
    assert [d["name"] for d in dests["data"]] == ["keep"]


async def test_bulk_replay_with_no_status_is_refused(server: RunningServer) -> None:
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"status": []})
    assert status == 422 and error_of(body)["field"] == "status", body


async def test_destination_names(server: RunningServer) -> None:
    _, first = await server.request(
        "POST", "/v1/destinations", json={"name": "d1", "webhook.out": {"url": HOOK}}
    )
    for name in (first["id"], 5, "", "a b", "x\nbcc", "-x", "a" * 201, ["a"]):
        status, body = await server.request(
            "POST", "/v1/destinations", json={"name": name, "webhook.out": {"url": HOOK}}
        )
        assert status == 422 and error_of(body)["field"] == "name", (name, body)
    status, body = await server.request(
        "POST",
        "/v1/pipelines",
        json={"name": "p", "source": {"match": ["a.b"]}, "destinations": [{"ref": 5}]},
    )
    assert status == 422 and error_of(body)["field"] == "destinations[0].ref", body

    # A name given inside the kind's mapping: the answer is the destination made.
    status, made = await server.request(
        "POST", "/v1/destinations", json={"webhook.out": {"url": HOOK, "name": "inner"}}
    )
    assert status == 201 and made["name"] == "inner", made

    # Names with a slash (inline destinations are named so) are reachable by name.
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "orders",
                    "source": {"match": ["o.*"]},
                    "destinations": [{"webhook.out": {"url": HOOK}}],
                }
            ]
        }
    )
    status, inline = await server.request("GET", "/v1/destinations/orders/webhook.out")
    assert status == 200 and inline["name"] == "orders/webhook.out", inline
    inline["config"]["timeout"] = 5.0
    status, edited = await server.request("PUT", "/v1/destinations/orders/webhook.out", json=inline)
    assert status == 200 and edited["config"]["timeout"] == 5.0, edited


async def test_a_route_given_by_id_must_be_a_string(server: RunningServer) -> None:
    for bad in (["x"], {"a": 1}, 5):
        body = {"name": "uh", "source": {"match": ["x.*"]}, "destinations": [{"id": bad}]}
        status, err = await server.request("POST", "/v1/pipelines", json=body)
        assert status == 422 and error_of(err)["field"] == "destinations[0].id", err


async def test_a_bad_retry_value_is_named_once_down_to_its_place(server: RunningServer) -> None:
    """An endpoint's retry policy with a negative delay was refused as field "retry" with the
    message "retry: retry.schedule[0]: ...": the field now goes down to the value."""
    status, body = await server.request(
        "POST", "/v1/endpoints", json={"url": HOOK, "events": ["a.b"], "retry": {"schedule": [0, -1]}}
    )
    assert status == 422, body
    assert error_of(body) == {
        "code": "validation_error",
        "message": "retry.schedule[1]: must not be negative, got -1",
        "field": "retry.schedule[1]",
    }
