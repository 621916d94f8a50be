"""The audit trail on a real database: the hash chain, its head, verification, pruning, reading."""

from __future__ import annotations

import threading
from datetime import timedelta
from itertools import pairwise

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from authsvc.app import Runtime
from authsvc.db import make_engine, make_sessionmaker
from authsvc.models import User
from authsvc.models.ops import AuditChainHead, AuditEvent
from authsvc.schema import upgrade
from authsvc.services import audit, audit_views
from authsvc.services.context import Client

CLIENT = Client(ip="198.51.100.7", user_agent="pytest-audit")


@pytest.fixture
def session(runtime: Runtime):
    """A session of the app's sessionmaker: the chain head is signed and the observer runs."""
    with runtime.sessionmaker() as session, session.begin():
        yield session


def write(session: Session, now, count: int, **kwargs) -> list[AuditEvent]:
    """Record ``count`` events and chain them (as a commit would)."""
    events = [
        audit.record(
            session,
            type=kwargs.get("type", "login.failure"),
            outcome=kwargs.get("outcome", "wrong_password"),
            now=now + timedelta(seconds=i),
            client=CLIENT,
            user_id=kwargs.get("user_id"),
            email_hash=kwargs.get("email_hash"),
            details=kwargs.get("details"),
        )
        for i in range(count)
    ]
    audit.append_pending(session)
    return events


def check(session: Session, runtime: Runtime) -> audit.Verification:
    audit.append_pending(session)
    session.flush()
    session.expunge_all()
    return audit.verify(session, keyring=runtime.deps.keyring)


def test_rows_are_chained_and_the_head_is_signed(session, runtime, now):
    first, second, third = write(session, now, 3)
    assert second.prev_hash == first.row_hash
    assert third.prev_hash == second.row_hash
    assert third.row_hash == audit.row_digest(third.prev_hash, third)
    head = session.get(AuditChainHead, audit.HEAD_ID)
    assert (head.last_id, head.last_hash) == (third.id, third.row_hash)
    assert head.head_mac == audit.head_mac(runtime.deps.keyring, head)
    result = check(session, runtime)
    assert result.ok, result.reason
    assert result.checked >= 3


def test_an_edited_row_is_named(session, runtime, now):
    events = write(session, now, 5)
    session.execute(
        text("UPDATE audit_events SET outcome = 'success' WHERE id = :id"), {"id": events[2].id}
    )
    result = check(session, runtime)
    assert not result.ok
    assert result.broken_id == events[2].id
    assert "altered" in result.reason


def test_a_deleted_row_breaks_the_link_of_the_next_one(session, runtime, now):
    events = write(session, now, 5)
    session.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": events[1].id})
    result = check(session, runtime)
    assert not result.ok
    assert result.broken_id == events[2].id
    assert f"event {events[0].id}" in result.reason


def test_a_truncated_tail_is_found(session, runtime, now):
    events = write(session, now, 4)
    session.execute(text("DELETE FROM audit_events WHERE id >= :id"), {"id": events[2].id})
    result = check(session, runtime)
    assert not result.ok
    assert "end" in result.reason
    assert result.broken_id == events[1].id


def test_a_recomputed_chain_does_not_match_the_signed_head(session, runtime, now):
    """Someone with write access but no keys edits a row and recomputes every hash after it."""
    events = write(session, now, 3)
    session.flush()
    session.expunge_all()
    rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    rows[-2].outcome = "success"
    prev = rows[-3].row_hash if len(rows) >= 3 else audit.GENESIS
    for row in rows[-2:]:
        row.prev_hash = prev
        row.row_hash = audit.row_digest(prev, row)
        prev = row.row_hash
    head = session.get(AuditChainHead, audit.HEAD_ID)
    head.last_hash = prev
    assert events[-1].id == rows[-1].id
    result = check(session, runtime)
    assert not result.ok
    assert result.broken_id is None
    assert "signature" in result.reason


