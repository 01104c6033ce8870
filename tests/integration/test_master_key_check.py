"""The database records which master key its secrets are encrypted with, from the first process
that uses a key with it, and every process checks its key against that first.

Before, nothing recorded the key until a secret was stored. A docs walkthrough: `serve` running in
directory A (its key A/ingestlayer.key), `ingestlayer secrets set x` run from directory B made
B/ingestlayer.key, stored x under it, and `serve` in A, restarted, refused to start, with no
`secrets delete` to get out (the REST DELETE needs a running server).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

from ingestlayer.runtime import Runtime
from ingestlayer.secretbox import MasterKeyMismatch, SecretBox
from ingestlayer.store.store import Store
from tests.support.cli import CLI, cli, cli_env, ok, one_line_error
from tests.support.processes import free_port
from tests.support.server import start_server
from tests.support.server import test_settings as server_settings

MISMATCH = "the master key is not the one the database's secrets were stored with"
START_TIMEOUT = 30.0


def printed(log: Path) -> str:
    return log.read_text(errors="replace")


async def serve_once(cwd: Path, db_url: str, log: Path) -> str:
    """Run `ingestlayer serve` in ``cwd`` with its key file there (no INGESTLAYER_SECRET_KEY) until
    it says it is serving, then stop it; or return its refusal. Returns what it printed."""
    env = cli_env(db_url, secret_key=None, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while proc.returncode is None and "serving on" not in printed(log):
            assert time.monotonic() < deadline, printed(log)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    return printed(log)


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    return a, b


async def test_secrets_set_from_another_directory_is_refused_before_it_makes_a_key(
    db_url: str, tmp_path: Path
) -> None:
    """The walkthrough: refused at `secrets set`, with no key file left in B, and the server in A
    still starts."""
    a, b = dirs(tmp_path)
    ok(await cli("init", "--name", "acme", cwd=a, db_url=db_url, secret_key=None))
    assert "serving on" in await serve_once(a, db_url, tmp_path / "serve1.log")
    assert (a / "ingestlayer.key").exists()

    # No key file, and (at once: both are refused, storing nothing) another key in the
    # environment, refused as well, naming the variable.
    run, other = await asyncio.gather(
        cli("secrets", "set", "x", cwd=b, db_url=db_url, secret_key=None, stdin=b"v"),
        cli("secrets", "set", "x", cwd=b, db_url=db_url, secret_key="another-key", stdin=b"v"),
    )
    one_line_error(run, MISMATCH, f"there is no key file at {b / 'ingestlayer.key'}", "nothing was stored")
    assert "INGESTLAYER_SECRET_KEY_FILE" in run.err
    assert not (b / "ingestlayer.key").exists()
    one_line_error(other, MISMATCH, "it is INGESTLAYER_SECRET_KEY", "nothing was stored")

    assert "serving on" in await serve_once(a, db_url, tmp_path / "serve2.log")
    # Pointed at A's key file, the command from B stores the secret.
    key_file = str(a / "ingestlayer.key")
    run = ok(
        await cli(
            "secrets",
            "set",
            "x",
            cwd=b,
            db_url=db_url,
            secret_key=None,
            stdin=b"v",
            INGESTLAYER_SECRET_KEY_FILE=key_file,
        )
    )
    assert run.out.strip() == "secret x stored" and run.err == ""
    assert not (b / "ingestlayer.key").exists()
    assert "serving on" in await serve_once(a, db_url, tmp_path / "serve3.log")


async def test_a_key_file_is_made_where_the_database_has_no_key_yet(db_url: str, tmp_path: Path) -> None:
    """The first command to use a key with the database still makes the key file, and says so;
    the servers then take that key and no other."""
    a, b = dirs(tmp_path)
    ok(await cli("init", "--name", "acme", cwd=a, db_url=db_url, secret_key=None))
    run = ok(await cli("secrets", "set", "x", cwd=b, db_url=db_url, secret_key=None, stdin=b"v"))
    assert "this command created one" in run.err
    assert (b / "ingestlayer.key").exists()
    printed = await serve_once(a, db_url, tmp_path / "serve.log")
    assert MISMATCH in printed and f"there is no key file at {a / 'ingestlayer.key'}" in printed
    assert not (a / "ingestlayer.key").exists()


async def test_two_processes_starting_at_once_with_different_keys_agree_on_one(db_url: str) -> None:
    """Both found no check value and no secret; one writes its check value, and the other reads
    it back and is refused rather than writing its own."""
    first = Runtime(server_settings(db_url, secret_key="first-master-key"))
    second = Runtime(server_settings(db_url, secret_key="second-master-key"))
    try:
        results = await asyncio.gather(
            first.check_master_key(), second.check_master_key(), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, MasterKeyMismatch)]
        assert len(refused) == 1 and results.count(None) == 1, results
        assert "it is INGESTLAYER_SECRET_KEY" in str(refused[0])
        winner = first if results[0] is None else second
        check = await winner.store.master_key_check()
        assert check is not None and winner.box.opens(check)
    finally:
        await first.store.close()
        await second.store.close()


async def test_commands_started_at_once_with_new_key_files_keep_one(db_url: str, tmp_path: Path) -> None:
    """Two `secrets set` from two directories, neither holding a key file, at once on a
    database with no key yet: one stores its secret under the key it made, the other is
    refused and leaves no key file."""
    a, b = dirs(tmp_path)
    ok(await cli("init", "--name", "acme", cwd=a, db_url=db_url, secret_key=None))
    runs = await asyncio.gather(
        cli("secrets", "set", "x", "--value", "a", cwd=a, db_url=db_url, secret_key=None),
        cli("secrets", "set", "y", "--value", "b", cwd=b, db_url=db_url, secret_key=None),
    )
    assert sorted(r.rc for r in runs) == [0, 1], runs
    kept = [d for d in (a, b) if (d / "ingestlayer.key").exists()]
    assert len(kept) == 1, runs
    (winner,) = [r for r in runs if r.rc == 0]
    assert str(kept[0] / "ingestlayer.key") in winner.err


async def test_a_database_from_before_the_check_value_adopts_the_key_its_secrets_open_with(
    db_url: str, tmp_path: Path
) -> None:
    """Upgraded: secrets, no check value. The key that reads them passes and is recorded; from
    then on another key is refused even where it could not have been told apart before."""
    store = Store.from_url(db_url)
    right_key = "the-right-master-key"
    right = SecretBox(right_key)
    try:
        pid, _, _ = await store.create_project("acme")
        await store.set_secret(pid, "tok", right.encrypt("s3cret"))  # as an earlier version stored it
        assert await store.master_key_check() is None
    finally:
        await store.close()

    ok(
        await cli(
            "secrets", "set", "other", "--value", "v", cwd=tmp_path, db_url=db_url, secret_key=right_key
        )
    )
    rt = Runtime(server_settings(db_url, secret_key=right_key))
    try:
        await rt.check_master_key()
        check = await rt.store.master_key_check()
        assert check is not None and right.opens(check)
        stored = await rt.store.get_secret(pid, "tok")
        assert stored is not None and rt.box.decrypt(stored) == "s3cret"
    finally:
        await rt.store.close()
    run = await cli(
        "secrets", "set", "third", "--value", "v", cwd=tmp_path, db_url=db_url, secret_key="stray"
    )
    one_line_error(run, MISMATCH, "it is INGESTLAYER_SECRET_KEY")


async def test_secrets_delete_gets_a_stuck_database_going_again(db_url: str, tmp_path: Path) -> None:
    """A database stuck as the walkthrough left it (from before the check value: the only secret
    is under a stray key, so the server refuses to start). The refusal names the secret and
    `secrets delete`, which needs no key and makes none."""
    a, b = dirs(tmp_path)
    ok(await cli("init", "--name", "acme", cwd=a, db_url=db_url, secret_key=None))
    (a / "ingestlayer.key").write_text("bm90LXRoZS1zYW1lLWtleS1hdC1hbGwtMzItYnl0ZXM=")
    store = Store.from_url(db_url)
    try:
        (project,) = await store.list_projects()
        await store.set_secret(project["id"], "x", SecretBox("a-stray-key").encrypt("v"))
    finally:
        await store.close()

    printed = await serve_once(a, db_url, tmp_path / "stuck.log")
    assert "serving on" not in printed
    refusal = printed.strip().splitlines()[-1]
    assert MISMATCH in refusal and "'x' (project acme)" in refusal, refusal
    assert "ingestlayer secrets delete NAME --project PROJECT" in refusal, refusal

    run = ok(await cli("secrets", "delete", "x", cwd=b, db_url=db_url, secret_key=None))
    assert run.out.strip() == "secret x deleted"
    assert not (b / "ingestlayer.key").exists()
    # Both only after the delete, and neither changes what the other sees: at once.
    again, printed = await asyncio.gather(
        cli("secrets", "delete", "x", cwd=b, db_url=db_url),
        serve_once(a, db_url, tmp_path / "going.log"),
    )
    one_line_error(again, "no secret named 'x'")
    assert "serving on" in printed


async def test_secrets_delete_holds_to_the_apis_refusals(db_url: str, tmp_path: Path) -> None:
    """A secret still referenced is not deleted locally, as the API refuses it (409)."""
    ok(await cli("init", "--name", "acme", cwd=tmp_path, db_url=db_url))
    ok(await cli("secrets", "set", "tok", "--value", "v", cwd=tmp_path, db_url=db_url))
    (tmp_path / "il.yaml").write_text(
        "destinations:\n  - name: hooks\n    webhook.out:\n      url: https://hooks.acme.example/in\n"
        "      auth: hmac\n      secret: ref:tok\n"
    )
    ok(await cli("apply", "-f", "il.yaml", cwd=tmp_path, db_url=db_url))
    in_use, no_such = await asyncio.gather(
        cli("secrets", "delete", "tok", cwd=tmp_path, db_url=db_url),
        cli("secrets", "delete", "no/such", cwd=tmp_path, db_url=db_url),
    )
    one_line_error(in_use, "secret 'tok' is in use by destination 'hooks'")
    one_line_error(no_such)


async def test_remote_secrets_delete_deletes_on_the_server(sqlite_url: str, tmp_path: Path) -> None:
    server = await start_server(sqlite_url)
    try:
        remote = ("--url", server.url, "--key", server.admin_key)
        ok(await cli("secrets", "set", "tok", "--value", "v", *remote, cwd=tmp_path))
        run = ok(await cli("secrets", "delete", "tok", *remote, cwd=tmp_path))
        assert run.out.strip() == "secret tok deleted"
        assert (await server.request("GET", "/v1/secrets"))[1] == {"data": []}
        run = await cli("secrets", "delete", "tok", *remote, cwd=tmp_path)
        one_line_error(run, "404", "no secret named 'tok'")
        assert not (tmp_path / "ingestlayer.key").exists()
    finally:
        await server.stop()


async def test_a_secret_set_through_the_api_records_the_servers_key(db_url: str, tmp_path: Path) -> None:
    """A process that did not check its key as it started (an embedded server) checks it, and
    records it on a new database, at the first secret it encrypts: a command with another key is
    refused from then on."""
    server = await start_server(db_url)
    try:
        assert await server.runtime.store.master_key_check() is None
        status, _ = await server.request("PUT", "/v1/secrets/tok", json={"value": "v"})
        assert status == 200
        check = await server.runtime.store.master_key_check()
        assert check is not None and server.runtime.box.opens(check)
    finally:
        await server.stop()
    run = await cli("secrets", "set", "x", "--value", "v", cwd=tmp_path, db_url=db_url, secret_key="other")
    one_line_error(run, MISMATCH, "it is INGESTLAYER_SECRET_KEY", "nothing was stored")
