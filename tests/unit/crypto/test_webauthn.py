"""authsvc.crypto.webauthn: options, strict decoding and both verifications, round-tripped
through py_webauthn with responses the software authenticator signs."""

from __future__ import annotations

import pytest

from authsvc.crypto import webauthn as wa
from tests.support_webauthn import AttestationCa, SoftAuthenticator, b64url

ORIGIN = "http://localhost:8000"
AAGUID = bytes.fromhex("cb69481e8ff7403993ec0a2729a154a8")


def _creation(challenge: bytes = b"c" * 32, **overrides):
    arguments = {
        "rp_id": "localhost",
        "rp_name": "authsvc",
        "user_handle": b"u" * 32,
        "user_name": "ada@example.com",
        "challenge": challenge,
        "timeout_ms": 60_000,
        "user_verification": "preferred",
        "attestation": "none",
        "exclude": [wa.Descriptor(b"old", ("usb", "bogus"))],
    }
    return wa.registration_options(**{**arguments, **overrides})


def _register(key: SoftAuthenticator, options, **kwargs):
    credential = key.register(options, **kwargs)
    return credential, wa.verify_registration(
        credential=credential,
        expected_challenge=wa.from_b64url(options["challenge"]),
        expected_rp_id="localhost",
        expected_origins=[ORIGIN],
        require_user_verification=False,
    )


def test_creation_options_json():
    options = _creation()
    assert options["challenge"] == b64url(b"c" * 32)
    assert options["user"] == {
        "id": b64url(b"u" * 32),
        "name": "ada@example.com",
        "displayName": "ada@example.com",
    }
    assert options["excludeCredentials"] == [
        {"id": b64url(b"old"), "type": "public-key", "transports": ["usb"]}
    ]
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["extensions"] == {"credProps": True}
    assert {p["alg"] for p in options["pubKeyCredParams"]} >= {-7, -8, -257}


def test_request_options_json():
    options = wa.authentication_options(
        rp_id="localhost",
        challenge=b"x" * 32,
        timeout_ms=1000,
        user_verification="required",
        allow=[],
    )
    assert options == {
        "rpId": "localhost",
        "challenge": b64url(b"x" * 32),
        "timeout": 1000,
        "allowCredentials": [],
        "userVerification": "required",
    }


@pytest.mark.parametrize(
    ("text", "data"), [("", b""), ("AQ", b"\x01"), ("AQI=", b"\x01\x02"), ("-_8", b"\xfb\xff")]
)
def test_strict_base64url_accepts(text, data):
    assert wa.from_b64url(text) == data


@pytest.mark.parametrize("text", ["A", "a+b/", "ab c", "abc===", "é", "AQ==="])
def test_strict_base64url_refuses(text):
    with pytest.raises(wa.WebauthnResponseError) as caught:
        wa.from_b64url(text)
    assert caught.value.reason == "base64url"


def test_registration_round_trip():
    key = SoftAuthenticator(aaguid=AAGUID)
    options = _creation()
    credential, verified = _register(key, options)
    assert verified.credential_id == key.only_key()
    assert verified.aaguid == "cb69481e-8ff7-4039-93ec-0a2729a154a8"
    assert verified.attestation_format == "none" and verified.attested is False
    assert verified.transports == ("usb", "nfc") and verified.discoverable is True
    assert verified.user_verified is True and verified.backup_eligible is False
    answer = wa.read_registration(credential)
    assert answer.challenge == b"c" * 32 and answer.credential_id == key.only_key()


def test_packed_attestation_with_a_trusted_root():
    ca = AttestationCa(aaguid=AAGUID)
    options = _creation()
    credential = SoftAuthenticator(aaguid=AAGUID).register(options, fmt="packed", ca=ca)
    verified = wa.verify_registration(
        credential=credential,
        expected_challenge=b"c" * 32,
        expected_rp_id="localhost",
        expected_origins=[ORIGIN],
        require_user_verification=True,
        trusted_roots=wa.load_pem_roots(ca.root_pem() + AttestationCa(aaguid=AAGUID).root_pem()),
    )
    assert verified.attested is True and verified.attestation_format == "packed"


