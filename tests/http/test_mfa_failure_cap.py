"""The daily cap on wrong second-factor codes per account, on every path that checks one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from authsvc.models import AuditEvent
from tests.conftest import replace_settings
from tests.http.test_mfa_login import mfa_token, second_step, wrong_code
from tests.http.test_mfa_totp import enable_totp, oathtool_code


@pytest.fixture
def settings(settings):
    # A small daily cap on failures (wrong passwords and, separately, wrong codes).
    return replace_settings(settings, limit_failures_per_account="6/day")


def test_wrong_codes_per_account_are_capped_per_day_on_every_path(api, client, connection):
    # 10 a minute alone would allow 14,400 guesses a day (NIST SP 800-63B 5.2.2 asks for 100).
    factor = enable_totp(api)
    bad = wrong_code(factor["secret"])
    statuses = []
    for _ in range(2):
        token = mfa_token(api)
        statuses += [second_step(client, token, totp_code=bad).status_code for _ in range(3)]
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    reset = {
        "token": api.mailbox.token("ada@example.com", "reset-password"),
        "new_password": "brand new horse 43",
    }

    refused = client.post("/v1/password/reset", json={**reset, "totp_code": bad})
    right = second_step(
        client, mfa_token(api), totp_code=oathtool_code(factor["secret"], offset_steps=1)
    )

    assert statuses == [401] * 6
    assert (refused.status_code, refused.get_json()["code"]) == (429, "rate_limited")
    assert right.status_code == 429  # the right code waits too: the cap is on the account
    hits = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "ratelimit.hit")
    ).all()
    assert hits == ["mfa_failures", "mfa_failures"]


def test_recovery_codes_count_against_the_same_daily_cap(api, client):
    # One counter for TOTP and recovery codes: two kinds of guesses do not make two caps.
    factor = enable_totp(api)
    wrong_recovery = "0" * 24
    statuses = []
    for _ in range(2):
        token = mfa_token(api)
        statuses += [
            second_step(client, token, recovery_code=wrong_recovery).status_code for _ in range(2)
        ]
    token = mfa_token(api)
    statuses += [second_step(client, token, totp_code=wrong_code(factor["secret"])).status_code]
    statuses += [second_step(client, token, recovery_code=wrong_recovery).status_code]

    right = second_step(client, mfa_token(api), recovery_code=factor["recovery_codes"][0])

    assert statuses == [401] * 6
    assert (right.status_code, right.get_json()["code"]) == (429, "rate_limited")
