"""The ``ingestlayer`` command line.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from typer.core import TyperCommand, TyperGroup, TyperOption

from ingestlayer import __version__
from ingestlayer.cli_backend import (
    Backend,
    CliError,
    EventFilter,
    LocalBackend,
    RemoteBackend,
    ReplayFilter,
    check_secret_name,
    migrate_database,
    number_out_of_range,
    time_range,
    without_credentials,
)
from ingestlayer.config import MAX_PORT, MIN_PORT, Settings
from ingestlayer.entry import ABORTED_EXIT
from ingestlayer.json_depth import (
    MAX_JSON_DEPTH,
    ORJSON_READ_DEPTH,
    huge_int_path,
    is_number_range_error,
    is_read_depth_error,
    nests_deeper,
    out_of_range_path,
)
from ingestlayer.logsetup import configure
from ingestlayer.pipeline.matching import TYPE_FILTER_RULE, is_type_filter
from ingestlayer.store.conditions import storage_condition
from ingestlayer.urlmask import mask_url
from ingestlayer.yaml_config import AliasExpansionError, load_config_yaml, yaml_problem


def _flags_take_no_value(params: list[Any]) -> list[Any]:
    """Typer's help shows each option's type where its value goes, a flag's too: `--dry-run
    <bool>` read as if the flag took a value. A flag is given an empty metavar, shown as nothing."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:  # the help option too, made on first use
        return _flags_take_no_value(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


app = typer.Typer(
    name="ingestlayer",
    help="Event pipelines and webhook delivery: ingest, route, deliver, replay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
secrets_app = typer.Typer(help="Encrypted secrets referenced as ref:NAME.", no_args_is_help=True, cls=_Group)
app.add_typer(secrets_app, name="secrets")
# Piped into another program or a file, tables are not cut to a terminal's 80 columns (a cut id
# cannot be copied into `replay`); COLUMNS still wins when set.
PIPED_WIDTH = 200


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's own answer is SystemExit(1), which passed `cli_errors` by: a table into
        # `| head -1` ended with status 1 and no word, where --json ended 141 (a closed pipe).
        self.quiet = True
        raise BrokenPipeError


out = _Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH)
err = _Console(stderr=True)


def _id_column(name: str) -> Column:
    """Ids are folded onto a second line in a narrow terminal, never cut short."""
    return Column(name, overflow="fold", min_width=12)


T = TypeVar("T")

DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="Default: INGESTLAYER_DATABASE_URL or ./ingestlayer.db")
]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="Project name or id (default: the only one)")
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Act on a remote server instead of the database")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="INGESTLAYER_ADMIN_KEY",
        help="Admin key (il_admin_…) for --url; only `send` also takes an ingest key",
    ),
]
SendKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="INGESTLAYER_ADMIN_KEY",
        help="Ingest key (il_ingest_…) or admin key (il_admin_…) for --url",
    ),
]


def _port_option(help_text: str | None = None) -> Any:
    return typer.Option(min=MIN_PORT, max=MAX_PORT, help=help_text)


# Where `serve` and `api` listen: both read the same settings.
HttpHostOpt = Annotated[str | None, typer.Option(help="Default 127.0.0.1 or INGESTLAYER_HOST")]
HttpPortOpt = Annotated[int | None, _port_option("Default 8000 or INGESTLAYER_PORT")]


def _settings(database_url: str | None = None, **overrides: Any) -> Settings:
    settings = Settings.from_env().with_overrides(database_url=database_url, **overrides)
    scheme = urllib.parse.urlsplit(settings.database_url).scheme.split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        # Said here, before a driver reports it in its own words (or as an internal error).
        raise CliError(
            "the database URL must be sqlite:///PATH or postgresql://USER@HOST/DATABASE "
            "(--database-url or INGESTLAYER_DATABASE_URL)"
        )
    _check_sqlite_directory(settings.database_url)
    return settings


def _sqlite_file(database_url: str) -> Path | None:
    """The file a SQLite URL names; None for PostgreSQL or a database in memory."""
    parts = urllib.parse.urlsplit(database_url)
    if (
        not parts.scheme.startswith("sqlite")
        or not parts.path.startswith("/")
        or parts.path in ("/", "/:memory:")
    ):
        return None  # not SQLite, or in memory (sqlite://)
    return Path(urllib.parse.unquote(parts.path[1:]))


def _check_sqlite_directory(database_url: str) -> None:
    """A SQLite file is created on first use, but not its directory: said plainly here, where
    the driver would fail from a thread of its own, with a traceback."""
    file = _sqlite_file(database_url)
    if file is not None and not file.parent.is_dir():
        raise CliError(f"cannot open the database at {mask_url(database_url)}: no directory {file.parent}")


def _check_sqlite_exists(database_url: str) -> None:
    """Only init, migrate and the server commands create a SQLite database. Any other command run
    in the wrong directory would leave a second, empty installation there (and, for `secrets
    set`, a second master key) and then report no project: the user is pointed at the first."""
    file = _sqlite_file(database_url)
    if file is not None and not file.exists():
        raise CliError(
            f"no database at {file.absolute()}: run `ingestlayer init` there, or name the server's "
            "database with --database-url or INGESTLAYER_DATABASE_URL"
        )


def cli_errors(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            result = fn(*args, **kwargs)
            # What is still buffered meets a closed pipe here, where it is status 141, not in
            # Python's flush at exit ("Exception ignored … BrokenPipeError", status 120).
            sys.stdout.flush()
            return result
        except (typer.Exit, typer.Abort, typer.TyperException):  # main() reports Abort (Ctrl-C) and
            raise  # usage errors
        except BrokenPipeError:  # whoever read the output stopped reading: nothing to say
            _quiet_stdout()
            raise typer.Exit(141) from None
        except (CliError, ValueError, OSError, LookupError) as exc:
            _print_error(str(exc))
            raise typer.Exit(1) from None
        except Exception as exc:  # anything else: still one line, with its type
            _print_error(database_problem(exc) if _is_database_error(exc) else f"{type(exc).__name__}: {exc}")
            raise typer.Exit(1) from None

    return wrapper


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit, and would report the broken pipe there.
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _is_database_error(exc: BaseException) -> bool:
    # SQLAlchemy is looked up, not imported: the CLI starts without it (only commands that open
    # the database load it, and only they can raise its errors).
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return isinstance(exc, sqlite3.Error) or (
        sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError)
    )


def database_problem(exc: BaseException) -> str:
    """A database's refusal in one line: the driver's error, never SQLAlchemy's text, which
    quotes the statement and its parameters (a destination's config, a secret's ciphertext)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).lower()
    if "database is locked" in text or "database is busy" in text:
        return "the database is locked by another connection and stayed locked; try again"
    condition = storage_condition(cause)
    if condition == "read_only":
        return (
            "the database cannot be written here: the file, or its directory (where SQLite keeps "
            "its -wal and -shm files), is read-only"
        )
    if condition == "disk_full":
        return "the database's disk is full: free space where the database is kept, then try again"
    from ingestlayer.store.outage_log import reason  # the database layer is loaded by now

    return f"the database refused: {reason(cause)}"


def _print_error(message: str) -> None:
    # One line whatever the message holds or the terminal's width: no wrapping, no markup.
    one_line = " ".join(message.split())
    err.print(f"[red]error:[/red] {escape(one_line)}", highlight=False, soft_wrap=True)


def _read_document(file: Path) -> dict[str, Any] | None:
    """The file's document, checked here so both modes refuse the same files in the same words."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{file}: not UTF-8 text") from None
    except OSError as exc:  # missing, a directory, unreadable
        raise CliError(f"{file}: {exc.strerror or exc}") from None
    try:
        document = load_config_yaml(text)
    except AliasExpansionError as exc:
        raise CliError(f"{file}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{file}: not valid YAML: {yaml_problem(exc)}") from None
    except RecursionError:  # PyYAML builds nested collections recursively
        raise CliError(f"{file}: nested too deeply to read") from None
    if document is None:  # an empty file (or only comments): None, for the caller to judge
        return None
    if not isinstance(document, dict):
        raise CliError(f"{file}: the file must be a mapping with `pipelines:`, `destinations:` or `sources:`")
    return document


def _with_backend(
    database_url: str | None,
    project: str | None,
    url: str | None,
    key: str | None,
    action: Callable[[Backend], Coroutine[Any, Any, T]],
    *,
    key_needed: str = "an admin key",
) -> T:
    backend: Backend
    if url:
        if not key:
            raise CliError(f"--url needs {key_needed}: --key or INGESTLAYER_ADMIN_KEY")
        if project:
            # The admin key chooses the project on a server; acting on the key's project while the
            # command names another (an apply --prune, say) must not happen silently.
            raise CliError("--project is for the database; with --url the admin key chooses the project")
        backend = RemoteBackend(url, key)
    else:
        settings = _settings(database_url)
        _check_sqlite_exists(settings.database_url)
        # Migrates before any event loop runs (Alembic drives its own).
        backend = LocalBackend(settings, project)

    async def run() -> T:
        try:
            return await action(backend)
        finally:
            await backend.close()

    return asyncio.run(run())


@app.command()
@cli_errors
def serve(
    host: HttpHostOpt = None,
    port: HttpPortOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Run the API, the worker and the dashboard in one process."""
    settings = _settings(database_url, host=host, port=port)
    # Imported once the settings have passed: a bad one is refused before a second of imports.
    from ingestlayer.server import run_http

    configure(settings.log_level)
    run_http(
        settings,
        worker=True,
        on_listening=lambda: err.print(
            f"ingestlayer {__version__} serving on http://{settings.host}:{settings.port}", highlight=False
        ),
    )


@app.command()
@cli_errors
def api(
    host: HttpHostOpt = None,
    port: HttpPortOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Run only the HTTP API (scale it apart from workers)."""
    settings = _settings(database_url, host=host, port=port)
    from ingestlayer.server import run_http

    configure(settings.log_level)
    run_http(settings, worker=False)


@app.command()
@cli_errors
def worker(
    host: Annotated[str | None, typer.Option(help="Where --port listens; default INGESTLAYER_HOST")] = None,
    port: Annotated[
        int | None, _port_option("Serve /healthz, /readyz and /metrics here; default INGESTLAYER_WORKER_PORT")
    ] = None,
    database_url: DbOpt = None,
) -> None:
    """Run only the router and dispatcher."""
    settings = _settings(database_url, host=host, worker_port=port)
    from ingestlayer.server import run_worker

    configure(settings.log_level)
    run_worker(settings)


@app.command()
@cli_errors
def migrate(database_url: DbOpt = None) -> None:
    """Bring the database schema up to date."""
    settings = _settings(database_url)
    applied = 0
    last = time.perf_counter()

    def step(revision: str, description: str) -> None:
        # One line per migration as it completes: a table rebuild can take a minute on a big file.
        nonlocal applied, last
        now = time.perf_counter()
        applied += 1
        # A migration's first docstring line, its reStructuredText ``code`` as Markdown's `code`.
        what = escape(description.splitlines()[0].replace("``", "`") if description else "")
        out.print(f"applied {escape(revision)}: {what} ({now - last:.1f} s)", highlight=False, soft_wrap=True)
        last = now

    migrate_database(settings, on_step=step)
    done = f" ({applied} migrations applied)" if applied else ""
    out.print(f"database is up to date{done}")


