"""Companies are keyed by their domain, however the domain was written.

``PUT /v1/entities/company/Initech.COM`` was stored as written: ``GET .../company/initech.com``
was a 404, and ``enrich.person`` found no company for bill@initech.com. Company ids are now
lower-cased and stripped of surrounding spaces and a trailing dot on every route.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.support.api import error_of
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05], "jitter": 0}


def company(domain: str) -> str:
    return "/v1/entities/company/" + quote(domain, safe="")


async def test_a_company_is_one_entity_however_its_domain_is_written(server: RunningServer) -> None:
    status, put = await server.request("PUT", company("Initech.COM"), json={"traits": {"name": "Initech"}})
    assert status == 200 and put["id"] == "initech.com", put
    for spelling in ("initech.com", "INITECH.com", " initech.com. ", "Initech.Com."):
        status, got = await server.request("GET", company(spelling))
        assert status == 200, (spelling, got)
        assert got == {"kind": "company", "id": "initech.com", "traits": {"name": "Initech"}}
    status, patched = await server.request("PATCH", company("initech.COM."), json={"traits": {"size": 300}})
    assert status == 200 and patched["traits"] == {"name": "Initech", "size": 300}, patched

    status, bulk = await server.request(
        "POST",
        "/v1/entities/bulk",
        json={
            "entities": [
                {"kind": "company", "id": "Globex.COM.", "traits": {"name": "Globex"}},
                {"kind": "company", "id": "globex.com", "traits": {"country": "US"}},
            ]
        },
    )
    assert status == 200, bulk
    status, got = await server.request("GET", company("globex.com"))
    assert status == 200 and got["traits"] == {"name": "Globex", "country": "US"}, got

    assert (await server.request("DELETE", company("INITECH.COM")))[0] == 204
    assert (await server.request("GET", company("initech.com")))[0] == 404
    assert (await server.request("DELETE", company("initech.com")))[0] == 404

    # Other kinds keep their ids as written.
    await server.request("PUT", "/v1/entities/user/Ada", json={"traits": {"n": 1}})
    await server.request("PUT", "/v1/entities/user/ada", json={"traits": {"n": 2}})
    assert (await server.request("GET", "/v1/entities/user/Ada"))[1]["traits"] == {"n": 1}
    assert (await server.request("GET", "/v1/entities/user/ada"))[1]["traits"] == {"n": 2}


async def test_a_company_id_that_is_no_domain_is_a_422(server: RunningServer) -> None:
    status, body = await server.request("PUT", company(" . "), json={"traits": {"name": "?"}})
    assert status == 422 and error_of(body)["field"] == "id", body
    status, body = await server.request(
        "POST", "/v1/entities/bulk", json={"entities": [{"kind": "company", "id": ".", "traits": {}}]}
    )
    assert status == 422 and error_of(body)["field"] == "entities[0].id", body


async def test_enrich_person_finds_a_company_written_in_upper_case(
    server: RunningServer, receiver: Receiver
) -> None:
    status, _ = await server.request(
        "PUT", company("Initech.COM"), json={"traits": {"name": "Initech", "country": "US"}}
    )
    assert status == 200
    status, _ = await server.request(
        "POST",
        "/v1/entities/bulk",
        json={"entities": [{"kind": "company", "id": " Globex.Com. ", "traits": {"name": "Globex"}}]},
    )
    assert status == 200
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "people",
                    "source": {"match": ["user.signed_up"]},
                    "steps": [{"enrich.person": {"from": "email"}}],
                    "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}, "retry": FAST}],
                }
            ]
        }
    )
    await server.ingest("user.signed_up", {"user_id": "u1", "email": "bill@initech.com"})
    await server.ingest("user.signed_up", {"user_id": "u2", "email": "Hank@GLOBEX.com"})
    await server.ingest("user.signed_up", {"user_id": "u3", "email": "peter@initech.com."})

    async def arrived() -> bool:
        return len(receiver.requests) >= 3

    await wait_for(arrived)
    payloads: dict[str, Any] = {
        r.json()["payload"]["user_id"]: r.json()["payload"] for r in receiver.requests
    }
    assert payloads["u1"]["company"] == "Initech" and payloads["u1"]["country"] == "US"
    assert payloads["u2"]["company"] == "Globex"
    assert payloads["u3"]["company"] == "Initech"  # a trailing dot names the same domain
