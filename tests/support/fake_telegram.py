"""A local Telegram Bot API on 127.0.0.1: ``POST /bot<token>/sendMessage``.

It checks what Telegram checks and answers as Telegram does (``{"ok": false, "error_code",
"description", "parameters"?}``):

- the token: a malformed one is 404 ``Not Found``; a well-formed unknown one 401 ``Unauthorized``;
- the chat: unknown ids and usernames 400 ``Bad Request: chat not found``; ``blocked`` chats 403
  ``Forbidden: bot was blocked by the user``; ``migrated`` groups 400 with
  ``parameters.migrate_to_chat_id``;
- ``parse_mode: HTML``: only Telegram's tags, balanced, and only ``&lt; &gt; &amp; &quot; &#N;``
  entities, else 400 ``Bad Request: can't parse entities: …``; the text after parsing must hold
  1 to 4096 characters (UTF-16 units);
- ``rate_limit(n, retry_after)``: 429 ``Too Many Requests: retry after N`` with
  ``parameters.retry_after``.

``messages`` keeps what arrived, with the text as a Telegram user would see it (entities decoded).
"""

from __future__ import annotations

import html
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.receiver import serve_app

TOKEN_FORMAT = re.compile(r"^\d+:[A-Za-z0-9_-]{35}$")
TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "tg-emoji"}
    | {"code", "pre", "blockquote"}
)
ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);")
# An unquoted attribute value is letters, digits, '.' and '-' only, as in Telegram's parser
# (tdlib): href=https://… and a quoted value followed by more characters are refused.
START_TAG = re.compile(
    r"<([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[a-zA-Z0-9.-]+))?)*)\s*>"
)
SPOILER_CLASS = re.compile(r"\sclass\s*=\s*(?:\"tg-spoiler\"|'tg-spoiler'|tg-spoiler)(?:\s|$)")
END_TAG = re.compile(r"</([a-zA-Z][a-zA-Z0-9-]*)\s*>")


class EntityError(ValueError):
    pass


@dataclass
class Sent:
    chat_id: int | str
    html: str
    text: str  # what the user sees
    body: dict[str, Any]
    path: str
    at: float


def parse_html(markup: str) -> str:
    """Telegram's HTML parse mode: the visible text, or EntityError with Telegram's wording."""
    out: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(markup):
        ch = markup[i]
        offset = len(markup[:i].encode())
        if ch == "<":
            end = END_TAG.match(markup, i)
            if end:
                name = end.group(1).lower()
                if not stack or stack[-1] != name:
                    raise EntityError(f"Unexpected end tag at byte offset {offset}")
                stack.pop()
                i = end.end()
                continue
            start = START_TAG.match(markup, i)
            if not start:
                raise EntityError(f"Unexpected end of name token at byte offset {offset}")
            name = start.group(1).lower()
            if name not in TAGS:
                raise EntityError(f'Unsupported start tag "{name}" at byte offset {offset}')
            if name == "a" and "href" not in start.group(2):
                raise EntityError(f"Can't find href in a tag at byte offset {offset}")
            if name == "span" and not SPOILER_CLASS.search(start.group(2)):
                raise EntityError('Tag "span" must have class "tg-spoiler" at byte offset ' + str(offset))
            stack.append(name)
            i = start.end()
            continue
        if ch == "&":
            m = ENTITY.match(markup, i)
            if not m:
                raise EntityError(f"Unsupported HTML entity at byte offset {offset}")
            out.append(html.unescape(m.group(0)))
            i = m.end()
            continue
        if ch == ">":
            raise EntityError(f"Character '>' is reserved at byte offset {offset}")
        out.append(ch)
        i += 1
    if stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


@dataclass
class FakeTelegram:
    token: str = field(
        default_factory=lambda: f"{secrets.randbelow(10**9) + 10**9}:{secrets.token_urlsafe(27)[:35]}"
    )
    chats: dict[int, str] = field(default_factory=lambda: {-1001234567890: "supergroup", 4242: "private"})
    usernames: dict[str, int] = field(default_factory=lambda: {"@acme_alerts": -1001234567890})
    blocked: set[int] = field(default_factory=set)
    migrated: dict[int, int] = field(default_factory=dict)
    messages: list[Sent] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    url: str = ""
    _ratelimit: list[int] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    def rate_limit(self, times: int, retry_after: int = 1) -> None:
        self._ratelimit.extend([retry_after] * times)

    async def _send_message(self, request: web.Request) -> web.Response:
        self.attempts.append(time.time())
        self.paths.append(request.path)
        token = request.match_info["token"]
        if not TOKEN_FORMAT.fullmatch(token):
            return _fail(404, "Not Found")
        if token != self.token:
            return _fail(401, "Unauthorized")
        if self._ratelimit:
            wait = self._ratelimit.pop(0)
            return _fail(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _fail(400, "Bad Request: message text is empty")
        if not isinstance(body, dict):
            return _fail(400, "Bad Request: message text is empty")
        chat = body.get("chat_id")
        chat_id = self.usernames.get(chat, 0) if isinstance(chat, str) and chat.startswith("@") else chat
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        if chat_id in self.migrated:
            return _fail(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self.migrated[chat_id]},
            )
        if not isinstance(chat_id, int) or chat_id not in self.chats:
            return _fail(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            return _fail(403, "Forbidden: bot was blocked by the user")
        markup = body.get("text")
        if not isinstance(markup, str) or not markup.strip():
            return _fail(400, "Bad Request: message text is empty")
        mode = body.get("parse_mode")
        if mode not in (None, "", "HTML"):
            return _fail(400, f"Bad Request: unsupported parse_mode {mode!r} in this fake")
        try:
            text = parse_html(markup) if mode == "HTML" else markup
        except EntityError as exc:
            return _fail(400, f"Bad Request: can't parse entities: {exc}")
        if not text.strip():
            return _fail(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return _fail(400, "Bad Request: message is too long")
        message_id = next(self._ids)
        self.messages.append(Sent(chat_id, markup, text, body, request.path, time.time()))
        return web.Response(
            body=orjson.dumps(
                {
                    "ok": True,
                    "result": {
                        "message_id": message_id,
                        "from": {"id": int(self.token.split(":")[0]), "is_bot": True, "first_name": "acme"},
                        "chat": {"id": chat_id, "type": self.chats[chat_id]},
                        "date": int(time.time()),
                        "text": text,
                    },
                }
            ),
            content_type="application/json",
        )

    async def start(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_post("/bot{token}/sendMessage", self._send_message)
        self.url, self._runner = await serve_app(app, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _fail(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")
