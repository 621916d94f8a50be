"""A software authenticator for unit, service and HTTP tests.

It builds real WebAuthn responses with `cryptography` (P-256 keys; "none", "packed",
"apple", "android-key" or "android-safetynet" attestation with an X.509 chain) so that
py_webauthn verifies them exactly as it verifies a browser's. The browser test
(tests/e2e/test_webauthn_browser.py) is the proof against a real client; this helper lets the
many edge cases run in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pyasn1.codec.der.encoder import encode as der_encode
from webauthn.helpers.asn1.android_key import AuthorizationList, KeyDescription

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40
AAGUID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
APPLE_NONCE_OID = x509.ObjectIdentifier("1.2.840.113635.100.8.2")
ANDROID_KEY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.1.17")
# clientDataJSON members of a ceremony run inside a cross-origin frame (WebAuthn L3 5.8.1).
CROSS_ORIGIN_FRAMES = (
    {"crossOrigin": True},
    {"crossOrigin": True, "topOrigin": "https://evil.example"},
    {"topOrigin": "https://evil.example"},
)


def _with_response(credential: dict[str, Any], **members: str) -> dict[str, Any]:
    return {**credential, "response": {**credential["response"], **members}}


def with_client_data(
    credential: dict[str, Any], rewrite: Callable[[dict[str, Any]], bytes]
) -> dict[str, Any]:
    """The credential with its clientDataJSON rewritten (a signature over it no longer
    matches; a "none" attestation signs nothing)."""
    data = json.loads(unb64url(credential["response"]["clientDataJSON"]))
    return _with_response(credential, clientDataJSON=b64url(rewrite(data)))


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _challenge_respelled(data: dict[str, Any], challenge: str) -> bytes:
    return json.dumps({**data, "challenge": challenge}).encode()


# clientDataJSON that WebAuthn Level 3 does not read as client data (7.1 steps 5-8, 7.2 steps
# 8-11: UTF-8, and a challenge that is the options' challenge in base64url, unpadded): name ->
# its bytes from the JSON a browser sent.
MISREAD_CLIENT_DATA: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "client_data_in_utf16": lambda data: json.dumps(data).encode("utf-16"),
    "padded_challenge": lambda data: _challenge_respelled(data, data["challenge"] + "="),
    "challenge_with_a_stray_symbol": lambda data: _challenge_respelled(
        data, data["challenge"][:8] + "." + data["challenge"][8:]
    ),
    # 32 bytes are 43 symbols, whose last carries 2 bits past the last byte: decoding skips them.
    "challenge_with_bits_past_its_end": lambda data: _challenge_respelled(
        data, data["challenge"][:-1] + _B64_ALPHABET[_B64_ALPHABET.index(data["challenge"][-1]) ^ 1]
    ),
}


# Assertions of the right shape that do not parse: name -> break(valid credential).
UNPARSABLE_ASSERTIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    **{
        name: (lambda c, rewrite=rewrite: with_client_data(c, rewrite))
        for name, rewrite in MISREAD_CLIENT_DATA.items()
    },
    "authenticator_data_of_3_bytes": lambda c: _with_response(c, authenticatorData="AQID"),
    "authenticator_data_with_trailing_bytes": lambda c: _with_response(
        c, authenticatorData=b64url(unb64url(c["response"]["authenticatorData"]) + b"\0")
    ),
    "unknown_authenticator_attachment": lambda c: {**c, "authenticatorAttachment": "bogus"},
    # toJSON() never pads; the credential id is 32 bytes, 43 symbols, so one "=" is its padding.
    "padded_id_and_raw_id": lambda c: {**c, "id": c["id"] + "=", "rawId": c["rawId"] + "="},
    "padded_id": lambda c: {**c, "id": c["id"] + "="},
    "padded_raw_id": lambda c: {**c, "rawId": c["rawId"] + "="},
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _cose_key(public: ec.EllipticCurvePublicKey) -> bytes:
    numbers = public.public_numbers()
    return cbor2.dumps(
        {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
    )


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _key_description(client_data_hash: bytes) -> bytes:
    """An Android Key Attestation extension: a TEE-generated signing key for this challenge."""
    description = KeyDescription()
    description["attestationVersion"] = 3
    description["attestationSecurityLevel"] = 1
    description["keymasterVersion"] = 4
    description["keymasterSecurityLevel"] = 1
    description["attestationChallenge"] = client_data_hash
    description["uniqueId"] = b""
    description["softwareEnforced"] = AuthorizationList()
    description["teeEnforced"]["purpose"].append(2)  # KM_PURPOSE_SIGN
    description["teeEnforced"]["origin"] = 0  # KM_ORIGIN_GENERATED
    return bytes(der_encode(description))


def _safetynet_jws(ca: AttestationCa, nonce: bytes) -> bytes:
    """A SafetyNet attestation response: a JWS signed by a key certified for
    attest.android.com."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = ca.issue(key.public_key(), common_name="attest.android.com")
    header = {"alg": "RS256", "x5c": [b64url(_der(leaf))]}
    payload = {
        "nonce": base64.b64encode(nonce).decode(),
        "timestampMs": int(datetime.now(UTC).timestamp() * 1000),
        "apkPackageName": "com.google.android.gms",
        "ctsProfileMatch": True,
        "basicIntegrity": True,
    }
    signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{b64url(signature)}".encode()


