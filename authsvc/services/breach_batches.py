"""The batches of a breach response: one committed transaction each, resumable at any point.

A campaign goes through up to three phases, each made of batches that the campaign row (locked
by whoever runs the batch: an outbox worker, another worker after a crash, or the CLI) records
the progress of in the same transaction:

- ``walk`` (predicate selectors on PostgreSQL): flag the accounts page by page in the order they
  lie on disk (``breach_walk``); ``next_page`` is the place.
- ``enroll`` (predicate selectors): write the campaign's target rows in one sorted statement.
- ``apply`` (every campaign): ranges of the targets in user-id order, ``(cursor, hi]``, their
  ends fixed when the phase begins (``boundaries``: every ``batch_size``-th target id). Each
  flags its accounts not flagged yet (list selectors; accounts the walk missed; every account
  where there was no walk) and stamps their target rows, then revokes the sessions and pending
  login steps of all of them and removes their second factors. Each effect is one SQL
  statement over the range. An account whose factors it removed and that has no notice queued
  (its user set a new password between the walk and the enrolment) is mailed about the
  removed factors (``breach_notices.mail_factors_removed``).

So every targeted account is flagged exactly once, and a batch is applied entirely or not at
all. Cancelling (or failing) stops the flagging; a campaign that walked still finishes, as its
follow-up, the enrolment and the session revocation of the accounts it had flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session as DbSession

from authsvc.db import UTCDateTime
from authsvc.models import (
    RecoveryCode,
    Session,
    TotpFactor,
    User,
    UserToken,
    WebauthnCredential,
)
from authsvc.models.breach import BreachCampaign, BreachTarget
from authsvc.services import audit, breach_notices, outbox, user_tokens
from authsvc.services import breach_walk as walk
from authsvc.services.breach_sql import (
    ACTIVE,
    LIST_SELECTORS,
    NO_SYNC,
    between,
    exposed,
    flag_where_due,
    in_range,
    is_postgresql,
    rowcount,
)
from authsvc.services.context import Deps

__all__ = [
    "ACTIVE",
    "BatchOutcome",
    "has_work",
    "lock_targets",
    "record_password_set",
    "run_next_batch",
]

REVOKED_REASON = "breach_response"
# Login steps that must not outlive a forced reset.
PENDING_TOKEN_PURPOSES = user_tokens.LOGIN_STEP_PURPOSES
# The sweep looks at sessions created at most this long before the campaign started: a login
# that read an account before its batch committed began no earlier than that.
SWEEP_MARGIN = timedelta(minutes=5)
FOLLOW_UP_FACTOR = 5  # accounts per apply batch after a walk, in batch sizes


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What ``run_next_batch`` did; ``busy`` when another runner holds the campaign, ``more``
    when it has batches left."""

    status: str
    processed: int = 0
    busy: bool = False
    more: bool = False

    @property
    def finished(self) -> bool:
        return not self.busy and not self.more


def has_work(campaign: BreachCampaign) -> bool:
    """Batches are left: the campaign is active, or it was cancelled (or failed) after flagging
    accounts whose sessions and notices are still to be seen to (a walked campaign's
    follow-up)."""
    if campaign.status in ACTIVE:
        return True
    return (
        campaign.status in ("cancelled", "failed")
        and campaign.last_page is not None
        and campaign.phase not in (None, "done")
    )


