"""Pipelines as code: YAML parsing, validation errors that name the path, and the apply plan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ingestlayer.destinations.webhook_out import WebhookOutConfig
from ingestlayer.pipeline.apply import apply_plan, plan
from ingestlayer.pipeline.config import ConfigError, parse_config
from ingestlayer.store.store import Store
from ingestlayer.stored_config import stored_configuration
from ingestlayer.timefmt import parse_iso
from ingestlayer.urlmask import MASK

HOOK = "https://api.acme.com/hooks"

RECIPE = f"""
destinations:
  - webhook.out: {{ url: {HOOK}/shared, auth: hmac, secret: ref:acme-hooks }}
    name: shared-hook
    retry: {{ schedule: [0, 60, 300] }}
pipelines:
  - name: feature-usage-to-webhook
    description: Feature usage to Acme
    source: {{ match: [feature.used] }}
    steps:
      - filter.match: feature in {{export, api, webhook}}
    destinations:
      - webhook.out: {{ url: {HOOK}, auth: hmac, secret: ref:acme-hooks }}
      - webhook.out: {{ url: {HOOK}/free, when: plan = "free" }}
      - ref: shared-hook
        when: plan != "free"
  - name: billing
    source: {{ match: ["invoice.*", customer.deleted] }}
    destinations:
      - webhook.out:
          url: {HOOK}/billing
          auth: bearer
          secret: env:BILLING_TOKEN
          format: data
          timeout: 5
          retry: {{ max_attempts: 3, base: 10, factor: 2, max: 60 }}
