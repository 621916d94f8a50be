"""Mail delivery backends: console, file and SMTP (plain, STARTTLS, implicit TLS).

Pure code: no Flask, no SQLAlchemy. Every backend has ``send(message)``, which either hands the
message on or raises :class:`MailDeliveryError`; library exceptions (``smtplib``, ``ssl``,
``OSError``) never leave this module. ``make_backend(url)`` turns ``AUTHSVC_MAIL_URL`` into a
backend and raises ``ValueError`` with a one-line reason for a URL it cannot use. Reasons never
repeat the URL, because it may carry an SMTP password.

Mail URLs:

``console://``
    Log recipients and subject at INFO on the ``authsvc.mail`` logger; nothing is delivered.
``file:///abs/dir``
    One ``.eml`` file per message in ``/abs/dir`` (``file://localhost/abs/dir`` means the same,
    as in RFC 8089).
``file://relative/dir``
    One ``.eml`` file per message in ``relative/dir``, resolved against the working directory of
    the process when ``make_backend`` is called (normally where ``authsvc serve`` was started).
``smtp://[user:pass@]host[:port]``
    Plain SMTP, default port 25. Credentials, if given, travel unencrypted: use it only for a
    relay on the same host or a trusted network.
``smtp+starttls://[user:pass@]host[:port]``
    SMTP with STARTTLS required (default port 587); a server that does not offer STARTTLS is a
    delivery failure, never a silent downgrade to plain text.
``smtps://[user:pass@]host[:port]``
    SMTP over implicit TLS, default port 465.

SMTP query parameters: ``timeout`` (seconds per socket operation, default 10, at most 60; the
whole session, connection and TLS included, is cut off after 60 s however slowly the server
answers: see ``authsvc.deadline``) and, for the two TLS schemes, ``verify=false`` to turn off
certificate and host name checks (for tests only, and refused in production by the settings; the
default ``verify=true`` uses ``ssl.create_default_context()``, which honours ``SSL_CERT_FILE``
for a private CA). User name and password are percent-decoded, so ``%40`` in a user name is
``@``.
"""

from __future__ import annotations

import email.errors
import email.utils
import logging
import math
import os
import re
import secrets
import smtplib
import socket
import ssl
import sys
import tempfile
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from enum import Enum
from pathlib import Path
from typing import Protocol, TextIO
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from authsvc.deadline import EXCHANGE_SECONDS, Deadline

__all__ = [
    "ConsoleBackend",
    "FileBackend",
    "MailBackend",
    "MailDeliveryError",
    "SmtpBackend",
    "SmtpSecurity",
    "build_message",
    "make_backend",
]

logger = logging.getLogger("authsvc.mail")

_DEFAULT_TIMEOUT = 10.0
# RFC 5322 recommends at most 78 characters per line; longer text goes quoted-printable.
_MAX_7BIT_LINE = 78
_PARAM_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")
# "Must issue a STARTTLS command first" (RFC 3207), "Authentication required" (RFC 4954): a
# mail URL without the TLS or the login the server wants, whatever step it answers.
_SETUP_REQUIRED = 530
_TOO_LARGE = 552  # to MAIL FROM with SIZE=: this message exceeds the server's limit


class MailDeliveryError(Exception):
    """A message could not be handed on.

    ``permanent`` is true when sending the same message again cannot succeed (for example the
    server answered 5xx to its recipient); false when a later attempt may work (connection
    refused or lost, timeout, TLS or authentication failure, 4xx answers). Failures of the
    connection, TLS or login are temporary even when the server said 5xx, because they are
    about the setup, not the message: once an operator fixes it, the queued mail goes out. So
    are a refused sender (always AUTHSVC_MAIL_FROM: every message would meet the refusal; but
    552 to MAIL FROM is a message too large for the server), a sender that is not ASCII for a
    server without SMTPUTF8 (a recipient that is not ASCII is permanent), and a 530 at any
    step (RFC 3207, RFC 4954: the server wants STARTTLS or a login first).
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class MailBackend(Protocol):
    """Something that delivers one message per ``send()`` call."""

    def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` or raise :class:`MailDeliveryError`."""
        ...


