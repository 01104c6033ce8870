"""``source.match`` patterns: exact types, ``*`` wildcards, several patterns, invalid ones."""

from __future__ import annotations

import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestlayer.pipeline.config import ConfigError, parse_config
from ingestlayer.pipeline.matching import TypeMatcher, is_valid_event_type, is_valid_pattern
from ingestlayer.pipeline.runner import CompiledPipeline, CompiledProject


def test_exact_pattern_matches_only_that_type() -> None:
    m = TypeMatcher(["invoice.created"])
    assert m("invoice.created")
    for other in (
        "invoice.created.v2",
        "invoice.create",
        "invoice",
        "xinvoice.created",
        "Invoice.created",
        "",
    ):
        assert not m(other), other


def test_exact_pattern_dots_are_literal() -> None:
    # A dot in a pattern is not a regex wildcard.
    m = TypeMatcher(["a.b"])
    assert m("a.b")
    assert not m("aXb")


def test_prefix_wildcard() -> None:
    m = TypeMatcher(["invoice.*"])
    assert m("invoice.created")
    assert m("invoice.payment_failed")
    assert m("invoice.payment.failed")  # `*` spans dots
    assert not m("invoice")  # the dot is required
    assert not m("invoices.created")
    assert not m("user.invoice.created")


def test_star_matches_everything() -> None:
    m = TypeMatcher(["*"])
    for t in ("a", "feature.used", "x.y.z", "invoice.created"):
        assert m(t)


def test_suffix_and_middle_wildcards() -> None:
    assert TypeMatcher(["*.created"])("invoice.created")
    assert not TypeMatcher(["*.created"])("invoice.created.extra")
    mid = TypeMatcher(["billing.*.failed"])
    assert mid("billing.invoice.failed")
    assert not mid("billing.invoice.paid")
    assert not mid("billing.failed")


def test_several_patterns_any_may_match() -> None:
    m = TypeMatcher(["user.signed_up", "invoice.*", "*.escalated"])
    assert m("user.signed_up")
    assert m("invoice.created")
    assert m("ticket.escalated")
    assert not m("user.deleted")
    assert not m("feature.used")


def test_several_wildcards_are_each_anchored_at_the_end() -> None:
    # Every alternative must match the whole type, not only the last one.
    m = TypeMatcher(["*.created", "user.*"])
    assert m("invoice.created")
    assert m("user.deleted")
    assert not m("invoice.created.extra")
    assert not m("ticket.created_by_bot")


def test_no_patterns_match_nothing() -> None:
    m = TypeMatcher([])
    assert not m("anything")


@pytest.mark.parametrize(
    "pattern", ["feature.used", "invoice.*", "*", "*.created", "a-b.c_d", "billing.*.failed", "A1.b2"]
)
def test_valid_patterns(pattern: str) -> None:
    assert is_valid_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ".",
        "invoice.",
        ".invoice",
        "invoice..created",
        "invoice created",
        "invoice/created",
        "é.x",
        "a" * 201,
    ],
)
def test_invalid_patterns(pattern: str) -> None:
    assert not is_valid_pattern(pattern)


@pytest.mark.parametrize("value", ["feature.used", "a", "user.signed_up", "x-y.z_1.w"])
def test_valid_event_types(value: str) -> None:
    assert is_valid_event_type(value)


@pytest.mark.parametrize("value", ["", "feature.*", "*", "a..b", "a.", " a", "a b", "ü.x", "a" * 201])
def test_invalid_event_types(value: str) -> None:
    assert not is_valid_event_type(value)


