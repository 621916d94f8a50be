"""Service-level fixtures: services run on a real Session joined to the per-test transaction.

``db_session`` is the session a service gets; ``deps`` its collaborators (built by the same
``build_runtime`` that ``create_app`` uses); ``worker`` drains the outbox on the same connection;
``make_user`` creates accounts directly; ``scratch_database_url`` is an empty database of the
configured backend, dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from authsvc.app import Runtime, build_runtime, create_app
from authsvc.db import make_engine, make_sessionmaker, utcnow
from authsvc.mail.worker import OutboxWorker
from authsvc.models import User
from authsvc.schema import upgrade
from authsvc.services import user_tokens
from authsvc.services.context import Client, Deps
from authsvc.settings import Settings

CLIENT = Client(ip="192.0.2.10", user_agent="pytest")
PASSWORD = "correct horse 42"


@pytest.fixture
def runtime(settings: Settings, connection: Connection) -> Iterator[Runtime]:
    runtime = build_runtime(settings, bind=connection)
    runtime.sign_audit_head()  # as every start does
    runtime.deps.limiter.reset()
    yield runtime
    runtime.deps.limiter.reset()
    runtime.dispose()


@pytest.fixture
def deps(runtime: Runtime) -> Deps:
    return runtime.deps


@pytest.fixture
def db_session(connection: Connection) -> Iterator[Session]:
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def worker(runtime: Runtime) -> OutboxWorker:
    return runtime.worker


@pytest.fixture
def now() -> datetime:
    return utcnow()


@pytest.fixture
def caller() -> Client:
    """Who calls the services (``Client``; not the Flask test client)."""
    return CLIENT


MakeUser = Callable[..., User]


@pytest.fixture
def make_user(db_session: Session, deps: Deps) -> MakeUser:
    """Create a user directly: ``make_user(email=..., password=..., verified=True)``."""

    def make(
        *,
        email: str = "ada@example.com",
        password: str | None = PASSWORD,
        verified: bool = True,
        disabled: bool = False,
        **columns: Any,
    ) -> User:
        at = utcnow()
        user = User(
            email=email,
            password_hash=deps.hasher.hash(password) if password is not None else None,
            password_set_at=at if password is not None else None,
            email_verified_at=at if verified else None,
            disabled_at=at if disabled else None,
            created_at=at,
            updated_at=at,
            **columns,
        )
        db_session.add(user)
        db_session.flush()
        return user

    return make


@pytest.fixture
def scratch_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database on the configured backend: a new SQLite file, or a PostgreSQL
    database created for the test and dropped after it."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    name = f"scratch_{secrets.token_hex(6)}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def committed(scratch_database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an empty migrated database whose commits are real (for races between
    transactions)."""
    upgrade(scratch_database_url)
    engine = make_engine(scratch_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def issue_mfa_token(
    session: Session, *, user_id: str, now: datetime, purpose: str = "mfa", **kwargs: Any
) -> str:
    """An mfa_token as the password step issues it (5 minutes, amr pwd); with ``purpose``
    ``mfa_enrollment``, the enrollment token it issues instead under AUTHSVC_REQUIRE_MFA."""
    return user_tokens.issue(
        session,
        user_id=user_id,
        purpose=purpose,
        ttl=timedelta(minutes=5),
        now=now,
        context={"amr": ["pwd"]},
        **kwargs,
    )


def app_with_ada(settings: Settings, url: str, **changes: Any) -> Iterator[Flask]:
    """An app on its own engine for ``url`` (real commits, no outer test transaction), with
    ada@example.com signed up and verified (password PASSWORD); disposed afterwards."""
    app = create_app(dataclasses.replace(settings, database_url=url, **changes))
    runtime = app.extensions["authsvc"]
    runtime.deps.limiter.reset()
    with runtime.sessionmaker.begin() as session:
        at = utcnow()
        session.add(
            User(
                email="ada@example.com",
                password_hash=runtime.deps.hasher.hash(PASSWORD),
                password_set_at=at,
                email_verified_at=at,
                created_at=at,
                updated_at=at,
            )
        )
    yield app
    runtime.deps.limiter.reset()
    runtime.dispose()
