"""POST /v1/me/mfa/totp and its confirm route, driven with codes from Debian's oathtool.

Also the helpers the other test_mfa_* modules use: ``oathtool_code``, ``enable_totp``,
``forget_used_steps`` and ``decode_qr_svg``.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy import select, update

from authsvc.models import TotpFactor

PASSWORD = "correct horse 42"
CODE_FORMAT = re.compile(r"^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){5}$")


def oathtool_code(secret: str, *, offset_steps: int = 0) -> str:
    """What an authenticator app shows: ``oathtool --totp -b SECRET --now @T``."""
    when = int(time.time()) + 30 * offset_steps
    result = subprocess.run(
        ["oathtool", "--totp", "-b", secret, "--now", f"@{when}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    return result.stdout.strip()


def forget_used_steps(connection: Any) -> None:
    """Let a test sign in again within the same minute (the replay rule is tested on its own)."""
    connection.execute(update(TotpFactor).values(last_used_step=None))


def enable_totp(
    api: Any, email: str = "ada@example.com", *, name: str | None = None
) -> dict[str, Any]:
    """Register ``email`` (unless it exists), sign in, enroll and confirm a TOTP factor.
    Return the access token, the secret, the factor id and the recovery codes."""
    if not api.mailbox.messages(email):
        api.register(email, PASSWORD)
    tokens = api.tokens(email, PASSWORD)
    headers = api.bearer(tokens["access_token"])
    enrolled = api.client.post(
        "/v1/me/mfa/totp", json={"name": name} if name else None, headers=headers
    )
    assert enrolled.status_code == 201, enrolled.get_json()
    body = enrolled.get_json()
    confirmed = api.client.post(
        f"/v1/me/mfa/totp/{body['factor_id']}/confirm",
        json={"code": oathtool_code(body["secret"])},
        headers=headers,
    )
    assert confirmed.status_code == 200, confirmed.get_json()
    return {
        "access_token": tokens["access_token"],
        "headers": headers,
        "secret": body["secret"],
        "factor_id": body["factor_id"],
        "recovery_codes": confirmed.get_json().get("recovery_codes"),
    }


def decode_qr_svg(svg: str, workdir: Path) -> str:
    """Rasterise segno's SVG path (one horizontal stroke per dark run) to a PNG and read it
    back with zbarimg, as a phone's camera would read the picture."""
    width = int(re.search(r'width="(\d+)"', svg).group(1))
    scale = float(re.search(r"scale\(([\d.]+)\)", svg).group(1))
    path = re.search(r' d="([^"]+)"', svg).group(1)
    modules = round(width / scale)
    dark: set[tuple[int, int]] = set()
    x = y = 0.0
    for cmd, a, b in re.findall(r"([MmHh])\s*(-?[\d.]+)(?:[\s,]+(-?[\d.]+))?", path):
        if cmd == "M":
            x, y = float(a), float(b)
        elif cmd == "m":
            x, y = x + float(a), y + float(b)
        else:
            length = float(a) if cmd == "h" else float(a) - x
            dark.update((int(y), col) for col in range(int(x), int(x + length)))
            x += length
    pixel = 6
    rows = []
    for row in range(modules * pixel):
        line = bytes(
            0 if (row // pixel, col // pixel) in dark else 255 for col in range(modules * pixel)
        )
        rows.append(b"\x00" + line)
    size = modules * pixel

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    image = workdir / "qr.png"
    image.write_bytes(png)
    result = subprocess.run(
        ["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- enrollment ------------------------------------------------------------------------------


def test_enroll_returns_secret_uri_and_qr(api, client):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])

    response = client.post("/v1/me/mfa/totp", json={"name": "Work phone"}, headers=headers)

    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["name"] == "Work phone"
    assert re.fullmatch(r"[A-Z2-7]{32}", body["secret"])
    assert body["otpauth_uri"] == (
        f"otpauth://totp/authsvc:ada%40example.com?secret={body['secret']}"
        "&issuer=authsvc&algorithm=SHA1&digits=6&period=30"
    )
    assert body["qr_svg"].startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    # Pending: not a factor yet.
    assert client.get("/v1/me/mfa", headers=headers).get_json() == {
        "factors": [],
        "recovery_codes_remaining": 0,
    }
    assert client.get("/v1/me", headers=headers).get_json()["mfa_methods"] == []


def test_the_qr_code_holds_exactly_the_uri(api, client, tmp_path):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    body = client.post("/v1/me/mfa/totp", headers=headers).get_json()

    assert decode_qr_svg(body["qr_svg"], tmp_path) == body["otpauth_uri"]


def test_an_account_with_a_huge_address_gets_a_qr_code_too(api, client, tmp_path):
    # 254 characters, 2,286 bytes percent-encoded: the whole address does not fit a QR code.
    email = "\u4e2d" * 64 + "@" + "\u4e2d" * 186 + ".cn"
    api.register(email)
    headers = api.bearer(api.tokens(email)["access_token"])

    response = client.post("/v1/me/mfa/totp", headers=headers)

    assert response.status_code == 201
    body = response.get_json()
    label = unquote(urlsplit(body["otpauth_uri"]).path.removeprefix("/"))
    assert label.startswith("authsvc:" + email[:100]) and label.endswith("\u2026")
    assert decode_qr_svg(body["qr_svg"], tmp_path) == body["otpauth_uri"]


def test_confirm_with_an_oathtool_code_activates_and_shows_codes_once(api, client, mailbox):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    enrolled = client.post("/v1/me/mfa/totp", headers=headers).get_json()

    response = client.post(
        f"/v1/me/mfa/totp/{enrolled['factor_id']}/confirm",
        json={"code": oathtool_code(enrolled["secret"])},
        headers=headers,
    )

    assert response.status_code == 200
    body = response.get_json()
    assert body["factor"]["id"] == enrolled["factor_id"]
    assert body["factor"]["type"] == "totp"
    assert body["factor"]["name"] == "Authenticator app"
    assert body["factor"]["last_used_at"] is None
    assert len(body["recovery_codes"]) == 10
    assert all(CODE_FORMAT.match(code) for code in body["recovery_codes"])
    listed = client.get("/v1/me/mfa", headers=headers).get_json()
    assert [f["id"] for f in listed["factors"]] == [enrolled["factor_id"]]
    assert listed["recovery_codes_remaining"] == 10
    assert not any(code in str(listed) for code in body["recovery_codes"])
    me = client.get("/v1/me", headers=headers).get_json()
    assert me["mfa_methods"] == ["totp", "recovery_code"]
    assert (me["recovery_codes_remaining"], me["recovery_codes_low"]) == (10, False)
    api.drain()
    assert mailbox.last("ada@example.com")["Subject"] == "A second factor was added to your account"
    # A second app: no new codes.
    second = client.post("/v1/me/mfa/totp", json={"name": "Tablet"}, headers=headers).get_json()
    again = client.post(
        f"/v1/me/mfa/totp/{second['factor_id']}/confirm",
        json={"code": oathtool_code(second["secret"])},
        headers=headers,
    )
    assert again.status_code == 200
    assert "recovery_codes" not in again.get_json()
    assert len(client.get("/v1/me/mfa", headers=headers).get_json()["factors"]) == 2


def test_enrolling_needs_a_bearer_token(client):
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Bearer en_not-a-real-token"},
        {"Authorization": "Basic x"},
    ):
        response = client.post("/v1/me/mfa/totp", headers=headers)
        assert response.status_code == 401
        assert response.content_type == "application/problem+json"
        assert response.get_json()["code"] == "unauthenticated"
        confirm = client.post(
            "/v1/me/mfa/totp/abc/confirm", json={"code": "123456"}, headers=headers
        )
        assert confirm.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"code": "12345a"}, 400, "invalid_request"),
        ({"code": "12345"}, 400, "invalid_request"),
        ({"code": "1234567"}, 400, "invalid_request"),
        ({"code": "x" * 17}, 400, "invalid_request"),
        ({"code": 123456}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"code": "WRONG"}, 400, "invalid_code"),
    ],
)
def test_confirm_refuses_bad_codes_and_writes_nothing(api, client, body, status, code):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    enrolled = client.post("/v1/me/mfa/totp", headers=headers).get_json()
    if body.get("code") == "WRONG":
        valid = {oathtool_code(enrolled["secret"], offset_steps=o) for o in (-1, 0, 1)}
        body = {"code": next(f"{n:06d}" for n in range(100) if f"{n:06d}" not in valid)}

    response = client.post(
        f"/v1/me/mfa/totp/{enrolled['factor_id']}/confirm", json=body, headers=headers
    )

    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert response.get_json()["code"] == code
    assert client.get("/v1/me/mfa", headers=headers).get_json()["factors"] == []
    assert client.get("/v1/me", headers=headers).get_json()["recovery_codes_remaining"] == 0


