"""Turn stored rows into the API's JSON shapes (times as ISO 8601)."""

from __future__ import annotations

from typing import Any

import orjson

from ingestlayer.idempotency_keys import shown as shown_key
from ingestlayer.json_depth import MAX_JSON_DEPTH, nests_deeper
from ingestlayer.records import DestinationRow, PipelineRow, StoredEvent
from ingestlayer.timefmt import iso
from ingestlayer.urlmask import mask_url_settings

# Stored JSON is shown to this depth, and below it as JSON text (strings). What comes in now nests
# at most MAX_JSON_DEPTH levels and is shown whole; an event stored before that limit may nest up
# to 254 levels, more than a response can carry once the listing wraps it (255 levels in all).
# orjson.Fragment cannot embed the text as it is: FastAPI serialises responses with pydantic-core.
RENDER_DEPTH = 2 * MAX_JSON_DEPTH


def stored_json(text: str) -> Any:
    """JSON text from the database as a value a response can always carry."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # nothing orjson wrote, but a listing must not fail on it
        return text
    # Text under 2 * RENDER_DEPTH + 2 characters or with fewer brackets cannot nest deeper.
    if (
        len(text) > 2 * RENDER_DEPTH + 1
        and text.count("{") + text.count("[") > RENDER_DEPTH
        and nests_deeper(value, RENDER_DEPTH)
    ):
        try:
            return _clip(value, RENDER_DEPTH)
        except orjson.JSONEncodeError:  # deeper than orjson writes: nothing it wrote either
            return text
    return value


def _clip(value: Any, room: int) -> Any:
    """``value`` with its containers below ``room`` levels replaced by their JSON text."""
    if type(value) is dict:
        return {k: _clip(v, room - 1) for k, v in value.items()} if room else orjson.dumps(value).decode()
    if type(value) is list:
        return [_clip(v, room - 1) for v in value] if room else orjson.dumps(value).decode()
    return value


def event_json(e: StoredEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type,
        "payload": stored_json(e.payload_json),
        "idempotency_key": shown_key(e.idempotency_key),
        "source": e.source,
        "occurred_at": iso(e.occurred_at),
        "received_at": iso(e.received_at),
        "trace": e.trace,
    }


def attempt_json(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": a["n"],
        "started_at": iso(a["started_at"]),
        "duration_ms": round(a["duration_ms"], 2),
        "status_code": a["status_code"],
        "error": a["error"],
        "response_excerpt": a["response_excerpt"],
        "next_retry_at": iso(a["next_retry_at"]),
    }


def delivery_json(d: dict[str, Any], destination_names: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d["id"],
        "status": d["status"],
        "event_id": d["event_id"],
        "event_type": d["event_type"],
        "pipeline_id": d["pipeline_id"],
        "destination_id": d["destination_id"],
        "destination": (destination_names or {}).get(d["destination_id"], d["destination_id"]),
        "attempt_count": d["attempts"],
        "last_status_code": d["last_status_code"],
        "last_error": d["last_error"],
        "next_attempt_at": iso(d["due_at"]) if d["status"] in ("pending", "retrying") else None,
        "created_at": iso(d["created_at"]),
        "updated_at": iso(d["updated_at"]),
        "finished_at": iso(d["finished_at"]),
    }
    if "attempt_log" in d:
        out["attempts"] = [attempt_json(a) for a in d["attempt_log"]]
    if "body" in d:
        out["body"] = stored_json(d["body"])
    return out


def pipeline_json(p: PipelineRow, destinations: dict[str, DestinationRow]) -> dict[str, Any]:
    cfg = p.config
    return {
        "id": p.id,
        "name": p.name,
        "description": cfg.get("description"),
        "enabled": p.enabled,
        "endpoint": p.endpoint,
        "source": cfg["source"],
        "steps": [{s["name"]: mask_url_settings(s["config"])} for s in cfg.get("steps", [])],
        "destinations": [
            {
                "id": r["destination_id"],
                "name": r.get("destination"),
                "kind": destinations[r["destination_id"]].kind
                if r["destination_id"] in destinations
                else None,
                "when": r.get("when"),
            }
            for r in cfg.get("destinations", [])
        ],
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


def destination_json(d: DestinationRow) -> dict[str, Any]:
    # Configs hold secret references (env:/ref:), never secret values; a URL written inline is
    # shown with its credentials masked (taken back as it was shown: api/editable.py).
    return {
        "id": d.id,
        "name": d.name,
        "kind": d.kind,
        "enabled": d.enabled,
        "config": mask_url_settings(d.config.get("settings", {})),
        "retry": d.config.get("retry"),
        "concurrency": d.config.get("concurrency"),
        "updated_at": iso(d.updated_at),
    }
