"""The composition root: ``create_app`` assembles everything; nothing else does."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from flask_cors import CORS
from limits.errors import ConfigurationError as LimitsConfigurationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker
from werkzeug.exceptions import NotFound
from werkzeug.middleware.proxy_fix import ProxyFix

from authsvc.crypto.blocklist import (
    Blocklist,
    BreachedPasswordStore,
    CommonPasswords,
    InvalidBreachedStore,
)
from authsvc.crypto.keyring import Keyring, generate_key_spec
from authsvc.crypto.passwords import Argon2Params
from authsvc.db import (
    REQUEST_POOL_TIMEOUT,
    make_autocommit_engine,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from authsvc.http import admin, audit, breach, me, mfa, ops, problems, public, ui, webauthn
from authsvc.http.io import only_declared_query
from authsvc.logging_setup import bind_request_id, unbind_request_id
from authsvc.mail.backends import make_backend
from authsvc.mail.worker import OutboxWorker, default_handlers
from authsvc.metrics import Metrics, TimedPasswordHasher
from authsvc.ratelimit import RateLimiter, client_address
from authsvc.services import audit as audit_service
from authsvc.services import password_costs, signing
from authsvc.services.context import Deps
from authsvc.services.detection import Detector
from authsvc.settings import ConfigError, Settings, origin_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("authsvc")
access_log = logging.getLogger("authsvc.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass
class Runtime:
    """App-wide objects, built once: ``app.extensions["authsvc"]``."""

    settings: Settings
    engine: Engine
    # PostgreSQL, and no outer transaction to join (tests): one-statement requests run here.
    autocommit_engine: Engine | None
    sessionmaker: sessionmaker[DbSession]
    deps: Deps
    worker: OutboxWorker
    metrics: Metrics
    detector: Detector
    # The outbox's own pool where the web app's has request timeouts (PostgreSQL).
    worker_engine: Engine | None = None
    worker_stop: threading.Event | None = None
    worker_thread: threading.Thread | None = None

    def stop_worker(self, timeout: float) -> None:
        """Stop the outbox thread between deliveries (the rest of its batch is handed back)
        and wait for it up to ``timeout`` seconds."""
        if self.worker_stop is not None:
            self.worker_stop.set()
        if self.worker_thread is not None:
            self.worker_thread.join(timeout)

    def sign_audit_head(self) -> None:
        """What every start does before it writes an event: sign the audit trail's head if no
        start has yet (``audit.sign_head_at_start``); after that, an unsigned head is a reset."""
        audit_service.sign_head_at_start(self.sessionmaker, now=utcnow())

    def dispose(self) -> None:
        """Close every pooled database connection (commands and tests, when done)."""
        for engine in (self.engine, self.autocommit_engine, self.worker_engine):
            if engine is not None:
                engine.dispose()


def dev_keyring(var_dir: Path) -> Keyring:
    """Development keys kept in var/dev-keys.txt, created on first use."""
    path = var_dir / "dev-keys.txt"
    if not path.exists():
        var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_key_spec("dev1") + "\n")
    try:
        keyring = Keyring.from_specs(path.read_text().split())
    except ValueError as exc:  # emptied, cut short or overwritten (UnicodeDecodeError too)
        raise ConfigError(
            [
                f"{path} holds no development key list ({exc}): restore it, or remove it for new "
                "keys (what the old ones encrypted is then lost)"
            ]
        ) from None
    log.warning(
        "USING DEVELOPMENT ENCRYPTION KEYS from %s: set AUTHSVC_ENCRYPTION_KEYS in production",
        path,
    )
    return keyring


RATE_LIMIT_POLICIES = (
    "ip",
    "email",
    "ip_email",
    "mailbox",
    "account_failures",
    "mfa_account",
    "mfa_failures",
)


def rate_limit_policies(settings: Settings) -> dict[str, str]:
    return {
        "ip": settings.limit_ip,
        "email": settings.limit_email,
        "ip_email": settings.limit_ip_email,
        # Mail asked for an address, per mailbox (services.throttle.MAILBOX): the email's limit.
        "mailbox": settings.limit_email,
        "account_failures": settings.limit_failures_per_account,
        "mfa_account": "10/minute",
        # Wrong TOTP codes per account: capped like wrong passwords (NIST SP 800-63B 5.2.2).
        "mfa_failures": settings.limit_failures_per_account,
        # Wrong admin API keys per client address (successful presentations count nothing).
        "admin_key_failures": "10/minute",
    }


def _request_limits(settings: Settings) -> dict[str, Any]:
    """The database timeouts of the web app's requests (``db.make_engine``)."""
    return {
        "lock_timeout": settings.db_lock_timeout,
        "statement_timeout": settings.db_statement_timeout,
        "pool_timeout": REQUEST_POOL_TIMEOUT,
    }


