"""/admin/v1/breach-responses and /admin/v1/users/{id}/force-reset over HTTP."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from authsvc.db import utcnow
from authsvc.models import AuditEvent, User
from authsvc.models.breach import BreachCampaign
from authsvc.services import admin, audit_views
from tests.conftest import runtime

BASE = "/admin/v1/breach-responses"
PASSWORD = "correct horse 42"


@pytest.fixture
def settings(settings):
    return dataclasses.replace(
        settings, breach_batch_size=2, notify_rate_per_second=1000.0, breach_upload_max_bytes=4096
    )


@pytest.fixture
def as_admin(connection) -> dict[str, str]:
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        _, secret = admin.create_key(session, name="ops", now=utcnow())
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def accounts(api) -> list[str]:
    return [api.register(f"user{i}@example.com", PASSWORD) for i in range(4)]


def start(client, headers, **body):
    payload = {"reason": "credential dump INC-12", "selector": "all", "mode": "invalidate", **body}
    return client.post(BASE, json=payload, headers=headers)


def db(app) -> DbSession:
    return runtime(app).sessionmaker()


def test_a_campaign_runs_in_the_background_and_reports_progress(
    api, client, app, as_admin, accounts
):
    created = start(client, as_admin)

    assert created.status_code == 202
    body = created.get_json()
    assert body["status"] == "pending" and body["targeted"] == 4
    assert created.headers["Location"] == f"{BASE}/{body['id']}"
    assert api.login("user1@example.com", PASSWORD).status_code == 200

    api.drain()  # batches, then the notice tickets, then the mails

    status = client.get(f"{BASE}/{body['id']}", headers=as_admin).get_json()
    assert (status["status"], status["processed"], status["notified"]) == ("completed", 4, 4)
    assert status["finished_at"] is not None
    failed = api.login("user1@example.com", PASSWORD)
    assert failed.status_code == 401
    assert failed.get_json()["code"] == "invalid_credentials"
    token = api.mailbox.token("user1@example.com", "reset-password")
    reset = client.post(
        "/v1/password/reset", json={"token": token, "new_password": "fresh horse 77"}
    )
    assert reset.status_code == 204
    again = client.get(f"{BASE}/{body['id']}", headers=as_admin).get_json()
    assert again["completed_resets"] == 1
    listed = client.get(f"{BASE}?status=completed", headers=as_admin).get_json()
    assert [c["id"] for c in listed["breach_responses"]] == [body["id"]]


def test_a_plain_text_upload_reports_rejected_lines(api, client, as_admin, accounts):
    upload = "user1@example.com\nnot-an-email\n\nUSER2@example.com\nghost@example.com\n"

    response = client.post(
        f"{BASE}?selector=emails&mode=change_at_next_login&reason=leak&notify=false",
        data=upload.encode(),
        content_type="text/plain",
        headers=as_admin,
    )

    assert response.status_code == 202
    report = response.get_json()["input"]
    assert (report["lines"], report["accepted"], report["matched"]) == (5, 3, 2)
    assert report["rejections"] == [{"line": 2, "reason": "invalid_email", "value": "not-an-email"}]
    assert report["unknown_values"] == ["ghost@example.com"]
    assert response.get_json()["notify"] is False


def test_a_combo_list_upload_keeps_no_password(api, client, app, as_admin, accounts):
    # A credential-stuffing list names each address with its password: every line was a
    # rejected one, kept whole with the campaign (in clear, for every admin key to read) and
    # in the refusal of a list without an acceptable line.
    combo = "user1@example.com:hunter2\nuser2@example.com\n"
    only_combo = "user1@example.com:hunter2\nuser3@example.com;hunter3\n"
    query = f"{BASE}?selector=emails&mode=invalidate&reason=leak&notify=false"

    created = client.post(query, data=combo, content_type="text/plain", headers=as_admin)
    refused = client.post(query, data=only_combo, content_type="text/plain", headers=as_admin)
    shown = client.get(f"{BASE}/{created.get_json()['id']}", headers=as_admin)

    assert created.status_code == 202
    assert created.get_json()["input"]["rejections"] == [
        {"line": 1, "reason": "invalid_email", "value": "user1@example.com…"}
    ]
    assert (refused.status_code, refused.get_json()["code"]) == (400, "empty_target_list")
    for response in (created, refused, shown):
        assert "hunter" not in response.get_data(as_text=True)
    with db(app) as session:
        stored = session.scalar(select(BreachCampaign.input_report))
        assert stored is not None and "hunter" not in stored


def test_a_csv_upload_uses_the_email_column(api, client, as_admin, accounts):
    upload = "id,email\n1,user3@example.com\n2,user0@example.com\n"

    response = client.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=leak",
        data=upload,
        content_type="text/csv",
        headers=as_admin,
    )
    api.drain()

    assert response.status_code == 202
    assert response.get_json()["targeted"] == 2
    assert api.login("user3@example.com", PASSWORD).status_code == 401
    assert api.login("user2@example.com", PASSWORD).status_code == 200


def test_only_a_plain_text_upload_has_comments(api, client, as_admin, accounts):
    # "#" is an address character, and a CSV row or a JSON entry that starts with one is data:
    # skipped as a comment, its account was neither reset nor reported anywhere.
    hashed = api.register("#ops@example.com", PASSWORD)
    upload = "ref,email\n#1001,user1@example.com\n#1002,user2@example.com\n"

    from_csv = client.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=leak",
        data=upload,
        content_type="text/csv",
        headers=as_admin,
    )
    from_json = start(client, as_admin, selector="emails", emails=[hashed, "#bob@example.com"])
    api.drain()

    assert from_csv.status_code == 202
    assert from_csv.get_json()["input"]["accepted"] == 2
    assert from_csv.get_json()["targeted"] == 2
    assert from_json.status_code == 202
    report = from_json.get_json()["input"]
    assert (report["accepted"], report["matched"], report["unknown_values"]) == (
        2,
        1,
        ["#bob@example.com"],
    )
    for email in ("user1@example.com", "user2@example.com", hashed):
        assert api.login(email, PASSWORD).status_code == 401
    comment = client.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=leak&dry_run=true",
        data="# leaked 2024-05\nuser3@example.com\n",
        content_type="text/plain",
        headers=as_admin,
    )
    assert comment.get_json()["input"]["rejected"] == 0
    assert comment.get_json()["targeted"] == 1


def test_an_idempotency_key_replays_the_same_campaign(client, app, as_admin, accounts):
    headers = {**as_admin, "Idempotency-Key": "retry-me"}

    first = start(client, headers)
    second = start(client, headers)
    other = start(client, headers, mode="change_at_next_login")

    assert first.status_code == second.status_code == 202
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert other.get_json()["code"] == "idempotency_key_reused"
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 1


def test_an_idempotency_key_is_the_admin_keys_own(client, connection, as_admin, accounts):
    # Another admin key sending the same key and body gets no replay of the first one's campaign.
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        _, other_key = admin.create_key(session, name="second", now=utcnow())
        session.commit()
    first = start(client, {**as_admin, "Idempotency-Key": "retry-me"})
    other = start(client, {"Authorization": f"Bearer {other_key}", "Idempotency-Key": "retry-me"})

    assert first.status_code == 202
    assert (other.status_code, other.get_json()["code"]) == (422, "idempotency_key_reused")


@pytest.mark.parametrize("key", ["a\x00b", "a\x01b", ""])
def test_an_idempotency_key_must_be_printable(client, as_admin, accounts, key):
    response = start(client, {**as_admin, "Idempotency-Key": key})

    assert (response.status_code, response.get_json()["field"]) == (400, "Idempotency-Key")


@pytest.mark.parametrize(
    "limit", ["1_0", "+5", " 7", "7 ", "%D9%A3", "%C2%B2", "0", "201", "ten", "-1"]
)
def test_the_list_limit_is_plain_ascii_digits(client, as_admin, limit):
    # As the audit events' limit: int() also takes "1_0", a sign, spaces and other digits.
    response = client.get(f"{BASE}?limit={limit}", headers=as_admin)

    assert (response.status_code, response.get_json()["field"]) == (400, "limit")


def test_the_list_limit_takes_1_to_200(client, as_admin):
    for limit in ("1", "200", "050"):
        assert client.get(f"{BASE}?limit={limit}", headers=as_admin).status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=1&limit=2", "limit"),
        ("status=pending&status=failed", "status"),
        ("limt=5", "limt"),
        ("limit=5&cursor=x", "cursor"),
    ],
)
def test_the_list_refuses_unknown_and_repeated_parameters(client, as_admin, query, field):
    # As the audit events: a misspelt or repeated filter is refused, not ignored.
    response = client.get(f"{BASE}?{query}", headers=as_admin)

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (400, "invalid_request", field)


def test_a_dry_run_only_counts(client, app, as_admin, accounts):
    response = start(client, as_admin, dry_run=True)

    assert response.status_code == 200
    assert response.get_json() == {
        "dry_run": True,
        "targeted": 4,
        "conflicts_with": None,
        "input": None,
    }
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 0


@pytest.mark.parametrize("misspelt", ["dryrun", "dry-run", "dryRun"])
def test_a_json_campaign_refuses_a_member_it_does_not_take(
    client, app, as_admin, accounts, misspelt
):
    # An unknown member was ignored: a misspelt dry_run started a real campaign that
    # invalidated every password.
    response = start(client, as_admin, **{misspelt: True})

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (400, "invalid_request", misspelt)
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 0


@pytest.mark.parametrize("query", ["dry_run=true", "selector=emails", "notify=false"])
def test_a_json_campaign_takes_no_query_parameters(client, app, as_admin, accounts, query):
    # The query string carries an upload's parameters; beside a JSON body it was ignored, so
    # ?dry_run=true started a real campaign that invalidated every password.
    response = client.post(
        f"{BASE}?{query}",
        json={"reason": "credential dump INC-12", "selector": "all", "mode": "invalidate"},
        headers=as_admin,
    )

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == query.partition("=")[0]
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 0


UPLOAD = "selector=emails&mode=invalidate&reason=x"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (f"{UPLOAD}&dryrun=true", "dryrun"),  # misspelt: the upload would start for real
        (f"{UPLOAD}&before=2020-01-01", "before"),  # a JSON field, not an upload's
        (f"{UPLOAD}&dry_run=true&dry_run=false", "dry_run"),
        (f"{UPLOAD}&notify=false&notify=true", "notify"),
        (f"{UPLOAD}&selector=user_ids", "selector"),
    ],
)
def test_an_upload_refuses_unknown_and_repeated_parameters(
    client, app, as_admin, accounts, query, field
):
    # As the list and the audit events: ignored, ?dryrun=true started a real campaign that
    # invalidated the listed passwords; repeated, only the first value was read.
    response = client.post(
        f"{BASE}?{query}",
        data="user1@example.com\n",
        content_type="text/plain",
        headers=as_admin,
    )

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (400, "invalid_request", field)
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 0


def test_an_upload_takes_every_documented_parameter(client, as_admin, accounts):
    response = client.post(
        f"{BASE}?{UPLOAD}&revoke_sessions=false&reset_mfa=true&notify=false&dry_run=true",
        data="user1@example.com\n",
        content_type="text/csv",
        headers=as_admin,
    )

    assert response.status_code == 200
    assert response.get_json()["targeted"] == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [("fromat=json", "fromat"), ("format=json&format=csv", "format"), ("limit=5", "limit")],
)
def test_the_report_refuses_unknown_and_repeated_parameters(
    client, app, as_admin, accounts, query, field
):
    campaign_id = start(client, as_admin).get_json()["id"]

    response = client.get(f"{BASE}/{campaign_id}/report?{query}", headers=as_admin)

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (400, "invalid_request", field)
    with db(app) as session:
        exported = select(func.count()).where(AuditEvent.type == "breach.report_exported")
        assert session.scalar(exported.select_from(AuditEvent)) == 0


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "{base}/{id}?fields=status", "fields"),
        ("POST", "{base}/{id}/cancel?dry_run=true", "dry_run"),
        ("POST", "/admin/v1/users/{user}/force-reset?dry_run=true", "dry_run"),
    ],
)
def test_the_other_routes_refuse_query_parameters(
    client, app, as_admin, accounts, method, path, field
):
    # As the list, the upload and the report: ignored, ?dry_run=true cancelled the campaign
    # or reset the password for real.
    campaign = start(client, as_admin, selector="emails", emails=[accounts[0]]).get_json()
    with db(app) as session:
        user_id = session.scalar(select(User.id).where(User.email == accounts[1]))

    response = client.open(
        path.format(base=BASE, id=campaign["id"], user=user_id), method=method, headers=as_admin
    )

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (400, "invalid_request", field)
    with db(app) as session:
        assert session.get(BreachCampaign, campaign["id"]).status == campaign["status"]
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 1


@pytest.mark.parametrize(
    "before",
    ["2999-01-02", "2999-01-02T03:04:05Z", "2999-01-02t03:04:05.5z", "2999-01-02T03:04:05+01:00"],
)
def test_before_takes_every_rfc_3339_spelling_and_a_date(client, as_admin, accounts, before):
    # RFC 3339 allows a lower-case "t" and "z"; a date alone means midnight UTC.
    response = start(client, as_admin, selector="created_before", before=before, dry_run=True)

    assert response.status_code == 200
    assert response.get_json()["targeted"] == 4


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"selector": "everyone"}, 400, "invalid_request"),
        ({"mode": "nuke"}, 400, "invalid_request"),
        ({"reason": ""}, 400, "invalid_request"),
        ({"selector": "created_before"}, 400, "invalid_request"),
        ({"selector": "created_before", "before": "last tuesday"}, 400, "invalid_request"),
        # An empty before is a before (openapi.yaml: none with the other selectors), not none.
        ({"before": ""}, 400, "invalid_request"),
        ({"selector": "created_before", "before": ""}, 400, "invalid_request"),
        # Before the first representable UTC time (was a 500).
        (
            {"selector": "created_before", "before": "0001-01-01T00:00:00+01:00"},
            400,
            "invalid_request",
        ),
        ({"selector": "emails"}, 400, "invalid_request"),
        ({"selector": "emails", "emails": ["nope", "  "]}, 400, "empty_target_list"),
        ({"selector": "emails", "emails": ["nobody@example.com"]}, 422, "no_targets"),
        ({"selector": "user_ids", "user_ids": ["unknownid"]}, 422, "no_targets"),
        ({"emails": ["user1@example.com"]}, 400, "invalid_request"),
        # Without factors, the leaked password alone would choose the new one at next login.
        ({"mode": "change_at_next_login", "reset_mfa": True}, 400, "invalid_request"),
    ],
)
def test_bad_campaigns_are_refused(client, app, as_admin, accounts, body, status, code):
    response = start(client, as_admin, **body)

    assert response.status_code == status
    assert response.get_json()["code"] == code
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 0


def test_an_upload_with_a_nul_in_its_reason_is_refused(client, app, as_admin, accounts):
    # The JSON body's strings are checked for NUL; an upload's reason comes from the query
    # string (PostgreSQL refused it with a 500).
    nul = client.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=x%00y",
        data="user1@example.com\n",
        content_type="text/plain",
        headers=as_admin,
    )
    assert (nul.status_code, nul.get_json()["code"]) == (400, "invalid_request")
    assert nul.get_json()["field"] == "reason"
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 0


def test_uploads_need_a_list_selector_a_known_type_and_a_bounded_size(client, as_admin, accounts):
    wrong = client.post(
        f"{BASE}?selector=all&mode=invalidate&reason=x",
        data="a@b.co\n",
        content_type="text/plain",
        headers=as_admin,
    )
    assert (wrong.status_code, wrong.get_json()["code"]) == (400, "invalid_request")
    flag = client.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=x&notify=maybe",
        data="a@b.co\n",
        content_type="text/plain",
        headers=as_admin,
    )
    assert (flag.status_code, flag.get_json()["code"]) == (400, "invalid_request")
    xml = client.post(BASE, data="<emails/>", content_type="application/xml", headers=as_admin)
    assert (xml.status_code, xml.get_json()["code"]) == (415, "unsupported_media_type")
    big = client.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=x",
        data="a@example.com\n" * 400,
        content_type="text/plain",
        headers=as_admin,
    )
    assert (big.status_code, big.get_json()["code"]) == (413, "payload_too_large")


def test_an_upload_without_a_length_is_held_to_the_same_bound(app, as_admin, accounts):
    # Chunked, as gunicorn passes it on. Cut at the 4,096-byte cap, the list would end in
    # "user1@example.com" (its line there is user1@example.com.au), a registered account.
    lines = (
        b"nobody@example.org\n" * 213
        + b"abcdefghijklmnopqrs@example.org\n"
        + b"user1@example.com.au\n"
        + b"x@example.org\n" * 9
    )
    assert lines[:4096].endswith(b"user1@example.com")
    raw = FlaskClient(app, app.response_class)  # openapi.yaml has no body without a length

    response = raw.post(
        f"{BASE}?selector=emails&mode=invalidate&reason=x&dry_run=true",
        input_stream=io.BytesIO(lines),
        headers={**as_admin, "Content-Type": "text/plain", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert (response.status_code, response.get_json()["code"]) == (413, "payload_too_large")


def test_admin_routes_need_an_admin_key(client, accounts):
    assert start(client, {}).status_code == 401
    assert client.get(BASE).status_code == 401
    assert client.get(f"{BASE}/x/report").status_code == 401
    assert client.post("/admin/v1/users/x/force-reset").status_code == 401


def test_a_second_campaign_on_the_same_accounts_waits_for_the_first(
    api, client, as_admin, accounts
):
    first = start(client, as_admin).get_json()

    clash = start(client, as_admin, selector="emails", emails=["user2@example.com"])
    cancelled = client.post(f"{BASE}/{first['id']}/cancel", headers=as_admin)
    later = start(client, as_admin, selector="emails", emails=["user2@example.com"])

    assert clash.status_code == 409
    assert clash.get_json()["code"] == "campaign_conflict"
    assert clash.get_json()["campaign_id"] == first["id"]
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert later.status_code == 202
    api.drain()
    finished = client.post(f"{BASE}/{later.get_json()['id']}/cancel", headers=as_admin)
    assert (finished.status_code, finished.get_json()["code"]) == (409, "campaign_finished")
    assert client.post(f"{BASE}/nope/cancel", headers=as_admin).status_code == 404
    assert client.get(f"{BASE}/nope", headers=as_admin).status_code == 404


def test_the_report_lists_every_affected_account(api, client, app, as_admin, accounts):
    created = start(
        client,
        as_admin,
        selector="emails",
        emails=["user0@example.com", "user2@example.com", "user3@example.com"],
    )
    campaign_id = created.get_json()["id"]
    api.drain()

    as_csv = client.get(f"{BASE}/{campaign_id}/report", headers=as_admin)
    as_json = client.get(f"{BASE}/{campaign_id}/report?format=json", headers=as_admin)

    assert as_csv.status_code == 200
    assert as_csv.mimetype == "text/csv"
    assert "attachment" in as_csv.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.get_data(as_text=True))))
    assert sorted(r["email"] for r in rows) == [
        "user0@example.com",
        "user2@example.com",
        "user3@example.com",
    ]
    assert all(r["flagged_at"] and r["notified_at"] and not r["reset_at"] for r in rows)
    document = json.loads(as_json.get_data(as_text=True))
    assert document["breach_response"]["id"] == campaign_id
    assert [a["user_id"] for a in document["accounts"]] == [r["user_id"] for r in rows]
    bad = client.get(f"{BASE}/{campaign_id}/report?format=xlsx", headers=as_admin)
    assert (bad.status_code, bad.get_json()["code"]) == (400, "invalid_request")
    with db(app) as session:
        exports = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.type == "breach.report_exported")
        )
    assert exports == 2


def test_force_reset_signs_the_user_out_now(api, client, app, as_admin, accounts):
    tokens = api.tokens("user2@example.com", PASSWORD)
    with db(app) as session:
        user_id = session.scalar(select(User.id).where(User.email == "user2@example.com"))

    response = client.post(
        f"/admin/v1/users/{user_id}/force-reset",
        json={"mode": "change_at_next_login", "reason": "phished"},
        headers=as_admin,
    )

    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["origin"], body["processed"]) == ("completed", "force_reset", 1)
    me = client.get("/v1/me", headers=api.bearer(tokens["access_token"]))
    assert me.status_code == 401
    login = api.login("user2@example.com", PASSWORD).get_json()
    assert login["status"] == "password_change_required"
    api.drain()
    assert "please change your password" in api.mailbox.last("user2@example.com")["Subject"]
    missing = client.post("/admin/v1/users/nobody/force-reset", headers=as_admin)
    assert (missing.status_code, missing.get_json()["code"]) == (404, "not_found")
    bad_mode = client.post(
        f"/admin/v1/users/{user_id}/force-reset", json={"mode": "x"}, headers=as_admin
    )
    assert bad_mode.status_code == 400
    factors_gone_but_old_password_chooses = client.post(
        f"/admin/v1/users/{user_id}/force-reset",
        json={"mode": "change_at_next_login", "reset_mfa": True},
        headers=as_admin,
    )
    assert factors_gone_but_old_password_chooses.get_json()["code"] == "invalid_request"


def test_a_force_reset_retried_with_its_idempotency_key_is_applied_once(
    api, client, app, as_admin, accounts
):
    # A retried force-reset (a double click, a client's retry after a timeout) was a second
    # one-account campaign: a second notice mail, whose link left the first one's dead.
    with db(app) as session:
        user_id = session.scalar(select(User.id).where(User.email == "user2@example.com"))
    path = f"/admin/v1/users/{user_id}/force-reset"
    headers = {**as_admin, "Idempotency-Key": "reset user2 INC-9"}

    first = client.post(path, json={"reason": "phished"}, headers=headers)
    again = client.post(path, json={"reason": "phished"}, headers=headers)
    other = client.post(path, json={"reason": "phished again"}, headers=headers)
    bad = client.post(path, headers={**as_admin, "Idempotency-Key": "a\x01"})

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (other.status_code, other.get_json()["code"]) == (422, "idempotency_key_reused")
    assert (bad.status_code, bad.get_json()["field"]) == (400, "Idempotency-Key")
    api.drain()
    notices = [
        m for m in api.mailbox.messages("user2@example.com") if "password was reset" in m["Subject"]
    ]
    assert len(notices) == 1
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(BreachCampaign)) == 1
        applied = select(func.count()).where(AuditEvent.type == "admin.force_reset")
        assert session.scalar(applied) == 1


def test_an_idempotency_key_of_a_campaign_is_no_key_of_a_force_reset(
    client, app, as_admin, accounts
):
    # The same request in all but the route: a force-reset would pass the campaign, still
    # pending, for the account's completed reset.
    with db(app) as session:
        user_id = session.scalar(select(User.id).where(User.email == "user2@example.com"))
    headers = {**as_admin, "Idempotency-Key": "INC-9 user2"}
    campaign = start(
        client, headers, reason="forced password reset", selector="user_ids", user_ids=[user_id]
    )

    forced = client.post(f"/admin/v1/users/{user_id}/force-reset", headers=headers)

    assert campaign.status_code == 202
    assert (forced.status_code, forced.get_json()["code"]) == (422, "idempotency_key_reused")


def test_force_reset_refuses_a_member_it_does_not_take(api, client, app, as_admin, accounts):
    tokens = api.tokens("user2@example.com", PASSWORD)
    with db(app) as session:
        user_id = session.scalar(select(User.id).where(User.email == "user2@example.com"))

    # A misspelt revoke_sessions: false was ignored, and the user signed out after all.
    response = client.post(
        f"/admin/v1/users/{user_id}/force-reset",
        json={"mode": "change_at_next_login", "revoke_session": False},
        headers=as_admin,
    )

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (
        400,
        "invalid_request",
        "revoke_session",
    )
    assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 200
    assert api.login("user2@example.com", PASSWORD).get_json()["status"] == "authenticated"


def test_the_admins_reason_stays_in_the_operators_trail(api, client, app, as_admin, accounts):
    """A force-reset's reason is the operator's free text: the admin audit view shows it, the
    user's own security events show the event and its mode only, and not the operator's
    address or client either."""
    with db(app) as session:
        user_id = session.scalar(select(User.id).where(User.email == "user2@example.com"))
    secret = "INTERNAL: fraud investigation, case 2025-77"
    client.post(
        f"/admin/v1/users/{user_id}/force-reset",
        json={"mode": "invalidate", "reason": secret},
        headers={**as_admin, "User-Agent": "ops-console/7 (bastion-3)"},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )

    admin_view = client.get(
        f"/admin/v1/audit-events?user_id={user_id}&type=admin.force_reset", headers=as_admin
    ).get_json()["events"]
    with db(app) as session:
        own = audit_views.security_events(session, user_id=user_id, before_id=None, limit=50)

    assert [e["details"]["reason"] for e in admin_view] == [secret]
    assert [(e["ip"], e["user_agent"]) for e in admin_view] == [
        ("10.9.8.7", "ops-console/7 (bastion-3)")
    ]
    [event] = [e for e in own.events if e.type == "admin.force_reset"]
    assert event.details == {"mode": "invalidate"}
    assert (event.ip, event.user_agent) == (None, None)
    shown = json.dumps([dataclasses.asdict(e) for e in own.events], default=str)
    for internal in (secret, "10.9.8.7", "bastion-3"):
        assert internal not in shown


def test_a_report_cell_never_runs_as_a_spreadsheet_formula(api, client, as_admin):
    # "=" and "-" are valid first characters of an address (RFC 5322 atext).
    emails = ["=1+1@example.com", "-2@example.com", "plain@example.com"]
    for email in emails:
        api.register(email, PASSWORD)
    created = start(client, as_admin, selector="emails", emails=emails)
    api.drain()

    report = client.get(f"{BASE}/{created.get_json()['id']}/report", headers=as_admin)

    rows = list(csv.DictReader(io.StringIO(report.get_data(as_text=True))))
    assert sorted(r["email"] for r in rows) == [
        "'-2@example.com",
        "'=1+1@example.com",
        "plain@example.com",
    ]
