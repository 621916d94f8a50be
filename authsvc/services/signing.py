"""Access-token signing keys: created on first use, private half encrypted at rest.

Key objects are cached in the process, one cache per database binding (engine):
public keys by kid for good (keys are never deleted, and a kid names one key), and the
active private key for ``ACTIVE_KEY_TTL_SECONDS``, so a key made active elsewhere (another
process) is used for signing within that time. Tokens signed with the previous key still
verify: retired keys stay published.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import Keyring
from authsvc.crypto.tokens import (
    InvalidAccessToken,
    Signer,
    SigningKeyMaterial,
    generate_signing_key,
    load_private_key,
    load_signer,
    public_key_from_jwk,
)
from authsvc.db import new_id
from authsvc.models import SigningKey
from authsvc.services import audit
from authsvc.services.context import SYSTEM

_AAD = b"signing-key"
ACTIVE_KEY_TTL_SECONDS = 60.0

_keys = SigningKey.__table__.c
_ACTIVE = (
    select(_keys.kid, _keys.private_key_ciphertext)
    .where(_keys.retired_at.is_(None))
    .order_by(_keys.created_at.desc(), _keys.kid)
    .limit(1)
)


@dataclass
class _KeyCache:
    public: dict[str, Ed25519PublicKey] = field(default_factory=dict)
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
    row = session.scalar(
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None))
        .order_by(SigningKey.created_at.desc(), SigningKey.kid)
        .limit(1)
    )
    if row is None:
        row = _create(session, keyring, now=now)
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
        return load_signer(_material(_create(session, keyring, now=now), keyring))
    loaded = Signer(
        kid=row.kid,
        private_key=load_private_key(
            keyring.decrypt(row.private_key_ciphertext, associated_data=_AAD)
        ),
    )
    cache.active = (keyring, loaded, clock + ACTIVE_KEY_TTL_SECONDS)
    return loaded


def _material(row: SigningKey, keyring: Keyring) -> SigningKeyMaterial:
    return SigningKeyMaterial(
        kid=row.kid,
        private_pem=keyring.decrypt(row.private_key_ciphertext, associated_data=_AAD),
        public_jwk=json.loads(row.public_jwk),
    )


def public_key(session: DbSession, kid: str) -> Ed25519PublicKey | None:
    """The published key named ``kid``; read from the database only the first time."""
    cache = _cache(session)
    key = cache.public.get(kid)
    if key is None:
        jwk = session.scalar(select(_keys.public_jwk).where(_keys.kid == kid))
        if jwk is None:
            return None
        try:
            key = public_key_from_jwk(json.loads(jwk))
        except InvalidAccessToken:
            return None
        cache.public[kid] = key
    return key


def _create(session: DbSession, keyring: Keyring, *, now: datetime) -> SigningKey:
    material = generate_signing_key(new_id())
    row = SigningKey(
        kid=material.kid,
        private_key_ciphertext=keyring.encrypt(material.private_pem, associated_data=_AAD),
        public_jwk=json.dumps(material.public_jwk),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def ensure_key(session: DbSession, keyring: Keyring, *, now: datetime) -> None:
    if session.scalar(select(SigningKey.kid).where(SigningKey.retired_at.is_(None))) is None:
        _create(session, keyring, now=now)


def public_jwks(session: DbSession) -> dict[str, dict[str, Any]]:
    """Every published key by kid; retired keys stay published so issued tokens verify."""
    rows = session.scalars(select(SigningKey)).all()
    return {row.kid: json.loads(row.public_jwk) for row in rows}


def rotate(session: DbSession, keyring: Keyring, *, now: datetime) -> str:
    """Retire the active key(s) and make a new one (audited); return the new kid."""
    retired = []
    for row in session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
        row.retired_at = now
        retired.append(row.kid)
    _cache(session).active = None
    kid = _create(session, keyring, now=now).kid
    audit.record(
        session,
        type="signing_key.rotated",
        outcome="success",
        now=now,
        client=SYSTEM,
        details={"kid": kid, "retired": retired},
    )
    return kid


def reencrypt(session: DbSession, keyring: Keyring) -> int:
    count = 0
    for row in session.scalars(select(SigningKey)):
        if keyring.needs_reencryption(row.private_key_ciphertext):
            row.private_key_ciphertext = keyring.reencrypt(
                row.private_key_ciphertext, associated_data=_AAD
            )
            count += 1
    return count