def _rechain(session) -> str:
    """What someone with write access but no keys can do: recompute every hash in order."""
    prev = audit.GENESIS
    for row in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all():
        row.prev_hash = prev
        row.row_hash = audit.row_digest(prev, row)
        prev = row.row_hash
    session.flush()
    return prev


def test_a_rewritten_trail_stays_found_after_its_head_is_deleted(session, runtime, now):
    # Rewrite every row, recompute the chain and delete the head: the next event must not sign
    # the rewritten rows into a fresh head.
    events = write(session, now, 3)
    session.flush()
    session.execute(text("UPDATE audit_events SET ip = '192.0.2.66'"))
    session.expunge_all()
    _rechain(session)
    session.execute(text("DELETE FROM audit_chain_heads"))
    write(session, now, 1)  # any later event, even a failed login the forger triggers

    result = check(session, runtime)

    assert not result.ok
    assert result.broken_id == events[0].id
    assert "anchor" in result.reason


def test_a_wiped_trail_with_a_reset_head_is_found(session, runtime, now):
    session.add(User(email="ada@example.com", created_at=now, updated_at=now))
    write(session, now, 3)
    session.flush()
    session.execute(text("DELETE FROM audit_events"))
    session.execute(
        text(
            "UPDATE audit_chain_heads SET last_id = 0, last_hash = :g, anchor_id = 0, "
            "anchor_hash = :g, head_mac = ''"
        ),
        {"g": audit.GENESIS},
    )

    result = check(session, runtime)

    assert not result.ok
    assert "wiped" in result.reason


def test_a_truncated_tail_stays_found_after_the_next_event(session, runtime, now):
    # Delete the last events and point the head at the new end: its signature no longer
    # matches, and the next event (any request the forger makes) must not sign it again.
    events = write(session, now, 4)
    session.flush()
    session.execute(text("DELETE FROM audit_events WHERE id >= :id"), {"id": events[2].id})
    session.execute(
        text("UPDATE audit_chain_heads SET last_id = :id, last_hash = :hash"),
        {"id": events[1].id, "hash": events[1].row_hash},
    )
    session.expunge_all()
    later = write(session, now, 1)

    result = check(session, runtime)

    assert not result.ok
    flagged = session.get(AuditEvent, result.broken_id)
    assert flagged.type == "audit.head_invalid" and flagged.outcome == "altered"
    assert flagged.id < later[0].id and flagged.prev_hash == events[1].row_hash
    assert "did not match its signature" in result.reason


def test_a_rechained_trail_stays_found_after_the_next_event(session, runtime, now):
    write(session, now, 3)
    session.flush()
    session.execute(text("UPDATE audit_events SET outcome = 'success'"))
    session.expunge_all()
    session.execute(text("UPDATE audit_chain_heads SET last_hash = :h"), {"h": _rechain(session)})
    session.expunge_all()
    write(session, now, 1)

    result = check(session, runtime)

    assert not result.ok
    assert session.get(AuditEvent, result.broken_id).type == "audit.head_invalid"


# The whole trail deleted, and its head with it or set back to what `db upgrade` leaves before
# the first start: the next event (a failed login the forger makes) must not sign either as if
# the trail had just begun.
_HEAD_WIPES = {
    "missing": ("DELETE FROM audit_chain_heads", {}),
    "unsigned": (
        "UPDATE audit_chain_heads SET anchor_id = 0, anchor_hash = :g, last_id = 0, "
        "last_hash = :g, head_mac = '', updated_at = NULL",
        {"g": audit.GENESIS},
    ),
}


