"""A local Slack on 127.0.0.1: the OAuth v2 install flow, ``chat.postMessage``, incoming webhooks.

It checks what Slack checks and answers as Slack does:

- ``GET /oauth/v2/authorize``: the app's ``client_id``, a ``redirect_uri``, ``chat:write`` in the
  scopes; "the user approves" at once and is sent back to ``redirect_uri?code=…&state=…`` (or, with
  ``deny = True``, ``?error=access_denied&state=…``).
- ``POST /api/oauth.v2.access``: client id and secret (HTTP Basic or form fields), a known unused
  code, the same ``redirect_uri``; answers ``{"ok": true, "access_token": "xoxb-…", "team": …}``
  or ``{"ok": false, "error": "invalid_code" | "bad_client_secret" | …}``, always HTTP 200.
- ``POST /api/chat.postMessage``: a Bearer token (``not_authed`` / ``invalid_auth`` /
  ``token_revoked``), a channel that exists (``channel_not_found``), is not archived
  (``is_archived``) and, when private, has the bot in it (``not_in_channel``); ``text`` or
  ``blocks`` (``no_text``); Block Kit shape and lengths (``invalid_blocks`` with the reasons in
  ``response_metadata.messages``); ``msg_too_long``. ``rate_limit(n, retry_after)`` makes the next
  ``n`` calls answer HTTP 429 ``{"ok": false, "error": "ratelimited"}`` with ``Retry-After``.
- ``POST /services/T…/B…/…`` (incoming webhooks): ``ok`` (text) or ``invalid_payload``,
  ``no_text``, ``no_service``, ``channel_is_archived``, ``action_prohibited`` with Slack's statuses.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from tests.support.receiver import serve_app

BLOCK_TYPES = frozenset({"header", "section", "context", "divider", "actions", "image", "rich_text", "input"})
TEXT_TYPES = frozenset({"plain_text", "mrkdwn"})


@dataclass
class Channel:
    id: str
    name: str
    private: bool = False
    archived: bool = False
    members_bot: bool = True


@dataclass
class Posted:
    channel: str  # the channel id
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class WebhookHit:
    path: str
    body: Any
    at: float


@dataclass
class _Code:
    redirect_uri: str
    used: bool = False


@dataclass
class FakeSlack:
    client_id: str = "1111.2222"
    client_secret: str = "shh-client-secret"
    team_name: str = "Acme Corp"
    team_id: str = "T0ACME"
    channels: dict[str, Channel] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    webhooks: dict[str, str] = field(default_factory=dict)  # path -> channel id
    deny: bool = False
    messages: list[Posted] = field(default_factory=list)
    webhook_hits: list[WebhookHit] = field(default_factory=list)
    api_calls: list[tuple[float, str]] = field(default_factory=list)  # (time, error or "ok")
    exchanges: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _codes: dict[str, _Code] = field(default_factory=dict)
    _ratelimit: list[float] = field(default_factory=list)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        if not self.channels:
            for ch in (
                Channel("C0ALERTS01", "alerts"),
                Channel("C0GENERAL1", "general"),
                Channel("C0OLDSTUFF", "old-stuff", archived=True),
                Channel("G0SECRET01", "secret", private=True, members_bot=False),
            ):
                self.channels[ch.id] = ch

    # ---- programming it ---------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    def issue_token(self) -> str:
        token = "xoxb-" + "-".join(secrets.token_hex(6) for _ in range(3))
        self.tokens.add(token)
        return token

    def add_webhook(self, channel_id: str = "C0ALERTS01") -> str:
        path = f"/services/{self.team_id}/B{secrets.token_hex(4).upper()}/{secrets.token_urlsafe(18)}"
        self.webhooks[path] = channel_id
        return self.url + path

    def rate_limit(self, times: int, retry_after: float = 1) -> None:
        self._ratelimit.extend([retry_after] * times)

    # ---- OAuth ------------------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="Invalid client_id parameter")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            return web.Response(status=400, text="redirect_uri did not match any configured URIs")
        scopes = set(q.get("scope", "").split(","))
        if "chat:write" not in scopes:
            return web.Response(status=400, text="Invalid permissions requested")
        state = q.get("state", "")
        if self.deny:
            raise web.HTTPFound(f"{redirect_uri}?{urlencode({'error': 'access_denied', 'state': state})}")
        code = f"{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        self._codes[code] = _Code(redirect_uri)
        raise web.HTTPFound(f"{redirect_uri}?{urlencode({'code': code, 'state': state})}")

    def _client_credentials(self, request: web.Request, form: Any) -> tuple[str, str]:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return "", ""
            return cid, secret
        return str(form.get("client_id", "")), str(form.get("client_secret", ""))

    async def _oauth_access(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("application/x-www-form-urlencoded"):
            return _api({"ok": False, "error": "invalid_form_data"})
        form = await request.post()
        cid, secret = self._client_credentials(request, form)
        self.exchanges.append({"client_id": cid, "code": str(form.get("code", ""))})
        if cid != self.client_id:
            return _api({"ok": False, "error": "invalid_client_id"})
        if secret != self.client_secret:
            return _api({"ok": False, "error": "bad_client_secret"})
        code = self._codes.get(str(form.get("code", "")))
        if code is None or code.used:
            return _api({"ok": False, "error": "invalid_code"})
        code.used = True
        if str(form.get("redirect_uri", "")) != code.redirect_uri:
            return _api({"ok": False, "error": "bad_redirect_uri"})
        return _api(
            {
                "ok": True,
                "access_token": self.issue_token(),
                "token_type": "bot",
                "scope": "chat:write,chat:write.public",
                "bot_user_id": "U0BOT00001",
                "app_id": "A0INGEST01",
                "team": {"name": self.team_name, "id": self.team_id},
                "enterprise": None,
                "authed_user": {"id": "U0ADMIN001"},
                "is_enterprise_install": False,
            }
        )

    # ---- chat.postMessage -------------------------------------------------------------------------

    def _find_channel(self, ref: str) -> Channel | None:
        if ref in self.channels:
            return self.channels[ref]
        name = ref.removeprefix("#")
        return next((c for c in self.channels.values() if c.name == name), None)

    async def _post_message(self, request: web.Request) -> web.Response:
        outcome, response = await self._handle_post(request)
        self.api_calls.append((time.time(), outcome))
        return response

    async def _handle_post(self, request: web.Request) -> tuple[str, web.Response]:
        """(what happened: "ok" or Slack's error code, the answer)."""
        error = await self._post_message_error(request)
        if isinstance(error, tuple):
            return error
        return error, _api({"ok": False, "error": error})

    async def _post_message_error(self, request: web.Request) -> str | tuple[str, web.Response]:
        if self._ratelimit:
            wait = self._ratelimit.pop(0)
            return "ratelimited", _api(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": f"{wait:g}"}
            )
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return "not_authed"
        token = auth[7:]
        if token in self.revoked:
            return "token_revoked"
        if token not in self.tokens:
            return "invalid_auth"
        if not request.content_type.startswith("application/json"):
            return "invalid_post_type"
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return "invalid_json"
        if not isinstance(body, dict):
            return "invalid_arguments"
        channel = self._find_channel(str(body.get("channel") or ""))
        if channel is None or (channel.private and not channel.members_bot):
            return "channel_not_found"
        if channel.archived:
            return "is_archived"
        text, blocks = body.get("text"), body.get("blocks")
        if not text and not blocks:
            return "no_text"
        if isinstance(text, str) and len(text) > 40000:
            return "msg_too_long"
        if blocks is not None:
            problems = validate_blocks(blocks)
            if problems:
                return "invalid_blocks", _api(
                    {"ok": False, "error": "invalid_blocks", "response_metadata": {"messages": problems}}
                )
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        self.messages.append(Posted(channel.id, body, dict(request.headers), time.time()))
        return "ok", _api(
            {
                "ok": True,
                "channel": channel.id,
                "ts": ts,
                "message": {
                    "type": "message",
                    "subtype": "bot_message",
                    "text": text or "",
                    "ts": ts,
                    "bot_id": "B0BOT00001",
                    "blocks": blocks or [],
                },
            }
        )

    # ---- incoming webhooks ------------------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.webhook_hits.append(WebhookHit(request.path, body, time.time()))
        if self._ratelimit:
            wait = self._ratelimit.pop(0)
            return web.Response(status=429, text="rate_limited", headers={"Retry-After": f"{wait:g}"})
        channel_id = self.webhooks.get(request.path)
        if channel_id is None:
            return web.Response(status=404, text="no_service")
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        channel = self.channels.get(channel_id)
        if channel is None:
            return web.Response(status=404, text="channel_not_found")
        if channel.archived:
            return web.Response(status=410, text="channel_is_archived")
        if channel.name == "general":
            return web.Response(status=403, text="action_prohibited")
        if not body.get("text") and not body.get("blocks"):
            return web.Response(status=400, text="no_text")
        if body.get("blocks") is not None and validate_blocks(body["blocks"]):
            return web.Response(status=400, text="invalid_blocks")
        self.messages.append(Posted(channel.id, body, dict(request.headers), time.time()))
        return web.Response(status=200, text="ok", content_type="text/html")

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_get("/oauth/v2/authorize", self._authorize)
        app.router.add_post("/api/oauth.v2.access", self._oauth_access)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/services/{tail:.*}", self._webhook)
        self.url, self._runner = await serve_app(app, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _api(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _text_object(obj: Any, where: str, limit: int, types: frozenset[str] = TEXT_TYPES) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in types:
        return [f"{where} must be a text object of type {'/'.join(sorted(types))}"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}.text must be a non-empty string"]
    if len(text) > limit:
        return [f"{where}.text must be less than {limit + 1} characters"]
    return []


def validate_blocks(blocks: Any) -> list[str]:
    """Block Kit's checks for the block types a message uses; [] when valid."""
    if not isinstance(blocks, list) or not blocks:
        return ["blocks must be a non-empty array"]
    if len(blocks) > 50:
        return ["no more than 50 items allowed [json-pointer:/blocks]"]
    problems: list[str] = []
    for i, block in enumerate(blocks):
        where = f"[json-pointer:/blocks/{i}]"
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            problems.append(f"unsupported block type {where}")
            continue
        kind = block["type"]
        if kind == "header":
            problems += _text_object(block.get("text"), f"header {where}", 150, frozenset({"plain_text"}))
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"section needs text or fields {where}")
            if "text" in block:
                problems += _text_object(block["text"], f"section {where}", 3000)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not fields or len(fields) > 10:
                    problems.append(f"section fields must hold 1 to 10 items {where}")
                else:
                    for j, f in enumerate(fields):
                        problems += _text_object(f, f"section field {j} {where}", 2000)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements or len(elements) > 10:
                problems.append(f"context elements must hold 1 to 10 items {where}")
            else:
                for j, el in enumerate(elements):
                    problems += _text_object(el, f"context element {j} {where}", 3000)
    return problems
