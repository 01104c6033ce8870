"""The one error shape: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingestlayer import metrics
from ingestlayer.field_rule import error_loc
from ingestlayer.json_depth import (
    MAX_JSON_DEPTH,
    NUMBERS_TOO_LARGE,
    ORJSON_READ_DEPTH,
    is_number_range_error,
    is_read_depth_error,
    out_of_range_path,
)
from ingestlayer.store.conditions import DISK_FULL_RETRY_SECONDS, storage_condition
from ingestlayer.store.outage_log import OutageLog
from ingestlayer.store.unavailable import DATABASE_UNAVAILABLE as DATABASE_UNAVAILABLE  # noqa: PLC0414
from ingestlayer.validation_messages import error_message

log = logging.getLogger("ingestlayer.api")

# Requests that found the database unavailable this long after the last such request belong to
# another outage (see install_error_handlers).
OUTAGE_QUIET_SECONDS = 30.0


def unavailable_error(exc: BaseException, what: str) -> ApiError:
    """The 503 for a database error: clients retry after a second (with the same idempotency
    key, for events), or after DISK_FULL_RETRY_SECONDS when the disk is full; the reason is
    named when it is the disk or the file's permissions."""
    condition = storage_condition(exc)
    metrics.UNAVAILABLE.labels(reason=condition or "database").inc()
    retry_after = DISK_FULL_RETRY_SECONDS if condition in ("disk_full", "sync_failed", "file_moved") else 1
    reason = {
        "disk_full": "the database's disk is full",
        "read_only": "the database file has become read-only",
        "sync_failed": "the database log could not be synced; nothing is stored until the server restarts",
        "file_moved": "the database file was removed or replaced while the server ran",
        None: "database unavailable",
    }[condition]
    return ApiError(503, f"{what} ({reason}); retry shortly", headers={"Retry-After": str(retry_after)})


def not_stored_error(exc: BaseException, send_again: str) -> ApiError:
    """The 503 for an event the group committer could not take: certainly not stored when the
    server is shutting down (a RuntimeError), else perhaps (:func:`unavailable_error`), since a
    statement the database did not answer in time may still commit once it does. ``send_again``
    says how to send it again safely."""
    if isinstance(exc, RuntimeError):
        metrics.UNAVAILABLE.labels(reason="shutting_down").inc()
        return ApiError(503, f"the event was not stored: {exc}; {send_again}", headers={"Retry-After": "1"})
    return unavailable_error(exc, f"the event may not have been stored; {send_again}")


STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


TOO_DEEP = "too_deep"  # the code of the 422 for JSON nested deeper than MAX_JSON_DEPTH


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        unread_body: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or STATUS_CODES.get(status, "error")
        self.headers = headers or {}
        # Raised before the request's body was read: the answer closes the connection.
        self.unread_body = unread_body

    def body(self) -> bytes:
        return error_body(self.code, self.message, self.field)


def too_deep_error(what: str, field: str | None, how: str) -> ApiError:
    """The 422 for JSON nested deeper than MAX_JSON_DEPTH (``how``: "70 levels deep", …)."""
    return ApiError(
        422,
        f"{what} is nested {how}; JSON may nest at most {MAX_JSON_DEPTH} levels",
        field=field,
        code=TOO_DEEP,
    )


def number_out_of_range_error(what: str = "", field: str | None = None) -> ApiError:
    """The 422 for a number that cannot be stored as sent (``what``: where, as a prefix)."""
    prefix = f"{what}: " if what else ""
    return ApiError(422, prefix + NUMBERS_TOO_LARGE, field=field, code="number_out_of_range")


