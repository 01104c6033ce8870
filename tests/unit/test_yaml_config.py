"""Configuration YAML (ingestlayer.yaml_config): aliases that multiply a document are refused
as they are read, at the alias that goes over; aliases used to reuse a block read as before; a
document without aliases reads exactly as ``yaml.safe_load`` reads it, errors included."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from ingestlayer.pipeline.config import parse_config
from ingestlayer.yaml_config import MAX_ALIAS_NODES, AliasExpansionError, load_config_yaml


def laughs(lines: int) -> str:
    """A billion laughs: a list of ten, then ``lines - 1`` lists of ten aliases to the one above,
    10**lines nodes written out (10**9 with ten lines) in a few hundred bytes."""
    text = "l0: &a0 [x,x,x,x,x,x,x,x,x,x]\n"
    for i in range(1, lines):
        text += f"l{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n"
    return text


@pytest.mark.parametrize("lines", [7, 10, 40])
def test_a_billion_laughs_is_refused_at_the_alias_that_goes_over(lines: int) -> None:
    started = time.process_time()
    with pytest.raises(AliasExpansionError) as caught:
        load_config_yaml(laughs(lines))
    cpu = time.process_time() - started
    # Aliases brought in 110 + 1,110 + 11,110 nodes by line 4; on line 5 each brings 11,111,
    # and the 8th (column 9 + 7 * 4 + 1 = 38) takes the count past 100,000.
    exc = caught.value
    assert (exc.alias, exc.line, exc.column) == ("a3", 5, 38)
    assert str(exc) == (
        "YAML aliases expand the document by more than 100,000 nodes: the alias *a3 at line 5, "
        "column 38 goes past the limit (an anchored block may be reused, not multiplied)"
    )
    # Refused where it is met, whatever follows: 10**40 nodes cost what 10**7 do (a millisecond;
    # walking the 10**7 took seconds).
    assert cpu < 0.5, cpu


def test_aliases_may_bring_in_up_to_the_limit() -> None:
    block = "b: &b [x, x, x, x, x, x, x, x, x, x]\n"  # 11 nodes: the list and its items
    three = block + "c: [*b, *b, *b]\n"
    assert load_config_yaml(three, max_alias_nodes=33) == yaml.safe_load(three)
    with pytest.raises(AliasExpansionError, match=r"more than 32 nodes: the alias \*b at line 2, column 13"):
        load_config_yaml(three, max_alias_nodes=32)
    # What an alias brings in is its anchor written out, aliases inside it included.
    nested = block + "c: &c [*b, *b]\n" + "d: [*c]\n"  # *c brings 1 + 2 * 11
    assert load_config_yaml(nested, max_alias_nodes=22 + 23) == yaml.safe_load(nested)
    with pytest.raises(AliasExpansionError, match=r"\*c at line 3, column 5"):
        load_config_yaml(nested, max_alias_nodes=22 + 22)


def test_merge_keys_count_what_they_bring_in() -> None:
    text = "base: &base {auth: hmac, secret: ref:hooks}\nhook: {<<: *base, url: https://h.example/}\n"
    # The anchored mapping is 5 nodes: itself, two keys, two values.
    assert load_config_yaml(text, max_alias_nodes=5) == {
        "base": {"auth": "hmac", "secret": "ref:hooks"},
        "hook": {"auth": "hmac", "secret": "ref:hooks", "url": "https://h.example/"},
    }
    with pytest.raises(AliasExpansionError, match=r"\*base at line 2, column 12"):
        load_config_yaml(text, max_alias_nodes=4)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: &a [*a]\n", "*a at line 1, column 8"),
        ("a: &a {b: [1, {c: *a}]}\n", "*a at line 1, column 19"),
        ("a: &x\n  - &y [*x]\n", "*x at line 2, column 9"),
    ],
)
def test_an_alias_inside_the_node_it_names_is_refused(text: str, where: str) -> None:
    """``yaml.safe_load`` makes a list holding itself, which nothing after can write out."""
    with pytest.raises(AliasExpansionError, match="is inside the node") as caught:
        load_config_yaml(text)
    assert where in str(caught.value) and "would never end" in str(caught.value)


def outcome(load: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return "value", load(text)
    except yaml.YAMLError as exc:
        return type(exc).__name__, str(exc)
    except RecursionError:
        return "RecursionError", None


PLAIN_DOCUMENTS: list[str | bytes] = [
    "",
    "# nothing but a comment\n",
    "pipelines: []\n",
    "pipelines:\n  - name: x\n    source: {match: [a.*]}\n    destinations: [{ref: out}]\n",
    "- just\n- a list\n",
    "n: 18446744073709551616\nf: 1e400\nd: 2024-01-01\nb: yes\nnull: ~\n",
    "pipelines: [\n  - name: x\n    source: {match: [a",  # not YAML: the same error, word for word
    "a: b: c",
    "a:\n\tb: 1\n",
    "x: *nope\n",  # an alias to no anchor
    "a: &a 1\nb: &a 2\n",  # an anchor twice
    "pipelines:\n  - !!python/object:os.system 1",
    "a: 1\n---\nb: 2\n",  # two documents
    "\x00\xff",
    "a: " + "[" * 600 + "]" * 600,  # deeper than PyYAML reads: a RecursionError, as before
    "a: " + "{b: " * 100 + "1" + "}" * 100,
    "\ufeffa: 1\n".encode("utf-16"),
    b"a: \xff\n",  # not UTF-8
]


@pytest.mark.parametrize("text", PLAIN_DOCUMENTS, ids=range(len(PLAIN_DOCUMENTS)))
def test_a_document_without_aliases_reads_as_safe_load_reads_it(text: str | bytes) -> None:
    assert outcome(load_config_yaml, text) == outcome(yaml.safe_load, text)


def test_as_deep_documents_read_as_with_safe_load() -> None:
    """Nesting PyYAML cannot read is a RecursionError at the same depth as before (a call more
    per level would halve it), so the API and the CLI call the same documents too deep."""

    def deepest(load: Any) -> int:
        low, high = 1, 1000
        while low < high:
            mid = (low + high + 1) // 2
            try:
                load("a: " + "[" * mid + "]" * mid)
                low = mid
            except RecursionError:
                high = mid - 1
        return low

    assert deepest(load_config_yaml) == deepest(yaml.safe_load)


def reused_blocks(pipelines: int) -> str:
    head = """
destinations:
  - name: hooks
    webhook.out: &hook
      url: https://hooks.example.com/in
      auth: hmac
      secret: ref:hooks
      headers: {X-Team: growth, X-Env: prod, X-A: a, X-B: b, X-C: c}
    retry: &retry {schedule: [0, 60, 300, 1800, 7200]}
pipelines:
"""
    return head + "".join(
        f"""  - name: p{i}
    source: {{match: ["user.{i}.*"]}}
    destinations:
      - webhook.out: {{<<: *hook, url: "https://hooks.example.com/in/{i}"}}
        retry: *retry
"""
        for i in range(pipelines)
    )


def test_a_thousand_pipelines_reusing_blocks_are_well_within_the_limit() -> None:
    """Each pipeline's merged destination block (19 nodes) and retry schedule (8): 27,000 nodes
    for 1,000 pipelines, a quarter of the limit."""
    text = reused_blocks(1000)
    with pytest.raises(AliasExpansionError):
        load_config_yaml(text, max_alias_nodes=27_000 - 1)
    doc = load_config_yaml(text)
    assert MAX_ALIAS_NODES > 27_000 * 3
    assert doc == yaml.safe_load(text)
    config = parse_config(doc)
    assert len(config.pipelines) == 1000
