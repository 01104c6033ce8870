"""Credentials never appear in logs, API responses or attempt errors (a full run, searched).

One run of the in-process server with every logger captured at DEBUG (and the process's stdout
and stderr): secrets set through the API and one from the environment; one pipeline fanning out
to webhook.out (HMAC, and a bearer token from `env:` that the receiver refuses), email (a good
and a wrong SMTP password, over STARTTLS), postgres (a DSN with a password, and one whose role
lacks permission) and notion (a good and a revoked token); events ingested and every delivery
finished; a test send to each destination; an apply with a credential pasted inline; then every
listing of the API. Each secret, and its base64 forms, is searched for in all of it.

The SMTP server here stands in for a mail provider; its own log (``mail.log``, aiosmtpd) is the
provider's, and shows the AUTH exchange by design, so it is the one log not searched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from tests.support.databases import PG_URL, require_pg
from tests.support.fake_notion import FakeNotion
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for
from tests.support.smtp_server import SmtpServer

PROVIDER_LOGGERS = ("mail.log",)
SMTP_PASSWORD = "smtp-leak-Pass-7c1a!"
SMTP_WRONG = "smtp-wrong-Pass-3e8f"
PG_PASSWORD = "pg-leak-Pass-5d2c"
PG_BAD_PASSWORD = "pg-other-Pass-8a7b"
HMAC_SECRET = "whsec_bGVha3Rlc3QtaG1hYy1zZWNyZXQtOWY4ZQ"
BEARER = "bearer-leak-token-4b9d2e"
NOTION_TOKEN = "secret_leak_notion_token_6f3a"
NOTION_REVOKED = "secret_revoked_notion_token_2b9c"
INLINE = "pasted-inline-secret-1d0e"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[tuple[str, str]]:
        return [(r.name, self.format(r)) for r in self.records if not r.name.startswith(PROVIDER_LOGGERS)]


@contextlib.contextmanager
def capture_all_logs() -> Iterator[Collect]:
    """Every logger at DEBUG, into one handler: root's, and those that do not propagate."""
    handler = Collect()
    root = logging.getLogger()
    saved_root = root.level
    saved: dict[logging.Logger, tuple[int, bool]] = {}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            saved[logger] = (logger.level, logger.disabled)
            logger.setLevel(logging.NOTSET)
            logger.disabled = False
            if not logger.propagate:
                logger.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for logger, (level, disabled) in saved.items():
            logger.setLevel(level)
            logger.disabled = disabled
            logger.removeHandler(handler)


async def _admin(sql: str, database: str | None = None) -> None:
    url = PG_URL if database is None else PG_URL.rsplit("/", 1)[0] + f"/{database}"
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def leak_db() -> Iterator[tuple[str, str]]:
    """A scratch database with a read-only table, and a role that may not write to it."""
    require_pg()
    name = f"il_leak_{uuid.uuid4().hex[:10]}"
    role = f"il_leak_role_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(_admin(f'CREATE ROLE "{role}" LOGIN'))
    asyncio.run(_admin("CREATE TABLE locked (delivery_id text PRIMARY KEY, payload jsonb)", name))
    yield name, role
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(f'DROP ROLE IF EXISTS "{role}"'))


def pg_dsn(user: str, password: str, database: str) -> str:
    host = PG_URL.rsplit("/", 1)[0].split("@", 1)[1]
    return f"postgresql://{user}:{quote(password, safe='')}@{host}/{database}"


def forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [secret, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


async def all_api_bodies(server: RunningServer) -> dict[str, str]:
    """Every listing of the API, as text: what an admin (or an attacker with a key) can read."""
    bodies: dict[str, str] = {}

    async def get(path: str) -> Any:
        async with server.session.get(server.url + path, headers=server.auth()) as resp:
            text = await resp.text()
            bodies[path] = text
            return (
                await resp.json(content_type=None) if "json" in resp.headers.get("Content-Type", "") else None
            )

    destinations = await get("/v1/destinations")
    for d in destinations["data"]:
        await get(f"/v1/destinations/{d['id']}")
    await get("/v1/pipelines")
    deliveries = await get("/v1/deliveries?limit=500")
    for d in deliveries["data"]:
        await get(f"/v1/deliveries/{d['id']}")
    events = await get("/v1/events?limit=500")
    for e in events["data"]:
        await get(f"/v1/events/{e['id']}")
    for path in ("/v1/secrets", "/v1/sources", "/openapi.json", "/metrics", "/healthz", "/readyz", "/"):
        await get(path)
    return bodies


async def test_no_secret_in_logs_responses_or_attempts(
    db_url: str,
    leak_db: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    database, role = leak_db
    monkeypatch.setenv("LEAK_BEARER_TOKEN", BEARER)
    secrets = {
        "hooks-hmac": HMAC_SECRET,
        "smtp-password": SMTP_PASSWORD,
        "smtp-password-old": SMTP_WRONG,
        "warehouse": pg_dsn("postgres", PG_PASSWORD, database),
        "warehouse-readonly": pg_dsn(role, PG_BAD_PASSWORD, database),
        "notion": NOTION_TOKEN,
        "notion-old": NOTION_REVOKED,
    }
    searched = {
        **secrets,
        "env:LEAK_BEARER_TOKEN": BEARER,
        "pg password": PG_PASSWORD,
        "pg other password": PG_BAD_PASSWORD,
        "inline": INLINE,
    }
    responses: list[str] = []
    with capture_all_logs() as logs:
        ok_hooks, refusing_hooks = Receiver(), Receiver()
        await ok_hooks.start()
        await refusing_hooks.start()
        refusing_hooks.default = Reply(status=401, body=b'{"error": "bad token"}')
        smtp = await SmtpServer(tls="starttls", auth={"alerts": SMTP_PASSWORD}).start()
        notion = await FakeNotion(token=NOTION_TOKEN).start()
        server = await start_server(db_url)
        try:
            assert smtp.cert is not None
            dbid = notion.add_database({"Name": "title", "Account": "rich_text"})
            for name, value in secrets.items():
                await server.set_secret(name, value)

            def email(password_ref: str) -> dict[str, Any]:
                return {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "username": "alerts",
                    "password": password_ref,
                    "ca_cert": smtp.cert.cert_pem if smtp.cert else None,
                    "from": "alerts@acme.com",
                    "to": ["ops@acme.com"],
                }

            def notion_cfg(token_ref: str) -> dict[str, Any]:
                return {
                    "token": token_ref,
                    "database_id": dbid,
                    "api_base": notion.url,
                    "properties": {
                        "Name": {"type": "title", "value": "$event.type"},
                        "Account": {"type": "rich_text", "value": "$event.account"},
                    },
                }

            routes: list[dict[str, Any]] = [
                {
                    "name": "hooks-ok",
                    "webhook.out": {"url": ok_hooks.url + "/h", "auth": "hmac", "secret": "ref:hooks-hmac"},
                },
                {
                    "name": "hooks-refused",
                    "webhook.out": {
                        "url": refusing_hooks.url + "/h",
                        "auth": "bearer",
                        "secret": "env:LEAK_BEARER_TOKEN",
                    },
                },
                {"name": "email-ok", "email": email("ref:smtp-password")},
                {"name": "email-bad-auth", "email": email("ref:smtp-password-old")},
                {
                    "name": "pg-ok",
                    "postgres": {"dsn": "ref:warehouse", "table": "leak_events", "create_table": True},
                },
                {"name": "pg-denied", "postgres": {"dsn": "ref:warehouse-readonly", "table": "locked"}},
                {"name": "notion-ok", "notion": notion_cfg("ref:notion")},
                {"name": "notion-bad-auth", "notion": notion_cfg("ref:notion-old")},
            ]
            for route in routes:
                route["retry"] = {"schedule": [0]}
            await server.apply(
                {"pipelines": [{"name": "leaky", "source": {"match": ["leak.*"]}, "destinations": routes}]}
            )
            # A credential pasted inline is refused, and the refusal does not repeat it.
            bad = {
                "pipelines": [
                    {
                        "name": "x",
                        "source": {"match": ["x"]},
                        "destinations": [{"notion": {**notion_cfg(INLINE)}}],
                    }
                ]
            }
            status, body = await server.request("POST", "/v1/apply", json={"document": bad})
            assert status == 422
            responses.append(str(body))

            event_ids = []
            for i in range(3):
                status, body = await server.ingest("leak.test", {"account": f"acct-{i}", "n": i})
                assert status == 202
                event_ids.append(body["id"])

            async def finished() -> dict[str, int] | None:
                _, listed = await server.request("GET", "/v1/deliveries?limit=500")
                done = [d for d in listed["data"] if d["status"] in ("delivered", "dead")]
                if len(done) < 3 * len(routes):
                    return None
                counts: dict[str, int] = {}
                for d in done:
                    key = f"{d['destination']}:{d['status']}"
                    counts[key] = counts.get(key, 0) + 1
                return counts

            counts = await wait_for(finished, timeout=30)
            _, dead = await server.request("GET", "/v1/deliveries?status=dead&limit=500")
            errors = {d["destination"]: d["last_error"] for d in dead["data"]}
            # Every destination was exercised, and each failing one failed on its credentials.
            assert counts == {
                "hooks-ok:delivered": 3,
                "hooks-refused:dead": 3,
                "email-ok:delivered": 3,
                "email-bad-auth:dead": 3,
                "pg-ok:delivered": 3,
                "pg-denied:dead": 3,
                "notion-ok:delivered": 3,
                "notion-bad-auth:dead": 3,
            }, (counts, errors)
            assert "535" in errors["email-bad-auth"]
            assert "permission denied" in errors["pg-denied"]
            assert "unauthorized" in errors["notion-bad-auth"]
            assert "HTTP 401" in errors["hooks-refused"]

            _, listed = await server.request("GET", "/v1/destinations")
            for d in listed["data"]:
                status, tested = await server.request("POST", f"/v1/destinations/{d['id']}/test")
                assert status == 200
                responses.append(str(tested))

            bodies = await all_api_bodies(server)
            assert len(bodies) > 30
        finally:
            await server.stop()
            await notion.stop()
            await smtp.stop()
            await ok_hooks.stop()
            await refusing_hooks.stop()
        out, err = capfd.readouterr()

    texts = logs.texts()
    assert any(name.startswith("ingestlayer.delivery") for name, _ in texts), "no delivery logs captured"
    haystacks = [
        *(f"log {name}: {text}" for name, text in texts),
        *(f"response {path}: {body}" for path, body in bodies.items()),
        *(f"response: {r}" for r in responses),
        f"stdout: {out}",
        f"stderr: {err}",
    ]
    leaks = [
        f"{label} ({form!r}) in {hay[:160]}"
        for label, secret in searched.items()
        for form in forms(secret)
        for hay in haystacks
        if form in hay
    ]
    assert not leaks, "\n".join(leaks[:20])
    # The real senders did receive the real credentials (the test searched for the right things).
    assert ok_hooks.requests[0].verify(HMAC_SECRET)
    assert refusing_hooks.requests[0].headers["Authorization"] == f"Bearer {BEARER}"
    assert {r.headers["Authorization"] for r in notion.requests} == {
        f"Bearer {NOTION_TOKEN}",
        f"Bearer {NOTION_REVOKED}",
    }
