"""WebAuthn registration, the WebAuthn MFA step and passkey login."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webauthn", __name__)
