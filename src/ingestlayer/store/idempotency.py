"""Idempotency bookkeeping for one ingest batch, shared by every backend's insert.

A key already stored, or repeated within the batch, yields the first event's id with
``duplicate=True`` and no second route job.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingestlayer.records import IngestResult, NewEvent


class InsertPlan:
    def __init__(self, batch: Sequence[NewEvent]) -> None:
        self.batch = batch
        self.first_by_key: dict[tuple[str, str], int] = {}
        self.fresh: list[NewEvent] = []  # to insert: unkeyed events and each key's first event
        for i, ev in enumerate(batch):
            if ev.idempotency_key is not None:
                k = (ev.project_id, ev.idempotency_key)
                if k in self.first_by_key:
                    continue  # resolved after insert, to the first one's id
                self.first_by_key[k] = i
            self.fresh.append(ev)

    def missing_keys(self, inserted: set[str]) -> dict[str, list[str]]:
        """Keys whose event was not inserted (stored earlier), by project."""
        out: dict[str, list[str]] = {}
        if not self.first_by_key:
            return out
        for (project_id, key), i in self.first_by_key.items():
            if self.batch[i].id not in inserted:
                out.setdefault(project_id, []).append(key)
        return out

    def results(self, inserted: set[str], existing: dict[tuple[str, str], str]) -> list[IngestResult]:
        if not self.first_by_key:  # no idempotency keys: every event was inserted
            return [IngestResult(ev.id, False) for ev in self.batch]
        out: list[IngestResult] = []
        for ev in self.batch:
            if ev.id in inserted:
                out.append(IngestResult(ev.id, False))
                continue
            assert ev.idempotency_key is not None  # only keyed events can be refused
            k = (ev.project_id, ev.idempotency_key)
            first = self.batch[self.first_by_key[k]]
            eid = first.id if first.id in inserted else existing.get(k)
            if eid is None:  # pragma: no cover - would mean the unique index failed us
                raise RuntimeError("idempotency conflict without a stored event")
            out.append(IngestResult(eid, True))
        return out
