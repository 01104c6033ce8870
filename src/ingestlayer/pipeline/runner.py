"""Run a project's pipelines over one event: match → steps → one delivery per destination.

A project's configuration is compiled once per config version (expressions parsed, steps
built) and reused for every event until the configuration changes.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from ingestlayer.ids import new_id
from ingestlayer.pipeline.event import Drop, PipelineEvent, StepContext
from ingestlayer.pipeline.expressions import Expression, compile_expression
from ingestlayer.pipeline.matching import TypeMatcher
from ingestlayer.pipeline.steps.registry import step_class
from ingestlayer.records import NewDelivery, ProjectConfig, StoredEvent
from ingestlayer.timefmt import iso

log = logging.getLogger("ingestlayer.router")


class StepRetry(Exception):
    """A step asked for the whole event to be routed again later (``on_error: retry``)."""


@dataclass
class CompiledRoute:
    destination_id: str
    destination: str
    when: Expression | None


@dataclass
class CompiledPipeline:
    id: str
    name: str
    matcher: TypeMatcher
    steps: list[Any]
    routes: list[CompiledRoute]


@dataclass
class CompiledProject:
    project_id: str
    version: int
    pipelines: list[CompiledPipeline]


def compile_project(cfg: ProjectConfig) -> CompiledProject:
    compiled: list[CompiledPipeline] = []
    for p in cfg.pipelines:
        if not p.enabled:
            continue
        try:
            steps = []
            for s in p.config.get("steps", []):
                cls = step_class(s["name"])
                steps.append(cls(cls.config_model.model_validate(s["config"])))
            routes = [
                CompiledRoute(
                    destination_id=r["destination_id"],
                    destination=r.get("destination") or r["destination_id"],
                    when=compile_expression(r["when"]) if r.get("when") else None,
                )
                for r in p.config.get("destinations", [])
                if r["destination_id"] in cfg.destinations and cfg.destinations[r["destination_id"]].enabled
            ]
        except Exception:
            # Stored config was validated on apply; a failure here means a newer server wrote
            # something this one cannot read. Skip the pipeline loudly rather than crash routing.
            log.exception("pipeline %s (%s) could not be compiled; skipping it", p.name, p.id)
            continue
        compiled.append(
            CompiledPipeline(
                id=p.id,
                name=p.name,
                matcher=TypeMatcher(p.config["source"]["match"]),
                steps=steps,
                routes=routes,
            )
        )
    return CompiledProject(cfg.project_id, cfg.version, compiled)


async def route_event(
    project: CompiledProject, stored: StoredEvent
) -> tuple[list[NewDelivery], list[dict[str, Any]]]:
    """Return the deliveries to create for an event, and its trace."""
    deliveries: list[NewDelivery] = []
    trace: list[dict[str, Any]] = []
    payload: dict[str, Any] | None = None
    for pipe in project.pipelines:
        if not pipe.matcher(stored.type):
            continue
        if payload is None:
            payload = orjson.loads(stored.payload_json)
        event = PipelineEvent(
            id=stored.id,
            type=stored.type,
            occurred_at=stored.occurred_at,
            received_at=stored.received_at,
            source=stored.source,
            # Each pipeline works on its own copy: one pipeline's steps never leak into another.
            payload=copy.deepcopy(payload) if pipe.steps else payload,
        )
        entry: dict[str, Any] = {"pipeline": pipe.name, "pipeline_id": pipe.id, "steps": []}
        trace.append(entry)
        ctx = StepContext(project_id=project.project_id, pipeline=pipe.name)
        dropped: str | None = None
        for step in pipe.steps:
            before = event.payload
            result = await step(event, ctx)
            if isinstance(result, Drop):
                dropped = result.reason
                entry["steps"].append({"step": step.name, "outcome": "dropped", "reason": result.reason})
                break
            event = result
            entry["steps"].append(
                {"step": step.name, "outcome": "kept" if event.payload == before else "changed"}
            )
        if dropped is not None:
            entry["outcome"] = "dropped"
            continue
        body_event = {
            "id": event.id,
            "type": event.type,
            "occurred_at": iso(event.occurred_at),
            "payload": event.payload,
        }
        body = orjson.dumps(body_event).decode()
        ctx_eval = event.eval_context()
        routed = []
        for route in pipe.routes:
            if route.when is not None and not route.when(ctx_eval):
                continue
            routed.append(route.destination)
            deliveries.append(
                NewDelivery(
                    id=new_id("dlv"),
                    project_id=project.project_id,
                    event_id=stored.id,
                    event_type=stored.type,
                    pipeline_id=pipe.id,
                    destination_id=route.destination_id,
                    body=body,
                )
            )
        entry["outcome"] = "routed"
        entry["destinations"] = routed
    return deliveries, trace
