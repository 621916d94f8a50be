"""Property tests for the crypto helpers: random and hostile input only ever produces the
documented outcome.

- keyring: ``decrypt`` of anything that is not an intact ciphertext raises DecryptionFailed.
- tokens: ``verify_access_token`` of any string raises InvalidAccessToken (or returns claims
  for a token this key signed); ``token_hash`` takes every string.
- passwords: ``identify`` / ``verify`` / ``check_length`` never raise; a hash verifies its own
  password (and its NFKC twins) and nothing else: no truncation, no case folding; the policy
  takes passwords of any composition.
- totp: ``normalize_code`` / ``verify`` never raise; only codes of the window verify.
- recovery codes: ``normalize`` / ``matches`` never raise; display forms normalise back.
- webauthn: response readers and verifiers raise WebauthnResponseError, nothing else.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from authsvc.crypto import recovery, totp
from authsvc.crypto import webauthn as wa
from authsvc.crypto.blocklist import Blocklist, CommonPasswords, check_policy
from authsvc.crypto.keyring import DecryptionFailed, Keyring, generate_key_spec
from authsvc.crypto.passwords import (
    Argon2Params,
    PasswordHasher,
    VerifyResult,
    check_length,
)
from authsvc.crypto.tokens import (
    InvalidAccessToken,
    generate_signing_key,
    sign_access_token,
    token_hash,
    verify_access_token,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
    max_size=80,
)
huge_text = st.integers(min_value=1_000, max_value=100_000).map(lambda n: "9" * n)
texts = any_text | huge_text | st.just("")
b64url = st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())
aware_now = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)

RING = Keyring.from_specs([generate_key_spec("k2"), generate_key_spec("k1")])
HASHER = PasswordHasher(
    Argon2Params(time_cost=1, memory_cost_kib=8, parallelism=1),
    max_concurrent=4,
    acquire_timeout=10.0,
)
KEY = generate_signing_key("kid-1")
JWKS = {KEY.kid: KEY.public_jwk}
# PyJWT also checks nbf and exp against the wall clock, so tokens are made "now".
NOW = datetime.now(UTC).replace(microsecond=0)
ISSUER, AUDIENCE = "https://auth.example", "authsvc"


# --- keyring ---------------------------------------------------------------------------


@FAST
@given(blob=st.binary(max_size=200), aad=st.binary(max_size=16))
def test_decrypting_random_bytes_fails_closed(blob, aad):
    with pytest.raises(DecryptionFailed):
        RING.decrypt(blob, associated_data=aad)


@FAST
@given(
    plaintext=st.binary(max_size=200),
    aad=st.binary(max_size=16),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_changed_byte_is_detected(plaintext, aad, position, flip):
    blob = bytearray(RING.encrypt(plaintext, associated_data=aad))
    blob[position % len(blob)] ^= flip

    with pytest.raises(DecryptionFailed):
        RING.decrypt(bytes(blob), associated_data=aad)


@FAST
@given(plaintext=st.binary(max_size=200), aad=st.binary(max_size=16), cut=st.integers(1, 500))
def test_round_trip_and_truncation(plaintext, aad, cut):
    blob = RING.encrypt(plaintext, associated_data=aad)

    assert RING.decrypt(blob, associated_data=aad) == plaintext
    with pytest.raises(DecryptionFailed):
        RING.decrypt(blob[: max(0, len(blob) - cut)], associated_data=aad)
    with pytest.raises(DecryptionFailed):
        RING.decrypt(blob, associated_data=aad + b"x")


# --- tokens ------------------------------------------------------------------------------


def _segment(value: Any) -> str:
    raw = json.dumps(value).encode() if not isinstance(value, bytes) else value
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["EdDSA", "none", "HS256", "RS256", "ES256"]) | st.text(max_size=5),
        "kid": st.sampled_from([KEY.kid, "other"]) | json_values,
        "typ": st.just("at+jwt") | json_values,
    },
)
jwt_shaped = st.builds(
    lambda header, payload, signature: f"{_segment(header)}.{_segment(payload)}.{signature}",
    headers | json_values,
    st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "iat", "sid", "amr", "auth_time"]), json_values
    ),
    b64url,
)


@FAST
@given(token=texts | jwt_shaped)
def test_verifying_any_string_raises_only_invalid_access_token(token):
    with pytest.raises(InvalidAccessToken):
        verify_access_token(token, public_jwks=JWKS, issuer=ISSUER, audience=AUDIENCE, now=NOW)


@FAST
@given(
    amr=st.lists(st.sampled_from(["pwd", "otp", "hwk", "swk", "mfa"]), max_size=4),
    position=st.integers(min_value=0),
    replacement=st.sampled_from("AbZz09-_"),
)
def test_a_signed_token_verifies_and_any_edit_is_refused(amr, position, replacement):
    token = sign_access_token(
        key=KEY,
        issuer=ISSUER,
        audience=AUDIENCE,
        subject="user-1",
        session_id="s-1",
        auth_time=NOW,
        amr=tuple(amr),
        now=NOW,
        ttl_seconds=600,
    )
    claims = verify_access_token(token, public_jwks=JWKS, issuer=ISSUER, audience=AUDIENCE, now=NOW)
    assert (claims.sub, claims.amr) == ("user-1", tuple(amr))

    index = position % len(token)
    assume(token[index] not in ".=" and token[index] != replacement)
    edited = token[:index] + replacement + token[index + 1 :]
    try:
        again = verify_access_token(
            edited, public_jwks=JWKS, issuer=ISSUER, audience=AUDIENCE, now=NOW
        )
    except InvalidAccessToken:
        return
    # Only the unused low bits of a segment's last character may change without effect.
    assert again == claims


@FAST
@given(token=texts)
def test_token_hash_takes_every_string(token):
    digest = token_hash(token)

    assert len(digest) == 64
    assert int(digest, 16) >= 0


# --- passwords ---------------------------------------------------------------------------

b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Well-formed hashes with cheap parameters (so that verification runs), random salts and
# digests, plus hashes above the cost ceilings (which must be refused without any work).
hash_like = (
    st.builds(
        "$argon2{}$v=19$m={},t={},p={}${}${}".format,
        st.sampled_from(["id", "i", "d"]),
        st.integers(8, 64),
        st.integers(1, 2),
        st.just(1),
        st.text(b64, min_size=11, max_size=22),
        st.text(b64, min_size=16, max_size=43),
    )
    | st.builds(
        "$2{}${:02d}${}".format,
        st.sampled_from("aby"),
        st.integers(4, 5),
        st.text("./" + b64[:-2], min_size=53, max_size=53),
    )
    | st.builds(
        "pbkdf2_sha256${}${}${}=".format,
        st.integers(1, 1000),
        st.text(b64, min_size=1, max_size=12),
        st.text(b64, min_size=43, max_size=43),
    )
    | st.sampled_from(
        [
            "$argon2id$v=19$m=999999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=65536,t=99,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$2b$99$" + "a" * 53,
            "$2b$31$" + "a" * 53,
            "pbkdf2_sha256$999999999$salt$" + "A" * 43 + "=",
        ]
    )
    | texts.map(lambda t: "$argon2id$v=19$m=8,t=1,p=1$" + t)
)


@FAST
@given(stored=texts | hash_like, password=texts)
def test_identify_and_verify_never_raise(stored, password):
    family = HASHER.identify(stored)
    result = HASHER.verify(stored, password)

    assert family in {None, "argon2", "bcrypt", "pbkdf2_sha256"}
    assert isinstance(result, VerifyResult)
    if family is None:
        assert result.ok is False
    assert check_length(password) in {None, "too_short", "too_long"}


@FAST
@given(stored=st.integers() | st.none() | st.binary() | st.lists(st.text()))
def test_identify_of_non_strings_is_none(stored):
    assert HASHER.identify(stored) is None


passwords = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)


@SLOW
@given(password=passwords, extra=st.characters(codec="utf-8"))
def test_a_hash_verifies_its_password_and_nothing_else(password, extra):
    stored = HASHER.hash(password)

    assert HASHER.verify(stored, password).ok
    assert HASHER.verify(stored, unicodedata.normalize("NFKC", password)).ok
    # No truncation: a longer or a shorter password is another password.
    longer = password + extra
    if unicodedata.normalize("NFKC", longer) != unicodedata.normalize("NFKC", password):
        assert not HASHER.verify(stored, longer).ok
    shorter = password[:-1]
    if unicodedata.normalize("NFKC", shorter) != unicodedata.normalize("NFKC", password):
        assert not HASHER.verify(stored, shorter).ok
    # No case folding: the same letters in another case are another password.
    for other in (password.swapcase(), password.upper(), password.lower()):
        if unicodedata.normalize("NFKC", other) != unicodedata.normalize("NFKC", password):
            assert not HASHER.verify(stored, other).ok


@SLOW
@given(password=st.text(min_size=65, max_size=256).filter(lambda p: "\ud800" not in p))
def test_long_passwords_are_not_truncated(password):
    stored = HASHER.hash(password)
    changed_end = password[:-1] + ("a" if password[-1] != "a" else "b")

    assert HASHER.verify(stored, password).ok
    assume(unicodedata.normalize("NFKC", changed_end) != unicodedata.normalize("NFKC", password))
    assert not HASHER.verify(stored, changed_end).ok


COMMON = CommonPasswords()
compositions = st.sampled_from(
    [
        st.characters(min_codepoint=ord("a"), max_codepoint=ord("z")),  # lower case only
        st.characters(min_codepoint=ord("0"), max_codepoint=ord("9")),  # digits only
        st.sampled_from(" "),  # spaces only
        st.characters(codec="utf-8", exclude_categories=["Cc"]),  # anything printable or not
        st.characters(categories=["So"]),  # emoji and symbols
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
    ]
)


@FAST
@given(data=st.data())
def test_any_composition_of_acceptable_length_passes_the_policy(data):
    alphabet = data.draw(compositions)
    password = data.draw(st.text(alphabet=alphabet, min_size=8, max_size=256))
    normalized = unicodedata.normalize("NFKC", password)
    assume(8 <= len(normalized) <= 256)
    assume(normalized not in COMMON)

    assert (
        check_policy(password, blocklist=Blocklist(COMMON, None), min_length=8, max_length=256)
        == normalized
    )


# --- TOTP --------------------------------------------------------------------------------

# pyotp refuses secrets under 112 bits; stored ones have 160 (totp.SECRET_BYTES).
secrets_b32 = st.binary(min_size=14, max_size=32).map(
    lambda b: base64.b32encode(b).decode().rstrip("=")
)


@FAST
@given(raw=texts)
def test_normalize_code_gives_six_ascii_digits_or_none(raw):
    code = totp.normalize_code(raw)

    assert code is None or (len(code) == 6 and code.isascii() and code.isdigit())


@FAST
@given(
    secret=secrets_b32,
    code=texts,
    now=aware_now,
    after=st.none() | st.integers(min_value=-(2**40), max_value=2**40),
)
def test_verify_never_raises_and_matches_only_inside_the_window(secret, code, now, after):
    step = totp.verify(secret=secret, code=code, now=now, after_step=after)

    if step is not None:
        assert abs(step - totp.step_at(now)) <= totp.WINDOW
        assert totp.code_at(secret, step) == totp.normalize_code(code)
        assert after is None or step > after


@FAST
@given(secret=secrets_b32, now=aware_now, offset=st.integers(min_value=-5, max_value=5))
def test_a_code_verifies_exactly_within_one_step(secret, now, offset):
    step = totp.step_at(now) + offset
    code = totp.code_at(secret, step)

    matched = totp.verify(secret=secret, code=code, now=now)

    if abs(offset) <= totp.WINDOW:
        assert matched is not None and totp.code_at(secret, matched) == code
    elif matched is not None:
        # Another step inside the window happens to share the code (one in a million).
        assert abs(matched - totp.step_at(now)) <= totp.WINDOW


@FAST
@given(now=st.datetimes(timezones=st.none()))
def test_naive_times_are_refused(now):
    with pytest.raises(ValueError):
        totp.step_at(now)


valid_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@FAST
@given(account=valid_text, issuer=valid_text)
def test_provisioning_uris_are_always_well_formed(account, issuer):
    # Both come from validated input (a normalised email, a setting): no lone surrogates.
    secret = totp.generate_secret()

    uri = totp.provisioning_uri(secret=secret, account_name=account, issuer=issuer)

    assert uri.startswith("otpauth://totp/")
    assert f"secret={secret}&" in uri
    uri.encode("ascii")  # everything else is percent-encoded


# --- recovery codes ----------------------------------------------------------------------


@FAST
@given(raw=texts)
def test_recovery_normalize_gives_24_symbols_or_none(raw):
    code = recovery.normalize(raw)

    assert code is None or (len(code) == 24 and set(code) <= set(recovery.ALPHABET))


@FAST
@given(data=st.data())
def test_displayed_codes_normalise_back_in_any_case(data):
    (shown,) = recovery.generate(1)
    typed = "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) for c in shown)

    assert recovery.normalize(typed) == shown.replace("-", "")
    assert recovery.normalize(" ".join(typed.split("-"))) == shown.replace("-", "")


@FAST
@given(expected=st.lists(st.text(max_size=70), max_size=12), candidate=texts)
def test_matches_never_raises(expected, candidate):
    # Both sides are hex digests in practice; any valid text must not break the comparison.
    assume(all(c < "\ud800" or c > "\udfff" for c in "".join(expected) + candidate))
    found = recovery.matches(expected, candidate)

    assert found is None or expected[found] == candidate


# --- WebAuthn ----------------------------------------------------------------------------

credential_like = st.fixed_dictionaries(
    {},
    optional={
        "id": b64url | json_values,
        "rawId": b64url | json_values,
        "type": st.just("public-key") | json_values,
        "response": st.fixed_dictionaries(
            {},
            optional={
                "clientDataJSON": b64url
                | st.builds(
                    _segment,
                    st.dictionaries(
                        st.sampled_from(["type", "challenge", "origin", "crossOrigin"]), json_values
                    ),
                )
                | json_values,
                "authenticatorData": b64url | json_values,
                "signature": b64url | json_values,
                "attestationObject": b64url | json_values,
                "userHandle": b64url | json_values,
                "transports": json_values,
            },
        )
        | json_values,
        "clientExtensionResults": json_values,
    },
)
anything = credential_like | json_values | texts


@FAST
@given(text=texts | b64url)
def test_from_b64url_gives_bytes_or_a_webauthn_error(text):
    try:
        decoded = wa.from_b64url(text)
    except wa.WebauthnResponseError as exc:
        assert exc.reason == "base64url"
        return
    # Canonical or not (unused low bits of the last symbol), it decodes to what it encodes.
    assert wa.from_b64url(wa.b64url(decoded)) == decoded
    assert len(wa.b64url(decoded)) == len(text.rstrip("="))


@FAST
@given(credential=anything)
def test_reading_any_response_raises_only_webauthn_errors(credential):
    for read in (wa.read_assertion, wa.read_registration):
        try:
            answer = read(credential)
        except wa.WebauthnResponseError:
            continue
        assert isinstance(answer.challenge, bytes)


@FAST
@given(credential=anything)
def test_verifying_any_response_raises_only_webauthn_errors(credential):
    challenge, rp_id, origins = b"c" * 32, "localhost", ("http://localhost:8000",)
    with pytest.raises(wa.WebauthnResponseError):
        wa.verify_registration(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origins=origins,
            require_user_verification=False,
        )
    with pytest.raises(wa.WebauthnResponseError):
        wa.verify_assertion(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origins=origins,
            credential_public_key=b"\xa0",
            require_user_verification=False,
        )


def test_the_time_steps_of_the_window_are_the_only_ones():
    # A fixed example next to the properties: now, and one step either side.
    secret = totp.generate_secret()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    accepted = [
        offset
        for offset in range(-3, 4)
        if totp.verify(
            secret=secret, code=totp.code_at(secret, totp.step_at(now) + offset), now=now
        )
        is not None
    ]
    assert {-1, 0, 1} <= set(accepted)
    assert totp.step_at(now + timedelta(seconds=totp.PERIOD)) == totp.step_at(now) + 1
