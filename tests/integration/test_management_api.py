"""Management API (admin key): apply, pipelines, destinations, secrets, keys, health, OpenAPI, errors."""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson
import pytest

from ingestlayer.api import manage
from tests.support.api import error_of
from tests.support.server import RunningServer, start_server

HOOK = "https://hooks.acme.example/in"

RECIPE_YAML = f"""
pipelines:
  - name: feature-usage-to-webhook
    source: {{ match: [feature.used] }}
    steps:
      - filter.match: feature in {{export, api, webhook}}
    destinations:
      - webhook.out: {{ url: {HOOK}, auth: hmac, secret: ref:acme-hooks }}
  - name: signups
    source: {{ match: ["user.*"] }}
    destinations:
      - webhook.out: {{ url: {HOOK}/signups, when: plan = "free" }}
"""


def recipe_doc() -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "feature-usage-to-webhook",
                "source": {"match": ["feature.used"]},
                "steps": [{"filter.match": "feature in {export, api, webhook}"}],
                "destinations": [{"webhook.out": {"url": HOOK, "auth": "hmac", "secret": "ref:acme-hooks"}}],
            },
            {
                "name": "signups",
                "source": {"match": ["user.*"]},
                "destinations": [{"webhook.out": {"url": HOOK + "/signups", "when": 'plan = "free"'}}],
            },
        ]
    }


