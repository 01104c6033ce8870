"""``POST /v1/events``: the ingest hot path, as a bare ASGI handler.

Measured on this hardware, a FastAPI route costs about 70 % of a bare ASGI endpoint's
throughput; this path is where that shows first, so it parses, validates and answers by hand.
The contract (errors, limits, idempotency) is the same as every other route's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ingestlayer import clock
from ingestlayer.api.auth import KeyCache, authenticate
from ingestlayer.api.errors import (
    DATABASE_UNAVAILABLE,
    ApiError,
    not_stored_error,
    number_out_of_range_error,
    too_deep_error,
    unavailable_error,
    unreadable_json_error,
)
from ingestlayer.api.ratelimit import RateLimiter
from ingestlayer.api.request_guard import (
    ALLOW_ANY_ORIGIN,
    CLOSE,
    IDENTITY,
    mib,
    twice,
    unsupported_encoding_message,
)
from ingestlayer.idempotency_keys import KEY_RULE, MAX_KEY_LENGTH
from ingestlayer.idempotency_keys import acceptable as acceptable_key
from ingestlayer.ids import new_id, new_ids
from ingestlayer.json_depth import (
    MAX_JSON_DEPTH,
    ORJSON_WRITE_DEPTH,
    dumps_checked,
    dumps_within,
    huge_int_path,
    is_write_depth_error,
    json_depth,
)
from ingestlayer.pipeline.matching import invalid_type_message, is_valid_event_type
from ingestlayer.records import IngestResult, NewEvent
from ingestlayer.store.outage_log import OutageLog
from ingestlayer.timefmt import MAX_TIMESTAMP, MIN_TIMESTAMP, parse_iso

log = logging.getLogger("ingestlayer.ingest")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Submit = Callable[[list[NewEvent]], Awaitable[list[IngestResult]]]

EVENT_FIELDS = frozenset({"type", "payload", "idempotency_key", "occurred_at"})
# Browsers may send events from any origin (see request_guard): every answer says so.
JSON_HEADERS = [(b"content-type", b"application/json"), ALLOW_ANY_ORIGIN]


# Digits to "9", everything else to " ": a run of 19 nines then marks a number that may not fit
# in 64 bits. Two C passes over the body, about 15x faster than the regex \d{19,}.
_DIGIT_MASK = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"9" * 19
# Such a run as a JSON number: after a `:`, `[` or `,` (and spaces), not followed by a fraction or
# an exponent. Most long runs are in strings (ids, trace ids, phone numbers), and the check these
# send on to (the json module's parse of the whole body, on the event loop) took 0.6 s for a
# 4 MiB batch. A string holding such text still passes here: the check after it is exact.
_BARE_LONG_INT = re.compile(rb"[:\[,]\s*-?[0-9]{19,}(?![0-9.eE])")


def may_hold_huge_int(raw: bytes) -> bool:
    return _LONG_RUN in raw.translate(_DIGIT_MASK) and _BARE_LONG_INT.search(raw) is not None


# Over this size (per event, on average in a batch), serialising a payload within the depth
# limit (dumps_within) costs less than counting its brackets after (too_deep): 0.8 ns a byte.
LARGE_PAYLOAD_BYTES = 2048


def nesting_of(value: Any) -> str:
    """How deep a value found too deep nests, for its error message."""
    try:
        return f"{json_depth(orjson.dumps(value))} levels deep"
    except orjson.JSONEncodeError as exc:
        if is_write_depth_error(exc):
            return f"more than {ORJSON_WRITE_DEPTH} levels deep"
        return f"more than {MAX_JSON_DEPTH} levels deep"


def storable_json(value: Any, what: str, field: str | None) -> memoryview:
    """``value`` (read by any JSON parser) as orjson writes it, or the 422 that says why it cannot
    be stored: nested deeper than MAX_JSON_DEPTH, or an integer beyond 64 bits."""
    try:
        raw = dumps_within(value)
    except orjson.JSONEncodeError:  # not the depth: an integer over 64 bits, from the json module
        raise number_out_of_range_error(what, field) from None
    if raw is None:
        raise too_deep_error(what, field, nesting_of(value))
    return raw


# The response headers by body length: answers to single events all have the same length. A
# tuple, the same object each time: the protocol builds the response's head once for it
# (http_cycle.OneWriteCycle).
_HEADERS_BY_LENGTH: dict[int, tuple[tuple[bytes, bytes], ...]] = {}


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    base = _HEADERS_BY_LENGTH.get(len(body))
    if base is None:
        base = (*JSON_HEADERS, (b"content-length", str(len(body)).encode()))
        if len(_HEADERS_BY_LENGTH) < 4096:
            _HEADERS_BY_LENGTH[len(body)] = base
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*base, *headers] if headers else base,
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds {mib(limit)}", unread_body=True)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class IngestHandler:
    def __init__(
        self,
        keys: KeyCache,
        submit: Submit,
        *,
        max_event_bytes: int,
        max_request_bytes: int,
        max_batch_items: int,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.keys = keys
        self.submit = submit
        self.max_event_bytes = max_event_bytes
        self.max_request_bytes = max_request_bytes
        self.max_batch_items = max_batch_items
        self.limiter = limiter or RateLimiter(0.0)
        # Requests refused because a key could not be looked up: a line as that starts, a few
        # while it lasts, one when it ends (the store logs its own failures to store events).
        self._key_outage = OutageLog(log, "checking ingest keys")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body = await self._handle(scope, receive)
        except ApiError as exc:
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            if exc.unread_body:
                extra.append(CLOSE)  # kept open, the connection would take the rest of the body
            await send_json(send, exc.status, exc.body(), extra)
            return
        except ConnectionAbortedError:
            return
        await send_json(send, status, body)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        if scope["method"] != "POST":
            raise ApiError(405, "use POST to send events", headers={"Allow": "GET, POST"}, unread_body=True)
        auth_header: str | None = None
        idem_header: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if auth_header is not None:
                    raise twice("Authorization")
                auth_header = value.decode("latin-1")
            elif name == b"idempotency-key":
                if idem_header is not None:
                    raise twice("Idempotency-Key")
                idem_header = value.decode("latin-1")
            elif name == b"content-length" and int(value or 0) > self.max_request_bytes:
                raise ApiError(413, f"request body exceeds {mib(self.max_request_bytes)}", unread_body=True)
            elif name == b"content-encoding" and value.strip().lower() not in IDENTITY:
                raise ApiError(
                    415, unsupported_encoding_message(value), code="unsupported_media_type", unread_body=True
                )
        # A key seen in the last seconds needs no coroutine of its own; anything else (missing,
        # malformed, unknown, expired) takes the full path and its precise error.
        principal = None
        if auth_header and auth_header[:7] == "Bearer ":
            principal = self.keys.cached(auth_header[7:])
        if principal is None:
            try:
                principal = await authenticate(self.keys, auth_header, admin=False)
            except DATABASE_UNAVAILABLE as exc:  # the key is looked up in the database
                self._key_outage.failed(exc, "ingest requests with keys not seen lately are answered 503")
                raise unavailable_error(exc, "the key could not be checked") from None
            except ApiError as exc:
                self._key_outage.succeeded()  # the database answered (the key was wrong)
                exc.unread_body = True
                raise
            self._key_outage.succeeded()
        raw = await read_body(receive, self.max_request_bytes)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise unreadable_json_error(exc, "the request body", raw) from None
        if not isinstance(doc, dict):
            raise ApiError(422, 'the body must be a JSON object: an event or {"batch": [...]}')
        now = clock.now()
        if "batch" in doc:
            items = doc["batch"]
            if set(doc) - {"batch"}:
                extra = sorted(set(doc) - {"batch"})[0]
                raise ApiError(422, f"unknown field {extra!r} beside batch", field=extra)
            if not isinstance(items, list):
                raise ApiError(422, "batch must be a list of events", field="batch")
            if not items:
                raise ApiError(422, "batch must hold at least one event", field="batch")
            if len(items) > self.max_batch_items:
                raise ApiError(
                    413,
                    f"batch holds {len(items)} events; the limit is {self.max_batch_items}",
                    field="batch",
                )
            if idem_header is not None and len(idem_header) + 1 + len(str(len(items) - 1)) > MAX_KEY_LENGTH:
                # Each event's key is "<header>:<index>", which must fit in MAX_KEY_LENGTH too.
                room = MAX_KEY_LENGTH - 1 - len(str(len(items) - 1))
                raise ApiError(
                    422,
                    f"Idempotency-Key is {len(idem_header)} characters; with a batch of {len(items)} "
                    f"it may have at most {room}",
                    field="Idempotency-Key",
                )
            ids = new_ids("evt", len(items))
            project_id = principal.project_id
            large = len(raw) > LARGE_PAYLOAD_BYTES * len(items)
            events = [
                self._event(
                    item, i, project_id, now, f"{idem_header}:{i}" if idem_header else None, ids[i], large
                )
                for i, item in enumerate(items)
            ]
        else:
            large = len(raw) > LARGE_PAYLOAD_BYTES
            events = [self._event(doc, None, principal.project_id, now, idem_header, new_id("evt"), large)]
        # After validation, which bounds the body's depth: json.loads and huge_int_path recurse.
        if may_hold_huge_int(raw) and (where := huge_int_path(json.loads(raw))) is not None:
            # orjson would read it as a float: refuse rather than store something else than was sent.
            raise number_out_of_range_error(where, where)
        if self.limiter.rate:
            await self.limiter.check(principal.project_id, len(events))
        try:
            results = await self.submit(events)
        except Exception as exc:
            # Only the same idempotency key makes sending again safe when the outcome is unknown.
            raise not_stored_error(exc, "send it again with the same idempotency key") from None
        if "batch" in doc:
            dupes = sum(r.duplicate for r in results)
            body = orjson.dumps(
                {
                    "items": [{"id": r.id, "duplicate": r.duplicate} for r in results],
                    "accepted": len(results) - dupes,
                    "duplicates": dupes,
                }
            )
            return (200 if dupes == len(results) else 202), body
        r = results[0]
        return (200 if r.duplicate else 202), orjson.dumps({"id": r.id, "duplicate": r.duplicate})

    def _event(
        self,
        item: Any,
        index: int | None,
        project_id: str,
        now: float,
        default_key: str | None,
        event_id: str,
        large: bool = False,
    ) -> NewEvent:
        """Validate one event (``index`` is its place in a batch, named in errors; ``large``: its
        payload is likely over LARGE_PAYLOAD_BYTES)."""
        if type(item) is not dict:
            where = _prefix(index).rstrip(".")
            raise ApiError(422, f"{where or 'the body'} must be an event object", field=where or None)
        if not item.keys() <= EVENT_FIELDS:
            prefix, name = _prefix(index), sorted(set(item) - EVENT_FIELDS)[0]
            raise ApiError(
                422,
                f"unknown field {prefix}{name} (an event has type, payload, idempotency_key, occurred_at)",
                field=f"{prefix}{name}",
            )
        etype = item.get("type")
        if type(etype) is not str or not is_valid_event_type(etype):
            prefix = _prefix(index)
            if not isinstance(etype, str) or not etype:
                raise ApiError(
                    422,
                    f"{prefix}type is required: a dotted event name such as feature.used",
                    field=f"{prefix}type",
                )
            raise ApiError(422, f"{prefix}{invalid_type_message(etype)}", field=f"{prefix}type")
        payload = item.get("payload")
        payload_json: bytes | memoryview
        if payload is None and "payload" not in item:
            payload_json = b"{}"
        elif type(payload) is dict:
            checked = dumps_checked(payload, large=large)  # nested at most MAX_JSON_DEPTH levels
            if checked is None:
                field = f"{_prefix(index)}payload"
                raise too_deep_error(field, field, nesting_of(payload))
            payload_json = checked
            if len(payload_json) > self.max_event_bytes:
                prefix = _prefix(index)
                raise ApiError(
                    413,
                    f"{prefix}payload is {len(payload_json)} bytes; the limit is "
                    f"{self.max_event_bytes // 1024} KiB per event",
                    field=f"{prefix}payload",
                )
        else:
            prefix = _prefix(index)
            raise ApiError(422, f"{prefix}payload must be a JSON object", field=f"{prefix}payload")
        key = item.get("idempotency_key", default_key)
        if index is None and default_key is not None and key != default_key:
            # Which of two different keys was meant cannot be guessed; using either could store
            # the event twice or drop a different one as a duplicate.
            raise ApiError(
                422,
                "idempotency_key in the body differs from the Idempotency-Key header; send one",
                field="idempotency_key",
            )
        if key is not None and not acceptable_key(key):
            field = f"{_prefix(index)}idempotency_key"
            raise ApiError(422, f"{field} must be {KEY_RULE}", field=field)
        occurred = item.get("occurred_at")
        occurred_at = now if occurred is None else _occurred_at(occurred, _prefix(index))
        return NewEvent(event_id, project_id, etype, str(payload_json, "utf-8"), key, "sdk", occurred_at, now)


def _prefix(index: int | None) -> str:
    """How errors name an event: ``batch[3].`` in a batch, nothing for a single event."""
    return "" if index is None else f"batch[{index}]."


def _unreadable_time(prefix: str) -> ApiError:
    message = f"{prefix}occurred_at must be an ISO 8601 timestamp or epoch seconds"
    return ApiError(422, message, field=f"{prefix}occurred_at")


def _occurred_at(occurred: Any, prefix: str) -> float:
    if isinstance(occurred, str):
        try:
            value = parse_iso(occurred)
        except ValueError:
            raise _unreadable_time(prefix) from None
    elif isinstance(occurred, int | float) and not isinstance(occurred, bool):
        value = float(occurred)
    else:
        raise _unreadable_time(prefix)
    if not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise ApiError(
            422,
            f"{prefix}occurred_at must lie between the years 0001 and 9999",
            field=f"{prefix}occurred_at",
        )
    return value
