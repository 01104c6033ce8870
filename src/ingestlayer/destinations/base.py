"""The destination protocol: ``async def send(request, ctx) -> Outcome``.

Destinations never touch the database: the dispatcher hands them what to send and records what
they answer.
"""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import aiohttp

from ingestlayer.delivery.egress import EgressPolicy
from ingestlayer.delivery.http_client import HttpClient

EXCERPT_BYTES = 1024
# The longest any destination's `timeout` may be (seconds): a delivery's lease must outlast it.
MAX_TIMEOUT_SECONDS = 60


@dataclass(slots=True)
class SendRequest:
    delivery_id: str
    project_id: str
    event_id: str
    event_type: str
    attempt: int
    event: dict[str, Any]  # {"id", "type", "occurred_at", "payload"}: the processed event
    body_json: str


@dataclass(slots=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None
    retry_after: float | None = None
    # True when retrying cannot help (e.g. a channel that does not exist): dead at once.
    permanent: bool = False


SecretResolver = Callable[[str, str], Awaitable[str]]


@dataclass(slots=True)
class SendContext:
    session: aiohttp.ClientSession
    resolve_secret: SecretResolver  # (project_id, "env:X" | "ref:y") -> value
    egress: EgressPolicy
    user_agent: str
    # The lean client for webhook POSTs (delivery/http_client.py); other destinations, whose
    # APIs want more of HTTP, use ``session``.
    http: HttpClient | None = None


class Destination(Protocol):
    kind: ClassVar[str]

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome: ...

    def target(self) -> str: ...


def excerpt(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else data
    # Not final: a character the cut split is left out whole (plain decoding made it U+FFFD, and
    # the excerpt a byte or two over EXCERPT_BYTES); bytes that are not UTF-8 are still replaced.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(
        raw[:EXCERPT_BYTES], final=len(raw) <= EXCERPT_BYTES
    )
