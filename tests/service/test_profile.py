"""services.profile: the profile behind a live session, read in one statement."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from authsvc.db import new_id
from authsvc.models import RecoveryCode, TotpFactor, WebauthnCredential
from authsvc.services import profile, sessions


@pytest.fixture
def user(make_user):
    return make_user(email="ada@example.com")


@pytest.fixture
def login(db_session, deps, user, caller, now):
    return sessions.start_session(db_session, deps, user=user, amr=("pwd",), client=caller, now=now)


def read(db_session, user, login, now, **overrides):
    return profile.profile(
        db_session,
        **{"session_id": login.session_id, "user_id": user.id, "now": now, **overrides},
    )


def add_totp(db_session, user, now, *, confirmed=True):
    db_session.add(
        TotpFactor(
            user_id=user.id,
            name="phone",
            secret_ciphertext=b"x",
            created_at=now,
            confirmed_at=now if confirmed else None,
        )
    )


def add_passkey(db_session, user, now):
    db_session.add(
        WebauthnCredential(
            user_id=user.id,
            credential_id=new_id().encode(),
            public_key=b"cose",
            aaguid="00000000-0000-0000-0000-000000000000",
            attestation_format="none",
            user_handle=user.id.encode(),
            user_verified=True,
            backup_eligible=False,
            backed_up=False,
            name="key",
            created_at=now,
        )
    )


def add_codes(db_session, user, now, *, unused, used=0):
    for i in range(unused + used):
        db_session.add(
            RecoveryCode(
                user_id=user.id,
                code_hash=new_id(),
                created_at=now,
                used_at=now if i >= unused else None,
            )
        )


def test_a_plain_account(db_session, user, login, now):
    found = read(db_session, user, login, now)

    assert found is not None
    assert (found.id, found.email, found.email_verified) == (user.id, "ada@example.com", True)
    assert found.created_at == user.created_at
    assert found.password_set_at == user.password_set_at
    assert found.mfa_methods == ()
    assert found.password_change_required is False
    assert (found.recovery_codes_remaining, found.recovery_codes_low) == (0, False)


def test_factors_and_recovery_codes(db_session, user, login, now):
    add_totp(db_session, user, now, confirmed=False)  # pending: not a method yet
    add_codes(db_session, user, now, unused=3, used=7)
    pending = read(db_session, user, login, now)
    assert pending.mfa_methods == ()
    # Codes without a second factor are not "running low": they are not in use.
    assert (pending.recovery_codes_remaining, pending.recovery_codes_low) == (3, False)

    add_totp(db_session, user, now)
    assert read(db_session, user, login, now).mfa_methods == ("totp", "recovery_code")
    assert read(db_session, user, login, now).recovery_codes_low is True

    add_passkey(db_session, user, now)
    add_codes(db_session, user, now, unused=1)
    both = read(db_session, user, login, now)
    assert both.mfa_methods == ("totp", "webauthn", "recovery_code")
    assert (both.recovery_codes_remaining, both.recovery_codes_low) == (4, False)


def test_a_passkey_without_codes_left(db_session, user, login, now):
    add_passkey(db_session, user, now)
    add_codes(db_session, user, now, unused=0, used=10)

    found = read(db_session, user, login, now)

    assert found.mfa_methods == ("webauthn",)
    assert (found.recovery_codes_remaining, found.recovery_codes_low) == (0, True)


def test_nothing_unless_the_session_is_alive_and_the_user_enabled(
    db_session, deps, user, login, make_user, now
):
    bob = make_user(email="bob@example.com")
    end = now + deps.settings.refresh_token_ttl

    assert read(db_session, user, login, now, user_id=bob.id) is None
    assert read(db_session, user, login, now, session_id="no-such-session") is None
    assert read(db_session, user, login, end) is None
    assert read(db_session, user, login, end - timedelta(seconds=1)) is not None

    user.disabled_at = now
    assert read(db_session, user, login, now) is None
    user.disabled_at = None
    sessions.revoke(db_session, session_ids=[login.session_id], reason="test", now=now)
    assert read(db_session, user, login, now) is None


def test_one_statement(db_session, user, login, now):
    add_totp(db_session, user, now)
    db_session.flush()
    statements = []
    bind = db_session.connection()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(bind, "before_cursor_execute", listener)
    try:
        read(db_session, user, login, now)
    finally:
        event.remove(bind, "before_cursor_execute", listener)

    assert len(statements) == 1
