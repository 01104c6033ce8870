"""A pydantic error's message in the project's words.

Most of pydantic's messages read well after the field they follow ("events[0]: String should
have at most 200 characters"); some do not, and are said here instead: a list's length ("List
should have at least 1 item after validation, not 0"), a yes/no field ("Input should be a
valid boolean, unable to interpret input", where a query parameter says "must be true or false")
and a nested object ("Input should be a valid dictionary or instance of _SourceModel").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError


def error_message(err: Mapping[str, Any]) -> str:
    """The message for one of ``ValidationError.errors()``, without the field it is about."""
    kind = err.get("type")
    ctx = err.get("ctx") or {}
    if kind == "too_short" and isinstance(ctx.get("min_length"), int):
        return f"must hold at least {_items(ctx['min_length'])}"
    if kind == "too_long" and isinstance(ctx.get("max_length"), int):
        actual = ctx.get("actual_length")
        return f"must hold at most {_items(ctx['max_length'])}" + (
            f", not {actual}" if actual is not None else ""
        )
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("model_type", "model_attributes_type"):
        # Pydantic's words name our classes ("or instance of _PipelineModel") or its own workings
        # ("or object to extract fields from"): said as for any other mapping.
        return "Input should be a valid dictionary"
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def configuration_problem(exc: Exception) -> str:
    """Why a stored configuration could not be used, as the log and an answer say it: a pydantic
    error field by field, without the input pydantic's own text quotes (a header's value or a
    step's setting may be a credential)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return f"{type(exc).__name__}: {exc}"


def problem_traceback(exc: BaseException) -> BaseException | None:
    """The error whose traceback the log may show beside :func:`configuration_problem`'s line,
    or None: none where pydantic's error is in it (raised, or the cause of what was), since its
    text, the traceback's last line, quotes the input it refused (``input_value='sk-…'``), a
    credential written where a reference belongs. Its line names the field already; a traceback
    is for what is not a setting's fault."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:  # a chain may loop (raise e from e)
        if isinstance(link, ValidationError):
            return None
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return exc
