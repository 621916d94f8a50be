"""Two paths on one account at once (PostgreSQL, READ COMMITTED): every path that writes the
account and its other rows (tokens, factors, challenges, credentials) locks the account
first, as an admin deletion does before it cascades; with another order the two deadlock
and one request answers 500. SQLite serialises writers, so there the second one waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import select, update

from authsvc.crypto import totp as otp
from authsvc.errors import AuthsvcError
from authsvc.models import (
    OutboxMessage,
    Session,
    TotpFactor,
    User,
    UserToken,
    WebauthnCredential,
)
from authsvc.models.breach import BreachTarget
from authsvc.services import (
    accounts,
    admin,
    audit,
    breach,
    breach_batches,
    breach_lists,
    breach_notices,
    breach_walk,
    factors,
    login,
    mfa_management,
    notices,
    outbox,
    passkeys,
    totp,
    user_tokens,
    webauthn,
    webauthn_registration,
)
from tests.service.conftest import issue_mfa_token
from tests.service.test_session_races import _at_once
from tests.support_webauthn import SoftAuthenticator

OPS = admin.AdminIdentity(key_id="k1", name="ops")
NEW = "a brand new passphrase 77"


def _attempt(committed, work):
    session = committed()
    try:
        with session.begin():
            try:
                work(session)
                return "ok"
            except AuthsvcError as exc:
                return exc.code
    except Exception as exc:  # what a request would answer 500 for
        return f"500:{type(exc).__name__}:{str(exc).splitlines()[0][:120]}"
    finally:
        session.close()


def _removal(deps, caller, now, user_id, factor_id):
    """The work of a request that removes the factor (or cancels its pending enrollment)."""
    return lambda s: mfa_management.remove(
        s, deps, user_id=user_id, factor_id=factor_id, auth_time=now, client=caller, now=now
    )


def _account(committed, deps, now) -> str:
    with committed.begin() as session:
        user = User(
            email="ada@example.com",
            email_verified_at=now,
            created_at=now,
            updated_at=now,
            password_hash=deps.hasher.hash("correct horse 42"),
            password_set_at=now,
        )
        session.add(user)
        session.flush()
        return user.id


def _with_totp(committed, deps, caller, now, user_id):
    with committed.begin() as session:
        pending = totp.enroll(session, deps, user_id=user_id, name=None, client=caller, now=now)
        totp.confirm(
            session,
            deps,
            user_id=user_id,
            factor_id=pending.factor_id,
            code=otp.code_at(pending.secret, otp.step_at(now) - 1),
            client=caller,
            now=now,
        )
    return pending.secret


def _admin_delete(committed, user_id, caller, now):
    """The account's deletion by an admin, in its own transaction, for ``_race``."""
    return lambda: _attempt(
        committed,
        lambda s: admin.delete_user(s, admin=OPS, user_id=user_id, client=caller, now=now),
    )


def _pause_at(
    monkeypatch, owner, name: str, *, after: bool = False
) -> tuple[threading.Event, threading.Event]:
    """Make ``owner.name`` wait, at its first call (before it runs, or ``after``), until
    ``release`` is set; ``gate`` is set when it starts waiting."""
    gate, release = threading.Event(), threading.Event()
    original = getattr(owner, name)

    def paused(*args, **kwargs):
        result = original(*args, **kwargs) if after else None
        if not gate.is_set():
            gate.set()
            release.wait(10)
        return result if after else original(*args, **kwargs)

    monkeypatch.setattr(owner, name, paused)
    return gate, release


def _race(first_fn, second_fn, gate, release, monkeypatch_wait=0.7):
    outcomes = {}
    t1 = threading.Thread(target=lambda: outcomes.__setitem__("first", first_fn()))
    t1.start()
    assert gate.wait(10)
    t2 = threading.Thread(target=lambda: outcomes.__setitem__("second", second_fn()))
    t2.start()
    time.sleep(monkeypatch_wait)
    release.set()
    t1.join(30)
    t2.join(30)
    return outcomes


