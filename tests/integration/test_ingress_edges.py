"""Signed webhook ingress at its edges: what real senders send that the happy path does not, and
what an attacker sends on purpose.

Requests are signed by each sender's documented algorithm: Stripe's (``stripe`` library),
GitHub's (HMAC-SHA256 of the raw body, form-encoded when the hook is so configured) and
Standard Webhooks' (the reference ``standardwebhooks`` library).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import stripe
from standardwebhooks import Webhook

from tests.support.server import RunningServer

STRIPE_SECRET = "whsec_stripe_edge_secret"
GITHUB_SECRET = "gh-edge-secret"
GITHUB_OLD_SECRET = "gh-edge-secret-before-rotation"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def configure(srv: RunningServer, *sources: dict[str, Any]) -> dict[str, str]:
    result = await srv.apply({"sources": list(sources)})
    return {c["name"]: c["ingress_path"] for c in result["changes"] if c["kind"] == "source"}


async def post(srv: RunningServer, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with srv.session.post(srv.url + path, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def github_headers(body: bytes, event: str, delivery: str, secret: str = GITHUB_SECRET) -> dict[str, str]:
    # GitHub's documented algorithm: HMAC-SHA256 of the raw body, the secret's UTF-8 bytes as key.
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": "sha256=" + sig, "X-GitHub-Event": event, "X-GitHub-Delivery": delivery}


async def test_a_garbled_huge_timestamp_is_a_401_not_a_500(srv: RunningServer) -> None:
    await srv.set_secret("stripe", STRIPE_SECRET)
    await srv.set_secret("std", STANDARD_SECRET)
    paths = await configure(
        srv,
        {"name": "stripe", "verify": "stripe", "secret": "ref:stripe"},
        {"name": "std", "verify": "standard-webhooks", "secret": "ref:std"},
    )
    huge = "9" * 400  # an int, but too large to subtract from the clock as a float
    status, err = await post(srv, paths["stripe"], b"{}", {"Stripe-Signature": f"t={huge},v1={'0' * 64}"})
    assert status == 401, err
    assert "timestamp" in err["error"]["message"]
    headers = {"webhook-id": "msg_1", "webhook-timestamp": huge, "webhook-signature": "v1,AAAA"}
    status, err = await post(srv, paths["std"], b"{}", headers)
    assert status == 401, err


async def test_a_standard_webhooks_secret_that_is_not_base64_is_named_not_a_500(srv: RunningServer) -> None:
    await srv.set_secret("std", "not base64 at all!")
    paths = await configure(srv, {"name": "std", "verify": "standard-webhooks", "secret": "ref:std"})
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(STANDARD_SECRET).sign("msg_1", now, "{}"),
    }
    status, err = await post(srv, paths["std"], b"{}", headers)
    # The operator's misconfiguration: a 503 the sender retries once it is fixed, with the reason.
    assert status == 503, err
    assert "base64" in err["error"]["message"]


async def test_github_form_encoded_deliveries_and_the_ping(srv: RunningServer) -> None:
    await srv.set_secret("github", GITHUB_SECRET)
    paths = await configure(
        srv, {"name": "github", "verify": "github", "secret": "ref:github", "type_prefix": "github."}
    )
    # Content type application/x-www-form-urlencoded: the JSON is the `payload` form field, and
    # GitHub signs the form body as sent.
    push = {"ref": "refs/heads/main", "after": "1a2b", "commits": [{"message": "fix: a & b = c+d"}]}
    body = urlencode({"payload": orjson.dumps(push).decode()}).encode()
    headers = {
        **github_headers(body, "push", "d-form-1"),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    status, first = await post(srv, paths["github"], body, headers)
    assert status == 202, first
    _, event = await srv.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "github.push" and event["payload"] == push
    # The ping GitHub sends when the hook is created: accepted, typed, deduplicated on redelivery.
    ping = {"zen": "Keep it logically awesome.", "hook_id": 42, "hook": {"type": "Repository"}}
    body = orjson.dumps(ping)
    headers = github_headers(body, "ping", "d-ping-1")
    status, first = await post(srv, paths["github"], body, headers)
    assert status == 202, first
    status, again = await post(srv, paths["github"], body, headers)
    assert status == 200 and again == {"id": first["id"], "duplicate": True}
    _, event = await srv.request("GET", f"/v1/events/{first['id']}")
    assert event["type"] == "github.ping"
    # A form body without a `payload` field, or whose payload is not JSON, is a 400 that says so.
    for bad in (b"other=1", b"payload=not-json"):
        headers = {
            **github_headers(bad, "push", "d-bad"),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        status, err = await post(srv, paths["github"], bad, headers)
        assert status == 400, err


async def test_empty_and_long_delivery_ids_never_merge_distinct_events(srv: RunningServer) -> None:
    await srv.set_secret("github", GITHUB_SECRET)
    paths = await configure(srv, {"name": "github", "verify": "github", "secret": "ref:github"})
    ids = []
    # An empty id is no id: two different events must not be taken for one.
    for n in range(2):
        body = b'{"n":%d}' % n
        status, answer = await post(srv, paths["github"], body, github_headers(body, "push", ""))
        assert status == 202, answer
        ids.append(answer["id"])
    # Ids that differ only past the stored key's length stay distinct too.
    for n in range(2):
        body = b'{"n":%d}' % n
        delivery = "x" * 300 + str(n)
        status, answer = await post(srv, paths["github"], body, github_headers(body, "push", delivery))
        assert status == 202, answer
        ids.append(answer["id"])
        # ...and each still deduplicates against itself.
        status, again = await post(srv, paths["github"], body, github_headers(body, "push", delivery))
        assert status == 200 and again["id"] == answer["id"]
    assert len(set(ids)) == 4


async def test_an_integer_beyond_64_bits_is_refused_not_silently_rounded(srv: RunningServer) -> None:
    await srv.set_secret("stripe", STRIPE_SECRET)
    paths = await configure(srv, {"name": "stripe", "verify": "stripe", "secret": "ref:stripe"})
    body = b'{"id":"evt_big","type":"invoice.paid","data":{"amount":123456789012345678901234567890}}'
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    status, err = await post(srv, paths["stripe"], body, {"Stripe-Signature": header})
    assert status == 422, err
    assert err["error"]["code"] == "number_out_of_range"


async def call_app(
    srv: RunningServer, path: str, headers: list[tuple[bytes, bytes]], chunks: Iterator[bytes]
) -> int:
    """Drive the ASGI app directly, to see how much of a body it reads before answering."""
    app = srv._server.config.app
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_an_endless_body_is_cut_off_at_the_limit(srv: RunningServer) -> None:
    paths = await configure(srv, {"name": "open", "verify": "none"})
    limit = srv.runtime.settings.max_request_bytes
    chunk = b"a" * 65536
    read = 0

    def endless() -> Iterator[bytes]:
        nonlocal read
        while read <= 8 * limit:  # past this the whole stream would have been buffered
            read += len(chunk)
            yield chunk
        raise AssertionError("the body was read far past the limit")

    status = await call_app(srv, paths["open"], [(b"transfer-encoding", b"chunked")], endless())
    assert status == 413
    assert read <= limit + len(chunk)


async def test_a_declared_oversized_body_is_refused_before_it_is_read(srv: RunningServer) -> None:
    paths = await configure(srv, {"name": "open", "verify": "none"})
    declared = str(srv.runtime.settings.max_request_bytes + 1).encode()

    def never() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    status = await call_app(srv, paths["open"], [(b"content-length", declared)], never())
    assert status == 413


async def test_the_per_event_limit_applies_to_the_payload_stored(srv: RunningServer) -> None:
    paths = await configure(srv, {"name": "open", "verify": "none"})
    limit = srv.runtime.settings.max_event_bytes
    status, err = await post(srv, paths["open"], b'{"type":"x","pad":"' + b"a" * limit + b'"}', {})
    assert status == 413, err
    assert f"{limit // 1024} KiB" in err["error"]["message"]
    # Pretty-printed JSON (or a form-encoded body) is larger on the wire than stored: it fits.
    body = orjson.dumps({"type": "x", "pad": "a" * (limit // 2)}, option=orjson.OPT_INDENT_2)
    status, answer = await post(srv, paths["open"], body + b" " * limit, {})
    assert status == 202, answer


async def test_our_own_secret_rotation_accepts_the_previous_secret_until_removed(srv: RunningServer) -> None:
    await srv.set_secret("github-old", GITHUB_OLD_SECRET)
    await srv.set_secret("github", GITHUB_SECRET)
    source = {
        "name": "github",
        "verify": "github",
        "secret": "ref:github",
        "previous_secret": "ref:github-old",
    }
    paths = await configure(srv, source)
    # GitHub switches to a new secret at once: while the old is still in flight, both verify.
    for n, secret in enumerate((GITHUB_OLD_SECRET, GITHUB_SECRET)):
        body = b'{"n":%d}' % n
        status, answer = await post(srv, paths["github"], body, github_headers(body, "push", f"r{n}", secret))
        assert status == 202, answer
    body = b'{"n":9}'
    headers = github_headers(body, "push", "r9", "a-third-secret")
    status, err = await post(srv, paths["github"], body, headers)
    assert status == 401 and "does not match" in err["error"]["message"]
    # The rotation done: the old secret is refused again.
    del source["previous_secret"]
    await configure(srv, source)
    headers = github_headers(body, "push", "r10", GITHUB_OLD_SECRET)
    status, err = await post(srv, paths["github"], body, headers)
    assert status == 401, err
    # The previous secret is a reference like the secret, never the value.
    status, err = await srv.request(
        "POST", "/v1/sources", json={**source, "previous_secret": GITHUB_OLD_SECRET}
    )
    assert status == 422 and "reference" in err["error"]["message"]


async def test_stripe_rolling_its_secret_sends_two_v1_and_either_verifies(srv: RunningServer) -> None:
    await srv.set_secret("stripe", STRIPE_SECRET)
    paths = await configure(srv, {"name": "stripe", "verify": "stripe", "secret": "ref:stripe"})
    body = orjson.dumps({"id": "evt_roll", "type": "customer.created", "data": {"object": {}}})
    ts = int(time.time())
    # During a roll, Stripe signs with the expiring and the new secret: one header, two v1.
    old = stripe.WebhookSignature._compute_signature(f"{ts}.{body.decode()}", "whsec_expiring")
    new = stripe.WebhookSignature._compute_signature(f"{ts}.{body.decode()}", STRIPE_SECRET)
    for header in (f"t={ts},v1={old},v1={new},v0=deadbeef", f"t={ts},v1={new},v1={old}"):
        status, answer = await post(srv, paths["stripe"], body, {"Stripe-Signature": header})
        assert status in (200, 202), answer
    status, err = await post(srv, paths["stripe"], body, {"Stripe-Signature": f"t={ts},v1={old}"})
    assert status == 401, err


async def test_json_sent_by_curl_d_is_read_as_json_for_every_scheme(srv: RunningServer) -> None:
    """`curl -d '{...}'` labels its body application/x-www-form-urlencoded. A JSON object so
    labelled is JSON, for Stripe's scheme as for GitHub's: it was a 400 about GitHub's form
    format. A form that is not JSON still has to carry its JSON in `payload`."""
    await srv.set_secret("stripe", STRIPE_SECRET)
    await srv.set_secret("github", GITHUB_SECRET)
    paths = await configure(
        srv,
        {"name": "stripe", "verify": "stripe", "secret": "ref:stripe"},
        {"name": "github", "verify": "github", "secret": "ref:github"},
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b'  {"id": "evt_curl", "type": "invoice.paid", "data": {"object": {"amount": 5}}}'
    ts = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{ts}.{body.decode()}", STRIPE_SECRET)
    status, answer = await post(
        srv, paths["stripe"], body, {**form, "Stripe-Signature": f"t={ts},v1={signature}"}
    )
    assert status == 202, answer
    _, event = await srv.request("GET", f"/v1/events/{answer['id']}")
    assert event["type"] == "invoice.paid" and event["payload"]["data"] == {"object": {"amount": 5}}

    body = b'{"zen": "Design for failure."}'
    status, answer = await post(
        srv, paths["github"], body, {**form, **github_headers(body, "ping", "d-curl")}
    )
    assert status == 202, answer
    bad = b"other=1"
    status, err = await post(srv, paths["github"], bad, {**form, **github_headers(bad, "push", "d-x")})
    assert status == 400 and "Content-Type: application/json" in err["error"]["message"], err


async def test_delivery_ids_of_every_length_near_the_limit_stay_distinct(srv: RunningServer) -> None:
    """``github:`` and an id of 248 characters make a key of exactly 255, which the mark cut by
    its last character: ids differing only there were one, and the second event was answered
    as a duplicate, dropped."""
    await srv.set_secret("github", GITHUB_SECRET)
    paths = await configure(srv, {"name": "github", "verify": "github", "secret": "ref:github"})
    for length in (246, 247, 248, 249):
        ids = set()
        for last in "AB":
            body = b'{"n":1}'
            delivery = "x" * (length - 1) + last
            status, answer = await post(srv, paths["github"], body, github_headers(body, "push", delivery))
            assert status == 202, (length, last, answer)
            ids.add(answer["id"])
            status, again = await post(srv, paths["github"], body, github_headers(body, "push", delivery))
            assert status == 200 and again["id"] == answer["id"]  # each still its own duplicate
        assert len(ids) == 2, length


async def test_a_previous_secret_that_cannot_be_read_does_not_refuse_the_current_one(
    srv: RunningServer, caplog: Any
) -> None:
    """A mistyped previous_secret during a rotation answered every request 503, those signed
    with the current secret too. It is left out, and the log says so once."""
    await srv.set_secret("github", GITHUB_SECRET)
    source = {"name": "github", "verify": "github", "secret": "ref:github", "previous_secret": "ref:not-set"}
    paths = await configure(srv, source)
    for n in range(2):
        body = b'{"n":%d}' % n
        status, answer = await post(srv, paths["github"], body, github_headers(body, "push", f"p{n}"))
        assert status == 202, answer
    warnings = [r for r in caplog.records if "previous_secret ref:not-set cannot be used" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    # The current secret missing is still the operator's 503.
    await configure(srv, {**source, "secret": "ref:missing-too"})
    body = b'{"n":3}'
    status, err = await post(srv, paths["github"], body, github_headers(body, "push", "p3"))
    assert status == 503 and "not configured" in err["error"]["message"]


async def test_a_constant_idempotency_key_is_refused(srv: RunningServer) -> None:
    """``idempotency_key: const:x`` made every event after the first a duplicate of it."""
    status, err = await srv.request(
        "POST", "/v1/sources", json={"name": "cst", "verify": "none", "idempotency_key": "const:x"}
    )
    assert status == 422, err
    assert err["error"]["message"].endswith("must be body:<path> or header:<Name>"), err
    # One stored by an earlier version is read as no key: its events are no longer dropped.
    paths = await configure(srv, {"name": "cst", "verify": "none"})
    (source,) = (await srv.runtime.store.load_project_config(srv.project_id)).sources.values()
    config = {**source.config, "idempotency_key": "const:x"}
    row = {"id": source.id, "name": "cst", "config": config, "enabled": True}
    await srv.runtime.store.apply_config(srv.project_id, [], [], upsert_sources=[row])
    ids = set()
    for event_type in ("a.one", "b.two"):
        body = orjson.dumps({"type": event_type})
        status, answer = await post(srv, paths["cst"], body, {"Content-Type": "application/json"})
        assert status == 202, answer
        ids.add(answer["id"])
    assert len(ids) == 2
