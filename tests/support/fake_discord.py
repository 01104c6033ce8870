"""A local Discord webhook endpoint on 127.0.0.1: ``POST /api/v{version}/webhooks/{id}/{token}``.

It checks what Discord checks and answers as Discord does:

- an unknown webhook id: 404 ``{"message": "Unknown Webhook", "code": 10015}``; a wrong token:
  401 ``{"message": "Invalid Webhook Token", "code": 50027}``;
- the body: ``content`` (≤ 2000) or ``embeds`` (≤ 10) required; each embed's limits (title 256,
  description 4096, ≤ 25 fields with non-empty name ≤ 256 and value ≤ 1024, footer 2048,
  timestamp ISO 8601) and 6000 characters over all embeds; ``username`` ≤ 80 without
  "discord"/"clyde": else 400 ``{"message": "Invalid Form Body", "code": 50035, "errors": {…}}``;
- ``rate_limit(n, retry_after)``: the next ``n`` requests get 429 ``{"message": "You are being
  rate limited.", "retry_after": 0.5, "global": false}`` with ``Retry-After``,
  ``X-RateLimit-Reset-After`` and ``X-RateLimit-Scope``;
- ``?wait=true``: 200 with the message object; without it 204;
- the API version of the path: without one (``/api/webhooks/…``, as Discord shows webhook URLs),
  Discord's default, v6, whose 429 gives ``retry_after`` and ``Retry-After`` in milliseconds
  (seconds from v8 on; discord-api-docs#4722 is a user meeting it); v3-v5 are discontinued (400).
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from tests.support.receiver import serve_app


@dataclass
class Executed:
    webhook_id: str
    query: dict[str, str]
    body: dict[str, Any]
    at: float
    version: int  # the API version the request asked for (6 when its path named none)


DEFAULT_VERSION = 6  # what Discord serves a path without a version
VERSIONS = range(6, 11)  # available or deprecated; older ones are discontinued


@dataclass
class FakeDiscord:
    hooks: dict[str, str] = field(default_factory=dict)  # id -> token
    executed: list[Executed] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    url: str = ""
    _ratelimit: list[tuple[float, bool]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1_200_000_000_000_000_000))
    _runner: web.AppRunner | None = None

    def add_webhook(self) -> str:
        hook_id = str(1_100_000_000_000_000_000 + secrets.randbelow(10**17))
        token = secrets.token_urlsafe(51)
        self.hooks[hook_id] = token
        return f"{self.url}/api/webhooks/{hook_id}/{token}"

    def rate_limit(self, times: int, retry_after: float = 0.5, global_: bool = False) -> None:
        self._ratelimit.extend([(retry_after, global_)] * times)

    async def _execute(self, request: web.Request) -> web.Response:
        self.attempts.append(time.time())
        hook_id, token = request.match_info["id"], request.match_info["token"]
        version = int(request.match_info.get("version", DEFAULT_VERSION))
        if version not in VERSIONS:
            return _json({"message": "Invalid API version", "code": 50041}, status=400)
        if self._ratelimit:
            wait, is_global = self._ratelimit.pop(0)
            headers = {"X-RateLimit-Scope": "global" if is_global else "user"}
            if version >= 8:
                retry_after: float = wait
                headers |= {"Retry-After": str(math.ceil(wait)), "X-RateLimit-Reset-After": f"{wait:.3f}"}
            else:  # milliseconds, and the reset at whole seconds (the default precision then)
                retry_after = math.ceil(wait * 1000)
                headers |= {"Retry-After": str(retry_after), "X-RateLimit-Reset-After": str(math.ceil(wait))}
            return _json(
                {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global},
                status=429,
                headers=headers,
            )
        if hook_id not in self.hooks:
            return _json({"message": "Unknown Webhook", "code": 10015}, status=404)
        if self.hooks[hook_id] != token:
            return _json({"message": "Invalid Webhook Token", "code": 50027}, status=401)
        if not request.content_type.startswith("application/json"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, status=400)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json({"message": "The request body contains invalid JSON.", "code": 50109}, status=400)
        if not isinstance(body, dict) or (not body.get("content") and not body.get("embeds")):
            return _json({"message": "Cannot send an empty message", "code": 50006}, status=400)
        errors = validate_message(body)
        if errors:
            return _json({"message": "Invalid Form Body", "code": 50035, "errors": errors}, status=400)
        self.executed.append(Executed(hook_id, dict(request.query), body, time.time(), version))
        if request.query.get("wait", "").lower() != "true":
            return web.Response(status=204)
        return _json(
            {
                "id": str(next(self._ids)),
                "type": 0,
                "content": body.get("content", ""),
                "channel_id": "1000000000000000001",
                "author": {"id": hook_id, "username": body.get("username", "Captain Hook"), "bot": True},
                "embeds": [{"type": "rich", **e} for e in body.get("embeds", [])],
                "webhook_id": hook_id,
                "timestamp": datetime.now().astimezone().isoformat(),
            }
        )

    async def start(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_post("/api/webhooks/{id}/{token}", self._execute)
        app.router.add_post(r"/api/v{version:\d+}/webhooks/{id}/{token}", self._execute)
        self.url, self._runner = await serve_app(app, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _err(code: str, message: str) -> dict[str, Any]:
    return {"_errors": [{"code": code, "message": message}]}


def _length(value: Any, limit: int, *, required: bool = False) -> dict[str, Any] | None:
    if value is None:
        return _err("BASE_TYPE_REQUIRED", "This field is required") if required else None
    if not isinstance(value, str):
        return _err("BASE_TYPE_STRING", "Could not interpret value as string.")
    if required and not value.strip():
        return _err("BASE_TYPE_REQUIRED", "This field is required")
    if len(value) > limit:
        return _err("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
    return None


def validate_message(body: dict[str, Any]) -> dict[str, Any]:
    """Discord's checks on an execute-webhook body, as its nested ``errors`` object ({} if valid)."""
    errors: dict[str, Any] = {}
    if (e := _length(body.get("content"), 2000)) is not None:
        errors["content"] = e
    username = body.get("username")
    if (e := _length(username, 80)) is not None:
        errors["username"] = e
    elif isinstance(username, str) and ("discord" in username.lower() or "clyde" in username.lower()):
        errors["username"] = _err("USERNAME_INVALID_CONTAINS", 'Username cannot contain "discord"')
    embeds = body.get("embeds")
    if embeds is None:
        return errors
    if not isinstance(embeds, list) or len(embeds) > 10:
        errors["embeds"] = _err("BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        return errors
    total = 0
    embed_errors: dict[str, Any] = {}
    for i, embed in enumerate(embeds):
        one: dict[str, Any] = {}
        if not isinstance(embed, dict):
            embed_errors[str(i)] = _err("MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
            continue
        for key, limit in (("title", 256), ("description", 4096)):
            if (e := _length(embed.get(key), limit)) is not None:
                one[key] = e
        total += len(embed.get("title") or "") + len(embed.get("description") or "")
        footer = embed.get("footer")
        if footer is not None:
            if not isinstance(footer, dict) or (e := _length(footer.get("text"), 2048, required=True)):
                one["footer"] = {"text": _err("BASE_TYPE_REQUIRED", "This field is required")}
            else:
                total += len(footer["text"])
        if "timestamp" in embed:
            try:
                datetime.fromisoformat(str(embed["timestamp"]).replace("Z", "+00:00"))
            except ValueError:
                one["timestamp"] = _err("DATE_TIME_TYPE_PARSE", "Could not parse timestamp.")
        color = embed.get("color")
        if color is not None and (not isinstance(color, int) or not 0 <= color <= 0xFFFFFF):
            one["color"] = _err("NUMBER_TYPE_MAX", "int value should be less than or equal to 16777215.")
        fields = embed.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 25:
            one["fields"] = _err("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        else:
            field_errors: dict[str, Any] = {}
            for j, f in enumerate(fields):
                fe: dict[str, Any] = {}
                if not isinstance(f, dict):
                    field_errors[str(j)] = _err("MODEL_TYPE_CONVERT", "Only dictionaries may be used")
                    continue
                if (e := _length(f.get("name"), 256, required=True)) is not None:
                    fe["name"] = e
                if (e := _length(f.get("value"), 1024, required=True)) is not None:
                    fe["value"] = e
                if "inline" in f and not isinstance(f["inline"], bool):
                    fe["inline"] = _err("BASE_TYPE_BOOLEAN", "Must be either true or false.")
                if fe:
                    field_errors[str(j)] = fe
                total += len(str(f.get("name") or "")) + len(str(f.get("value") or ""))
            if field_errors:
                one["fields"] = field_errors
        if one:
            embed_errors[str(i)] = one
    if embed_errors:
        errors["embeds"] = embed_errors
    elif total > 6000:
        errors["embeds"] = _err("MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
    return errors
