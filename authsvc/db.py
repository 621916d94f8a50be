"""Declarative base, UTC datetime type, engine and session factory."""

from __future__ import annotations

import os
import secrets
import select
from collections import namedtuple
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    Result,
    Select,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import QueuePool
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
        return as_utc(value)


def as_utc(value: Any) -> Any:
    """A value read from the database, with datetimes made aware UTC (SQLite drops the zone,
    so a zone-less time is UTC); anything else as it is."""
    if not isinstance(value, datetime):
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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


# How long opening a PostgreSQL connection may take (libpq's connect_timeout, unless the URL
# gives one). psycopg's own default is 130 s: a server that accepts connections but does not
# answer (overloaded, stalled, behind a partition) held `authsvc serve` at start-up, and each
# request that needed a new connection, that long before the 503.
CONNECT_TIMEOUT_SECONDS = 5
# How long a request waits for a pooled connection when every one is in use (slow requests
# hold them all), before it answers 503 `unavailable` (sqlalchemy.exc.TimeoutError).
# SQLAlchemy's default is 30 s: a request queued that long, holding its thread, and the
# requests behind it queued too, where a quick refusal with Retry-After sheds the load.
REQUEST_POOL_TIMEOUT = timedelta(seconds=3)
# An execution option for a session's connection (``reading_only``): on SQLite its transaction
# begins as a reader's (deferred), not by taking the write lock.
READS_ONLY = "authsvc_reads_only"


def make_engine(
    url: str,
    *,
    lock_timeout: timedelta | None = None,
    statement_timeout: timedelta | None = None,
    pool_timeout: timedelta | None = None,
    **kwargs: Any,
) -> Engine:
    """hide_parameters: a statement's bound values (password hashes, token hashes, emails,
    ciphertexts) never appear in its exception's message, and so never in a log.

    ``lock_timeout`` and ``statement_timeout`` (PostgreSQL; zero or None is no limit) are set
    on each connection: the server cancels a statement that waits for a lock, or runs, longer
    (LockNotAvailable, QueryCanceled: operational errors). SQLite has its own bound, the
    30 s busy timeout below, and ignores them. ``pool_timeout`` bounds the wait for a
    connection from a pool that has none free (None: SQLAlchemy's 30 s); an in-memory SQLite
    database has no such pool (one connection per thread)."""
    if pool_timeout is not None and _has_queue(url):
        kwargs["pool_timeout"] = pool_timeout.total_seconds()
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
            if conn.get_execution_options().get(READS_ONLY):
                conn.exec_driver_sql("BEGIN")  # in WAL mode a reader waits for no writer
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if "connect_timeout" not in make_url(url).query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    # pool_size covers a worker's request threads (8 by default) and its outbox thread: with
    # fewer, steady load keeps opening and closing overflow connections, and every new
    # PostgreSQL backend costs tens of milliseconds before its first answer.
    kwargs = {"pool_size": 10, "max_overflow": 10, **kwargs}
    engine = create_engine(url, hide_parameters=True, **kwargs)
    event.listen(engine, "checkout", replace_if_dropped)
    limits = {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout}
    if any(limits.values()):
        event.listen(engine, "connect", _session_limits(limits))
    return engine


def _has_queue(url: str) -> bool:
    """Whether SQLAlchemy pools the URL's connections in a queue with a checkout timeout:
    PostgreSQL and SQLite files, not an in-memory SQLite database."""
    parsed = make_url(url)
    dialect = cast("type[DefaultDialect]", parsed.get_dialect())
    return issubclass(dialect.get_pool_class(parsed), QueuePool)


def _session_limits(limits: dict[str, timedelta | None]) -> Callable[[Any, Any], None]:
    """A connect hook that sets the given timeouts for the connection's whole life, once, when
    it is opened (pooled connections keep them): no round trip per request."""
    sql = "; ".join(
        f"SET {name} = {int(limit.total_seconds() * 1000)}"  # milliseconds, from the settings
        for name, limit in limits.items()
        if limit
    )

    def set_limits(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(sql)
        dbapi_connection.commit()  # outside autocommit, SET would end with the transaction

    return set_limits


def reading_only(session: Session) -> None:
    """Call first in a transaction that only reads. SQLite: it begins as a reader's, which in
    WAL mode sees the last commit and waits for no writer, where every other transaction
    begins by taking the write lock (one writer at a time) and so waits for the writer of the
    moment. Elsewhere nothing changes."""
    session.connection(execution_options={READS_ONLY: True})


def limit_statements(session: Session, limit: timedelta) -> None:
    """PostgreSQL: cancel any further statement of the session's transaction that waits for a
    lock, or runs, longer than ``limit`` (QueryCanceled), whatever the connection's own limit;
    the transaction's end restores it. Nothing elsewhere: SQLite has no such limit."""
    if session.get_bind().dialect.name == "postgresql":
        milliseconds = int(limit.total_seconds() * 1000)
        session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))


def make_autocommit_engine(url: str, **limits: timedelta | None) -> Engine | None:
    """PostgreSQL: a pool of its own whose connections stay in autocommit mode, for requests
    that are one statement (atomic by itself). Switching a pooled connection to autocommit and
    back, and the rollback on its return, cost more CPU than the statement's round trip.
    None elsewhere (SQLite runs everything in the session's transaction). ``limits``: the
    timeouts of ``make_engine``."""
    if not url.startswith("postgresql"):
        return None
    # One connection per request thread (8 by default); more only while threads exceed that.
    return make_engine(
        url,
        pool_size=8,
        max_overflow=8,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        **limits,
    )


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


class OneStatement:
    """A Core statement compiled once and run on the driver's own connection from an
    autocommit pool (``make_autocommit_engine``), for the few requests that are one statement
    and are asked for most (GET /v1/me, refresh): SQLAlchemy's execution layer costs several
    times the driver's own work there. Where there is no such pool (SQLite, a session joined to
    a test's outer transaction), the same statement runs through the session as usual.

    Parameters go to the driver as they are (datetimes aware, as UTCDateTime requires); rows
    come back as named tuples, timestamps aware UTC as UTCDateTime gives them."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        keys = [str(c.key) for c in statement.selected_columns]
        self._row = namedtuple("Row", keys, rename=True)  # type: ignore[misc]
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def first(self, db: Engine | Session | Connection, params: dict[str, Any]) -> Any | None:
        """The first row of the result, or None. ``db`` is an autocommit engine, or a session
        or connection to run the statement on as usual."""
        if not isinstance(db, Engine):
            return db.execute(self.statement, params).first()
        engine = db
        compiled = self._compiled.get(engine.dialect.name)
        if compiled is None:
            done = self.statement.compile(dialect=engine.dialect)
            # Values written into the statement (literals) go along with the caller's.
            literals = {k: v for k, v in done.params.items() if v is not None}
            compiled = self._compiled[engine.dialect.name] = (done.string, literals)
        sql, literals = compiled
        params = {**literals, **params}
        fairy = engine.raw_connection()
        driver: Any = fairy.driver_connection  # a psycopg Connection
        try:
            row = driver.execute(sql, params, prepare=True).fetchone()
        except engine.dialect.loaded_dbapi.Error as exc:
            if driver.closed or driver.broken:
                fairy.invalidate()
            raise DBAPIError.instance(
                sql,
                params,
                exc,
                engine.dialect.loaded_dbapi.Error,
                hide_parameters=True,
                dialect=engine.dialect,
            ) from None
        finally:
            fairy.close()
        if row is None:
            return None
        return self._row(*(as_utc(value) for value in row))  # as UTCDateTime gives them


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
