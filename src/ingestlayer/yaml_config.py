"""Configuration YAML, read with its aliases bounded: no "billion laughs".

PyYAML keeps an alias as a second reference to its anchor's node, so a document that repeats
itself loads in a millisecond however large it is when written out: seven lines of ten aliases
to the line above are 10**7 nodes. Everything that then reads the document (validation, the
secrets it names, the JSON stored) reads it written out, and a 538-byte upload held the
server's event loop for seconds; each more line, ten times longer.

:func:`load_config_yaml` reads configuration YAML for ``POST /v1/apply`` and ``ingestlayer
apply`` alike. Anchors and aliases keep working as people use them (a destination block or a
retry policy written once and reused, ``<<:`` merges), but the nodes aliases bring into a
document are counted as they are met, each alias counting its anchor written out (measured once,
when the anchor was read), and past :data:`MAX_ALIAS_NODES` the document is refused, naming the
alias that went over. An alias inside the node it names (``a: &a [*a]``) would be infinite and
is refused too. A document without aliases reads exactly as ``yaml.safe_load`` reads it: same
values, same errors; its size is bounded by its bytes (the API's request limit; the CLI's file is
the user's own).

The pure-Python ``SafeLoader``, as ``yaml.safe_load`` uses, not libyaml's ``CSafeLoader``: that
one builds the node graph in C, with no place to count an alias as it is met, and the graph it
returns no longer says where an alias was written. (libyaml's events under this composer would
do, and read 5x faster, but libyaml takes some documents the Python parser refuses and the other
way round, and words its errors otherwise: files would read differently than they do today.)
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.error import Mark
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import Node

# libyaml's emitter when PyYAML was built with it: the same text as the pure-Python one, five
# times faster (a plan of 2,000 pipelines spent 4 s of its event loop's time dumping them, the
# dashboard's pipelines page 2.5 s). Reading stays pure Python (above).
YAML_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# How many nodes (scalars, mapping keys included, lists and mappings) aliases may bring into a
# document, beyond those written in it. Reusing a destination block (a webhook with its secret
# and five headers, merged with `<<: *hook`: 19 nodes) and a retry schedule (8) in each of 1,000
# pipelines brings in 27,000; the limit leaves room for blocks of ~100 nodes reused 1,000 times.
# A billion laughs goes past it within its first five lines. What aliases may add is then what a
# plain document of under a megabyte adds (a configuration is ~115,000 nodes a megabyte): about
# a second of checking and planning at most (a 20 KB document whose aliases bring in 99,100
# nodes: a dry run in 1.3 s), where the server's request limit already lets a plain document
# of 5 MiB take half a minute.
MAX_ALIAS_NODES = 100_000

ALIAS_EXPANSION = "alias_expansion_too_large"  # the API's error code


class AliasExpansionError(ValueError):
    """A document whose aliases bring in more than the limit of nodes, or one of them itself.
    Not a ``yaml.YAMLError``: the document is valid YAML, refused for what it would become."""

    def __init__(self, message: str, alias: str, mark: Mark) -> None:
        super().__init__(message)
        self.alias = alias
        self.line = mark.line + 1  # both 1-based, as PyYAML's messages say them
        self.column = mark.column + 1


class _AliasCountingLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` counting, as it composes, the nodes each alias brings in."""

    max_alias_nodes = MAX_ALIAS_NODES

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.expanded = 0  # the document's nodes so far, every alias counted written out
        self.brought = 0  # of which aliases brought in
        self.anchor_sizes: dict[str, int] = {}  # each anchored node's size, written out

    def compose_document(self) -> Node | None:
        # Composer.compose_document, with the counts started over (one document per loader).
        self.get_event()  # type: ignore[no-untyped-call]
        self.expanded, self.brought, self.anchor_sizes = 0, 0, {}
        node = self.compose_node(None, None)
        self.get_event()  # type: ignore[no-untyped-call]
        self.anchors = {}
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # Composer.compose_node, counting. Written out rather than wrapped around it: a call more
        # per level of nesting would change which deep documents PyYAML can read at all.
        if self.check_event(AliasEvent):
            event = self.get_event()  # type: ignore[no-untyped-call]
            anchor = event.anchor
            if anchor not in self.anchors:
                raise ComposerError(None, None, f"found undefined alias {anchor!r}", event.start_mark)
            size = self.anchor_sizes.get(anchor)
            if size is None:  # its anchor's node is still being read: this alias is inside it
                raise AliasExpansionError(
                    f"the YAML alias *{anchor} at {_where(event.start_mark)} is inside the node "
                    f"&{anchor} it names, so the document would never end",
                    anchor,
                    event.start_mark,
                )
            self.brought += size
            self.expanded += size
            if self.brought > self.max_alias_nodes:
                raise AliasExpansionError(
                    f"YAML aliases expand the document by more than {self.max_alias_nodes:,} nodes: "
                    f"the alias *{anchor} at {_where(event.start_mark)} goes past the limit (an "
                    "anchored block may be reused, not multiplied)",
                    anchor,
                    event.start_mark,
                )
            return self.anchors[anchor]
        event = self.peek_event()  # type: ignore[no-untyped-call]
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise ComposerError(
                f"found duplicate anchor {anchor!r}; first occurrence",
                self.anchors[anchor].start_mark,
                "second occurrence",
                event.start_mark,
            )
        self.descend_resolver(parent, index)
        before = self.expanded
        self.expanded += 1
        node: Node | None = None
        if self.check_event(ScalarEvent):
            node = self.compose_scalar_node(anchor)
        elif self.check_event(SequenceStartEvent):
            node = self.compose_sequence_node(anchor)
        elif self.check_event(MappingStartEvent):
            node = self.compose_mapping_node(anchor)
        self.ascend_resolver()
        if anchor is not None:
            self.anchor_sizes[anchor] = self.expanded - before
        return node


def _where(mark: Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def load_config_yaml(stream: str | bytes, *, max_alias_nodes: int = MAX_ALIAS_NODES) -> Any:
    """The document in ``stream``, as ``yaml.safe_load`` reads it (``None`` when empty).

    Raises ``yaml.YAMLError`` for what is not YAML (as ``yaml.safe_load`` does),
    ``RecursionError`` for what nests deeper than PyYAML reads, and
    :class:`AliasExpansionError` for aliases bringing in more than ``max_alias_nodes`` nodes.
    """
    # Through yaml.load, as yaml.safe_load goes: as many calls deep, so the same documents are
    # too deep to read (a RecursionError).
    return yaml.load(stream, Loader=_loader_with(max_alias_nodes))


@functools.cache
def _loader_with(max_alias_nodes: int) -> type[_AliasCountingLoader]:
    if max_alias_nodes == _AliasCountingLoader.max_alias_nodes:
        return _AliasCountingLoader

    class Loader(_AliasCountingLoader):
        pass

    Loader.max_alias_nodes = max_alias_nodes
    return Loader


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where (its own text spans several lines)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem
