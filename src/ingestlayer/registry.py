"""A registry of named classes given as import paths, loaded on first use.

Steps and destinations both register this way: adding one is one module and one line, and a
module (with its dependencies) costs nothing until a configuration uses it.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyRegistry:
    def __init__(self, what: str, entries: dict[str, str]) -> None:
        self.what = what  # "step", "destination kind": named in errors
        self.entries = entries  # name → "package.module:Class"
        self._loaded: dict[str, Any] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Any:
        cls = self._loaded.get(name)
        if cls is not None:
            return cls
        try:
            target = self.entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r} (known: {', '.join(self.names())})") from None
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        self._loaded[name] = cls
        return cls
