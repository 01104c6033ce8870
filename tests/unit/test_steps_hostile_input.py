"""Pipeline steps and expressions against the messy events real senders produce: long strings
built to make a regex backtrack, keys that hold dots, templates that name the whole payload,
renames that swap fields, JSON-style escapes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestlayer.pipeline import regex_safety
from ingestlayer.pipeline.event import PipelineEvent, StepContext
from ingestlayer.pipeline.expressions import EvalContext, ExpressionError, compile_expression
from ingestlayer.pipeline.paths import delete_path, get_parts, get_path, set_path
from ingestlayer.pipeline.steps.pii.detectors import Scanner
from ingestlayer.pipeline.steps.redact_pii import RedactPii, RedactPiiConfig
from ingestlayer.pipeline.steps.transform import Transform, TransformConfig

# Far above what the bounded code takes (about 0.1 s), far below what it took before (minutes).
STALL_SECONDS = 2.0
HUNDRED_KB = 100_000


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """The call's result and this process's CPU time for it: what else the machine runs does
    not count (a stall is CPU spent backtracking)."""
    start = time.process_time()
    result = fn(*args)
    return result, time.process_time() - start


def _event(payload: dict[str, Any]) -> PipelineEvent:
    return PipelineEvent("evt_1", "ticket.created", 0.0, 0.0, "sdk", payload)


def _transform(config: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    step = Transform(TransformConfig.model_validate(config))
    result = asyncio.run(step(_event(dict(payload)), StepContext("prj_1", "p")))
    assert isinstance(result, PipelineEvent)
    return result.payload


# ---- redact.pii: the email detector on long runs --------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * HUNDRED_KB + "@",  # one `@` after 100 KB of word characters: minutes before
        "a." * (HUNDRED_KB // 2) + "@",
        "a-" * (HUNDRED_KB // 2) + "@x",
    ],
    ids=["word-run", "dotted-run", "dashed-run"],
)
def test_email_detector_is_linear_on_long_runs_before_an_at_sign(text: str) -> None:
    _, seconds = _timed(Scanner(["email"]).scan, text)
    assert seconds < STALL_SECONDS


def test_email_after_a_long_run_is_still_redacted() -> None:
    step = RedactPii(RedactPiiConfig.model_validate({"detect": ["email"]}))
    body = "x" * HUNDRED_KB + " write to jane.doe@acme.com"
    (out, counts), seconds = _timed(step.redact, {"body": body})
    assert seconds < STALL_SECONDS
    assert out["body"].endswith("write to j***@acme.com")
    assert counts == {"email": 1}


def test_email_local_part_is_bounded_at_64_characters() -> None:
    found = Scanner(["email"]).scan("a" * 100 + "@acme.com")
    assert [(f.type, len(f.value)) for f in found] == [("email", 64 + len("@acme.com"))]


# ---- expressions: `matches` cannot stall the worker ----------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "hostile"),
    [
        (r"(a+)+$", "a" * 30 + "!"),
        (r"(a|aa)+$", "a" * 30 + "!"),
        (r"^(\w+\s?)*$", "an ordinary sentence of words" * 3 + "!"),
        (r"(x+x+)+y", "x" * 30),
        (r"(a*)*b", "a" * 30),
        (r"(.*,)+x", "," * 30),
        (r"(a{1,3})+b", "a" * 30),
        # Nothing repeated, yet Python's engine tries 2**20 ways at every position (1.4 s on 40
        # characters, twice as long with each more group): it ran there all the same.
        ("(a|a)" * 20 + "b", "a" * 40),
    ],
)
def test_exponential_patterns_run_in_linear_time(pattern: str, hostile: str) -> None:
    """Each takes Python's engine minutes on its 30-character hostile text; they run on RE2
    (linear in the text), which answers as Python would, on 100 KB too."""
    expression = compile_expression(f"subject matches /{pattern}/")
    for text in (hostile, hostile[0] * HUNDRED_KB + hostile[-1]):
        matched, seconds = _timed(expression, EvalContext({"subject": text}, {}))
        assert seconds < STALL_SECONDS
        assert not matched
    ordinary = {"(a+)+$": "aaa", "(a|aa)+$": "aa", "(x+x+)+y": "xxy", "(a*)*b": "ab", "(.*,)+x": "a,x"}
    if pattern in ordinary:
        assert expression(EvalContext({"subject": ordinary[pattern]}, {}))


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+(?=!)",
        r"(?<=x)(a|aa)+$",
        r"^(\w+\s?)*\b!",
        # A backreference, and 4**20 ways to try without a repeat: ran for minutes on 40 characters.
        "(a|a)?" * 20 + r"\1b",
        r"(?=a)" + "(a|bc)" * 11,
    ],
)
def test_exponential_patterns_only_python_can_run_are_refused(pattern: str) -> None:
    """Lookarounds (and ``\\b`` on text that is not ASCII) need Python's backtracking engine,
    which has no timeout: such a pattern that can backtrack exponentially is refused."""
    text = f"subject matches /{pattern}/"
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert caught.value.position == len("subject matches ")
    assert "cannot stall the worker" in str(caught.value)
    shown = f"/{pattern}/"
    assert caught.value.found == (shown if len(shown) <= 40 else shown[:37] + "...")


@pytest.mark.parametrize(
    "pattern",
    [
        r"refund|chargeback",
        r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$",  # the repeat is marked by its `.`
        r"(foo|bar)+",
        r"^(\d+,)*\d+$",
        r"(?:\w+\s)*x",
        r"error.*user.*failed",
        r"\d{3}-\d{4}",
        r"(\w)\1",  # a backreference: Python's engine only
        r"(?<=@)(gmail|yahoo|outlook|hotmail)\.com",
        r"(?<=v)(\d|\d\d)\.(\d|\d\d)\.(\d|\d\d)",
    ],
)
def test_ordinary_patterns_still_compile(pattern: str) -> None:
    compile_expression(f"subject matches /{pattern}/")


@pytest.mark.parametrize(
    ("pattern", "unit"),
    [
        (r"\w+\w+!", "a"),
        (r"a.*b.*c", "ab"),
        (r"x.*y.*z.*w", "xyz"),
        (r".*.*.*.*.*.*.*=", "a"),
        (r"(\w+)@(\w+)\.com", "a"),
        (r"\s+$", " x"),
        (r"\d+ items", "1"),
        # Short bounds, several: Python's engine tries 16**4 ways at every position (29 s on
        # 256 KB); they run on RE2.
        (r".{1,16}.{1,16}.{1,16}.{1,16}x", "a"),
        (r"\w{1,16}\w{1,16}\w{1,16}x", "a"),
        # Long bounds: RE2's program would be large and its search slow; Python, on its window.
        (r".{1,1000}.{1,1000}x", "a"),
        (r"a.{0,999}b.{0,999}c", "a"),
    ],
)
def test_matches_on_a_100_kb_field_returns_quickly(pattern: str, unit: str) -> None:
    expression = compile_expression(f"subject matches /{pattern}/")
    subject = (unit * HUNDRED_KB)[:HUNDRED_KB]
    _, seconds = _timed(expression, EvalContext({"subject": subject}, {}))
    assert seconds < STALL_SECONDS


def test_matches_reads_the_whole_string_unless_the_pattern_needs_pythons_engine() -> None:
    far = "x" * 50_000 + " refund"
    ctx = EvalContext({"body": far}, {})
    # No unbounded repeat: Python's search is linear and reads the whole string.
    assert compile_expression("body matches /refund|chargeback/")(ctx)
    # Unbounded repeats: RE2 reads the whole string too.
    assert compile_expression(r"body matches /ref\w+/")(ctx)
    assert compile_expression(r"body matches /x.*ref\w+d$/")(ctx)
    # A lookahead needs Python's engine: with an unbounded repeat it reads the first 2,048.
    assert regex_safety.search_window(1) == 2048
    assert not compile_expression(r"body matches /ref(?=u)\w+/")(ctx)
    assert compile_expression(r"body matches /ref(?=u)\w+/")(EvalContext({"body": "x refunded"}, {}))
    # `\b` on text that is not ASCII too (RE2's knows ASCII letters only).
    assert compile_expression(r"body matches /\bcafé\w*/")(EvalContext({"body": "un café noir"}, {}))
    far_cafe = EvalContext({"body": "é" * 3000 + " café"}, {})
    assert not compile_expression(r"body matches /\bcafé\w*/")(far_cafe)
    assert compile_expression(r"body matches /\bcafe\w*/")(EvalContext({"body": "x" * 3000 + " cafe"}, {}))
    assert regex_safety.search_window(0) is None
    assert regex_safety.search_window(99) == regex_safety.SEARCH_WINDOWS[-1]


# ---- keys that hold dots ----------------------------------------------------------------------------


def test_expression_reads_a_key_that_holds_dots() -> None:
    ctx = EvalContext({"context.ip": "10.0.0.1", "a": {"b.c": 1}}, {})
    assert compile_expression("context.ip = '10.0.0.1'")(ctx)
    assert compile_expression("a.b.c = 1")(ctx)
    assert compile_expression("context.ip exists")(ctx)
    # Nested keys win when both are there.
    both = EvalContext({"a": {"b": 1}, "a.b": 2}, {})
    assert compile_expression("a.b = 1")(both)


def test_paths_find_set_and_delete_a_key_that_holds_dots() -> None:
    payload: dict[str, Any] = {"context.ip": "10.0.0.1", "user": {"home.city": "Oslo"}}
    assert get_path(payload, "context.ip") == "10.0.0.1"
    assert get_path(payload, "user.home.city") == "Oslo"
    set_path(payload, "user.home.city", "Bergen")
    assert payload["user"] == {"home.city": "Bergen"}
    assert delete_path(payload, "context.ip")
    assert "context.ip" not in payload and "context" not in payload


def test_redact_named_field_that_holds_dots_is_redacted() -> None:
    # Flattened events ({"context.ip": …}): before, the field was silently passed on unredacted.
    step = RedactPii(
        RedactPiiConfig.model_validate({"fields": ["context.ip"], "whole_fields": ["user.email"]})
    )
    out, counts = step.redact({"context.ip": "10.0.0.1", "user.email": "jane@acme.com"})
    assert out == {"context.ip": "10.0.0.***", "user.email": "j***@acme.com"}
    assert counts == {"ip": 1, "email": 1}


def test_transform_drops_and_renames_a_key_that_holds_dots() -> None:
    out = _transform(
        {"rename": {"context.ip": "ip"}, "drop": ["debug.trace"]}, {"context.ip": "1", "debug.trace": "x"}
    )
    assert out == {"ip": "1"}


# ---- transform ------------------------------------------------------------------------------------


def test_transform_set_whole_payload_does_not_nest_the_payload_in_itself() -> None:
    out = _transform({"set": {"original": "$event.payload", "wrapped": {"p": "$event.payload"}}}, {"a": 1})
    # Both read the payload as it was before the set (not each other).
    assert out == {"a": 1, "original": {"a": 1}, "wrapped": {"p": {"a": 1}}}
    orjson.dumps(out)  # before: "Recursion limit reached", and the event could not be routed


def test_transform_rename_swaps_fields() -> None:
    assert _transform({"rename": {"a": "b", "b": "a"}}, {"a": 1, "b": 2}) == {"a": 2, "b": 1}
    assert _transform({"rename": {"a": "x", "x": "y"}}, {"a": 1, "x": 2}) == {"x": 1, "y": 2}


@settings(max_examples=60, deadline=None)
@given(
    values=st.dictionaries(st.sampled_from("abcdef"), st.integers(), min_size=1),
    order=st.permutations("abcdef"),
)
def test_property_rename_by_permutation_keeps_every_value(values: dict[str, int], order: list[str]) -> None:
    mapping = dict(zip("abcdef", order, strict=True))
    out = _transform({"rename": mapping}, values)
    assert out == {mapping[k]: v for k, v in values.items()}


# ---- expressions: JSON-style escapes ----------------------------------------------------------------


def test_surrogate_pair_escape_is_one_character() -> None:
    expression = compile_expression(r"mood = '\ud83d\ude00'")
    assert expression(EvalContext({"mood": "😀"}, {}))
    # A lone surrogate stays what it was written as.
    assert compile_expression(r"x = '\ud83d'")(EvalContext({"x": "\ud83d"}, {}))


class _CountedLookups(dict[str, Any]):
    """A payload object that counts the keys looked up in it."""

    lookups = 0

    def __contains__(self, key: object) -> bool:
        type(self).lookups += 1
        return super().__contains__(key)


def test_a_long_path_looks_up_no_more_keys_than_the_object_can_hold() -> None:
    """Keys holding dots are found by joining the path's segments; every run of them was tried,
    so a path of 100,000 segments (a 40 KB expression) took 47 s per event."""
    payload = _CountedLookups({"a": 1, "ab": 2})
    assert get_parts(payload, ["a"] * 20_000) is None
    assert _CountedLookups.lookups <= 2  # "a", then "a.a": longer than any key here
    nested = {"a.b": {"c": 3}, "a": {"x": 0}}
    assert get_parts(nested, ["a", "b", "c"]) == 3  # a dotted key is still found
