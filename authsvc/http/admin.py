"""Administration API under /admin/v1 (admin API key as bearer token)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, Response, request

from authsvc.db import utcnow
from authsvc.errors import InvalidRequest
from authsvc.http.auth import current_admin, require_admin
from authsvc.http.io import (
    client,
    db,
    deps,
    field,
    no_content,
    only_query,
    parse,
    respond,
    transactional,
)
from authsvc.services import admin

bp = Blueprint("admin", __name__, url_prefix="/admin/v1")


@dataclass
class CreateUserBody:
    email: str = field(max_length=320)
    password: str | None = field(max_length=1024, default=None)
    password_hash: str | None = field(max_length=1024, default=None)
    email_verified: bool = True


@bp.post("/users")
@transactional
@require_admin
def create_user() -> Response:
    only_query(frozenset())
    body = parse(CreateUserBody, known_only=True)
    view = admin.create_user(
        db(),
        deps(),
        admin=current_admin(),
        email=body.email,
        password=body.password,
        password_hash=body.password_hash,
        email_verified=body.email_verified,
        client=client(),
        now=utcnow(),
    )
    return respond(view, 201)


@bp.get("/users")
@transactional
@require_admin
def find_users() -> Response:
    only_query(frozenset({"email"}))
    email = request.args.get("email")
    if not email or len(email) > 320:  # an empty value is none (openapi.yaml: required)
        raise InvalidRequest(
            "the email query parameter is required (1 to 320 characters)", field="email"
        )
    users = admin.find_users(
        db(), deps(), admin=current_admin(), email=email, client=client(), now=utcnow()
    )
    return respond({"users": users})


@bp.get("/users/<user_id>")
@transactional
@require_admin
def get_user(user_id: str) -> Response:
    only_query(frozenset())
    view = admin.get_user(
        db(), admin=current_admin(), user_id=user_id[:64], client=client(), now=utcnow()
    )
    return respond(view)


@bp.delete("/users/<user_id>")
@transactional
@require_admin
def delete_user(user_id: str) -> Response:
    only_query(frozenset())
    admin.delete_user(
        db(), admin=current_admin(), user_id=user_id[:64], client=client(), now=utcnow()
    )
    return no_content()


@bp.post("/users/<user_id>/disable")
@transactional
@require_admin
def disable_user(user_id: str) -> Response:
    only_query(frozenset())
    view = admin.disable_user(
        db(), admin=current_admin(), user_id=user_id[:64], client=client(), now=utcnow()
    )
    return respond(view)


@bp.post("/users/<user_id>/enable")
@transactional
@require_admin
def enable_user(user_id: str) -> Response:
    only_query(frozenset())
    view = admin.enable_user(
        db(), admin=current_admin(), user_id=user_id[:64], client=client(), now=utcnow()
    )
    return respond(view)


@bp.get("/users/<user_id>/sessions")
@transactional
@require_admin
def list_user_sessions(user_id: str) -> Response:
    only_query(frozenset())
    items = admin.list_user_sessions(
        db(),
        admin=current_admin(),
        user_id=user_id[:64],
        idle_timeout=deps().settings.session_idle_timeout,
        client=client(),
        now=utcnow(),
    )
    return respond({"sessions": items})


@bp.delete("/users/<user_id>/sessions")
@transactional
@require_admin
def revoke_user_sessions(user_id: str) -> Response:
    only_query(frozenset())
    revoked = admin.revoke_user_sessions(
        db(), admin=current_admin(), user_id=user_id[:64], client=client(), now=utcnow()
    )
    return respond({"sessions_revoked": revoked})