"""


def one_pipeline(**overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": "p",
        "source": {"match": ["feature.used"]},
        "steps": [],
        "destinations": [{"webhook.out": {"url": HOOK}}],
    }
    p.update(overrides)
    return {"pipelines": [p]}


def config_error(doc: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value


# ---- parsing --------------------------------------------------------------------------------


def test_recipe_yaml_parses_into_pipelines_and_destinations() -> None:
    cfg = parse_config(yaml.safe_load(RECIPE))
    assert [p.name for p in cfg.pipelines] == ["feature-usage-to-webhook", "billing"]
    usage, billing = cfg.pipelines
    assert usage.match == ["feature.used"]
    assert usage.description == "Feature usage to Acme"
    assert usage.steps == [
        {
            "name": "filter.match",
            "config": {"expression": "feature in {export, api, webhook}", "on_error": "skip"},
        }
    ]
    # Inline destinations get names from their pipeline; a second of the same kind is numbered.
    assert [(r.destination, r.when) for r in usage.routes] == [
        ("feature-usage-to-webhook/webhook.out", None),
        ("feature-usage-to-webhook/webhook.out-2", 'plan = "free"'),
        ("shared-hook", 'plan != "free"'),
    ]
    assert billing.match == ["invoice.*", "customer.deleted"]
    by_name = {d.name: d for d in cfg.destinations}
    assert set(by_name) == {
        "shared-hook",
        "feature-usage-to-webhook/webhook.out",
        "feature-usage-to-webhook/webhook.out-2",
        "billing/webhook.out",
    }
    shared = by_name["shared-hook"]
    assert shared.kind == "webhook.out"
    assert shared.settings["url"] == f"{HOOK}/shared"
    assert shared.settings["secret"] == "ref:acme-hooks"
    assert shared.retry == {"schedule": [0, 60, 300]}
    b = by_name["billing/webhook.out"].settings
    assert (b["auth"], b["secret"], b["format"], b["timeout"]) == ("bearer", "env:BILLING_TOKEN", "data", 5)
    # `retry` inside the kind's mapping is lifted out of the settings.
    assert "retry" not in b
    assert by_name["billing/webhook.out"].retry == {"max_attempts": 3, "base": 10, "factor": 2, "max": 60}
    # `when` inside the kind's mapping is lifted out too.
    assert "when" not in by_name["feature-usage-to-webhook/webhook.out-2"].settings


def test_defaults_are_filled_in() -> None:
    cfg = parse_config(one_pipeline())
    (p,) = cfg.pipelines
    assert p.enabled is True and p.steps == []
    (d,) = cfg.destinations
    assert d.settings["auth"] == "none"
    assert d.settings["format"] == "ingestlayer"
    assert d.settings["timeout"] == 10.0
    assert d.retry is None


def test_empty_document_is_an_empty_config() -> None:
    for doc in (None, {}, {"pipelines": None, "destinations": None}):
        cfg = parse_config(doc)
        assert cfg.pipelines == [] and cfg.destinations == []


def test_secret_may_be_a_list_for_rotation() -> None:
    doc = one_pipeline(
        destinations=[{"webhook.out": {"url": HOOK, "auth": "hmac", "secret": ["ref:new", "env:OLD"]}}]
    )
    assert parse_config(doc).destinations[0].settings["secret"] == ["ref:new", "env:OLD"]


def test_a_rotation_end_stops_the_old_secret_signing() -> None:
    rotating = {"url": HOOK, "auth": "hmac", "secret": ["ref:new", "ref:old"]}
    ends = {**rotating, "rotation_ends_at": "2026-12-01T09:00:00Z"}
    doc = one_pipeline(destinations=[{"webhook.out": ends}])
    config = WebhookOutConfig.model_validate(parse_config(doc).destinations[0].settings)
    assert config.signing_refs(parse_iso("2026-12-01T08:59:59Z")) == ["ref:new", "ref:old"]
    assert config.signing_refs(parse_iso("2026-12-01T09:00:00Z")) == ["ref:new"]
    # Unset, it is not stored at all: configurations from before it compare as unchanged.
    plain = parse_config(one_pipeline(destinations=[{"webhook.out": rotating}])).destinations[0]
    assert "rotation_ends_at" not in plain.settings
    for bad, why in [
        ({**rotating, "rotation_ends_at": "next tuesday"}, "ISO 8601"),
        ({**rotating, "secret": "ref:new", "rotation_ends_at": "2026-12-01T09:00:00Z"}, "two secrets"),
    ]:
        err = config_error(one_pipeline(destinations=[{"webhook.out": bad}]))
        assert why in err.message, err


# ---- errors name the path -------------------------------------------------------------------


def test_bad_filter_expression_names_the_step_and_the_position() -> None:
    err = config_error(one_pipeline(steps=[{"filter.match": "feature in"}]))
    assert err.path == "pipelines[0].steps[0].filter.match"
    assert "position 10" in err.message
    assert "expected a set" in err.message
    assert str(err).startswith("pipelines[0].steps[0].filter.match: ")


def test_bad_filter_expression_in_the_long_form_is_rejected_too() -> None:
    err = config_error(one_pipeline(steps=[{"filter.match": {"expression": "plan = "}}]))
    assert err.path == "pipelines[0].steps[0].filter.match"
    assert "position" in err.message


def test_bad_when_expression_names_the_destination() -> None:
    doc = one_pipeline(
        destinations=[
            {"webhook.out": {"url": HOOK}},
            {"webhook.out": {"url": HOOK, "when": "plan = free and"}},
        ]
    )
    err = config_error(doc)
    assert err.path == "pipelines[0].destinations[1].when"
    assert "position" in err.message


def test_second_pipeline_errors_name_index_one() -> None:
    doc = one_pipeline()
    doc["pipelines"].append({**doc["pipelines"][0], "name": "q", "steps": [{"filter.match": "x ="}]})
    assert config_error(doc).path == "pipelines[1].steps[0].filter.match"


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        (
            one_pipeline(steps=[{"enrich.magic": {}}]),
            "pipelines[0].steps[0]",
            ["unknown step", "enrich.magic"],
        ),
        (one_pipeline(steps=["filter.match"]), "pipelines[0].steps[0]", ["one-key mapping"]),
        (
            one_pipeline(destinations=[{"smoke.signal": {"url": HOOK}}]),
            "pipelines[0].destinations[0].smoke.signal",
            ["unknown destination kind", "webhook.out"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK, "auth": "hmac", "secret": "hunter2"}}]),
            "pipelines[0].destinations[0].webhook.out.secret",
            ["ref:NAME", "env:VAR"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK, "auth": "hmac"}}]),
            "pipelines[0].destinations[0].webhook.out.secret",
            ["auth: hmac needs a secret"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK, "signing": "standard"}}]),
            "pipelines[0].destinations[0].webhook.out.secret",
            ["signing: standard needs a secret"],
        ),
        # A rule between fields names the field it is about, not only the source.
        (
            {"sources": [{"name": "in", "verify": "stripe"}]},
            "sources[0].secret",
            ["verify: stripe needs a secret"],
        ),
        (
            {"sources": [{"name": "in", "verify": "none", "previous_secret": "ref:x"}]},
            "sources[0].previous_secret",
            ["applies only"],
        ),
        (
            {"sources": [{"name": "in", "verify": "github", "secret": "ref:g", "header": "X-Sig"}]},
            "sources[0].header",
            ["applies only to verify: hmac-sha256"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": "ftp://x.example"}}]),
            "pipelines[0].destinations[0].webhook.out.url",
            ["http"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK, "colour": "red"}}]),
            "pipelines[0].destinations[0].webhook.out.colour",
            ["Extra inputs"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK, "headers": {"User-Agent": "x"}}}]),
            "pipelines[0].destinations[0].webhook.out.headers",
            ["User-Agent"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK}, "retry": {"schedule": "soon"}}]),
            "pipelines[0].destinations[0].retry.schedule",
            ["a list of delays"],
        ),
        (
            one_pipeline(destinations=[{"webhook.out": {"url": HOOK}, "slack": {}}]),
            "pipelines[0].destinations[0]",
            ["exactly one destination kind"],
        ),
        (one_pipeline(destinations=[]), "pipelines[0].destinations", ["at least 1"]),
        (one_pipeline(name="has space"), "pipelines[0].name", ["pattern"]),
        (one_pipeline(extra=1), "pipelines[0].extra", ["Extra inputs"]),
        (one_pipeline(source={"match": []}), "pipelines[0].source.match", ["at least 1"]),
        ({"pipelines": [None]}, "pipelines[0]", []),
        ({"pipelines": 5}, "pipelines", ["list"]),
        ({"destinations": "x"}, "destinations", ["list"]),
        ({"pipeline": []}, "pipeline", ["unknown top-level key"]),
        ({"destinations": [{"webhook.out": {"url": HOOK}}]}, "destinations[0].name", ["needs a `name`"]),
        ({"destinations": [{"name": "x", "ref": "y"}]}, "destinations[0].ref", ["kind"]),
        (
            {"sources": [{"name": "src_01JB8ZK6T3Q4R5S6T7V8W9X0YZ", "verify": "none"}]},
            "sources[0].name",
            ["has the shape of an id"],
        ),
    ],
)
def test_config_errors_name_the_path(doc: Any, path: str, words: list[str]) -> None:
    err = config_error(doc)
    assert err.path == path, str(err)
    for w in words:
        assert w in err.message, err.message


def test_literal_secret_is_not_echoed_in_the_error() -> None:
    doc = one_pipeline(
        destinations=[{"webhook.out": {"url": HOOK, "auth": "bearer", "secret": "sk_live_TOPSECRET"}}]
    )
    assert "TOPSECRET" not in str(config_error(doc))


def test_not_a_mapping() -> None:
    for doc in ([1, 2], "pipelines", 5):
        err = config_error(doc)
        assert err.path == ""
        assert "mapping" in err.message


def test_duplicate_names_are_rejected() -> None:
    doc = one_pipeline()
    doc["pipelines"].append(doc["pipelines"][0])
    err = config_error(doc)
    assert (err.path, "duplicate pipeline name 'p'" in err.message) == ("pipelines[1].name", True)

    d = {"name": "hook", "webhook.out": {"url": HOOK}}
    err = config_error({"destinations": [d, d]})
    assert err.path == "destinations[1].name" and "duplicate" in err.message

    # An inline destination may not take a top-level destination's name.
    doc = one_pipeline(destinations=[{"webhook.out": {"url": HOOK}, "name": "hook"}])
    doc["destinations"] = [d]
    err = config_error(doc)
    assert err.path == "pipelines[0]" and "'hook'" in err.message


# ---- plan and apply ---------------------------------------------------------------------------


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    s = Store.from_url(sqlite_url)
    yield s
    await s.close()


async def _project(store: Store) -> str:
    pid, _, _ = await store.create_project("cfg")
    return pid


def _actions(p: Any) -> dict[tuple[str, str], str]:
    return {(c.kind, c.name): c.action for c in p.changes}


async def test_plan_creates_then_applying_twice_is_unchanged(store: Store) -> None:
    pid = await _project(store)
    cfg = parse_config(yaml.safe_load(RECIPE))
    first = await plan(store, pid, cfg)
    assert set(_actions(first).values()) == {"create"}
    assert first.summary() == {"create": 6}  # 4 destinations + 2 pipelines
    assert first.has_changes
    # A create's diff shows the whole new object.
    usage = next(c for c in first.changes if c.name == "feature-usage-to-webhook")
    assert "+++ file/feature-usage-to-webhook" in usage.diff
    assert "--- stored/feature-usage-to-webhook" in usage.diff
    assert "+  - feature.used\n" in usage.diff
    assert not any(line.startswith("-") and not line.startswith("---") for line in usage.diff.splitlines())
    await apply_plan(store, first)

    stored = await store.load_project_config(pid)
    assert sorted(p.name for p in stored.pipelines) == ["billing", "feature-usage-to-webhook"]
    assert len(stored.destinations) == 4
    # Ids are stable: the plan's ids are the stored ids.
    assert {p.id for p in stored.pipelines} == {c.id for c in first.changes if c.kind == "pipeline"}

    second = await plan(store, pid, parse_config(yaml.safe_load(RECIPE)))
    assert set(_actions(second).values()) == {"unchanged"}
    assert not second.has_changes
    assert all(c.diff == "" for c in second.changes)
    assert {c.id for c in second.changes} == {c.id for c in first.changes}
    version = stored.version
    await apply_plan(store, second)
    assert (await store.load_project_config(pid)).version == version  # nothing written


async def test_plan_update_shows_a_diff_and_unplanned_changes_are_not_written(store: Store) -> None:
    pid = await _project(store)
    await apply_plan(store, await plan(store, pid, parse_config(yaml.safe_load(RECIPE))))
    before = await store.load_project_config(pid)

    changed = RECIPE.replace("feature in {export, api, webhook}", "feature in {export, api}")
    p = await plan(store, pid, parse_config(yaml.safe_load(changed)))
    acts = _actions(p)
    assert acts[("pipeline", "feature-usage-to-webhook")] == "update"
    assert acts[("pipeline", "billing")] == "unchanged"
    assert acts[("destination", "shared-hook")] == "unchanged"
    diff = next(c.diff for c in p.changes if c.name == "feature-usage-to-webhook")
    assert "--- stored/feature-usage-to-webhook" in diff
    assert "-    expression: feature in {export, api, webhook}" in diff
    assert "+    expression: feature in {export, api}" in diff

    # A plan that is not applied (a dry run) changes nothing.
    after = await store.load_project_config(pid)
    assert after.version == before.version
    assert [x.config for x in after.pipelines] == [x.config for x in before.pipelines]

    await apply_plan(store, p)
    applied = await store.load_project_config(pid)
    usage = next(x for x in applied.pipelines if x.name == "feature-usage-to-webhook")
    assert usage.config["steps"][0]["config"]["expression"] == "feature in {export, api}"
    assert usage.id == next(x.id for x in before.pipelines if x.name == "feature-usage-to-webhook")


async def test_destination_setting_change_is_an_update(store: Store) -> None:
    pid = await _project(store)
    await apply_plan(store, await plan(store, pid, parse_config(yaml.safe_load(RECIPE))))
    changed = RECIPE.replace("schedule: [0, 60, 300]", "schedule: [0, 5]")
    p = await plan(store, pid, parse_config(yaml.safe_load(changed)))
    assert _actions(p)[("destination", "shared-hook")] == "update"
    diff = next(c.diff for c in p.changes if c.name == "shared-hook")
    assert "-  - 300\n" in diff and "+  - 5\n" in diff


async def test_ref_to_a_missing_destination_is_a_config_error(store: Store) -> None:
    pid = await _project(store)
    with pytest.raises(ConfigError) as info:
        await plan(store, pid, parse_config(one_pipeline(destinations=[{"ref": "nowhere"}])))
    assert info.value.path == "pipelines[0].destinations[0].ref"
    assert "'nowhere'" in info.value.message


async def test_ref_may_name_a_destination_stored_earlier(store: Store) -> None:
    pid = await _project(store)
    doc = {"destinations": [{"name": "central", "webhook.out": {"url": HOOK}}]}
    await apply_plan(store, await plan(store, pid, parse_config(doc)))
    p = await plan(store, pid, parse_config(one_pipeline(destinations=[{"ref": "central"}])))
    assert _actions(p) == {("pipeline", "p"): "create"}
    await apply_plan(store, p)
    cfg = await store.load_project_config(pid)
    (route,) = cfg.pipelines[0].config["destinations"]
    assert cfg.destinations[route["destination_id"]].name == "central"


async def test_prune_deletes_what_the_file_no_longer_has(store: Store) -> None:
    pid = await _project(store)
    await apply_plan(store, await plan(store, pid, parse_config(yaml.safe_load(RECIPE))))
    keep_only = one_pipeline(name="billing", source={"match": ["invoice.*"]})

    without_prune = await plan(store, pid, parse_config(keep_only))
    assert "delete" not in _actions(without_prune).values()

    p = await plan(store, pid, parse_config(keep_only), prune=True)
    acts = _actions(p)
    assert acts[("pipeline", "feature-usage-to-webhook")] == "delete"
    assert acts[("pipeline", "billing")] == "update"
    assert acts[("destination", "shared-hook")] == "delete"
    await apply_plan(store, p)
    cfg = await store.load_project_config(pid)
    assert [x.name for x in cfg.pipelines] == ["billing"]
    assert sorted(d.name for d in cfg.destinations.values()) == ["billing/webhook.out"]


async def test_plans_are_scoped_to_their_project(store: Store) -> None:
    a = await _project(store)
    b, _, _ = await store.create_project("other")
    await apply_plan(store, await plan(store, a, parse_config(yaml.safe_load(RECIPE))))
    p = await plan(store, b, parse_config(yaml.safe_load(RECIPE)))
    assert set(_actions(p).values()) == {"create"}
    pruned = await plan(store, b, parse_config({}), prune=True)
    assert pruned.changes == []


def test_secret_headers_take_references_only_and_never_clash() -> None:
    ok = {"url": HOOK, "secret_headers": {"X-Api-Key": "ref:acme-key"}, "headers": {"X-Env": "prod"}}
    settings = parse_config(one_pipeline(destinations=[{"webhook.out": ok}])).destinations[0].settings
    assert settings["secret_headers"] == {"X-Api-Key": "ref:acme-key"}
    # Unset, it is not stored: configurations from before it compare as unchanged.
    plain = parse_config(one_pipeline(destinations=[{"webhook.out": {"url": HOOK}}])).destinations[0]
    assert "secret_headers" not in plain.settings
    for bad, why in [
        ({"url": HOOK, "secret_headers": {"X-Api-Key": "sk_live_123"}}, "ref:NAME"),
        ({"url": HOOK, "secret_headers": {"X-Ingestlayer-Event": "ref:x"}}, "cannot be overridden"),
        ({"url": HOOK, "headers": {"x-api-key": "a"}, "secret_headers": {"X-Api-Key": "ref:k"}}, "both"),
        (
            {"url": HOOK, "auth": "bearer", "secret": "ref:t", "secret_headers": {"Authorization": "ref:k"}},
            "auth: bearer",
        ),
    ]:
        err = config_error(one_pipeline(destinations=[{"webhook.out": bad}]))
        assert why in err.message and "sk_live_123" not in err.message, err


def test_plan_diffs_read_as_pyyaml_writes_them() -> None:
    """Diffs are dumped with libyaml's emitter (for speed): the same text as PyYAML's own."""
    from ingestlayer.pipeline.apply import _dump

    tricky = {
        "name": "p",
        "source": {"match": ["a.*", "x: y", "'q'", "ü", "multi\nline", "", "yes", "1e3", None, 1.5, True]},
        "steps": [{"filter.match": 'payload.n > 3 and type = "a"'}],
        "destinations": [{"webhook.out": {"url": "https://h/x?a=1", "headers": {"X-A": "b" * 200}}}],
        "retry": {"schedule": [0, 60.5, 1e20]},
    }
    assert _dump(tricky) == yaml.safe_dump(tricky, sort_keys=True, default_flow_style=False).splitlines(True)


async def test_a_source_stored_before_a_setting_existed_is_unchanged_by_the_same_file(store: Store) -> None:
    """A source stored before ``previous_secret`` existed has no such key; the file's, parsed
    now, has it null: the dry run showed an update (``+previous_secret: null``) that was none."""
    pid = await _project(store)
    doc = {"sources": [{"name": "stripe", "verify": "stripe", "secret": "ref:stripe-signing"}]}
    await apply_plan(store, await plan(store, pid, parse_config(doc)))
    (stored,) = (await store.load_project_config(pid)).sources.values()
    assert "previous_secret" in stored.config
    older = {k: v for k, v in stored.config.items() if k != "previous_secret"}
    await store.apply_config(
        pid, [], [], upsert_sources=[{"id": stored.id, "name": "stripe", "config": older, "enabled": True}]
    )
    again = await plan(store, pid, parse_config(doc))
    assert _actions(again) == {("source", "stripe"): "unchanged"} and not again.has_changes
    changed = await plan(
        store, pid, parse_config({"sources": [{**doc["sources"][0], "secret": "ref:other"}]})
    )
    (change,) = changed.changes
    assert change.action == "update" and "+secret: ref:other" in change.diff.replace("'", "")
    assert "previous_secret" not in change.diff


def test_a_masked_url_is_refused_when_written_and_sent_as_it_was_when_stored() -> None:
    """A URL holding the mask (copied from a masked view) is refused in what is written now; one
    stored so before that check is read back and sent as it always was, not broken by it."""
    masked = f"https://hooks.example.com/in?token={MASK}"
    with pytest.raises(ValidationError, match="masked form"):
        WebhookOutConfig.model_validate({"url": masked})
    with stored_configuration():
        assert WebhookOutConfig.model_validate({"url": masked}).url == masked


def test_an_enrich_person_header_the_http_client_would_refuse_is_refused_naming_it() -> None:
    """Refused at apply, naming the field, rather than failing every lookup: a line break, a
    character beyond latin-1 (the masked form answers show, sent back) or a bad name."""
    base = {"url": "https://people.example.com/v1/{email}", "mapping": {"role": "title"}}
    for headers, why in [
        ({"X-Auth": "a\r\nX-Injected: 1"}, "the value of X-Auth contains a line break"),
        ({"X-Auth": "\u2022\u2022\u2022\u2022\u2022\u2022"}, "the value of X-Auth contains U+2022"),
        ({"X Auth": "t"}, "'X Auth' is not a valid header name"),
    ]:
        step = {"enrich.person": {"attach": ["role"], "provider": {**base, "headers": headers}}}
        err = config_error(one_pipeline(steps=[step]))
        assert why in err.message, err.message
        assert "provider.headers" in err.path, err
    ok = {
        "enrich.person": {
            "attach": ["role"],
            "provider": {**base, "headers": {"Authorization": "Bearer $secret"}},
        }
    }
    assert parse_config(one_pipeline(steps=[ok])).pipelines[0].steps
