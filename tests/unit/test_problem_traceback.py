"""Which traceback the router's log may show beside a configuration problem's line."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from ingestlayer.validation_messages import problem_traceback


class _Url(BaseModel):
    url: int


def test_an_error_chain_that_loops_is_followed_once() -> None:
    """``raise e from e`` makes a chain that loops: following it for ever hung the logging of
    the router's error."""
    exc = ValueError("a bug")
    exc.__cause__ = exc
    assert problem_traceback(exc) is exc


def test_a_pydantic_error_in_the_chain_hides_the_traceback_that_quotes_its_input() -> None:
    try:
        _Url.model_validate({"url": "sk-live-secret"})
    except ValidationError as inner:
        outer = RuntimeError("the pipeline cannot be compiled")
        outer.__cause__ = inner
        assert problem_traceback(outer) is None