@pytest.mark.parametrize("other", ["admin_delete", "mfa_login"])
def test_a_reset_with_a_second_factor_and_another_writer_at_once(
    committed, deps, caller, now, monkeypatch, other
):
    user_id = _account(committed, deps, now)
    secret = _with_totp(committed, deps, caller, now, user_id)
    with committed.begin() as session:
        link = user_tokens.issue(
            session, user_id=user_id, purpose="reset_password", ttl=timedelta(hours=1), now=now
        )
        mfa = issue_mfa_token(session, user_id=user_id, now=now)

    def reset(s):
        accounts.reset_password(
            s,
            deps,
            token=link,
            new_password=NEW,
            proof=factors.FactorProof(totp_code=otp.code_at(secret, otp.step_at(now))),
            client=caller,
            now=now,
        )

    def second(s):
        if other == "admin_delete":
            admin.delete_user(s, admin=OPS, user_id=user_id, client=caller, now=now)
        else:
            login.complete_mfa(
                s,
                deps,
                mfa_token=mfa,
                proof=factors.FactorProof(totp_code=otp.code_at(secret, otp.step_at(now) + 1)),
                client=caller,
                now=now,
            )

    gate, release = _pause_at(monkeypatch, accounts, "set_password")
    outcomes = _race(
        lambda: _attempt(committed, reset), lambda: _attempt(committed, second), gate, release
    )
    assert not any(v.startswith("500") for v in outcomes.values()), outcomes


def test_totp_confirm_attempts_overshoot(committed, deps, caller, now):
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        pending = totp.enroll(session, deps, user_id=user_id, name=None, client=caller, now=now)
        session.execute(update(TotpFactor).values(confirm_attempts=totp.MAX_CONFIRM_ATTEMPTS - 2))
    valid = {otp.code_at(pending.secret, otp.step_at(now) + o) for o in (-1, 0, 1)}
    wrong = next(c for c in (f"{i:06d}" for i in range(1000)) if c not in valid)
    outcomes = _at_once(
        committed,
        lambda s: totp.confirm(
            s,
            deps,
            user_id=user_id,
            factor_id=pending.factor_id,
            code=wrong,
            client=caller,
            now=now,
        ),
    )
    with committed() as session:
        left = session.execute(select(TotpFactor.id, TotpFactor.confirm_attempts)).all()
    assert outcomes.count("invalid_code") <= 2, outcomes  # the 9th and 10th wrong codes
    assert left == [], "the pending factor outlived MAX_CONFIRM_ATTEMPTS wrong codes"


def _options(committed, deps, now, user_id):
    with committed.begin() as session:
        return webauthn_registration.registration_options(
            session, deps, user_id=user_id, name="key", now=now
        )


def _register(committed, deps, caller, now, user_id, key):
    credential = key.register(_options(committed, deps, now, user_id))
    with committed.begin() as session:
        webauthn_registration.register(
            session, deps, user_id=user_id, credential=credential, name=None, client=caller, now=now
        )


def test_webauthn_registration_vs_admin_delete(committed, deps, caller, now, monkeypatch):
    user_id = _account(committed, deps, now)
    key = SoftAuthenticator()
    credential = key.register(_options(committed, deps, now, user_id))
    gate, release = _pause_at(monkeypatch, webauthn, "model_refusal")
    outcomes = _race(
        lambda: _attempt(
            committed,
            lambda s: webauthn_registration.register(
                s, deps, user_id=user_id, credential=credential, name=None, client=caller, now=now
            ),
        ),
        _admin_delete(committed, user_id, caller, now),
        gate,
        release,
    )
    assert not any(v.startswith("500") for v in outcomes.values()), outcomes


def _passkey_login(committed, deps, caller, now, opts, credential) -> Callable[[], str]:
    """A passkey login with ``credential`` (an answer to ``opts``), in its own transaction."""
    return lambda: _attempt(
        committed,
        lambda s: passkeys.login_with_passkey(
            s,
            deps,
            challenge_id=opts.challenge_id,
            credential=credential,
            client=caller,
            now=now,
        ),
    )


def test_passkey_login_vs_admin_delete(committed, deps, caller, now, monkeypatch):
    user_id = _account(committed, deps, now)
    key = SoftAuthenticator()
    _register(committed, deps, caller, now, user_id, key)
    with committed.begin() as session:
        opts = passkeys.passkey_options(session, deps, client=caller, now=now)
    credential = key.assertion(opts.options)
    gate, release = _pause_at(monkeypatch, login, "finish_login")
    outcomes = _race(
        _passkey_login(committed, deps, caller, now, opts, credential),
        _admin_delete(committed, user_id, caller, now),
        gate,
        release,
    )
    assert not any(v.startswith("500") for v in outcomes.values()), outcomes


