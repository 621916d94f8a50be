"""Detectors, alerts and webhooks on a real database and rate-limit storage (memory or Redis)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from authsvc.app import Runtime, build_runtime
from authsvc.db import utcnow
from authsvc.errors import InvalidCredentials
from authsvc.mail.worker import OutboxWorker
from authsvc.models import AuditEvent, OutboxMessage
from authsvc.services import accounts, audit, detection, outbox
from authsvc.services.context import Client
from tests.conftest import answered_within, replace_settings
from tests.integration.mail.smtp_server import make_self_signed_certificate, server_tls_context
from tests.support_network import Trickler

SECRET = "webhook-test-secret-of-32-characters"


class Receiver:
    """A real HTTP server on a free port that records the POSTs it gets."""

    def __init__(self, status: int = 204, tls: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.posts: list[tuple[dict[str, str], bytes]] = []
        received = self.posts
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((dict(self.headers), body))
                self.send_response(outer.status)
                if 300 <= outer.status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def settings(settings, receiver):
    return replace_settings(
        settings,
        detect_emails_per_ip=5,
        detect_emails_per_network=8,
        detect_ips_per_account=3,
        detect_unknown_email_min_attempts=10,
        detect_unknown_email_share=0.5,
        detect_recovery_burst=4,
        alert_webhook_url=receiver.url,
        alert_webhook_secret=SECRET,
        alert_webhook_timeout=2.0,
    )


def alerts(runtime: Runtime) -> list[dict]:
    with runtime.sessionmaker() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.type == "alert.raised").order_by(AuditEvent.id)
        ).all()
        return [json.loads(row.details) | {"_row": row} for row in rows]


def forgot(runtime: Runtime, email: str, ip: str) -> None:
    with runtime.sessionmaker() as session, session.begin():
        accounts.forgot_password(
            session, runtime.deps, email=email, client=Client(ip=ip), now=utcnow()
        )


def failed_login(runtime: Runtime, email: str, ip: str) -> None:
    """Like the HTTP layer: the transaction commits on a domain error (audit rows persist)."""
    with (
        runtime.sessionmaker() as session,
        session.begin(),
        contextlib.suppress(InvalidCredentials),
    ):
        accounts.login_with_password(
            session,
            runtime.deps,
            email=email,
            password="wrong password 1",
            client=Client(ip=ip),
            now=utcnow(),
        )


def test_many_emails_from_one_ip_raise_one_alert(runtime, caplog):
    caplog.set_level(logging.WARNING, logger="authsvc.detection")
    for i in range(5):
        forgot(runtime, f"user{i}@example.com", "203.0.113.9")
    assert alerts(runtime) == []
    for i in range(5, 8):
        forgot(runtime, f"user{i}@example.com", "203.0.113.9")
    found = [a for a in alerts(runtime) if a["scope"] == "ip"]
    assert len(found) == 1  # one per cooldown, however long the attack goes on
    alert = found[0]
    assert (alert["detector"], alert["scope"], alert["subject"]) == (
        "enumeration",
        "ip",
        "203.0.113.9",
    )
    assert alert["_row"].ip == "203.0.113.9"
    assert alert["_row"].outcome == "enumeration"
    assert "@" not in alert["_row"].details
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "authsvc.detection"
    ]
    assert len(warnings) == 1 and "enumeration" in warnings[0].getMessage()
    sample = runtime.metrics.alerts.labels("enumeration")._value.get()
    assert sample == 1


def test_the_same_email_again_and_again_is_not_enumeration(runtime):
    for _ in range(8):  # below the per-IP+email rate limit
        forgot(runtime, "same@example.com", "203.0.113.10")
    assert alerts(runtime) == []


def test_a_network_spreading_over_addresses_is_caught(runtime):
    for i in range(10):
        forgot(runtime, f"n{i}@example.com", f"203.0.113.{100 + i}")
    found = alerts(runtime)
    assert [(a["detector"], a["scope"], a["subject"]) for a in found] == [
        ("enumeration", "network", "203.0.113.0/24")
    ]


def test_a_host_moving_over_its_ipv6_64_is_one_client(runtime, make_user):
    # The per-address detectors count a /64 as one client, as the rate limits do.
    for i in range(6):
        forgot(runtime, f"h{i}@example.com", f"2001:db8:5:1::{i + 1:x}")
    found = alerts(runtime)
    assert [(a["detector"], a["scope"], a["subject"]) for a in found] == [
        ("enumeration", "ip", "2001:db8:5:1::/64")
    ]
    # Privacy addresses of one host are not many attackers of one account.
    make_user(email="roamer@example.com")
    for i in range(6):
        failed_login(runtime, "roamer@example.com", f"2001:db8:6:1::{i + 1:x}")
    assert [a for a in alerts(runtime) if a["detector"] == "brute_force"] == []


def test_an_ipv6_site_spreading_over_its_64s_is_caught(runtime):
    # Each /64 is one client to the per-address limits and detectors; the /48 holds 65,536.
    for i in range(10):
        forgot(runtime, f"v{i}@example.com", f"2001:db8:7:{i:x}::1")
    found = alerts(runtime)
    assert [(a["detector"], a["scope"], a["subject"]) for a in found] == [
        ("enumeration", "network", "2001:db8:7::/48")
    ]


def test_one_account_attacked_from_many_ips(runtime, make_user):
    make_user(email="victim@example.com")
    for i in range(3):
        failed_login(runtime, "victim@example.com", f"198.51.{i}.1")
    assert alerts(runtime) == []
    failed_login(runtime, "victim@example.com", "198.51.9.1")
    found = [a for a in alerts(runtime) if a["detector"] == "brute_force"]
    assert len(found) == 1
    assert found[0]["email_hash"] == audit.email_digest(runtime.deps.keyring, "victim@example.com")


def test_wrong_passwords_and_wrong_second_factors_count_on_the_same_account(runtime, make_user):
    """Some addresses guess the password, others (where it was right) the second factor: one
    account attacked from four addresses, more than the three the settings allow."""
    victim = make_user(email="both@example.com")
    for i in range(2):
        failed_login(runtime, "both@example.com", f"198.51.{i}.2")
    with runtime.sessionmaker() as session, session.begin():
        for i in range(2, 4):
            audit.record(
                session,
                type="login.mfa",
                outcome="failure",
                now=utcnow(),
                user_id=victim.id,
                client=Client(ip=f"198.51.{i}.2"),
            )
    found = [a for a in alerts(runtime) if a["detector"] == "brute_force"]
    assert len(found) == 1
    assert found[0]["user_id"] == victim.id


def test_a_high_share_of_unknown_emails(runtime):
    # Every attempt from its own network: no single source stands out, the share does.
    for i in range(12):
        failed_login(runtime, f"ghost{i}@example.com", f"10.{i}.0.1")
    found = [a for a in alerts(runtime) if a["detector"] == "unknown_emails"]
    assert len(found) == 1
    assert found[0]["scope"] == "global"


def test_successful_logins_dilute_the_share_of_unknown_emails(runtime):
    with runtime.sessionmaker() as session, session.begin():
        for i in range(20):
            audit.record(
                session,
                type="login.success",
                outcome="authenticated",
                now=utcnow(),
                user_id=f"user{i}",
                client=Client(ip=f"10.200.{i}.1"),
            )
    for i in range(12):
        failed_login(runtime, f"ghost{i}@example.com", f"10.{i}.0.1")
    # 12 unknown of 32 attempts: below the share of 0.5.
    assert not [a for a in alerts(runtime) if a["detector"] == "unknown_emails"]
    for i in range(12, 24):
        failed_login(runtime, f"ghost{i}@example.com", f"10.{i}.0.1")
    # 24 of 44: above it.
    assert len([a for a in alerts(runtime) if a["detector"] == "unknown_emails"]) == 1


def test_a_burst_of_recovery_code_use(runtime):
    with runtime.sessionmaker() as session, session.begin():
        for i in range(5):
            audit.record(
                session,
                type="mfa.recovery_code_used",
                outcome="success",
                now=utcnow(),
                user_id=f"user{i}",
                client=Client(ip="192.0.2.1"),
            )
    found = [a for a in alerts(runtime) if a["detector"] == "recovery_burst"]
    assert len(found) == 1


class _Failed(Exception):
    """What fails a request after its events were recorded (a 500, a lost connection, a
    commit refused): its transaction rolls back."""


def _forgot_rolled_back(runtime: Runtime, email: str, ip: str, *, where: str) -> None:
    """A forgot request whose transaction rolls back: ``where`` it ran, in the transaction
    itself, in a savepoint that rolls back, or in one released before the transaction rolls
    back."""

    def forgot_then_fail(session: DbSession, *, fail: bool = True) -> None:
        accounts.forgot_password(
            session, runtime.deps, email=email, client=Client(ip=ip), now=utcnow()
        )
        if fail:
            raise _Failed

    with runtime.sessionmaker() as session:
        if where == "transaction":
            with contextlib.suppress(_Failed), session.begin():
                forgot_then_fail(session)
        elif where == "savepoint":
            with session.begin(), contextlib.suppress(_Failed), session.begin_nested():
                forgot_then_fail(session)
        else:
            with contextlib.suppress(_Failed), session.begin():
                with session.begin_nested():
                    forgot_then_fail(session, fail=False)
                raise _Failed


@pytest.mark.parametrize("where", ["transaction", "savepoint", "released_savepoint"])
def test_an_alert_rolled_back_with_its_transaction_is_raised_by_the_next_detection(runtime, where):
    # The cooldown was claimed in the window storage when the alert was detected: a rollback
    # took the alert's audit event and webhook with it, and the claim silenced the alerts of
    # the next 10 minutes.
    ip = "203.0.113.30"
    for i in range(5):
        forgot(runtime, f"rb{i}@example.com", ip)
    _forgot_rolled_back(runtime, "rb5@example.com", ip, where=where)
    assert alerts(runtime) == []

    forgot(runtime, "rb6@example.com", ip)
    forgot(runtime, "rb7@example.com", ip)  # within the cooldown of the alert just raised

    found = [a for a in alerts(runtime) if a["scope"] == "ip"]
    assert [(a["detector"], a["subject"]) for a in found] == [("enumeration", ip)]
    assert _webhook_message(runtime).failed_at is None  # one webhook queued, for that alert


def _alert_sent(runtime: Runtime, prefix: str, ip: str) -> None:
    """Raise one enumeration alert from ``ip`` and let the worker try its webhook once."""
    for i in range(6):
        forgot(runtime, f"{prefix}{i}@example.com", ip)
    runtime.worker.drain()


def _webhook_message(runtime: Runtime) -> OutboxMessage:
    with runtime.sessionmaker() as session:
        return session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "webhook")).one()


def _a_day_later(runtime: Runtime) -> OutboxWorker:
    return OutboxWorker(
        sessionmaker=runtime.sessionmaker,
        deps=runtime.deps,
        handlers=detection.HANDLERS,
        clock=lambda: utcnow() + timedelta(days=1),
    )


def test_alerts_are_posted_signed_to_the_webhook(runtime, receiver):
    _alert_sent(runtime, "w", "203.0.113.20")
    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    timestamp = headers[detection.TIMESTAMP_HEADER]
    expected = (
        "sha256="
        + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(headers[detection.SIGNATURE_HEADER], expected)
    assert abs(int(timestamp) - time.time()) < 60
    document = json.loads(body)
    assert document["event"] == "alert.raised"
    assert document["detector"] == "enumeration" and document["subject"] == "203.0.113.20"


def test_an_alert_keeps_its_id_in_the_trail_and_in_every_retry(runtime, receiver):
    receiver.status = 503
    _alert_sent(runtime, "i", "203.0.113.21")
    receiver.status = 204
    later = _a_day_later(runtime)
    assert later.drain() == 1
    first, retry = (json.loads(body) for _, body in receiver.posts)
    [raised] = alerts(runtime)
    assert first["id"] == retry["id"] == raised["id"]
    assert len(first["id"]) >= 16


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_dead_receiver_is_retried_later_and_slows_nothing(settings, connection):
    dead = replace_settings(settings, alert_webhook_url=f"http://127.0.0.1:{_closed_port()}/x")
    runtime = build_runtime(dead, bind=connection)
    runtime.deps.limiter.reset()
    started = time.perf_counter()
    for i in range(6):
        forgot(runtime, f"d{i}@example.com", "203.0.113.30")
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0  # the requests only queue the webhook
    runtime.worker.drain()
    message = _webhook_message(runtime)
    assert message.completed_at is None and message.failed_at is None
    assert message.attempts == 1
    assert "unreachable" in (message.last_error or "")
    assert "Connection refused" in (message.last_error or "")
    assert message.available_at > message.created_at
    alert = outbox.payload_of(runtime.deps.keyring, message)["alert"]
    assert alert["detector"] == "enumeration"
    runtime.deps.limiter.reset()


def test_a_receiver_whose_certificate_is_not_trusted_is_named_so(settings, connection, tmp_path):
    """The error kept with the alert (and logged) says why it was not delivered: a receiver
    that cannot be trusted is not one that cannot be reached. Retried: once its CA is
    trusted (SSL_CERT_FILE), the alert goes out."""
    receiver = Receiver(tls=server_tls_context(*make_self_signed_certificate(tmp_path)))
    try:
        url = receiver.url + "?key=hunter2"
        runtime = build_runtime(replace_settings(settings, alert_webhook_url=url), bind=connection)
        runtime.deps.limiter.reset()
        _alert_sent(runtime, "c", "203.0.113.46")
    finally:
        receiver.close()
    message = _webhook_message(runtime)
    assert message.completed_at is None and message.failed_at is None
    assert "CERTIFICATE_VERIFY_FAILED" in (message.last_error or "")
    assert "hunter2" not in (message.last_error or "")
    assert receiver.posts == []
    runtime.deps.limiter.reset()


def test_a_receiver_that_trickles_its_answer_is_cut_off_and_retried(
    settings, connection, monkeypatch
):
    """A receiver that answers a byte at a time stays within the socket timeout with every
    read: only the exchange's deadline ends the attempt, well before the outbox's claim on the
    message runs out and another worker would send it again."""
    monkeypatch.setattr(detection, "EXCHANGE_SECONDS", 1.5)
    with Trickler(b"", byte=b" ", every=0.1) as peer:  # its status line never ends
        slow = replace_settings(
            settings,
            alert_webhook_url=f"http://127.0.0.1:{peer.port}/alerts",
            alert_webhook_timeout=1.0,
        )
        runtime = build_runtime(slow, bind=connection)
        runtime.deps.limiter.reset()
        started = time.monotonic()
        answered_within(10, lambda: _alert_sent(runtime, "s", "203.0.113.45"))
        elapsed = time.monotonic() - started
        assert peer.closed_by_client.wait(2)
    message = _webhook_message(runtime)
    assert message.completed_at is None and message.failed_at is None
    assert message.attempts == 1
    assert message.last_error == "WebhookFailed: the receiver took longer than 1.5 s"
    assert message.available_at > message.created_at
    assert elapsed < 1.5 + 3
    runtime.deps.limiter.reset()


def test_a_webhook_url_urllib_refuses_is_never_quoted_in_the_outbox(settings, connection, receiver):
    """The settings refuse such a URL; should one reach the webhook all the same, the message
    keeps only what went wrong, not the URL (whose path or query is often its secret)."""
    unusable = replace_settings(settings, alert_webhook_url=receiver.url + "/T0/hunter2 x")
    runtime = build_runtime(unusable, bind=connection)
    runtime.deps.limiter.reset()
    _alert_sent(runtime, "u", "203.0.113.44")
    message = _webhook_message(runtime)
    assert message.completed_at is None and message.failed_at is None
    assert "hunter2" not in (message.last_error or "")
    assert message.last_error == "WebhookFailed: the alert could not be sent (InvalidURL)"
    assert receiver.posts == []
    runtime.deps.limiter.reset()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_a_receiver_refusing_the_alert_parks_it(runtime, receiver, status):
    """A 4xx (wrong URL, wrong secret, gone) will answer the same however often it is sent."""
    receiver.status = status
    _alert_sent(runtime, "p", "203.0.113.41")
    message = _webhook_message(runtime)
    assert message.completed_at is None
    assert message.failed_at is not None
    assert message.attempts == 1
    assert message.last_error == f"the receiver refused the alert with HTTP {status}; not retried"
    later = _a_day_later(runtime)
    assert later.drain() == 0
    assert len(receiver.posts) == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_receiver_redirecting_the_alert_parks_it(runtime, receiver, status):
    """Redirects are never followed (the alert goes to the configured URL only), so a
    redirecting receiver answers the same however often the alert is sent."""
    receiver.status = status
    _alert_sent(runtime, "r", "203.0.113.43")
    assert len(receiver.posts) == 1
    message = _webhook_message(runtime)
    assert message.completed_at is None and message.failed_at is not None
    assert f"redirected the alert (HTTP {status})" in (message.last_error or "")


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
def test_a_receiver_busy_or_failing_is_retried(runtime, receiver, status):
    receiver.status = status
    _alert_sent(runtime, "t", "203.0.113.42")
    assert len(receiver.posts) == 1
    message = _webhook_message(runtime)
    assert message.completed_at is None and message.failed_at is None
    assert message.last_error == f"WebhookFailed: the receiver answered HTTP {status}"
    assert message.available_at > message.created_at


def test_without_a_webhook_url_nothing_is_queued(settings, connection):
    runtime = build_runtime(replace_settings(settings, alert_webhook_url=None), bind=connection)
    runtime.deps.limiter.reset()
    for i in range(6):
        forgot(runtime, f"q{i}@example.com", "203.0.113.50")
    assert len(alerts(runtime)) == 1
    with runtime.sessionmaker() as session:
        assert (
            session.scalar(select(OutboxMessage.id).where(OutboxMessage.kind == "webhook")) is None
        )
    runtime.deps.limiter.reset()


def test_a_broken_window_storage_never_fails_a_request(runtime, caplog):
    broken = detection.Windows(f"redis://127.0.0.1:{_closed_port()}/0", window_seconds=60)
    detector = detection.Detector(deps=runtime.deps, metrics=runtime.metrics, windows=broken)
    audit.attach(runtime.sessionmaker, detector.hooks())
    caplog.set_level(logging.ERROR, logger="authsvc.detection")
    for i in range(3):
        forgot(runtime, f"b{i}@example.com", "203.0.113.60")
    assert alerts(runtime) == []
    errors = [r for r in caplog.records if r.name == "authsvc.detection"]
    assert len(errors) == 1  # logged once, not per event
    assert "storage" in errors[0].getMessage()


def test_network_of():
    assert detection.network_of("203.0.113.77") == "203.0.113.0/24"
    assert detection.network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1::/48"
    assert detection.network_of("::ffff:198.51.100.3") == "198.51.100.0/24"
    assert detection.network_of("203.0.113.77:4711") == "203.0.113.0/24"
    assert detection.network_of("[2001:db8:1:2::9]:443") == "2001:db8:1::/48"
    assert detection.network_of("not an ip") is None


def test_alert_windows_slide(runtime):
    windows = detection.Windows("memory://", window_seconds=1)
    assert windows.first_sight("a", "b")
    assert not windows.first_sight("a", "b")
    assert not windows.exceeded("t", 2, "x")
    assert not windows.exceeded("t", 2, "x")
    assert windows.exceeded("t", 2, "x")
    assert windows.claim("k", seconds=1) and not windows.claim("k", seconds=1)
    time.sleep(2.1)
    assert windows.first_sight("a", "b")
    assert not windows.exceeded("t", 2, "x")
    assert windows.claim("k", seconds=1)


FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"


class OwnerLogins:
    """Full logins of owner@example.com, and the new-device mails queued for them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def login(self, user_agent: str, *, email: str = "owner@example.com", now=None) -> None:
        with self.runtime.sessionmaker() as session, session.begin():
            result = accounts.login_with_password(
                session,
                self.runtime.deps,
                email=email,
                password="correct horse 42",
                client=Client(ip="192.0.2.44", user_agent=user_agent),
                now=now or utcnow(),
            )
            assert result.status == "authenticated"

    def mails(self) -> list[dict]:
        with self.runtime.sessionmaker() as session:
            payloads = [
                outbox.payload_of(self.runtime.deps.keyring, m)
                for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "email"))
            ]
        return [p for p in payloads if p["subject"] == "New sign-in to your account"]


