"""Management API (admin key): apply, pipelines, destinations, secrets, keys."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ingestlayer.api.deps import Admin, RuntimeDep
from ingestlayer.api.editable import destination_input, pipeline_input
from ingestlayer.api.errors import ApiError, too_deep_error, unreadable_json_error
from ingestlayer.api.json_body import JsonBodyRoute
from ingestlayer.api.render import destination_json, pipeline_json
from ingestlayer.config import FALSE_WORDS, TRUE_WORDS
from ingestlayer.delivery.dispatcher import env_readable
from ingestlayer.pipeline.apply import Plan, apply_plan, plan
from ingestlayer.pipeline.config import ConfigError, parse_config
from ingestlayer.records import ProjectConfig
from ingestlayer.secret_names import SECRET_NAME, SECRET_NAME_RULE, secret_endpoint
from ingestlayer.secretbox import MasterKeyMismatch
from ingestlayer.store.store import Conflict, NotFound, Store
from ingestlayer.timefmt import iso
from ingestlayer.validation_messages import error_message
from ingestlayer.yaml_config import ALIAS_EXPANSION, AliasExpansionError, load_config_yaml, yaml_problem

if TYPE_CHECKING:
    from ingestlayer.runtime import Runtime

# Plans made again when another change commits between a plan and its apply.
APPLY_ATTEMPTS = 5

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["manage"], route_class=JsonBodyRoute)


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: dict[str, Any] = Field(description="The configuration: pipelines, destinations, sources.")
    dry_run: bool = False
    prune: bool = Field(default=False, description="Delete pipelines and destinations not in the document.")


def config_error(exc: ConfigError, within: str = "") -> ApiError:
    """The 422 for a configuration error; ``within`` is the path of the request body in the
    document it was applied as (``pipelines[0]``), left out of the field the error names."""
    path = exc.path
    if within and (path == within or path.startswith((f"{within}.", f"{within}["))):
        path = path[len(within) :].removeprefix(".")
    return ApiError(422, f"{path}: {exc.message}" if path else exc.message, field=path or None)


async def until_unchanged(store: Store, project_id: str, change: Callable[[], Awaitable[T]]) -> T:
    """Run ``change``, which reads the configuration, checks what it needs and writes only if
    the configuration is still the version it read (:class:`Conflict` otherwise); again from a
    fresh read when another change committed in between, and a 409 after APPLY_ATTEMPTS.

    One project's changes take turns within a process (one store), so only other processes'
    changes can conflict; those are tried again after a short random wait that doubles each
    time. Without either, eight requests at once made a third of them 409."""
    async with store.config_change_lock(project_id):
        for attempt in range(APPLY_ATTEMPTS):
            try:
                return await change()
            except Conflict:
                if attempt + 1 < APPLY_ATTEMPTS:
                    await asyncio.sleep(random.uniform(0, CONFLICT_WAIT_SECONDS * 2**attempt))
    message = "the configuration kept changing during the change; try again"
    raise ApiError(409, message, headers={"Retry-After": "1"})


CONFLICT_WAIT_SECONDS = 0.01


def referenced_secrets(document: Any, scheme: str = "ref") -> set[str]:
    """The secrets a configuration document names, as ``ref:NAME`` (or, with ``scheme="env"``,
    ``env:VAR``) values anywhere in it (webhook secrets, secret headers, API keys, hash keys)."""
    prefix = f"{scheme}:"
    names: set[str] = set()
    pending = [document]
    while pending:  # a loop, not recursion: the document's depth is the user's
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif (
            isinstance(value, str)
            and value.startswith(prefix)
            and SECRET_NAME.fullmatch(value[len(prefix) :])
        ):
            names.add(value[len(prefix) :])
    return names


async def run_apply(
    store: Store,
    project_id: str,
    document: Any,
    *,
    dry_run: bool,
    prune: bool,
    within: str = "",
    env_allowed: Sequence[str] = (),
) -> dict[str, Any]:
    """Plan a configuration document against the project's, and apply it unless ``dry_run``.
    ``env_allowed``: the variables ``env:`` references may read (INGESTLAYER_ENV_SECRETS), to
    name those that will not be readable."""
    try:
        # Off the event loop: a document within the request limit (thousands of pipelines) takes
        # seconds to validate, and ingest must not wait for it.
        cfg = await asyncio.to_thread(parse_config, document)
    except ConfigError as exc:
        raise config_error(exc, within) from None

    async def plan_and_apply() -> Plan:
        try:
            p = await plan(store, project_id, cfg, prune=prune)
        except ConfigError as exc:
            raise config_error(exc, within) from None
        if not dry_run:
            # Whole, or planned again: never mixed with a change that committed meanwhile.
            await apply_plan(store, p)
        return p

    p = await until_unchanged(store, project_id, plan_and_apply)
    changes = []
    for c in p.changes:
        # What a dry run would create has no id yet: the apply makes its own.
        made = None if dry_run and c.action == "create" else c.id
        change: dict[str, Any] = {"action": c.action, "kind": c.kind, "name": c.name, "id": made}
        change["diff"] = c.diff
        if c.kind == "source" and c.action != "delete":
            change["ingress_path"] = f"/v1/ingress/{made}" if made else None
        changes.append(change)
    # Accepted (a secret may be set after its configuration), but said: until it is set, every
    # delivery or step that needs it fails and retries.
    stored = {s["name"] for s in await store.list_secrets(project_id)}
    missing = sorted(referenced_secrets(document) - stored)
    # Likewise env: references the server will not let pipelines read: accepted, but said.
    unreadable = sorted(v for v in referenced_secrets(document, "env") if not env_readable(v, env_allowed))
    return {
        "dry_run": dry_run,
        "summary": p.summary(),
        "changes": changes,
        "missing_secrets": missing,
        "unreadable_env": unreadable,
    }


def query_flag(request: Request, name: str) -> bool:
    """A yes/no query parameter. A word that is neither is refused: read as "no", a
    ``?dry_run=True`` applied the document for real, and ``?prune=yes`` would be ignored."""
    value = request.query_params.get(name)
    if value is None:
        return False
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ApiError(422, f"{name} must be true or false (1/0, yes/no, on/off), not {value!r}", field=name)


@router.post(
    "/apply", summary="Apply a configuration document (JSON, or YAML with Content-Type application/yaml)"
)
async def apply_document(request: Request, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # Read before the body, so a mistyped flag is refused before anything is parsed or applied.
    dry_run, prune = query_flag(request, "dry_run"), query_flag(request, "prune")
    raw = await request.body()
    if "yaml" in ctype:
        try:
            # Off the event loop: PyYAML reads about 350 KB a second, and a YAML body within the
            # request limit took the loop from every other request for many seconds.
            document = await asyncio.to_thread(load_config_yaml, raw)
        except AliasExpansionError as exc:  # valid YAML, refused for what it would become
            raise ApiError(422, str(exc), code=ALIAS_EXPANSION) from None
        except yaml.YAMLError as exc:
            raise ApiError(
                400, f"the body is not valid YAML: {yaml_problem(exc)}", code="invalid_yaml"
            ) from None
        except RecursionError:  # PyYAML builds nested collections recursively
            raise too_deep_error("the document", None, "too deeply to read") from None
        if document is None:
            # With ?prune=1 an empty document would delete everything: an empty upload is a mistake.
            raise ApiError(400, "the YAML document is empty", code="invalid_yaml")
    elif ctype in ("", "application/json") or ctype.endswith("+json"):
        try:
            data = await request.json()
        except json.JSONDecodeError as exc:
            raise unreadable_json_error(exc, "the request body", await request.body()) from None
        if not isinstance(data, dict):  # as every JSON route says it
            raise ApiError(422, "the request body must be a JSON object")
        try:
            req = ApplyRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            message = error_message(first)
            raise ApiError(422, f"{loc}: {message}" if loc else message, field=loc or None) from None
        # Asked for in the body or the query: either way it was asked for.
        document, dry_run, prune = req.document, dry_run or req.dry_run, prune or req.prune
    else:
        raise ApiError(
            415,
            "send the document as JSON (Content-Type: application/json) or YAML (application/yaml)",
            code="unsupported_media_type",
        )
    return await run_apply(
        rt.store,
        principal.project_id,
        document,
        dry_run=dry_run,
        prune=prune,
        env_allowed=rt.settings.env_secrets,
    )


@router.get("/pipelines")
async def list_pipelines(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    return {"data": [pipeline_json(p, cfg.destinations) for p in cfg.pipelines]}


def _find_by_name(items: Any, name: str, what: str) -> Any:
    """By name only: a name may look like another object's id."""
    for item in items:
        if item.name == name:
            return item
    raise ApiError(404, f"no {what} {name!r}")


