"""URLs given for something ingestlayer calls hold no space or control character.

No valid URL holds one: the HTTP client used to percent-encode it (NUL as ``%00``) or drop it
(tab, CR, LF) when sending, so the receiver got another path than the one typed, and the user no
error. Every place a user gives such a URL now refuses it with the usual error naming the field:
``/v1/endpoints`` (create and update), ``/v1/apply`` (JSON and YAML) and ``ingestlayer apply -f``,
``/v1/destinations`` and ``/v1/pipelines``, for every destination kind and step that takes a URL;
a Slack or Discord webhook URL, held in a secret, is refused when it is used. What a user types
percent-encoded (``%20``, ``%00``) and non-ASCII host names and paths go on working.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from ingestlayer.store.schema import destinations
from ingestlayer.urlmask import MASK
from tests.support.api import FAST_RETRY, add_endpoint, error_of
from tests.support.cli import cli, ok, one_line_error
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

HOOK = "https://hooks.example.com/in"
RULE = "must not contain spaces or control characters"

# (URL, what the message says was found): one of each kind no URL may hold.
BAD_URLS: list[tuple[str, str]] = [
    ("https://hooks.example.com/a\x00b", "the control character U+0000 at character 28 (write it as %00"),
    ("https://hooks.example.com/a b", "a space at character 28 (write it as %20"),
    ("https://hooks.example.com/a\tb", "a tab (U+0009) at character 28"),
    ("https://hooks.example.com/a\rb", "a line break (U+000D)"),
    ("https://hooks.example.com/a\nb", "a line break (U+000A)"),
    ("https://hooks.example.com/a\x1fb", "U+001F"),
    ("https://hooks.example.com/a\x7fb", "U+007F at character 28 (write it as %7F"),
    ("https://hooks.example.com/a\x85b", "U+0085 at character 28 (write it as %C2%85"),
    ("https://hooks.exa mple.com/in", "a space at character 18"),
    (" https://hooks.example.com/in", "a space at character 1"),
    ("https://hooks.example.com/in\n", "a line break (U+000A) at character 29"),
    ("\x00https://hooks.example.com/in", "U+0000 at character 1"),
]


def assert_refused(status: int, body: Any, field: str, found: str) -> dict[str, Any]:
    assert status == 422, body
    err = error_of(body)
    assert err["code"] == "validation_error", err
    assert err.get("field") == field, err
    assert err["message"].startswith(f"{field}: "), err
    assert RULE in err["message"] and found in err["message"], err
    return err


async def deliveries_of(server: RunningServer, event_id: str) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        found: list[dict[str, Any]] = ev["deliveries"]
        return found if found and all(d["status"] in ("delivered", "dead") for d in found) else None

    result: list[dict[str, Any]] = await wait_for(done)
    return result


# ---- /v1/endpoints ---------------------------------------------------------------------------------------


async def test_an_endpoint_url_with_a_space_or_control_character_is_a_422(server: RunningServer) -> None:
    for url, found in BAD_URLS:
        status, body = await server.request("POST", "/v1/endpoints", json={"url": url, "events": ["a.*"]})
        err = assert_refused(status, body, "url", found)
        assert "webhook.out" not in err["message"], err
    # Nothing was made of any of them: no endpoint, no generated secret.
    _, listed = await server.request("GET", "/v1/endpoints")
    assert listed["data"] == []
    _, secrets = await server.request("GET", "/v1/secrets")
    assert secrets["data"] == []
    # The scheme and host rules keep their own message.
    for url in ("ftp://hooks.example.com/in", "hooks.example.com/in", "https:///in"):
        status, body = await server.request("POST", "/v1/endpoints", json={"url": url, "events": ["a.*"]})
        assert status == 422 and error_of(body)["field"] == "url", body
        assert error_of(body)["message"] == "url: must be an absolute http:// or https:// URL", body


async def test_an_endpoint_url_patched_with_a_control_character_is_refused_and_changes_nothing(
    server: RunningServer, receiver: Receiver
) -> None:
    ep = await add_endpoint(server, receiver)
    path = f"/v1/endpoints/{ep['id']}"
    _, before = await server.request("GET", path)
    for url, found in BAD_URLS:
        status, body = await server.request("PATCH", path, json={"url": url})
        assert_refused(status, body, "url", found)
        # Beside a valid change too: nothing of the PATCH is applied.
        status, body = await server.request("PATCH", path, json={"description": "x", "url": url})
        assert_refused(status, body, "url", found)
    _, after = await server.request("GET", path)
    assert after == before
    # Still delivered where it was, signed as before.
    _, ev = await server.ingest("invoice.created", {"n": 1})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "delivered", d
    (got,) = receiver.requests
    assert got.path == "/hooks" and got.verify(ep["secret"])["type"] == "invoice.created"


async def test_percent_encoded_and_non_ascii_endpoint_urls_still_work(
    server: RunningServer, receiver: Receiver
) -> None:
    # Typed percent-encoded, a space and a NUL are what the user means: sent as typed.
    typed = receiver.url + "/a%20b%00c/caf%C3%A9"
    ep = await add_endpoint(server, receiver, url=typed)
    assert ep["url"] == typed
    # A unicode path and an IDN host are taken and kept as typed, as before.
    status, idn = await server.request(
        "POST", "/v1/endpoints", json={"url": "https://bücher.example/straße", "events": ["b.*"]}
    )
    assert status == 201 and idn["url"] == "https://bücher.example/straße", idn
    unicode_path = receiver.url + "/café"
    status, body = await server.request(
        "PATCH", f"/v1/endpoints/{ep['id']}", json={"url": unicode_path, "retry": FAST_RETRY}
    )
    assert status == 200 and body["url"] == unicode_path, body

    _, ev = await server.ingest("invoice.created", {"n": 1})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "delivered", d
    status, body = await server.request("PATCH", f"/v1/endpoints/{ep['id']}", json={"url": typed})
    assert status == 200, body
    _, ev = await server.ingest("invoice.created", {"n": 2})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "delivered", d
    # The receiver decodes the path it got: the unicode one, then the one typed percent-encoded.
    assert [r.path for r in receiver.requests] == ["/café", "/a b\x00c/café"]


async def store_as_an_earlier_version_did(server: RunningServer, destination_id: str, url: str) -> None:
    """Write ``url`` into a destination's stored settings, past today's checks."""
    async with server.runtime.store.engines.write.begin() as conn:
        row = (
            await conn.execute(select(destinations.c.config).where(destinations.c.id == destination_id))
        ).scalar_one()
        config = orjson.loads(row)
        config["settings"]["url"] = url
        await conn.execute(
            update(destinations)
            .where(destinations.c.id == destination_id)
            .values(config=orjson.dumps(config).decode(), updated_at=time.time())
        )


async def test_a_url_stored_before_the_check_goes_on_delivering(
    server: RunningServer, receiver: Receiver
) -> None:
    """A destination stored by an earlier version with a space in its URL is not refused when
    read back: it goes on delivering as it did (percent-encoded), rather than failing every
    attempt until someone edits it. Only what is sent from now on is checked."""
    ep = await add_endpoint(server, receiver)
    # What an earlier version stored (written to the database as it was).
    await store_as_an_earlier_version_did(server, ep["destination_id"], receiver.url + "/old hooks")
    _, ev = await server.ingest("invoice.created", {"n": 1})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "delivered", d
    assert [r.path for r in receiver.requests] == ["/old hooks"]
    # Changing it is checked as any new input is.
    status, body = await server.request(
        "PATCH", f"/v1/endpoints/{ep['id']}", json={"url": receiver.url + "/new hooks"}
    )
    assert_refused(status, body, "url", "a space")


# ---- /v1/apply, ingestlayer apply -f, /v1/destinations and /v1/pipelines --------------------------------


NUL_URL = "https://hooks.example.com/a\x00b"
NUL_FOUND = "the control character U+0000 at character 28"
SPACE_URL = "https://api.example.com/v 1"
SPACE_FOUND = "a space at character 26"


def pipeline(destination: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "alerts",
        "source": {"match": ["a.*"]},
        "steps": steps or [],
        "destinations": [destination],
    }


NOTION = {
    "token": "ref:notion",
    "database_id": "0f6e1c2ab9d34c8e8a4d5b6c7d8e9f01",
    "properties": {"Name": {"type": "title", "value": "$event.type"}},
}
CLASSIFY = {
    "field": "topic",
    "labels": ["billing", "other"],
    "provider": "openai",
    "model": "gpt-4o-mini",
    "api_key": "ref:openai",
    "prompt": "$event.text",
}
LOOKUP = {"url": "https://people.example.com/lookup?email={email}", "mapping": {"role": "title"}}

# (a document, the field its error names, what the message names first: the field as the model
# writes it, which for the chat kinds and classify repeats the field's name).
DOCUMENTS: list[tuple[dict[str, Any], str, str]] = [
    (
        {"destinations": [{"name": "audit", "webhook.out": {"url": NUL_URL}}]},
        "destinations[0].webhook.out.url",
        "",
    ),
    (
        {"pipelines": [pipeline({"webhook.out": {"url": SPACE_URL}})]},
        "pipelines[0].destinations[0].webhook.out.url",
        "",
    ),
    (
        {"pipelines": [pipeline({"slack": {"webhook_url": "ref:hook", "api_base": SPACE_URL}})]},
        "pipelines[0].destinations[0].slack.api_base",
        "api_base ",
    ),
    (
        {"pipelines": [pipeline({"telegram": {"bot_token": "ref:t", "chat_id": 1, "api_base": SPACE_URL}})]},
        "pipelines[0].destinations[0].telegram.api_base",
        "api_base ",
    ),
    (
        {"pipelines": [pipeline({"discord": {"webhook_url": "ref:hook", "avatar_url": SPACE_URL}})]},
        "pipelines[0].destinations[0].discord.avatar_url",
        "avatar_url ",
    ),
    (
        {"pipelines": [pipeline({"notion": {**NOTION, "api_base": SPACE_URL}})]},
        "pipelines[0].destinations[0].notion.api_base",
        "",
    ),
    (
        {
            "pipelines": [
                pipeline({"webhook.out": {"url": HOOK}}, [{"classify": {**CLASSIFY, "base_url": SPACE_URL}}])
            ]
        },
        "pipelines[0].steps[0].classify.base_url",
        "base_url ",
    ),
    (
        {
            "pipelines": [
                pipeline(
                    {"webhook.out": {"url": HOOK}},
                    [{"enrich.person": {"provider": {**LOOKUP, "url": SPACE_URL + "?email={email}"}}}],
                )
            ]
        },
        "pipelines[0].steps[0].enrich.person.provider.url",
        "",
    ),
]


@pytest.mark.parametrize("dry_run", [True, False])
async def test_apply_refuses_a_url_with_a_space_or_control_character_naming_the_field(
    server: RunningServer, dry_run: bool
) -> None:
    for doc, field, named in DOCUMENTS:
        status, body = await server.request("POST", "/v1/apply", json={"document": doc, "dry_run": dry_run})
        found = NUL_FOUND if field.startswith("destinations") else SPACE_FOUND  # the first: a NUL
        err = assert_refused(status, body, field, found)
        assert err["message"].startswith(f"{field}: {named}{RULE}"), err
    _, pipelines = await server.request("GET", "/v1/pipelines")
    _, destinations = await server.request("GET", "/v1/destinations")
    assert pipelines["data"] == [] and destinations["data"] == []
    # The same documents with good URLs apply: only the characters were refused.
    for doc, _, _ in DOCUMENTS:
        fixed = percent_encoded(doc)
        status, body = await server.request("POST", "/v1/apply", json={"document": fixed, "dry_run": True})
        assert status == 200, (fixed, body)


def percent_encoded(doc: Any) -> Any:
    """``doc`` with each bad URL replaced by the one the user meant, percent-encoded."""
    if isinstance(doc, dict):
        return {k: percent_encoded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [percent_encoded(v) for v in doc]
    if isinstance(doc, str):
        return doc.replace("\x00", "%00").replace(" ", "%20")
    return doc


YAML = """\
pipelines:
  - name: alerts
    source: { match: ["a.*"] }
    destinations:
      - webhook.out: { url: "https://hooks.example.com/a\\tb", name: audit }