def test_new_device_login_mails_the_owner(runtime, make_user, db_session):
    make_user(email="owner@example.com")
    db_session.flush()
    owner = OwnerLogins(runtime)

    owner.login(FIREFOX)
    assert owner.mails() == []  # the first login of an account
    owner.login(FIREFOX.replace("128.0", "129.0"))
    assert owner.mails() == []  # a browser update is not a new device
    owner.login(IPHONE)
    mails = owner.mails()
    assert len(mails) == 1
    assert mails[0]["to"] == "owner@example.com"
    assert "192.0.2.44" in mails[0]["text"] and "iPhone" in mails[0]["text"]


def test_a_new_device_is_news_after_the_trail_lost_the_accounts_earlier_logins(
    runtime, make_user, db_session
):
    """Pruning the trail deletes an old account's logins with the rest: its next login is
    not its first, and a browser the trail has no record of is news to its owner. An
    account created since the oldest event kept has its whole history: its first login is
    still not news."""
    long_ago = utcnow() - timedelta(days=500)
    make_user(email="owner@example.com").created_at = long_ago
    db_session.flush()
    owner = OwnerLogins(runtime)
    owner.login(FIREFOX, now=long_ago)
    with runtime.sessionmaker() as session, session.begin():
        assert audit.prune(session, before=utcnow() - timedelta(days=400), now=utcnow()).pruned
    make_user(email="newcomer@example.com")
    db_session.flush()

    owner.login(FIREFOX, email="newcomer@example.com")
    assert owner.mails() == []
    owner.login(IPHONE)
    mails = owner.mails()
    assert [m["to"] for m in mails] == ["owner@example.com"]


