"""services.sessions on a real Session: issue, rotate, reuse detection, expiry, revocation."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from authsvc.crypto.tokens import token_hash, verify_access_token
from authsvc.errors import InvalidToken, NotFound
from authsvc.models import AuditEvent, RefreshToken, Session
from authsvc.services import sessions, signing
from tests.conftest import statements_during


@pytest.fixture
def user(make_user):
    return make_user()


def start(db_session, deps, user, caller, now, amr=("pwd",)):
    return sessions.start_session(db_session, deps, user=user, amr=amr, client=caller, now=now)


def rotate(db_session, deps, token, caller, now):
    return sessions.rotate_refresh_token(
        db_session, deps, refresh_token=token, client=caller, now=now
    )


def test_start_session_issues_a_verifiable_pair(db_session, deps, user, caller, now):
    pair = start(db_session, deps, user, caller, now, amr=("pwd", "otp", "mfa"))

    claims = verify_access_token(
        pair.access_token,
        public_jwks=signing.public_jwks(
            db_session, now=now, token_ttl=deps.settings.access_token_ttl
        ).keys,
        issuer=deps.settings.public_url,
        audience=deps.settings.jwt_audience,
        now=now,
        max_lifetime=int(deps.settings.access_token_ttl.total_seconds()),
    )
    assert (claims.sub, claims.sid, claims.amr) == (user.id, pair.session_id, ("pwd", "otp", "mfa"))
    assert claims.auth_time == int(now.timestamp())
    assert pair.expires_in == int(deps.settings.access_token_ttl.total_seconds())
    stored = db_session.scalars(select(RefreshToken.token_hash)).all()
    assert stored == [token_hash(pair.refresh_token)]
    login = db_session.get(Session, pair.session_id)
    assert login.expires_at == now + deps.settings.refresh_token_ttl


def test_a_session_and_its_first_token_take_one_statement_on_postgresql(
    db_session, deps, user, caller, now, connection
):
    db_session.flush()
    started = []
    seen = statements_during(
        connection,
        lambda: started.append(
            start(db_session, deps, user, caller, now, amr=("pwd", "otp", "mfa"))
        ),
    )
    [pair] = started

    writes = [s for s in seen if "INSERT INTO sessions" in s or "INSERT INTO refresh_tokens" in s]
    assert len(writes) == (1 if connection.dialect.name == "postgresql" else 2), writes
    login = db_session.get(Session, pair.session_id)
    assert (login.user_id, login.amr, login.ip, login.user_agent) == (
        user.id,
        "pwd otp mfa",
        caller.ip or None,
        caller.user_agent or None,
    )
    assert login.created_at == login.last_used_at == login.auth_time == now
    assert login.expires_at == now + deps.settings.refresh_token_ttl
    token = db_session.scalars(
        select(RefreshToken).where(RefreshToken.session_id == pair.session_id)
    ).one()
    assert (token.token_hash, token.created_at, token.used_at) == (
        token_hash(pair.refresh_token),
        now,
        None,
    )


def test_rotation_spends_the_token_and_keeps_auth_time(db_session, deps, user, caller, now):
    first = start(db_session, deps, user, caller, now)
    later = now + timedelta(minutes=5)

    second = rotate(db_session, deps, first.refresh_token, caller, later)

    assert second.session_id == first.session_id
    assert second.refresh_token != first.refresh_token
    spent = db_session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(first.refresh_token))
    )
    assert spent.used_at == later
    login = db_session.get(Session, first.session_id)
    assert login.last_used_at == later
    assert login.auth_time == now  # a refresh is not a new authentication


def test_reuse_revokes_the_family(db_session, deps, user, caller, now):
    first = start(db_session, deps, user, caller, now)
    second = rotate(db_session, deps, first.refresh_token, caller, now)

    with pytest.raises(InvalidToken):
        rotate(db_session, deps, first.refresh_token, caller, now)

    login = db_session.get(Session, first.session_id)
    assert login.revoked_at == now
    assert login.revoked_reason == "refresh_token_reuse"
    with pytest.raises(InvalidToken):
        rotate(db_session, deps, second.refresh_token, caller, now)
    assert not sessions.is_active(db_session, session_id=login.id, user_id=user.id, now=now)
    [event] = db_session.scalars(
        select(AuditEvent).where(AuditEvent.type == "session.refresh_reuse")
    ).all()
    assert event.user_id == user.id
    assert json.loads(event.details) == {"session_id": login.id}
    assert event.ip == caller.ip


def listed(db_session, deps, user, at) -> list[str]:
    return [
        s.id
        for s in sessions.list_sessions(
            db_session,
            user_id=user.id,
            current_session_id="",
            idle_timeout=deps.settings.session_idle_timeout,
            now=at,
        )
    ]


def test_sessions_expire(db_session, deps, user, caller, now):
    pair = start(db_session, deps, user, caller, now)
    end = now + deps.settings.refresh_token_ttl
    # In use all along (refreshed within every idle period), it still ends at its absolute end.
    step = deps.settings.session_idle_timeout - timedelta(hours=1)
    at, token = now, pair.refresh_token
    while at + step < end:
        at += step
        token = rotate(db_session, deps, token, caller, at).refresh_token

    with pytest.raises(InvalidToken):
        rotate(db_session, deps, token, caller, end)
    assert not sessions.is_active(db_session, session_id=pair.session_id, user_id=user.id, now=end)
    assert listed(db_session, deps, user, end) == []
    assert (
        rotate(db_session, deps, token, caller, end - timedelta(seconds=1)).session_id
        == pair.session_id
    )


def test_an_access_token_ends_no_later_than_its_session(db_session, deps, user, caller, now):
    # A refresh just before the absolute end hands out an access token: relying apps that
    # verify it offline would accept it for a whole access-token lifetime past that end.
    ttl = int(deps.settings.access_token_ttl.total_seconds())
    pair = start(db_session, deps, user, caller, now)
    end = now + deps.settings.refresh_token_ttl
    late = end - timedelta(seconds=90)
    step = deps.settings.session_idle_timeout - timedelta(hours=1)
    at, token = now, pair.refresh_token
    while at + step < late:  # in use all along, up to its last refresh
        at += step
        earlier = rotate(db_session, deps, token, caller, at)
        assert earlier.expires_in == ttl
        token = earlier.refresh_token

    last = rotate(db_session, deps, token, caller, late)

    claims = verify_access_token(
        last.access_token,
        public_jwks=signing.public_jwks(
            db_session, now=late, token_ttl=deps.settings.access_token_ttl
        ).keys,
        issuer=deps.settings.public_url,
        audience=deps.settings.jwt_audience,
        now=late,
        max_lifetime=int(deps.settings.access_token_ttl.total_seconds()),
    )
    assert claims.exp == int(end.timestamp())
    assert last.expires_in == 90 < ttl


def test_an_idle_session_ends(db_session, deps, user, caller, now):
    idle = deps.settings.session_idle_timeout
    pair = start(db_session, deps, user, caller, now)
    later = now + idle - timedelta(seconds=1)
    fresh = rotate(db_session, deps, pair.refresh_token, caller, later)
    assert listed(db_session, deps, user, later + idle - timedelta(seconds=1)) == [pair.session_id]

    too_late = later + idle
    with pytest.raises(InvalidToken):
        rotate(db_session, deps, fresh.refresh_token, caller, too_late)
    assert listed(db_session, deps, user, too_late) == []


def test_a_disabled_user_cannot_refresh(db_session, deps, user, caller, now):
    pair = start(db_session, deps, user, caller, now)
    user.disabled_at = now

    with pytest.raises(InvalidToken):
        rotate(db_session, deps, pair.refresh_token, caller, now)


def test_unknown_refresh_tokens(db_session, deps, caller, now):
    with pytest.raises(InvalidToken):
        rotate(db_session, deps, "rt_nope", caller, now)
    with pytest.raises(InvalidToken):
        sessions.logout(db_session, refresh_token="rt_nope", client=caller, now=now)


def test_logout_revokes_only_that_session(db_session, deps, user, caller, now):
    one, two = (
        start(db_session, deps, user, caller, now),
        start(db_session, deps, user, caller, now),
    )

    sessions.logout(db_session, refresh_token=one.refresh_token, client=caller, now=now)

    assert db_session.get(Session, one.session_id).revoked_reason == "logout"
    assert db_session.get(Session, two.session_id).revoked_at is None


def test_list_and_revoke(db_session, deps, user, make_user, caller, now):
    one = start(db_session, deps, user, caller, now)
    two = start(db_session, deps, user, caller, now + timedelta(seconds=1))
    other = start(db_session, deps, make_user(email="bob@example.com"), caller, now)

    shown = sessions.list_sessions(
        db_session,
        user_id=user.id,
        current_session_id=one.session_id,
        idle_timeout=deps.settings.session_idle_timeout,
        now=now,
    )

    assert [s.id for s in shown] == [two.session_id, one.session_id]
    assert [s.current for s in shown] == [False, True]
    assert shown[0].amr == ("pwd",) and shown[0].ip == caller.ip
    with pytest.raises(NotFound):
        sessions.revoke_session(
            db_session,
            user_id=user.id,
            session_id=other.session_id,
            idle_timeout=deps.settings.session_idle_timeout,
            client=caller,
            now=now,
        )
    sessions.revoke_session(
        db_session,
        user_id=user.id,
        session_id=two.session_id,
        idle_timeout=deps.settings.session_idle_timeout,
        client=caller,
        now=now,
    )
    with pytest.raises(NotFound):  # already revoked
        sessions.revoke_session(
            db_session,
            user_id=user.id,
            session_id=two.session_id,
            idle_timeout=deps.settings.session_idle_timeout,
            client=caller,
            now=now,
        )
    assert listed(db_session, deps, user, now) == [one.session_id]


def test_revoke_all_for_user(db_session, deps, user, caller, now):
    for _ in range(3):
        start(db_session, deps, user, caller, now)

    assert sessions.revoke_all_for_user(db_session, user_id=user.id, reason="test", now=now) == 3
    assert sessions.revoke_all_for_user(db_session, user_id=user.id, reason="test", now=now) == 0


def test_an_active_session_belongs_to_its_user(db_session, deps, user, make_user, caller, now):
    pair = start(db_session, deps, user, caller, now)
    bob = make_user(email="bob@example.com")

    assert sessions.is_active(db_session, session_id=pair.session_id, user_id=user.id, now=now)
    assert not sessions.is_active(db_session, session_id=pair.session_id, user_id=bob.id, now=now)
    assert not sessions.is_active(db_session, session_id="nope", user_id=user.id, now=now)


def test_a_disabled_user_has_no_active_session(db_session, deps, user, caller, now):
    pair = start(db_session, deps, user, caller, now)
    user.disabled_at = now

    assert not sessions.is_active(db_session, session_id=pair.session_id, user_id=user.id, now=now)
