"""A password check and a change of the account committed while it runs (PostgreSQL, READ
COMMITTED; SQLite serialises writers, so there the other change simply waits)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from authsvc.crypto.passwords import Argon2Params, PasswordHasher
from authsvc.db import utcnow
from authsvc.errors import AuthsvcError
from authsvc.models import User
from authsvc.services import accounts, admin, breach, password_change, user_tokens
from authsvc.services.breach import Creator
from authsvc.services.factors import FactorProof

OLD = "correct horse 42"
OWNER_NEW = "the owner picks this 9"
ATTACKER_NEW = "the attacker picks 7"


def _account(committed, password_hash: str) -> str:
    now = utcnow()
    with committed.begin() as session:
        user = User(
            email="ada@example.com",
            password_hash=password_hash,
            password_set_at=now,
            email_verified_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(user)
        session.flush()
        return user.id


def _while_checking(deps, monkeypatch, other: Callable[[], None]) -> threading.Thread:
    """Run ``other`` (its own transaction) in a thread once the first password check starts,
    and give it a second to commit before the check goes on: it commits in between unless
    it has to wait for a lock the checking transaction holds."""
    check = deps.hasher.verify
    thread = threading.Thread(target=other)

    def verify(stored: str, password: str, **options: bool):
        if not thread.is_alive() and thread.ident is None:
            thread.start()
            thread.join(timeout=1.0)
        return check(stored, password, **options)

    monkeypatch.setattr(deps.hasher, "verify", verify)
    return thread


def _attempt(committed, work: Callable[..., object]) -> str:
    session = committed()
    try:
        with session.begin():  # as http.io.transactional: a domain error still commits
            try:
                work(session)
                return "ok"
            except AuthsvcError as exc:
                return exc.code
    finally:
        session.close()


def _change(deps, caller, user_id):
    return lambda session: password_change.change_password(
        session,
        deps,
        user_id=user_id,
        current_password=OLD,
        change_token=None,
        new_password=ATTACKER_NEW,
        client=caller,
        now=utcnow(),
    )


def _works(deps, committed, password: str) -> bool:
    with committed() as session:
        stored = session.scalar(select(User.password_hash))
    return type(deps.hasher).verify(deps.hasher, stored or "", password).ok


def test_a_change_with_the_old_password_and_a_reset_at_once_do_not_both_succeed(
    committed, deps, caller, monkeypatch
):
    # Done one after the other, the second fails: a reset first leaves the old password
    # wrong, a change first kills the reset link. At once they must not both succeed (the
    # reset's new password overwritten by a change proven with the password it replaced).
    user_id = _account(committed, deps.hasher.hash(OLD))
    with committed.begin() as session:
        link = user_tokens.issue(
            session, user_id=user_id, purpose="reset_password", ttl=timedelta(hours=1), now=utcnow()
        )
    outcomes: dict[str, str] = {}

    def owner_resets() -> None:
        outcomes["reset"] = _attempt(
            committed,
            lambda session: accounts.reset_password(
                session,
                deps,
                token=link,
                new_password=OWNER_NEW,
                proof=FactorProof(),
                client=caller,
                now=utcnow(),
            ),
        )

    other = _while_checking(deps, monkeypatch, owner_resets)
    outcomes["change"] = _attempt(committed, _change(deps, caller, user_id))
    other.join(timeout=30)

    assert sorted(outcomes.values()) == ["invalid_token", "ok"], outcomes
    winner = OWNER_NEW if outcomes["reset"] == "ok" else ATTACKER_NEW
    loser = ATTACKER_NEW if winner == OWNER_NEW else OWNER_NEW
    assert _works(deps, committed, winner) and not _works(deps, committed, loser)


def test_a_change_with_the_old_password_does_not_clear_a_breach_invalidation_made_meanwhile(
    committed, deps, caller, monkeypatch
):
    user_id = _account(committed, deps.hasher.hash(OLD))

    def admin_forces_a_reset() -> None:
        with committed.begin() as session:
            breach.force_reset(
                session,
                deps,
                user_id=user_id,
                mode="invalidate",
                revoke_sessions=True,
                reset_mfa=False,
                notify=False,
                reason="phished",
                creator=Creator(name="ops", key_id=None),
                client=caller,
                now=utcnow(),
            )

    other = _while_checking(deps, monkeypatch, admin_forces_a_reset)
    _attempt(committed, _change(deps, caller, user_id))
    other.join(timeout=30)

    with committed() as session:
        assert session.scalar(select(User.password_invalidated_at)) is not None


@pytest.mark.parametrize("step", ["login", "change"])
def test_an_account_deleted_during_the_check_is_refused_not_an_error(
    committed, deps, caller, monkeypatch, database_url, step
):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the deletion cannot come in between")
    user_id = _account(committed, deps.hasher.hash(OLD))

    def admin_deletes() -> None:
        with committed.begin() as session:
            admin.delete_user(
                session,
                admin=admin.AdminIdentity(key_id="k", name="ops"),
                user_id=user_id,
                client=caller,
                now=utcnow(),
            )

    other = _while_checking(deps, monkeypatch, admin_deletes)
    login = lambda session: accounts.login_with_password(  # noqa: E731
        session, deps, email="ada@example.com", password=OLD, client=caller, now=utcnow()
    )
    outcome = _attempt(committed, login if step == "login" else _change(deps, caller, user_id))
    other.join(timeout=30)

    # A login checks first and locks after: the deletion shows. A change locks first: the
    # deletion waits for it. Either way an answer, not an error.
    assert outcome == ("invalid_credentials" if step == "login" else "ok")
    with committed() as session:
        assert session.scalar(select(User.id)) is None


def test_two_right_passwords_at_once_while_a_rehash_is_due_both_sign_in(
    committed, deps, caller, monkeypatch, database_url
):
    # The first login to finish stores a rehash: the hash string changes, the password not.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the logins cannot overlap")
    older = PasswordHasher(
        Argon2Params(time_cost=1, memory_cost_kib=64, parallelism=1),
        max_concurrent=1,
        acquire_timeout=1,
    )
    _account(committed, older.hash(OLD))

    def login(session) -> None:
        accounts.login_with_password(
            session, deps, email="ada@example.com", password=OLD, client=caller, now=utcnow()
        )

    outcomes: list[str] = []
    other = _while_checking(deps, monkeypatch, lambda: outcomes.append(_attempt(committed, login)))
    outcomes.append(_attempt(committed, login))
    other.join(timeout=30)

    assert outcomes == ["ok", "ok"]
    with committed() as session:
        assert session.scalar(select(User.password_hash)) != older.hash(OLD)
