"""The outbox jobs of a breach response: its batches, its notices and the late session sweep.

Each ``breach_batch`` job applies one batch in the worker's transaction and queues the next one,
dated long ago so that the worker (which takes due messages oldest first) runs it before any
mail waiting. A failing batch is retried with backoff; after ``MAX_BATCH_FAILURES`` in a row
the campaign fails (and a walked campaign still tries its follow-up).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from authsvc.models.breach import BreachCampaign
from authsvc.services import breach_batches as batches
from authsvc.services import breach_notices, outbox
from authsvc.services.context import Deps
from authsvc.services.outbox import Handler

MAX_BATCH_FAILURES = 5  # consecutive failed attempts of a batch before the campaign fails
PRIORITY_AT = datetime(2000, 1, 1, tzinfo=UTC)  # "due" time of batch jobs: ahead of the queue


def queue_batch(
    session: DbSession,
    deps: Deps,
    campaign: BreachCampaign,
    *,
    now: datetime,
    delay: timedelta = timedelta(0),
) -> None:
    """Queue the job that runs the next batch (without a delay: ahead of everything due)."""
    due = delay if delay > timedelta(0) else min(timedelta(0), PRIORITY_AT - now)
    outbox.enqueue(
        session,
        deps.keyring,
        kind="breach_batch",
        payload={"campaign_id": campaign.id},
        now=now,
        delay=due,
    )


def _run_batch_job(session: DbSession, deps: Deps, payload: dict[str, Any], now: datetime) -> None:
    campaign_id = payload["campaign_id"]
    try:
        with session.begin_nested():
            outcome = batches.run_next_batch(session, deps, campaign_id=campaign_id, now=now)
    except Exception as exc:  # any failure counts against the campaign; retried below
        _batch_failed(session, deps, campaign_id=campaign_id, error=exc, now=now)
        return
    campaign = session.get(BreachCampaign, campaign_id)
    if campaign is None or outcome.finished:
        return
    queue_batch(
        session,
        deps,
        campaign,
        now=now,
        delay=timedelta(seconds=1) if outcome.busy else timedelta(0),
    )


def _batch_failed(
    session: DbSession, deps: Deps, *, campaign_id: str, error: Exception, now: datetime
) -> None:
    campaign = session.scalars(
        select(BreachCampaign)
        .where(BreachCampaign.id == campaign_id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if campaign is None or not batches.has_work(campaign):
        return
    campaign.failures += 1
    message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    campaign.last_error = message
    if campaign.failures < MAX_BATCH_FAILURES:
        queue_batch(session, deps, campaign, now=now, delay=timedelta(seconds=2**campaign.failures))
    elif campaign.status in batches.ACTIVE:
        batches.finish(session, deps, campaign=campaign, now=now, status="failed", error=message)
        if batches.has_work(campaign):  # what a walk flagged still gets its follow-up
            campaign.failures = 0
            queue_batch(session, deps, campaign, now=now)
    else:  # the follow-up gives up
        campaign.phase = "done"


def _send_notices_job(
    session: DbSession, deps: Deps, payload: dict[str, Any], now: datetime
) -> None:
    campaign = session.scalars(
        select(BreachCampaign)
        .where(BreachCampaign.id == payload["campaign_id"])
        .execution_options(populate_existing=True)
    ).one_or_none()
    if campaign is None:
        return
    settled = not batches.has_work(campaign)  # read before looking for accounts
    # Until it settles, a campaign has queued notices only up to where its batches got to.
    upto = None if settled else ((campaign.cursor or "") if campaign.phase == "apply" else "")
    after = payload["after"]
    following = breach_notices.send_notices(
        session, deps, campaign_id=campaign.id, after=after, settled=settled, upto=upto, now=now
    )
    if following is not None:
        outbox.enqueue(
            session,
            deps.keyring,
            kind="breach_notices",
            payload={"campaign_id": campaign.id, "after": following.after},
            now=now,
            delay=following.delay,
        )


def _send_notice_job(
    session: DbSession, deps: Deps, payload: dict[str, Any], now: datetime
) -> None:
    breach_notices.send_one_notice(session, deps, campaign_id=payload["campaign_id"], now=now)


def _sweep_job(session: DbSession, deps: Deps, payload: dict[str, Any], now: datetime) -> None:
    batches.sweep_sessions(session, campaign_id=payload["campaign_id"], now=now)


# Outbox handlers this capability contributes, by message kind.
HANDLERS: dict[str, Handler] = {
    "breach_batch": _run_batch_job,
    "breach_notices": _send_notices_job,
    "breach_notice": _send_notice_job,  # one-account tickets queued by earlier versions
    "breach_sweep": _sweep_job,
}
# Kinds the worker runs alone in their own transaction (a batch is large).
SOLO_KINDS = frozenset({"breach_batch"})
