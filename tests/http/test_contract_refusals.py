"""openapi.yaml refuses what the service refuses for its shape, so that a client generated from
it, or a fuzzer, sends only requests the service could take (the contract client checks the
other side: every request the service took is one openapi.yaml allows)."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from openapi_core.exceptions import OpenAPIError
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tests.conftest import ContractClient

PASSWORD = "correct horse 42"


def contract_allows(path: str, body: dict[str, Any], headers: dict[str, str]) -> bool:
    builder = EnvironBuilder(method="POST", path=path, json=body, headers=headers)
    try:
        request = Request(builder.get_environ())
    finally:
        builder.close()
    assert ContractClient.spec is not None
    try:
        ContractClient.spec.validate_request(WerkzeugOpenAPIRequest(request))
    except OpenAPIError:
        return False
    return True


def refused_by_both(client, path: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    """The code of the service's 400; the contract refuses the body as well."""
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 400, response.get_json()
    assert not contract_allows(path, body, headers), f"openapi.yaml allows {body!r} at {path}"
    return str(response.get_json()["code"])


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("seven77", "weak_password"),  # ASCII is as long after NFKC as before
        ("x" * 257, "weak_password"),
        ("correct\x00horse 42", "invalid_request"),
    ],
)
def test_new_passwords_the_service_refuses_for_their_shape(client, password, code):
    body = {"email": "ada@example.com", "password": password}
    assert refused_by_both(client, "/v1/signup", body, {}) == code


def test_a_nul_in_a_password_or_token(client):
    login = {"email": "ada@example.com", "password": "correct\x00horse"}
    assert refused_by_both(client, "/v1/login", login, {}) == "invalid_request"
    refresh = {"refresh_token": "rt_\x00"}
    assert refused_by_both(client, "/v1/token/refresh", refresh, {}) == "invalid_request"


@pytest.mark.parametrize("password", ["ﬁﬁﬁﬁ", "e\u0301" * 200, "pâssword"])
def test_the_contract_takes_what_nfkc_may_bring_within_the_rule(client, password):
    # "ﬁﬁﬁﬁ" is 8 characters after NFKC, 200 accented letters 200: both are taken.
    body = {"email": "ada@example.com", "password": password}
    assert contract_allows("/v1/signup", body, {})
    assert client.post("/v1/signup", json=body).status_code == 202


@pytest.mark.parametrize("code", ["12345", "1234567", "12345a", "١٢٣٤٥٦"])
def test_a_confirmation_code_that_is_not_six_digits(api, client, code):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    factor_id = client.post("/v1/me/mfa/totp", headers=headers).get_json()["factor_id"]
    path = f"/v1/me/mfa/totp/{factor_id}/confirm"
    assert refused_by_both(client, path, {"code": code}, headers) == "invalid_request"


def _credential(response: dict[str, Any], **changes: Any) -> dict[str, Any]:
    credential = {"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": response}
    credential.update(changes)
    return {k: v for k, v in credential.items() if v is not None}


REGISTRATION = {"clientDataJSON": "e30", "attestationObject": "oA"}
ASSERTION = {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"}
# Each refused before anything is looked up: a member missing or not base64url.
MALFORMED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"id": "a+b/"}),  # base64, not base64url
    ({}, {"rawId": "AAAAA", "id": "AAAAA"}),  # 4n+1 symbols: no bytes encode to that
    ({}, {"rawId": "", "id": ""}),
    ({"clientDataJSON": None}, {}),
    ({"clientDataJSON": "e30 "}, {}),
]


@pytest.mark.parametrize(("member", "changes"), MALFORMED)
def test_a_registration_of_another_shape(api, client, member, changes):
    headers = api.bearer(_signed_in(api))
    response = {k: v for k, v in {**REGISTRATION, **member}.items() if v is not None}
    body = {"credential": _credential(response, **changes)}
    code = refused_by_both(client, "/v1/me/mfa/webauthn", body, headers)
    assert code == "invalid_webauthn_response"


@pytest.mark.parametrize(
    ("member", "changes"),
    [*MALFORMED, ({"signature": None}, {}), ({"userHandle": "!"}, {})],
)
def test_an_assertion_of_another_shape(client, member, changes):
    response = {k: v for k, v in {**ASSERTION, **member}.items() if v is not None}
    credential = _credential(response, **changes)
    passkey = {"challenge_id": "x", "credential": credential}
    assert refused_by_both(client, "/v1/passkeys/login", passkey, {}) == "invalid_webauthn_response"
    step = {"mfa_token": "mfa_x", "webauthn": credential}
    assert refused_by_both(client, "/v1/login/mfa", step, {}) == "invalid_webauthn_response"


def _signed_in(api) -> str:
    api.register()
    return str(api.tokens()["access_token"])


@pytest.mark.parametrize(
    "name",
    [
        "Blue\u200bkey",  # a format character (zero width space)
        "Blue key \u00ad",  # soft hyphen, a format character too
        "Blue key \ue000",  # private use
        "Blue key \ufdd0",  # a noncharacter
    ],
)
def test_a_factor_name_with_a_character_that_is_not_printable(api, client, name):
    headers = api.bearer(_signed_in(api))
    path = "/v1/me/mfa/webauthn/registration-options"
    assert refused_by_both(client, path, {"name": name}, headers) == "invalid_request"
    assert refused_by_both(client, "/v1/me/mfa/totp", {"name": name}, headers) == "invalid_request"


def test_a_factor_name_the_contract_takes(api, client):
    headers = api.bearer(_signed_in(api))
    body = {"name": "Clé bleue \U0001f511 \u4e2d\u6587 \U00020000"}  # emoji, CJK, plane 2
    assert contract_allows("/v1/me/mfa/totp", body, headers)
    assert client.post("/v1/me/mfa/totp", json=body, headers=headers).status_code == 201


BCRYPT = "$2b$04$" + "a" * 53


@pytest.mark.parametrize(
    "password_hash",
    [
        "md5$abc$def",
        BCRYPT.replace("$04$", "$03$"),  # below bcrypt's least cost
        BCRYPT.replace("$04$", "$14$"),  # above the ceiling
        BCRYPT[:-1],
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$",  # no digest
    ],
)
def test_an_imported_hash_of_another_shape(client, admin_headers, password_hash):
    body = {"email": "ada@example.com", "password_hash": password_hash}
    assert refused_by_both(client, "/admin/v1/users", body, admin_headers) == "invalid_request"


def test_an_imported_hash_the_contract_takes(client, admin_headers):
    body = {"email": "ada@example.com", "password_hash": BCRYPT}
    assert contract_allows("/admin/v1/users", body, admin_headers)
    assert client.post("/admin/v1/users", json=body, headers=admin_headers).status_code == 201


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/v1/users", {"email": "ada@example.com", "password": PASSWORD, "verified": False}),
        (
            "/admin/v1/breach-responses",
            {"reason": "r", "selector": "all", "mode": "invalidate", "dryrun": True},
        ),
        ("/admin/v1/users/someone/force-reset", {"revoke_session": False}),
    ],
)
def test_an_admin_body_with_a_member_the_route_does_not_take(client, admin_headers, path, body):
    assert refused_by_both(client, path, body, admin_headers) == "invalid_request"
