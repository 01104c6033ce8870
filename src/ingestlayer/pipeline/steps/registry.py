"""Name → step class. The YAML key of a step is its registered name."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ingestlayer.registry import LazyRegistry

STEPS = LazyRegistry(
    "step",
    {
        "filter.match": "ingestlayer.pipeline.steps.filter_match:FilterMatch",
        "enrich.entity": "ingestlayer.pipeline.steps.enrich_entity:EnrichEntity",
        "enrich.person": "ingestlayer.pipeline.steps.enrich_person:EnrichPerson",
        "redact.pii": "ingestlayer.pipeline.steps.redact_pii:RedactPii",
        "classify": "ingestlayer.pipeline.steps.classify:Classify",
        "transform": "ingestlayer.pipeline.steps.transform:Transform",
    },
)


def step_class(name: str) -> Any:
    return STEPS.get(name)


def parse_step_config(name: str, raw: Any) -> BaseModel:
    cls = step_class(name)
    if isinstance(raw, str) and getattr(cls, "shorthand_field", None):
        raw = {cls.shorthand_field: raw}
    if raw is None:
        raw = {}
    model: type[BaseModel] = cls.config_model
    return model.model_validate(raw)
