"""Run a project's pipelines over one event: match → steps → one delivery per destination.

A project's configuration is compiled once per config version (expressions parsed, steps
built) and reused for every event until the configuration changes.

Steps that name ``destinations`` (``redact.pii``) change only the copies of the event those
destinations receive: the runner keeps a base payload plus one variant per named destination,
so one event can reach Postgres whole and Slack masked.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingestlayer.ids import new_id
from ingestlayer.pipeline.event import Drop, PipelineEvent, RetryLater, StepContext, StepServices
from ingestlayer.pipeline.expressions import Expression, compile_expression
from ingestlayer.pipeline.matching import TypeMatcher, remembered
from ingestlayer.pipeline.steps.registry import step_class
from ingestlayer.records import NewDelivery, ProjectConfig, RoutableEvent
from ingestlayer.stored_config import stored_configuration
from ingestlayer.timefmt import iso
from ingestlayer.validation_messages import configuration_problem, problem_traceback

log = logging.getLogger("ingestlayer.router")

# After this many routing attempts (the router waits longer before each: retry_delay) a step
# with on_error: retry gives up and the event is dropped, so one broken lookup cannot hold an
# event back forever; the trace says so.
MAX_STEP_RETRIES = 8
TRACE_ERROR_CHARS = 300


class StepRetry(RetryLater):
    """A step with ``on_error: retry`` failed: route the whole event again later, and not sooner
    than ``retry_after`` when the step's provider said so (its Retry-After)."""


@dataclass
class CompiledRoute:
    destination_id: str
    destination: str
    when: Expression | None
    when_text: str | None = None  # the condition as written, for the trace


