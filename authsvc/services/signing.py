"""Access-token signing keys: created on first use, private half encrypted at rest."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import Keyring
from authsvc.crypto.tokens import SigningKeyMaterial, generate_signing_key
from authsvc.db import new_id
from authsvc.models import SigningKey

_AAD = b"signing-key"


def active_key(session: DbSession, keyring: Keyring, *, now: datetime) -> SigningKeyMaterial:
    row = session.scalar(
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None))
        .order_by(SigningKey.created_at.desc(), SigningKey.kid)
        .limit(1)
    )
    if row is None:
        row = _create(session, keyring, now=now)
    return SigningKeyMaterial(
        kid=row.kid,
        private_pem=keyring.decrypt(row.private_key_ciphertext, associated_data=_AAD),
        public_jwk=json.loads(row.public_jwk),
    )


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
    for row in session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
        row.retired_at = now
    return _create(session, keyring, now=now).kid


def reencrypt(session: DbSession, keyring: Keyring) -> int:
    count = 0
    for row in session.scalars(select(SigningKey)):
        if keyring.needs_reencryption(row.private_key_ciphertext):
            row.private_key_ciphertext = keyring.reencrypt(
                row.private_key_ciphertext, associated_data=_AAD
            )
            count += 1
    return count
