"""The email destination through the real server, against a real SMTP server (aiosmtpd) on
127.0.0.1: plain, STARTTLS and implicit TLS with a certificate made for the test, SMTP AUTH, and
the provider's refusals (550 → dead, 451 → retried)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingestlayer.destinations.base import EXCERPT_BYTES
from ingestlayer.destinations.email import destination as email_destination
from tests.integration.test_delivery import final_delivery
from tests.support.server import RunningServer
from tests.support.smtp_server import SmtpServer

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}
PASSWORD = "correct horse battery staple"
HOSTILE = '<script>alert("x")</script> & "friends"'


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # What is under test is the destination; one store backend is enough here.
    return sqlite_url


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    server = await SmtpServer().start()
    yield server
    await server.stop()


def email_doc(smtp: SmtpServer, **settings: Any) -> dict[str, Any]:
    retry = settings.pop("retry", FAST)
    config = {
        "host": "127.0.0.1",
        "port": smtp.port,
        "tls": smtp.tls,
        "from": "Acme Alerts <alerts@acme.com>",
        "to": ["ops@acme.com"],
        **settings,
    }
    return {
        "pipelines": [
            {
                "name": "alerts",
                "source": {"match": ["feature.*", "invoice.*"]},
                "destinations": [{"email": config, "retry": retry}],
            }
        ]
    }


async def test_message_parts_headers_and_escaping(server: RunningServer, smtp: SmtpServer) -> None:
    await server.apply(
        email_doc(
            smtp,
            tls="none",
            cc=["Team <team@acme.com>"],
            bcc=["audit@acme.com"],
            subject="[$event.type] $event.account",
        )
    )
    _, body = await server.ingest("feature.used", {"account": "Globex", "feature": HOSTILE, "count": 3})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    (mail,) = smtp.messages
    msg = mail.message
    assert mail.mail_from == "alerts@acme.com"
    assert mail.rcpt_tos == ["ops@acme.com", "team@acme.com", "audit@acme.com"]
    assert msg["Subject"] == "[feature.used] Globex"
    assert msg["From"] == "Acme Alerts <alerts@acme.com>"
    assert msg["To"] == "ops@acme.com"
    assert msg["Cc"] == "Team <team@acme.com>"
    assert msg["Bcc"] is None  # blind copies are in the envelope only
    assert msg["Message-ID"] == f"<{d['id']}@acme.com>"
    assert msg["X-Ingestlayer-Delivery"] == d["id"]
    assert msg["X-Ingestlayer-Event"] == "feature.used"
    assert msg["X-Ingestlayer-Event-Id"] == body["id"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text = mail.part("text/plain")
    assert text.startswith("feature.used\n")
    assert "account  Globex" in text and f"feature  {HOSTILE}" in text and "count    3" in text
    assert body["id"] in text
    html = mail.part("text/html")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;friends&quot;" in html
    assert "<script>" not in html
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 250
    assert attempt["response_excerpt"].startswith("250 2.0.0 OK queued as")


async def test_templates_substitute_values_escaped_in_html(server: RunningServer, smtp: SmtpServer) -> None:
    await server.apply(
        email_doc(
            smtp,
            tls="none",
            subject="Invoice $event.number\r\nBcc: victim@example.com",
            template="Invoice $event.number for $event.customer",
            html_template='<p><b>Customer:</b> $event.customer</p><a href="$event.link">open</a>',
        )
    )
    payload = {"number": 42, "customer": HOSTILE, "link": 'https://x.test/" onmouseover="steal()'}
    _, body = await server.ingest("invoice.created", payload)
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    (mail,) = smtp.messages
    # Header injection through the subject is impossible: line breaks become spaces.
    assert mail.message["Subject"] == "Invoice 42 Bcc: victim@example.com"
    assert mail.rcpt_tos == ["ops@acme.com"]
    assert mail.part("text/plain").strip() == f"Invoice 42 for {HOSTILE}"
    html = mail.part("text/html")
    assert html.startswith("<p><b>Customer:</b> &lt;script&gt;")  # the template's markup is kept
    assert '<a href="https://x.test/&quot; onmouseover=&quot;steal()">open</a>' in html


async def test_control_characters_in_event_values_do_not_go_out(
    server: RunningServer, smtp: SmtpServer
) -> None:
    await server.apply(email_doc(smtp, tls="none", subject="Alert: $event.title", template="$event.detail"))
    payload = {"title": "disk\u0000 full\u001b[2J\u007f", "detail": "line\u0000 one\u001b"}
    _, body = await server.ingest("invoice.created", payload)
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered", d
    (mail,) = smtp.messages
    assert b"\x00" not in mail.data and b"\x7f" not in mail.data  # what the server received
    assert mail.message["Subject"] == "Alert: disk full[2J"
    assert mail.part("text/plain").strip() == "line one\x1b"  # a body may carry ESC, never NUL


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_starttls_with_auth_trusting_the_servers_certificate(
    server: RunningServer, mechanism: str
) -> None:
    async with SmtpServer(tls="starttls", auth={"alerts": PASSWORD}, auth_mechanisms=(mechanism,)) as smtp:
        assert smtp.cert is not None
        await server.set_secret("smtp-password", PASSWORD)
        await server.set_secret("smtp-ca", smtp.cert.cert_pem)
        await server.apply(
            email_doc(smtp, username="alerts", password="ref:smtp-password", ca_cert="ref:smtp-ca")
        )
        _, body = await server.ingest("feature.used", {"feature": "export"})
        d = await final_delivery(server, body["id"])
        assert d["status"] == "delivered", d
        (mail,) = smtp.messages
        assert mail.tls and mail.login == "alerts"
        assert smtp.auth_attempts == [(mechanism, "alerts", True)]


async def test_implicit_tls_with_an_inline_ca_certificate(server: RunningServer) -> None:
    async with SmtpServer(tls="implicit", auth={"alerts": PASSWORD}) as smtp:
        assert smtp.cert is not None
        await server.set_secret("smtp-password", PASSWORD)
        await server.apply(
            email_doc(smtp, username="alerts", password="ref:smtp-password", ca_cert=smtp.cert.cert_pem)
        )
        _, body = await server.ingest("feature.used", {"feature": "export"})
        d = await final_delivery(server, body["id"])
        assert d["status"] == "delivered", d
        assert smtp.messages[0].tls and smtp.messages[0].login == "alerts"


async def test_an_untrusted_certificate_is_refused_unless_verification_is_off(server: RunningServer) -> None:
    async with SmtpServer(tls="starttls") as smtp:
        await server.apply(email_doc(smtp, retry={"schedule": [0]}))
        _, body = await server.ingest("feature.used", {"feature": "export"})
        d = await final_delivery(server, body["id"])
        assert d["status"] == "dead"
        assert "certificate" in d["attempts"][0]["error"] and "ca_cert" in d["attempts"][0]["error"]
        assert smtp.messages == []
        # For local work (private destinations allowed), verification can be switched off.
        await server.apply(email_doc(smtp, tls_verify=False))
        _, body = await server.ingest("feature.used", {"feature": "export"})
        assert (await final_delivery(server, body["id"]))["status"] == "delivered"
        assert smtp.messages[0].tls


async def test_starttls_is_required_never_skipped(server: RunningServer, smtp: SmtpServer) -> None:
    # The server offers no STARTTLS: with tls: starttls nothing is sent in the clear.
    await server.set_secret("smtp-password", PASSWORD)
    await server.apply(email_doc(smtp, tls="starttls", username="alerts", password="ref:smtp-password"))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "dead" and len(d["attempts"]) == 1
    assert "STARTTLS extension not supported" in d["attempts"][0]["error"]
    assert smtp.messages == [] and smtp.auth_attempts == []


async def test_wrong_password_is_dead_with_the_reply_and_no_password(server: RunningServer) -> None:
    async with SmtpServer(tls="starttls", auth={"alerts": PASSWORD}) as smtp:
        assert smtp.cert is not None
        await server.set_secret("smtp-password", "wrong-password-123")
        await server.apply(
            email_doc(smtp, username="alerts", password="ref:smtp-password", ca_cert=smtp.cert.cert_pem)
        )
        _, body = await server.ingest("feature.used", {"feature": "export"})
        d = await final_delivery(server, body["id"])
        assert d["status"] == "dead"
        (attempt,) = d["attempts"]
        assert attempt["status_code"] == 535
        assert "535" in attempt["error"] and "Authentication credentials invalid" in attempt["error"]
        assert "wrong-password-123" not in str(d)


async def test_mailbox_unavailable_is_dead_at_once(server: RunningServer, smtp: SmtpServer) -> None:
    smtp.reject["gone@acme.com"] = (550, "5.1.1 <gone@acme.com>: mailbox unavailable")
    await server.apply(email_doc(smtp, to=["gone@acme.com"]))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 550
    assert "gone@acme.com: 550 5.1.1 <gone@acme.com>: mailbox unavailable" in attempt["error"]
    assert smtp.messages == []


async def test_some_recipients_refused_is_delivered_to_the_rest(
    server: RunningServer, smtp: SmtpServer
) -> None:
    smtp.reject["gone@acme.com"] = (550, "5.1.1 mailbox unavailable")
    await server.apply(email_doc(smtp, to=["ops@acme.com", "gone@acme.com"]))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    # Retrying would send the accepted recipients a second copy: delivered, with a note.
    assert d["status"] == "delivered"
    assert "refused: gone@acme.com: 550" in d["attempts"][0]["response_excerpt"]
    assert smtp.messages[0].rcpt_tos == ["ops@acme.com"]


async def test_temporary_failure_is_retried_with_the_same_message_id(
    server: RunningServer, smtp: SmtpServer
) -> None:
    smtp.fail_data(451, "4.3.0 try again later")
    await server.apply(email_doc(smtp))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [451, 250]
    assert "451 4.3.0 try again later" in d["attempts"][0]["error"]
    (first,) = smtp.rejected
    (mail,) = smtp.messages
    # One Message-ID across retries (and replays): receivers and MTAs can dedupe.
    assert first.message["Message-ID"] == mail.message["Message-ID"] == f"<{d['id']}@acme.com>"
    assert first.message["X-Ingestlayer-Attempt"] == "1" and mail.message["X-Ingestlayer-Attempt"] == "2"


async def test_a_stalled_goodbye_does_not_send_twice(
    server: RunningServer, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(email_destination, "QUIT_SECONDS", 0.2)
    smtp.hang_on_quit = True  # the message is accepted, then QUIT gets no answer
    await server.apply(email_doc(smtp))
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "delivered" and len(d["attempts"]) == 1
    assert len(smtp.messages) == 1


async def test_a_closed_port_is_retried(server: RunningServer, smtp: SmtpServer) -> None:
    port = smtp.port
    await smtp.stop()
    doc = email_doc(smtp, retry={"schedule": [0, 0.05]})
    doc["pipelines"][0]["destinations"][0]["email"]["port"] = port
    await server.apply(doc)
    _, body = await server.ingest("feature.used", {"feature": "export"})
    d = await final_delivery(server, body["id"])
    assert d["status"] == "dead"
    assert len(d["attempts"]) == 2  # retried: a connection error is not permanent
    assert "connection error" in d["attempts"][0]["error"]


async def test_inline_password_is_rejected_naming_the_field(server: RunningServer, smtp: SmtpServer) -> None:
    doc = email_doc(smtp, username="alerts", password="hunter2-inline")
    status, body = await server.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422
    assert body["error"]["field"] == "pipelines[0].destinations[0].email.password"
    assert "ref:NAME" in body["error"]["message"]
    assert "hunter2-inline" not in str(body)


async def test_a_note_cut_at_the_excerpt_limit_keeps_no_part_of_the_password(server: RunningServer) -> None:
    """A server that echoes the password in a refusal: the note of a partly refused message is
    scrubbed before it is cut to the excerpt's length. Scrubbed after, a password the cut split in
    two was left there in part."""
    async with SmtpServer(tls="starttls", auth={"alerts": PASSWORD}) as smtp:
        assert smtp.cert is not None
        await server.set_secret("smtp-password", PASSWORD)
        await server.apply(
            email_doc(
                smtp,
                to=["ops@acme.com", "gone@acme.com"],
                username="alerts",
                password="ref:smtp-password",
                ca_cert=smtp.cert.cert_pem,
            )
        )
        # Where the refusal's text starts in the note, then a refusal that puts the password
        # across the excerpt's end.
        smtp.reject["gone@acme.com"] = (550, "5.1.1 MARK")
        _, body = await server.ingest("feature.used", {"feature": "export"})
        first = (await final_delivery(server, body["id"]))["attempts"][0]["response_excerpt"]
        start = first.index("MARK")
        pad = "x" * (EXCERPT_BYTES - start - len(PASSWORD) // 2)
        smtp.reject["gone@acme.com"] = (550, f"5.1.1 {pad}{PASSWORD} was the password")
        _, body = await server.ingest("feature.used", {"feature": "export"})
        d = await final_delivery(server, body["id"])
        assert d["status"] == "delivered"
        note = d["attempts"][0]["response_excerpt"]
        assert note.startswith("250 ") and pad[:100] in note
        assert len(note.encode()) <= EXCERPT_BYTES
        assert PASSWORD[: len(PASSWORD) // 2] not in note, note[-60:]
