"""``notion``: ``pages.create`` — one page per delivery in a Notion database.

``POST {api_base}/v1/pages`` with ``Authorization: Bearer <token>``, ``Notion-Version: 2022-06-28``
and ``{"parent": {"database_id": …}, "properties": {…}}``.

With ``dedupe_property``, the page also gets the delivery id in that rich_text property, and every
attempt after the first (a retry, a replay) first asks the database (``POST
/v1/databases/{id}/query``) for a page with it: Notion has no idempotency key, and a page created
on an attempt whose answer was lost must not be created again. The query's answer is read whole;
one that cannot be read as a list of pages is retried, never taken for "no page yet".

Outcomes: 200 → delivered; 429 (honouring ``Retry-After``), 409 ``conflict_error``, 5xx, timeouts
and connection errors → retried; 400 ``validation_error``, 401 ``unauthorized``, 403
``restricted_resource``, 404 ``object_not_found`` (and any other 4xx) → dead at once, with
Notion's ``message``. The token never appears in an error or an excerpt, nor what the dashboard
masks in ``api_base`` (a proxy's password or query values).
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp
import orjson
from pydantic import BaseModel

from ingestlayer.delivery.egress import EgressDenied
from ingestlayer.delivery.retry import parse_retry_after
from ingestlayer.destinations.base import Outcome, SendContext, SendRequest, excerpt
from ingestlayer.destinations.chat import POST_FAILURES, post_failure, read_bounded
from ingestlayer.destinations.notion.config import NotionConfig
from ingestlayer.destinations.notion.properties import property_value
from ingestlayer.destinations.shared import credential_forms, scrub_forms, url_credentials
from ingestlayer.pipeline.templates import Template

NOTION_VERSION = "2022-06-28"
# The dedupe query's answer carries the found page's properties (up to 100 text objects of
# 2,000 characters each, per property): it must be read whole, so the bound is generous.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
RETRY_STATUSES = frozenset({408, 409, 429})


def notion_error(status: int, raw: bytes) -> tuple[str | None, str]:
    """Notion's error ``code`` and ``message`` (or what the body says, for a proxy's answer)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("object") == "error":
        return (str(body.get("code") or "") or None), str(body.get("message") or "")
    return None, (excerpt(raw) or "").strip()[:300]


def classify_response(status: int, raw: bytes, retry_after_header: str | None) -> Outcome:
    if 200 <= status < 300:
        try:
            page = orjson.loads(raw)
        except orjson.JSONDecodeError:
            page = {}
        summary = {k: page.get(k) for k in ("object", "id", "url")} if isinstance(page, dict) else {}
        return Outcome(ok=True, status_code=status, response_excerpt=orjson.dumps(summary).decode())
    code, message = notion_error(status, raw)
    error = f"Notion {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    retry_after = parse_retry_after(retry_after_header) if status in (429, 503) else None
    retry = status in RETRY_STATUSES or status >= 500
    return Outcome(
        ok=False,
        status_code=status,
        error=error,
        response_excerpt=excerpt(raw),
        retry_after=retry_after,
        permanent=not retry,
    )


# Notion refuses a request over 500 KB (400 validation_error, or 413) however each property
# fits its own limits: three text properties of 200,000 characters each made 800 KB, and the
# delivery went dead. Text properties are cut to fit, the longest first, with an ellipsis.
MAX_REQUEST_BYTES = 480_000
TEXT_KINDS = frozenset({"title", "rich_text"})


def fit_request(body: dict[str, Any], text_kinds: dict[str, str]) -> dict[str, Any]:
    """``body`` with its text properties (``text_kinds``: name → title or rich_text) cut, the
    heaviest first, until it fits in MAX_REQUEST_BYTES."""
    properties = body["properties"]
    size = len(orjson.dumps(body))
    while size > MAX_REQUEST_BYTES and text_kinds:
        weights = {name: len(orjson.dumps(properties[name])) for name in text_kinds}
        name = max(weights, key=weights.__getitem__)
        kind = text_kinds[name]
        shown = "".join(part["text"]["content"] for part in properties[name][kind])
        if len(shown) <= 1:
            break
        # Cut by what a character weighs in the request (escapes, multi-byte ones), with room.
        per_char = weights[name] / len(shown)
        keep = max(0, min(len(shown) - 2, len(shown) - int((size - MAX_REQUEST_BYTES) / per_char) - 64))
        properties[name] = property_value(kind, shown[:keep] + "…")
        size = len(orjson.dumps(body))
    return body