@pytest.mark.parametrize(
    ("user_agent", "described"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36 (If this was not you, secure your account at "
            "https://authsvc-help.example/secure within 24 hours)",
            "Chrome on Windows",
        ),
        ("IMPORTANT: reply with your recovery codes to keep this account", "an unknown program"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Version/17.5 Safari/605.1.15",
            "Safari on macOS",
        ),
    ],
    ids=["link-in-a-browser", "text-alone", "safari"],
)
def test_the_new_device_mail_names_the_browser_in_its_own_words(
    runtime, make_user, db_session, user_agent, described
):
    # The user agent is whatever the client sends: quoted into the one mail the owner of a
    # stuffed account acts on, it put the attacker's link and instructions there.
    make_user(email="owner@example.com")
    db_session.flush()
    for agent in (
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        user_agent,
    ):
        with runtime.sessionmaker() as session, session.begin():
            accounts.login_with_password(
                session,
                runtime.deps,
                email="owner@example.com",
                password="correct horse 42",
                client=Client(ip="192.0.2.44", user_agent=agent),
                now=utcnow(),
            )
    with runtime.sessionmaker() as session:
        [mail] = [
            payload
            for message in session.scalars(select(OutboxMessage))
            if (payload := outbox.payload_of(runtime.deps.keyring, message)).get("subject")
            == "New sign-in to your account"
        ]

    assert f"Browser: {described}\n" in mail["text"]
    for word in ("https://", "authsvc-help", "secure your", "IMPORTANT", "recovery codes"):
        assert word not in mail["text"]


