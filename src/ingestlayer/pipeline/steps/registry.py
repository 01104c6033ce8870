"""Name → step class. The YAML key of a step is its registered name."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ingestlayer.pipeline.steps.filter_match import FilterMatch

STEPS: dict[str, Any] = {
    FilterMatch.name: FilterMatch,
}


def step_class(name: str) -> Any:
    try:
        return STEPS[name]
    except KeyError:
        known = ", ".join(sorted(STEPS))
        raise ValueError(f"unknown step {name!r} (known steps: {known})") from None


def parse_step_config(name: str, raw: Any) -> BaseModel:
    cls = step_class(name)
    if isinstance(raw, str) and getattr(cls, "shorthand_field", None):
        raw = {cls.shorthand_field: raw}
    if raw is None:
        raw = {}
    model: type[BaseModel] = cls.config_model
    return model.model_validate(raw)
