"""Access-token signing keys: created on first use, private half encrypted at rest.

Two keys are live: the active one, which signs, and the next one, which is published in the
JWKS before it signs, so that apps caching the JWKS hold it by the time a rotation promotes it.
A rotation retires the active key and promotes the next (``rotate``).

Key objects are cached in the process, one cache per database binding (engine): public keys
by kid (a kid names one key; whether it was retired is read again every
``ACTIVE_KEY_TTL_SECONDS`` until it is), and the active private key for
``ACTIVE_KEY_TTL_SECONDS``, so a key made active elsewhere (another process) is used for
signing within that time. A retired key stays published, and trusted, only as long as a token
it signed can live (``published_after_retirement``): after a rotation for a leaked key, no
token it signs verifies once that time has passed.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import DecryptionFailed, Keyring
from authsvc.crypto.tokens import (
    CLOCK_LEEWAY_SECONDS,
    InvalidAccessToken,
    Signer,
    SigningKeyMaterial,
    generate_signing_key,
    load_private_key,
    load_signer,
    public_key_from_jwk,
)
from authsvc.db import new_id
from authsvc.errors import SigningKeyUnreadable
from authsvc.models import SigningKey
from authsvc.services import audit
from authsvc.services.context import SYSTEM
from authsvc.services.reencryption import reencrypt_rows

log = logging.getLogger("authsvc.signing")

_AAD = b"signing-key"
ACTIVE_KEY_TTL_SECONDS = 60.0
# The verifier's leeway: a retired key must stay trusted for as long as it accepts its tokens.
CLOCK_LEEWAY = timedelta(seconds=CLOCK_LEEWAY_SECONDS)

_keys = SigningKey.__table__.c
# Signing: activated and not retired. The newest wins should two be (two processes that
# created the first key at once).
_IS_ACTIVE = _keys.retired_at.is_(None) & _keys.activates_at.is_not(None)
_IS_NEXT = _keys.retired_at.is_(None) & _keys.activates_at.is_(None)
_NEWEST_FIRST = (_keys.activates_at.desc(), _keys.created_at.desc(), _keys.kid)
_ACTIVE = (
    select(_keys.kid, _keys.private_key_ciphertext)
    .where(_IS_ACTIVE)
    .order_by(*_NEWEST_FIRST)
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class _Published:
    key: Ed25519PublicKey
    retired_at: datetime | None
    read_at: float  # monotonic


@dataclass
class _KeyCache:
    public: dict[str, _Published] = field(default_factory=dict)
    # (keyring it was decrypted with, signer, monotonic time it is good until)
    active: tuple[Keyring, Signer, float] | None = None


_caches: weakref.WeakKeyDictionary[Any, _KeyCache] = weakref.WeakKeyDictionary()


def _cache(session: DbSession) -> _KeyCache:
    bind = session.get_bind()
    cache = _caches.get(bind)
    if cache is None:
        cache = _caches[bind] = _KeyCache()
    return cache


def active_key(session: DbSession, keyring: Keyring, *, now: datetime) -> SigningKeyMaterial:
    """The key new tokens are signed with (read from the database every time)."""
    row = session.scalar(select(SigningKey).where(_IS_ACTIVE).order_by(*_NEWEST_FIRST).limit(1))
    if row is None:
        row = _first_keys(session, keyring, now=now)
    return _material(row, keyring)


def signer(session: DbSession, keyring: Keyring, *, now: datetime) -> Signer:
    """The active key, loaded; cached for ``ACTIVE_KEY_TTL_SECONDS``."""
    cache = _cache(session)
    clock = time.monotonic()
    if cache.active is not None:
        cached_ring, cached, until = cache.active
        if clock < until and cached_ring == keyring:
            return cached
    row = session.execute(_ACTIVE).first()
    if row is None:
        # Not cached: the transaction that creates it may still roll back.
        return load_signer(_material(_first_keys(session, keyring, now=now), keyring))
    loaded = Signer(
        kid=row.kid,
        private_key=load_private_key(_private_pem(keyring, row.kid, row.private_key_ciphertext)),
    )
    cache.active = (keyring, loaded, clock + ACTIVE_KEY_TTL_SECONDS)
    return loaded


def unreadable_key_id(session: DbSession, keyring: Keyring) -> str | None:
    """The id of the ring key the active or the next signing key is encrypted under, when no
    key of ``keyring`` opens it (a rotation elsewhere makes the next one sign); None when
    both open, or when there is no signing key yet."""
    rows = session.execute(
        select(_keys.private_key_ciphertext).where(_keys.retired_at.is_(None))
    ).all()
    for row in rows:
        try:
            keyring.decrypt(row.private_key_ciphertext, associated_data=_AAD)
        except DecryptionFailed:
            return _ring_kid(keyring, row.private_key_ciphertext)
    return None


def _ring_kid(keyring: Keyring, ciphertext: bytes) -> str:
    """The id of the ring key ``ciphertext`` names, or "?" when it names none legibly."""
    try:
        return keyring.key_id_of(ciphertext)
    except (IndexError, UnicodeDecodeError):
        return "?"


def _material(row: SigningKey, keyring: Keyring) -> SigningKeyMaterial:
    return SigningKeyMaterial(
        kid=row.kid,
        private_pem=_private_pem(keyring, row.kid, row.private_key_ciphertext),
        public_jwk=json.loads(row.public_jwk),
    )


def _private_pem(keyring: Keyring, kid: str, ciphertext: bytes) -> bytes:
    """The signing key, opened; ``SigningKeyUnreadable`` (503) when no key of the ring opens
    it. `serve` and `worker` refuse to start so; a running process meets it when `authsvc keys
    rotate` moved the key under a ring entry it was not restarted with, and every login and
    refresh it answered was a 500 until then."""
    try:
        return keyring.decrypt(ciphertext, associated_data=_AAD)
    except DecryptionFailed:
        log.error(
            "the access-token signing key %s is encrypted under key %r, which this process's "
            "AUTHSVC_ENCRYPTION_KEYS lacks: restart it with the ring `authsvc keys rotate` ran "
            "with",
            kid,
            _ring_kid(keyring, ciphertext),
        )
        raise SigningKeyUnreadable() from None


def published_after_retirement(token_ttl: timedelta) -> timedelta:
    """How long a retired key can still have live tokens: other processes may sign with it
    for ``ACTIVE_KEY_TTL_SECONDS`` after the rotation, each token lives ``token_ttl``, and
    clocks differ a little."""
    return token_ttl + timedelta(seconds=ACTIVE_KEY_TTL_SECONDS) + CLOCK_LEEWAY


def public_key(
    session: DbSession, kid: str, *, now: datetime, token_ttl: timedelta
) -> Ed25519PublicKey | None:
    """The published key named ``kid``, or None when there is none or it was retired longer
    ago than a token lives. Read from the database the first time, and again every
    ``ACTIVE_KEY_TTL_SECONDS`` while the key is not retired."""
    cache = _cache(session)
    clock = time.monotonic()
    entry = cache.public.get(kid)
    if entry is None or (
        entry.retired_at is None and clock >= entry.read_at + ACTIVE_KEY_TTL_SECONDS
    ):
        row = session.execute(
            select(_keys.public_jwk, _keys.retired_at).where(_keys.kid == kid)
        ).first()
        if row is None:
            return None
        try:
            key = entry.key if entry else public_key_from_jwk(json.loads(row.public_jwk))
        except InvalidAccessToken:
            return None
        entry = cache.public[kid] = _Published(key, row.retired_at, clock)
    if entry.retired_at is not None and now >= entry.retired_at + published_after_retirement(
        token_ttl
    ):
        return None
    return entry.key


def _create(
    session: DbSession, keyring: Keyring, *, now: datetime, activates_at: datetime | None
) -> SigningKey:
    material = generate_signing_key(new_id())
    row = SigningKey(
        kid=material.kid,
        private_key_ciphertext=keyring.encrypt(material.private_pem, associated_data=_AAD),
        public_jwk=json.dumps(material.public_jwk),
        created_at=now,
        activates_at=activates_at,
    )
    session.add(row)
    session.flush()
    return row


def _first_keys(session: DbSession, keyring: Keyring, *, now: datetime) -> SigningKey:
    """An active key, and a next one unless there is one; return the active key."""
    if session.scalar(select(_keys.kid).where(_IS_NEXT).limit(1)) is None:
        _create(session, keyring, now=now, activates_at=None)
    return _create(session, keyring, now=now, activates_at=now)


def ensure_key(session: DbSession, keyring: Keyring, *, now: datetime) -> None:
    """An active key and a next key (a database from before next keys has no next one)."""
    if session.scalar(select(_keys.kid).where(_IS_ACTIVE).limit(1)) is None:
        _first_keys(session, keyring, now=now)
    elif session.scalar(select(_keys.kid).where(_IS_NEXT).limit(1)) is None:
        _create(session, keyring, now=now, activates_at=None)


# How long apps may cache the JWKS at most (Cache-Control max-age).
JWKS_MAX_AGE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Jwks:
    keys: dict[str, dict[str, Any]]
    # How long a copy may be kept: never past the end of a published key's trust.
    max_age: timedelta


def public_jwks(session: DbSession, *, now: datetime, token_ttl: timedelta) -> Jwks:
    """Every published key by kid: the active one, the next one, and retired ones while tokens
    they signed may still live (``published_after_retirement``).

    A copy that an app keeps for its max-age would otherwise go on trusting a retired key
    (one rotated out after a leak) for up to that long after authsvc stopped: the copy lives
    no longer than the first published key's trust ends, and no longer than a key retired
    right after it was fetched would be trusted."""
    window = published_after_retirement(token_ttl)
    since = now - window
    rows = session.execute(
        select(_keys.kid, _keys.public_jwk, _keys.activates_at, _keys.retired_at)
        .where((_keys.retired_at.is_(None)) | (_keys.retired_at > since))
        .order_by(*_NEWEST_FIRST)
    ).all()
    max_age = min(JWKS_MAX_AGE, window)
    for row in rows:
        if row.retired_at is not None:
            max_age = min(max_age, max(timedelta(0), row.retired_at + window - now))

    def order(row: Any) -> int:  # the active key first, then the next, then retired ones
        return 2 if row.retired_at is not None else 1 if row.activates_at is None else 0

    ordered = sorted(rows, key=order)  # stable: newest first within each
    return Jwks(keys={row.kid: json.loads(row.public_jwk) for row in ordered}, max_age=max_age)


@dataclass(frozen=True, slots=True)
class Rotation:
    kid: str  # signs from now on
    next_kid: str  # published from now on, signs at the next rotation
    # How long the JWKS had published the new signing key; None when it was made now.
    published_for: timedelta | None


def rotate(
    session: DbSession, keyring: Keyring, *, now: datetime, discard_next: bool = False
) -> Rotation:
    """Retire the active key(s), promote the next key (the one published longest), and make
    a new next key; audited.

    ``discard_next``: the next key is deleted instead (never having signed, nothing needs
    it), for when the stored keys themselves may have leaked; a new key signs at once, one
    that apps' copies of the JWKS do not hold yet."""
    retired = []
    for row in session.scalars(select(SigningKey).where(_IS_ACTIVE)):
        row.retired_at = now
        retired.append(row.kid)
    waiting = list(
        session.scalars(select(SigningKey).where(_IS_NEXT).order_by(_keys.created_at, _keys.kid))
    )
    discarded = []
    if discard_next:
        for row in waiting:
            discarded.append(row.kid)
            session.delete(row)
        waiting = []
    if waiting:
        promoted = waiting[0]
        promoted.activates_at = now
        published_for: timedelta | None = max(timedelta(0), now - promoted.created_at)
    else:
        promoted = _create(session, keyring, now=now, activates_at=now)
        published_for = None
    upcoming = (
        waiting[1] if len(waiting) > 1 else _create(session, keyring, now=now, activates_at=None)
    )
    session.flush()
    _cache(session).active = None
    details: dict[str, Any] = {"kid": promoted.kid, "next_kid": upcoming.kid, "retired": retired}
    if discarded:
        details["discarded"] = discarded
    audit.record(
        session,
        type="signing_key.rotated",
        outcome="success",
        now=now,
        client=SYSTEM,
        details=details,
    )
    return Rotation(kid=promoted.kid, next_kid=upcoming.kid, published_for=published_for)


def reencrypt(session: DbSession, keyring: Keyring) -> int:
    rows = session.execute(select(SigningKey.kid, SigningKey.private_key_ciphertext)).all()
    return reencrypt_rows(
        session,
        keyring,
        key=SigningKey.kid,
        column=SigningKey.private_key_ciphertext,
        rows=[(row.kid, row.private_key_ciphertext) for row in rows],
        associated_data=lambda _kid: _AAD,
    )
