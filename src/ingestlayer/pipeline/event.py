"""The event as pipeline steps see it, the services they may use, and the step protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ingestlayer.pipeline.expressions import EvalContext
from ingestlayer.timefmt import iso

OnError = Literal["skip", "drop", "retry"]


class StepConfig(BaseModel):
    """Fields every step accepts."""

    model_config = ConfigDict(extra="forbid")

    on_error: OnError = Field(
        default="skip",
        description="When the step fails (lookup down, model timeout): skip the step, drop the event, "
        "or retry the whole event later. The failure is recorded in the event's trace either way.",
    )


@dataclass(slots=True)
class PipelineEvent:
    id: str
    type: str
    occurred_at: float
    received_at: float
    source: str
    payload: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": iso(self.occurred_at),
            "received_at": iso(self.received_at),
            "source": self.source,
        }

    def eval_context(self) -> EvalContext:
        return EvalContext(payload=self.payload, event=_LazyEnvelope(self))


class _LazyEnvelope(Mapping[str, Any]):
    """The envelope of an event, formatted only if an expression reads it: most read only the
    payload, and formatting two timestamps cost as much as evaluating the expression."""

    __slots__ = ("_data", "_event")

    def __init__(self, event: PipelineEvent) -> None:
        self._event = event
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._event.envelope()
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def get(self, key: str, default: Any = None) -> Any:
        return self._load().get(key, default)


class RetryLater(Exception):
    """A step's failure that said when to try again: ``retry_after``, the seconds its provider's
    ``Retry-After`` asked for (a 429 or 503), or None. With ``on_error: retry`` the event is not
    routed again sooner."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Drop:
    """Returned by a step to stop the event in this pipeline; ``reason`` lands in the trace."""

    reason: str


class EntityReader(Protocol):
    async def get(self, project_id: str, kind: str, entity_id: str) -> dict[str, Any] | None: ...


class StepCache(Protocol):
    async def get(self, project_id: str, key: str) -> str | None: ...

    async def put(self, project_id: str, key: str, value: str, ttl: float | None) -> None: ...


@dataclass
class StepServices:
    """What steps may use. Steps never reach the database or the network any other way."""

    entities: EntityReader
    cache: StepCache
    http: Callable[[], Awaitable[Any]]  # returns the shared aiohttp.ClientSession
    resolve_secret: Callable[[str, str], Awaitable[str]]
    allow_private: bool = False


@dataclass(slots=True)
class StepContext:
    project_id: str
    pipeline: str
    services: StepServices | None = None
    # Free-form notes a step adds for the trace (e.g. "user u_1 not found").
    notes: list[str] = field(default_factory=list)


class Step(Protocol):
    name: ClassVar[str]
    kind: ClassVar[str]  # CTL | ENR | MUT
    config: StepConfig

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop: ...

    def summary(self) -> str: ...
