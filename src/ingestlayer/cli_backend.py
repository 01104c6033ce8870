"""What CLI management commands act on: the configured database, or a server over REST.

Both backends offer the same few operations, so each command is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ingestlayer import __version__, clock, master_key
from ingestlayer.api.render import delivery_json, event_json
from ingestlayer.config import Settings
from ingestlayer.ids import new_id
from ingestlayer.json_depth import MAX_JSON_DEPTH, NUMBERS_TOO_LARGE, dumps_within
from ingestlayer.pipeline.config import ConfigError
from ingestlayer.records import NewEvent
from ingestlayer.replay_scope import (
    ReplayRefused,
    listed_destination,
    replayable_destinations,
    why_not_replayable,
)
from ingestlayer.secret_names import SECRET_NAME, SECRET_NAME_RULE, secret_endpoint
from ingestlayer.secretbox import MasterKeyMismatch, SecretBox
from ingestlayer.store.migrate import current_head, sqlite_schema_is_current, upgrade
from ingestlayer.timefmt import parse_time_filter
from ingestlayer.urlmask import mask_url

if TYPE_CHECKING:
    from ingestlayer.store.store import Store


T = TypeVar("T")


class CliError(Exception):
    """A failure reported as one line and a non-zero exit."""


# The API's refusal of a payload holding an integer that does not fit in 64 bits (its
# ``number_out_of_range``), in its words: orjson cannot write it, nor the databases keep it exactly.
def number_out_of_range(where: str | None = None) -> str:
    """The message, naming the number's field within the payload (``order.total``) when known."""
    field = f"payload.{where}" if where else "payload"
    return f"{field}: {NUMBERS_TOO_LARGE}"


NUMBER_OUT_OF_RANGE = number_out_of_range()


def time_filter(value: str | None, option: str) -> float | None:
    """An option's time (ISO 8601 or epoch seconds) as epoch seconds, read once for both modes."""
    if value is None:
        return None
    try:
        return parse_time_filter(value)
    except ValueError:
        raise CliError(f"{option} must be an ISO 8601 timestamp or epoch seconds, not {value!r}") from None


