"""TOTP factors on a real database: enrollment, confirmation, the login check, replay, storage
and key rotation."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from authsvc.cli import main as cli
from authsvc.crypto import totp as otp
from authsvc.crypto.keyring import DecryptionFailed, Keyring, generate_key_spec
from authsvc.db import make_engine, make_sessionmaker
from authsvc.errors import (
    Conflict,
    FactorLimitReached,
    InvalidCode,
    InvalidMfa,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from authsvc.models import AuditEvent, OutboxMessage, TotpFactor, User
from authsvc.schema import upgrade
from authsvc.services import factors, outbox, signing, totp
from authsvc.services.context import Deps


def enroll(db_session, deps, user, caller, now, name=None):
    return totp.enroll(db_session, deps, user_id=user.id, name=name, client=caller, now=now)


def confirmed(db_session, deps, user, caller, now):
    """An active factor whose confirming step is the one before ``now``'s."""
    pending = enroll(db_session, deps, user, caller, now)
    step = otp.step_at(now) - 1
    totp.confirm(
        db_session,
        deps,
        user_id=user.id,
        factor_id=pending.factor_id,
        code=otp.code_at(pending.secret, step),
        client=caller,
        now=now,
    )
    return pending


def test_enroll_creates_a_pending_factor(db_session, deps, make_user, caller, now):
    user = make_user(email="grace@example.com")
    pending = enroll(db_session, deps, user, caller, now, name="  Work   phone ")
    assert pending.name == "Work phone"
    assert pending.expires_at == now + deps.settings.totp_pending_ttl
    assert pending.otpauth_uri.startswith("otpauth://totp/authsvc:grace%40example.com?")
    assert f"secret={pending.secret}" in pending.otpauth_uri
    assert "issuer=authsvc" in pending.otpauth_uri
    assert pending.qr_svg.startswith("<svg") and pending.qr_svg.endswith("</svg>")
    assert not totp.has_active(db_session, user_id=user.id)
    assert totp.list_factors(db_session, user_id=user.id) == []
    assert factors.methods_for(db_session, user_id=user.id) == ()


def test_the_secret_is_not_in_the_database_row(
    db_session, deps, make_user, caller, now, connection
):
    user = make_user()
    pending = enroll(db_session, deps, user, caller, now)
    db_session.flush()
    row = (
        connection.execute(
            text("SELECT * FROM totp_factors WHERE id = :id"), {"id": pending.factor_id}
        )
        .mappings()
        .one()
    )
    raw = b"".join(
        value if isinstance(value, bytes) else str(value).encode()
        for value in row.values()
        if value is not None
    )
    secret_bytes = base64.b32decode(pending.secret)
    assert pending.secret.encode() not in raw
    assert pending.secret.lower().encode() not in raw
    assert secret_bytes not in raw
    assert base64.b64encode(secret_bytes) not in raw
    assert bytes(row["secret_ciphertext"]).hex().encode() not in pending.secret.encode()
    # It is AES-GCM under the primary key, bound to the row id.
    blob = bytes(row["secret_ciphertext"])
    assert deps.keyring.key_id_of(blob) == deps.keyring.primary_kid
    plain = deps.keyring.decrypt(blob, associated_data=b"totp-secret:" + pending.factor_id.encode())
    assert plain.decode() == pending.secret
    with pytest.raises(DecryptionFailed):
        deps.keyring.decrypt(blob, associated_data=b"totp-secret:another-row")


