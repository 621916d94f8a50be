"""RFC 6238 TOTP over pyotp: SHA-1, 6 digits, 30-second steps, a window of one step.

Pure functions: no clock of their own (``now`` is an aware datetime), no storage. ``verify``
returns the time step that matched so the caller can refuse a step it has already accepted.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from datetime import datetime
from urllib.parse import quote, urlencode

import pyotp

DIGITS = 6
PERIOD = 30
ALGORITHM = "SHA1"
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA-1 block the RFC 4226 reference uses
WINDOW = 1

_CODE = re.compile(rf"[0-9]{{{DIGITS}}}")
_SEPARATORS = re.compile(r"[\s-]")
_MAX_INPUT = 32


def generate_secret(nbytes: int = SECRET_BYTES) -> str:
    """A random secret as unpadded upper-case base32 (what authenticator apps expect)."""
    return base64.b32encode(secrets.token_bytes(nbytes)).decode("ascii").rstrip("=")


def normalize_code(raw: str) -> str | None:
    """The 6 ASCII digits of a typed code ("123 456" and "123-456" are fine), or None."""
    if len(raw) > _MAX_INPUT:
        return None
    code = _SEPARATORS.sub("", raw)
    return code if _CODE.fullmatch(code) else None


def step_at(now: datetime) -> int:
    """The RFC 6238 time step (T) of an aware datetime."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return int(now.timestamp()) // PERIOD


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD)


def code_at(secret: str, step: int) -> str:
    """The code of one time step (tests, and the enrollment check)."""
    return _totp(secret).generate_otp(step)


def verify(
    *,
    secret: str,
    code: str,
    now: datetime,
    window: int = WINDOW,
    after_step: int | None = None,
) -> int | None:
    """The time step whose code equals ``code`` within ±``window`` steps of ``now``, or None.

    Every candidate is computed and compared in constant time. Steps at or before
    ``after_step`` (the last one accepted) are skipped; among the rest the earliest wins.
    """
    expected = normalize_code(code)
    current = step_at(now)
    totp = _totp(secret)
    matched: int | None = None
    for step in range(current - window, current + window + 1):
        candidate = totp.generate_otp(step)
        equal = hmac.compare_digest(candidate.encode(), (expected or "").encode())
        fresh = after_step is None or step > after_step
        if equal and fresh and matched is None and expected is not None:
            matched = step
    return matched


# Percent-encoded bytes of each label part. An email of 254 emoji is 3,048 bytes encoded, more
# than a QR code holds at error level M (2,331); with these caps every URI fits in about 1,650.
MAX_ISSUER_BYTES = 256
MAX_ACCOUNT_BYTES = 1024
_ELLIPSIS = "\u2026"


def _fit(text: str, limit: int) -> str:
    """``text``, cut short with an ellipsis if its percent-encoded form exceeds ``limit`` bytes:
    it is a label the authenticator app shows, not something anyone types back."""
    if len(quote(text, safe="")) <= limit:
        return text
    size = len(quote(_ELLIPSIS, safe=""))
    kept: list[str] = []
    for ch in text:
        size += len(quote(ch, safe=""))
        if size > limit:
            break
        kept.append(ch)
    return "".join(kept).rstrip() + _ELLIPSIS


def provisioning_uri(*, secret: str, account_name: str, issuer: str) -> str:
    """An ``otpauth://totp/`` URI in the Key Uri Format read by Google Authenticator, Authy,
    1Password and FreeOTP: ``Issuer:account`` label and an ``issuer`` parameter; short enough
    for a QR code whatever the issuer and the account's address (see ``MAX_ACCOUNT_BYTES``)."""
    issuer = _fit(issuer.replace(":", " ").strip(), MAX_ISSUER_BYTES)
    account_name = _fit(account_name.replace(":", " ").strip(), MAX_ACCOUNT_BYTES)
    label = f"{quote(issuer, safe='')}:{quote(account_name, safe='')}"
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": ALGORITHM,
            "digits": DIGITS,
            "period": PERIOD,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