def first_byte_not_utf8(raw: bytes) -> str | None:
    """Where ``raw`` stops being UTF-8, or None. orjson says "str is not valid UTF-8: surrogates
    not allowed: line 1 column 1 (char 0)" of any such byte, wherever it is: a Latin-1 "é" deep
    in a payload read like a problem with the body's first character."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start
        line_start = raw.rfind(b"\n", 0, at) + 1
        line, column = raw.count(b"\n", 0, at) + 1, at - line_start + 1
        return f"byte 0x{raw[at]:02x} at line {line} column {column} (byte {at})"
    return None


def unreadable_json_error(exc: ValueError, what: str, raw: bytes | str | None = None) -> ApiError:
    """Why orjson could not read ``what`` (\"the request body\", whose text is ``raw``): nested
    too deep, or a number beyond a double's range, are JSON all the same and refused as such
    (422, naming the number's field when ``raw`` is given); anything else is not JSON (400)."""
    if is_read_depth_error(exc):
        return too_deep_error(what, None, f"more than {ORJSON_READ_DEPTH} levels deep")
    if is_number_range_error(exc):
        where = out_of_range_path(raw) if raw is not None else None
        return number_out_of_range_error(f"{what}: {where}" if where else what, where)
    if raw is not None and not raw.strip():
        return ApiError(400, f"{what} is empty: send a JSON object", code="invalid_json")
    if isinstance(raw, bytes) and "not valid UTF-8" in str(exc):
        where = first_byte_not_utf8(raw)
        if where is not None:
            return ApiError(
                400, f"{what} is not valid UTF-8: {where}; send JSON as UTF-8", code="invalid_json"
            )
    # The parser's reason and where (orjson: "unexpected character: line 1 column 9 (char 8)"):
    # a BOM, UTF-16, a stray NaN or a trailing comma each read alike without it.
    reason = str(exc).strip()
    return ApiError(
        400,
        f"{what} is not valid JSON: {reason}" if reason else f"{what} is not valid JSON",
        code="invalid_json",
    )


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return orjson.dumps({"error": err})


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_NOT_AN_OBJECT = frozenset({"dict_type", "model_attributes_type"})


def _unreadable_body(exc: RequestValidationError) -> ApiError | None:
    """A body that is not JSON at all is a 400, as on ``POST /v1/events``, not a 422 saying
    "Input should be a valid dictionary"."""
    errors = exc.errors()
    if errors[0].get("type") == "json_invalid":
        text = exc.body if isinstance(exc.body, bytes | str) else None  # what FastAPI could not read
        reason = ValueError(errors[0].get("ctx", {}).get("error", ""))
        if text is not None:
            try:  # read again for orjson's reason with its place, as POST /v1/events gives it
                orjson.loads(text)
            except orjson.JSONDecodeError as again:
                reason = again
        return unreadable_json_error(reason, "the request body", text)
    if not any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors):
        return None
    raw = exc.body
    if isinstance(raw, bytes | bytearray):
        # FastAPI reads a body as JSON only when it is labelled so; otherwise it hands on bytes.
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as decode_error:
            error = unreadable_json_error(decode_error, "the request body")
            if error.status == 400:  # JSON too deep or too large to read is JSON all the same
                return error
        return ApiError(
            415, "send the JSON body with Content-Type: application/json", code="unsupported_media_type"
        )
    missing = [e for e in errors if e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",)]
    if raw is None and missing:
        return ApiError(400, "the request body is empty: send a JSON object", code="invalid_json")
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> Response:
        return Response(
            exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
        )

    # Each caller has its 503 with Retry-After: an outage is a line when it starts and one every
    # few seconds with the count (OutageLog), not a line per request. No request tells when the
    # database is back, so failures after a quiet spell start a new outage.
    outage = OutageLog(log, "requests")
    last_failure = -OUTAGE_QUIET_SECONDS

    async def _unavailable(req: Request, exc: Exception) -> Response:
        nonlocal outage, last_failure
        now = time.monotonic()
        if now - last_failure > OUTAGE_QUIET_SECONDS:
            outage = OutageLog(log, "requests")
        last_failure = now
        outage.failed(exc, f"{req.method} {req.url.path} and those after it are answered 503")
        err = unavailable_error(exc, "the request could not be served")
        return Response(err.body(), err.status, media_type="application/json", headers=err.headers)

    for error_class in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error_class, _unavailable)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> Response:
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            return Response(unreadable.body(), unreadable.status, media_type="application/json")
        err = exc.errors()[0]
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") in _NOT_AN_OBJECT:
            return Response(
                error_body("validation_error", "the request body must be a JSON object"),
                422,
                media_type="application/json",
            )
        field = _loc_to_field(error_loc(err))
        msg = error_message(err)
        message = f"{field}: {msg}" if field else msg
        return Response(
            error_body("validation_error", message, field or None), 422, media_type="application/json"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI reads JSON bodies with the json module, which gives up on deep nesting.
            err = too_deep_error("the request body", None, "too deeply to read")
            return Response(err.body(), err.status, media_type="application/json")
        code = STATUS_CODES.get(exc.status_code, "error")
        return Response(
            error_body(code, str(exc.detail)),
            exc.status_code,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )
