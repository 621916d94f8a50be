"""services.accounts on a real Session: sign-up, verification, login, reset, change."""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from authsvc.crypto.passwords import Argon2Params, PasswordHasher
from authsvc.errors import InvalidCredentials, InvalidRequest, InvalidToken, RateLimited
from authsvc.models import AuditEvent, OutboxMessage, Session, User, UserToken
from authsvc.ratelimit import RateLimiter
from authsvc.services import accounts, outbox, password_change, sessions
from authsvc.services.factors import FactorProof
from tests.conftest import Mailbox

PASSWORD = "correct horse 42"
NEW_PASSWORD = "brand new horse 43"


@pytest.fixture
def mailbox(settings) -> Mailbox:
    return Mailbox(Path(settings.mail_url.removeprefix("file://")))


def drain(db_session, worker) -> None:
    db_session.flush()
    worker.drain()
    db_session.expire_all()


def rows(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def audit_outcomes(db_session, type_: str) -> list[str]:
    return list(
        db_session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.type == type_).order_by(AuditEvent.id)
        )
    )


# --- normalize_email ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  ADA@Example.COM\t", "ada@example.com"),
        ("\uff41\uff44\uff41@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "ada@example.com"),
        ("zoë@example.com", "zoë@example.com"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
    ],
)
def test_normalize_email(raw, expected):
    assert accounts.normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "a b@example.com",
        "ada@@example.com",
        "ada@exa mple.com",
        "ada\n@example.com",
        "ada\u200b@example.com",
        "ada\ud800@example.com",
        "ada\x7f@example.com",
        "a" * 65 + "@example.com",
        "ada@" + "e" * 247 + ".com",
    ],
)
def test_normalize_email_refuses_non_addresses(raw):
    with pytest.raises(InvalidRequest) as excinfo:
        accounts.normalize_email(raw)

    assert excinfo.value.extra == {"field": "email"}


# --- sign-up -------------------------------------------------------------------------------


def test_signup_does_the_same_work_for_new_and_registered_emails(
    db_session, deps, caller, now, make_user
):
    make_user(email="ada@example.com")
    for email in ("ada@example.com", "bob@example.com"):
        before = rows(db_session, OutboxMessage), rows(db_session, AuditEvent)

        accounts.signup(db_session, deps, email=email, password=PASSWORD, client=caller, now=now)

        db_session.flush()
        after = rows(db_session, OutboxMessage), rows(db_session, AuditEvent)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert rows(db_session, User) == 1  # the account is created in the background


def test_signup_payload_is_encrypted_and_carries_a_hash_only(db_session, deps, caller, now):
    accounts.signup(
        db_session, deps, email="ada@example.com", password=PASSWORD, client=caller, now=now
    )
    db_session.flush()

    message = db_session.scalars(select(OutboxMessage)).one()

    assert message.kind == "signup_request"
    assert b"ada@example.com" not in message.payload_ciphertext
    payload = outbox.payload_of(deps.keyring, message)
    assert payload["email"] == "ada@example.com"
    assert payload["password_hash"].startswith("$argon2id$")
    assert deps.hasher.verify(payload["password_hash"], PASSWORD).ok


def test_signup_request_creates_an_unverified_user_and_a_link(
    db_session, deps, worker, caller, now, mailbox
):
    accounts.signup(
        db_session, deps, email="ada@example.com", password=PASSWORD, client=caller, now=now
    )

    drain(db_session, worker)

    user = db_session.scalars(select(User)).one()
    assert user.email_verified_at is None and user.password_hash is None
    token = db_session.scalars(select(UserToken)).one()
    assert token.purpose == "verify_email"
    assert token.expires_at - token.created_at == deps.settings.verification_token_ttl
    assert mailbox.token("ada@example.com", "verify-email").startswith("ve_")
    assert audit_outcomes(db_session, "signup.created") == ["success"]


def test_signup_for_a_registered_email_sends_a_notice_and_changes_nothing(
    db_session, deps, worker, caller, now, mailbox, make_user
):
    user = make_user(email="ada@example.com")
    stored = user.password_hash

    accounts.signup(
        db_session, deps, email="ada@example.com", password=NEW_PASSWORD, client=caller, now=now
    )
    drain(db_session, worker)

    assert mailbox.last("ada@example.com")["Subject"] == "Sign-up attempt for your account"
    assert db_session.get(User, user.id).password_hash == stored
    assert db_session.scalars(select(UserToken.purpose)).all() == ["reset_password"]


