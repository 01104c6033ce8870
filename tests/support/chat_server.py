"""A local OpenAI-compatible chat-completions server for tests, on 127.0.0.1.

It speaks the parts of OpenAI's API a client depends on: ``POST /v1/chat/completions`` with a
Bearer key (401 and OpenAI's error JSON otherwise), request validation (400 naming the ``param``),
unknown models (404 ``model_not_found``), the ``chat.completion`` response shape with ``usage``,
and ``GET /v1/models``. What it answers is programmable:

- ``answer``: a function of the request body (sync or async) returning the assistant's content;
- ``delay``: seconds to wait before answering (cut short when the server stops);
- ``fail_next(status, times)``: the next requests get that status (429 with ``Retry-After``);
- ``calls`` counts every chat request; ``requests`` keeps them (headers and body);
  ``max_active`` is the most requests it was handling at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.support.receiver import serve_app

Answer = Callable[[dict[str, Any]], str | Awaitable[str | None] | None]
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
FORMATS = frozenset({"text", "json_object", "json_schema"})


@dataclass
class ChatCall:
    headers: dict[str, str]
    body: Any
    at: float

    @property
    def system(self) -> str:
        return "\n".join(m["content"] for m in self.body["messages"] if m["role"] == "system")

    @property
    def user(self) -> str:
        return "\n".join(m["content"] for m in self.body["messages"] if m["role"] == "user")


def user_text(body: dict[str, Any]) -> str:
    """The request's user messages, joined: what an ``answer`` function usually looks at."""
    return "\n".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "user")


def _error(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _invalid(param: str, message: str) -> web.Response:
    return _error(400, message, "invalid_request_error", param=param)


def validate_request(body: Any) -> web.Response | None:
    """OpenAI's checks on a chat-completions body, as far as clients can trip them."""
    if not isinstance(body, dict):
        return _invalid("", "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("model", "you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("messages", "'messages' must be a non-empty array")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return _invalid(f"messages[{i}].role", f"Invalid value for 'messages[{i}].role'.")
        content = m.get("content")
        if not isinstance(content, (str, list)):
            return _invalid(f"messages[{i}].content", f"Invalid type for 'messages[{i}].content'.")
    if "temperature" in body:
        t = body["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2:
            return _invalid("temperature", "temperature must be a number between 0 and 2")
    if "max_tokens" in body:
        n = body["max_tokens"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return _invalid("max_tokens", "max_tokens must be a positive integer")
    if body.get("stream"):
        return _invalid("stream", "this test server does not stream")
    if "response_format" in body:
        rf = body["response_format"]
        if not isinstance(rf, dict) or rf.get("type") not in FORMATS:
            return _invalid("response_format", "Invalid response_format type.")
        if rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if (
                not isinstance(js, dict)
                or not isinstance(js.get("name"), str)
                or not isinstance(js.get("schema"), dict)
            ):
                return _invalid("response_format.json_schema", "json_schema needs a name and a schema")
    return None


class ChatServer:
    def __init__(
        self,
        *,
        api_key: str | None = "sk-test-key",
        answer: Answer | None = None,
        models: set[str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.answer: Answer = answer or (lambda _body: "low")
        self.models = models  # None: any model name is served
        self.delay = 0.0
        self.calls = 0
        self.requests: list[ChatCall] = []
        self.active = 0
        self.max_active = 0
        self._failures: list[int] = []
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""  # the base URL, ending in /v1

    retry_after = "1"  # the Retry-After of its 429s

    def fail_next(self, status: int, times: int = 1) -> None:
        self._failures.extend([status] * times)

    def reset(self) -> None:
        self.calls = 0
        self.requests.clear()
        self.max_active = 0
        self._failures.clear()

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    async def _completions(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._complete(request)
        finally:
            self.active -= 1

    async def _complete(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(ChatCall(dict(request.headers), body, time.time()))
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        if body is None:
            return _invalid("", "We could not parse the JSON body of your request.")
        invalid = validate_request(body)
        if invalid is not None:
            return invalid
        if self.models is not None and body["model"] not in self.models:
            return _error(
                404,
                f"The model `{body['model']}` does not exist.",
                "invalid_request_error",
                code="model_not_found",
            )
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay)
        if self._failures:
            status = self._failures.pop(0)
            if status == 429:
                return _error(
                    429,
                    "Rate limit reached for requests.",
                    "requests",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": self.retry_after},
                )
            return _error(status, "The server had an error while processing your request.", "server_error")
        content = self.answer(body)
        if inspect.isawaitable(content):
            content = await content
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = len((content or "").split())
        reply = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        names = sorted(self.models or {"test-model"})
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "tests"} for n in names]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def start(self) -> ChatServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        base, self._runner = await serve_app(app, shutdown_timeout=1.0)
        self.url = base + "/v1"
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
