"""services.signing: key objects cached per database, the active key re-read after its TTL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from authsvc.crypto.tokens import generate_signing_key, public_key_from_jwk
from authsvc.models import SigningKey
from authsvc.services import signing

TTL = timedelta(minutes=10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(signing.time, "monotonic", clock)
    return clock


def test_the_signer_is_the_active_key(db_session, deps, now, clock):
    signing.ensure_key(db_session, deps.keyring, now=now)
    material = signing.active_key(db_session, deps.keyring, now=now)

    signer = signing.signer(db_session, deps.keyring, now=now)

    assert signer.kid == material.kid
    public = public_key_from_jwk(material.public_jwk)
    public.verify(signer.private_key.sign(b"x"), b"x")  # raises if the halves differ
    assert signing.signer(db_session, deps.keyring, now=now) is signer


def test_a_key_made_active_elsewhere_is_used_after_the_ttl(db_session, deps, now, clock):
    signing.ensure_key(db_session, deps.keyring, now=now)
    old = signing.signer(db_session, deps.keyring, now=now)
    # Another process rotates: retire the key and store a new one, behind this cache's back.
    db_session.execute(update(SigningKey).values(retired_at=now))
    material = generate_signing_key("kid-from-elsewhere")
    db_session.add(
        SigningKey(
            kid=material.kid,
            private_key_ciphertext=deps.keyring.encrypt(
                material.private_pem, associated_data=b"signing-key"
            ),
            public_jwk=json.dumps(material.public_jwk),
            created_at=now,
        )
    )
    db_session.flush()

    clock.now += signing.ACTIVE_KEY_TTL_SECONDS - 1
    assert signing.signer(db_session, deps.keyring, now=now).kid == old.kid
    clock.now += 2
    assert signing.signer(db_session, deps.keyring, now=now).kid == "kid-from-elsewhere"
    # The old key stays published, so tokens it signed still verify.
    assert signing.public_key(db_session, old.kid, now=now, token_ttl=TTL) is not None


def test_rotating_here_takes_effect_at_once(db_session, deps, now, clock):
    signing.ensure_key(db_session, deps.keyring, now=now)
    old = signing.signer(db_session, deps.keyring, now=now)

    new_kid = signing.rotate(db_session, deps.keyring, now=now)

    assert new_kid != old.kid
    assert signing.signer(db_session, deps.keyring, now=now).kid == new_kid


def test_a_key_created_on_first_use_is_not_cached(db_session, deps, now, clock):
    first = signing.signer(db_session, deps.keyring, now=now)  # no key yet: created

    again = signing.signer(db_session, deps.keyring, now=now)

    assert again.kid == first.kid
    assert again is not first  # read back from the database, then cached
    assert signing.signer(db_session, deps.keyring, now=now) is again


def test_public_keys_by_kid(db_session, deps, now):
    signing.ensure_key(db_session, deps.keyring, now=now)
    kid = signing.active_key(db_session, deps.keyring, now=now).kid

    key = signing.public_key(db_session, kid, now=now, token_ttl=TTL)

    assert key is not None
    assert signing.public_key(db_session, kid, now=now, token_ttl=TTL) is key
    assert signing.public_key(db_session, "no-such-kid", now=now, token_ttl=TTL) is None


def test_a_retired_key_is_trusted_and_published_only_while_its_tokens_can_live(
    db_session, deps, now, clock
):
    """After a rotation (a leaked key, say) the old key verifies tokens for as long as one it
    signed can still be alive, then neither verifies nor appears in the JWKS."""
    signing.ensure_key(db_session, deps.keyring, now=now)
    old = signing.active_key(db_session, deps.keyring, now=now).kid
    assert signing.public_key(db_session, old, now=now, token_ttl=TTL) is not None  # cached

    new = signing.rotate(db_session, deps.keyring, now=now)
    grace = signing.published_after_retirement(TTL)
    assert grace == TTL + timedelta(seconds=signing.ACTIVE_KEY_TTL_SECONDS + 30)
    clock.now += signing.ACTIVE_KEY_TTL_SECONDS  # the cached entry learns of the retirement
    almost, after = now + grace - timedelta(seconds=1), now + grace

    assert signing.public_key(db_session, old, now=almost, token_ttl=TTL) is not None
    assert set(signing.public_jwks(db_session, now=almost, token_ttl=TTL).keys) == {old, new}
    assert signing.public_key(db_session, old, now=after, token_ttl=TTL) is None
    assert set(signing.public_jwks(db_session, now=after, token_ttl=TTL).keys) == {new}
    assert signing.public_key(db_session, new, now=after, token_ttl=TTL) is not None


def test_a_copy_of_the_jwks_lives_no_longer_than_a_published_key_is_trusted(db_session, deps, now):
    signing.ensure_key(db_session, deps.keyring, now=now)
    short = timedelta(seconds=30)  # a key retired right after a fetch is trusted 120 s more

    assert signing.public_jwks(db_session, now=now, token_ttl=TTL).max_age == signing.JWKS_MAX_AGE
    assert signing.public_jwks(db_session, now=now, token_ttl=short).max_age == (
        signing.published_after_retirement(short)
    )

    signing.rotate(db_session, deps.keyring, now=now)
    grace = signing.published_after_retirement(TTL)
    near_the_end = now + grace - timedelta(seconds=40)

    jwks = signing.public_jwks(db_session, now=near_the_end, token_ttl=TTL)
    assert len(jwks.keys) == 2
    assert jwks.max_age == timedelta(seconds=40)
