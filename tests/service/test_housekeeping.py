"""Housekeeping: what is over is deleted after the retention, nothing live is touched."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from authsvc.crypto import totp as otp
from authsvc.errors import InvalidToken
from authsvc.models import OutboxMessage, RefreshToken, Session, TotpFactor, UserToken
from authsvc.services import housekeeping, outbox, sessions, totp, user_tokens

from .conftest import CLIENT

DAY = timedelta(days=1)
RETENTION = timedelta(days=7)
FAILED_RETENTION = timedelta(days=30)


def ids(db_session, column):
    db_session.expire_all()
    return set(db_session.scalars(select(column)))


def start(db_session, deps, user, at):
    return sessions.start_session(db_session, deps, user=user, amr=("pwd",), client=CLIENT, now=at)


def sweep(runtime, now, retention=RETENTION, failed_retention=FAILED_RETENTION):
    return housekeeping.sweep(
        runtime.sessionmaker,
        now=now,
        retention=retention,
        failed_retention=failed_retention,
        idle_timeout=runtime.deps.settings.session_idle_timeout,
    )


def message(db_session, deps, at, **columns):
    row = outbox.enqueue(db_session, deps.keyring, kind="email", payload={"n": 1}, now=at)
    for name, value in columns.items():
        setattr(row, name, value)
    db_session.flush()
    return row.id


def test_ended_sessions_go_with_all_their_refresh_tokens(runtime, db_session, deps, make_user, now):
    user = make_user()
    idle = deps.settings.session_idle_timeout
    revoked_long_ago = start(db_session, deps, user, now - RETENTION - 2 * DAY)
    revoked_lately = start(db_session, deps, user, now - 3 * DAY)
    start(db_session, deps, user, now - idle - RETENTION - DAY)  # idle for too long
    idle_lately = start(db_session, deps, user, now - idle - RETENTION + DAY)
    live = start(db_session, deps, user, now - 2 * DAY)
    # A refresh leaves the spent token behind: it is how a stolen copy is noticed later.
    rotated = sessions.rotate_refresh_token(
        db_session, deps, refresh_token=live.refresh_token, client=CLIENT, now=now - DAY
    )
    sessions.revoke(
        db_session,
        session_ids=[revoked_long_ago.session_id],
        reason="logout",
        now=now - RETENTION - DAY,
    )
    sessions.revoke(
        db_session, session_ids=[revoked_lately.session_id], reason="logout", now=now - DAY
    )
    db_session.flush()
    assert db_session.scalar(select(func.count()).select_from(RefreshToken)) == 6

    swept = sweep(runtime, now)

    kept = {revoked_lately.session_id, idle_lately.session_id, live.session_id}
    assert ids(db_session, Session.id) == kept
    assert ids(db_session, RefreshToken.session_id) == kept
    assert swept.sessions == 2
    # The live session still refreshes, and still recognises its spent token.
    with pytest.raises(InvalidToken):
        sessions.rotate_refresh_token(
            db_session, deps, refresh_token=live.refresh_token, client=CLIENT, now=now
        )
    assert db_session.get(Session, live.session_id).revoked_reason == "refresh_token_reuse"
    assert rotated.session_id == live.session_id


def test_an_absolute_end_past_the_retention_ends_a_session(
    runtime, db_session, deps, make_user, now
):
    user = make_user()
    ttl = deps.settings.refresh_token_ttl
    old = start(db_session, deps, user, now - ttl - RETENTION - DAY)
    db_session.get(Session, old.session_id).last_used_at = now  # used, but past its end
    recent = start(db_session, deps, user, now - ttl - RETENTION + DAY)
    db_session.get(Session, recent.session_id).last_used_at = now
    db_session.flush()

    sweep(runtime, now)

    assert ids(db_session, Session.id) == {recent.session_id}


def test_single_use_tokens_go_once_expired_for_longer_than_the_retention(
    runtime, db_session, make_user, now
):
    user = make_user()

    def issue(at, purpose="mfa", ttl=timedelta(minutes=5)):
        secret = user_tokens.issue(
            db_session, user_id=user.id, purpose=purpose, ttl=ttl, now=at, replace_previous=False
        )
        return user_tokens.find(db_session, token=secret, purpose=purpose, now=at)

    issue(now - RETENTION - DAY)
    issue(now - RETENTION - DAY, "reset_password")
    used = issue(now - 10 * DAY, "verify_email", ttl=DAY)
    user_tokens.consume(db_session, row=used, now=now - 10 * DAY)
    expired_lately = issue(now - RETENTION + DAY).id
    live = issue(now).id
    used_but_unexpired = issue(now - DAY, "verify_email", ttl=2 * DAY)
    user_tokens.consume(db_session, row=used_but_unexpired, now=now - DAY)
    db_session.flush()

    swept = sweep(runtime, now)

    assert ids(db_session, UserToken.id) == {expired_lately, live, used_but_unexpired.id}
    assert swept.user_tokens == 3


def test_expired_totp_enrollments_go_once_expired_for_longer_than_the_retention(
    runtime, db_session, deps, make_user, now
):
    # An enrollment never confirmed holds an encrypted secret that every key rotation
    # re-encrypts; only a new enrollment of the same account deleted it.
    def enroll(name, at):
        user = make_user(email=f"{name}@example.com")
        return totp.enroll(db_session, deps, user_id=user.id, name=None, client=CLIENT, now=at)

    abandoned = enroll("ada", now - RETENTION - DAY).factor_id
    expired_lately = enroll("grace", now - RETENTION + DAY).factor_id
    pending = enroll("alan", now).factor_id
    confirmed = enroll("edsger", now - 400 * DAY)  # a confirmed factor has no end
    totp.confirm(
        db_session,
        deps,
        user_id=db_session.get(TotpFactor, confirmed.factor_id).user_id,
        factor_id=confirmed.factor_id,
        code=otp.code_at(confirmed.secret, otp.step_at(now - 400 * DAY)),
        client=CLIENT,
        now=now - 400 * DAY,
    )
    db_session.flush()

    swept = sweep(runtime, now)

    assert ids(db_session, TotpFactor.id) == {expired_lately, pending, confirmed.factor_id}
    assert abandoned not in ids(db_session, TotpFactor.id)
    assert (swept.totp_enrollments, swept.total) == (1, 1)


def test_sent_messages_go_and_failed_or_pending_ones_stay(runtime, db_session, deps, now):
    sent_long_ago = message(db_session, deps, now - 9 * DAY, completed_at=now - RETENTION - DAY)
    sent_lately = message(db_session, deps, now - 2 * DAY, completed_at=now - DAY)
    failed = message(db_session, deps, now - 60 * DAY, failed_at=now - 9 * DAY, last_error="x")
    pending = message(db_session, deps, now - 60 * DAY)

    swept = sweep(runtime, now)

    assert ids(db_session, OutboxMessage.id) == {sent_lately, failed, pending}
    assert swept.outbox_messages == 1
    assert sent_long_ago not in ids(db_session, OutboxMessage.id)


def test_failed_messages_go_once_parked_for_longer_than_their_retention(
    runtime, db_session, deps, now
):
    # A parked message's payload holds its recipient's address: kept for the operator to look
    # at, but not for ever.
    parked_long_ago = message(
        db_session, deps, now - 40 * DAY, failed_at=now - FAILED_RETENTION - DAY, last_error="x"
    )
    parked_lately = message(
        db_session, deps, now - 60 * DAY, failed_at=now - FAILED_RETENTION + DAY, last_error="x"
    )
    pending = message(db_session, deps, now - 60 * DAY)

    swept = sweep(runtime, now)

    assert ids(db_session, OutboxMessage.id) == {parked_lately, pending}
    assert parked_long_ago not in ids(db_session, OutboxMessage.id)
    assert (swept.failed_messages, swept.outbox_messages, swept.total) == (1, 0, 1)


def test_a_zero_failed_retention_keeps_failed_messages(runtime, db_session, deps, now):
    parked = message(db_session, deps, now - 400 * DAY, failed_at=now - 399 * DAY)
    message(db_session, deps, now - 400 * DAY, completed_at=now - 399 * DAY)

    swept = sweep(runtime, now, failed_retention=timedelta(0))

    assert ids(db_session, OutboxMessage.id) == {parked}
    assert (swept.failed_messages, swept.outbox_messages) == (0, 1)


def test_the_outbox_worker_deletes_failed_messages_after_the_setting(
    runtime, db_session, deps, now
):
    retention = deps.settings.failed_message_retention
    assert retention == timedelta(days=30)  # the documented default
    old = message(db_session, deps, now - 90 * DAY, failed_at=now - retention - DAY)
    recent = message(db_session, deps, now - 90 * DAY, failed_at=now - retention + DAY)

    swept = runtime.worker.sweep()

    assert ids(db_session, OutboxMessage.id) == {recent}
    assert old not in ids(db_session, OutboxMessage.id)
    assert swept.failed_messages == 1


def test_a_zero_retention_keeps_everything(runtime, db_session, deps, make_user, now):
    user = make_user()
    ended = start(db_session, deps, user, now - 400 * DAY)
    user_tokens.issue(db_session, user_id=user.id, purpose="mfa", ttl=DAY, now=now - 400 * DAY)
    pending = totp.enroll(
        db_session, deps, user_id=user.id, name=None, client=CLIENT, now=now - 400 * DAY
    )
    db_session.flush()

    swept = sweep(runtime, now, retention=timedelta(0), failed_retention=timedelta(0))

    assert swept.total == 0
    assert ids(db_session, Session.id) == {ended.session_id}
    assert len(ids(db_session, UserToken.id)) == 1
    assert ids(db_session, TotpFactor.id) == {pending.factor_id}


def test_a_backlog_is_deleted_in_batches_over_several_sweeps(
    runtime, db_session, make_user, now, monkeypatch
):
    monkeypatch.setattr(housekeeping, "BATCH", 2)
    monkeypatch.setattr(housekeeping, "MAX_BATCHES", 2)
    user = make_user()
    for _ in range(5):
        user_tokens.issue(
            db_session,
            user_id=user.id,
            purpose="mfa",
            ttl=DAY,
            now=now - 30 * DAY,
            replace_previous=False,
        )
    db_session.flush()

    first, second = sweep(runtime, now), sweep(runtime, now)

    assert (first.user_tokens, second.user_tokens) == (4, 1)
    assert ids(db_session, UserToken.id) == set()


def test_the_outbox_worker_sweeps_when_it_starts(runtime, db_session, make_user, now):
    user = make_user()
    user_tokens.issue(db_session, user_id=user.id, purpose="mfa", ttl=DAY, now=now - 30 * DAY)
    db_session.flush()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()

    runtime.worker.run(stop, poll_interval=0.05, sweep_every=3600)

    assert ids(db_session, UserToken.id) == set()
