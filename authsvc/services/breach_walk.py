"""Flagging every account of a predicate campaign (``all``, ``created_before``,
``password_set_before``) in the order the accounts lie on disk, then writing its targets.

Account ids are random, so a batch of ids touches rows all over the users table: every batch
would dirty most of its pages, and after each checkpoint PostgreSQL logs each page whole again.
On PostgreSQL (14 or newer, for TID range scans) the campaign therefore first *walks* the table:
each batch flags the due accounts of a range of heap pages (``ctid`` between two pages), so each
page is written once. The users table keeps half of every page free (fillfactor 50, migration
0006), so the new row versions stay on their page: HOT updates, no index entries. Each batch also
reads the pages of the batch before it, which lets PostgreSQL prune the old row versions while
those pages are still in memory (otherwise the next reader prunes them, long after the next
checkpoint, and logs each page whole again).

Then one statement *enrolls* the campaign's accounts: it writes their ``breach_targets`` rows in
user-id order, so the table's primary key grows at its right edge. Accounts that already carry
the flag (or set a new password since the campaign began) are recorded as processed at once; an
account the walk could not see (an UPDATE by someone else moved its row onto a page already
walked) is written unprocessed, and the batches over the targets that follow (``apply``) flag it.
An account whose user sets a new password after the walk flagged it and before the enrolment
gets its target row from that reset (``record_walked``): flagged when the walk flagged it, and
reset, with no notice (when the campaign removes second factors, the batch that removes the
account's mails that instead). The enrolment leaves such rows as they are and counts them.
Everywhere else (SQLite, older PostgreSQL) enrolment comes first and ``apply`` flags everyone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session as DbSession

from authsvc.db import UTCDateTime
from authsvc.models import User
from authsvc.models.breach import BreachCampaign
from authsvc.services.breach_sql import (
    COUNTED,
    NO_SYNC,
    TARGETS,
    claiming,
    due,
    exposed,
    flag,
    flagged_at,
    flagged_since_start,
    is_postgresql,
    membership,
    rowcount,
    walked_not_enrolled,
)

MIN_SERVER_VERSION = 140000  # TID range scans
DEFAULT_ROWS_PER_PAGE = 20  # before ANALYZE has measured the table
_PAGES = text(
    "SELECT pg_relation_size('users') / current_setting('block_size')::int, "
    "(SELECT reltuples / NULLIF(relpages, 0) FROM pg_class WHERE oid = 'users'::regclass)"
)
_ON_PAGES = "users.ctid >= CAST(:first AS tid) AND users.ctid < CAST(:end AS tid)"


@dataclass(frozen=True, slots=True)
class Walked:
    """One walk batch: heap pages ``[first, end)`` and how many accounts it flagged."""

    first: int
    end: int
    flagged: int


@dataclass(frozen=True, slots=True)
class Enrolled:
    accounts: int  # target rows written
    processed: int  # ... of which already flagged (or not exposed)
    notices: int  # ... of which get a notice


def can_walk(session: DbSession) -> bool:
    if not is_postgresql(session):
        return False
    version = session.execute(text("SHOW server_version_num")).scalar_one()
    return int(version) >= MIN_SERVER_VERSION


def start_walk(session: DbSession, campaign: BreachCampaign) -> None:
    """Fix the walk's end: the pages of the users table now (rows on later pages are accounts
    created since, or moved rows, which enrolment finds)."""
    pages, _ = session.execute(_PAGES).one()
    campaign.next_page, campaign.last_page = 0, int(pages)


def write_behind(session: DbSession) -> None:
    """Have the kernel write out, as they go, the pages this transaction evicts from
    PostgreSQL's buffers (``backend_flush_after``, this transaction only). A campaign dirties
    gigabytes; left to pile up in the page cache they reach the disk all at once when the next
    checkpoint syncs the files, and every login's commit waits behind that write meanwhile."""
    session.execute(text("SET LOCAL backend_flush_after = '256kB'"))


def walk_batch(
    session: DbSession, campaign: BreachCampaign, *, batch_size: int, now: datetime
) -> Walked:
    """Flag the due accounts on the next range of pages; move ``next_page`` past it."""
    assert campaign.next_page is not None and campaign.last_page is not None
    write_behind(session)
    _, measured = session.execute(_PAGES).one()
    rows_per_page = measured if measured and measured > 0 else DEFAULT_ROWS_PER_PAGE
    step = max(1, math.ceil(batch_size / rows_per_page))
    first = campaign.next_page
    end = min(first + step, campaign.last_page)
    if first > 0:  # prune the previous batch's pages while they are in memory
        session.execute(
            select(func.count()).select_from(User).where(_pages(max(0, first - step), first))
        )
    result = session.execute(
        update(User)
        .where(_pages(first, end), membership(campaign), due(campaign))
        .values(flag(campaign, now)),
        execution_options=NO_SYNC,
    )
    campaign.next_page = end
    return Walked(first=first, end=end, flagged=rowcount(result))


