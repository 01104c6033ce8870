"""Dotted paths into payloads, copy-on-write.

Steps must not mutate nested objects in place: the runner hands each step a shallow copy of the
payload, and these helpers copy every level they change, so the payload a step started from (and
every other destination's variant) stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MISSING: Any = object()


def resolve(payload: Mapping[str, Any], path: str) -> list[str] | None:
    """The keys ``path`` names in ``payload``, or None if it names nothing there.

    Each dot steps into a nested object, but a key that holds dots itself (``{"user.email": …}``,
    as flattened events carry) is found too: where a segment is not a key, the longest run of
    segments joined by dots that is one is tried. Nested keys win when both exist.
    """
    return resolve_parts(payload, path.split("."))


def resolve_parts(node: Any, parts: Sequence[str]) -> list[str] | None:
    """:func:`resolve` for a path already split at its dots."""
    return _resolve(node, parts, 0)


def _resolve(node: Any, parts: Sequence[str], i: int) -> list[str] | None:
    if i == len(parts):
        return []
    if not isinstance(node, Mapping) or not node:
        return None
    # Keys holding dots are tried as the segments joined, no longer than the node's longest
    # key: joining every run of the path's segments made a path of 100,000 segments (a 40 KB
    # expression) take 47 s per event.
    longest = max(len(key) for key in node) if len(node) > 1 else len(next(iter(node)))
    key, j = parts[i], i + 1
    while True:
        if key in node:
            rest = _resolve(node[key], parts, j)
            if rest is not None:
                return [key, *rest]
        if j == len(parts) or len(key) >= longest:
            return None
        key, j = f"{key}.{parts[j]}", j + 1


def get_path(payload: Mapping[str, Any], path: str, default: Any = None) -> Any:
    if "." not in path:  # the common case, without building lists
        return payload.get(path, default)
    return get_parts(payload, path.split("."), default)


def get_parts(node: Any, parts: Sequence[str], default: Any = None) -> Any:
    """:func:`get_path` for a path already split at its dots."""
    keys = resolve_parts(node, parts)
    if keys is None:
        return default
    for key in keys:
        node = node[key]
    return node


def set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c``, creating or copying the dicts along the way (an existing dotted key such as
    ``"b.c"`` under ``a`` is the one set)."""
    parts = resolve(payload, path) or path.split(".")
    node = payload
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def delete_path(payload: dict[str, Any], path: str) -> bool:
    """Remove ``a.b.c`` if present (copying the dicts above it); return whether it was there."""
    parts = resolve(payload, path)
    if parts is None:
        return False
    node = payload
    for part in parts[:-1]:
        child = dict(node[part])
        node[part] = child
        node = child
    del node[parts[-1]]
    return True
