"""What ``GET`` returns for a pipeline or destination, taken back by ``POST``/``PUT``.

The read shape carries what the server made (ids, times, each route's destination kind); the
write shape is the YAML one. A user who fetches a pipeline, edits it and sends it back expects
that to work, so the read-only fields are checked against what is stored (a pipeline's ``id``
must be its own) and dropped, and a route written as ``{id, name, kind, when}`` becomes
``{ref: NAME, when}``: the destination it names, unchanged.

Answers show a URL written inline with its credentials masked
(:func:`~ingestlayer.urlmask.mask_url_settings`), and each inline header value as MASK; such a
URL or header value sent back as it was shown is the stored one (:func:`restored`).
"""

from __future__ import annotations

from typing import Any

from ingestlayer.api.errors import ApiError
from ingestlayer.records import DestinationRow, PipelineRow, ProjectConfig
from ingestlayer.urlmask import MASK, is_headers_key, is_url_key, mask_url

TIMES = ("created_at", "updated_at")
ROUTE_READ_FIELDS = frozenset({"id", "name", "kind", "when"})


def restored(given: Any, stored: Any, path: str = "") -> Any:
    """``given`` with each URL setting that is a stored URL as answers show it (masked) replaced by
    that stored URL, and each header value sent as MASK by the stored header's value
    (:func:`_restored_header`). A masked URL that is not the stored one's masked form (its host or path
    edited, or nothing stored there) is refused: stored, it would be a URL no one can call."""
    if isinstance(given, dict):
        inner = stored if isinstance(stored, dict) else {}
        if is_headers_key(path.rpartition(".")[2]):
            return {k: _restored_header(str(k), v, inner, f"{path}.{k}") for k, v in given.items()}
        return {k: restored(v, inner.get(k), f"{path}.{k}" if path else str(k)) for k, v in given.items()}
    if isinstance(given, list):
        items = stored if isinstance(stored, list) else []
        return [
            restored(v, items[i] if i < len(items) else None, f"{path}[{i}]") for i, v in enumerate(given)
        ]
    if isinstance(given, str) and MASK in given and is_url_key(path.rpartition(".")[2]):
        if isinstance(stored, str) and mask_url(stored) == given:
            return stored
        raise ApiError(
            422,
            f"{path} holds {MASK}, the masked form in which answers show a stored URL's credentials, "
            "but not as the stored URL shows it: send the URL whole, or its credentials as they were",
            field=path,
        )
    return given


def _restored_header(name: str, given: Any, stored: dict[Any, Any], path: str) -> Any:
    """A header value sent back as answers show it (:data:`MASK`) is the stored value of that
    header: of the same name, else of the one stored under that name in another case (HTTP
    header names are compared case-insensitively). With no such header stored, it would be sent
    as the mask itself: refused."""
    if given != MASK:
        return given  # a new value, written whole, replaces the stored one
    if name in stored:
        return stored[name]
    same = [v for k, v in stored.items() if str(k).lower() == name.lower()]
    if len(same) == 1:
        return same[0]
    raise ApiError(
        422,
        f"{path} is {MASK}, the masked form in which answers show a stored header's value, but no "
        f"header {name} is stored here: send its value",
        field=path,
    )


def _read_only(field: str, given: Any, stored: Any, what: str) -> None:
    if given is not None and given != stored:
        raise ApiError(422, f"{field} is {stored!r} for {what} and cannot be changed here", field=field)


def _check_id(given: Any, existing: PipelineRow | DestinationRow | None, kind: str, name: Any) -> None:
    if given is None:
        return
    if existing is None:
        message = f"id {given!r}: there is no {kind} named {name!r} yet; leave the id out to create one"
        raise ApiError(422, message, field="id")
    if given != existing.id:
        raise ApiError(422, f"id {given!r} is not the id of {kind} {name!r} ({existing.id})", field="id")