def test_a_passkey_login_and_its_replay_at_once(committed, deps, caller, now, monkeypatch):
    # Both find the challenge unused; the replay waits for the account, then for the row that
    # spends the challenge, and is refused as a replay before it reads the counter the login
    # advanced (which it would take for a cloned key's: a false alarm, mailed).
    user_id = _account(committed, deps, now)
    key = SoftAuthenticator(counter=True)
    _register(committed, deps, caller, now, user_id, key)
    with committed.begin() as session:
        opts = passkeys.passkey_options(session, deps, client=caller, now=now)
    credential = key.assertion(opts.options)

    attempt = _passkey_login(committed, deps, caller, now, opts, credential)
    gate, release = _pause_at(monkeypatch, login, "finish_login")
    outcomes = _race(attempt, attempt, gate, release)
    assert outcomes == {"first": "ok", "second": "invalid_challenge"}, outcomes
    with committed() as session:
        assert session.scalar(select(WebauthnCredential.counter_regression_at)) is None


def test_totp_enroll_while_admin_delete_commits(committed, deps, caller, now):
    user_id = _account(committed, deps, now)
    gate, release = threading.Event(), threading.Event()

    def deletion(s):
        admin.delete_user(s, admin=OPS, user_id=user_id, client=caller, now=now)
        gate.set()
        release.wait(10)

    outcomes = {}
    t1 = threading.Thread(
        target=lambda: outcomes.__setitem__("delete", _attempt(committed, deletion))
    )
    t1.start()
    assert gate.wait(10)
    t2 = threading.Thread(
        target=lambda: outcomes.__setitem__(
            "enroll",
            _attempt(
                committed,
                lambda s: totp.enroll(s, deps, user_id=user_id, name=None, client=caller, now=now),
            ),
        )
    )
    t2.start()
    time.sleep(0.7)
    release.set()
    t1.join(30)
    t2.join(30)
    assert outcomes == {"delete": "ok", "enroll": "unauthenticated"}, outcomes


def test_a_totp_confirmation_while_the_enrollment_is_cancelled(
    committed, deps, caller, now, monkeypatch
):
    # The right code was checked, then the enrollment was cancelled (a removal of a pending
    # factor takes no lock on PostgreSQL): the confirmation finds no such factor (404), it
    # does not answer that the factor is already confirmed.
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        pending = totp.enroll(session, deps, user_id=user_id, name=None, client=caller, now=now)
    gate, release = _pause_at(monkeypatch, totp, "activate")
    outcomes = _race(
        lambda: _attempt(
            committed,
            lambda s: totp.confirm(
                s,
                deps,
                user_id=user_id,
                factor_id=pending.factor_id,
                code=otp.code_at(pending.secret, otp.step_at(now)),
                client=caller,
                now=now,
            ),
        ),
        lambda: _attempt(committed, _removal(deps, caller, now, user_id, pending.factor_id)),
        gate,
        release,
    )
    with committed() as session:
        left = session.scalars(select(TotpFactor.id)).all()
    # SQLite serialises the two: the confirmation goes first, the removal then removes the
    # active factor.
    assert outcomes in (
        {"first": "not_found", "second": "ok"},
        {"first": "ok", "second": "ok"},
    ), outcomes
    assert left == []


