"""Errors of a rule between fields, reported at the field they concern.

Pydantic reports what a model validator raises at the model (``sources[0]``), since such a rule
reads several fields. When the rule is about one of them (the secret a scheme needs), raising
:class:`FieldRule` names that field (``sources[0].secret``), as a field's own check would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FieldRule(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def error_loc(err: Mapping[str, Any]) -> tuple[Any, ...]:
    """A pydantic error's location, with the field a FieldRule names appended."""
    loc = tuple(err.get("loc", ()))
    cause = (err.get("ctx") or {}).get("error")
    return (*loc, cause.field) if isinstance(cause, FieldRule) else loc
