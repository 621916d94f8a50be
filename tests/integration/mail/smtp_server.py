"""A real SMTP server for tests: aiosmtpd in a background thread on 127.0.0.1.

    with SmtpServer() as server:
        deliver_somehow(mail_url=server.url)
        [message] = server.wait_for(1)

``SmtpServer`` speaks plain SMTP, STARTTLS (``tls_context=``) or implicit TLS (``ssl_context=``),
can require AUTH (``credentials=``) and can refuse chosen recipients or every message with a
fixed reply (``recipient_replies={"nobody@example.com": "550 5.1.1 No such user"}``,
``data_reply="451 4.3.0 Try later"``), or the sender (``sender_reply=``). What it accepts
lands in ``messages`` (parsed, line endings turned to LF) and ``deliveries`` (with envelope,
TLS and login details).
``make_self_signed_certificate`` and ``server_tls_context`` give it a certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import ipaddress
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Delivery", "SmtpServer", "make_self_signed_certificate", "server_tls_context"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Delivery:
    """One accepted message as the server saw it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    tls: bool
    login: str | None
    raw: bytes  # as received, CRLF line endings
    message: EmailMessage


class _Handler:
    def __init__(
        self,
        server: SmtpServer,
        *,
        recipient_replies: Mapping[str, str],
        data_reply: str | None,
        sender_reply: str | None = None,
    ) -> None:
        self._server = server
        self._recipient_replies = dict(recipient_replies)
        self._data_reply = data_reply
        self._sender_reply = sender_reply

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._sender_reply is not None:
            return self._sender_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._recipient_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._data_reply is not None:
            return self._data_reply
        raw = envelope.original_content or b""
        # Parsed with LF line endings, so get_content() reads like the text that was sent.
        message = email.message_from_bytes(
            raw.replace(b"\r\n", b"\n"), _class=EmailMessage, policy=policy.default
        )
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        login = session.auth_data if isinstance(session.auth_data, str) else None
        self._server._record(
            Delivery(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                tls=tls,
                login=login,
                raw=raw,
                message=message,
            )
        )
        return "250 Message accepted for delivery"


class _Controller(Controller):
    """aiosmtpd's threaded Controller, bound to an OS-chosen free port (``port=0``)."""

    def factory(self) -> SMTP:
        # Hand SMTP the controller's loop; without one it looks the loop up inside a
        # process-wide warnings.catch_warnings(), which is not thread-safe.
        return SMTP(self.handler, loop=self.loop, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # The documented override point that runs once the socket is bound and before the
        # readiness probe connects to self.port: learn the port the OS picked.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """A real SMTP server on 127.0.0.1 and a free port; start()/stop() or use ``with``.

    ``tls_context`` offers STARTTLS (required when ``require_starttls``); ``ssl_context`` makes
    the whole connection implicit TLS (smtps). ``credentials`` (user name to password) makes the
    server offer AUTH PLAIN/LOGIN: after STARTTLS and then mandatory with ``tls_context``; over
    implicit TLS it is offered from the start (aiosmtpd cannot require it there). A recipient in
    ``recipient_replies`` is answered with that reply, e.g. ``"550 5.1.1 No such user"``; with
    ``data_reply`` (e.g. ``"554 5.6.0 Rejected"``) every message is answered so and dropped;
    with ``sender_reply`` (e.g. ``"553 5.7.1 Sender address rejected"``) every MAIL FROM.
    ``smtputf8`` offers SMTPUTF8 (RFC 6531), for addresses that are not ASCII.
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
        recipient_replies: Mapping[str, str] | None = None,
        data_reply: str | None = None,
        sender_reply: str | None = None,
        smtputf8: bool = False,
    ) -> None:
        if tls_context is not None and ssl_context is not None:
            raise ValueError("use tls_context (STARTTLS) or ssl_context (implicit TLS), not both")
        if credentials is not None and tls_context is None and ssl_context is None:
            raise ValueError("credentials need TLS: pass tls_context or ssl_context")
        self.messages: list[EmailMessage] = []
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        self._credentials = dict(credentials or {})
        self._scheme = "smtp+starttls" if tls_context else "smtps" if ssl_context else "smtp"
        smtp_kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if tls_context is not None:
            smtp_kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        if credentials is not None:
            smtp_kwargs["authenticator"] = self._authenticate
            # aiosmtpd only sees STARTTLS as TLS, and warns about requiring AUTH without it.
            starttls = tls_context is not None
            smtp_kwargs.update(auth_required=starttls, auth_require_tls=starttls)
        self._controller = _Controller(
            _Handler(
                self,
                recipient_replies=recipient_replies or {},
                data_reply=data_reply,
                sender_reply=sender_reply,
            ),
            hostname=HOST,
            port=0,
            ssl_context=ssl_context,
            server_hostname="localhost",
            **smtp_kwargs,
        )
        self._running = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if not self._running:
            raise RuntimeError("SmtpServer is not running")
        port: int = self._controller.port
        return port

    @property
    def url(self) -> str:
        """A mail URL for this server; TLS schemes carry ``verify=false`` (self-signed)."""
        query = "" if self._scheme == "smtp" else "?verify=false"
        return f"{self._scheme}://{HOST}:{self.port}{query}"

    def start(self) -> SmtpServer:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[EmailMessage]:
        """Wait until at least ``n`` messages arrived; return (a copy of) all of them."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= n, timeout):
                raise AssertionError(
                    f"expected {n} message(s) within {timeout} s, got {len(self.messages)}"
                )
            return list(self.messages)

    def _record(self, delivery: Delivery) -> None:
        with self._changed:
            self.deliveries.append(delivery)
            self.messages.append(delivery.message)
            self._changed.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if login in self._credentials and self._credentials[login] == password:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


def make_self_signed_certificate(
    directory: Path, *, hostnames: tuple[str, ...] = ("localhost", HOST)
) -> tuple[Path, Path]:
    """Write a self-signed server certificate and its key (PEM); return their paths.

    Each of ``hostnames`` goes into subjectAltName, as a DNS name or an IP address.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    alt_names: list[x509.GeneralName] = []
    for hostname in hostnames:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
        except ValueError:
            alt_names.append(x509.DNSName(hostname))
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "server.crt"
    key_path = directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server-side context for ``tls_context=`` or ``ssl_context=``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context