def walk_done(campaign: BreachCampaign) -> bool:
    return (campaign.next_page or 0) >= (campaign.last_page or 0)


def enroll(
    session: DbSession, campaign: BreachCampaign, *, now: datetime, cancelled: bool = False
) -> Enrolled:
    """Write the campaign's target rows, in user-id order, in one statement. A cancelled
    campaign enrolls only the accounts its walk flagged (they still get their notices)."""
    stamp = literal(now, UTCDateTime())
    nothing = literal(None, UTCDateTime())
    # Flagged already (by the walk or an earlier campaign), and exposed: a password set since
    # the campaign was created leaves the row unprocessed, and its batch does not stamp it.
    handled = literal(True) if cancelled else and_(exposed(campaign), ~due(campaign))
    processed = case((handled, stamp), else_=nothing)
    queued = (
        case((and_(handled, User.disabled_at.is_(None)), stamp), else_=nothing)
        if campaign.notify
        else nothing
    )
    who = membership(campaign)
    if cancelled:
        who = and_(who, flagged_since_start(campaign))
    rows = select(literal(campaign.id), User.id, processed, queued).where(who).order_by(User.id)
    columns = ["campaign_id", "user_id", "processed_at", "notice_queued_at"]
    statement = insert(TARGETS).from_select(columns, rows)
    if is_postgresql(session):
        write_behind(session)
        # The rows that resets wrote since the walk flagged their accounts (``record_walked``)
        # stay as they are: flagged, reset, no notice.
        written = (
            pg_insert(TARGETS)
            .from_select(columns, rows)
            .on_conflict_do_nothing(index_elements=[TARGETS.c.campaign_id, TARGETS.c.user_id])
            .returning(TARGETS.c.processed_at, TARGETS.c.notice_queued_at)
            .cte("enrolled")
        )
        accounts, done, notices = session.execute(
            select(
                func.count(),
                func.count(written.c.processed_at),
                func.count(written.c.notice_queued_at),
            ).select_from(written)
        ).one()
        # Counted after the INSERT, which waited for any reset writing one of them: until the
        # enrolment only those resets write the campaign's rows, each one reset_at (the
        # partial index ix_breach_targets_reset holds them).
        reset = session.execute(
            select(func.count())
            .select_from(TARGETS)
            .where(TARGETS.c.campaign_id == campaign.id, TARGETS.c.reset_at.is_not(None))
        ).scalar_one()
        return Enrolled(accounts=accounts + reset, processed=done + reset, notices=notices)
    accounts = rowcount(session.execute(statement, execution_options=COUNTED))
    done, notices = session.execute(
        select(func.count(TARGETS.c.processed_at), func.count(TARGETS.c.notice_queued_at)).where(
            TARGETS.c.campaign_id == campaign.id
        )
    ).one()
    return Enrolled(accounts=accounts, processed=done, notices=notices)


def record_walked(session: DbSession, *, user_id: str) -> None:
    """The account, flagged, is about to get a new password: write its target row in each
    campaign whose walk flagged it and that has not enrolled it yet, processed when the walk
    flagged it, for the reset to stamp (``breach_batches.record_password_set``). The enrolment
    would find a password set since the campaign began, and the campaign would count the
    account neither flagged nor reset. A handful of campaigns (the partial index of
    ``claiming``); an enrolment writing the same row meanwhile has it first."""
    if not is_postgresql(session):  # only PostgreSQL walks
        return
    walking = session.scalars(
        select(BreachCampaign).where(
            claiming(), walked_not_enrolled(), BreachCampaign.started_at.is_not(None)
        )
    ).all()
    for campaign in walking:
        flagged = select(literal(campaign.id), User.id, flagged_at(campaign)).where(
            User.id == user_id, membership(campaign), flagged_since_start(campaign)
        )
        session.execute(
            pg_insert(TARGETS)
            .from_select(["campaign_id", "user_id", "processed_at"], flagged)
            .on_conflict_do_nothing(index_elements=[TARGETS.c.campaign_id, TARGETS.c.user_id]),
            execution_options=NO_SYNC,
        )


def _pages(first: int, end: int) -> Any:
    return text(_ON_PAGES).bindparams(first=f"({first},0)", end=f"({end},0)")
