"""Sessions across transactions: what is decided by an UPDATE happens, and is audited, once
(PostgreSQL, READ COMMITTED; SQLite serialises writers anyway)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import func, select, text

from authsvc.errors import AuthsvcError
from authsvc.models import AuditEvent, User
from authsvc.models import Session as Login
from authsvc.services import admin, sessions
from authsvc.services.sessions import TokenPair
from tests.service.test_password_races import _attempt

PARALLEL = 6


def _signed_in(committed, deps, caller, now) -> TokenPair:
    with committed.begin() as session:
        user = User(email="ada@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        return sessions.start_session(
            session, deps, user=user, amr=("pwd",), client=caller, now=now
        )


def _at_once(committed, call: Callable[..., object]) -> list[str]:
    """``call(session)`` in PARALLEL transactions started together: "ok" or the error code."""
    start = threading.Barrier(PARALLEL)
    outcomes: list[str] = []

    def run() -> None:
        start.wait()
        session = committed()
        try:
            with session.begin():  # as http.io.transactional: a domain error still commits
                try:
                    call(session)
                    outcomes.append("ok")
                except AuthsvcError as exc:
                    outcomes.append(exc.code)
        finally:
            session.close()

    threads = [threading.Thread(target=run) for _ in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def _events(committed, type_: str) -> int:
    with committed() as session:
        return int(session.scalar(select(func.count()).where(AuditEvent.type == type_)) or 0)


def test_revoking_one_session_from_several_requests_at_once_revokes_it_once(
    committed, deps, caller, now
):
    pair = _signed_in(committed, deps, caller, now)
    with committed() as session:
        user_id = session.scalar(select(User.id))

    outcomes = _at_once(
        committed,
        lambda session: sessions.revoke_session(
            session,
            user_id=user_id,
            session_id=pair.session_id,
            idle_timeout=deps.settings.session_idle_timeout,
            client=caller,
            now=now,
        ),
    )

    assert sorted(outcomes) == ["not_found"] * (PARALLEL - 1) + ["ok"]
    assert _events(committed, "session.revoked") == 1


def test_replaying_a_spent_refresh_token_at_once_revokes_and_audits_once(
    committed, deps, caller, now
):
    pair = _signed_in(committed, deps, caller, now)
    with committed.begin() as session:
        sessions.rotate_refresh_token(
            session, deps, refresh_token=pair.refresh_token, client=caller, now=now
        )

    outcomes = _at_once(
        committed,
        lambda session: sessions.rotate_refresh_token(
            session, deps, refresh_token=pair.refresh_token, client=caller, now=now
        ),
    )

    assert outcomes == ["invalid_token"] * PARALLEL
    assert _events(committed, "session.refresh_reuse") == 1
    with committed() as session:
        assert session.scalar(select(Login.revoked_reason)) == "refresh_token_reuse"


def test_a_refresh_token_used_by_several_requests_at_once_gives_one_pair_and_revokes(
    committed, deps, caller, now
):
    # One use wins; every other is a use of a spent token, a replay, which ends the session
    # (the winner's new pair included) and is audited once.
    pair = _signed_in(committed, deps, caller, now)

    outcomes = _at_once(
        committed,
        lambda session: sessions.rotate_refresh_token(
            session, deps, refresh_token=pair.refresh_token, client=caller, now=now
        ),
    )

    assert sorted(outcomes) == ["invalid_token"] * (PARALLEL - 1) + ["ok"]
    assert _events(committed, "session.refresh_reuse") == 1
    with committed() as session:
        assert session.scalar(select(Login.revoked_reason)) == "refresh_token_reuse"


def test_an_account_deleted_while_its_refresh_token_is_spent_does_not_deadlock(
    committed, deps, caller, now, database_url
):
    # The refresh statement locks the session before the token, the order of a deletion's
    # cascade (account, sessions, tokens). It locked the token first, so a deletion that took
    # the session in between deadlocked against it (503 to one of them). A trigger that sleeps
    # as the refresh spends the token (its row locked) holds it in that gap.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the deletion cannot come in between")
    pair = _signed_in(committed, deps, caller, now)
    with committed.begin() as session:
        user_id = session.scalar(select(User.id))
        session.execute(
            text(
                "CREATE FUNCTION slow_spend() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$"
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER slow_spend BEFORE UPDATE ON refresh_tokens "
                "FOR EACH ROW EXECUTE FUNCTION slow_spend()"
            )
        )
    outcomes: dict[str, str] = {}

    def refresh() -> None:
        outcomes["refresh"] = _attempt(
            committed,
            lambda session: sessions.rotate_refresh_token(
                session, deps, refresh_token=pair.refresh_token, client=caller, now=now
            ),
        )

    def deletion() -> None:
        outcomes["delete"] = _attempt(
            committed,
            lambda session: admin.delete_user(
                session,
                admin=admin.AdminIdentity(key_id="k1", name="ops"),
                user_id=user_id,
                client=caller,
                now=now,
            ),
        )

    first = threading.Thread(target=refresh)
    first.start()
    time.sleep(0.3)  # the refresh is in its statement, sleeping as it spends the token
    second = threading.Thread(target=deletion)
    second.start()
    first.join(30)
    second.join(30)

    assert outcomes == {"refresh": "ok", "delete": "ok"}
    with committed() as session:
        assert session.scalar(select(func.count()).select_from(Login)) == 0