def test_metrics_count_outcomes(runtime, make_user):
    make_user(email="m@example.com")
    failed_login(runtime, "m@example.com", "192.0.2.5")
    failed_login(runtime, "nobody@example.com", "192.0.2.5")
    logins = runtime.metrics.logins
    assert logins.labels("wrong_password")._value.get() == 1
    assert logins.labels("unknown_email")._value.get() == 1
    assert runtime.metrics.audit_events.labels("login.failure")._value.get() == 2
    hashing = runtime.metrics.password_hash_seconds
    verify_count = next(
        s.value
        for m in hashing.collect()
        for s in m.samples
        if s.name.endswith("_count") and s.labels["operation"] == "verify"
    )
    assert verify_count >= 2  # the dummy verification is timed as a verification too


def test_the_window_is_shared_by_detectors_of_every_worker(settings, connection, runtime):
    """Two runtimes (two workers) on the same storage see each other's attempts."""
    if not settings.redis_url:
        pytest.skip("process memory is per worker; sharing needs AUTHSVC_TEST_REDIS_URL")
    other = build_runtime(settings, bind=connection)
    for i in range(3):
        forgot(runtime, f"s{i}@example.com", "203.0.113.70")
    for i in range(3, 6):
        forgot(other, f"s{i}@example.com", "203.0.113.70")
    assert len(alerts(runtime)) == 1
    assert timedelta(0) < settings.detect_window


