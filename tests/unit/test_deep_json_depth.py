"""How deep JSON nests, measured cheaply and exactly; and stored JSON rendered at any depth."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ingestlayer.api.ingest import may_hold_huge_int
from ingestlayer.api.render import RENDER_DEPTH, stored_json
from ingestlayer.json_depth import (
    MAX_JSON_DEPTH,
    ORJSON_READ_DEPTH,
    ORJSON_WRITE_DEPTH,
    dumps_within,
    json_depth,
    nests_deeper,
    out_of_range_path,
    too_deep,
)


def chain(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def test_orjsons_own_limits_are_the_ones_the_checks_rely_on() -> None:
    # nests_deeper counts on orjson refusing to write exactly beyond ORJSON_WRITE_DEPTH levels.
    orjson.dumps(chain(ORJSON_WRITE_DEPTH))
    orjson.dumps(chain(ORJSON_WRITE_DEPTH - 1, []))
    for value in (chain(ORJSON_WRITE_DEPTH + 1), chain(ORJSON_WRITE_DEPTH, [])):
        with pytest.raises(orjson.JSONEncodeError, match="Recursion limit"):
            orjson.dumps(value)
    orjson.loads(b"[" * ORJSON_READ_DEPTH + b"]" * ORJSON_READ_DEPTH)
    with pytest.raises(orjson.JSONDecodeError, match="depth limit"):
        orjson.loads(b"[" * (ORJSON_READ_DEPTH + 1) + b"]" * (ORJSON_READ_DEPTH + 1))


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b'"{[["', 0),
        (b"{}", 1),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}], "c": {}}', 4),
        (b'{"a": "]]]]}}}}", "b": [["[[[["]]}', 3),
        (b'{"a\\"]": "\\\\", "b": ["\\\\\\"}}"]}', 2),
        (b' [ [ ] , { "x" : [ ] } ] ', 3),
    ],
)
def test_json_depth_counts_only_the_brackets_outside_strings(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


@pytest.mark.parametrize("limit", [MAX_JSON_DEPTH, RENDER_DEPTH, 1, 253])
@pytest.mark.parametrize("leaf", [1, [], {}, "}}]]"])
def test_nests_deeper_is_exact_at_the_limit(limit: int, leaf: Any) -> None:
    inner = 1 if leaf in ([], {}) else 0  # an empty container is a level too
    at_limit, over = chain(limit - inner, leaf), chain(limit + 1 - inner, leaf)
    assert json_depth(orjson.dumps(at_limit)) == limit
    assert not nests_deeper(at_limit, limit)
    assert nests_deeper(over, limit)
    assert nests_deeper(chain(ORJSON_WRITE_DEPTH + 10), limit)  # too deep even for orjson


@pytest.mark.parametrize("limit", [MAX_JSON_DEPTH, RENDER_DEPTH])
def test_dumps_within_writes_what_orjson_writes_or_nothing_when_too_deep(limit: int) -> None:
    for value in ({"a": "é\u2028", "b": [1.5, None, True]}, chain(limit), {"x": "[" * 300}):
        view = dumps_within(value, limit)
        assert view is not None and bytes(view) == orjson.dumps(value)
        assert str(view, "utf-8") == orjson.dumps(value).decode()
    assert dumps_within(chain(limit + 1), limit) is None
    assert dumps_within(chain(ORJSON_WRITE_DEPTH + 1), limit) is None
    with pytest.raises(orjson.JSONEncodeError):  # any other failure is not taken for depth
        dumps_within({"n": 2**70}, limit)


def test_too_deep_walks_only_text_with_enough_brackets() -> None:
    wide = {"items": [{"a": {"b": i}} for i in range(200)]}
    assert not too_deep(wide, orjson.dumps(wide))
    deep = chain(MAX_JSON_DEPTH + 1)
    assert too_deep(deep, orjson.dumps(deep))
    fits = chain(MAX_JSON_DEPTH)
    assert not too_deep(fits, orjson.dumps(fits))


def test_stored_json_shows_shallow_json_as_it_is() -> None:
    value = {"a": chain(RENDER_DEPTH - 1), "s": "{" * 500}
    assert stored_json(orjson.dumps(value).decode()) == value


@pytest.mark.parametrize("depth", [RENDER_DEPTH + 1, ORJSON_WRITE_DEPTH])
def test_stored_json_renders_what_lies_below_render_depth_as_json_text(depth: int) -> None:
    # As events were stored before the limit: up to ORJSON_WRITE_DEPTH levels.
    value = chain(depth - 1, {"x": "]]"})
    shown = stored_json(orjson.dumps(value).decode())
    node = shown
    for _ in range(RENDER_DEPTH):
        assert isinstance(node, dict | list)
        node = node["k"] if isinstance(node, dict) else node[0]
    assert isinstance(node, str)
    assert json_depth(orjson.dumps(shown)) == RENDER_DEPTH  # a response can carry it, wrapped
    # Nothing is lost: the text is the rest of the value.
    node = shown
    for _ in range(RENDER_DEPTH - 1):
        node = node["k"] if isinstance(node, dict) else node[0]
    key: Any = "k" if isinstance(node, dict) else 0
    node[key] = orjson.loads(node[key])
    assert shown == value


@pytest.mark.parametrize("depth", [ORJSON_WRITE_DEPTH + 1, 600, 2000])
def test_stored_json_deeper_than_orjson_writes_never_fails(depth: int) -> None:
    # Nothing ingestlayer wrote (orjson writes 254 levels at most); still shown, and carried.
    text = "[" * depth + "]" * depth
    shown = stored_json(text)
    assert json_depth(orjson.dumps(shown)) <= RENDER_DEPTH
    if depth > RENDER_DEPTH + ORJSON_WRITE_DEPTH:
        assert shown == text


def test_out_of_range_path_names_the_first_number_that_cannot_be_stored() -> None:
    assert out_of_range_path(b'{"a": [1, {"b": 1e400}], "c": ' + b"9" * 30 + b"}") == "a[1].b"
    assert out_of_range_path('{"a": 1.5, "c": -' + "9" * 400 + "}") == "c"
    assert out_of_range_path(b'{"a": 18446744073709551615, "b": -9223372036854775808}') is None
    # Text the json module cannot read that far names nothing, rather than failing.
    assert out_of_range_path(b"[" * 5000 + b"1e400" + b"]" * 5000) is None
    assert out_of_range_path(b'{"a": ' + b"9" * 5000 + b"}") is None


def test_long_digit_runs_in_strings_are_not_taken_for_numbers() -> None:
    # Ids and trace ids in strings sent every such body through a second, slow parse.
    assert not may_hold_huge_int(b'{"trace_id": "12345678901234567890123", "n": [1, 2]}')
    assert not may_hold_huge_int(b'{"x": 12345678901234567890.5, "y": 1234567890123456789012e2}')
    for bare in (
        b'{"n": 12345678901234567890}',
        b"[1,\n  -99999999999999999999]",
        b'{"a":[0,18446744073709551616]}',
    ):
        assert may_hold_huge_int(bare), bare
