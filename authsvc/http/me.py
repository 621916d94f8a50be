"""The signed-in user's own resources under /v1/me (bearer token)."""

from __future__ import annotations

from flask import Blueprint, Response

from authsvc.db import utcnow
from authsvc.errors import Unauthenticated
from authsvc.http.auth import (
    REFUSED,
    access_claims,
    principal,
    require_recent_login,
    require_user,
)
from authsvc.http.io import (
    client,
    db,
    deps,
    no_content,
    one_statement_db,
    respond,
    transactional,
)
from authsvc.services import profile, sessions

bp = Blueprint("me", __name__, url_prefix="/v1/me")


@bp.get("")
def me() -> Response:
    """The bearer guard and the profile in one query: the token is verified first, then
    the statement that reads the profile also requires a live session of an enabled user."""
    now = utcnow()
    claims = access_claims(now)
    found = profile.profile(one_statement_db(), session_id=claims.sid, user_id=claims.sub, now=now)
    if found is None:
        raise Unauthenticated(REFUSED)
    return respond(found)


@bp.get("/sessions")
@transactional
@require_user
def list_sessions() -> Response:
    p = principal()
    items = sessions.list_sessions(
        db(),
        user_id=p.user_id,
        current_session_id=p.session_id,
        idle_timeout=deps().settings.session_idle_timeout,
        now=utcnow(),
    )
    return respond({"sessions": items})


@bp.delete("/sessions")
@transactional
@require_user
def revoke_other_sessions() -> Response:
    """Sign out everywhere else: it takes a recent login, as ending any other session does."""
    require_recent_login()
    p = principal()
    revoked = sessions.revoke_others(
        db(), user_id=p.user_id, current_session_id=p.session_id, client=client(), now=utcnow()
    )
    return respond({"sessions_revoked": revoked})


@bp.delete("/sessions/<session_id>")
@transactional
@require_user
def revoke_session(session_id: str) -> Response:
    if session_id != principal().session_id:  # ending one's own session is a logout
        require_recent_login()
    sessions.revoke_session(
        db(),
        user_id=principal().user_id,
        session_id=session_id[:64],
        idle_timeout=deps().settings.session_idle_timeout,
        client=client(),
        now=utcnow(),
    )
    return no_content()