def test_an_enrollment_confirmation_while_its_factor_is_cancelled(
    committed, deps, caller, now, monkeypatch
):
    # The right code was checked, then the pending factor was cancelled: the confirmation
    # answers 404 and its enrollment token is not spent (the login it stands for can still
    # finish with another factor).
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        token = issue_mfa_token(session, user_id=user_id, now=now, purpose="mfa_enrollment")
        pending = totp.enroll(session, deps, user_id=user_id, name=None, client=caller, now=now)

    def confirmed(s, enrolled):
        mfa_management.confirm_totp_with_enrollment(
            s,
            deps,
            enrollment_token=token,
            factor_id=enrolled.factor_id,
            code=otp.code_at(enrolled.secret, otp.step_at(now)),
            client=caller,
            now=now,
        )

    gate, release = _pause_at(monkeypatch, totp, "activate")
    outcomes = _race(
        lambda: _attempt(committed, lambda s: confirmed(s, pending)),
        lambda: _attempt(committed, _removal(deps, caller, now, user_id, pending.factor_id)),
        gate,
        release,
    )
    # SQLite serialises the two: the confirmation goes first and spends the token.
    assert outcomes in (
        {"first": "not_found", "second": "ok"},
        {"first": "ok", "second": "ok"},
    ), outcomes
    if outcomes["first"] == "not_found":
        with committed() as session:
            spent = session.scalar(select(UserToken.used_at).where(UserToken.user_id == user_id))
        assert spent is None
        with committed.begin() as session:
            another = totp.enroll(session, deps, user_id=user_id, name=None, client=caller, now=now)
        assert _attempt(committed, lambda s: confirmed(s, another)) == "ok"


def test_rename_vs_remove(committed, deps, caller, now, monkeypatch):
    user_id = _account(committed, deps, now)
    _with_totp(committed, deps, caller, now, user_id)
    with committed() as session:
        factor_id = session.scalar(select(TotpFactor.id))
    gate, release = threading.Event(), threading.Event()
    original = mfa_management._find

    def slow(*args, **kwargs):
        found = original(*args, **kwargs)
        if not gate.is_set():
            gate.set()
            release.wait(10)
        return found

    monkeypatch.setattr(mfa_management, "_find", slow)
    outcomes = {}
    t1 = threading.Thread(
        target=lambda: outcomes.__setitem__(
            "rename",
            _attempt(
                committed,
                lambda s: mfa_management.rename(
                    s,
                    deps,
                    user_id=user_id,
                    factor_id=factor_id,
                    name="Phone",
                    client=caller,
                    now=now,
                ),
            ),
        )
    )
    t1.start()
    assert gate.wait(10)
    outcomes["remove"] = _attempt(committed, _removal(deps, caller, now, user_id, factor_id))
    release.set()
    t1.join(30)
    assert not any(v.startswith("500") for v in outcomes.values()), outcomes


@pytest.mark.parametrize("kind", ["totp", "webauthn"])
def test_a_rename_while_the_removal_of_that_factor_commits(
    committed, deps, caller, now, monkeypatch, kind
):
    # Without the account's lock the rename read the factor the removal had deleted but not
    # yet committed, and its UPDATE, once the removal committed, matched no row: a 500.
    user_id = _account(committed, deps, now)
    if kind == "totp":
        _with_totp(committed, deps, caller, now, user_id)
        model: Any = TotpFactor
    else:
        _register(committed, deps, caller, now, user_id, SoftAuthenticator())
        model = WebauthnCredential
    with committed() as session:
        factor_id = session.scalar(select(model.id))
    # The removal pauses after deleting the factor, holding the account's lock.
    gate, release = _pause_at(monkeypatch, notices, "send")
    outcomes = _race(
        lambda: _attempt(committed, _removal(deps, caller, now, user_id, factor_id)),
        lambda: _attempt(
            committed,
            lambda s: mfa_management.rename(
                s,
                deps,
                user_id=user_id,
                factor_id=factor_id,
                name="Renamed",
                client=caller,
                now=now,
            ),
        ),
        gate,
        release,
    )
    assert outcomes == {"first": "ok", "second": "not_found"}, outcomes


def test_an_enrollment_token_confirming_while_the_owner_adds_a_factor(committed, deps, caller, now):
    # The guard of the enrollment routes checked the token before the owner's factor was
    # committed; the confirmation looks again once it holds the account.
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        token = issue_mfa_token(session, user_id=user_id, now=now, purpose="mfa_enrollment")
        theirs, owners = (
            totp.enroll(session, deps, user_id=user_id, name=name, client=caller, now=now)
            for name in ("Attacker", "Phone")
        )
    step = otp.step_at(now)
    owner = committed()
    owner.begin()
    totp.confirm(
        owner,
        deps,
        user_id=user_id,
        factor_id=owners.factor_id,
        code=otp.code_at(owners.secret, step),
        client=caller,
        now=now,
    )  # not committed yet
    outcomes = {}
    thread = threading.Thread(
        target=lambda: outcomes.__setitem__(
            "enrollment",
            _attempt(
                committed,
                lambda s: mfa_management.confirm_totp_with_enrollment(
                    s,
                    deps,
                    enrollment_token=token,
                    factor_id=theirs.factor_id,
                    code=otp.code_at(theirs.secret, step),
                    client=caller,
                    now=now,
                ),
            ),
        )
    )
    thread.start()
    thread.join(0.7)  # it waits for the owner's lock
    owner.commit()
    owner.close()
    thread.join(30)

    assert outcomes == {"enrollment": "invalid_token"}, outcomes
    with committed() as session:
        assert [f.name for f in totp.list_factors(session, user_id=user_id)] == ["Phone"]


