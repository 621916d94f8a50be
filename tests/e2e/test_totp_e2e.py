"""TOTP and recovery codes against a real `authsvc serve` (gunicorn, PostgreSQL, Redis), with
codes from Debian's oathtool fed the secret the service returned, the QR code rendered by
Chromium and read by zbarimg, and a second instance on the same database for the replay race.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.e2e.server import AUTHSVC, LiveServer, free_port

pytestmark = pytest.mark.e2e

PASSWORD = "Correct horse battery 42"


class Http:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as error:
            raw = error.read()
            assert error.headers["Content-Type"] == "application/problem+json", raw
            return error.code, json.loads(raw)


def oathtool(secret: str, *, at: float | None = None) -> str:
    args = ["oathtool", "--totp", "-b", secret]
    if at is not None:
        args += ["-N", f"@{int(at)}"]
    result = subprocess.run(
        args, capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"}
    )
    return result.stdout.strip()


def wait_for_mail(server: LiveServer, to: str, subject: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in server.mails():
            if message["To"] == to and message["Subject"] == subject:
                return str(message.get_content())
        time.sleep(0.1)
    raise AssertionError(f"no mail {subject!r} to {to}")


def render_and_scan(svg: str, workdir: Path) -> str:
    """Chromium shows the SVG as a browser would; zbarimg reads the screenshot."""
    page = workdir / "qr.svg"
    page.write_text(svg)
    shot = workdir / "qr.png"
    subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--default-background-color=ffffffff",
            "--window-size=400,400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    result = subprocess.run(
        ["zbarimg", "-q", "--raw", str(shot)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def signup_verified(server: LiveServer, http: Http, email: str) -> None:
    assert http.call("POST", "/v1/signup", {"email": email, "password": PASSWORD})[0] == 202
    body = wait_for_mail(server, email, "Confirm your email address")
    token = re.search(r"/verify-email\?token=([A-Za-z0-9_\-]+)", body).group(1)
    assert http.call("POST", "/v1/signup/verify", {"token": token})[0] == 200


def create_user(server: LiveServer, http: Http, email: str) -> None:
    status, _ = http.call(
        "POST", "/admin/v1/users", {"email": email, "password": PASSWORD}, token=server.admin_key
    )
    assert status == 201


def login(http: Http, email: str) -> dict[str, Any]:
    status, body = http.call("POST", "/v1/login", {"email": email, "password": PASSWORD})
    assert status == 200, body
    return body


def enable_totp(http: Http, email: str) -> tuple[str, list[str]]:
    access = login(http, email)["access_token"]
    status, pending = http.call("POST", "/v1/me/mfa/totp", {"name": "oathtool"}, token=access)
    assert status == 201, pending
    status, done = http.call(
        "POST",
        f"/v1/me/mfa/totp/{pending['factor_id']}/confirm",
        {"code": oathtool(pending["secret"])},
        token=access,
    )
    assert status == 200, done
    return pending["secret"], done["recovery_codes"]


def test_totp_with_oathtool_end_to_end(tmp_path):
    with LiveServer(tmp_path) as server:
        http = Http(server.url)
        signup_verified(server, http, "ada@example.com")
        access = login(http, "ada@example.com")["access_token"]

        status, pending = http.call("POST", "/v1/me/mfa/totp", {"name": "Phone"}, token=access)
        assert status == 201
        assert pending["otpauth_uri"].startswith("otpauth://totp/authsvc:ada%40example.com?")
        assert render_and_scan(pending["qr_svg"], tmp_path) == pending["otpauth_uri"]

        # The authenticator app is oathtool with the secret the service gave us.
        status, confirmed = http.call(
            "POST",
            f"/v1/me/mfa/totp/{pending['factor_id']}/confirm",
            {"code": oathtool(pending["secret"])},
            token=access,
        )
        assert status == 200
        codes = confirmed["recovery_codes"]
        assert len(codes) == 10
        wait_for_mail(server, "ada@example.com", "A second factor was added to your account")

        # Password alone: a second step is required.
        first = login(http, "ada@example.com")
        assert first["status"] == "mfa_required"
        assert first["methods"] == ["totp", "recovery_code"]
        next_step = oathtool(pending["secret"], at=time.time() + 30)
        status, done = http.call(
            "POST", "/v1/login/mfa", {"mfa_token": first["mfa_token"], "totp_code": next_step}
        )
        assert status == 200
        claims = jwt.decode(done["access_token"], options={"verify_signature": False})
        assert claims["amr"] == ["pwd", "otp", "mfa"]

        # The same step again: refused (replay), and so is an earlier one.
        again = login(http, "ada@example.com")["mfa_token"]
        for code in (next_step, oathtool(pending["secret"], at=time.time() - 30)):
            status, problem = http.call(
                "POST", "/v1/login/mfa", {"mfa_token": again, "totp_code": code}
            )
            assert (status, problem["code"]) == (401, "invalid_mfa")
        # Two steps ahead is outside the window.
        far = oathtool(pending["secret"], at=time.time() + 90)
        status, problem = http.call("POST", "/v1/login/mfa", {"mfa_token": again, "totp_code": far})
        assert (status, problem["code"]) == (401, "invalid_mfa")

        # A recovery code works once and is mailed about.
        status, _ = http.call(
            "POST", "/v1/login/mfa", {"mfa_token": again, "recovery_code": codes[0]}
        )
        assert status == 200
        notice = wait_for_mail(server, "ada@example.com", "A recovery code was used")
        assert "9 unused codes remain" in notice
        status, problem = http.call(
            "POST",
            "/v1/login/mfa",
            {
                "mfa_token": login(http, "ada@example.com")["mfa_token"],
                "recovery_code": codes[0],
            },
        )
        assert (status, problem["code"]) == (401, "invalid_mfa")


def test_unhappy_paths_end_to_end(tmp_path):
    with LiveServer(tmp_path) as server:
        http = Http(server.url)
        status, problem = http.call("POST", "/v1/me/mfa/totp", {})
        assert (status, problem["code"]) == (401, "unauthenticated")
        create_user(server, http, "ada@example.com")
        create_user(server, http, "eve@example.com")
        secret, _ = enable_totp(http, "ada@example.com")
        eve = login(http, "eve@example.com")["access_token"]
        status, eves = http.call("POST", "/v1/me/mfa/totp", None, token=eve)
        assert status == 201

        ada = login(http, "ada@example.com")
        token = ada["mfa_token"]
        cases = [
            ({"mfa_token": token, "totp_code": "12a456"}, 400, "invalid_request"),
            ({"mfa_token": token, "totp_code": "1234"}, 400, "invalid_request"),
            ({"mfa_token": token, "recovery_code": "nope"}, 400, "invalid_request"),
            ({"mfa_token": "mfa_unknown", "totp_code": "123456"}, 400, "invalid_token"),
            ({"mfa_token": eve, "totp_code": "123456"}, 400, "invalid_token"),  # not an mfa_token
        ]
        for body, expected_status, code in cases:
            status, problem = http.call("POST", "/v1/login/mfa", body)
            assert (status, problem["code"]) == (expected_status, code), body
        # Ada, signed in with both factors, cannot confirm Eve's pending factor.
        status, signed_in = http.call(
            "POST",
            "/v1/login/mfa",
            {"mfa_token": token, "totp_code": oathtool(secret, at=time.time() + 30)},
        )
        assert status == 200
        status, problem = http.call(
            "POST",
            f"/v1/me/mfa/totp/{eves['factor_id']}/confirm",
            {"code": oathtool(eves["secret"])},
            token=signed_in["access_token"],
        )
        assert (status, problem["code"]) == (404, "not_found")
        # Five wrong codes kill an mfa_token.
        token = login(http, "ada@example.com")["mfa_token"]
        valid = {oathtool(secret, at=time.time() + 30 * k) for k in (-1, 0, 1, 2)}
        wrong = next(f"{n:06d}" for n in range(100) if f"{n:06d}" not in valid)
        answers = [
            http.call("POST", "/v1/login/mfa", {"mfa_token": token, "totp_code": wrong})[0]
            for _ in range(5)
        ]
        assert answers == [401] * 5
        status, problem = http.call(
            "POST", "/v1/login/mfa", {"mfa_token": token, "recovery_code": "x" * 24}
        )
        assert (status, problem["code"]) == (400, "invalid_token")


def test_two_instances_accept_a_code_once(tmp_path):
    """Each user's code is sent at the same moment to two servers on one database: one wins."""
    with LiveServer(tmp_path, workers=1) as first:
        second_port = free_port()
        env = dict(first.env)
        log = (tmp_path / "second.log").open("wb")
        second = subprocess.Popen(
            [
                str(AUTHSVC),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(second_port),
                "--workers",
                "1",
                "--threads",
                "4",
                "--no-outbox-thread",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            a, b = Http(first.url), Http(f"http://127.0.0.1:{second_port}")
            deadline = time.monotonic() + 30
            while True:
                try:
                    if b.call("GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "second instance did not start"
                time.sleep(0.1)
            users = [f"race{i}@example.com" for i in range(5)]
            secrets_ = {}
            for email in users:
                create_user(first, a, email)
                secrets_[email], _ = enable_totp(a, email)
            results: dict[str, list[int]] = {email: [] for email in users}
            for email in users:
                tokens = [login(a, email)["mfa_token"], login(b, email)["mfa_token"]]
                code = oathtool(secrets_[email], at=time.time() + 30)
                barrier = threading.Barrier(2)

                def race(
                    server: Http,
                    token: str,
                    code: str = code,
                    email: str = email,
                    barrier: threading.Barrier = barrier,
                ) -> None:
                    barrier.wait()
                    status, _ = server.call(
                        "POST", "/v1/login/mfa", {"mfa_token": token, "totp_code": code}
                    )
                    results[email].append(status)

                threads = [
                    threading.Thread(target=race, args=(a, tokens[0])),
                    threading.Thread(target=race, args=(b, tokens[1])),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=30)
            for email in users:
                assert sorted(results[email]) == [200, 401], (email, results[email])
        finally:
            second.terminate()
            second.wait(timeout=15)
            log.close()
