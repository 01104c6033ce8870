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


# A retry schedule that gives up fast, for endpoints under test.
FAST_RETRY = {"schedule": [0, 0.05], "jitter": 0}


async def add_endpoint(server: Any, receiver: Any, **extra: Any) -> dict[str, Any]:
    """``POST /v1/endpoints`` for ``invoice.*`` to ``<receiver>/hooks``; the created endpoint."""
    body = {"url": receiver.url + "/hooks", "events": ["invoice.*"], "retry": FAST_RETRY, **extra}
    status, created = await server.request("POST", "/v1/endpoints", json=body)
    assert status == 201, created
    result: dict[str, Any] = created
    return result