def test_reset_request_job_vs_admin_delete(committed, deps, caller, now, monkeypatch):
    user_id = _account(committed, deps, now)
    with committed.begin() as session:  # an earlier link, still unused
        user_tokens.issue(
            session, user_id=user_id, purpose="reset_password", ttl=timedelta(hours=1), now=now
        )
    gate, release = _pause_at(monkeypatch, user_tokens, "new_token")
    outcomes = _race(
        lambda: _attempt(
            committed,
            lambda s: accounts.process_reset_request(s, deps, {"email": "ada@example.com"}, now),
        ),
        _admin_delete(committed, user_id, caller, now),
        gate,
        release,
    )
    assert not any(v.startswith("500") for v in outcomes.values()), outcomes


@pytest.mark.parametrize("counter", [True, False])
def test_passkey_login_vs_the_removal_of_that_passkey(
    committed, deps, caller, now, monkeypatch, counter
):
    user_id = _account(committed, deps, now)
    key = SoftAuthenticator(counter=counter)
    _register(committed, deps, caller, now, user_id, key)
    with committed() as session:
        factor_id = session.scalar(select(WebauthnCredential.id))
    with committed.begin() as session:
        opts = passkeys.passkey_options(session, deps, client=caller, now=now)
    credential = key.assertion(opts.options)
    # The removal pauses after deleting the credential, holding the account's lock.
    gate, release = _pause_at(monkeypatch, notices, "send")
    outcomes = _race(
        lambda: _attempt(committed, _removal(deps, caller, now, user_id, factor_id)),
        _passkey_login(committed, deps, caller, now, opts, credential),
        gate,
        release,
    )
    assert outcomes == {"first": "ok", "second": "invalid_credentials"}, outcomes


def _expired_challenge(committed, deps, now, user_id):
    """Registration options of long ago: the account has a challenge the next sweep deletes."""
    _options(committed, deps, now - deps.settings.webauthn_challenge_ttl * 2, user_id)


def test_webauthn_options_sweep_vs_admin_delete(committed, deps, caller, now, monkeypatch):
    # The options sweep the account's expired challenge; the deletion, its cascade.
    user_id = _account(committed, deps, now)
    _expired_challenge(committed, deps, now, user_id)
    gate, release = _pause_at(monkeypatch, webauthn, "sweep_challenges", after=True)
    outcomes = _race(
        lambda: _attempt(
            committed,
            lambda s: webauthn_registration.registration_options(
                s, deps, user_id=user_id, name="key", now=now
            ),
        ),
        _admin_delete(committed, user_id, caller, now),
        gate,
        release,
    )
    assert outcomes == {"first": "ok", "second": "ok"}, outcomes


def test_webauthn_registration_at_its_expiry_vs_new_options(
    committed, deps, caller, now, monkeypatch
):
    # The registration still holds a live challenge; the new options, a second later by their
    # clock, would sweep it as expired while the registration waits to spend it.
    user_id = _account(committed, deps, now)
    credential = SoftAuthenticator().register(_options(committed, deps, now, user_id))
    ttl = deps.settings.webauthn_challenge_ttl
    gate, release = _pause_at(monkeypatch, webauthn, "consume_challenge")
    outcomes = _race(
        lambda: _attempt(
            committed,
            lambda s: webauthn_registration.register(
                s,
                deps,
                user_id=user_id,
                credential=credential,
                name=None,
                client=caller,
                now=now + ttl - timedelta(seconds=1),
            ),
        ),
        lambda: _attempt(
            committed,
            lambda s: webauthn_registration.registration_options(
                s, deps, user_id=user_id, name="second", now=now + ttl + timedelta(seconds=1)
            ),
        ),
        gate,
        release,
    )
    assert outcomes == {"first": "ok", "second": "ok"}, outcomes


