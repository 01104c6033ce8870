"""Plain dataclasses that cross layer boundaries (API → store → worker)."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar


class _HasProject(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def project_id(self) -> str: ...


_Routable = TypeVar("_Routable", bound=_HasProject)


class RoutableEvent(Protocol):
    """What routing reads of an event: a stored one, or one just accepted (ingest routes those
    itself, without making a StoredEvent of each)."""

    @property
    def id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def payload_json(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def occurred_at(self) -> float: ...

    @property
    def received_at(self) -> float: ...


@dataclass(slots=True)
class NewEvent:
    """An event accepted by the API, not yet stored."""

    id: str
    project_id: str
    type: str
    payload_json: str
    idempotency_key: str | None
    source: str
    occurred_at: float
    received_at: float
    # The pipelines' trace (JSON), when ingest routed the event itself (see IngestRouting).
    trace: str | None = None


@dataclass(slots=True)
class IngestResult:
    id: str
    duplicate: bool


@dataclass(slots=True)
class StoredEvent:
    id: str
    project_id: str
    type: str
    payload_json: str
    idempotency_key: str | None
    source: str
    occurred_at: float
    received_at: float
    trace: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class IngestRouting:
    """Routing that ingest decided before storing a batch, by the router's compiled
    configuration at ``versions`` (project id: config_version):

    - ``untaken``: events that no pipeline takes, stored without a route job;
    - ``traces`` (event id: trace JSON) and ``deliveries``: events routed by ingest itself
      (pipelines whose steps cannot wait), stored with their trace and deliveries.

    Either holds only in projects whose config_version is still that one when the insert's
    transaction runs (:meth:`confirm`); elsewhere the events get a route job as usual, so a
    pipeline changed a moment ago still sees the next event. The insert fills ``created`` with
    the deliveries it stored and ``leased`` with the first ``prelease`` of them, stored already
    leased for this process's dispatcher."""

    versions: dict[str, int] = field(default_factory=dict)
    untaken: set[str] = field(default_factory=set)
    traces: dict[str, str] = field(default_factory=dict)
    deliveries: list[NewDelivery] = field(default_factory=list)
    prelease: int = 0
    lease_seconds: float = 90.0
    confirmed: set[str] = field(default_factory=set)
    created: int = 0
    leased: list[LeasedDelivery] = field(default_factory=list)

    def confirm(self, current: dict[str, int]) -> None:
        """Record which projects' config_version (``current``, read in the insert's
        transaction) is still the one the decisions were made at."""
        self.confirmed = {p for p, v in self.versions.items() if current.get(p) == v}

    def _settled(self, event: _HasProject) -> bool:
        return event.project_id in self.confirmed and (event.id in self.untaken or event.id in self.traces)

    def to_route(self, events: list[_Routable]) -> list[_Routable]:
        """The events that still need routing: all but those settled here."""
        if not self.confirmed:
            return events
        return [e for e in events if not self._settled(e)]

    def set_traces(self, batch: Sequence[NewEvent]) -> None:
        """Put each routed event's trace on it for the INSERT, in confirmed projects only."""
        if self.traces:
            for ev in batch:
                ev.trace = self.traces.get(ev.id) if ev.project_id in self.confirmed else None

    def deliveries_for(self, inserted: Container[str] | None) -> list[NewDelivery]:
        """The deliveries to store: those of confirmed projects' events that were inserted
        (``None``: all were; a duplicate key inserts nothing)."""
        return [
            d
            for d in self.deliveries
            if d.project_id in self.confirmed and (inserted is None or d.event_id in inserted)
        ]