@pytest.mark.parametrize("outcome", sorted(_HEAD_WIPES))
def test_a_wiped_trail_and_head_is_found_after_the_next_event(session, runtime, now, outcome):
    write(session, now, 3)
    session.flush()
    session.execute(text("DELETE FROM audit_events"))
    statement, params = _HEAD_WIPES[outcome]
    session.execute(text(statement), params)
    session.expunge_all()
    later = write(session, now, 1)

    result = check(session, runtime)

    assert not result.ok
    flagged = session.get(AuditEvent, result.broken_id)
    assert (flagged.type, flagged.outcome) == ("audit.head_invalid", outcome)
    assert flagged.id < later[0].id
    assert outcome in result.reason


def test_a_row_added_after_the_head_is_found(session, runtime, now):
    events = write(session, now, 3)
    session.flush()
    forged = events[-1].id + 5
    session.execute(
        text(
            "INSERT INTO audit_events (id, type, outcome, occurred_at, details, prev_hash, "
            "row_hash) VALUES (:id, 'admin.forged', 'success', :at, '{}', :h, :h)"
        ),
        {"id": forged, "at": now, "h": "f" * 64},
    )

    result = check(session, runtime)

    assert not result.ok
    assert result.broken_id == forged
    assert "outside the chain" in result.reason


def test_pruning_keeps_the_rest_verifiable(session, runtime, now):
    old = write(session, now - timedelta(days=500), 4)
    recent = write(session, now, 3)
    result = audit.prune(session, before=now - timedelta(days=400), now=now)
    assert result.pruned >= 4
    assert result.through_id == old[-1].id
    remaining = session.scalars(select(AuditEvent.id)).all()
    assert not set(remaining) & {e.id for e in old}
    pruned_event = session.scalars(
        select(AuditEvent).where(AuditEvent.type == "audit.pruned")
    ).one()
    assert f'"through_id": {old[-1].id}' in pruned_event.details
    verification = check(session, runtime)
    assert verification.ok, verification.reason
    # Deleting the oldest remaining event is still found: the head keeps the anchor.
    session.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": recent[0].id})
    verification = check(session, runtime)
    assert not verification.ok
    assert verification.broken_id == recent[1].id


def test_pruning_keeps_an_event_inside_retention_chained_before_older_ones(session, runtime, now):
    # Ids follow the chain, times the callers' clocks: a drain started before a slower
    # request may chain its event after that request's, with an earlier time.
    cutoff = now - timedelta(days=400)
    old = write(session, cutoff - timedelta(days=1), 2)
    inside = write(session, cutoff + timedelta(minutes=5), 1)
    older_but_later = write(session, cutoff - timedelta(seconds=1), 1)

    result = audit.prune(session, before=cutoff, now=now)

    assert result.through_id == old[-1].id and result.pruned == 2
    remaining = set(session.scalars(select(AuditEvent.id)).all())
    assert inside[0].id in remaining and older_but_later[0].id in remaining
    verification = check(session, runtime)
    assert verification.ok, verification.reason


def test_pruning_nothing_changes_nothing(session, runtime, now):
    write(session, now, 2)
    assert audit.prune(session, before=now - timedelta(days=1), now=now).pruned == 0
    assert session.scalar(select(AuditEvent.id).where(AuditEvent.type == "audit.pruned")) is None


