"""``transform`` (MUT): set, rename and drop fields, with ``$event.*`` templates.

Applied in that order: ``rename``, then ``set``, then ``drop``. Paths are dotted. Renames happen
at once (``{a: b, b: a}`` swaps the two); so does ``set``: its templates all read the payload as
the renames left it, whatever the order of its keys. A rename or ``set`` onto a field that exists
replaces it.

Example::

    steps:
      - transform:
          rename: { user_id: user.id }
          set:
            summary: "$event.type from $event.payload.email"
            received: $event.received_at
            user.plan: $event.plan
          drop: [internal_notes, debug]
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, Field, model_validator

from ingestlayer.pipeline.event import Drop, PipelineEvent, StepConfig, StepContext
from ingestlayer.pipeline.paths import MISSING, delete_path, get_path, set_path
from ingestlayer.pipeline.templates import render_value

PATH = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"


# The most a payload may grow to through ``set``: four times an event's own limit. Copying
# objects (``a: $event.payload``, ``b: $event.payload``) doubles it with each step, and thirty
# such steps would have made 30 GB of one event, on the worker every project shares.
MAX_PAYLOAD_BYTES = 1 << 20


def _check_size(payload: dict[str, Any]) -> None:
    size = len(orjson.dumps(payload))
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"the payload would be {size:,} bytes after this set; at most {MAX_PAYLOAD_BYTES:,}")


# A set that writes only numbers, booleans and strings up to this long grows the payload by no
# more than its own configuration does; anything else (an object, a list, a template's text that
# quoted a field: "copy: $event.payload" made 250 KB into 1 MB, then 4 and 16 MB, step after
# step) is measured against MAX_PAYLOAD_BYTES. Serialising every payload after every set would
# cost small events most.
SMALL_STRING_CHARS = 256


def _may_grow(rendered: Any) -> bool:
    return isinstance(rendered, dict | list) or (
        isinstance(rendered, str) and len(rendered) > SMALL_STRING_CHARS
    )


class TransformConfig(StepConfig):
    set: dict[str, Any] = Field(default_factory=dict, description="path → value or $event.* template.")
    rename: dict[str, str] = Field(default_factory=dict, description="old path → new path.")
    drop: list[str] = Field(default_factory=list, description="Paths to remove.")

    @model_validator(mode="after")
    def _paths(self) -> TransformConfig:
        for label, paths in (
            ("set", list(self.set)),
            ("rename", [*self.rename, *self.rename.values()]),
            ("drop", self.drop),
        ):
            for p in paths:
                if not re.fullmatch(PATH, p):
                    raise ValueError(f"{label}: {p!r} is not a dotted field path")
        if not (self.set or self.rename or self.drop):
            raise ValueError("transform needs at least one of set, rename, drop")
        sources: dict[str, str] = {}
        for old, new in self.rename.items():
            if new in sources:
                # The second would overwrite the first, and its value be lost without a word.
                first = sources[new]
                raise ValueError(f"rename: {first!r} and {old!r} both move to {new!r}; one would be lost")
            sources[new] = old
        return self


class Transform:
    name: ClassVar[str] = "transform"
    kind: ClassVar[str] = "MUT"
    config_model: ClassVar[type[BaseModel]] = TransformConfig

    def __init__(self, config: TransformConfig) -> None:
        self.config = config

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop:
        payload = event.payload
        # All renames read first, then write: `{a: b, b: a}` swaps rather than losing `b`.
        moved = [(new, get_path(payload, old, MISSING)) for old, new in self.config.rename.items()]
        for old in self.config.rename:
            delete_path(payload, old)
        for new, value in moved:
            if value is not MISSING:
                set_path(payload, new, value)
        if self.config.set:
            # Every template reads the payload as it was before the set, then all are written:
            # a template that read a field set beside it depended on the order of the keys, which
            # a stored configuration does not keep (it came out empty or stale, silently).
            envelope = event.envelope()
            values = [
                (path, render_value(value, envelope, payload)) for path, value in self.config.set.items()
            ]
            for path, rendered in values:
                set_path(payload, path, rendered)
            if any(_may_grow(rendered) for _, rendered in values):
                _check_size(payload)
        for path in self.config.drop:
            delete_path(payload, path)
        return event

    def summary(self) -> str:
        parts = []
        if self.config.rename:
            parts.append("rename " + ", ".join(f"{a} → {b}" for a, b in self.config.rename.items()))
        if self.config.set:
            parts.append("set " + ", ".join(self.config.set))
        if self.config.drop:
            parts.append("drop " + ", ".join(self.config.drop))
        return "; ".join(parts)
