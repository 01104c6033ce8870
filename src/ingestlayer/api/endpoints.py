"""Webhook endpoints (``/v1/endpoints``), as in "Webhooks → Add Endpoint".

An endpoint is a pipeline with one ``webhook.out`` destination and a list of event types. With
``auth: hmac`` and no secret given, a signing secret is generated, stored encrypted, and shown
once in the create (or rotate) response. Headers whose values are credentials (an API key the
receiver wants) go in ``secret_headers`` as references to stored secrets, as on ``webhook.out``:
answers show the references, never the values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ingestlayer import clock
from ingestlayer.api.auth import Principal
from ingestlayer.api.deps import Admin, RuntimeDep
from ingestlayer.api.editable import restored
from ingestlayer.api.errors import DATABASE_UNAVAILABLE, ApiError
from ingestlayer.api.json_body import JsonBodyRoute
from ingestlayer.api.manage import master_key_in_use, until_unchanged
from ingestlayer.delivery.signing import generate_secret, validate_standard_secret
from ingestlayer.destinations.webhook_out import header_value_problem, rotating_out
from ingestlayer.ids import new_id
from ingestlayer.pipeline.config import ConfigError, parse_endpoint_destination
from ingestlayer.pipeline.matching import is_valid_pattern
from ingestlayer.records import DestinationRow, PipelineRow, ProjectConfig
from ingestlayer.runtime import Runtime
from ingestlayer.secret_names import endpoint_secret_name, is_endpoint_secret, secret_endpoint
from ingestlayer.store.base import NotFound
from ingestlayer.store.outage_log import OutageLog
from ingestlayer.store.store import DISABLED_DESTINATION_ERROR
from ingestlayer.timefmt import iso, parse_iso
from ingestlayer.urlmask import mask_headers, mask_url_settings

log = logging.getLogger("ingestlayer.api")

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"], route_class=JsonBodyRoute)


# As the dashboard's form caps it: a label for a list, not a place to store documents.
MAX_DESCRIPTION = 500


def _not_empty(secret: str | None) -> str | None:
    # An empty secret signs nothing and authenticates nothing: every delivery would carry a
    # signature anyone can make, or "Authorization: Bearer " with no token. Spaces alone are as
    # easy to guess, and more likely a slip (a template left blank) than a choice.
    if secret is not None and not secret.strip():
        raise ValueError("must not be empty or only spaces: leave it out to keep or generate one")
    return secret


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    events: list[str] = Field(min_length=1, description="Event types or patterns, e.g. invoice.*")
    auth: Literal["none", "bearer", "hmac"] = "hmac"
    secret: str | None = Field(default=None, description="Write-only. Generated for hmac when omitted.")
    signing: Literal["ingestlayer", "standard"] = "ingestlayer"
    format: Literal["ingestlayer", "data"] = "ingestlayer"
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers, shown in answers as written."
    )
    secret_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers whose values are credentials: `ref:NAME` (a secret set with "
        "PUT /v1/secrets/{name}) or `env:VAR`, resolved at send; answers show the references only.",
    )
    timeout: float = 10.0
    retry: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    enabled: bool = True

    _secret = field_validator("secret")(_not_empty)


# The fields a PATCH may set to null: a description is cleared, a retry policy goes back to the
# default one (both are null in GET then). Every other field has no "none" value: a null there
# would reset it to a default (an endpoint signing with Standard Webhooks switched to unsigned)
# or break the endpoint, so it is refused; leave a field out to keep it as it is.
NULLABLE_IN_PATCH = frozenset({"retry", "description"})


class EndpointPatch(BaseModel):
    """The fields to change; those left out stay as they are. Only `description` and `retry`
    may be null (no description; the default retry policy)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    events: list[str] | None = Field(default=None, min_length=1)
    auth: Literal["none", "bearer", "hmac"] | None = None
    secret: str | None = None
    signing: Literal["ingestlayer", "standard"] | None = None
    format: Literal["ingestlayer", "data"] | None = None
    headers: dict[str, str] | None = None
    secret_headers: dict[str, str] | None = None
    timeout: float | None = None
    retry: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    enabled: bool | None = None

    # Runs only for fields sent (defaults are not validated), so a field left out stays None.
    @field_validator("*")
    @classmethod
    def _null_only_where_it_means_something(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None and info.field_name not in NULLABLE_IN_PATCH:
            raise ValueError("cannot be null: leave it out to keep it as it is")
        return v

    _secret = field_validator("secret")(_not_empty)


# How long a rotated-out secret still signs by default: a day to update the receivers, as
# Standard Webhooks providers commonly allow; at most 30 days.
DEFAULT_OVERLAP_SECONDS = 86_400.0
MAX_OVERLAP_SECONDS = 30 * 86_400.0
# Old secrets signing at once beside the current one (each adds a signature to every request).
MAX_PREVIOUS_SECRETS = 10


def _at(ts: float) -> str:
    out = iso(ts)
    assert out is not None
    return out


def _previous(settings: dict[str, Any], now: float) -> list[tuple[str, str, float]]:
    """The rotated-out secrets still signing beside the current one: (ref, ISO end, end), the
    last rotated out first. Each signs until its own end, however many rotations came after
    (stored as webhook.out keeps them, see rotating_out)."""
    secret = settings.get("secret")
    ends = settings.get("rotation_ends_at")
    refs = secret if isinstance(secret, list) else []
    live = []
    for ref, end in rotating_out(refs, ends if isinstance(ends, str | list) else None):
        try:
            t = parse_iso(end)
        except (TypeError, ValueError):
            continue
        if t > now:
            live.append((ref, end, t))
    return live


def _current_name(settings: Mapping[str, Any]) -> str | None:
    """The name of the stored secret the endpoint signs with (or sends) now: the first it names."""
    secret = settings.get("secret")
    ref = secret[0] if isinstance(secret, list) and secret else secret
    return ref.removeprefix("ref:") if isinstance(ref, str) and ref.startswith("ref:") else None


def _new_name(endpoint_id: str, taken: set[str]) -> str:
    """A name for a new secret of the endpoint, none of ``taken``. The value stored under a name
    the configuration refers to never changes: a worker still sending with the configuration of a
    moment ago signs with the secrets it names, never with a new secret alone that no receiver
    has been given yet."""
    base = endpoint_secret_name(endpoint_id)
    if base not in taken:
        return base
    n = 2
    while f"{base}.{n}" in taken:
        n += 1
    return f"{base}.{n}"


def _field_of(path: str) -> str | None:
    """The request's field for a path in the endpoint's destination entry: ``.webhook.out.url``
    is ``url``, ``.retry.schedule`` is ``retry.schedule``; the entry as a whole is none."""
    path = path.lstrip(".")
    if path == "webhook.out":
        return None
    return path.removeprefix("webhook.out.") or None


def _config_error(exc: ConfigError) -> ApiError:
    field = _field_of(exc.path)
    return ApiError(422, f"{field}: {exc.message}" if field else exc.message, field=field)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_old_for: float = Field(
        default=DEFAULT_OVERLAP_SECONDS,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="Seconds the old secret still signs beside the new one (0: stop at once).",
    )


def _needs_secret(spec: dict[str, Any]) -> bool:
    return bool(spec["auth"] != "none" or spec["signing"] == "standard")


def _check_bearer_token(token: str) -> None:
    """A bearer token goes out as ``Authorization: Bearer <token>`` in every request: one that
    HTTP cannot carry would fail each delivery, so it is refused here (never quoted)."""
    problem = header_value_problem(token, tab=False)
    if problem:
        raise ApiError(422, f"secret: the bearer token {problem}", field="secret")


def _check_standard(secret: str, field: str | None, fix: str) -> None:
    """A Standard Webhooks secret must be base64: refuse it here, not at the first delivery."""
    try:
        validate_standard_secret(secret)
    except ValueError as exc:
        raise ApiError(422, f"signing: standard: {exc}{fix}", field=field) from None


def _endpoint_json(p: PipelineRow, d: DestinationRow | None, *, shown: bool = True) -> dict[str, Any]:
    """The endpoint as answers show it (its URL's credentials and inline header values masked), or
    with ``shown=False`` whole, as a change starts from."""
    settings = d.config.get("settings", {}) if d else {}
    previous = _previous(settings, clock.now())
    url = settings.get("url")
    headers = settings.get("headers", {})
    return {
        "id": p.id,
        "url": mask_url_settings(url, "url") if shown else url,
        "events": p.config["source"]["match"],
        "auth": settings.get("auth"),
        "signing": settings.get("signing"),
        "format": settings.get("format"),
        # Inline header values are often credentials whatever their names: shown masked.
        "headers": mask_headers(headers) if shown else headers,
        # References (ref:NAME, env:VAR), never the values they resolve to.
        "secret_headers": settings.get("secret_headers", {}),
        "timeout": settings.get("timeout"),
        # While a rotation lasts, requests carry a signature by each old secret too: until
        # rotation_ends_at, when the last of them stops; each stops at its own signs_until.
        "rotation_ends_at": max(previous, key=lambda p: p[2])[1] if previous else None,
        "previous_secrets": [{"signs_until": end} for _, end, _ in previous],
        "retry": d.config.get("retry") if d else None,
        "description": p.config.get("description"),
        "enabled": p.enabled,
        "destination_id": d.id if d else None,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


async def _check_secret_headers(
    rt: Runtime, project_id: str, endpoint_id: str, secret_headers: Mapping[str, str]
) -> None:
    """A secret header cannot name a secret an endpoint manages (``endpoint-<id>…``, its signing
    secret or bearer token): the endpoint replaces and deletes those itself (a rotated-out one
    when its time is up), which would leave the header naming a secret that is gone, and another
    endpoint's signing key would go out in clear. The value belongs under a name of its own."""
    names = {h: ref[4:] for h, ref in secret_headers.items() if ref.startswith("ref:")}
    if not any(name.startswith("endpoint-") for name in names.values()):
        return
    cfg = await rt.store.load_project_config(project_id)
    for header, name in sorted(names.items()):
        owner = endpoint_id if is_endpoint_secret(name, endpoint_id) else secret_endpoint(name, cfg)
        if owner is not None:
            raise ApiError(
                422,
                f"secret_headers: {header} names ref:{name}, a secret endpoint {owner} manages itself "
                "(it is replaced on rotation and deleted with the endpoint): store the value under "
                "a name of your own with PUT /v1/secrets/{name}",
                field="secret_headers",
            )


@dataclass(frozen=True, slots=True)
class _Loaded:
    pipeline: PipelineRow
    destination: DestinationRow | None
    version: int  # the project's config_version it was read at
    stored: list[str]  # the names of the endpoint's stored secrets (read after the configuration)

    def readable(self) -> None:
        """409 for a change made from the stored configuration (a patch, a rotation), when that
        cannot be read (see rows.stored_config): it would be made from an empty one."""
        unreadable = self.pipeline.unreadable or (self.destination.unreadable if self.destination else None)
        if unreadable is not None:
            endpoint_id = self.pipeline.id
            raise ApiError(
                409,
                f"endpoint {endpoint_id}: {unreadable}; delete it (DELETE /v1/endpoints/{endpoint_id}) "
                "and add it again",
            )

    @property
    def settings(self) -> dict[str, Any]:
        return self.destination.config.get("settings", {}) if self.destination else {}

    def current_name(self) -> str | None:
        """The secret the endpoint signs with (or sends), or, without one (auth: none), the one
        kept from before, which signs again if signing is switched back on."""
        named = _current_name(self.settings)
        if named is not None:
            return named
        return self.stored[0] if len(self.stored) == 1 else None

    def new_name(self) -> str:
        """A name for a new secret of the endpoint: none it has stored or refers to."""
        secret = self.settings.get("secret")
        refs = secret if isinstance(secret, list) else [secret]
        named = {ref.removeprefix("ref:") for ref in refs if isinstance(ref, str)}
        return _new_name(self.pipeline.id, set(self.stored) | named)


def _destination_of(p: PipelineRow, cfg: ProjectConfig) -> DestinationRow | None:
    """An endpoint's destination: its pipeline's only route's; for a pipeline whose stored
    configuration cannot be read (see rows.stored_config), the one named after the endpoint."""
    if p.unreadable is not None:
        return next((d for d in cfg.destinations.values() if d.name == f"endpoint:{p.id}"), None)
    routes = p.config.get("destinations", [])
    return cfg.destinations.get(routes[0]["destination_id"]) if routes else None


async def _load(rt: Runtime, project_id: str, endpoint_id: str) -> _Loaded:
    cfg = await rt.store.load_project_config(project_id)
    for p in cfg.pipelines:
        if p.endpoint and p.id == endpoint_id:
            d = _destination_of(p, cfg)
            stored = [
                s["name"]
                for s in await rt.store.list_secrets(project_id)
                if is_endpoint_secret(s["name"], endpoint_id)
            ]
            return _Loaded(p, d, cfg.version, stored)
    raise ApiError(404, f"no endpoint {endpoint_id!r}")


async def _shown(rt: Runtime, project_id: str, endpoint_id: str) -> dict[str, Any]:
    found = await _load(rt, project_id, endpoint_id)
    return _endpoint_json(found.pipeline, found.destination)


async def _save(
    rt: Runtime,
    project_id: str,
    endpoint_id: str,
    dest_id: str,
    spec: dict[str, Any],
    *,
    current: str,
    new_secret: str | None = None,
    previous: Sequence[tuple[str, str]] = (),
    loaded: _Loaded | None = None,
    drop_current: bool = False,
) -> None:
    """Store the endpoint, and its secrets with it in one transaction, if the configuration is
    still the one ``loaded`` was read at (:class:`Conflict` otherwise). ``current`` names the
    secret it signs with (``new_secret`` its value, when new); ``previous`` are the old secrets
    that still sign, (ref, ISO end). The endpoint's other stored secrets are deleted: those whose
    time is up, and ``current`` too with ``drop_current`` (a bearer token no longer sent)."""
    if new_secret is not None:
        await master_key_in_use(rt)
    for i, pattern in enumerate(spec["events"]):
        if not is_valid_pattern(pattern):
            raise ApiError(
                422, f"events[{i}]: {pattern!r} is not an event type or pattern", field=f"events[{i}]"
            )
    settings = {
        k: spec[k]
        for k in ("url", "auth", "signing", "format", "headers", "secret_headers", "timeout")
        if spec.get(k) is not None
    }
    if not _needs_secret(spec) or spec["auth"] == "bearer":
        previous = ()  # nothing signs: no old secret either
    if _needs_secret(spec):
        settings["secret"] = f"ref:{current}"
        if previous:
            settings["secret"] = [settings["secret"], *(ref for ref, _ in previous)]
            ends = [end for _, end in previous]
            # One old secret keeps the one-time form stored before several could sign.
            settings["rotation_ends_at"] = ends[0] if len(ends) == 1 else ends
    entry = {"webhook.out": settings, "name": f"endpoint:{endpoint_id}"}
    if spec.get("retry") is not None:
        entry["retry"] = spec["retry"]
    try:
        dest = parse_endpoint_destination(entry)
    except ConfigError as exc:
        raise _config_error(exc) from None
    await _check_secret_headers(rt, project_id, endpoint_id, spec.get("secret_headers") or {})
    pipeline_cfg = {
        "description": spec.get("description"),
        "source": {"match": spec["events"]},
        "steps": [],
        "destinations": [{"destination_id": dest_id, "destination": dest.name, "when": None}],
    }
    keep = {ref.removeprefix("ref:") for ref, _ in previous}
    if not drop_current:
        keep.add(current)  # with auth: none too, kept to sign again if signing is switched on
    await rt.store.apply_config(
        project_id,
        [
            {
                "id": dest_id,
                "name": dest.name,
                "kind": dest.kind,
                "config": dest.stored_config(),
                "enabled": spec["enabled"],
            }
        ],
        [
            {
                "id": endpoint_id,
                "name": f"endpoint:{endpoint_id}",
                "config": pipeline_cfg,
                "endpoint": True,
                "enabled": spec["enabled"],
            }
        ],
        expect_version=loaded.version if loaded else None,
        set_secrets={current: rt.box.encrypt(new_secret)} if new_secret is not None else None,
        delete_secrets=[name for name in (loaded.stored if loaded else []) if name not in keep],
    )


@router.post("", status_code=201, summary="Add an endpoint: POST these event types to a URL")
async def create_endpoint(body: EndpointIn, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    endpoint_id = new_id("ep")
    secret = body.secret
    generated = False
    if secret is not None and body.auth == "bearer":
        _check_bearer_token(secret)
    if secret is None and _needs_secret(body.model_dump()):
        if body.auth == "bearer":
            raise ApiError(422, "auth: bearer needs the token as `secret`", field="secret")
        secret, generated = generate_secret(), True
    elif secret is not None and body.signing == "standard":
        _check_standard(secret, "secret", "")
    await _save(
        rt,
        principal.project_id,
        endpoint_id,
        new_id("dst"),
        body.model_dump(),
        current=endpoint_secret_name(endpoint_id),
        new_secret=secret,
    )
    out = await _shown(rt, principal.project_id, endpoint_id)
    if generated:
        out["secret"] = secret  # shown once; store it in your receiver's configuration
    return out


@router.get("", summary="List endpoints")
async def list_endpoints(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    out = []
    for p in cfg.pipelines:
        if p.endpoint:
            out.append(_endpoint_json(p, _destination_of(p, cfg)))
    return {"data": out}


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return await _shown(rt, principal.project_id, endpoint_id)


@router.patch("/{endpoint_id}", summary="Update, disable (enabled: false) or re-enable an endpoint")
async def update_endpoint(
    endpoint_id: str, body: EndpointPatch, principal: Admin, rt: RuntimeDep
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    given = changes.pop("secret", None)
    project_id = principal.project_id

    # Read, decide and write again from a fresh read when another change to the project
    # commits in between (a rotation, another patch): neither is lost, nor its secrets.
    async def change() -> tuple[dict[str, Any], str | None, str]:
        found = await _load(rt, project_id, endpoint_id)
        found.readable()
        current = _endpoint_json(found.pipeline, found.destination, shown=False)
        # A rotation goes on through a patch: the old secrets still sign, each until its end.
        previous = [(ref, end) for ref, end, _ in _previous(found.settings, clock.now())]
        spec = {**current, **restored(changes, current)}  # the URL as it was shown is the stored one
        secret, generated = given, False
        name = found.current_name()
        # The stored secret of a bearer endpoint is the receiver's token, sent in clear in every
        # request: once the endpoint stops sending it, it must never become a signing key.
        leaves_bearer = current["auth"] == "bearer" and spec["auth"] != "bearer"
        if secret is not None:
            if spec["auth"] == "bearer":
                _check_bearer_token(secret)
            if spec["signing"] == "standard":
                _check_standard(secret, "secret", "")
            previous = []  # a secret set by hand replaces the old ones at once
        elif _needs_secret(spec):
            # Switching to auth or signing that needs a secret: the one already stored, if any (an
            # endpoint created with auth: none has none), must suit it; else one is made, as on
            # create. A bearer token is the receiver's own, never a signing secret reused.
            if spec["auth"] == "bearer" and current["auth"] != "bearer":
                raise ApiError(422, "auth: bearer needs the token as `secret`", field="secret")
            stored = None if leaves_bearer or name is None else await rt.store.get_secret(project_id, name)
            if stored is None:
                secret, generated = generate_secret(), True
            elif spec["signing"] == "standard":
                _check_standard(
                    rt.box.decrypt(stored),
                    "signing" if "signing" in changes else "secret",
                    "; send a new `secret` or rotate it (POST …/rotate-secret)",
                )
        if secret is not None or name is None:
            # Under a name of its own: the old name keeps its value while anything still uses it.
            name = found.new_name()
        dest_id = found.destination.id if found.destination else new_id("dst")
        await _save(
            rt,
            project_id,
            endpoint_id,
            dest_id,
            spec,
            current=name,
            new_secret=secret,
            previous=previous,
            loaded=found,
            # Now unused (auth: none, unsigned): dropped, so that a later switch to signing makes
            # a new secret instead of signing with the token.
            drop_current=leaves_bearer and secret is None,
        )
        return spec, secret if generated else None, dest_id

    spec, generated_secret, dest_id = await until_unchanged(rt.store, principal.project_id, change)
    if not spec["enabled"]:
        # Disabled: what waits for an attempt ends now, as the dispatcher would end it at that
        # attempt, instead of staying "retrying" for hours. Replayable once re-enabled.
        await rt.store.end_waiting_deliveries(project_id, dest_id, DISABLED_DESTINATION_ERROR)
    out = await _shown(rt, project_id, endpoint_id)
    if generated_secret is not None:
        out["secret"] = generated_secret  # shown once, as on create
    return out


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="Replace the signing secret; the new one is shown once, the old one still signs for a while",
)
async def rotate_secret(
    endpoint_id: str, principal: Admin, rt: RuntimeDep, body: RotateIn | None = None
) -> dict[str, Any]:
    keep_for = (body or RotateIn()).keep_old_for
    project_id = principal.project_id

    async def change() -> str:
        found = await _load(rt, project_id, endpoint_id)
        found.readable()
        current = _endpoint_json(found.pipeline, found.destination, shown=False)
        if current["auth"] == "bearer":
            raise ApiError(409, "bearer endpoints carry your token: set a new one with PATCH {secret}")
        now = clock.now()
        # The secrets rotated out before still sign, each until its own end; keep_old_for 0 cuts
        # over at once: only the new secret signs, and every old one stops now.
        live = _previous(found.settings, now) if keep_for > 0 else []
        previous = [(ref, end) for ref, end, _ in live]
        signing = _current_name(found.settings)
        if keep_for > 0 and signing is not None and _needs_secret(current):
            if len(live) >= MAX_PREVIOUS_SECRETS:
                last = max(t for _, _, t in live)
                raise ApiError(
                    409,
                    f"{len(live)} old secrets still sign beside the current one (the last until "
                    f"{_at(last)}): rotate with keep_old_for 0 to cut over at once, or wait",
                )
            # The secret signing now goes on signing, under its own name, until its end.
            previous.insert(0, (f"ref:{signing}", _at(now + keep_for)))
        secret = generate_secret()
        current["auth"] = (
            "hmac" if current["auth"] == "none" and current["signing"] != "standard" else current["auth"]
        )
        await _save(
            rt,
            project_id,
            endpoint_id,
            found.destination.id if found.destination else new_id("dst"),
            current,
            current=found.new_name(),
            new_secret=secret,
            previous=previous,
            loaded=found,
        )
        return secret

    secret = await until_unchanged(rt.store, principal.project_id, change)
    saved = await _shown(rt, project_id, endpoint_id)
    return {
        "id": endpoint_id,
        "secret": secret,
        "rotation_ends_at": saved["rotation_ends_at"],
        "previous_secrets": saved["previous_secrets"],
    }


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, principal: Admin, rt: RuntimeDep) -> Response:
    async def change() -> None:
        found = await _load(rt, principal.project_id, endpoint_id)
        # Its deliveries waiting for an attempt end as dead at once ("destination was deleted"),
        # in every worker's view; their logs stay. Its signing secrets go with it, the old ones
        # still signing too (none for auth: none).
        await rt.store.apply_config(
            principal.project_id,
            [],
            [],
            delete_pipeline_ids=[found.pipeline.id],
            delete_destination_ids=[found.destination.id] if found.destination else [],
            expect_version=found.version,
            delete_secrets=found.stored,
        )

    await until_unchanged(rt.store, principal.project_id, change)
    return Response(status_code=204)


# ---- rotations that have ended --------------------------------------------------------------

# How often an api process looks for endpoints whose rotated-out secrets have stopped signing.
ROTATION_SWEEP_SECONDS = 300.0


def _finished_rotations(settings: Mapping[str, Any], now: float) -> bool:
    """Whether one of the endpoint's rotated-out secrets has stopped signing (and is still kept)."""
    secret = settings.get("secret")
    refs = secret if isinstance(secret, list) else []
    return len(rotating_out(refs, settings.get("rotation_ends_at"))) > len(_previous(dict(settings), now))


async def drop_finished_rotations(rt: Runtime, project_id: str) -> int:
    """Save again each endpoint of the project whose rotated-out secrets have stopped signing, as
    any change to it would: its configuration then names only the secrets that still sign, and
    the others are deleted. They used to stay stored, unused, until the endpoint's next change.
    Returns how many endpoints were saved."""
    cfg = await rt.store.load_project_config(project_id)
    now = clock.now()
    saved = 0
    for p in cfg.pipelines:
        routes = p.config.get("destinations", [])
        dest = cfg.destinations.get(routes[0]["destination_id"]) if p.endpoint and routes else None
        if dest is not None and _finished_rotations(dest.config.get("settings", {}), now):
            await update_endpoint(p.id, EndpointPatch(), Principal(project_id, "admin"), rt)
            saved += 1
    return saved


async def sweep_finished_rotations(rt: Runtime) -> None:
    """Every ROTATION_SWEEP_SECONDS, :func:`drop_finished_rotations` for every project. Several
    api processes may sweep at once: a save is made against the configuration it read, and
    the second finds nothing left to drop."""
    outage = OutageLog(log, "dropping ended secret rotations", every=ROTATION_SWEEP_SECONDS)
    while not rt.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), ROTATION_SWEEP_SECONDS)
        if rt.stop.is_set():
            return
        try:
            for project in await rt.store.list_projects():
                try:
                    await drop_finished_rotations(rt, project["id"])
                except (ApiError, NotFound) as exc:  # deleted meanwhile, or its configuration refused
                    log.warning("dropping the ended rotations of project %s failed: %s", project["id"], exc)
        except DATABASE_UNAVAILABLE as exc:
            outage.failed(exc, f"the next try in {ROTATION_SWEEP_SECONDS:.0f} s")
        else:
            outage.succeeded()
