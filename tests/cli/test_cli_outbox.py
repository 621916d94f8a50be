"""`authsvc outbox failed` and `authsvc outbox retry`: the messages the worker parked for good,
seen without their payload and put back in the queue, where a worker sends them."""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import make_url, select, text

from authsvc.app import Runtime, build_runtime
from authsvc.cli import main
from authsvc.crypto.keyring import generate_key_spec
from authsvc.db import make_engine, utcnow
from authsvc.models import AuditEvent, OutboxMessage
from authsvc.schema import upgrade
from authsvc.services import outbox
from authsvc.settings import Settings
from tests.conftest import start_command
from tests.integration.mail.smtp_server import SmtpServer

RECIPIENT = "ada.lovelace@example.com"
SUBJECT = "Your sign-in code is 731942"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The AUTHSVC_* settings of a migrated database of the test's own: a SQLite file, or a new
    schema of the PostgreSQL test database (when the tests run on one), dropped afterwards."""
    base = {
        "AUTHSVC_VAR_DIR": str(tmp_path / "var"),
        "AUTHSVC_ENCRYPTION_KEYS": generate_key_spec("cli1"),
        "AUTHSVC_MAIL_URL": "console://",
    }
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        upgrade(url)
        yield {**base, "AUTHSVC_DATABASE_URL": url}
        return
    database_url = request.getfixturevalue("database_url")
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("PostgreSQL: set AUTHSVC_TEST_DATABASE_URL")
    schema = f"outbox_{secrets.token_hex(4)}"
    admin = make_engine(database_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        yield {**base, "AUTHSVC_DATABASE_URL": rendered}
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def run(env, *args: str):
    unset = {k: None for k in os.environ if k.startswith("AUTHSVC_")}
    return CliRunner().invoke(main, list(args), env={**unset, **env}, catch_exceptions=False)


def runtime_of(env) -> Runtime:
    return build_runtime(Settings.from_env(env))


def park(runtime: Runtime, *, kind: str = "email", error: str, attempts: int = 1) -> int:
    """An outbox message as the worker leaves one that failed for good; ``error`` stored as
    given (an older release, or a hand, may have stored it unmasked)."""
    now = utcnow()
    with runtime.sessionmaker.begin() as session:
        message = outbox.enqueue(
            session,
            runtime.deps.keyring,
            kind=kind,
            payload={"to": RECIPIENT, "subject": SUBJECT, "text": "https://x/reset?token=rt_s3"},
            now=now - timedelta(hours=1),
        )
        message.attempts = attempts
        message.failed_at = now - timedelta(minutes=attempts)
        message.last_error = error
        session.flush()
        return message.id


def messages(runtime: Runtime) -> dict[int, OutboxMessage]:
    with runtime.sessionmaker() as session:
        return {m.id: m for m in session.scalars(select(OutboxMessage))}


def test_failed_lists_parked_messages_without_payload_and_with_addresses_masked(env):
    runtime = runtime_of(env)
    refused = park(
        runtime,
        error=f"SMTPRecipientsRefused: 550 5.1.1 <{RECIPIENT}>:\n no such user",
        attempts=3,
    )
    hook = park(runtime, kind="webhook", error="WebhookFailed: 410 Gone", attempts=1)
    with runtime.sessionmaker.begin() as session:  # sent, and still queued: not parked
        outbox.enqueue_email(
            session, runtime.deps.keyring, to=RECIPIENT, subject=SUBJECT, text="t", now=utcnow()
        )
    runtime.dispose()

    result = run(env, "outbox", "failed")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # Oldest parked first: the one that tried three times was parked three minutes ago.
    assert [line.split("\t")[:2] for line in lines] == [
        [str(refused), "email"],
        [str(hook), "webhook"],
    ]
    first = lines[0].split("\t")
    assert first[3] == "3"
    assert first[4] == "SMTPRecipientsRefused: 550 5.1.1 <a***@example.com>: no such user"
    assert lines[1].split("\t")[4] == "WebhookFailed: 410 Gone"
    assert RECIPIENT not in result.output and "lovelace" not in result.output
    assert SUBJECT not in result.output and "rt_s3" not in result.output

    limited = run(env, "outbox", "failed", "--limit", "1")
    assert len(limited.stdout.splitlines()) == 1
    assert "1 more" in limited.stderr


def test_failed_says_so_when_none_is_parked(env):
    result = run(env, "outbox", "failed")

    assert result.exit_code == 0
    assert result.stdout == "" and "no parked messages" in result.stderr


def test_retry_puts_the_named_messages_back_due_now_with_attempts_reset_and_audited(env):
    runtime = runtime_of(env)
    first = park(runtime, error="MailDeliveryError: 554 rejected", attempts=4)
    second = park(runtime, error="MailDeliveryError: 554 rejected", attempts=2)
    before = utcnow()

    result = run(env, "outbox", "retry", str(first))

    assert result.exit_code == 0, result.output
    assert "1 parked message put back" in result.stderr
    rows = messages(runtime)
    assert rows[first].failed_at is None and rows[first].attempts == 0
    assert rows[first].last_error is None
    assert before <= rows[first].available_at <= utcnow()
    assert rows[second].failed_at is not None and rows[second].attempts == 2
    with runtime.sessionmaker() as session:
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.type == "outbox.retried"))
    assert event.outcome == "success"
    assert json.loads(event.details) == {"count": 1, "ids": [first]}
    runtime.dispose()
    assert [line.split("\t")[0] for line in run(env, "outbox", "failed").stdout.splitlines()] == [
        str(second)
    ]


def test_retry_all_puts_every_parked_message_back(env):
    runtime = runtime_of(env)
    ids = [park(runtime, error="boom", attempts=n) for n in (1, 2, 3)]

    result = run(env, "outbox", "retry", "--all")

    assert result.exit_code == 0, result.output
    assert "3 parked messages put back" in result.stderr
    rows = messages(runtime)
    assert all(rows[i].failed_at is None and rows[i].attempts == 0 for i in ids)
    assert "no parked messages" in run(env, "outbox", "retry", "--all").stderr
    runtime.dispose()


def test_retry_of_an_id_that_is_not_parked_puts_none_back(env):
    runtime = runtime_of(env)
    parked = park(runtime, error="boom", attempts=2)
    with runtime.sessionmaker.begin() as session:
        queued = outbox.enqueue_email(
            session, runtime.deps.keyring, to=RECIPIENT, subject=SUBJECT, text="t", now=utcnow()
        )
        session.flush()
        queued_id = queued.id

    result = run(env, "outbox", "retry", str(parked), str(queued_id), "99999")

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert f"{queued_id}, 99999" in result.stderr and "none was put back" in result.stderr
    rows = messages(runtime)
    assert rows[parked].failed_at is not None and rows[parked].attempts == 2
    with runtime.sessionmaker() as session:
        assert not session.scalars(
            select(AuditEvent).where(AuditEvent.type == "outbox.retried")
        ).all()
    runtime.dispose()


@pytest.mark.parametrize("args", [(), ("1", "--all")])
def test_retry_needs_ids_or_all(env, args):
    result = run(env, "outbox", "retry", *args)

    assert result.exit_code == 2
    assert "--all" in result.stderr


@pytest.mark.parametrize("message_id", ["9223372036854775808", "99999999999999999999999"])
def test_retry_of_an_id_past_any_message_id_is_a_usage_error(env, message_id):
    # Past a 64-bit id it reached the database, which answered "bigint out of range (is it
    # reachable, and migrated ...?)" on PostgreSQL and an OverflowError on SQLite.
    result = run(env, "outbox", "retry", message_id)

    assert result.exit_code == 2
    assert "database" not in result.stderr and "Overflow" not in result.stderr
    assert "9223372036854775807" in result.stderr


def test_failed_takes_a_limit_past_any_number_of_messages(env):
    runtime = runtime_of(env)
    parked = park(runtime, error="boom")
    runtime.dispose()

    result = run(env, "outbox", "failed", "--limit", "99999999999999999999999")

    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(parked)]


def test_a_retried_message_is_delivered_by_the_worker(env):
    runtime = runtime_of(env)
    parked = park(runtime, error="SMTPDataError: 554 5.6.0 rejected", attempts=1)
    assert run(env, "outbox", "retry", str(parked)).exit_code == 0

    with SmtpServer() as server:
        worker = start_command({**env, "AUTHSVC_MAIL_URL": server.url}, "worker")
        try:
            [message] = server.wait_for(1, timeout=60)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=30)

    assert worker.returncode == 0, stderr
    assert message["To"] == RECIPIENT and message["Subject"] == SUBJECT
    [delivery] = server.deliveries
    assert delivery.rcpt_tos == (RECIPIENT,)
    row = messages(runtime)[parked]
    assert row.completed_at is not None and row.failed_at is None and row.attempts == 1
    runtime.dispose()