@pytest.mark.parametrize("options", ["registration", "mfa"])
def test_webauthn_options_while_admin_delete_commits(
    committed, deps, caller, now, monkeypatch, options
):
    user_id = _account(committed, deps, now)
    _register(committed, deps, caller, now, user_id, SoftAuthenticator())
    with committed.begin() as session:
        token = issue_mfa_token(session, user_id=user_id, now=now)

    def ask(s):
        if options == "registration":
            webauthn_registration.registration_options(
                s, deps, user_id=user_id, name="key", now=now
            )
        else:
            webauthn.mfa_options(s, deps, mfa_token=token, client=caller, now=now)

    gate, release = _pause_at(monkeypatch, audit, "record")  # the deletion, after its cascade
    outcomes = _race(
        _admin_delete(committed, user_id, caller, now),
        lambda: _attempt(committed, ask),
        gate,
        release,
    )
    refused = "unauthenticated" if options == "registration" else "invalid_token"
    assert outcomes == {"first": "ok", "second": refused}, outcomes


def test_an_enrollment_registration_losing_its_key_to_another_account(committed, deps, caller, now):
    # Two accounts register the same credential id at once; the one registering with an
    # enrollment token checked it was free before the other committed, and loses at the
    # insert: 409, and its token is not spent (the login it stands for can still finish).
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        other = User(email="bob@example.com", created_at=now, updated_at=now)
        session.add(other)
        session.flush()
        other_id = other.id
        token = issue_mfa_token(session, user_id=user_id, now=now, purpose="mfa_enrollment")
    same = b"one credential id, two accounts"
    mine = SoftAuthenticator().register(_options(committed, deps, now, user_id), credential_id=same)
    theirs = SoftAuthenticator().register(
        _options(committed, deps, now, other_id), credential_id=same
    )
    owner = committed()
    owner.begin()
    webauthn_registration.register(
        owner, deps, user_id=other_id, credential=theirs, name=None, client=caller, now=now
    )  # not committed yet
    owner.flush()

    def enrolled(s, credential):
        webauthn_registration.register_with_enrollment(
            s,
            deps,
            enrollment_token=token,
            credential=credential,
            name=None,
            client=caller,
            now=now,
        )

    outcomes = {}
    thread = threading.Thread(
        target=lambda: outcomes.__setitem__(
            "enrollment", _attempt(committed, lambda s: enrolled(s, mine))
        )
    )
    thread.start()
    thread.join(0.7)  # it waits on the other account's key (or, on SQLite, its transaction)
    owner.commit()
    owner.close()
    thread.join(30)

    assert outcomes == {"enrollment": "credential_exists"}, outcomes
    with committed() as session:
        assert session.scalar(select(UserToken.used_at).where(UserToken.user_id == user_id)) is None
    another = SoftAuthenticator().register(_options(committed, deps, now, user_id))
    assert _attempt(committed, lambda s: enrolled(s, another)) == "ok"


LATER = timedelta(minutes=1)  # the reset and the notice run come after the campaign


def _flagged_with_a_link(committed, deps, caller, now) -> tuple[str, str, str]:
    """An account a finished breach response flagged, whose notice is queued and not sent,
    and which asked for a reset link ("forgot password") meanwhile: (user id, campaign id,
    the link's token)."""
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        created = breach.create_campaign(
            session,
            deps,
            request=breach.CampaignRequest(
                reason="INC-7",
                selector="user_ids",
                mode="invalidate",
                targets=breach_lists.parse_target_list("user_ids", [user_id]),
            ),
            creator=breach.Creator(name="tests"),
            client=caller,
            now=now,
        )
    campaign_id = created.campaign.id
    with committed.begin() as session:
        while not breach_batches.run_next_batch(
            session, deps, campaign_id=campaign_id, now=now
        ).finished:
            pass
    with committed.begin() as session:
        link = user_tokens.issue(
            session, user_id=user_id, purpose="reset_password", ttl=timedelta(hours=1), now=now
        )
    return user_id, campaign_id, link


