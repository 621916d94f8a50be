"""Declarative base, UTC datetime type, engine and session factory."""

from __future__ import annotations

import os
import secrets
import select
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    Result,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def new_id() -> str:
    """An opaque, unguessable identifier (128 bits, base64url), never starting with "-": a
    command line would read such an id as an option (`authsvc breach-response report -x...`)."""
    while True:
        value = secrets.token_urlsafe(16)
        if not value.startswith("-"):
            return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE/DELETE (``Session.execute`` is typed as returning a Result)."""
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """hide_parameters: a statement's bound values (password hashes, token hashes, emails,
    ciphertexts) never appear in its exception's message, and so never in a log."""
    if url.startswith("sqlite"):
        _create_private(url)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy own transactions (BEGIN is emitted below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # pool_size covers a worker's request threads (8 by default) and its outbox thread: with
    # fewer, steady load keeps opening and closing overflow connections, and every new
    # PostgreSQL backend costs tens of milliseconds before its first answer.
    engine = create_engine(url, pool_size=10, max_overflow=10, hide_parameters=True, **kwargs)
    event.listen(engine, "checkout", replace_if_dropped)
    return engine


def replace_if_dropped(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection that the server dropped (restart, failover, terminated backend) is
    replaced before use, not discovered by the request that then fails. The server says
    goodbye on the socket (an error message, then end of file), and an idle connection has
    nothing else to read, so a readable socket means the connection is gone: one poll() instead
    of pool_pre_ping's round trip to the server on every checkout."""
    if dbapi_connection.closed:
        raise DisconnectionError("connection closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed the connection")


def _create_private(url: str) -> None:
    """Create a new SQLite file readable by its owner only (it holds password hashes and the
    audit trail); SQLite gives its -wal and -shm files the same mode."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir():
        with suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def autocommit_connection(session: Session) -> AbstractContextManager[Connection] | None:
    """On a PostgreSQL engine, a pooled connection of its own in autocommit mode, for work
    that is a single statement (atomic by itself): no BEGIN, no COMMIT and no Session
    transaction around it. None elsewhere: SQLite, or a session joined to an outer
    transaction (the tests)."""
    bind = session.get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql":
        return _autocommit(bind)
    return None


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def read_connection(session: Session) -> Iterator[Connection]:
    """A connection for a request that reads with one statement: ``autocommit_connection``
    where there is one, else the session's own connection."""
    own = autocommit_connection(session)
    if own is None:
        yield session.connection()
    else:
        with own as conn:
            yield conn


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
