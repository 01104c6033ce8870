"""What the CLI refuses or says, as a user meets it:

- ``send`` refuses an integer beyond 64 bits, as the API does (it was stored rounded to a float),
  and calls JSON nested past what can be read too deep (it was called invalid);
- ``apply`` on the database prints ingress paths unless the public URL is known (it printed
  URLs on a guessed address, the default port), and names the secrets not set yet;
- commands that only read or manage a project do not create a database (or a master key file)
  in whatever directory they run in; they name the file they looked for;
- ports from the environment are named when unreadable, and out-of-range ones refused;
- ``--version``.

The CLI runs as users run it: the installed entry point, in a subprocess.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

from ingestlayer import __version__
from tests.integration.test_cli import start
from tests.support.cli import Run, at_once, cli, ok, one_line_error
from tests.support.server import wait_for

OUT_OF_RANGE = "numbers must fit in 64 bits; send larger ones as strings"


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---- send: numbers beyond 64 bits, JSON nested too deeply ---------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ('{"n": 123456789012345678901234567890}', "payload.n"),
        # One below the smallest signed 64-bit integer, named as the API names it.
        ('{"a": [1, {"b": -9223372036854775809}]}', "payload.a[1].b"),
        ('{"m": 1, "n": 18446744073709551616}', "payload.n"),  # one above the largest unsigned one
        ('{"n": ' + "9" * 400 + "}", "payload.n"),  # beyond even a double: no parser here reads it
    ],
)
async def test_send_refuses_integers_beyond_64_bits_in_both_modes(
    payload: str, field: str, sqlite_url: str, tmp_path: Path
) -> None:
    server = await start(sqlite_url)
    try:
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.ingest_key)
        for run in await asyncio.gather(
            cli("send", "n.x", payload, *local, cwd=tmp_path, db_url=sqlite_url),
            cli("send", "n.x", payload, *remote, cwd=tmp_path),
        ):
            one_line_error(run, f"{field}: {OUT_OF_RANGE}")
        # The API's words for the same payload.
        status, body = await server.request(
            "POST", "/v1/events", key=server.ingest_key, data=payload_event(payload)
        )
        assert status == 422 and body["error"]["field"] == field, body
        assert body["error"]["message"].endswith(f"{field}: {OUT_OF_RANGE}"), body
        # Nothing was stored, rounded or otherwise.
        status, body = await server.request("GET", "/v1/events")
        assert status == 200 and body["data"] == [], body
    finally:
        await server.stop()


def payload_event(payload: str) -> bytes:
    return b'{"type": "n.x", "payload": ' + payload.encode() + b"}"


async def test_send_gives_the_parsers_reason_and_position_for_json_it_cannot_read(
    sqlite_url: str, tmp_path: Path
) -> None:
    ok(await cli("init", "--name", "bad-json", cwd=tmp_path, db_url=sqlite_url))
    run = await cli("send", "n.x", '{"order": {"total": 1,}}', cwd=tmp_path, db_url=sqlite_url)
    one_line_error(run, "payload is not valid JSON: trailing comma is not allowed: line 1 column 22")


@pytest.mark.parametrize(
    ("payload", "kind"), [("[1]", "an array"), ('"x"', "a string"), ("3", "a number"), ("null", "null")]
)
async def test_send_refuses_a_payload_that_is_not_an_object_in_the_apis_words(
    payload: str, kind: str, tmp_path: Path
) -> None:
    # Refused before any database is opened; it said "JSON must be a JSON object", naming neither
    # the payload (the API's word) nor the argument that holds it.
    run = await cli("send", "a.b", payload, cwd=tmp_path)
    assert one_line_error(run) == f"error: payload must be a JSON object (the JSON argument), not {kind}"


async def test_send_refuses_an_invalid_type_in_the_apis_words(sqlite_url: str, tmp_path: Path) -> None:
    # It said "'bad type!' is not a valid event type (dotted name such as feature.used)" where the
    # API says "type 'bad type!' is not a valid event name (...)": the docs promise the same words.
    server = await start(sqlite_url)
    try:
        status, body = await server.request(
            "POST", "/v1/events", key=server.ingest_key, data=b'{"type": "bad type!", "payload": {}}'
        )
        assert status == 422 and body["error"]["field"] == "type", body
        said_by_api = body["error"]["message"]
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.ingest_key)
        for run in await asyncio.gather(
            cli("send", "bad type!", "{}", *local, cwd=tmp_path, db_url=sqlite_url),
            cli("send", "bad type!", "{}", *remote, cwd=tmp_path),
        ):
            assert one_line_error(run) == f"error: {said_by_api}"
    finally:
        await server.stop()


async def test_send_keeps_the_64_bit_extremes_exactly(sqlite_url: str, tmp_path: Path) -> None:
    ok(await cli("init", "--name", "exact", cwd=tmp_path, db_url=sqlite_url))
    payload = '{"big": 18446744073709551615, "small": -9223372036854775808, "f": 1.5}'
    ok(await cli("send", "n.x", payload, cwd=tmp_path, db_url=sqlite_url))
    (event,) = ok(await cli("events", "--json", cwd=tmp_path, db_url=sqlite_url)).json()
    assert event["payload"] == {"big": 2**64 - 1, "small": -(2**63), "f": 1.5}


async def test_send_says_json_nested_past_what_can_be_read_is_too_deep(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Deeper than orjson reads (1024 levels), the JSON was called invalid; it is valid, but deep."""
    server = await start(sqlite_url)
    try:
        deep = '{"a": ' * 1100 + "1" + "}" * 1100
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.ingest_key)
        # Past the API's limit but readable: the depth is named, in the API's words.
        readable = '{"a": ' * 70 + "1" + "}" * 70
        *runs, run = await asyncio.gather(
            cli("send", "x.y", deep, *local, cwd=tmp_path, db_url=sqlite_url),
            cli("send", "x.y", deep, *remote, cwd=tmp_path),
            cli("send", "x.y", readable, *local, cwd=tmp_path, db_url=sqlite_url),
        )
        for too_deep in runs:
            line = one_line_error(
                too_deep, "payload is nested more than 1024 levels deep", "at most 64 levels"
            )
            assert "valid JSON" not in line, line
        one_line_error(run, "payload is nested 70 levels deep; JSON may nest at most 64 levels")
    finally:
        await server.stop()


