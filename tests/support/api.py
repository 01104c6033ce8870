"""Assertions on the API's contract shared by the integration tests."""

from __future__ import annotations

from typing import Any


def error_of(body: Any) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "field"?}}."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) <= {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    return err
