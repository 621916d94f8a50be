"""POST /v1/signup: always 202; the mailbox tells a new email from a registered one."""

from __future__ import annotations

import dataclasses
import gzip
from importlib.resources import files

import pytest
from sqlalchemy import func, select, update

from authsvc.app import create_app
from authsvc.db import utcnow
from authsvc.models import OutboxMessage, User, UserToken
from tests.conftest import ContractClient

PASSWORD = "correct horse 42"


def common_password() -> str:
    """A password of 8+ characters from the shipped list of common passwords."""
    path = files("authsvc") / "data" / "common-passwords.txt.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            word = line.strip()
            if len(word) >= 12 and word.isascii() and word.isalnum():
                return word
    raise AssertionError("no long common password in the shipped list")


def test_signup_answers_202_and_mails_a_verification_link(api, client, mailbox, settings):
    response = client.post("/v1/signup", json={"email": "ada@example.com", "password": PASSWORD})

    assert response.status_code == 202
    assert response.get_json() == {"status": "verification_sent"}
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert mailbox.messages() == []  # the work happens in the outbox worker

    api.drain()
    [message] = mailbox.messages("ada@example.com")
    assert message["Subject"] == "Confirm your email address"
    assert f"{settings.public_url}/verify-email?token=ve_" in message.get_content()
    assert mailbox.token("ada@example.com", "verify-email").startswith("ve_")


def test_signup_creates_an_unverified_account_without_a_password(api, connection):
    api.signup("ada@example.com", PASSWORD)

    user = connection.execute(select(User).where(User.email == "ada@example.com")).one()
    assert user.email_verified_at is None
    assert user.password_hash is None  # set only when the link is opened
    pending = connection.scalar(
        select(UserToken.pending_password_hash).where(UserToken.user_id == user.id)
    )
    assert pending is not None and pending.startswith("$argon2id$")
    assert PASSWORD not in pending


def test_signup_of_a_registered_email_mails_an_account_exists_notice(api, client, mailbox):
    api.register("ada@example.com", PASSWORD)

    response = api.signup("ada@example.com", "another horse 43")

    assert response.status_code == 202
    assert response.get_json() == {"status": "verification_sent"}
    notice = mailbox.last("ada@example.com")
    assert notice["Subject"] == "Sign-up attempt for your account"
    body = notice.get_content()
    assert "already have an account" in body
    assert "/verify-email" not in body
    assert "/reset-password?token=rp_" in body
    # Nothing changed: the old password still works, the new one does not.
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"
    assert api.login("ada@example.com", "another horse 43").status_code == 401


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "unverified"])
def test_signup_of_a_disabled_account_mails_nothing(api, mailbox, connection, verified):
    """As a reset request for it: no link of a disabled account would work."""
    api.register("ada@example.com", PASSWORD)
    connection.execute(
        update(User).values(disabled_at=utcnow(), email_verified_at=utcnow() if verified else None)
    )
    sent = len(mailbox.messages())

    response = api.signup("ada@example.com", "another horse 43")

    assert response.status_code == 202
    assert response.get_json() == {"status": "verification_sent"}
    assert len(mailbox.messages()) == sent
    unused_links = select(func.count()).where(
        UserToken.purpose == "verify_email", UserToken.used_at.is_(None)
    )
    assert connection.scalar(unused_links) == 0


def test_signup_normalises_the_email(api, mailbox, connection):
    assert api.signup("  Ada@EXAMPLE.com ", PASSWORD).status_code == 202

    assert len(mailbox.messages("ada@example.com")) == 1
    assert connection.scalar(select(User.email)) == "ada@example.com"


def test_fullwidth_email_is_nfkc_normalised(api, mailbox):
    assert api.signup("\uff41\uff44\uff41@example.com", PASSWORD).status_code == 202

    assert len(mailbox.messages("ada@example.com")) == 1


@pytest.mark.parametrize("owner_first", [True, False], ids=["owner-first", "attacker-first"])
def test_a_twice_signed_up_address_takes_no_password_from_either(api, client, mailbox, owner_first):
    """Pre-hijacking in either order: an attacker signs up with the owner's address before or
    after them. Both links stay good, but whichever is opened, neither password is kept; the
    mailbox, which only the owner reads, gets a link to choose one."""
    order = [("owner", "owner horse 2"), ("attacker", "attacker horse 1")]
    if not owner_first:
        order.reverse()
    links = {}
    for who, password in order:
        api.signup("ada@example.com", password)
        links[who] = mailbox.token("ada@example.com", "verify-email")
    assert links["owner"] != links["attacker"]

    opened = client.post("/v1/signup/verify", json={"token": links["owner"]})

    assert opened.status_code == 200
    assert api.login("ada@example.com", "owner horse 2").status_code == 401
    assert api.login("ada@example.com", "attacker horse 1").status_code == 401
    api.drain()
    assert mailbox.last("ada@example.com")["Subject"] == "Choose the password of your new account"
    reset = client.post(
        "/v1/password/reset",
        json={
            "token": mailbox.token("ada@example.com", "reset-password"),
            "new_password": "the owner's own horse 3",
        },
    )
    assert reset.status_code == 204
    assert api.login("ada@example.com", "the owner's own horse 3").get_json()["status"] == (
        "authenticated"
    )
    # The other link is spent with the first: it sets nothing later either.
    late = client.post("/v1/signup/verify", json={"token": links["attacker"]})
    assert (late.status_code, late.get_json()["code"]) == (400, "invalid_token")
    assert api.login("ada@example.com", "attacker horse 1").status_code == 401