def test_confirm_activates_and_issues_recovery_codes_once(db_session, deps, make_user, caller, now):
    user = make_user()
    first = enroll(db_session, deps, user, caller, now, name="Phone")
    result = totp.confirm(
        db_session,
        deps,
        user_id=user.id,
        factor_id=first.factor_id,
        code=otp.code_at(first.secret, otp.step_at(now)),
        client=caller,
        now=now,
    )
    assert result.factor.id == first.factor_id
    assert result.factor.type == "totp"
    assert result.factor.name == "Phone"
    assert result.recovery_codes is not None and len(result.recovery_codes) == 10
    assert totp.has_active(db_session, user_id=user.id)
    assert factors.methods_for(db_session, user_id=user.id) == ("totp", "recovery_code")
    second = enroll(db_session, deps, user, caller, now, name="Tablet")
    again = totp.confirm(
        db_session,
        deps,
        user_id=user.id,
        factor_id=second.factor_id,
        code=otp.code_at(second.secret, otp.step_at(now)),
        client=caller,
        now=now,
    )
    assert again.recovery_codes is None
    names = [f.name for f in totp.list_factors(db_session, user_id=user.id)]
    assert sorted(names) == ["Phone", "Tablet"]


def test_confirm_refuses_wrong_and_malformed_codes(db_session, deps, make_user, caller, now):
    user = make_user()
    pending = enroll(db_session, deps, user, caller, now)
    step = otp.step_at(now)
    wrong = next(
        c
        for c in ("000000", "111111", "222222")
        if c not in {otp.code_at(pending.secret, step + o) for o in (-1, 0, 1)}
    )
    with pytest.raises(InvalidCode):
        totp.confirm(
            db_session,
            deps,
            user_id=user.id,
            factor_id=pending.factor_id,
            code=wrong,
            client=caller,
            now=now,
        )
    for malformed in ("12345", "1234567", "abcdef", "12 34 5"):
        with pytest.raises(InvalidRequest) as caught:
            totp.confirm(
                db_session,
                deps,
                user_id=user.id,
                factor_id=pending.factor_id,
                code=malformed,
                client=caller,
                now=now,
            )
        assert caught.value.extra["field"] == "code"
    row = db_session.get(TotpFactor, pending.factor_id)
    assert row.confirm_attempts == 1  # malformed codes are not guesses
    assert row.confirmed_at is None
    # A code two steps away is outside the window.
    far = otp.code_at(pending.secret, step + 2)
    if far not in {otp.code_at(pending.secret, step + o) for o in (-1, 0, 1)}:
        with pytest.raises(InvalidCode):
            totp.confirm(
                db_session,
                deps,
                user_id=user.id,
                factor_id=pending.factor_id,
                code=far,
                client=caller,
                now=now,
            )


