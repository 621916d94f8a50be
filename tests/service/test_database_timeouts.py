"""Requests do not wait without end on PostgreSQL: a statement that waits for a lock held by a
stalled transaction, or runs too long, is cancelled by the server after AUTHSVC_DB_LOCK_TIMEOUT
or AUTHSVC_DB_STATEMENT_TIMEOUT, and the request answers 503 `unavailable` with Retry-After.
The limits are the web app's: the outbox worker and the commands (migrations, campaigns, key
rotation) run without them. On an app with its own engine and real commits."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url

from authsvc.app import build_runtime, create_app
from authsvc.schema import upgrade
from tests.conftest import ContractClient, answered_within
from tests.service.conftest import PASSWORD, app_with_ada

ONE_SECOND = timedelta(seconds=1)
CREDENTIALS = {"email": "ada@example.com", "password": PASSWORD}


@pytest.fixture
def postgres_url(scratch_database_url: str) -> str:
    if not scratch_database_url.startswith("postgresql"):
        pytest.skip("lock_timeout and statement_timeout are PostgreSQL's")
    upgrade(scratch_database_url)
    return scratch_database_url


def _app(settings, url: str, **limits: timedelta) -> Iterator[Flask]:
    for app in app_with_ada(settings, url, **limits):
        app.test_client_class = ContractClient
        yield app


@pytest.fixture
def lock_limited(settings, postgres_url) -> Iterator[Flask]:
    """Lock waits cut off after 1 s; statements otherwise unlimited."""
    yield from _app(
        settings, postgres_url, db_lock_timeout=ONE_SECOND, db_statement_timeout=timedelta(0)
    )


@pytest.fixture
def statement_limited(settings, postgres_url) -> Iterator[Flask]:
    """Statements cut off after 1 s, lock waits included; no lock timeout of its own."""
    yield from _app(
        settings, postgres_url, db_lock_timeout=timedelta(0), db_statement_timeout=ONE_SECOND
    )


def _driver_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class AccountLocked:
    """Another client's transaction that locked ada's row and then stalled (it neither commits
    nor rolls back until the test lets it go)."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(_driver_url(url))

    def __enter__(self) -> AccountLocked:
        self._conn.execute("SELECT id FROM users WHERE email = 'ada@example.com' FOR UPDATE")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._conn.rollback()
        self._conn.close()


@pytest.mark.parametrize(
    ("app_fixture", "cause"),
    [("lock_limited", "LockNotAvailable"), ("statement_limited", "QueryCanceled")],
)
def test_a_request_behind_a_stalled_lock_holder_is_503_within_the_limit(
    request, postgres_url, caplog, app_fixture, cause
):
    app: Flask = request.getfixturevalue(app_fixture)
    client = app.test_client()
    with AccountLocked(postgres_url), caplog.at_level(logging.ERROR, logger="authsvc"):
        started = time.monotonic()
        response = answered_within(10, lambda: client.post("/v1/login", json=CREDENTIALS))
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["code"] == "unavailable"
    assert elapsed < 5
    assert f"backing service unavailable ({cause})" in caplog.text
    # The lock is gone: the same request goes through, on the same pool.
    assert client.post("/v1/login", json=CREDENTIALS).status_code == 200


def _limits(connection: Any) -> tuple[str, str]:
    return (
        connection.execute(text("SHOW lock_timeout")).scalar_one(),
        connection.execute(text("SHOW statement_timeout")).scalar_one(),
    )


def test_the_limits_are_the_web_apps_not_the_workers_or_the_commands(settings, postgres_url):
    limited = dataclasses.replace(
        settings,
        database_url=postgres_url,
        db_lock_timeout=timedelta(seconds=2),
        db_statement_timeout=timedelta(seconds=20),
    )
    app = create_app(limited)
    runtime = app.extensions["authsvc"]
    command = build_runtime(limited)  # what `authsvc worker`, `keys rotate`, ... build
    try:
        with runtime.sessionmaker() as session:
            assert _limits(session) == ("2s", "20s")
        assert runtime.autocommit_engine is not None
        with runtime.autocommit_engine.connect() as conn:
            assert _limits(conn) == ("2s", "20s")
        # The outbox thread of `authsvc serve` runs a campaign's batches: no request limits.
        with runtime.worker._sessionmaker() as session:
            assert _limits(session) == ("0", "0")
        with command.sessionmaker() as session:
            assert _limits(session) == ("0", "0")
    finally:
        runtime.dispose()
        command.dispose()


def test_scrapes_and_probes_read_beside_a_writer_on_sqlite(settings, scratch_database_url):
    """SQLite takes one writer at a time, and a transaction that may write begins by waiting
    for the write lock (up to its 30 s busy timeout). The gauges of /metrics and the readiness
    check only read: they begin a reader's transaction, which in WAL mode waits for no writer
    (a campaign's batch, a migration), and both answer at once; /readyz said not ready while
    a writer held the database. (PostgreSQL bounds the gauges' statements instead:
    tests/http/test_metrics.py.)"""
    if not scratch_database_url.startswith("sqlite"):
        pytest.skip("SQLite's single writer; PostgreSQL's bound is tested with /metrics")
    upgrade(scratch_database_url)
    token = "prometheus-scrape-token-0123456789abcdef"
    for app in app_with_ada(settings, scratch_database_url, metrics_token=token):
        client = ContractClient(app)
        holder = sqlite3.connect(make_url(scratch_database_url).database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a writer that takes its time
        try:
            response = answered_within(
                5,
                functools.partial(
                    client.get, "/metrics", headers={"Authorization": f"Bearer {token}"}
                ),
            )
            ready = answered_within(5, functools.partial(client.get, "/readyz"))
        finally:
            holder.rollback()
            holder.close()
        assert response.status_code == 200
        assert "authsvc_outbox_pending 0.0" in response.get_data(as_text=True)
        assert ready.status_code == 200, ready.get_json()
        # A request that writes still waits for the writer, and goes on once it is done.
        assert client.post("/v1/login", json=CREDENTIALS).status_code == 200
