"""End-user flows under /v1 that need no bearer token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response
from sqlalchemy import Engine

from authsvc.db import utcnow
from authsvc.errors import InvalidRequest
from authsvc.http.auth import authenticate_bearer
from authsvc.http.io import (
    client,
    db,
    deps,
    field,
    no_content,
    one_statement_db,
    parse,
    respond,
    transactional,
)
from authsvc.services import accounts, login, password_change, sessions, signing
from authsvc.services.factors import FactorProof
from authsvc.services.login import LoginResult

bp = Blueprint("public", __name__, url_prefix="/v1")

EMAIL_MAX = 320
PASSWORD_MAX = 1024  # longer than any acceptable password; the policy says 256
TOKEN_MAX = 512


@dataclass
class EmailPassword:
    email: str = field(max_length=EMAIL_MAX)
    password: str = field(max_length=PASSWORD_MAX)


@dataclass
class EmailOnly:
    email: str = field(max_length=EMAIL_MAX)


@dataclass
class TokenOnly:
    token: str = field(max_length=TOKEN_MAX)


@dataclass
class RefreshBody:
    refresh_token: str = field(max_length=TOKEN_MAX)


@dataclass
class MfaBody:
    mfa_token: str = field(max_length=TOKEN_MAX)
    totp_code: str | None = field(max_length=16, default=None)
    recovery_code: str | None = field(max_length=64, default=None)
    webauthn: dict[str, Any] | None = None


@dataclass
class ResetBody:
    token: str = field(max_length=TOKEN_MAX)
    new_password: str = field(max_length=PASSWORD_MAX)
    totp_code: str | None = field(max_length=16, default=None)
    recovery_code: str | None = field(max_length=64, default=None)
    webauthn: dict[str, Any] | None = None


@dataclass
class ChangeBody:
    new_password: str = field(max_length=PASSWORD_MAX)
    current_password: str | None = field(max_length=PASSWORD_MAX, default=None)
    change_token: str | None = field(max_length=TOKEN_MAX, default=None)


def login_response(result: LoginResult) -> Response:
    """The JSON shape of every login outcome (password, MFA step, passkey)."""
    body: dict[str, Any] = {"status": result.status}
    if result.tokens is not None:
        body.update(
            access_token=result.tokens.access_token,
            refresh_token=result.tokens.refresh_token,
            token_type=result.tokens.token_type,
            expires_in=result.tokens.expires_in,
        )
    if result.mfa_token is not None:
        body.update(
            mfa_token=result.mfa_token, methods=list(result.methods), expires_in=result.expires_in
        )
    if result.change_token is not None:
        body["change_token"] = result.change_token
    if result.enrollment_token is not None:
        body["enrollment_token"] = result.enrollment_token
    return respond(body)


@bp.post("/signup")
@transactional
def signup() -> Response:
    body = parse(EmailPassword)
    accounts.signup(
        db(), deps(), email=body.email, password=body.password, client=client(), now=utcnow()
    )
    return respond({"status": "verification_sent"}, 202)


@bp.post("/signup/verify")
@transactional
def verify_email() -> Response:
    body = parse(TokenOnly)
    accounts.verify_email(db(), deps(), token=body.token, client=client(), now=utcnow())
    return respond({"status": "verified"})


@bp.post("/login")
@transactional
def login_password() -> Response:
    body = parse(EmailPassword)
    result = accounts.login_with_password(
        db(), deps(), email=body.email, password=body.password, client=client(), now=utcnow()
    )
    return login_response(result)


@bp.post("/login/mfa")
@transactional
def login_mfa() -> Response:
    body = parse(MfaBody)
    proof = FactorProof(
        totp_code=body.totp_code, recovery_code=body.recovery_code, webauthn=body.webauthn
    )
    result = login.complete_mfa(
        db(), deps(), mfa_token=body.mfa_token, proof=proof, client=client(), now=utcnow()
    )
    return login_response(result)


@bp.post("/password/forgot")
@transactional
def forgot_password() -> Response:
    body = parse(EmailOnly)
    accounts.forgot_password(db(), deps(), email=body.email, client=client(), now=utcnow())
    return respond({"status": "reset_sent"}, 202)


@bp.post("/password/reset")
@transactional
def reset_password() -> Response:
    body = parse(ResetBody)
    proof = FactorProof(
        totp_code=body.totp_code, recovery_code=body.recovery_code, webauthn=body.webauthn
    )
    accounts.reset_password(
        db(),
        deps(),
        token=body.token,
        new_password=body.new_password,
        proof=proof,
        client=client(),
        now=utcnow(),
    )
    return no_content()


@bp.post("/token/refresh")
def refresh_token() -> Response:
    """On PostgreSQL the common case is one statement on a connection in autocommit mode;
    anything else (a spent, unknown or dead token; other databases) runs in a transaction."""
    body = parse(RefreshBody)
    one = one_statement_db()
    if isinstance(one, Engine):
        now = utcnow()
        session = db()
        signer = signing.signer(session, deps().keyring, now=now)
        if session.in_transaction():  # it read the key (or stored a new one): done with that
            session.commit()
        pair = sessions.rotate_in_one_statement(
            one, deps(), signer=signer, refresh_token=body.refresh_token, now=now
        )
        if pair is not None:
            return _token_pair(pair)
    return _rotate_refresh_token(body.refresh_token)


@transactional
def _rotate_refresh_token(refresh_token: str) -> Response:
    pair = sessions.rotate_refresh_token(
        db(), deps(), refresh_token=refresh_token, client=client(), now=utcnow()
    )
    return _token_pair(pair)


def _token_pair(pair: sessions.TokenPair) -> Response:
    return respond(
        {
            "status": "authenticated",
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "token_type": pair.token_type,
            "expires_in": pair.expires_in,
        }
    )


@bp.post("/logout")
@transactional
def logout() -> Response:
    body = parse(RefreshBody)
    sessions.logout(db(), refresh_token=body.refresh_token, client=client(), now=utcnow())
    return no_content()


@bp.post("/password/change")
@transactional
def change_password() -> Response:
    body = parse(ChangeBody)
    if (body.change_token is None) == (body.current_password is None):
        raise InvalidRequest("give exactly one of current_password and change_token")
    now = utcnow()
    user_id = None
    if body.change_token is None:
        user_id = authenticate_bearer(now).user_id
    password_change.change_password(
        db(),
        deps(),
        user_id=user_id,
        current_password=body.current_password,
        change_token=body.change_token,
        new_password=body.new_password,
        client=client(),
        now=now,
    )
    return no_content()