def test_packed_attestation_from_another_root_is_refused():
    credential = SoftAuthenticator(aaguid=AAGUID).register(
        _creation(), fmt="packed", ca=AttestationCa(aaguid=AAGUID)
    )
    with pytest.raises(wa.WebauthnResponseError) as caught:
        wa.verify_registration(
            credential=credential,
            expected_challenge=b"c" * 32,
            expected_rp_id="localhost",
            expected_origins=[ORIGIN],
            require_user_verification=False,
            trusted_roots=wa.load_pem_roots(AttestationCa(aaguid=AAGUID).root_pem()),
        )
    assert caught.value.reason == "not_verified"


def test_a_chain_checked_against_no_roots_is_not_attested():
    # py_webauthn passes any chain when it is given no roots (an empty roots file).
    ca = AttestationCa(aaguid=AAGUID)
    credential = SoftAuthenticator(aaguid=AAGUID).register(_creation(), fmt="packed", ca=ca)
    verified = wa.verify_registration(
        credential=credential,
        expected_challenge=b"c" * 32,
        expected_rp_id="localhost",
        expected_origins=[ORIGIN],
        require_user_verification=False,
        trusted_roots=wa.load_pem_roots(b"no certificates here\n"),
    )
    assert verified.attested is False and verified.attestation_format == "packed"


def test_load_pem_roots_splits_a_bundle():
    bundle = (
        AttestationCa(aaguid=AAGUID).root_pem()
        + b"junk\n"
        + AttestationCa(aaguid=AAGUID).root_pem()
    )
    roots = wa.load_pem_roots(bundle)
    assert len(roots) == 2 and all(r.startswith(b"-----BEGIN CERTIFICATE-----") for r in roots)


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        (
            {"expected_challenge": b"other"},
            "not_verified",
            "the response answers another challenge",
        ),
        (
            {"expected_rp_id": "example.com"},
            "not_verified",
            "the response is for another relying party",
        ),
        (
            {"expected_origins": ["https://localhost"]},
            "not_verified",
            "the response comes from an origin this service does not accept",
        ),
        (
            {"require_user_verification": True},
            "not_verified",
            "the authenticator did not verify the user",
        ),
    ],
)
def test_registration_mismatches(change, reason, detail):
    """Refused with the service's own words: py_webauthn's message quotes the expected
    origins and the client's."""
    options = _creation()
    credential = SoftAuthenticator().register(options, uv=False)
    arguments = {
        "credential": credential,
        "expected_challenge": b"c" * 32,
        "expected_rp_id": "localhost",
        "expected_origins": [ORIGIN],
        "require_user_verification": False,
    }
    with pytest.raises(wa.WebauthnResponseError) as caught:
        wa.verify_registration(**{**arguments, **change})
    assert (caught.value.reason, str(caught.value)) == (reason, detail)


def _assert(key: SoftAuthenticator, public_key: bytes, *, require_uv=False, **kwargs):
    options = {"rpId": "localhost", "challenge": b64url(b"a" * 32)}
    credential = key.assertion(options, **kwargs)
    return credential, wa.verify_assertion(
        credential=credential,
        expected_challenge=b"a" * 32,
        expected_rp_id="localhost",
        expected_origins=[ORIGIN],
        credential_public_key=public_key,
        require_user_verification=require_uv,
    )


def test_assertion_round_trip_reports_the_counter_without_judging_it():
    key = SoftAuthenticator(backup_eligible=True)
    _, registered = _register(key, _creation())
    _, first = _assert(key, registered.public_key)
    assert first.sign_count == 1 and first.backup_eligible and first.backed_up
    credential, lower = _assert(key, registered.public_key, sign_count=0)
    assert lower.sign_count == 0  # policy is the caller's
    answer = wa.read_assertion(credential)
    assert answer.user_handle == b"u" * 32 and answer.challenge == b"a" * 32


def test_assertion_needs_user_verification_when_required():
    key = SoftAuthenticator()
    _, registered = _register(key, _creation())
    with pytest.raises(wa.WebauthnResponseError) as caught:
        _assert(key, registered.public_key, require_uv=True, uv=False)
    assert str(caught.value) == "the authenticator did not verify the user"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"origin": "https://evil.example"}, "an origin this service does not accept"),
        ({"rp_id": "example.com"}, "another relying party"),
    ],
)
def test_assertion_refusals_quote_neither_origin(change, detail):
    key = SoftAuthenticator()
    _, registered = _register(key, _creation())
    with pytest.raises(wa.WebauthnResponseError) as caught:
        _assert(key, registered.public_key, **change)
    assert detail in str(caught.value)
    assert "localhost" not in str(caught.value) and "evil" not in str(caught.value)


