"""mask_url: the one way a URL is shown (CLI and server messages, the dashboard), and the
migration step that names an unreachable database with it."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy.exc

from ingestlayer import cli_backend
from ingestlayer.cli_backend import CliError, migrate_database
from ingestlayer.config import Settings
from ingestlayer.store.db import DatabaseURLError, async_url
from ingestlayer.urlmask import MASK, mask_url, url_secrets

M = MASK


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Database URLs: the user is kept beside a masked password.
        ("postgresql://postgres:hunter2@127.0.0.1:9/jobs", f"postgresql://postgres:{M}@127.0.0.1:9/jobs"),
        ("postgresql+asyncpg://app:pw@db/prod", f"postgresql+asyncpg://app:{M}@db/prod"),
        ("postgresql://u:p@[::1]:5432/db", f"postgresql://u:{M}@[::1]:5432/db"),
        # '@', ':' and percent-escapes in a password: masked whole.
        ("postgresql://u:p@ss@h/db", f"postgresql://u:{M}@h/db"),
        ("postgresql://u:p:a:ss@h/db", f"postgresql://u:{M}@h/db"),
        ("postgresql://u:p%40ss%3A@h/db", f"postgresql://u:{M}@h/db"),
        # '/', '?' or '#' in a password, as SQLAlchemy reads it (RFC 3986 would end the host there).
        ("postgresql://u:pa/ss@h/db", f"postgresql://u:{M}@h/db"),
        ("postgresql://u:pa?ss@h/db", f"postgresql://u:{M}@h/db"),
        ("postgresql://u:pa#ss@h/db", f"postgresql://u:{M}@h/db"),
        # A URL SQLAlchemy cannot read (its port would be 's3cr3t@h').
        ("postgresql://u:p@ss:s3cr3t@h/db", f"postgresql://u:{M}@h/db"),
        # No password: nothing to hide but a lone user name, which is often a token.
        ("postgresql://127.0.0.1:5432/db", "postgresql://127.0.0.1:5432/db"),
        ("postgresql://u:@h/db", f"postgresql://{M}@h/db"),
        ("https://sk_live_123:@api.example/v1", f"https://{M}@api.example/v1"),
        ("postgresql://postgres@h/db", f"postgresql://{M}@h/db"),
        ("https://tok@host/p?bare", f"https://{M}@host/p?{M}"),
        ("sqlite:///data/ingestlayer.db", "sqlite:///data/ingestlayer.db"),
        ("sqlite:///data/a@b.db", "sqlite:///data/a@b.db"),
        # Query values and the fragment (?password=… for PostgreSQL, ?token=… for receivers).
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            f"postgresql://{M}@h/db?password={M}&sslmode={M}",
        ),
        (
            "http://user:pw@host/p?token=T&email={email}#f",
            f"http://user:{M}@host/p?token={M}&email={{email}}#{M}",
        ),
        # A web address read as RFC 3986 says: an '@' after the host and port is not a userinfo.
        ("https://host:8443/notify?to=ops@example.com", f"https://host:8443/notify?to={M}"),
        ("https://u@host:1/p?x=a@b", f"https://{M}@host:1/p?x={M}"),
        ("https://u:pa/ss@host/p", f"https://u:{M}@host/p"),
        # A server address without a scheme (a mistyped --url), and with leading spaces.
        ("ops:hunter2@host:8000", f"ops:{M}@host:8000"),
        ("//ops:hunter2@host:8000", f"//ops:{M}@host:8000"),
        ("  http://ops:hunter2@host", f"  http://ops:{M}@host"),
        ("127.0.0.1:8000", "127.0.0.1:8000"),
        ("https://host/p", "https://host/p"),
        # Tokens in a web address's path (Slack, Discord, Telegram put theirs there); ids are
        # masked too, words and short segments are not, nor a file's path.
        (
            "https://hooks.slack.com/services/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",
            f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{M}",
        ),
        (
            "https://discord.com/api/webhooks/123456789012345678/abcDEF_ghi-JKL123mnoPQR",
            f"https://discord.com/api/webhooks/123456789012345678/{M}",
        ),
        (
            "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            f"https://api.telegram.org/{M}/sendMessage",
        ),
        ("https://h/hooks/550e8400-e29b-41d4-a716-446655440000", f"https://h/hooks/{M}"),
        ("https://h/notifications-service-v2/Hooks/v1", "https://h/notifications-service-v2/Hooks/v1"),
        ("https://h/{email}/x", "https://h/{email}/x"),
        ("sqlite:///var/lib/ingestlayer-2026-11-27.db", "sqlite:///var/lib/ingestlayer-2026-11-27.db"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "password", ["s3cr3t", "s3@cr3t", "s3:cr3t@", "s3%40cr3t", "s3/cr3t", "s3?cr3t#x", "s3cr3t:"]
)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://app:{}@db.example:5432/prod",
        "postgresql+asyncpg://app:{}@db.example/prod?sslmode=require",
        "postgresql://app@db.example/prod?password={}",
        "https://hooks:{}@hooks.example/in?x=1",
        "https://hooks.example/in?token={}",
        "hooks:{}@hooks.example:8000",
    ],
)
def test_a_password_never_appears(template: str, password: str) -> None:
    shown = mask_url(template.format(password))
    assert "s3" not in shown and "cr3t" not in shown, shown
    assert "example" in shown, shown  # and the URL still names its host


def test_a_database_url_sqlalchemy_cannot_read_is_named_without_its_password() -> None:
    # SQLAlchemy's own ValueError quotes the port it read: 's3cr3t@127.0.0.1'.
    with pytest.raises(DatabaseURLError) as info:
        async_url("postgresql://postgres:p@ss:s3cr3t@127.0.0.1/x")
    assert str(info.value).startswith(f"postgresql://postgres:{M}@127.0.0.1/x is not a URL that can be read")
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)"), "Connect call failed"),
        # asyncpg's connect timeout says nothing: the line ended at the colon.
        (TimeoutError(), "timed out"),
        (
            sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception('database "x" does not exist\nDETAIL')),
            'database "x" does not exist',
        ),
    ],
)
def test_migrate_database_names_the_database_in_one_line(
    monkeypatch: pytest.MonkeyPatch, error: Exception, problem: str
) -> None:
    def fail(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr(cli_backend, "upgrade", fail)
    with pytest.raises(CliError) as info:
        migrate_database(
            Settings(database_url="postgresql://postgres:hunter2@127.0.0.1:9/x?password=hunter2")
        )
    message = str(info.value)
    assert (
        message
        == f"cannot open the database at postgresql://postgres:{M}@127.0.0.1:9/x?password={M}: "
        + (str(error) if isinstance(error, OSError) and str(error) else problem)
    )
    assert "hunter2" not in message and "\n" not in message


def test_migrate_database_leaves_other_failures_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_backend, "upgrade", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        migrate_database(Settings(database_url="sqlite:///x.db"))


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        # The password, user:password as HTTP Basic sends it (decoded), each query value.
        (
            "http://apiuser:pa%40ss@h:8/hook?token=T0k%2Bn&e={email}#frag",
            ["pa%40ss", "pa@ss", "apiuser:pa%40ss", "apiuser:pa@ss", "T0k%2Bn", "T0k+n"],
        ),
        # A user name alone is masked whole, and sent as "user:".
        ("https://TOKEN@h/p?bare", ["TOKEN", "TOKEN:"]),
        # Short values under names that are no credential's are not (`format=json` would scrub
        # every "json" a receiver answers); long ones are, whatever their name.
        ("https://h/p?format=json&v=2&a=x+y", []),
        ("https://h/p?api_key=x+y&k=0123456789ab", ["x+y", "x y", "0123456789ab"]),
        ("https://h/p?0123456789abcdef", ["0123456789abcdef"]),
        ("https://h/it's/in?token=T1", ["T1"]),
        ("https://h/p", []),
        ("https://h/p?e={email}&d={domain}", []),
        # A token in the path, as written and decoded.
        ("https://h/hooks/aBcD1234eFgH%2B5678iJkL?x=1", ["aBcD1234eFgH%2B5678iJkL", "aBcD1234eFgH+5678iJkL"]),
    ],
)
def test_url_secrets_are_what_mask_url_hides(url: str, secrets: list[str]) -> None:
    """What a destination scrubs from what a receiver echoes is what the dashboard masks."""
    assert url_secrets(url) == secrets
    shown = mask_url(url)
    assert not [s for s in secrets if len(s) > 2 and s in shown], shown


def test_a_database_a_newer_version_upgraded_is_named_as_such(tmp_path: Any) -> None:
    """An older ingestlayer started on a database a newer one has migrated: Alembic's "Can't
    locate revision identified by '…'" said nothing of versions."""
    import sqlite3

    from ingestlayer.store.migrate import current_head

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    migrate_database(Settings(database_url=url))
    with sqlite3.connect(tmp_path / "newer.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(CliError) as info:
        migrate_database(Settings(database_url=url))
    message = str(info.value)
    assert "schema revision 0099" in message and f"revisions up to {current_head()}" in message
    assert "a newer ingestlayer has upgraded it" in message


def test_a_database_that_never_answers_fails_within_the_database_timeout() -> None:
    """A server that accepts the connection and never answers (a frozen PostgreSQL, a proxy in
    front of a dead one): the start waited for the driver's own 60 s, whatever
    INGESTLAYER_DATABASE_TIMEOUT said, then printed no reason."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nothing ever answers on them
        port = silent.getsockname()[1]
        settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/x", database_timeout=0.5)
        with pytest.raises(CliError) as info:
            migrate_database(settings)
    assert str(info.value) == f"cannot open the database at {mask_url(settings.database_url)}: timed out"
