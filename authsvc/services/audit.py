"""The security event trail: one hash-chained row per event, written in the caller's
transaction.

Each row holds the hash of the row before it (``prev_hash``) and of its own contents
(``row_hash``). The single ``audit_chain_heads`` row pins both ends of the chain: where it starts
(``GENESIS``, or the hash of the last pruned row) and where it ends, under a keyed MAC. So an
edited row, a deleted row, a truncated tail and a recomputed chain are all found by ``verify``.
Writers are serialised by locking the head row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
serialises writers itself). A writer that finds the head missing, or not matching its signature,
does not simply sign what it found: it first chains an ``audit.head_invalid`` event, which
``verify`` names from then on, so that the next request after a tampering does not erase its
evidence.

The migrations create the head unsigned (``head_mac`` empty), over the events already there.
Every start with a key ring (``sign_head_at_start``: the app, ``authsvc worker``, the commands
that write events) signs an unsigned head before it writes, so an unsigned head means that no
authsvc has started on the database yet. A runtime that has seen the head signed (at its start
or at a write) takes an unsigned head for a reset to that state, made to pass a wiped or
rewritten trail off as new: it chains ``audit.head_invalid`` ("unsigned") too, as does a start
that finds an empty, unsigned trail while accounts exist. A runtime whose start could not reach
the database signs an unsigned head at its first write instead, as its start would have. A
start cannot tell other resets made while no authsvc ran from a database nobody has started on.

That lock is held until the transaction ends, so it is taken as late as possible: ``record``
queues the event on the session, and the queue is chained and written just before the
transaction commits (or earlier, when the same transaction reads the trail: a query on the
audit tables first writes what is queued). An event queued inside a savepoint that rolls back
is dropped with it; a transaction that rolls back writes none.

The composition root attaches ``Hooks`` to the sessionmaker: the keyring that signs the head
and an observer (detection, metrics, notices) that sees every event. ``record`` calls the
observer when the event is recorded, and runs what the observer hands back (such as recording
an alert) right after the event is queued, so that follow-ups are chained after it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Select, Table, bindparam, delete, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import ORMExecuteState, SessionTransaction, sessionmaker
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.util import find_tables

from authsvc.crypto.keyring import Keyring
from authsvc.errors import RateLimited
from authsvc.models.accounts import User
from authsvc.models.ops import AuditChainHead, AuditEvent
from authsvc.services.context import Client

log = logging.getLogger("authsvc.audit")

GENESIS = "0" * 64
# Chained by a writer that found the head missing, not matching its signature, or unsigned
# although authsvc had started on the database.
HEAD_INVALID = "audit.head_invalid"
HEAD_ID = 1
HOOKS_KEY = "authsvc.audit.hooks"
PENDING_KEY = "authsvc.audit.pending"
# Execution option: this read does not need the events queued by its own transaction (so it
# does not write them, and take the chain lock, early).
WITHOUT_PENDING = {"authsvc_audit_pending": False}
_AUDIT_TABLES = frozenset({"audit_events", "audit_chain_heads"})
_HEAD_MAC_PURPOSE = "audit-chain-head"


@dataclass(frozen=True, slots=True)
class Observed:
    """What an observer is told about an event about to be chained."""

    type: str
    outcome: str
    now: datetime
    ip: str | None
    user_agent: str | None
    user_id: str | None
    admin_key_id: str | None
    email_hash: str | None
    details: Mapping[str, Any] = field(default_factory=dict)


# An observer may hand back a follow-up that runs once the event is chained.
FollowUp = Callable[[], None]
Observer = Callable[[DbSession, Observed], FollowUp | None]


@dataclass(frozen=True, slots=True)
class Hooks:
    keyring: Keyring
    observer: Observer | None = None
    # Set once this runtime has seen the chain head signed: an unsigned head is a reset then.
    head_seen_signed: threading.Event = field(default_factory=threading.Event, compare=False)


def attach(factory: sessionmaker[DbSession], hooks: Hooks) -> None:
    """Give every session of ``factory`` the keyring that signs the chain head and an observer."""
    info = dict(factory.kw.get("info") or {})
    info[HOOKS_KEY] = hooks
    factory.configure(info=info)


def hooks_of(session: DbSession) -> Hooks | None:
    hooks = session.info.get(HOOKS_KEY)
    return hooks if isinstance(hooks, Hooks) else None


def email_digest(keyring: Keyring, email: str) -> str:
    """Keyed hash of a normalised email: correlates attempts without storing the address."""
    return keyring.mac("audit-email", email.encode("utf-8", "surrogatepass"))


def row_digest(prev_hash: str, event: AuditEvent | Row[Any]) -> str:
    body = {
        "prev": prev_hash,
        "at": event.occurred_at.isoformat(),
        "type": event.type,
        "outcome": event.outcome,
        "user_id": event.user_id,
        "admin_key_id": event.admin_key_id,
        "email_hash": event.email_hash,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "details": event.details,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def head_mac(keyring: Keyring, head: AuditChainHead) -> str:
    message = f"{head.anchor_id}:{head.anchor_hash}:{head.last_id}:{head.last_hash}"
    return keyring.mac(_HEAD_MAC_PURPOSE, message.encode())


def record(
    session: DbSession,
    *,
    type: str,  # the event type is the column's name
    outcome: str,
    now: datetime,
    client: Client | None = None,
    user_id: str | None = None,
    admin_key_id: str | None = None,
    email_hash: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain (and let the attached observer see it)."""
    ip = (client.ip or None) if client else None
    user_agent = (client.user_agent[:256] or None) if client else None
    hooks = hooks_of(session)
    follow_up = None
    if hooks is not None and hooks.observer is not None:
        follow_up = hooks.observer(
            session,
            Observed(
                type=type,
                outcome=outcome,
                now=now,
                ip=ip,
                user_agent=user_agent,
                user_id=user_id,
                admin_key_id=admin_key_id,
                email_hash=email_hash,
                details=dict(details or {}),
            ),
        )
    entry = AuditEvent(
        occurred_at=now,
        type=type[:64],
        outcome=outcome[:32],
        user_id=user_id,
        admin_key_id=admin_key_id,
        email_hash=email_hash,
        ip=ip[:64] if ip else None,
        user_agent=user_agent,
        details=json.dumps(details or {}, sort_keys=True, default=str),
    )
    transaction = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(PENDING_KEY, []).append((entry, transaction))
    if follow_up is not None:
        follow_up()
    return entry