@app.command()
@cli_errors
def init(
    name: Annotated[str, typer.Option(help="Project name")] = "default",
    database_url: DbOpt = None,
) -> None:
    """Create a project and print its ingest and admin keys (shown once)."""
    from ingestlayer.store.projects import project_name_problem
    from ingestlayer.store.store import Conflict, Store

    problem = project_name_problem(name)
    if problem is not None:  # before a database is created or migrated for nothing
        raise CliError(f"--name {problem}")
    settings = _settings(database_url)
    migrate_database(settings)

    async def run() -> tuple[str, str, str]:
        store = Store.from_url(settings.database_url)
        try:
            return await store.create_project(name)
        except Conflict as exc:
            raise CliError(str(exc)) from None
        finally:
            await store.close()

    pid, ingest_key, admin_key = asyncio.run(run())
    out.print(f"project  {name} ({pid})", highlight=False)
    out.print(f"ingest   {ingest_key}", highlight=False)
    out.print(f"admin    {admin_key}", highlight=False)
    err.print("These keys are shown once; store them now.")


@app.command()
@cli_errors
def apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="YAML file with pipelines/destinations/sources")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff; change nothing")] = False,
    prune: Annotated[
        bool,
        typer.Option(
            help="Also delete pipelines, destinations and sources not in the file; a deleted "
            "source's ingress URL then refuses its sender's webhooks (404)"
        ),
    ] = False,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Create or update pipelines, destinations and sources from a file, by name."""
    document = _read_document(file)
    if document is None:
        if prune:
            # Most likely the wrong file, or one not written yet: pruning to it deletes it all.
            raise CliError(
                f"{file} is empty: with --prune that would delete every pipeline, destination and "
                "source (to mean that, write `pipelines: []`)"
            )
        document = {}
    result = _with_backend(database_url, project, url, key, lambda b: b.apply(document, dry_run, prune))
    # The server's address: the one called, or the public URL. Not INGESTLAYER_HOST/PORT: where a
    # server listens (if it runs with these settings at all) is not where senders reach it.
    base = (without_credentials(url) if url else _settings(database_url).public_url or "").rstrip("/")
    paths_only = False
    for change in result["changes"]:
        colour = {"create": "green", "update": "yellow", "delete": "red"}.get(change["action"], "dim")
        line = f"[{colour}]{change['action']:>9}[/{colour}] {change['kind']} {change['name']}"
        if change.get("ingress_path"):
            line += f"  ingress: {base}{change['ingress_path']}"
            paths_only = paths_only or not base
        out.print(line, highlight=False)
        if dry_run and change["diff"]:
            out.print(change["diff"], highlight=False, markup=False)
    summary = ", ".join(f"{n} {a}" for a, n in sorted(result["summary"].items())) or "nothing to do"
    out.print(("dry run: " if dry_run else "applied: ") + summary)
    missing = result.get("missing_secrets") or []
    if missing:
        err.print(
            f"note: {'these secrets are' if len(missing) > 1 else 'this secret is'} not set yet: "
            f"{', '.join(missing)}; what needs {'them' if len(missing) > 1 else 'it'} fails and retries "
            "until `ingestlayer secrets set NAME`",
            highlight=False,
            soft_wrap=True,
        )
    unreadable = result.get("unreadable_env") or []
    if unreadable:
        them = "them" if len(unreadable) > 1 else "it"
        # On the database directly, the only INGESTLAYER_ENV_SECRETS known is this shell's, not
        # necessarily the server's: said as what it is, not as the server's refusal.
        who = "the server does not" if url else "INGESTLAYER_ENV_SECRETS here does not"
        err.print(
            f"note: {who} let pipelines read {', '.join(unreadable)} (env:); what needs {them} "
            f"fails and retries unless the server's INGESTLAYER_ENV_SECRETS lists {them} (or use ref: "
            "and `ingestlayer secrets set`)",
            highlight=False,
            soft_wrap=True,
        )
    if paths_only:
        err.print(
            "note: INGESTLAYER_PUBLIC_URL is not set, so ingress is shown as a path on the server's "
            "public address; set it to that address to print full URLs",
            highlight=False,
            soft_wrap=True,
        )


def _storable_key(key: str) -> bool:
    from ingestlayer.idempotency_keys import acceptable

    if not acceptable(key):
        return False
    try:
        key.encode()  # an argument that was not valid UTF-8 arrives with lone surrogates
    except UnicodeEncodeError:
        return False
    return True


def _read_payload(text: str) -> dict[str, Any]:
    """`send`'s JSON, refused as the API refuses it, in its words, in both modes."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if is_read_depth_error(exc):  # valid JSON, but deeper than orjson reads
            raise _too_deep(f"more than {ORJSON_READ_DEPTH} levels deep") from None
        if is_number_range_error(exc):  # valid JSON, but a number beyond a double's range
            raise CliError(number_out_of_range(out_of_range_path(text))) from None
        # The parser's reason and where, as the API gives them: "unexpected character: line 1
        # column 9 (char 8)" finds a trailing comma in a long payload.
        reason = str(exc).strip()
        raise CliError(
            f"payload is not valid JSON: {reason}" if reason else "payload is not valid JSON"
        ) from None
    if not isinstance(body, dict):
        # The API's words, with the argument that holds the payload named and what it was.
        raise CliError(f"payload must be a JSON object (the JSON argument), not {_json_kind(body)}")
    if nests_deeper(body, MAX_JSON_DEPTH):
        from ingestlayer.api.ingest import nesting_of

        raise _too_deep(nesting_of(body))
    # orjson reads an integer beyond 64 bits as a float, which would be stored rounded; the json
    # module reads it exactly (recursing, which the depth bounded above keeps safe).
    if (where := huge_int_path(json.loads(text))) is not None:
        raise CliError(number_out_of_range(where))
    return body


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else "a number"