def test_too_many_wrong_confirmations_discard_the_enrollment(
    db_session, deps, make_user, caller, now
):
    user = make_user()
    pending = enroll(db_session, deps, user, caller, now)
    valid = {otp.code_at(pending.secret, otp.step_at(now) + o) for o in (-1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(1000) if f"{n:06d}" not in valid)
    for _ in range(totp.MAX_CONFIRM_ATTEMPTS):
        with pytest.raises(InvalidCode):
            totp.confirm(
                db_session,
                deps,
                user_id=user.id,
                factor_id=pending.factor_id,
                code=wrong,
                client=caller,
                now=now,
            )
    assert db_session.get(TotpFactor, pending.factor_id) is None
    with pytest.raises(NotFound):
        totp.confirm(
            db_session,
            deps,
            user_id=user.id,
            factor_id=pending.factor_id,
            code=otp.code_at(pending.secret, otp.step_at(now)),
            client=caller,
            now=now,
        )


def test_confirm_refuses_expired_foreign_and_active_factors(
    db_session, deps, make_user, caller, now
):
    ada = make_user(email="ada@example.com")
    eve = make_user(email="eve@example.com")
    pending = enroll(db_session, deps, ada, caller, now)
    code = otp.code_at(pending.secret, otp.step_at(now))
    with pytest.raises(NotFound):
        totp.confirm(
            db_session,
            deps,
            user_id=eve.id,
            factor_id=pending.factor_id,
            code=code,
            client=caller,
            now=now,
        )
    later = now + deps.settings.totp_pending_ttl
    with pytest.raises(NotFound):
        totp.confirm(
            db_session,
            deps,
            user_id=ada.id,
            factor_id=pending.factor_id,
            code=otp.code_at(pending.secret, otp.step_at(later)),
            client=caller,
            now=later,
        )
    totp.confirm(
        db_session,
        deps,
        user_id=ada.id,
        factor_id=pending.factor_id,
        code=code,
        client=caller,
        now=now,
    )
    with pytest.raises(Conflict):
        totp.confirm(
            db_session,
            deps,
            user_id=ada.id,
            factor_id=pending.factor_id,
            code=code,
            client=caller,
            now=now,
        )
    with pytest.raises(NotFound):
        totp.confirm(
            db_session,
            deps,
            user_id=ada.id,
            factor_id="no-such-id",
            code=code,
            client=caller,
            now=now,
        )


def test_pending_enrollments_are_capped_and_expire(db_session, deps, make_user, caller, now):
    user = make_user()
    ids = [
        enroll(db_session, deps, user, caller, now + timedelta(seconds=i)).factor_id
        for i in range(5)
    ]
    left = db_session.scalars(select(TotpFactor.id).where(TotpFactor.user_id == user.id)).all()
    assert sorted(left) == sorted(ids[-totp.MAX_PENDING :])
    later = now + deps.settings.totp_pending_ttl + timedelta(minutes=1)
    newest = enroll(db_session, deps, user, caller, later).factor_id
    left = db_session.scalars(select(TotpFactor.id).where(TotpFactor.user_id == user.id)).all()
    assert left == [newest]


def test_factor_limit(db_session, deps, make_user, caller, now):
    limited = dataclasses.replace(
        deps, settings=dataclasses.replace(deps.settings, totp_max_factors=1)
    )
    user = make_user()
    confirmed(db_session, limited, user, caller, now)
    with pytest.raises(FactorLimitReached):
        enroll(db_session, limited, user, caller, now)


def test_enroll_for_an_account_deleted_meanwhile_is_unauthenticated(
    db_session, deps, make_user, caller, now
):
    # The bearer check passed, then the account went (an admin deletion committed): the
    # route answers 401, as every other writer of factors does, not a 404 it does not list.
    user = make_user()
    db_session.delete(user)
    db_session.flush()
    with pytest.raises(Unauthenticated):
        enroll(db_session, deps, user, caller, now)


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "bad\x07name", "zero\u200bwidth"])
def test_enroll_refuses_bad_names(db_session, deps, make_user, caller, now, name):
    user = make_user()
    with pytest.raises(InvalidRequest) as caught:
        enroll(db_session, deps, user, caller, now, name=name)
    assert caught.value.extra["field"] == "name"
    assert db_session.scalars(select(TotpFactor).where(TotpFactor.user_id == user.id)).all() == []


# --- the login check -------------------------------------------------------------------------


def test_verify_accepts_one_step_either_side_once(db_session, deps, make_user, caller, now):
    user = make_user()
    pending = confirmed(db_session, deps, user, caller, now - timedelta(minutes=5))
    step = otp.step_at(now)

    def check(offset):
        return totp.verify_code(
            db_session,
            deps,
            user_id=user.id,
            code=otp.code_at(pending.secret, step + offset),
            client=caller,
            now=now,
        )

    assert check(-1) == "otp"
    with pytest.raises(InvalidMfa):
        check(-1)  # replay of the same step
    assert check(0) == "otp"
    with pytest.raises(InvalidMfa):
        check(-1)  # an earlier step after a later one
    assert check(1) == "otp"
    with pytest.raises(InvalidMfa):
        check(0)
    row = db_session.get(TotpFactor, pending.factor_id)
    assert row.last_used_step == step + 1
    assert row.last_used_at == now
    replays = db_session.scalars(
        select(AuditEvent).where(
            AuditEvent.type == "mfa.totp_replay", AuditEvent.user_id == user.id
        )
    ).all()
    assert len(replays) == 3


def test_verify_refuses_codes_outside_the_window(db_session, deps, make_user, caller, now):
    user = make_user()
    pending = confirmed(db_session, deps, user, caller, now - timedelta(minutes=5))
    step = otp.step_at(now)
    valid = {otp.code_at(pending.secret, step + o) for o in (-1, 0, 1)}
    for offset in (-3, -2, 2, 3):
        code = otp.code_at(pending.secret, step + offset)
        if code in valid:
            continue
        with pytest.raises(InvalidMfa):
            totp.verify_code(db_session, deps, user_id=user.id, code=code, client=caller, now=now)


