"""What a breach response looks like from outside: its progress, counts and input report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidRequest, NotFound
from authsvc.models.breach import BreachCampaign, BreachTarget
from authsvc.services.breach_lists import InputReport, Rejection

STATUSES = ("pending", "running", "completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class CampaignView:
    id: str
    status: str
    origin: str
    reason: str
    selector: str
    before: datetime | None
    mode: str
    revoke_sessions: bool
    reset_mfa: bool
    notify: bool
    targeted: int
    processed: int
    notified: int
    completed_resets: int
    sessions_revoked: int
    notices_queued: int
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    input: InputReport | None


def view(session: DbSession, campaign: BreachCampaign) -> CampaignView:
    def count(*conditions: Any) -> int:
        return int(
            session.scalar(
                select(func.count())
                .select_from(BreachTarget)
                .where(BreachTarget.campaign_id == campaign.id, *conditions)
            )
            or 0
        )

    report = json.loads(campaign.input_report) if campaign.input_report else None
    return CampaignView(
        id=campaign.id,
        status=campaign.status,
        origin=campaign.origin,
        reason=campaign.reason,
        selector=campaign.selector,
        before=campaign.selector_before,
        mode=campaign.mode,
        revoke_sessions=campaign.revoke_sessions,
        reset_mfa=campaign.reset_mfa,
        notify=campaign.notify,
        targeted=campaign.targeted,
        processed=campaign.processed,
        notified=count(BreachTarget.notified_at.is_not(None)),
        completed_resets=count(BreachTarget.reset_at.is_not(None)),
        sessions_revoked=campaign.sessions_revoked,
        notices_queued=campaign.notices_queued,
        created_by=campaign.created_by,
        created_at=campaign.created_at,
        started_at=campaign.started_at,
        finished_at=campaign.finished_at,
        last_error=campaign.last_error,
        input=_report_from_json(report) if report is not None else None,
    )


def _report_from_json(data: dict[str, Any]) -> InputReport:
    return InputReport(
        **{
            **data,
            "rejections": tuple(Rejection(**r) for r in data["rejections"]),
            "unknown_values": tuple(data["unknown_values"]),
        }
    )


def get_campaign(session: DbSession, *, campaign_id: str) -> CampaignView:
    campaign = session.get(BreachCampaign, campaign_id)
    if campaign is None:
        raise NotFound("No such breach response")
    return view(session, campaign)


def list_campaigns(session: DbSession, *, status: str | None, limit: int) -> list[CampaignView]:
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    query = select(BreachCampaign).order_by(BreachCampaign.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(BreachCampaign.status == status)
    return [view(session, c) for c in session.scalars(query)]