class Notion:
    kind: ClassVar[str] = "notion"
    config_model: ClassVar[type[BaseModel]] = NotionConfig

    def __init__(self, config: NotionConfig) -> None:
        self.config = config
        self._templates = {
            name: (prop.type, Template(prop.value) if isinstance(prop.value, str) else prop.value)
            for name, prop in config.properties.items()
        }

    def target(self) -> str:
        return f"notion database {self.config.database_id}"

    async def close(self) -> None:
        """Nothing held between deliveries (requests go through the dispatcher's session)."""

    def build_body(self, request: SendRequest) -> dict[str, Any]:
        ev = request.event
        envelope = {"type": ev.get("type"), "id": ev.get("id"), "occurred_at": ev.get("occurred_at")}
        payload = ev.get("payload")
        payload_map = payload if isinstance(payload, dict) else {}
        properties: dict[str, Any] = {}
        text_kinds: dict[str, str] = {}  # the text properties, to cut if the request is too large
        for name, (kind, template) in self._templates.items():
            value = template.render(envelope, payload_map) if isinstance(template, Template) else template
            properties[name] = property_value(kind, value)
            if kind in TEXT_KINDS:
                text_kinds[name] = kind
        if self.config.dedupe_property is not None:
            properties[self.config.dedupe_property] = property_value("rich_text", request.delivery_id)
        body = {"parent": {"database_id": self.config.database_id}, "properties": properties}
        return fit_request(body, text_kinds)

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        url = f"{cfg.api_base}/v1/pages"
        if url.startswith("http://") and not ctx.egress.allow_private:
            return Outcome(
                ok=False,
                permanent=True,
                error="api_base must be https:// (the token would travel in the clear); plain http:// "
                "only where private destinations are allowed",
            )
        try:
            ctx.egress.check_url(url)
        except EgressDenied as exc:
            return Outcome(ok=False, error=str(exc), permanent=True)
        try:
            token = await ctx.resolve_secret(request.project_id, cfg.token)
        except LookupError as exc:
            return Outcome(ok=False, error=str(exc))
        # The token, and what the dashboard masks in api_base (a proxy's password, its query
        # values): a proxy in front of Notion may echo the request it was sent.
        forms = credential_forms([token, *url_credentials(cfg.api_base)])
        outcome: Outcome | None = None
        if cfg.dedupe_property is not None and request.attempt > 1:
            outcome = await self._existing_page(request.delivery_id, token, ctx, forms)
        if outcome is None:
            outcome = await self._post(url, token, orjson.dumps(self.build_body(request)), ctx, forms)
        if outcome.error is not None:
            outcome.error = scrub_forms(outcome.error, forms)
        if outcome.response_excerpt is not None:
            outcome.response_excerpt = scrub_forms(outcome.response_excerpt, forms)
        return outcome

    async def _existing_page(
        self, delivery_id: str, token: str, ctx: SendContext, forms: list[str]
    ) -> Outcome | None:
        """Delivered already if an earlier attempt created the page; None when it did not."""
        cfg = self.config
        assert cfg.dedupe_property is not None
        query = {
            "filter": {"property": cfg.dedupe_property, "rich_text": {"equals": delivery_id}},
            "page_size": 1,
        }
        url = f"{cfg.api_base}/v1/databases/{cfg.database_id}/query"
        answer = await self._post(url, token, orjson.dumps(query), ctx, forms, raw_ok=True)
        if not answer.ok:
            return answer
        try:
            listing = orjson.loads(answer.response_excerpt or "")
        except orjson.JSONDecodeError:
            listing = None
        results = listing.get("results") if isinstance(listing, dict) else None
        if not isinstance(results, list):
            # Not knowing whether the page exists is not "it does not": creating it now could
            # make a second page, which is what the query is for. Retried.
            return Outcome(
                ok=False,
                status_code=answer.status_code,
                error="Notion's answer to the dedupe query is not a list of pages",
                response_excerpt=excerpt(answer.response_excerpt),
            )
        if not results:
            return None
        page = results[0] if isinstance(results[0], dict) else {}
        return Outcome(
            ok=True,
            status_code=200,
            response_excerpt=orjson.dumps(
                {"object": "page", "id": page.get("id"), "url": page.get("url"), "existing": True}
            ).decode(),
        )

    async def _post(
        self, url: str, token: str, body: bytes, ctx: SendContext, forms: list[str], *, raw_ok: bool = False
    ) -> Outcome:
        """POST JSON to Notion; with ``raw_ok`` a 2xx keeps the whole answer in the excerpt.

        The answer is scrubbed of ``forms`` (:func:`credential_forms`) before anything is cut
        from it (an excerpt, a message), so no credential is left in part at a cut."""
        timeout = self.config.timeout
        headers = {
            "Authorization": f"Bearer {token}",
            "Notion-Version": NOTION_VERSION,
            "Content-Type": "application/json",
            "User-Agent": ctx.user_agent,
        }
        try:
            async with ctx.session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await read_bounded(resp, MAX_RESPONSE_BYTES)
                if forms:
                    raw = scrub_forms(raw.decode("utf-8", "replace"), forms).encode()
                if raw_ok and 200 <= resp.status < 300:
                    return Outcome(
                        ok=True, status_code=resp.status, response_excerpt=raw.decode("utf-8", "replace")
                    )
                return classify_response(resp.status, raw, resp.headers.get("Retry-After"))
        except POST_FAILURES as exc:
            return post_failure(exc, timeout)
