"""The set-based engine of a breach response: one batch of accounts per transaction.

A batch is a range of user ids, ``(cursor, hi]``, in id order (the ends are fixed when the
campaign starts: every Nth id). Every effect on the batch is one
SQL statement over that range (flag the users, revoke their sessions and pending login tokens,
remove their second factors, queue their notices), and the campaign row's ``cursor`` moves in
the same transaction. So a batch is applied entirely or not at all, and whoever runs the next
batch (an outbox worker, another worker after a crash, or the CLI) continues right after the
last committed one: every targeted account is flagged exactly once.

Notices. A reset link needs a per-user secret, and no secret may sit in the database in plain
text, so links are not made here. Each batch writes, with one ``INSERT ... SELECT``, one
``breach_notice`` outbox row per account to notify: a *ticket* whose encrypted payload names
only the campaign (one ciphertext for all its tickets) and whose ``available_at`` spaces the
tickets at the configured rate. When a ticket comes due, ``send_notice`` claims one account of
the campaign that was not notified yet (a conditional UPDATE: each account is notified at most
once), issues its reset token (only the SHA-256 is stored) and queues the mail.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Interval,
    Select,
    Table,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session as DbSession

from authsvc.db import UTCDateTime
from authsvc.models import (
    OutboxMessage,
    RecoveryCode,
    Session,
    TotpFactor,
    User,
    UserToken,
    WebauthnCredential,
)
from authsvc.models.breach import BreachCampaign, BreachTarget
from authsvc.services import audit, notices, outbox, user_tokens
from authsvc.services.context import Deps

LIST_SELECTORS = frozenset({"emails", "user_ids"})
ACTIVE = ("pending", "running")
REVOKED_REASON = "breach_response"
# Login steps that must not outlive a forced reset.
PENDING_TOKEN_PURPOSES = ("mfa", "change_password", "mfa_enrollment")
# The sweep looks at sessions created at most this long before the campaign started: a login
# that read an account before its batch committed began no earlier than that.
SWEEP_MARGIN = timedelta(minutes=5)
NO_SYNC = {"synchronize_session": False}
COUNTED = {"preserve_rowcount": True}  # INSERT ... SELECT rowcount on every driver
TARGETS = cast(Table, BreachTarget.__table__)
OUTBOX = cast(Table, OutboxMessage.__table__)
_OUTBOX_AAD = b"outbox"  # as authsvc.services.outbox seals payloads

notices.register(
    "breach_notice_invalidate",
    "Security notice: your password was reset",
    "We are writing about a security incident that may have exposed data of your account.\n\n"
    "As a precaution, your password was reset: the old one no longer works, and you can sign "
    "in again only after choosing a new one.{actions}\n\n"
    "Choose a new password within {ttl} by opening:\n{link}\n\n"
    'If the link has expired, use "Forgot password" on the sign-in page to get a new one. '
    "We will never ask you for your password by mail.\n",
)
notices.register(
    "breach_notice_change",
    "Security notice: please change your password",
    "We are writing about a security incident that may have exposed data of your account.\n\n"
    "As a precaution, you will be asked to choose a new password the next time you sign "
    "in.{actions}\n\n"
    "You can also choose a new password now, within {ttl}, by opening:\n{link}\n\n"
    "We will never ask you for your password by mail.\n",
)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What ``run_next_batch`` did; ``busy`` when another runner holds the campaign."""

    status: str
    processed: int = 0
    busy: bool = False

    @property
    def finished(self) -> bool:
        return not self.busy and self.status not in ACTIVE


def membership(campaign: BreachCampaign, user: Any = User) -> ColumnElement[bool]:
    """SQL: is ``user`` (the users table or an alias of it) one of the campaign's targets?"""
    if campaign.selector in LIST_SELECTORS:
        listed: ColumnElement[bool] = user.id.in_(
            select(BreachTarget.user_id).where(BreachTarget.campaign_id == campaign.id)
        )
        return listed
    snapshot: ColumnElement[bool] = user.created_at <= campaign.created_at
    if campaign.selector == "created_before":
        return and_(snapshot, user.created_at < campaign.selector_before)
    if campaign.selector == "password_set_before":
        return and_(snapshot, user.password_set_at < campaign.selector_before)
    return snapshot


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)


