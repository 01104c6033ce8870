"""Dotted paths into payloads, copy-on-write.

Steps must not mutate nested objects in place: the runner hands each step a shallow copy of the
payload, and these helpers copy every level they change, so the payload a step started from (and
every other destination's variant) stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MISSING: Any = object()


def get_path(payload: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c``, creating or copying the dicts along the way."""
    parts = path.split(".")
    node = payload
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def delete_path(payload: dict[str, Any], path: str) -> bool:
    """Remove ``a.b.c`` if present (copying the dicts above it); return whether it was there."""
    parts = path.split(".")
    if get_path(payload, path, MISSING) is MISSING:
        return False
    node = payload
    for part in parts[:-1]:
        child = dict(node[part])
        node[part] = child
        node = child
    del node[parts[-1]]
    return True
