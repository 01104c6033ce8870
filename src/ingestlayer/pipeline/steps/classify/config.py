"""``classify`` configuration: the label schema, the provider, and the limits around it."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ingestlayer.destinations.shared import check_reference
from ingestlayer.pipeline.event import StepConfig
from ingestlayer.stored_config import reading_stored
from ingestlayer.urlcheck import HTTP_URL_REQUIRED, http_url_problem

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_TOKENS = 32
DEFAULT_CACHE_TTL = 7 * 86400.0
MAX_LABEL_CHARS = 100

PATH_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_LABEL_SPLIT = re.compile(r"\s*[|,]\s*")
# Request keys the step owns; `extra_body` may not replace them.
RESERVED_BODY_KEYS = frozenset({"model", "messages", "stream", "n"})
OPENAI_FIELDS = (
    "base_url",
    "model",
    "api_key",
    "prompt",
    "system",
    "temperature",
    "max_tokens",
    "response_format",
    "extra_body",
)
KEYWORDS_FIELDS = ("rules", "default")


def _label_list(v: Any) -> Any:
    """`labels` as a list; also accepts the recipe card's ``"low | high | critical"``."""
    if isinstance(v, str):
        return [p for p in _LABEL_SPLIT.split(v.strip()) if p]
    if isinstance(v, list):
        for item in v:
            if isinstance(item, bool) or item is None:
                raise ValueError(
                    f"labels must be text, got {item!r}: quote yes/no/on/off/true/false/null in YAML"
                )
            if not isinstance(item, str):
                raise ValueError(f"labels must be text, got {item!r}; quote it in YAML")
    return v


def _check_label(value: str | None, labels: list[str] | None, what: str) -> str | None:
    if value is None or labels is None:
        return value
    if value not in labels:
        raise ValueError(f"{what} {value!r} is not one of the labels: {', '.join(labels)}")
    return value


