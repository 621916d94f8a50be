"""services.user_tokens: single-use, expiring, purpose-bound, hashed at rest."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from authsvc.crypto.tokens import token_hash
from authsvc.errors import InvalidToken
from authsvc.models import UserToken
from authsvc.services import user_tokens

TTL = timedelta(hours=1)


@pytest.fixture
def user(make_user):
    return make_user()


def issue(db_session, user, now, purpose="reset_password", **kwargs):
    return user_tokens.issue(
        db_session, user_id=user.id, purpose=purpose, ttl=TTL, now=now, **kwargs
    )


def test_issue_and_find(db_session, user, now):
    token = issue(db_session, user, now, context={"amr": ["pwd"]})

    row = user_tokens.find(db_session, token=token, purpose="reset_password", now=now)

    assert token.startswith("rp_")
    assert row.token_hash == token_hash(token)
    assert row.expires_at == now + TTL
    assert user_tokens.context_of(row) == {"amr": ["pwd"]}
    assert token not in {row.token_hash, row.context}


@pytest.mark.parametrize(
    ("purpose", "at"),
    [
        ("verify_email", timedelta(0)),
        ("reset_password", TTL),
        ("reset_password", TTL + timedelta(days=1)),
    ],
    ids=["wrong-purpose", "at-expiry", "after-expiry"],
)
def test_find_refuses(db_session, user, now, purpose, at):
    token = issue(db_session, user, now)

    with pytest.raises(InvalidToken):
        user_tokens.find(db_session, token=token, purpose=purpose, now=now + at)
    assert user_tokens.find(
        db_session, token=token, purpose="reset_password", now=now + TTL - timedelta(seconds=1)
    )


def test_consume_works_once(db_session, user, now):
    token = issue(db_session, user, now)
    row = user_tokens.find(db_session, token=token, purpose="reset_password", now=now)

    user_tokens.consume(db_session, row=row, now=now)

    with pytest.raises(InvalidToken):
        user_tokens.consume(db_session, row=row, now=now)  # a concurrent second use loses
    with pytest.raises(InvalidToken):
        user_tokens.find(db_session, token=token, purpose="reset_password", now=now)


def test_a_new_token_replaces_older_ones_of_the_same_purpose(db_session, user, now):
    older = issue(db_session, user, now)
    mfa = issue(db_session, user, now, purpose="mfa")
    newer = issue(db_session, user, now)

    with pytest.raises(InvalidToken):
        user_tokens.find(db_session, token=older, purpose="reset_password", now=now)
    assert user_tokens.find(db_session, token=newer, purpose="reset_password", now=now)
    assert user_tokens.find(db_session, token=mfa, purpose="mfa", now=now)


def test_tokens_can_coexist_when_asked(db_session, user, now):
    first = issue(db_session, user, now, purpose="mfa", replace_previous=False)
    second = issue(db_session, user, now, purpose="mfa", replace_previous=False)

    assert user_tokens.find(db_session, token=first, purpose="mfa", now=now)
    assert user_tokens.find(db_session, token=second, purpose="mfa", now=now)


def test_revoke_all(db_session, user, make_user, now):
    reset = issue(db_session, user, now)
    verify = issue(db_session, user, now, purpose="verify_email")
    bob = make_user(email="bob@example.com")
    bobs = issue(db_session, bob, now)

    user_tokens.revoke_all(db_session, user_id=user.id, purposes=("reset_password", "mfa"), now=now)

    with pytest.raises(InvalidToken):
        user_tokens.find(db_session, token=reset, purpose="reset_password", now=now)
    assert user_tokens.find(db_session, token=verify, purpose="verify_email", now=now)
    assert user_tokens.find(db_session, token=bobs, purpose="reset_password", now=now)


def test_tokens_die_with_their_user(db_session, user, now):
    issue(db_session, user, now)

    db_session.delete(user)
    db_session.flush()

    assert db_session.scalars(select(UserToken)).all() == []


def test_answers_are_counted_by_the_database_not_from_a_loaded_row(db_session, user, now):
    token = issue(db_session, user, now, purpose="mfa")
    row = user_tokens.find(db_session, token=token, purpose="mfa", now=now)
    # Two requests loaded the row at 0 attempts; both answer, one after the other.
    assert user_tokens.claim_attempt(db_session, row=row, limit=3) == 1
    assert user_tokens.claim_attempt(db_session, row=row, limit=3) == 2
    db_session.flush()  # nothing of the loaded row is written back over the count
    user_tokens.return_attempt(db_session, row=row)  # the second was malformed: no answer
    assert user_tokens.claim_attempt(db_session, row=row, limit=3) == 2
    assert user_tokens.claim_attempt(db_session, row=row, limit=3) == 3

    with pytest.raises(InvalidToken):  # out of answers: none is checked any more
        user_tokens.claim_attempt(db_session, row=row, limit=3)
    assert db_session.scalar(select(UserToken.attempts).where(UserToken.id == row.id)) == 3

    user_tokens.kill(db_session, row=row, now=now)
    user_tokens.kill(db_session, row=row, now=now + timedelta(minutes=1))  # stays as killed
    assert db_session.scalar(select(UserToken.used_at).where(UserToken.id == row.id)) == now
