"""A webhook URL that is itself a credential is kept as a secret: ``url: ref:NAME`` or ``env:VAR``.

Receivers often take their credential in the URL (a token in the path or the query). Written
inline, such a URL is stored in clear and every management answer repeats it; as a reference it
is stored encrypted, resolved when a delivery is sent, and never shown: not by the API, not in
an attempt's error, not in what an echoing receiver answers.
"""

from __future__ import annotations

from typing import Any

from tests.integration.test_echoed_credentials import finished
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for

PATH_TOKEN = "PATHTOKEN7c1e9a"
QUERY_TOKEN = "QUERYTOKEN4b2d8f"
SIGNING = "whsec_url-secret-signing"


def hook_url(receiver: Receiver) -> str:
    return f"{receiver.url}/hooks/{PATH_TOKEN}?key={QUERY_TOKEN}"


def pipeline(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "to-hook",
                "source": {"match": ["order.*"]},
                "destinations": [
                    {
                        "name": "hook",
                        "webhook.out": {"url": url, "auth": "hmac", "secret": "ref:hook-signing", **extra},
                        "retry": {"schedule": [0, 0.2, 0.2, 0.2, 0.2, 0.2], "jitter": 0},
                    }
                ],
            }
        ]
    }


def leaks(text: str) -> list[str]:
    return [t for t in (PATH_TOKEN, QUERY_TOKEN) if t in text]


async def test_a_url_kept_as_a_secret_is_called_signed_and_never_shown(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.default = Reply(status=200, echo=True)  # the answer repeats the URL it was called at
    await server.set_secret("hook-signing", SIGNING)
    await server.set_secret("hook-url", hook_url(receiver))
    await server.apply(pipeline("ref:hook-url"))

    status, ev = await server.ingest("order.paid", {"total": 42})
    assert status == 202, ev
    (delivery,) = await finished(server, ev["id"], 1)
    assert delivery["status"] == "delivered", delivery
    (got,) = receiver.requests
    assert got.path == f"/hooks/{PATH_TOKEN}"
    assert got.verify(SIGNING)["payload"] == {"total": 42}

    _, full = await server.request("GET", f"/v1/deliveries/{delivery['id']}")
    (attempt,) = full["attempts"]
    # The echo is there, the URL in it (and its parts, wherever they appear) replaced.
    assert '"url":"<redacted>","args":{"key":"<redacted>"}' in attempt["response_excerpt"], attempt
    _, destinations = await server.request("GET", "/v1/destinations")
    (hook,) = destinations["data"]
    assert hook["config"]["url"] == "ref:hook-url", hook
    _, pipelines = await server.request("GET", "/v1/pipelines")
    for shown in (full, destinations, pipelines):
        assert leaks(str(shown)) == [], leaks(str(shown))


async def test_an_endpoint_may_take_its_url_from_a_secret(server: RunningServer, receiver: Receiver) -> None:
    await server.set_secret("endpoint-url", hook_url(receiver))
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": "ref:endpoint-url", "events": ["order.*"], "auth": "none"}
    )
    assert status == 201, ep
    assert ep["url"] == "ref:endpoint-url"
    _, ev = await server.ingest("order.shipped", {"id": 7})
    (delivery,) = await finished(server, ev["id"], 1)
    assert delivery["status"] == "delivered", delivery
    assert [r.path for r in receiver.requests] == [f"/hooks/{PATH_TOKEN}"]
    _, listed = await server.request("GET", "/v1/endpoints")
    assert leaks(str(listed)) == [] and listed["data"][0]["url"] == "ref:endpoint-url", listed


async def test_a_url_secret_set_late_is_used_by_the_next_attempt(
    server: RunningServer, receiver: Receiver
) -> None:
    await server.set_secret("hook-signing", SIGNING)
    await server.apply(pipeline("ref:late-url"))
    _, ev = await server.ingest("order.paid", {"total": 1})

    async def first_failure() -> dict[str, Any] | None:
        _, found = await server.request("GET", f"/v1/events/{ev['id']}")
        if not found["deliveries"]:  # not routed yet
            return None
        (d,) = found["deliveries"]
        _, full = await server.request("GET", f"/v1/deliveries/{d['id']}")
        return full if full["attempts"] else None

    failed = await wait_for(first_failure)
    assert "late-url" in failed["attempts"][0]["error"], failed
    assert failed["status"] in ("retrying", "pending"), failed
    await server.set_secret("late-url", hook_url(receiver))
    (delivery,) = await finished(server, ev["id"], 1)
    assert delivery["status"] == "delivered", delivery
    assert [r.path for r in receiver.requests] == [f"/hooks/{PATH_TOKEN}"]


async def test_a_secret_that_holds_no_usable_url_ends_the_delivery_naming_the_reference(
    server: RunningServer,
) -> None:
    await server.set_secret("hook-signing", SIGNING)
    # A token pasted where the URL belongs, with a space in it: no URL, and a credential.
    await server.set_secret("wrong-url", f"Bearer {PATH_TOKEN}")
    await server.apply(pipeline("ref:wrong-url"))
    _, ev = await server.ingest("order.paid", {"total": 1})
    (delivery,) = await finished(server, ev["id"], 1)
    assert delivery["status"] == "dead", delivery
    _, full = await server.request("GET", f"/v1/deliveries/{delivery['id']}")
    (attempt,) = full["attempts"]  # no retry: the URL will not change by itself
    assert attempt["error"].startswith("url (ref:wrong-url): the URL it holds"), attempt
    assert leaks(str(full)) == [], full


async def test_a_url_reference_is_checked_like_every_other(server: RunningServer) -> None:
    for url, expected in (
        ("ref:bad name", "the name after `ref:` is not one a secret can have"),
        ("env:1X", "the name after `env:` is not one an environment variable can have"),
    ):
        status, body = await server.request("POST", "/v1/apply", json={"document": pipeline(url)})
        assert status == 422, body
        assert expected in str(body), body