def build_message(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    message_id_domain: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """Return a plain-text UTF-8 message with Date, Message-ID, From, To and Subject.

    The Message-ID uses ``message_id_domain``, or else the domain of ``sender`` (never the host
    name of the machine). ``now`` (aware) sets the Date header; it defaults to the current time.
    The body is 7bit when it is ASCII with short lines and quoted-printable otherwise, so it
    passes any SMTP server, 8BITMIME or not. Raises ``ValueError`` for a header value with a line
    break (header injection), a ``to`` that is not exactly one address, or a naive ``now``.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("build_message needs an aware datetime for now")
    if message_id_domain is None:
        message_id_domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"

    message = EmailMessage(policy=policy.default)
    message["Date"] = email.utils.format_datetime(now.astimezone(UTC))
    message["Message-ID"] = email.utils.make_msgid(domain=message_id_domain)
    message["From"] = sender
    message["To"] = to
    # Exactly the one address given, whatever it holds: a comma, or an RFC 2047 encoded word
    # that decodes to one, must never add recipients (the API validates addresses too).
    if [a.addr_spec for a in message["To"].addresses] != [to]:
        raise ValueError("the recipient must be exactly one plain address")
    message["Subject"] = subject
    lines = text.splitlines()
    seven_bit = text.isascii() and all(len(line) <= _MAX_7BIT_LINE for line in lines)
    message.set_content(
        text, subtype="plain", charset="utf-8", cte="7bit" if seven_bit else "quoted-printable"
    )
    return message


def _recipients(message: EmailMessage) -> list[str]:
    values = [str(v) for field in ("To", "Cc", "Bcc") for v in message.get_all(field, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def _wire_policy(message: EmailMessage) -> policy.EmailPolicy[EmailMessage]:
    """RFC 5322 with CRLF; RFC 6532 (UTF-8 headers) when an address is not ASCII, as smtplib
    sends it to an SMTPUTF8 server: an address may not be an RFC 2047 encoded-word, which
    would name a mailbox nobody has."""
    addresses = [*_recipients(message), str(message.get("From", ""))]
    return policy.SMTP if all(a.isascii() for a in addresses) else policy.SMTPUTF8


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


class ConsoleBackend:
    """Development delivery: print each message to the terminal instead of sending it.

    The whole message goes to standard error (``stream``), so a developer running ``make run``
    can open the verification or reset link. The log gets only the recipients, the subject and
    the Message-ID, never the body: bodies carry one-time tokens, and logs are kept, shipped and
    read far more widely than a terminal. Production refuses ``console://`` (settings).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def send(self, message: EmailMessage) -> None:
        logger.info(
            "mail to=%s subject=%s message_id=%s (console backend; body not logged)",
            ", ".join(_recipients(message)) or "-",
            _one_line(message.get("Subject", "")),
            _one_line(message.get("Message-ID", "")),
        )
        stream = self._stream or sys.stderr
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        stream.write(
            f"----- mail (console://) -----\nTo: {_one_line(message.get('To', ''))}\n"
            f"Subject: {_one_line(message.get('Subject', ''))}\n\n{text}\n"
            "----- end of mail -----\n"
        )
        stream.flush()


class FileBackend:
    """Write each message to ``directory`` as an RFC 5322 ``.eml`` file (CRLF line endings).

    Files are named ``<UTC timestamp>-<random>.eml`` (``20250102T030405.123456Z-1a2b...eml``), so
    a directory listing sorts by time. Each file is written under a hidden temporary name and
    renamed into place with ``os.replace``: a reader never sees half a message. The directory is
    created (mode 0700) on first use and files get mode 0600, since bodies carry one-time tokens.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileBackend({str(self.directory)!r})"

    def send(self, message: EmailMessage) -> None:
        try:
            data = message.as_bytes(policy=_wire_policy(message))
        except (ValueError, email.errors.MessageError) as exc:
            raise MailDeliveryError(f"message cannot be serialised: {exc}", permanent=True) from exc
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.directory / f"{stamp}-{secrets.token_hex(8)}.eml"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".eml.tmp")
            try:
                with os.fdopen(fd, "wb") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise MailDeliveryError(
                f"cannot write mail to {self.directory}: {exc}", permanent=False
            ) from exc


class SmtpSecurity(Enum):
    """How an SMTP connection is protected; the values are the URL schemes."""

    PLAIN = "smtp"
    STARTTLS = "smtp+starttls"
    IMPLICIT_TLS = "smtps"

    @property
    def default_port(self) -> int:
        return _DEFAULT_PORTS[self]


_DEFAULT_PORTS = {
    SmtpSecurity.PLAIN: 25,
    SmtpSecurity.STARTTLS: 587,
    SmtpSecurity.IMPLICIT_TLS: 465,
}


class SmtpBackend:
    """Deliver over SMTP, one connection per ``send()``.

    ``port`` defaults to 25, 587 or 465 by ``security``. ``timeout`` bounds every socket
    operation (connect, each reply); ``deadline`` the whole session, from connecting to QUIT,
    so that a server that answers a byte at a time cannot hold a delivery past the outbox's
    claim on it. ``verify=False`` turns off certificate and host name checks; it exists for
    tests against self-signed servers.
    """

    __slots__ = (
        "deadline",
        "host",
        "password",
        "port",
        "security",
        "timeout",
        "username",
        "verify",
    )

    def __init__(
        self,
        *,
        host: str,
        port: int | None = None,
        security: SmtpSecurity = SmtpSecurity.PLAIN,
        username: str | None = None,
        password: str | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        deadline: float = EXCHANGE_SECONDS,
        verify: bool = True,
    ) -> None:
        if not host:
            raise ValueError("SMTP host is empty")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"SMTP port {port} is out of range")
        if (username is None) != (password is None):
            raise ValueError("SMTP user name and password go together")
        if not (math.isfinite(timeout) and 0 < timeout <= deadline):
            raise ValueError(
                f"SMTP timeout must be a positive number of seconds, at most {deadline:g}"
            )
        self.host = host
        self.port = security.default_port if port is None else port
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.deadline = deadline
        self.verify = verify

    def __repr__(self) -> str:
        user = "None" if self.username is None else f"{self.username!r} (password hidden)"
        return (
            f"SmtpBackend(host={self.host!r}, port={self.port}, security={self.security.value}, "
            f"username={user}, timeout={self.timeout}, verify={self.verify})"
        )

    def send(self, message: EmailMessage) -> None:
        if not _recipients(message):
            raise MailDeliveryError("message has no recipients", permanent=True)
        where = f"{self.host}:{self.port}"
        with Deadline(self.deadline) as deadline:
            try:
                refused = self._session(message, where=where, deadline=deadline)
            except MailDeliveryError as exc:
                if deadline.expired and not exc.permanent:
                    raise MailDeliveryError(
                        f"SMTP session with {where} took longer than {self.deadline:g} s",
                        permanent=False,
                    ) from exc
                raise
        if refused:
            # Some recipients took the message, so a retry would send it to them twice.
            raise MailDeliveryError(
                f"SMTP server {where} refused recipients {_describe_refused(refused)}",
                permanent=True,
            )

    def _session(
        self, message: EmailMessage, *, where: str, deadline: Deadline
    ) -> dict[str, tuple[int, bytes]]:
        try:
            smtp = self._open(deadline)
        except (OSError, ValueError) as exc:  # smtplib.SMTPException and ssl errors are OSErrors
            raise MailDeliveryError(
                f"SMTP session with {where} failed: {exc}", permanent=False
            ) from exc
        try:
            return _transmit(smtp, message, where=where)
        finally:
            _quit(smtp)

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _open(self, deadline: Deadline) -> smtplib.SMTP:
        """Connect, greet, start TLS if configured and log in; close again on any failure."""
        smtp: smtplib.SMTP
        if self.security is SmtpSecurity.IMPLICIT_TLS:
            smtp = _WatchedSmtpSsl(
                deadline, self.host, self.port, timeout=self.timeout, context=self._tls_context()
            )
        else:
            smtp = _WatchedSmtp(deadline, self.host, self.port, timeout=self.timeout)
        try:
            # Greet here, so that a refused EHLO/HELO counts as a session failure (temporary)
            # rather than as an answer to this message.
            smtp.ehlo_or_helo_if_needed()
            if self.security is SmtpSecurity.STARTTLS:
                # Raises SMTPNotSupportedError when STARTTLS is not offered: no downgrade.
                smtp.starttls(context=self._tls_context())
                smtp.ehlo_or_helo_if_needed()
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp


class _WatchedSmtp(smtplib.SMTP):
    """``smtplib.SMTP`` whose connection ``deadline`` watches from its first byte."""

    def __init__(self, deadline: Deadline, host: str, port: int, *, timeout: float) -> None:
        self._deadline = deadline
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._deadline.create_connection((host, port), timeout, self.source_address)


class _WatchedSmtpSsl(smtplib.SMTP_SSL):
    """``smtplib.SMTP_SSL`` whose connection ``deadline`` watches, the TLS handshake included."""

    def __init__(
        self, deadline: Deadline, host: str, port: int, *, timeout: float, context: ssl.SSLContext
    ) -> None:
        self._deadline = deadline
        self._server_name = host  # the name the certificate must carry
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = self._deadline.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(raw, server_hostname=self._server_name)


def _transmit(
    smtp: smtplib.SMTP, message: EmailMessage, *, where: str
) -> dict[str, tuple[int, bytes]]:
    """Send one message on an open session; map failures to MailDeliveryError by reply code."""
    try:
        return smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise MailDeliveryError(
            f"SMTP server {where} refused all recipients {_describe_refused(exc.recipients)}",
            permanent=all(_is_permanent(code) for code in codes),
        ) from exc
    except smtplib.SMTPSenderRefused as exc:
        raise MailDeliveryError(
            f"SMTP server {where} answered {exc.smtp_code} {_reply_text(exc.smtp_error)} "
            "to MAIL FROM",
            permanent=exc.smtp_code == _TOO_LARGE,
        ) from exc
    except smtplib.SMTPResponseException as exc:  # data refused, others
        raise MailDeliveryError(
            f"SMTP server {where} answered {exc.smtp_code} {_reply_text(exc.smtp_error)}",
            permanent=_is_permanent(exc.smtp_code),
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:  # non-ASCII address, server lacks SMTPUTF8
        # For good when a recipient needs it; when only the sender (AUTHSVC_MAIL_FROM) does,
        # every message would fail alike: the setup's, to be mended.
        raise MailDeliveryError(
            f"SMTP server {where}: {exc}",
            permanent=not all(addr.isascii() for addr in _recipients(message)),
        ) from exc
    except OSError as exc:  # disconnects and timeouts
        raise MailDeliveryError(
            f"SMTP session with {where} failed: {exc}", permanent=False
        ) from exc
    except (ValueError, email.errors.MessageError) as exc:  # a message that cannot be sent
        raise MailDeliveryError(f"message cannot be sent: {exc}", permanent=True) from exc


def _quit(smtp: smtplib.SMTP) -> None:
    """End the session politely; the outcome of the delivery no longer depends on it."""
    try:
        smtp.quit()
    except OSError:
        pass
    finally:
        smtp.close()


def _is_permanent(code: int) -> bool:
    return 500 <= code < 600 and code != _SETUP_REQUIRED


def _reply_text(reply: bytes | str) -> str:
    return _one_line(reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply)


def _describe_refused(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{addr} ({code} {_reply_text(reply)})" for addr, (code, reply) in refused.items()
    )


def make_backend(url: str) -> MailBackend:
    """Return the backend for a mail URL (see the module docstring for the forms).

    Raises ``ValueError`` with a one-line reason that never repeats the URL or parts of it that
    could be a password. Only parses: no connection is made and no directory is created until
    the first ``send()``.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        # Messages from urlsplit may quote the authority, password included: not repeated.
        raise ValueError("mail URL is malformed (bad host or port)") from None
    scheme = parts.scheme
    if not scheme:
        raise ValueError("mail URL has no scheme; use console://, file://, smtp:// or smtps://")
    if parts.fragment:
        raise ValueError("mail URL must not contain '#'; percent-encode it as %23 in a password")
    if scheme == "console":
        if parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ValueError("console:// takes no host, path or parameters")
        return ConsoleBackend()
    if scheme == "file":
        return _file_backend(parts)
    try:
        security = SmtpSecurity(scheme)
    except ValueError:
        raise ValueError(
            f"unsupported mail URL scheme {scheme!r}; "
            "use console://, file://, smtp://, smtp+starttls:// or smtps://"
        ) from None
    return _smtp_backend(security, parts, port=port)


def _file_backend(parts: SplitResult) -> FileBackend:
    if parts.query:
        raise ValueError("file:// takes no parameters")
    if parts.netloc in ("", "localhost"):
        if not parts.path.startswith("/"):
            raise ValueError("file:// needs a directory, e.g. file:///var/mail or file://var/mail")
        return FileBackend(Path(unquote(parts.path)))
    return FileBackend(Path(unquote(parts.netloc + parts.path)).absolute())


def _smtp_backend(security: SmtpSecurity, parts: SplitResult, *, port: int | None) -> SmtpBackend:
    scheme = security.value
    if not parts.hostname:
        raise ValueError(f"{scheme}:// needs a host")
    if port == 0:
        raise ValueError(f"{scheme}:// has an invalid port")
    if parts.path not in ("", "/"):
        raise ValueError(f"{scheme}:// takes no path; percent-encode '/' in a password as %2F")
    username = password = None
    if parts.username is not None:
        username = unquote(parts.username)
        if not username or parts.password is None:
            raise ValueError(f"{scheme}:// credentials need both a user name and a password")
        password = unquote(parts.password)

    timeout = _DEFAULT_TIMEOUT
    verify = True
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        # A '?' in an unencoded password puts the password's tail into the query: only echo
        # names that look like parameter names.
        name = repr(key) if _PARAM_NAME.fullmatch(key) else "(unprintable)"
        if key in seen:
            raise ValueError(f"{scheme}:// parameter {name} is given twice")
        seen.add(key)
        if key == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = math.nan
            if not (math.isfinite(timeout) and 0 < timeout <= EXCHANGE_SECONDS):
                raise ValueError(
                    f"{scheme}:// timeout must be a positive number of seconds, at most "
                    f"{EXCHANGE_SECONDS:g} (the limit of a whole session)"
                )
        elif key == "verify":
            if security is SmtpSecurity.PLAIN:
                raise ValueError("smtp:// has no TLS to verify; use smtp+starttls:// or smtps://")
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{scheme}:// verify must be true or false")
            verify = value.lower() == "true"
        else:
            raise ValueError(
                f"{scheme}:// has an unknown parameter {name}; known: timeout, verify "
                "(percent-encode '?' in a password as %3F)"
            )
    return SmtpBackend(
        host=parts.hostname,
        port=port,
        security=security,
        username=username,
        password=password,
        timeout=timeout,
        verify=verify,
    )
