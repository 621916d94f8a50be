"""The outbox and its worker: encrypted payloads, retries with backoff, nothing lost."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from authsvc.db import utcnow
from authsvc.mail import worker as worker_module
from authsvc.mail.worker import MAX_BACKOFF, OutboxWorker, backoff
from authsvc.models import OutboxMessage, User
from authsvc.services import outbox


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock(now):
    return Clock(now)


def make_worker(runtime, clock, handlers):
    return OutboxWorker(
        sessionmaker=runtime.sessionmaker, deps=runtime.deps, handlers=handlers, clock=clock
    )


def enqueue(db_session, deps, now, kind="job", payload=None, delay=timedelta(0)):
    message = outbox.enqueue(
        db_session, deps.keyring, kind=kind, payload=payload or {"n": 1}, now=now, delay=delay
    )
    db_session.flush()
    return message.id


def reload(db_session, message_id):
    db_session.expire_all()
    return db_session.get(OutboxMessage, message_id)


def test_payloads_are_encrypted_at_rest(db_session, deps, now):
    message_id = enqueue(
        db_session, deps, now, payload={"to": "ada@example.com", "text": "token=ve_secret"}
    )

    message = reload(db_session, message_id)

    assert b"ada@example.com" not in message.payload_ciphertext
    assert b"ve_secret" not in message.payload_ciphertext
    assert outbox.payload_of(deps.keyring, message) == {
        "to": "ada@example.com",
        "text": "token=ve_secret",
    }


def test_a_handled_message_completes(db_session, deps, runtime, clock, now):
    seen = []
    worker = make_worker(runtime, clock, {"job": lambda s, d, payload, at: seen.append(payload)})
    message_id = enqueue(db_session, deps, now, payload={"n": 7})

    assert worker.drain() == 1

    message = reload(db_session, message_id)
    assert seen == [{"n": 7}]
    assert message.completed_at == now
    assert message.attempts == 1
    assert worker.drain() == 0  # done once


def test_delayed_messages_wait(db_session, deps, runtime, clock, now):
    worker = make_worker(runtime, clock, {"job": lambda *args: None})
    message_id = enqueue(db_session, deps, now, delay=timedelta(minutes=1))

    assert worker.drain() == 0
    clock.now = now + timedelta(minutes=1)
    assert worker.drain() == 1
    assert reload(db_session, message_id).completed_at is not None


def test_a_failure_is_retried_with_growing_backoff_and_never_lost(
    db_session, deps, runtime, clock, now
):
    failures = {"left": 3}

    def flaky(session, deps_, payload, at):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionRefusedError("mail server down")

    worker = make_worker(runtime, clock, {"job": flaky})
    message_id = enqueue(db_session, deps, now)
    waits = []
    for attempt in (1, 2, 3):
        assert worker.drain() == 1
        message = reload(db_session, message_id)
        assert message.attempts == attempt
        assert message.completed_at is None and message.failed_at is None
        assert message.last_error == "ConnectionRefusedError: mail server down"
        waits.append(message.available_at - clock.now)
        assert worker.drain() == 0  # not due yet
        clock.now = message.available_at

    assert waits == [timedelta(seconds=5), timedelta(seconds=10), timedelta(seconds=20)]
    assert worker.drain() == 1
    assert reload(db_session, message_id).completed_at == clock.now


def test_a_failing_handler_leaves_no_partial_writes(db_session, deps, runtime, clock, now):
    def half_done(session, deps_, payload, at):
        session.add(User(email="half@example.com", created_at=at, updated_at=at))
        session.flush()
        raise RuntimeError("boom")

    worker = make_worker(runtime, clock, {"job": half_done})
    message_id = enqueue(db_session, deps, now)

    worker.drain()

    assert db_session.scalar(select(User).where(User.email == "half@example.com")) is None
    assert reload(db_session, message_id).attempts == 1


def test_permanent_failures_and_unknown_kinds_are_parked(db_session, deps, runtime, clock, now):
    def refuse(*args):
        raise outbox.PermanentFailure("550 no such user")

    worker = make_worker(runtime, clock, {"job": refuse})
    refused = enqueue(db_session, deps, now)
    unknown = enqueue(db_session, deps, now, kind="mystery")

    assert worker.drain() == 2

    for message_id, error in ((refused, "550 no such user"), (unknown, "no handler")):
        message = reload(db_session, message_id)
        assert message.failed_at == now
        assert error in message.last_error
    assert outbox.stats(db_session).failed == 2


def test_a_failure_that_may_pass_is_retried_however_long_it_lasts(
    db_session, deps, runtime, clock, now
):
    # 200 attempts: more than two weeks of a mail server down at the slowest backoff.
    def down(*args):
        raise OSError("still down")

    worker = make_worker(runtime, clock, {"job": down})
    message_id = enqueue(db_session, deps, now)
    message = reload(db_session, message_id)
    message.attempts = 199
    db_session.flush()

    worker.drain()

    message = reload(db_session, message_id)
    assert message.attempts == 200
    assert message.failed_at is None
    assert message.available_at == now + MAX_BACKOFF
    assert "still down" in message.last_error


def test_one_bad_message_does_not_block_the_others(db_session, deps, runtime, clock, now):
    done = []

    def handler(session, deps_, payload, at):
        if payload["n"] == 1:
            raise ValueError("bad")
        done.append(payload["n"])

    worker = make_worker(runtime, clock, {"job": handler})
    for n in (1, 2, 3):
        enqueue(db_session, deps, now, payload={"n": n})

    assert worker.drain() == 3
    assert done == [2, 3]


def test_backoff_is_capped():
    assert [backoff(n) for n in (1, 2, 3, 4)] == [timedelta(seconds=s) for s in (5, 10, 20, 40)]
    assert backoff(50) == backoff(5000) == MAX_BACKOFF == timedelta(hours=2)


def test_stats(db_session, deps, runtime, clock, now):
    for delay in (timedelta(0), timedelta(hours=1)):
        enqueue(db_session, deps, now, delay=delay)

    stats = outbox.stats(db_session)

    assert stats.pending == 2
    assert stats.oldest_pending_at == now
    assert stats.failed == 0
    make_worker(runtime, clock, {"job": lambda *args: None}).drain()
    assert outbox.stats(db_session).pending == 1


def test_an_outside_delivery_is_claimed_then_made_then_recorded(
    db_session, deps, runtime, clock, now
):
    seen = []
    ok = outbox.External(lambda d, payload, at: seen.append(payload))
    down = outbox.External(lambda d, payload, at: (_ for _ in ()).throw(ConnectionError("down")))
    worker = make_worker(runtime, clock, {"mail": ok, "hook": down})
    delivered = enqueue(db_session, deps, now, kind="mail", payload={"to": "a@example.com"})
    refused = enqueue(db_session, deps, now, kind="hook")

    assert worker.drain() == 2

    assert seen == [{"to": "a@example.com"}]
    message = reload(db_session, delivered)
    assert (message.completed_at, message.attempts) == (now, 1)
    retry = reload(db_session, refused)
    assert retry.completed_at is None and retry.failed_at is None
    assert retry.available_at == now + backoff(1)  # the claim's lease gave way to the backoff
    assert "ConnectionError: down" in retry.last_error


def test_a_stopping_worker_finishes_the_delivery_under_way_and_hands_back_the_rest(
    db_session, deps, runtime, clock, now
):
    # SIGTERM to `authsvc worker`, or a gunicorn worker exiting, while a batch is out.
    stop = threading.Event()
    sent = []

    def deliver(_deps, payload, _at):
        sent.append(payload["n"])
        stop.set()  # the stop arrives while the first mail is being sent

    worker = make_worker(runtime, clock, {"mail": outbox.External(deliver)})
    queued = [enqueue(db_session, deps, now, kind="mail", payload={"n": n}) for n in (1, 2, 3)]

    assert worker.drain_once(stop) == 3

    assert sent == [1]
    first, *rest = (reload(db_session, message) for message in queued)
    assert (first.completed_at, first.attempts) == (now, 1)
    for message in rest:  # due again at once, as if never claimed
        assert (message.completed_at, message.available_at, message.attempts) == (None, now, 0)
    assert worker.drain_once() == 2 and sent == [1, 2, 3]


def test_no_lock_is_held_while_a_delivery_waits_on_a_server(settings, scratch_database_url, now):
    # On SQLite the worker's transaction holds the database's write lock: a slow SMTP server
    # must not stall every login and sign-up meanwhile.
    from authsvc.app import build_runtime
    from authsvc.schema import upgrade

    upgrade(scratch_database_url)
    runtime = build_runtime(dataclasses.replace(settings, database_url=scratch_database_url))
    postgres = runtime.engine.dialect.name == "postgresql"
    written = []

    def slow_server(deps, payload, at):
        with runtime.sessionmaker.begin() as other:  # another request, meanwhile
            other.execute(
                text("SET LOCAL lock_timeout = '2s'" if postgres else "PRAGMA busy_timeout = 2000")
            )
            other.execute(
                update(OutboxMessage)
                .where(OutboxMessage.kind == "mail")
                .values(last_error="written during the delivery")
            )
        written.append(payload)

    try:
        with runtime.sessionmaker.begin() as session:
            outbox.enqueue(session, runtime.deps.keyring, kind="mail", payload={"n": 1}, now=now)
        worker = make_worker(runtime, Clock(now), {"mail": outbox.External(slow_server)})

        assert worker.drain() == 1

        assert written == [{"n": 1}]
        with runtime.sessionmaker() as session:
            message = session.scalars(select(OutboxMessage)).one()
            assert message.completed_at == now
            assert message.last_error == "written during the delivery"
    finally:
        runtime.dispose()


def test_a_slow_batch_does_not_let_another_worker_send_its_messages_again(
    db_session, deps, runtime, clock, now
):
    # Worker A claims 3 mails for one 5-minute lease; each delivery takes 3 minutes. Past half
    # the lease A renews the message it is about to send; the one still waiting when the lease
    # runs out goes to worker B, and A does not send it as well.
    sent: list[tuple[str, int]] = []
    b_clock = Clock(now)
    worker_b = make_worker(
        runtime, b_clock, {"mail": outbox.External(lambda d, p, at: sent.append(("B", p["n"])))}
    )

    def slow(_deps, payload, _at):
        sent.append(("A", payload["n"]))
        clock.now = b_clock.now = clock.now + timedelta(minutes=3)
        if payload["n"] == 2:
            worker_b.drain_once()  # at minute 6

    worker_a = make_worker(runtime, clock, {"mail": outbox.External(slow)})
    for n in (1, 2, 3):
        enqueue(db_session, deps, now, kind="mail", payload={"n": n})

    worker_a.drain_once()

    assert sent == [("A", 1), ("A", 2), ("B", 3)]  # each mail exactly once


def test_an_outage_is_logged_once_and_retried_less_often(runtime, clock, monkeypatch, caplog):
    # A database outage made every drain fail: a traceback twice a second, for good.
    worker = make_worker(runtime, clock, {})
    calls: list[float] = []
    outage = threading.Event()
    outage.set()

    def drain_once(stop=None):
        calls.append(time.monotonic())
        if outage.is_set():
            raise ConnectionError("database unreachable")
        return 0

    monkeypatch.setattr(worker, "drain_once", drain_once)
    monkeypatch.setattr(worker, "sweep", lambda: None)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"poll_interval": 0.01})
    with caplog.at_level(logging.INFO, logger="authsvc.worker"):
        thread.start()
        time.sleep(1.5)
        failed_calls = len(calls)
        outage.clear()
        time.sleep(3)  # the next attempt comes within 2.6 s (0.01 s doubled 8 times)
        stop.set()
        thread.join(10)

    messages = [r.getMessage() for r in caplog.records if r.name == "authsvc.worker"]
    assert messages[0] == "outbox drain failed" and caplog.records[0].exc_info is not None
    assert not any(m.startswith("outbox drain failed") for m in messages[1:])
    assert "outbox drain works again after" in messages[-1]
    # 0.02 s, 0.04 s, 0.08 s ... between attempts: a handful in 1.5 s, not 150.
    assert 4 <= failed_calls <= 10


@pytest.mark.parametrize(("ahead", "named"), [(timedelta(minutes=6), True), (timedelta(0), False)])
def test_a_worker_whose_clock_is_off_the_databases_says_so(
    runtime, clock, monkeypatch, caplog, ahead, named
):
    # Leases are compared on each worker's clock: one 6 minutes ahead took over a message
    # another worker was sending (a 5-minute lease) and sent it again, without a word.

    monkeypatch.setattr(worker_module, "utcnow", lambda: utcnow() + ahead)
    caplog.set_level(logging.ERROR, logger="authsvc.worker")

    make_worker(runtime, clock, {}).check_clock()

    said = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
    if named:
        assert said and re.match(
            r"this host's clock is 3[56][0-9] s ahead of the database", said[0]
        )
    else:
        assert said == []
