"""GET/PATCH/DELETE /v1/me/mfa and POST /v1/me/recovery-codes: renaming, removal, new codes,
the re-auth window and the notices."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from authsvc.app import create_app
from authsvc.db import utcnow
from authsvc.models import AuditEvent, RecoveryCode
from tests.conftest import ContractClient
from tests.http.test_mfa_totp import PASSWORD, enable_totp, oathtool_code


@pytest.fixture
def stale_client(settings, connection):
    """The same service with a zero re-auth window: every login is too old for changes."""
    app = create_app(dataclasses.replace(settings, reauth_window=timedelta(0)), bind=connection)
    app.test_client_class = ContractClient
    return app.test_client()


def subjects(api, email="ada@example.com") -> list[str]:
    api.drain()
    return [m["Subject"] for m in api.mailbox.messages(email)]


def test_rename_a_factor(api, client):
    factor = enable_totp(api, name="Phone")
    url = f"/v1/me/mfa/{factor['factor_id']}"

    response = client.patch(url, json={"name": " Old   phone "}, headers=factor["headers"])

    assert response.status_code == 200
    assert response.get_json()["name"] == "Old phone"
    assert response.get_json()["type"] == "totp"
    listed = client.get("/v1/me/mfa", headers=factor["headers"]).get_json()["factors"]
    assert [f["name"] for f in listed] == ["Old phone"]
    assert "A second factor was renamed" in subjects(api)
    for bad in ({"name": ""}, {"name": "x" * 65}, {"name": None}, {}):
        refused = client.patch(url, json=bad, headers=factor["headers"])
        assert (refused.status_code, refused.get_json()["code"]) == (400, "invalid_request")


def test_the_security_mails_quote_no_factor_name(api, client):
    # Whoever holds a session names factors: quoted into the owner's notices, a name put words
    # or a link into a mail from this service, the one that warns of the change.
    lure = "Ignore this, see evil.example/verify"
    factor = enable_totp(api, name=lure)
    url = f"/v1/me/mfa/{factor['factor_id']}"
    client.patch(url, json={"name": "Call +1 555 0100 now"}, headers=factor["headers"])
    client.delete(url, headers=factor["headers"])
    api.drain()

    mails = {m["Subject"]: m.get_content() for m in api.mailbox.messages("ada@example.com")}

    added = mails["A second factor was added to your account"]
    renamed = mails["A second factor was renamed"]
    removed = mails["A second factor was removed from your account"]
    for body in (added, renamed, removed):
        assert "evil.example" not in body and "555" not in body
    assert added.startswith("An authenticator app was added to your account at ")
    day = utcnow().strftime("%Y-%m-%d")
    assert renamed.startswith(f"The authenticator app added on {day} was renamed at ")
    assert removed.startswith(f"The authenticator app added on {day} was removed from your")


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("Old\tphone", "Old phone"),  # a tab is white space, made one space
        ("Old" + " " * 70 + "phone", "Old phone"),  # 75 characters before the spaces collapse
        ("Cafe\u0301 " * 13, " ".join(["Caf\u00e9"] * 13)),  # 78 before NFKC, 64 after
    ],
)
def test_a_name_is_checked_after_it_is_normalised(api, client, name, kept):
    # The contract client checks the accepted request against openapi.yaml, which refused what
    # the service takes: its 64 characters count after NFKC and the white space collapsed.
    factor = enable_totp(api, name="Phone")

    response = client.patch(
        f"/v1/me/mfa/{factor['factor_id']}", json={"name": name}, headers=factor["headers"]
    )

    assert response.status_code == 200
    assert response.get_json()["name"] == kept


def test_factors_of_other_users_are_not_found(api, client):
    ada = enable_totp(api)
    eve = enable_totp(api, "eve@example.com")
    url = f"/v1/me/mfa/{ada['factor_id']}"

    renamed = client.patch(url, json={"name": "mine"}, headers=eve["headers"])
    removed = client.delete(url, headers=eve["headers"])
    missing = client.delete("/v1/me/mfa/does-not-exist", headers=ada["headers"])

    for response in (renamed, removed, missing):
        assert response.status_code == 404
        assert response.get_json()["code"] == "not_found"
    names = [
        f["name"] for f in client.get("/v1/me/mfa", headers=ada["headers"]).get_json()["factors"]
    ]
    assert names == ["Authenticator app"]


def test_management_routes_need_an_access_token(client):
    for method, url in (
        ("get", "/v1/me/mfa"),
        ("patch", "/v1/me/mfa/x"),
        ("delete", "/v1/me/mfa/x"),
        ("post", "/v1/me/recovery-codes"),
    ):
        response = getattr(client, method)(url, json={"name": "n"} if method == "patch" else None)
        assert response.status_code == 401
        assert response.get_json()["code"] == "unauthenticated"


def test_removing_the_last_factor_removes_the_recovery_codes(api, client, connection):
    factor = enable_totp(api)
    second = client.post(
        "/v1/me/mfa/totp", json={"name": "Tablet"}, headers=factor["headers"]
    ).get_json()
    assert (
        client.post(
            f"/v1/me/mfa/totp/{second['factor_id']}/confirm",
            json={"code": oathtool_code(second["secret"], offset_steps=1)},
            headers=factor["headers"],
        ).status_code
        == 200
    )

    first_gone = client.delete(f"/v1/me/mfa/{factor['factor_id']}", headers=factor["headers"])

    assert first_gone.status_code == 204
    me = client.get("/v1/me", headers=factor["headers"]).get_json()
    assert me["mfa_methods"] == ["totp", "recovery_code"]
    assert me["recovery_codes_remaining"] == 10

    last_gone = client.delete(f"/v1/me/mfa/{second['factor_id']}", headers=factor["headers"])

    assert last_gone.status_code == 204
    me = client.get("/v1/me", headers=factor["headers"]).get_json()
    assert me["mfa_methods"] == []
    assert (me["recovery_codes_remaining"], me["recovery_codes_low"]) == (0, False)
    assert connection.execute(select(func.count()).select_from(RecoveryCode)).scalar_one() == 0
    assert subjects(api).count("A second factor was removed from your account") == 2
    last_mail = api.mailbox.last("ada@example.com").get_content()
    assert "recovery codes were deleted" in last_mail
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"
    events = (
        connection.execute(
            select(AuditEvent.details).where(AuditEvent.type == "mfa.factor_removed")
        )
        .scalars()
        .all()
    )
    assert len(events) == 2 and '"last": true' in events[1]


def test_removal_needs_a_recent_login(api, stale_client, client):
    factor = enable_totp(api)

    response = stale_client.delete(f"/v1/me/mfa/{factor['factor_id']}", headers=factor["headers"])

    assert response.status_code == 403
    assert response.get_json()["code"] == "reauthentication_required"
    assert len(client.get("/v1/me/mfa", headers=factor["headers"]).get_json()["factors"]) == 1


@pytest.mark.parametrize("path", ["/v1/me/mfa/totp", "/v1/me/mfa/webauthn/registration-options"])
def test_adding_a_factor_needs_a_recent_login(api, stale_client, client, connection, path):
    """A stale or stolen access token must not add a factor: a passkey signs in alone, and a
    first factor comes with the recovery codes that a reset then asks for."""
    api.register()
    headers = api.bearer(api.tokens()["access_token"])

    response = stale_client.post(path, json={"name": "mine"}, headers=headers)

    assert response.status_code == 403
    assert response.get_json()["code"] == "reauthentication_required"
    assert client.get("/v1/me/mfa", headers=headers).get_json()["factors"] == []
    written = connection.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.type.like("mfa.%"))
    )
    assert written == 0
    assert client.post(path, json={"name": "mine"}, headers=headers).status_code in (200, 201)


def test_a_pending_enrollment_can_be_dropped_without_reauthentication(
    api, stale_client, client, connection
):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    pending = client.post("/v1/me/mfa/totp", headers=headers).get_json()

    response = stale_client.delete(f"/v1/me/mfa/{pending['factor_id']}", headers=headers)

    assert response.status_code == 204
    gone = stale_client.post(
        f"/v1/me/mfa/totp/{pending['factor_id']}/confirm",
        json={"code": oathtool_code(pending["secret"])},
        headers=headers,
    )
    assert gone.status_code == 404
    trail = connection.execute(
        select(AuditEvent.outcome, AuditEvent.details)
        .where(AuditEvent.type == "mfa.totp_enrollment")
        .order_by(AuditEvent.id)
    ).all()
    assert [(outcome, json.loads(details)["factor_id"]) for outcome, details in trail] == [
        ("pending", pending["factor_id"]),
        ("cancelled", pending["factor_id"]),
    ]
    assert "A second factor was removed from your account" not in subjects(api)


def test_new_recovery_codes_replace_the_old_ones(api, client):
    factor = enable_totp(api)
    old = factor["recovery_codes"]

    response = client.post("/v1/me/recovery-codes", headers=factor["headers"])

    assert response.status_code == 200
    fresh = response.get_json()["recovery_codes"]
    assert len(fresh) == 10 and not set(fresh) & set(old)
    assert "New recovery codes were generated" in subjects(api)
    token = api.login("ada@example.com", PASSWORD).get_json()["mfa_token"]
    stale = client.post("/v1/login/mfa", json={"mfa_token": token, "recovery_code": old[0]})
    assert stale.status_code == 401
    works = client.post("/v1/login/mfa", json={"mfa_token": token, "recovery_code": fresh[0]})
    assert works.status_code == 200


def test_new_recovery_codes_need_a_recent_login_and_a_factor(api, client, stale_client):
    factor = enable_totp(api)
    old_login = stale_client.post("/v1/me/recovery-codes", headers=factor["headers"])
    assert old_login.status_code == 403
    assert old_login.get_json()["code"] == "reauthentication_required"

    api.register("bob@example.com")
    bob = api.bearer(api.tokens("bob@example.com")["access_token"])
    none = client.post("/v1/me/recovery-codes", headers=bob)
    assert none.status_code == 409
    assert none.get_json()["code"] == "mfa_not_enabled"
