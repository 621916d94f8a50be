"""Admin actions on one account at once (PostgreSQL, READ COMMITTED; SQLite serialises
writers anyway): each happens, and is audited, once."""

from __future__ import annotations

from sqlalchemy import select

from authsvc.models import User
from authsvc.services import admin
from tests.service.test_session_races import PARALLEL, _at_once, _events

OPS = admin.AdminIdentity(key_id="k1", name="ops")


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
