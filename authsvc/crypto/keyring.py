"""AES-256-GCM with key ids: the first key encrypts, every key decrypts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class DecryptionFailed(Exception):  # noqa: N818 - named for the outcome
    """The ciphertext is corrupt, or no key in the ring opens it."""


def generate_key_spec(kid: str) -> str:
    """A new ``kid:base64url`` entry for AUTHSVC_ENCRYPTION_KEYS."""
    return f"{kid}:{base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('=')}"


def keyring_header(kid: str) -> bytes:
    """How every ciphertext encrypted under ``kid`` begins."""
    kid_bytes = kid.encode()
    return _VERSION + bytes([len(kid_bytes)]) + kid_bytes


@dataclass(frozen=True, slots=True)
class Keyring:
    keys: tuple[tuple[str, bytes], ...]  # (kid, 32-byte key), primary first

    def __repr__(self) -> str:  # the key ids, never the keys
        return f"Keyring(kids={[kid for kid, _ in self.keys]!r})"

    @classmethod
    def from_specs(cls, specs: tuple[str, ...] | list[str]) -> Keyring:
        keys = []
        for spec in specs:
            kid, _, b64 = spec.partition(":")
            raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
            if len(raw) != 32 or not kid:
                raise ValueError("each key must be 'kid:base64url(32 bytes)'")
            keys.append((kid, raw))
        if not keys:
            raise ValueError("a keyring needs at least one key")
        if len({kid for kid, _ in keys}) != len(keys):
            raise ValueError("key ids must be unique")
        return cls(tuple(keys))

    @property
    def primary_kid(self) -> str:
        return self.keys[0][0]

    def encrypt(self, plaintext: bytes, *, associated_data: bytes = b"") -> bytes:
        kid, key = self.keys[0]
        nonce = os.urandom(12)
        body = AESGCM(key).encrypt(nonce, plaintext, kid.encode() + associated_data)
        return keyring_header(kid) + nonce + body

    def decrypt(self, blob: bytes, *, associated_data: bytes = b"") -> bytes:
        try:
            if blob[:1] != _VERSION:
                raise DecryptionFailed("unknown ciphertext version")
            kid_len = blob[1]
            kid_bytes = blob[2 : 2 + kid_len]
            nonce = blob[2 + kid_len : 14 + kid_len]
            body = blob[14 + kid_len :]
            key = dict(self.keys)[kid_bytes.decode()]
            return AESGCM(key).decrypt(nonce, body, kid_bytes + associated_data)
        except (IndexError, KeyError, UnicodeDecodeError, InvalidTag, ValueError) as exc:
            raise DecryptionFailed(str(exc) or type(exc).__name__) from None

    def key_id_of(self, blob: bytes) -> str:
        return blob[2 : 2 + blob[1]].decode()

    def needs_reencryption(self, blob: bytes) -> bool:
        return self.key_id_of(blob) != self.primary_kid

    def reencrypt(self, blob: bytes, *, associated_data: bytes = b"") -> bytes:
        return self.encrypt(
            self.decrypt(blob, associated_data=associated_data), associated_data=associated_data
        )

    def mac_key(self, purpose: str) -> bytes:
        """A key for keyed hashes, derived from the oldest key so rotation keeps it stable."""
        _, root = self.keys[-1]
        return hmac.new(root, b"authsvc mac key: " + purpose.encode(), hashlib.sha256).digest()

    def mac(self, purpose: str, data: bytes) -> str:
        return hmac.new(self.mac_key(purpose), data, hashlib.sha256).hexdigest()