def _route(entry: Any, cfg: ProjectConfig, path: str) -> Any:
    """A route in the read shape, as ``{ref: NAME, when}``; any other entry as it is."""
    if not isinstance(entry, dict) or "id" not in entry:
        return entry
    extra = sorted(set(entry) - ROUTE_READ_FIELDS)
    if extra:
        raise ApiError(
            422,
            f"{path}.{extra[0]}: a route given by id takes only name, kind and when; "
            "to change the destination itself, drop the id and give its settings",
            field=f"{path}.{extra[0]}",
        )
    dest = cfg.destinations.get(entry["id"]) if isinstance(entry["id"], str) else None
    if dest is None:
        raise ApiError(422, f"{path}.id: no destination with id {entry['id']!r}", field=f"{path}.id")
    what = f"destination {entry['id']}"
    _read_only(f"{path}.name", entry.get("name"), dest.name, what)
    _read_only(f"{path}.kind", entry.get("kind"), dest.kind, what)
    return {"ref": dest.name, **({"when": entry["when"]} if entry.get("when") is not None else {})}


def pipeline_input(body: dict[str, Any], cfg: ProjectConfig) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in TIMES}
    name = out.get("name")
    existing = next((p for p in cfg.pipelines if p.name == name), None)
    _check_id(out.pop("id", None), existing, "pipeline", name)
    what = f"pipeline {name!r}"
    _read_only("endpoint", out.pop("endpoint", None), existing.endpoint if existing else False, what)
    routes = out.get("destinations")
    if isinstance(routes, list):
        out["destinations"] = [_route(e, cfg, f"destinations[{i}]") for i, e in enumerate(routes)]
    steps = out.get("steps")
    if isinstance(steps, list):
        stored_steps = existing.config.get("steps", []) if existing else []
        out["steps"] = [_restored_step(step, i, stored_steps) for i, step in enumerate(steps)]
    return out


def _restored_step(step: Any, index: int, stored_steps: list[dict[str, Any]]) -> Any:
    """A step's settings restored from the stored step of its name at its place, else from any
    stored step of its name (a step inserted or moved before it)."""
    if not isinstance(step, dict) or len(step) != 1:
        return step
    ((name, settings),) = step.items()
    path = f"steps[{index}].{name}"
    same_name = [s["config"] for s in stored_steps if s.get("name") == name]
    at_place = stored_steps[index] if index < len(stored_steps) else None
    if at_place is not None and at_place.get("name") == name:
        same_name.insert(0, at_place["config"])
    refusal: ApiError | None = None
    for candidate in same_name or [None]:
        try:
            return {name: restored(settings, candidate, path)}
        except ApiError as exc:
            refusal = refusal or exc
    assert refusal is not None
    raise refusal


def destination_input(body: dict[str, Any], cfg: ProjectConfig) -> dict[str, Any]:
    """A destination in the read shape (``kind`` and ``config``) in the YAML one
    (``{KIND: config}``); the YAML shape passes as it is."""
    name = body.get("name")
    existing = next((d for d in cfg.destinations.values() if d.name == name), None)
    stored = existing.config.get("settings", {}) if existing else None
    if "kind" not in body:
        if existing is not None and isinstance(body.get(existing.kind), dict):
            return {**body, existing.kind: restored(body[existing.kind], stored, existing.kind)}
        return body  # nothing stored to restore from: a masked URL is refused as no URL at all
    out = {k: v for k, v in body.items() if k not in TIMES}
    _check_id(out.pop("id", None), existing, "destination", name)
    enabled = out.pop("enabled", None)
    _read_only("enabled", enabled, existing.enabled if existing else True, f"destination {name!r}")
    kind = out.pop("kind")
    if not isinstance(kind, str):
        raise ApiError(422, "kind must be a destination kind such as webhook.out", field="kind")
    same_kind = existing is not None and existing.kind == kind
    out[kind] = restored(out.pop("config", None) or {}, stored if same_kind else None, "config")
    for key in ("retry", "concurrency"):
        if key in out and out[key] is None:
            del out[key]
    return out
