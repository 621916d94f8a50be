"""The WebAuthn services on a real Session: challenges, counters, policy and management."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from authsvc.db import make_engine
from authsvc.errors import (
    InvalidChallenge,
    InvalidMfa,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from authsvc.models import (
    AuditEvent,
    OutboxMessage,
    User,
    WebauthnChallenge,
    WebauthnCredential,
)
from authsvc.schema import upgrade
from authsvc.services import webauthn, webauthn_registration
from authsvc.settings import ConfigError, Settings
from tests.support_webauthn import SoftAuthenticator


@pytest.fixture
def ada(make_user):
    return make_user(email="ada@example.com")


STEP = "mfa-token-row-id"  # the step (mfa_token or reset link) a challenge serves


def _enroll(db_session, deps, user, key, now, caller, **kwargs):
    options = webauthn_registration.registration_options(
        db_session, deps, user_id=user.id, name="key", now=now
    )
    return webauthn_registration.register(
        db_session,
        deps,
        user_id=user.id,
        credential=key.register(options, **kwargs),
        name=None,
        client=caller,
        now=now,
    )


def _mfa(db_session, deps, user, key, now, caller, **kwargs):
    options = webauthn.assertion_options(
        db_session, deps, user_id=user.id, user_token_id=STEP, now=now
    )
    return webauthn.verify_mfa_assertion(
        db_session,
        deps,
        user_id=user.id,
        user_token_id=STEP,
        credential=key.assertion(options, **kwargs),
        client=caller,
        now=now,
    )


def _events(db_session, type_):
    return list(db_session.scalars(select(AuditEvent).where(AuditEvent.type == type_)))


def test_registration_options_for_an_account_deleted_meanwhile_are_unauthenticated(
    db_session, deps, ada, now
):
    # A bearer route: the 401 is the bearer one (with its challenge header), as for every
    # other writer of factors, not a refused password.
    db_session.delete(ada)
    db_session.flush()
    with pytest.raises(Unauthenticated):
        webauthn_registration.registration_options(
            db_session, deps, user_id=ada.id, name="key", now=now
        )


def test_challenges_are_stored_as_digests_and_spent_once(db_session, deps, ada, now, caller):
    _enroll(db_session, deps, ada, SoftAuthenticator(), now, caller)
    request = webauthn.assertion_options(
        db_session, deps, user_id=ada.id, user_token_id=STEP, now=now
    )
    raw = webauthn.wa.from_b64url(request["challenge"])
    stored = db_session.scalar(select(WebauthnChallenge).where(WebauthnChallenge.purpose == "mfa"))
    assert stored.challenge_hash == webauthn.wa.challenge_digest(raw)  # never the challenge
    assert stored.expires_at == now + deps.settings.webauthn_challenge_ttl
    webauthn.consume_challenge(
        db_session, purpose="mfa", challenge=raw, user_id=ada.id, user_token_id=STEP, now=now
    )
    db_session.refresh(stored)
    assert stored.used_at == now
    with pytest.raises(InvalidChallenge):
        webauthn.consume_challenge(
            db_session, purpose="mfa", challenge=raw, user_id=ada.id, user_token_id=STEP, now=now
        )


def test_expired_and_foreign_challenges(db_session, deps, ada, make_user, now, caller):
    bob = make_user(email="bob@example.com")
    _enroll(db_session, deps, ada, SoftAuthenticator(), now, caller)
    raw = webauthn.wa.from_b64url(
        webauthn.assertion_options(db_session, deps, user_id=ada.id, user_token_id=STEP, now=now)[
            "challenge"
        ]
    )
    ttl = deps.settings.webauthn_challenge_ttl
    for kwargs in (
        {"user_id": bob.id, "now": now},
        {"user_id": ada.id, "now": now + ttl},
        {"user_id": ada.id, "now": now, "purpose": "passkey"},
        {"user_id": ada.id, "now": now, "user_token_id": "another step"},  # another login step
        {"user_id": ada.id, "now": now, "user_token_id": None},
    ):
        with pytest.raises(InvalidChallenge):
            webauthn.consume_challenge(
                db_session, challenge=raw, **{"purpose": "mfa", "user_token_id": STEP, **kwargs}
            )


def test_expired_challenges_are_swept(db_session, deps, ada, now):
    webauthn_registration.registration_options(db_session, deps, user_id=ada.id, name="a", now=now)
    later = now + deps.settings.webauthn_challenge_ttl + timedelta(seconds=1)
    webauthn_registration.registration_options(
        db_session, deps, user_id=ada.id, name="b", now=later
    )
    names = db_session.scalars(select(WebauthnChallenge.name)).all()
    assert names == ["b"]


def test_counter_must_move_forward(db_session, deps, ada, now, caller):
    key = SoftAuthenticator()
    _enroll(db_session, deps, ada, key, now, caller)
    assert _mfa(db_session, deps, ada, key, now, caller) == "hwk"
    with pytest.raises(InvalidMfa) as caught:
        _mfa(db_session, deps, ada, key, now, caller, sign_count=1)  # the same value again
    assert caught.value.extra["reason"] == "sign_count_regression"
    assert _mfa(db_session, deps, ada, key, now, caller) == "hwk"  # the genuine key goes on
    row = db_session.scalar(select(WebauthnCredential))
    assert row.sign_count == 2 and row.last_used_at == now


def test_regression_mails_at_most_hourly(db_session, deps, ada, now, caller):
    key = SoftAuthenticator()
    _enroll(db_session, deps, ada, key, now, caller)
    _mfa(db_session, deps, ada, key, now, caller, sign_count=10)
    mails_before = db_session.scalar(select(func.count()).select_from(OutboxMessage))
    for minutes in (0, 1, 61):
        with pytest.raises(InvalidMfa):
            _mfa(db_session, deps, ada, key, now + timedelta(minutes=minutes), caller, sign_count=3)
    mails_after = db_session.scalar(select(func.count()).select_from(OutboxMessage))
    assert mails_after - mails_before == 2  # the first, and the one an hour later
    assert len(_events(db_session, "mfa.webauthn.counter_regression")) == 3


def test_flag_policy(db_session, deps, ada, now, caller):
    flagging = dataclasses.replace(
        deps, settings=dataclasses.replace(deps.settings, webauthn_on_counter_regression="flag")
    )
    key = SoftAuthenticator()
    _enroll(db_session, flagging, ada, key, now, caller)
    _mfa(db_session, flagging, ada, key, now, caller, sign_count=9)
    assert _mfa(db_session, flagging, ada, key, now, caller, sign_count=4) == "hwk"
    row = db_session.scalar(select(WebauthnCredential))
    assert row.sign_count == 9 and row.counter_regression_at == now
    (event,) = _events(db_session, "mfa.webauthn.counter_regression")
    assert event.outcome == "flagged"


def test_backup_eligibility_cannot_change(db_session, deps, ada, now, caller):
    key = SoftAuthenticator()
    _enroll(db_session, deps, ada, key, now, caller)
    key.backup_eligible = True
    with pytest.raises(InvalidMfa) as caught:
        _mfa(db_session, deps, ada, key, now, caller)
    assert caught.value.extra["reason"] == "backup_eligibility_changed"


def test_the_backup_state_follows_each_assertion(db_session, deps, ada, now, caller):
    # WebAuthn L3 7.2: the record's BS takes the value of each verified assertion's flag.
    key = SoftAuthenticator(backup_eligible=True, backed_up=False)
    _enroll(db_session, deps, ada, key, now, caller)
    row = db_session.scalar(select(WebauthnCredential))
    assert (row.backup_eligible, row.backed_up) == (True, False)
    for backed_up in (True, False):
        key.backed_up = backed_up
        assert _mfa(db_session, deps, ada, key, now, caller) == "swk"
        db_session.flush()
        db_session.expire_all()
        assert db_session.scalar(select(WebauthnCredential.backed_up)) is backed_up


def test_factor_listing_and_management(db_session, deps, ada, make_user, now, caller):
    bob = make_user(email="bob@example.com")
    assert not webauthn.has_credentials(db_session, user_id=ada.id)
    factor = _enroll(db_session, deps, ada, SoftAuthenticator(), now, caller)
    assert webauthn.has_credentials(db_session, user_id=ada.id)
    (info,) = webauthn.list_factors(db_session, user_id=ada.id)
    assert (info.id, info.type, info.name, info.last_used_at) == (
        factor.id,
        "webauthn",
        "key",
        None,
    )
    renamed = webauthn.rename_credential(
        db_session, user_id=ada.id, credential_id=factor.id, name=" Work\tkey ", now=now
    )
    assert renamed.name == "Work key"
    with pytest.raises(InvalidRequest):
        webauthn.rename_credential(
            db_session, user_id=ada.id, credential_id=factor.id, name="", now=now
        )
    for user_id, credential_id in ((bob.id, factor.id), (ada.id, "nope")):
        with pytest.raises(NotFound):
            webauthn.rename_credential(
                db_session, user_id=user_id, credential_id=credential_id, name="x", now=now
            )
        with pytest.raises(NotFound):
            webauthn.delete_credential(
                db_session, user_id=user_id, credential_id=credential_id, now=now
            )
    webauthn.delete_credential(db_session, user_id=ada.id, credential_id=factor.id, now=now)
    assert webauthn.list_factors(db_session, user_id=ada.id) == []


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"AUTHSVC_WEBAUTHN_USER_VERIFICATION": "always"}, "USER_VERIFICATION"),
        ({"AUTHSVC_WEBAUTHN_ATTESTATION": "enterprise"}, "ATTESTATION must"),
        ({"AUTHSVC_WEBAUTHN_ON_COUNTER_REGRESSION": "ignore"}, "COUNTER_REGRESSION"),
        ({"AUTHSVC_WEBAUTHN_AAGUID_ALLOW": "not-a-uuid"}, "AAGUID"),
        ({"AUTHSVC_WEBAUTHN_ORIGINS": ""}, "must not be empty"),
        ({"AUTHSVC_WEBAUTHN_CHALLENGE_TTL": "1s"}, "CHALLENGE_TTL"),
        # The options' timeout in milliseconds: browsers end a ceremony after 10 minutes at
        # most, and read a number past 2**32 modulo 2**32 (36500d became 12.6 days).
        ({"AUTHSVC_WEBAUTHN_CHALLENGE_TTL": "11m"}, "CHALLENGE_TTL"),
        ({"AUTHSVC_WEBAUTHN_CHALLENGE_TTL": "36500d"}, "CHALLENGE_TTL"),
        ({"AUTHSVC_WEBAUTHN_ATTESTATION": "direct"}, "ATTESTATION_ROOTS"),
        # py_webauthn refuses an empty RP name: every registration's options answered 500.
        ({"AUTHSVC_WEBAUTHN_RP_NAME": ""}, "AUTHSVC_WEBAUTHN_RP_NAME must not be empty"),
        ({"AUTHSVC_WEBAUTHN_RP_NAME": "  "}, "AUTHSVC_WEBAUTHN_RP_NAME must not be empty"),
    ],
)
def test_policy_settings_are_checked(environ, problem):
    with pytest.raises(Exception) as caught:
        Settings.from_env(environ)
    assert problem in str(caught.value)


def test_attestation_roots_that_cannot_be_read_are_refused(tmp_path):
    # Read at every registration: a missing file answered each of them 500.
    for path in (tmp_path / "missing.pem", tmp_path):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(
                {
                    "AUTHSVC_WEBAUTHN_ATTESTATION": "direct",
                    "AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS": str(path),
                }
            )
        [problem] = caught.value.problems
        assert problem.startswith("AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS: cannot read ")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(b"")  # readable, no certificate: accepts no key, as documented
    settings = Settings.from_env(
        {"AUTHSVC_WEBAUTHN_ATTESTATION": "direct", "AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS": str(roots)}
    )
    assert settings.webauthn_attestation_roots == roots


def test_policy_settings_parse():
    settings = Settings.from_env(
        {
            "AUTHSVC_WEBAUTHN_AAGUID_ALLOW": "cb69481e-8ff7-4039-93ec-0a2729a154a8, "
            "ee882879-721c-4913-9775-3dfcce97072a",
            "AUTHSVC_WEBAUTHN_ALLOW_BACKUP_ELIGIBLE": "false",
            "AUTHSVC_WEBAUTHN_CHALLENGE_TTL": "10m",
            "AUTHSVC_WEBAUTHN_ON_COUNTER_REGRESSION": "flag",
        }
    )
    assert len(settings.webauthn_aaguid_allow) == 2
    assert settings.webauthn_allow_backup_eligible is False
    assert settings.webauthn_challenge_ttl == timedelta(minutes=10)
    assert settings.webauthn_on_counter_regression == "flag"


def test_a_challenge_is_spent_once_across_instances(scratch_database_url, deps, now):
    """Eight sessions on their own connections (as eight instances would be) race to spend
    one challenge; the conditional UPDATE lets exactly one win."""
    upgrade(scratch_database_url)
    engine = make_engine(scratch_database_url)
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        with factory.begin() as session:
            user = User(email="ada@example.com", created_at=now, updated_at=now)
            session.add(user)
            session.flush()
            _, raw = webauthn.issue_challenge(
                session,
                deps,
                purpose="mfa",
                user_id=user.id,
                user_verification="preferred",
                now=now,
            )
        barrier = threading.Barrier(8)

        def attempt(_: int) -> bool:
            barrier.wait(timeout=30)
            try:
                with factory.begin() as session:
                    webauthn.consume_challenge(
                        session, purpose="mfa", challenge=raw, user_id=user.id, now=now
                    )
                return True
            except InvalidChallenge:
                return False

        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(attempt, range(8)))
        assert outcomes.count(True) == 1
    finally:
        engine.dispose()