# ---- apply: the ingress address -----------------------------------------------------------------

SOURCES = "sources:\n  - { name: stripe-in, verify: none }\n"


async def test_apply_prints_the_ingress_path_and_a_hint_when_the_address_is_unknown(
    sqlite_url: str, tmp_path: Path
) -> None:
    ok(await cli("init", "--name", "hooks", cwd=tmp_path, db_url=sqlite_url))
    (tmp_path / "sources.yaml").write_text(SOURCES)
    # The server may listen anywhere: INGESTLAYER_PORT, set here, is not where senders reach it.
    run = ok(
        await cli("apply", "-f", "sources.yaml", cwd=tmp_path, db_url=sqlite_url, INGESTLAYER_PORT="9999")
    )
    assert "ingress: /v1/ingress/src_" in run.out, run
    assert "http://" not in run.out, run
    assert "INGESTLAYER_PUBLIC_URL" in run.err and len(run.err.splitlines()) == 1, run


async def test_apply_prints_the_full_ingress_url_on_the_public_url(sqlite_url: str, tmp_path: Path) -> None:
    ok(await cli("init", "--name", "hooks", cwd=tmp_path, db_url=sqlite_url))
    (tmp_path / "sources.yaml").write_text(SOURCES)
    public = {"INGESTLAYER_PUBLIC_URL": "https://hooks.example.com/"}
    run = ok(await cli("apply", "-f", "sources.yaml", cwd=tmp_path, db_url=sqlite_url, **public))
    assert "ingress: https://hooks.example.com/v1/ingress/src_" in run.out, run
    assert run.err == "", run


async def test_apply_names_the_secrets_not_set_yet(sqlite_url: str, tmp_path: Path) -> None:
    ok(await cli("init", "--name", "hooks", cwd=tmp_path, db_url=sqlite_url))
    hook = "      - webhook.out: { url: https://hooks.example.com/in, auth: hmac, secret: ref:acme-hooks }\n"
    (tmp_path / "hooks.yaml").write_text(
        "pipelines:\n  - name: all\n    source: { match: ['*'] }\n    destinations:\n" + hook
    )
    run = ok(await cli("apply", "-f", "hooks.yaml", "--dry-run", cwd=tmp_path, db_url=sqlite_url))
    assert "not set yet: acme-hooks;" in run.err and "secrets set" in run.err, run
    ok(await cli("secrets", "set", "acme-hooks", cwd=tmp_path, db_url=sqlite_url, stdin=b"s3cret"))
    run = ok(await cli("apply", "-f", "hooks.yaml", cwd=tmp_path, db_url=sqlite_url))
    assert "not set" not in run.err, run