def test_confirm_refuses_other_users_unknown_and_active_factors(api, client, connection):
    api.register("ada@example.com")
    api.register("eve@example.com")
    ada = api.bearer(api.tokens("ada@example.com")["access_token"])
    eve = api.bearer(api.tokens("eve@example.com")["access_token"])
    enrolled = client.post("/v1/me/mfa/totp", headers=ada).get_json()
    code = oathtool_code(enrolled["secret"])
    url = f"/v1/me/mfa/totp/{enrolled['factor_id']}/confirm"

    foreign = client.post(url, json={"code": code}, headers=eve)
    assert foreign.status_code == 404
    assert foreign.get_json()["code"] == "not_found"
    unknown = client.post("/v1/me/mfa/totp/nope/confirm", json={"code": code}, headers=ada)
    assert unknown.status_code == 404
    assert client.post(url, json={"code": code}, headers=ada).status_code == 200
    forget_used_steps(connection)
    twice = client.post(url, json={"code": code}, headers=ada)
    assert twice.status_code == 409
    assert twice.get_json()["code"] == "conflict"
    assert client.get("/v1/me/mfa", headers=eve).get_json()["factors"] == []


def test_an_expired_enrollment_cannot_be_confirmed(api, client, connection):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    enrolled = client.post("/v1/me/mfa/totp", headers=headers).get_json()
    row_id = enrolled["factor_id"]
    expired = connection.execute(select(TotpFactor.created_at).where(TotpFactor.id == row_id))
    connection.execute(
        update(TotpFactor).where(TotpFactor.id == row_id).values(expires_at=expired.scalar_one())
    )

    response = client.post(
        f"/v1/me/mfa/totp/{row_id}/confirm",
        json={"code": oathtool_code(enrolled["secret"])},
        headers=headers,
    )

    assert response.status_code == 404
    assert "expired" in response.get_json()["detail"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"name": ""}}, 400, "invalid_request"),
        ({"json": {"name": "x" * 65}}, 400, "invalid_request"),
        ({"json": {"name": 7}}, 400, "invalid_request"),
        ({"json": ["name"]}, 400, "invalid_request"),
        ({"data": "{", "content_type": "application/json"}, 400, "malformed_json"),
        ({"data": "name=x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ],
)
def test_enroll_refuses_bad_bodies(api, client, kwargs, status, code):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])

    response = client.post("/v1/me/mfa/totp", headers=headers, **kwargs)

    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert client.get("/v1/me/mfa", headers=headers).get_json()["factors"] == []
