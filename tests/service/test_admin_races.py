"""Admin actions on one account at once (PostgreSQL, READ COMMITTED; SQLite serialises
writers anyway): each happens, and is audited, once."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from authsvc.crypto import totp as otp
from authsvc.db import make_autocommit_engine
from authsvc.errors import NotFound
from authsvc.models import AdminKey, Session, User
from authsvc.services import admin, breach, factors, login, mfa_management, totp
from authsvc.services.breach import Creator
from tests.service.conftest import issue_mfa_token
from tests.service.test_password_races import _attempt
from tests.service.test_session_races import PARALLEL, _at_once, _events

OPS = admin.AdminIdentity(key_id="k1", name="ops")


def _overlap(first, second, started: threading.Event, release: threading.Event) -> None:
    """Run ``first`` until it sets ``started`` (it then waits for ``release``), start
    ``second`` and give it a moment to reach the lock ``first`` holds, then let both finish."""
    one = threading.Thread(target=first)
    one.start()
    assert started.wait(10)
    two = threading.Thread(target=second)
    two.start()
    time.sleep(0.5)
    release.set()
    one.join(30)
    two.join(30)


def _account(committed, now) -> str:
    with committed.begin() as session:
        user = User(email="ada@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        return user.id


def test_disabling_an_account_from_several_requests_at_once_is_one_event(committed, caller, now):
    user_id = _account(committed, now)

    outcomes = _at_once(
        committed,
        lambda session: admin.disable_user(
            session, admin=OPS, user_id=user_id, client=caller, now=now
        ),
    )

    assert outcomes == ["ok"] * PARALLEL  # disabling a disabled account changes nothing
    assert _events(committed, "admin.user_disabled") == 1


def test_deleting_an_account_from_several_requests_at_once_deletes_it_once(committed, caller, now):
    user_id = _account(committed, now)

    outcomes = _at_once(
        committed,
        lambda session: admin.delete_user(
            session, admin=OPS, user_id=user_id, client=caller, now=now
        ),
    )

    assert sorted(outcomes) == ["not_found"] * (PARALLEL - 1) + ["ok"]
    assert _events(committed, "admin.user_deleted") == 1
    with committed() as session:
        assert session.scalar(select(User.id)) is None


def test_an_account_deleted_during_its_mfa_step_is_deleted_after_it(
    committed, deps, caller, now, monkeypatch
):
    # The step locks the account before its token (the order every writer keeps); with the
    # token first, the deletion (account, then its tokens by cascade) deadlocked against it.
    user_id = _account(committed, now)
    with committed.begin() as session:
        token = issue_mfa_token(session, user_id=user_id, now=now)
    checking, release = threading.Event(), threading.Event()

    def slow_check(*_args, **_kwargs) -> str:  # a factor check that takes a moment
        checking.set()
        release.wait(10)
        return "otp"

    monkeypatch.setattr(factors, "verify", slow_check)
    outcomes: dict[str, str] = {}

    def step() -> None:
        outcomes["mfa"] = _attempt(
            committed,
            lambda session: login.complete_mfa(
                session,
                deps,
                mfa_token=token,
                proof=factors.FactorProof(totp_code="123456"),
                client=caller,
                now=now,
            ),
        )

    def deletion() -> None:
        outcomes["delete"] = _attempt(
            committed,
            lambda session: admin.delete_user(
                session, admin=OPS, user_id=user_id, client=caller, now=now
            ),
        )

    _overlap(step, deletion, checking, release)  # the deletion waits for the step's lock

    assert outcomes == {"mfa": "ok", "delete": "ok"}
    with committed() as session:
        assert session.scalar(select(User.id)) is None


def test_a_force_reset_of_an_account_deleted_meanwhile_is_not_found(
    committed, deps, caller, now, monkeypatch
):
    # The account is read, then deleted by another request before the one-account campaign
    # looks for it: that campaign matched no account and answered 422 no_targets, a status
    # openapi.yaml does not give the route.
    user_id = _account(committed, now)
    with committed() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers: the deletion waits for the reset")
    lock_creation = breach._lock_creation

    def deleted_meanwhile(session) -> None:
        with committed.begin() as other:
            other.execute(delete(User).where(User.id == user_id))
        lock_creation(session)

    monkeypatch.setattr(breach, "_lock_creation", deleted_meanwhile)

    with committed() as session, pytest.raises(NotFound):
        breach.force_reset(
            session, deps, user_id=user_id, mode="invalidate", revoke_sessions=True,
            reset_mfa=False, notify=False, reason="phished", creator=Creator(name="ops",
            key_id=None), client=caller, now=now,
        )  # fmt: skip


def test_an_account_disabled_during_its_enrollment_step_keeps_no_session(
    committed, deps, caller, now, monkeypatch
):
    # The step that confirms a TOTP factor with an enrollment token finishes a login. It locks
    # the account as it reads the token, like the other login steps: read without the lock, a
    # disable that committed meanwhile went unseen, and the step opened a session (and signed
    # an access token that apps verifying offline accept) for the disabled account.
    user_id = _account(committed, now)
    with committed.begin() as session:
        pending = totp.enroll(session, deps, user_id=user_id, name=None, client=caller, now=now)
        token = issue_mfa_token(session, user_id=user_id, now=now, purpose="mfa_enrollment")
    checking, release = threading.Event(), threading.Event()
    check = totp.check_pending_code

    def slow_check(*args, **kwargs):  # a code check that takes a moment
        checking.set()
        release.wait(10)
        return check(*args, **kwargs)

    monkeypatch.setattr(totp, "check_pending_code", slow_check)
    outcomes: dict[str, str] = {}

    def step() -> None:
        outcomes["enroll"] = _attempt(
            committed,
            lambda session: mfa_management.confirm_totp_with_enrollment(
                session,
                deps,
                enrollment_token=token,
                factor_id=pending.factor_id,
                code=otp.code_at(pending.secret, otp.step_at(now)),
                client=caller,
                now=now,
            ),
        )

    def disabling() -> None:
        outcomes["disable"] = _attempt(
            committed,
            lambda session: admin.disable_user(
                session, admin=OPS, user_id=user_id, client=caller, now=now
            ),
        )

    _overlap(step, disabling, checking, release)  # the disable waits for the step's lock

    assert outcomes == {"enroll": "ok", "disable": "ok"}
    with committed() as session:
        assert session.scalar(select(User.disabled_at).where(User.id == user_id)) is not None
        logins = session.scalars(select(Session).where(Session.user_id == user_id)).all()
    assert len(logins) == 1
    assert logins[0].revoked_reason == "disabled"  # the disable came after it, and ended it


def test_a_long_request_does_not_hold_its_admin_key_for_other_requests(
    committed, scratch_database_url, deps, caller, now
):
    """The key's last use is stamped outside the request's transaction where there is an
    autocommit pool (PostgreSQL): a request still running (a campaign from a large list) does
    not lock the key's row, so the same key's status polls and its revocation go on."""
    engine = make_autocommit_engine(scratch_database_url)
    if engine is None:
        pytest.skip("SQLite serialises writers: a request's write holds the whole database")
    with committed.begin() as session:
        key_id, secret = admin.create_key(session, name="ops", now=now)
    try:
        with committed() as long_request, long_request.begin():
            admin.authenticate_key(
                long_request, deps, secret=secret, now=now, client=caller, stamp=engine
            )
            with committed() as poll, poll.begin():
                # NOWAIT: a lock held by the long request fails at once instead of waiting.
                row = poll.execute(
                    select(AdminKey.last_used_at)
                    .where(AdminKey.id == key_id)
                    .with_for_update(nowait=True)
                ).one()
                assert row.last_used_at == now
            admin.authenticate_key(
                long_request,
                deps,
                secret=secret,
                now=now - timedelta(seconds=1),
                client=caller,
                stamp=engine,
            )
        with committed() as session:
            # A request that started earlier does not move the last use back.
            assert session.get(AdminKey, key_id).last_used_at == now
    finally:
        engine.dispose()