async def test_apply_says_whose_setting_keeps_an_env_reference_unread(
    sqlite_url: str, tmp_path: Path
) -> None:
    """On the database directly, the CLI knows only its own shell's INGESTLAYER_ENV_SECRETS: its
    note said "the server does not let pipelines read" a variable the server was reading fine."""
    hook = (
        "      - webhook.out: { url: https://hooks.example.com/in, auth: bearer, secret: env:ACME_HOOKS }\n"
    )
    (tmp_path / "hooks.yaml").write_text(
        "pipelines:\n  - name: all\n    source: { match: ['*'] }\n    destinations:\n" + hook
    )
    server = await start(sqlite_url, env_secrets=("OTHER_*",))  # the server reads no ACME_ variable
    try:
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.admin_key)
        dry = ("apply", "-f", "hooks.yaml", "--dry-run")
        # Dry runs change nothing: all three at once.
        run, allowed, remote_run = await asyncio.gather(
            cli(*dry, *local, cwd=tmp_path, db_url=sqlite_url),
            cli(*dry, *local, cwd=tmp_path, db_url=sqlite_url, INGESTLAYER_ENV_SECRETS="ACME_*"),
            cli(*dry, *remote, cwd=tmp_path),
        )
        ok(run)
        assert (
            "note: INGESTLAYER_ENV_SECRETS here does not let pipelines read ACME_HOOKS (env:)" in run.err
        ), run
        assert "unless the server's INGESTLAYER_ENV_SECRETS lists it" in run.err, run
        assert "note:" not in ok(allowed).err, allowed
        assert "note: the server does not let pipelines read ACME_HOOKS (env:)" in ok(remote_run).err, (
            remote_run
        )
    finally:
        await server.stop()


# ---- commands that must not create a database ---------------------------------------------------

# Every command that uses the database but may not create it.
DATABASE_USERS = [
    ("events",),
    ("deliveries",),
    ("replay",),
    ("replay", "dlv_x"),
    ("tail", "--for", "0"),
    ("apply", "-f", "sources.yaml"),
    ("send", "a.b", "{}"),
    ("secrets", "set", "hooks", "--value", "v"),
    # Said before the value is read (here an empty stdin, which it would otherwise complain of).
    ("secrets", "set", "hooks"),
]


@pytest.mark.parametrize("command", DATABASE_USERS, ids=" ".join)
async def test_a_command_without_a_database_creates_none(command: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "sources.yaml").write_text(SOURCES)
    # No INGESTLAYER_SECRET_KEY: `secrets set` created ./ingestlayer.key as well as the database.
    run = await cli(*command, cwd=tmp_path, secret_key=None)
    one_line_error(
        run,
        f"no database at {tmp_path / 'ingestlayer.db'}",
        "run `ingestlayer init` there",
        "--database-url",
        "INGESTLAYER_DATABASE_URL",
    )
    assert files_in(tmp_path) == ["sources.yaml"]


async def test_a_database_url_naming_a_missing_file_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere.db"
    for run in await asyncio.gather(
        cli("events", cwd=tmp_path, db_url=f"sqlite:///{missing}"),
        cli("events", "--database-url", f"sqlite:///{missing}", cwd=tmp_path),
    ):
        one_line_error(run, f"no database at {missing}")
    assert files_in(tmp_path) == []
    # Once initialised there, the same commands work.
    ok(await cli("init", "--database-url", f"sqlite:///{missing}", cwd=tmp_path))
    ok(await cli("events", "--database-url", f"sqlite:///{missing}", cwd=tmp_path))


# ---- ports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "words"),
    [
        (
            ("serve",),
            {"INGESTLAYER_PORT": "abc"},
            "INGESTLAYER_PORT must be a port number (1-65535), got 'abc'",
        ),
        (
            ("api",),
            {"INGESTLAYER_PORT": "70000"},
            "INGESTLAYER_PORT must be a port number (1-65535), got '70000'",
        ),
        (("serve",), {"INGESTLAYER_PORT": "0"}, "INGESTLAYER_PORT must be a port number (1-65535), got '0'"),
        (
            ("worker",),
            {"INGESTLAYER_WORKER_PORT": "9464x"},
            "INGESTLAYER_WORKER_PORT must be a port number (1-65535), got '9464x'",
        ),
        # Every numeric setting names itself the same way.
        (
            ("serve",),
            {"INGESTLAYER_DELIVERY_CONCURRENCY": "lots"},
            "INGESTLAYER_DELIVERY_CONCURRENCY must be an integer, got 'lots'",
        ),
        (
            ("serve",),
            {"INGESTLAYER_POLL_INTERVAL": "fast"},
            "INGESTLAYER_POLL_INTERVAL must be a number, got 'fast'",
        ),
    ],
)
async def test_a_bad_numeric_setting_is_named(
    command: tuple[str, ...], env: dict[str, str], words: str, tmp_path: Path
) -> None:
    run = await cli(*command, "--database-url", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path, **env)
    one_line_error(run, words)
    assert "invalid literal" not in run.err and "serving" not in run.err, run


