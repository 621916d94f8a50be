"""Breach-response campaigns and the accounts each one targets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db import Base, UTCDateTime, new_id

__all__ = ["BreachCampaign", "BreachTarget"]

# The campaigns that may still count accounts as their own (``services.breach_sql.claiming``,
# which builds the same condition): a handful, among one finished campaign per force-reset.
CLAIMING = (
    "status IN ('pending', 'running') OR (last_page IS NOT NULL AND phase IN ('walk', 'enroll'))"
)


class BreachCampaign(Base):
    """One forced-reset campaign. Work runs in committed batches, in phases
    (``services.breach_batches``): ``walk`` flags accounts page by page of the users table
    (``next_page`` up to ``last_page``), ``enroll`` writes the target rows, ``apply`` goes over the
    targets in user-id order (``cursor`` is the last user id done). So a campaign resumes exactly
    where the last committed batch ended.

    selector: all | emails | user_ids | created_before | password_set_before
    mode: invalidate | change_at_next_login
    status: pending | running | completed | failed | cancelled
    origin: api | cli | force_reset
    """

    __tablename__ = "breach_campaigns"
    __table_args__ = (
        # Every campaign's creation (a force-reset too) looks for the claiming ones here.
        Index(
            "ix_breach_campaigns_claiming",
            "id",
            postgresql_where=text(CLAIMING),
            sqlite_where=text(CLAIMING),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    origin: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(1000))
    selector: Mapped[str] = mapped_column(String(32))
    selector_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mode: Mapped[str] = mapped_column(String(32))
    revoke_sessions: Mapped[bool] = mapped_column(Boolean)
    reset_mfa: Mapped[bool] = mapped_column(Boolean)
    notify: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), index=True)
    targeted: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    sessions_revoked: Mapped[int] = mapped_column(Integer, default=0)
    notices_queued: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    cursor: Mapped[str | None] = mapped_column(String(32))
    # JSON list of the user ids that end the apply batches still to run (every Nth target id,
    # in the database's order, fixed when the phase begins); the next batch covers
    # (cursor, boundaries[0]], and the last one everything after the cursor.
    boundaries: Mapped[str | None] = mapped_column(Text)
    # walk | enroll | apply | done; None until the first batch.
    phase: Mapped[str | None] = mapped_column(String(16))
    next_page: Mapped[int | None] = mapped_column(Integer)
    # Pages of the users table when the walk began; set only for campaigns that walk.
    last_page: Mapped[int | None] = mapped_column(Integer)
    # JSON: what became of an uploaded list (lines, accepted, duplicates, unknown, rejected).
    input_report: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_by_key_id: Mapped[str | None] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(512))


class BreachTarget(Base):
    """One account of a campaign: when it was flagged, noticed, and reset its password.

    Rows of list campaigns (emails, user_ids) are written when the campaign is created and
    stamped (``processed_at``) by the batch that flags the account; rows of predicate campaigns
    are written in one sorted pass, after the walk flagged their accounts (then ``processed_at`` is
    that pass's time: the account was flagged by then) or before the batches that flag them.
    ``notice_queued_at`` is set when a notice ticket was queued for the account; ``notified_at``
    when the ticket issued its reset link and queued the mail (at most once, by a conditional
    UPDATE). ``reset_at`` is set when the user next sets a password. ``factors_removed_at`` is
    set when a campaign with ``reset_mfa`` removed the account's second factors (it had one):
    an account it gives no notice gets a mail saying so instead.
    """

    __tablename__ = "breach_targets"
    __table_args__ = (
        Index(
            "ix_breach_targets_notified",
            "campaign_id",
            postgresql_where=text("notified_at IS NOT NULL"),
            sqlite_where=text("notified_at IS NOT NULL"),
        ),
        Index(
            "ix_breach_targets_reset",
            "campaign_id",
            postgresql_where=text("reset_at IS NOT NULL"),
            sqlite_where=text("reset_at IS NOT NULL"),
        ),
    )

    # Only the primary key and two small partial indexes: every further index (or foreign-key
    # check) on millions of rows written per campaign costs about as much as the row itself.
    # Rows are written only by the campaign code; a deleted user's row stays, so the report
    # still says the account was affected (by id only).
    campaign_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notice_queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    factors_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
