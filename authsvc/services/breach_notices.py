"""Breach notices: each notified account gets one mail with its own reset link.

A reset link needs a per-user secret, and no secret may sit in the database in plain text, so
links are not made when accounts are flagged. Flagging only stamps ``notice_queued_at`` on the
account's target row (the promise of a notice). One ``breach_notices`` outbox job per campaign
keeps that promise at the configured rate: each run claims the next accounts in user-id order
that have a notice queued and none sent (a conditional UPDATE of ``notified_at``: each account is
notified at most once), issues their reset tokens (only the SHA-256 is stored), queues their
mails, and queues the job's next run after itself. The job's payload carries its place (the last
user id it notified), so its runs never rescan what is done.

A campaign with ``reset_mfa`` removes the accounts' second factors, and the notice says so. An
account that gets no notice although its factors were removed (its user set a new password
after the walk flagged it, or before its notice went out) gets a short mail about the removed
factors instead (``mail_factors_removed``): the batch sends it for an account it finds with no
notice queued, the notice job for one whose notice it withdraws. Each account gets one of the
two mails at most, and disabled or deleted ones neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession

from authsvc.models import User
from authsvc.models.breach import BreachCampaign, BreachTarget
from authsvc.services import audit, notices, user_tokens
from authsvc.services.breach_sql import NO_SYNC, rowcount
from authsvc.services.context import Deps

IDLE_DELAY = timedelta(seconds=1)  # while the campaign has not queued the next notices yet

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

notices.register(
    "breach_factors_removed",
    "Security notice: your two-step verification was removed",
    "We are writing about a security incident that may have exposed data of your account.\n\n"
    "As part of our response, an administrator removed your two-step verification methods "
    "(authenticator apps, security keys, recovery codes): signing in now asks only for your "
    "password. Please set them up again once you are signed in.\n\n"
    "We will never ask you for your password or a verification code by mail.\n",
)


@dataclass(frozen=True, slots=True)
class NextRun:
    """Where the notice job goes on, and when; ``None`` from ``send_notices`` when it is done."""

    after: str
    delay: timedelta


def send_notices(
    session: DbSession,
    deps: Deps,
    *,
    campaign_id: str,
    after: str,
    settled: bool,
    upto: str | None,
    now: datetime,
) -> NextRun | None:
    """One run of a campaign's notice job: notify the next accounts after ``after`` (and up to
    ``upto``, where the campaign's batches have got to; None: no limit). ``settled``, read
    before looking, means the campaign will queue no further notices."""
    rate = deps.settings.notify_rate_per_second
    per_run = max(1, int(rate))  # about one run a second
    claimed = _claim(session, campaign_id, after=after, upto=upto, limit=per_run, now=now)
    _notify_all(session, deps, campaign_id=campaign_id, user_ids=claimed, now=now)
    if claimed:
        return NextRun(after=claimed[-1], delay=timedelta(seconds=len(claimed) / rate))
    if settled:
        return None
    return NextRun(after=after, delay=IDLE_DELAY)


def send_one_notice(session: DbSession, deps: Deps, *, campaign_id: str, now: datetime) -> bool:
    """A single notice for any account of the campaign still waiting for one (the jobs of
    earlier versions queued one such ``breach_notice`` ticket per account)."""
    claimed = _claim(session, campaign_id, after="", upto=None, limit=1, now=now)
    _notify_all(session, deps, campaign_id=campaign_id, user_ids=claimed, now=now)
    return bool(claimed)


def mail_factors_removed(session: DbSession, deps: Deps, *, to: str, now: datetime) -> None:
    """The mail for an account whose second factors a campaign removed, and which gets no
    notice saying so."""
    notices.send(session, deps, to=to, template="breach_factors_removed", now=now)


def _notify_all(
    session: DbSession, deps: Deps, *, campaign_id: str, user_ids: list[str], now: datetime
) -> None:
    factor_notices = sum(
        _notify(session, deps, campaign_id=campaign_id, user_id=user_id, now=now)
        for user_id in user_ids
    )
    campaign = session.get(BreachCampaign, campaign_id)
    if factor_notices and campaign is not None:
        # The batches count theirs in breach.batch_processed.
        audit.record(
            session,
            type="breach.factor_notices_queued",
            outcome="success",
            now=now,
            admin_key_id=campaign.created_by_key_id,
            details={"campaign_id": campaign_id, "factor_notices": factor_notices},
        )


def _claim(
    session: DbSession,
    campaign_id: str,
    *,
    after: str,
    upto: str | None,
    limit: int,
    now: datetime,
) -> list[str]:
    """Mark the next ``limit`` queued, not yet notified accounts as notified; their ids."""
    pending = (
        BreachTarget.campaign_id == campaign_id,
        BreachTarget.notice_queued_at.is_not(None),
        BreachTarget.notified_at.is_(None),
    )
    # Rows another transaction holds are skipped: a reset holds its account's target rows
    # (taken before its tokens, as here) until it commits, and the account then needs no
    # notice. Waiting for them deadlocked: the worker runs several jobs in one transaction,
    # and an earlier one may hold what the reset waits for. The run's place moves past a
    # skipped account, so one whose reset then fails goes without its notice (known).
    query = (
        select(BreachTarget.user_id)
        .where(*pending, BreachTarget.user_id > after)
        .order_by(BreachTarget.user_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if upto is not None:
        query = query.where(BreachTarget.user_id <= upto)
    claimed = []
    for user_id in session.scalars(query).all():
        marked = session.execute(
            update(BreachTarget)
            .where(*pending, BreachTarget.user_id == user_id)
            .values(notified_at=now),
            execution_options=NO_SYNC,
        )
        if rowcount(marked) == 1:
            claimed.append(user_id)
    return claimed


def _notify(
    session: DbSession, deps: Deps, *, campaign_id: str, user_id: str, now: datetime
) -> bool:
    """Send the account's notice; True when it was withdrawn and the mail about the removed
    factors sent instead."""
    user = session.get(User, user_id)
    campaign = session.get(BreachCampaign, campaign_id)
    if (
        user is None
        or user.disabled_at is not None
        or campaign is None
        or (user.password_set_at is not None and user.password_set_at > campaign.created_at)
    ):
        # Deleted or disabled since, or a new password set since (the notice would say the
        # password no longer works): the notice is withdrawn, and no longer counted.
        factors_removed_at = session.execute(
            update(BreachTarget)
            .where(BreachTarget.campaign_id == campaign_id, BreachTarget.user_id == user_id)
            .values(notified_at=None, notice_queued_at=None)
            .returning(BreachTarget.factors_removed_at),
            execution_options=NO_SYNC,
        ).scalar_one_or_none()
        session.execute(
            update(BreachCampaign)
            .where(BreachCampaign.id == campaign_id)
            .values(notices_queued=BreachCampaign.notices_queued - 1),
            execution_options=NO_SYNC,
        )
        # A live account here has a new password, and its factors are gone all the same,
        # which the notice would have said: that much its owner must still hear.
        if factors_removed_at is not None and user is not None and user.disabled_at is None:
            mail_factors_removed(session, deps, to=user.email, now=now)
            return True
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
    return False


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
