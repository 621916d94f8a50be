"""Engines and ids: the PostgreSQL pool fits the server's threads and replaces dropped connections
without a round trip; no engine puts a statement's bound values into its errors."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError, OperationalError

from authsvc.db import CONNECT_TIMEOUT_SECONDS, make_engine, new_id, replace_if_dropped
from authsvc.gunicorn_app import DEFAULT_THREADS


def test_the_pool_keeps_a_connection_for_every_request_thread_and_the_outbox():
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")  # connects lazily: never here

    # Fewer would make steady load open and close overflow connections all the time.
    assert engine.pool.size() >= DEFAULT_THREADS + 1  # type: ignore[attr-defined]
    # A connection the server dropped is replaced before a request uses it, found out from
    # its socket rather than by a ping on every checkout.
    assert engine.pool._pre_ping is False
    assert event.contains(engine, "checkout", replace_if_dropped)


@pytest.mark.parametrize(
    ("query", "timeout"), [("", CONNECT_TIMEOUT_SECONDS), ("?connect_timeout=1", 1)]
)
def test_a_server_that_accepts_but_never_answers_fails_the_connection_in_time(query, timeout):
    # A listener that never accepts: the kernel completes each connection, nothing answers
    # (a stalled or overloaded server, or one behind a partition). A timeout in the URL wins.
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        port = listener.getsockname()[1]
        engine = make_engine(f"postgresql://nobody@127.0.0.1:{port}/none{query}")
        outcome: list[BaseException | None] = []

        def connect() -> None:
            try:
                engine.connect().close()
                outcome.append(None)
            except BaseException as exc:  # reported to the test's thread
                outcome.append(exc)

        started = time.monotonic()
        waiter = threading.Thread(target=connect, daemon=True)
        waiter.start()
        waiter.join(timeout + 5)
        took = time.monotonic() - started
        assert not waiter.is_alive(), "the connection attempt still waits"
    assert isinstance(outcome[0], OperationalError)  # answered 503 `unavailable`
    assert timeout - 0.5 <= took <= timeout + 2
    engine.dispose()


class _Connection:
    """The two things the check reads of a DBAPI connection."""

    def __init__(self, sock: socket.socket, *, closed: bool = False) -> None:
        self._sock, self.closed = sock, closed

    def fileno(self) -> int:
        return self._sock.fileno()


def test_a_connection_is_replaced_when_its_socket_has_something_to_read_or_it_is_closed():
    ours, server = socket.socketpair()
    with ours, server:
        replace_if_dropped(_Connection(ours), None, None)  # idle: nothing to read, kept

        with pytest.raises(DisconnectionError):
            replace_if_dropped(_Connection(ours, closed=True), None, None)

        server.sendall(b"E")  # the server's goodbye (an error message, then end of file)
        with pytest.raises(DisconnectionError):
            replace_if_dropped(_Connection(ours), None, None)
        server.close()
        ours.recv(1)
        with pytest.raises(DisconnectionError):  # end of file alone is readable too
            replace_if_dropped(_Connection(ours), None, None)


def test_errors_do_not_carry_the_statement_parameters(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OperationalError) as raised, engine.connect() as conn:
        conn.execute(text("SELECT :secret FROM no_such_table"), {"secret": "hunter2-hash"})
    engine.dispose()

    assert "no_such_table" in str(raised.value)
    assert "hunter2-hash" not in str(raised.value)
    assert "hidden due to hide_parameters" in str(raised.value)


def test_ids_never_start_with_a_dash():
    # One in 64 base64url strings does; the CLI takes ids as arguments.
    ids = [new_id() for _ in range(5000)]

    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 22 for i in ids)


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path):
    # It holds password hashes and the audit trail; SQLite gives -wal and -shm the same mode.
    engine = make_engine(f"sqlite:///{tmp_path / 'authsvc.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    engine.dispose()

    assert modes["authsvc.db"] == 0o600
    assert set(modes.values()) == {0o600}