def _notice_run(committed, deps, campaign_id, now):
    """A run of the campaign's notice job, in its own transaction, for ``_race``."""
    return lambda: _attempt(
        committed,
        lambda s: breach_notices.send_notices(
            s, deps, campaign_id=campaign_id, after="", settled=True, upto=None, now=now
        ),
    )


def _reset(committed, deps, caller, now, link, proof=factors.FactorProof()):  # noqa: B008
    """The reset with ``link`` (and ``proof``), in its own transaction, for ``_race``."""
    return lambda: _attempt(
        committed,
        lambda s: accounts.reset_password(
            s,
            deps,
            token=link,
            new_password=NEW,
            proof=proof,
            client=caller,
            now=now,
        ),
    )


@pytest.mark.parametrize("first", ["reset", "notice_run"])
def test_a_reset_and_the_breach_notice_run_for_that_account_at_once(
    committed, deps, caller, now, monkeypatch, first
):
    user_id, campaign_id, link = _flagged_with_a_link(committed, deps, caller, now)
    reset = _reset(committed, deps, caller, now + LATER, link)
    notices = _notice_run(committed, deps, campaign_id, now + LATER)
    if first == "reset":  # paused with its link spent, hashing the new password
        gate, release = _pause_at(monkeypatch, accounts, "hash_password")
        outcomes = _race(reset, notices, gate, release)
    else:  # paused with the account claimed, before its reset token is issued
        gate, release = _pause_at(monkeypatch, breach_notices, "_notify")
        outcomes = _race(notices, reset, gate, release)

    with committed() as session:
        target = session.get(BreachTarget, (campaign_id, user_id))
    if first == "reset":
        # The run waited for the reset: a new password needs no notice any more.
        assert outcomes == {"first": "ok", "second": "ok"}, outcomes
        assert (target.reset_at, target.notified_at) == (now + LATER, None)
    else:
        # The notice's link replaced the one the reset was opened with.
        assert outcomes == {"first": "ok", "second": "invalid_token"}, outcomes
        assert (target.notified_at, target.reset_at) == (now + LATER, None)


def _walks_or_skip(committed: Any) -> None:
    """Skip the test unless its database is PostgreSQL, the one where campaigns walk."""
    with committed() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("the page walk is PostgreSQL's")


def _walked_campaign(committed, deps, caller, now, **choices) -> tuple[str, Any]:
    """An `all` campaign (PostgreSQL: walked page by page), and its next batch as a function
    of a session, run an instant after ``now``: (campaign id, batch)."""
    with committed.begin() as session:
        created = breach.create_campaign(
            session,
            deps,
            request=breach.CampaignRequest(
                reason="INC-7", selector="all", mode="invalidate", **choices
            ),
            creator=breach.Creator(name="tests"),
            client=caller,
            now=now,
        )
    campaign_id = created.campaign.id

    def batch(s):
        breach_batches.run_next_batch(s, deps, campaign_id=campaign_id, now=now + LATER)

    return campaign_id, batch


def _set_password(deps, caller, user_id, at):
    """The account's own new password (a reset's or a change's work), for ``_attempt``."""

    def work(s):
        user = accounts.lock_account(s, user_id)
        accounts.set_password(
            s, deps, user=user, password=NEW, client=caller, now=at, event="password.reset"
        )

    return work


def test_a_reset_and_the_apply_batch_that_signs_the_account_out_at_once(
    committed, deps, caller, now, monkeypatch
):
    # After a walk, apply batches revoke the flagged accounts' sessions and login steps
    # without the accounts' locks; a reset revokes the same rows under the account's lock.
    # Both must take the login steps before the sessions.
    _walks_or_skip(committed)
    user_id = _account(committed, deps, now)
    with committed.begin() as session:
        session.add(
            Session(
                user_id=user_id,
                created_at=now,
                last_used_at=now,
                auth_time=now,
                amr="pwd",
                expires_at=now + timedelta(days=1),
            )
        )
        issue_mfa_token(session, user_id=user_id, now=now)
    _, batch = _walked_campaign(committed, deps, caller, now, revoke_sessions=True)
    _attempt(committed, batch)  # the walk flags the account
    _attempt(committed, batch)  # the enrolment records it
    reset = _set_password(deps, caller, user_id, now + LATER)

    # The apply batch, paused once it has revoked the sessions (holding their rows).
    gate, release = _pause_at(monkeypatch, breach_batches, "revoke_sessions", after=True)
    outcomes = _race(
        partial(_attempt, committed, batch), partial(_attempt, committed, reset), gate, release
    )

    assert outcomes == {"first": "ok", "second": "ok"}, outcomes
    with committed() as session:
        assert session.scalar(select(Session.revoked_at).where(Session.user_id == user_id))