def run_next_batch(
    session: DbSession, deps: Deps, *, campaign_id: str, now: datetime
) -> BatchOutcome:
    """Apply the next batch of the campaign, in the caller's transaction."""
    campaign = session.scalars(
        select(BreachCampaign)
        .where(BreachCampaign.id == campaign_id)
        .with_for_update(skip_locked=True)  # dropped on SQLite, which serialises writers
        .execution_options(populate_existing=True)
    ).one_or_none()
    if campaign is None:
        status = session.scalar(
            select(BreachCampaign.status).where(BreachCampaign.id == campaign_id)
        )
        return BatchOutcome(status=status or "missing", busy=status in ACTIVE)
    if not has_work(campaign):
        return BatchOutcome(status=campaign.status)
    if campaign.status == "pending":
        _start(session, deps, campaign, now=now)
    elif campaign.phase is None:  # started before phases existed: its targets are written
        _begin_apply(
            session, campaign, size=deps.settings.breach_batch_size, after=campaign.cursor or ""
        )
        _queue_notices(session, deps, campaign, now=now)
    size = deps.settings.breach_batch_size
    details: dict[str, Any]
    if campaign.phase == "walk":
        details = _walk(session, campaign, size=size, now=now)
    elif campaign.phase == "enroll":
        details = _enroll(session, campaign, size=size, now=now)
    else:
        details = _apply(session, deps, campaign, now=now)
    campaign.batches += 1
    campaign.failures = 0
    audit.record(
        session,
        type="breach.batch_processed",
        outcome="success",
        now=now,
        admin_key_id=campaign.created_by_key_id,
        details={"campaign_id": campaign.id, "batch": campaign.batches, **details},
    )
    if campaign.phase == "done" and campaign.status in ACTIVE:
        finish(session, deps, campaign=campaign, now=now)
    return BatchOutcome(
        status=campaign.status, processed=details["accounts"], more=has_work(campaign)
    )


def _start(session: DbSession, deps: Deps, campaign: BreachCampaign, *, now: datetime) -> None:
    campaign.status, campaign.started_at = "running", now
    if campaign.selector in LIST_SELECTORS:
        _begin_apply(session, campaign, size=deps.settings.breach_batch_size)
    elif walk.can_walk(session):
        campaign.phase = "walk"
        walk.start_walk(session, campaign)
    else:
        campaign.phase = "enroll"
    _queue_notices(session, deps, campaign, now=now)


def _queue_notices(
    session: DbSession, deps: Deps, campaign: BreachCampaign, *, now: datetime
) -> None:
    """Start the campaign's notice job (``breach_notices``)."""
    if campaign.notify:
        outbox.enqueue(
            session,
            deps.keyring,
            kind="breach_notices",
            payload={"campaign_id": campaign.id, "after": ""},
            now=now,
        )


def _walk(
    session: DbSession, campaign: BreachCampaign, *, size: int, now: datetime
) -> dict[str, Any]:
    if campaign.status not in ACTIVE:  # cancelled or failed: flag no further page
        campaign.last_page = campaign.next_page
        campaign.phase = "enroll"
        return {"phase": "walk", "accounts": 0, "cancelled": True}
    walked = walk.walk_batch(session, campaign, batch_size=size, now=now)
    campaign.processed += walked.flagged
    if walk.walk_done(campaign):
        campaign.phase = "enroll"
    return {"phase": "walk", "accounts": walked.flagged, "pages": [walked.first, walked.end]}


def _enroll(
    session: DbSession, campaign: BreachCampaign, *, size: int, now: datetime
) -> dict[str, Any]:
    enrolled = walk.enroll(session, campaign, now=now, cancelled=campaign.status not in ACTIVE)
    campaign.processed = enrolled.processed
    campaign.notices_queued += enrolled.notices
    # After a walk the apply batches flag (and lock) almost no account: they mostly revoke
    # sessions, which costs less in larger ranges (fewer visits to each page of sessions).
    walked = campaign.last_page is not None
    _begin_apply(
        session, campaign, size=size * FOLLOW_UP_FACTOR if walked else size, analyze_above=size
    )
    return {
        "phase": "enroll",
        "accounts": enrolled.accounts,
        "processed": enrolled.processed,
        "notices_queued": enrolled.notices,
    }