def build_runtime(
    settings: Settings,
    *,
    bind: Connection | None = None,
    metrics_dir: Path | None = None,
    serves_requests: bool = False,
) -> Runtime:
    """Build every app-wide object. ``bind`` joins sessions to an outer transaction (tests);
    ``metrics_dir`` is the multiprocess metrics directory under gunicorn. ``serves_requests``
    (the web app) puts the request timeouts of the settings on its database connections; the
    outbox worker then gets a pool of its own without them, as every command has: a campaign's
    batches, a key rotation or an import must not be cut off like a request."""
    metrics = Metrics(multiprocess_dir=metrics_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        settings.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keyring = (
        Keyring.from_specs(settings.encryption_keys)
        if settings.encryption_keys
        else dev_keyring(settings.var_dir)
    )
    url = settings.resolved_database_url
    limits = _request_limits(settings) if serves_requests else {}
    engine = make_engine(url, **limits)
    autocommit_engine = make_autocommit_engine(url, **limits) if bind is None else None
    factory = worker_factory = make_sessionmaker(engine)
    worker_engine = None
    if bind is not None:
        factory = worker_factory = sessionmaker(
            bind=bind, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
    elif limits and url.startswith("postgresql"):
        # One outbox thread: a connection, and a second for a delivery's short transactions.
        worker_engine = make_engine(url, pool_size=1, max_overflow=2)
        worker_factory = make_sessionmaker(worker_engine)
    hasher = TimedPasswordHasher(
        Argon2Params(
            time_cost=settings.argon2_time_cost,
            memory_cost_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        ),
        max_concurrent=settings.max_concurrent_hashes,
        acquire_timeout=settings.hash_queue_timeout,
        seconds=metrics.password_hash_seconds,
    )
    breached_path = settings.breached_passwords_path
    try:
        breached = BreachedPasswordStore(breached_path) if breached_path.exists() else None
    except (InvalidBreachedStore, OSError) as exc:  # the downloaded text, an empty file...
        raise ConfigError(
            [
                f"AUTHSVC_BREACHED_PASSWORDS_FILE: {exc} (build the store with "
                "`authsvc breached-passwords import FILE`)"
            ]
        ) from None
    if breached is None and serves_requests and settings.breached_passwords_file is not None:
        # Named, so meant to be there (a typo, a volume not mounted?): say what is checked.
        # Not "PASSWORDS_FILE=path": the log cuts the value out of "password...=value".
        log.warning(
            "AUTHSVC_BREACHED_PASSWORDS_FILE: %s does not exist: new passwords are checked "
            "against the shipped common passwords only (build it with `authsvc "
            "breached-passwords import FILE`, then restart)",
            breached_path,
        )
    blocklist = Blocklist(CommonPasswords(), breached)
    try:
        limiter = RateLimiter(settings.rate_limit_storage_url, rate_limit_policies(settings))
    except (ValueError, LimitsConfigurationError):
        # What the Redis client refuses to read; its message may quote the URL (a password).
        raise ConfigError(
            [
                "AUTHSVC_REDIS_URL: the Redis client cannot read it (a port or database that "
                "is not a number, an option value it does not know, no host)"
            ]
        ) from None
    deps = Deps(
        settings=settings, keyring=keyring, hasher=hasher, blocklist=blocklist, limiter=limiter
    )
    try:
        mail_backend = make_backend(settings.mail_url)
    except ValueError as exc:
        raise ConfigError([f"AUTHSVC_MAIL_URL: {exc}"]) from None
    detector = Detector(deps=deps, metrics=metrics)
    hooks = detector.hooks()
    audit_service.attach(factory, hooks)
    if worker_factory is not factory:
        audit_service.attach(worker_factory, hooks)
    worker = OutboxWorker(
        sessionmaker=worker_factory, deps=deps, handlers=default_handlers(mail_backend)
    )
    return Runtime(
        settings=settings,
        engine=engine,
        autocommit_engine=autocommit_engine,
        worker_engine=worker_engine,
        sessionmaker=factory,
        deps=deps,
        worker=worker,
        metrics=metrics,
        detector=detector,
    )


def _unroutable_host_as_none(wsgi_app: WSGIApplication) -> WSGIApplication:
    """A Host that IDNA cannot encode (a label over 63 characters, an empty label) is served
    as Werkzeug serves one of characters no host name has: as if none was sent. Its router
    answered it 400 instead, on every route, which openapi.yaml does not say; authsvc reads
    nothing from the Host (its links come from AUTHSVC_PUBLIC_URL)."""

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if host:
            try:
                host.lower().partition(":")[0].encode("idna")
            except UnicodeError:
                environ["HTTP_HOST"] = ""
        return wsgi_app(environ, start_response)

    return serve


def create_app(
    settings: Settings | None = None,
    *,
    start_worker: bool = False,
    bind: Connection | None = None,
    metrics_dir: Path | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    runtime = build_runtime(settings, bind=bind, metrics_dir=metrics_dir, serves_requests=True)
    public_origin = origin_of(settings.public_url)
    if public_origin not in settings.webauthn_origins:
        # Not refused: a deployment may run every ceremony in its own app. But the pages
        # served here ask for a key too (a reset of an account that has one), and fail.
        log.warning(
            "AUTHSVC_PUBLIC_URL: its origin %s is not one of AUTHSVC_WEBAUTHN_ORIGINS, so the "
            "pages served there (the mailed /reset-password link, /ui/) cannot use a security "
            "key or passkey",
            public_origin,
        )
    # No static folder: Flask would add a /static/<filename> route that openapi.yaml has not.
    app = Flask("authsvc", static_folder=None)
    # Flask reads FLASK_DEBUG from the environment by itself; with it, `serve --dev` ran
    # Werkzeug's interactive debugger (a Python console in the browser). Nothing turns it on.
    app.debug = False
    # A path with an empty segment is not found: Werkzeug would answer an HTML 308 to the path
    # with its slashes merged, another resource (/admin/v1/users//disable to the user "disable").
    app.url_map.merge_slashes = False
    app.url_map.converters["factor_id"] = mfa.FactorIdConverter
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["authsvc"] = runtime
    app.wsgi_app = _unroutable_host_as_none(app.wsgi_app)  # type: ignore[method-assign,assignment]
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.trusted_proxies,
            x_proto=settings.trusted_proxies,
        )
    for blueprint in (
        public.bp,
        me.bp,
        mfa.bp,
        webauthn.bp,
        admin.bp,
        breach.bp,
        audit.bp,
        ops.bp,
        ui.bp,
        ui.links,
    ):
        app.register_blueprint(blueprint)
    problems.register(app)
    if settings.cors_origins:
        # Browsers may call /v1 directly, from the listed origins only; never the admin API.
        CORS(
            app,
            resources={r"/v1/*": {"origins": list(settings.cors_origins)}},
            allow_headers=["Authorization", "Content-Type"],
            # Readable by the calling page: when to retry a 429 or 503, and the request id.
            expose_headers=["Retry-After", "X-Request-Id"],
            max_age=600,
            # Only to a request that names its origin: flask-cors's default answers one
            # without with every listed origin (one Access-Control-Allow-Origin each).
            always_send=False,
        )
    _register_request_hooks(app, settings)
    try:
        with runtime.sessionmaker.begin() as session:
            signing.ensure_key(session, runtime.deps.keyring, now=utcnow())
            password_costs.record_own(session, runtime.deps.hasher, now=utcnow())
        runtime.sign_audit_head()
    except DBAPIError as exc:
        # Unreachable, or not migrated yet: start anyway so that /readyz can say so (503);
        # the signing key is then created, and the audit trail's head signed, on first use.
        log.warning(
            "database not ready at startup (%s): is it reachable, and migrated with "
            "`authsvc db upgrade`?",
            type(exc.orig).__name__,
        )
    if start_worker:
        runtime.worker_thread, runtime.worker_stop = runtime.worker.start_thread(
            poll_interval=settings.outbox_poll_interval
        )
    return app


def _register_request_hooks(app: Flask, settings: Settings) -> None:
    metrics: Metrics = app.extensions["authsvc"].metrics

    @app.before_request
    def _request_id() -> None:
        g.request_started = time.perf_counter()
        given = request.headers.get("X-Request-Id", "")[:64]
        g.request_id = given if _REQUEST_ID.fullmatch(given) else os.urandom(8).hex()
        g.request_log_token = bind_request_id(g.request_id)

    @app.before_request
    def _no_nul_in_the_path() -> None:
        # No identifier or file name holds a NUL, and PostgreSQL refuses one in any text value.
        if "\x00" in request.path:
            raise NotFound()

    app.before_request(only_declared_query)

    ignored_proxy_header = threading.Event()

    @app.before_request
    def _warn_of_an_ignored_proxy() -> None:
        # Behind a proxy that nobody told authsvc about, every client has the proxy's address
        # and shares its per-IP limit: say so once per process.
        if (
            not settings.trusted_proxies
            and not ignored_proxy_header.is_set()
            and "X-Forwarded-For" in request.headers
        ):
            ignored_proxy_header.set()
            log.warning(
                "X-Forwarded-For is ignored (AUTHSVC_TRUSTED_PROXIES=0): behind a proxy, every "
                "client shares the proxy's address and its per-IP rate limit; set "
                "AUTHSVC_TRUSTED_PROXIES to the number of proxies in front of authsvc"
            )

    @app.after_request
    def _headers(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            seconds = time.perf_counter() - started
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            metrics.observe_request(
                route=route, method=request.method, status=response.status_code, seconds=seconds
            )
            access_log.info(
                "%s %s %d",
                request.method,
                route,
                response.status_code,
                extra={
                    "method": request.method,
                    "route": route,
                    "path": request.path[:256],
                    "status": response.status_code,
                    "duration_ms": round(seconds * 1000, 2),
                    "ip": client_address(request.remote_addr or ""),
                },
            )
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: Any) -> None:
        token = g.pop("request_log_token", None)
        if token is not None:
            unbind_request_id(token)

    @app.teardown_appcontext
    def _close_db(_exc: Any) -> None:
        session = g.pop("db", None)
        if session is not None:
            session.close()
