"""Encryption at rest for destination credentials and secrets (Fernet, AES-128-CBC + HMAC).

The master key comes from ``INGESTLAYER_SECRET_KEY`` or, failing that, a key file
(``INGESTLAYER_SECRET_KEY_FILE``, ``./ingestlayer.key``) created with mode 0600 by the first process
that uses a key with a new database. Any string is accepted as ``INGESTLAYER_SECRET_KEY``: a valid
Fernet key is used as is, anything else is stretched with SHA-256. The database keeps a check value
(:mod:`ingestlayer.master_key`) that every process tests its key against before using it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretDecryptError(Exception):
    pass


class MasterKeyMismatch(ValueError):
    """This process's master key cannot read the secrets already stored (see
    :meth:`ingestlayer.runtime.Runtime.check_master_key`)."""


def _fernet_key(material: str) -> bytes:
    raw = material.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


class SecretBox:
    def __init__(self, key_material: str) -> None:
        self._fernet = Fernet(_fernet_key(key_material))
        # The key file it was read from, absolute (the default, ./ingestlayer.key, does not say
        # which directory's file it is), and the one this process created for want of one.
        self.key_file: Path | None = None
        self.created_key_file: Path | None = None
        # A key file that was not there: this box holds a new key, written to it only once the
        # database has shown it has no other key (:func:`ingestlayer.master_key.settle`), so a
        # command run in the wrong directory leaves no stray key file behind.
        self.missing_key_file: Path | None = None
        self._new_key = ""

    @classmethod
    def load(cls, secret_key: str | None, key_file: str) -> SecretBox:
        if secret_key:
            return cls(secret_key)
        path = Path(key_file).absolute()
        if path.exists():
            box = cls(path.read_text())
        else:
            new_key = Fernet.generate_key().decode()
            box = cls(new_key)
            box.missing_key_file, box._new_key = path, new_key
        box.key_file = path
        return box

    def source(self) -> str:
        """Where this key comes from, for messages."""
        if self.missing_key_file is not None:
            return f"there is no key file at {self.missing_key_file}"
        if self.key_file is None:
            return "it is INGESTLAYER_SECRET_KEY"
        if self.created_key_file is not None:
            return f"the key file {self.key_file} did not exist and was created just now"
        return f"it is read from {self.key_file}"

    def save_key_file(self) -> None:
        """Write the new key to the key file that was missing (mode 0600). Another process that
        wrote it meanwhile (two started in one directory) wins: its key is read and used."""
        path = self.missing_key_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        key = self._new_key
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_text()
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(key)
            self.created_key_file = path
        self._fernet = Fernet(_fernet_key(key))
        self.missing_key_file = None

    def forget_created_key_file(self) -> None:
        """Remove the key file this process created, refused since: not left to be read as
        "the" key by the next command or server started there."""
        if self.created_key_file is not None:
            self.created_key_file.unlink(missing_ok=True)
            self.created_key_file = None

    def opens(self, token: bytes) -> bool:
        try:
            self.decrypt(token)
        except SecretDecryptError:
            return False
        return True

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise SecretDecryptError(
                "a stored secret could not be decrypted: "
                "the master key differs from the one it was stored with"
            ) from None