def test_list_events_filters_and_pages(session, runtime, now):
    write(session, now, 3, user_id="u1")
    write(
        session,
        now + timedelta(minutes=5),
        2,
        type="login.success",
        outcome="authenticated",
        user_id="u1",
    )
    write(session, now, 2, type="password.forgot", outcome="accepted", email_hash="e" * 64)
    only_u1 = audit_views.list_events(
        session, where=audit_views.EventFilter(user_id="u1"), before_id=None, limit=10
    )
    assert len(only_u1.events) == 5 and only_u1.next_cursor is None
    assert [e.id for e in only_u1.events] == sorted(
        (e.id for e in only_u1.events), key=int, reverse=True
    )
    logins = audit_views.list_events(
        session, where=audit_views.EventFilter(types=("login.*",)), before_id=None, limit=10
    )
    assert {e.type for e in logins.events} == {"login.failure", "login.success"}
    later = audit_views.list_events(
        session,
        where=audit_views.EventFilter(since=now + timedelta(minutes=1)),
        before_id=None,
        limit=10,
    )
    assert {e.type for e in later.events} == {"login.success"}
    by_email = audit_views.list_events(
        session, where=audit_views.EventFilter(email_hash="e" * 64), before_id=None, limit=10
    )
    assert len(by_email.events) == 2
    first = audit_views.list_events(
        session, where=audit_views.EventFilter(user_id="u1"), before_id=None, limit=2
    )
    assert first.next_cursor == first.events[-1].id
    second = audit_views.list_events(
        session,
        where=audit_views.EventFilter(user_id="u1"),
        before_id=int(first.next_cursor),
        limit=2,
    )
    third = audit_views.list_events(
        session,
        where=audit_views.EventFilter(user_id="u1"),
        before_id=int(second.next_cursor),
        limit=2,
    )
    seen = [e.id for page in (first, second, third) for e in page.events]
    assert len(seen) == len(set(seen)) == 5
    assert third.next_cursor is None


def test_security_events_hide_operator_matters(session, runtime, now):
    audit.record(
        session,
        type="login.success",
        outcome="authenticated",
        now=now,
        client=CLIENT,
        user_id="u9",
        details={"amr": ["pwd"], "session_id": "s1", "internal": "x"},
    )
    audit.record(session, type="alert.raised", outcome="brute_force", now=now, user_id="u9")
    audit.record(
        session,
        type="admin.user_disabled",
        outcome="success",
        now=now,
        user_id="u9",
        admin_key_id="key1",
    )
    audit.record(session, type="login.success", outcome="authenticated", now=now, user_id="u8")
    page = audit_views.security_events(session, user_id="u9", before_id=None, limit=10)
    assert [e.type for e in page.events] == ["admin.user_disabled", "login.success"]
    login = page.events[1]
    assert login.ip == CLIENT.ip and login.user_agent == CLIENT.user_agent
    assert login.details == {"amr": ["pwd"], "session_id": "s1"}
    assert not hasattr(page.events[0], "admin_key_id")


def test_the_observer_sees_every_event_before_it_is_chained(runtime, now):
    seen = []

    def observer(session, event):
        seen.append((event.type, event.outcome, event.ip, event.email_hash))
        return lambda: seen.append(
            (
                "after",
                session.scalar(select(AuditEvent.type).order_by(AuditEvent.id.desc()).limit(1)),
            )
        )

    audit.attach(runtime.sessionmaker, audit.Hooks(keyring=runtime.deps.keyring, observer=observer))
    with runtime.sessionmaker() as session, session.begin():
        audit.record(
            session,
            type="password.forgot",
            outcome="accepted",
            now=now,
            client=CLIENT,
            email_hash="h" * 64,
        )
    assert seen == [
        ("password.forgot", "accepted", CLIENT.ip, "h" * 64),
        ("after", "password.forgot"),
    ]


def test_a_session_without_hooks_still_chains(db_session, runtime, now):
    first = audit.record(db_session, type="login.failure", outcome="unknown_email", now=now)
    second = audit.record(db_session, type="login.failure", outcome="unknown_email", now=now)
    audit.append_pending(db_session)
    assert first.row_hash is not None and second.prev_hash == first.row_hash
    # It leaves the head unsigned, as before a first start; verify says so.
    result = check(db_session, runtime)
    assert not result.ok and "unsigned" in result.reason
    # A runtime starting on it now (one that has not seen it signed) signs it as it is.
    audit.attach(runtime.sessionmaker, audit.Hooks(keyring=runtime.deps.keyring))
    runtime.sign_audit_head()
    with runtime.sessionmaker() as session, session.begin():
        audit.record(session, type="login.failure", outcome="unknown_email", now=now)
    with runtime.sessionmaker() as session, session.begin():
        result = audit.verify(session, keyring=runtime.deps.keyring)
        assert result.ok, result.reason
        assert (
            session.scalar(select(AuditEvent.id).where(AuditEvent.type == audit.HEAD_INVALID))
            is None
        )


