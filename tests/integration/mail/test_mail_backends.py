"""Mail backends against a real SMTP server (aiosmtpd), a real directory and real logging."""

from __future__ import annotations

import email
import email.utils
import logging
import re
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from authsvc.mail.backends import (
    ConsoleBackend,
    FileBackend,
    MailBackend,
    MailDeliveryError,
    SmtpBackend,
    SmtpSecurity,
    build_message,
    make_backend,
)
from tests.conftest import answered_within
from tests.integration.mail.smtp_server import (
    SmtpServer,
    make_self_signed_certificate,
    server_tls_context,
)
from tests.support_network import Trickler

TOKEN = "tok_9f8e7d6c5b4a"
BODY = f"Confirm your address: https://auth.example.com/verify-email?token={TOKEN}\n"
REFUSED = {
    "nobody@example.com": "550 5.1.1 No such user",
    "busy@example.com": "450 4.2.1 Mailbox busy, try later",
}
USER, PASSWORD = "mailer@example.com", "p@ss:w/rd?#%"
USER_IN_URL, PASSWORD_IN_URL = "mailer%40example.com", "p%40ss%3Aw%2Frd%3F%23%25"


def message(to: str = "alice@example.com", *, subject: str = "Confirm your email") -> EmailMessage:
    return build_message(
        sender="authsvc <no-reply@auth.example.com>", to=to, subject=subject, text=BODY
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return server_tls_context(*certificate)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer(recipient_replies=REFUSED) as server:
        yield server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (backlog) but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def tls_server(scheme: str, context: ssl.SSLContext) -> SmtpServer:
    if scheme == "smtp+starttls":
        return SmtpServer(tls_context=context)
    return SmtpServer(ssl_context=context)


def send(url: str, msg: EmailMessage) -> None:
    backend: MailBackend = make_backend(url)
    backend.send(msg)


# --- SMTP -------------------------------------------------------------------------------------


def test_smtp_delivers_the_message(smtp_server: SmtpServer) -> None:
    msg = message(subject="Bestätige deine E-Mail-Adresse")
    send(f"smtp://127.0.0.1:{smtp_server.port}", msg)

    [received] = smtp_server.wait_for(1)
    [delivery] = smtp_server.deliveries
    assert received["From"] == "authsvc <no-reply@auth.example.com>"
    assert received["To"] == "alice@example.com"
    assert received["Subject"] == "Bestätige deine E-Mail-Adresse"
    assert received["Message-ID"] == msg["Message-ID"]
    assert received.get_content_type() == "text/plain"
    assert received.get_content_charset() == "utf-8"
    assert received.get_content() == BODY
    assert delivery.mail_from == "no-reply@auth.example.com"
    assert delivery.rcpt_tos == ("alice@example.com",)
    assert not delivery.tls
    assert delivery.login is None


def test_an_address_that_is_not_ascii_goes_through_a_server_with_smtputf8() -> None:
    to = "名前@例え.jp"
    with SmtpServer(smtputf8=True) as server:
        send(f"smtp://127.0.0.1:{server.port}", message(to=to))

        [received] = server.wait_for(1)
        [delivery] = server.deliveries
    assert delivery.rcpt_tos == (to,)
    assert received["To"] == to
    assert received.get_content() == BODY


def test_an_address_that_is_not_ascii_fails_for_good_without_smtputf8(
    smtp_server: SmtpServer,
) -> None:
    """A server without SMTPUTF8 cannot take the address: a permanent failure (the outbox
    gives up on it), not a retry forever; the server got nothing."""
    with pytest.raises(MailDeliveryError) as failure:
        send(f"smtp://127.0.0.1:{smtp_server.port}", message(to="名前@例え.jp"))

    assert failure.value.permanent
    assert "SMTPUTF8" in str(failure.value)
    assert smtp_server.deliveries == []


def test_a_sender_that_is_not_ascii_without_smtputf8_is_a_temporary_failure(
    smtp_server: SmtpServer,
) -> None:
    """The sender is AUTHSVC_MAIL_FROM, in every message: a server that cannot take it is a
    setup problem (a relay with SMTPUTF8, or an ASCII sender, mends it), so the mail waits."""
    msg = build_message(
        sender="authsvc <no-reply@bücher.example>", to="alice@example.com", subject="s", text=BODY
    )
    with pytest.raises(MailDeliveryError) as failure:
        send(f"smtp://127.0.0.1:{smtp_server.port}", msg)

    assert not failure.value.permanent
    assert "SMTPUTF8" in str(failure.value)
    assert smtp_server.deliveries == []


def test_starttls_delivers_over_tls(tls_context: ssl.SSLContext) -> None:
    with SmtpServer(tls_context=tls_context, require_starttls=True) as server:
        send(f"smtp+starttls://127.0.0.1:{server.port}?verify=false", message())
        [received] = server.wait_for(1)
    assert received.get_content() == BODY
    assert server.deliveries[0].tls


def test_smtps_delivers_over_implicit_tls(tls_context: ssl.SSLContext) -> None:
    with SmtpServer(ssl_context=tls_context) as server:
        send(f"smtps://127.0.0.1:{server.port}?verify=false", message())
        [received] = server.wait_for(1)
    assert received.get_content() == BODY
    assert server.deliveries[0].tls


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
def test_verification_refuses_an_untrusted_certificate(
    scheme: str, tls_context: ssl.SSLContext
) -> None:
    with tls_server(scheme, tls_context) as server, pytest.raises(MailDeliveryError) as caught:
        send(f"{scheme}://localhost:{server.port}", message())
    assert caught.value.permanent is False
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert server.messages == []


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
def test_verification_accepts_a_trusted_certificate_for_the_right_host(
    scheme: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A certificate for "localhost" only, trusted through SSL_CERT_FILE (as an operator with a
    # private CA would do): verify=true then works for localhost and fails for 127.0.0.1.
    cert, key = make_self_signed_certificate(tmp_path, hostnames=("localhost",))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = server_tls_context(cert, key)
    with tls_server(scheme, context) as server:
        send(f"{scheme}://localhost:{server.port}", message())
        with pytest.raises(MailDeliveryError) as caught:
            send(f"{scheme}://127.0.0.1:{server.port}", message())
    assert len(server.messages) == 1
    assert caught.value.permanent is False
    assert "mismatch" in str(caught.value).lower()


def test_starttls_is_required_never_downgraded(smtp_server: SmtpServer) -> None:
    with pytest.raises(MailDeliveryError) as caught:
        send(f"smtp+starttls://127.0.0.1:{smtp_server.port}?verify=false", message())
    assert caught.value.permanent is False
    assert "STARTTLS" in str(caught.value)
    assert smtp_server.messages == []


def test_starttls_login_with_percent_encoded_credentials(tls_context: ssl.SSLContext) -> None:
    with SmtpServer(
        tls_context=tls_context, require_starttls=True, credentials={USER: PASSWORD}
    ) as server:
        url = f"smtp+starttls://{USER_IN_URL}:{PASSWORD_IN_URL}@127.0.0.1:{server.port}"
        send(f"{url}?verify=false&timeout=5", message())
        server.wait_for(1)
    assert server.deliveries[0].login == USER
    assert server.deliveries[0].tls


def test_smtps_login(tls_context: ssl.SSLContext) -> None:
    with SmtpServer(ssl_context=tls_context, credentials={USER: PASSWORD}) as server:
        url = f"smtps://{USER_IN_URL}:{PASSWORD_IN_URL}@127.0.0.1:{server.port}?verify=false"
        send(url, message())
        server.wait_for(1)
    assert server.deliveries[0].login == USER


def test_wrong_password_is_a_temporary_failure(tls_context: ssl.SSLContext) -> None:
    with SmtpServer(tls_context=tls_context, credentials={USER: PASSWORD}) as server:
        url = f"smtp+starttls://{USER_IN_URL}:wrong@127.0.0.1:{server.port}?verify=false"
        with pytest.raises(MailDeliveryError) as caught:
            send(url, message())
    # A configuration problem: the message must stay queued until an operator fixes it.
    assert caught.value.permanent is False
    assert "535" in str(caught.value)
    assert "wrong" not in str(caught.value)
    assert server.messages == []


def test_login_is_refused_without_tls_by_a_server_that_requires_it(
    tls_context: ssl.SSLContext,
) -> None:
    # smtp:// with credentials skips STARTTLS; this server only offers AUTH after it.
    url = f"smtp://{USER_IN_URL}:{PASSWORD_IN_URL}@127.0.0.1"
    with (
        SmtpServer(tls_context=tls_context, credentials={USER: PASSWORD}) as server,
        pytest.raises(MailDeliveryError) as caught,
    ):
        send(f"{url}:{server.port}", message())
    assert caught.value.permanent is False
    assert server.messages == []


@pytest.mark.parametrize(
    ("recipient", "permanent", "code"),
    [("nobody@example.com", True, "550"), ("busy@example.com", False, "450")],
)
def test_refused_recipient(
    smtp_server: SmtpServer, recipient: str, permanent: bool, code: str
) -> None:
    with pytest.raises(MailDeliveryError) as caught:
        send(smtp_server.url, message(recipient))
    assert caught.value.permanent is permanent
    assert code in str(caught.value)
    assert recipient in str(caught.value)
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("reply", "permanent"),
    [("554 5.6.0 Message rejected as spam", True), ("451 4.3.0 Try again later", False)],
)
def test_refused_message_data(reply: str, permanent: bool) -> None:
    with SmtpServer(data_reply=reply) as server, pytest.raises(MailDeliveryError) as caught:
        send(server.url, message())
    assert caught.value.permanent is permanent
    assert reply in str(caught.value)
    assert server.messages == []


def test_a_server_that_wants_tls_first_is_a_temporary_failure(tls_context: ssl.SSLContext) -> None:
    """smtp:// to a server that requires STARTTLS: it answers MAIL FROM with 530. That is
    about the setup (the mail URL), not the message: fixed, the queued mail goes out."""
    with (
        SmtpServer(tls_context=tls_context, require_starttls=True) as server,
        pytest.raises(MailDeliveryError) as caught,
    ):
        send(f"smtp://127.0.0.1:{server.port}", message())
    assert caught.value.permanent is False
    assert "530" in str(caught.value)
    assert server.messages == []


def test_a_server_that_wants_a_login_first_is_a_temporary_failure(
    tls_context: ssl.SSLContext,
) -> None:
    """A mail URL without the credentials the server requires: 530 5.7.0 to MAIL FROM."""
    with (
        SmtpServer(tls_context=tls_context, credentials={USER: PASSWORD}) as server,
        pytest.raises(MailDeliveryError) as caught,
    ):
        send(f"smtp+starttls://127.0.0.1:{server.port}?verify=false", message())
    assert caught.value.permanent is False
    assert "530" in str(caught.value)
    assert server.messages == []


@pytest.mark.parametrize(
    "reply",
    [
        "553 5.7.1 <no-reply@auth.example.com>: Sender address rejected: not owned by user",
        "550 5.7.1 Client does not have permissions to send as this sender",
    ],
)
def test_a_refused_sender_is_a_temporary_failure(reply: str) -> None:
    """The sender is AUTHSVC_MAIL_FROM, the same for every message: a refusal of it is a
    setup problem that every mail would meet, and the queued mail goes out once it is fixed."""
    with SmtpServer(sender_reply=reply) as server, pytest.raises(MailDeliveryError) as caught:
        send(server.url, message())
    assert caught.value.permanent is False
    assert reply[:3] in str(caught.value)
    assert server.messages == []


def test_a_message_too_large_for_the_server_fails_for_good() -> None:
    """552 to MAIL FROM (with the SIZE= smtplib gives) is about this message."""
    reply = "552 5.3.4 Message size exceeds fixed maximum message size"
    with SmtpServer(sender_reply=reply) as server, pytest.raises(MailDeliveryError) as caught:
        send(server.url, message())
    assert caught.value.permanent is True
    assert "552" in str(caught.value)


def test_partly_refused_recipients_are_permanent_to_avoid_duplicates(
    smtp_server: SmtpServer,
) -> None:
    two = message("alice@example.com")
    del two["To"]  # the service mails one address per message; a backend can take more
    two["To"] = "alice@example.com, busy@example.com"
    with pytest.raises(MailDeliveryError) as caught:
        send(smtp_server.url, two)
    assert caught.value.permanent is True
    assert "busy@example.com" in str(caught.value)
    assert smtp_server.deliveries[0].rcpt_tos == ("alice@example.com",)


def test_connection_refused_is_temporary(closed_port: int) -> None:
    with pytest.raises(MailDeliveryError) as caught:
        send(f"smtp://127.0.0.1:{closed_port}", message())
    assert caught.value.permanent is False
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_silent_server_times_out_as_temporary(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(MailDeliveryError) as caught:
        send(f"smtp://127.0.0.1:{silent_port}?timeout=0.3", message())
    assert caught.value.permanent is False
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "opening",
    [
        b"220-",  # a greeting that never ends
        b"220 tarpit.example ESMTP\r\n",  # then an answer to EHLO that never ends
    ],
)
def test_a_server_that_trickles_its_answers_is_cut_off_at_the_deadline(opening: bytes) -> None:
    # Every read gets a byte well within the timeout: only the session's deadline ends it.
    with Trickler(opening, every=0.1) as peer:
        backend = SmtpBackend(host="127.0.0.1", port=peer.port, timeout=1.0, deadline=1.5)
        started = time.monotonic()
        error = answered_within(10, lambda: failure_of(backend))
        elapsed = time.monotonic() - started
        assert peer.closed_by_client.wait(2)
    assert isinstance(error, MailDeliveryError)
    assert error.permanent is False
    assert "took longer than 1.5 s" in str(error)
    assert 1.5 <= elapsed < 4


def failure_of(backend: MailBackend) -> MailDeliveryError | None:
    try:
        backend.send(message())
    except MailDeliveryError as exc:
        return exc
    return None


def test_message_without_recipients_is_permanent(closed_port: int) -> None:
    msg = message()
    del msg["To"]
    with pytest.raises(MailDeliveryError) as caught:
        send(f"smtp://127.0.0.1:{closed_port}", msg)
    assert caught.value.permanent is True


# --- file:// and console:// -------------------------------------------------------------------

EML_NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{16}\.eml")


def test_file_backend_writes_one_parseable_eml_per_message(tmp_path: Path) -> None:
    directory = tmp_path / "outbox" / "mail"
    backend = make_backend(f"file://{directory}")
    first, second = message(), message("bob@example.com")
    backend.send(first)
    backend.send(second)

    files = sorted(directory.iterdir())
    assert [EML_NAME.fullmatch(f.name) is not None for f in files] == [True, True]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    raw = files[0].read_bytes()
    assert b"\r\n" in raw
    parsed = email.message_from_bytes(raw, _class=EmailMessage, policy=policy.default)
    assert {parsed["Message-ID"], parsed["To"]} in (
        {first["Message-ID"], "alice@example.com"},
        {second["Message-ID"], "bob@example.com"},
    )
    assert parsed["Subject"] == "Confirm your email"
    assert parsed.get_content().replace("\r\n", "\n") == BODY


def test_file_backend_writes_an_address_that_is_not_ascii_as_utf_8(tmp_path: Path) -> None:
    # RFC 6532, as an SMTPUTF8 server gets it: an RFC 2047 encoded-word is no address.
    backend = make_backend(f"file://{tmp_path}")
    backend.send(message(to="名前@例え.jp"))

    [file] = tmp_path.iterdir()
    raw = file.read_bytes()
    assert "To: 名前@例え.jp\r\n".encode() in raw
    assert b"=?utf-8?" not in raw.partition(b"\r\n\r\n")[0]
    parsed = email.message_from_bytes(raw, _class=EmailMessage, policy=policy.default)
    assert parsed["To"] == "名前@例え.jp"
    assert parsed.get_content().replace("\r\n", "\n") == BODY


def test_file_url_with_relative_directory_uses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = make_backend("file://var/mail")
    monkeypatch.chdir("/")  # resolved when parsed, not when sending
    backend.send(message())
    assert len(list((tmp_path / "var" / "mail").glob("*.eml"))) == 1


def test_file_backend_failure_is_temporary(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(MailDeliveryError) as caught:
        FileBackend(not_a_directory).send(message())
    assert caught.value.permanent is False


def test_console_backend_logs_recipient_and_subject_but_never_the_body(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.mail")
    make_backend("console://").send(message("carol@example.com", subject="Reset your password"))
    printed = capsys.readouterr().err  # stderr: stdout belongs to commands like create-key
    assert "To: carol@example.com" in printed
    assert TOKEN in printed  # the developer at the terminal can open the link

    [record] = [r for r in caplog.records if r.name == "authsvc.mail"]
    assert record.levelno == logging.INFO
    assert "carol@example.com" in record.getMessage()
    assert "Reset your password" in record.getMessage()
    assert TOKEN not in caplog.text
    assert "verify-email" not in caplog.text


# --- make_backend --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, SmtpSecurity.PLAIN, None, None)),
        (
            "smtp://mail.example.com:2525/",
            ("mail.example.com", 2525, SmtpSecurity.PLAIN, None, None),
        ),
        (
            "smtp+starttls://m.example.com",
            ("m.example.com", 587, SmtpSecurity.STARTTLS, None, None),
        ),
        ("smtps://m.example.com", ("m.example.com", 465, SmtpSecurity.IMPLICIT_TLS, None, None)),
        ("smtps://[::1]:1465", ("::1", 1465, SmtpSecurity.IMPLICIT_TLS, None, None)),
        (
            f"smtps://{USER_IN_URL}:{PASSWORD_IN_URL}@m.example.com",
            ("m.example.com", 465, SmtpSecurity.IMPLICIT_TLS, USER, PASSWORD),
        ),
        ("smtp://u:@m.example.com", ("m.example.com", 25, SmtpSecurity.PLAIN, "u", "")),
    ],
)
def test_make_backend_parses_smtp_urls(
    url: str, expected: tuple[str, int, SmtpSecurity, str | None, str | None]
) -> None:
    backend = make_backend(url)
    assert isinstance(backend, SmtpBackend)
    assert (
        backend.host,
        backend.port,
        backend.security,
        backend.username,
        backend.password,
    ) == expected
    assert (backend.timeout, backend.verify) == (10.0, True)


def test_make_backend_reads_timeout_and_verify() -> None:
    backend = make_backend("smtp+starttls://m.example.com?timeout=2.5&verify=false")
    assert isinstance(backend, SmtpBackend)
    assert (backend.timeout, backend.verify) == (2.5, False)


@pytest.mark.parametrize(
    ("url", "expected_directory"),
    [
        ("file:///srv/authsvc/mail", Path("/srv/authsvc/mail")),
        ("file://localhost/srv/mail", Path("/srv/mail")),
        ("file:///srv/my%20mail", Path("/srv/my mail")),
    ],
)
def test_make_backend_parses_absolute_file_urls(url: str, expected_directory: Path) -> None:
    backend = make_backend(url)
    assert isinstance(backend, FileBackend)
    assert backend.directory == expected_directory


def test_make_backend_console() -> None:
    assert isinstance(make_backend("console://"), ConsoleBackend)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "no scheme"),
        ("mail.example.com", "no scheme"),
        ("http://mail.example.com", "unsupported mail URL scheme 'http'"),
        ("smtp://", "needs a host"),
        ("smtp://mail.example.com:0", "invalid port"),
        ("smtp://mail.example.com:99999", "malformed"),
        ("smtp://mail.example.com/path", "no path"),
        ("smtp://user@mail.example.com", "user name and a password"),
        ("smtp://mail.example.com?timeout=0", "timeout"),
        ("smtp://mail.example.com?timeout=soon", "timeout"),
        ("smtp://mail.example.com?timeout=1&timeout=2", "twice"),
        ("smtp://mail.example.com?timeout=61", "at most 60"),  # past the session's deadline
        ("smtp://mail.example.com?verify=false", "no TLS"),
        ("smtps://mail.example.com?verify=no", "true or false"),
        ("smtps://mail.example.com?verfy=false", "unknown parameter 'verfy'"),
        ("console://somewhere", "console://"),
        ("file://", "needs a directory"),
        ("file:///srv/mail?mode=0600", "no parameters"),
    ],
)
def test_make_backend_refuses_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        make_backend(url)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "smtps://user:s3cr?et@mail.example.com",  # '?' not encoded: the tail lands in the query
        "smtps://user:s3cr/et@mail.example.com",  # '/' not encoded: the tail lands in the path
        "smtps://user:s3cr#et@mail.example.com",  # '#' not encoded: the tail is a fragment
        "smtps://user:s3cret@mail.example.com:bad",
        "smtps://user:s3cret@mail.example.com?timeout=x",
    ],
)
def test_refusals_never_repeat_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_backend(url)
    assert "s3cr" not in str(caught.value)
    assert "et@" not in str(caught.value)