async def raw_request(
    server: RunningServer,
    method: str,
    path: str,
    data: bytes,
    content_type: str = "application/json",
    key: str | None = None,
) -> tuple[int, Any, bytes]:
    headers = {**server.auth(key), "Content-Type": content_type}
    async with server.session.request(method, server.url + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return resp.status, body, raw


async def pipeline_names(server: RunningServer) -> list[str]:
    status, body = await server.request("GET", "/v1/pipelines")
    assert status == 200
    return [p["name"] for p in body["data"]]


# ---- apply ---------------------------------------------------------------------------------------


async def test_apply_json_creates_then_is_unchanged(server: RunningServer) -> None:
    result = await server.apply(recipe_doc())
    assert result["dry_run"] is False
    assert result["summary"] == {"create": 4}
    kinds = sorted((c["kind"], c["name"], c["action"]) for c in result["changes"])
    assert kinds == [
        ("destination", "feature-usage-to-webhook/webhook.out", "create"),
        ("destination", "signups/webhook.out", "create"),
        ("pipeline", "feature-usage-to-webhook", "create"),
        ("pipeline", "signups", "create"),
    ]
    ids = {c["name"]: c["id"] for c in result["changes"]}
    assert ids["signups"].startswith("pip_") and ids["signups/webhook.out"].startswith("dst_")

    status, listed = await server.request("GET", "/v1/pipelines")
    assert status == 200
    by_name = {p["name"]: p for p in listed["data"]}
    assert set(by_name) == {"feature-usage-to-webhook", "signups"}
    usage = by_name["feature-usage-to-webhook"]
    assert usage["id"] == ids["feature-usage-to-webhook"]
    assert usage["source"] == {"match": ["feature.used"]}
    assert usage["steps"] == [
        {"filter.match": {"expression": "feature in {export, api, webhook}", "on_error": "skip"}}
    ]
    assert usage["enabled"] is True and usage["endpoint"] is False
    assert [(d["name"], d["kind"], d["when"]) for d in by_name["signups"]["destinations"]] == [
        ("signups/webhook.out", "webhook.out", 'plan = "free"')
    ]

    again = await server.apply(recipe_doc())
    assert again["summary"] == {"unchanged": 4}
    assert all(c["action"] == "unchanged" and c["diff"] == "" for c in again["changes"])
    assert {c["name"]: c["id"] for c in again["changes"]} == ids


async def test_apply_yaml_with_dry_run_changes_nothing(srv: RunningServer) -> None:
    status, body, _ = await raw_request(
        srv, "POST", "/v1/apply?dry_run=true", RECIPE_YAML.encode(), "application/yaml"
    )
    assert status == 200, body
    assert body["dry_run"] is True
    assert body["summary"] == {"create": 4}
    diff = next(c["diff"] for c in body["changes"] if c["name"] == "feature-usage-to-webhook")
    assert "+++ file/feature-usage-to-webhook" in diff
    assert "+    expression: feature in {export, api, webhook}" in diff
    # Nothing exists yet, so nothing has an id: the apply makes its own, and a dry run that
    # showed some would show ids that never come to be.
    assert [c["id"] for c in body["changes"]] == [None] * 4
    assert "dst_" not in "".join(c["diff"] for c in body["changes"])
    assert await pipeline_names(srv) == []
    _, dests = await srv.request("GET", "/v1/destinations")
    assert dests["data"] == []

    status, body, _ = await raw_request(srv, "POST", "/v1/apply", RECIPE_YAML.encode(), "application/yaml")
    assert status == 200
    assert body["dry_run"] is False and body["summary"] == {"create": 4}
    assert all(c["id"].startswith(("pip_", "dst_")) for c in body["changes"])
    assert await pipeline_names(srv) == ["feature-usage-to-webhook", "signups"]

    # The same document as YAML again: unchanged. Same content as JSON: unchanged too.
    _, body, _ = await raw_request(srv, "POST", "/v1/apply", RECIPE_YAML.encode(), "application/x-yaml")
    assert body["summary"] == {"unchanged": 4}
    assert (await srv.apply(recipe_doc()))["summary"] == {"unchanged": 4}


async def test_apply_flags_read_any_yes_or_no_word_and_refuse_others(srv: RunningServer) -> None:
    # Each of these asks for a dry run: nothing may be created.
    for flag in ("True", "yes", "ON", "1"):
        status, body, _ = await raw_request(
            srv, "POST", f"/v1/apply?dry_run={flag}", RECIPE_YAML.encode(), "application/yaml"
        )
        assert status == 200 and body["dry_run"] is True, (flag, body)
    # Asked for in the query with a JSON body, it holds too.
    status, body = await srv.request("POST", "/v1/apply?dry_run=true", json={"document": recipe_doc()})
    assert status == 200 and body["dry_run"] is True, body
    assert await pipeline_names(srv) == []
    # A word that is neither yes nor no is refused, naming the parameter, before anything changes.
    for query in ("dry_run=maybe", "dry_run=", "prune=yess"):
        status, body, _ = await raw_request(
            srv, "POST", f"/v1/apply?{query}", RECIPE_YAML.encode(), "application/yaml"
        )
        assert status == 422, (query, body)
        assert error_of(body)["field"] == query.split("=")[0], body
    assert await pipeline_names(srv) == []
    status, body, _ = await raw_request(
        srv, "POST", "/v1/apply?dry_run=no", RECIPE_YAML.encode(), "application/yaml"
    )
    assert status == 200 and body["dry_run"] is False and body["summary"] == {"create": 4}, body


async def test_apply_names_the_referenced_secrets_not_set_yet(srv: RunningServer) -> None:
    doc = recipe_doc()
    doc["pipelines"][1]["destinations"] = [
        {"webhook.out": {"url": HOOK, "secret_headers": {"X-Token": "ref:partner.token"}}}
    ]
    # Accepted: a secret may be set after the configuration that uses it. But said.
    status, body = await srv.request("POST", "/v1/apply", json={"document": doc, "dry_run": True})
    assert status == 200 and body["missing_secrets"] == ["acme-hooks", "partner.token"], body
    status, _ = await srv.request("PUT", "/v1/secrets/acme-hooks", json={"value": "s3cret"})
    assert status == 200
    status, body = await srv.request("POST", "/v1/apply", json={"document": doc})
    assert status == 200 and body["missing_secrets"] == ["partner.token"], body
    status, body, _ = await raw_request(srv, "POST", "/v1/apply", RECIPE_YAML.encode(), "application/yaml")
    assert status == 200 and body["missing_secrets"] == [], body


async def test_apply_dry_run_update_shows_diff_and_keeps_the_old_config(srv: RunningServer) -> None:
    await srv.apply(recipe_doc())
    changed = recipe_doc()
    changed["pipelines"][0]["steps"] = [{"filter.match": "feature in {export}"}]
    status, body = await srv.request("POST", "/v1/apply", json={"document": changed, "dry_run": True})
    assert status == 200
    assert body["summary"] == {"update": 1, "unchanged": 3}
    (upd,) = [c for c in body["changes"] if c["action"] == "update"]
    assert upd["name"] == "feature-usage-to-webhook"
    assert "-    expression: feature in {export, api, webhook}" in upd["diff"]
    assert "+    expression: feature in {export}" in upd["diff"]
    _, p = await srv.request("GET", "/v1/pipelines/feature-usage-to-webhook")
    assert p["steps"][0]["filter.match"]["expression"] == "feature in {export, api, webhook}"

    body = await srv.apply(changed)
    assert body["summary"] == {"update": 1, "unchanged": 3}
    _, p = await srv.request("GET", "/v1/pipelines/feature-usage-to-webhook")
    assert p["steps"][0]["filter.match"]["expression"] == "feature in {export}"


async def test_apply_prune_removes_what_is_not_in_the_document(srv: RunningServer) -> None:
    await srv.apply(recipe_doc())
    only = {"pipelines": recipe_doc()["pipelines"][1:]}
    status, body = await srv.request("POST", "/v1/apply", json={"document": only, "prune": True})
    assert status == 200
    deleted = sorted((c["kind"], c["name"]) for c in body["changes"] if c["action"] == "delete")
    assert deleted == [
        ("destination", "feature-usage-to-webhook/webhook.out"),
        ("pipeline", "feature-usage-to-webhook"),
    ]
    assert await pipeline_names(srv) == ["signups"]


CONFIG_ERRORS: list[tuple[dict[str, Any], str, list[str]]] = [
    (
        {"steps": [{"filter.match": "feature in {export, api"}]},
        "pipelines[0].steps[0].filter.match",
        ["position", "expected"],
    ),
    ({"steps": [{"enrich.telepathy": {"from": "user_id"}}]}, "pipelines[0].steps[0]", ["unknown step"]),
    (
        {"destinations": [{"carrier.pigeon": {"url": HOOK}}]},
        "pipelines[0].destinations[0].carrier.pigeon",
        ["unknown destination kind", "webhook.out"],
    ),
    (
        {"destinations": [{"webhook.out": {"url": HOOK, "auth": "hmac", "secret": "whsec_LITERAL"}}]},
        "pipelines[0].destinations[0].webhook.out.secret",
        ["ref:", "env:"],
    ),
    (
        {"destinations": [{"webhook.out": {"url": HOOK, "when": "plan = "}}]},
        "pipelines[0].destinations[0].when",
        ["position"],
    ),
    ({"destinations": [{"ref": "does-not-exist"}]}, "pipelines[0].destinations[0].ref", ["does-not-exist"]),
    ({"source": {"match": ["invoice..x"]}}, "pipelines[0].source.match", ["invoice..x"]),
    ({"name": "bad name!"}, "pipelines[0].name", []),
]


async def test_config_errors_are_422_naming_the_path(srv: RunningServer) -> None:
    for override, field, words in CONFIG_ERRORS:
        doc = recipe_doc()
        doc["pipelines"][0].update(override)
        status, body = await srv.request("POST", "/v1/apply", json={"document": doc})
        assert status == 422, (override, body)
        err = error_of(body)
        assert err["code"] == "validation_error"
        assert err["field"] == field, (override, err)
        assert err["message"].startswith(field + ": "), err
        for w in words:
            assert w in err["message"], (w, err)
        assert "LITERAL" not in err["message"]  # an inlined secret is never echoed back
    # Nothing was applied by any of them.
    assert await pipeline_names(srv) == []


async def test_filter_error_names_position_in_the_expression(srv: RunningServer) -> None:
    doc = recipe_doc()
    doc["pipelines"][1]["steps"] = [{"filter.match": "plan ~ 3"}]
    status, body = await srv.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422
    err = error_of(body)
    assert err["field"] == "pipelines[1].steps[0].filter.match"
    assert "at position 5: expected an operator" in err["message"]
    assert "found '~'" in err["message"]


async def test_apply_request_errors(srv: RunningServer) -> None:
    cases: list[tuple[bytes, str, int, str | None]] = [
        (b"pipelines: [\n  - name: x\n    source: {match: [a", "application/yaml", 400, None),
        (b"- just\n- a list\n", "application/yaml", 422, None),
        (b"pipelines: 5\n", "application/yaml", 422, "pipelines"),
        (b"{", "application/json", 400, None),
        (b"{}", "application/json", 422, "document"),
        (b'{"document": {}, "dryrun": true}', "application/json", 422, "dryrun"),
        (b'{"document": []}', "application/json", 422, "document"),
        (b'{"document": {"pipelines": {"a": 1}}}', "application/json", 422, "pipelines"),
        (b'{"document": {"pipelines": [], "extras": []}}', "application/json", 422, "extras"),
    ]
    for raw, ctype, code, field in cases:
        status, body, _ = await raw_request(srv, "POST", "/v1/apply", raw, ctype)
        assert status == code, (raw, body)
        err = error_of(body)
        if field is not None:
            assert err["field"] == field, (raw, err)
    # YAML that cannot be read: the code an empty document gets too, and PyYAML's problem and
    # where on one line (its own text spans lines and quotes `"<byte string>"`).
    status, body, _ = await raw_request(srv, "POST", "/v1/apply", cases[0][0], "application/yaml")
    assert error_of(body)["code"] == "invalid_yaml", body
    assert error_of(body)["message"] == (
        "the body is not valid YAML: expected the node content, but found '-' (line 2, column 3)"
    ), body


async def test_a_value_that_is_no_object_is_said_without_naming_our_classes(srv: RunningServer) -> None:
    # Pydantic's message named the model behind the field: "Input should be a valid dictionary or
    # instance of _PipelineModel" (or ApplyRequest, for the whole body).
    for raw in (b"null", b"[]", b'"document"'):
        status, body, _ = await raw_request(srv, "POST", "/v1/apply", raw, "application/json")
        assert status == 422, (raw, body)
        assert error_of(body)["message"] == "the request body must be a JSON object", (raw, body)
    cases: list[tuple[str, str, Any, str]] = [
        ("/v1/apply", "POST", {"document": {"pipelines": [[]]}}, "pipelines[0]"),
        ("/v1/apply", "POST", {"document": {"sources": [5]}}, "sources[0]"),
        ("/v1/pipelines", "POST", {"name": "p", "source": None, "destinations": [{"ref": "d"}]}, "source"),
        ("/v1/entities/bulk", "POST", {"entities": [None]}, "entities[0]"),
    ]
    for path, method, sent, field in cases:
        status, body = await srv.request(method, path, json=sent)
        assert status == 422, (sent, body)
        err = error_of(body)
        assert err["field"] == field, (sent, err)
        assert err["message"] == f"{field}: Input should be a valid dictionary", (sent, err)


async def test_a_rule_between_fields_names_the_field_it_is_about(srv: RunningServer) -> None:
    """`verify: stripe` without a secret named no field on /v1/sources, and `sources[0]` on
    /v1/apply: the secret is what is missing."""
    status, body = await srv.request("POST", "/v1/sources", json={"name": "bad", "verify": "stripe"})
    assert status == 422 and error_of(body)["field"] == "secret", body
    assert error_of(body)["message"] == "secret: verify: stripe needs a secret", body
    doc = {"sources": [{"name": "bad", "verify": "stripe"}]}
    status, body = await srv.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422 and error_of(body)["field"] == "sources[0].secret", body


# ---- pipelines CRUD -------------------------------------------------------------------------------


async def test_pipelines_crud(srv: RunningServer) -> None:
    spec = recipe_doc()["pipelines"][1]
    status, created = await srv.request("POST", "/v1/pipelines", json=spec)
    assert status == 201, created
    assert created["name"] == "signups" and created["id"].startswith("pip_")
    assert created["source"] == {"match": ["user.*"]}
    pid = created["id"]

    for key in ("signups", pid):
        status, got = await srv.request("GET", f"/v1/pipelines/{key}")
        assert status == 200 and got["id"] == pid

    status, updated = await srv.request(
        "PUT", "/v1/pipelines/signups", json={**spec, "source": {"match": ["user.signed_up"]}}
    )
    assert status == 200, updated
    assert updated["id"] == pid
    assert updated["source"] == {"match": ["user.signed_up"]}
    # The name may be left out of a PUT body; a different name is refused.
    status, updated = await srv.request(
        "PUT", "/v1/pipelines/signups", json={k: v for k, v in spec.items() if k != "name"}
    )
    assert status == 200 and updated["source"] == {"match": ["user.*"]}
    status, body = await srv.request("PUT", "/v1/pipelines/signups", json={**spec, "name": "renamed"})
    assert status == 422 and error_of(body)["field"] == "name"
    status, body = await srv.request(
        "PUT", "/v1/pipelines/signups", json={**spec, "steps": [{"filter.match": "a ="}]}
    )
    assert status == 422 and error_of(body)["field"] == "steps[0].filter.match"
    _, got = await srv.request("GET", "/v1/pipelines/signups")
    assert got["steps"] == []

    status, body = await srv.request("POST", "/v1/pipelines", json={"name": "x"})
    assert status == 422
    assert error_of(body)["field"] == "source"

    _, dests = await srv.request("GET", "/v1/destinations")
    inline = [d["name"] for d in dests["data"] if d["name"].startswith("signups/")]
    assert inline, dests
    status, _ = await srv.request("DELETE", f"/v1/pipelines/{pid}")
    assert status == 204
    # Its inline destinations went with it.
    _, dests = await srv.request("GET", "/v1/destinations")
    assert not [d for d in dests["data"] if d["name"].startswith("signups/")]
    for key in ("signups", pid):
        status, body = await srv.request("GET", f"/v1/pipelines/{key}")
        assert status == 404 and error_of(body)["code"] == "not_found"
    status, body = await srv.request("DELETE", "/v1/pipelines/signups")
    assert status == 404
    error_of(body)
    assert await pipeline_names(srv) == []


# ---- destinations CRUD ------------------------------------------------------------------------------


async def test_destinations_crud_and_in_use_conflict(srv: RunningServer) -> None:
    status, dest = await srv.request(
        "POST",
        "/v1/destinations",
        json={
            "name": "central",
            "webhook.out": {"url": HOOK, "auth": "bearer", "secret": "env:CENTRAL_TOKEN"},
        },
    )
    assert status == 201, dest
    assert dest["name"] == "central" and dest["kind"] == "webhook.out" and dest["id"].startswith("dst_")
    assert dest["config"]["url"] == HOOK
    assert dest["config"]["secret"] == "env:CENTRAL_TOKEN"
    did = dest["id"]

    for key in ("central", did):
        status, got = await srv.request("GET", f"/v1/destinations/{key}")
        assert status == 200 and got["id"] == did
    _, listed = await srv.request("GET", "/v1/destinations")
    assert [d["name"] for d in listed["data"]] == ["central"]

    # Updating by name keeps the id.
    status, dest2 = await srv.request(
        "POST", "/v1/destinations", json={"name": "central", "webhook.out": {"url": HOOK + "/v2"}}
    )
    assert status == 200 and dest2["id"] == did and dest2["config"]["url"] == HOOK + "/v2"

    status, p = await srv.request(
        "POST",
        "/v1/pipelines",
        json={"name": "uses-central", "source": {"match": ["*"]}, "destinations": [{"ref": "central"}]},
    )
    assert status == 201, p
    assert p["destinations"][0]["id"] == did

    status, body = await srv.request("DELETE", "/v1/destinations/central")
    assert status == 409
    err = error_of(body)
    assert err["code"] == "conflict"
    assert "uses-central" in err["message"]
    assert (await srv.request("GET", f"/v1/destinations/{did}"))[0] == 200

    assert (await srv.request("DELETE", "/v1/pipelines/uses-central"))[0] == 204
    status, _ = await srv.request("DELETE", f"/v1/destinations/{did}")
    assert status == 204
    status, body = await srv.request("GET", "/v1/destinations/central")
    assert status == 404
    error_of(body)
    status, body = await srv.request("DELETE", "/v1/destinations/central")
    assert status == 404

    for bad, field in [
        ({"webhook.out": {"url": HOOK}}, "name"),
        ({"name": "x", "webhook.out": {"url": "not a url"}}, "webhook.out.url"),
        ({"name": "x", "webhook.out": {"url": HOOK, "auth": "bearer", "secret": "tok_LITERAL"}}, None),
    ]:
        status, body = await srv.request("POST", "/v1/destinations", json=bad)
        assert status == 422, (bad, body)
        err = error_of(body)
        if field:
            assert err["field"] == field
        assert "LITERAL" not in err["message"]


# ---- secrets --------------------------------------------------------------------------------------


async def test_secret_values_never_appear_in_any_response(srv: RunningServer) -> None:
    value = "whsec_VERY-SECRET-VALUE-4242"
    responses: list[bytes] = []

    async def call(method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with srv.session.request(method, srv.url + path, json=json, headers=srv.auth()) as resp:
            raw = await resp.read()
            responses.append(raw)
            return resp.status, (orjson.loads(raw) if raw else None)

    assert await call("PUT", "/v1/secrets/acme-hooks", {"value": value}) == (
        200,
        {"name": "acme-hooks", "replaced": False},
    )
    assert await call("PUT", "/v1/secrets/acme-hooks", {"value": value + "-v2"}) == (
        200,
        {"name": "acme-hooks", "replaced": True},
    )
    status, body = await call("PUT", "/v1/secrets/other.token_1", {"value": value})
    assert status == 200
    status, listed = await call("GET", "/v1/secrets")
    assert status == 200
    assert listed == {"data": [{"name": "acme-hooks"}, {"name": "other.token_1"}]}

    status, _ = await call("POST", "/v1/apply", {"document": recipe_doc()})
    assert status == 200
    status, dests = await call("GET", "/v1/destinations")
    secrets_shown = [d["config"].get("secret") for d in dests["data"]]
    assert "ref:acme-hooks" in secrets_shown
    assert all(s is None or s.startswith(("ref:", "env:")) for s in secrets_shown)
    await call("GET", "/v1/pipelines")
    await call("GET", "/v1/pipelines/feature-usage-to-webhook")
    await call("GET", "/v1/destinations/feature-usage-to-webhook/webhook.out")

    for bad_name in ("bad name", "slash%2Fname", "semi;colon"):
        status, body = await call("PUT", f"/v1/secrets/{bad_name}", {"value": value})
        assert status in (404, 422), (bad_name, body)
        error_of(body)
    status, body = await call("PUT", "/v1/secrets/empty", {"value": ""})
    assert status == 422 and error_of(body)["field"] == "value"
    status, body = await call("PUT", "/v1/secrets/x", {"value": value, "extra": 1})
    assert status == 422 and error_of(body)["field"] == "extra"

    assert (await call("DELETE", "/v1/secrets/other.token_1"))[0] == 204
    status, body = await call("DELETE", "/v1/secrets/other.token_1")
    assert status == 404 and error_of(body)["code"] == "not_found"
    assert (await call("GET", "/v1/secrets"))[1] == {"data": [{"name": "acme-hooks"}]}

    for raw in responses:
        assert b"VERY-SECRET-VALUE" not in raw, raw


# ---- keys ----------------------------------------------------------------------------------------


async def test_keys_create_list_revoke(srv: RunningServer) -> None:
    status, ingest = await srv.request("POST", "/v1/keys", json={"kind": "ingest", "name": "backend"})
    assert status == 201, ingest
    assert ingest["kind"] == "ingest" and ingest["key"].startswith("il_ingest_")
    status, admin = await srv.request("POST", "/v1/keys", json={"kind": "admin"})
    assert status == 201 and admin["key"].startswith("il_admin_")
    assert admin["id"] != ingest["id"]

    async with srv.session.get(srv.url + "/v1/keys", headers=srv.auth()) as resp:
        raw = await resp.read()
    listed = orjson.loads(raw)["data"]
    assert len(listed) == 4  # the two made with the project, and these two
    by_id = {k["id"]: k for k in listed}
    assert by_id[ingest["id"]]["name"] == "backend"
    assert by_id[ingest["id"]]["kind"] == "ingest"
    assert by_id[ingest["id"]]["revoked_at"] is None
    assert ingest["key"].startswith(by_id[ingest["id"]]["prefix"])
    # Keys are shown once: neither the keys nor their hashes are listed.
    for key in (ingest["key"], admin["key"], srv.admin_key, srv.ingest_key):
        assert key.encode() not in raw
    assert all(set(k) <= {"id", "kind", "prefix", "name", "created_at", "revoked_at"} for k in listed)

    # The new keys work for what they may do.
    assert (await srv.ingest("a.b", {}))[0] == 202
    status, _ = await srv.request("POST", "/v1/events", key=ingest["key"], json={"type": "a.b"})
    assert status == 202
    assert (await srv.request("GET", "/v1/pipelines", key=admin["key"]))[0] == 200
    assert (await srv.request("GET", "/v1/pipelines", key=ingest["key"]))[0] == 403

    # Revoking is immediate on this server.
    for k in (ingest, admin):
        status, _ = await srv.request("DELETE", f"/v1/keys/{k['id']}")
        assert status == 204
    status, body = await srv.request("POST", "/v1/events", key=ingest["key"], json={"type": "a.b"})
    assert status == 401 and error_of(body)["code"] == "unauthorized"
    status, body = await srv.request("GET", "/v1/pipelines", key=admin["key"])
    assert status == 401
    _, listed2 = await srv.request("GET", "/v1/keys")
    revoked = {k["id"]: k["revoked_at"] for k in listed2["data"]}
    assert revoked[ingest["id"]] is not None and revoked[admin["id"]] is not None
    # The project's own keys still work.
    assert (await srv.request("GET", "/v1/keys"))[0] == 200
    assert (await srv.ingest("a.b", {}))[0] == 202

    status, body = await srv.request("DELETE", "/v1/keys/key_nope")
    assert status == 404 and error_of(body)["code"] == "not_found"
    for bad in ({"kind": "root"}, {}, {"kind": "admin", "scope": "all"}):
        status, body = await srv.request("POST", "/v1/keys", json=bad)
        assert status == 422, (bad, body)
        error_of(body)
    # It said "kind: String should match pattern '^(ingest|admin)$'".
    status, body = await srv.request("POST", "/v1/keys", json={"kind": "root"})
    assert error_of(body) == {
        "code": "validation_error",
        "message": "kind: Input should be 'ingest' or 'admin'",
        "field": "kind",
    }


# ---- health, metrics, OpenAPI ------------------------------------------------------------------------


async def test_health_ready_and_metrics(srv: RunningServer) -> None:
    async with srv.session.get(srv.url + "/healthz") as resp:  # no key needed
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with srv.session.get(srv.url + "/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}

    async def metric(name: str) -> float:
        async with srv.session.get(srv.url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
        m = re.search(rf"^{name}_total (\S+)$", text, re.M)
        assert m, text
        return float(m.group(1))

    ingested = await metric("ingestlayer_events_ingested")
    dupes = await metric("ingestlayer_events_duplicate")
    for i in range(3):
        assert (await srv.ingest("m.x", {"i": i}))[0] == 202
    assert (await srv.ingest("m.x", {}, idempotency_key="once"))[0] == 202
    assert (await srv.ingest("m.x", {}, idempotency_key="once"))[0] == 200
    assert await metric("ingestlayer_events_ingested") == ingested + 4
    assert await metric("ingestlayer_events_duplicate") == dupes + 1


async def test_head_is_answered_as_get_without_the_body(srv: RunningServer) -> None:
    """Uptime monitors send HEAD (RFC 9110: a server must support GET and HEAD); every route
    answered it 405, /healthz included."""
    for path, key in [
        ("/healthz", None),
        ("/readyz", None),
        ("/metrics", None),
        ("/openapi.json", None),
        ("/login", None),
        ("/", None),  # the dashboard sends a browser without a session to sign in
        ("/v1/keys", srv.admin_key),
        ("/v1/events?limit=1", srv.admin_key),
        ("/v1/events?limit=1", None),
        ("/v1/keys/key_nope", srv.admin_key),  # DELETE only: HEAD is no more allowed than GET
    ]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with srv.session.get(srv.url + path, headers=headers, allow_redirects=False) as got:
            await got.read()
        async with srv.session.head(srv.url + path, headers=headers, allow_redirects=False) as head:
            assert head.status == got.status, (path, head.status, got.status)
            assert head.headers.get("Content-Type") == got.headers.get("Content-Type"), path
            assert await head.read() == b"", path
    # Not where a GET changes something: Slack's OAuth start makes a state, its callback uses
    # one up; a link checker's HEAD must do neither.
    for path in ("/oauth/slack/callback?code=c&state=s", "/v1/connections/slack/authorize?name=x"):
        async with srv.session.head(srv.url + path, headers=srv.auth(), allow_redirects=False) as head:
            assert head.status == 405, (path, head.status)
    # The head says how long the GET's body is.
    async with srv.session.get(srv.url + "/healthz") as got:
        length = len(await got.read())
    async with srv.session.head(srv.url + "/healthz") as head:
        assert head.headers["Content-Length"] == str(length)


async def test_openapi_documents_ingest_and_management(srv: RunningServer) -> None:
    async with srv.session.get(srv.url + "/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    paths = doc["paths"]
    events_post = paths["/v1/events"]["post"]
    assert "202" in events_post["responses"]
    assert "application/json" in events_post["requestBody"]["content"]
    assert "get" in paths["/v1/events"]
    expected = {
        "/v1/apply": {"post"},
        "/v1/pipelines": {"get", "post"},
        "/v1/pipelines/{pipeline}": {"get", "put", "delete"},
        "/v1/destinations": {"get", "post"},
        "/v1/destinations/{destination}": {"get", "delete"},
        "/v1/destinations/{destination}/test": {"post"},
        "/v1/secrets": {"get"},
        "/v1/secrets/{name}": {"put", "delete"},
        "/v1/keys": {"get", "post"},
        "/v1/keys/{key_id}": {"delete"},
        "/v1/events/{event_id}": {"get"},
        "/v1/deliveries": {"get"},
        "/v1/deliveries/{delivery_id}": {"get"},
        "/v1/deliveries/{delivery_id}/replay": {"post"},
        "/v1/deliveries/replay": {"post"},
        "/v1/endpoints": {"get", "post"},
        "/v1/endpoints/{endpoint_id}": {"get", "patch", "delete"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    assert {"EventIn", "BatchIn", "IngestOut"} <= set(doc["components"]["schemas"])


async def test_openapi_describes_errors_as_they_are_sent(srv: RunningServer) -> None:
    """Every error answer is {"error": {"code", "message", "field"?}}; the document described a
    422 as FastAPI's {"detail": [...]}, which is never sent, so generated clients misread errors."""
    async with srv.session.get(srv.url + "/openapi.json") as resp:
        doc = await resp.json()
    assert "HTTPValidationError" not in orjson.dumps(doc).decode()
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"code", "message", "field"}
    assert set(detail["required"]) == {"code", "message"}
    documented = 0
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (status, response)
                    documented += 1
    assert documented > 40
    # And an actual error has that shape.
    status, body = await srv.request("POST", "/v1/endpoints", json={"url": "ftp://x", "events": ["a.b"]})
    assert status == 422 and set(body) == {"error"} and body["error"]["field"] == "url", body


# ---- errors everywhere ------------------------------------------------------------------------------

GARBAGE: list[bytes] = [
    b"",
    b"garbage",
    b"\x00\xff\xfe",
    b"[]",
    b"null",
    b"123",
    b'"text"',
    b"{",
    b'{"a": 1}',
    b'{"name": 5, "source": 7, "destinations": "x", "document": 1, "value": [], "kind": {}}',
    b'{"name": "\xc3\x28"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"url": "http://[::1", "events": ["a.b"]}',
    b'{"url": "https://ok.example", "events": ["..."], "format": "xml"}',
    b'{"status": ["nope"], "limit": -1}',
    b'{"status": "dead"}',
    b'{"document": {"pipelines": [{"name": "x", "source": {"match": ["*"]}, "steps": [{"filter.match": 5}],'
    b' "destinations": [{"webhook.out": {"url": "https://a.example", "timeout": 1e999}}]}]}}',
]


async def test_a_body_that_is_not_json_is_a_400_on_every_route(srv: RunningServer) -> None:
    hook = {"url": "https://a.example/in", "events": ["a.b"]}
    _, ep = await srv.request("POST", "/v1/endpoints", json=hook)
    routes = [
        ("POST", "/v1/events"),
        ("POST", "/v1/pipelines"),
        ("PUT", "/v1/secrets/some-name"),
        ("POST", "/v1/endpoints"),
        ("PATCH", f"/v1/endpoints/{ep['id']}"),
        ("POST", "/v1/deliveries/replay"),
        ("POST", "/v1/identify"),
        ("POST", "/v1/sources"),
        ("PUT", "/v1/sources/some-name"),
    ]
    for method, path in routes:
        for raw, ctype in [
            (b"not json", "text/plain"),
            (b"not json", "application/json"),
            (b'{"a": ', "application/json"),
            (b"", "application/json"),
        ]:
            status, body, text = await raw_request(srv, method, path, raw, ctype)
            assert status == 400, (method, path, raw, ctype, text)
            assert error_of(body)["code"] == "invalid_json"
        # JSON, but not an object: the field-less 422 says what the body must be.
        status, body, text = await raw_request(srv, method, path, b"[1, 2]")
        assert status == 422 and "JSON object" in error_of(body)["message"], (path, text)
        # What curl -d sends (form-encoded) and text/plain are read as JSON, as the ingest path
        # reads any body; a body labelled as something else is not JSON.
        for loose in ("application/x-www-form-urlencoded", "text/plain; charset=utf-8"):
            status, body, text = await raw_request(srv, method, path, b'{"a": 1}', loose)
            assert status != 415 and (status < 400 or error_of(body)["code"] != "invalid_json"), text
        if path != "/v1/events":  # the ingest path reads any body as JSON
            status, body, text = await raw_request(srv, method, path, b'{"a": 1}', "application/xml")
            assert status == 415 and "Content-Type: application/json" in error_of(body)["message"], text


async def test_garbage_bodies_never_cause_a_500(srv: RunningServer) -> None:
    # A closed local port: test sends fail at once instead of waiting on DNS.
    dead_url = "http://127.0.0.1:9/hook"
    _, ep = await srv.request("POST", "/v1/endpoints", json={"url": dead_url, "events": ["a.b"]})
    routes = [
        ("POST", "/v1/apply"),
        ("POST", "/v1/pipelines"),
        ("PUT", "/v1/pipelines/some-name"),
        ("POST", "/v1/destinations"),
        ("POST", f"/v1/destinations/{ep['destination_id']}/test"),
        ("PUT", "/v1/secrets/some-name"),
        ("POST", "/v1/keys"),
        ("POST", "/v1/endpoints"),
        ("PATCH", f"/v1/endpoints/{ep['id']}"),
        ("POST", "/v1/deliveries/replay"),
        ("POST", "/v1/deliveries/dlv_nope/replay"),
        ("POST", "/v1/events"),
    ]
    for method, path in routes:
        for raw in GARBAGE:
            for ctype in ("application/json", "text/plain") if raw in GARBAGE[:5] else ("application/json",):
                status, body, text = await raw_request(srv, method, path, raw, ctype)
                where = (method, path, raw[:60], ctype, text[:200])
                assert status < 500, where
                if status >= 400:
                    assert body is not None, where
                    error_of(body)
    # YAML apply gets its own garbage.
    for raw in [b"\x00\xff", b"{{{{", b"- - - -", b"pipelines:\n  - !!python/object:os.system 1", b"a: b: c"]:
        status, body, text = await raw_request(srv, "POST", "/v1/apply", raw, "application/yaml")
        assert 400 <= status < 500, (raw, text)
        error_of(body)
    # The server is still healthy and nothing was created by the garbage.
    assert (await srv.request("GET", "/healthz"))[0] == 200
    assert await pipeline_names(srv) == [f"endpoint:{ep['id']}"]
    _, eps = await srv.request("GET", "/v1/endpoints")
    assert [e["id"] for e in eps["data"]] == [ep["id"]]
    assert eps["data"][0]["events"] == ["a.b"] and eps["data"][0]["url"] == dead_url


async def test_errors_have_the_error_shape_for_routing_and_auth(srv: RunningServer) -> None:
    checks = [
        ("GET", "/v1/nothing-here", srv.admin_key, 404),
        ("GET", "/nope", srv.admin_key, 404),
        ("DELETE", "/v1/apply", srv.admin_key, 405),
        ("PATCH", "/v1/pipelines", srv.admin_key, 405),
        ("GET", "/v1/pipelines", "il_admin_wrong", 401),
        ("GET", "/v1/deliveries", "il_ingest_wrong", 401),
        ("GET", "/v1/pipelines", srv.ingest_key, 403),
    ]
    for method, path, key, code in checks:
        status, body = await srv.request(method, path, key=key)
        assert status == code, (method, path, body)
        err = error_of(body)
        assert err["code"] in {"not_found", "method_not_allowed", "unauthorized", "forbidden"}
    async with srv.session.get(srv.url + "/v1/pipelines") as resp:  # no Authorization at all
        assert resp.status == 401
        error_of(await resp.json())


async def test_apply_names_the_env_variables_the_server_will_not_let_pipelines_read(db_url: str) -> None:
    """`env:VAR` reads only what INGESTLAYER_ENV_SECRETS lists: a document naming another was
    accepted without a word, and its deliveries then failed and retried."""
    server = await start_server(db_url, env_secrets=("SLACK_*",))
    try:
        doc = {
            "pipelines": [
                {
                    "name": "alerts",
                    "source": {"match": ["invoice.*"]},
                    "destinations": [
                        {"webhook.out": {"url": HOOK, "auth": "bearer", "secret": "env:BILLING_TOKEN"}},
                        {"webhook.out": {"url": HOOK + "/2", "auth": "bearer", "secret": "env:SLACK_TOKEN"}},
                        {
                            "webhook.out": {
                                "url": HOOK + "/3",
                                "auth": "bearer",
                                "secret": "env:INGESTLAYER_KEY",
                            }
                        },
                    ],
                }
            ]
        }
        status, body = await server.request("POST", "/v1/apply", json={"document": doc, "dry_run": True})
        assert status == 200, body
        assert body["unreadable_env"] == ["BILLING_TOKEN", "INGESTLAYER_KEY"]
        assert body["missing_secrets"] == []
    finally:
        await server.stop()


async def test_enrichment_steps_are_shown_by_their_yaml_keys(srv: RunningServer) -> None:
    """GET showed enrich.entity's `from` as the Python attribute `from_`."""
    step = {"enrich.entity": {"from": "account_id", "entity": "account", "attach": ["plan"]}}
    doc = {
        "pipelines": [
            {
                "name": "usage",
                "source": {"match": ["feature.*"]},
                "steps": [step, {"enrich.person": {"from": "contact.email"}}],
                "destinations": [{"webhook.out": {"url": HOOK}}],
            }
        ]
    }
    await srv.apply(doc)
    status, body = await srv.request("GET", "/v1/pipelines/usage")
    assert status == 200, body
    assert body["steps"][0]["enrich.entity"]["from"] == "account_id"
    assert body["steps"][1]["enrich.person"]["from"] == "contact.email"
    assert "from_" not in orjson.dumps(body).decode()
    # The same document again is no change.
    again = await srv.apply(doc)
    assert again["summary"] == {"unchanged": 2}, again


async def test_curl_dash_d_works_on_json_routes(srv: RunningServer) -> None:
    """`curl -d '{...}'` labels the body application/x-www-form-urlencoded: identify, entities and
    replay answered 415 where POST /v1/events took the same request."""
    status, _, text = await raw_request(
        srv,
        "POST",
        "/v1/identify",
        b'{"user_id": "u_1", "traits": {"plan": "pro"}}',
        "application/x-www-form-urlencoded",
        key=srv.ingest_key,
    )
    assert status == 200, text
    status, entity = await srv.request("GET", "/v1/entities/user/u_1")
    assert status == 200 and entity["traits"] == {"plan": "pro"}, entity


async def test_a_document_is_validated_off_the_event_loop(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of pipelines take seconds to validate: ingest on the same loop must not wait."""
    threads: list[threading.Thread] = []
    real = manage.parse_config

    def recording(document: Any) -> Any:
        threads.append(threading.current_thread())
        return real(document)

    monkeypatch.setattr(manage, "parse_config", recording)
    loop_thread = threading.current_thread()
    hook = {"webhook.out": {"url": "http://127.0.0.1:9/in"}}
    await server.apply({"pipelines": [{"name": "p", "source": {"match": ["a.*"]}, "destinations": [hook]}]})
    status, _ = await server.request(
        "POST",
        "/v1/apply",
        data=b"pipelines:\n  - name: q\n    source: {match: [b.*]}\n"
        b"    destinations: [{webhook.out: {url: 'http://127.0.0.1:9/in'}}]\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert status == 200
    assert threads and all(t is not loop_thread for t in threads), threads


async def test_metrics_can_require_a_token(sqlite_url: str) -> None:
    """/metrics needed no key: with INGESTLAYER_METRICS_TOKEN set, a scrape must bear it."""
    server = await start_server(sqlite_url, metrics_token="scrape-token-1234")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-token-1234"}):
            async with server.session.get(server.url + "/metrics", headers=headers) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 401, body
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert "INGESTLAYER_METRICS_TOKEN" in error_of(body)["message"]
                assert "scrape-token-1234" not in str(body)
        headers = {"Authorization": "Bearer scrape-token-1234"}
        async with server.session.get(server.url + "/metrics", headers=headers) as resp:
            assert resp.status == 200
            assert "ingestlayer_events_ingested_total" in await resp.text()
        async with server.session.get(server.url + "/healthz") as resp:
            assert resp.status == 200  # probes stay open: a kubelet bears no token
    finally:
        await server.stop()
