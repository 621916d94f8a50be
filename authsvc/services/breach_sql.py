"""SQL building blocks that the parts of the breach-response engine share: which accounts a
campaign targets, when an account still needs its flag, and the SET clauses that flag it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    case,
    or_,
    select,
)
from sqlalchemy.orm import Session as DbSession

from authsvc.models import User
from authsvc.models.breach import BreachCampaign, BreachTarget

LIST_SELECTORS = frozenset({"emails", "user_ids"})
ACTIVE = ("pending", "running")
WALKING = ("walk", "enroll")  # phases before a walked campaign has enrolled its accounts
NO_SYNC = {"synchronize_session": False}
COUNTED = {"preserve_rowcount": True}  # INSERT ... SELECT rowcount on every driver
TARGETS = cast(Table, BreachTarget.__table__)


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


def exposed(campaign: BreachCampaign) -> ColumnElement[bool]:
    """SQL: the account's password predates the campaign. One set since was never exposed:
    the account is not flagged, notified or counted."""
    return or_(User.password_set_at.is_(None), User.password_set_at <= campaign.created_at)


def due(campaign: BreachCampaign) -> ColumnElement[bool]:
    """SQL: the account still needs the campaign's flag. Not when it already has it (it keeps
    the earlier time), nor when its password is not ``exposed``."""
    if campaign.mode == "invalidate":
        return and_(exposed(campaign), User.password_invalidated_at.is_(None))
    return and_(exposed(campaign), User.password_change_required.is_(False))


def flag(campaign: BreachCampaign, now: datetime) -> dict[Any, Any]:
    """SET clauses for accounts already known to be ``due``."""
    if campaign.mode == "invalidate":
        return {User.password_invalidated_at: now, User.updated_at: now}
    return {
        User.password_change_required: True,
        User.password_change_required_at: now,
        User.updated_at: now,
    }


def flag_where_due(campaign: BreachCampaign, now: datetime) -> dict[Any, Any]:
    """SET clauses that flag an account that is ``due`` and leave any other one as it is."""
    is_due = due(campaign)
    return {
        column: case((is_due, value), else_=column) for column, value in flag(campaign, now).items()
    }


def flagged_since_start(campaign: BreachCampaign) -> ColumnElement[bool]:
    """SQL: the account carries the campaign's flag, set after the campaign started. Each flag
    keeps the time it was set (``due``), whatever else writes the row later."""
    assert campaign.started_at is not None
    if campaign.mode == "invalidate":
        return User.password_invalidated_at >= campaign.started_at
    return and_(
        User.password_change_required.is_(True),
        User.password_change_required_at >= campaign.started_at,
    )


def claiming() -> ColumnElement[bool]:
    """SQL: the campaign may still count accounts as flagged by it. It is pending or running;
    or it was cancelled (or failed) after its walk flagged accounts and has not enrolled them
    yet: it finds them then as its accounts ``flagged_since_start``, which would take in those
    that another campaign (a force-reset too) had flagged meanwhile.

    It is the condition of the partial index ``ix_breach_campaigns_claiming``
    (``models.breach.CLAIMING``), its constants written into the statement rather than sent as
    parameters: so the database can tell, on any plan, that the index holds every row asked
    for, and reads a few entries instead of every campaign there ever was."""
    return or_(BreachCampaign.status.in_(_inline(ACTIVE)), walked_not_enrolled())


def walked_not_enrolled() -> ColumnElement[bool]:
    """SQL: the campaign's walk has flagged accounts whose target rows are not written yet
    (it walks, or it is enrolling; also cancelled or failed). Part of ``claiming``."""
    return and_(BreachCampaign.last_page.is_not(None), BreachCampaign.phase.in_(_inline(WALKING)))


def flagged_at(campaign: BreachCampaign) -> Any:
    """SQL: when the account got the flag of the campaign's mode (NULL when it has none)."""
    if campaign.mode == "invalidate":
        return User.password_invalidated_at
    return User.password_change_required_at


def claiming_besides(campaign_id: str) -> Select[BreachCampaign]:
    """The campaigns other than this one that are ``claiming``: a few rows of the partial
    index, however many campaigns (one per force-reset) have finished."""
    return select(BreachCampaign).where(claiming(), BreachCampaign.id != campaign_id)


def _inline(values: tuple[str, ...]) -> BindParameter[Any]:
    return bindparam(None, values, expanding=True, literal_execute=True)


def between(column: Any, lo: str, hi: str | None) -> ColumnElement[bool]:
    """``lo < column <= hi``; no upper end when ``hi`` is None."""
    above: ColumnElement[bool] = column > lo
    return and_(above, column <= hi) if hi is not None else above


def in_range(campaign: BreachCampaign, lo: str, hi: str | None) -> ColumnElement[bool]:
    """SQL: a target row of the campaign whose user id is in ``(lo, hi]``."""
    return and_(BreachTarget.campaign_id == campaign.id, between(BreachTarget.user_id, lo, hi))


def is_postgresql(session: DbSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def rowcount(result: Any) -> int:
    return int(result.rowcount or 0)