def test_smtp_backend_repr_hides_the_password() -> None:
    backend = make_backend(f"smtps://{USER_IN_URL}:{PASSWORD_IN_URL}@m.example.com")
    assert PASSWORD not in repr(backend)
    assert USER in repr(backend)


# --- build_message -------------------------------------------------------------------------------


def test_build_message_sets_the_headers() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    msg = build_message(
        sender="authsvc <no-reply@auth.example.com>",
        to="alice@example.com",
        subject="Hello",
        text="Hi\n",
        now=now,
    )
    assert msg["Date"] == "Thu, 02 Jan 2025 03:04:05 +0000"
    assert email.utils.parsedate_to_datetime(msg["Date"]) == now
    assert re.fullmatch(r"<[^@<>\s]+@auth\.example\.com>", msg["Message-ID"])
    assert (msg["From"], msg["To"], msg["Subject"]) == (
        "authsvc <no-reply@auth.example.com>",
        "alice@example.com",
        "Hello",
    )
    assert msg["Content-Type"] == 'text/plain; charset="utf-8"'
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert msg.get_content() == "Hi\n"


def test_build_message_uses_the_given_message_id_domain() -> None:
    msg = build_message(
        sender="a@example.com",
        to="b@example.com",
        subject="s",
        text="t",
        message_id_domain="x.test",
    )
    assert msg["Message-ID"].endswith("@x.test>")
    assert msg["Date"]


@pytest.mark.parametrize("text", ["Grüße\n", "x" * 200 + "\n"])
def test_build_message_keeps_the_body_7bit_safe(text: str) -> None:
    msg = build_message(sender="a@example.com", to="b@example.com", subject="s", text=text)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.as_bytes().isascii()
    assert all(len(line) <= 78 for line in msg.as_bytes().splitlines())
    assert msg.get_content() == text


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("b@example.com\r\nBcc: mallory@example.com", "s"),
        ("b@example.com", "s\r\nBcc: mallory@example.com"),
        ("b@example.com", "s\nBcc: mallory@example.com"),
        ("root,mallory@example.com", "s"),  # an address list
        ("=?utf-8?q?b=40example.com?=,mallory@example.com", "s"),  # one after RFC 2047 decoding
        ("Bob <b@example.com>", "s"),  # a display name
    ],
)
def test_build_message_refuses_header_injection(to: str, subject: str) -> None:
    with pytest.raises(ValueError):
        build_message(sender="a@example.com", to=to, subject=subject, text="t")


def test_build_message_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="aware"):
        build_message(
            sender="a@example.com",
            to="b@example.com",
            subject="s",
            text="t",
            now=datetime(2025, 1, 1),
        )
