"""``email``: send the event as an SMTP message (aiosmtplib), one connection per delivery.

Outcomes: 2xx/3xx accepted → delivered; a 4xx reply, a refused or dropped connection or a
timeout → retried; a 5xx reply (550 mailbox unavailable, 535 authentication failed, 553 bad
sender, 554 rejected…) → dead at once, with the server's reply text. The password never appears
in an error: it is scrubbed (with its base64 forms) from anything the server says.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import ClassVar

import aiosmtplib
from pydantic import BaseModel

from ingestlayer.delivery.egress import EgressDenied
from ingestlayer.destinations.base import Outcome, SendContext, SendRequest, excerpt
from ingestlayer.destinations.email.config import EmailConfig, address_of
from ingestlayer.destinations.email.message import build_message, default_helo_name
from ingestlayer.destinations.shared import connect_checked, scrub

# aiosmtplib raises a plain SMTPException for these; their words tell them apart.
MISSING_CAPABILITY = ("not supported", "no suitable authentication method")
QUIT_SECONDS = 2.0


def reply_text(message: str) -> str:
    return " ".join(message.split())


def classify_reply(code: int, message: str, what: str = "") -> Outcome:
    """An SMTP error reply: 5xx is permanent, anything else (4xx) is worth retrying."""
    prefix = f"{what}: " if what else ""
    return Outcome(
        ok=False,
        status_code=code,
        error=f"SMTP {code} {prefix}{reply_text(message)}".strip(),
        permanent=500 <= code < 600,
    )


def classify_refused(exc: aiosmtplib.SMTPRecipientsRefused) -> Outcome:
    """Every recipient refused: permanent only when each refusal is (5xx)."""
    refused = exc.recipients
    if not refused:
        return Outcome(ok=False, error="SMTP: every recipient was refused")
    parts = [f"{r.recipient}: {r.code} {reply_text(r.message)}" for r in refused]
    return Outcome(
        ok=False,
        status_code=refused[0].code,
        error="SMTP recipients refused: " + "; ".join(parts),
        permanent=all(500 <= r.code < 600 for r in refused),
    )


def classify_exception(exc: BaseException, timeout: float) -> Outcome:
    """What a failed SMTP exchange means for the delivery."""
    if isinstance(exc, EgressDenied):
        return Outcome(ok=False, error=str(exc), permanent=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return classify_refused(exc)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return classify_reply(exc.code, exc.message, f"recipient {exc.recipient} refused")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return classify_reply(exc.code, exc.message, f"sender {exc.sender} refused")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return classify_reply(exc.code, exc.message, "authentication failed")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify_reply(exc.code, exc.message)
    if isinstance(exc, TimeoutError):  # also aiosmtplib's SMTPTimeoutError
        return Outcome(ok=False, error=f"timed out after {timeout:g}s")
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or (
        isinstance(exc, aiosmtplib.SMTPException)
        and any(words in str(exc).lower() for words in MISSING_CAPABILITY)
    ):
        # No STARTTLS, no AUTH, no mechanism both sides know: the configuration or the server
        # must change, retrying cannot help.
        return Outcome(ok=False, error=f"SMTP server does not support what is needed: {exc}", permanent=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Outcome(
            ok=False,
            error=f"TLS certificate not trusted: {exc.verify_message or exc} "
            "(for a private CA or a self-signed certificate, set ca_cert)",
        )
    if isinstance(exc, aiosmtplib.SMTPException):
        return Outcome(ok=False, error=f"SMTP error: {exc}")
    if isinstance(exc, ssl.SSLError):
        return Outcome(ok=False, error=f"TLS error: {exc}")
    if isinstance(exc, OSError):
        return Outcome(ok=False, error=f"connection error: {exc}")
    return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")


def smtp_auth_secrets(username: str | None, password: str | None) -> list[str]:
    """What to scrub from a server's answers: the password, and the strings SMTP AUTH sends it
    in with the user name, whose base64 forms a server may echo in an error (PLAIN's
    ``\\0user\\0password``, XOAUTH2's); AUTH LOGIN sends the password alone."""
    if not password:
        return []
    user = username or ""
    return [password, f"\0{user}\0{password}", f"user={user}\x01auth=Bearer {password}\x01\x01"]


class Email:
    kind: ClassVar[str] = "email"
    config_model: ClassVar[type[BaseModel]] = EmailConfig

    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self._tls: tuple[str | None, ssl.SSLContext] | None = None

    def target(self) -> str:
        cfg = self.config
        return f"smtp://{cfg.host}:{cfg.effective_port} → {', '.join(cfg.recipients())}"

    async def close(self) -> None:
        """Nothing held between deliveries (one SMTP connection per delivery)."""

    async def _tls_context(self, ca_pem: str | None) -> ssl.SSLContext:
        """Built once per destination (loading the system CAs reads files: off the loop)."""
        if self._tls is not None and self._tls[0] == ca_pem:
            return self._tls[1]
        verify = self.config.tls_verify

        def build() -> ssl.SSLContext:
            if ca_pem is not None:
                context = ssl.create_default_context(cadata=ca_pem)
            else:
                context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return context

        context = await asyncio.to_thread(build)
        self._tls = (ca_pem, context)
        return context

    def _policy_error(self, ctx: SendContext) -> Outcome | None:
        cfg = self.config
        if ctx.egress.allow_private:
            return None
        if cfg.tls == "none":
            return Outcome(
                ok=False,
                permanent=True,
                error="tls: none (mail in the clear) is only allowed where private destinations are "
                "allowed (INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS=1); use starttls or implicit",
            )
        if not cfg.tls_verify:
            return Outcome(
                ok=False,
                permanent=True,
                error="tls_verify: false is only allowed where private destinations are allowed; "
                "trust the server's certificate with ca_cert instead",
            )
        return None

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        refused = self._policy_error(ctx)
        if refused is not None:
            return refused
        try:
            password = await ctx.resolve_secret(request.project_id, cfg.password) if cfg.password else None
            username = cfg.username
            if username is not None and username.startswith(("ref:", "env:")):
                username = await ctx.resolve_secret(request.project_id, username)
            ca_pem = cfg.ca_cert
            if ca_pem is not None and ca_pem.startswith(("ref:", "env:")):
                ca_pem = await ctx.resolve_secret(request.project_id, ca_pem)
        except LookupError as exc:  # a reference that cannot be resolved (yet): retried
            return Outcome(ok=False, error=str(exc))
        secrets = smtp_auth_secrets(username, password)
        try:
            tls_context = await self._tls_context(ca_pem) if cfg.tls != "none" else None
        except (ssl.SSLError, ValueError) as exc:
            return Outcome(ok=False, error=f"ca_cert is not a valid PEM certificate: {exc}", permanent=True)
        message = build_message(cfg, request)
        smtp: aiosmtplib.SMTP | None = None
        try:
            async with asyncio.timeout(cfg.timeout):
                sock = await connect_checked(ctx.egress, cfg.host, cfg.effective_port)
                try:
                    smtp = aiosmtplib.SMTP(
                        hostname=cfg.host.strip("[]"),
                        sock=sock,
                        username=username,
                        password=password,
                        local_hostname=cfg.helo_name or default_helo_name(),
                        timeout=cfg.timeout,
                        use_tls=cfg.tls == "implicit",
                        start_tls=cfg.tls == "starttls",
                        tls_context=tls_context,
                    )
                except BaseException:
                    sock.close()
                    raise
                # From here the socket belongs to the connection's transport, which closes it.
                await smtp.connect()
                errors, reply = await smtp.send_message(
                    message, sender=address_of(cfg.from_), recipients=cfg.recipients()
                )
        except Exception as exc:
            if smtp is not None:
                smtp.close()
            outcome = classify_exception(exc, cfg.timeout)
            outcome.error = scrub(outcome.error, secrets)
            return outcome
        except BaseException:  # cancelled (shutting down): close, and let it through
            if smtp is not None:
                smtp.close()
            raise
        # Accepted: a polite, brief goodbye. Nothing that happens now changes the outcome (a
        # failure here must not retry a message the server already took).
        try:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(QUIT_SECONDS):
                    await smtp.quit()
        finally:
            smtp.close()
        note = f"250 {reply_text(reply)}"
        if errors:
            # Accepted for some recipients: retrying would send them a second copy.
            refused_list = "; ".join(
                f"{rcpt}: {code} {reply_text(msg)}" for rcpt, (code, msg) in errors.items()
            )
            note = f"{note} (refused: {refused_list})"
        # Scrubbed, then cut: cut first, a password the cut split would be left there in part.
        return Outcome(ok=True, status_code=250, response_excerpt=excerpt(scrub(note, secrets)))
