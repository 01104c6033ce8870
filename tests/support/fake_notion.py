"""A local Notion API on 127.0.0.1 that checks what the real API checks: ``POST /v1/pages``
(pages.create) and ``POST /v1/databases/{id}/query`` (filtering on a rich_text property).

In the order Notion does: the ``Authorization: Bearer`` token (401 ``unauthorized``), the
``Notion-Version`` header (400 ``missing_version``), the JSON body (400 ``invalid_json``), the
parent database (404 ``object_not_found``; 403 ``restricted_resource`` for a database listed in
``restricted``), then each property against the database's declared schema: a property the
database does not have or of another type, or a value of the wrong shape or over Notion's limits
(2,000 characters per text object, select names without commas…) gets 400 ``validation_error``.
Errors have Notion's shape: ``{"object": "error", "status", "code", "message"}``.

Programmable: ``fail_next(429, retry_after=1)`` (also 409, 500, 503);
``lose_answer_next(504)``: the next page is created, but the answer is that error (a gateway that
timed out after Notion did the work); ``pages`` holds every created page, ``requests`` every
request (headers and body), ``queries`` every query. ``slow_network = True`` sends each 200
answer in 16 KiB pieces a few milliseconds apart, as a long answer arrives over the internet (a
client must read until the end, not take the first piece for the whole).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson
from aiohttp import web

from tests.support.receiver import serve_app

TYPES = frozenset(
    {"title", "rich_text", "select", "multi_select", "number", "date", "checkbox", "url", "email"}
)
MESSAGES = {
    409: ("conflict_error", "Conflict occurred while saving. Please try again."),
    429: ("rate_limited", "You have been rate limited. Please try again in a few minutes."),
    500: ("internal_server_error", "Unexpected error occurred."),
    502: ("bad_gateway", "Bad gateway."),
    503: ("service_unavailable", "Notion is unavailable, please try again later."),
}


def normalize_id(value: str) -> str | None:
    h = value.replace("-", "").lower()
    if len(h) != 32 or any(c not in "0123456789abcdef" for c in h):
        return None
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"object": "error", "status": status, "code": code, "message": message}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


# Notion's request limits: "the maximum size of the payload is 1000 block elements and 500KB
# overall"; a request over a size limit is answered 400 validation_error.
MAX_REQUEST_BYTES = 500_000


def invalid(message: str) -> web.Response:
    return error(400, "validation_error", message)


def _shown(value: Any) -> str:
    return "`undefined`" if value is _MISSING else f"`{orjson.dumps(value).decode()}`"


_MISSING = object()


def failed(path: str, expected: str, value: Any) -> str:
    """Notion's wording for a body that fails validation."""
    return f"body failed validation: {path} should be {expected}, instead was {_shown(value)}."


def _utf16_len(text: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text)


def _check_rich_text(path: str, value: Any) -> str | None:
    if not isinstance(value, list):
        return failed(path, "an array", value)
    if len(value) > 100:
        return f"body failed validation: {path}.length should be ≤ `100`, instead was `{len(value)}`."
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type", "text") != "text":
            return failed(f"{path}[{i}].type", "`text`", item)
        text = item.get("text")
        content = text.get("content", _MISSING) if isinstance(text, dict) else _MISSING
        if not isinstance(content, str):
            return failed(f"{path}[{i}].text.content", "a string", content)
        if _utf16_len(content) > 2000:
            return (
                f"body failed validation: {path}[{i}].text.content.length should be ≤ `2000`, "
                f"instead was `{_utf16_len(content)}`."
            )
    return None


def _check_option(path: str, value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("name", value.get("id")), str):
        return failed(path, "an object with a name", value)
    name = value.get("name")
    if isinstance(name, str):
        if "," in name:
            return f"Invalid select option, commas not allowed: {name}"
        if len(name) > 100:
            return f"body failed validation: {path}.name.length should be ≤ `100`, instead was `{len(name)}`."
    return None


def _iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        if len(value) == 10:
            date.fromisoformat(value)
        else:
            datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def check_value(name: str, kind: str, prop: Any) -> str | None:
    """Notion's validation of one property value (``prop`` is ``{kind: value}``)."""
    path = f"body.properties.{name}"
    if not isinstance(prop, dict):
        return failed(path, "an object", prop)
    given = [k for k in prop if k in TYPES]
    if given != [kind]:
        return f"{name} is expected to be {kind}."
    value = prop[kind]
    vpath = f"{path}.{kind}"
    if kind in ("title", "rich_text"):
        return _check_rich_text(vpath, value)
    if kind == "number":
        ok = value is None or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        return None if ok else failed(vpath, "a number or `null`", value)
    if kind == "select":
        return None if value is None else _check_option(vpath, value)
    if kind == "multi_select":
        if not isinstance(value, list):
            return failed(vpath, "an array", value)
        for i, option in enumerate(value):
            problem = _check_option(f"{vpath}[{i}]", option)
            if problem:
                return problem
        return None
    if kind == "date":
        if value is None:
            return None
        if not isinstance(value, dict) or not _iso(value.get("start")):
            start = value.get("start", _MISSING) if isinstance(value, dict) else value
            return failed(f"{vpath}.start", "a valid ISO 8601 date string", start)
        return None
    if kind == "checkbox":
        return None if isinstance(value, bool) else failed(vpath, "a boolean", value)
    if kind in ("url", "email"):
        if value is None:
            return None
        if not isinstance(value, str):
            return failed(vpath, "a string or `null`", value)
        limit = 2000 if kind == "url" else 200
        if len(value) > limit:
            return (
                f"body failed validation: {vpath}.length should be ≤ `{limit}`, instead was `{len(value)}`."
            )
    return None