def test_verification_links_expire(db_session, deps, worker, caller, now, mailbox):
    accounts.signup(
        db_session, deps, email="ada@example.com", password=PASSWORD, client=caller, now=now
    )
    drain(db_session, worker)
    token = mailbox.token("ada@example.com", "verify-email")
    issued = db_session.scalars(select(UserToken.created_at)).one()
    ttl = deps.settings.verification_token_ttl

    with pytest.raises(InvalidToken):
        accounts.verify_email(db_session, deps, token=token, client=caller, now=issued + ttl)
    accounts.verify_email(
        db_session, deps, token=token, client=caller, now=issued + ttl - timedelta(seconds=1)
    )

    assert db_session.scalars(select(User)).one().email_verified_at is not None


def test_a_stale_signup_link_never_replaces_a_password(
    db_session, deps, worker, caller, now, mailbox
):
    """An attacker's earlier sign-up link, opened after the owner reset the password, verifies
    at most: the owner's password stays."""
    accounts.signup(
        db_session,
        deps,
        email="ada@example.com",
        password="attacker horse 1",
        client=caller,
        now=now,
    )
    drain(db_session, worker)
    attacker_link = mailbox.token("ada@example.com", "verify-email")
    accounts.forgot_password(db_session, deps, email="ada@example.com", client=caller, now=now)
    drain(db_session, worker)
    accounts.reset_password(
        db_session,
        deps,
        token=mailbox.token("ada@example.com", "reset-password"),
        new_password=NEW_PASSWORD,
        proof=FactorProof(),
        client=caller,
        now=now,
    )

    accounts.verify_email(db_session, deps, token=attacker_link, client=caller, now=now)

    accounts.authenticate_password(
        db_session, deps, email="ada@example.com", password=NEW_PASSWORD, client=caller, now=now
    )
    with pytest.raises(InvalidCredentials):
        accounts.authenticate_password(
            db_session,
            deps,
            email="ada@example.com",
            password="attacker horse 1",
            client=caller,
            now=now,
        )


# --- login ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "email", "password", "reason"),
    [
        ("registered", "ada@example.com", "wrong horse 42", "wrong_password"),
        ("registered", "nobody@example.com", PASSWORD, "unknown_email"),
        ("unverified", "ada@example.com", PASSWORD, "unverified"),
        ("disabled", "ada@example.com", PASSWORD, "disabled"),
        ("invalidated", "ada@example.com", PASSWORD, "password_invalidated"),
        ("no_password", "ada@example.com", PASSWORD, "wrong_password"),
    ],
)
def test_every_login_failure_is_the_same_error(
    db_session, deps, caller, now, make_user, state, email, password, reason
):
    make_user(
        email="ada@example.com",
        verified=state != "unverified",
        disabled=state == "disabled",
        password=None if state == "no_password" else PASSWORD,
        password_invalidated_at=now if state == "invalidated" else None,
    )

    with pytest.raises(InvalidCredentials) as excinfo:
        accounts.login_with_password(
            db_session, deps, email=email, password=password, client=caller, now=now
        )

    assert type(excinfo.value) is InvalidCredentials
    assert excinfo.value.detail == "Invalid credentials"
    assert excinfo.value.extra == {}
    assert audit_outcomes(db_session, "login.failure") == [reason]


def test_login_success_starts_a_session(db_session, deps, caller, now, make_user):
    user = make_user()

    result = accounts.login_with_password(
        db_session, deps, email="ADA@example.com", password=PASSWORD, client=caller, now=now
    )

    assert result.status == "authenticated"
    assert result.user_id == user.id
    assert result.tokens is not None
    session = db_session.get(Session, result.tokens.session_id)
    assert session.user_id == user.id
    assert session.amr == "pwd"
    assert session.ip == caller.ip


def test_login_rehashes_with_new_parameters(db_session, deps, caller, now, make_user):
    user = make_user()
    old = user.password_hash
    stronger = dataclasses.replace(
        deps,
        hasher=PasswordHasher(
            Argon2Params(time_cost=2, memory_cost_kib=2048, parallelism=2),
            max_concurrent=1,
            acquire_timeout=1.0,
        ),
    )

    accounts.login_with_password(
        db_session, stronger, email="ada@example.com", password=PASSWORD, client=caller, now=now
    )

    assert user.password_hash != old
    assert "$m=2048,t=2,p=2$" in user.password_hash
    result = stronger.hasher.verify(user.password_hash, PASSWORD)
    assert result.ok and not result.needs_rehash


