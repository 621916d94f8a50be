"""The outbox worker delivering over real SMTP (aiosmtpd): sign-up mails arrive, and a mail
that cannot be sent is retried with backoff until the server is back, never lost."""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select

from authsvc.app import create_app
from authsvc.db import utcnow
from authsvc.deadline import EXCHANGE_SECONDS
from authsvc.mail.backends import SmtpBackend, make_backend
from authsvc.mail.worker import CLAIM_LEASE, OutboxWorker, default_handlers
from authsvc.models import OutboxMessage
from tests.conftest import ContractClient, answered_within, runtime
from tests.integration.mail.smtp_server import SmtpServer
from tests.support_network import Trickler

PASSWORD = "correct horse 42"


class SmtpServerOnPort(SmtpServer):
    """An SmtpServer on a port chosen in advance, so it can come up where mail was failing."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._controller.port = port  # read when the controller binds in start()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smtp_app(settings, connection, mail_url: str):
    app = create_app(dataclasses.replace(settings, mail_url=mail_url), bind=connection)
    app.test_client_class = ContractClient
    return app


def test_signup_mail_is_delivered_over_smtp(settings, connection):
    with SmtpServer() as server:
        app = smtp_app(settings, connection, server.url)
        client = app.test_client()
        client.post("/v1/signup", json={"email": "ada@example.com", "password": PASSWORD})

        assert runtime(app).worker.drain() == 2  # the sign-up job, then its mail

        [message] = server.wait_for(1)
        [delivery] = server.deliveries
    assert delivery.rcpt_tos == ("ada@example.com",)
    assert delivery.mail_from == "no-reply@localhost"
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Confirm your email address"
    assert message["Message-ID"] and message["Date"]
    token = re.search(r"/verify-email\?token=(ve_[\w-]+)", message.get_content()).group(1)
    assert client.post("/v1/signup/verify", json={"token": token}).status_code == 200
    runtime(app).deps.limiter.reset()


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now


def email_message(connection) -> OutboxMessage:
    return connection.execute(select(OutboxMessage).where(OutboxMessage.kind == "email")).one()


def test_a_failing_send_is_retried_with_backoff_and_never_lost(settings, connection):
    port = closed_port()
    url = f"smtp://127.0.0.1:{port}?timeout=2"
    app = smtp_app(settings, connection, url)
    app.test_client().post("/v1/password/forgot", json={"email": "nobody@example.com"})
    clock = Clock()
    worker = OutboxWorker(
        sessionmaker=runtime(app).sessionmaker,
        deps=runtime(app).deps,
        handlers=default_handlers(make_backend(url)),
        clock=clock,
    )

    worker.drain()  # the job runs; its mail cannot be sent
    first = email_message(connection)
    assert (first.attempts, first.completed_at, first.failed_at) == (1, None, None)
    assert first.available_at == clock.now + timedelta(seconds=5)
    assert "refused" in first.last_error.lower() or "connect" in first.last_error.lower()
    assert worker.drain() == 0  # not due yet

    clock.now = first.available_at
    worker.drain()
    second = email_message(connection)
    assert second.attempts == 2
    assert second.available_at == clock.now + timedelta(seconds=10)  # the wait grows

    with SmtpServerOnPort(port) as server:
        clock.now = second.available_at
        assert worker.drain() == 1
        [message] = server.wait_for(1)

    delivered = email_message(connection)
    assert delivered.attempts == 3
    assert delivered.completed_at == clock.now
    assert message["To"] == "nobody@example.com"
    assert message["Subject"] == "Password reset request"
    runtime(app).deps.limiter.reset()


@contextmanager
def stalled_server(kind: str) -> Iterator[int]:
    """The port of an SMTP server that stalls: ``silent`` accepts connections (the kernel
    does) and never says a word; ``tarpit`` greets a byte at a time, without end."""
    if kind == "silent":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            yield listener.getsockname()[1]
        return
    with Trickler(b"220-", every=0.1) as peer:
        yield peer.port


@pytest.mark.parametrize(("kind", "error"), [("silent", "timed out"), ("tarpit", "took longer")])
def test_a_stalled_server_fails_the_attempt_in_time_and_the_mail_is_retried(
    settings, connection, kind, error
):
    with stalled_server(kind) as port:
        app = smtp_app(settings, connection, f"smtp://127.0.0.1:{port}?timeout=0.5")
        app.test_client().post("/v1/password/forgot", json={"email": "nobody@example.com"})
        clock = Clock()
        # As the app's, with a deadline for the whole session short enough for a test.
        stalled = SmtpBackend(host="127.0.0.1", port=port, timeout=0.5, deadline=1.5)
        worker = OutboxWorker(
            sessionmaker=runtime(app).sessionmaker,
            deps=runtime(app).deps,
            handlers=default_handlers(stalled),
            clock=clock,
        )
        assert answered_within(5, worker.drain) == 2  # the job, then its mail

    first = email_message(connection)
    assert (first.attempts, first.completed_at, first.failed_at) == (1, None, None)
    assert first.available_at == clock.now + timedelta(seconds=5)  # retried, with backoff
    assert error in first.last_error
    with SmtpServer() as server:
        clock.now = first.available_at
        retry = OutboxWorker(
            sessionmaker=runtime(app).sessionmaker,
            deps=runtime(app).deps,
            handlers=default_handlers(make_backend(server.url)),
            clock=clock,
        )
        assert retry.drain() == 1
        [message] = server.wait_for(1)
    assert email_message(connection).completed_at == clock.now
    assert message["Subject"] == "Password reset request"
    runtime(app).deps.limiter.reset()


def test_every_send_ends_well_within_the_outbox_claim_on_it():
    # A delivery starts with at least half the claim left (it is renewed past half): the
    # longest exchange, connection and TLS included, fits in that twice over.
    assert 2 * timedelta(seconds=EXCHANGE_SECONDS) <= CLAIM_LEASE / 2
    assert SmtpBackend(host="mail.example.com").deadline <= EXCHANGE_SECONDS


def test_a_refused_recipient_is_parked_not_retried(settings, connection):
    with SmtpServer(recipient_replies={"ada@example.com": "550 5.1.1 No such user"}) as server:
        app = smtp_app(settings, connection, server.url)
        app.test_client().post("/v1/password/forgot", json={"email": "ada@example.com"})

        runtime(app).worker.drain()

    message = email_message(connection)
    assert message.failed_at is not None
    assert message.completed_at is None
    assert "550" in message.last_error
    runtime(app).deps.limiter.reset()


@pytest.mark.parametrize(
    "reply", ["550 5.1.1 <ada@example.com>: Recipient address rejected", "450 4.2.1 Try later"]
)
def test_a_refused_recipients_address_is_not_kept_in_clear(settings, connection, reply):
    # Payloads are encrypted; the error kept beside them must not name the address either.
    with SmtpServer(recipient_replies={"ada@example.com": reply}) as server:
        app = smtp_app(settings, connection, server.url)
        app.test_client().post("/v1/password/forgot", json={"email": "ada@example.com"})

        runtime(app).worker.drain()

    message = email_message(connection)
    assert reply[:3] in message.last_error
    assert "ada@example.com" not in message.last_error
    assert "a***@example.com" in message.last_error
    runtime(app).deps.limiter.reset()


@pytest.mark.parametrize("reply", ["451 4.3.0 Try again later"])
def test_a_temporary_refusal_is_retried(settings, connection, reply):
    with SmtpServer(data_reply=reply) as server:
        app = smtp_app(settings, connection, server.url)
        app.test_client().post("/v1/password/forgot", json={"email": "ada@example.com"})

        runtime(app).worker.drain()

    message = email_message(connection)
    assert message.failed_at is None and message.completed_at is None
    assert message.attempts == 1
    assert "451" in message.last_error
    runtime(app).deps.limiter.reset()


@pytest.mark.parametrize(
    ("reply", "level", "outcome"),
    [
        ("550 5.1.1 <ada@example.com>: Recipient address rejected", logging.ERROR, "permanently"),
        ("451 4.3.0 Try again later", logging.WARNING, "retrying"),
    ],
)
def test_the_log_says_why_a_mail_failed(settings, connection, caplog, reply, level, outcome):
    """The log line of a failed or parked mail gives the server's answer (masked as the error
    kept with it), not only that it failed: the operator learns why without reading the
    outbox table."""
    with SmtpServer(recipient_replies={"ada@example.com": reply}) as server:
        app = smtp_app(settings, connection, server.url)
        app.test_client().post("/v1/password/forgot", json={"email": "ada@example.com"})
        with caplog.at_level(logging.WARNING, logger="authsvc.worker"):
            runtime(app).worker.drain()

    [line] = [r for r in caplog.records if r.name == "authsvc.worker" and r.levelno == level]
    assert outcome in line.getMessage()
    assert reply[:9] in line.getMessage()
    assert "ada@example.com" not in line.getMessage()
    assert email_message(connection).last_error in line.getMessage()
    runtime(app).deps.limiter.reset()
