"""Pipelines as code: the YAML file's models, validated with errors that name the path.

A file holds ``pipelines:``, ``destinations:`` (named, reusable) and ``sources:``. A pipeline's
destination entry is a one-key mapping ``{KIND: {…}}`` (inline) or ``{ref: NAME}`` (a named one);
``name``, ``when`` and ``retry`` may sit beside the kind key or inside its mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ingestlayer.delivery.retry import RetryPolicy
from ingestlayer.destinations.registry import DESTINATIONS, parse_destination_config
from ingestlayer.field_rule import error_loc
from ingestlayer.json_depth import MAX_JSON_DEPTH, deeper_than, huge_int_path
from ingestlayer.pipeline.expressions import ExpressionError, compile_expression
from ingestlayer.pipeline.matching import is_valid_pattern
from ingestlayer.pipeline.steps.registry import parse_step_config, step_class
from ingestlayer.validation_messages import error_message

META_KEYS = ("name", "when", "retry", "concurrency", "ref")
# Attempts in flight at once for one destination, per worker process.
MAX_CONCURRENCY = 10_000
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$"
# Objects are found by name or id (/v1/destinations/{name or id}): no name may look like an id.
ID_SHAPED_RE = re.compile(r"^[a-z]{2,3}_[0-9A-HJKMNP-TV-Z]{26}$")


class ConfigError(ValueError):
    """A configuration problem at a path such as ``pipelines[0].steps[1]``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def _pydantic_message(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in error_loc(err))
    return loc, error_message(err)


@dataclass
class DestinationSpec:
    name: str
    kind: str
    settings: dict[str, Any]
    retry: dict[str, Any] | None = None
    concurrency: int | None = None

    def stored_config(self) -> dict[str, Any]:
        stored: dict[str, Any] = {"settings": self.settings, "retry": self.retry}
        if self.concurrency is not None:  # absent otherwise, so older configurations diff as unchanged
            stored["concurrency"] = self.concurrency
        return stored


@dataclass
class RouteSpec:
    destination: str  # destination name
    when: str | None = None


@dataclass
class PipelineSpec:
    name: str
    match: list[str]
    steps: list[dict[str, Any]]  # [{"name": "filter.match", "config": {...}}]
    routes: list[RouteSpec]
    description: str | None = None
    enabled: bool = True

    def stored_config(self, destination_ids: dict[str, str]) -> dict[str, Any]:
        return {
            "description": self.description,
            "source": {"match": self.match},
            "steps": self.steps,
            "destinations": [
                {
                    "destination_id": destination_ids[r.destination],
                    "destination": r.destination,
                    "when": r.when,
                }
                for r in self.routes
            ],
        }


@dataclass
class ConfigFile:
    pipelines: list[PipelineSpec] = field(default_factory=list)
    destinations: list[DestinationSpec] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)


class _SourceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    match: list[str] = Field(min_length=1)

    @field_validator("match", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("match")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if not is_valid_pattern(p):
                raise ValueError(f"{p!r} is not an event type or pattern (e.g. feature.used, invoice.*)")
        return v


class _PipelineModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE)

    @field_validator("name")
    @classmethod
    def _not_an_id(cls, v: str) -> str:
        problem = _id_shaped(v)
        if problem:
            raise ValueError(problem)
        return v

    description: str | None = None
    enabled: bool = True
    source: _SourceModel
    steps: list[Any] = Field(default_factory=list)
    destinations: list[Any] = Field(min_length=1)


def _check_when(path: str, when: Any) -> str | None:
    if when is None:
        return None
    if not isinstance(when, str):
        raise ConfigError(path, "must be an expression string")
    try:
        compile_expression(when)
    except ExpressionError as exc:
        raise ConfigError(path, str(exc)) from None
    return when


def _check_retry(path: str, retry: Any) -> dict[str, Any] | None:
    if retry is None:
        return None
    if not isinstance(retry, dict):
        raise ConfigError(path, "must be a mapping: {schedule: [...]} or {max_attempts, base, factor, max}")
    try:
        RetryPolicy.from_config(retry)
    except ValueError as exc:
        # RetryPolicy names the value within the policy ("retry.schedule[0]: must not be
        # negative"): the error's path goes down to it, and the message is not "retry: retry...".
        inner, sep, message = str(exc).partition(": ")
        if sep and inner.startswith("retry.") and " " not in inner:
            raise ConfigError(path + inner.removeprefix("retry"), message) from None
        raise ConfigError(path, str(exc)) from None
    return retry