@pytest.mark.parametrize(
    ("command", "bound"),
    [
        (("serve", "--port", "99999"), "less than or equal to 65535"),
        # 0 ("any free port") too: the port the system picks would be reported nowhere.
        (("api", "--port", "0"), "greater than or equal to 1"),
        (("worker", "--port", "65536"), "less than or equal to 65535"),
    ],
)
async def test_a_port_option_out_of_range_is_a_usage_error(
    command: tuple[str, ...], bound: str, tmp_path: Path
) -> None:
    run = await cli(*command, "--database-url", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path)
    one_line_error(run, "Invalid value for '--port'", bound, rc=2)
    assert "serving" not in run.err and files_in(tmp_path) == [], run


# ---- --version --------------------------------------------------------------------------------


async def test_version_option_prints_what_the_version_command_does(tmp_path: Path) -> None:
    by_option, by_command = await asyncio.gather(cli("--version", cwd=tmp_path), cli("version", cwd=tmp_path))
    assert ok(by_option).out == ok(by_command).out == f"{__version__}\n"
    assert by_option.err == ""


async def test_no_command_prints_the_help_without_an_empty_error_line(tmp_path: Path) -> None:
    cases = (((), "serve"), (("secrets",), "set"))
    runs = await asyncio.gather(*(cli(*args, cwd=tmp_path) for args, _ in cases))
    for (_, command), run in zip(cases, runs, strict=True):
        assert run.rc == 2, run  # a usage error, as click has it
        shown = run.out + run.err
        assert "Commands" in shown and f" {command} " in shown, run
        assert "error:" not in shown, run  # it said "error:  (see `ingestlayer --help`)"


# ---- replay: an endpoint by its id, and by time ---------------------------------------------------


async def test_replay_takes_an_endpoints_id_and_a_time_window_in_both_modes(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = await start(sqlite_url)
    try:
        status, ep = await server.request(
            "POST",
            "/v1/endpoints",
            json={
                "url": "http://127.0.0.1:9/refused",
                "events": ["order.*"],
                "auth": "none",
                "retry": {"schedule": [0], "jitter": 0},
            },
        )
        assert status == 201, ep
        before = time.time() - 1
        assert (await server.ingest("order.placed", {"n": 1}))[0] == 202

        async def dead() -> bool:
            _, page = await server.request("GET", f"/v1/deliveries?status=dead&destination={ep['id']}")
            return len(page["data"]) == 1  # the endpoint's own id names its destination

        await wait_for(dead)
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.admin_key)
        modes: tuple[tuple[tuple[str, ...], dict[str, str]], ...] = (
            (local, {"db_url": sqlite_url}),
            (remote, {}),
        )
        for mode, where in modes:
            # The window before the delivery was made matches nothing, so replays nothing
            # whenever it runs: at once with the one that matches it.
            until, since = await asyncio.gather(
                cli(
                    "replay", "--destination", ep["id"], "--until", str(before), *mode, cwd=tmp_path, **where
                ),
                cli(
                    "replay", "--destination", ep["id"], "--since", str(before), *mode, cwd=tmp_path, **where
                ),
            )
            assert "replayed 0 deliveries" in ok(until).out, until  # it was made after --until
            assert "replayed 1 delivery" in ok(since).out, since
            await wait_for(dead)
        # Refusals, in both modes, all at once: none replays anything.
        refusals: list[tuple[Awaitable[Run], str]] = []
        for mode, where in modes:
            refusals.append(
                (
                    cli("replay", "--since", "yesterday", *mode, cwd=tmp_path, **where),
                    "--since must be an ISO 8601 timestamp or epoch seconds",
                )
            )
            for command in ("replay", "events"):
                window = ("--since", str(before + 60), "--until", str(before))
                refusals.append(
                    (
                        cli(command, *window, *mode, cwd=tmp_path, **where),
                        f"--since ({before + 60}) is later than --until ({before}): nothing can match",
                    )
                )
            refusals.append(
                (
                    cli("replay", "dlv_x", "--destination", ep["id"], *mode, cwd=tmp_path, **where),
                    "one delivery id or filters, not both",
                )
            )
        runs = await at_once(*(run for run, _ in refusals))
        for (_, words), run in zip(refusals, runs, strict=True):
            one_line_error(run, words)
        # Nothing was replayed by them: the one delivery is still dead, after its three attempts.
        _, page = await server.request("GET", f"/v1/deliveries?status=dead&destination={ep['id']}")
        assert [d["attempt_count"] for d in page["data"]] == [3], page
    finally:
        await server.stop()


# ---- a port already in use ------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["serve", "api", "worker"])
async def test_a_port_in_use_is_one_line_before_anything_starts(role: str, tmp_path: Path) -> None:
    """`serve` printed that it was serving, logged that it had started, then uvicorn's error
    among the other lines, and exited 3."""
    ok(await cli("init", cwd=tmp_path))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        run = await cli(role, "--port", str(port), cwd=tmp_path)
    finally:
        taken.close()
    one_line_error(run, f"cannot listen on 127.0.0.1:{port}")
    assert "serving on" not in run.out + run.err
