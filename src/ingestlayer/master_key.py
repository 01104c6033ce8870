"""The check that a process's master key is the database's, before it stores or reads a secret.

The database keeps a check value: a token encrypted with its master key, written once by the
first process that uses a key with it (``serve``, ``api``, ``worker``, ``secrets set``). Before,
nothing recorded the key until a secret was stored: a ``secrets set`` run in another directory
than the server's made a key file there, stored its secret under that key, and the server, started
again, refused to start with no way out but a running server's REST API.

A database from before the check value was kept has none: its secrets decide, as they did
(a key passes if it reads any of the secrets stored last), and the key that passes is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingestlayer.secretbox import MasterKeyMismatch, SecretBox

if TYPE_CHECKING:
    from ingestlayer.store.configuration import StoredSecret
    from ingestlayer.store.store import Store

# What the check value decrypts to; only whether it decrypts matters.
CHECK_PLAINTEXT = "ingestlayer master key check"
# Unreadable secrets named in a refusal, at most.
NAMED = 5

GIVE_THE_KEY = (
    "start with the database's key: INGESTLAYER_SECRET_KEY, or INGESTLAYER_SECRET_KEY_FILE naming "
    "its file (or run where that file is)"
)


def _mismatch(source: str, how: str = GIVE_THE_KEY) -> MasterKeyMismatch:
    return MasterKeyMismatch(
        f"the master key is not the one the database's secrets were stored with ({source}); {how}"
    )


def unreadable_secrets(box: SecretBox, stored: list[StoredSecret]) -> list[StoredSecret]:
    return [s for s in stored if not box.opens(s.ciphertext)]


def _stuck(box: SecretBox, unreadable: list[StoredSecret]) -> MasterKeyMismatch:
    """No check value yet, and the key reads none of the secrets stored last: name them, and the
    way out when they were stored under a stray key (a command run elsewhere) rather than this
    one being wrong."""
    names = ", ".join(f"{s.name!r} (project {s.project})" for s in unreadable[:NAMED])
    more = f" and {len(unreadable) - NAMED} more" if len(unreadable) > NAMED else ""
    return _mismatch(
        f"{box.source()}; it reads none of the secrets stored last: {names}{more}",
        f"{GIVE_THE_KEY}; or, if those were stored under a stray key, delete them with "
        "`ingestlayer secrets delete NAME --project PROJECT` (no key needed) and set them again",
    )


async def settle(store: Store, box: SecretBox) -> None:
    """Check ``box``'s key against the database's check value, writing one (and the key file
    that was missing) if the database has none yet; :class:`MasterKeyMismatch` if the key is
    not the database's. A key file that was missing is written only once the key passed."""
    check = await store.master_key_check()
    if check is not None:
        if box.missing_key_file is not None:
            raise _mismatch(f"{box.source()}, and none was made: the database has a key already")
        if not box.opens(check):
            raise _mismatch(box.source())
        return
    # A new database, or one from before the check value: the secrets stored last decide.
    stored = await store.newest_secrets()
    if stored and len(unreadable_secrets(box, stored)) == len(stored):
        raise _stuck(box, stored)
    box.save_key_file()
    kept = await store.keep_master_key_check(box.encrypt(CHECK_PLAINTEXT))
    if not box.opens(kept):  # another process, with another key, wrote first
        created = box.created_key_file is not None
        source = box.source() + ("; removed again" if created else "")
        box.forget_created_key_file()
        raise _mismatch(source)