@dataclass
class AttestationCa:
    """A root and an attestation certificate for one authenticator model (AAGUID)."""

    aaguid: bytes
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    leaf_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert_aaguid: bytes | None = None  # the AAGUID named in the leaf (default: aaguid)
    name: str = "Test Root CA"

    def __post_init__(self) -> None:
        now = datetime.now(UTC)
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.root_key, hashes.SHA256())
        )
        leaf_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Keys"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Test Key"),
            ]
        )
        named = self.cert_aaguid if self.cert_aaguid is not None else self.aaguid
        self.leaf = (
            x509.CertificateBuilder()
            .subject_name(leaf_name)
            .issuer_name(root_name)
            .public_key(self.leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.UnrecognizedExtension(AAGUID_OID, b"\x04\x10" + named), critical=False
            )
            .sign(self.root_key, hashes.SHA256())
        )

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        common_name: str = "Test Credential",
        extension: x509.UnrecognizedExtension | None = None,
    ) -> x509.Certificate:
        """A certificate for one credential's (or one signing service's) key."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
        )
        if extension is not None:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(self.root_key, hashes.SHA256())


@dataclass
class StoredKey:
    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    user_handle: bytes
    sign_count: int


class SoftAuthenticator:
    """Registers and asserts like a roaming key or a platform passkey would."""

    def __init__(
        self,
        *,
        origin: str = "http://localhost:8000",
        aaguid: bytes = bytes(16),
        backup_eligible: bool = False,
        backed_up: bool | None = None,
        counter: bool = True,
        resident: bool = True,
    ) -> None:
        self.origin = origin
        self.aaguid = aaguid
        self.backup_eligible = backup_eligible
        self.backed_up = backed_up  # the BS flag; None: the same as BE (a synced passkey)
        self.counter = counter
        self.resident = resident
        self.keys: dict[bytes, StoredKey] = {}

    # -- building blocks ------------------------------------------------------------------
    def _client_data(
        self, kind: str, challenge: str, origin: str | None, extra: dict[str, Any] | None = None
    ) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
                **(extra or {}),
            }
        ).encode()

    def _flags(self, *, up: bool, uv: bool, attested: bool) -> int:
        flags = (UP if up else 0) | (UV if uv else 0) | (AT if attested else 0)
        if self.backup_eligible:
            flags |= BE
        if self.backup_eligible if self.backed_up is None else self.backed_up:
            flags |= BS
        return flags

    # -- ceremonies -----------------------------------------------------------------------
    def register(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        up: bool = True,
        uv: bool = True,
        rp_id: str | None = None,
        fmt: str = "none",
        ca: AttestationCa | None = None,
        rk: bool | None = None,
        credential_id: bytes | None = None,
        extra_client_data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A RegistrationResponseJSON for PublicKeyCredentialCreationOptionsJSON;
        ``extra_client_data`` adds or replaces members of clientDataJSON (crossOrigin,
        topOrigin)."""
        key = ec.generate_private_key(ec.SECP256R1())
        credential_id = credential_id or secrets.token_bytes(32)
        rp_hash = hashlib.sha256((rp_id or options["rp"]["id"]).encode()).digest()
        start = 0
        attested = (
            self.aaguid
            + struct.pack(">H", len(credential_id))
            + credential_id
            + _cose_key(key.public_key())
        )
        auth_data = (
            rp_hash
            + bytes([self._flags(up=up, uv=uv, attested=True)])
            + struct.pack(">I", start)
            + attested
        )
        client_data = self._client_data(
            "webauthn.create", options["challenge"], origin, extra_client_data
        )
        signed = auth_data + hashlib.sha256(client_data).digest()
        statement: dict[str, Any] = {}
        if fmt == "packed" and ca is not None:
            statement = {"alg": -7, "sig": _sign(ca.leaf_key, signed), "x5c": [_der(ca.leaf)]}
        elif fmt == "packed":  # self attestation
            statement = {"alg": -7, "sig": _sign(key, signed)}
        elif fmt == "apple" and ca is not None:  # the credential's own key, certified
            nonce = x509.UnrecognizedExtension(
                APPLE_NONCE_OID, b"\x30\x24\xa1\x22\x04\x20" + hashlib.sha256(signed).digest()
            )
            statement = {"x5c": [_der(ca.issue(key.public_key(), extension=nonce))]}
        elif fmt == "android-key" and ca is not None:  # x5c ends with the root
            description = x509.UnrecognizedExtension(
                ANDROID_KEY_OID, _key_description(hashlib.sha256(client_data).digest())
            )
            leaf = ca.issue(key.public_key(), extension=description)
            statement = {"alg": -7, "sig": _sign(key, signed), "x5c": [_der(leaf), _der(ca.root)]}
        elif fmt == "android-safetynet" and ca is not None:
            jws = _safetynet_jws(ca, hashlib.sha256(signed).digest())
            statement = {"ver": "1", "response": jws}
        attestation = cbor2.dumps({"fmt": fmt, "attStmt": statement, "authData": auth_data})
        self.keys[credential_id] = StoredKey(
            credential_id, key, unb64url(options["user"]["id"]), start
        )
        resident = self.resident if rk is None else rk
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["usb", "nfc"],
            },
            "clientExtensionResults": {"credProps": {"rk": resident}},
            "authenticatorAttachment": "cross-platform",
        }

    def assertion(
        self,
        options: dict[str, Any],
        *,
        credential_id: bytes | None = None,
        origin: str | None = None,
        up: bool = True,
        uv: bool = True,
        rp_id: str | None = None,
        sign_count: int | None = None,
        user_handle: bool = True,
        extra_client_data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An AuthenticationResponseJSON for PublicKeyCredentialRequestOptionsJSON."""
        if credential_id is None:
            allowed = [unb64url(c["id"]) for c in options.get("allowCredentials", [])]
            candidates = [k for k in self.keys if not allowed or k in allowed]
            credential_id = candidates[0]
        stored = self.keys[credential_id]
        if sign_count is None:
            if self.counter:
                stored.sign_count += 1
            sign_count = stored.sign_count
        rp_hash = hashlib.sha256((rp_id or options["rpId"]).encode()).digest()
        auth_data = (
            rp_hash
            + bytes([self._flags(up=up, uv=uv, attested=False)])
            + struct.pack(">I", sign_count)
        )
        client_data = self._client_data(
            "webauthn.get", options["challenge"], origin, extra_client_data
        )
        signature = _sign(stored.private_key, auth_data + hashlib.sha256(client_data).digest())
        response = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
        }
        if user_handle:
            response["userHandle"] = b64url(stored.user_handle)
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "response": response,
            "clientExtensionResults": {},
            "authenticatorAttachment": "cross-platform",
        }

    def only_key(self) -> bytes:
        (credential_id,) = self.keys
        return credential_id


# --- HTTP helpers (the `api` and `client` fixtures of tests/conftest.py) -------------------

PASSWORD = "correct horse 42"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed_in(api: Any, email: str = "ada@example.com") -> str:
    """Register and log in a user without factors; return an access token."""
    api.register(email, PASSWORD)
    return str(api.tokens(email, PASSWORD)["access_token"])


def enroll(
    client: Any,
    access: str,
    authenticator: SoftAuthenticator,
    *,
    name: str = "Blue key",
    **register_kwargs: Any,
) -> dict[str, Any]:
    """Run a full registration; return the 201 body."""
    response = client.post(
        "/v1/me/mfa/webauthn/registration-options", json={"name": name}, headers=bearer(access)
    )
    assert response.status_code == 200, response.get_json()
    credential = authenticator.register(response.get_json(), **register_kwargs)
    response = client.post(
        "/v1/me/mfa/webauthn", json={"credential": credential}, headers=bearer(access)
    )
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def mfa_token(api: Any, email: str = "ada@example.com") -> str:
    response = api.login(email, PASSWORD)
    body = response.get_json()
    assert body["status"] == "mfa_required", body
    return str(body["mfa_token"])