def _begin_apply(
    session: DbSession,
    campaign: BreachCampaign,
    *,
    size: int,
    after: str = "",
    analyze_above: int | None = None,
) -> None:
    """Fix the ends of the apply batches after ``after``: every ``size``-th target id (one
    index scan). On PostgreSQL the targets table is analyzed first when the campaign targets
    more accounts than ``analyze_above`` (one batch, ``size``, unless given): the planner must
    know how many rows a campaign has (a table written in bulk a moment ago has no statistics
    yet, and the notice job and the batches would then sort whole campaigns where an index
    range does). A smaller campaign's statements read no more than a batch of target rows
    whatever the planner expects, and ANALYZE samples a table that holds every campaign's
    targets: every force-reset paid for it (58-85 ms with 100,000-300,000 finished campaigns)."""
    if is_postgresql(session) and campaign.targeted > (analyze_above or size):
        session.execute(text("ANALYZE breach_targets"))
    numbered = (
        select(
            BreachTarget.user_id.label("id"),
            func.row_number().over(order_by=BreachTarget.user_id).label("n"),
        )
        .where(in_range(campaign, after, None))
        .subquery()
    )
    ends = session.scalars(
        select(numbered.c.id).where(numbered.c.n % size == 0).order_by(numbered.c.n)
    )
    campaign.phase, campaign.cursor, campaign.boundaries = "apply", after, json.dumps(list(ends))


def _apply(
    session: DbSession, deps: Deps, campaign: BreachCampaign, *, now: datetime
) -> dict[str, Any]:
    lo = campaign.cursor or ""
    ends: list[str] = json.loads(campaign.boundaries or "[]")
    hi = ends[0] if ends else None  # None: the rest
    flagged = queued = 0
    if campaign.status in ACTIVE:
        flagged, queued = _flag_targets(session, campaign, lo=lo, hi=hi, now=now)
    users = select(BreachTarget.user_id).where(
        in_range(campaign, lo, hi), BreachTarget.processed_at.is_not(None)
    )
    # Target rows, second factors, login steps, then sessions: the order in which the
    # account's own reset writes them (its target rows locked first, a factor's row as its
    # answer is checked, then accounts.set_password's tokens and sessions). These rows, of many
    # accounts, are written without the accounts' locks, and another order deadlocked against
    # a reset.
    mfa: dict[str, int] = {}
    if campaign.reset_mfa:
        removed = _stamp_factors_removed(session, campaign, lo=lo, hi=hi, now=now)
        reset_second_factors(session, users)
        mfa = {"factors_removed": removed, "factor_notices": 0}
        if campaign.notify and removed:
            mfa["factor_notices"] = _mail_factors_removed(
                session, deps, campaign, lo=lo, hi=hi, now=now
            )
    # An account that completed its reset since it was flagged (after a walk, before its range)
    # had its login steps and sessions ended by that reset: those it has now are the new
    # password's.
    _revoke_pending_tokens(session, users.where(BreachTarget.reset_at.is_(None)), now)
    revoked = 0
    if campaign.revoke_sessions:
        revoked = revoke_sessions(session, campaign, now, lo=lo, hi=hi)
    campaign.cursor, campaign.boundaries = hi, json.dumps(ends[1:])
    campaign.processed += flagged
    campaign.sessions_revoked += revoked
    campaign.notices_queued += queued
    if hi is None:
        campaign.phase = "done"
    return {
        "phase": "apply",
        "accounts": flagged,
        "sessions_revoked": revoked,
        "notices_queued": queued,
        **mfa,
        "user_id_range": [lo or None, hi],
    }


def _stamp_factors_removed(
    session: DbSession, campaign: BreachCampaign, *, lo: str, hi: str | None, now: datetime
) -> int:
    """Stamp ``factors_removed_at`` on the flagged targets of the range whose accounts have a
    second factor (an authenticator app or a security key), before the batch removes them;
    how many. The notice job reads it when it withdraws a notice."""
    # The conditions of totp.active_exists and webauthn.credentials_exist (importing those
    # modules here would be circular: through factors, they import what imports this one).
    has_factor = or_(
        exists().where(
            TotpFactor.user_id == BreachTarget.user_id, TotpFactor.confirmed_at.is_not(None)
        ),
        exists().where(WebauthnCredential.user_id == BreachTarget.user_id),
    )
    result = session.execute(
        update(BreachTarget)
        .where(in_range(campaign, lo, hi), BreachTarget.processed_at.is_not(None), has_factor)
        .values(factors_removed_at=now),
        execution_options=NO_SYNC,
    )
    return rowcount(result)