def time_range(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``--since`` and ``--until`` as epoch seconds; the wrong way round is an error, not an
    empty table (or a replay of nothing) that reads as "there is none"."""
    start, end = time_filter(since, "--since"), time_filter(until, "--until")
    if start is not None and end is not None and start > end:
        raise CliError(f"--since ({since}) is later than --until ({until}): nothing can match; swap them?")
    return start, end


def without_credentials(url: str) -> str:
    """A server's address without any user or password: what is called, and shown."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def migrate_database(settings: Settings, on_step: Callable[[str, str], None] | None = None) -> None:
    """Migrate the database: the first time a command connects to it, and when ``serve``, ``api``
    or ``worker`` start. A database that cannot be reached, opened or migrated is reported here
    in one line, named by its URL with the password masked (the driver's own message names only
    an address, or not even that)."""
    database_url = settings.database_url
    if sqlite_schema_is_current(database_url):
        return
    try:
        upgrade(database_url, on_step=on_step, connect_timeout=settings.database_timeout)
    except Exception as exc:
        newer = _newer_schema(exc)
        if newer is not None:
            raise CliError(
                f"the database at {mask_url(database_url)} is at schema revision {newer}, which this "
                f"version of ingestlayer ({__version__}, revisions up to {current_head()}) does not "
                "know: a newer ingestlayer has upgraded it. Run that version (schemas are not "
                "migrated down), or restore the backup taken before the upgrade"
            ) from None
        problem = _connect_problem(exc)
        if problem is None:
            raise
        raise CliError(f"cannot open the database at {mask_url(database_url)}: {problem}") from None


_UNKNOWN_REVISION = re.compile(r"Can't locate revision identified by '([^']+)'")


def _newer_schema(exc: Exception) -> str | None:
    """The revision a database is at that these migrations do not have, from Alembic's error."""
    found = _UNKNOWN_REVISION.search(str(exc)) if type(exc).__module__.startswith("alembic") else None
    return found.group(1) if found else None


def _connect_problem(exc: Exception) -> str | None:
    """What a failure to reach or open a database says, without SQLAlchemy's wrapping."""
    if isinstance(exc, OSError):  # refused, unreachable, name not found, timed out
        return str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
    orig = getattr(exc, "orig", None)  # a driver's error wrapped by SQLAlchemy
    if type(exc).__module__.startswith("sqlalchemy") and orig is not None:
        text = str(orig).strip().splitlines()
        return text[0] if text else type(orig).__name__
    return None


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run a blocking call off the event loop, in a thread that cannot hold the process up.

    A request blocked on a slow server would otherwise keep the loop from seeing Ctrl-C until
    the request timed out; and asyncio's own worker threads are waited for at exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():  # cancelled by Ctrl-C meanwhile
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        # The loop is gone once the command has been interrupted: nothing is waiting then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, daemon=True).start()
    return await done


def check_secret_name(name: str) -> None:
    """The server's rule, checked before either backend: a name it refuses could not be referenced
    as ref:NAME, and one holding '/' or '?' would reach it as another URL."""
    if not SECRET_NAME.fullmatch(name):
        raise CliError(SECRET_NAME_RULE)


@dataclass(frozen=True)
class EventFilter:
    """Which events a listing shows."""

    type_: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class ReplayFilter:
    """Which deliveries a bulk replay takes."""

    status: list[str]
    destination: str | None = None
    since: float | None = None
    until: float | None = None


class LocalBackend:
    """Works on the database directly (migrating it first), scoped to one project."""

    def __init__(self, settings: Settings, project: str | None) -> None:
        self.settings = settings
        self.project_arg = project
        # The store (SQLAlchemy and both databases' drivers) is loaded by the commands that
        # open it, not by `--help` or the commands that talk to a server over REST.
        from ingestlayer.store.store import Store

        migrate_database(settings)
        self.store: Store = Store.from_url(settings.database_url)
        self._project_id: str | None = None
        # The master key file `set_secret` created for want of one, for the command to tell.
        self.created_key_file: Path | None = None

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
        # Imported here: the management API brings FastAPI and the server's runtime, which
        # every other command would pay for at startup (0.8 s of the CLI's 1.5 s).
        from ingestlayer.api.errors import ApiError
        from ingestlayer.api.manage import run_apply

        try:
            return await run_apply(
                self.store,
                await self.project_id(),
                document,
                dry_run=dry_run,
                prune=prune,
                env_allowed=self.settings.env_secrets,
            )
        except (ApiError, ConfigError) as exc:
            raise CliError(str(exc)) from None

    async def send(self, type_: str, payload: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        try:
            raw = dumps_within(payload)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits
            raise CliError(NUMBER_OUT_OF_RANGE) from None
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
            # As sent through the API with an ingest key (SPEC: source is sdk or a webhook's):
            # a pipeline's `when: event.source = sdk` treats it the same either way.
            source="sdk",
            occurred_at=now,
            received_at=now,
        )
        r = (await self.store.insert_events([ev]))[0]
        return {"id": r.id, "duplicate": r.duplicate}

    async def events(self, match: EventFilter, limit: int) -> list[dict[str, Any]]:
        pid = await self.project_id()
        found = await self.store.list_events(
            pid, type_=match.type_, since=match.since, until=match.until, limit=limit
        )
        return [event_json(e) for e in found]

    async def deliveries(
        self, status: list[str] | None, destination: str | None, limit: int
    ) -> list[dict[str, Any]]:
        pid = await self.project_id()
        cfg = await self.store.load_project_config(pid)
        dest_id = None
        if destination is not None:
            dest_id = await listed_destination(self.store, cfg, destination)
            if dest_id is None:
                raise CliError(f"no destination {destination!r}")
        names = {d.id: d.name for d in cfg.destinations.values()}
        found = await self.store.list_deliveries(pid, status=status, destination_id=dest_id, limit=limit)
        return [delivery_json(d, names) for d in found]

    async def replay_one(self, delivery_id: str) -> None:
        pid = await self.project_id()
        await self.store.sync_clock()  # replayed deliveries are due now on the workers' clock
        d = await self.store.get_delivery(pid, delivery_id)
        if d is None:
            raise CliError(f"no delivery {delivery_id!r}")
        in_flight = CliError(f"delivery {delivery_id} is being attempted right now; replay it once done")
        if d["status"] == "delivering":
            raise in_flight
        problem = why_not_replayable(await self.store.load_project_config(pid), d["destination_id"])
        if problem is not None:
            raise CliError(problem)
        if not await self.store.replay(pid, [delivery_id]):  # a worker took it since the read
            raise in_flight

    async def replay_page(self, match: ReplayFilter, after: str | None, limit: int) -> list[str]:
        pid = await self.project_id()
        await self.store.sync_clock()
        try:
            cfg = await self.store.load_project_config(pid)
            destination_ids = await replayable_destinations(self.store, cfg, match.destination)
        except (LookupError, ReplayRefused) as exc:
            raise CliError(str(exc.args[0])) from None
        return await self.store.replay(
            pid,
            status=match.status,
            destination_ids=destination_ids,
            since=match.since,
            until=match.until,
            after=after,
            limit=limit,
        )

    async def set_secret(self, name: str, value: str) -> bool:
        # As the server refuses it: an endpoint's secret is the endpoint's to set and rotate.
        box = SecretBox.load(self.settings.secret_key, self.settings.secret_key_file)
        pid = await self.project_id()
        owner = secret_endpoint(name, await self.store.load_project_config(pid))
        if owner is not None:
            raise CliError(f"secret {name!r} belongs to endpoint {owner}: rotate it through the endpoint")
        # A secret stored under another master key than the server's cannot be read when it is
        # used: refuse it now, before a key file is made here for want of one, if the database's
        # check value (or, before it has one, the secrets stored last) shows the key differs.
        try:
            await master_key.settle(self.store, box)
        except MasterKeyMismatch as exc:
            raise CliError(f"{exc}; nothing was stored") from None
        replaced = await self.store.set_secret(pid, name, box.encrypt(value))
        self.created_key_file = box.created_key_file
        return replaced

    async def delete_secret(self, name: str) -> None:
        # No master key: deleting decrypts nothing, and a secret stored under a stray key (that
        # keeps the servers from starting) is deleted this way while none runs. The server's
        # refusals hold: an endpoint's secret, and one still referenced.
        from ingestlayer.api.manage import secret_users
        from ingestlayer.store.base import NotFound

        pid = await self.project_id()
        cfg = await self.store.load_project_config(pid)
        if await self.store.get_secret(pid, name) is None:
            raise CliError(f"no secret named {name!r}")
        owner = secret_endpoint(name, cfg)
        if owner is not None:
            raise CliError(
                f"secret {name!r} belongs to endpoint {owner}: rotate it through the endpoint; "
                "it is deleted with the endpoint"
            )
        users = secret_users(name, cfg)
        if users:
            raise CliError(f"secret {name!r} is in use by {', '.join(users)}: remove those references first")
        try:
            await self.store.delete_secret(pid, name)
        except NotFound as exc:
            raise CliError(str(exc.args[0])) from None


def _time_params(since: float | None, until: float | None) -> list[tuple[str, str]]:
    """A time window for the API: epoch seconds, which its routes read as text."""
    return [(name, repr(at)) for name, at in (("since", since), ("until", until)) if at is not None]


def usable_key(key: str) -> str:
    """``key`` as sent, without the spaces and line break around it (a key read from a file or a
    secret store often ends in one; the server drops them too); one holding any other character
    no key has is refused in words that never quote it. Sent as it was, HTTP refused it, and the
    message quoted the whole ``Authorization`` header, key and all."""
    key = key.strip()
    if not key:
        raise CliError("--url needs a key: --key or INGESTLAYER_ADMIN_KEY is blank")
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise CliError(
            "the key (--key or INGESTLAYER_ADMIN_KEY) holds a character no key has (a space, a line "
            "break, a control or non-ASCII character): copy it again"
        )
    return key


class RemoteBackend:
    """Talks to a running server with an admin key."""

    created_key_file: Path | None = None  # the server encrypts with its own key

    def __init__(self, url: str, key: str) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"--url {mask_url(url)!r} is not a server address such as http://HOST:8000")
        if parts.query or parts.fragment:
            # Commands add their own paths after it, and a query's values (often a token) would
            # be in every message that names the server.
            raise CliError(
                f"--url must not carry a query or fragment (host {parts.hostname}): use http://HOST:8000"
            )
        # The key is the credential; a user and password in the URL are neither sent (the key
        # takes the Authorization header) nor shown in a message.
        self.url = without_credentials(url.strip()).rstrip("/")
        self.key = usable_key(key)

    async def close(self) -> None:
        return None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One REST request with the admin key; API errors become one-line CliErrors."""
        return await in_daemon_thread(lambda: self._call(method, path, body))

    def _call(self, method: str, path: str, body: Any) -> Any:
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
        except (OSError, http.client.HTTPException) as exc:  # a timeout, a connection cut short
            raise CliError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:  # a proxy's or another program's page
            raise CliError(f"{self.url} did not answer as an ingestlayer server (not JSON)") from None

    async def fetch(self, method: str, path: str, *fields: str, body: Any = None) -> dict[str, Any]:
        """The answer, holding ``fields``; or one line saying it is not an ingestlayer server's."""
        answer = await self.call(method, path, body)
        if not isinstance(answer, dict) or any(f not in answer for f in fields):
            raise CliError(
                f"{self.url} did not answer as an ingestlayer server (on {path.split('?', maxsplit=1)[0]})"
            )
        return answer

    async def apply(self, document: Any, dry_run: bool, prune: bool) -> dict[str, Any]:
        body = {"document": document, "dry_run": dry_run, "prune": prune}
        return await self.fetch("POST", "/v1/apply", "summary", "changes", body=body)

    async def send(self, type_: str, payload: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type_, "payload": payload}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        return await self.fetch("POST", "/v1/events", "id", "duplicate", body=body)

    async def events(self, match: EventFilter, limit: int) -> list[dict[str, Any]]:
        query: list[tuple[str, Any]] = [("limit", limit)]
        if match.type_:
            query.append(("type", match.type_))
        query += _time_params(match.since, match.until)
        path = "/v1/events?" + urllib.parse.urlencode(query)
        out: list[dict[str, Any]] = (await self.fetch("GET", path, "data"))["data"]
        return out

    async def deliveries(
        self, status: list[str] | None, destination: str | None, limit: int
    ) -> list[dict[str, Any]]:
        query: list[tuple[str, Any]] = [("limit", limit), *(("status", s) for s in status or [])]
        if destination is not None:
            query.append(("destination", destination))
        path = "/v1/deliveries?" + urllib.parse.urlencode(query)
        out: list[dict[str, Any]] = (await self.fetch("GET", path, "data"))["data"]
        return out

    async def replay_one(self, delivery_id: str) -> None:
        path = f"/v1/deliveries/{urllib.parse.quote(delivery_id, safe='')}/replay"
        await self.fetch("POST", path, "replayed", body={})

    async def replay_page(self, match: ReplayFilter, after: str | None, limit: int) -> list[str]:
        body: dict[str, Any] = {"status": match.status, "limit": limit}
        if match.destination:
            body["destination"] = match.destination
        body.update(_time_params(match.since, match.until))
        if after is not None:
            body["after"] = after
        out: list[str] = (await self.fetch("POST", "/v1/deliveries/replay", "replayed", body=body))[
            "replayed"
        ]
        return out

    async def set_secret(self, name: str, value: str) -> bool:
        path = f"/v1/secrets/{urllib.parse.quote(name, safe='')}"
        return bool((await self.fetch("PUT", path, "replaced", body={"value": value}))["replaced"])

    async def delete_secret(self, name: str) -> None:
        await self.call("DELETE", f"/v1/secrets/{urllib.parse.quote(name, safe='')}")


Backend = LocalBackend | RemoteBackend