@dataclass
class CompiledPipeline:
    id: str
    name: str
    matcher: TypeMatcher
    steps: list[Any]
    routes: list[CompiledRoute]
    # Why this version cannot route by the pipeline's stored configuration (None: it can). Such
    # a pipeline keeps its matcher (one that takes every type, when its source cannot be read
    # either): the events it would take wait until the configuration is fixed, rather than being
    # routed without it. See Router._wait_for_configuration.
    unreadable: str | None = None
    # Per step, the destinations it is scoped to (None: the whole event). Read once here: a
    # missing attribute on a step's pydantic config raises inside getattr, for every event.
    scopes: list[list[str] | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.scopes = [getattr(step.config, "destinations", None) or None for step in self.steps]


@dataclass
class CompiledProject:
    project_id: str
    version: int
    pipelines: list[CompiledPipeline]

    _matching: dict[str, tuple[CompiledPipeline, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def matching(self, event_type: str) -> tuple[CompiledPipeline, ...]:
        """The pipelines whose source matches this type, in order; remembered by type, so
        routing an event asks no pipeline's matcher again (500 pipelines: each asked, for
        every event)."""
        return remembered(self._matching, event_type, self._pipelines_matching)

    def takes(self, event_type: str) -> bool:
        """Whether any pipeline's source matches this type; an event no pipeline takes is
        routed to nothing and needs no pass through the pipelines (nor a coroutine)."""
        return bool(self.matching(event_type))

    def _pipelines_matching(self, event_type: str) -> tuple[CompiledPipeline, ...]:
        return tuple(p for p in self.pipelines if p.matcher(event_type))

    @functools.cached_property
    def performs_io(self) -> bool:
        """Whether routing an event may wait (an enrichment or classification step)."""
        return any(getattr(step, "performs_io", False) for p in self.pipelines for step in p.steps)

    @functools.cached_property
    def left_to_router(self) -> bool:
        """Whether ingest leaves the events this configuration takes to the router: their
        pipelines may wait, or one cannot be compiled (the router decides what waits for it)."""
        return self.performs_io or bool(self.unreadable)

    @functools.cached_property
    def unreadable(self) -> tuple[CompiledPipeline, ...]:
        """The pipelines this version cannot route by (see :attr:`CompiledPipeline.unreadable`)."""
        return tuple(p for p in self.pipelines if p.unreadable is not None)

    def waiting_on(self, event_type: str) -> list[str]:
        """Why an event of this type cannot be routed now: the problems of the pipelines that
        would take it and cannot be compiled (none: it can be routed)."""
        return [p.unreadable for p in self.matching(event_type) if p.unreadable is not None]

    @classmethod
    def unusable(cls, project_id: str, version: int, problem: str) -> CompiledProject:
        """A configuration that could not be read or compiled at all: every event waits."""
        whole = CompiledPipeline("", "", TypeMatcher(["*"]), [], [], unreadable=problem)
        return cls(project_id, version, [whole])


def compile_project(cfg: ProjectConfig) -> CompiledProject:
    # Stored configurations were checked when applied, possibly by an earlier version with
    # looser checks: see ingestlayer.stored_config.
    with stored_configuration():
        return _compile_project(cfg)


def _compile_project(cfg: ProjectConfig) -> CompiledProject:
    compiled: list[CompiledPipeline] = []
    for p in cfg.pipelines:
        if not p.enabled:
            continue
        matcher: TypeMatcher | None = None
        try:
            if p.unreadable is not None:  # which events it takes is unknown too
                raise ValueError(p.unreadable)
            matcher = TypeMatcher(_patterns(p.config.get("source")))
            steps = []
            for s in p.config.get("steps", []):
                cls = step_class(s["name"])
                steps.append(cls(cls.config_model.model_validate(s["config"])))
            routes = [
                CompiledRoute(
                    destination_id=r["destination_id"],
                    destination=r.get("destination") or r["destination_id"],
                    when=compile_expression(r["when"]) if r.get("when") else None,
                    when_text=r.get("when") or None,
                )
                for r in p.config.get("destinations", [])
                if r["destination_id"] in cfg.destinations and cfg.destinations[r["destination_id"]].enabled
            ]
        except Exception as exc:
            # Stored config was validated on apply; a failure here means that a newer server
            # wrote something this one cannot read, or a hand edited the row. The pipeline was
            # skipped: the events it takes were routed without it (to nothing, if it was their
            # only one), never to be delivered. Now they wait for the configuration to be fixed,
            # and routing the project's other events, and other projects', goes on.
            problem = f"pipeline {p.name!r} cannot be compiled: {configuration_problem(exc)}"
            log.error(
                "project %s: %s; the events it takes wait until its configuration is fixed",
                cfg.project_id,
                problem,
                exc_info=problem_traceback(exc),
            )
            # A source that cannot be read may take any event: all the project's wait.
            everything = TypeMatcher(["*"])
            compiled.append(CompiledPipeline(p.id, p.name, matcher or everything, [], [], unreadable=problem))
            continue
        compiled.append(CompiledPipeline(id=p.id, name=p.name, matcher=matcher, steps=steps, routes=routes))
    return CompiledProject(cfg.project_id, cfg.version, compiled)


def _patterns(source: Any) -> list[str]:
    """A stored ``source``'s list of types. Anything else cannot be routed by: a string (by
    hand) was taken one character at a time, its ``*`` matching every type."""
    match = source.get("match") if isinstance(source, dict) else None
    if not isinstance(match, list) or not all(isinstance(p, str) for p in match):
        raise ValueError("source.match must be a list of event types")
    return match


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """Top-level keys a step added, changed or removed (steps copy what they change)."""
    added = [k for k in after if k not in before]
    removed = [k for k in before if k not in after]
    changed = [k for k in after if k in before and (after[k] is not before[k]) and after[k] != before[k]]
    return {k: v for k, v in (("added", added), ("changed", changed), ("removed", removed)) if v}


async def _run_step(
    step: Any, event: PipelineEvent, ctx: StepContext, attempt: int
) -> tuple[PipelineEvent | Drop, dict[str, Any]]:
    """Run one step under its on_error policy; return the result and its trace entry."""
    before = event.payload
    event.payload = dict(before)  # each step starts from its own shallow copy
    if ctx.notes:  # the last step's, already in its trace entry (most steps add none)
        ctx.notes = []
    entry: dict[str, Any] = {"step": step.name}
    try:
        result = await step(event, ctx)
    except Exception as exc:
        policy = step.config.on_error
        reason = f"{type(exc).__name__}: {exc}"[:TRACE_ERROR_CHARS]
        entry["error"] = reason
        if ctx.notes:
            entry["notes"] = list(ctx.notes)
        event.payload = before
        if policy == "retry" and attempt < MAX_STEP_RETRIES:
            wait = exc.retry_after if isinstance(exc, RetryLater) else None
            raise StepRetry(f"{step.name}: {reason}", wait) from exc
        if policy == "retry":
            # A step asked to be retried must not be passed over in the end: skipping it would
            # send on what it was there to change (a redact.pii step: the very PII). Fail closed.
            entry["outcome"] = "dropped"
            entry["note"] = f"gave up retrying after {attempt} attempts"
            return Drop(f"{step.name} failed {attempt} times: {reason}"), entry
        if policy == "drop":
            entry["outcome"] = "dropped"
            return Drop(f"{step.name} failed: {reason}"), entry
        entry["outcome"] = "skipped"
        return event, entry
    if ctx.notes:
        entry["notes"] = list(ctx.notes)
    if isinstance(result, Drop):
        entry["outcome"] = "dropped"
        entry["reason"] = result.reason
        return result, entry
    diff = _diff(before, result.payload)
    entry["outcome"] = "changed" if diff else "kept"
    entry.update(diff)
    return result, entry


async def route_event(
    project: CompiledProject,
    stored: RoutableEvent,
    services: StepServices | None = None,
    attempt: int = 1,
) -> tuple[list[NewDelivery], list[dict[str, Any]]]:
    """Return the deliveries to create for an event, and its trace. Raises StepRetry."""
    deliveries: list[NewDelivery] = []
    trace: list[dict[str, Any]] = []
    payload: dict[str, Any] | None = None
    for pipe in project.matching(stored.type):
        if payload is None:
            payload = orjson.loads(stored.payload_json)
        event = PipelineEvent(
            id=stored.id,
            type=stored.type,
            occurred_at=stored.occurred_at,
            received_at=stored.received_at,
            source=stored.source,
            payload=payload,  # never mutated: steps work on copies
        )
        entry: dict[str, Any] = {"pipeline": pipe.name, "pipeline_id": pipe.id, "steps": []}
        trace.append(entry)
        ctx = StepContext(project.project_id, pipe.name, services)
        variants: dict[str, PipelineEvent] = {}  # destination name → its own copy of the event
        # Destinations whose own copy failed a scoped step: they receive nothing, because what
        # they would get is the event without, say, its redaction.
        blocked: dict[str, str] = {}
        dropped = False
        for step, scoped in zip(pipe.steps, pipe.scopes, strict=True):
            if scoped:
                for name in scoped:
                    if name in blocked:
                        continue
                    base = variants.get(name) or PipelineEvent(**{**_fields(event), "payload": event.payload})
                    result, step_entry = await _run_step(step, base, ctx, attempt)
                    step_entry["destination"] = name
                    entry["steps"].append(step_entry)
                    if isinstance(result, Drop) or step_entry.get("outcome") == "skipped":
                        blocked[name] = f"{step.name} did not complete for this destination"
                        variants.pop(name, None)
                    else:
                        variants[name] = result
                continue
            result, step_entry = await _run_step(step, event, ctx, attempt)
            entry["steps"].append(step_entry)
            if isinstance(result, Drop):
                dropped = True
                break
            event = result
            for name, variant in list(variants.items()):  # later steps apply to every variant too
                vres, ventry = await _run_step(step, variant, ctx, attempt)
                ventry["destination"] = name  # what it did to that copy is in the trace too
                entry["steps"].append(ventry)
                if isinstance(vres, Drop):
                    blocked[name] = ventry.get("reason") or f"{step.name} dropped this destination's copy"
                    variants.pop(name)
                else:
                    variants[name] = vres
        if dropped:
            entry["outcome"] = "dropped"
            continue
        bodies: dict[str, str] = {}
        routed = []
        base_ctx = None
        for route in pipe.routes:
            if route.when is not None:
                # Judged on what the destination would receive: its own copy, when a scoped step
                # made one (a label the later steps gave that copy, not the other copies' label).
                if route.destination in variants:
                    judged = variants[route.destination].eval_context()
                else:
                    if base_ctx is None:
                        base_ctx = event.eval_context()
                    judged = base_ctx
                if not route.when(judged):
                    # Said in the trace: a destination left out shows why, not only who was sent it.
                    entry.setdefault("passed_over", {})[route.destination] = (
                        f"when {route.when_text} is false" if route.when_text else "its when is false"
                    )
                    continue
            if route.destination in blocked:
                entry.setdefault("blocked", {})[route.destination] = blocked[route.destination]
                continue
            target = variants.get(route.destination, event)
            key = route.destination if route.destination in variants else ""
            if key not in bodies:
                bodies[key] = orjson.dumps(
                    {
                        "id": target.id,
                        "type": target.type,
                        "occurred_at": iso(target.occurred_at),
                        "payload": target.payload,
                    }
                ).decode()
            routed.append(route.destination)
            deliveries.append(
                NewDelivery(
                    id=new_id("dlv"),
                    project_id=project.project_id,
                    event_id=stored.id,
                    event_type=stored.type,
                    pipeline_id=pipe.id,
                    destination_id=route.destination_id,
                    body=bodies[key],
                )
            )
        entry["outcome"] = "routed" if routed else "no destination matched"
        entry["destinations"] = routed
    return deliveries, trace


def _fields(event: PipelineEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "source": event.source,
    }
