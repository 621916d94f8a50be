"""WebAuthn registration, the WebAuthn MFA step and passkey login."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response

from authsvc.db import utcnow
from authsvc.http.auth import (
    principal,
    require_recent_login_to_add_a_factor,
    require_user_or_enrollment,
)
from authsvc.http.io import client, db, deps, field, parse, respond, to_json, transactional
from authsvc.http.public import TOKEN_MAX, login_response
from authsvc.services import passkeys, webauthn, webauthn_registration

bp = Blueprint("webauthn", __name__)

NAME_MAX = 256  # shape only; the service allows 64 characters after normalisation
ID_MAX = 64


@dataclass
class NameBody:
    name: str = field(max_length=NAME_MAX)


@dataclass
class RegistrationBody:
    credential: dict[str, Any]
    name: str | None = field(max_length=NAME_MAX, default=None)


@dataclass
class MfaTokenBody:
    mfa_token: str = field(max_length=TOKEN_MAX)


@dataclass
class ResetTokenBody:
    token: str = field(max_length=TOKEN_MAX)


@dataclass
class _Empty:
    pass


@dataclass
class PasskeyBody:
    credential: dict[str, Any]
    challenge_id: str = field(max_length=ID_MAX)


@bp.post("/v1/me/mfa/webauthn/registration-options")
@transactional
@require_user_or_enrollment
def webauthn_registration_options() -> Response:
    body = parse(NameBody)
    require_recent_login_to_add_a_factor()
    options = webauthn_registration.registration_options(
        db(), deps(), user_id=principal().user_id, name=body.name, now=utcnow()
    )
    return respond(options)


@bp.post("/v1/me/mfa/webauthn")
@transactional
@require_user_or_enrollment
def register_webauthn() -> Response:
    """With an enrollment token the answer also completes the login it stands for."""
    body = parse(RegistrationBody)
    p = principal()
    if p.enrollment_token is None:
        factor = webauthn_registration.register(
            db(),
            deps(),
            user_id=p.user_id,
            credential=body.credential,
            name=body.name,
            client=client(),
            now=utcnow(),
        )
        return respond(_factor(factor), 201)
    done = webauthn_registration.register_with_enrollment(
        db(),
        deps(),
        enrollment_token=p.enrollment_token,
        credential=body.credential,
        name=body.name,
        client=client(),
        now=utcnow(),
    )
    login_body: dict[str, Any] = login_response(done.result).get_json()
    return respond({**_factor(done.factor), **login_body}, 201)


def _factor(factor: webauthn_registration.RegisteredKey) -> dict[str, Any]:
    body: dict[str, Any] = to_json(factor)
    if factor.recovery_codes is None:
        del body["recovery_codes"]
    return body


@bp.post("/v1/login/mfa/webauthn-options")
@transactional
def login_mfa_webauthn_options() -> Response:
    body = parse(MfaTokenBody)
    options = webauthn.mfa_options(
        db(), deps(), mfa_token=body.mfa_token, client=client(), now=utcnow()
    )
    return respond(options)


@bp.post("/v1/password/reset/webauthn-options")
@transactional
def reset_password_webauthn_options() -> Response:
    body = parse(ResetTokenBody)
    options = webauthn.reset_options(
        db(), deps(), reset_token=body.token, client=client(), now=utcnow()
    )
    return respond(options)


@bp.post("/v1/passkeys/login-options")
@transactional
def passkey_login_options() -> Response:
    parse(_Empty, optional=True)
    result = passkeys.passkey_options(db(), deps(), client=client(), now=utcnow())
    return respond({**result.options, "challenge_id": result.challenge_id})


@bp.post("/v1/passkeys/login")
@transactional
def passkey_login() -> Response:
    body = parse(PasskeyBody)
    result = passkeys.login_with_passkey(
        db(),
        deps(),
        challenge_id=body.challenge_id,
        credential=body.credential,
        client=client(),
        now=utcnow(),
    )
    return login_response(result)
