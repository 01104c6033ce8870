"""email, postgres and notion destinations on plain data: configs (their docstring examples,
credential references, validation), message / SQL / property building, error classification,
scrubbing, and the private-address policy. The real servers are in tests/integration/."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import asyncpg
import orjson
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ingestlayer.delivery.egress import EgressDenied, EgressPolicy
from ingestlayer.destinations import shared
from ingestlayer.destinations.base import Outcome, SendContext, SendRequest
from ingestlayer.destinations.email import Email, EmailConfig
from ingestlayer.destinations.email import config as email_config_module
from ingestlayer.destinations.email.destination import classify_exception
from ingestlayer.destinations.email.message import build_message, default_text, message_id
from ingestlayer.destinations.notion import Notion, NotionConfig
from ingestlayer.destinations.notion import config as notion_config_module
from ingestlayer.destinations.notion.destination import classify_response
from ingestlayer.destinations.notion.properties import (
    property_value,
    select_names,
    split_text,
    to_checkbox,
    to_date,
    to_number,
)
from ingestlayer.destinations.postgres import Postgres, PostgresConfig
from ingestlayer.destinations.postgres import config as postgres_config_module
from ingestlayer.destinations.postgres.destination import classify_error, dsn_hosts, dsn_secrets
from ingestlayer.destinations.postgres.sql import create_table_sql, insert_columns, insert_sql, row_values
from ingestlayer.destinations.registry import build_destination, destination_class
from ingestlayer.destinations.shared import check_host, check_reference, connect_checked, scrub
from ingestlayer.pipeline.config import ConfigError, parse_config
from tests.support.fake_notion import check_value
from tests.support.processes import free_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "destinations"
EVENT = {
    "id": "evt_01",
    "type": "invoice.paid",
    "occurred_at": "2026-03-01T12:30:00.000Z",
    "payload": {"account": "acme", "amount": 12.5, "note": "<b>hi</b> & bye"},
}


def request(**overrides: Any) -> SendRequest:
    fields: dict[str, Any] = {
        "delivery_id": "dlv_01ABC",
        "project_id": "prj_1",
        "event_id": "evt_01",
        "event_type": "invoice.paid",
        "attempt": 1,
        "event": EVENT,
        "body_json": "",
        **overrides,
    }
    return SendRequest(**fields)


async def _no_secrets(project_id: str, ref: str) -> str:
    raise AssertionError(f"no secret should be resolved, asked for {ref}")


async def _secrets(project_id: str, ref: str) -> str:
    return {"ref:pw": "s3cret-Password!", "ref:dsn": "postgresql://u:p4ss-W0rd@db.example.com/x"}[ref]


# --------------------------------------------------------------------------------------- configs

MODULES = [
    ("email", email_config_module, EmailConfig),
    ("postgres", postgres_config_module, PostgresConfig),
    ("notion", notion_config_module, NotionConfig),
]


@pytest.mark.parametrize(("kind", "module", "model"), MODULES)
def test_docstring_example_is_a_valid_config(kind: str, module: Any, model: type[BaseModel]) -> None:
    doc = yaml.safe_load(textwrap.dedent((module.__doc__ or "").split("Example::", 1)[1]))
    cfg = parse_config(doc)
    (spec,) = cfg.destinations
    assert spec.kind == kind
    # The stored form validates again to the same config (the dispatcher builds from it).
    config = model.model_validate(spec.settings)
    assert model.model_validate(config.model_dump(mode="json")) == config
    assert destination_class(kind).config_model is model
    assert build_destination(kind, spec.settings).config == config


@pytest.mark.parametrize(
    ("kind", "settings", "field", "value"),
    [
        (
            "email",
            {"host": "smtp.x.com", "from": "a@x.com", "to": "b@x.com", "username": "u"},
            "password",
            "hunter2!",
        ),
        ("postgres", {"table": "events"}, "dsn", "postgresql://u:hunter2!@db/x"),
        (
            "notion",
            {"database_id": "0" * 32, "properties": {"N": {"type": "title", "value": "x"}}},
            "token",
            "secret_abc",
        ),
    ],
)
def test_inline_credentials_are_rejected_naming_the_field(
    kind: str, settings: dict[str, Any], field: str, value: str
) -> None:
    doc = {"destinations": [{"name": "d", kind: {**settings, field: value}}]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert info.value.path == f"destinations[0].{kind}.{field}"
    assert "ref:NAME" in info.value.message and "env:VAR" in info.value.message
    assert value not in str(info.value)
    doc = {"destinations": [{"name": "d", kind: {**settings, field: "env:THE_SECRET"}}]}
    assert parse_config(doc).destinations[0].settings[field] == "env:THE_SECRET"


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("email", {"host": "h", "from": "a@x.com", "to": "b@x.com", "sender": "x"}),
        ("postgres", {"dsn": "ref:d", "table": "t", "schema": "x"}),
        ("notion", {"token": "ref:t", "database_id": "0" * 32, "properties": {}, "parent": "x"}),
    ],
)
def test_unknown_fields_are_rejected(kind: str, settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse_config({"destinations": [{"name": "d", kind: settings}]})


def email_cfg(**overrides: Any) -> EmailConfig:
    return EmailConfig.model_validate(
        {"host": "smtp.example.com", "from": "Acme <alerts@acme.com>", "to": "ops@acme.com", **overrides}
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"username": "u"}, "username and password go together"),
        ({"to": ["not-an-address"]}, "is not an email address"),
        ({"to": ["a@x.com, b@x.com"]}, "holds 2 addresses"),
        ({"from": "a@x.com, b@x.com"}, "holds 2 addresses"),
        ({"from": "a@b.com\r\nBcc: x@y.com"}, "line breaks"),
        ({"host": "smtp://smtp.example.com"}, "host name or IP address"),
        # A value ending in a newline passed checks that ended in "$" (the HELO line's too).
        ({"helo_name": "mail.example.com\n"}, "must be a host name"),
        ({"ca_cert": "not a pem"}, "PEM"),
        ({"tls": "none", "ca_cert": "ref:ca"}, "no use with tls: none"),
        ({"port": 0}, "greater than or equal to 1"),
        ({"timeout": 600}, "less than or equal to 60"),
    ],
)
def test_email_config_errors(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        email_cfg(**overrides)


def test_internationalised_domains_are_sent_in_their_idna_form() -> None:
    cfg = email_cfg(to=["ops@b\u00fccher.de", "Jörg <j@m\u00fcnchen.example>"], **{"from": "a@x.com"})
    assert cfg.to == ["ops@xn--bcher-kva.de", "Jörg <j@xn--mnchen-3ya.example>"]
    assert cfg.recipients() == ["ops@xn--bcher-kva.de", "j@xn--mnchen-3ya.example"]
    with pytest.raises(ValidationError, match="is not an email address"):
        email_cfg(to=["ops@b\u00fccher..de"])


def test_email_defaults() -> None:
    cfg = email_cfg()
    assert (cfg.tls, cfg.effective_port, cfg.subject, cfg.tls_verify) == (
        "starttls",
        587,
        "$event.type",
        True,
    )
    assert email_cfg(tls="implicit").effective_port == 465
    assert email_cfg(to=["a@x.com", "B <b@x.com>"], cc="b@x.com", bcc=["c@x.com"]).recipients() == [
        "a@x.com",
        "b@x.com",
        "c@x.com",
    ]
    assert email_cfg(to='a@x.com, "Doe, J" <b@x.com>').to == ["a@x.com", '"Doe, J" <b@x.com>']
    assert cfg.model_dump(mode="json")["from"] == "Acme <alerts@acme.com>"  # stored under its YAML name


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"table": "events; drop table x"}, "not a plain SQL identifier"),
        ({"table": "a.b.c"}, "`table` or `schema.table`"),
        ({"table": "t", "columns": {"delivery_id": "$event.id"}}, "delivery_id is written by ingestlayer"),
        ({"table": "t", "columns": {"bad name": "$event.id"}}, "not a plain SQL identifier"),
        ({"table": "t", "columns": {"a": {"value": "$event.a", "type": "text; drop"}}}, "Input should be"),
        ({"table": "t", "columns": {"p": "$event.p"}, "jsonb_column": "p"}, "both in columns"),
    ],
)
def test_postgres_config_errors(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        PostgresConfig.model_validate({"dsn": "ref:dsn", **settings})


def test_notion_database_id_forms_and_one_title() -> None:
    dashed = "0f6e1c2a-b9d3-4c8e-8a4d-5b6c7d8e9f01"
    for form in (
        dashed,
        dashed.replace("-", ""),
        f"https://www.notion.so/acme/Signups-{dashed.replace('-', '')}?v=abc",
    ):
        cfg = NotionConfig.model_validate(
            {"token": "ref:t", "database_id": form, "properties": {"N": {"type": "title", "value": "x"}}}
        )
        assert cfg.database_id == dashed
    with pytest.raises(ValidationError, match="one title property"):
        NotionConfig.model_validate(
            {
                "token": "ref:t",
                "database_id": dashed,
                "properties": {"A": {"type": "title", "value": "x"}, "B": {"type": "title", "value": "y"}},
            }
        )
    with pytest.raises(ValidationError, match="Notion database id"):
        NotionConfig.model_validate(
            {"token": "ref:t", "database_id": "nope", "properties": {"N": {"type": "title", "value": "x"}}}
        )


# ---------------------------------------------------------------------------------------- email


def test_message_structure_and_stable_message_id() -> None:
    cfg = email_cfg(cc=["team@acme.com"], bcc=["audit@acme.com"], subject="Paid:\n $event.account\r\n")
    first = build_message(cfg, request())
    retry = build_message(cfg, request(attempt=2))
    assert first["Message-ID"] == retry["Message-ID"] == "<dlv_01ABC@acme.com>"
    assert first["Subject"] == "Paid: acme"
    assert first["Bcc"] is None and first["Cc"] == "team@acme.com"
    assert first["X-Ingestlayer-Delivery"] == "dlv_01ABC" and first["X-Ingestlayer-Event"] == "invoice.paid"
    text, html = (p.get_content() for p in first.iter_parts())
    assert "note     <b>hi</b> & bye" in text
    assert "&lt;b&gt;hi&lt;/b&gt; &amp; bye" in html and "<b>hi</b>" not in html


def test_control_characters_from_the_event_stay_out_of_headers_and_nul_out_of_the_body() -> None:
    """A NUL or an ESC in a subject value went into the Subject header as is (only whitespace was
    collapsed); the body carried NUL, which no message line may hold."""
    payload = {"note": "red\x1b[31m\x00alert\x7f\tnow\x1fok\x08", "body": "a\x00b\x1bc"}
    event = {**EVENT, "payload": payload}
    cfg = email_cfg(subject="Note: $event.note", template="$event.body")
    msg = build_message(cfg, request(event=event, event_id="evt_\x00\x1b01", event_type="t\x00"))
    assert msg["Subject"] == "Note: red[31malert now ok"
    assert msg["X-Ingestlayer-Event-Id"] == "evt_01" and msg["X-Ingestlayer-Event"] == "t"
    raw = msg.as_bytes()
    assert b"\x00" not in raw and b"\x7f" not in raw
    headers = raw.split(b"\n\n", 1)[0]
    assert not any(c < 0x20 and c not in b"\t\r\n" for c in headers), headers
    text, html = (p.get_content() for p in msg.iter_parts())
    assert text.strip() == "ab\x1bc"  # other controls are text a body may carry
    assert "ab\x1bc" in html
    # Nothing but controls: the subject falls back to the event type, cleaned the same way.
    only = build_message(
        email_cfg(subject="$event.x"), request(event={**EVENT, "payload": {"x": "\x00\x1b"}})
    )
    assert only["Subject"] == "invoice.paid"


def test_default_text_caps_the_fields_and_message_id_is_safe() -> None:
    payload = {f"f{i}": i for i in range(30)}
    text = default_text({"type": "t", "id": "evt", "occurred_at": "now"}, payload)
    assert "f24  24" in text and "f25" not in text and "… and 5 more fields" in text
    assert message_id("dlv_<x>", "a@[10.0.0.1]") == "<dlv_x@10.0.0.1>"


@pytest.mark.parametrize(
    ("exc", "permanent", "words"),
    [
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@x")]
            ),
            True,
            "a@x: 550 5.1.1 no such user",
        ),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no", "a@x"),
                    aiosmtplib.SMTPRecipientRefused(451, "4.2.0 later", "b@x"),
                ]
            ),
            False,
            "b@x: 451 4.2.0 later",
        ),
        (
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"),
            True,
            "SMTP 535 authentication failed",
        ),
        (aiosmtplib.SMTPSenderRefused(553, "5.7.1 not owned", "a@x"), True, "SMTP 553 sender a@x refused"),
        (aiosmtplib.SMTPDataError(451, "4.3.0 try later"), False, "SMTP 451 4.3.0 try later"),
        (aiosmtplib.SMTPConnectResponseError(421, "4.7.0 busy"), False, "SMTP 421"),
        (aiosmtplib.SMTPServerDisconnected("gone"), False, "SMTP error: gone"),
        (aiosmtplib.SMTPReadTimeoutError("slow"), False, "timed out after 30s"),
        (TimeoutError(), False, "timed out after 30s"),
        (ConnectionRefusedError(111, "refused"), False, "connection error"),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"), True, "does not support"),
        (aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server."), True, "STARTTLS"),
        (aiosmtplib.SMTPException("The SMTP AUTH extension is not supported by this server."), True, "AUTH"),
        (aiosmtplib.SMTPException("No suitable authentication method found."), True, "No suitable"),
        (EgressDenied("private"), True, "private"),
    ],
)
def test_smtp_errors_are_classified(exc: BaseException, permanent: bool, words: str) -> None:
    outcome = classify_exception(exc, 30)
    assert not outcome.ok
    assert outcome.permanent is permanent
    assert words in (outcome.error or "")


def test_scrub_removes_credentials_and_their_base64() -> None:
    pw = "s3cret-Password!"
    b64 = base64.b64encode(pw.encode()).decode()
    text = f"535 bad {pw} / {b64} / {base64.b64encode(b'user').decode()}"
    assert scrub(text, [pw]) == f"535 bad <redacted> / <redacted> / {base64.b64encode(b'user').decode()}"
    assert scrub(None, [pw]) is None
    assert scrub("keep a b", ["a"]) == "keep a b"  # too short to scrub meaningfully


def test_scrub_removes_a_credential_as_an_echoing_receiver_writes_it_in_json() -> None:
    pw = 'pa"ss\\wörd-1'
    echoed = f"{orjson.dumps({'h': pw}).decode()} {json.dumps({'h': pw})}"
    assert scrub(echoed, [pw]) == '{"h":"<redacted>"} {"h": "<redacted>"}'


async def send_with(dest: Any, allow_private: bool, resolver: Any = _no_secrets) -> Outcome:
    async with aiohttp.ClientSession() as session:
        ctx = SendContext(
            session=session, resolve_secret=resolver, egress=EgressPolicy(allow_private), user_agent="t"
        )
        outcome: Outcome = await dest.send(request(), ctx)
        return outcome


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"tls": "none"}, "tls: none (mail in the clear) is only allowed"),
        ({"tls_verify": False}, "tls_verify: false is only allowed"),
        ({"host": "127.0.0.1"}, "private"),
        ({"host": "localhost"}, "private"),
        ({"host": "10.1.2.3"}, "private"),
    ],
)
async def test_email_private_policy_is_permanent(overrides: dict[str, Any], words: str) -> None:
    outcome = await send_with(Email(email_cfg(**overrides)), allow_private=False)
    assert outcome.permanent and words in (outcome.error or "")


async def test_email_unresolvable_password_is_retried() -> None:
    async def missing(project_id: str, ref: str) -> str:
        raise LookupError(f"secret {ref} does not exist")

    outcome = await send_with(Email(email_cfg(username="u", password="ref:pw")), False, missing)
    assert not outcome.permanent and outcome.error == "secret ref:pw does not exist"


async def test_private_address_checks() -> None:
    deny, allow = EgressPolicy(False), EgressPolicy(True)
    for host in (
        "127.0.0.1",
        "::1",
        "[::1]",
        "169.254.169.254",
        "192.168.1.5",
        "localhost",
        "/var/run/postgresql",
        "",
    ):
        with pytest.raises(EgressDenied):
            await check_host(deny, host, 5432)
        await check_host(allow, host, 5432)
    await check_host(deny, "8.8.8.8", 5432)
    with pytest.raises(EgressDenied):
        await connect_checked(deny, "127.0.0.1", 25)


# ------------------------------------------------------------------------------------- postgres


def pg_cfg(**overrides: Any) -> PostgresConfig:
    return PostgresConfig.model_validate({"dsn": "ref:dsn", "table": "analytics.Events", **overrides})


def test_create_table_and_insert_sql_quote_every_identifier() -> None:
    cfg = pg_cfg(
        columns={"account": "$event.account", "amount": {"value": "$event.amount", "type": "numeric"}}
    )
    assert cfg.jsonb_column is None
    sql = create_table_sql(cfg)
    assert sql.startswith('CREATE TABLE IF NOT EXISTS "analytics"."Events" (')
    assert '"delivery_id" text PRIMARY KEY' in sql and '"amount" numeric' in sql and '"account" text' in sql
    cols = insert_columns(cfg, frozenset({"delivery_id", "event_id", "occurred_at", "account", "amount"}))
    assert cols == ["delivery_id", "event_id", "occurred_at", "account", "amount"]
    assert insert_sql(cfg, cols) == (
        'INSERT INTO "analytics"."Events" ("delivery_id", "event_id", "occurred_at", "account", "amount") '
        'SELECT "delivery_id", "event_id", "occurred_at", "account", "amount" '
        'FROM json_populate_record(NULL::"analytics"."Events", $1::json) '
        'ON CONFLICT ("delivery_id") DO NOTHING'
    )


def test_row_values_keep_types_and_default_to_a_payload_column() -> None:
    cfg = pg_cfg()
    assert cfg.jsonb_column == "payload"
    cols = insert_columns(cfg, frozenset({"delivery_id", "event_type", "payload"}))
    import orjson

    row = orjson.loads(row_values(cfg, {}, cols, delivery_id="dlv_1", event=EVENT))
    assert row == {"delivery_id": "dlv_1", "event_type": "invoice.paid", "payload": EVENT["payload"]}
    mapped = pg_cfg(columns={"amount": "$event.amount", "label": "$event.account: $event.amount"})
    dest = Postgres(mapped)
    cols = insert_columns(mapped, frozenset({"delivery_id"}))
    row = orjson.loads(row_values(mapped, dest._templates, cols, delivery_id="d", event=EVENT))
    assert row == {"delivery_id": "d", "amount": 12.5, "label": "acme: 12.5"}


def test_row_values_drop_nul_which_postgres_text_cannot_hold() -> None:
    cfg = pg_cfg(columns={"label": "$event.account"}, jsonb_column="payload")
    dest = Postgres(cfg)
    cols = insert_columns(cfg, frozenset({"delivery_id"}))
    event = {**EVENT, "payload": {"account": "ac\x00me", "k\x00": ["v\x00", 1], "path": "C:\\u0000"}}
    raw = row_values(cfg, dest._templates, cols, delivery_id="d", event=event)
    row = orjson.loads(raw)
    assert row["label"] == "acme"
    # A backslash followed by "u0000" is text, not a NUL: kept.
    assert row["payload"] == {"account": "acme", "k": ["v", 1], "path": "C:\\u0000"}


@pytest.mark.parametrize(
    ("dsn", "hosts"),
    [
        ("postgresql://u:p@db.example.com/x", [("db.example.com", 5432)]),
        ("postgres://u@db:6432/x?sslmode=require", [("db", 6432)]),
        ("postgresql://u:p@h1:5433,h2/x", [("h1", 5433), ("h2", 5432)]),
        ("postgresql://u@[2001:db8::1]:5440/x", [("2001:db8::1", 5440)]),
        ("postgresql:///x?host=/var/run/postgresql", [("/var/run/postgresql", 5432)]),
        ("postgresql:///x", [("", 5432)]),
    ],
)
def test_dsn_hosts(dsn: str, hosts: list[tuple[str, int]]) -> None:
    assert dsn_hosts(dsn) == hosts


@pytest.mark.parametrize(
    "dsn",
    [
        "mysql://u:p@h/x",
        "u:p@h/x",
        "postgresql://u:p@h:abc/x",
        "postgresql://u:p@h:99999/x",
        # Options that read the worker's own files (a service's host, user and certificate).
        "postgresql://u:p@h/x?service=prod",
        "postgresql://u:p@h/x?passfile=/root/.pgpass",
    ],
)
def test_bad_dsns_never_echo_the_dsn(dsn: str) -> None:
    with pytest.raises(ValueError) as info:
        dsn_hosts(dsn)
    outcome = classify_error(info.value, pg_cfg())
    assert outcome.permanent and "ref:dsn" in (outcome.error or "")
    assert dsn not in (outcome.error or "") and "p@" not in (outcome.error or "")


def test_dsn_secrets_include_the_decoded_password() -> None:
    assert dsn_secrets("postgresql://u:p%40ss@h/x?password=q") == [
        "postgresql://u:p%40ss@h/x?password=q",
        "p%40ss",
        "p@ss",
        "q",
        "q",
    ]


def _pg_error(cls: Any, message: str = "boom") -> Exception:
    """The error asyncpg raises for a server's ErrorResponse with that class's SQLSTATE."""
    exc: Exception = asyncpg.PostgresError.new({"C": cls.sqlstate, "M": message})
    assert type(exc) is cls
    return exc


@pytest.mark.parametrize(
    ("exc", "permanent", "words"),
    [
        (_pg_error(asyncpg.exceptions.SerializationError), False, "PostgreSQL 40001"),
        (_pg_error(asyncpg.exceptions.DeadlockDetectedError), False, "40P01"),
        (_pg_error(asyncpg.exceptions.TooManyConnectionsError), False, "53300"),
        (_pg_error(asyncpg.exceptions.CannotConnectNowError), False, "57P03"),
        (_pg_error(asyncpg.exceptions.AdminShutdownError), False, "57P01"),
        (_pg_error(asyncpg.exceptions.ReadOnlySQLTransactionError), False, "25006"),
        (_pg_error(asyncpg.exceptions.UndefinedTableError), True, "42P01"),
        (_pg_error(asyncpg.exceptions.UndefinedColumnError), True, "42703"),
        (
            _pg_error(asyncpg.exceptions.InsufficientPrivilegeError, "permission denied for table t"),
            True,
            "permission denied",
        ),
        (_pg_error(asyncpg.exceptions.InvalidPasswordError), True, "28P01"),
        (_pg_error(asyncpg.exceptions.InvalidTextRepresentationError), True, "22P02"),
        (_pg_error(asyncpg.exceptions.NotNullViolationError), True, "23502"),
        (
            _pg_error(asyncpg.exceptions.InvalidColumnReferenceError),
            True,
            "needs a unique index on delivery_id",
        ),
        (_pg_error(asyncpg.exceptions.LockNotAvailableError), False, "55P03"),
        (
            _pg_error(
                asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
                "ON CONFLICT does not support deferrable unique constraints/exclusion constraints "
                "as arbiters",
            ),
            True,
            "the unique index on delivery_id must be non-deferrable",
        ),
        (_pg_error(asyncpg.exceptions.ObjectNotInPrerequisiteStateError), False, "55000"),
        (ConnectionRefusedError(111, "Connect call failed"), False, "connection error"),
        (TimeoutError(), False, "timed out after 10s"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), False, "08003"),
        (asyncpg.exceptions.InterfaceError("another operation is in progress"), False, "connection error"),
        (EgressDenied("private"), True, "private"),
    ],
)
def test_postgres_errors_are_classified(exc: BaseException, permanent: bool, words: str) -> None:
    outcome = classify_error(exc, pg_cfg())
    assert outcome.permanent is permanent
    assert words in (outcome.error or "")


async def test_postgres_private_host_is_refused_and_nothing_leaks() -> None:
    outcome = await send_with(Postgres(pg_cfg()), allow_private=False, resolver=_secrets_local)
    assert outcome.permanent and "private" in (outcome.error or "")
    assert "p4ss-W0rd" not in (outcome.error or "")


async def _secrets_local(project_id: str, ref: str) -> str:
    return "postgresql://u:p4ss-W0rd@127.0.0.1:5432/x"


# --------------------------------------------------------------------------------------- notion


def test_text_is_split_at_2000_utf16_units_without_breaking_characters() -> None:
    assert split_text("") == []
    assert [len(c) for c in split_text("a" * 4001)] == [2000, 2000, 1]
    emoji = split_text("😀" * 1001)  # two UTF-16 units each
    assert [len(c) for c in emoji] == [1000, 1]
    assert "".join(emoji) == "😀" * 1001
    capped = split_text("a" * 250_000)
    assert len(capped) == 100 and capped[-1].endswith("…")


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (3, 3),
        (2.5, 2.5),
        ("12", 12),
        (" -1.5 ", -1.5),
        ("1,200", 1200),
        ("1e3", 1000.0),
        ("many", None),
        (True, None),
        (None, None),
        ("nan", None),
        (float("inf"), None),
        ([1], None),
        # Past 64 bits JSON (orjson) cannot carry an integer: a float, as Notion keeps numbers.
        ("123456789012345678901234567890", 1.2345678901234568e29),
        (2**70, float(2**70)),
        ("9" * 5000, None),  # infinite as a float
    ],
)
def test_numbers(value: Any, number: Any) -> None:
    assert to_number(value) == number
    orjson.dumps(property_value("number", value))


@pytest.mark.parametrize(
    ("value", "start"),
    [
        ("2026-03-01", "2026-03-01"),
        ("2026-03-01T12:30:00.000Z", "2026-03-01T12:30:00Z"),
        ("2026-03-01T12:30:00+02:00", "2026-03-01T12:30:00+02:00"),
        (1772368200, "2026-03-01T12:30:00.000Z"),
        (1772368200000, "2026-03-01T12:30:00.000Z"),
        ("yesterday", None),
        (None, None),
        # Numbers too small to be a moment since 1973: a year, a count. They were 1970 dates.
        ("2024", None),
        ("12", None),
        (2024, None),
        (-5, None),
    ],
)
def test_dates(value: Any, start: str | None) -> None:
    assert to_date(value) == start


def test_selects_checkboxes_and_shapes() -> None:
    assert select_names("a, b,a,,") == ["a", "b"]
    assert select_names(["x,y", "z"]) == ["x y", "z"]
    assert property_value("select", "pro, annual") == {"select": {"name": "pro annual"}}
    assert property_value("select", "") == {"select": None}
    assert property_value("select", "x" * 150)["select"]["name"] == "x" * 100
    assert [to_checkbox(v) for v in (True, "yes", "1", 1, "no", 0, None, "")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert property_value("date", "nope") == {"date": None}
    assert property_value("url", "") == {"url": None}


def test_url_and_email_past_notions_limits_are_sent_empty_never_cut() -> None:
    """A URL past 2,000 characters was cut to 2,000 and sent: a link to somewhere else."""
    url = "https://app.acme.com/report?q=" + "a" * 1970
    assert len(url) == 2000 and property_value("url", f"  {url} ") == {"url": url}
    assert property_value("url", url + "b") == {"url": None}
    address = "x" * 191 + "@acme.com"
    assert len(address) == 200 and property_value("email", address) == {"email": address}
    assert property_value("email", "x" + address) == {"email": None}


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("title", "t" * 4500),
        ("rich_text", "😀" * 3000),
        ("select", "a,b"),
        ("multi_select", "x, y, x"),
        ("multi_select", ["p", "q,r"]),
        ("number", "12.5"),
        ("number", "n/a"),
        ("date", 1772368200),
        ("date", "bad"),
        ("checkbox", "yes"),
        ("url", "https://x.test"),
        ("url", "https://x.test/" + "p" * 2500),
        ("email", None),
        ("email", "x" * 250 + "@acme.com"),
    ],
)
def test_built_values_pass_notions_validation(kind: str, value: Any) -> None:
    # The local Notion API validates as Notion does; what we build must always pass it.
    assert check_value("P", kind, property_value(kind, value)) is None


def test_notion_body() -> None:
    cfg = NotionConfig.model_validate(
        {
            "token": "ref:t",
            "database_id": "0" * 32,
            "properties": {
                "Name": {"type": "title", "value": "$event.account paid"},
                "Amount": {"type": "number", "value": "$event.amount"},
                "Fixed": {"type": "checkbox", "value": True},
            },
        }
    )
    body = Notion(cfg).build_body(request())
    assert body == {
        "parent": {"database_id": "00000000-0000-0000-0000-000000000000"},
        "properties": {
            "Name": {"title": [{"type": "text", "text": {"content": "acme paid"}}]},
            "Amount": {"number": 12.5},
            "Fixed": {"checkbox": True},
        },
    }


def test_notion_dedupe_property() -> None:
    base: dict[str, Any] = {
        "token": "ref:t",
        "database_id": "0" * 32,
        "properties": {"Name": {"type": "title", "value": "x"}},
    }
    cfg = NotionConfig.model_validate({**base, "dedupe_property": "Delivery"})
    body = Notion(cfg).build_body(request())
    assert body["properties"]["Delivery"] == {
        "rich_text": [{"type": "text", "text": {"content": "dlv_01ABC"}}]
    }
    with pytest.raises(ValidationError, match="remove it from properties"):
        NotionConfig.model_validate({**base, "dedupe_property": "Name"})


def test_a_notion_request_is_cut_to_fit_notions_500_kb() -> None:
    """Each text property fits its own limit (100 objects of 2,000 units), but three of them
    made an 800 KB request, which Notion refuses: the delivery went dead. The heaviest texts
    are cut, with an ellipsis, until the request fits."""
    cfg = NotionConfig.model_validate(
        {
            "token": "ref:t",
            "database_id": "0" * 32,
            "properties": {
                "Name": {"type": "title", "value": "$event.cjk"},
                "Body": {"type": "rich_text", "value": "$event.long"},
                "Quoted": {"type": "rich_text", "value": "$event.quotes"},
                "Count": {"type": "number", "value": "$event.n"},
            },
        }
    )
    payload = {"cjk": "漢" * 300_000, "long": "a" * 300_000, "quotes": '"' * 150_000, "n": 3}
    body = Notion(cfg).build_body(request(event={**EVENT, "payload": payload}))
    raw = orjson.dumps(body)
    assert 400_000 < len(raw) <= 480_000, len(raw)
    props = body["properties"]
    assert props["Count"] == {"number": 3}
    for name in ("Name", "Body", "Quoted"):
        kind = "title" if name == "Name" else "rich_text"
        parts = props[name][kind]
        assert len(parts) <= 100 and all(len(p["text"]["content"]) <= 2000 for p in parts)
    assert props["Name"]["title"][-1]["text"]["content"].endswith("…")
    # What fits is left whole.
    small = Notion(cfg).build_body(
        request(event={**EVENT, "payload": {"cjk": "漢", "long": "a", "quotes": '"', "n": 1}})
    )
    assert small["properties"]["Name"] == {"title": [{"type": "text", "text": {"content": "漢"}}]}


def _notion_error(status: int, code: str, message: str) -> bytes:
    import orjson

    return orjson.dumps({"object": "error", "status": status, "code": code, "message": message})


@pytest.mark.parametrize(
    ("status", "code", "permanent"),
    [
        (400, "validation_error", True),
        (401, "unauthorized", True),
        (403, "restricted_resource", True),
        (404, "object_not_found", True),
        (409, "conflict_error", False),
        (429, "rate_limited", False),
        (500, "internal_server_error", False),
        (502, "bad_gateway", False),
        (503, "service_unavailable", False),
    ],
)
def test_notion_answers_are_classified(status: int, code: str, permanent: bool) -> None:
    outcome = classify_response(status, _notion_error(status, code, "the message"), "2")
    assert not outcome.ok and outcome.permanent is permanent
    assert outcome.error == f"Notion {status} {code}: the message"
    assert outcome.retry_after == (2.0 if status in (429, 503) else None)


def test_notion_success_and_odd_answers() -> None:
    ok = classify_response(
        200, b'{"object":"page","id":"p1","url":"https://notion.so/p1","properties":{}}', None
    )
    assert ok.ok and ok.response_excerpt == '{"object":"page","id":"p1","url":"https://notion.so/p1"}'
    proxy = classify_response(502, b"<html>bad gateway</html>", None)
    assert not proxy.permanent and proxy.error == "Notion 502: <html>bad gateway</html>"


async def test_notion_plain_http_api_base_is_refused() -> None:
    cfg = NotionConfig.model_validate(
        {
            "token": "ref:t",
            "database_id": "0" * 32,
            "properties": {"N": {"type": "title", "value": "x"}},
            "api_base": "http://notion-proxy.example.com",
        }
    )
    outcome = await send_with(Notion(cfg), allow_private=False)
    assert outcome.permanent and "must be https://" in (outcome.error or "")


async def test_notion_private_api_base_is_refused() -> None:
    cfg = NotionConfig.model_validate(
        {
            "token": "ref:t",
            "database_id": "0" * 32,
            "properties": {"N": {"type": "title", "value": "x"}},
            "api_base": "https://127.0.0.1:9",
        }
    )
    outcome = await send_with(Notion(cfg), allow_private=False)
    assert outcome.permanent and "private" in (outcome.error or "")


async def test_notion_that_cannot_be_reached_or_does_not_answer_is_retried() -> None:
    """Nothing listening is a connection error; a server that never answers, a timeout: both
    may pass, so neither is permanent."""

    async def token(project_id: str, ref: str) -> str:
        return "secret_notion_token"

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # holds the connection open until the client gives up

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    quiet_port = listener.sockets[0].getsockname()[1]
    closed_port = free_port()
    outcomes = {}
    try:
        for name, port in (("closed", closed_port), ("silent", quiet_port)):
            cfg = NotionConfig.model_validate(
                {
                    "token": "ref:t",
                    "database_id": "0" * 32,
                    "properties": {"N": {"type": "title", "value": "x"}},
                    "api_base": f"http://127.0.0.1:{port}",
                    "timeout": 0.3,
                }
            )
            outcomes[name] = await send_with(Notion(cfg), allow_private=True, resolver=token)
    finally:
        listener.close()
        await listener.wait_closed()
    closed, quiet = outcomes["closed"], outcomes["silent"]
    assert not closed.ok and not closed.permanent, closed
    assert (closed.error or "").startswith("connection error: "), closed
    assert not quiet.ok and not quiet.permanent and quiet.error == "timed out after 0.3s", quiet


# ----------------------------------------------------------------------------------------- docs


@pytest.mark.parametrize("page", ["email.md", "postgres.md", "notion.md"])
def test_every_yaml_example_in_the_docs_is_valid(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)
    assert blocks
    kind = page.removesuffix(".md")
    for block in blocks:
        cfg = parse_config(yaml.safe_load(block))
        assert [d.kind for d in cfg.destinations] == [kind]


async def test_postgres_connects_to_the_address_it_checked_not_to_the_name_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: a name that answers the check with a public address and the driver, asked
    a moment later, with a private one. The driver must connect to the address checked. The
    resolver's first answer is played by a stand-in (no DNS server of ours runs here); the
    second is the system's own: ``127.1`` is 127.0.0.1 to it, where a listener counts who comes."""
    arrived: list[str] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.append("connection")
        writer.close()

    listener = await asyncio.start_server(note, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]

    async def first_answer(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        return [(socket.AF_INET, ("93.184.216.34", port))]

    async def dsn(project_id: str, ref: str) -> str:
        return f"postgresql://u:p4ss-W0rd@127.1:{port}/x"

    monkeypatch.setattr(shared, "resolve", first_answer)
    try:
        outcome = await send_with(Postgres(pg_cfg(timeout=2)), allow_private=False, resolver=dsn)
    finally:
        listener.close()
        await listener.wait_closed()
    assert not outcome.ok
    assert arrived == [], "the driver resolved the name again and reached a private address"


@pytest.mark.parametrize(
    "value", ['ref:"><svg onload=alert(1)>', "ref:a/b", "ref:" + "n" * 201, "env:1VAR", "env:MY-VAR"]
)
def test_a_reference_must_name_what_can_be_set(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not one (a secret|an environment variable) can have") as caught:
        check_reference("connection", value, "bot token")
    assert value.partition(":")[2] not in str(caught.value)
    for good in ("ref:slack-main", "ref:a.b_c-1", "env:SLACK_BOT_TOKEN", "env:_x1"):
        assert check_reference("connection", good, "bot token") == good


async def test_a_server_echoing_auth_plain_in_its_refusal_shows_no_password() -> None:
    """AUTH PLAIN sends base64 of ``\\0user\\0password`` in one piece; a server that repeats the
    command in its 535 put the password in the attempt log (only the password's own base64,
    AUTH LOGIN's, was scrubbed)."""

    async def echoing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 echo ESMTP\r\n")
        while line := (await reader.readline()).decode().strip():
            if line.upper().startswith("EHLO"):
                writer.write(b"250-echo\r\n250 AUTH PLAIN\r\n")
            elif line.upper().startswith("AUTH"):
                writer.write(f"535 5.7.8 Authentication failed for: {line}\r\n".encode())
            elif line.upper().startswith("QUIT"):
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(echoing, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    cfg = email_cfg(host="127.0.0.1", port=port, tls="none", username="alerts@acme.com", password="ref:pw")
    try:
        outcome = await send_with(Email(cfg), allow_private=True, resolver=_secrets)
    finally:
        listener.close()
        await listener.wait_closed()
    assert not outcome.ok and outcome.permanent and "535" in (outcome.error or ""), outcome
    plain = base64.b64encode(b"\0alerts@acme.com\0s3cret-Password!").decode()
    assert plain not in (outcome.error or ""), outcome.error
    assert "AUTH PLAIN <redacted>" in (outcome.error or ""), outcome.error