def check_concurrency(path: str, value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(path, f"must be a whole number from 1 to {MAX_CONCURRENCY:,} (attempts in flight)")
    return value


def _check_name(path: str, name: Any, what: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(NAME_RE, name):
        raise ConfigError(
            path,
            f"a {what} name is 1 to 200 letters, digits and _ . - /, starting with a letter or digit",
        )
    problem = _id_shaped(name)
    if problem:
        raise ConfigError(path, problem)


def _id_shaped(name: str) -> str | None:
    return (
        f"{name!r} has the shape of an id; choose a name that does not"
        if ID_SHAPED_RE.fullmatch(name)
        else None
    )


def parse_destination_entry(
    path: str, raw: Any, default_name: str | None, *, check_name: bool = True
) -> tuple[DestinationSpec | None, RouteSpec | None, str | None]:
    """Parse one destination entry: returns (inline spec or None, route, when). ``check_name``
    is off for the names the server gives (an endpoint's ``endpoint:<id>``)."""
    if not isinstance(raw, dict):
        raise ConfigError(path, "must be a mapping such as {webhook.out: {url: …}} or {ref: NAME}")
    outer = dict(raw)
    kinds = [k for k in outer if k not in META_KEYS]
    if "ref" in outer:
        if kinds:
            raise ConfigError(path, f"`ref` names an existing destination; remove {kinds[0]!r}")
        if not isinstance(outer["ref"], str):
            raise ConfigError(f"{path}.ref", "must be the name of a destination")
        when = _check_when(f"{path}.when", outer.get("when"))
        return None, RouteSpec(destination=outer["ref"], when=when), when
    if len(kinds) != 1:
        known = ", ".join(DESTINATIONS.names())
        found = ", ".join(kinds) or "none"
        raise ConfigError(path, f"expected exactly one destination kind ({known}); found {found}")
    kind = kinds[0]
    if kind not in DESTINATIONS:
        known = ", ".join(DESTINATIONS.names())
        raise ConfigError(f"{path}.{kind}", f"unknown destination kind (known: {known})")
    inner = outer[kind] or {}
    if not isinstance(inner, dict):
        raise ConfigError(f"{path}.{kind}", "must be a mapping of settings")
    inner = dict(inner)
    meta = {k: outer.get(k) for k in META_KEYS if k in outer}
    for k in ("name", "when", "retry", "concurrency"):
        if k in inner:
            meta[k] = inner.pop(k)
    name = meta.get("name", default_name)
    if name is None:
        raise ConfigError(f"{path}.name", "a destination under `destinations:` needs a `name`")
    if check_name:
        _check_name(f"{path}.name", name, "destination")
    try:
        settings = parse_destination_config(kind, inner).model_dump(mode="json")
    except ValidationError as exc:
        loc, msg = _pydantic_message(exc)
        raise ConfigError(f"{path}.{kind}.{loc}" if loc else f"{path}.{kind}", msg) from None
    retry = _check_retry(f"{path}.retry", meta.get("retry"))
    concurrency = check_concurrency(f"{path}.concurrency", meta.get("concurrency"))
    when = _check_when(f"{path}.when", meta.get("when"))
    spec = DestinationSpec(name=str(name), kind=kind, settings=settings, retry=retry, concurrency=concurrency)
    return spec, RouteSpec(destination=spec.name, when=when), when


def parse_endpoint_destination(entry: dict[str, Any]) -> DestinationSpec:
    """An endpoint's destination entry, made by the server from the endpoint's fields: its name
    (``endpoint:<id>``) is the server's, and it comes without a document around it, so its
    numbers are checked here as parse_config checks a document's."""
    _check_numbers(entry)
    spec, _, _ = parse_destination_entry("", entry, None, check_name=False)
    assert spec is not None
    return spec


def _check_numbers(doc: Any) -> None:
    huge = huge_int_path(doc)
    if huge is not None:
        # Stored as JSON, which keeps 64-bit integers: refused here rather than failing the write.
        raise ConfigError(huge, "numbers must fit in 64 bits")


def parse_step(path: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(path, 'a step is a one-key mapping, e.g. `filter.match: plan = "pro"`')
    ((name, cfg),) = raw.items()
    try:
        model = parse_step_config(str(name), cfg)
        # Build the step as the router will, so its expressions are compiled (and rejected) now.
        step_class(str(name))(model)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            loc, msg = _pydantic_message(exc)
            raise ConfigError(f"{path}.{name}.{loc}" if loc else f"{path}.{name}", msg) from None
        if isinstance(exc, ExpressionError):
            raise ConfigError(f"{path}.{name}", str(exc)) from None
        raise ConfigError(path, str(exc)) from None
    return {"name": str(name), "config": model.model_dump(mode="json")}


def parse_pipeline(path: str, raw: Any) -> tuple[PipelineSpec, list[DestinationSpec]]:
    try:
        model = _PipelineModel.model_validate(raw)
    except ValidationError as exc:
        loc, msg = _pydantic_message(exc)
        raise ConfigError(f"{path}.{loc}" if loc else path, msg) from None
    steps = [parse_step(f"{path}.steps[{i}]", s) for i, s in enumerate(model.steps)]
    inline: list[DestinationSpec] = []
    routes: list[RouteSpec] = []
    kinds_seen: dict[str, int] = {}
    for i, entry in enumerate(model.destinations):
        kind = (
            next((k for k in (entry or {}) if k not in META_KEYS), "dest")
            if isinstance(entry, dict)
            else "dest"
        )
        kinds_seen[kind] = kinds_seen.get(kind, 0) + 1
        default = f"{model.name}/{kind}" + (f"-{kinds_seen[kind]}" if kinds_seen[kind] > 1 else "")
        spec, route, _ = parse_destination_entry(f"{path}.destinations[{i}]", entry, default)
        if spec is not None:
            inline.append(spec)
        assert route is not None
        routes.append(route)
    names = {r.destination for r in routes}
    for i, step in enumerate(steps):
        scoped = step["config"].get("destinations")
        for name in scoped or []:
            if name not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(
                    f"{path}.steps[{i}].{step['name']}.destinations",
                    f"{name!r} is not a destination of this pipeline (its destinations: {known})",
                )
    pipeline = PipelineSpec(
        name=model.name,
        match=model.source.match,
        steps=steps,
        routes=routes,
        description=model.description,
        enabled=model.enabled,
    )
    return pipeline, inline


def parse_config(doc: Any) -> ConfigFile:
    """Validate a whole YAML document; raises :class:`ConfigError` naming the first bad path."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("", "the file must be a mapping with `pipelines:`, `destinations:` or `sources:`")
    if deeper_than(doc):
        # Stored configurations are rendered back as JSON, which cannot nest without bound.
        raise ConfigError("", f"the document nests more than {MAX_JSON_DEPTH} levels deep")
    _check_numbers(doc)
    unknown = sorted(set(doc) - {"pipelines", "destinations", "sources"})
    if unknown:
        raise ConfigError(unknown[0], "unknown top-level key (expected pipelines, destinations, sources)")
    for key in ("pipelines", "destinations", "sources"):
        if doc.get(key) is not None and not isinstance(doc[key], list):
            raise ConfigError(key, "must be a list")
    out = ConfigFile()
    named: dict[str, DestinationSpec] = {}
    for i, raw in enumerate(doc.get("destinations") or []):
        spec, _, _ = parse_destination_entry(f"destinations[{i}]", raw, None)
        if spec is None:
            raise ConfigError(
                f"destinations[{i}].ref",
                "`ref` belongs in a pipeline's destinations; a named destination needs a kind "
                "such as webhook.out",
            )
        if spec.name in named:
            raise ConfigError(f"destinations[{i}].name", f"duplicate destination name {spec.name!r}")
        named[spec.name] = spec
        out.destinations.append(spec)
    seen: set[str] = set()
    for i, raw in enumerate(doc.get("pipelines") or []):
        pipeline, inline = parse_pipeline(f"pipelines[{i}]", raw)
        if pipeline.name in seen:
            raise ConfigError(f"pipelines[{i}].name", f"duplicate pipeline name {pipeline.name!r}")
        seen.add(pipeline.name)
        for spec in inline:
            if spec.name in named:
                raise ConfigError(f"pipelines[{i}]", f"destination name {spec.name!r} is used twice")
            named[spec.name] = spec
            out.destinations.append(spec)
        out.pipelines.append(pipeline)
    from ingestlayer.sources.config import SourceConfig

    names: set[str] = set()
    for i, raw in enumerate(doc.get("sources") or []):
        try:
            src = SourceConfig.model_validate(raw)
        except ValidationError as exc:
            loc, msg = _pydantic_message(exc)
            raise ConfigError(f"sources[{i}].{loc}" if loc else f"sources[{i}]", msg) from None
        if src.name in names:
            raise ConfigError(f"sources[{i}].name", f"duplicate source name {src.name!r}")
        problem = _id_shaped(src.name)  # a path names a source by its name or its id
        if problem:
            raise ConfigError(f"sources[{i}].name", problem)
        names.add(src.name)
        out.sources.append(src.model_dump(mode="json"))
    return out
