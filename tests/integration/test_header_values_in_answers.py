"""Inline header values are never repeated by the API, and round trips still work.

A header written inline (``headers: {X-Api-Key: …}`` on a destination, an endpoint or an
enrich.person provider) is stored as written and sent as written, and is often a credential
whatever its name. Every management answer (a destination, an endpoint, a pipeline's step, an
apply's diff, the CLI's dry run) shows the header's name with its value masked, as the dashboard
does. A client that fetches one, edits something else and sends it back sends the mask: it means
the stored value, which is kept; the mask under a name with nothing stored is refused, naming the
field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingestlayer.urlmask import MASK
from tests.integration.test_echoed_credentials import delivered
from tests.support.cli import cli, ok
from tests.support.receiver import Receiver
from tests.support.server import RunningServer

DEST_KEY = "dest-header-credential-4e1a"
NEW_DEST_KEY = "dest-header-credential-rotated-8b2c"
STEP_KEY = "step-header-credential-6f0d"
ENDPOINT_KEY = "endpoint-header-credential-3a9e"


def leaks(answer: Any) -> list[str]:
    return [s for s in (DEST_KEY, NEW_DEST_KEY, STEP_KEY, ENDPOINT_KEY) if s in str(answer)]


def document(receiver: Receiver, dest_key: str = DEST_KEY) -> dict[str, Any]:
    provider = {
        "url": "https://people.example.com/lookup?email={email}",
        "mapping": {"company": "company.name"},
        "headers": {"X-Auth": STEP_KEY},
    }
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "steps": [{"enrich.person": {"from": "email", "provider": provider, "on_error": "skip"}}],
                "destinations": [{"ref": "ops-hook"}],
            }
        ],
        "destinations": [
            {
                "name": "ops-hook",
                "webhook.out": {
                    "url": receiver.url + "/hook",
                    "headers": {"X-Api-Key": dest_key, "X-Team": "billing", "X-Ref": "env:TEAM"},
                },
            }
        ],
    }


async def stored(server: RunningServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The destination's settings and the pipeline's enrich.person provider, as stored."""
    cfg = await server.runtime.store.load_project_config(server.project_id)
    (dest,) = [d for d in cfg.destinations.values() if d.name == "ops-hook"]
    (orders,) = [p for p in cfg.pipelines if p.name == "orders"]
    (step,) = [s for s in orders.config["steps"] if s["name"] == "enrich.person"]
    return dest.config["settings"], step["config"]["provider"]