def _too_deep(how: str) -> CliError:
    # Imported only to refuse: the API's errors bring FastAPI, which `send` does not otherwise load.
    from ingestlayer.api.errors import too_deep_error

    return CliError(too_deep_error("payload", None, how).message)


@app.command()
@cli_errors
def send(
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Event type, e.g. feature.used")],
    payload: Annotated[str, typer.Argument(metavar="JSON", help="The payload, a JSON object")] = "{}",
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: SendKeyOpt = None,
) -> None:
    """Send one event."""
    from ingestlayer.pipeline.matching import invalid_type_message, is_valid_event_type

    if not is_valid_event_type(type_):
        raise CliError(invalid_type_message(type_))  # in the API's words, as for the payload
    if idempotency_key is not None and not _storable_key(idempotency_key):
        # The API's rule, checked here for both modes: the database alone took a key the server
        # refuses (SQLite any length, PostgreSQL up to 255), and an empty one matched every
        # later send with an empty one.
        raise CliError("--idempotency-key must be 1 to 255 characters, without control characters")
    body = _read_payload(payload)
    result = _with_backend(
        database_url,
        project,
        url,
        key,
        lambda b: b.send(type_, body, idempotency_key),
        key_needed="an ingest or admin key",
    )
    out.print(f"{result['id']}" + (" (duplicate)" if result["duplicate"] else ""), highlight=False)


