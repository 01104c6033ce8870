"""Encryption at rest for destination credentials and secrets (Fernet, AES-128-CBC + HMAC).

The master key comes from ``INGESTLAYER_SECRET_KEY`` or, failing that, a key file created on first
run with mode 0600. Any string is accepted as ``INGESTLAYER_SECRET_KEY``: a valid Fernet key is used
as is, anything else is stretched with SHA-256.
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

    @classmethod
    def load(cls, secret_key: str | None, key_file: str) -> SecretBox:
        if secret_key:
            return cls(secret_key)
        path = Path(key_file).absolute()
        created = not path.exists()
        if created:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(Fernet.generate_key().decode())
        box = cls(path.read_text())
        box.key_file = path
        box.created_key_file = path if created else None
        return box

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def readable(self, tokens: list[bytes]) -> int:
        """How many of these stored secrets this key decrypts (the check that it is the key
        they were stored with)."""
        count = 0
        for token in tokens:
            try:
                self.decrypt(token)
            except SecretDecryptError:
                continue
            count += 1
        return count

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise SecretDecryptError(
                "a stored secret could not be decrypted: "
                "the master key differs from the one it was stored with"
            ) from None