@pytest.mark.parametrize("bad", ["invoice..created", "", "invoice created"])
def test_config_rejects_invalid_patterns_naming_the_path(bad: str) -> None:
    doc = {
        "pipelines": [
            {
                "name": "p",
                "source": {"match": ["ok.type", bad]},
                "destinations": [{"webhook.out": {"url": "https://example.com/h"}}],
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert info.value.path == "pipelines[0].source.match"
    assert repr(bad) in info.value.message


def test_config_accepts_a_single_pattern_as_a_string() -> None:
    doc = {
        "pipelines": [
            {
                "name": "p",
                "source": {"match": "invoice.*"},
                "destinations": [{"webhook.out": {"url": "https://example.com/h"}}],
            }
        ]
    }
    assert parse_config(doc).pipelines[0].match == ["invoice.*"]


def test_ids_sort_in_creation_order_within_a_millisecond() -> None:
    from ingestlayer.ids import new_id

    ids = [new_id("evt") for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("evt_") and len(i) == 30 for i in ids)


def test_a_project_takes_the_types_any_of_its_pipelines_matches() -> None:
    project = CompiledProject(
        "prj_1",
        1,
        [
            CompiledPipeline("pip_1", "billing", TypeMatcher(["invoice.*"]), [], []),
            CompiledPipeline("pip_2", "signups", TypeMatcher(["user.signed_up"]), [], []),
        ],
    )
    for _ in range(2):  # the second round answers from the cache, the same way
        assert project.takes("invoice.failed")
        assert project.takes("user.signed_up")
        assert not project.takes("user.deleted")
        assert not project.takes("feature.used")
    assert not CompiledProject("prj_2", 1, []).takes("invoice.failed")


def test_a_project_gives_its_matching_pipelines_in_order() -> None:
    pipes = [
        CompiledPipeline(f"pip_{i}", f"p{i}", TypeMatcher([pattern]), [], [])
        for i, pattern in enumerate(["*", "invoice.paid", "user.*", "*.paid", "invoice.*"])
    ]
    project = CompiledProject("prj_1", 1, pipes)
    for _ in range(2):
        assert [p.name for p in project.matching("invoice.paid")] == ["p0", "p1", "p3", "p4"]
        assert [p.name for p in project.matching("user.signed_up")] == ["p0", "p2"]


def test_a_flood_of_new_event_types_holds_little_memory() -> None:
    """Anyone with an ingest key chooses the event types. Each wildcard pipeline remembered up
    to 10,000 of them on its own: 10,000 types against 333 such pipelines held 70 MB, in one
    project. The project now remembers them once, for all its pipelines. 100 pipelines are
    enough to tell (each remembering its own would hold about 21 MB) at a third of the time."""
    pipes = [
        CompiledPipeline(f"pip_{i}", f"p{i}", TypeMatcher([f"t{i}.*", f"*.x{i}"]), [], []) for i in range(100)
    ]
    project = CompiledProject("prj_1", 1, pipes)
    assert project.takes("t7.created")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(12_000):
            assert not project.takes(f"flood.type{n}")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 8_000_000, grown  # bounded by 10,000 types for the whole project
    assert project.takes("t7.created") and [p.name for p in project.matching("a.x9")] == ["p9"]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text(alphabet="ab.", max_size=4), min_size=2, max_size=5).map("*".join),
    st.text(alphabet="ab.", max_size=14),
)
def test_wildcards_match_as_the_regex_they_mean(pattern: str, event_type: str) -> None:
    """One pass over the type (a backtracking regex took seconds on *a*a*a*a*b), same answers."""
    meaning = re.compile(".*".join(map(re.escape, pattern.split("*"))), re.DOTALL)
    assert TypeMatcher([pattern])(event_type) == (meaning.fullmatch(event_type) is not None)


def test_a_pattern_that_made_the_regex_backtrack_matches_as_it_should() -> None:
    match = TypeMatcher(["*a*a*a*a*b"])
    assert not match("a" * 188 + "c") and match("a" * 188 + "b") and not match("aaab")


def test_a_value_ending_in_a_newline_is_no_type_pattern_table_or_field() -> None:
    """The checks ended in "$" and used match(), which takes a final newline: an event type
    ``user.a\\n`` was accepted and stored, and so were such table names and field paths."""
    from ingestlayer.destinations.postgres.config import check_identifier
    from ingestlayer.pipeline.matching import is_type_filter, is_valid_event_type, is_valid_pattern
    from ingestlayer.pipeline.steps.classify.config import PATH_RE

    assert not is_valid_event_type("user.a\n") and is_valid_event_type("user.a")
    assert not is_valid_pattern("user.*\n") and is_valid_pattern("user.*")
    assert not is_type_filter("user.a\n")
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        check_identifier("events\n", "table")
    assert check_identifier("events", "table") == "events"
    assert PATH_RE.fullmatch("triage.urgency") and not PATH_RE.fullmatch("triage.urgency\n")