def test_pruning_in_batches(session, runtime, now):
    old = write(session, now - timedelta(days=500), 5)
    write(session, now, 1)
    results = [
        audit.prune(session, before=now - timedelta(days=1), now=now, batch=2) for _ in range(4)
    ]
    assert [r.pruned for r in results] == [2, 2, 1, 0]
    assert results[2].through_id == old[-1].id
    result = check(session, runtime)
    assert result.ok, result.reason
    assert (
        session.scalar(select(AuditEvent.id).where(AuditEvent.id.in_([e.id for e in old]))) is None
    )


# --- when events are written: at commit, so the chain lock is held as briefly as possible ---


@pytest.fixture
def committed_runtime(scratch_database_url, runtime):
    """Sessions on an empty database whose commits are real, signing the head with the keys."""
    upgrade(scratch_database_url)
    engine = make_engine(scratch_database_url)
    factory = make_sessionmaker(engine)
    audit.attach(factory, audit.Hooks(keyring=runtime.deps.keyring))
    yield factory, engine
    engine.dispose()


def test_recorded_events_are_written_at_commit(committed_runtime, runtime, now):
    """Nothing touches the audit tables (and so the chain lock) before the commit; then the
    events are chained in the order they were recorded."""
    factory, engine = committed_runtime
    statements: list[str] = []

    def log(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", log)
    try:
        with factory() as session, session.begin():
            first = audit.record(session, type="login.failure", outcome="x", now=now, user_id="a")
            second = audit.record(session, type="login.success", outcome="y", now=now, user_id="a")
            assert first.id is None and second.id is None
            assert not [s for s in statements if "audit_" in s]
            if engine.dialect.name == "postgresql":
                # Another writer is not kept waiting by this open transaction.
                with factory() as other, other.begin():
                    other.execute(text("SET LOCAL lock_timeout = '2s'"))
                    audit.record(other, type="login.failure", outcome="z", now=now, user_id="b")
    finally:
        event.remove(engine, "before_cursor_execute", log)
    assert [s for s in statements if "audit_" in s]
    assert second.prev_hash == first.row_hash and first.id < second.id
    with factory() as session:
        result = audit.verify(session, keyring=runtime.deps.keyring)
        assert result.ok
        assert result.checked == (3 if engine.dialect.name == "postgresql" else 2)


def test_a_commit_writes_its_events_in_one_insert_in_chain_order(committed_runtime, runtime, now):
    """Queued events go to the table in one statement on PostgreSQL (SQLite gets one per row
    from SQLAlchemy), and their ids still follow the chain."""
    factory, engine = committed_runtime
    inserts: list[str] = []

    def log(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_EVENTS"):
            inserts.append(statement)

    event.listen(engine, "before_cursor_execute", log)
    try:
        with factory() as session, session.begin():
            events = [
                audit.record(session, type="login.failure", outcome=str(i), now=now, user_id="c")
                for i in range(20)
            ]
    finally:
        event.remove(engine, "before_cursor_execute", log)
    assert len(inserts) == (1 if engine.dialect.name == "postgresql" else 20)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 20
    for before, after in pairwise(events):
        assert after.prev_hash == before.row_hash
    with factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.id.in_(ids)).order_by(AuditEvent.id)
        ).all()
        assert [row.outcome for row in rows] == [str(i) for i in range(20)]
        assert audit.verify(session, keyring=runtime.deps.keyring).ok


def test_a_rollback_writes_no_event(committed_runtime, now):
    factory, _ = committed_runtime
    with factory() as session:
        session.begin()
        audit.record(session, type="login.failure", outcome="x", now=now, user_id="a")
        session.rollback()
        with session.begin():
            audit.record(session, type="login.success", outcome="y", now=now, user_id="a")
    with factory() as session:
        assert session.scalars(select(AuditEvent.type)).all() == ["login.success"]