@pytest.mark.parametrize("first", ["enrolment", "reset"])
def test_a_reset_and_the_enrolment_after_the_walk_at_once(
    committed, deps, caller, now, monkeypatch, first
):
    # The walk flagged the account. Its reset writes the account's target row (the enrolment
    # has not), and the enrolment writes every account's: whichever writes it first, the
    # other waits for it and leaves it, and the campaign counts the account once as flagged
    # and once as reset.
    _walks_or_skip(committed)
    user_id = _account(committed, deps, now)
    campaign_id, batch = _walked_campaign(committed, deps, caller, now)
    _attempt(committed, batch)  # the walk flags the account
    enrolment = partial(_attempt, committed, batch)
    reset = partial(_attempt, committed, _set_password(deps, caller, user_id, now + LATER))

    if first == "enrolment":  # paused with its rows written
        gate, release = _pause_at(monkeypatch, breach_walk, "enroll", after=True)
        outcomes = _race(enrolment, reset, gate, release)
    else:  # paused with the account's row written
        gate, release = _pause_at(monkeypatch, breach_walk, "record_walked", after=True)
        outcomes = _race(reset, enrolment, gate, release)

    assert outcomes == {"first": "ok", "second": "ok"}, outcomes
    with committed.begin() as session:
        while not breach_batches.run_next_batch(
            session, deps, campaign_id=campaign_id, now=now + LATER
        ).finished:
            pass
    with committed() as session:
        view = breach.get_campaign(session, campaign_id=campaign_id)
        assert (view.status, view.processed, view.completed_resets) == ("completed", 1, 1)


@pytest.mark.parametrize("paused_after", ["reset_second_factors", "revoke_sessions"])
def test_a_reset_with_a_totp_code_and_the_apply_batch_that_removes_it_at_once(
    committed, deps, caller, now, monkeypatch, paused_after
):
    # The batch removes the account's factors and revokes its login steps and sessions,
    # without its lock; the reset writes its TOTP factor (the code's step), then the same.
    # Both take the account's target row first: the batch as it records that it removes the
    # factors, the reset before it reads them.
    _walks_or_skip(committed)
    user_id = _account(committed, deps, now)
    secret = _with_totp(committed, deps, caller, now, user_id)
    campaign_id, batch = _walked_campaign(
        committed, deps, caller, now, revoke_sessions=True, reset_mfa=True
    )
    _attempt(committed, batch)  # the walk flags the account
    _attempt(committed, batch)  # the enrolment records it
    with committed.begin() as session:
        link = user_tokens.issue(
            session, user_id=user_id, purpose="reset_password", ttl=timedelta(hours=1), now=now
        )
    code = otp.code_at(secret, otp.step_at(now + LATER))
    proof = factors.FactorProof(totp_code=code)

    gate, release = _pause_at(monkeypatch, breach_batches, paused_after, after=True)
    outcomes = _race(
        partial(_attempt, committed, batch),
        _reset(committed, deps, caller, now + LATER, link, proof),
        gate,
        release,
    )

    # The factor is gone by the time the reset reads it: the reset needs none any more.
    assert outcomes == {"first": "ok", "second": "ok"}, outcomes
    # The notice (your password no longer works) is withdrawn; the removed factors are mailed.
    assert _notice_run(committed, deps, campaign_id, now + LATER)() == "ok"
    with committed() as session:
        assert session.scalar(select(TotpFactor.id).where(TotpFactor.user_id == user_id)) is None
        mailed = [
            outbox.payload_of(deps.keyring, message)
            for message in session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == "email")
            )
        ]
    notices_ = [m["subject"] for m in mailed if m["subject"].startswith("Security notice")]
    assert notices_ == ["Security notice: your two-step verification was removed"], mailed
    assert {m["to"] for m in mailed} == {"ada@example.com"}