def test_assertion_with_another_key_is_refused():
    key, other = SoftAuthenticator(), SoftAuthenticator()
    _register(key, _creation())
    _, registered_other = _register(other, _creation())
    with pytest.raises(wa.WebauthnResponseError) as caught:
        _assert(key, registered_other.public_key)
    assert caught.value.reason == "not_verified"
    assert str(caught.value) == "the signature does not verify"


@pytest.mark.parametrize(
    "credential",
    [
        None,
        [],
        {"type": "public-key"},
        {"type": "public-key", "id": "AA", "rawId": "AA", "response": {}},
        {
            "type": "public-key",
            "id": "AA",
            "rawId": "AB",
            "response": {"clientDataJSON": "", "authenticatorData": "", "signature": ""},
        },
        {
            "type": "public-key",
            "id": "",
            "rawId": "",
            "response": {"clientDataJSON": "", "authenticatorData": "", "signature": ""},
        },
        {
            "type": "public-key",
            "id": "AA",
            "rawId": "AA",
            "response": {"clientDataJSON": b64url(b"[]"), "authenticatorData": "", "signature": ""},
        },
        {
            "type": "public-key",
            "id": "AA",
            "rawId": "AA",
            "response": {
                "clientDataJSON": b64url(b"{}"),
                "authenticatorData": "",
                "signature": "",
                "userHandle": "@@",
            },
        },
    ],
)
def test_read_assertion_refuses_garbage(credential):
    with pytest.raises(wa.WebauthnResponseError) as caught:
        wa.read_assertion(credential)
    assert caught.value.reason in {"malformed", "base64url"}


def test_challenge_digest_is_sha256_hex():
    digest = wa.challenge_digest(b"abc")
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert wa.new_challenge() != wa.new_challenge() and len(wa.new_challenge()) == 32


def test_a_challenge_token_round_trips_and_binds_key_challenge_and_expiry():
    key, challenge = b"k" * 32, b"c" * 32
    token = wa.challenge_token(key, challenge=challenge, expires_at=1_900_000_000)
    assert len(token) == 54
    assert wa.challenge_token_expiry(key, token=token, challenge=challenge) == 1_900_000_000
    assert wa.challenge_token_expiry(b"K" * 32, token=token, challenge=challenge) is None
    assert wa.challenge_token_expiry(key, token=token, challenge=b"d" * 32) is None
    raw = wa.from_b64url(token)
    for index in range(len(raw)):  # every byte counts: the expiry's and the MAC's
        altered = raw[:index] + bytes([raw[index] ^ 0x80]) + raw[index + 1 :]
        assert wa.challenge_token_expiry(key, token=b64url(altered), challenge=challenge) is None


@pytest.mark.parametrize("token", ["", "nope", "*" * 54, "A" * 53, "A" * 56, "0" * 32])
def test_a_challenge_token_of_another_shape_opens_to_none(token):
    assert wa.challenge_token_expiry(b"k" * 32, token=token, challenge=b"c" * 32) is None


@pytest.mark.parametrize("member", ["id", "rawId"])
def test_a_padded_credential_id_is_malformed_in_both_ceremonies(member):
    """toJSON() never pads: a padded id is a client's mistake, refused before py_webauthn
    (which would refuse it as an answer that does not verify)."""
    options = _creation()
    key = SoftAuthenticator()
    credential = key.register(options)
    credential[member] += "="
    with pytest.raises(wa.WebauthnResponseError) as caught:
        wa.verify_registration(
            credential=credential,
            expected_challenge=b"c" * 32,
            expected_rp_id="localhost",
            expected_origins=[ORIGIN],
            require_user_verification=False,
        )
    assert caught.value.reason == "malformed"
    assertion = key.assertion({"rpId": "localhost", "challenge": b64url(b"a" * 32)})
    assertion[member] += "="
    with pytest.raises(wa.WebauthnResponseError) as caught:
        wa.read_assertion(assertion)
    assert caught.value.reason == "malformed"