# --- batches -----------------------------------------------------------------------------


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
    if campaign.status not in ACTIVE:
        return BatchOutcome(status=campaign.status)
    if campaign.status == "pending":
        campaign.status, campaign.started_at = "running", now
        campaign.boundaries = json.dumps(
            _boundaries(session, campaign, deps.settings.breach_batch_size)
        )
    ends: list[str] = json.loads(campaign.boundaries or "[]")
    lo = campaign.cursor or ""
    hi = ends[campaign.batches] if campaign.batches < len(ends) else None  # None: the rest
    processed = _flag_batch(session, campaign, lo=lo, hi=hi, now=now)
    users = select(BreachTarget.user_id).where(_in_range(campaign, lo, hi))
    revoked = revoke_sessions(session, users, now, lo=lo, hi=hi) if campaign.revoke_sessions else 0
    _revoke_pending_tokens(session, users, now)
    if campaign.reset_mfa:
        reset_second_factors(session, users)
    queued = _queue_tickets(session, deps, campaign, lo=lo, hi=hi, now=now)
    campaign.batches += 1
    audit.record(
        session,
        type="breach.batch_processed",
        outcome="success",
        now=now,
        admin_key_id=campaign.created_by_key_id,
        details={
            "campaign_id": campaign.id,
            "batch": campaign.batches,
            "accounts": processed,
            "sessions_revoked": revoked,
            "notices_queued": queued,
            "user_ids": list(session.scalars(users.order_by(BreachTarget.user_id))),
        },
    )
    campaign.cursor, campaign.failures = hi, 0
    campaign.processed += processed
    campaign.sessions_revoked += revoked
    campaign.notices_queued += queued
    if hi is None:
        finish(session, deps, campaign=campaign, now=now)
    return BatchOutcome(status=campaign.status, processed=processed)


def _boundaries(session: DbSession, campaign: BreachCampaign, size: int) -> list[str]:
    """Every ``size``-th candidate id, in the database's own order (one index scan)."""
    ids: Select[Any]
    if campaign.selector in LIST_SELECTORS:
        ids = select(
            BreachTarget.user_id.label("id"),
            func.row_number().over(order_by=BreachTarget.user_id).label("n"),
        ).where(BreachTarget.campaign_id == campaign.id)
    else:  # every account: cheap to walk, and a batch filters by the selector itself
        ids = select(User.id.label("id"), func.row_number().over(order_by=User.id).label("n"))
    numbered = ids.subquery()
    return list(
        session.scalars(
            select(numbered.c.id).where(numbered.c.n % size == 0).order_by(numbered.c.n)
        )
    )


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
        outbox.enqueue(
            session,
            deps.keyring,
            kind="breach_sweep",
            payload={"campaign_id": campaign.id},
            now=now,
            delay=deps.settings.breach_sweep_delay,
        )


def _between(column: Any, lo: str, hi: str | None) -> ColumnElement[bool]:
    """``lo < column <= hi``; no upper end for the last batch."""
    above: ColumnElement[bool] = column > lo
    return and_(above, column <= hi) if hi is not None else above


def _in_range(campaign: BreachCampaign, lo: str, hi: str | None) -> ColumnElement[bool]:
    return and_(BreachTarget.campaign_id == campaign.id, _between(BreachTarget.user_id, lo, hi))


