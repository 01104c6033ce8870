"""What the ingest insert stores is exactly what it was given: times to the last bit, text with
quotes, backslashes, escapes that look like JSON, and characters outside the BMP. (On
PostgreSQL the rows travel as a JSON document; nothing may be lost or reinterpreted on the way.)"""

from __future__ import annotations

import orjson

from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.store import Store

AWKWARD_TEXT = 'quote " backslash \\ escape-looking \\u0000 \\n tab\t emoji 😀 cjk 漢字 "\\"'


async def test_an_event_is_stored_bit_for_bit(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        project_id, _, _ = await store.create_project("acme")
        payload = orjson.dumps({"text": AWKWARD_TEXT}).decode()
        events = [
            NewEvent(
                new_id("evt"), project_id, "a.b", payload, AWKWARD_TEXT, "sdk", 1732650000.1234567, 0.1 + 0.2
            ),
            NewEvent(new_id("evt"), project_id, "a.b-c_d", "{}", None, "ingress", -62135596800.0, 5e-324),
        ]
        results = await store.insert_events(events)
        assert [r.duplicate for r in results] == [False, False]
        for sent in events:
            got = await store.get_event(project_id, sent.id)
            assert got is not None
            assert (got.type, got.payload_json, got.idempotency_key, got.source) == (
                sent.type,
                sent.payload_json,
                sent.idempotency_key,
                sent.source,
            )
            assert got.occurred_at == sent.occurred_at
            assert got.received_at == sent.received_at
        # The awkward key is found again as a duplicate.
        again = NewEvent(new_id("evt"), project_id, "a.b", "{}", AWKWARD_TEXT, "sdk", 1.0, 1.0)
        (dup,) = await store.insert_events([again])
        assert dup.duplicate and dup.id == events[0].id
    finally:
        await store.close()
