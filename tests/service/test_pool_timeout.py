"""A request that finds every pooled database connection in use (slow requests holding them
all) waits REQUEST_POOL_TIMEOUT for one, not SQLAlchemy's 30 s, and then answers 503
`unavailable` with Retry-After like any other database outage; the commands keep the default.
On an app with its own engine, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from flask import Flask
from sqlalchemy import Engine

from authsvc.app import build_runtime, create_app
from authsvc.db import REQUEST_POOL_TIMEOUT
from authsvc.schema import upgrade
from tests.conftest import ContractClient, answered_within

WAIT = REQUEST_POOL_TIMEOUT.total_seconds()


@pytest.fixture
def app(settings, scratch_database_url) -> Iterator[Flask]:
    upgrade(scratch_database_url)
    app = create_app(dataclasses.replace(settings, database_url=scratch_database_url))
    app.test_client_class = ContractClient
    runtime = app.extensions["authsvc"]
    runtime.deps.limiter.reset()
    yield app
    runtime.deps.limiter.reset()
    runtime.dispose()


def _hold_every_connection(engine: Engine, stack: ExitStack) -> None:
    """Check out as many connections as the pool gives (its size and its overflow), as slow
    requests would, until ``stack`` closes."""
    pool = engine.pool
    for _ in range(pool.size() + pool._max_overflow):  # type: ignore[attr-defined]
        stack.enter_context(engine.connect())


def test_a_request_that_finds_the_pool_exhausted_is_503_after_a_short_wait(app, caplog):
    client = app.test_client()
    body = {"email": "ada@example.com", "password": "correct horse 42"}
    with ExitStack() as held, caplog.at_level(logging.ERROR, logger="authsvc"):
        _hold_every_connection(app.extensions["authsvc"].engine, held)
        started = time.monotonic()
        response = answered_within(WAIT + 5, lambda: client.post("/v1/login", json=body))
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["code"] == "unavailable"
    assert elapsed >= WAIT - 0.5  # it waited for a connection to come back, then gave up
    assert "backing service unavailable (TimeoutError)" in caplog.text
    # The connections are back: the same request goes through, on the same pool.
    assert client.post("/v1/login", json=body).status_code == 401  # no such account


def test_the_short_wait_is_the_web_apps_not_the_commands(app, settings, scratch_database_url):
    command = build_runtime(dataclasses.replace(settings, database_url=scratch_database_url))
    try:
        assert app.extensions["authsvc"].engine.pool.timeout() == WAIT
        assert command.engine.pool.timeout() == 30  # SQLAlchemy's: a batch may wait its turn
    finally:
        command.dispose()