def test_a_blocklisted_password_must_be_changed(db_session, deps, caller, now, make_user):
    user = make_user(password="qwerty123456")

    result = accounts.login_with_password(
        db_session, deps, email="ada@example.com", password="qwerty123456", client=caller, now=now
    )

    assert result.status == "password_change_required"
    assert result.tokens is None
    assert user.password_change_required is True
    assert user.password_change_required_at == now
    assert result.change_token is not None
    with pytest.raises(InvalidToken):  # change tokens expire
        password_change.change_password(
            db_session,
            deps,
            user_id=None,
            current_password=None,
            change_token=result.change_token,
            new_password=NEW_PASSWORD,
            client=caller,
            now=now + deps.settings.change_token_ttl,
        )
    password_change.change_password(
        db_session,
        deps,
        user_id=None,
        current_password=None,
        change_token=result.change_token,
        new_password=NEW_PASSWORD,
        client=caller,
        now=now,
    )
    assert user.password_change_required is False
    assert user.password_change_required_at is None


def limited(deps, **limits):
    policies = {
        "ip": "1000/minute",
        "email": "1000/minute",
        "ip_email": "1000/minute",
        "mailbox": "1000/minute",
        "account_failures": "1000/day",
        "mfa_account": "10/minute",
        "mfa_failures": "1000/day",
        **limits,
    }
    limiter = RateLimiter(deps.settings.rate_limit_storage_url, policies)
    limiter.reset()
    return dataclasses.replace(deps, limiter=limiter)


def test_failed_checks_per_account_are_capped(db_session, deps, caller, now, make_user):
    user = make_user()
    capped = limited(deps, account_failures="3/day")
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            accounts.authenticate_password(
                db_session,
                capped,
                email="ada@example.com",
                password="wrong horse 42",
                client=caller,
                now=now,
            )

    with pytest.raises(RateLimited) as excinfo:
        accounts.authenticate_password(
            db_session, capped, email="ada@example.com", password=PASSWORD, client=caller, now=now
        )

    assert excinfo.value.policy == "account_failures"
    assert excinfo.value.retry_after > 86000
    assert audit_outcomes(db_session, "login.failure") == ["wrong_password"] * 3
    assert audit_outcomes(db_session, "ratelimit.hit") == ["account_failures"]
    assert rows(db_session, Session) == 0
    assert user.disabled_at is None  # throttled, not locked
    capped.limiter.reset()


@pytest.mark.parametrize("policy", ["ip", "email", "ip_email", "mailbox"])
def test_throttling_is_audited_and_raises(db_session, deps, caller, now, policy):
    throttled = limited(deps, **{policy: "1/minute"})
    accounts.forgot_password(db_session, throttled, email="ada@example.com", client=caller, now=now)

    with pytest.raises(RateLimited) as excinfo:
        accounts.forgot_password(
            db_session, throttled, email="ada@example.com", client=caller, now=now
        )

    assert excinfo.value.policy == policy
    assert audit_outcomes(db_session, "ratelimit.hit") == [policy]
    assert rows(db_session, OutboxMessage) == 1
    throttled.limiter.reset()


# --- forgotten and changed passwords ----------------------------------------------------------


def test_reset_links_expire(db_session, deps, worker, caller, now, mailbox, make_user):
    make_user()
    accounts.forgot_password(db_session, deps, email="ada@example.com", client=caller, now=now)
    drain(db_session, worker)
    token = mailbox.token("ada@example.com", "reset-password")
    issued = db_session.scalars(select(UserToken.created_at)).one()

    with pytest.raises(InvalidToken):
        accounts.reset_password(
            db_session,
            deps,
            token=token,
            new_password=NEW_PASSWORD,
            proof=FactorProof(),
            client=caller,
            now=issued + deps.settings.reset_token_ttl,
        )


def test_reset_revokes_sessions_and_tokens(
    db_session, deps, worker, caller, now, mailbox, make_user
):
    user = make_user()
    pair = sessions.start_session(db_session, deps, user=user, amr=("pwd",), client=caller, now=now)
    accounts.forgot_password(db_session, deps, email="ada@example.com", client=caller, now=now)
    drain(db_session, worker)

    accounts.reset_password(
        db_session,
        deps,
        token=mailbox.token("ada@example.com", "reset-password"),
        new_password=NEW_PASSWORD,
        proof=FactorProof(),
        client=caller,
        now=now,
    )

    login = db_session.get(Session, pair.session_id)
    assert login.revoked_at == now and login.revoked_reason == "password.reset"
    assert deps.hasher.verify(user.password_hash, NEW_PASSWORD).ok
    assert user.password_set_at == now
    with pytest.raises(InvalidToken):
        sessions.rotate_refresh_token(
            db_session, deps, refresh_token=pair.refresh_token, client=caller, now=now
        )


