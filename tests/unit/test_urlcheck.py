"""The URL rule itself, character by character (the API and apply are tested through the server
in tests/integration/test_url_characters.py)."""

from __future__ import annotations

import unicodedata

import pytest

from ingestlayer.urlcheck import HTTP_URL_REQUIRED, http_url_problem, url_characters_problem

# Every character of Unicode category Cc: C0 (U+0000-U+001F), DEL, C1 (U+0080-U+009F).
CONTROLS = [chr(n) for n in (*range(0x20), *range(0x7F, 0xA0))]


def test_every_control_character_and_the_space_are_refused_wherever_they_are() -> None:
    assert all(unicodedata.category(c) == "Cc" for c in CONTROLS)
    for c in [" ", *CONTROLS]:
        for url in (f"https://h.example/a{c}b", f"https://h{c}.example/", f"https://h.example/?q={c}"):
            problem = http_url_problem(url)
            assert problem is not None and problem.startswith("must not contain spaces or control"), url
            assert f"at character {url.index(c) + 1} " in problem
            # Never quoting the URL, which may carry a credential.
            assert "h.example" not in problem
    problem = url_characters_problem("https://h.example/\x85")
    assert problem is not None and "U+0085" in problem and "%C2%85" in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://h.example/a%20b%00c%7F%0D%0A",  # typed percent-encoded: the user's own bytes
        "https://bücher.example/straße",  # IDN host, unicode path
        "https://h.example/\u00a0\u200b\u2028",  # not category Cc: sent percent-encoded, as before
        "http://127.0.0.1:8000/hooks?x={email}#frag",
        "https://user:pa%20ss@h.example/",
    ],
)
def test_what_a_url_may_hold_is_taken(url: str) -> None:
    assert http_url_problem(url) is None


@pytest.mark.parametrize("url", ["ftp://h.example/", "h.example/in", "https:///in", "", "not a url"])
def test_the_scheme_and_host_rule_keeps_its_message(url: str) -> None:
    assert http_url_problem(url) == HTTP_URL_REQUIRED
