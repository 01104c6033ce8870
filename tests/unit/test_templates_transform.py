"""``$event.*`` templates and the transform step, on plain data."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from ingestlayer.pipeline.event import PipelineEvent, StepContext
from ingestlayer.pipeline.paths import delete_path, get_path, set_path
from ingestlayer.pipeline.steps.transform import MAX_PAYLOAD_BYTES, Transform, TransformConfig
from ingestlayer.pipeline.templates import Template

ENVELOPE = {
    "type": "user.signed_up",
    "id": "evt_1",
    "occurred_at": "2026-01-01T00:00:00.000Z",
    "source": "api",
}
PAYLOAD: dict[str, Any] = {"email": "ada@acme.com", "count": 3, "user": {"plan": "pro"}, "tags": ["a", "b"]}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$event.type", "user.signed_up"),
        ("$event.count", 3),  # one placeholder keeps its type
        ("$event.payload.user.plan", "pro"),
        ("$event.user.plan", "pro"),
        ("$event.missing", None),
        ("$event.type from $event.email", "user.signed_up from ada@acme.com"),
        ("n=${event.count}x", "n=3x"),
        ("tags: $event.tags", 'tags: ["a","b"]'),
        ("missing: [$event.nope]", "missing: []"),
        ("no placeholders", "no placeholders"),
    ],
)
def test_templates_render(template: str, expected: Any) -> None:
    assert Template(template).render(ENVELOPE, PAYLOAD) == expected


def test_paths_copy_on_write() -> None:
    original: dict[str, Any] = {"a": {"b": 1, "c": 2}}
    copy = dict(original)
    set_path(copy, "a.b", 9)
    assert original == {"a": {"b": 1, "c": 2}}  # the nested dict was copied, not changed
    assert copy == {"a": {"b": 9, "c": 2}}
    assert delete_path(copy, "a.c") and copy == {"a": {"b": 9}} and original["a"]["c"] == 2
    assert not delete_path(copy, "x.y")
    set_path(copy, "new.deep.key", "v")
    assert get_path(copy, "new.deep.key") == "v"


async def test_transform_renames_sets_and_drops() -> None:
    step = Transform(
        TransformConfig.model_validate(
            {
                "rename": {"email": "contact.email"},
                "set": {
                    "summary": "$event.type for $event.contact.email",
                    "plan": "$event.user.plan",
                    "n": 1,
                },
                "drop": ["tags", "user"],
            }
        )
    )
    payload = dict(PAYLOAD)
    event = PipelineEvent("evt_1", "user.signed_up", 0.0, 0.0, "api", payload)
    out = await step(event, StepContext("prj", "p"))
    assert isinstance(out, PipelineEvent)
    assert out.payload == {
        "contact": {"email": "ada@acme.com"},
        "count": 3,
        "summary": "user.signed_up for ada@acme.com",
        "plan": "pro",
        "n": 1,
    }
    assert PAYLOAD["email"] == "ada@acme.com" and "tags" in PAYLOAD  # the input was not mutated


@pytest.mark.parametrize("keys", [["total", "msg", "original"], ["original", "msg", "total"]])
async def test_set_templates_read_the_payload_as_it_was_whatever_the_key_order(keys: list[str]) -> None:
    """A stored configuration does not keep the order of a mapping's keys: a template that saw
    the fields set before it in the same block came out empty or stale, depending on names."""
    values = {"total": 5, "msg": "t=$event.total", "original": "$event.payload"}
    step = Transform(TransformConfig.model_validate({"set": {k: values[k] for k in keys}}))
    event = PipelineEvent("evt_1", "order.placed", 0.0, 0.0, "api", {"total": 1, "n": 2})
    out = await step(event, StepContext("prj", "p"))
    assert isinstance(out, PipelineEvent)
    assert out.payload == {"total": 5, "n": 2, "msg": "t=1", "original": {"total": 1, "n": 2}}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "at least one of set, rename, drop"),
        ({"drop": ["bad path!"]}, "not a dotted field path"),
        ({"set": {"a": 1}, "sett": {}}, "Extra inputs are not permitted"),
        ({"set": {"a": 1}, "on_error": "explode"}, "on_error"),
        # Two renames onto one field: the second overwrote the first, whose value was lost.
        ({"rename": {"a": "c", "b": "c"}}, "rename: 'a' and 'b' both move to 'c'; one would be lost"),
    ],
)
def test_transform_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        TransformConfig.model_validate(config)
    assert message in str(err.value)


async def test_copying_objects_step_after_step_stops_at_the_size_limit() -> None:
    """Each step sets two copies of the payload: it doubles, and thirty such steps made 30 GB of
    one event on the worker every project shares. The step that would pass the limit fails (its
    on_error policy then decides), and the payload it was given is not grown."""
    doubling = Transform(
        TransformConfig.model_validate({"set": {"a": "$event.payload", "b": "$event.payload"}})
    )
    event = PipelineEvent("evt_1", "a.b", 0.0, 0.0, "api", {"text": "x" * 100})
    grown = 0
    for _ in range(40):
        before = event.payload
        event.payload = dict(before)  # as the runner gives each step its own copy
        try:
            out = await doubling(event, StepContext("prj", "p"))
        except ValueError as exc:
            assert f"at most {MAX_PAYLOAD_BYTES:,}" in str(exc)
            break
        assert isinstance(out, PipelineEvent)
        event, grown = out, grown + 1
    else:
        raise AssertionError("the payload grew past the limit without an error")
    assert 10 < grown < 20
    assert len(orjson.dumps(before)) <= MAX_PAYLOAD_BYTES


async def test_text_quoting_fields_step_after_step_stops_at_the_size_limit() -> None:
    """The same with text: a template that quotes a field four times made a 250 KB payload 1 MB,
    then 4 and 16 MB, since only objects and lists were measured."""
    quadrupling = Transform(
        TransformConfig.model_validate({"set": {"s": "$event.s$event.s$event.s$event.s"}})
    )
    event = PipelineEvent("evt_1", "a.b", 0.0, 0.0, "api", {"s": "a" * 250_000})
    sizes = []
    with pytest.raises(ValueError, match=f"at most {MAX_PAYLOAD_BYTES:,}"):
        for _ in range(4):
            event.payload = dict(event.payload)
            out = await quadrupling(event, StepContext("prj", "p"))
            assert isinstance(out, PipelineEvent)
            sizes.append(len(orjson.dumps(out.payload)))
    assert sizes == [1_000_008]  # the second would pass the limit: 4 MB
    # Short text is not measured (it grows the payload by no more than the configuration does).
    small = Transform(TransformConfig.model_validate({"set": {"note": "hello $event.type"}}))
    out = await small(PipelineEvent("evt_2", "a.b", 0.0, 0.0, "api", {}), StepContext("prj", "p"))
    assert isinstance(out, PipelineEvent) and out.payload == {"note": "hello a.b"}


@pytest.mark.parametrize("path", ["a.b\n", "a..b", "", "a b"])
def test_a_transform_path_that_is_not_dotted_names_is_refused(path: str) -> None:
    # "a.b\n" passed a `^…$` rule read with re.match, whose `$` matches before a final newline.
    with pytest.raises(ValueError, match="is not a dotted field path"):
        TransformConfig(drop=[path])
