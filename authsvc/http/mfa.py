"""/v1/me/mfa and /v1/me/recovery-codes: TOTP, recovery codes, factor management."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("mfa", __name__)
