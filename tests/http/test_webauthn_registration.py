"""POST /v1/me/mfa/webauthn/registration-options and POST /v1/me/mfa/webauthn."""

from __future__ import annotations

import dataclasses
import json
import struct
from datetime import timedelta

import cbor2
import pytest
import webauthn.registration.formats.android_key as android_key_format
import webauthn.registration.formats.android_safetynet as safetynet_format
import webauthn.registration.formats.apple as apple_format
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import func, select

from authsvc.db import utcnow
from authsvc.models import AuditEvent, WebauthnChallenge, WebauthnCredential
from authsvc.services import webauthn as webauthn_service
from tests.conftest import runtime
from tests.support_webauthn import (
    CROSS_ORIGIN_FRAMES,
    MISREAD_CLIENT_DATA,
    AttestationCa,
    SoftAuthenticator,
    b64url,
    bearer,
    enroll,
    signed_in,
    unb64url,
    with_client_data,
)

OPTIONS = "/v1/me/mfa/webauthn/registration-options"
REGISTER = "/v1/me/mfa/webauthn"
YUBI = bytes.fromhex("cb69481e8ff7403993ec0a2729a154a8")
OTHER = bytes.fromhex("ee882879721c491397753dfcce97072a")


def _options(client, access, name="Blue key"):
    response = client.post(OPTIONS, json={"name": name}, headers=bearer(access))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _db(app):
    return runtime(app).sessionmaker()


def test_options_carry_challenge_rp_user_and_policy(client, api, settings):
    access = signed_in(api)
    options = _options(client, access)
    assert options["rp"] == {"id": settings.webauthn_rp_id, "name": settings.webauthn_rp_name}
    assert options["user"]["name"] == "ada@example.com"
    assert len(unb64url(options["challenge"])) == 32
    assert len(unb64url(options["user"]["id"])) == 32
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == []
    assert options["extensions"] == {"credProps": True}
    assert options["timeout"] == 300_000
    assert _options(client, access)["challenge"] != options["challenge"]


def test_register_stores_the_key_and_excludes_it_next_time(app, client, api, mailbox):
    access = signed_in(api)
    key = SoftAuthenticator()
    factor = enroll(client, access, key, name="  Blue   key ")
    assert factor["type"] == "webauthn"
    assert factor["name"] == "Blue key"
    assert factor["passkey"] is True and factor["synced"] is False
    assert factor["last_used_at"] is None
    options = _options(client, access)
    assert [c["id"] for c in options["excludeCredentials"]] == [b64url(key.only_key())]
    assert options["excludeCredentials"][0]["transports"] == ["usb", "nfc"]
    with _db(app) as session:
        row = session.scalar(select(WebauthnCredential))
        assert row.credential_id == key.only_key()
        assert row.sign_count == 0 and row.aaguid == "00000000-0000-0000-0000-000000000000"
        assert row.transports == "usb nfc" and row.discoverable is True
        assert row.user_verified is True and row.backup_eligible is False
        assert row.user_handle == unb64url(options["user"]["id"])  # one handle per user
    api.drain()
    notice = mailbox.last("ada@example.com").get_content()
    assert notice.startswith("A security key or passkey was added") and "Blue key" not in notice
    me = client.get("/v1/me", headers=bearer(access)).get_json()
    assert "webauthn" in me["mfa_methods"]


def test_name_in_the_final_call_wins(client, api):
    access = signed_in(api)
    options = _options(client, access, name="first")
    credential = SoftAuthenticator().register(options)
    response = client.post(
        REGISTER, json={"credential": credential, "name": "Laptop"}, headers=bearer(access)
    )
    assert response.status_code == 201
    assert response.get_json()["name"] == "Laptop"


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "bad\u0007name"])
def test_bad_names_are_refused(client, api, name):
    access = signed_in(api)
    response = client.post(OPTIONS, json={"name": name}, headers=bearer(access))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"


def test_registration_needs_a_bearer_token(client):
    response = client.post(OPTIONS, json={"name": "x"})
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"