def record_limit_hit(
    session: DbSession,
    refusal: RateLimited,
    *,
    now: datetime,
    client: Client,
    user_id: str | None = None,
    email_hash: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """A ``ratelimit.hit`` event for a refused request, named after the policy that refused it."""
    record(
        session,
        type="ratelimit.hit",
        outcome=refusal.policy,
        now=now,
        client=client,
        user_id=user_id,
        email_hash=email_hash,
        details=details,
    )


def append_pending(session: DbSession) -> None:
    """Chain and write the events this session has queued (normally done at commit)."""
    pending: list[tuple[AuditEvent, SessionTransaction | None]] = session.info.pop(PENDING_KEY, [])
    if not pending:
        return
    head = _checked_head(session, now=pending[0][0].occurred_at)
    _append(session, head, [entry for entry, _ in pending])


_EVENTS_TABLE = cast("Table", AuditEvent.__table__)
_EVENT_COLUMNS = tuple(c.key for c in _EVENTS_TABLE.c if c.key != "id")
# Core statements built once: the ORM's unit of work cost more CPU than these writes.
# Ids must follow the chain order: sort_by_parameter_order has SQLAlchemy's batched INSERT
# (insertmanyvalues) hand the server-generated keys back in the order of the parameter sets.
_INSERT_EVENTS = insert(_EVENTS_TABLE).returning(_EVENTS_TABLE.c.id, sort_by_parameter_order=True)
_HEADS_TABLE = cast("Table", AuditChainHead.__table__)
_HEADS = _HEADS_TABLE.c
_MOVE_HEAD = (
    update(_HEADS_TABLE)
    .where(_HEADS.id == bindparam("head_id"))
    .values(
        last_id=bindparam("last_id"),
        last_hash=bindparam("last_hash"),
        head_mac=bindparam("head_mac"),
        updated_at=bindparam("updated_at"),
    )
)


def _append(session: DbSession, head: AuditChainHead, entries: list[AuditEvent]) -> None:
    """Chain ``entries`` after the locked ``head``, write them and sign the head again."""
    last_hash = head.last_hash
    for entry in entries:
        entry.prev_hash = last_hash
        entry.row_hash = last_hash = row_digest(entry.prev_hash, entry)
    # One INSERT for all of them (on PostgreSQL; SQLite gets one per row from SQLAlchemy).
    rows = [{key: getattr(entry, key) for key in _EVENT_COLUMNS} for entry in entries]
    ids = session.execute(_INSERT_EVENTS, rows).scalars().all()
    for entry, event_id in zip(entries, ids, strict=True):
        entry.id = event_id
    # The loaded head says what is written, and nothing of it is left to flush.
    set_committed_value(head, "last_id", ids[-1])
    set_committed_value(head, "last_hash", last_hash)
    set_committed_value(head, "updated_at", entries[-1].occurred_at)
    hooks = hooks_of(session)
    set_committed_value(head, "head_mac", head_mac(hooks.keyring, head) if hooks else "")
    session.execute(
        _MOVE_HEAD,
        {
            "head_id": head.id,
            "last_id": head.last_id,
            "last_hash": head.last_hash,
            "head_mac": head.head_mac,
            "updated_at": head.updated_at,
        },
    )


def _sign(session: DbSession, head: AuditChainHead) -> None:
    hooks = hooks_of(session)
    head.head_mac = head_mac(hooks.keyring, head) if hooks else ""


def _checked_head(session: DbSession, *, now: datetime) -> AuditChainHead:
    """The chain head, locked; if it was missing, does not match its signature or was reset to
    unsigned, an ``audit.head_invalid`` event is chained first.

    Signing such a head as it is would make whatever was done to the trail (a truncated tail,
    rows edited and chained anew, the whole trail deleted with its head, or with its head set
    back to what ``db upgrade`` leaves) verify again at the next event, which an attacker can
    cause with any request. Writers without hooks (no keys) take the head as it is."""
    head, created = _lock_head(session)
    hooks = hooks_of(session)
    problem = None
    if created:
        problem = "missing"
    elif hooks is not None and head.head_mac:
        if not hooks.head_seen_signed.is_set():
            hooks.head_seen_signed.set()
        if not hmac.compare_digest(head.head_mac, head_mac(hooks.keyring, head)):
            problem = "altered"
    elif hooks is not None:
        problem = _unsigned_problem(session, head, hooks)
    if problem is None:
        return head
    evidence = AuditEvent(
        occurred_at=now,
        type=HEAD_INVALID,
        outcome=problem,
        details=json.dumps(
            {"anchor_id": head.anchor_id, "last_id": head.last_id, "head_mac": head.head_mac},
            sort_keys=True,
        ),
    )
    _append(session, head, [evidence])
    log.error(
        "audit trail: the chain head %s; recorded as event %s (see `authsvc audit verify`)",
        _HEAD_PROBLEMS[problem],
        evidence.id,
    )
    return head


_HEAD_PROBLEMS = {
    "missing": "was missing",
    "altered": "did not match its signature",
    "unsigned": "was unsigned although authsvc had started on this database",
}


def _unsigned_problem(session: DbSession, head: AuditChainHead, hooks: Hooks) -> str | None:
    """Whether an unsigned head is a reset ("unsigned") rather than one no start has signed."""
    if hooks.head_seen_signed.is_set():
        return "unsigned"
    # Empty while accounts exist (each was created through an audited action): wiped, as
    # ``verify`` says; signing it would make the trail look new.
    if head.last_id == 0 and session.scalar(select(User.id).limit(1)) is not None:
        return "unsigned"
    return None


def sign_head_at_start(factory: sessionmaker[DbSession], *, now: datetime) -> None:
    """Sign the chain head if it is unsigned: what every runtime with a key ring does when it
    starts, before it writes an event.

    The migrations leave the head unsigned, over the events already there: the first start
    signs it as it is (it adopts them, as migration 0005 intends). From then on this runtime
    takes an unsigned head for a reset (see ``_checked_head``). An empty, unsigned head while
    accounts exist is not signed but recorded as an ``audit.head_invalid`` event: that trail
    was wiped. Starts at once sign it once: the head row is locked as writers lock it, and the
    UPDATE applies only to the unsigned head that was read. A missing head is left to the next
    writer, which records it."""
    with factory.begin() as session:
        hooks = hooks_of(session)
        if hooks is None:
            raise ValueError("signing the audit chain head needs a session with audit hooks")
        query = select(AuditChainHead.head_mac).where(AuditChainHead.id == HEAD_ID)
        found = session.scalar(query)
        if found == "":
            _sign_unsigned(session, hooks, now=now)
    if found is not None:
        hooks.head_seen_signed.set()


_HEAD = (
    select(AuditChainHead)
    .where(AuditChainHead.id == HEAD_ID)
    .execution_options(populate_existing=True)
)
# Built once: every audited request locks the head, and building the query cost more CPU than
# running it.
_HEAD_FOR_UPDATE = _HEAD.with_for_update()


def _head_for_update(session: DbSession) -> Select[AuditChainHead]:
    """The query of the chain head that locks it as writers do (PostgreSQL; SQLite takes its
    write lock at BEGIN) and reads it again into the session's object."""
    return _HEAD_FOR_UPDATE if session.get_bind().dialect.name == "postgresql" else _HEAD


def _sign_unsigned(session: DbSession, hooks: Hooks, *, now: datetime) -> None:
    query = _head_for_update(session)
    head = session.scalars(query).one_or_none()
    if head is None or head.head_mac:
        return  # deleted meanwhile (the next writer records it), or another start signed it
    if _unsigned_problem(session, head, hooks) is not None:
        _checked_head(session, now=now)  # records it, then signs
        return
    # Only the unsigned head that was read: a start that lost a race signs nothing.
    session.execute(
        update(AuditChainHead)
        .where(
            AuditChainHead.id == HEAD_ID,
            AuditChainHead.head_mac == "",
            AuditChainHead.anchor_id == head.anchor_id,
            AuditChainHead.anchor_hash == head.anchor_hash,
            AuditChainHead.last_id == head.last_id,
            AuditChainHead.last_hash == head.last_hash,
        )
        .values(head_mac=head_mac(hooks.keyring, head))
    )


@event.listens_for(DbSession, "before_commit")
def _append_before_commit(session: DbSession) -> None:
    if session.info.get(PENDING_KEY) and session.get_nested_transaction() is None:
        append_pending(session)


@event.listens_for(DbSession, "after_soft_rollback")
def _drop_rolled_back(session: DbSession, previous: SessionTransaction) -> None:
    pending = session.info.get(PENDING_KEY)
    if not pending:
        return
    if previous.parent is None:
        session.info.pop(PENDING_KEY, None)
        return
    session.info[PENDING_KEY] = [
        (entry, transaction) for entry, transaction in pending if not within(transaction, previous)
    ]


def within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    """Whether ``transaction`` is ``ancestor`` or one of its savepoints (None: neither)."""
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(DbSession, "after_transaction_end")
def _forget_at_the_end(session: DbSession, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


@event.listens_for(DbSession, "do_orm_execute")
def _append_before_reading_the_trail(state: ORMExecuteState) -> None:
    session = state.session
    if not session.info.get(PENDING_KEY):
        return
    if state.execution_options.get("authsvc_audit_pending") is False:
        return
    statement = state.statement
    if isinstance(statement, ClauseElement) and _touches_the_trail(statement):
        append_pending(session)


# Whether a statement names an audit table, by statement: the hot statements are built once,
# and walking one of them on every execution cost more than running some of them. An entry
# goes with its statement (a weak reference), and is checked to be that statement's.
_TOUCHES_THE_TRAIL: dict[int, tuple[weakref.ref[ClauseElement], bool]] = {}


def _touches_the_trail(statement: ClauseElement) -> bool:
    key = id(statement)
    known = _TOUCHES_THE_TRAIL.get(key)
    if known is not None and known[0]() is statement:
        return known[1]
    touches = any(
        table.name in _AUDIT_TABLES for table in find_tables(statement, include_crud=True)
    )
    gone = functools.partial(_forget_statement, key)
    _TOUCHES_THE_TRAIL[key] = (weakref.ref(statement, gone), touches)
    return touches


def _forget_statement(key: int, reference: weakref.ref[ClauseElement]) -> None:
    known = _TOUCHES_THE_TRAIL.get(key)
    if known is not None and known[0] is reference:
        _TOUCHES_THE_TRAIL.pop(key, None)


def _lock_head(session: DbSession) -> tuple[AuditChainHead, bool]:
    """The chain head, locked for this transaction (created if missing: then True)."""
    session.flush()
    query = _head_for_update(session)
    head = session.scalars(query).one_or_none()
    if head is not None:
        return head, False
    last = session.execute(
        select(AuditEvent.id, AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    # The migrations create the head. Missing over existing events, it was deleted: the new
    # one is anchored after them, so that `audit verify` names them (they may have been
    # rewritten) instead of a signature adopting whatever they hold now.
    anchor_id, anchor_hash = (last[0], last[1]) if last else (0, GENESIS)
    created = True
    try:
        with session.begin_nested():
            session.add(
                AuditChainHead(
                    id=HEAD_ID,
                    anchor_id=anchor_id,
                    anchor_hash=anchor_hash,
                    last_id=anchor_id,
                    last_hash=anchor_hash,
                    head_mac="",
                )
            )
    except IntegrityError:
        created = False  # another writer created it first
    return session.scalars(query).one(), created


# --- verification and retention ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int  # events checked
    broken_id: int | None = None  # the first broken event, when there is one
    reason: str = ""
    # Where an intact trail ends (id and hash of its last event), to give back as ``known``.
    last: tuple[int, str] | None = None


def _rows(
    session: DbSession, *, through_id: int, batch: int, after: int = -1
) -> Iterator[Row[Any]]:
    """Plain rows in id order, in batches (nothing accumulates in the identity map)."""
    table = AuditEvent.__table__
    while True:
        rows = session.execute(
            select(table)
            .where(table.c.id > after, table.c.id <= through_id)
            .order_by(table.c.id)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id


def verify(
    session: DbSession,
    *,
    keyring: Keyring,
    batch: int = 2000,
    known: tuple[int, str] | None = None,
) -> Verification:
    """Walk the whole chain; name the first event that was edited, or follows a deleted one.

    ``known``: the id and hash of an event an earlier verification ended at. The chain and
    the head's signature cannot tell the trail cut back to an earlier head (events at the end
    deleted, and a copy of the head row as it was then put back); an event seen before that
    is now past the end, or differs, can. One pruned since (before the anchor) passes."""
    head = session.scalars(
        select(AuditChainHead)
        .where(AuditChainHead.id == HEAD_ID)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if head is None:
        return Verification(ok=False, checked=0, reason="the chain head row is missing")
    anchor_id, anchor_hash = head.anchor_id, head.anchor_hash
    last_id, last_hash, mac = head.last_id, head.last_hash, head.head_mac
    expected_mac = head_mac(keyring, head)
    expected_prev, previous_id, checked = anchor_hash, anchor_id, 0
    known_seen: int | None = None
    for row in _rows(session, through_id=last_id, batch=batch):
        if row.id <= anchor_id:
            return Verification(
                False,
                checked,
                row.id,
                f"event {row.id} lies before the chain's anchor (event {anchor_id}): it should "
                "have been pruned, or the head row was deleted and re-created after it",
            )
        if row.prev_hash != expected_prev:
            what = (
                f"event {previous_id} was altered or an event after it was deleted"
                if previous_id
                else "an event before it was deleted or altered"
            )
            return Verification(
                False, checked, row.id, f"event {row.id} does not follow its predecessor: {what}"
            )
        if row_digest(row.prev_hash, row) != row.row_hash:
            return Verification(False, checked, row.id, f"event {row.id} was altered")
        if known is not None and row.id == known[0]:
            known_seen = row.id
            if row.row_hash != known[1]:
                return Verification(
                    False,
                    checked,
                    row.id,
                    f"event {row.id} is not the event an earlier verification saw: it was "
                    "altered and the events from it on chained anew, or the events from an "
                    "earlier one on were deleted and the head set back to an earlier state",
                )
        if row.type == HEAD_INVALID:
            found = _HEAD_PROBLEMS.get(row.outcome, "was invalid")
            how = (
                "(it was set back to its state before the first start)"
                if row.outcome == "unsigned"
                else "(or the key that signed the head was removed from the ring)"
            )
            return Verification(
                False,
                checked,
                row.id,
                f"when event {row.id} was written, the chain head {found}: events before it "
                f"were deleted, altered or chained anew {how}",
            )
        expected_prev, previous_id = row.row_hash, row.id
        checked += 1
    if previous_id != last_id or expected_prev != last_hash:
        return Verification(
            False,
            checked,
            previous_id or None,
            f"the trail ends at event {previous_id} but its head names event "
            f"{last_id}: events at the end were deleted or altered",
        )
    if known is not None and anchor_id < known[0] <= last_id and known_seen is None:
        return Verification(
            False,
            checked,
            known[0],
            f"event {known[0]}, which an earlier verification saw, is gone: the events after "
            "it were deleted, the head set back to an earlier state and the trail written on",
        )
    if known is not None and known[0] > max(last_id, anchor_id):
        return Verification(
            False,
            checked,
            known[0],
            f"the trail ends at event {last_id}, before event {known[0]} that an earlier "
            "verification saw: events at the end were deleted and the head set back to an "
            "earlier state",
        )
    # Rows past the head were not written through the chain (a writer that commits during
    # this walk moves the head in the same transaction, so the head read again covers it).
    tracked = session.scalar(
        select(AuditChainHead.last_id)
        .where(AuditChainHead.id == HEAD_ID)
        .execution_options(populate_existing=True)
    )
    stray = session.scalar(select(func.min(AuditEvent.id)).where(AuditEvent.id > (tracked or 0)))
    if stray is not None:
        return Verification(
            False, checked, stray, f"event {stray} was added outside the chain (after its head)"
        )
    if last_id == 0 and not mac:
        # An unsigned, empty head: a new installation, unless accounts exist (each was
        # created through an audited action): then the trail was wiped and the head reset.
        if session.scalar(select(User.id).limit(1)) is not None:
            return Verification(
                False, checked, None, "the trail is empty but accounts exist: it was wiped"
            )
        return Verification(True, checked)
    if not mac:
        return Verification(
            False,
            checked,
            None,
            "the chain head is unsigned: no authsvc has started on the database since it was "
            "migrated (the first start signs it), or it was set back to that state",
        )
    if mac != expected_mac:
        return Verification(
            False,
            checked,
            None,
            "the chain head signature does not match (altered, or the oldest "
            "encryption key that signed it was removed)",
        )
    return Verification(True, checked, last=(last_id, last_hash) if last_id else None)


def head_signed_by(session: DbSession, keyring: Keyring) -> bool:
    """Whether the chain head, if signed, is signed with this key ring's MAC key.

    That key derives from the ring's last entry, as the recovery codes' does: a ring without
    it would refuse every recovery code and re-sign the head at the next event, wiping the
    evidence. ``authsvc serve`` and ``worker`` refuse to start then. An unsigned head passes:
    no authsvc has started on the database yet, and this start signs it
    (``sign_head_at_start``)."""
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None or not head.head_mac:
        return True
    return hmac.compare_digest(head.head_mac, head_mac(keyring, head))


@dataclass(frozen=True, slots=True)
class PruneResult:
    pruned: int
    through_id: int | None
    # Set when the events to prune do not verify: nothing was pruned.
    broken: Verification | None = None


def _broken_prefix(
    session: DbSession, head: AuditChainHead, *, through: int
) -> Verification | None:
    """Whether the events from the anchor through ``through`` fail the chain: pruning
    anchors the chain on what they hold, so that it verifies again whatever they were made
    to hold (recent events backdated past the retention, say)."""
    expected, previous_id, checked = head.anchor_hash, head.anchor_id, 0
    for row in _rows(session, through_id=through, batch=2000, after=head.anchor_id):
        if row.prev_hash != expected:
            what = f"event {previous_id} was altered or" if previous_id else "an event before it"
            reason = f"event {row.id} does not follow its predecessor: {what} deleted or altered"
            return Verification(False, checked, row.id, reason)
        if row_digest(row.prev_hash, row) != row.row_hash:
            return Verification(False, checked, row.id, f"event {row.id} was altered")
        expected, previous_id, checked = row.row_hash, row.id, checked + 1
    return None


def prune(
    session: DbSession, *, before: datetime, now: datetime, batch: int | None = None
) -> PruneResult:
    """Delete events older than ``before`` (at most ``batch`` of them, oldest first); the head
    keeps the hash of the last one deleted, so what remains still verifies. The pruning itself
    is recorded in the trail. Writers wait for the chain lock meanwhile: keep batches small and
    commit between them."""
    append_pending(session)
    head = _checked_head(session, now=now)
    # A prefix of the chain, and only events older than ``before``: ids follow the order of
    # chaining, times the callers' clocks (a drain's start, a batch's, another instance's), so
    # an event still inside retention can have a lower id than older ones. The prefix ends
    # before the first such event.
    first_kept = session.scalar(
        select(func.min(AuditEvent.id)).where(
            AuditEvent.occurred_at >= before, AuditEvent.id <= head.last_id
        )
    )
    last = head.last_id if first_kept is None else first_kept - 1
    oldest = select(AuditEvent.id).where(AuditEvent.id <= last).order_by(AuditEvent.id)
    if batch is not None:
        oldest = oldest.limit(batch)
    through = session.scalar(select(func.max(oldest.subquery().c.id)))
    if through is None:
        return PruneResult(pruned=0, through_id=None)
    broken = _broken_prefix(session, head, through=through)
    if broken is not None:
        return PruneResult(pruned=0, through_id=None, broken=broken)
    anchor_hash = session.scalar(select(AuditEvent.row_hash).where(AuditEvent.id == through))
    assert anchor_hash is not None
    pruned = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.id <= through)
    )
    # The pruning's own event is written before the rows go: when every event went first,
    # SQLite (a new row's id is the largest + 1) numbered it, and each event after it, from 1
    # again, before the new anchor, and the trail never verified again.
    record(
        session,
        type="audit.pruned",
        outcome="success",
        now=now,
        details={"through_id": through, "pruned": pruned, "before": before.isoformat()},
    )
    append_pending(session)
    session.execute(delete(AuditEvent).where(AuditEvent.id <= through))
    head.anchor_id = through
    head.anchor_hash = anchor_hash
    _sign(session, head)
    session.flush()
    return PruneResult(pruned=int(pruned or 0), through_id=through)
