"""Cost of each pipeline step per event, and of the whole feature-usage recipe pipeline.

Each figure is the time `route_event` takes for one event through a pipeline holding that step,
minus the time for the same event through the same pipeline with no steps (the baseline,
measured in the same run). Lookups are warm: entities and classify answers come from the
in-process caches, as they do in steady state. Run: `.venv/bin/python bench/steps.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import orjson

from ingestlayer.pipeline.event import PipelineEvent, StepServices
from ingestlayer.pipeline.runner import compile_project, route_event
from ingestlayer.records import DestinationRow, PipelineRow, ProjectConfig, StoredEvent

TARGET_RECIPE_US = 100.0


class MemoryEntities:
    def __init__(self, data: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.data = data

    async def get(self, project_id: str, kind: str, entity_id: str) -> dict[str, Any] | None:
        return self.data.get((kind, entity_id))


class MemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def get(self, project_id: str, key: str) -> str | None:
        return self.data.get(key)

    async def put(self, project_id: str, key: str, value: str, ttl: float | None) -> None:
        self.data[key] = value


async def _no_http() -> Any:
    raise RuntimeError("the benchmark makes no network calls: caches must be warm")


async def _secret(project_id: str, ref: str) -> str:
    return "bench-secret"


def project(steps: list[dict[str, Any]]) -> Any:
    dest = DestinationRow(
        "dst_1", "prj", "hook", "webhook.out", {"settings": {"url": "https://x.test/h"}}, True, 0.0
    )
    pipe = PipelineRow(
        "pip_1",
        "prj",
        "bench",
        {
            "source": {"match": ["feature.used", "user.signed_up", "support.ticket.created"]},
            "steps": steps,
            "destinations": [{"destination_id": "dst_1", "destination": "hook", "when": None}],
        },
        False,
        True,
        0.0,
        0.0,
    )
    return compile_project(ProjectConfig("prj", 1, [pipe], {"dst_1": dest}))


def step(name: str, config: dict[str, Any]) -> dict[str, Any]:
    from ingestlayer.pipeline.steps.registry import parse_step_config

    return {"name": name, "config": parse_step_config(name, config).model_dump(mode="json")}


def event(type_: str, payload: dict[str, Any], i: int) -> StoredEvent:
    return StoredEvent(f"evt_{i:026d}", "prj", type_, orjson.dumps(payload).decode(), None, "api", 0.0, 0.0)


FEATURE = {"user_id": "u_1", "feature": "csv.export", "count": 1, "plan": "free"}
SIGNUP = {
    "user_id": "u_1",
    "email": "ada@acme.com",
    "plan": "pro",
    "source": "marketing-site",
    "created_at": "2026-11-25T10:00:00Z",
    "ip": "203.0.113.9",
}
TICKET = {
    "ticket_id": "t_1",
    "subject": "Production outage",
    "customer_tier": "enterprise",
    "channel": "email",
    "body": "Everything is down since 09:00, write to cto@bigco.com or call +1 415 555 2671.",
}
CHAT = {
    "provider": "openai",
    "base_url": "https://llm.test/v1",
    "model": "m",
    "api_key": "ref:k",
    "field": "urgency",
    "labels": ["low", "high", "critical"],
    "prompt": "$event.subject $event.body",
}

CASES: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "filter.match",
        "feature.used",
        FEATURE,
        [step("filter.match", {"expression": "feature in {export, api, webhook}"})],
    ),
    (
        "enrich.entity",
        "feature.used",
        FEATURE,
        [step("enrich.entity", {"from": "user_id", "attach": ["account", "plan", "owner"]})],
    ),
    ("enrich.person", "user.signed_up", SIGNUP, [step("enrich.person", {"from": "email"})]),
    ("redact.pii (email, ip)", "user.signed_up", SIGNUP, [step("redact.pii", {"detect": ["email", "ip"]})]),
    (
        "redact.pii (all, free text)",
        "support.ticket.created",
        TICKET,
        [step("redact.pii", {"fields": ["body"]})],
    ),
    (
        "classify (keywords)",
        "support.ticket.created",
        TICKET,
        [
            step(
                "classify",
                {
                    "provider": "keywords",
                    "field": "urgency",
                    "labels": ["low", "high", "critical"],
                    "default": "low",
                    "rules": [{"label": "critical", "any": ["outage", "down"]}],
                },
            )
        ],
    ),
    ("classify (openai, cache hit)", "support.ticket.created", TICKET, [step("classify", CHAT)]),
    (
        "transform",
        "feature.used",
        FEATURE,
        [step("transform", {"set": {"summary": "$event.type: $event.feature"}, "rename": {"count": "uses"}})],
    ),
    (
        "feature-usage recipe (filter + enrich.entity)",
        "feature.used",
        FEATURE,
        [
            step("filter.match", {"expression": "feature in {export, api, webhook}"}),
            step("enrich.entity", {"from": "user_id", "attach": ["account", "plan", "owner"]}),
        ],
    ),
]


async def per_event_us(
    compiled: Any, type_: str, payload: dict[str, Any], services: StepServices, n: int
) -> float:
    events = [event(type_, payload, i) for i in range(n)]
    for ev in events[:200]:  # warm caches (classify answers, entity lookups, regexes)
        await route_event(compiled, ev, services)
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for ev in events:
            await route_event(compiled, ev, services)
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(rounds)


async def main(quick: bool) -> int:
    n = 2000 if quick else 10000
    cache = MemoryCache()
    services = StepServices(
        entities=MemoryEntities(
            {
                ("user", "u_1"): {"account_id": "acc_1", "role": "Engineer"},
                ("account", "acc_1"): {"plan": "scale", "owner": "sam@acme.com"},
                ("company", "acme.com"): {"name": "Acme", "country": "US"},
            }
        ),
        cache=cache,
        http=_no_http,
        resolve_secret=_secret,
    )
    # The classify (openai) case must hit the cache: seed it with the answer for this ticket.
    probe = project(CASES[6][3]).pipelines[0].steps[0]
    ticket = PipelineEvent("e", "support.ticket.created", 0.0, 0.0, "api", dict(TICKET))
    key = probe.cache_key(probe.build_request(ticket))
    await cache.put("prj", key, orjson.dumps({"label": "critical", "model": "m"}).decode(), None)

    print(f"{'step':48} {'µs/event':>9} {'baseline':>9} {'added':>8}")
    worst_recipe = 0.0
    for label, type_, payload, steps in CASES:
        base = await per_event_us(project([]), type_, payload, services, n)
        with_step = await per_event_us(project(steps), type_, payload, services, n)
        added = with_step - base
        print(f"{label:48} {with_step:9.1f} {base:9.1f} {added:8.1f}")
        if label.startswith("feature-usage recipe"):
            worst_recipe = added
    verdict = "meets" if worst_recipe <= TARGET_RECIPE_US else "MISSES"
    print(
        f"\nfeature-usage pipeline adds {worst_recipe:.1f} µs per event: "
        f"{verdict} the {TARGET_RECIPE_US:.0f} µs target"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
