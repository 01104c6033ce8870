"""``filter.match`` (CTL): drop the event unless an expression holds.

Example::

    steps:
      - filter.match: feature in {export, api, webhook}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from ingestlayer.pipeline.event import Drop, PipelineEvent, StepConfig, StepContext
from ingestlayer.pipeline.expressions import Expression, compile_expression


class FilterMatchConfig(StepConfig):
    expression: str = Field(description="Keep the event only when this expression holds (SPEC §3).")


class FilterMatch:
    name: ClassVar[str] = "filter.match"
    kind: ClassVar[str] = "CTL"
    config_model: ClassVar[type[BaseModel]] = FilterMatchConfig
    # A bare string in YAML (`- filter.match: plan = "pro"`) is this field.
    shorthand_field: ClassVar[str] = "expression"

    def __init__(self, config: FilterMatchConfig) -> None:
        self.config = config
        self.expression: Expression = compile_expression(config.expression)
        # Made once: the reason is the same for every event, and formatting it for each one
        # cost as much as evaluating the expression (Drop is frozen, so it is shared safely).
        self._dropped = Drop(f"filter.match: {config.expression!r} did not hold")

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop:
        if self.expression(event.eval_context()):
            return event
        return self._dropped

    def summary(self) -> str:
        return self.config.expression
