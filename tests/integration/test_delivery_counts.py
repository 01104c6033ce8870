"""Delivery counts: exact per status up to a cap, "at least the cap" past it (both backends).

The cap is made small here (monkeypatched): what matters is the boundary, not millions of rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from sqlalchemy import insert

from ingestlayer.ids import new_id
from ingestlayer.store import store as store_module
from ingestlayer.store.schema import deliveries
from ingestlayer.store.store import AtLeast, Store
from tests.support.server import RunningServer


async def add_deliveries(store: Store, project_id: str, by_status: Mapping[str, int]) -> list[str]:
    """Rows straight into the table (no destination is ever called): ids in creation order."""
    now = time.time()
    rows = []
    for status, n in by_status.items():
        for _ in range(n):
            unfinished = status in ("pending", "delivering", "retrying")
            rows.append(
                {
                    "id": new_id("dlv"),
                    "project_id": project_id,
                    "event_id": new_id("evt"),
                    "event_type": "order.created",
                    "pipeline_id": "pip_counts",
                    "destination_id": "dst_counts",
                    "status": status,
                    "attempts": 0 if status == "pending" else 1,
                    "due_at": now + 60 if unfinished else None,
                    "body": "{}",
                    "created_at": now,
                    "updated_at": now,
                    "finished_at": None if unfinished else now,
                }
            )
    async with store.engines.write.begin() as conn:
        await conn.execute(insert(deliveries), rows)
    return [r["id"] for r in rows]


async def test_counts_exact_below_the_cap_and_capped_at_it(server: RunningServer) -> None:
    store = server.runtime.store
    await add_deliveries(store, server.project_id, {"delivered": 4, "dead": 2, "retrying": 1})

    assert await store.delivery_counts(server.project_id, cap=5) == {"delivered": 4, "dead": 2, "retrying": 1}
    counts = await store.delivery_counts(server.project_id, cap=4)
    assert counts == {"delivered": 4, "dead": 2, "retrying": 1}
    assert isinstance(counts["delivered"], AtLeast)  # 4 or more
    assert not isinstance(counts["dead"], AtLeast)
    assert f"{counts['delivered']:,}" == "4+" and f"{counts['dead']:,}" == "2"

    counts = await store.delivery_counts(server.project_id, cap=1)
    assert counts == {"delivered": 1, "dead": 1, "retrying": 1}
    assert all(isinstance(n, AtLeast) for n in counts.values())

    assert await store.delivery_counts(server.project_id, statuses=("dead", "pending"), zeros=True) == {
        "dead": 2,
        "pending": 0,
    }
    with pytest.raises(ValueError):
        await store.delivery_counts(server.project_id, cap=0)


async def test_counts_since_an_id(server: RunningServer) -> None:
    store = server.runtime.store
    await add_deliveries(store, server.project_id, {"delivered": 3})
    later = await add_deliveries(store, server.project_id, {"delivered": 2, "dead": 1})
    counts = await store.delivery_counts(server.project_id, since_id=later[0], cap=2)
    assert counts == {"delivered": 2, "dead": 1}
    assert isinstance(counts["delivered"], AtLeast) and not isinstance(counts["dead"], AtLeast)
    assert await store.delivery_counts(server.project_id, since_id=later[0]) == {"delivered": 2, "dead": 1}


async def test_listing_flags_capped_counts(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    store = server.runtime.store
    await add_deliveries(store, server.project_id, {"delivered": 5, "dead": 2, "pending": 1})
    other, _, other_admin = await store.create_project("small")
    await add_deliveries(store, other, {"delivered": 2, "dead": 1})

    status, page = await server.request("GET", "/v1/deliveries?limit=2")
    assert status == 200, page
    assert page["counts"] == {"delivered": 5, "dead": 2, "pending": 1}
    assert page["counts_capped"] == []

    monkeypatch.setattr(store_module, "DELIVERY_COUNT_CAP", 3)
    status, page = await server.request("GET", "/v1/deliveries?limit=2")
    assert status == 200, page
    assert page["counts"] == {"delivered": 3, "dead": 2, "pending": 1}
    assert page["counts_capped"] == ["delivered"]
    assert len(page["data"]) == 2 and page["next_before"]
    # Later pages carry no counts, as before.
    status, later = await server.request("GET", f"/v1/deliveries?limit=2&before={page['next_before']}")
    assert status == 200 and "counts" not in later and "counts_capped" not in later

    # The other project's counts are its own, and exact below the cap.
    status, small = await server.request("GET", "/v1/deliveries", key=other_admin)
    assert status == 200, small
    assert small["counts"] == {"delivered": 2, "dead": 1} and small["counts_capped"] == []