"""


async def test_apply_refuses_such_a_url_in_a_yaml_document(server: RunningServer) -> None:
    headers = {**server.auth(), "Content-Type": "application/yaml"}
    async with server.session.post(server.url + "/v1/apply", data=YAML, headers=headers) as resp:
        status, body = resp.status, await resp.json()
    assert_refused(
        status, body, "pipelines[0].destinations[0].webhook.out.url", "a tab (U+0009) at character 28"
    )
    _, destinations = await server.request("GET", "/v1/destinations")
    assert destinations["data"] == []


async def test_ingestlayer_apply_file_refuses_such_a_url(tmp_path: Path, sqlite_url: str) -> None:
    db = {"cwd": tmp_path, "db_url": sqlite_url}
    ok(await cli("init", "--name", "acme", **db))
    (tmp_path / "pipes.yaml").write_text(YAML)
    (tmp_path / "pipes.json").write_text(
        '{"destinations": [{"name": "audit", "webhook.out": {"url": "https://hooks.example.com/a\\u0000b"}}]}'
    )
    for name, path, found in (
        ("pipes.yaml", "pipelines[0].destinations[0].webhook.out.url", "a tab (U+0009)"),
        ("pipes.json", "destinations[0].webhook.out.url", "the control character U+0000"),
    ):
        for dry in ((), ("--dry-run",)):
            run = await cli("apply", "-f", name, *dry, **db)
            one_line_error(run, f"{path}: {RULE}: found {found} at character 28")
    # Nothing was applied; the file with the URL percent-encoded is.
    (tmp_path / "pipes.yaml").write_text(YAML.replace("\\t", "%09"))
    run = ok(await cli("apply", "-f", "pipes.yaml", **db))
    assert "alerts" in run.out


async def test_destination_and_pipeline_crud_refuse_such_a_url(server: RunningServer) -> None:
    status, body = await server.request(
        "POST", "/v1/destinations", json={"name": "audit", "webhook.out": {"url": NUL_URL}}
    )
    assert_refused(status, body, "webhook.out.url", NUL_FOUND)
    status, body = await server.request(
        "PUT", "/v1/destinations/audit", json={"webhook.out": {"url": NUL_URL}}
    )
    assert_refused(status, body, "webhook.out.url", NUL_FOUND)
    status, body = await server.request(
        "POST", "/v1/pipelines", json=pipeline({"webhook.out": {"url": SPACE_URL}})
    )
    assert_refused(status, body, "destinations[0].webhook.out.url", SPACE_FOUND)

    # An existing destination cannot be changed to one either, in either shape.
    status, made = await server.request(
        "POST", "/v1/destinations", json={"name": "audit", "webhook.out": {"url": HOOK}}
    )
    assert status == 201, made
    status, body = await server.request(
        "PUT", "/v1/destinations/audit", json={**made, "config": {"url": HOOK + "/\r\nX-Injected: 1"}}
    )
    assert_refused(status, body, "webhook.out.url", "a line break (U+000D) at character 30")
    status, body = await server.request(
        "PUT", "/v1/destinations/audit", json={"webhook.out": {"url": SPACE_URL}}
    )
    assert_refused(status, body, "webhook.out.url", SPACE_FOUND)
    status, body = await server.request(
        "PUT", "/v1/pipelines/alerts", json=pipeline({"webhook.out": {"url": NUL_URL, "name": "other"}})
    )
    assert_refused(status, body, "destinations[0].webhook.out.url", NUL_FOUND)
    _, got = await server.request("GET", "/v1/destinations/audit")
    assert got["config"]["url"] == HOOK
    status, _ = await server.request("GET", "/v1/pipelines/alerts")
    assert status == 404


# ---- a webhook URL held in a secret -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["slack", "discord"])
async def test_a_webhook_url_secret_with_a_control_character_is_dead_without_a_request(
    server: RunningServer, receiver: Receiver, kind: str
) -> None:
    # Configured as a reference, the URL is seen only when used: the delivery ends dead at once,
    # naming the reference and what was found, never the URL (a credential).
    await server.set_secret("hook", receiver.url + "/services/T1/B1/Zq8s\x00ecret\n")
    doc = {"pipelines": [pipeline({kind: {"webhook_url": "ref:hook"}, "retry": FAST_RETRY})]}
    await server.apply(doc)
    _, ev = await server.ingest("a.b", {"n": 1})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "dead", d
    _, full = await server.request("GET", f"/v1/deliveries/{d['id']}")
    (attempt,) = full["attempts"]
    assert attempt["error"] == (
        f"webhook_url (ref:hook): the URL it holds {RULE}: found the control character U+0000 "
        f"at character {len(receiver.url) + 21} (write it as %00 if it belongs in the URL)"
    ), attempt
    assert "Zq8s" not in str(full)
    assert receiver.requests == []

    # The same URL written percent-encoded is delivered.
    await server.set_secret("hook", receiver.url + "/services/T1/B1/Zq8s%00ecret")
    _, ev = await server.ingest("a.b", {"n": 2})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "delivered", d
    (got,) = receiver.requests
    assert got.path == "/services/T1/B1/Zq8s\x00ecret"


# ---- ", <, > and backticks ------------------------------------------------------------------------

DELIMITER_RULE = 'must not contain ", <, > or backticks, which end a URL in text'
# (the character, how the message names it, its percent-encoding)
DELIMITERS = [
    ('"', 'a double quote (")', "%22"),
    ("<", "a less-than sign (<)", "%3C"),
    (">", "a greater-than sign (>)", "%3E"),
    ("`", "a backtick (`)", "%60"),
]


async def test_quotes_backticks_and_angle_brackets_are_refused_in_new_urls_and_apostrophes_taken(
    server: RunningServer, receiver: Receiver
) -> None:
    """No URL holds ", <, > or a backtick (RFC 3986), and they are what ends a URL wherever it is
    quoted, so a URL holding one was shown cut short, its query unmasked (see
    test_dashboard_url_masking.py): refused, naming where, never quoting the URL. ``'`` is a valid
    URL character: taken, and sent as typed."""
    for char, named, encoded in DELIMITERS:
        url = f"https://hooks.example.com/a{char}b?token=DELIMTOKEN"
        found = f"found {named} at character 28 (write it as {encoded} if it belongs in the URL)"
        status, body = await server.request("POST", "/v1/endpoints", json={"url": url, "events": ["a.*"]})
        assert status == 422, body
        err = error_of(body)
        assert err["field"] == "url" and err["message"] == f"url: {DELIMITER_RULE}: {found}", err
        for doc, field in (
            ({"pipelines": [pipeline({"webhook.out": {"url": url}})]}, "webhook.out.url"),
            (
                {
                    "pipelines": [
                        pipeline(
                            {"webhook.out": {"url": HOOK}},
                            [{"enrich.person": {"provider": {**LOOKUP, "url": url}}}],
                        )
                    ]
                },
                "enrich.person.provider.url",
            ),
            (
                {
                    "pipelines": [
                        pipeline({"telegram": {"bot_token": "ref:t", "chat_id": 1, "api_base": url}})
                    ]
                },
                "telegram.api_base",
            ),
        ):
            status, body = await server.request("POST", "/v1/apply", json={"document": doc})
            assert status == 422, body
            err = error_of(body)
            assert err["field"].endswith(field) and DELIMITER_RULE in err["message"], err
            assert found in err["message"] and "DELIMTOKEN" not in err["message"], err
    _, listed = await server.request("GET", "/v1/endpoints")
    assert listed["data"] == []

    # An apostrophe is a URL character (RFC 3986 sub-delims): taken and sent as typed, as is a
    # quote written percent-encoded.
    for path in ("/it's/in", "/a%22b"):
        ep = await add_endpoint(server, receiver, url=receiver.url + path + "?token=x")
        assert ep["url"] == receiver.url + path + f"?token={MASK}"  # its query value masked
    _, ev = await server.ingest("invoice.created", {"n": 1})
    deliveries = await deliveries_of(server, ev["id"])
    assert [d["status"] for d in deliveries] == ["delivered", "delivered"], deliveries
    assert sorted(r.path for r in receiver.requests) == ['/a"b', "/it's/in"]


async def test_urls_with_a_quote_taken_before_the_check_go_on_and_changes_are_checked(
    server: RunningServer, receiver: Receiver
) -> None:
    """The check is for what is sent from now on. A destination stored with a quote in its URL
    goes on delivering (percent-encoded), and so does a Slack or Discord webhook URL held in a
    secret (checked when used, never shown); changing the stored URL is checked."""
    ep = await add_endpoint(server, receiver)
    await store_as_an_earlier_version_did(server, ep["destination_id"], receiver.url + '/old"<hook>')
    _, ev = await server.ingest("invoice.created", {"n": 1})
    (d,) = await deliveries_of(server, ev["id"])
    assert d["status"] == "delivered", d
    assert [r.path for r in receiver.requests] == ['/old"<hook>']

    await server.set_secret("hook", receiver.url + '/services/T1/B1/a"b')
    await server.apply(
        {
            "pipelines": [
                {**pipeline({kind: {"webhook_url": "ref:hook"}, "retry": FAST_RETRY}), "name": kind}
                for kind in ("slack", "discord")
            ]
        }
    )
    _, ev = await server.ingest("a.b", {"n": 1})
    for d in await deliveries_of(server, ev["id"]):
        _, full = await server.request("GET", f"/v1/deliveries/{d['id']}")
        assert all("must not contain" not in (a["error"] or "") for a in full["attempts"]), full
    assert [r.path for r in receiver.requests[1:3]] == ['/services/T1/B1/a"b'] * 2

    status, body = await server.request(
        "PATCH", f"/v1/endpoints/{ep['id']}", json={"url": receiver.url + '/new"hook'}
    )
    assert status == 422 and DELIMITER_RULE in error_of(body)["message"], body