def test_change_password_checks_the_current_one(db_session, deps, caller, now, make_user):
    user = make_user()
    pair = sessions.start_session(db_session, deps, user=user, amr=("pwd",), client=caller, now=now)
    with pytest.raises(InvalidCredentials):
        password_change.change_password(
            db_session,
            deps,
            user_id=user.id,
            current_password="wrong horse 42",
            change_token=None,
            new_password=NEW_PASSWORD,
            client=caller,
            now=now,
        )

    password_change.change_password(
        db_session,
        deps,
        user_id=user.id,
        current_password=PASSWORD,
        change_token=None,
        new_password=NEW_PASSWORD,
        client=caller,
        now=now,
    )

    assert deps.hasher.verify(user.password_hash, NEW_PASSWORD).ok
    assert db_session.get(Session, pair.session_id).revoked_reason == "password.change"
    assert audit_outcomes(db_session, "password.change") == ["wrong_password", "success"]


@pytest.mark.parametrize("user_id", [None, "no-such-user"])
def test_change_password_without_a_user(db_session, deps, caller, now, user_id):
    with pytest.raises(InvalidCredentials):
        password_change.change_password(
            db_session,
            deps,
            user_id=user_id,
            current_password=PASSWORD,
            change_token=None,
            new_password=NEW_PASSWORD,
            client=caller,
            now=now,
        )


def _committed_user(committed, deps, now, **columns) -> str:
    with committed.begin() as session:
        user = User(
            email="race@example.com",
            password_hash=deps.hasher.hash(PASSWORD),
            password_set_at=now - timedelta(days=1),
            email_verified_at=now,
            created_at=now,
            updated_at=now,
            **columns,
        )
        session.add(user)
        session.flush()
        return user.id


def test_a_login_racing_a_reset_opens_no_session_that_survives_it(committed, deps, caller, now):
    # PostgreSQL, READ COMMITTED: the reset's revocation must see the session a login checked
    # against the old password opens, so one of the two waits for the other.
    user_id = _committed_user(committed, deps, now)
    login_session = committed()
    login_session.begin()
    result = accounts.login_with_password(
        login_session, deps, email="race@example.com", password=PASSWORD, client=caller, now=now
    )  # checked, its session inserted, not yet committed
    reset_done = threading.Event()

    def reset() -> None:
        with committed.begin() as session:
            user = session.get(User, user_id)
            accounts.set_password(
                session, deps, user=user, password="brand new horse 43", client=caller,
                now=now, event="password.reset",
            )  # fmt: skip
        reset_done.set()

    thread = threading.Thread(target=reset)
    thread.start()
    waited = not reset_done.wait(0.5)
    login_session.commit()
    login_session.close()
    thread.join(timeout=60)

    assert result.status == "authenticated" and waited and reset_done.is_set()
    with committed() as session:
        revoked = session.scalars(select(Session.revoked_at).where(Session.user_id == user_id))
        assert all(at is not None for at in revoked.all())


def test_a_new_password_clears_a_flag_set_after_the_account_was_read(
    committed, deps, caller, now, database_url
):
    # A breach batch flags the account between the reset's read and its write.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the batch cannot commit in between")
    user_id = _committed_user(committed, deps, now)
    with committed.begin() as session:
        user = session.get(User, user_id)
        with committed.begin() as batch:
            batch.execute(update(User).values(password_invalidated_at=now))
        accounts.set_password(
            session, deps, user=user, password="brand new horse 43", client=caller,
            now=now, event="password.reset",
        )  # fmt: skip

    with committed() as session:
        assert session.get(User, user_id).password_invalidated_at is None
        assert accounts.authenticate_password(
            session, deps, email="race@example.com", password="brand new horse 43",
            client=caller, now=now,
        ).id == user_id  # fmt: skip


def test_parallel_wrong_passwords_cannot_overshoot_the_daily_cap(committed, deps, caller, now):
    # Each check is counted before it runs: checked first and counted after a failure, all
    # of these would pass the check before any failure was counted.
    _committed_user(committed, deps, now)
    checks: list[str] = []

    class CountingHasher:
        def __getattr__(self, name):
            return getattr(deps.hasher, name)

        def verify(self, *args, **kwargs):
            checks.append("verify")
            return deps.hasher.verify(*args, **kwargs)

    capped = dataclasses.replace(limited(deps, account_failures="3/day"), hasher=CountingHasher())
    outcomes: list[str] = []
    start = threading.Barrier(10)

    def guess() -> None:
        start.wait()
        with committed.begin() as session:
            try:
                accounts.authenticate_password(
                    session, capped, email="race@example.com", password="wrong horse 42",
                    client=caller, now=now,
                )  # fmt: skip
            except InvalidCredentials:
                outcomes.append("checked")
            except RateLimited:
                outcomes.append("refused")

    threads = [threading.Thread(target=guess) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(checks) == 3  # what reached the verifier
    assert sorted(outcomes) == ["checked"] * 3 + ["refused"] * 7