def test_verify_with_several_factors(db_session, deps, make_user, caller, now):
    user = make_user()
    earlier = now - timedelta(minutes=5)
    phone = confirmed(db_session, deps, user, caller, earlier)
    tablet = confirmed(db_session, deps, user, caller, earlier)
    step = otp.step_at(now)
    assert (
        totp.verify_code(
            db_session,
            deps,
            user_id=user.id,
            code=otp.code_at(tablet.secret, step),
            client=caller,
            now=now,
        )
        == "otp"
    )
    # The step is used for the tablet only; the phone's code of the same step still works.
    assert (
        totp.verify_code(
            db_session,
            deps,
            user_id=user.id,
            code=otp.code_at(phone.secret, step),
            client=caller,
            now=now,
        )
        == "otp"
    )


def test_verify_refuses_malformed_codes_and_users_without_factors(
    db_session, deps, make_user, caller, now
):
    user = make_user()
    with pytest.raises(InvalidMfa):
        totp.verify_code(db_session, deps, user_id=user.id, code="123456", client=caller, now=now)
    for malformed in ("12345", "abcdef", "1234567", ""):
        with pytest.raises(InvalidRequest) as caught:
            totp.verify_code(
                db_session, deps, user_id=user.id, code=malformed, client=caller, now=now
            )
        assert caught.value.extra["field"] == "totp_code"


def test_a_pending_factor_does_not_sign_in(db_session, deps, make_user, caller, now):
    user = make_user()
    pending = enroll(db_session, deps, user, caller, now)
    with pytest.raises(InvalidMfa):
        totp.verify_code(
            db_session,
            deps,
            user_id=user.id,
            code=otp.code_at(pending.secret, otp.step_at(now)),
            client=caller,
            now=now,
        )


def test_the_confirming_step_counts_as_used(db_session, deps, make_user, caller, now):
    user = make_user()
    pending = enroll(db_session, deps, user, caller, now)
    code = otp.code_at(pending.secret, otp.step_at(now))
    totp.confirm(
        db_session,
        deps,
        user_id=user.id,
        factor_id=pending.factor_id,
        code=code,
        client=caller,
        now=now,
    )
    with pytest.raises(InvalidMfa):
        totp.verify_code(db_session, deps, user_id=user.id, code=code, client=caller, now=now)


def test_the_step_claim_is_one_conditional_update(db_session, deps, make_user, caller, now):
    user = make_user()
    pending = confirmed(db_session, deps, user, caller, now)
    step = otp.step_at(now) + 5
    factor = db_session.get(TotpFactor, pending.factor_id)
    claim = totp._claim_step
    assert claim(db_session, factor_id=factor.id, step=step, now=now)
    assert not claim(db_session, factor_id=factor.id, step=step, now=now)
    assert not claim(db_session, factor_id=factor.id, step=step - 1, now=now)
    assert claim(db_session, factor_id=factor.id, step=step + 1, now=now)
    # The loaded row says what was written, and nothing is left to flush.
    assert (factor.last_used_step, factor.last_used_at) == (step + 1, now)
    assert factor not in db_session.dirty
    db_session.expire(factor)
    assert factor.last_used_step == step + 1


# --- across connections: the replay race, and key rotation ------------------------------------


@pytest.fixture
def committed(scratch_database_url):
    """A migrated database of the configured backend whose writes really commit."""
    upgrade(scratch_database_url)
    engine = make_engine(scratch_database_url)
    yield make_sessionmaker(engine), scratch_database_url
    engine.dispose()


def _user_with_factor(factory, deps, caller, now):
    with factory.begin() as session:
        user = User(email="race@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        pending = totp.enroll(
            session, deps, user_id=user.id, name=None, client=caller, now=now - timedelta(minutes=5)
        )
        earlier = now - timedelta(minutes=5)
        totp.confirm(
            session,
            deps,
            user_id=user.id,
            factor_id=pending.factor_id,
            code=otp.code_at(pending.secret, otp.step_at(earlier)),
            client=caller,
            now=earlier,
        )
        return user.id, pending


