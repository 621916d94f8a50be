"""Garbage in every WebAuthn route: always a 4xx problem+json with a stable code."""

from __future__ import annotations

import copy

import pytest

from authsvc.settings import Settings
from tests.conftest import runtime
from tests.support_webauthn import (
    SoftAuthenticator,
    b64url,
    bearer,
    enroll,
    mfa_token,
    signed_in,
)


def _mutations(valid):
    """(label, mutate) pairs; mutate(valid credential) returns a broken one."""

    def replace(path, value):
        def mutate(credential):
            broken = copy.deepcopy(credential)
            target = broken["response"] if len(path) == 2 else broken
            target[path[-1]] = value
            return broken

        return mutate

    def drop(key):
        return lambda credential: {k: v for k, v in credential.items() if k != key}

    cases = [
        ("not_an_object", lambda _c: ["a", "list"]),
        ("empty", lambda _c: {}),
        ("string", lambda _c: "eyJ0eXBlIjoid2ViYXV0aG4uZ2V0In0"),
        ("client_data_not_json", replace(("response", "clientDataJSON"), b64url(b"not json"))),
        (
            "client_data_without_challenge",
            replace(("response", "clientDataJSON"), b64url(b'{"type": "webauthn.get"}')),
        ),
        (
            "client_data_wrong_types",
            replace(
                ("response", "clientDataJSON"), b64url(b'{"challenge": 5, "type": 1, "origin": 2}')
            ),
        ),
        ("huge_id", lambda c: {**c, "id": b64url(b"x" * 1100), "rawId": b64url(b"x" * 1100)}),
        ("wrong_type", replace(("type",), "password")),
        ("extensions_not_object", replace(("clientExtensionResults",), [])),
        ("attachment_not_string", replace(("authenticatorAttachment",), {})),
        ("response_not_object", replace(("response",), "x")),
    ]
    cases += [(f"missing_{key}", drop(key)) for key in ("id", "rawId", "type", "response")]
    for field in valid["response"]:
        if field == "transports":
            continue
        for label, value in (
            ("bad_b64", "***not base64url***"),
            ("number", 42),
            ("short_b64", "A"),
            ("empty", ""),
            ("trailing_newline", "AAAA\n"),
            ("bad_padding", "abc\n"),
        ):
            if (field, label) == ("userHandle", "empty"):
                continue  # an empty handle is well-formed; test_passkeys covers its meaning
            cases.append((f"{field}_{label}", replace(("response", field), value)))
    for field in ("attestationObject", "authenticatorData"):
        if field in valid["response"]:
            cases.append(
                (
                    f"{field}_garbage_cbor",
                    replace(("response", field), b64url(b"\xa1\x63fmt\xff\x00x")),
                )
            )
    return cases


def _check(response, statuses, codes, label=""):
    assert response.status_code in statuses, (label, response.status_code, response.get_json())
    assert response.mimetype == "application/problem+json", label
    assert response.get_json()["code"] in codes, (label, response.get_json())
    _check_detail(response.get_json(), label)


def _check_detail(body, label="", *client_origins):
    """A refusal's detail is in the service's words: nothing of py_webauthn's messages (their
    "See __cause__"), of the configured origins, or of what the client sent."""
    detail = body.get("detail", "")
    assert "__cause__" not in detail, (label, detail)
    for origin in (*Settings().webauthn_origins, *client_origins):
        assert origin.lower() not in detail.lower(), (label, detail)
        assert origin.split("//")[-1].lower() not in detail.lower(), (label, detail)


def test_registration_garbage(client, api):
    access = signed_in(api)

    def fresh():
        options = client.post(
            "/v1/me/mfa/webauthn/registration-options", json={"name": "k"}, headers=bearer(access)
        ).get_json()
        return SoftAuthenticator().register(options)

    for label, mutate in _mutations(fresh()):
        response = client.post(
            "/v1/me/mfa/webauthn", json={"credential": mutate(fresh())}, headers=bearer(access)
        )
        _check(
            response,
            {400},
            {"invalid_request", "invalid_webauthn_response", "invalid_challenge"},
            label,
        )