def _mail_factors_removed(
    session: DbSession,
    deps: Deps,
    campaign: BreachCampaign,
    *,
    lo: str,
    hi: str | None,
    now: datetime,
) -> int:
    """Mail the owners of the live accounts of the range whose factors the batch removed and
    that have no notice queued (a reset after the walk flagged them wrote their target rows
    without one), which would have told them; how many. Disabled accounts get no mail, as they
    get no notice."""
    owners = session.scalars(
        select(User.email)
        .join(BreachTarget, BreachTarget.user_id == User.id)
        .where(
            in_range(campaign, lo, hi),
            BreachTarget.factors_removed_at.is_not(None),
            BreachTarget.notice_queued_at.is_(None),
            User.disabled_at.is_(None),
        )
        .order_by(User.id)
    ).all()
    for email in owners:
        breach_notices.mail_factors_removed(session, deps, to=email, now=now)
    return len(owners)


def _flag_targets(
    session: DbSession, campaign: BreachCampaign, *, lo: str, hi: str | None, now: datetime
) -> tuple[int, int]:
    """Flag the accounts of the range whose target rows are not processed yet and stamp the
    rows of the exposed ones; (accounts, notices queued). An account that set a new password
    since the campaign was created, or was deleted, is left unstamped: not flagged, noticed,
    signed out or counted. Disabled accounts are flagged but get no notice (their reset link
    could not work)."""
    waiting = and_(in_range(campaign, lo, hi), BreachTarget.processed_at.is_(None))
    session.execute(
        update(User)
        .where(User.id.in_(select(BreachTarget.user_id).where(waiting)))
        .values(flag_where_due(campaign, now)),
        execution_options=NO_SYNC,
    )
    stamp = literal(now, UTCDateTime())
    nothing = literal(None, UTCDateTime())
    queued: Any = nothing
    if campaign.notify:
        enabled = exists().where(User.id == BreachTarget.user_id, User.disabled_at.is_(None))
        queued = case((enabled, stamp), else_=nothing)
    flagged = exists().where(User.id == BreachTarget.user_id, exposed(campaign))
    stamped = session.execute(
        update(BreachTarget)
        .where(waiting, flagged)
        .values(processed_at=stamp, notice_queued_at=queued)
        .returning(BreachTarget.notice_queued_at),
        execution_options=NO_SYNC,
    ).all()
    return len(stamped), sum(1 for (at,) in stamped if at is not None)


def finish(
    session: DbSession,
    deps: Deps,
    *,
    campaign: BreachCampaign,
    now: datetime,
    status: str = "completed",
    error: str | None = None,
) -> None:
    campaign.status, campaign.finished_at = status, now
    if error is not None:
        campaign.last_error = error[:500]
    audit.record(
        session,
        type=f"breach.campaign_{status}",
        outcome=status,
        now=now,
        admin_key_id=campaign.created_by_key_id,
        details={
            "campaign_id": campaign.id,
            "processed": campaign.processed,
            "sessions_revoked": campaign.sessions_revoked,
            "notices_queued": campaign.notices_queued,
            "error": error,
        },
    )
    if campaign.revoke_sessions and campaign.processed:
        queue_sweep(session, deps, campaign, now=now)


def queue_sweep(session: DbSession, deps: Deps, campaign: BreachCampaign, *, now: datetime) -> None:
    outbox.enqueue(
        session,
        deps.keyring,
        kind="breach_sweep",
        payload={"campaign_id": campaign.id},
        now=now,
        delay=deps.settings.breach_sweep_delay,
    )


def revoke_sessions(
    session: DbSession, campaign: BreachCampaign, now: datetime, *, lo: str, hi: str | None
) -> int:
    """Revoke the live sessions of the processed targets in ``(lo, hi]`` that have not reset
    their password since (the reset revoked the sessions it found; later ones are the new
    password's): the range lets the database read the sessions' user-id index in order, and
    each such session looks up its own target row."""
    processed = exists().where(
        in_range(campaign, lo, hi),  # bounds the lookup whatever the planner knows of the table
        BreachTarget.user_id == Session.user_id,
        BreachTarget.processed_at.is_not(None),
        BreachTarget.reset_at.is_(None),
    )
    result = session.execute(
        update(Session)
        .where(between(Session.user_id, lo, hi), Session.revoked_at.is_(None), processed)
        .values(revoked_at=now, revoked_reason=REVOKED_REASON),
        execution_options=NO_SYNC,
    )
    return rowcount(result)


