"""One event through a compiled project: expressions see the payload and the envelope, the
trace says what each step did, and each matching destination gets one delivery."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from ingestlayer.config import Settings
from ingestlayer.delivery.router import Router
from ingestlayer.pipeline.event import RetryLater
from ingestlayer.pipeline.matching import TypeMatcher
from ingestlayer.pipeline.runner import (
    MAX_STEP_RETRIES,
    CompiledPipeline,
    CompiledProject,
    StepRetry,
    compile_project,
    route_event,
)
from ingestlayer.records import DestinationRow, PipelineRow, ProjectConfig, StoredEvent
from ingestlayer.store.store import Store

OCCURRED = 1_764_000_000.25  # 2025-11-24T16:00:00.250Z


def _project(steps: list[dict[str, Any]], routes: list[dict[str, Any]]) -> Any:
    destinations = {
        name: DestinationRow(name, "prj_1", name, "webhook.out", {"url": "http://127.0.0.1:9/"}, True, 0.0)
        for name in ("hook_a", "hook_b")
    }
    config = {"source": {"match": ["feature.*"]}, "steps": steps, "destinations": routes}
    pipeline = PipelineRow("pl_1", "prj_1", "usage", config, False, True, 0.0, 0.0)
    return compile_project(ProjectConfig("prj_1", 1, [pipeline], destinations))


def _event(payload: dict[str, Any], source: str = "api") -> StoredEvent:
    return StoredEvent(
        "evt_1", "prj_1", "feature.used", orjson.dumps(payload).decode(), None, source, OCCURRED, OCCURRED + 1
    )


async def test_expressions_read_the_envelope_and_the_payload() -> None:
    project = _project(
        [{"name": "filter.match", "config": {"expression": 'event.type = "feature.used" and plan = "pro"'}}],
        [
            {"destination_id": "hook_a", "when": 'event.source = "stripe"'},
            {"destination_id": "hook_b", "when": 'event.occurred_at = "2025-11-24T16:00:00.250Z"'},
        ],
    )
    deliveries, trace = await route_event(project, _event({"plan": "pro"}))
    assert [d.destination_id for d in deliveries] == ["hook_b"]
    assert trace[0]["outcome"] == "routed" and trace[0]["steps"][0]["outcome"] == "kept"
    body = orjson.loads(deliveries[0].body)
    assert body == {
        "id": "evt_1",
        "type": "feature.used",
        "occurred_at": "2025-11-24T16:00:00.250Z",
        "payload": {"plan": "pro"},
    }

    deliveries, _ = await route_event(project, _event({"plan": "pro"}, source="stripe"))
    assert sorted(d.destination_id for d in deliveries) == ["hook_a", "hook_b"]

    deliveries, trace = await route_event(project, _event({"plan": "free"}))
    assert deliveries == [] and trace[0]["outcome"] == "dropped"


async def test_routes_without_conditions_take_every_event() -> None:
    project = _project([], [{"destination_id": "hook_a"}, {"destination_id": "hook_b"}])
    deliveries, trace = await route_event(project, _event({"n": 1}))
    assert sorted(d.destination_id for d in deliveries) == ["hook_a", "hook_b"]
    assert len({d.id for d in deliveries}) == 2 and deliveries[0].body == deliveries[1].body
    assert trace == [
        {
            "pipeline": "usage",
            "pipeline_id": "pl_1",
            "steps": [],
            "outcome": "routed",
            "destinations": ["hook_a", "hook_b"],
        }
    ]


async def test_a_step_retried_to_the_end_drops_the_event_instead_of_passing_it_on() -> None:
    # enrich.person without the entity store fails every time: a step that cannot run.
    project = _project(
        [{"name": "enrich.person", "config": {"from": "email", "on_error": "retry"}}],
        [{"destination_id": "hook_a"}],
    )
    event = _event({"email": "ada@acme.com"})
    for attempt in range(1, MAX_STEP_RETRIES):
        with pytest.raises(StepRetry):
            await route_event(project, event, None, attempt)
    deliveries, trace = await route_event(project, event, None, MAX_STEP_RETRIES)
    assert deliveries == []  # never delivered with the step passed over
    (step,) = trace[0]["steps"]
    assert trace[0]["outcome"] == "dropped" and step["outcome"] == "dropped"
    assert step["note"] == f"gave up retrying after {MAX_STEP_RETRIES} attempts"
    assert "needs the entity store" in step["error"]


async def test_a_stored_pipeline_with_a_pattern_now_refused_still_routes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An earlier version stored `(a+)+` patterns; apply refuses those only Python's engine can
    run (a lookaround), but a stored pipeline must keep routing (on a short search window)
    rather than drop out with its deliveries."""
    from ingestlayer.pipeline.config import ConfigError, parse_config

    unsafe = "code matches /^(a+)+(?=$)/"
    with pytest.raises(ConfigError, match="cannot stall the worker"):
        parse_config(
            {
                "pipelines": [
                    {
                        "name": "p",
                        "source": {"match": ["x"]},
                        "steps": [{"filter.match": unsafe}],
                        "destinations": [{"webhook.out": {"url": "https://example.com/h"}}],
                    }
                ]
            }
        )
    project = _project(
        [{"name": "filter.match", "config": {"expression": unsafe}}],
        [{"destination_id": "hook_a", "when": "tag matches /(x|xx)+(?=!)/"}],
    )
    assert "reads only the first 16 characters" in caplog.text
    deliveries, trace = await route_event(project, _event({"code": "aaaa", "tag": "xxx!"}))
    assert [d.destination_id for d in deliveries] == ["hook_a"], trace
    deliveries, trace = await route_event(project, _event({"code": "aab", "tag": "xxx!"}))
    assert deliveries == [] and trace[0]["outcome"] == "dropped"


class _Limited:
    """A step whose provider answered 429, with or without a Retry-After."""

    name = "enrich.limited"
    config = SimpleNamespace(on_error="retry")

    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after

    async def __call__(self, event: Any, ctx: Any) -> Any:
        raise RetryLater("429 Too Many Requests", self.retry_after)


@pytest.mark.parametrize(("retry_after", "version"), [(120.0, None), (None, 4)])
async def test_a_retry_the_provider_timed_is_not_brought_forward_by_a_configuration_change(
    retry_after: float | None, version: int | None
) -> None:
    """A routing failure remembers the configuration it failed by, so that a change since (the
    fix, perhaps) makes the event due at once; not one whose provider said when to come back:
    any change to the project (an endpoint edited) had it called again within its Retry-After."""
    pipeline = CompiledPipeline("pl_1", "usage", TypeMatcher(["*"]), [_Limited(retry_after)], [])
    compiled = CompiledProject("prj_1", 4, [pipeline])
    router = Router(cast(Store, None), Settings.from_env().with_overrides(secret_key="k" * 32))
    routed = await router._route(_event({"n": 1}), compiled, attempt=1)
    assert routed.retry_in is not None and routed.retry_in >= (retry_after or 0)
    assert routed.version == version