def find_by_id_or_name(items: Any, key: str, what: str) -> Any:
    """By id or by name; else the API's 404, ``no <what> '<key>'``."""
    for item in items:
        if key in (item.id, item.name):
            return item
    raise ApiError(404, f"no {what} {key!r}")


@router.get("/pipelines/{pipeline:path}")
async def get_pipeline(pipeline: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    return pipeline_json(find_by_id_or_name(cfg.pipelines, pipeline, "pipeline"), cfg.destinations)


async def apply_one(rt: Any, project_id: str, kind: str, body: Any, response: Response) -> str:
    """Create or update one pipeline, destination or source by its name: 201 for what the
    apply created, 200 for what existed already (updated or unchanged). Returns its name (which
    a destination may give inside its kind's mapping)."""
    document = {f"{kind}s": [body]}
    result = await run_apply(
        rt.store,
        project_id,
        document,
        dry_run=False,
        prune=False,
        within=f"{kind}s[0]",
        env_allowed=rt.settings.env_secrets,
    )
    mine = [c for c in result["changes"] if c["kind"] == kind]
    if not any(c["action"] == "create" for c in mine):
        response.status_code = 200
    return str(mine[0]["name"]) if mine else str(body.get("name"))


@router.post(
    "/pipelines",
    status_code=201,
    summary="Create (201) or update (200) a pipeline (the YAML shape, as JSON)",
    responses={200: {"description": "An existing pipeline of that name, updated"}},
)
async def put_pipeline(
    body: dict[str, Any], principal: Admin, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    name = await apply_one(rt, principal.project_id, "pipeline", pipeline_input(body, cfg), response)
    cfg = await rt.store.load_project_config(principal.project_id)
    return pipeline_json(find_by_id_or_name(cfg.pipelines, name, "pipeline"), cfg.destinations)


def _not_an_endpoint(p: Any) -> None:
    if p is not None and p.endpoint:
        raise ApiError(409, f"pipeline {p.id} is an endpoint: change or delete it with /v1/endpoints/{p.id}")


def named_in_path(body: dict[str, Any], key: str, items: Any) -> dict[str, Any]:
    """``body`` named as the path names it: by name, or by the id of an existing one."""
    name = next((item.name for item in items if key in (item.id, item.name)), key)
    body = {**body, "name": body.get("name", name)}
    if body["name"] != name:
        raise ApiError(
            422, "the name in the body must match the path (renames are a delete and a create)", field="name"
        )
    return body


@router.put(
    "/pipelines/{pipeline:path}",
    status_code=201,
    summary="Create (201) or replace (200) a pipeline: the YAML shape, or what GET returned",
    responses={200: {"description": "An existing pipeline, replaced"}},
)
async def replace_pipeline(
    pipeline: str, body: dict[str, Any], principal: Admin, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    _not_an_endpoint(next((p for p in cfg.pipelines if pipeline in (p.id, p.name)), None))
    return await put_pipeline(named_in_path(body, pipeline, cfg.pipelines), principal, rt, response)


@router.delete("/pipelines/{pipeline:path}", status_code=204)
async def delete_pipeline(pipeline: str, principal: Admin, rt: RuntimeDep) -> Response:
    async def delete() -> None:
        cfg = await rt.store.load_project_config(principal.project_id)
        found = find_by_id_or_name(cfg.pipelines, pipeline, "pipeline")
        _not_an_endpoint(found)
        # Its inline destinations (named "<pipeline>/<kind>") go with it, unless another pipeline
        # uses them.
        others = {
            r["destination_id"] for p in cfg.pipelines if p.id != found.id for r in p.config["destinations"]
        }
        inline = [
            r["destination_id"]
            for r in found.config["destinations"]
            if r["destination_id"] not in others
            and r["destination_id"] in cfg.destinations
            and cfg.destinations[r["destination_id"]].name.startswith(f"{found.name}/")
        ]
        # The inline destinations' deliveries waiting for an attempt end as dead at once.
        await rt.store.apply_config(
            principal.project_id,
            [],
            [],
            delete_pipeline_ids=[found.id],
            delete_destination_ids=inline,
            expect_version=cfg.version,
        )

    await until_unchanged(rt.store, principal.project_id, delete)
    return Response(status_code=204)


@router.get("/destinations")
async def list_destinations(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    return {"data": [destination_json(d) for d in sorted(cfg.destinations.values(), key=lambda d: d.name)]}


@router.get("/destinations/{destination:path}")
async def get_destination(destination: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    return destination_json(find_by_id_or_name(cfg.destinations.values(), destination, "destination"))


@router.post(
    "/destinations",
    status_code=201,
    summary="Create (201) or update (200) a named destination",
    responses={200: {"description": "An existing destination of that name, updated"}},
)
async def put_destination(
    body: dict[str, Any], principal: Admin, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    name = await apply_one(rt, principal.project_id, "destination", destination_input(body, cfg), response)
    cfg = await rt.store.load_project_config(principal.project_id)
    return destination_json(_find_by_name(cfg.destinations.values(), name, "destination"))


@router.put(
    "/destinations/{destination:path}",
    status_code=201,
    summary="Create (201) or replace (200) a named destination: the YAML shape, or what GET returned",
    responses={200: {"description": "An existing destination, replaced"}},
)
async def replace_destination(
    destination: str, body: dict[str, Any], principal: Admin, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    named = named_in_path(body, destination, cfg.destinations.values())
    return await put_destination(named, principal, rt, response)


@router.delete("/destinations/{destination:path}", status_code=204)
async def delete_destination(destination: str, principal: Admin, rt: RuntimeDep) -> Response:
    async def delete() -> None:
        cfg = await rt.store.load_project_config(principal.project_id)
        found = find_by_id_or_name(cfg.destinations.values(), destination, "destination")
        users = [
            p.name
            for p in cfg.pipelines
            if any(r["destination_id"] == found.id for r in p.config["destinations"])
        ]
        if users:
            raise ApiError(409, f"destination {found.name!r} is used by pipelines: {', '.join(users)}")
        # Only if no pipeline came to use it since it was checked.
        await rt.store.apply_config(
            principal.project_id, [], [], delete_destination_ids=[found.id], expect_version=cfg.version
        )

    await until_unchanged(rt.store, principal.project_id, delete)
    return Response(status_code=204)


class SecretBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1, max_length=65536, description="Write-only: never returned.")


@router.put("/secrets/{name}", summary="Set a secret (write-only; stored encrypted)")
async def set_secret(name: str, body: SecretBody, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    if not SECRET_NAME.fullmatch(name):
        raise ApiError(422, SECRET_NAME_RULE, field="name")
    owner = secret_endpoint(name, await rt.store.load_project_config(principal.project_id))
    if owner is not None:
        raise ApiError(
            409,
            f"secret {name!r} belongs to endpoint {owner}: set it with PATCH /v1/endpoints/{owner} "
            f'{{"secret": …}} or POST /v1/endpoints/{owner}/rotate-secret',
        )
    await master_key_in_use(rt)
    replaced = await rt.store.set_secret(principal.project_id, name, rt.box.encrypt(body.value))
    rt.dispatcher.resolver.forget(principal.project_id)  # this process's worker sees it at once
    return {"name": name, "replaced": replaced}


# ---- secrets ---------------------------------------------------------------------------------
#
# An endpoint's signing secrets are stored like any other, as ``endpoint-<id>`` and, while a
# rotation lasts, ``endpoint-<id>.previous`` (``.previous.2``, … when several old ones still
# sign). They are listed, marked as the endpoint's, and cannot be deleted here: the endpoint
# rotates them (POST /v1/endpoints/{id}/rotate-secret) and deletes them with itself.


def _refs(value: Any) -> Iterator[str]:
    """Every ``ref:NAME`` string in a stored configuration (settings, secret lists,
    secret_headers, step and source settings), however deep."""
    if isinstance(value, str):
        if value.startswith("ref:"):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _refs(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _refs(v)


async def master_key_in_use(rt: Runtime) -> None:
    """Before a secret is encrypted: the process's key must be the database's (a 503 naming where
    the key comes from, should it not be; a server checks it as it starts)."""
    try:
        await rt.use_master_key()
    except MasterKeyMismatch as exc:
        raise ApiError(503, str(exc)) from None


def secret_users(name: str, cfg: ProjectConfig) -> list[str]:
    """What references ``ref:<name>``: destinations (an endpoint's named as the endpoint),
    pipelines (their steps) and sources, as ``destination 'acme-hooks'``."""
    ref = f"ref:{name}"
    endpoints = cfg.endpoint_destinations()
    users: list[str] = []
    for d in sorted(cfg.destinations.values(), key=lambda d: d.name):
        if ref in _refs(d.config):
            users.append(f"endpoint {endpoints[d.id]}" if d.id in endpoints else f"destination {d.name!r}")
    users += [f"pipeline {p.name!r}" for p in cfg.pipelines if not p.endpoint and ref in _refs(p.config)]
    users += [
        f"source {s.name!r}"
        for s in sorted(cfg.sources.values(), key=lambda s: s.name)
        if ref in _refs(s.config)
    ]
    return users


@router.get("/secrets")
async def list_secrets(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    """Names only, never values. An endpoint's signing secrets are marked
    ``managed_by: {endpoint_id}``: rotate them through the endpoint; they cannot be deleted here."""
    cfg = await rt.store.load_project_config(principal.project_id)
    out: list[dict[str, Any]] = []
    for s in await rt.store.list_secrets(principal.project_id):
        item: dict[str, Any] = {"name": s["name"]}
        owner = secret_endpoint(s["name"], cfg)
        if owner is not None:
            item["managed_by"] = {"endpoint_id": owner}
        out.append(item)
    return {"data": out}


@router.delete(
    "/secrets/{name}",
    status_code=204,
    summary="Delete a secret; 409 while a destination, pipeline, source or endpoint uses it",
)
async def delete_secret(name: str, principal: Admin, rt: RuntimeDep) -> Response:
    project_id = principal.project_id
    if await rt.store.get_secret(project_id, name) is None:
        raise ApiError(404, f"no secret named {name!r}")
    cfg = await rt.store.load_project_config(project_id)
    owner = secret_endpoint(name, cfg)
    if owner is not None:
        raise ApiError(
            409,
            f"secret {name!r} belongs to endpoint {owner} (it signs the endpoint's requests): rotate it "
            f"with POST /v1/endpoints/{owner}/rotate-secret; it is deleted with the endpoint",
        )
    users = secret_users(name, cfg)
    if users:
        raise ApiError(409, f"secret {name!r} is in use by {', '.join(users)}: remove those references first")
    try:
        await rt.store.delete_secret(project_id, name)
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    rt.dispatcher.resolver.forget(project_id)
    return Response(status_code=204)


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A Literal, not a pattern: its 422 names the two kinds, not the regular expression.
    kind: Literal["ingest", "admin"]
    name: str | None = Field(default=None, max_length=200)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        # Said in words, not as pydantic's "should match pattern '^[^\x00-\x1f\x7f]*$'".
        if name is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise ValueError("must not contain control characters")
        return name


@router.get("/keys")
async def list_keys(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    keys = await rt.store.list_keys(principal.project_id)
    # Times as ISO 8601, as on every other route.
    return {
        "data": [{**k, "created_at": iso(k["created_at"]), "revoked_at": iso(k["revoked_at"])} for k in keys]
    }


@router.post("/keys", status_code=201, summary="Create an API key; the key is shown once")
async def create_key(body: KeyBody, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    kid, key = await rt.store.create_key(principal.project_id, body.kind, body.name)
    return {"id": kid, "kind": body.kind, "key": key}


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, principal: Admin, rt: RuntimeDep) -> Response:
    live_admin = [
        k["id"]
        for k in await rt.store.list_keys(principal.project_id)
        if k["kind"] == "admin" and not k["revoked_at"]
    ]
    if live_admin == [key_id]:
        # Nothing could manage the project afterwards, not even to make a new key.
        raise ApiError(409, "this is the project's last admin key: create another before revoking it")
    try:
        await rt.store.revoke_key(principal.project_id, key_id)
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    rt.keys.forget(principal.project_id)
    return Response(status_code=204)


__all__ = ["Conflict", "router", "run_apply"]
