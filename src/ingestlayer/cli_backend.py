"""What CLI management commands act on: the configured database, or a server over REST.

Both backends offer the same few operations, so each command is written once.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import orjson

from ingestlayer import clock
from ingestlayer.api.render import delivery_json, event_json
from ingestlayer.config import Settings
from ingestlayer.ids import new_id
from ingestlayer.json_depth import MAX_JSON_DEPTH, dumps_within
from ingestlayer.pipeline.config import ConfigError
from ingestlayer.records import NewEvent
from ingestlayer.secretbox import SecretBox, SecretDecryptError
from ingestlayer.store.migrate import upgrade

if TYPE_CHECKING:
    from ingestlayer.store.store import Store


class CliError(Exception):
    """A failure reported as one line and a non-zero exit."""


class LocalBackend:
    """Works on the database directly (migrating it first), scoped to one project."""

    def __init__(self, settings: Settings, project: str | None) -> None:
        self.settings = settings
        self.project_arg = project
        # The store (SQLAlchemy and both databases' drivers) is loaded by the commands that
        # open it, not by `--help` or the commands that talk to a server over REST.
        from ingestlayer.store.store import Store

        upgrade(settings.database_url)
        self.store: Store = Store.from_url(settings.database_url)
        self._project_id: str | None = None

    async def close(self) -> None:
        await self.store.close()

    async def project_id(self) -> str:
        if self._project_id:
            return self._project_id
        projects = await self.store.list_projects()
        if self.project_arg:
            match = [p for p in projects if self.project_arg in (p["id"], p["name"])]
            if not match:
                raise CliError(f"no project {self.project_arg!r}")
            self._project_id = match[0]["id"]
        elif len(projects) == 1:
            self._project_id = projects[0]["id"]
        elif not projects:
            raise CliError("no project yet: run `ingestlayer init` first")
        else:
            names = ", ".join(p["name"] for p in projects)
            raise CliError(f"several projects ({names}): choose one with --project")
        assert self._project_id is not None
        return self._project_id

    async def apply(self, document: Any, dry_run: bool, prune: bool) -> dict[str, Any]:
        class _Rt:
            store = self.store

        # Imported here: the management API brings FastAPI and the server's runtime, which
        # every other command would pay for at startup (0.8 s of the CLI's 1.5 s).
        from ingestlayer.api.errors import ApiError
        from ingestlayer.api.manage import run_apply

        try:
            return await run_apply(_Rt(), await self.project_id(), document, dry_run=dry_run, prune=prune)
        except (ApiError, ConfigError) as exc:
            raise CliError(str(exc)) from None

    async def send(self, type_: str, payload: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        try:
            raw = dumps_within(payload)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits
            raise CliError("payload: numbers must fit in 64 bits; send larger ones as strings") from None
        if raw is None:
            raise CliError(f"payload is nested more than {MAX_JSON_DEPTH} levels deep")
        await self.store.sync_clock()  # its route job is due now on the workers' clock
        now = clock.now()
        ev = NewEvent(
            id=new_id("evt"),
            project_id=await self.project_id(),
            type=type_,
            payload_json=str(raw, "utf-8"),
            idempotency_key=idempotency_key,
            source="cli",
            occurred_at=now,
            received_at=now,
        )
        r = (await self.store.insert_events([ev]))[0]
        return {"id": r.id, "duplicate": r.duplicate}

    async def events(self, type_: str | None, limit: int) -> list[dict[str, Any]]:
        return [
            event_json(e)
            for e in await self.store.list_events(await self.project_id(), type_=type_, limit=limit)
        ]

    async def deliveries(self, status: list[str] | None, limit: int) -> list[dict[str, Any]]:
        pid = await self.project_id()
        cfg = await self.store.load_project_config(pid)
        names = {d.id: d.name for d in cfg.destinations.values()}
        return [
            delivery_json(d, names) for d in await self.store.list_deliveries(pid, status=status, limit=limit)
        ]

    async def replay(self, delivery_id: str | None, status: list[str], destination: str | None) -> list[str]:
        pid = await self.project_id()
        await self.store.sync_clock()  # replayed deliveries are due now on the workers' clock
        if delivery_id:
            d = await self.store.get_delivery(pid, delivery_id)
            if d is None:
                raise CliError(f"no delivery {delivery_id!r}")
            if d["status"] == "delivering":
                raise CliError(f"delivery {delivery_id} is being attempted right now; replay it once done")
            return await self.store.replay(pid, [delivery_id])
        dest_id = None
        if destination:
            cfg = await self.store.load_project_config(pid)
            dest_id = next((d.id for d in cfg.destinations.values() if destination in (d.id, d.name)), None)
            if dest_id is None:
                raise CliError(f"no destination {destination!r}")
        return await self.store.replay(pid, status=status, destination_id=dest_id)

    async def set_secret(self, name: str, value: str) -> bool:
        box = SecretBox.load(self.settings.secret_key, self.settings.secret_key_file)
        pid = await self.project_id()
        # A secret stored under another master key than the server's cannot be read when it is
        # used: refuse it now, while the mistake is one command old, if the project's other
        # secrets show the key differs.
        for row in await self.store.list_secrets(pid):
            token = await self.store.get_secret(pid, row["name"])
            if token is None:
                continue
            try:
                box.decrypt(token)
            except SecretDecryptError:
                raise CliError(
                    "this master key is not the one the project's secrets were stored with "
                    "(INGESTLAYER_SECRET_KEY or INGESTLAYER_SECRET_KEY_FILE); nothing was stored"
                ) from None
            break
        return await self.store.set_secret(pid, name, box.encrypt(value))


class RemoteBackend:
    """Talks to a running server with an admin key."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key

    async def close(self) -> None:
        return None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One REST request with the admin key; API errors become one-line CliErrors."""
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except Exception:
                message = exc.reason
            raise CliError(f"{self.url} answered {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach {self.url}: {exc.reason}") from None
        return json.loads(raw) if raw else None

    async def apply(self, document: Any, dry_run: bool, prune: bool) -> dict[str, Any]:
        out: dict[str, Any] = self.call(
            "POST", "/v1/apply", {"document": document, "dry_run": dry_run, "prune": prune}
        )
        return out

    async def send(self, type_: str, payload: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type_, "payload": payload}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        out: dict[str, Any] = self.call("POST", "/v1/events", body)
        return out

    async def events(self, type_: str | None, limit: int) -> list[dict[str, Any]]:
        q = f"?limit={limit}" + (f"&type={urllib.parse.quote(type_)}" if type_ else "")
        out: list[dict[str, Any]] = self.call("GET", "/v1/events" + q)["data"]
        return out

    async def deliveries(self, status: list[str] | None, limit: int) -> list[dict[str, Any]]:
        q = f"?limit={limit}" + "".join(f"&status={s}" for s in status or [])
        out: list[dict[str, Any]] = self.call("GET", "/v1/deliveries" + q)["data"]
        return out

    async def replay(self, delivery_id: str | None, status: list[str], destination: str | None) -> list[str]:
        if delivery_id:
            out: list[str] = self.call("POST", f"/v1/deliveries/{delivery_id}/replay", {})["replayed"]
            return out
        body: dict[str, Any] = {"status": status}
        if destination:
            body["destination"] = destination
        out = self.call("POST", "/v1/deliveries/replay", body)["replayed"]
        return out

    async def set_secret(self, name: str, value: str) -> bool:
        return bool(self.call("PUT", f"/v1/secrets/{name}", {"value": value})["replaced"])


Backend = LocalBackend | RemoteBackend
