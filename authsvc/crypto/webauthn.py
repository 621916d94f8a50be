"""A thin wrapper over py_webauthn: options, the two verifications and shape checks.

Everything that can go wrong with a browser's answer becomes ``WebauthnResponseError`` with a short
``reason``; py_webauthn's exceptions (and the parsing errors under them) never leave this module.
What an outcome means (a refused login, a refused key) is for the services to decide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    decode_credential_public_key,
    decoded_public_key_to_cryptography,
    parse_attestation_object,
    parse_authentication_credential_json,
    parse_authenticator_data,
    parse_cbor,
    parse_client_data_json,
    parse_registration_credential_json,
    validate_certificate_chain,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AttestationFormat,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    COSEAlgorithmIdentifier,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

CHALLENGE_BYTES = 32
USER_HANDLE_BYTES = 32
_TOKEN_EXPIRY_BYTES = 8
MAX_CREDENTIAL_ID_BYTES = 1023  # WebAuthn Level 3 limit
TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)
_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
# id-fido-gen-ce-aaguid: the authenticator model an attestation certificate speaks for.
_AAGUID_EXTENSION = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
# The key each algorithm of the options' pubKeyCredParams (py_webauthn's defaults, the only
# ones its verification accepts) signs with.
_KEY_OF_ALGORITHM: dict[int, type] = {
    COSEAlgorithmIdentifier.EDDSA: Ed25519PublicKey,
    COSEAlgorithmIdentifier.ECDSA_SHA_256: EllipticCurvePublicKey,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256: RSAPublicKey,
}
_REGISTRATION_FIELDS = ("clientDataJSON", "attestationObject")
_ASSERTION_FIELDS = ("clientDataJSON", "authenticatorData", "signature")


# What py_webauthn refused, told in our words: its messages quote the configured origins and
# the client's own (and say "See __cause__ for more info"), so none of them is passed on. The
# first pattern found in its message (lower-cased) names the check that failed; those of the
# messages that quote client input come first, matched on the text before the quote.
_REFUSALS: tuple[tuple[str, str], ...] = (
    (
        "unexpected client data origin",
        "the response comes from an origin this service does not accept",
    ),
    ("unexpected client data type", "the response is for another ceremony"),
    ("unexpected token_binding", "the response has an unexpected token binding status"),
    ("unexpected credential type", "type must be public-key"),
    ("client data challenge", "the response answers another challenge"),
    ("unexpected rp id hash", "the response is for another relying party"),
    ("user verification is required", "the authenticator did not verify the user"),
    ("user presence", "the authenticator did not see the user present"),
    ("user was not present", "the authenticator did not see the user present"),
    ("id and raw_id", "id and rawId differ"),
    ("clientdatajson", "clientDataJSON does not parse"),
    ("authenticatordata", "authenticatorData does not parse"),
    ("attestationobject", "attestationObject does not parse"),
    ("cbor", "a member does not parse as CBOR"),
    ("certificate", "the attestation certificate chain does not verify"),
    ("x5c", "the attestation certificate chain does not verify"),
    ("attestation", "the attestation statement does not verify"),
    ("(android", "the attestation statement does not verify"),
    ("(safetynet", "the attestation statement does not verify"),
    ("(tpm", "the attestation statement does not verify"),
    ("(apple", "the attestation statement does not verify"),
    ("authentication signature", "the signature does not verify"),
    ("sign count", "the signature counter did not advance"),
    # InvalidBackupFlags (WebAuthn L3 7.1 and 7.2: BS is never set without BE)
    ("was backed up", "the authenticator says backed up (BS) but not backup eligible (BE)"),
    ("public key alg", "the credential public key uses an algorithm this service does not accept"),
    ("public key", "the credential public key is not a usable key"),
    ("authenticator did not provide", "the authenticator data lacks the attested credential"),
)
_REFUSED = "the response does not verify"


def _refusal_detail(exc: WebAuthnException) -> str:
    """Our words for a py_webauthn refusal; never its message."""
    message = str(exc).lower()
    return next((detail for pattern, detail in _REFUSALS if pattern in message), _REFUSED)


class WebauthnResponseError(Exception):
    """A response that does not verify or does not parse; ``reason`` is a short stable word
    and the message (the problem's detail) is in the service's words alone."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A stored credential, as listed in allowCredentials / excludeCredentials."""

    credential_id: bytes
    transports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """What a response claims before verification: which credential, for which challenge."""

    credential_id: bytes
    challenge: bytes
    user_handle: bytes | None


@dataclass(frozen=True, slots=True)
class RegisteredCredential:
    credential_id: bytes
    public_key: bytes  # COSE
    sign_count: int
    aaguid: str
    attestation_format: str
    attested: bool  # its certificate chain (x5c) leads to one of the trusted roots
    user_verified: bool
    backup_eligible: bool
    backed_up: bool
    transports: tuple[str, ...]
    discoverable: bool | None  # credProps.rk when the client reported it


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    credential_id: bytes
    sign_count: int
    user_verified: bool
    backup_eligible: bool
    backed_up: bool


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    """Strict base64url (padding optional); WebauthnResponseError("base64url") otherwise."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text.rstrip("=")) % 4 == 1:
        raise WebauthnResponseError("base64url", "a value is not base64url")
    return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_BYTES)


def new_user_handle() -> bytes:
    return secrets.token_bytes(USER_HANDLE_BYTES)


def challenge_digest(challenge: bytes) -> str:
    """How challenges are stored and looked up."""
    return hashlib.sha256(challenge).hexdigest()


def challenge_token(key: bytes, *, challenge: bytes, expires_at: int) -> str:
    """A challenge id that needs no stored row: the expiry (Unix seconds) and an
    HMAC-SHA-256 under ``key`` of the challenge's digest and that expiry, base64url (54
    characters). It names its challenge through the MAC alone, so it stays short."""
    when = expires_at.to_bytes(_TOKEN_EXPIRY_BYTES, "big")
    return b64url(when + _token_mac(key, challenge, when))


def challenge_token_expiry(key: bytes, *, token: str, challenge: bytes) -> int | None:
    """The expiry that ``token`` binds to ``challenge`` under ``key``; None for a token of
    another shape, another key or another challenge, or altered in any byte (the MAC is
    compared in constant time). Whether it has passed is for the caller to say."""
    try:
        raw = from_b64url(token)
    except WebauthnResponseError:
        return None
    if len(raw) != _TOKEN_EXPIRY_BYTES + hashlib.sha256().digest_size:
        return None
    when, mac = raw[:_TOKEN_EXPIRY_BYTES], raw[_TOKEN_EXPIRY_BYTES:]
    if not hmac.compare_digest(mac, _token_mac(key, challenge, when)):
        return None
    return int.from_bytes(when, "big")


def _token_mac(key: bytes, challenge: bytes, when: bytes) -> bytes:
    return hmac.new(key, hashlib.sha256(challenge).digest() + when, hashlib.sha256).digest()


def _descriptors(items: Iterable[Descriptor]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            id=item.credential_id,
            transports=[AuthenticatorTransport(t) for t in item.transports if t in TRANSPORTS]
            or None,
        )
        for item in items
    ]


def registration_options(
    *,
    rp_id: str,
    rp_name: str,
    user_handle: bytes,
    user_name: str,
    challenge: bytes,
    timeout_ms: int,
    user_verification: str,
    attestation: str,
    exclude: Sequence[Descriptor],
) -> dict[str, Any]:
    """PublicKeyCredentialCreationOptionsJSON; a resident key is preferred and credProps asked
    for, so that the answer tells whether the credential is discoverable (a passkey)."""
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_id=user_handle,
        user_name=user_name,
        challenge=challenge,
        timeout=timeout_ms,
        attestation=AttestationConveyancePreference(attestation),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement(user_verification),
        ),
        exclude_credentials=_descriptors(exclude),
    )
    data: dict[str, Any] = json.loads(options_to_json(options))
    data["extensions"] = {"credProps": True}
    return data


def authentication_options(
    *,
    rp_id: str,
    challenge: bytes,
    timeout_ms: int,
    user_verification: str,
    allow: Sequence[Descriptor],
) -> dict[str, Any]:
    """PublicKeyCredentialRequestOptionsJSON; an empty ``allow`` asks for a discoverable one."""
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=timeout_ms,
        allow_credentials=_descriptors(allow),
        user_verification=UserVerificationRequirement(user_verification),
    )
    data: dict[str, Any] = json.loads(options_to_json(options))
    return data


def _check_shape(credential: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(credential, dict):
        raise WebauthnResponseError("malformed", "the credential must be an object")
    response = credential.get("response")
    if not isinstance(response, dict):
        raise WebauthnResponseError("malformed", "response is missing")
    if credential.get("type") != "public-key":
        raise WebauthnResponseError("malformed", "type must be public-key")
    if not isinstance(credential.get("clientExtensionResults", {}), dict):
        raise WebauthnResponseError("malformed", "clientExtensionResults must be an object")
    if not isinstance(credential.get("authenticatorAttachment", ""), str | None):
        raise WebauthnResponseError("malformed", "authenticatorAttachment must be a string")
    for value in (
        credential.get("id"),
        credential.get("rawId"),
        *(response.get(name) for name in fields),
    ):
        if not isinstance(value, str):
            raise WebauthnResponseError("malformed", "a required member is missing")
        from_b64url(value)
    user_handle = response.get("userHandle")
    if user_handle is not None:
        from_b64url(user_handle)
    # The credential id unpadded, as toJSON() gives it: py_webauthn compares id with rawId
    # re-encoded, so a padded one would pass here and be refused there as a wrong answer.
    if "=" in credential["id"] or "=" in credential["rawId"]:
        raise WebauthnResponseError("malformed", "id and rawId must be unpadded base64url")
    if credential["id"] != credential["rawId"]:
        raise WebauthnResponseError("malformed", "id and rawId differ")
    if not 0 < len(from_b64url(credential["rawId"])) <= MAX_CREDENTIAL_ID_BYTES:
        raise WebauthnResponseError("malformed", "the credential id has an impossible length")
    return response


def _client_data(raw: bytes) -> dict[str, Any]:
    """The client data as WebAuthn L3 reads it (7.1 steps 5-8, 7.2 steps 8-11): UTF-8 (a
    leading byte order mark dropped), a JSON object, its challenge base64url without padding,
    as the options sent it. py_webauthn takes JSON in UTF-16 and UTF-32 too, and decodes the
    challenge leniently: padded, with symbols outside the alphabet (which it skips) or with
    bits set past the last byte."""
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except ValueError:  # UnicodeDecodeError included
        raise WebauthnResponseError("malformed", "clientDataJSON is not JSON in UTF-8") from None
    if not isinstance(data, dict):
        raise WebauthnResponseError("malformed", "clientDataJSON is not an object")
    challenge = data.get("challenge")
    try:  # the one spelling: no padding, and no bits past the last byte
        canonical = isinstance(challenge, str) and b64url(from_b64url(challenge)) == challenge
    except WebauthnResponseError:
        canonical = False
    if not canonical:
        raise WebauthnResponseError("malformed", "the challenge is not unpadded base64url")
    return data


def _client_challenge(client_data_json: str) -> bytes:
    raw = from_b64url(client_data_json)
    _client_data(raw)
    try:
        return parse_client_data_json(raw).challenge
    except Exception:  # any parsing error of client-supplied bytes
        raise WebauthnResponseError("malformed", "clientDataJSON does not parse") from None


def read_registration(credential: Any) -> ClientAnswer:
    """Shape-check a RegistrationResponseJSON and read its claimed challenge."""
    response = _check_shape(credential, _REGISTRATION_FIELDS)
    return ClientAnswer(
        credential_id=from_b64url(credential["rawId"]),
        challenge=_client_challenge(response["clientDataJSON"]),
        user_handle=None,
    )


def read_assertion(credential: Any) -> ClientAnswer:
    """Shape-check and parse an AuthenticationResponseJSON (py_webauthn's parsers: the
    credential JSON, its client data and authenticator data); read its credential id,
    challenge and user handle (present for discoverable credentials). One that does not parse
    is a client's mistake, refused here, before any account is looked at: only what parses
    can be a wrong answer."""
    response = _check_shape(credential, _ASSERTION_FIELDS)
    try:
        parse_authentication_credential_json(credential)
        parse_authenticator_data(from_b64url(response["authenticatorData"]))
    except Exception:  # any parsing error of client-supplied bytes
        raise WebauthnResponseError("malformed", "the assertion does not parse") from None
    handle = from_b64url(response["userHandle"]) if response.get("userHandle") else b""
    return ClientAnswer(
        credential_id=from_b64url(credential["rawId"]),
        challenge=_client_challenge(response["clientDataJSON"]),
        user_handle=handle or None,
    )


def _reported_transports(response: dict[str, Any]) -> tuple[str, ...]:
    raw = response.get("transports")
    if not isinstance(raw, list):
        return ()
    return tuple(dict.fromkeys(t for t in raw if isinstance(t, str) and t in TRANSPORTS))


def _reported_rk(credential: dict[str, Any]) -> bool | None:
    results = credential.get("clientExtensionResults")
    props = results.get("credProps") if isinstance(results, dict) else None
    rk = props.get("rk") if isinstance(props, dict) else None
    return rk if isinstance(rk, bool) else None


def _check_not_framed(client_data_json: bytes) -> None:
    """WebAuthn L3 7.1 step 10 / 7.2 step 13: a ceremony run in a cross-origin frame (crossOrigin
    true, or a topOrigin) is for a relying party that expects to be framed by that origin.
    authsvc has no such origins (its pages send frame-ancestors 'none'): it refuses them all."""
    data = _client_data(client_data_json)
    if data.get("crossOrigin") not in (None, False) or "topOrigin" in data:
        raise WebauthnResponseError("cross_origin", "the ceremony ran in a cross-origin frame")


def _check_statement(attestation_object: bytes) -> None:
    """WebAuthn L3 6.5.4 and 8.7: every attestation object carries an attStmt map, and the
    one of fmt "none" is empty. py_webauthn refuses a "none" statement only for the members it
    knows (sig, x5c and the like): one of other members, of another type or left out passed.
    An object that does not decode is left to py_webauthn, which refuses it."""
    try:
        decoded = parse_cbor(attestation_object)
    except WebAuthnException:
        return
    if not isinstance(decoded, dict):
        return
    statement = decoded.get("attStmt")
    if not isinstance(statement, dict):
        raise WebauthnResponseError("malformed", "attStmt must be a map")
    if decoded.get("fmt") == "none" and statement:
        raise WebauthnResponseError("malformed", 'a "none" attestation has an empty attStmt')


def verify_registration(
    *,
    credential: Any,
    expected_challenge: bytes,
    expected_rp_id: str,
    expected_origins: Sequence[str],
    require_user_verification: bool,
    trusted_roots: Sequence[bytes] = (),
) -> RegisteredCredential:
    """Verify an attestation (origin, RP ID hash, challenge, flags, attestation statement;
    certificate chains against ``trusted_roots`` when given).

    ``trusted_roots`` are the only trust anchors: py_webauthn adds its own (Apple's root for
    "apple", Google's for "android-key", GlobalSign's for "android-safetynet"), so every chain
    in attStmt.x5c is checked again against these alone. A credential is ``attested`` when its
    chain passed that check; without roots, or without an x5c (none, self attestation,
    android-safetynet, whose chain sits in a JWS), it is not."""
    response = _check_shape(credential, _REGISTRATION_FIELDS)
    roots = list(trusted_roots)
    try:
        parsed = parse_registration_credential_json(credential)
        _check_statement(from_b64url(response["attestationObject"]))
        verified = verify_registration_response(
            credential=parsed,
            expected_challenge=expected_challenge,
            expected_rp_id=expected_rp_id,
            expected_origin=list(expected_origins),
            require_user_verification=require_user_verification,
            pem_root_certs_bytes_by_fmt={fmt: roots for fmt in AttestationFormat}
            if roots
            else None,
        )
        if verified.credential_id != from_b64url(credential["rawId"]):
            raise WebauthnResponseError("not_verified", "rawId is not the attested credential id")
        attestation = parse_attestation_object(verified.attestation_object)
        statement, flags = attestation.att_stmt, attestation.auth_data.flags
        attested = attestation.auth_data.attested_credential_data
        if statement.x5c and attested is not None:
            _check_certificate_aaguid(statement.x5c[0], attested.aaguid)
        if statement.x5c and roots:
            validate_certificate_chain(x5c=statement.x5c, pem_root_certs_bytes=list(roots))
        _check_not_framed(parsed.response.client_data_json)
        _check_public_key(verified.credential_public_key)
    except WebauthnResponseError:
        raise
    except WebAuthnException as exc:
        raise WebauthnResponseError("not_verified", _refusal_detail(exc)) from None
    except Exception:  # any other parsing error of client-supplied bytes
        raise WebauthnResponseError("malformed", "the attestation does not parse") from None
    return RegisteredCredential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        attestation_format=str(getattr(verified.fmt, "value", verified.fmt)),
        attested=bool(statement.x5c) and bool(roots),
        user_verified=verified.user_verified,
        backup_eligible=bool(flags.be),
        backed_up=verified.credential_backed_up,
        transports=_reported_transports(response),
        discoverable=_reported_rk(credential),
    )


def _check_public_key(cose_key: bytes) -> None:
    """The credential public key loads as the kind of key its algorithm signs with. Only a
    signing attestation uses it, so under "none" (or a certificate's own key) a point off
    its curve, an unknown curve or a key of another kind was stored, as a factor that no
    assertion could ever pass."""
    try:
        decoded = decode_credential_public_key(cose_key)
        key = decoded_public_key_to_cryptography(decoded)
        usable = isinstance(key, _KEY_OF_ALGORITHM.get(decoded.alg, ()))
    except Exception:  # py_webauthn's and cryptography's refusals alike
        usable = False
    if not usable:
        raise WebauthnResponseError("malformed", "the credential public key is not a usable key")


def _check_certificate_aaguid(leaf_der: bytes, aaguid: bytes) -> None:
    """An attestation certificate that names a model must name the one in authData."""
    leaf = x509.load_der_x509_certificate(leaf_der)
    try:
        extension = leaf.extensions.get_extension_for_oid(_AAGUID_EXTENSION)
    except x509.ExtensionNotFound:
        return
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if raw != b"\x04\x10" + aaguid:  # DER OCTET STRING of 16 bytes
        raise WebauthnResponseError(
            "not_verified", "the attestation certificate names another model"
        )


def verify_assertion(
    *,
    credential: Any,
    expected_challenge: bytes,
    expected_rp_id: str,
    expected_origins: Sequence[str],
    credential_public_key: bytes,
    require_user_verification: bool,
) -> VerifiedAssertion:
    """Verify an assertion's origin, RP ID hash, challenge, flags and signature.

    The sign counter is returned, not judged: what a regression means is policy.
    """
    response = _check_shape(credential, _ASSERTION_FIELDS)
    try:
        parsed = parse_authentication_credential_json(credential)
        verified = verify_authentication_response(
            credential=parsed,
            expected_challenge=expected_challenge,
            expected_rp_id=expected_rp_id,
            expected_origin=list(expected_origins),
            credential_public_key=credential_public_key,
            credential_current_sign_count=0,  # judged by the caller
            require_user_verification=require_user_verification,
        )
        flags = parse_authenticator_data(from_b64url(response["authenticatorData"])).flags
        _check_not_framed(parsed.response.client_data_json)
    except WebAuthnException as exc:
        raise WebauthnResponseError("not_verified", _refusal_detail(exc)) from None
    except WebauthnResponseError:
        raise
    except Exception:  # any other parsing error of client-supplied bytes
        raise WebauthnResponseError("malformed", "the assertion does not parse") from None
    return VerifiedAssertion(
        credential_id=verified.credential_id,
        sign_count=verified.new_sign_count,
        user_verified=verified.user_verified,
        backup_eligible=bool(flags.be),
        backed_up=verified.credential_backed_up,
    )


def load_pem_roots(pem: bytes) -> list[bytes]:
    """Split a PEM bundle into single certificates (py_webauthn takes a list)."""
    pattern = rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----"
    return [m.group(0) + b"\n" for m in re.finditer(pattern, pem, re.DOTALL)]
