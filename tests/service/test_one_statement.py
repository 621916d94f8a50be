"""db.OneStatement: a Core statement run on the driver's own connection from the autocommit
pool, behaving as SQLAlchemy would (errors, parameters kept out of messages, UTC times)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, Integer, bindparam, event, literal_column, select
from sqlalchemy import exc as sa_exc

from authsvc.db import OneStatement, UTCDateTime, make_autocommit_engine, make_engine


@pytest.fixture
def autocommit(scratch_database_url) -> Iterator[Engine]:
    engine = make_autocommit_engine(scratch_database_url)
    if engine is None:
        pytest.skip("the autocommit pool is PostgreSQL's")
    yield engine
    engine.dispose()


def test_rows_come_back_by_column_name(autocommit):
    statement = OneStatement(
        select(bindparam("n", type_=Integer).label("n"), literal_column("'x'").label("word"))
    )

    row = statement.first(autocommit, {"n": 7})

    assert (row.n, row.word) == (7, "x")


def test_no_row_is_none(autocommit):
    statement = OneStatement(
        select(literal_column("1").label("one")).where(literal_column("false"))
    )

    assert statement.first(autocommit, {}) is None


def test_a_driver_error_is_sqlalchemys_without_the_parameters_and_the_pool_goes_on(autocommit):
    failing = OneStatement(select((bindparam("n", type_=Integer) / 0).label("x")))  # a literal

    with pytest.raises(sa_exc.DataError) as raised:
        failing.first(autocommit, {"n": 918273645})

    assert "918273645" not in str(raised.value)
    ok = OneStatement(select(bindparam("n", type_=Integer).label("n")))
    assert ok.first(autocommit, {"n": 3}).n == 3
    assert autocommit.pool.checkedout() == 0


def test_times_are_aware_utc_whatever_the_server_zone(scratch_database_url):
    if not scratch_database_url.startswith("postgresql"):
        pytest.skip("the autocommit pool is PostgreSQL's")
    engine = make_engine(
        scratch_database_url,
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c TimeZone=Asia/Tokyo"},
    )
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    statement = OneStatement(select(bindparam("at", type_=UTCDateTime()).label("at")))
    try:
        row = statement.first(engine, {"at": at})
    finally:
        engine.dispose()

    assert row.at == at
    assert row.at.utcoffset() == timedelta(0)
    assert row.at.tzinfo is UTC


def test_a_session_or_connection_runs_the_statement_as_usual(db_session):
    statement = OneStatement(select(bindparam("n", type_=Integer).label("n")))

    assert statement.first(db_session, {"n": 5}).n == 5


@pytest.fixture
def local_time_in_tokyo(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_time_without_zone_is_taken_as_utc_like_utcdatetime_does(autocommit, local_time_in_tokyo):
    statement = OneStatement(select(literal_column("TIMESTAMP '2026-01-02 03:04:05'").label("at")))

    row = statement.first(autocommit, {})

    assert row.at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_connection_lost_mid_statement_is_an_operational_error_and_leaves_the_pool(autocommit):
    # The server ends this very connection while it runs the statement.
    suicide = OneStatement(
        select(literal_column("pg_terminate_backend(pg_backend_pid())").label("ended"))
    )

    invalidated: list[object] = []
    event.listen(autocommit, "invalidate", lambda *args: invalidated.append(args))

    with pytest.raises(sa_exc.OperationalError):  # answered 503 `unavailable`
        suicide.first(autocommit, {})

    assert len(invalidated) == 1  # the dead connection is not handed out again
    ok = OneStatement(select(bindparam("n", type_=Integer).label("n")))
    assert ok.first(autocommit, {"n": 4}).n == 4
