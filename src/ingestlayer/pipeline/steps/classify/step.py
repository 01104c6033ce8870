"""The ``classify`` step: cache → (shared) provider call → label → ``field``.

Caching (provider ``openai``): the key is the SHA-256 of a canonical JSON document holding the
configuration that shapes the answer (provider, endpoint, model, labels, sampling options,
response format, extra body) and the *rendered* messages — the system text and the prompt as
sent. So only what the prompt actually uses counts: two tickets with the same subject and body
but different ids share one call, and changing the model, labels or prompt starts afresh. The
API key reference, ``field``, ``fallback``, ``timeout``, ``cache_ttl``, ``max_concurrency`` and
``on_error`` do not change the answer and are not part of the key. Only labels a model actually
gave are cached; fallbacks never are.

Identical requests in flight at the same time share one call: the first starts a task (cache
lookup, call, cache store) and the rest await the same task.

The keyword model runs in microseconds, so it is neither cached nor bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel

from ingestlayer.pipeline.event import Drop, PipelineEvent, RetryLater, StepContext, StepServices
from ingestlayer.pipeline.paths import set_path
from ingestlayer.pipeline.steps.classify.config import ClassifyConfig
from ingestlayer.pipeline.steps.classify.parsing import AnswerParser, KeywordModel
from ingestlayer.pipeline.steps.classify.providers import (
    ChatRequest,
    ProviderConfigError,
    ProviderFailure,
    build_request,
    chat_completion,
)
from ingestlayer.pipeline.templates import Template

log = logging.getLogger("ingestlayer.steps.classify")

CACHE_KEY_VERSION = 1
ANSWER_EXCERPT = 80


class ClassifyError(RetryLater):
    """The step could not produce a label and has no fallback: ``on_error`` applies."""


@dataclass(frozen=True, slots=True)
class Outcome:
    label: str | None
    source: Literal["model", "cache"]
    failure: str | None = None
    retry_after: float | None = None  # what the provider's Retry-After asked for


class Classify:
    name: ClassVar[str] = "classify"
    kind: ClassVar[str] = "ENR"
    # Waits on a database or a provider: the router runs such events concurrently.
    performs_io: ClassVar[bool] = True
    config_model: ClassVar[type[BaseModel]] = ClassifyConfig

    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.parser = AnswerParser(config.labels, config.field)
        self.keywords: KeywordModel | None = None
        self._prompt: Template | None = None
        self._system: Template | None = None
        if config.provider == "keywords":
            default = config.default if config.default is not None else config.fallback
            assert default is not None  # the config validator guarantees one of them
            self.keywords = KeywordModel(config.rules, default)
        else:
            assert config.prompt is not None
            self._prompt = Template(config.prompt)
            self._system = Template(config.system) if config.system else None
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._inflight: dict[tuple[str, str], asyncio.Task[Outcome]] = {}
        self._fingerprint = self._config_fingerprint()

    # ---- request and cache key -------------------------------------------------------------------

    def _config_fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {
            "v": CACHE_KEY_VERSION,
            "step": self.name,
            "provider": c.provider,
            "url": c.chat_url(),
            "model": c.model,
            "labels": c.labels,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "response_format": c.response_format,
            "extra_body": c.extra_body,
        }

    def build_request(self, event: PipelineEvent) -> ChatRequest:
        """The chat request for this event (its messages rendered from the event)."""
        assert self._prompt is not None
        envelope = event.envelope()
        system = self._system.render_text(envelope, event.payload) if self._system else None
        return build_request(self.config, system, self._prompt.render_text(envelope, event.payload))

    def cache_key(self, request: ChatRequest) -> str:
        """Hex SHA-256 of the answer-shaping config and the messages (64 characters)."""
        doc = {**self._fingerprint, "messages": request.messages}
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()

    # ---- running -----------------------------------------------------------------------------------

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop:
        if self.keywords is not None:
            match = self.keywords(event.envelope(), event.payload)
            if match.rule is None:
                ctx.notes.append(f"label {match.label} from keywords (no rule matched: default)")
            else:
                ctx.notes.append(f"label {match.label} from keywords (rule {match.rule}: {match.phrase!r})")
            set_path(event.payload, self.config.field, match.label)
            return event

        services = ctx.services
        if services is None:
            raise ClassifyError("classify with provider openai needs step services (HTTP, secrets, cache)")
        request = self.build_request(event)
        key = self.cache_key(request)
        slot = (ctx.project_id, key)
        task = self._inflight.get(slot)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(self._resolve(ctx.project_id, key, request, services))
            self._inflight[slot] = task
            task.add_done_callback(lambda t: self._forget(slot, t))
        outcome = await asyncio.shield(task)

        if outcome.label is not None:
            how = " (cached)" if outcome.source == "cache" else " (shared call)" if shared else ""
            ctx.notes.append(f"label {outcome.label} from openai{how}")
            set_path(event.payload, self.config.field, outcome.label)
            return event
        failure = outcome.failure or "no answer"
        if self.config.fallback is None:
            raise ClassifyError(f"openai: {failure} (no fallback label is set)", outcome.retry_after)
        ctx.notes.append(f"label {self.config.fallback} (fallback): openai: {failure}")
        set_path(event.payload, self.config.field, self.config.fallback)
        return event

    def _forget(self, slot: tuple[str, str], task: asyncio.Task[Outcome]) -> None:
        if self._inflight.get(slot) is task:
            del self._inflight[slot]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited any more is not logged as lost

    async def _resolve(
        self, project_id: str, key: str, request: ChatRequest, services: StepServices
    ) -> Outcome:
        """Cache, else one provider call; ProviderConfigError (and secret errors) propagate."""
        caching = self.config.cache_ttl > 0
        if caching:
            hit = await self._cache_get(services, project_id, key)
            if hit is not None:
                return Outcome(hit, "cache")
        async with self._semaphore:
            api_key = (
                await services.resolve_secret(project_id, self.config.api_key)
                if self.config.api_key
                else None
            )
            session = await services.http()
            try:
                answer = await chat_completion(
                    session,
                    request,
                    api_key=api_key,
                    timeout=self.config.timeout,
                    allow_private=services.allow_private,
                )
            except ProviderFailure as exc:
                return Outcome(None, "model", str(exc), exc.retry_after)
            except ProviderConfigError as exc:
                raise ClassifyError(f"openai: {exc}") from None
        label = self.parser(answer.content)
        if label is None:
            said = (answer.content or "").strip()
            if len(said) > ANSWER_EXCERPT:
                said = said[:ANSWER_EXCERPT] + "…"
            return Outcome(None, "model", f"model answered outside the labels: {said!r}")
        if caching:
            await self._cache_put(services, project_id, key, label)
        return Outcome(label, "model")

    async def _cache_get(self, services: StepServices, project_id: str, key: str) -> str | None:
        try:
            raw = await services.cache.get(project_id, key)
        except Exception:  # the cache is an optimisation: a store hiccup costs a call, not the event
            log.warning("classify cache read failed; calling the model", exc_info=True)
            return None
        if raw is None:
            return None
        try:
            label = orjson.loads(raw).get("label")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return label if isinstance(label, str) and label in self.config.labels else None

    async def _cache_put(self, services: StepServices, project_id: str, key: str, label: str) -> None:
        value = orjson.dumps({"label": label, "model": self.config.model}).decode()
        try:
            await services.cache.put(project_id, key, value, self.config.cache_ttl)
        except Exception:
            log.warning("classify cache write failed; the label is used but not cached", exc_info=True)

    def summary(self) -> str:
        c = self.config
        source = f"openai {c.model}" if c.provider == "openai" else f"keywords, {len(c.rules)} rules"
        return f"{c.field}: {' | '.join(c.labels)} ({source})"