def test_concurrent_uses_of_one_code_admit_exactly_one(committed, deps, caller, now):
    factory, _ = committed
    user_id, pending = _user_with_factor(factory, deps, caller, now)
    code = otp.code_at(pending.secret, otp.step_at(now))
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def attempt():
        barrier.wait()
        try:
            with factory.begin() as session:
                outcomes.append(
                    totp.verify_code(
                        session, deps, user_id=user_id, code=code, client=caller, now=now
                    )
                )
        except InvalidMfa:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["otp"] + ["refused"] * 5


def test_a_factor_removed_while_its_batch_is_reencrypted_is_skipped(
    committed, deps, caller, now, database_url
):
    # The user removes the factor between the batch's read and its write.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the removal cannot come in between")
    factory, _ = committed
    user_id, _ = _user_with_factor(factory, deps, caller, now)

    class RemovingRing(Keyring):
        def reencrypt(self, blob: bytes, *, associated_data: bytes = b"") -> bytes:
            with factory.begin() as other:
                totp.delete_all(other, user_id=user_id)
            return super().reencrypt(blob, associated_data=associated_data)

    ring = RemovingRing(keys=(("rotated", os.urandom(32)), *deps.keyring.keys))
    with factory.begin() as session:
        done = totp.reencrypt_batch(session, ring, after_id="")

    assert done[0] == 0
    with factory() as session:
        assert session.scalars(select(TotpFactor)).all() == []