@dataclass(slots=True)
class RouteLease:
    """Route jobs leased by one router pass; ``token`` proves the lease on completion."""

    token: float
    events: list[StoredEvent]
    attempts: dict[str, int] = field(default_factory=dict)  # routing attempts, this one included
    # The leased events' projects' config versions, when read in the lease's transaction.
    versions: dict[str, int] | None = None
    # Per event, when leases taken under different tokens are routed in one pass.
    tokens: dict[str, float] | None = None

    def by_token(self, event_ids: list[str]) -> dict[float, list[str]]:
        """The given events grouped by the token their job is leased under."""
        if self.tokens is None:
            return {self.token: event_ids}
        out: dict[float, list[str]] = {}
        for eid in event_ids:
            out.setdefault(self.tokens[eid], []).append(eid)
        return out

    def token_of(self, event_id: str) -> float:
        """The token the event's job is leased under."""
        return self.token if self.tokens is None else self.tokens[event_id]

    def only(self, event: StoredEvent) -> RouteLease:
        """This lease narrowed to one of its events, under the token its job is leased with."""
        return RouteLease(
            self.token_of(event.id), [event], {event.id: self.attempts.get(event.id, 1)}, self.versions
        )

    def subset(self, events: list[StoredEvent]) -> RouteLease:
        """This lease narrowed to some of its events."""
        return RouteLease(self.token, events, self.attempts, self.versions, self.tokens)

    @staticmethod
    def merge(leases: list[RouteLease]) -> RouteLease:
        if len(leases) == 1:
            return leases[0]
        return RouteLease(
            leases[0].token,
            [e for lease in leases for e in lease.events],
            {k: v for lease in leases for k, v in lease.attempts.items()},
            None,
            {e.id: lease.token for lease in leases for e in lease.events},
        )


@dataclass(slots=True)
class NewDelivery:
    id: str
    project_id: str
    event_id: str
    event_type: str
    pipeline_id: str
    destination_id: str
    body: str


@dataclass(slots=True)
class LeasedDelivery:
    id: str
    project_id: str
    event_id: str
    event_type: str
    destination_id: str
    attempts: int  # attempts made before this one
    retry_base: int
    body: str
    lease_token: str
    lease_until: float  # clock.now() when the lease ends and another worker may retake it


@dataclass(slots=True)
class AttemptResult:
    """The outcome of one attempt, as the dispatcher records it."""

    delivery_id: str
    project_id: str
    lease_token: str
    n: int
    started_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    # The delivery's new state.
    status: str  # delivered | retrying | dead
    next_retry_at: float | None
    worker: str | None = None


@dataclass(slots=True)
class DestinationRow:
    id: str
    project_id: str
    name: str
    kind: str
    config: dict[str, Any]
    enabled: bool
    updated_at: float
    # Why its stored configuration cannot be read (not JSON, not UTF-8: edited by hand), its
    # config then empty (see rows.stored_config); None when it can.
    unreadable: str | None = None


@dataclass(slots=True)
class PipelineRow:
    id: str
    project_id: str
    name: str
    config: dict[str, Any]
    endpoint: bool
    enabled: bool
    created_at: float
    updated_at: float
    # Why its stored configuration cannot be read (not JSON, not UTF-8: edited by hand), its
    # config then empty (see rows.stored_config); None when it can.
    unreadable: str | None = None


@dataclass(slots=True)
class SourceRow:
    id: str
    project_id: str
    name: str
    config: dict[str, Any]
    enabled: bool
    updated_at: float
    # Why its stored configuration cannot be read (not JSON, not UTF-8: edited by hand), its
    # config then empty (see rows.stored_config); None when it can.
    unreadable: str | None = None


@dataclass(slots=True)
class ProjectConfig:
    """Everything the router needs to route a project's events, at one config version."""

    project_id: str
    version: int
    pipelines: list[PipelineRow] = field(default_factory=list)
    destinations: dict[str, DestinationRow] = field(default_factory=dict)
    sources: dict[str, SourceRow] = field(default_factory=dict)

    def destination_id(self, reference: str) -> str | None:
        """The destination a user names by its id, its name, or (an endpoint's) the endpoint's
        id as /v1/endpoints lists it: its destination is named ``endpoint:<that id>``."""
        if reference in self.destinations:
            return reference
        wanted = {reference, f"endpoint:{reference}"} if reference.startswith("ep_") else {reference}
        return next((d.id for d in self.destinations.values() if d.name in wanted), None)

    def endpoint_destinations(self) -> dict[str, str]:
        """Each endpoint's destination id, to the endpoint's id (its pipeline's)."""
        out = {
            r["destination_id"]: p.id for p in self.pipelines if p.endpoint for r in p.config["destinations"]
        }
        # A pipeline whose stored configuration cannot be read has no route to tell: its
        # destination is the one named after it (else `apply --prune` deleted it as no one's).
        unread = {f"endpoint:{p.id}": p.id for p in self.pipelines if p.endpoint and p.unreadable is not None}
        if unread:
            out.update({d.id: unread[d.name] for d in self.destinations.values() if d.name in unread})
        return out