async def test_applied_headers_are_shown_masked_and_kept_through_get_edit_put(
    server: RunningServer, receiver: Receiver, tmp_path: Path
) -> None:
    applied = await server.apply(document(receiver))
    assert leaks(applied) == [], applied  # the diff of what was created, too
    assert (await delivered(server, receiver, 1)).headers["X-Api-Key"] == DEST_KEY

    for path in ("/v1/destinations", "/v1/destinations/ops-hook", "/v1/pipelines", "/v1/pipelines/orders"):
        status, body = await server.request("GET", path)
        assert status == 200 and leaks(body) == [], (path, body)
    _, dest = await server.request("GET", "/v1/destinations/ops-hook")
    # Names shown, values masked; a reference is shown, as it holds no value.
    assert dest["config"]["headers"] == {"X-Api-Key": MASK, "X-Team": MASK, "X-Ref": "env:TEAM"}
    _, pipe = await server.request("GET", "/v1/pipelines/orders")
    assert pipe["steps"][0]["enrich.person"]["provider"]["headers"] == {"X-Auth": MASK}

    # Sent back as fetched, with another change: the header values stay the stored ones.
    dest["config"]["timeout"] = 5
    status, put = await server.request("PUT", "/v1/destinations/ops-hook", json=dest)
    assert status == 200 and put["config"]["timeout"] == 5 and leaks(put) == [], put
    pipe["description"] = "orders, enriched"
    status, put = await server.request("PUT", "/v1/pipelines/orders", json=pipe)
    assert status == 200 and put["description"] == "orders, enriched" and leaks(put) == [], put
    settings, provider = await stored(server)
    assert settings["headers"] == {"X-Api-Key": DEST_KEY, "X-Team": "billing", "X-Ref": "env:TEAM"}
    assert provider["headers"] == {"X-Auth": STEP_KEY}
    got = await delivered(server, receiver, 2)
    assert got.headers["X-Api-Key"] == DEST_KEY and got.headers["X-Team"] == "billing"

    # A dry run of a file with a new value: the change is named, neither value shown.
    doc = document(receiver, NEW_DEST_KEY)
    status, plan = await server.request("POST", "/v1/apply", json={"document": doc, "dry_run": True})
    assert status == 200 and leaks(plan) == [], plan
    changed = {c["name"]: c for c in plan["changes"]}
    assert changed["ops-hook"]["action"] == "update", changed
    assert "headers.X-Api-Key changes" in changed["ops-hook"]["diff"], changed["ops-hook"]
    # The CLI's dry run prints the same diff.
    (tmp_path / "pipes.json").write_text(json.dumps(doc))  # JSON is YAML
    run = ok(
        await cli(
            "apply",
            "-f",
            "pipes.json",
            "--dry-run",
            "--url",
            server.url,
            "--key",
            server.admin_key,
            cwd=tmp_path,
        )
    )
    assert leaks(run.out + run.err) == [] and "headers.X-Api-Key changes" in run.out, run.out

    # The mask under a name with nothing stored would be sent as the value itself: refused.
    dest["config"]["headers"]["X-Other"] = MASK
    status, refused = await server.request("PUT", "/v1/destinations/ops-hook", json=dest)
    assert status == 422 and refused["error"]["field"] == "config.headers.X-Other", refused
    pipe["steps"][0]["enrich.person"]["provider"]["headers"] = {"X-Other": MASK}
    status, refused = await server.request("PUT", "/v1/pipelines/orders", json=pipe)
    field = "steps[0].enrich.person.provider.headers.X-Other"
    assert status == 422 and refused["error"]["field"] == field, refused
    assert await stored(server) == (settings, provider)

    # HTTP compares header names case-insensitively: the mask under another case is the value.
    dest["config"]["headers"] = {"x-api-key": MASK}
    status, put = await server.request("PUT", "/v1/destinations/ops-hook", json=dest)
    assert status == 200 and put["config"]["headers"] == {"x-api-key": MASK}, put
    assert (await stored(server))[0]["headers"] == {"x-api-key": DEST_KEY}
    # A new value, written whole, replaces the stored one.
    dest["config"]["headers"] = {"X-Api-Key": NEW_DEST_KEY}
    status, put = await server.request("PUT", "/v1/destinations/ops-hook", json=dest)
    assert status == 200 and leaks(put) == [], put
    assert (await delivered(server, receiver, 3)).headers["X-Api-Key"] == NEW_DEST_KEY


async def test_a_destination_created_by_post_shows_its_header_values_masked(
    server: RunningServer, receiver: Receiver
) -> None:
    body = {
        "name": "ops-hook",
        "webhook.out": {"url": receiver.url + "/hook", "headers": {"X-Api-Key": DEST_KEY}},
    }
    status, created = await server.request("POST", "/v1/destinations", json=body)
    assert status == 201 and leaks(created) == [], created
    assert created["config"]["headers"] == {"X-Api-Key": MASK}
    _, listed = await server.request("GET", "/v1/destinations")
    assert leaks(listed) == [] and listed["data"][0]["config"]["headers"] == {"X-Api-Key": MASK}, listed


async def test_an_endpoint_shows_its_header_values_masked_and_keeps_them_through_a_patch(
    server: RunningServer, receiver: Receiver
) -> None:
    status, ep = await server.request(
        "POST",
        "/v1/endpoints",
        json={
            "url": receiver.url + "/hook",
            "events": ["order.*"],
            "auth": "none",
            "headers": {"X-Api-Key": ENDPOINT_KEY},
        },
    )
    assert status == 201 and leaks(ep) == [] and ep["headers"] == {"X-Api-Key": MASK}, ep
    assert (await delivered(server, receiver, 1)).headers["X-Api-Key"] == ENDPOINT_KEY
    for path in ("/v1/endpoints", f"/v1/endpoints/{ep['id']}"):
        status, body = await server.request("GET", path)
        assert status == 200 and leaks(body) == [], (path, body)

    # Sent back as shown, with a header added: the stored value is kept.
    headers = {**ep["headers"], "X-Team": "billing"}
    status, patched = await server.request(
        "PATCH", f"/v1/endpoints/{ep['id']}", json={"headers": headers, "description": "billing"}
    )
    assert status == 200 and leaks(patched) == [], patched
    assert patched["headers"] == {"X-Api-Key": MASK, "X-Team": MASK}, patched
    got = await delivered(server, receiver, 2)
    assert got.headers["X-Api-Key"] == ENDPOINT_KEY and got.headers["X-Team"] == "billing"

    status, refused = await server.request(
        "PATCH", f"/v1/endpoints/{ep['id']}", json={"headers": {"X-Nope": MASK}}
    )
    assert status == 422 and refused["error"]["field"] == "headers.X-Nope", refused
    assert (await delivered(server, receiver, 3)).headers["X-Api-Key"] == ENDPOINT_KEY
