"""Name → step class. The YAML key of a step is its registered name.

Entries are import paths, loaded on first use, so a step's module (and its dependencies) costs
nothing until a pipeline uses it. Adding a step is one module and one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

STEPS: dict[str, str] = {
    "filter.match": "ingestlayer.pipeline.steps.filter_match:FilterMatch",
    "enrich.entity": "ingestlayer.pipeline.steps.enrich_entity:EnrichEntity",
    "enrich.person": "ingestlayer.pipeline.steps.enrich_person:EnrichPerson",
    "redact.pii": "ingestlayer.pipeline.steps.redact_pii:RedactPii",
    "classify": "ingestlayer.pipeline.steps.classify:Classify",
    "transform": "ingestlayer.pipeline.steps.transform:Transform",
}

_loaded: dict[str, Any] = {}


def step_class(name: str) -> Any:
    cls = _loaded.get(name)
    if cls is not None:
        return cls
    try:
        target = STEPS[name]
    except KeyError:
        known = ", ".join(sorted(STEPS))
        raise ValueError(f"unknown step {name!r} (known steps: {known})") from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    _loaded[name] = cls
    return cls


def parse_step_config(name: str, raw: Any) -> BaseModel:
    cls = step_class(name)
    if isinstance(raw, str) and getattr(cls, "shorthand_field", None):
        raw = {cls.shorthand_field: raw}
    if raw is None:
        raw = {}
    model: type[BaseModel] = cls.config_model
    return model.model_validate(raw)