def test_a_failure_for_an_unknown_email_costs_the_same_storage_work(runtime):
    """Timing: a wrong password and an unknown email make the same number of calls to the
    window storage (Redis round trips), after the first sight of each from an address."""
    detector = detection.Detector(deps=runtime.deps, metrics=runtime.metrics)
    storage = detector.windows._storage
    calls: list[str] = []
    for name in (
        "incr",
        "get",
        "acquire_entry",
        "acquire_sliding_window_entry",
        "get_moving_window",
        "get_sliding_window",
        "clear",
    ):
        if hasattr(storage, name):
            original = getattr(storage, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            setattr(storage, name, counted)

    def cost(outcome: str, email_hash: str, user_id: str | None) -> int:
        event = audit.Observed(
            type="login.failure",
            outcome=outcome,
            now=utcnow(),
            ip="203.0.113.9",
            user_agent=None,
            user_id=user_id,
            admin_key_id=None,
            email_hash=email_hash,
        )
        detector.detect(event)  # first sight of this account from this address
        calls.clear()
        detector.detect(event)
        return len(calls)

    known = cost("wrong_password", "hash-of-a-registered-email", "user-1")
    unknown = cost("unknown_email", "hash-of-an-unknown-email", None)

    assert known == unknown
    assert known >= 3  # the two counts and the account's sight: not vacuously equal