def test_mfa_garbage(app, client, api):
    key = SoftAuthenticator()
    enroll(client, signed_in(api), key)
    token = mfa_token(api)
    options = client.post("/v1/login/mfa/webauthn-options", json={"mfa_token": token})
    valid = key.assertion(options.get_json())
    for label, mutate in _mutations(valid):
        runtime(app).deps.limiter.reset()  # dozens of logins: not what this test is about
        token = mfa_token(api)
        options = client.post("/v1/login/mfa/webauthn-options", json={"mfa_token": token})
        credential = mutate(key.assertion(options.get_json()))
        response = client.post("/v1/login/mfa", json={"mfa_token": token, "webauthn": credential})
        _check(
            response,
            {400, 401},
            {"invalid_request", "invalid_webauthn_response", "invalid_mfa"},
            label,
        )


def test_passkey_garbage(client, api):
    key = SoftAuthenticator()
    enroll(client, signed_in(api), key)
    options = client.post("/v1/passkeys/login-options").get_json()
    valid = key.assertion(options)
    for label, mutate in _mutations(valid):
        options = client.post("/v1/passkeys/login-options").get_json()
        response = client.post(
            "/v1/passkeys/login",
            json={
                "challenge_id": options["challenge_id"],
                "credential": mutate(key.assertion(options)),
            },
        )
        _check(
            response,
            {400, 401},
            {
                "invalid_request",
                "invalid_webauthn_response",
                "invalid_challenge",
                "invalid_credentials",
            },
            label,
        )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"challenge_id": 5, "credential": {}},
        {"challenge_id": "x"},
        {"challenge_id": "x" * 65, "credential": {}},
        {"challenge_id": "x", "credential": []},
    ],
)
def test_passkey_login_shape_errors(client, body):
    response = client.post("/v1/passkeys/login", json=body)
    _check(response, {400}, {"invalid_request"})


def test_unknown_challenge_id(client, api):
    key = SoftAuthenticator()
    enroll(client, signed_in(api), key)
    options = client.post("/v1/passkeys/login-options").get_json()
    response = client.post(
        "/v1/passkeys/login", json={"challenge_id": "nope", "credential": key.assertion(options)}
    )
    _check(response, {400}, {"invalid_challenge"})


def test_not_json(client, api):
    response = client.post("/v1/passkeys/login", data="{", content_type="application/json")
    _check(response, {400}, {"malformed_json"})
    response = client.post("/v1/passkeys/login-options", data="x", content_type="text/plain")
    _check(response, {415}, {"unsupported_media_type"})


def test_registration_body_shape(client, api):
    access = signed_in(api)
    for body in ({}, {"credential": "x"}, {"credential": {}, "name": 5}):
        response = client.post("/v1/me/mfa/webauthn", json=body, headers=bearer(access))
        _check(response, {400}, {"invalid_request", "invalid_webauthn_response"})


@pytest.mark.parametrize(
    ("label", "change", "reason"),
    [
        ("origin", {"origin": "https://evil.example"}, "not_verified"),
        ("rp_id", {"rp_id": "evil.example"}, "not_verified"),
        ("frame", {"extra_client_data": {"crossOrigin": True}}, "cross_origin"),
    ],
)
def test_refused_registration_details_are_our_own_words(client, api, label, change, reason):
    """The detail of each refusal names what was wrong without echoing the configured
    origins or the client's origin back."""
    access = signed_in(api)
    options = client.post(
        "/v1/me/mfa/webauthn/registration-options", json={"name": "k"}, headers=bearer(access)
    ).get_json()
    credential = SoftAuthenticator().register(options, **change)
    response = client.post(
        "/v1/me/mfa/webauthn", json={"credential": credential}, headers=bearer(access)
    )
    body = response.get_json()
    assert response.status_code == 400, body
    assert body["reason"] == reason
    assert body["detail"]
    _check_detail(body, label, "https://evil.example")
