"""Throttling: per client IP, per email (known or not), per IP+email, and at most N failed
password checks per account per day. Every hit answers 429 problem+json with Retry-After."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from authsvc.app import create_app
from authsvc.models import AuditEvent, User
from tests.conftest import ContractClient, runtime

PASSWORD = "correct horse 42"
GENEROUS = {
    "limit_ip": "1000/minute",
    "limit_email": "1000/minute",
    "limit_ip_email": "1000/minute",
    "limit_failures_per_account": "1000/day",
}


@pytest.fixture
def limited(api, settings, connection) -> Iterator[Callable[..., FlaskClient]]:
    """A client for an app with the given limits (others generous), on the test's database.

    Accounts registered through ``api`` before are visible to it; the limiter starts empty.
    """
    apps = []

    def make(**limits: Any) -> FlaskClient:
        app = create_app(dataclasses.replace(settings, **{**GENEROUS, **limits}), bind=connection)
        app.test_client_class = ContractClient
        runtime(app).deps.limiter.reset()
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        runtime(app).deps.limiter.reset()


def login(client, email: str, password: str = PASSWORD, ip: str = "198.51.100.1", **headers):
    return client.post(
        "/v1/login",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": ip},
        headers=headers,
    )


def assert_rate_limited(response, *, max_retry_after: int = 60) -> None:
    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= max_retry_after


def test_per_ip_limit(limited):
    client = limited(limit_ip="3/minute")

    answers = [login(client, f"user{i}@example.com").status_code for i in range(3)]
    blocked = login(client, "user9@example.com")

    assert answers == [401, 401, 401]
    assert_rate_limited(blocked)
    assert login(client, "user9@example.com", ip="198.51.100.2").status_code == 401


def test_per_email_limit_is_the_same_for_registered_and_unknown_emails(api, limited):
    api.register("ada@example.com")
    client = limited(limit_email="3/minute")

    def attempts(email: str) -> list:
        return [login(client, email, "wrong horse 42", ip=f"198.51.100.{i}") for i in range(4)]

    registered, unknown = attempts("ada@example.com"), attempts("nobody@example.com")

    assert [r.status_code for r in registered] == [401, 401, 401, 429]
    assert [r.status_code for r in unknown] == [401, 401, 401, 429]
    assert_rate_limited(registered[3])
    assert registered[3].get_data() == unknown[3].get_data()


def test_per_email_limit_keys_on_the_normalised_email(limited):
    client = limited(limit_email="2/minute")
    login(client, "ada@example.com", ip="198.51.100.1")
    login(client, "ADA@example.com", ip="198.51.100.2")

    assert_rate_limited(login(client, " Ada@Example.COM", ip="198.51.100.3"))


def test_per_ip_and_email_limit(limited):
    client = limited(limit_ip_email="2/minute")
    for _ in range(2):
        assert login(client, "ada@example.com", ip="198.51.100.1").status_code == 401

    assert_rate_limited(login(client, "ada@example.com", ip="198.51.100.1"))
    assert login(client, "ada@example.com", ip="198.51.100.2").status_code == 401
    assert login(client, "bob@example.com", ip="198.51.100.1").status_code == 401


def test_signup_and_forgot_are_throttled_too(limited):
    client = limited(limit_email="2/minute")
    body = {"email": "ada@example.com", "password": PASSWORD}
    assert client.post("/v1/signup", json=body).status_code == 202
    assert client.post("/v1/password/forgot", json={"email": "ada@example.com"}).status_code == 202

    assert_rate_limited(client.post("/v1/signup", json=body))
    assert_rate_limited(client.post("/v1/password/forgot", json={"email": "ada@example.com"}))


# One mailbox in spellings that are each an address (and an account) of its own: tags that
# most providers deliver to the address without them, its domain in Unicode and in punycode,
# upper and lower case.
MAILBOX_SPELLINGS = [
    "ada+1@bücher.de",
    "ada+2@xn--bcher-kva.de",
    "ADA@Bücher.de",
    "Ada@XN--BCHER-KVA.DE",
    "ada+news@BÜCHER.DE",
]


def ask_for_mail(client, path: str, email: str, ip: str = "198.51.100.1"):
    body = {"email": email, "password": PASSWORD} if path == "/v1/signup" else {"email": email}
    return client.post(path, json=body, environ_base={"REMOTE_ADDR": ip})


@pytest.mark.parametrize("path", ["/v1/signup", "/v1/password/forgot"])
def test_spellings_of_one_mailbox_share_its_limit(limited, connection, path):
    # Each spelling has a per-email counter of its own: without a count per mailbox, one
    # mailbox could be sent as many mails as it has spellings times the per-email limit.
    client = limited(limit_email=f"{len(MAILBOX_SPELLINGS) - 1}/minute")

    answers = [
        ask_for_mail(client, path, email, ip=f"198.51.100.{i}")
        for i, email in enumerate(MAILBOX_SPELLINGS)
    ]

    assert [a.status_code for a in answers[:-1]] == [202] * (len(MAILBOX_SPELLINGS) - 1)
    assert_rate_limited(answers[-1])
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "ratelimit.hit")
    ).all()
    assert outcomes == ["mailbox"]
    # Another mailbox of the same domain, and the same name at another domain, count apart.
    assert ask_for_mail(client, path, "bob@bücher.de").status_code == 202
    assert ask_for_mail(client, path, "ada+1@example.com").status_code == 202


def test_gmail_dot_spellings_share_one_mailbox_limit(limited):
    # Gmail delivers every dotting of a name, at gmail.com and googlemail.com, to one inbox: a
    # sign-up for each of them would each have had its own count.
    client = limited(limit_email="3/minute")
    spellings = [
        "a.da.lovelace@gmail.com",
        "adalove.lace@googlemail.com",
        "A.D.A.lovelace@gmail.com",
    ]
    for i, email in enumerate(spellings):
        assert ask_for_mail(client, "/v1/signup", email, ip=f"198.51.100.{i}").status_code == 202

    assert_rate_limited(
        ask_for_mail(client, "/v1/signup", "adalovelace@gmail.com", ip="198.51.100.9")
    )
    # Elsewhere a dot is part of the name: another mailbox.
    assert ask_for_mail(client, "/v1/signup", "a.dalovelace@example.com").status_code == 202


def test_signup_and_forgot_count_against_one_mailbox(limited):
    # Both mail the address: a verification link or an "account exists" notice, a reset link
    # or a "no account" notice.
    client = limited(limit_email="2/minute")
    assert ask_for_mail(client, "/v1/signup", "ada+1@bücher.de").status_code == 202
    assert ask_for_mail(client, "/v1/password/forgot", "ada+2@bücher.de").status_code == 202

    assert_rate_limited(ask_for_mail(client, "/v1/signup", "ada+3@xn--bcher-kva.de"))
    assert_rate_limited(ask_for_mail(client, "/v1/password/forgot", "ada+4@bücher.de"))


def test_logins_do_not_count_against_the_mailbox(limited):
    # A login mails nothing: its spellings are throttled per email only.
    client = limited(limit_email="2/minute")
    for email in MAILBOX_SPELLINGS:
        assert login(client, email).status_code == 401

    assert ask_for_mail(client, "/v1/password/forgot", "ada@bücher.de").status_code == 202


def test_spellings_of_one_mailbox_stay_accounts_of_their_own(api, limited, connection, mailbox):
    api.register("ada@bücher.de")
    client = limited(limit_email="3/minute")

    assert ask_for_mail(client, "/v1/signup", "ada+1@bücher.de").status_code == 202
    assert ask_for_mail(client, "/v1/password/forgot", "ada+2@bücher.de").status_code == 202
    api.drain()

    assert [m["Subject"] for m in mailbox.messages("ada+1@bücher.de")] == [
        "Confirm your email address"
    ]
    assert [m["Subject"] for m in mailbox.messages("ada+2@bücher.de")] == ["Password reset request"]
    assert [m["Subject"] for m in mailbox.messages("ada@bücher.de")] == [
        "Confirm your email address"
    ]  # the registration's only: neither request reached ada's account
    emails = connection.scalars(select(User.email).order_by(User.email)).all()
    assert emails == ["ada+1@bücher.de", "ada@bücher.de"]


def test_limit_hits_are_audited_without_the_email(limited, connection):
    client = limited(limit_ip="1/minute")
    login(client, "ada@example.com")

    login(client, "ada@example.com")

    [event] = connection.execute(select(AuditEvent).where(AuditEvent.type == "ratelimit.hit")).all()
    assert event.outcome == "ip"
    assert event.ip == "198.51.100.1"
    assert json.loads(event.details) == {"action": "login"}
    assert event.email_hash and "ada@example.com" not in repr(tuple(event))


def test_every_refusal_is_audited(limited, connection):
    client = limited(limit_ip="1/minute")
    login(client, "ada@example.com")
    refused = [login(client, f"user{i}@example.com") for i in range(6)]
    for response in refused:
        assert_rate_limited(response)
    login(client, "ada@example.com", ip="198.51.100.2")
    assert_rate_limited(login(client, "ada@example.com", ip="198.51.100.2"))

    ips = connection.scalars(
        select(AuditEvent.ip).where(AuditEvent.type == "ratelimit.hit").order_by(AuditEvent.id)
    ).all()
    assert ips == ["198.51.100.1"] * 6 + ["198.51.100.2"]


def test_retry_after_is_the_longest_wait_of_the_limits_that_would_refuse(api, limited, connection):
    # Refused first by the per-IP+email minute while the account's day is spent too: waiting
    # the minute only met the day's refusal.
    api.register("ada@example.com")
    client = limited(limit_ip_email="2/minute", limit_failures_per_account="2/day")
    wrong = [login(client, "ada@example.com", "wrong horse 42") for _ in range(2)]

    refused = login(client, "ada@example.com", PASSWORD)

    assert [r.status_code for r in wrong] == [401, 401]
    assert_rate_limited(refused, max_retry_after=86400)
    assert int(refused.headers["Retry-After"]) > 86000
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "ratelimit.hit")
    ).all()
    assert outcomes == ["ip_email"]  # the trail names the limit that refused
    # From another address the minute does not refuse: the day does, with the same wait.
    elsewhere = login(client, "ada@example.com", PASSWORD, ip="198.51.100.7")
    assert_rate_limited(elsewhere, max_retry_after=86400)
    assert abs(int(elsewhere.headers["Retry-After"]) - int(refused.headers["Retry-After"])) <= 2


def test_failed_password_checks_per_account_are_capped(api, limited, connection):
    api.register("ada@example.com")
    api.register("bob@example.com")
    client = limited(limit_failures_per_account="3/day")
    wrong = [
        login(client, "ada@example.com", "wrong horse 42", ip=f"198.51.100.{i}") for i in range(3)
    ]

    # Past the cap even the right password is not checked: the answer is 429, not 200.
    capped = login(client, "ada@example.com", PASSWORD, ip="198.51.100.99")

    assert [r.status_code for r in wrong] == [401, 401, 401]
    assert_rate_limited(capped, max_retry_after=86400)
    assert int(capped.headers["Retry-After"]) > 86000
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "ratelimit.hit")
    ).all()
    assert outcomes == ["account_failures"]
    # Another account is not affected.
    assert login(client, "bob@example.com", PASSWORD).get_json()["status"] == "authenticated"


def test_every_check_counts_before_it_runs(api, limited):
    # Counted before the verifier runs, so that parallel requests cannot overshoot the cap
    # (tests/service/test_accounts.py races them): a successful check counts too.
    api.register("ada@example.com")
    client = limited(limit_failures_per_account="3/day")
    assert login(client, "ada@example.com", "wrong horse 42").status_code == 401
    assert login(client, "ada@example.com").status_code == 200
    assert login(client, "ada@example.com", "wrong horse 42").status_code == 401

    assert_rate_limited(login(client, "ada@example.com"), max_retry_after=86400)


def test_the_failure_cap_applies_to_unknown_emails_alike(limited):
    client = limited(limit_failures_per_account="2/day")

    answers = [
        login(client, "nobody@example.com", ip=f"198.51.100.{i}").status_code for i in range(3)
    ]

    assert answers == [401, 401, 429]


def test_wrong_current_passwords_count_towards_the_cap(api, limited):
    api.register("ada@example.com")
    client = limited(limit_failures_per_account="3/day")
    tokens = login(client, "ada@example.com").get_json()  # the first of the 3
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    body = {"current_password": "wrong horse 42", "new_password": "brand new horse 43"}
    for _ in range(2):
        assert client.post("/v1/password/change", json=body, headers=headers).status_code == 401

    right = {**body, "current_password": PASSWORD}
    assert_rate_limited(
        client.post("/v1/password/change", json=right, headers=headers), max_retry_after=86400
    )


@pytest.mark.parametrize("policy", ["ip", "email", "ip_email"])
def test_current_password_checks_are_throttled_like_logins(api, limited, connection, policy):
    # Checking a current password answers whether a guess is right, to whoever holds a stolen
    # access token: the same limits as login, on the same counters.
    api.register("ada@example.com")
    client = limited(**{f"limit_{policy}": "3/minute"})
    tokens = login(client, "ada@example.com").get_json()  # the first of the 3
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    wrong = {"current_password": "wrong horse 42", "new_password": "brand new horse 43"}

    def change(body):
        return client.post(
            "/v1/password/change",
            json=body,
            headers=headers,
            environ_base={"REMOTE_ADDR": "198.51.100.1"},
        )

    answers = [change(wrong) for _ in range(3)]
    right = change({**wrong, "current_password": PASSWORD})

    assert [a.status_code for a in answers[:2]] == [401, 401]
    assert_rate_limited(answers[2])
    assert_rate_limited(right)  # not checked: the limit is not an answer to the guess
    hits = connection.execute(
        select(AuditEvent.outcome, AuditEvent.user_id, AuditEvent.details).where(
            AuditEvent.type == "ratelimit.hit"
        )
    ).all()
    assert [(h.outcome, json.loads(h.details)) for h in hits] == [
        (policy, {"action": "password_change"})
    ] * 2
    assert all(h.user_id for h in hits)


def test_x_forwarded_for_is_ignored_without_trusted_proxies(limited, caplog):
    client = limited(limit_ip="2/minute")
    with caplog.at_level(logging.WARNING, logger="authsvc"):
        for i in range(2):
            login(client, "ada@example.com", ip="10.0.0.2", **{"X-Forwarded-For": f"203.0.113.{i}"})

    blocked = login(client, "ada@example.com", ip="10.0.0.2", **{"X-Forwarded-For": "203.0.113.50"})

    assert_rate_limited(blocked)
    # The operator is told once that a proxy seems to be in front and is not trusted.
    warnings = [r for r in caplog.records if "AUTHSVC_TRUSTED_PROXIES" in r.getMessage()]
    assert len(warnings) == 1


def test_x_forwarded_for_is_honoured_with_a_trusted_proxy(limited):
    client = limited(limit_ip="2/minute", trusted_proxies=1)
    answers = [
        login(
            client, "ada@example.com", ip="10.0.0.2", **{"X-Forwarded-For": f"203.0.113.{i}"}
        ).status_code
        for i in range(4)
    ]
    assert answers == [401, 401, 401, 401]  # four clients behind one proxy

    one_client = [
        login(client, "ada@example.com", ip="10.0.0.2", **{"X-Forwarded-For": "203.0.113.50"})
        for _ in range(3)
    ]
    assert [r.status_code for r in one_client[:2]] == [401, 401]
    assert_rate_limited(one_client[2])


def test_a_spoofed_left_most_address_does_not_escape_the_limit(limited):
    """With one trusted proxy only the address that proxy appended counts."""
    client = limited(limit_ip="2/minute", trusted_proxies=1)
    answers = [
        login(
            client,
            "ada@example.com",
            ip="10.0.0.2",
            **{"X-Forwarded-For": f"192.0.2.{i}, 203.0.113.7"},
        ).status_code
        for i in range(3)
    ]

    assert answers == [401, 401, 429]


def test_an_ipv6_network_is_one_client(limited):
    # A single host may use any address of its /64: each one must not be a fresh bucket.
    client = limited(limit_ip="3/minute")
    answers = [
        login(client, f"user{i}@example.com", ip=f"2001:db8:0:7::{i + 1:x}").status_code
        for i in range(5)
    ]

    assert answers == [401, 401, 401, 429, 429]
    other_network = login(client, "user9@example.com", ip="2001:db8:0:8::1")
    assert other_network.status_code == 401


@pytest.mark.parametrize(
    "spellings",
    [
        ["203.0.113.5", "::ffff:203.0.113.5", "203.0.113.5:4711"],
        ["2001:DB8::1", "2001:db8:0::1", "[2001:db8::1]", "2001:db8::1%eth0"],
    ],
    ids=["ipv4", "ipv6"],
)
def test_spellings_of_one_forwarded_address_share_its_limit(limited, spellings):
    client = limited(limit_ip=f"{len(spellings)}/minute", trusted_proxies=1)
    answers = [
        login(client, f"user{i}@example.com", ip="10.0.0.2", **{"X-Forwarded-For": spelled})
        for i, spelled in enumerate([*spellings, spellings[0]])
    ]

    assert [a.status_code for a in answers] == [401] * len(spellings) + [429]


def test_spellings_of_one_forwarded_address_are_one_client_to_the_trail_and_the_detectors(
    limited, connection
):
    # Some proxies append the client's source port, which changes with every connection: the
    # trail must record one address, and the enumeration detector must see one client asking
    # for many emails, not many clients asking for one each.
    client = limited(trusted_proxies=1, detect_emails_per_ip=5, detect_emails_per_network=1000)
    runtime(client.application).detector.windows.reset()
    spellings = ["203.0.113.9:{port}", "::ffff:203.0.113.9", "[::FFFF:203.0.113.9]:{port}"]
    forwarded = [spellings[i % 3].format(port=40000 + i) for i in range(8)]
    forwarded.append("[2001:DB8:0::9%eth0]:40100")
    for i, spelled in enumerate(forwarded):
        answer = client.post(
            "/v1/password/forgot",
            json={"email": f"user{i}@example.com"},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},
            headers={"X-Forwarded-For": spelled},
        )
        assert answer.status_code == 202

    recorded = connection.scalars(
        select(AuditEvent.ip).where(AuditEvent.type == "password.forgot")
    ).all()
    assert recorded.count("203.0.113.9") == 8
    assert recorded.count("2001:db8::9") == 1
    alerts = [
        json.loads(details)
        for details in connection.scalars(
            select(AuditEvent.details).where(AuditEvent.type == "alert.raised")
        )
    ]
    assert [(a["detector"], a["scope"], a["subject"]) for a in alerts] == [
        ("enumeration", "ip", "203.0.113.9")
    ]