class KeywordRule(BaseModel):
    """One rule of the built-in keyword model: ``label`` when any phrase occurs in ``fields``."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="The label this rule assigns; one of the step's `labels`.")
    any: list[str] = Field(
        min_length=1,
        description="Words or phrases; the rule matches when any of them occurs as a whole word "
        "(case-insensitive, any run of whitespace matches a space).",
    )
    fields: list[str] | None = Field(
        default=None,
        description="Where to look, as `$event` paths without the prefix (`subject`, "
        "`payload.body`, `type`). Omitted: every text value in the payload.",
    )

    @field_validator("any")
    @classmethod
    def _phrases(cls, v: list[str]) -> list[str]:
        out = [" ".join(p.split()) for p in v]
        if any(not p for p in out):
            raise ValueError("phrases must not be empty")
        return out

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("fields must name at least one field (or be left out: the whole payload)")
            for p in v:
                if not PATH_RE.fullmatch(p):
                    raise ValueError(f"{p!r} is not a dotted field path")
        return v


class ClassifyConfig(StepConfig):
    """Configuration of the ``classify`` step (ENR): one label from a fixed set, per event.

    Example::

        steps:
          - classify:
              field: urgency
              labels: [low, high, critical]
              fallback: low
              provider: openai
              base_url: https://api.openai.com/v1
              model: gpt-4o-mini
              api_key: ref:openai
              system: You triage support tickets for Acme.
              prompt: |
                Customer tier: $event.customer_tier
                Subject: $event.subject

                $event.body
              timeout: 10
          - classify:
              field: topic
              labels: [billing, bug, other]
              provider: keywords
              rules:
                - { label: billing, any: [invoice, refund, charged twice], fields: [subject, body] }
                - { label: bug, any: [error, broken, "doesn't work"] }
              default: other
          - filter.match: urgency = critical
    """

    field: str = Field(
        description="The payload field the label is written to (a dotted path, e.g. `urgency` "
        "or `triage.urgency`)."
    )
    labels: list[str] = Field(
        description="The allowed labels, at least two (`[low, high, critical]`, or the string "
        '`"low | high | critical"`). The step only ever writes one of these.'
    )
    fallback: str | None = Field(
        default=None,
        description="The label written when the provider fails (timeout, connection error, 429, 5xx, "
        "an unreadable response) or answers outside the labels; one of `labels`. Without it such "
        "a failure is a step error and `on_error` applies.",
    )
    provider: Literal["openai", "keywords"] = Field(
        description="`openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, "
        "LM Studio, llama.cpp, …). `keywords`: the built-in rule model (`rules`, `default`)."
    )

    # ---- provider: openai ------------------------------------------------------------------------
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="openai: the API base; the step POSTs to `{base_url}/chat/completions`. Private "
        "and loopback hosts are refused unless private destinations are allowed.",
    )
    model: str | None = Field(default=None, description="openai: the model name (required).")
    api_key: str | None = Field(
        default=None,
        description="openai: `ref:NAME` (a stored secret) or `env:VAR`, never the key itself; sent "
        "as `Authorization: Bearer …`. Omit it for local servers that need no key.",
    )
    prompt: str | None = Field(
        default=None,
        description="openai: the user message (required), a template: `$event.subject`, "
        "`$event.payload.body`, `$event.type`, `${event.a.b}`; a missing field renders empty. "
        "Only what the prompt uses is sent to the model.",
    )
    system: str | None = Field(
        default=None,
        description="openai: your own instructions (a template too), placed before the step's "
        "instruction listing the labels and asking for exactly one of them.",
    )
    temperature: float | None = Field(
        default=0.0,
        ge=0,
        le=2,
        description="openai: sampling temperature; `null` leaves it out of the request (for models "
        "that only accept their default).",
    )
    max_tokens: int | None = Field(
        default=DEFAULT_MAX_TOKENS,
        ge=1,
        le=4096,
        description="openai: cap on the answer's length; `null` leaves it out of the request.",
    )
    response_format: Literal["text", "json_schema"] = Field(
        default="text",
        description="openai: `text` asks for the bare label (works with every compatible server); "
        '`json_schema` also sends a JSON schema `{"label": <one of labels>}` for servers with '
        "structured outputs (OpenAI, vLLM, Ollama ≥ 0.5, llama.cpp), which constrains the answer.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="openai: extra request fields passed through as they are "
        '(`{"max_completion_tokens": 64}`, `{"top_p": 1}`); may not set model, messages, stream, n.',
    )

    # ---- provider: keywords ----------------------------------------------------------------------
    rules: list[KeywordRule] = Field(
        default_factory=list,
        description="keywords: ordered rules `{label, any: [phrases], fields: [paths]}`; the first "
        "rule with a match wins (required, at least one).",
    )
    default: str | None = Field(
        default=None,
        description="keywords: the label when no rule matches; one of `labels`. Defaults to `fallback`.",
    )

    # ---- limits ----------------------------------------------------------------------------------
    timeout: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Seconds one provider call may take (connect to last byte); then `fallback`.",
    )
    cache_ttl: float = Field(
        default=DEFAULT_CACHE_TTL,
        ge=0,
        description="Seconds a label is reused for an identical request (default 7 days); 0 disables "
        "the cache. The cache lives in the database, shared by every worker and kept across restarts.",
    )
    max_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Provider calls this step makes at once, per worker; more wait their turn.",
    )

    @field_validator("field")
    @classmethod
    def _field(cls, v: str) -> str:
        if not PATH_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a dotted field path (e.g. urgency or triage.urgency)")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_in(cls, v: Any) -> Any:
        return _label_list(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        out = [label.strip() for label in v]
        seen: set[str] = set()
        for label in out:
            if not label:
                raise ValueError("labels must not be empty")
            if len(label) > MAX_LABEL_CHARS or "\n" in label:
                raise ValueError(
                    f"label {label[:40]!r}… must be one line of at most {MAX_LABEL_CHARS} characters"
                )
            if label.casefold() in seen:
                raise ValueError(f"label {label!r} is listed twice (labels are compared case-insensitively)")
            seen.add(label.casefold())
        if len(out) < 2:
            raise ValueError("classify needs at least 2 labels")
        return out

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _check_label(v, info.data.get("labels"), "fallback")

    @field_validator("default")
    @classmethod
    def _default(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _check_label(v, info.data.get("labels"), "default")

    @field_validator("rules")
    @classmethod
    def _rules(cls, v: list[KeywordRule], info: ValidationInfo) -> list[KeywordRule]:
        for i, rule in enumerate(v):
            _check_label(rule.label, info.data.get("labels"), f"rules[{i}].label")
        return v

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, v: str | None) -> str | None:
        return v if v is None else check_reference("api_key", v, "key")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        url = v.strip()  # the spaces around it are dropped; those inside are refused below
        # Checked as every URL ingestlayer calls is, in words that never quote it: a base_url may
        # carry a password (sent as Authorization: Basic), which a 422 repeated.
        problem = http_url_problem(url)
        if problem == HTTP_URL_REQUIRED:
            problem += f", such as {DEFAULT_BASE_URL}"
        if problem:
            raise ValueError(f"base_url {problem}")
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ValueError("base_url must not carry a query or fragment")
        return url.rstrip("/")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("model must not be empty")
        return v

    @field_validator("extra_body")
    @classmethod
    def _extra_body(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(RESERVED_BODY_KEYS & set(v))
        if clash:
            raise ValueError(f"extra_body may not set {', '.join(clash)}; the step sets those")
        return v

    def _other_provider_fields(self, names: tuple[str, ...]) -> list[str]:
        """The fields of the other provider, ``names``, that this configuration sets.

        Written by hand, any of them is a mistake, even an empty one (``rules: []`` under
        ``provider: openai`` would silently change nothing). The form the server stores and
        ``GET`` shows carries every field, the other provider's at their defaults, and must stay
        valid (it is read again, and sent back with ``PUT``): there, and in a configuration read
        back from the database, only values that differ from the defaults are refused.
        """
        fields = type(self).model_fields
        changed = [n for n in names if getattr(self, n) != fields[n].get_default(call_default_factory=True)]
        given = [n for n in names if n in self.model_fields_set]
        if reading_stored() or len(given) == len(names):
            return changed
        return given

    @model_validator(mode="after")
    def _provider_fields(self) -> ClassifyConfig:
        if self.provider == "openai":
            if not self.model:
                raise ValueError("provider openai needs `model`")
            if not self.prompt or not self.prompt.strip():
                raise ValueError("provider openai needs `prompt` (the user message, with $event.* fields)")
            other, owner = self._other_provider_fields(KEYWORDS_FIELDS), "keywords"
        else:
            if not self.rules:
                raise ValueError("provider keywords needs `rules` (at least one)")
            if self.default is None and self.fallback is None:
                raise ValueError(
                    "provider keywords needs `default` (or `fallback`): the label when no rule matches"
                )
            other, owner = self._other_provider_fields(OPENAI_FIELDS), "openai"
        if other:
            # Reported at the (first) field, so the error's path points at the line to remove.
            verb = "applies" if len(other) == 1 else "apply"
            message = f"{', '.join(other)} {verb} only to provider {owner}, not {self.provider}"
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("other_provider_field", message),
                        loc=(other[0],),
                        input=getattr(self, other[0]),
                    )
                ],
            )
        return self

    def chat_url(self) -> str:
        if self.base_url.endswith("/chat/completions"):
            return self.base_url
        return self.base_url + "/chat/completions"