def _rotating_to_a_new_key(monkeypatch, url, tmp_path, key_specs) -> str:
    """The environment of a `keys rotate` on ``url``: a new primary key (returned) before the
    old one."""
    new_spec = generate_key_spec("rotated")
    for name in [n for n in os.environ if n.startswith("AUTHSVC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", url)
    monkeypatch.setenv("AUTHSVC_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("AUTHSVC_ENCRYPTION_KEYS", f"{new_spec},{key_specs[0]}")
    return new_spec


def test_keys_rotate_reencrypts_under_the_first_key(
    committed, deps, caller, now, monkeypatch, key_specs, tmp_path
):
    factory, url = committed
    _, pending = _user_with_factor(factory, deps, caller, now)
    with factory.begin() as session:
        outbox.enqueue(
            session, deps.keyring, kind="email", payload={"to": "x@example.com"}, now=now
        )
        signing.ensure_key(session, deps.keyring, now=now)
        queued = len(session.scalars(select(OutboxMessage)).all())
    new_spec = _rotating_to_a_new_key(monkeypatch, url, tmp_path, key_specs)
    result = CliRunner().invoke(cli, ["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert "totp_factors=1" in result.output
    assert "signing_keys=2" in result.output  # the active key and the next one
    assert f"outbox_messages={queued}" in result.output
    only_new = Keyring.from_specs([new_spec])
    with factory() as session:
        row = session.scalars(select(TotpFactor)).one()
        assert only_new.key_id_of(row.secret_ciphertext) == "rotated"
        assert (
            only_new.decrypt(
                row.secret_ciphertext, associated_data=b"totp-secret:" + row.id.encode()
            ).decode()
            == pending.secret
        )
        messages = session.scalars(select(OutboxMessage)).all()
        assert {"to": "x@example.com"} in [outbox.payload_of(only_new, m) for m in messages]
        key = signing.active_key(session, only_new, now=now)
        assert key.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        assert signing.unreadable_key_id(session, only_new) is None  # the next key too
        rotated = session.scalars(
            select(AuditEvent.details).where(AuditEvent.type == "encryption_key.rotated")
        ).one()
        assert json.loads(rotated) == {
            "kid": "rotated", "totp_factors": 1, "signing_keys": 2, "outbox_messages": queued,
        }  # fmt: skip
        with pytest.raises(DecryptionFailed):
            Keyring.from_specs(list(key_specs)).decrypt(
                row.secret_ciphertext, associated_data=b"totp-secret:" + row.id.encode()
            )
    # A second run finds nothing left to do; a ring without the key of a ciphertext cannot
    # rotate it (a ring without its last entry is refused before: see test_cli_keys.py).
    again = CliRunner().invoke(cli, ["keys", "rotate"])
    assert again.exit_code == 0 and "totp_factors=0" in again.output
    with factory.begin() as session:
        session.add(
            TotpFactor(
                id="x" * 22,
                user_id=session.scalars(select(User.id)).one(),
                name="old",
                secret_ciphertext=Keyring.from_specs([generate_key_spec("gone")]).encrypt(
                    b"S", associated_data=b"x"
                ),
                created_at=now,
                confirm_attempts=0,
            )
        )
    broken = CliRunner().invoke(cli, ["keys", "rotate"])
    assert broken.exit_code != 0
    assert "no key opens" in broken.output


def test_verify_after_rotation_with_the_new_ring(
    db_session, deps: Deps, make_user, caller, now, key_specs
):
    user = make_user()
    pending = confirmed(db_session, deps, user, caller, now - timedelta(minutes=5))
    rotated = dataclasses.replace(
        deps, keyring=Keyring.from_specs([generate_key_spec("next"), *key_specs])
    )
    count, _, _ = totp.reencrypt_batch(db_session, rotated.keyring, after_id="")
    assert count >= 1
    assert (
        totp.verify_code(
            db_session,
            rotated,
            user_id=user.id,
            code=otp.code_at(pending.secret, otp.step_at(now)),
            client=caller,
            now=now,
        )
        == "otp"
    )


def test_keys_rotate_moves_everything_else_past_a_factor_no_key_opens(
    committed, deps, caller, now, monkeypatch, key_specs, tmp_path
):
    # A factor whose key is gone (or whose ciphertext was damaged) stopped the rotation at its
    # batch: the factors after it, the signing keys and the outbox stayed under the old key (one
    # rotated out because it leaked, say) and no run could get past it. It is named and left
    # as it is, everything else is moved, and the command fails so that it is not missed.
    factory, url = committed
    user_id, pending = _user_with_factor(factory, deps, caller, now)
    lost = "0" * 22  # first in id order: its batch is the first one
    with factory.begin() as session:
        session.add(
            TotpFactor(
                id=lost,
                user_id=user_id,
                name="old",
                secret_ciphertext=Keyring.from_specs([generate_key_spec("gone")]).encrypt(
                    b"S", associated_data=totp.secret_aad(lost)
                ),
                created_at=now,
                confirmed_at=now,
                confirm_attempts=0,
            )
        )
        outbox.enqueue(
            session, deps.keyring, kind="email", payload={"to": "x@example.com"}, now=now
        )
        signing.ensure_key(session, deps.keyring, now=now)
    new_spec = _rotating_to_a_new_key(monkeypatch, url, tmp_path, key_specs)

    result = CliRunner().invoke(cli, ["keys", "rotate"])

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: 1 TOTP factor that no key opens was left as it is (id {lost}, under key "
        "'gone'): put that key back after the first entry and run `authsvc keys rotate` again"
    )
    only_new = Keyring.from_specs([new_spec])
    with factory() as session:
        moved = session.get(TotpFactor, pending.factor_id)
        assert moved is not None and only_new.key_id_of(moved.secret_ciphertext) == "rotated"
        left = session.get(TotpFactor, lost)
        assert left is not None and only_new.key_id_of(left.secret_ciphertext) == "gone"
        assert signing.unreadable_key_id(session, only_new) is None
        messages = session.scalars(select(OutboxMessage)).all()
        assert {"to": "x@example.com"} in [outbox.payload_of(only_new, m) for m in messages]
        rotated = session.scalars(
            select(AuditEvent.details).where(AuditEvent.type == "encryption_key.rotated")
        ).one()
        assert json.loads(rotated)["totp_factors_left"] == 1
