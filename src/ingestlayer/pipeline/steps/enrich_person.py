"""``enrich.person`` (ENR): an email address → company, role and country.

Resolved in this order, first answer wins for each field:
1. the user's traits (``POST /v1/identify``), found by ``user_id`` in the event;
2. the company entity keyed by the email's domain (``PUT /v1/entities/company/acme.com``) —
   never for free-mail domains (gmail.com and the like), which name no company;
3. an optional HTTP lookup provider you bring, cached in the store for ``cache_ttl``.

Example::

    steps:
      - enrich.person:
          from: email
          attach: [company, role, country]
          provider:
            url: https://people.example.com/lookup?email={email}
            headers: { Authorization: "Bearer $secret" }
            secret: ref:people-api
            mapping: { company: company.name, role: person.title, country: company.country }
            timeout: 3
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingestlayer.delivery.egress import EgressPolicy
from ingestlayer.delivery.retry import parse_retry_after
from ingestlayer.destinations.shared import check_reference, credential_forms, scrub_forms, url_credentials
from ingestlayer.destinations.webhook_out import header_problem
from ingestlayer.pipeline.event import Drop, PipelineEvent, RetryLater, StepConfig, StepContext
from ingestlayer.pipeline.paths import get_path, set_path
from ingestlayer.pipeline.steps.capped_body import AnswerTooLarge, read_capped
from ingestlayer.stored_config import reading_stored
from ingestlayer.urlcheck import http_url_problem

FREE_MAIL = frozenset(
    [
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "ymail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "outlook.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "mail.com",
        "mail.ru",
        "yandex.ru",
        "yandex.com",
        "zoho.com",
        "fastmail.com",
        "hey.com",
        "tutanota.com",
        "qq.com",
        "163.com",
        "126.com",
        "naver.com",
        "daum.net",
        "seznam.cz",
        "wp.pl",
        "o2.pl",
        "libero.it",
        "orange.fr",
        "free.fr",
        "laposte.net",
        "t-online.de",
        "comcast.net",
        "verizon.net",
        "att.net",
    ]
)
COMPANY_FIELDS = {"company": "name"}  # company entity trait names that differ from the attached field


def company_domain(text: str) -> str:
    """A domain as companies are keyed by it: ``Initech.COM.`` and ``initech.com`` are one."""
    return text.strip().rstrip(".").lower()


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="GET this URL; `{email}` and `{domain}` are replaced (URL-encoded).")
    headers: dict[str, str] = Field(default_factory=dict, description="`$secret` in a value is replaced.")
    secret: str | None = Field(default=None, description="ref:NAME or env:VAR, substituted for $secret.")
    mapping: dict[str, str] = Field(description="Attached field → dotted path in the JSON response.")
    timeout: float = Field(default=3.0, gt=0, le=30)
    cache_ttl: float = Field(default=86400.0, ge=0, description="Seconds to reuse an answer; 0 disables.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # The placeholders are replaced URL-encoded, so the URL as written is checked. Stored
        # ones predate this check: a bad one fails its lookups, as it did, rather than taking
        # its whole pipeline out of routing.
        problem = None if reading_stored() else http_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("headers")
    @classmethod
    def _sendable(cls, v: dict[str, str]) -> dict[str, str]:
        # Refused here, naming the field, instead of failing every lookup (the HTTP client
        # refuses such a header); a masked value, as answers show one, would fail the same way.
        # Stored ones predate this check and fail their lookups as they did.
        if reading_stored():
            return v
        for name, value in v.items():
            problem = header_problem(name, value)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("secret")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return v if v is None else check_reference("secret", v, "secret")


class LookupFailed(RetryLater):
    """The lookup provider answered with an error."""


class EnrichPersonConfig(StepConfig):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    from_: str = Field(default="email", alias="from", description="Payload path holding the email address.")
    attach: list[str] = Field(default_factory=lambda: ["company", "role", "country"], min_length=1)
    user_field: str = Field(
        default="user_id", description="Payload path of the user id, for identify traits."
    )
    into: str | None = Field(default=None, description="Attach under this key instead of at the top level.")
    overwrite: bool = Field(default=False, description="Replace values the sender already set.")
    free_mail_domains: list[str] = Field(default_factory=list, description="Added to the built-in list.")
    provider: ProviderConfig | None = None


class EnrichPerson:
    name: ClassVar[str] = "enrich.person"
    kind: ClassVar[str] = "ENR"
    # Waits on a database or a provider: the router runs such events concurrently.
    performs_io: ClassVar[bool] = True
    config_model: ClassVar[type[BaseModel]] = EnrichPersonConfig

    def __init__(self, config: EnrichPersonConfig) -> None:
        self.config = config
        # Compared with the domain as taken from an address: "Mail.Example." is mail.example.
        self.free_mail = FREE_MAIL | {company_domain(d) for d in config.free_mail_domains}
        # Lookups in flight, so events routed together for one address share one request.
        self._inflight: dict[tuple[str, str], asyncio.Task[dict[str, Any]]] = {}

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop:
        cfg = self.config
        if ctx.services is None:
            raise RuntimeError("enrich.person needs the entity store")
        email = get_path(event.payload, cfg.from_)
        found: dict[str, Any] = {}
        domain = None
        if isinstance(email, str) and "@" in email:
            domain = company_domain(email.rsplit("@", 1)[1])
        else:
            ctx.notes.append(f"no email at {cfg.from_}")
        user_id = get_path(event.payload, cfg.user_field)
        if user_id is not None and not isinstance(user_id, (dict, list)):
            traits = await ctx.services.entities.get(ctx.project_id, "user", str(user_id)) or {}
            for name in cfg.attach:
                if traits.get(name) is not None:
                    found[name] = traits[name]
        from_user = set(found)  # what the user was identified with wins over any guess below
        if domain:
            if domain in self.free_mail:
                ctx.notes.append(f"{domain} is a free-mail domain: no company")
            else:
                company = await ctx.services.entities.get(ctx.project_id, "company", domain)
                if company is None:
                    ctx.notes.append(f"no company entity for {domain}")
                else:
                    for name in cfg.attach:
                        value = company.get(COMPANY_FIELDS.get(name, name), company.get(name))
                        if value is not None:
                            found.setdefault(name, value)
            missing = [n for n in cfg.attach if n not in found]
            if cfg.provider is not None and missing and isinstance(email, str):
                looked_up = await self._lookup(email, domain, ctx)
                for name in missing:
                    if looked_up.get(name) is not None:
                        found[name] = looked_up[name]
        if domain in self.free_mail and "company" not in from_user:
            found["company"] = None
        for name in cfg.attach:
            path = f"{cfg.into}.{name}" if cfg.into else name
            if not cfg.overwrite and get_path(event.payload, path) is not None:
                continue
            set_path(event.payload, path, found.get(name))
        return event

    async def _lookup(self, email: str, domain: str, ctx: StepContext) -> dict[str, Any]:
        key = (ctx.project_id, email.lower())
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(email, domain, ctx))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        else:
            ctx.notes.append("shared a lookup in flight")
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str], task: asyncio.Task[dict[str, Any]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            # Retrieved: a lookup whose waiters are gone (a shutdown that gave their events back)
            # failed for nobody, and was logged as "Task exception was never retrieved" each.
            task.exception()

    async def _fetch(self, email: str, domain: str, ctx: StepContext) -> dict[str, Any]:
        provider = self.config.provider
        assert provider is not None and ctx.services is not None
        # The provider as configured, headers and secret reference included: two pipelines that
        # call it with different keys (accounts, plans) do not share each other's answers.
        called_as = [provider.url, provider.mapping, sorted(provider.headers.items()), provider.secret]
        key = "enrich.person:" + hashlib.sha256(orjson.dumps([*called_as, email.lower()])).hexdigest()
        if provider.cache_ttl:
            cached = await ctx.services.cache.get(ctx.project_id, key)
            if cached is not None:
                ctx.notes.append("provider answer from cache")
                loaded: dict[str, Any] = orjson.loads(cached)
                return loaded
        url = provider.url.replace("{email}", quote(email, safe="")).replace(
            "{domain}", quote(domain, safe="")
        )
        EgressPolicy(allow_private=ctx.services.allow_private).check_url(url)
        headers = dict(provider.headers)
        secret = None
        if provider.secret:
            secret = await ctx.services.resolve_secret(ctx.project_id, provider.secret)
            headers = {k: v.replace("$secret", secret) for k, v in headers.items()}
        # Kept out of any message, as the dashboard keeps them out of the step's settings: an
        # error page may echo the request (its headers, its URL, the Basic authorization made
        # from the URL's user:password).
        forms = credential_forms(
            [*([secret] if secret else []), *headers.values(), *url_credentials(provider.url)]
        )
        session = await ctx.services.http()
        try:
            # No redirects: the egress check above saw only this URL, and a redirect to an
            # internal address (an IP literal skips the guarded resolver) would be followed.
            async with session.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=provider.timeout),
                allow_redirects=False,
            ) as resp:
                if resp.status == 404:
                    result: dict[str, Any] = {}
                elif resp.status != 200:
                    busy = resp.status in (429, 503)
                    raise LookupFailed(
                        f"lookup provider {urlsplit(url).hostname} answered HTTP {resp.status}",
                        parse_retry_after(resp.headers.get("Retry-After")) if busy else None,
                    )
                else:
                    result = self._mapped(await read_capped(resp), provider.mapping, url, forms)
        except AnswerTooLarge as exc:
            raise RuntimeError(f"lookup provider {urlsplit(url).hostname}: {exc}") from None
        except TimeoutError:
            raise RuntimeError(
                f"lookup provider {urlsplit(url).hostname} did not answer within {provider.timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise RuntimeError(
                f"lookup provider {urlsplit(url).hostname} failed: {type(exc).__name__}"
            ) from None
        if provider.cache_ttl:
            await ctx.services.cache.put(
                ctx.project_id, key, orjson.dumps(result).decode(), provider.cache_ttl
            )
        ctx.notes.append("provider looked up")
        return result

    @staticmethod
    def _mapped(raw: bytes, mapping: dict[str, str], url: str, forms: list[str]) -> dict[str, Any]:
        """The mapped fields of a JSON object answer. Anything else (an HTML error page served
        with 200, a bare list) is a failed lookup, so it is neither cached nor read as "nobody"."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            # Scrubbed before it is cut: a credential at the cut is not left in part.
            excerpt = scrub_forms(raw.decode("utf-8", "replace"), forms)[:80]
            raise RuntimeError(
                f"lookup provider {urlsplit(url).hostname} answered 200 without a JSON object: {excerpt!r}"
            )
        return {name: get_path(body, path) for name, path in mapping.items()}

    def summary(self) -> str:
        return f"{self.config.from_} → " + " · ".join(self.config.attach)
