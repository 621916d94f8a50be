"""The single place where errors become RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import redis.exceptions
from flask import Flask, Response, current_app, g, json
from limits.errors import StorageError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from authsvc.errors import AuthsvcError, InvalidAdminKey, RateLimited, Unauthenticated
from authsvc.http.auth import bearer_token

log = logging.getLogger("authsvc.http")

PROBLEM_TYPE_BASE = "https://authsvc.dev/problems/"

HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    417: "expectation_failed",
    431: "headers_too_large",
}


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    return response


def render_domain_error(exc: AuthsvcError) -> Response:
    if isinstance(exc, RateLimited):
        # Every refusal is counted here, whichever path refused it.
        metrics = current_app.extensions["authsvc"].metrics
        metrics.rate_limit_hits.labels(exc.policy or "unknown").inc()
    response = problem(exc.status, exc.code, exc.title, exc.detail, **exc.extra)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthenticated | InvalidAdminKey):
        response.headers["WWW-Authenticate"] = bearer_challenge()
    return response


def bearer_challenge() -> str:
    """The challenge of a 401 from a route that takes a bearer token (RFC 6750 section 3):
    the scheme and realm alone when the request sent no bearer token, ``invalid_token`` when
    the one it sent was refused (malformed, expired, revoked or unknown, alike)."""
    if bearer_token() is not None:
        return 'Bearer realm="authsvc", error="invalid_token"'
    return 'Bearer realm="authsvc"'


def render_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status, "http_error")
    response = problem(status, code, exc.name, exc.description or exc.name)
    # The headers that say what to ask instead: the methods a route takes, a file's length.
    for header in ("Allow", "Content-Range"):
        value = exc.get_response().headers.get(header)
        if value:
            response.headers[header] = value
    return response


def render_unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return render_http_exception(exc)
    request_id = getattr(g, "request_id", None) or secrets.token_hex(8)
    log.exception("unhandled error", extra={"request_id": request_id})
    return problem(
        500,
        "internal_error",
        "Internal error",
        "An unexpected error occurred",
        request_id=request_id,
    )


# A backing service that cannot answer: the database (unreachable, dropped connection, pool
# exhausted, SQLite busy past its timeout, and PostgreSQL's retryable operational errors such as
# a deadlock or a serialization failure) or the Redis rate-limit store, unreachable or refusing
# the command (a read-only replica after a failover, out of memory, unable to persist, a
# cluster without its master). Refused, never let through: a request that cannot be throttled
# is not served.
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    StorageError,
)
UNAVAILABLE_RETRY_AFTER = 5
# PostgreSQL's "cannot execute ... in a read-only transaction": a standby, as a primary that
# was demoted in a failover answers the connections still pointed at it.
READ_ONLY_SQLSTATE = "25006"


def render_database_error(exc: sa_exc.DBAPIError) -> Response:
    """A database error that is not operational: a read-only database is unavailable, anything
    else unexpected."""
    if getattr(exc.orig, "sqlstate", None) == READ_ONLY_SQLSTATE:
        return render_unavailable(exc)
    return render_unexpected(exc)


def render_unavailable(exc: Exception) -> Response:
    request_id = getattr(g, "request_id", None) or secrets.token_hex(8)
    # Engines hide bound parameters, so the message names the failure, never a value.
    cause = getattr(exc, "orig", None) or exc  # the driver's own error, when SQLAlchemy wraps one
    log.error(
        "backing service unavailable (%s)",
        type(cause).__name__,
        exc_info=exc,
        extra={"request_id": request_id},
    )
    response = problem(
        503,
        "unavailable",
        "Service unavailable",
        "A service this request needs cannot be reached; retry later",
        request_id=request_id,
    )
    response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
    return response


def register(app: Flask) -> None:
    app.register_error_handler(AuthsvcError, render_domain_error)
    for kind in UNAVAILABLE:
        app.register_error_handler(kind, render_unavailable)
    app.register_error_handler(sa_exc.DBAPIError, render_database_error)
    app.register_error_handler(HTTPException, render_http_exception)
    app.register_error_handler(Exception, render_unexpected)