def _flag_batch(
    session: DbSession, campaign: BreachCampaign, *, lo: str, hi: str | None, now: datetime
) -> int:
    """Write (predicate selectors) or stamp (list selectors) the batch's target rows and flag
    its accounts; return how many accounts the batch covers. Disabled accounts are flagged but
    get no notice (their reset link could not work)."""
    stamp = literal(now, UTCDateTime())
    no_notice = literal(None, UTCDateTime())
    columns = ["campaign_id", "user_id", "processed_at", "notice_queued_at"]
    if campaign.selector in LIST_SELECTORS:
        enabled = exists().where(User.id == BreachTarget.user_id, User.disabled_at.is_(None))
        result = session.execute(
            update(BreachTarget)
            .where(_in_range(campaign, lo, hi))
            .values(
                processed_at=stamp,
                notice_queued_at=case((enabled, stamp), else_=no_notice)
                if campaign.notify
                else no_notice,
            ),
            execution_options=NO_SYNC,
        )
    elif session.get_bind().dialect.name == "postgresql":
        # One pass over the accounts' rows: flag them and write the target rows from what the
        # UPDATE returns (the accounts are scattered over the table; reading them twice costs).
        flagged = (
            update(User)
            .where(_between(User.id, lo, hi), membership(campaign))
            .values(_flag_values(campaign, now))
            .returning(User.id, User.disabled_at)
            .cte("flagged")
        )
        queued = case((flagged.c.disabled_at.is_(None), stamp), else_=no_notice)
        rows = select(
            literal(campaign.id), flagged.c.id, stamp, queued if campaign.notify else no_notice
        )
        result = session.execute(
            insert(TARGETS).from_select(columns, rows).add_cte(flagged),
            execution_options=COUNTED,
        )
        return _rowcount(result)
    else:
        queued = case((User.disabled_at.is_(None), stamp), else_=no_notice)
        rows = select(
            literal(campaign.id), User.id, stamp, queued if campaign.notify else no_notice
        ).where(_between(User.id, lo, hi), membership(campaign))
        result = session.execute(
            insert(TARGETS).from_select(columns, rows), execution_options=COUNTED
        )
    users = select(BreachTarget.user_id).where(_in_range(campaign, lo, hi))
    session.execute(
        update(User).where(User.id.in_(users)).values(_flag_values(campaign, now)),
        execution_options=NO_SYNC,
    )
    return _rowcount(result)


def _flag_values(campaign: BreachCampaign, now: datetime) -> dict[Any, Any]:
    """SET clauses that flag an account, leaving alone one already flagged (it keeps the earlier
    time) and one that set a new password since the campaign began (that password was never
    exposed)."""
    exposed = or_(User.password_set_at.is_(None), User.password_set_at <= campaign.created_at)
    flag: dict[Any, Any]
    if campaign.mode == "invalidate":
        due = and_(exposed, User.password_invalidated_at.is_(None))
        flag = {User.password_invalidated_at: case((due, now), else_=User.password_invalidated_at)}
    else:
        due = and_(exposed, User.password_change_required.is_(False))
        flag = {
            User.password_change_required: case((due, True), else_=User.password_change_required)
        }
    return {**flag, User.updated_at: case((due, now), else_=User.updated_at)}


def revoke_sessions(
    session: DbSession, users: Select[Any], now: datetime, *, lo: str = "", hi: str | None = None
) -> int:
    """Revoke the live sessions of ``users``, all of whose ids are in ``(lo, hi]`` (the range
    lets the database walk the sessions' user-id index in order)."""
    result = session.execute(
        update(Session)
        .where(
            _between(Session.user_id, lo, hi),
            Session.user_id.in_(users),
            Session.revoked_at.is_(None),
        )
        .values(revoked_at=now, revoked_reason=REVOKED_REASON),
        execution_options=NO_SYNC,
    )
    return _rowcount(result)


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


def _queue_tickets(
    session: DbSession,
    deps: Deps,
    campaign: BreachCampaign,
    *,
    lo: str,
    hi: str | None,
    now: datetime,
) -> int:
    """One ``breach_notice`` outbox row per account to notify, spaced at the notice rate, after
    the tickets this campaign queued before."""
    step = 1.0 / deps.settings.notify_rate_per_second
    start = campaign.started_at or now
    base = max(now, start + timedelta(seconds=campaign.notices_queued * step))
    position = func.row_number().over(order_by=BreachTarget.user_id) - 1
    when: Any
    if session.get_bind().dialect.name == "postgresql":
        when = literal(base, UTCDateTime()) + position * literal(
            timedelta(seconds=step), Interval()
        )
    else:  # SQLite keeps times as 'YYYY-MM-DD HH:MM:SS.ffffff' text
        offset = func.printf("+%.6f seconds", position * step)
        when = func.strftime("%Y-%m-%d %H:%M:%f", literal(base, UTCDateTime()), offset).concat(
            "000"
        )
    sealed = deps.keyring.encrypt(
        json.dumps({"campaign_id": campaign.id}).encode(), associated_data=_OUTBOX_AAD
    )
    rows = select(
        literal("breach_notice"), literal(sealed), literal(now, UTCDateTime()), when, literal(0)
    ).where(_in_range(campaign, lo, hi), BreachTarget.notice_queued_at.is_not(None))
    result = session.execute(
        insert(OUTBOX).from_select(
            ["kind", "payload_ciphertext", "created_at", "available_at", "attempts"], rows
        ),
        execution_options=COUNTED,
    )
    return _rowcount(result)


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
    swept = _rowcount(result)
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