def test_an_event_recorded_in_a_rolled_back_savepoint_is_dropped(committed_runtime, now):
    factory, _ = committed_runtime
    with factory() as session, session.begin():
        audit.record(session, type="kept.before", outcome="x", now=now)
        with pytest.raises(RuntimeError), session.begin_nested():
            audit.record(session, type="dropped", outcome="x", now=now)
            raise RuntimeError
        with session.begin_nested():
            audit.record(session, type="kept.released", outcome="x", now=now)
    with factory() as session:
        types = session.scalars(select(AuditEvent.type).order_by(AuditEvent.id)).all()
        assert types == ["kept.before", "kept.released"]


def test_reading_the_trail_first_writes_what_is_queued(session, now):
    audit.record(session, type="login.failure", outcome="x", now=now, user_id="reader")
    page = audit_views.list_events(
        session, where=audit_views.EventFilter(user_id="reader"), before_id=None, limit=10
    )
    assert [e.type for e in page.events] == ["login.failure"]
    # A read that opts out leaves the queue alone.
    audit.record(session, type="login.success", outcome="y", now=now, user_id="reader")
    rows = session.scalars(
        select(AuditEvent.type)
        .where(AuditEvent.user_id == "reader")
        .execution_options(**audit.WITHOUT_PENDING)
    ).all()
    assert rows == ["login.failure"]


def test_a_statement_built_once_reads_what_is_queued_each_time(session, now):
    """Whether a statement reads the trail is worked out once per statement object; it still
    writes the queue first on every run, and other statements still do not."""
    reader = select(AuditEvent.type).where(AuditEvent.user_id == "again").order_by(AuditEvent.id)
    other = select(AuditChainHead.id.is_(None)).where(False)  # names the head's table
    unrelated = select(User.id).where(User.id == "nobody")
    for round_ in range(3):
        audit.record(session, type=f"event.{round_}", outcome="x", now=now, user_id="again")
        session.scalars(unrelated).all()
        assert session.info.get(audit.PENDING_KEY)  # a statement on other tables writes nothing
        assert session.scalars(reader).all() == [f"event.{i}" for i in range(round_ + 1)]
        assert not session.info.get(audit.PENDING_KEY)
    audit.record(session, type="event.head", outcome="x", now=now, user_id="again")
    session.scalars(other).all()
    assert not session.info.get(audit.PENDING_KEY)


# --- the first start signs the head; after it, an unsigned head is a reset ------------------


def _head(factory) -> AuditChainHead:
    with factory() as session:
        return session.get(AuditChainHead, audit.HEAD_ID)


def _verified(factory, runtime: Runtime) -> audit.Verification:
    with factory() as session:
        return audit.verify(session, keyring=runtime.deps.keyring)


def _flagged(factory) -> list[tuple[str, str]]:
    with factory() as session:
        rows = session.execute(
            select(AuditEvent.type, AuditEvent.outcome).where(AuditEvent.type == audit.HEAD_INVALID)
        ).all()
        return [tuple(row) for row in rows]


def test_the_first_start_signs_the_head_that_db_upgrade_left_unsigned(
    committed_runtime, runtime, now
):
    factory, _ = committed_runtime
    assert _head(factory).head_mac == ""
    assert _verified(factory, runtime).ok  # a new installation

    audit.sign_head_at_start(factory, now=now)
    audit.sign_head_at_start(factory, now=now)  # the next start finds it signed

    head = _head(factory)
    assert head.head_mac == audit.head_mac(runtime.deps.keyring, head)
    assert (head.last_id, head.last_hash) == (0, audit.GENESIS)
    with factory() as session, session.begin():
        audit.record(session, type="login.failure", outcome="unknown_email", now=now)
    result = _verified(factory, runtime)
    assert result.ok and result.checked == 1, result.reason
    assert _flagged(factory) == []


