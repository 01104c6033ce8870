"""A pipeline or destination fetched with GET, edited and sent back with PUT.

GET answers with what the server made (ids, times, each route's destination by id and kind);
PUT used to refuse that shape (``pipelines[0].id: Extra inputs are not permitted``), so a user
had to rewrite the answer into the YAML shape by hand before changing one line.
"""

from __future__ import annotations

from typing import Any

from tests.support.api import error_of
from tests.support.server import RunningServer


def orders(url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "steps": [{"filter.match": "payload.amount > 10"}],
                "destinations": [
                    {"webhook.out": {"url": url}, "name": "hooks", "when": "payload.amount > 100"},
                    {"ref": "audit"},
                ],
            }
        ],
        "destinations": [
            {"name": "audit", "webhook.out": {"url": url + "/audit"}, "retry": {"schedule": [0, 1]}}
        ],
    }


async def test_pipeline_get_edit_put(server: RunningServer) -> None:
    await server.apply(orders("http://127.0.0.1:9/h"))
    status, got = await server.request("GET", "/v1/pipelines/orders")
    assert status == 200

    # Sent back as it came: nothing changes.
    status, same = await server.request("PUT", "/v1/pipelines/orders", json=got)
    assert status == 200, same
    assert same == got

    # One line edited: that line changes, and the routes keep their destinations.
    got["destinations"][0]["when"] = "payload.amount > 500"
    got["steps"][0]["filter.match"]["expression"] = "payload.amount > 50"
    status, edited = await server.request("PUT", f"/v1/pipelines/{got['id']}", json=got)
    assert status == 200, edited
    assert edited["id"] == got["id"]
    assert [d["id"] for d in edited["destinations"]] == [d["id"] for d in got["destinations"]]
    assert edited["destinations"][0]["when"] == "payload.amount > 500"
    assert edited["steps"][0]["filter.match"]["expression"] == "payload.amount > 50"
    _, dests = await server.request("GET", "/v1/destinations")
    assert sorted(d["name"] for d in dests["data"]) == ["audit", "hooks"]

    # A PUT to a new name creates the pipeline.
    copy = {k: v for k, v in got.items() if k != "id"}
    status, made = await server.request("PUT", "/v1/pipelines/orders-v2", json={**copy, "name": "orders-v2"})
    assert status == 201, made
    status, _ = await server.request("DELETE", "/v1/pipelines/orders-v2")
    assert status == 204
    _, listed = await server.request("GET", "/v1/pipelines")
    assert listed["data"] == [edited]


async def test_pipeline_read_only_fields_are_checked(server: RunningServer) -> None:
    await server.apply(orders("http://127.0.0.1:9/h"))
    _, got = await server.request("GET", "/v1/pipelines/orders")

    status, body = await server.request("PUT", "/v1/pipelines/orders", json={**got, "id": "pip_other"})
    assert status == 422 and error_of(body)["field"] == "id"

    status, body = await server.request("PUT", "/v1/pipelines/orders", json={**got, "endpoint": True})
    assert status == 422 and error_of(body)["field"] == "endpoint"

    routes = [{**got["destinations"][0], "id": "dst_missing"}]
    status, body = await server.request("PUT", "/v1/pipelines/orders", json={**got, "destinations": routes})
    assert status == 422 and error_of(body)["field"] == "destinations[0].id"

    routes = [{**got["destinations"][0], "kind": "slack"}]
    status, body = await server.request("PUT", "/v1/pipelines/orders", json={**got, "destinations": routes})
    assert status == 422 and error_of(body)["field"] == "destinations[0].kind"

    routes = [{**got["destinations"][0], "webhook.out": {"url": "http://127.0.0.1:9/x"}}]
    status, body = await server.request("PUT", "/v1/pipelines/orders", json={**got, "destinations": routes})
    assert status == 422 and error_of(body)["field"] == "destinations[0].webhook.out"

    # A copy under a new name with the old id is refused, not silently made a second pipeline.
    status, body = await server.request("POST", "/v1/pipelines", json={**got, "name": "orders-copy"})
    assert status == 422 and error_of(body)["field"] == "id"
    copy = {k: v for k, v in got.items() if k != "id"}
    status, body = await server.request("POST", "/v1/pipelines", json={**copy, "name": "orders-copy"})
    assert status == 201, body
    assert [d["id"] for d in body["destinations"]] == [d["id"] for d in got["destinations"]]


async def test_destination_get_edit_put(server: RunningServer) -> None:
    await server.apply(orders("http://127.0.0.1:9/h"))
    status, got = await server.request("GET", "/v1/destinations/audit")
    assert status == 200

    status, same = await server.request("PUT", "/v1/destinations/audit", json=got)
    assert status == 200, same
    assert same == got

    got["config"]["url"] = "http://127.0.0.1:9/audit-v2"
    got["retry"] = {"schedule": [0, 2, 4]}
    status, edited = await server.request("PUT", f"/v1/destinations/{got['id']}", json=got)
    assert status == 200, edited
    assert edited["id"] == got["id"]
    assert edited["config"]["url"] == "http://127.0.0.1:9/audit-v2"
    assert edited["retry"] == {"schedule": [0, 2, 4]}

    status, body = await server.request("PUT", "/v1/destinations/audit", json={**got, "enabled": False})
    assert status == 422 and error_of(body)["field"] == "enabled"
    status, body = await server.request("PUT", "/v1/destinations/audit", json={**got, "name": "other"})
    assert status == 422 and error_of(body)["field"] == "name"
    status, body = await server.request(
        "PUT", "/v1/destinations/audit", json={**got, "config": {"url": "ftp://x"}}
    )
    assert status == 422, body

    # The YAML shape still works, and a PUT to a new name creates it.
    status, made = await server.request(
        "PUT", "/v1/destinations/crm", json={"webhook.out": {"url": "http://127.0.0.1:9/crm"}}
    )
    assert status == 201, made
    assert made["name"] == "crm" and made["kind"] == "webhook.out"
