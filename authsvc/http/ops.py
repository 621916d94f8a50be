"""Operations: health, readiness, the contract, API docs and the JWKS."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources

import swagger_ui_bundle
from flask import Blueprint, Flask, Response, current_app, send_from_directory
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from authsvc.db import limit_statements, reading_only, utcnow
from authsvc.errors import NotFound, Unauthenticated
from authsvc.http.auth import bearer_token
from authsvc.http.io import db, deps, respond, transactional
from authsvc.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from authsvc.schema import schema_is_current
from authsvc.services import detection, signing

bp = Blueprint("ops", __name__)

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>authsvc API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""

DOCS_INIT = "SwaggerUIBundle({url: '/openapi.yaml', dom_id: '#swagger-ui'});\n"


@bp.get("/healthz")
def healthz() -> Response:
    return respond({"status": "ok"})


# Anyone may call /readyz (load balancers do, often): each process checks at most this often
# and answers from the last check in between, so a flood costs no database or Redis work.
READINESS_TTL_SECONDS = 2.0
# How long a call waits for a check under way before it answers not ready. The check runs in a
# thread of its own, one at a time: when it hangs (a database that stopped answering on an open
# connection, a lock held by a migration), calls do not queue behind it, each holding a request
# thread, until the worker has none left for any request, /healthz included.
READINESS_WAIT_SECONDS = 3.0
READINESS_CHECKS = ("database", "schema", "rate_limit_storage")


@dataclass
class _Readiness:
    lock: threading.Lock = field(default_factory=threading.Lock)
    checks: dict[str, bool] | None = None
    until: float = 0.0
    # The check under way, if any: its results so far, and an event set when it is done.
    running: dict[str, bool] | None = None
    done: threading.Event = field(default_factory=threading.Event)


@bp.get("/readyz")
def readyz() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cache: _Readiness = app.extensions.setdefault("authsvc.readiness", _Readiness())
    with cache.lock:
        if cache.running is None and (cache.checks is None or time.monotonic() >= cache.until):
            cache.running, cache.done = dict.fromkeys(READINESS_CHECKS, False), threading.Event()
            threading.Thread(
                target=_run_check, args=(app, cache), name="authsvc-readiness", daemon=True
            ).start()
        done = cache.done
    done.wait(READINESS_WAIT_SECONDS)
    with cache.lock:
        # A check still under way after the wait: what it found so far, the rest not ready.
        checks = dict(cache.running if cache.running is not None else cache.checks or {})
    ready = bool(checks) and all(checks.values())
    return respond(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )


def _run_check(app: Flask, cache: _Readiness) -> None:
    assert cache.running is not None
    try:
        _check_readiness(app, cache.running)
    finally:
        with cache.lock:
            cache.checks, cache.running = cache.running, None
            cache.until = time.monotonic() + READINESS_TTL_SECONDS
            cache.done.set()


def _check_readiness(app: Flask, checks: dict[str, bool]) -> None:
    """Fill in ``checks`` one by one, as each is known."""
    state = app.extensions["authsvc"]
    try:
        # Through the app's sessionmaker, like every request: the same pool and bind.
        with state.sessionmaker() as session:
            reading_only(session)  # SQLite: beside a writer too
            connection = session.connection()
            # Reachable, and taking writes: a PostgreSQL standby (a primary demoted in a
            # failover) answers every query but refuses every login.
            if connection.dialect.name == "postgresql":
                read_only = connection.execute(text("SHOW transaction_read_only")).scalar()
                checks["database"] = read_only == "off"
            else:
                checks["database"] = connection.execute(text("SELECT 1")).scalar() == 1
            checks["schema"] = schema_is_current(connection)
            if checks["schema"]:
                # The ring opens the signing key: not so after `authsvc keys rotate` ran with a
                # ring this process was not restarted with (every login would answer 503).
                keyring = state.deps.keyring
                checks["signing_key"] = signing.unreadable_key_id(session, keyring) is None
    except Exception:
        app.logger.warning("readiness: database check failed")
    try:
        checks["rate_limit_storage"] = state.deps.limiter.check()
    except Exception:
        app.logger.warning("readiness: rate-limit storage check failed")


# How long the gauges read at a scrape may take, lock waits included (PostgreSQL): well within
# Prometheus's default scrape timeout of 10 s. Past it they are left out of that scrape.
GAUGES_TIMEOUT = timedelta(seconds=2)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: every worker's counters, and gauges read from the database.
    Only for the scraper that holds AUTHSVC_METRICS_TOKEN: per-outcome counters read before and
    after one request would tell whether an email is registered."""
    state = current_app.extensions["authsvc"]
    expected = state.deps.settings.metrics_token
    if expected is None:
        raise NotFound("Metrics are off; set AUTHSVC_METRICS_TOKEN and scrape with it")
    given = bearer_token() or ""
    if not hmac.compare_digest(_digest(given), _digest(expected)):
        raise Unauthenticated("Send AUTHSVC_METRICS_TOKEN as the bearer token")
    samples = []
    try:
        session = db()
        with session.begin():
            reading_only(session)
            limit_statements(session, GAUGES_TIMEOUT)
            samples = detection.gauges(session, now=utcnow())
    except SQLAlchemyError as exc:
        # The counters are still worth a scrape; the gauges' absence is what an alert sees.
        cause = getattr(exc, "orig", None) or exc
        current_app.logger.warning(
            "metrics: database gauges unavailable (%s)", type(cause).__name__
        )
    return Response(state.metrics.render(samples), content_type=METRICS_CONTENT_TYPE)


@bp.get("/openapi.yaml")
def openapi() -> Response:
    spec = resources.files("authsvc").joinpath("openapi.yaml").read_bytes()
    return Response(spec, mimetype="application/yaml")


# The two files /docs loads: the package also holds Swagger UI's demo page, which would
# render, on this origin, a spec fetched from another.
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
# Swagger UI sets style attributes and shows data: images; nothing else from anywhere.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def _docs_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("/docs")
def docs() -> Response:
    return _docs_headers(Response(DOCS_HTML, mimetype="text/html"))


@bp.get("/docs/init.js")
def docs_init() -> Response:
    return _docs_headers(Response(DOCS_INIT, mimetype="text/javascript"))


@bp.get("/docs/static/<path:filename>")
def docs_static(filename: str) -> Response:
    mimetype = DOCS_ASSETS.get(filename)
    if mimetype is None:
        raise NotFound("No such file")
    response = send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, mimetype=mimetype)
    return _docs_headers(response)


@bp.get("/.well-known/jwks.json")
@transactional
def jwks() -> Response:
    token_ttl = deps().settings.access_token_ttl
    jwks = signing.public_jwks(db(), now=utcnow(), token_ttl=token_ttl)
    response = respond({"keys": list(jwks.keys.values())})
    # Whole seconds, rounded down: a copy never outlives the trust of a key in it.
    response.headers["Cache-Control"] = f"public, max-age={int(jwks.max_age.total_seconds())}"
    return response


def _digest(token: str) -> bytes:
    """Fixed-length values for a constant-time comparison whatever the lengths given."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