def test_a_sign_up_the_worker_has_not_taken_yet_contests_a_link_opened_meanwhile(
    api, client, mailbox
):
    """The attacker signed up first, and their link waits in the mailbox. The owner signs up
    too and, before the worker has taken their request (a backlog, a worker restarting),
    opens the confirmation mail they find there: the attacker's. The address was signed up
    twice before a link was opened, so neither password is kept."""
    api.signup("ada@example.com", "attacker horse 1")
    attackers_link = mailbox.token("ada@example.com", "verify-email")
    owners = client.post(
        "/v1/signup", json={"email": "ada@example.com", "password": "owner horse 2"}
    )
    assert owners.status_code == 202  # queued; the worker has not run since

    opened = client.post("/v1/signup/verify", json={"token": attackers_link})

    assert opened.status_code == 200
    assert api.login("ada@example.com", "attacker horse 1").status_code == 401
    api.drain()
    subjects = [m["Subject"] for m in mailbox.messages("ada@example.com")]
    assert "Choose the password of your new account" in subjects
    reset = client.post(
        "/v1/password/reset",
        json={
            "token": mailbox.token("ada@example.com", "reset-password"),
            "new_password": "the owner's own horse 3",
        },
    )
    assert reset.status_code == 204
    assert api.login("ada@example.com", "attacker horse 1").status_code == 401
    assert api.login("ada@example.com", "the owner's own horse 3").get_json()["status"] == (
        "authenticated"
    )


def test_a_single_sign_up_keeps_its_password(api, client, mailbox):
    api.signup("ada@example.com", "owner horse 2")

    opened = client.post(
        "/v1/signup/verify", json={"token": mailbox.token("ada@example.com", "verify-email")}
    )

    assert opened.status_code == 200
    assert api.login("ada@example.com", "owner horse 2").get_json()["status"] == "authenticated"


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short7!", "too_short"),
        ("x" * 257, "too_long"),
        (None, "breached"),
        ("ada example horse 42", "context_word"),
        ("Authsvc is my horse 42", "context_word"),
    ],
    ids=["7-chars", "257-chars", "common", "email-parts", "service-name"],
)
def test_weak_passwords_are_refused(api, client, mailbox, connection, password, reason):
    password = password or common_password()

    response = client.post("/v1/signup", json={"email": "ada@example.com", "password": password})

    assert response.status_code == 400
    problem = response.get_json()
    assert response.mimetype == "application/problem+json"
    assert problem["code"] == "weak_password"
    assert problem["reason"] == reason
    assert password not in response.get_data(as_text=True)
    assert connection.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    api.drain()
    assert mailbox.messages() == []


def test_common_passwords_are_refused_whatever_their_case(client):
    password = common_password().upper()

    response = client.post("/v1/signup", json={"email": "ada@example.com", "password": password})

    assert response.status_code == 400
    assert response.get_json()["code"] == "weak_password"


@pytest.mark.parametrize("length", [8, 256])
def test_passwords_of_8_to_256_characters_are_accepted(api, client, length):
    password = ("correct horse " * 20)[: length - 2] + "42"

    response = api.signup("ada@example.com", password)

    assert response.status_code == 202
    token = api.mailbox.token("ada@example.com", "verify-email")
    assert client.post("/v1/signup/verify", json={"token": token}).status_code == 200
    assert api.login("ada@example.com", password).get_json()["status"] == "authenticated"


def test_length_is_counted_after_nfkc(client):
    # Four ligatures (U+FB01 "fi", U+FB02 "fl") are eight characters after NFKC.
    response = client.post("/v1/signup", json={"email": "ada@example.com", "password": "ﬁﬂﬁﬂ"})
    assert response.status_code == 202
    too_short = client.post("/v1/signup", json={"email": "bob@example.com", "password": "ﬁﬂﬁ"})
    assert too_short.get_json()["reason"] == "too_short"


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "ada@",
        "@example.com",
        "ada@example",
        "a b@example.com",
        "ada@@example.com",
        "ada\u200b@example.com",
        "a" * 65 + "@example.com",
        "ada@" + "e" * 250 + ".com",
    ],
)
def test_invalid_emails_are_refused(client, email):
    response = client.post("/v1/signup", json={"email": email, "password": PASSWORD})

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "email"


def test_operators_add_their_own_context_words(settings, connection):
    app = create_app(
        dataclasses.replace(settings, password_context_words=("Initech", "TPS reports")),
        bind=connection,
    )
    app.test_client_class = ContractClient
    client = app.test_client()
    for password in ("initech horse 42", "my tps reports 42"):
        response = client.post(
            "/v1/signup", json={"email": "ada@example.com", "password": password}
        )
        assert response.status_code == 400
        assert response.get_json()["reason"] == "context_word"
    accepted = client.post(
        "/v1/signup", json={"email": "ada@example.com", "password": "initial horse 42"}
    )
    assert accepted.status_code == 202
