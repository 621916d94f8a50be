"""The mails authsvc sends, rendered as plain text and queued through the outbox."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy.orm import Session as DbSession

from authsvc.services import outbox
from authsvc.services.context import Deps


def link(deps: Deps, path: str, token: str) -> str:
    return f"{deps.settings.public_url.rstrip('/')}/{path}?{urlencode({'token': token})}"


_TEMPLATES: dict[str, tuple[str, str]] = {
    "verify_email": (
        "Confirm your email address",
        "Someone (hopefully you) signed up with this address.\n\n"
        "Confirm it within {ttl} by opening:\n{link}\n\n"
        "If it was not you, ignore this message; no account is created without this step.\n",
    ),
    "signup_contested": (
        "Choose the password of your new account",
        "Your email address is confirmed. It was signed up more than once, though, perhaps by "
        "someone else, so none of the passwords given at sign-up was kept.\n\n"
        "Choose your password within {ttl} by opening:\n{link}\n",
    ),
    "account_exists": (
        "Sign-up attempt for your account",
        "Someone tried to sign up with this address, but you already have an account.\n\n"
        "If it was you, log in instead, or reset your password:\n{link}\n\n"
        "If it was not you, you can ignore this message; nothing was changed.\n",
    ),
    "reset_password": (
        "Reset your password",
        "A password reset was requested for your account.\n\n"
        "Choose a new password within {ttl} by opening:\n{link}\n\n"
        "If it was not you, ignore this message; your password stays the same.\n",
    ),
    "no_account": (
        "Password reset request",
        "Someone asked to reset the password of an account with this address, "
        "but there is no such account.\n\nIf it was you, you may have signed up with "
        "another address. If it was not you, ignore this message.\n",
    ),
    "password_changed": (
        "Your password was changed",
        "The password of your account was changed at {when} UTC and every session was "
        "signed out.\n\nIf it was not you, reset your password now:\n{link}\n",
    ),
}


def send(
    session: DbSession,
    deps: Deps,
    *,
    to: str,
    template: str,
    now: datetime,
    **params: str,
) -> None:
    subject, body = _TEMPLATES[template]
    outbox.enqueue_email(
        session, deps.keyring, to=to, subject=subject, text=body.format(**params), now=now
    )


def register(name: str, subject: str, body: str) -> None:
    """Capabilities add their own templates at import time of their service module."""
    _TEMPLATES.setdefault(name, (subject, body))
