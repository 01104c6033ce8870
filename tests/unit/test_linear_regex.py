"""RE2's rewrite of a Python pattern finds a match exactly where Python's ``re`` does.

Generated patterns over the syntax users write (classes, categories, repeats, groups with
flags, anchors, alternations) are compared with ``re.search`` on generated texts mixing ASCII,
non-ASCII letters and digits, Unicode spaces and newlines.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestlayer.pipeline.linear_regex import compile_linear

ALPHABET = (
    "abcAB019_ .-\n\t\u00e9\u00c9\u00df\u017f\u212a\u03c3\u03c2\u03a3\u044f\u0663\u00a0\u2028\u3000\u4e00"
)

atoms = st.sampled_from(
    [
        "a",
        "b",
        "B",
        "1",
        ".",
        r"\.",
        r"\w",
        r"\W",
        r"\d",
        r"\D",
        r"\s",
        r"\S",
        "[a-c]",
        "[^a]",
        r"[\w.]",
        r"[^\s_]",
        r"[\s\S]",
        r"[\Wa]",
        "é",
        "\u03c3",
        "k",
        r"\n",
        r"[0-9é]",
    ]
)
anchors = st.sampled_from(["^", "$", r"\A", r"\Z", r"\b", r"\B"])


def _patterns() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, inner).map("".join),
            st.tuples(inner, inner).map("|".join),
            inner.map(lambda p: f"({p})"),
            st.tuples(st.sampled_from(["i", "s", "m", "-i", "i-s"]), inner).map(
                lambda t: f"(?{t[0]}:{t[1]})"
            ),
            st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{2,}", "*?", "+?"])).map(
                lambda t: f"(?:{t[0]}){t[1]}"
            ),
        )

    return st.recursive(st.one_of(atoms, anchors), extend, max_leaves=6)


flag_sets = st.sampled_from([0, re.I, re.M, re.S, re.I | re.M, re.I | re.S | re.M])


@settings(max_examples=1500, deadline=None)
@given(
    pattern=_patterns(),
    flags=flag_sets,
    texts=st.lists(st.text(ALPHABET, max_size=12), min_size=1, max_size=6),
)
def test_finds_a_match_exactly_where_python_does(pattern: str, flags: int, texts: list[str]) -> None:
    try:
        python = re.compile(pattern, flags)
    except re.error:
        return
    linear = compile_linear(pattern, flags)
    if linear is None:
        return
    for text in texts:
        if not linear.answers_for(text):
            continue
        assert linear.found(text) == (python.search(text) is not None), (
            pattern,
            flags,
            text,
            linear.re2_pattern,
        )


@pytest.mark.parametrize(
    "pattern",
    [
        r"error.*timeout",
        r"(a+)+$",
        r"(\w+\s?)*x",
        r"^[A-Z]{3}-\d+$",
        r"[\w.+-]+@[\w-]+\.\w+",
        r"refund|chargeback",
        r"(?i)^urgent:",
        r"[\s\S]*end",
        r"\bref\b.*\d{4,}",
    ],
)
def test_the_patterns_users_write_run_on_re2(pattern: str) -> None:
    assert compile_linear(pattern, 0) is not None


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "backreference"),
        (r"(?<=a)b", "lookbehind"),
        (r"a(?=b)", "lookahead"),
        (r"a(?!b)", "negative lookahead"),
        (r"a$b", "$ followed by more pattern"),
        (r"(a$)b", "$ in a group followed by more pattern"),
        (r"a++", "possessive repeat"),
        (r"(?>a+)b", "atomic group"),
        (r"[^\Da]", "negated category in a negated class"),
        (r"a{17}", "a count over 16: copied out in RE2's program"),
        (r".{1,1000}x", "a count over 16"),
        (r"(?a:\w)", "ASCII flag"),
        (r"(?a)^\w+$", "ASCII flag for the whole pattern"),
        (r"(?ai)k", "ASCII flag with case folding"),
    ],
)
def test_what_re2_cannot_say_with_pythons_meaning_is_left_to_python(pattern: str, why: str) -> None:
    re.compile(pattern)
    assert compile_linear(pattern, 0) is None, why


def test_a_match_far_into_a_long_string_is_found() -> None:
    """What the window of regex_safety missed: the match past the first 2,048 characters."""
    linear = compile_linear(r"error.*timeout", 0)
    assert linear is not None
    assert linear.found("x" * 100_000 + " error: upstream timeout")
    assert not linear.found("x" * 100_000 + " error: upstream refused")


def test_exponential_patterns_stay_linear() -> None:
    """``(a+)+$`` takes Python minutes on 30 characters; RE2 answers 100,000 in milliseconds.
    Compared with a linear pass over the same text, not with a clock."""
    linear = compile_linear(r"(a+)+$", 0)
    assert linear is not None
    text = "a" * 100_000 + "b"
    start = time.process_time()
    assert not linear.found(text)
    nested = time.process_time() - start
    plain = compile_linear(r"a+$", 0)
    assert plain is not None
    start = time.process_time()
    for _ in range(20):
        plain.found(text)
    assert nested < (time.process_time() - start) * 20 + 0.5


def test_word_boundaries_are_marked_ascii_only() -> None:
    r"""RE2's ``\b`` knows ASCII letters only: ``\bcafé\b`` would miss "café au lait"."""
    linear = compile_linear(r"\bcafé\b", 0)
    assert linear is not None
    assert linear.answers_for("a cafe") and not linear.answers_for("café au lait")
    plain = compile_linear(r"café", 0)
    assert plain is not None and plain.answers_for("café au lait")
