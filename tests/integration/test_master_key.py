"""A server process refuses to start with a master key that cannot read the stored secrets.

Started from another directory, a process found no ``./ingestlayer.key``, created a new one and
started: every delivery needing a secret then failed through its retries to dead (a soak run
ended 78,221 of them in three minutes), and a secret stored through it could not be read by the
other processes. Now ``serve``, ``api`` and ``worker`` say so in one line and exit 1.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import Run, cli, ok

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
    for role in ("serve", "api", "worker"):
        # No key file here: one is created, and the stored secret does not open with it.
        missing = elsewhere / f"{role}.key"
        run = await cli(
            role, cwd=elsewhere, db_url=db, secret_key=None, INGESTLAYER_SECRET_KEY_FILE=str(missing)
        )
        refused(run, MISMATCH, f"the key file {missing} did not exist and was created just now")
        # Another key in the environment.
        run = await cli(role, cwd=elsewhere, db_url=db, secret_key="another-master-key")
        refused(run, MISMATCH, "it is INGESTLAYER_SECRET_KEY")

    # A key file that exists but holds another key.
    other = tmp_path / "other.key"
    other.write_text("bm90LXRoZS1zYW1lLWtleS1hdC1hbGwtMzItYnl0ZXM=")
    run = await cli(
        "worker", cwd=elsewhere, db_url=db, secret_key=None, INGESTLAYER_SECRET_KEY_FILE=str(other)
    )
    refused(run, MISMATCH, f"it is read from {other}")