def test_the_first_start_adopts_the_events_written_before_the_head_row(
    scratch_database_url, runtime, now
):
    # Migration 0005 creates the head unsigned over the events already there.
    upgrade(scratch_database_url, "0004")
    engine = make_engine(scratch_database_url)
    prev = audit.GENESIS
    with Session(engine) as session, session.begin():
        for i in range(3):
            row = AuditEvent(
                occurred_at=now + timedelta(seconds=i),
                type="login.failure",
                outcome="wrong_password",
                details="{}",
                prev_hash=prev,
            )
            row.row_hash = prev = audit.row_digest(prev, row)
            session.add(row)
    upgrade(scratch_database_url)
    factory = make_sessionmaker(engine)
    audit.attach(factory, audit.Hooks(keyring=runtime.deps.keyring))
    try:
        before = _verified(factory, runtime)
        assert not before.ok and "unsigned" in before.reason

        audit.sign_head_at_start(factory, now=now)

        result = _verified(factory, runtime)
        assert result.ok and result.checked == 3, result.reason
        with factory() as session, session.begin():
            audit.record(session, type="login.failure", outcome="unknown_email", now=now)
        result = _verified(factory, runtime)
        assert result.ok and result.checked == 4, result.reason
        assert _flagged(factory) == []
    finally:
        engine.dispose()


def _wipe_and_reset(factory) -> None:
    """What someone with write access but no keys can do: delete every event and set the head
    back to what `db upgrade` leaves."""
    with factory() as session, session.begin():
        session.execute(text("DELETE FROM audit_events"))
        session.execute(
            text(
                "UPDATE audit_chain_heads SET anchor_id = 0, anchor_hash = :g, last_id = 0, "
                "last_hash = :g, head_mac = '', updated_at = NULL"
            ),
            {"g": audit.GENESIS},
        )


@pytest.mark.parametrize("then", ["restart", "write_without_a_start"])
def test_a_wiped_trail_reset_unsigned_is_found_by_the_next_start(
    committed_runtime, runtime, now, then
):
    # A runtime that has not seen the head signed: a restart, or one whose start could not
    # reach the database. Accounts exist, so the empty trail was wiped, not new.
    factory, _ = committed_runtime
    audit.sign_head_at_start(factory, now=now)
    with factory() as session, session.begin():
        session.add(User(email="ada@example.com", created_at=now, updated_at=now))
        audit.record(session, type="signup.verified", outcome="success", now=now)
    _wipe_and_reset(factory)
    audit.attach(factory, audit.Hooks(keyring=runtime.deps.keyring))

    if then == "restart":
        audit.sign_head_at_start(factory, now=now)
    with factory() as session, session.begin():
        audit.record(session, type="login.failure", outcome="wrong_password", now=now)

    result = _verified(factory, runtime)
    assert not result.ok and "unsigned" in result.reason
    assert _flagged(factory) == [(audit.HEAD_INVALID, "unsigned")]


def test_a_start_waits_for_a_writer_holding_the_head_and_leaves_its_signature(
    committed_runtime, runtime, now
):
    # A start while another process writes its first event (and so signs the head): the start
    # waits for the head row, then finds it signed.
    factory, _ = committed_runtime
    other = make_sessionmaker(factory.kw["bind"])
    audit.attach(other, audit.Hooks(keyring=runtime.deps.keyring))
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            audit.sign_head_at_start(other, now=now)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with factory() as session, session.begin():
        audit.record(session, type="login.failure", outcome="unknown_email", now=now)
        audit.append_pending(session)  # holds the head now, signed, until the commit
        starting = threading.Thread(target=start)
        starting.start()
        starting.join(0.5)
        assert starting.is_alive()  # waiting for the head
    starting.join(30)

    assert outcome == [None]
    result = _verified(factory, runtime)
    assert result.ok and result.checked == 1, result.reason
    assert _flagged(factory) == []