def _revoke_pending_tokens(session: DbSession, users: Select[Any], now: datetime) -> None:
    session.execute(
        update(UserToken)
        .where(
            UserToken.user_id.in_(users),
            UserToken.purpose.in_(PENDING_TOKEN_PURPOSES),
            UserToken.used_at.is_(None),
        )
        .values(used_at=now),
        execution_options=NO_SYNC,
    )


def reset_second_factors(session: DbSession, users: Select[Any]) -> None:
    """Remove every TOTP factor, recovery code and WebAuthn credential of ``users``."""
    for model in (TotpFactor, RecoveryCode, WebauthnCredential):
        session.execute(delete(model).where(model.user_id.in_(users)), execution_options=NO_SYNC)


# --- after the batches -------------------------------------------------------------------


def sweep_sessions(session: DbSession, *, campaign_id: str, now: datetime) -> int:
    """Revoke sessions that logins racing a batch created for accounts that are still flagged
    (such a login read the account just before its batch committed)."""
    campaign = session.get(BreachCampaign, campaign_id)
    if campaign is None or not campaign.revoke_sessions or campaign.started_at is None:
        return 0
    if campaign.mode == "invalidate":
        flagged = User.password_invalidated_at.is_not(None)
    else:
        flagged = User.password_change_required.is_(True)
    result = session.execute(
        update(Session)
        .where(
            Session.revoked_at.is_(None),
            Session.created_at >= campaign.started_at - SWEEP_MARGIN,
            exists().where(
                BreachTarget.campaign_id == campaign.id,
                BreachTarget.user_id == Session.user_id,
                BreachTarget.processed_at.is_not(None),
            ),
            exists().where(User.id == Session.user_id, flagged),
        )
        .values(revoked_at=now, revoked_reason=REVOKED_REASON),
        execution_options=NO_SYNC,
    )
    swept = rowcount(result)
    campaign.sessions_revoked += swept
    audit.record(
        session,
        type="breach.sessions_swept",
        outcome="success",
        now=now,
        admin_key_id=campaign.created_by_key_id,
        details={"campaign_id": campaign.id, "sessions_revoked": swept},
    )
    return swept


def lock_targets(session: DbSession, *, user_id: str) -> None:
    """Lock the account's target rows that ``record_password_set`` will stamp (FOR NO KEY
    UPDATE, in campaign order). A reset or change of a flagged account takes them after the
    account's row and before any of its tokens: a notice run holds a target row while it
    replaces the account's reset tokens (``breach_notices``), so a reset that had spent its
    link first and then waited for that row would deadlock with it."""
    session.execute(
        select(BreachTarget.campaign_id)
        .where(*_completable(user_id))
        .order_by(BreachTarget.campaign_id)
        .with_for_update(key_share=True)
    )


def record_password_set(session: DbSession, *, user_id: str, now: datetime) -> None:
    """A flagged user set a new password: count the forced reset as completed in every campaign
    that flagged the account (``accounts`` calls this when it clears the flags), a walked one
    that has not enrolled the account yet too (``breach_walk.record_walked``)."""
    walk.record_walked(session, user_id=user_id)
    session.execute(
        update(BreachTarget).where(*_completable(user_id)).values(reset_at=now),
        execution_options=NO_SYNC,
    )


def _completable(user_id: str) -> tuple[Any, ...]:
    """SQL: the account's target rows that are flagged and not reset yet. The campaigns come
    from a subquery, not a list of ids: every forced reset is a campaign of its own, and more
    than 65,535 ids are more than a statement may carry. The database looks each campaign up in
    the primary key on (campaign_id, user_id) (breach_targets has no index on user_id alone),
    or, with very many campaigns and few targets, reads the table if that costs less."""
    started = select(BreachCampaign.id).where(BreachCampaign.started_at.is_not(None))
    return (
        BreachTarget.campaign_id.in_(started),
        BreachTarget.user_id == user_id,
        BreachTarget.processed_at.is_not(None),
        BreachTarget.reset_at.is_(None),
    )
