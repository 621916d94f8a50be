"""The PostgreSQL connection pool fits the server's threads and checks connections first."""

from __future__ import annotations

from authsvc.db import make_engine
from authsvc.gunicorn_app import DEFAULT_THREADS


def test_the_pool_keeps_a_connection_for_every_request_thread_and_the_outbox():
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")  # connects lazily: never here

    # Fewer would make steady load open and close overflow connections all the time.
    assert engine.pool.size() >= DEFAULT_THREADS + 1  # type: ignore[attr-defined]
    # A connection the server dropped is replaced before a request uses it.
    assert engine.pool._pre_ping is True