def send_notice(session: DbSession, deps: Deps, *, campaign_id: str, now: datetime) -> bool:
    """Spend one ticket: notify one account of the campaign that was not notified yet."""
    user_id = _claim(session, campaign_id, now=now)
    if user_id is None:
        return False
    user = session.get(User, user_id)
    campaign = session.get(BreachCampaign, campaign_id)
    if user is None or user.disabled_at is not None or campaign is None:
        session.execute(  # deleted or disabled since: nobody to tell, no notice counted
            update(BreachTarget)
            .where(BreachTarget.campaign_id == campaign_id, BreachTarget.user_id == user_id)
            .values(notified_at=None, notice_queued_at=None),
            execution_options=NO_SYNC,
        )
        return False
    ttl = deps.settings.breach_notice_token_ttl
    token = user_tokens.issue(session, user_id=user.id, purpose="reset_password", ttl=ttl, now=now)
    notices.send(
        session,
        deps,
        to=user.email,
        now=now,
        template="breach_notice_invalidate"
        if campaign.mode == "invalidate"
        else "breach_notice_change",
        link=notices.link(deps, "reset-password", token),
        ttl=_human(ttl),
        actions=_actions(campaign),
    )
    return True


def _claim(session: DbSession, campaign_id: str, *, now: datetime) -> str | None:
    """Mark one queued, not yet notified account of the campaign as notified; its id.

    Tickets are interchangeable, so each looks from a random point of the campaign's id range
    (then wraps around): concurrent workers rarely meet, and no index beyond the primary key is
    needed to find the accounts still waiting."""
    pending = and_(
        BreachTarget.campaign_id == campaign_id,
        BreachTarget.notice_queued_at.is_not(None),
        BreachTarget.notified_at.is_(None),
    )
    start = secrets.token_urlsafe(3)
    for part in (BreachTarget.user_id >= start, BreachTarget.user_id < start):
        user_id = session.scalar(
            select(BreachTarget.user_id)
            .where(pending, part)
            .order_by(BreachTarget.user_id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if user_id is None:
            continue
        claimed = session.execute(
            update(BreachTarget)
            .where(pending, BreachTarget.user_id == user_id)
            .values(notified_at=now),
            execution_options=NO_SYNC,
        )
        return user_id if _rowcount(claimed) == 1 else None
    return None


def _actions(campaign: BreachCampaign) -> str:
    lines = []
    if campaign.revoke_sessions:
        lines.append("Every device signed in to your account was signed out.")
    if campaign.reset_mfa:
        lines.append(
            "Your two-step verification methods (authenticator apps, security keys, "
            "recovery codes) were removed; set them up again once you are signed in."
        )
    return "".join(f"\n\n{line}" for line in lines)


def _human(ttl: timedelta) -> str:
    hours = int(ttl.total_seconds() // 3600)
    if hours >= 48:
        return f"{hours // 24} days"
    if hours >= 1:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, int(ttl.total_seconds() // 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def record_password_set(session: DbSession, *, user_id: str, now: datetime) -> None:
    """A flagged user set a new password: count the forced reset as completed in every campaign
    that flagged the account (``accounts`` calls this when it clears the flags)."""
    campaigns = list(
        session.scalars(select(BreachCampaign.id).where(BreachCampaign.started_at.is_not(None)))
    )
    if not campaigns:
        return
    session.execute(
        update(BreachTarget)
        .where(
            BreachTarget.campaign_id.in_(campaigns),
            BreachTarget.user_id == user_id,
            BreachTarget.processed_at.is_not(None),
            BreachTarget.reset_at.is_(None),
        )
        .values(reset_at=now),
        execution_options=NO_SYNC,
    )
