"""When the database or the Redis rate-limit store cannot be reached, requests get 503
`unavailable` with Retry-After (never a 500, never let through unthrottled), and neither the
answer nor the log carries what the client sent."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from sqlalchemy import text

from authsvc.app import create_app
from authsvc.ratelimit import REDIS_TIMEOUT_SECONDS
from tests.conftest import ContractClient, answered_within
from tests.e2e.server import free_port

PASSWORD = "a passphrase nobody should see 77"
CREDENTIALS = {"email": "ada@example.com", "password": PASSWORD}
CLOSED_PORT = "127.0.0.1:1"  # nothing listens there: every connection is refused at once


def _app(settings, bind=None, **changes) -> Iterator[Flask]:
    app = create_app(dataclasses.replace(settings, **changes), bind=bind)
    app.test_client_class = ContractClient
    yield app
    app.extensions["authsvc"].dispose()


@pytest.fixture
def no_database(settings) -> Iterator[Flask]:
    unreachable = f"postgresql://nobody@{CLOSED_PORT}/none"
    yield from _app(settings, database_url=unreachable, redis_url=None)


@pytest.fixture
def no_redis(settings, connection) -> Iterator[Flask]:
    # The test database, inside the test's rolled-back transaction: nothing it writes stays.
    yield from _app(settings, bind=connection, redis_url=f"redis://{CLOSED_PORT}/0")


@pytest.fixture
def silent_redis(settings, connection) -> Iterator[Flask]:
    """A Redis that stopped answering but keeps its connections open (a stalled process, a
    network partition): a listener that never accepts, so the kernel completes each
    connection and nothing ever comes back. Closed at the end, which frees any waiter."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        port = listener.getsockname()[1]
        yield from _app(settings, bind=connection, redis_url=f"redis://127.0.0.1:{port}/0")


REFUSING_WRITES = {
    # What an instance still connected to the old master finds after a failover.
    "read_only_replica": ("--replicaof", "127.0.0.1", "1"),
    "out_of_memory": ("--maxmemory", "1", "--maxmemory-policy", "noeviction"),
}


@pytest.fixture(params=sorted(REFUSING_WRITES))
def refusing_redis(request, settings, connection, tmp_path) -> Iterator[Flask]:
    """A real Redis that answers PING but refuses every write."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    options = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path))
    process = subprocess.Popen(
        [server, "--port", str(port), *options, *REFUSING_WRITES[request.param]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, socket_timeout=1)
        for _ in range(50):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        with pytest.raises(redis.ResponseError):
            probe.incr("a write")
        yield from _app(settings, bind=connection, redis_url=f"redis://127.0.0.1:{port}/0")
    finally:
        process.terminate()
        process.wait(10)


def _assert_unavailable(response, caplog) -> None:
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    body = response.get_json()
    assert body["code"] == "unavailable"
    assert "request_id" in body
    assert PASSWORD not in response.get_data(as_text=True)
    assert PASSWORD not in caplog.text
    assert "backing service unavailable (" in caplog.text  # the operator is told


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/login", CREDENTIALS),
        ("/v1/signup", CREDENTIALS),
        ("/v1/password/forgot", {"email": "ada@example.com"}),
        ("/v1/token/refresh", {"refresh_token": "rt_" + "A" * 43}),
    ],
)
def test_an_unreachable_database_is_503(no_database, caplog, path, body):
    with caplog.at_level(logging.ERROR, logger="authsvc"):
        response = no_database.test_client().post(path, json=body)

    _assert_unavailable(response, caplog)


def test_the_jwks_is_503_without_a_database(no_database, caplog):
    with caplog.at_level(logging.ERROR, logger="authsvc"):
        response = no_database.test_client().get("/.well-known/jwks.json")

    _assert_unavailable(response, caplog)


@pytest.mark.parametrize("path", ["/v1/login", "/v1/signup"])
def test_an_unreachable_rate_limit_store_refuses_instead_of_letting_through(no_redis, caplog, path):
    with caplog.at_level(logging.ERROR, logger="authsvc"):
        response = no_redis.test_client().post(path, json=CREDENTIALS)

    _assert_unavailable(response, caplog)


def test_a_rate_limit_store_that_stops_answering_is_503_within_its_timeout(silent_redis, caplog):
    client = silent_redis.test_client()
    with caplog.at_level(logging.ERROR, logger="authsvc"):
        response = answered_within(
            3 * REDIS_TIMEOUT_SECONDS, lambda: client.post("/v1/login", json=CREDENTIALS)
        )

    _assert_unavailable(response, caplog)


def test_readiness_names_a_rate_limit_store_that_stops_answering(silent_redis):
    client = silent_redis.test_client()
    response = answered_within(3 * REDIS_TIMEOUT_SECONDS, lambda: client.get("/readyz"))

    assert response.status_code == 503
    assert response.get_json()["checks"]["rate_limit_storage"] is False


@pytest.mark.parametrize("path", ["/v1/login", "/v1/signup", "/v1/passkeys/login-options"])
def test_a_rate_limit_store_that_refuses_writes_is_503(refusing_redis, caplog, path):
    with caplog.at_level(logging.ERROR, logger="authsvc"):
        response = refusing_redis.test_client().post(path, json=CREDENTIALS)

    _assert_unavailable(response, caplog)


def test_readiness_names_a_rate_limit_store_that_refuses_writes(refusing_redis):
    response = refusing_redis.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["checks"] == {
        "database": True,
        "schema": True,
        "signing_key": True,
        "rate_limit_storage": False,
    }


@pytest.fixture
def read_only_database(app, connection) -> Flask:
    """The test's database turned read-only for the rest of its transaction, as a primary that
    a failover demoted to a standby answers the connections still pointed at it."""
    if connection.dialect.name != "postgresql":
        pytest.skip("a standby that refuses writes: PostgreSQL")
    connection.execute(text("SET TRANSACTION READ ONLY"))
    return app


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/login", CREDENTIALS),
        ("/v1/signup", CREDENTIALS),
        ("/v1/token/refresh", {"refresh_token": "rt_" + "A" * 43}),
    ],
)
def test_a_database_that_refuses_writes_is_503(read_only_database, caplog, path, body):
    with caplog.at_level(logging.ERROR, logger="authsvc"):
        response = read_only_database.test_client().post(path, json=body)

    _assert_unavailable(response, caplog)


def test_readiness_names_a_database_that_refuses_writes(read_only_database):
    response = read_only_database.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] is False
