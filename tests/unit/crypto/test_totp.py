import base64
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import segno

from authsvc.crypto import totp

# RFC 6238 appendix B, SHA-1 seed; the 6-digit codes are the last six of the 8-digit ones.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "287082"),
    (1111111109, "081804"),
    (1111111111, "050471"),
    (1234567890, "005924"),
    (2000000000, "279037"),
    (20000000000, "353130"),
]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.mark.parametrize(("seconds", "code"), RFC_VECTORS)
def test_rfc6238_vectors(seconds, code):
    step = totp.step_at(at(seconds))
    assert step == seconds // 30
    assert totp.code_at(RFC_SECRET, step) == code
    assert totp.verify(secret=RFC_SECRET, code=code, now=at(seconds)) == step


def test_window_is_one_step_either_side():
    secret = totp.generate_secret()
    now = at(1_700_000_015)
    step = totp.step_at(now)
    for offset in (-1, 0, 1):
        code = totp.code_at(secret, step + offset)
        assert totp.verify(secret=secret, code=code, now=now) == step + offset
    for offset in (-3, -2, 2, 3):
        code = totp.code_at(secret, step + offset)
        if code not in {totp.code_at(secret, step + o) for o in (-1, 0, 1)}:
            assert totp.verify(secret=secret, code=code, now=now) is None


def test_steps_at_or_before_after_step_are_skipped():
    secret = totp.generate_secret()
    now = at(1_700_000_000)
    step = totp.step_at(now)
    code = totp.code_at(secret, step)
    assert totp.verify(secret=secret, code=code, now=now, after_step=step - 1) == step
    assert totp.verify(secret=secret, code=code, now=now, after_step=step) is None
    assert totp.verify(secret=secret, code=code, now=now, after_step=step + 1) is None


def test_aware_datetimes_in_other_zones_give_the_same_step(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        utc = at(1_700_000_000)
        tokyo = utc.astimezone(timezone(timedelta(hours=9)))
        assert totp.step_at(tokyo) == totp.step_at(utc) == 1_700_000_000 // 30
        code = totp.code_at(RFC_SECRET, totp.step_at(utc))
        assert totp.verify(secret=RFC_SECRET, code=code, now=tokyo) == totp.step_at(utc)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        totp.step_at(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("123456", "123456"),
        (" 123 456 ", "123456"),
        ("123-456", "123456"),
        ("12345", None),
        ("1234567", None),
        ("12345a", None),
        ("١٢٣٤٥٦", None),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ("", None),
        ("1" * 100, None),
    ],
)
def test_normalize_code(raw, expected):
    assert totp.normalize_code(raw) == expected


def test_malformed_codes_never_verify():
    secret = totp.generate_secret()
    now = at(1_700_000_000)
    assert totp.verify(secret=secret, code="abcdef", now=now) is None
    assert totp.verify(secret=secret, code="", now=now) is None


def test_secret_is_160_bit_unpadded_base32():
    secret = totp.generate_secret()
    assert len(secret) == 32
    assert "=" not in secret
    assert len(base64.b32decode(secret)) == 20
    assert secret != totp.generate_secret()


def test_codes_match_pyotp_and_oathtool():
    secret = totp.generate_secret()
    now = int(time.time())
    ours = totp.code_at(secret, now // 30)
    assert ours == pyotp.TOTP(secret).at(now)
    result = subprocess.run(
        ["oathtool", "--totp", "-b", secret, "--now", f"@{now}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    assert result.stdout.strip() == ours


@pytest.mark.parametrize(
    ("account", "issuer"),
    [
        ("\u4e2d" * 64 + "@" + "\u4e2d" * 186 + ".cn", "authsvc"),  # 254 characters, 2,286 bytes
        ("\U0001f600" * 64 + "@" + "\U0001f600" * 185 + ".de", "\u00e9" * 500),
    ],
    ids=["cjk-email", "emoji-email-and-long-issuer"],
)
def test_provisioning_uris_of_huge_labels_still_fit_a_qr_code(account, issuer):
    secret = totp.generate_secret()

    uri = totp.provisioning_uri(secret=secret, account_name=account, issuer=issuer)

    assert len(uri) <= 2331  # a version 40 QR code at error level M, in bytes
    segno.make(uri, error="m", micro=False)  # raises DataOverflowError if it does not fit
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert parsed.name.endswith("\u2026") and account.startswith(parsed.name[:-1])
    assert parsed.issuer.endswith(("\u2026", "authsvc"))
    assert unquote(urlsplit(uri).path.lstrip("/")).startswith(f"{parsed.issuer}:{parsed.name}")


def test_provisioning_uri_follows_the_key_uri_format():
    secret = totp.generate_secret()
    uri = totp.provisioning_uri(
        secret=secret, account_name="ada+x/y@example.com", issuer="Acme: Login"
    )
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    label = unquote(parts.path.lstrip("/"))
    assert label == "Acme  Login:ada+x/y@example.com"
    assert "/" not in parts.path.lstrip("/")  # the account's slash is escaped
    query = parse_qs(parts.query)
    assert query == {
        "secret": [secret],
        "issuer": ["Acme  Login"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert parsed.issuer == "Acme  Login"
