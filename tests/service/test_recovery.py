"""Recovery codes on a real database: issue, storage, single use, low-code notice, replacement."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from authsvc.crypto import recovery as codes
from authsvc.crypto import totp as otp
from authsvc.errors import FactorLimitReached, InvalidMfa, InvalidRequest, MfaNotEnabled
from authsvc.models import AuditEvent, OutboxMessage, RecoveryCode, TotpFactor, User
from authsvc.services import (
    factors,
    mfa_management,
    outbox,
    profile,
    recovery,
    sessions,
    totp,
)
from tests.conftest import replace_settings


def first_factor(session, deps, user, caller, now) -> tuple[str, ...]:
    pending = totp.enroll(session, deps, user_id=user.id, name=None, client=caller, now=now)
    result = totp.confirm(
        session,
        deps,
        user_id=user.id,
        factor_id=pending.factor_id,
        code=otp.code_at(pending.secret, otp.step_at(now)),
        client=caller,
        now=now,
    )
    assert result.recovery_codes is not None
    return result.recovery_codes


def subjects(session, deps, to: str) -> list[str]:
    found = []
    for message in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)):
        if message.kind == "email":
            payload = outbox.payload_of(deps.keyring, message)
            if payload["to"] == to:
                found.append(payload["subject"])
    return found


def use(session, deps, user, code, caller, now):
    return recovery.use_code(session, deps, user_id=user.id, code=code, client=caller, now=now)


def test_codes_are_stored_only_as_keyed_hashes(
    db_session, deps, make_user, caller, now, connection
):
    user = make_user()
    issued = first_factor(db_session, deps, user, caller, now)
    db_session.flush()
    rows = (
        connection.execute(text("SELECT * FROM recovery_codes WHERE user_id = :u"), {"u": user.id})
        .mappings()
        .all()
    )
    assert len(rows) == 10
    dump = " ".join(str(value) for row in rows for value in row.values())
    for code in issued:
        plain = codes.normalize(code)
        assert plain is not None
        assert code not in dump and plain not in dump and plain.upper() not in dump
        assert hashlib.sha256(plain.encode()).hexdigest() not in dump  # keyed, not a bare hash
    assert all(len(row["code_hash"]) == 64 for row in rows)
    assert recovery.remaining(db_session, user_id=user.id) == 10


def test_a_code_works_once_in_any_typed_form(db_session, deps, make_user, caller, now):
    user = make_user(email="ada@example.com")
    issued = first_factor(db_session, deps, user, caller, now)
    typed = issued[0].upper().replace("-", " ")
    assert use(db_session, deps, user, typed, caller, now) == "otp"
    with pytest.raises(InvalidMfa):
        use(db_session, deps, user, issued[0], caller, now)
    assert use(db_session, deps, user, issued[1], caller, now) == "otp"
    assert recovery.remaining(db_session, user_id=user.id) == 8
    used = db_session.scalars(
        select(AuditEvent).where(AuditEvent.type == "mfa.recovery_code_used")
    ).all()
    assert [e.user_id for e in used] == [user.id, user.id]
    assert subjects(db_session, deps, "ada@example.com").count("A recovery code was used") == 2


def test_codes_of_another_account_and_malformed_codes_are_refused(
    db_session, deps, make_user, caller, now
):
    ada = make_user(email="ada@example.com")
    eve = make_user(email="eve@example.com")
    ada_codes = first_factor(db_session, deps, ada, caller, now)
    first_factor(db_session, deps, eve, caller, now)
    with pytest.raises(InvalidMfa):
        use(db_session, deps, eve, ada_codes[0], caller, now)
    with pytest.raises(InvalidMfa):
        use(db_session, deps, ada, codes.display("0" * 24), caller, now)
    for malformed in ("", "abcd-efgh", "not a recovery code", "abcd-efgh-jkmn-pqrs-tvwx-yzu1"):
        with pytest.raises(InvalidRequest) as caught:
            use(db_session, deps, ada, malformed, caller, now)
        assert caught.value.extra["field"] == "recovery_code"
    assert recovery.remaining(db_session, user_id=ada.id) == 10


def me(db_session, deps, user, caller, now) -> profile.Profile:
    """What GET /v1/me shows the user, from a fresh session."""
    login = sessions.start_session(
        db_session, deps, user=user, amr=("pwd",), client=caller, now=now
    )
    shown = profile.profile(db_session, session_id=login.session_id, user_id=user.id, now=now)
    assert shown is not None
    return shown


def test_running_low_is_shown_and_mailed_once(db_session, deps, make_user, caller, now):
    user = make_user(email="ada@example.com")
    issued = first_factor(db_session, deps, user, caller, now)
    for code in issued[:6]:
        use(db_session, deps, user, code, caller, now)
    profile = me(db_session, deps, user, caller, now)
    assert (profile.recovery_codes_remaining, profile.recovery_codes_low) == (4, False)
    assert "You are running out of recovery codes" not in subjects(db_session, deps, user.email)
    for code in issued[6:]:
        use(db_session, deps, user, code, caller, now)
    mails = subjects(db_session, deps, user.email)
    assert mails.count("You are running out of recovery codes") == 1
    assert mails.count("A recovery code was used") == 10
    profile = me(db_session, deps, user, caller, now)
    assert (profile.recovery_codes_remaining, profile.recovery_codes_low) == (0, True)
    assert factors.methods_for(db_session, user_id=user.id) == ("totp",)


def test_regenerate_replaces_every_code_and_rearms_the_notice(
    db_session, deps, make_user, caller, now
):
    user = make_user(email="ada@example.com")
    old = first_factor(db_session, deps, user, caller, now)
    for code in old[:7]:
        use(db_session, deps, user, code, caller, now)
    fresh = recovery.regenerate(db_session, deps, user_id=user.id, client=caller, now=now)
    assert len(fresh) == 10 and not set(fresh) & set(old)
    with pytest.raises(InvalidMfa):
        use(db_session, deps, user, old[8], caller, now)
    assert recovery.remaining(db_session, user_id=user.id) == 10
    assert me(db_session, deps, user, caller, now).recovery_codes_low is False
    assert "New recovery codes were generated" in subjects(db_session, deps, user.email)
    deps.limiter.reset()  # the next minute: codes are limited to 10 a minute per account
    for code in fresh[:7]:
        use(db_session, deps, user, code, caller, now)
    assert (
        subjects(db_session, deps, user.email).count("You are running out of recovery codes") == 2
    )


def test_issue_initial_only_when_there_is_no_set(db_session, deps, make_user, caller, now):
    user = make_user()
    first = recovery.issue_initial(db_session, deps, user_id=user.id, client=caller, now=now)
    assert first is not None and len(first) == 10
    assert recovery.issue_initial(db_session, deps, user_id=user.id, client=caller, now=now) is None
    assert recovery.delete_all(db_session, user_id=user.id) == 10
    assert recovery.remaining(db_session, user_id=user.id) == 0


def test_profile_of_a_user_without_factors_is_not_low(db_session, deps, make_user, caller, now):
    user = make_user()
    profile = me(db_session, deps, user, caller, now)
    assert (profile.recovery_codes_remaining, profile.recovery_codes_low) == (0, False)


def test_concurrent_uses_of_one_code_admit_exactly_one(committed, deps, caller, now):
    with committed.begin() as session:
        user = User(email="race@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        user_id = user.id
        issued = first_factor(session, deps, user, caller, now - timedelta(minutes=5))
    barrier = threading.Barrier(5)
    outcomes: list[str] = []

    def attempt():
        barrier.wait()
        try:
            with committed.begin() as session:
                outcomes.append(
                    recovery.use_code(
                        session, deps, user_id=user_id, code=issued[0], client=caller, now=now
                    )
                )
        except InvalidMfa:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["otp"] + ["refused"] * 4
    with committed() as session:
        used = session.scalars(select(RecoveryCode).where(RecoveryCode.used_at.is_not(None)))
        assert len(used.all()) == 1


def test_two_codes_used_at_once_when_running_low_both_sign_in_and_mail_the_notice_once(
    committed, deps, caller, now, monkeypatch, database_url
):
    # Each request holds the row of the code it spent when it claims the low-codes notice.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the two uses cannot overlap")
    with committed.begin() as session:
        user = User(email="low@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        user_id = user.id
        issued = first_factor(session, deps, user, caller, now - timedelta(minutes=5))
    for code in issued[:6]:  # 4 left: the next use leaves 3, which is low
        with committed.begin() as session:
            recovery.use_code(session, deps, user_id=user_id, code=code, client=caller, now=now)
    both_spent = threading.Barrier(2, timeout=5)
    claim = recovery._claim_low_notice

    def claim_when_both_have_spent(session, **kwargs):
        both_spent.wait()
        return claim(session, **kwargs)

    monkeypatch.setattr(recovery, "_claim_low_notice", claim_when_both_have_spent)
    outcomes: list[str] = []

    def use(code: str) -> None:
        try:
            with committed.begin() as session:
                outcomes.append(
                    recovery.use_code(
                        session, deps, user_id=user_id, code=code, client=caller, now=now
                    )
                )
        except Exception as exc:  # a deadlock is what this test is about
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=use, args=(code,)) for code in issued[6:8]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert outcomes == ["otp", "otp"]
    with committed() as session:
        assert (
            subjects(session, deps, "low@example.com").count(
                "You are running out of recovery codes"
            )
            == 1
        )


def test_two_regenerations_at_once_leave_one_set(committed, deps, caller, now):
    # PostgreSQL, READ COMMITTED: without a lock each delete misses the other's new rows.
    with committed.begin() as session:
        user = User(
            email="twice@example.com", email_verified_at=now, created_at=now, updated_at=now
        )
        session.add(user)
        session.flush()
        user_id = user.id
        first_factor(session, deps, user, caller, now - timedelta(minutes=5))
    first = committed()
    first.begin()
    recovery.regenerate(first, deps, user_id=user_id, client=caller, now=now)  # uncommitted
    second_done = threading.Event()

    def second() -> None:
        with committed.begin() as session:
            recovery.regenerate(session, deps, user_id=user_id, client=caller, now=now)
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    waited = not second_done.wait(0.5)  # it waits for the first, whose lock it needs
    first.commit()
    first.close()
    thread.join(timeout=60)

    assert waited and second_done.is_set()
    with committed() as session:
        live = session.scalar(
            select(func.count()).where(
                RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
            )
        )
    assert live == codes.COUNT


def test_two_confirmations_at_once_respect_the_factor_limit(committed, deps, caller, now):
    limited = dataclasses.replace(
        deps, settings=replace_settings(deps.settings, totp_max_factors=1)
    )
    with committed.begin() as session:
        user = User(email="two@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        user_id = user.id
        pending = [
            totp.enroll(session, limited, user_id=user_id, name=n, client=caller, now=now)
            for n in ("Phone", "Tablet")
        ]

    def confirm(session, enrollment) -> None:
        code = otp.code_at(enrollment.secret, otp.step_at(now))
        totp.confirm(
            session,
            limited,
            user_id=user_id,
            factor_id=enrollment.factor_id,
            code=code,
            client=caller,
            now=now,
        )

    first = committed()
    first.begin()
    confirm(first, pending[0])  # not committed yet
    refused: list[Exception] = []

    def second() -> None:
        try:
            with committed.begin() as session:
                confirm(session, pending[1])
        except FactorLimitReached as exc:
            refused.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=0.5)  # it waits for the first, whose lock it needs
    first.commit()
    first.close()
    thread.join(timeout=60)

    assert len(refused) == 1
    with committed() as session:
        assert totp.count_active(session, user_id=user_id) == 1


def test_regenerating_while_the_last_factor_goes_leaves_no_codes(committed, deps, caller, now):
    # PostgreSQL, READ COMMITTED: checked before the lock, the regeneration saw the factor the
    # removal was deleting, then wrote a fresh set for an account without a factor.
    with committed.begin() as session:
        user = User(email="last@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        user_id = user.id
        first_factor(session, deps, user, caller, now - timedelta(minutes=5))
        factor_id = session.scalars(select(TotpFactor.id)).one()
    removal = committed()
    removal.begin()
    mfa_management.remove(
        removal, deps, user_id=user_id, factor_id=factor_id, auth_time=now, client=caller, now=now
    )  # uncommitted
    outcome: list[str] = []

    def regenerate() -> None:
        try:
            with committed.begin() as session:
                mfa_management.regenerate_recovery_codes(
                    session, deps, user_id=user_id, auth_time=now, client=caller, now=now
                )
            outcome.append("regenerated")
        except MfaNotEnabled:
            outcome.append("refused")

    thread = threading.Thread(target=regenerate)
    thread.start()
    thread.join(timeout=0.5)
    removal.commit()
    removal.close()
    thread.join(timeout=60)

    assert outcome == ["refused"]
    with committed() as session:
        live = session.scalar(
            select(func.count()).where(
                RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
            )
        )
    assert live == 0
