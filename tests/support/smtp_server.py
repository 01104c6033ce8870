"""A real SMTP server (aiosmtpd) on 127.0.0.1 for email tests, in the test's event loop.

It speaks SMTP as a mail provider's submission server does: plain, STARTTLS or implicit TLS
(SMTPS) with a certificate made for the test (:func:`self_signed`), AUTH PLAIN / LOGIN against
a user table (``auth={"user": "password"}``; a wrong password gets ``535 5.7.8``), and what it
answers is programmable:

- ``reject[address] = (550, "5.1.1 mailbox unavailable")``: RCPT TO refused with that reply;
- ``fail_data(451, "4.3.0 try again later", times=1)``: the next DATA ends with that reply;
- ``hang_on_quit = True``: QUIT gets no answer (a server that stalls after taking the message);
- ``messages`` keeps what was accepted: envelope, parsed message, login, TLS or not;
  ``rejected`` what DATA refused (to compare a retry with its first try).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True)
class CertPair:
    cert_pem: str
    key_pem: str

    def server_context(self) -> ssl.SSLContext:
        """A server-side context (``load_cert_chain`` reads files: written to a temp dir)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_text(self.cert_pem)
            key.write_text(self.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def self_signed(names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> CertPair:
    """A self-signed certificate for ``names`` and ``ips`` (valid from an hour ago, for a day)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertPair(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    tls: bool

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)

    def part(self, content_type: str) -> str:
        """The decoded body of the (first) part of that type, e.g. ``text/html`` (LF line ends)."""
        for p in self.message.walk():
            if p.get_content_type() == content_type and not p.is_multipart():
                return cast(str, p.get_content()).replace("\r\n", "\n")
        raise AssertionError(f"no {content_type} part in {self.message.get_content_type()}")


@dataclass
class SmtpServer:
    tls: TlsMode = "none"
    cert: CertPair | None = None
    auth: dict[str, str] | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    reject: dict[str, tuple[int, str]] = field(default_factory=dict)
    messages: list[ReceivedMail] = field(default_factory=list)
    rejected: list[ReceivedMail] = field(default_factory=list)
    auth_attempts: list[tuple[str, str, bool]] = field(default_factory=list)  # (mechanism, login, ok)
    port: int = 0
    host: str = "127.0.0.1"
    hang_on_quit: bool = False

    def __post_init__(self) -> None:
        self._data_failures: list[tuple[int, str]] = []
        self._server: asyncio.Server | None = None
        self.arrived = asyncio.Event()
        if self.tls != "none" and self.cert is None:
            self.cert = self_signed()

    def fail_data(self, code: int, text: str, times: int = 1) -> None:
        self._data_failures.extend([(code, text)] * times)

    # ---- aiosmtpd hooks ---------------------------------------------------------------------

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode()
        ok = self.auth is not None and self.auth.get(login) == auth_data.password.decode()
        self.auth_attempts.append((mechanism, login, ok))
        # handled=False: aiosmtpd answers a failure itself (535 5.7.8).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if address in self.reject:
            code, text = self.reject[address]
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        transport = server.transport
        auth_data = session.auth_data
        mail = ReceivedMail(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or cast(bytes, envelope.content) or b"",
            login=auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
        )
        if self._data_failures:
            code, text = self._data_failures.pop(0)
            self.rejected.append(mail)
            return f"{code} {text}"
        self.messages.append(mail)
        self.arrived.set()
        return f"250 2.0.0 OK queued as Q{len(self.messages)}"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hang_on_quit:
            await asyncio.sleep(30)  # cancelled when the client goes away or the server stops
        return "221 Bye"

    # ---- lifecycle --------------------------------------------------------------------------

    def _factory(self) -> SMTP:
        starttls = self.cert.server_context() if self.tls == "starttls" and self.cert else None
        mechanisms = {"PLAIN", "LOGIN"} - set(self.auth_mechanisms)
        return SMTP(
            self,
            hostname="smtp.test",
            tls_context=starttls,
            require_starttls=self.tls == "starttls",
            authenticator=self._authenticator if self.auth is not None else None,
            auth_require_tls=self.tls == "starttls",
            auth_exclude_mechanism=mechanisms,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> SmtpServer:
        loop = asyncio.get_running_loop()
        implicit = self.cert.server_context() if self.tls == "implicit" and self.cert else None
        self._server = await loop.create_server(self._factory, self.host, 0, ssl=implicit)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> SmtpServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
