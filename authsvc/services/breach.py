"""Breach response: forced password resets for chosen accounts, run in the background.

``create_campaign`` settles who is targeted (an uploaded list is resolved to accounts at once;
``all``, ``created_before`` and ``password_set_before`` are predicates over the accounts that
existed when the campaign was created), refuses overlaps with a running campaign, and queues the
first ``breach_batch`` job. Each job applies one batch in its own transaction and queues the next
one (``breach_batches`` runs the phases, ``breach_walk`` the physical-order flagging,
``breach_notices`` the mails, ``breach_jobs`` the outbox jobs). ``force_reset`` is a one-account
campaign applied synchronously.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import aliased

from authsvc.errors import (
    CampaignConflict,
    CampaignFinished,
    EmptyTargetList,
    IdempotencyKeyReused,
    InvalidRequest,
    NoTargets,
    NotFound,
)
from authsvc.models import User
from authsvc.models.breach import BreachCampaign
from authsvc.services import audit
from authsvc.services import breach_batches as batches
from authsvc.services import breach_lists as lists
from authsvc.services.breach_jobs import HANDLERS, MAX_BATCH_FAILURES, SOLO_KINDS, queue_batch
from authsvc.services.breach_lists import InputReport, TargetList
from authsvc.services.breach_sql import ACTIVE, claiming_besides, membership
from authsvc.services.breach_views import (
    STATUSES,
    CampaignView,
    get_campaign,
    list_campaigns,
    view,
)
from authsvc.services.context import Client, Deps

__all__ = [
    "HANDLERS",
    "MAX_BATCH_FAILURES",
    "SOLO_KINDS",
    "STATUSES",
    "CampaignView",
    "get_campaign",
    "list_campaigns",
]

SELECTORS = ("all", "emails", "user_ids", "created_before", "password_set_before")
BEFORE_SELECTORS = frozenset({"created_before", "password_set_before"})
LIST_KINDS = frozenset({"emails", "user_ids"})
MODES = ("invalidate", "change_at_next_login")
MAX_REASON = 1000
_CREATION_LOCK = 7263542  # PostgreSQL advisory lock: campaigns are created one at a time


# --- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Creator:
    """Who starts a campaign: an admin API key, or the command line."""

    name: str
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class CampaignRequest:
    reason: str
    selector: str
    mode: str
    revoke_sessions: bool = True
    reset_mfa: bool = False
    notify: bool = True
    before: datetime | None = None  # created_before / password_set_before
    targets: TargetList | None = None  # emails / user_ids


@dataclass(frozen=True, slots=True)
class Created:
    campaign: CampaignView
    replayed: bool  # an earlier request with the same Idempotency-Key created it


@dataclass(frozen=True, slots=True)
class DryRun:
    targeted: int
    conflicts_with: str | None
    input: InputReport | None


# --- creating ----------------------------------------------------------------------------


def create_campaign(
    session: DbSession,
    deps: Deps,
    *,
    request: CampaignRequest,
    creator: Creator,
    client: Client,
    now: datetime,
    origin: str = "api",
    idempotency_key: str | None = None,
    dry_run: bool = False,
) -> Created | DryRun:
    """Validate, target and queue a campaign (or only count its targets, for a dry run)."""
    _validate(request)
    fingerprint = _fingerprint(request)
    _lock_creation(session)
    if idempotency_key is not None and not dry_run:
        earlier = _earlier(
            session, idempotency_key, fingerprint=fingerprint, creator=creator, force_reset=False
        )
        if earlier is not None:
            return Created(campaign=view(session, earlier), replayed=True)
    if dry_run:
        with session.begin_nested() as attempt:
            campaign, report = _target(session, request, creator=creator, origin=origin, now=now)
            conflict = _conflicting(session, campaign)
            counted = DryRun(
                targeted=campaign.targeted,
                conflicts_with=conflict.id if conflict is not None else None,
                input=report,
            )
            attempt.rollback()  # a dry run leaves nothing behind but its audit event
        audit.record(
            session,
            type="breach.dry_run",
            outcome="counted",
            now=now,
            client=client,
            admin_key_id=creator.key_id,
            details={**_summary(request), "targeted": counted.targeted},
        )
        return counted
    campaign = _create(
        session,
        deps,
        request=request,
        creator=creator,
        client=client,
        now=now,
        origin=origin,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
    return Created(campaign=view(session, campaign), replayed=False)


def _earlier(
    session: DbSession,
    idempotency_key: str,
    *,
    fingerprint: str,
    creator: Creator,
    force_reset: bool,
) -> BreachCampaign | None:
    """The campaign an earlier request with ``idempotency_key`` created, if any (under the
    creation lock); IdempotencyKeyReused when that was another request."""
    earlier = session.scalar(
        select(BreachCampaign).where(BreachCampaign.idempotency_key == idempotency_key)
    )
    # Another request (a campaign where a force-reset is asked, or the other way round), or
    # the same one from another admin key: not a retry of this one.
    if earlier is not None and (
        earlier.request_hash != fingerprint
        or earlier.created_by_key_id != creator.key_id
        or (earlier.origin == "force_reset") != force_reset
    ):
        raise IdempotencyKeyReused("This Idempotency-Key was used for another request")
    return earlier


def _lock_creation(session: DbSession) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATION_LOCK})


def _create(
    session: DbSession,
    deps: Deps,
    *,
    request: CampaignRequest,
    creator: Creator,
    client: Client,
    now: datetime,
    origin: str,
    idempotency_key: str | None,
    fingerprint: str,
) -> BreachCampaign:
    """Target the campaign and queue its first batch, or refuse it (``create_campaign``, after
    the validation, the creation lock and the Idempotency-Key)."""
    try:
        with session.begin_nested():
            campaign, report = _target(session, request, creator=creator, origin=origin, now=now)
            conflict = _conflicting(session, campaign)
            if campaign.targeted == 0:
                raise NoTargets(
                    "No account matches the selection; nothing was started",
                    input=asdict(report) if report else None,
                )
            if conflict is not None:
                raise _conflict(conflict)
    except (NoTargets, CampaignConflict) as exc:
        audit.record(
            session,
            type="breach.campaign_refused",
            outcome=exc.code,
            now=now,
            client=client,
            admin_key_id=creator.key_id,
            details=_summary(request),
        )
        raise
    campaign.idempotency_key, campaign.request_hash = idempotency_key, fingerprint
    campaign.input_report = json.dumps(asdict(report)) if report else None
    if origin != "force_reset":
        queue_batch(session, deps, campaign, now=now)
    audit.record(
        session,
        type="breach.campaign_created",
        outcome="accepted",
        now=now,
        client=client,
        admin_key_id=creator.key_id,
        details={
            **_summary(request),
            "campaign_id": campaign.id,
            "origin": origin,
            "created_by": creator.name,
            "targeted": campaign.targeted,
            "input": _counts(report),
        },
    )
    return campaign


def _validate(request: CampaignRequest) -> None:
    if request.selector not in SELECTORS:
        raise InvalidRequest(f"selector must be one of {', '.join(SELECTORS)}", field="selector")
    if request.mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", field="mode")
    if request.reset_mfa and request.mode != "invalidate":
        # With the factors gone, the next login needs only the leaked password, and
        # change_at_next_login would then let its holder choose the new one.
        raise InvalidRequest(
            "reset_mfa needs mode invalidate: the new password must come from the mailed link",
            field="reset_mfa",
        )
    if not request.reason.strip() or len(request.reason) > MAX_REASON:
        raise InvalidRequest(f"reason must be 1 to {MAX_REASON} characters", field="reason")
    if "\x00" in request.reason:  # an upload's reason comes from the query string, unchecked
        raise InvalidRequest("reason must not contain NUL characters", field="reason")
    if (request.selector in BEFORE_SELECTORS) != (request.before is not None):
        raise InvalidRequest(
            "created_before / password_set_before go with the selector of that name",
            field="selector",
        )
    if request.before is not None and request.before.tzinfo is None:
        raise InvalidRequest("the date must carry a time zone", field=request.selector)
    listed = request.selector in LIST_KINDS
    if listed != (request.targets is not None):
        raise InvalidRequest(
            "a list of emails or user ids goes with that selector only", field="selector"
        )
    if request.targets is not None:
        if request.targets.kind != request.selector:
            raise InvalidRequest("the list does not match the selector", field="selector")
        if not request.targets.values:
            raise EmptyTargetList(
                f"The list has no acceptable entry ({request.targets.lines} lines, "
                f"{request.targets.rejected} rejected)",
                rejected=request.targets.rejected,
                rejections=[asdict(r) for r in request.targets.rejections],
            )


def _fingerprint(request: CampaignRequest) -> str:
    body = {
        **_summary(request),
        "list": hashlib.sha256("\n".join(request.targets.values).encode()).hexdigest()
        if request.targets
        else None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _summary(request: CampaignRequest) -> dict[str, Any]:
    return {
        "reason": request.reason,
        "selector": request.selector,
        "mode": request.mode,
        "before": request.before.isoformat() if request.before else None,
        "revoke_sessions": request.revoke_sessions,
        "reset_mfa": request.reset_mfa,
        "notify": request.notify,
    }


def _counts(report: InputReport | None) -> dict[str, int] | None:
    if report is None:
        return None
    return {
        "lines": report.lines,
        "accepted": report.accepted,
        "matched": report.matched,
        "unknown": report.unknown,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
    }


def _target(
    session: DbSession, request: CampaignRequest, *, creator: Creator, origin: str, now: datetime
) -> tuple[BreachCampaign, InputReport | None]:
    campaign = BreachCampaign(
        origin=origin,
        reason=request.reason.strip(),
        selector=request.selector,
        selector_before=request.before,
        mode=request.mode,
        revoke_sessions=request.revoke_sessions,
        reset_mfa=request.reset_mfa,
        notify=request.notify,
        status="pending",
        targeted=0,
        processed=0,
        sessions_revoked=0,
        notices_queued=0,
        batches=0,
        failures=0,
        created_by=creator.name[:128],
        created_by_key_id=creator.key_id,
        created_at=now,
    )
    session.add(campaign)
    session.flush()
    if request.targets is None:
        campaign.targeted = int(
            session.scalar(select(func.count()).select_from(User).where(membership(campaign))) or 0
        )
        return campaign, None
    report = lists.insert_targets(session, campaign_id=campaign.id, targets=request.targets)
    campaign.targeted = report.matched
    return campaign, report


def _conflicting(session: DbSession, campaign: BreachCampaign) -> BreachCampaign | None:
    """A campaign that targets one of the same accounts and may still count accounts as its
    own (``claiming``): pending or running, or cancelled or failed with the accounts its walk
    flagged not enrolled yet."""
    others = session.scalars(claiming_besides(campaign.id)).all()
    for other in others:
        user = aliased(User)
        shared = session.scalar(
            select(user.id).where(membership(campaign, user), membership(other, user)).limit(1)
        )
        if shared is not None:
            return other
    return None


def _conflict(other: BreachCampaign) -> CampaignConflict:
    if other.status in ACTIVE:
        message = (
            f"Breach response {other.id} is still running on some of these accounts; "
            "wait for it to finish or cancel it"
        )
    else:
        message = (
            f"Breach response {other.id} was {other.status} and is still recording the "
            "accounts it flagged, some of these among them; try again when it has (within its "
            "next two batches)"
        )
    return CampaignConflict(message, campaign_id=other.id)


# --- cancelling, one account, reports ----------------------------------------------------


def cancel_campaign(
    session: DbSession,
    deps: Deps,
    *,
    campaign_id: str,
    creator: Creator,
    client: Client,
    now: datetime,
) -> CampaignView:
    """Stop a pending or running campaign: no further account is flagged. Accounts already
    flagged stay flagged and still get their notices (and, where the campaign flagged them ahead
    of its session revocation, that follow-up still runs); nothing is undone."""
    campaign = session.scalars(
        select(BreachCampaign)
        .where(BreachCampaign.id == campaign_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if campaign is None:
        raise NotFound("No such breach response")
    if campaign.status == "cancelled":
        return view(session, campaign)
    if campaign.status not in ACTIVE:
        raise CampaignFinished(
            f"The breach response has already {campaign.status}", campaign_status=campaign.status
        )
    campaign.status, campaign.finished_at = "cancelled", now
    audit.record(
        session,
        type="breach.campaign_cancelled",
        outcome="cancelled",
        now=now,
        client=client,
        admin_key_id=creator.key_id,
        details={
            "campaign_id": campaign.id,
            "processed": campaign.processed,
            "cancelled_by": creator.name,
        },
    )
    if campaign.revoke_sessions and campaign.processed:
        batches.queue_sweep(session, deps, campaign, now=now)
    return view(session, campaign)


def force_reset(
    session: DbSession,
    deps: Deps,
    *,
    user_id: str,
    mode: str,
    revoke_sessions: bool,
    reset_mfa: bool,
    notify: bool,
    reason: str,
    creator: Creator,
    client: Client,
    now: datetime,
    idempotency_key: str | None = None,
) -> Created:
    """The effects of a breach response on one account, applied now (a one-account campaign,
    so it shows in the list, the audit trail and the reports like any other). A retry with
    the ``idempotency_key`` of an earlier one returns its campaign (``replayed``) and applies
    nothing again: no second notice, whose link would leave the first one's dead."""
    if session.get(User, user_id) is None:
        raise NotFound("No such user")
    targets = TargetList(
        kind="user_ids", values=(user_id,), lines=1, duplicates=0, rejected=0, rejections=()
    )
    request = CampaignRequest(
        reason=reason,
        selector="user_ids",
        mode=mode,
        revoke_sessions=revoke_sessions,
        reset_mfa=reset_mfa,
        notify=notify,
        targets=targets,
    )
    _validate(request)
    fingerprint = _fingerprint(request)
    _lock_creation(session)
    if idempotency_key is not None:
        earlier = _earlier(
            session, idempotency_key, fingerprint=fingerprint, creator=creator, force_reset=True
        )
        if earlier is not None:
            return Created(campaign=view(session, earlier), replayed=True)
    try:
        campaign_id = _create(
            session,
            deps,
            request=request,
            creator=creator,
            client=client,
            now=now,
            origin="force_reset",
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        ).id
    except NoTargets:
        # Deleted by another request since it was read above: not found, as it would be now.
        raise NotFound("No such user") from None
    while not batches.run_next_batch(session, deps, campaign_id=campaign_id, now=now).finished:
        pass
    audit.record(
        session,
        type="admin.force_reset",
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        admin_key_id=creator.key_id,
        details={"campaign_id": campaign_id, "mode": mode, "reason": reason},
    )
    return Created(campaign=get_campaign(session, campaign_id=campaign_id), replayed=False)


def record_report_export(
    session: DbSession,
    *,
    campaign_id: str,
    fmt: str,
    creator: Creator,
    client: Client,
    now: datetime,
) -> CampaignView:
    campaign = get_campaign(session, campaign_id=campaign_id)
    audit.record(
        session,
        type="breach.report_exported",
        outcome="success",
        now=now,
        client=client,
        admin_key_id=creator.key_id,
        details={"campaign_id": campaign_id, "format": fmt},
    )
    return campaign
