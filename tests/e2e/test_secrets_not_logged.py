"""No secret reaches the log of a real `authsvc serve` (gunicorn, PostgreSQL, Redis), at its
most talkative level: every secret a user's journey handles, on the paths that succeed and on
those that fail (wrong passwords, replayed, malformed and unknown tokens, a secret in a body of
the wrong shape). The mails that carry links go to files, never to the log."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.e2e.server import LiveServer
from tests.e2e.test_totp_e2e import (
    PASSWORD,
    Http,
    login,
    oathtool,
    signup_verified,
    wait_for_mail,
)

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "Another horse battery 77"
WRONG_PASSWORD = "Wrong horse battery 1234"


def test_no_secret_of_a_whole_journey_reaches_the_log(tmp_path):
    handled: dict[str, str] = {}
    with LiveServer(tmp_path, env={"AUTHSVC_LOG_LEVEL": "DEBUG"}) as server:
        http = Http(server.url)
        email = "ada@example.com"
        signup_verified(server, http, email)
        handled["password"] = PASSWORD
        handled["verify link token"] = re.search(
            r"token=([A-Za-z0-9_\-]+)", wait_for_mail(server, email, "Confirm your email address")
        ).group(1)

        status, problem = http.call(
            "POST", "/v1/login", {"email": email, "password": WRONG_PASSWORD}
        )
        assert (status, problem["code"]) == (401, "invalid_credentials")
        handled["wrong password"] = WRONG_PASSWORD

        tokens = login(http, email)
        handled["access token"] = tokens["access_token"]
        handled["first refresh token"] = tokens["refresh_token"]
        status, pending = http.call(
            "POST", "/v1/me/mfa/totp", {"name": "Phone"}, token=tokens["access_token"]
        )
        assert status == 201
        handled["TOTP secret"] = pending["secret"]
        status, confirmed = http.call(
            "POST",
            f"/v1/me/mfa/totp/{pending['factor_id']}/confirm",
            {"code": oathtool(pending["secret"])},
            token=tokens["access_token"],
        )
        assert status == 200
        for i, code in enumerate(confirmed["recovery_codes"]):
            handled[f"recovery code {i}"] = code

        status, rotated = http.call(
            "POST", "/v1/token/refresh", {"refresh_token": tokens["refresh_token"]}
        )
        assert status == 200
        handled["rotated refresh token"] = rotated["refresh_token"]
        status, problem = http.call(  # a replay: the family is revoked
            "POST", "/v1/token/refresh", {"refresh_token": tokens["refresh_token"]}
        )
        assert (status, problem["code"]) == (400, "invalid_token")

        step = login(http, email)
        handled["mfa token"] = step["mfa_token"]
        status, problem = http.call(
            "POST", "/v1/login/mfa", {"mfa_token": step["mfa_token"], "totp_code": "12345x"}
        )
        assert status == 400
        status, signed_in = http.call(
            "POST",
            "/v1/login/mfa",
            {  # the next time step: the confirmation spent this one
                "mfa_token": step["mfa_token"],
                "totp_code": oathtool(pending["secret"], at=time.time() + 30),
            },
        )
        assert status == 200
        handled["second access token"] = signed_in["access_token"]
        handled["second refresh token"] = signed_in["refresh_token"]

        assert http.call("POST", "/v1/password/forgot", {"email": email})[0] == 202
        reset_mail = wait_for_mail(server, email, "Reset your password")
        handled["reset link token"] = re.search(r"token=([A-Za-z0-9_\-]+)", reset_mail).group(1)
        status, _ = http.call(
            "POST",
            "/v1/password/reset",
            {
                "token": handled["reset link token"],
                "new_password": NEW_PASSWORD,
                "recovery_code": confirmed["recovery_codes"][0],
            },
        )
        assert status == 204
        handled["new password"] = NEW_PASSWORD

        # Secrets where they do not belong, or in a shape the service refuses.
        made_up = {
            "unknown refresh token": "rt_" + "Q" * 43,
            "malformed bearer": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZGEifQ.c2VjcmV0LXNpZ25hdHVyZQ",
            "password of a wrong type": "Hunter2-but-longer-9",
            "unknown reset token": "rs_" + "Z" * 43,
        }
        handled.update(made_up)
        status, _ = http.call(
            "POST", "/v1/token/refresh", {"refresh_token": made_up["unknown refresh token"]}
        )
        assert status == 400
        status, _ = http.call("GET", "/v1/me", token=made_up["malformed bearer"])
        assert status == 401
        status, _ = http.call(
            "POST",
            "/v1/login",
            {"email": email, "password": [made_up["password of a wrong type"]]},
        )
        assert status == 400
        status, _ = http.call(
            "POST",
            "/v1/password/reset",
            {
                "token": made_up["unknown reset token"],
                "new_password": made_up["password of a wrong type"],
            },
        )
        assert status == 400
        status, _ = http.call("GET", f"/v1/me?token={made_up['unknown refresh token']}")
        assert status in (400, 401)
        with urllib.request.urlopen(
            f"{server.url}/reset-password?token={handled['reset link token']}", timeout=10
        ) as page:  # the link page itself: its query carries the token
            assert page.status == 200

    server_log = server.log_path.read_text(errors="replace")  # stopped: all of it is written
    assert '"logger": "authsvc.access"' in server_log  # it did log every request
    assert "/v1/login/mfa" in server_log and "/v1/password/reset" in server_log
    leaked = sorted(name for name, value in handled.items() if value in server_log)
    assert leaked == []
