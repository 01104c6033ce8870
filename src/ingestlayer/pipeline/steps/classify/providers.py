"""The OpenAI-compatible chat-completions call: building the request, sending it, reading it.

Outcomes are sorted in two kinds:

- :class:`ProviderFailure`: the model could not answer this time (timeout, connection error,
  429, 5xx, other 4xx, an unreadable body). The step writes its ``fallback`` label, or fails.
- :class:`ProviderConfigError`: no retry of this request can succeed until a human changes
  something (401/403: the key; 404: the model or URL; a private address refused by the egress
  policy). Raised even when a fallback is set, so the error shows in the trace and ``on_error``
  applies instead of every event silently getting the fallback label.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ingestlayer import __version__
from ingestlayer.delivery.egress import EgressDenied, EgressPolicy
from ingestlayer.delivery.retry import parse_retry_after
from ingestlayer.destinations.shared import credential_forms, scrub_forms, url_credentials
from ingestlayer.pipeline.event import RetryLater
from ingestlayer.pipeline.steps.capped_body import MAX_ANSWER_BYTES, AnswerTooLarge, read_capped
from ingestlayer.pipeline.steps.classify.config import ClassifyConfig
from ingestlayer.urlmask import mask_url

MAX_RESPONSE_BYTES = MAX_ANSWER_BYTES
EXCERPT_CHARS = 200
CONFIG_STATUSES = frozenset({401, 403, 404})


class ProviderFailure(RetryLater):
    """The provider gave no usable answer this time; the fallback label applies."""


class ProviderConfigError(Exception):
    """The provider refuses the request as configured (key, model, URL); fallback does not apply."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    url: str
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = self.body["messages"]
        return messages


def label_instruction(labels: list[str], response_format: str) -> str:
    listed = ", ".join(labels)
    if response_format == "json_schema":
        return (
            f"Classify the input into exactly one of these labels: {listed}.\n"
            'Answer with a JSON object {"label": "<label>"} whose label is exactly one of the labels '
            "above, written as shown, and nothing else."
        )
    return (
        f"Classify the input into exactly one of these labels: {listed}.\n"
        "Answer with exactly one label from that list, written exactly as shown, and nothing else: "
        "no punctuation, no explanation."
    )


def build_request(config: ClassifyConfig, system: str | None, prompt: str) -> ChatRequest:
    """The request for one event; ``system`` and ``prompt`` are already rendered."""
    instruction = label_instruction(config.labels, config.response_format)
    system_text = f"{system.strip()}\n\n{instruction}" if system and system.strip() else instruction
    body: dict[str, Any] = {
        **config.extra_body,
        "model": config.model,
        "messages": [{"role": "system", "content": system_text}, {"role": "user", "content": prompt}],
    }
    if config.temperature is not None:
        body["temperature"] = config.temperature
    if config.max_tokens is not None:
        body["max_tokens"] = config.max_tokens
    if config.response_format == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "classification",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"label": {"type": "string", "enum": list(config.labels)}},
                    "required": ["label"],
                    "additionalProperties": False,
                },
            },
        }
    return ChatRequest(url=config.chat_url(), body=body)


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    content: str | None
    model: str | None
    elapsed_ms: float


def _scrubbed(raw: bytes, forms: list[str]) -> bytes:
    """The answer without the request's credentials, before any of it is cut to an excerpt: a
    credential at the cut is not left in part."""
    return scrub_forms(raw.decode("utf-8", "replace"), forms).encode() if forms else raw


def _error_excerpt(raw: bytes) -> str:
    """The provider's error message (OpenAI's ``{"error": {"message"}}``) or the raw body's start."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:EXCERPT_CHARS]
        if isinstance(err, str):
            return err[:EXCERPT_CHARS]
        if isinstance(data.get("detail"), str):
            return str(data["detail"])[:EXCERPT_CHARS]
    return raw[:EXCERPT_CHARS].decode("utf-8", "replace").strip()


def _content(data: Any) -> str | None:
    """``choices[0].message.content``; content given as parts (``[{type: text, text}]``) is joined."""
    if not isinstance(data, dict):
        raise ProviderFailure("the response is not a chat completion (no JSON object)")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderFailure("the response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ProviderFailure("the response's first choice has no message")
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(str(p) for p in parts)
    if content is None or isinstance(content, str):
        return content
    raise ProviderFailure("the response's message content is not text")


async def chat_completion(
    session: aiohttp.ClientSession,
    request: ChatRequest,
    *,
    api_key: str | None,
    timeout: float,
    allow_private: bool,
) -> ChatAnswer:
    """POST the request; return the answer's text, or raise ProviderFailure / ProviderConfigError."""
    try:
        EgressPolicy(allow_private=allow_private).check_url(request.url)
    except EgressDenied as exc:
        raise ProviderConfigError(str(exc)) from None
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"ingestlayer/{__version__}",
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # Kept out of every message: the key, and what the dashboard masks in base_url (a password,
    # sent as Authorization: Basic when there is no key). A server may echo the request.
    forms = credential_forms([*([api_key] if api_key else []), *url_credentials(request.url)])
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout),
            session.post(
                request.url, data=orjson.dumps(request.body), headers=headers, allow_redirects=False
            ) as resp,
        ):
            try:
                raw = await read_capped(resp, MAX_RESPONSE_BYTES)
            except AnswerTooLarge as exc:
                raise ProviderFailure(str(exc)) from None
            status = resp.status
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
    except TimeoutError:
        raise ProviderFailure(f"timed out after {timeout:g}s") from None
    except EgressDenied as exc:
        raise ProviderConfigError(str(exc)) from None
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, EgressDenied):
            raise ProviderConfigError(str(exc.os_error)) from None
        raise ProviderFailure(scrub_forms(f"connection error: {exc.os_error or exc}", forms)) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise ProviderFailure(scrub_forms(f"{type(exc).__name__}: {exc}", forms)) from None
    elapsed_ms = (time.monotonic() - started) * 1000
    if not 200 <= status < 300:
        message = f"answered HTTP {status}"
        detail = _error_excerpt(_scrubbed(raw, forms))
        if detail:
            message += f": {detail}"
        if status in CONFIG_STATUSES:
            raise ProviderConfigError(f"{mask_url(request.url)} {message}")
        raise ProviderFailure(message, retry_after)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProviderFailure(
            f"the response is not JSON: {_error_excerpt(_scrubbed(raw, forms))!r}"
        ) from None
    model = data.get("model") if isinstance(data, dict) else None
    return ChatAnswer(_content(data), model if isinstance(model, str) else None, elapsed_ms)
