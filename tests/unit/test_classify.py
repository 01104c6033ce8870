"""Tests for the ``classify`` step: answer parsing, the keyword model, prompt templates, config
validation, cache keys, and the OpenAI-compatible provider against a real local chat server."""

from __future__ import annotations

import asyncio
import re
import socket
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pydantic import ValidationError

from ingestlayer.delivery.egress import EgressPolicy, GuardedResolver
from ingestlayer.pipeline.config import parse_config, parse_step
from ingestlayer.pipeline.event import PipelineEvent, StepContext, StepServices
from ingestlayer.pipeline.steps.classify import (
    Classify,
    ClassifyConfig,
    ClassifyError,
    parse_answer,
)
from ingestlayer.pipeline.steps.registry import parse_step_config, step_class
from tests.support.chat_server import ChatServer, user_text

LABELS = ["low", "high", "critical"]
API_KEY = "sk-unit-test-0123456789"
PROJECT = "prj_unit"
DROP: Any = object()  # an override that removes the key
DOCS = Path(__file__).resolve().parents[2] / "docs" / "steps" / "classify.md"


# --------------------------------------------------------------------------------------------- helpers


class MemoryCache:
    """The step cache, in a dict: (project, key) → (value, ttl)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[str, float | None]] = {}
        self.gets = 0

    async def get(self, project_id: str, key: str) -> str | None:
        self.gets += 1
        hit = self.data.get((project_id, key))
        return hit[0] if hit else None

    async def put(self, project_id: str, key: str, value: str, ttl: float | None) -> None:
        self.data[(project_id, key)] = (value, ttl)


class NoEntities:
    async def get(self, project_id: str, kind: str, entity_id: str) -> dict[str, Any] | None:
        return None


def make_services(
    session: aiohttp.ClientSession,
    *,
    secrets: dict[str, str] | None = None,
    allow_private: bool = True,
    cache: MemoryCache | None = None,
) -> StepServices:
    known = {"ref:llm": API_KEY} if secrets is None else secrets

    async def http() -> aiohttp.ClientSession:
        return session

    async def resolve_secret(project_id: str, ref: str) -> str:
        assert project_id == PROJECT
        if ref not in known:
            raise LookupError(f"secret {ref} does not exist")
        return known[ref]

    return StepServices(
        entities=NoEntities(),
        cache=cache or MemoryCache(),
        http=http,
        resolve_secret=resolve_secret,
        allow_private=allow_private,
    )


def ticket(**payload: Any) -> PipelineEvent:
    base = {
        "ticket_id": "t_1",
        "subject": "Cannot log in",
        "body": "Password reset fails",
        "channel": "email",
    }
    return PipelineEvent(
        id="evt_1",
        type="support.ticket.created",
        occurred_at=1_717_000_000.0,
        received_at=1_717_000_001.0,
        source="sdk",
        payload={**base, **payload},
    )


def openai_config(url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> ClassifyConfig:
    raw: dict[str, Any] = {
        "field": "urgency",
        "labels": LABELS,
        "fallback": "low",
        "provider": "openai",
        "base_url": url,
        "model": "test-model",
        "api_key": "ref:llm",
        "prompt": "Subject: $event.subject\n\n$event.body",
        **overrides,
    }
    return ClassifyConfig.model_validate({k: v for k, v in raw.items() if v is not DROP})


def keywords_config(**overrides: Any) -> ClassifyConfig:
    raw: dict[str, Any] = {
        "field": "urgency",
        "labels": LABELS,
        "provider": "keywords",
        "rules": [
            {"label": "critical", "any": ["outage", "down", "data loss"], "fields": ["subject", "body"]},
            {"label": "high", "any": ["refund", "can't log in", "broken"]},
        ],
        "default": "low",
        **overrides,
    }
    return ClassifyConfig.model_validate({k: v for k, v in raw.items() if v is not DROP})


async def run(
    step: Classify, event: PipelineEvent, services: StepServices | None
) -> tuple[PipelineEvent, list[str]]:
    ctx = StepContext(project_id=PROJECT, pipeline="support", services=services)
    event.payload = dict(event.payload)  # as the runner does: each step gets a shallow copy
    result = await step(event, ctx)
    assert isinstance(result, PipelineEvent)
    return result, ctx.notes


def by_keyword(body: dict[str, Any]) -> str:
    text = user_text(body).lower()
    if "outage" in text or "down" in text:
        return "critical"
    if "refund" in text:
        return "High."
    return "low"


@pytest.fixture
async def chat() -> AsyncIterator[ChatServer]:
    server = await ChatServer(api_key=API_KEY, answer=by_keyword).start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("high", "high"),
        ("High", "high"),
        ("HIGH\n", "high"),
        ('"high"', "high"),
        ("'critical'", "critical"),
        ("critical.", "critical"),
        ("Critical!", "critical"),
        ("**critical**", "critical"),
        ("`low`", "low"),
        ("[critical]", "critical"),
        ('{"label": "high"}', "high"),
        ('{"urgency": "Critical"}', "critical"),
        ('{"Label": "low", "reason": "nothing is down, not critical"}', "low"),
        ('{"result": {"label": "high"}}', "high"),
        ('{"classification": "critical"}', "critical"),
        ('{"anything": "high"}', "high"),
        ('["high"]', "high"),
        ('```json\n{"label": "critical"}\n```', "critical"),
        ("```\nhigh\n```", "high"),
        ("Urgency: high", "high"),
        ("I would classify this as critical because the site is down.", "critical"),
        ("high - the customer cannot log in", "high"),
        ("Label: HIGH.\nReason: refund request.", "high"),
        ("<think>Could be low or high; the outage means critical.</think>\ncritical", "critical"),
        ("<THINK>\nlow?\n</THINK>\n\nHigh", "high"),
        ('Sure! {"label": "critical"}', "critical"),
        # nothing usable: the step's fallback applies
        ("<think>still deciding between low and high", None),
        ("maybe", None),
        ("medium", None),
        ('{"label": "medium"}', None),
        ('{"confidence": 0.9}', None),
        ("highest", None),
        ("lowly", None),
        ("non-critical", None),
        ("", None),
        ("   \n", None),
        (None, None),
    ],
)
def test_parse_answer(answer: str | None, expected: str | None) -> None:
    assert parse_answer(answer, LABELS, "urgency") == expected


def test_verbose_answer_takes_the_first_label_mentioned() -> None:
    assert parse_answer("Not low: high, maybe even critical", LABELS) == "low"
    assert parse_answer("critical, or at least high", LABELS) == "critical"


def test_labels_keep_their_configured_spelling_and_multiword_labels_win_over_parts() -> None:
    labels = ["P1", "very high", "high"]
    assert parse_answer("p1", labels) == "P1"
    assert parse_answer("Very High.", labels) == "very high"
    assert parse_answer("It is very\n high, I think", labels) == "very high"
    assert parse_answer("high", labels) == "high"
    assert parse_answer('{"label": "VERY HIGH"}', labels) == "very high"


# --------------------------------------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    ("payload", "label", "note"),
    [
        ({"subject": "Major OUTAGE", "body": "refund please"}, "critical", "rule 1: 'OUTAGE'"),
        ({"subject": "The site is down!"}, "critical", "rule 1: 'down'"),
        ({"body": "we had DATA\n  LOSS overnight"}, "critical", "rule 1: 'DATA\\n  LOSS'"),
        ({"subject": "Download fails"}, "low", "default"),  # whole words: "down" ≠ "download"
        ({"subject": "shutdown scheduled"}, "low", "default"),
        ({"subject": "Refund", "body": "charged twice"}, "high", "rule 2: 'Refund'"),
        ({"subject": "hi", "body": "I can't log in"}, "high", 'rule 2: "can\'t log in"'),
        # rule 2 has no `fields`: every text value, nested ones too
        ({"subject": "hi", "meta": {"tags": ["broken"]}}, "high", "rule 2: 'broken'"),
        # rule 1 looks only at subject and body
        ({"subject": "hi", "channel": "outage"}, "low", "default"),
        # A phrase never spans two fields: "data" ends the subject, "loss" starts the body.
        ({"subject": "Backup data", "body": "loss of nothing"}, "low", "default"),
        # Nor two values of the payload (rule 2 reads them all).
        ({"subject": "hi", "body": "", "a": "I can't", "b": "log in"}, "low", "default"),
        # Typographic apostrophes, as phones type them, read as plain ones.
        ({"subject": "hi", "body": "I can\u2019t log in"}, "high", 'rule 2: "can\'t log in"'),
    ],
)
async def test_keyword_model(payload: dict[str, Any], label: str, note: str) -> None:
    step = Classify(keywords_config())
    event, notes = await run(step, ticket(**{"subject": "", "body": "", **payload}), None)
    assert event.payload["urgency"] == label
    assert len(notes) == 1 and notes[0].startswith(f"label {label} from keywords") and note in notes[0]


async def test_keyword_rules_can_read_the_envelope_and_nested_paths_and_default_to_fallback() -> None:
    step = Classify(
        keywords_config(
            rules=[
                {"label": "critical", "any": ["payment.failed"], "fields": ["type"]},
                {"label": "high", "any": ["enterprise"], "fields": ["customer.tier"]},
            ],
            default=DROP,
            fallback="low",
        )
    )
    event, _ = await run(step, ticket(customer={"tier": "Enterprise"}), None)
    assert event.payload["urgency"] == "high"
    event, notes = await run(step, ticket(customer={"tier": "free"}), None)
    assert event.payload["urgency"] == "low" and "no rule matched" in notes[0]


async def test_writes_nested_field_copy_on_write() -> None:
    step = Classify(keywords_config(field="triage.urgency"))
    triage = {"owner": "ada"}
    event = ticket(subject="outage", triage=triage)
    result, _ = await run(step, event, None)
    assert result.payload["triage"] == {"owner": "ada", "urgency": "critical"}
    assert triage == {"owner": "ada"}  # the nested object the event arrived with is untouched


# --------------------------------------------------------------------------------------------- templates


def test_prompt_templates_render_event_fields_and_missing_fields_render_empty() -> None:
    step = Classify(
        openai_config(
            prompt="[$event.type] $event.subject / $event.payload.body / tier=$event.customer_tier / "
            "${event.channel}x / $event.meta / $event.missing.deep|",
            system="You triage tickets from $event.source.",
        )
    )
    request = step.build_request(ticket(meta={"n": 1}))
    system, user = request.messages
    assert user == {
        "role": "user",
        "content": "[support.ticket.created] Cannot log in / Password reset fails / tier= / emailx / "
        '{"n":1} / |',
    }
    assert system["role"] == "system"
    assert system["content"].startswith("You triage tickets from sdk.\n\n")
    assert "exactly one of these labels: low, high, critical" in system["content"]


def test_request_body() -> None:
    step = Classify(openai_config("http://llm.local/v1/", max_tokens=8, extra_body={"top_p": 1}))
    request = step.build_request(ticket())
    assert request.url == "http://llm.local/v1/chat/completions"
    assert request.body["model"] == "test-model"
    assert request.body["temperature"] == 0
    assert request.body["max_tokens"] == 8
    assert request.body["top_p"] == 1
    assert "response_format" not in request.body
    bare = Classify(openai_config(temperature=None, max_tokens=None, response_format="json_schema"))
    body = bare.build_request(ticket()).body
    assert "temperature" not in body and "max_tokens" not in body
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == LABELS
    full = Classify(openai_config("https://x.example/v1/chat/completions"))
    assert full.build_request(ticket()).url == "https://x.example/v1/chat/completions"


# --------------------------------------------------------------------------------------------- config


def test_docstring_example_is_valid() -> None:
    doc = ClassifyConfig.__doc__ or ""
    example = yaml.safe_load(textwrap.dedent(doc.split("Example::", 1)[1]))
    steps = [parse_step(f"steps[{i}]", s) for i, s in enumerate(example["steps"])]
    assert [s["name"] for s in steps] == ["classify", "classify", "filter.match"]
    assert steps[0]["config"]["fallback"] == "low"
    assert steps[1]["config"]["rules"][1]["any"] == ["error", "broken", "doesn't work"]


def test_docs_examples_are_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    documents = [yaml.safe_load(b) for b in blocks]
    files = [d for d in documents if isinstance(d, dict) and "pipelines" in d]
    assert len(files) >= 3
    for doc in files:
        parse_config(doc)


@pytest.mark.parametrize("config", [openai_config(), keywords_config()])
def test_stored_form_validates_again_to_the_same_config(config: ClassifyConfig) -> None:
    # The apply path stores model_dump(mode="json"); the router validates that again.
    assert ClassifyConfig.model_validate(config.model_dump(mode="json")) == config


def test_registry_resolves_the_package() -> None:
    assert step_class("classify") is Classify
    model = parse_step_config("classify", keywords_config().model_dump(mode="json"))
    assert Classify(model).summary() == "urgency: low | high | critical (keywords, 2 rules)"  # type: ignore[arg-type]
    assert Classify(openai_config()).summary() == "urgency: low | high | critical (openai test-model)"


def test_labels_as_the_recipe_cards_write_them() -> None:
    assert openai_config(labels="low | high | critical").labels == LABELS
    assert openai_config(labels="a, b", fallback=DROP).labels == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "where", "message"),
    [
        ({"api_key": "sk-live-abcdef"}, "api_key", "never the key itself"),
        ({"api_key": "ref:"}, "api_key", "never the key itself"),
        ({"api_key": "ref:openai key"}, "api_key", "not one a secret can have"),
        ({"fallback": "medium"}, "fallback", "'medium' is not one of the labels: low, high, critical"),
        ({"labels": ["only"]}, "labels", "at least 2 labels"),
        ({"labels": []}, "labels", "at least 2 labels"),
        ({"labels": ["low", "Low"]}, "labels", "listed twice"),
        ({"labels": [True, False]}, "labels", "quote yes/no"),
        ({"labels": ["a", ""]}, "labels", "must not be empty"),
        ({"field": "bad field"}, "field", "not a dotted field path"),
        ({"model": DROP}, "", "provider openai needs `model`"),
        ({"prompt": "  "}, "", "provider openai needs `prompt`"),
        ({"rules": [{"label": "low", "any": ["x"]}]}, "rules", "rules applies only to provider keywords"),
        ({"base_url": "ftp://x"}, "base_url", "http:// or https:// URL, such as https://api.openai.com/v1"),
        ({"timeout": 61}, "timeout", "less than or equal to 60"),
        ({"timeout": 0}, "timeout", "greater than 0"),
        ({"cache_ttl": -1}, "cache_ttl", "greater than or equal to 0"),
        ({"max_concurrency": 0}, "max_concurrency", "greater than or equal to 1"),
        ({"extra_body": {"messages": []}}, "extra_body", "may not set messages"),
        ({"on_error": "explode"}, "on_error", "'skip', 'drop' or 'retry'"),
        ({"labels_": ["a"]}, "labels_", "Extra inputs are not permitted"),
    ],
)
def test_openai_config_is_validated(overrides: dict[str, Any], where: str, message: str) -> None:
    raw = {**openai_config().model_dump(mode="json"), **overrides}
    with pytest.raises(ValidationError) as info:
        ClassifyConfig.model_validate({k: v for k, v in raw.items() if v is not DROP})
    err = info.value.errors()[0]
    assert ".".join(str(p) for p in err["loc"]) == where
    assert message in err["msg"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rules": []}, "needs `rules`"),
        # and no fallback either
        ({"default": None}, "needs `default` (or `fallback`): the label when no rule matches"),
        ({"default": "urgent"}, "'urgent' is not one of the labels"),
        ({"rules": [{"label": "urgent", "any": ["x"]}]}, "rules[0].label 'urgent' is not one of the labels"),
        ({"rules": [{"label": "low", "any": []}]}, "at least 1 item"),
        ({"rules": [{"label": "low", "any": ["  "]}]}, "phrases must not be empty"),
        ({"rules": [{"label": "low", "any": ["x"], "fields": []}]}, "at least one field"),
        ({"model": "gpt-4o-mini", "api_key": "ref:x"}, "model, api_key apply only to provider openai"),
    ],
)
def test_keywords_config_is_validated(overrides: dict[str, Any], message: str) -> None:
    raw = {**keywords_config().model_dump(mode="json"), **overrides}
    with pytest.raises(ValidationError) as info:
        ClassifyConfig.model_validate(raw)
    assert message in str(info.value)


def test_keywords_fallback_alone_stands_for_default() -> None:
    assert keywords_config(default=DROP, fallback="high").default is None  # the docs: either one


@pytest.mark.parametrize(
    ("provider_config", "extra", "where", "message"),
    [
        # Written by hand, a field of the other provider is refused even when empty: `rules: []`
        # under openai would otherwise be accepted and silently do nothing.
        (openai_config, {"rules": []}, "rules", "rules applies only to provider keywords, not openai"),
        (openai_config, {"default": None}, "default", "default applies only to provider keywords"),
        (
            openai_config,
            {"rules": [{"label": "low", "any": ["x"]}], "default": "low"},
            "rules",
            "rules, default apply only to provider keywords",
        ),
        (keywords_config, {"temperature": 0}, "temperature", "temperature applies only to provider openai"),
        (keywords_config, {"extra_body": {}}, "extra_body", "extra_body applies only to provider openai"),
        (keywords_config, {"model": "m"}, "model", "model applies only to provider openai, not keywords"),
    ],
)
def test_other_provider_fields_are_refused_at_the_field(
    provider_config: Any, extra: dict[str, Any], where: str, message: str
) -> None:
    # As written by hand: only the fields that differ from their defaults.
    raw = {**provider_config().model_dump(mode="json", exclude_defaults=True), **extra}
    with pytest.raises(ValidationError) as info:
        ClassifyConfig.model_validate(raw)
    err = info.value.errors()[0]
    assert ".".join(str(p) for p in err["loc"]) == where
    assert message in err["msg"]
    from ingestlayer.pipeline.config import ConfigError

    with pytest.raises(ConfigError) as named:
        parse_step("steps[0]", {"classify": raw})
    assert str(named.value).startswith(f"steps[0].classify.{where}: {message}")


@pytest.mark.parametrize("config", [openai_config(), keywords_config()])
def test_the_stored_form_keeps_the_other_providers_fields_at_their_defaults(config: ClassifyConfig) -> None:
    # What the server stores and GET shows carries every field; sent back (PUT) it is valid.
    dumped = config.model_dump(mode="json")
    assert ClassifyConfig.model_validate(dumped) == config
    # And one of the other provider's fields set to something else is still refused.
    other = {"rules": [{"label": "low", "any": ["x"]}]} if config.provider == "openai" else {"model": "m"}
    with pytest.raises(ValidationError, match="applies only to provider"):
        ClassifyConfig.model_validate({**dumped, **other})


def test_apply_errors_name_the_path() -> None:
    from ingestlayer.pipeline.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_step("steps[0]", {"classify": {**openai_config().model_dump(mode="json"), "api_key": "sk-1"}})
    assert str(info.value).startswith("steps[0].classify.api_key: api_key must be a secret reference")


# --------------------------------------------------------------------------------------------- cache key


def test_cache_key_is_stable() -> None:
    step = Classify(openai_config("https://llm.example/v1"))
    key = step.cache_key(step.build_request(ticket()))
    assert re.fullmatch(r"[0-9a-f]{64}", key)  # fits step_cache.key (64 characters)
    # Pinned: a change here invalidates every stored label; bump CACHE_KEY_VERSION deliberately.
    assert key == "56538a907009a07006ccaff79049935aa5ebf8326766dcbca88144286bcbf872"
    # Another instance, another event with the same prompt inputs, settings that do not change
    # the answer: same key.
    same = Classify(
        openai_config(
            "https://llm.example/v1/",
            api_key="env:OTHER",
            timeout=3,
            cache_ttl=60,
            on_error="drop",
            fallback="critical",
            field="triage.urgency",
            max_concurrency=1,
        )
    )
    assert same.cache_key(same.build_request(ticket(ticket_id="t_2", channel="chat"))) == key
    # What the model sees, or how it is asked: different key.
    different = [
        (step, ticket(body="Password reset fails!")),
        (Classify(openai_config("https://llm.example/v1", model="other-model")), ticket()),
        (Classify(openai_config("https://llm.example/v1", labels=["low", "high"], fallback=DROP)), ticket()),
        (Classify(openai_config("https://llm.example/v1", prompt="$event.subject")), ticket()),
        (Classify(openai_config("https://llm.example/v1", system="Be strict.")), ticket()),
        (Classify(openai_config("https://llm.example/v1", temperature=0.7)), ticket()),
        (Classify(openai_config("https://llm.example/v1", response_format="json_schema")), ticket()),
        (Classify(openai_config("https://other.example/v1")), ticket()),
    ]
    keys = {s.cache_key(s.build_request(e)) for s, e in different}
    assert len(keys) == len(different) and key not in keys


# --------------------------------------------------------------------------------------------- provider


async def test_labels_from_the_model_and_the_request_it_sees(
    chat: ChatServer, session: aiohttp.ClientSession
) -> None:
    step = Classify(openai_config(chat.url))
    services = make_services(session)
    event, notes = await run(step, ticket(subject="Outage", body="API is down"), services)
    assert event.payload["urgency"] == "critical"
    assert notes == ["label critical from openai"]
    (call,) = chat.requests
    assert call.headers["Authorization"] == f"Bearer {API_KEY}"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"].startswith("ingestlayer/")
    assert call.body["model"] == "test-model"
    assert call.body["temperature"] == 0 and call.body["max_tokens"] == 32
    assert "low, high, critical" in call.system and "exactly one label" in call.system
    assert call.user == "Subject: Outage\n\nAPI is down"
    # A verbose-ish answer ("High.") is read as its label.
    event, notes = await run(step, ticket(subject="refund"), services)
    assert event.payload["urgency"] == "high"


async def test_identical_requests_reuse_the_cached_label(
    chat: ChatServer, session: aiohttp.ClientSession
) -> None:
    cache = MemoryCache()
    services = make_services(session, cache=cache)
    step = Classify(openai_config(chat.url, cache_ttl=3600))
    _, notes1 = await run(step, ticket(subject="outage"), services)
    _, notes2 = await run(step, ticket(subject="outage", ticket_id="t_2"), services)
    # A new step instance (a config reload, another worker) reads the same cache.
    _, notes3 = await run(
        Classify(openai_config(chat.url, cache_ttl=3600)), ticket(subject="outage"), services
    )
    assert chat.calls == 1
    assert notes1 == ["label critical from openai"]
    assert notes2 == notes3 == ["label critical from openai (cached)"]
    ((value, ttl),) = cache.data.values()
    assert ttl == 3600
    assert '"label":"critical"' in value
    assert list(cache.data) == [(PROJECT, step.cache_key(step.build_request(ticket(subject="outage"))))]


async def test_cache_ttl_zero_disables_the_cache(chat: ChatServer, session: aiohttp.ClientSession) -> None:
    cache = MemoryCache()
    step = Classify(openai_config(chat.url, cache_ttl=0))
    services = make_services(session, cache=cache)
    for _ in range(2):
        await run(step, ticket(), services)
    assert chat.calls == 2
    assert cache.data == {} and cache.gets == 0


async def test_concurrent_identical_requests_share_one_call(
    chat: ChatServer, session: aiohttp.ClientSession
) -> None:
    chat.delay = 0.2
    step = Classify(openai_config(chat.url))
    services = make_services(session)
    results = await asyncio.gather(*(run(step, ticket(subject="outage"), services) for _ in range(5)))
    assert chat.calls == 1
    assert {e.payload["urgency"] for e, _ in results} == {"critical"}
    notes = sorted(n[0] for _, n in results)
    assert notes == ["label critical from openai"] + ["label critical from openai (shared call)"] * 4
    assert step._inflight == {}


async def test_max_concurrency_bounds_calls(chat: ChatServer, session: aiohttp.ClientSession) -> None:
    chat.delay = 0.1
    step = Classify(openai_config(chat.url, max_concurrency=2))
    services = make_services(session)
    await asyncio.gather(
        *(run(step, ticket(ticket_id=str(i), body=f"ticket {i}"), services) for i in range(6))
    )
    assert chat.calls == 6
    assert chat.max_active == 2


@pytest.mark.parametrize(
    ("failure", "note"),
    [
        ("429", "openai: answered HTTP 429: Rate limit reached"),
        ("500", "openai: answered HTTP 500: The server had an error"),
        ("503", "openai: answered HTTP 503"),
        ("timeout", "openai: timed out after 1s"),
        ("refused", "openai: connection error"),
        ("outside", "model answered outside the labels: 'I am not sure, it depends.'"),
        ("empty", "model answered outside the labels: ''"),
        ("400", "openai: answered HTTP 400: Invalid response_format type."),
    ],
)
async def test_failures_use_the_fallback_or_raise_without_one(
    chat: ChatServer, session: aiohttp.ClientSession, failure: str, note: str
) -> None:
    url = chat.url
    # Long enough for the answers that come at once, even on a loaded machine.
    extra: dict[str, Any] = {"timeout": 1}
    if failure in ("429", "500", "503"):
        chat.fail_next(int(failure), times=2)
    elif failure == "timeout":
        chat.delay = 2.0
    elif failure == "refused":
        url = f"http://127.0.0.1:{closed_port()}/v1"
    elif failure == "outside":
        chat.answer = lambda _body: "I am not sure, it depends."
    elif failure == "empty":
        chat.answer = lambda _body: None
    elif failure == "400":
        extra["extra_body"] = {"response_format": {"type": "xml"}}
    cache = MemoryCache()
    services = make_services(session, cache=cache)

    step = Classify(openai_config(url, **extra))
    event, notes = await run(step, ticket(), services)
    assert event.payload["urgency"] == "low"
    assert len(notes) == 1 and notes[0].startswith("label low (fallback): ") and note in notes[0]
    assert cache.data == {}  # fallbacks are never cached

    strict = Classify(openai_config(url, fallback=DROP, **extra))
    with pytest.raises(ClassifyError) as info:
        await run(strict, ticket(), services)
    assert note.removeprefix("openai: ") in str(info.value) and "no fallback label is set" in str(info.value)
    assert API_KEY not in str(info.value) and API_KEY not in notes[0]


async def test_a_failure_is_not_remembered(chat: ChatServer, session: aiohttp.ClientSession) -> None:
    chat.fail_next(503)
    step = Classify(openai_config(chat.url))
    services = make_services(session)
    first, _ = await run(step, ticket(subject="outage"), services)
    second, notes = await run(step, ticket(subject="outage"), services)
    assert (first.payload["urgency"], second.payload["urgency"]) == ("low", "critical")
    assert notes == ["label critical from openai"] and chat.calls == 2


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("wrong key", "answered HTTP 401: Incorrect API key provided"),
        ("unknown model", "answered HTTP 404: The model `test-model` does not exist"),
        ("private", "is private"),
    ],
)
async def test_configuration_errors_raise_even_with_a_fallback(
    chat: ChatServer, session: aiohttp.ClientSession, setup: str, message: str
) -> None:
    services = make_services(session)
    if setup == "wrong key":
        services = make_services(session, secrets={"ref:llm": "sk-wrong-key-999"})
    elif setup == "unknown model":
        chat.models = {"other-model"}
    else:
        services = make_services(session, allow_private=False)
    step = Classify(openai_config(chat.url))
    with pytest.raises(ClassifyError, match=re.escape(message)) as info:
        await run(step, ticket(), services)
    assert "sk-wrong-key-999" not in str(info.value)
    assert chat.calls == (0 if setup == "private" else 1)


async def test_names_resolving_to_private_addresses_are_refused_at_connect(chat: ChatServer) -> None:
    # The shared session resolves through the egress policy, as the server's does.
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(EgressPolicy(allow_private=False)))
    async with aiohttp.ClientSession(connector=connector) as guarded:
        services = make_services(guarded)
        services.allow_private = True  # let the literal-URL check pass: the resolver must catch it
        port = chat.url.split(":")[2].split("/")[0]
        step = Classify(openai_config(f"http://localhost:{port}/v1"))
        with pytest.raises(ClassifyError, match="resolves only to private addresses"):
            await run(step, ticket(), services)
    assert chat.calls == 0


async def test_a_missing_secret_fails_the_step(chat: ChatServer, session: aiohttp.ClientSession) -> None:
    step = Classify(openai_config(chat.url, api_key="ref:nope"))
    with pytest.raises(LookupError, match="ref:nope"):
        await run(step, ticket(), make_services(session))
    assert chat.calls == 0


async def test_no_api_key_for_local_servers(session: aiohttp.ClientSession) -> None:
    server = await ChatServer(api_key=None, answer=lambda _b: "critical").start()
    try:
        step = Classify(openai_config(server.url, api_key=DROP))
        event, _ = await run(step, ticket(), make_services(session))
        assert event.payload["urgency"] == "critical"
        assert "Authorization" not in server.requests[0].headers
    finally:
        await server.stop()


async def test_json_schema_response_format(chat: ChatServer, session: aiohttp.ClientSession) -> None:
    chat.answer = lambda _body: '{"label": "high"}'
    step = Classify(openai_config(chat.url, response_format="json_schema"))
    event, notes = await run(step, ticket(), make_services(session))
    assert event.payload["urgency"] == "high" and notes == ["label high from openai"]
    (call,) = chat.requests
    assert call.body["response_format"]["type"] == "json_schema"
    assert '{"label": "<label>"}' in call.system


async def test_openai_provider_needs_services() -> None:
    with pytest.raises(ClassifyError, match="needs step services"):
        await run(Classify(openai_config()), ticket(), None)
