"""The event as pipeline steps see it, and the step protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ingestlayer.pipeline.expressions import EvalContext


@dataclass(slots=True)
class PipelineEvent:
    id: str
    type: str
    occurred_at: float
    received_at: float
    source: str
    payload: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        from ingestlayer.timefmt import iso

        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": iso(self.occurred_at),
            "received_at": iso(self.received_at),
            "source": self.source,
        }

    def eval_context(self) -> EvalContext:
        return EvalContext(payload=self.payload, event=self.envelope())


@dataclass(frozen=True, slots=True)
class Drop:
    """Returned by a step to stop the event in this pipeline; ``reason`` lands in the trace."""

    reason: str


@dataclass(slots=True)
class StepContext:
    project_id: str
    pipeline: str
    notes: list[str] = field(default_factory=list)


class Step(Protocol):
    name: ClassVar[str]
    kind: ClassVar[str]  # CTL | ENR | MUT

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop: ...

    def summary(self) -> str: ...
