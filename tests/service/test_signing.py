"""services.signing: key objects cached per database, the active key re-read after its TTL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from authsvc.crypto.keyring import Keyring, generate_key_spec
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
            activates_at=now,
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

    new_kid = signing.rotate(db_session, deps.keyring, now=now).kid

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

    rotation = signing.rotate(db_session, deps.keyring, now=now)
    new, upcoming = rotation.kid, rotation.next_kid
    grace = signing.published_after_retirement(TTL)
    assert grace == TTL + timedelta(seconds=signing.ACTIVE_KEY_TTL_SECONDS + 30)
    clock.now += signing.ACTIVE_KEY_TTL_SECONDS  # the cached entry learns of the retirement
    almost, after = now + grace - timedelta(seconds=1), now + grace

    assert signing.public_key(db_session, old, now=almost, token_ttl=TTL) is not None
    assert set(signing.public_jwks(db_session, now=almost, token_ttl=TTL).keys) == {
        old,
        new,
        upcoming,
    }
    assert signing.public_key(db_session, old, now=after, token_ttl=TTL) is None
    assert set(signing.public_jwks(db_session, now=after, token_ttl=TTL).keys) == {new, upcoming}
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
    assert len(jwks.keys) == 3  # the retired key, the active one, the next one
    assert jwks.max_age == timedelta(seconds=40)


def test_the_next_key_is_published_before_it_signs_and_a_rotation_promotes_it(
    db_session, deps, now, clock
):
    """Apps that cache the JWKS hold the key a rotation makes active: it was published, as
    the next key, since the rotation before (or since the first key was made)."""
    signing.ensure_key(db_session, deps.keyring, now=now)
    active = signing.signer(db_session, deps.keyring, now=now).kid
    published = list(signing.public_jwks(db_session, now=now, token_ttl=TTL).keys)
    assert len(published) == 2 and published[0] == active  # the signing key first
    [upcoming] = [kid for kid in published if kid != active]

    later = now + timedelta(days=30)
    rotation = signing.rotate(db_session, deps.keyring, now=later)

    assert rotation.kid == upcoming
    assert rotation.published_for == timedelta(days=30)
    assert signing.signer(db_session, deps.keyring, now=later).kid == upcoming
    assert rotation.next_kid not in {active, upcoming}
    assert list(signing.public_jwks(db_session, now=later, token_ttl=TTL).keys) == [
        upcoming,
        rotation.next_kid,
        active,
    ]


def test_a_rotation_can_discard_the_next_key(db_session, deps, now, clock):
    """When the stored keys may have leaked, the next key is no better than the active one:
    it is deleted, neither published nor trusted, and a new key signs at once."""
    signing.ensure_key(db_session, deps.keyring, now=now)
    active = signing.signer(db_session, deps.keyring, now=now).kid
    [upcoming] = set(signing.public_jwks(db_session, now=now, token_ttl=TTL).keys) - {active}
    assert signing.public_key(db_session, upcoming, now=now, token_ttl=TTL) is not None

    rotation = signing.rotate(db_session, deps.keyring, now=now, discard_next=True)

    assert rotation.kid not in {active, upcoming}
    assert rotation.published_for is None
    assert signing.signer(db_session, deps.keyring, now=now).kid == rotation.kid
    assert set(signing.public_jwks(db_session, now=now, token_ttl=TTL).keys) == {
        active,
        rotation.kid,
        rotation.next_kid,
    }
    clock.now += signing.ACTIVE_KEY_TTL_SECONDS  # the cached entry is read again
    assert signing.public_key(db_session, upcoming, now=now, token_ttl=TTL) is None


def test_a_database_from_before_next_keys_gets_one_at_start(db_session, deps, now, clock):
    signing.ensure_key(db_session, deps.keyring, now=now)
    db_session.execute(delete(SigningKey).where(SigningKey.activates_at.is_(None)))
    [only] = signing.public_jwks(db_session, now=now, token_ttl=TTL).keys

    signing.ensure_key(db_session, deps.keyring, now=now)

    keys = signing.public_jwks(db_session, now=now, token_ttl=TTL).keys
    assert len(keys) == 2 and only in keys
    assert signing.signer(db_session, deps.keyring, now=now).kid == only
    # A rotation right after promotes a key published only now: the command warns of it.
    assert signing.rotate(db_session, deps.keyring, now=now).published_for == timedelta(0)


def test_a_ring_that_cannot_open_the_next_key_is_named(db_session, deps, now):
    """A rotation elsewhere makes the next key sign: a process whose ring cannot open it
    would then answer every login 500, so the start-up check looks at it as well."""
    signing.ensure_key(db_session, deps.keyring, now=now)
    other = Keyring.from_specs([generate_key_spec("gone")])
    material = generate_signing_key("next-under-gone")
    db_session.execute(delete(SigningKey).where(SigningKey.activates_at.is_(None)))
    db_session.add(
        SigningKey(
            kid=material.kid,
            private_key_ciphertext=other.encrypt(
                material.private_pem, associated_data=b"signing-key"
            ),
            public_jwk=json.dumps(material.public_jwk),
            created_at=now,
        )
    )
    db_session.flush()

    assert signing.unreadable_key_id(db_session, deps.keyring) == "gone"
    db_session.execute(delete(SigningKey).where(SigningKey.kid == material.kid))
    assert signing.unreadable_key_id(db_session, deps.keyring) is None