def test_wrong_origin_is_refused_and_audited(app, client, api):
    access = signed_in(api)
    credential = SoftAuthenticator().register(
        _options(client, access), origin="https://evil.example"
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "invalid_webauthn_response" and body["reason"] == "not_verified"
    with _db(app) as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.type == "mfa.webauthn.register"))
        assert event.outcome == "rejected"
        assert session.scalar(select(WebauthnCredential)) is None


@pytest.mark.parametrize("framing", CROSS_ORIGIN_FRAMES, ids="+".join)
def test_a_key_created_in_a_cross_origin_frame_is_refused(app, client, api, framing):
    access = signed_in(api)
    credential = SoftAuthenticator().register(_options(client, access), extra_client_data=framing)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    assert (response.status_code, body.get("code"), body.get("reason")) == (
        400,
        "invalid_webauthn_response",
        "cross_origin",
    )
    with _db(app) as session:
        assert session.scalar(select(WebauthnCredential)) is None


@pytest.mark.parametrize("case", sorted(MISREAD_CLIENT_DATA))
def test_client_data_is_utf8_with_the_challenge_in_base64url(app, client, api, case):
    # The challenge decodes to the one issued either way: py_webauthn decoded base64 leniently
    # (padding, stray symbols) and JSON in UTF-16 too, where the ceremony reads UTF-8 and
    # compares the base64url string.
    access = signed_in(api)
    credential = with_client_data(
        SoftAuthenticator().register(_options(client, access)), MISREAD_CLIENT_DATA[case]
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    assert response.status_code == 400, body
    assert (body["code"], body["reason"]) == ("invalid_webauthn_response", "malformed")
    with _db(app) as session:
        assert session.scalar(select(func.count()).select_from(WebauthnCredential)) == 0


def test_client_data_may_open_with_a_byte_order_mark(client, api):
    # UTF-8 decode strips a leading BOM (WebAuthn L3 7.1 step 5).
    access = signed_in(api)
    credential = with_client_data(
        SoftAuthenticator().register(_options(client, access)),
        lambda data: b"\xef\xbb\xbf" + json.dumps(data).encode(),
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 201, response.get_json()


def test_wrong_rp_id_is_refused(client, api):
    access = signed_in(api)
    credential = SoftAuthenticator().register(_options(client, access), rp_id="evil.example")
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_webauthn_response"


def test_replayed_registration_is_refused_and_audited(client, api, connection):
    access = signed_in(api)
    credential = SoftAuthenticator().register(_options(client, access))
    assert (
        client.post(REGISTER, json={"credential": credential}, headers=bearer(access)).status_code
        == 201
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_challenge")
    details = connection.scalars(
        select(AuditEvent.details).where(AuditEvent.type == "mfa.webauthn.register")
    ).all()
    assert [json.loads(d)["reason"] for d in details] == ["invalid_challenge"]
    assert response.get_json()["code"] == "invalid_challenge"


def test_a_challenge_of_another_user_is_refused(client, api):
    ada = signed_in(api, "ada@example.com")
    bob = signed_in(api, "bob@example.com")
    credential = SoftAuthenticator().register(_options(client, ada))
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(bob))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_challenge"


def test_an_expired_challenge_is_refused(app, client, api):
    access = signed_in(api)
    credential = SoftAuthenticator().register(_options(client, access))
    with _db(app) as session, session.begin():
        for row in session.scalars(select(WebauthnChallenge)):
            row.expires_at = utcnow() - timedelta(seconds=1)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_challenge"


def test_required_user_verification_refuses_a_key_without_it(app, client, api):
    _policy(app, webauthn_user_verification="required")
    access = signed_in(api)
    options = _options(client, access)
    assert options["authenticatorSelection"]["userVerification"] == "required"
    credential = SoftAuthenticator().register(options, uv=False)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_webauthn_response"


def test_a_key_that_did_not_see_the_user_is_refused(app, client, api):
    # WebAuthn L3 7.1: UP is required (authsvc asks for no conditional creation).
    access = signed_in(api)
    credential = SoftAuthenticator().register(_options(client, access), up=False)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    assert response.status_code == 400, body
    assert (body["reason"], body["detail"]) == (
        "not_verified",
        "the authenticator did not see the user present",
    )
    with _db(app) as session:
        assert session.scalar(select(func.count()).select_from(WebauthnCredential)) == 0


@pytest.mark.parametrize(("length", "status"), [(1023, 201), (1024, 400)])
def test_a_credential_id_is_at_most_1023_bytes(client, api, length, status):
    # WebAuthn L3 7.1: a longer credential id fails the ceremony.
    access = signed_in(api)
    credential = SoftAuthenticator().register(
        _options(client, access), credential_id=b"\x01" * length
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == status, response.get_json()
    if status == 400:
        assert response.get_json()["reason"] == "malformed"


def _policy(app, **changes):
    rt = runtime(app)
    settings = dataclasses.replace(rt.settings, **changes)
    rt.settings = settings
    rt.deps = dataclasses.replace(rt.deps, settings=settings)


@pytest.mark.parametrize(
    ("changes", "aaguid", "backup", "reason"),
    [
        (
            {"webauthn_aaguid_deny": ("cb69481e-8ff7-4039-93ec-0a2729a154a8",)},
            YUBI,
            False,
            "aaguid_denied",
        ),
        (
            {"webauthn_aaguid_allow": ("cb69481e-8ff7-4039-93ec-0a2729a154a8",)},
            OTHER,
            False,
            "aaguid_not_allowed",
        ),
        ({"webauthn_allow_backup_eligible": False}, YUBI, True, "backup_eligible"),
    ],
)
def test_authenticator_policy_refusals(app, client, api, changes, aaguid, backup, reason):
    _policy(app, **changes)
    access = signed_in(api)
    key = SoftAuthenticator(aaguid=aaguid, backup_eligible=backup)
    credential = key.register(_options(client, access))
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 403
    body = response.get_json()
    assert body["code"] == "authenticator_not_allowed" and body["reason"] == reason


def test_backed_up_without_backup_eligibility_is_refused(app, client, api):
    # WebAuthn L3 7.1: BS set without BE is a state no authenticator can be in.
    access = signed_in(api)
    key = SoftAuthenticator(backup_eligible=False, backed_up=True)
    credential = key.register(_options(client, access))
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    assert response.status_code == 400, body
    assert (body["code"], body["reason"], body["detail"]) == (
        "invalid_webauthn_response",
        "not_verified",
        "the authenticator says backed up (BS) but not backup eligible (BE)",
    )
    with _db(app) as session:
        assert session.scalar(select(func.count()).select_from(WebauthnCredential)) == 0


def test_allow_list_accepts_a_listed_model(app, client, api):
    _policy(app, webauthn_aaguid_allow=("cb69481e-8ff7-4039-93ec-0a2729a154a8",))
    access = signed_in(api)
    assert enroll(client, access, SoftAuthenticator(aaguid=YUBI))["type"] == "webauthn"


def test_direct_attestation_accepts_a_model_vouched_for_by_a_trusted_root(
    app, client, api, tmp_path
):
    ca = AttestationCa(aaguid=YUBI)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca.root_pem())
    _policy(
        app,
        webauthn_attestation="direct",
        webauthn_attestation_roots=roots,
        webauthn_aaguid_allow=("cb69481e-8ff7-4039-93ec-0a2729a154a8",),
    )
    access = signed_in(api)
    options = _options(client, access)
    assert options["attestation"] == "direct"
    factor = enroll(client, access, SoftAuthenticator(aaguid=YUBI), fmt="packed", ca=ca)
    assert factor["type"] == "webauthn"


@pytest.mark.parametrize("case", ["none", "self", "untrusted_root", "cert_names_other_model"])
def test_direct_attestation_refusals(app, client, api, tmp_path, case):
    trusted = AttestationCa(aaguid=YUBI)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(trusted.root_pem())
    _policy(app, webauthn_attestation="direct", webauthn_attestation_roots=roots)
    access = signed_in(api)
    key = SoftAuthenticator(aaguid=YUBI)
    kwargs = {
        "none": {"fmt": "none"},
        "self": {"fmt": "packed"},
        "untrusted_root": {"fmt": "packed", "ca": AttestationCa(aaguid=YUBI)},
        "cert_names_other_model": {
            "fmt": "packed",
            "ca": AttestationCa(aaguid=YUBI, cert_aaguid=OTHER),
        },
    }[case]
    if case == "cert_names_other_model":
        roots.write_bytes(kwargs["ca"].root_pem())
    credential = key.register(_options(client, access), **kwargs)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    if case in ("none", "self"):
        assert response.status_code == 403
        assert body == {
            **body,
            "code": "authenticator_not_allowed",
            "reason": "attestation_required",
        }
    else:
        assert response.status_code == 400
        assert body["code"] == "invalid_webauthn_response"


# The roots py_webauthn adds on its own for these formats (Apple's, Google's, GlobalSign's).
BUILT_IN_ROOTS = {
    "apple": (apple_format, "apple_webauthn_root_ca"),
    "android-key": (android_key_format, "google_hardware_attestation_root_2"),
    "android-safetynet": (safetynet_format, "globalsign_root_ca"),
}


@pytest.mark.parametrize("fmt", sorted(BUILT_IN_ROOTS))
@pytest.mark.parametrize("operator_trusts_the_vendor", [False, True])
def test_direct_attestation_trusts_only_the_configured_roots(
    app, client, api, tmp_path, monkeypatch, fmt, operator_trusts_the_vendor
):
    # A vendor's root that py_webauthn trusts for one format (played by a root whose key the
    # test holds) vouches for a key only when the operator's roots file lists it too.
    vendor = AttestationCa(aaguid=YUBI, name="Vendor Root CA")
    module, constant = BUILT_IN_ROOTS[fmt]
    monkeypatch.setattr(module, constant, vendor.root_pem())
    roots = tmp_path / "roots.pem"
    listed = AttestationCa(aaguid=YUBI).root_pem()
    roots.write_bytes(listed + vendor.root_pem() if operator_trusts_the_vendor else listed)
    _policy(app, webauthn_attestation="direct", webauthn_attestation_roots=roots)
    access = signed_in(api)
    credential = SoftAuthenticator(aaguid=YUBI).register(
        _options(client, access), fmt=fmt, ca=vendor
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    if fmt == "android-safetynet":  # its chain is not in attStmt.x5c: never counted as attested
        assert (response.status_code, body.get("reason")) == (403, "attestation_required")
    elif operator_trusts_the_vendor:
        assert response.status_code == 201, body
    else:
        assert (response.status_code, body.get("code"), body.get("reason")) == (
            400,
            "invalid_webauthn_response",
            "not_verified",
        ), body


def test_the_same_credential_cannot_be_registered_twice(app, client, api):
    ada = signed_in(api, "ada@example.com")
    bob = signed_in(api, "bob@example.com")
    key = SoftAuthenticator()
    enroll(client, ada, key)
    again = key.register(_options(client, bob), credential_id=key.only_key())
    response = client.post(REGISTER, json={"credential": again}, headers=bearer(bob))
    assert response.status_code == 409
    assert response.get_json()["code"] == "credential_exists"


def test_a_registration_that_loses_the_race_for_its_key_is_a_conflict(
    client, api, connection, monkeypatch
):
    # Another account stores the same credential id after this request checked for it: the
    # unique index decides, and the loser gets 409, not a 500.
    ada = signed_in(api, "ada@example.com")
    ada_id = client.get("/v1/me", headers=bearer(ada)).get_json()["id"]
    bob = signed_in(api, "bob@example.com")
    credential = SoftAuthenticator().register(_options(client, bob))
    real = webauthn_service.credentials_of

    def credentials_of_while_ada_registers(session, user_id):
        session.add(
            WebauthnCredential(
                user_id=ada_id,
                credential_id=unb64url(credential["rawId"]),
                public_key=b"k",
                aaguid="00000000-0000-0000-0000-000000000000",
                attestation_format="none",
                user_handle=b"h",
                user_verified=True,
                backup_eligible=False,
                backed_up=False,
                name="Ada's key",
                created_at=utcnow(),
            )
        )
        session.flush()
        return real(session, user_id)

    monkeypatch.setattr(webauthn_service, "credentials_of", credentials_of_while_ada_registers)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(bob))

    assert (response.status_code, response.get_json()["code"]) == (409, "credential_exists")
    assert connection.scalars(select(WebauthnCredential.user_id)).all() == [ada_id]
    details = connection.scalars(
        select(AuditEvent.details).where(AuditEvent.type == "mfa.webauthn.register")
    ).all()
    assert [json.loads(d)["reason"] for d in details] == ["credential_exists"]


def test_an_id_that_is_not_the_attested_one_is_refused(client, api):
    access = signed_in(api)
    credential = SoftAuthenticator().register(_options(client, access))
    credential["id"] = credential["rawId"] = b64url(b"another id")
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_webauthn_response"


def _with_attestation(credential, **members):
    """The registration with members of its attestation object replaced; a member given as
    None is left out ("none" attestation signs nothing, so the rest stays well formed)."""
    attestation = cbor2.loads(unb64url(credential["response"]["attestationObject"]))
    attestation = {k: v for k, v in {**attestation, **members}.items() if v is not None}
    response = {**credential["response"], "attestationObject": b64url(cbor2.dumps(attestation))}
    return {**credential, "response": response}


@pytest.mark.parametrize(
    ("statement", "detail"),
    [
        pytest.param({"x5c": [b"\0"]}, 'a "none" attestation has an empty attStmt', id="x5c"),
        pytest.param({"sig": b"\0"}, 'a "none" attestation has an empty attStmt', id="sig"),
        pytest.param({"x": 1}, 'a "none" attestation has an empty attStmt', id="unknown_member"),
        pytest.param(None, "attStmt must be a map", id="left_out"),
        pytest.param([], "attStmt must be a map", id="a_list"),
        pytest.param("sig", "attStmt must be a map", id="a_string"),
    ],
)
def test_a_none_attestation_has_an_empty_statement(app, client, api, statement, detail):
    # WebAuthn L3 8.7: fmt "none" goes with attStmt = {}. py_webauthn refused the members it
    # knows (sig, x5c, ...) only, and took a statement left out or of another type.
    access = signed_in(api)
    credential = _with_attestation(
        SoftAuthenticator().register(_options(client, access)), attStmt=statement
    )
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    body = response.get_json()
    assert response.status_code == 400, body
    assert (body["code"], body["reason"], body["detail"]) == (
        "invalid_webauthn_response",
        "malformed",
        detail,
    )
    with _db(app) as session:
        assert session.scalar(select(func.count()).select_from(WebauthnCredential)) == 0
        (reason,) = session.scalars(
            select(AuditEvent.details).where(AuditEvent.type == "mfa.webauthn.register")
        ).all()
    assert json.loads(reason)["reason"] == "malformed"


def _with_public_key(credential, cose_key):
    """The registration with another credential public key ("none" attestation signs
    nothing, so it stays a well-formed answer)."""
    attestation = cbor2.loads(unb64url(credential["response"]["attestationObject"]))
    auth_data = attestation["authData"]
    (length,) = struct.unpack(">H", auth_data[53:55])
    attestation["authData"] = auth_data[: 55 + length] + cbor2.dumps(cose_key)
    response = {**credential["response"], "attestationObject": b64url(cbor2.dumps(attestation))}
    return {**credential, "response": response}


_P256_POINT = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
_X, _Y = _P256_POINT.x.to_bytes(32, "big"), _P256_POINT.y.to_bytes(32, "big")


@pytest.mark.parametrize(
    "cose_key",
    [
        pytest.param({1: 2, 3: -7, -1: 1, -2: bytes(32), -3: bytes(32)}, id="not_on_the_curve"),
        pytest.param({1: 2, 3: -7, -1: 1, -2: b"\1", -3: b"\2"}, id="short_coordinates"),
        pytest.param({1: 2, 3: -7, -1: 99, -2: _X, -3: _Y}, id="unknown_curve"),
        pytest.param({1: 2, 3: -257, -1: 1, -2: _X, -3: _Y}, id="ec_key_for_rs256"),
        pytest.param({1: 2, 3: -8, -1: 1, -2: _X, -3: _Y}, id="ec_key_for_eddsa"),
        pytest.param({1: 1, 3: -7, -1: 6, -2: bytes(32)}, id="okp_key_for_es256"),
        pytest.param({1: 1, 3: -8, -1: 6, -2: b"\1" * 5}, id="ed25519_of_5_bytes"),
        pytest.param({1: 3, 3: -257, -1: b"\1" * 256, -2: b"\1"}, id="rsa_exponent_1"),
        pytest.param({1: 3, 3: -7, -1: b"\xc1" * 256, -2: b"\1\0\1"}, id="rsa_key_for_es256"),
    ],
)
def test_a_public_key_that_could_never_verify_is_refused(app, client, api, cose_key):
    # Stored, it was a factor (the first one with its recovery codes, and MFA on) that no
    # assertion could ever pass.
    access = signed_in(api)
    credential = _with_public_key(SoftAuthenticator().register(_options(client, access)), cose_key)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["code"] == "invalid_webauthn_response"
    assert response.get_json()["reason"] == "malformed"
    with _db(app) as session:
        assert session.scalar(select(func.count()).select_from(WebauthnCredential)) == 0


def _rsa_cose_key():
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    n, e = numbers.public_numbers().n, numbers.public_numbers().e
    return {1: 3, 3: -257, -1: n.to_bytes(256, "big"), -2: e.to_bytes(3, "big")}


@pytest.mark.parametrize(
    "cose_key",
    [
        pytest.param({1: 2, 3: -7, -1: 1, -2: _X, -3: _Y}, id="es256"),
        pytest.param(
            {
                1: 1,
                3: -8,
                -1: 6,
                -2: ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
            },
            id="eddsa",
        ),
        pytest.param(_rsa_cose_key(), id="rs256"),
    ],
)
def test_a_key_of_each_offered_algorithm_registers(client, api, cose_key):
    access = signed_in(api)
    options = _options(client, access)
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-8, -7, -257]
    credential = _with_public_key(SoftAuthenticator().register(options), cose_key)
    response = client.post(REGISTER, json={"credential": credential}, headers=bearer(access))
    assert response.status_code == 201, response.get_json()


def test_too_many_keys(app, client, api):
    _policy(app, webauthn_max_credentials=1)
    access = signed_in(api)
    enroll(client, access, SoftAuthenticator())
    response = client.post(OPTIONS, json={"name": "another"}, headers=bearer(access))
    # The code of the TOTP limit too: one for every kind of factor.
    assert response.status_code == 409
    assert response.get_json()["code"] == "factor_limit_reached"


def test_a_key_beyond_the_limit_is_refused_at_registration_too(app, client, api):
    # Options asked for before another key took the last place.
    _policy(app, webauthn_max_credentials=1)
    access = signed_in(api)
    later = _options(client, access)
    enroll(client, access, SoftAuthenticator())

    response = client.post(
        REGISTER,
        json={"credential": SoftAuthenticator().register(later), "name": "Green key"},
        headers=bearer(access),
    )

    assert response.status_code == 409
    assert response.get_json()["code"] == "factor_limit_reached"


def test_an_account_holds_a_few_registration_challenges_at_most(app, client, api):
    # Each options call wrote a challenge row that stayed until it expired: a token could
    # pile them up without end. The oldest go once an account holds
    # REGISTRATION_CHALLENGES_KEPT; the newest ones (two tabs, a retry) still register.
    access = signed_in(api)
    kept = webauthn_service.REGISTRATION_CHALLENGES_KEPT
    first = _options(client, access)
    later = [_options(client, access) for _ in range(kept + 2)]

    with _db(app) as session:
        count = session.scalar(
            select(func.count())
            .select_from(WebauthnChallenge)
            .where(WebauthnChallenge.purpose == "registration")
        )
    assert count == kept
    key = SoftAuthenticator()
    refused = client.post(
        REGISTER, json={"credential": key.register(first), "name": "Old"}, headers=bearer(access)
    )
    assert refused.status_code == 400
    assert refused.get_json()["code"] == "invalid_challenge"
    for options in (later[-kept], later[-1]):  # the oldest kept and the newest
        response = client.post(
            REGISTER,
            json={"credential": SoftAuthenticator().register(options), "name": "New"},
            headers=bearer(access),
        )
        assert response.status_code == 201, response.get_json()
