"""/v1/me/mfa and /v1/me/recovery-codes: TOTP, recovery codes, factor management."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response
from werkzeug.routing import BaseConverter

from authsvc.db import utcnow
from authsvc.http.auth import (
    principal,
    require_recent_login_to_add_a_factor,
    require_user,
    require_user_or_enrollment,
)
from authsvc.http.io import client, db, deps, field, no_content, parse, respond, transactional
from authsvc.http.public import login_response
from authsvc.services import mfa_management, totp

bp = Blueprint("mfa", __name__)

NAME_MAX = 256  # shape only; the service allows 64 characters after normalisation
CODE_MAX = 16
ID_MAX = 64


class FactorIdConverter(BaseConverter):
    """The factor id in /v1/me/mfa/<factor_id:...>: any segment but the names of the routes
    beside it. /v1/me/mfa/totp and /v1/me/mfa/webauthn take POST only; without this, a PATCH
    or DELETE sent there was routed to the factor whose id is "totp" and answered 404, and
    their 405s listed PATCH and DELETE in Allow. Factor ids (``new_id``) are never these."""

    regex = r"(?!(?:totp|webauthn)\Z)[^/]+"


@dataclass
class OptionalName:
    name: str | None = field(max_length=NAME_MAX, default=None)


@dataclass
class NameBody:
    name: str = field(max_length=NAME_MAX)


@dataclass
class CodeBody:
    code: str = field(max_length=CODE_MAX)


@bp.get("/v1/me/mfa")
@transactional
@require_user
def list_factors() -> Response:
    return respond(mfa_management.list_all(db(), user_id=principal().user_id))


@bp.patch("/v1/me/mfa/<factor_id:factor_id>")
@transactional
@require_user
def rename_factor(factor_id: str) -> Response:
    body = parse(NameBody)
    factor = mfa_management.rename(
        db(),
        deps(),
        user_id=principal().user_id,
        factor_id=factor_id[:ID_MAX],
        name=body.name,
        client=client(),
        now=utcnow(),
    )
    return respond(factor)


@bp.delete("/v1/me/mfa/<factor_id:factor_id>")
@transactional
@require_user
def delete_factor(factor_id: str) -> Response:
    p = principal()
    mfa_management.remove(
        db(),
        deps(),
        user_id=p.user_id,
        factor_id=factor_id[:ID_MAX],
        auth_time=p.auth_time,
        client=client(),
        now=utcnow(),
    )
    return no_content()


@bp.post("/v1/me/mfa/totp")
@transactional
@require_user_or_enrollment
def enroll_totp() -> Response:
    body = parse(OptionalName, optional=True)
    require_recent_login_to_add_a_factor()
    enrollment = totp.enroll(
        db(), deps(), user_id=principal().user_id, name=body.name, client=client(), now=utcnow()
    )
    return respond(enrollment, 201)


@bp.post("/v1/me/mfa/totp/<factor_id>/confirm")
@transactional
@require_user_or_enrollment
def confirm_totp(factor_id: str) -> Response:
    body = parse(CodeBody)
    p = principal()
    if p.enrollment_token is None:
        confirmation = totp.confirm(
            db(),
            deps(),
            user_id=p.user_id,
            factor_id=factor_id[:ID_MAX],
            code=body.code,
            client=client(),
            now=utcnow(),
        )
        return respond(_confirmation(confirmation))
    done = mfa_management.confirm_totp_with_enrollment(
        db(),
        deps(),
        enrollment_token=p.enrollment_token,
        factor_id=factor_id[:ID_MAX],
        code=body.code,
        client=client(),
        now=utcnow(),
    )
    login_body: dict[str, Any] = login_response(done.login).get_json()
    return respond({**_confirmation(done.confirmation), **login_body})


def _confirmation(confirmation: totp.TotpConfirmation) -> dict[str, Any]:
    body: dict[str, Any] = {"factor": confirmation.factor}
    if confirmation.recovery_codes is not None:
        body["recovery_codes"] = list(confirmation.recovery_codes)
    return body


@bp.post("/v1/me/recovery-codes")
@transactional
@require_user
def regenerate_recovery_codes() -> Response:
    p = principal()
    codes = mfa_management.regenerate_recovery_codes(
        db(), deps(), user_id=p.user_id, auth_time=p.auth_time, client=client(), now=utcnow()
    )
    return respond({"recovery_codes": list(codes)})