@dataclass
class NotionCall:
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class FakeNotion:
    token: str = "secret_notion_test_token"
    databases: dict[str, dict[str, str]] = field(default_factory=dict)  # id → {property: type}
    restricted: set[str] = field(default_factory=set)
    pages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[NotionCall] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._failures: list[tuple[int, float | None]] = []
        self._lost_answers: list[int] = []
        self.queries: list[Any] = []
        self._runner: web.AppRunner | None = None
        self.slow_network = False

    async def _answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        raw = orjson.dumps(body)
        if not self.slow_network:
            return web.Response(body=raw, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(raw)
        await resp.prepare(request)
        for start in range(0, len(raw), 16 * 1024):
            await resp.write(raw[start : start + 16 * 1024])
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    def add_database(self, schema: dict[str, str], database_id: str | None = None) -> str:
        assert all(t in TYPES for t in schema.values()), schema
        assert list(schema.values()).count("title") == 1, "a Notion database has exactly one title property"
        dbid = normalize_id(database_id or uuid.uuid4().hex)
        assert dbid is not None
        self.databases[dbid] = dict(schema)
        return dbid

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        self._failures.extend([(status, retry_after)] * times)

    def lose_answer_next(self, status: int = 504) -> None:
        self._lost_answers.append(status)

    async def _common(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """The checks every endpoint makes, in Notion's order; the body, or the error answer."""
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = _MISSING
        self.requests.append(
            NotionCall(dict(request.headers), None if body is _MISSING else body, time.time())
        )
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return body, error(401, "unauthorized", "API token is invalid.")
        if len(raw) > MAX_REQUEST_BYTES:  # "500KB overall", a size limit: validation_error
            return body, invalid(f"Request body too large: {len(raw)} bytes, at most 500KB.")
        if not request.headers.get("Notion-Version"):
            return body, error(
                400,
                "missing_version",
                "Notion-Version header failed validation: Notion-Version header should be defined, "
                "instead was `undefined`.",
            )
        if body is _MISSING or not isinstance(body, dict):
            return body, error(400, "invalid_json", "Error parsing JSON body.")
        if self._failures:
            status, retry_after = self._failures.pop(0)
            code, message = MESSAGES.get(status, ("internal_server_error", "Unexpected error occurred."))
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return body, error(status, code, message, headers)
        return body, None

    def _database(self, raw_id: Any) -> tuple[str | None, web.Response | None]:
        dbid = normalize_id(raw_id) if isinstance(raw_id, str) else None
        if dbid is None:
            return None, invalid(failed("body.parent.database_id", "a valid uuid", raw_id))
        if dbid in self.restricted:
            return None, error(403, "restricted_resource", "API token does not have access to this resource.")
        if dbid not in self.databases:
            return None, error(
                404,
                "object_not_found",
                f"Could not find database with ID: {dbid}. Make sure the relevant pages and databases "
                "are shared with your integration.",
            )
        return dbid, None

    async def _query(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._common(request)
        if refused is not None:
            return refused
        self.queries.append(body)
        dbid, refused = self._database(request.match_info["database_id"])
        if refused is not None or dbid is None:
            return refused or invalid("no database")
        results = [p for p in self.pages if p["parent"]["database_id"] == dbid]
        flt = body.get("filter")
        if flt is not None:
            name = flt.get("property") if isinstance(flt, dict) else None
            kind = self.databases[dbid].get(name) if isinstance(name, str) else None
            if kind is None:
                return invalid(f"Could not find property with name or id: {name}")
            cond = flt.get(kind)
            if not isinstance(cond, dict) or "equals" not in cond:
                return invalid(failed(f"body.filter.{kind}", "an object with `equals`", cond))

            def text(page: dict[str, Any]) -> str:
                items = page["properties"].get(name, {}).get(kind) or []
                return "".join(t["text"]["content"] for t in items)

            results = [p for p in results if text(p) == cond["equals"]]
        size = body.get("page_size", 100)
        listing = {
            "object": "list",
            "results": results[:size],
            "has_more": len(results) > size,
            "next_cursor": None,
        }
        return await self._answer(request, listing)

    async def _create_page(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._common(request)
        if refused is not None:
            return refused
        parent = body.get("parent")
        raw_id = parent.get("database_id", _MISSING) if isinstance(parent, dict) else _MISSING
        if not isinstance(raw_id, str):
            return invalid(failed("body.parent.database_id", "defined", raw_id))
        dbid, refused = self._database(raw_id)
        if refused is not None or dbid is None:
            return refused or invalid("no database")
        schema = self.databases[dbid]
        properties = body.get("properties", {})
        if not isinstance(properties, dict):
            return invalid(failed("body.properties", "an object", properties))
        for name, prop in properties.items():
            kind = schema.get(name)
            if kind is None:
                return invalid(f"{name} is not a property that exists.")
            problem = check_value(name, kind, prop)
            if problem:
                return invalid(problem)
        page_id = str(uuid.uuid4())
        page = {
            "object": "page",
            "id": page_id,
            "created_time": datetime.now().isoformat(),
            "parent": {"type": "database_id", "database_id": dbid},
            "archived": False,
            "properties": properties,
            "url": f"https://www.notion.so/{page_id.replace('-', '')}",
        }
        self.pages.append(page)
        if self._lost_answers:
            status = self._lost_answers.pop(0)
            return error(status, "gateway_timeout", "Gateway timed out.")
        return await self._answer(request, page)

    async def start(self) -> FakeNotion:
        app = web.Application()
        app.router.add_post("/v1/pages", self._create_page)
        app.router.add_post("/v1/databases/{database_id}/query", self._query)
        self.url, self._runner = await serve_app(app, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
