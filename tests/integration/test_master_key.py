"""A server process refuses to start with a master key that cannot read the stored secrets.

Started from another directory, a process found no ``./ingestlayer.key``, created a new one and
started: every delivery needing a secret then failed through its retries to dead (a soak run
ended 78,221 of them in three minutes), and a secret stored through it could not be read by the
other processes. Now ``serve``, ``api`` and ``worker`` say so in one line and exit 1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingestlayer.runtime import Runtime
from ingestlayer.secretbox import MasterKeyMismatch, SecretBox
from tests.support.cli import Run, cli, ok
from tests.support.processes import free_port
from tests.support.server import test_settings as server_settings

MISMATCH = "the master key is not the one the database's secrets were stored with"


def refused(run: Run, *words: str) -> None:
    """Exit 1, the reason on stderr's last line (after the start-up log), no traceback."""
    assert run.rc == 1, run
    assert "Traceback" not in run.err + run.out, run
    last = run.err.strip().splitlines()[-1]
    assert last.startswith("error: "), run.err
    for w in words:
        assert w in last, (w, last)


async def test_serve_api_and_worker_refuse_a_master_key_the_secrets_were_not_stored_with(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'il.db'}"
    first = tmp_path / "first" / "ingestlayer.key"
    env = {"secret_key": None, "INGESTLAYER_SECRET_KEY_FILE": str(first)}
    ok(await cli("init", "--name", "acme", cwd=tmp_path, db_url=db, **env))
    ok(await cli("secrets", "set", "tok", cwd=tmp_path, db_url=db, stdin=b"s3cret\n", **env))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    roles = ("serve", "api", "worker")
    # A key file that exists but holds another key.
    other = tmp_path / "other.key"
    other.write_text("bm90LXRoZS1zYW1lLWtleS1hdC1hbGwtMzItYnl0ZXM=")
    # Every one is refused before it changes anything (each missing key file is its own): all
    # at once.
    *no_file, from_file = await asyncio.gather(
        *(
            cli(role, cwd=elsewhere, db_url=db, secret_key=None, INGESTLAYER_SECRET_KEY_FILE=str(key_file))
            for role, key_file in [*((role, elsewhere / f"{role}.key") for role in roles), ("worker", other)]
        )
    )
    in_env = await asyncio.gather(
        *(cli(role, cwd=elsewhere, db_url=db, secret_key="another-master-key") for role in roles)
    )
    for role, run, env_run in zip(roles, no_file, in_env, strict=True):
        # No key file here: none is made, the database having a key already.
        missing = elsewhere / f"{role}.key"
        refused(run, MISMATCH, f"there is no key file at {missing}, and none was made")
        assert not missing.exists()  # not left behind to be taken for the key next time
        # Another key in the environment.
        refused(env_run, MISMATCH, "it is INGESTLAYER_SECRET_KEY")
    refused(from_file, MISMATCH, f"it is read from {other}")


async def test_one_secret_under_a_stray_key_does_not_keep_the_right_key_out(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret stored under another key (by a command run elsewhere, before `secrets set`
    checked every project) must not stop the processes that hold the right key: the key passes
    if it reads any of the secrets stored last, and the log says how many it cannot."""
    db = sqlite_url
    settings = server_settings(db, secret_key="the-right-master-key")
    rt = Runtime(settings)
    try:
        first, _, _ = await rt.store.create_project("first")
        second, _, _ = await rt.store.create_project("second")
        await rt.store.set_secret(first, "tok", rt.box.encrypt("one"))
        await rt.store.set_secret(second, "tok", SecretBox("a-stray-key").encrypt("two"))
        await rt.check_master_key()  # the newest secret is the stray one: passes all the same
        assert "1 of the 2 secrets stored last cannot be decrypted" in caplog.text
        stray = Runtime(server_settings(db, secret_key="a-third-key"))
        try:
            with pytest.raises(MasterKeyMismatch, match="it is INGESTLAYER_SECRET_KEY"):
                await stray.check_master_key()
        finally:
            await stray.store.close()
    finally:
        await rt.store.close()


async def test_secrets_set_checks_the_key_against_every_projects_secrets(tmp_path: Path) -> None:
    """A project with no secret yet used to let any key through `secrets set`."""
    db = f"sqlite:///{tmp_path / 'il.db'}"
    ok(await cli("init", "--name", "first", cwd=tmp_path, db_url=db))
    ok(await cli("init", "--name", "second", cwd=tmp_path, db_url=db))
    ok(await cli("secrets", "set", "tok", "--value", "one", "--project", "first", cwd=tmp_path, db_url=db))
    run = await cli(
        "secrets",
        "set",
        "tok",
        "--value",
        "two",
        "--project",
        "second",
        cwd=tmp_path,
        db_url=db,
        secret_key="another-master-key",
    )
    refused(run, "master key is not the one")


async def test_secrets_set_refused_for_a_missing_key_file_leaves_no_key_file(tmp_path: Path) -> None:
    """Run where the key file is not, `secrets set` made one, was refused, and left it: the next
    command or server started there read it as "the" key, and was refused in turn."""
    db = f"sqlite:///{tmp_path / 'il.db'}"
    ok(await cli("init", cwd=tmp_path, db_url=db, secret_key=None))
    ok(await cli("secrets", "set", "tok", "--value", "one", cwd=tmp_path, db_url=db, secret_key=None))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = await cli("secrets", "set", "tok2", "--value", "two", cwd=elsewhere, db_url=db, secret_key=None)
    refused(run, "master key is not the one")
    assert not (elsewhere / "ingestlayer.key").exists()
    assert (tmp_path / "ingestlayer.key").exists()  # the right one stays


async def test_secrets_set_says_when_it_made_the_master_key_the_secret_is_encrypted_with(
    db_url: str, tmp_path: Path
) -> None:
    """With no secret stored yet nothing shows a key differs: `secrets set` run in another
    directory than the server's (natural against PostgreSQL) made a new key file, said only
    "stored", and the server then refused to start, naming `./ingestlayer.key` without saying
    which directory's. The command now says it made the key; the server names its file whole."""
    server_dir, elsewhere = tmp_path / "server", tmp_path / "elsewhere"
    server_dir.mkdir()
    elsewhere.mkdir()
    (server_dir / "ingestlayer.key").write_text("bm90LXRoZS1zYW1lLWtleS1hdC1hbGwtMzItYnl0ZXM=")
    ok(await cli("init", "--name", "acme", cwd=server_dir, db_url=db_url, secret_key=None))

    run = ok(await cli("secrets", "set", "tok", cwd=elsewhere, db_url=db_url, secret_key=None, stdin=b"v"))
    assert run.out.strip() == "secret tok stored"
    made = elsewhere / "ingestlayer.key"
    assert made.exists()
    note = " ".join(run.err.split())  # one line however the terminal would wrap it
    assert note.startswith(f"note: there was no master key at {made}: this command created one"), run.err
    assert "INGESTLAYER_SECRET_KEY_FILE" in note

    # Told again by nothing when the key file was there.
    run = ok(await cli("secrets", "set", "tok", cwd=elsewhere, db_url=db_url, secret_key=None, stdin=b"w"))
    assert run.out.strip() == "secret tok replaced" and run.err == ""

    roles = ("worker", "serve")
    runs = await asyncio.gather(
        *(
            cli(role, "--port", str(free_port()), cwd=server_dir, db_url=db_url, secret_key=None)
            for role in roles
        )
    )
    for run in runs:
        refused(run, MISMATCH, f"it is read from {server_dir / 'ingestlayer.key'}")
        # It said "serving on http://…" first, then that it would not.
        assert "serving on" not in run.out + run.err