@app.command()
@cli_errors
def events(
    type_: Annotated[str | None, typer.Option("--type", help="Type or prefix*")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only events received at or after (ISO 8601 or epoch s)")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only events received before")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """List recent events."""
    if type_ and not is_type_filter(type_):  # as the API refuses it
        raise CliError(f"--type: {TYPE_FILTER_RULE}, not {type_[:80]!r}")
    match = EventFilter(type_, *time_range(since, until))
    rows = _with_backend(database_url, project, url, key, lambda b: b.events(match, limit))
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(_id_column("id"), "type", "received", "payload")
    for e in rows:
        table.add_row(e["id"], e["type"], e["received_at"], orjson.dumps(e["payload"]).decode()[:60])
    out.print(table)


DELIVERY_STATUSES = frozenset({"pending", "delivering", "retrying", "delivered", "dead"})
# A delivery being attempted right now is left alone by a replay.
REPLAYABLE_STATUSES = DELIVERY_STATUSES - {"delivering"}


def _usage(ctx: typer.Context, option: str, message: str) -> typer.BadParameter:
    """A value an option cannot take, said as click says its own (a --limit out of range): a
    usage error, exit 2, pointing to the command's --help."""
    return typer.BadParameter(message, ctx=ctx, param_hint=option)


def _check_statuses(ctx: typer.Context, status: list[str] | None, valid: frozenset[str]) -> None:
    for s in status or []:
        if s not in valid:
            raise _usage(ctx, "--status", f"{s!r} is not one of {', '.join(sorted(valid))}")


@app.command()
@cli_errors
def deliveries(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="Only deliveries with this status: pending, delivering, retrying, delivered or dead "
            "(repeat --status for more)",
        ),
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(
            "--destination", help="Name or id (an endpoint's: its ep_ id; a deleted one's: its dst_ id)"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """List recent deliveries."""
    _check_statuses(ctx, status, DELIVERY_STATUSES)
    rows = _with_backend(database_url, project, url, key, lambda b: b.deliveries(status, destination, limit))
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(_id_column("id"), "status", _id_column("event"), "type", "destination", "attempts", "last")
    for d in rows:
        last = str(d["last_status_code"] or d["last_error"] or "")
        table.add_row(
            d["id"],
            d["status"],
            d["event_id"],
            d["event_type"],
            d["destination"],
            str(d["attempt_count"]),
            last[:40],
        )
    out.print(table)


@app.command()
@cli_errors
def replay(
    ctx: typer.Context,
    delivery_id: Annotated[
        str | None, typer.Argument(help="One delivery id; omit to replay by filter")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="Only deliveries with this status: pending, retrying, delivered or dead (repeat "
            "--status for more; default: dead)",
        ),
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--destination", help="Name or id (an endpoint's: its ep_ id)")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only deliveries created at or after (ISO 8601 or epoch s)")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only deliveries created before")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Replay at most this many (default: every match)")
    ] = None,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Replay one delivery, or every delivery matching a filter (new attempts, same ids).

    Deliveries to a disabled or deleted destination are left as they are: they would fail at
    once. Matches are replayed in pages of 10,000, each page after the last one's ids, so a
    delivery that fails again meanwhile is not taken twice."""
    _check_statuses(ctx, status, REPLAYABLE_STATUSES)
    if delivery_id and (destination or since or until or status or limit):
        raise CliError("replay takes one delivery id or filters, not both")
    if delivery_id:
        _with_backend(database_url, project, url, key, lambda b: b.replay_one(delivery_id))
        out.print("replayed 1 delivery")
        return
    match = ReplayFilter(status or ["dead"], destination, *time_range(since, until))
    count = _with_backend(database_url, project, url, key, lambda b: _replay_pages(b, match, limit))
    out.print(f"replayed {count} {'delivery' if count == 1 else 'deliveries'}")


REPLAY_PAGE = 10_000


async def _replay_pages(backend: Backend, match: ReplayFilter, limit: int | None) -> int:
    """Every match (up to ``limit``), a page at a time, with the count so far on stderr."""
    count, after = 0, None
    while limit is None or count < limit:
        size = REPLAY_PAGE if limit is None else min(REPLAY_PAGE, limit - count)
        try:
            ids = await backend.replay_page(match, after, size)
        except (Exception, KeyboardInterrupt, asyncio.CancelledError) as exc:
            if isinstance(exc, Exception):
                if count:  # those are replayed: the error that follows is about the rest
                    err.print(f"replayed {count} before the error below", highlight=False)
            else:
                err.print(
                    f"interrupted: replayed {count}, and the page in flight may have been", highlight=False
                )
            raise
        count += len(ids)
        if len(ids) < size or count == limit:
            break
        after = ids[-1]
        err.print(f"replayed {count} so far…", highlight=False)
    return count


@app.command()
@cli_errors
def tail(
    ctx: typer.Context,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this event type or pattern (* matches any run)")
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--destination", help="Only deliveries to this destination (name or id)")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            metavar="OUTCOME",
            help="Only this delivery outcome: delivered, failed or dead (repeat --status for more)",
        ),
    ] = None,
    show_events: Annotated[bool, typer.Option("--events/--no-events", help="Show new events")] = True,
    show_deliveries: Annotated[
        bool, typer.Option("--deliveries/--no-deliveries", help="Show delivery outcomes")
    ] = True,
    last: Annotated[
        int,
        typer.Option(
            "-n",
            "--last",
            min=0,
            max=500,
            help="First show the newest N events and the N latest delivery outcomes (by when each "
            "happened, among the last 10,000 deliveries made)",
        ),
    ] = 0,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls")] = 1.0,
    duration: Annotated[
        float | None,
        typer.Option("--for", min=0, metavar="SECONDS", help="Stop after SECONDS (exit 0); default: Ctrl-C"),
    ] = None,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Follow new events and delivery outcomes as they happen, until Ctrl-C (exit 0) or --for.

    One line per event that arrives after the start (time, id, type, source) and per delivery
    outcome: delivered, failed (an attempt failed; it will be retried) or dead, with the
    destination, the status code or error and the attempt number. Nothing from before the start
    is shown unless asked with --last. Polls every --interval seconds and reads everything new
    since the last poll, page after page; a line is never shown twice.
    """
    from ingestlayer.cli_tail import OUTCOMES, TailOptions, follow
    from ingestlayer.pipeline.matching import is_valid_pattern

    if type_ is not None and not is_valid_pattern(type_):
        raise CliError(f"--type {type_!r} is not an event type or pattern (such as order.* or *.failed)")
    outcomes = list(OUTCOMES.values())
    for s in status or []:
        if s not in outcomes:
            raise _usage(ctx, "--status", f"{s!r} is not one of {', '.join(outcomes)}")
    if not (show_events or show_deliveries):
        raise _usage(ctx, "--no-events, --no-deliveries", "together they leave nothing to show")
    options = TailOptions(
        type_pattern=type_,
        destination=destination,
        outcomes=frozenset(status or outcomes),
        events=show_events,
        deliveries=show_deliveries,
        last=last,
    )
    what = " and ".join(w for w, on in (("events", show_events), ("deliveries", show_deliveries)) if on)
    # The server's address without its password; the database's not at all.
    where = mask_url(url) if url else "the database"

    def ready() -> None:
        err.print(f"following {what} on {escape(where)} (Ctrl-C to stop)", highlight=False, soft_wrap=True)

    def emit(line: str) -> None:
        out.print(line, highlight=False, soft_wrap=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a tail ends: exit 0
        _with_backend(
            database_url,
            project,
            url,
            key,
            lambda b: follow(b, options, emit, interval=interval, duration=duration, ready=ready),
        )


@secrets_app.command("set")
@cli_errors
def secrets_set(
    name: Annotated[str, typer.Argument(help="Referenced as ref:NAME")],
    value: Annotated[
        str | None, typer.Option(help="Default: read from stdin or prompt (never echoed)")
    ] = None,
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Store a secret, encrypted with the server's master key."""
    check_secret_name(name)  # before a value is asked for
    if not url:  # likewise: a value typed in for no database is typed in vain
        _check_sqlite_exists(_settings(database_url).database_url)
    if value is None:
        value = (
            sys.stdin.read().rstrip("\n")
            if not sys.stdin.isatty()
            else typer.prompt("value", hide_input=True)
        )
    if not value:
        raise CliError("the secret value is empty")
    secret = value

    async def store(b: Backend) -> tuple[bool, Path | None]:
        return await b.set_secret(name, secret), b.created_key_file

    replaced, created = _with_backend(database_url, project, url, key, store)
    out.print(f"secret {name} {'replaced' if replaced else 'stored'}", highlight=False)
    if created is not None:
        # With no secret stored yet nothing shows the key differs from the server's (run from
        # another directory, against PostgreSQL): said now, or the servers refuse to start later.
        err.print(
            f"note: there was no master key at {created}: this command created one and "
            "encrypted the secret with it; every server process must use this key (start it here, "
            "or set INGESTLAYER_SECRET_KEY_FILE to this file)",
            highlight=False,
            soft_wrap=True,
        )


@secrets_app.command("delete")
@cli_errors
def secrets_delete(
    name: Annotated[str, typer.Argument(help="The secret's name (as in ref:NAME)")],
    database_url: DbOpt = None,
    project: ProjectOpt = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Delete a secret. Needs no master key: it also removes a secret stored under another key."""
    check_secret_name(name)
    _with_backend(database_url, project, url, key, lambda b: b.delete_secret(name))
    out.print(f"secret {name} deleted", highlight=False)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def _version_option(value: bool) -> None:
    if value:
        version()
        raise typer.Exit()


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            expose_value=False,
            callback=_version_option,
            help="Print the version.",
        ),
    ] = False,
) -> None:
    pass


def _help_paragraphs(text: str) -> str:
    """A docstring as help: its paragraphs each one line, for the help to wrap to the terminal.
    Typer keeps a docstring's line breaks, so lines wrapped at the source's width came out
    broken again at the terminal's ("they\n would fail at\n once.")."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def _finish_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        doc = command.help if isinstance(command.help, str) else inspect.getdoc(command.callback)
        if doc:
            command.help = _help_paragraphs(doc)
        if command.cls in (None, TyperCommand):  # typer's own: flags shown without a value
            command.cls = _Command
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _finish_help(group.typer_instance)


_finish_help(app)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Not standalone: click would draw a usage error as a boxed panel under the usage text;
    # here it is one line, like every other error, with exit status 2 as click gives it.
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors (exit 2) and the like
        message = exc.format_message().rstrip(".")
        if not message:  # no command given: click has printed the help, which says it all
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            message += f" (see `{ctx.command_path} --help`)"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(ABORTED_EXIT)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
