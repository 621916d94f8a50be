"""services.breach on a real Session: targeting, batches, notices, resumption, refusals."""

from __future__ import annotations

import csv
import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text

from authsvc.crypto.passwords import Argon2Params, PasswordHasher
from authsvc.db import utcnow
from authsvc.errors import (
    CampaignConflict,
    CampaignFinished,
    EmptyTargetList,
    IdempotencyKeyReused,
    InvalidCredentials,
    InvalidRequest,
    InvalidToken,
    NoTargets,
    NotFound,
)
from authsvc.mail.backends import make_backend
from authsvc.mail.worker import OutboxWorker, default_handlers
from authsvc.models import (
    AuditEvent,
    OutboxMessage,
    RecoveryCode,
    Session,
    TotpFactor,
    User,
)
from authsvc.models.breach import BreachCampaign, BreachTarget
from authsvc.services import accounts, breach, breach_sql, outbox, user_tokens
from authsvc.services import breach_batches as batches
from authsvc.services import breach_lists as lists
from authsvc.services import breach_walk as walk
from authsvc.services.breach import CampaignRequest, Created, Creator, DryRun
from authsvc.services.factors import FactorProof
from authsvc.settings import Settings
from tests.conftest import Mailbox

PASSWORD = "correct horse 42"
NEW_PASSWORD = "brand new horse 43"
ADMIN = Creator(name="tests", key_id=None)


@pytest.fixture
def settings(settings):
    return dataclasses.replace(
        settings,
        breach_batch_size=3,
        notify_rate_per_second=50.0,
        breach_sweep_delay=timedelta(minutes=30),
    )


@pytest.fixture
def mailbox(settings) -> Mailbox:
    return Mailbox(Path(settings.mail_url.removeprefix("file://")))


@pytest.fixture
def still_worker(runtime) -> OutboxWorker:
    """A worker whose clock stands still: what is due when a test drains it is fixed, however
    long the drain takes (a notice job's next run comes 0.16 s after its first, which a slow
    drain on a busy machine used to reach)."""
    start = utcnow()
    return OutboxWorker(
        sessionmaker=runtime.sessionmaker,
        deps=runtime.deps,
        handlers=default_handlers(make_backend(runtime.settings.mail_url)),
        clock=lambda: start,
    )


@pytest.fixture
def later_worker(runtime) -> OutboxWorker:
    """A worker whose clock is an hour ahead, so every spaced notice ticket is due."""
    return OutboxWorker(
        sessionmaker=runtime.sessionmaker,
        deps=runtime.deps,
        handlers=default_handlers(make_backend(runtime.settings.mail_url)),
        clock=lambda: utcnow() + timedelta(hours=1),
    )


@pytest.fixture
def users(make_user):
    return [make_user(email=f"user{i}@example.com") for i in range(8)]


def request(**changes) -> CampaignRequest:
    base = CampaignRequest(reason="marketplace dump INC-7", selector="all", mode="invalidate")
    return dataclasses.replace(base, **changes)


def create(db_session, deps, caller, **kwargs) -> Created:
    result = breach.create_campaign(
        db_session, deps, creator=ADMIN, client=caller, now=utcnow(), **kwargs
    )
    assert isinstance(result, Created)
    db_session.flush()
    return result


def drain(db_session, worker) -> None:
    db_session.flush()
    worker.drain()
    db_session.expire_all()


def count(db_session, model, *where) -> int:
    return db_session.scalar(select(func.count()).select_from(model).where(*where))


def processed_ids(db_session, campaign_id: str) -> list[str]:
    """Accounts the campaign recorded as flagged (its primary key holds each account once)."""
    return list(
        db_session.scalars(
            select(BreachTarget.user_id).where(
                BreachTarget.campaign_id == campaign_id, BreachTarget.processed_at.is_not(None)
            )
        )
    )


def queued_notices(db_session, campaign_id: str) -> int:
    return count(
        db_session,
        BreachTarget,
        BreachTarget.campaign_id == campaign_id,
        BreachTarget.notice_queued_at.is_not(None),
    )


def on_postgresql(db_session) -> bool:
    return db_session.get_bind().dialect.name == "postgresql"


def add_session(db_session, user) -> Session:
    at = utcnow()
    row = Session(
        user_id=user.id,
        created_at=at,
        last_used_at=at,
        auth_time=at,
        amr="pwd",
        expires_at=at + timedelta(days=1),
    )
    db_session.add(row)
    db_session.flush()
    return row


# --- lists ---------------------------------------------------------------------------------


def test_a_list_keeps_good_lines_and_reports_the_rest():
    lines = [
        b"\xef\xbb\xbfAda@Example.com",
        b"",
        b"# leaked 2024-05",
        b"not an email",
        b"ada@example.com",
        b"\xff\xfe",
        b"  bob@example.org  ",
    ]

    parsed = lists.parse_target_list("emails", lines)

    assert parsed.values == ("ada@example.com", "bob@example.org")
    assert (parsed.lines, parsed.duplicates, parsed.rejected) == (7, 1, 2)
    assert [(r.line, r.reason) for r in parsed.rejections] == [
        (4, "invalid_email"),
        (6, "not_utf8"),
    ]


def test_a_csv_list_uses_the_email_column():
    lines = ["name,Email,plan", "Ada,ada@example.com,pro", "Bob,,free", "Eve", "Cy,cy@x.org,"]

    parsed = lists.parse_target_list("emails", lines, csv_format=True)

    assert parsed.values == ("ada@example.com", "cy@x.org")
    assert [(r.line, r.reason) for r in parsed.rejections] == [
        (3, "invalid_email"),
        (4, "missing_column"),
    ]


@pytest.mark.parametrize("separator", [":", ";", "|", ",", " ", "\t"])
def test_a_rejected_line_keeps_no_more_than_its_entry(separator):
    # A combo list (email:password, one a line) names a password after each address: kept
    # whole, each rejected line's password was stored with the campaign in clear, shown to
    # every admin and in the empty_target_list refusal.
    lines = [f"ada@example.com{separator}hunter2 pass", "bob@example.org"]

    parsed = lists.parse_target_list("emails", lines)

    assert parsed.values == ("bob@example.org",)
    [rejection] = parsed.rejections
    assert (rejection.line, rejection.reason) == (1, "invalid_email")
    assert rejection.value == "ada@example.com…"
    assert "hunter2" not in str(parsed)


def test_a_rejected_csv_row_keeps_no_more_than_its_first_cell():
    lines = ["email", '"ada@example.com,hunter2', "bob@example.org"]

    parsed = lists.parse_target_list("emails", lines, csv_format=True)

    assert "hunter2" not in str(parsed.rejections)


def test_a_csv_line_the_csv_module_refuses_is_rejected_not_fatal():
    huge = "x" * (csv.field_size_limit() + 1)  # over the module's 128 KiB field limit
    lines = ["email", "ada@example.com", huge, "bob@example.org"]

    parsed = lists.parse_target_list("emails", lines, csv_format=True)

    assert parsed.values == ("ada@example.com", "bob@example.org")
    assert [(r.line, r.reason, len(r.value)) for r in parsed.rejections] == [
        (3, "invalid_csv", 100)
    ]


def test_user_ids_must_look_like_ids():
    parsed = lists.parse_target_list("user_ids", ["abc_DEF-123", "x" * 33, "a b", "abc_DEF-123"])

    assert parsed.values == ("abc_DEF-123",)
    assert (parsed.rejected, parsed.duplicates) == (2, 1)


# --- a campaign, end to end ---------------------------------------------------------------


@pytest.fixture(params=["walk", "no_walk"])
def walking(request, db_session, monkeypatch) -> bool:
    """Run a test with the PostgreSQL page walk and with the path every database has."""
    if request.param == "no_walk":
        monkeypatch.setattr(walk, "can_walk", lambda session: False)
    elif not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    return request.param == "walk"


def test_all_accounts_are_flagged_revoked_and_notified_once(
    db_session, deps, caller, users, make_user, still_worker, later_worker, mailbox, walking
):
    worker = still_worker
    disabled = make_user(email="gone@example.com", disabled=True)
    live = [add_session(db_session, user) for user in users[:4]]
    created = create(db_session, deps, caller, request=request(revoke_sessions=True))
    assert created.campaign.status == "pending"
    assert created.campaign.targeted == 9

    drain(db_session, worker)  # batches of 3, each in its own transaction

    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert campaign.status == "completed"
    assert (campaign.processed, campaign.notices_queued, campaign.sessions_revoked) == (9, 8, 4)
    flagged = sorted(
        u.id
        for u in db_session.scalars(select(User).where(User.password_invalidated_at.is_not(None)))
    )
    assert flagged == sorted([u.id for u in users] + [disabled.id])
    assert sorted(processed_ids(db_session, campaign.id)) == flagged
    assert db_session.get(BreachCampaign, campaign.id).phase == "done"
    phases = {
        json.loads(details)["phase"]
        for details in db_session.scalars(
            select(AuditEvent.details).where(AuditEvent.type == "breach.batch_processed")
        )
        if json.loads(details)["campaign_id"] == campaign.id
    }
    assert phases == ({"walk", "enroll", "apply"} if walking else {"enroll", "apply"})
    assert all(db_session.get(Session, s.id).revoked_reason == "breach_response" for s in live)
    assert queued_notices(db_session, campaign.id) == 8
    waiting = (OutboxMessage.kind == "breach_notices", OutboxMessage.completed_at.is_(None))
    assert count(db_session, OutboxMessage, *waiting) == 1  # the campaign's notice job

    drain(db_session, later_worker)

    assert breach.get_campaign(db_session, campaign_id=campaign.id).notified == 8
    assert mailbox.messages("gone@example.com") == []
    notice = mailbox.last("user3@example.com")
    assert notice["Subject"] == "Security notice: your password was reset"
    assert "Every device signed in to your account was signed out." in notice.get_content()
    assert len(mailbox.messages("user3@example.com")) == 1
    with pytest.raises(InvalidCredentials):
        accounts.login_with_password(
            db_session,
            deps,
            email="user3@example.com",
            password=PASSWORD,
            client=caller,
            now=utcnow(),
        )


def test_a_password_set_after_the_campaign_began_is_not_flagged_noticed_or_counted(
    db_session, deps, caller, users, runtime, later_worker, mailbox, walking
):
    # users[5] chose a new password after the request, before its batch: never exposed.
    # Another chose one after being flagged, before its notice went out: no notice saying
    # the password no longer works.
    created = create(db_session, deps, caller, request=request(revoke_sessions=True))
    set_new_password(db_session, deps, caller, users[5])
    kept = add_session(db_session, users[5])  # signed in with the new password
    slow = dataclasses.replace(
        deps, settings=dataclasses.replace(deps.settings, notify_rate_per_second=1.0)
    )
    now = utcnow()
    drain(
        db_session,
        OutboxWorker(
            sessionmaker=runtime.sessionmaker,
            deps=slow,
            handlers=default_handlers(make_backend(runtime.settings.mail_url)),
            clock=lambda: now,
        ),
    )  # every batch, and the first notice (the lowest user id)
    late = max((u for u in users if u is not users[5]), key=lambda u: u.id)
    set_new_password(db_session, deps, caller, late)
    drain(db_session, later_worker)

    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert users[5].id not in processed_ids(db_session, campaign.id)
    assert (campaign.processed, campaign.notices_queued, campaign.notified) == (7, 6, 6)
    assert db_session.get(Session, kept.id).revoked_at is None
    for user in (users[5], late):
        subjects = [m["Subject"] for m in mailbox.messages(user.email)]
        assert "Security notice: your password was reset" not in subjects, subjects
    for user in (users[5], late):
        result = accounts.login_with_password(
            db_session, deps, email=user.email, password=NEW_PASSWORD, client=caller,
            now=utcnow(),
        )  # fmt: skip
        assert result.status == "authenticated"


def set_new_password(db_session, deps, caller, user) -> None:
    accounts.set_password(
        db_session, deps, user=user, password=NEW_PASSWORD, client=caller, now=utcnow(),
        event="password.change",
    )  # fmt: skip


def test_a_reset_through_the_notice_link_counts_as_completed(
    db_session, deps, caller, users, worker, later_worker, mailbox
):
    created = create(db_session, deps, caller, request=request())
    drain(db_session, worker)
    drain(db_session, later_worker)
    token = mailbox.token("user5@example.com", "reset-password")

    accounts.reset_password(
        db_session,
        deps,
        token=token,
        new_password=NEW_PASSWORD,
        proof=FactorProof(),
        client=caller,
        now=utcnow(),
    )

    assert breach.get_campaign(db_session, campaign_id=created.campaign.id).completed_resets == 1
    result = accounts.login_with_password(
        db_session,
        deps,
        email="user5@example.com",
        password=NEW_PASSWORD,
        client=caller,
        now=utcnow(),
    )
    assert result.status == "authenticated"


def test_a_reset_counts_after_more_force_resets_than_a_statement_has_parameters(
    db_session, deps, caller, users
):
    if not on_postgresql(db_session):
        pytest.skip("65,535 parameters is PostgreSQL's limit (SQLite here takes 250,000)")
    view = breach.force_reset(
        db_session, deps, user_id=users[0].id, mode="invalidate", revoke_sessions=True,
        reset_mfa=False, notify=False, reason="phished", creator=ADMIN, client=caller,
        now=utcnow(),
    ).campaign  # fmt: skip
    # Years of admin force-resets: each one a finished one-account campaign.
    db_session.execute(
        text(
            "INSERT INTO breach_campaigns (id, origin, reason, selector, mode, revoke_sessions,"
            " reset_mfa, notify, status, targeted, processed, sessions_revoked, notices_queued,"
            " batches, failures, created_by, created_at, started_at, finished_at)"
            " SELECT 'old' || g, 'force_reset', 'phished', 'user_ids', 'invalidate', true, false,"
            " false, 'completed', 1, 1, 0, 0, 1, 0, 'tests', now(), now(), now()"
            " FROM generate_series(1, 70000) AS g"
        )
    )
    db_session.expire_all()

    set_new_password(db_session, deps, caller, db_session.get(User, users[0].id))

    assert breach.get_campaign(db_session, campaign_id=view.id).completed_resets == 1


def test_change_at_next_login_asks_for_a_new_password_after_login(
    db_session, deps, caller, users, worker
):
    created = create(db_session, deps, caller, request=request(mode="change_at_next_login"))
    drain(db_session, worker)

    result = accounts.login_with_password(
        db_session, deps, email="user1@example.com", password=PASSWORD, client=caller, now=utcnow()
    )

    assert result.status == "password_change_required"
    assert result.tokens is None and result.change_token
    started = breach.get_campaign(db_session, campaign_id=created.campaign.id).started_at
    flagged_at = db_session.scalars(select(User.password_change_required_at)).all()
    assert len(flagged_at) == 8 and all(at is not None and at >= started for at in flagged_at)


def test_a_batch_that_dies_is_redone_by_the_next_runner(db_session, deps, caller, users, runtime):
    created = create(db_session, deps, caller, request=request(reset_mfa=False))
    campaign_id = created.campaign.id
    factory = runtime.sessionmaker
    with factory.begin() as session:
        batches.run_next_batch(session, deps, campaign_id=campaign_id, now=utcnow())
    with pytest.raises(RuntimeError), factory.begin() as session:
        batches.run_next_batch(session, deps, campaign_id=campaign_id, now=utcnow())
        raise RuntimeError("the process died before commit")

    while True:
        with factory.begin() as session:
            if batches.run_next_batch(
                session, deps, campaign_id=campaign_id, now=utcnow()
            ).finished:
                break

    db_session.expire_all()
    assert sorted(processed_ids(db_session, campaign_id)) == sorted(u.id for u in users)
    assert queued_notices(db_session, campaign_id) == 8
    campaign = db_session.get(BreachCampaign, campaign_id)
    assert (campaign.status, campaign.processed, campaign.notices_queued) == ("completed", 8, 8)
    assert count(db_session, User, User.password_invalidated_at.is_not(None)) == 8


def test_an_account_the_walk_missed_is_flagged_by_the_batches_after_it(
    db_session, deps, caller, users, runtime, walking
):
    created = create(db_session, deps, caller, request=request())
    campaign_id = created.campaign.id
    factory = runtime.sessionmaker

    def step() -> BreachCampaign:
        with factory.begin() as session:
            batches.run_next_batch(session, deps, campaign_id=campaign_id, now=utcnow())
        db_session.expire_all()
        return db_session.get(BreachCampaign, campaign_id)

    campaign = step()
    while campaign.phase == "walk":
        campaign = step()
    # As if its row had moved onto a page the walk had done before it was flagged.
    db_session.get(User, users[3].id).password_invalidated_at = None
    db_session.flush()
    while campaign.status == "running":
        campaign = step()

    assert campaign.status == "completed" and campaign.processed == 8
    assert db_session.get(User, users[3].id).password_invalidated_at is not None
    assert sorted(processed_ids(db_session, campaign_id)) == sorted(u.id for u in users)
    assert queued_notices(db_session, campaign_id) == 8


@pytest.mark.parametrize("selector", ["all", "password_set_before"])
def test_a_reset_between_the_flag_and_the_enrolment_counts_as_flagged_and_completed(
    db_session, deps, caller, users, runtime, worker, later_worker, mailbox, walking, selector
):
    # The walk flags accounts before their target rows are written. An account whose user
    # reset the password in between had no row for the reset to stamp, and the enrolment,
    # seeing a password set since the campaign began, left it out: the campaign reported it
    # neither flagged nor reset. Without the walk (the target rows first), the same events
    # count once in each.
    before = utcnow() + timedelta(hours=1) if selector == "password_set_before" else None
    created = create(db_session, deps, caller, request=request(selector=selector, before=before))
    campaign_id = created.campaign.id
    quick = users[4]

    def step() -> BreachCampaign:
        with runtime.sessionmaker.begin() as session:
            batches.run_next_batch(session, deps, campaign_id=campaign_id, now=utcnow())
        db_session.expire_all()
        return db_session.get(BreachCampaign, campaign_id)

    campaign = step()
    while db_session.get(User, quick.id).password_invalidated_at is None:
        campaign = step()
    if walking:
        assert campaign.phase in breach_sql.WALKING  # flagged, not enrolled yet
    set_new_password(db_session, deps, caller, db_session.get(User, quick.id))
    kept = add_session(db_session, quick)  # signed in with the new password
    drain(db_session, worker)
    drain(db_session, later_worker)

    view = breach.get_campaign(db_session, campaign_id=campaign_id)
    assert view.status == "completed"
    assert (view.processed, view.completed_resets) == (8, 1)
    assert sorted(processed_ids(db_session, campaign_id)) == sorted(u.id for u in users)
    assert (view.notices_queued, view.notified) == (7, 7)
    assert (
        mailbox.messages(quick.email)[-1]["Subject"] != "Security notice: your password was reset"
    )
    assert db_session.get(Session, kept.id).revoked_at is None
    result = accounts.login_with_password(
        db_session, deps, email=quick.email, password=NEW_PASSWORD, client=caller, now=utcnow()
    )
    assert result.status == "authenticated"


def walked_whole_table(db_session, deps, caller, runtime, **changes) -> Created:
    """An `all` campaign whose walk has flagged the whole table in one batch (PostgreSQL)."""
    whole = dataclasses.replace(
        deps, settings=dataclasses.replace(deps.settings, breach_batch_size=10**7)
    )
    created = create(db_session, deps, caller, request=request(**changes))
    with runtime.sessionmaker.begin() as session:  # one page range: the whole table
        batches.run_next_batch(session, whole, campaign_id=created.campaign.id, now=utcnow())
    return created


def test_the_batches_after_a_walk_leave_the_sessions_of_a_completed_reset(
    db_session, deps, caller, users, runtime, worker
):
    if not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    created = walked_whole_table(db_session, deps, caller, runtime)
    with runtime.sessionmaker.begin() as session:  # the enrolment
        batches.run_next_batch(session, deps, campaign_id=created.campaign.id, now=utcnow())
    db_session.expire_all()
    assert db_session.get(BreachCampaign, created.campaign.id).phase == "apply"
    quick = db_session.get(User, users[4].id)
    set_new_password(db_session, deps, caller, quick)
    kept = add_session(db_session, quick)  # signed in with the new password

    drain(db_session, worker)  # the batches that sign out the flagged accounts

    view = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert (view.status, view.processed, view.completed_resets) == ("completed", 8, 1)
    assert db_session.get(Session, kept.id).revoked_at is None


def test_a_cancelled_walk_still_signs_out_and_notifies_whom_it_flagged(
    db_session, deps, caller, users, runtime, worker, later_worker, mailbox
):
    if not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    live = [add_session(db_session, user) for user in users]
    created = walked_whole_table(db_session, deps, caller, runtime)
    db_session.expire_all()
    assert db_session.get(BreachCampaign, created.campaign.id).phase == "enroll"

    cancelled = breach.cancel_campaign(
        db_session,
        deps,
        campaign_id=created.campaign.id,
        creator=ADMIN,
        client=caller,
        now=utcnow(),
    )
    drain(db_session, worker)  # the follow-up: enrolment, then sign-outs
    drain(db_session, later_worker)

    campaign = breach.get_campaign(db_session, campaign_id=cancelled.id)
    assert (cancelled.status, campaign.status) == ("cancelled", "cancelled")
    assert db_session.get(BreachCampaign, cancelled.id).phase == "done"
    assert sorted(processed_ids(db_session, cancelled.id)) == sorted(u.id for u in users)
    assert all(db_session.get(Session, s.id).revoked_reason == "breach_response" for s in live)
    assert (campaign.sessions_revoked, campaign.notified) == (8, 8)
    assert len(mailbox.messages("user5@example.com")) == 1


def test_a_cancelled_walk_records_only_the_accounts_it_flagged(
    db_session, deps, caller, make_user, worker, later_worker, mailbox
):
    if not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    accounts_ = [make_user(email=f"walk{i:02d}@example.com") for i in range(60)]
    created = create(db_session, deps, caller, request=request())
    walked: set[str] = set()
    while not walked:  # a page or so
        batches.run_next_batch(db_session, deps, campaign_id=created.campaign.id, now=utcnow())
        flagged = select(User.id).where(User.password_invalidated_at.is_not(None))
        walked = set(db_session.scalars(flagged))
    breach.cancel_campaign(
        db_session, deps, campaign_id=created.campaign.id, creator=ADMIN, client=caller,
        now=utcnow(),
    )  # fmt: skip
    later = next(u for u in accounts_ if u.id not in walked)

    def force_reset():
        return breach.force_reset(
            db_session, deps, user_id=later.id, mode="invalidate", revoke_sessions=True,
            reset_mfa=False, notify=True, reason="phished", creator=ADMIN, client=caller,
            now=utcnow(),
        )  # fmt: skip

    # Until the cancelled walk has recorded its accounts (those flagged since it started),
    # no other campaign flags one of them.
    with pytest.raises(CampaignConflict) as refused:
        force_reset()
    assert refused.value.extra["campaign_id"] == created.campaign.id
    drain(db_session, worker)  # the follow-up: enrolment, then sign-outs
    force_reset()
    drain(db_session, later_worker)

    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert 0 < len(walked) < len(accounts_)
    assert set(processed_ids(db_session, campaign.id)) == walked
    assert (campaign.processed, campaign.notified) == (len(walked), len(walked))
    assert len(mailbox.messages(later.email)) == 1


def test_a_cancelled_walk_leaves_out_an_account_flagged_before_it_started(
    db_session, deps, caller, users, runtime, worker, later_worker, mailbox
):
    if not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    earlier = users[2]
    breach.force_reset(
        db_session, deps, user_id=earlier.id, mode="change_at_next_login",
        revoke_sessions=False, reset_mfa=False, notify=True, reason="phished", creator=ADMIN,
        client=caller, now=utcnow(),
    )  # fmt: skip
    created = walked_whole_table(
        db_session, deps, caller, runtime, mode="change_at_next_login", notify=True
    )
    # Then the account's row is written for another reason: its login rehashes the password.
    stronger = dataclasses.replace(
        deps,
        hasher=PasswordHasher(
            Argon2Params(time_cost=2, memory_cost_kib=2048, parallelism=1),
            max_concurrent=1,
            acquire_timeout=1.0,
        ),
    )
    db_session.expire_all()
    before = db_session.get(User, earlier.id).updated_at
    result = accounts.login_with_password(
        db_session, stronger, email=earlier.email, password=PASSWORD, client=caller, now=utcnow()
    )
    assert result.status == "password_change_required"
    assert db_session.get(User, earlier.id).updated_at > before
    breach.cancel_campaign(
        db_session, deps, campaign_id=created.campaign.id, creator=ADMIN, client=caller,
        now=utcnow(),
    )  # fmt: skip
    drain(db_session, worker)  # the follow-up: enrolment, then sign-outs
    drain(db_session, later_worker)

    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    others = sorted(u.id for u in users if u is not earlier)
    assert sorted(processed_ids(db_session, campaign.id)) == others
    assert (campaign.processed, campaign.notified) == (7, 7)
    subjects = [m["Subject"] for m in mailbox.messages(earlier.email)]
    assert subjects.count("Security notice: please change your password") == 1, subjects


def test_a_failing_batch_is_retried_then_fails_the_campaign(
    db_session, deps, caller, users, worker, monkeypatch
):
    created = create(db_session, deps, caller, request=request())

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(batches, "run_next_batch", broken)
    for _ in range(breach.MAX_BATCH_FAILURES):
        db_session.flush()
        db_session.execute(
            OutboxMessage.__table__.update()
            .where(OutboxMessage.kind == "breach_batch", OutboxMessage.completed_at.is_(None))
            .values(available_at=utcnow() - timedelta(seconds=1))
        )
        worker.drain()

    db_session.expire_all()
    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert campaign.status == "failed"
    assert campaign.last_error == "RuntimeError: disk full"
    assert (
        count(
            db_session,
            OutboxMessage,
            OutboxMessage.kind == "breach_batch",
            OutboxMessage.completed_at.is_(None),
        )
        == 0
    )


def test_a_failed_walk_still_signs_out_and_notifies_whom_it_flagged(
    db_session, deps, caller, users, runtime, worker, monkeypatch
):
    if not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    live = [add_session(db_session, user) for user in users]
    created = walked_whole_table(db_session, deps, caller, runtime)
    enroll = walk.enroll

    def broken(session, campaign, *, now, cancelled=False):
        if not cancelled:
            raise RuntimeError("disk full")
        return enroll(session, campaign, now=now, cancelled=cancelled)

    monkeypatch.setattr(walk, "enroll", broken)
    for _ in range(breach.MAX_BATCH_FAILURES + 2):
        db_session.flush()
        db_session.execute(
            OutboxMessage.__table__.update()
            .where(OutboxMessage.kind == "breach_batch", OutboxMessage.completed_at.is_(None))
            .values(available_at=utcnow() - timedelta(seconds=1))
        )
        worker.drain()

    db_session.expire_all()
    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert (campaign.status, campaign.last_error) == ("failed", "RuntimeError: disk full")
    assert db_session.get(BreachCampaign, campaign.id).phase == "done"
    assert sorted(processed_ids(db_session, campaign.id)) == sorted(u.id for u in users)
    assert all(db_session.get(Session, s.id).revoked_reason == "breach_response" for s in live)
    assert queued_notices(db_session, campaign.id) == 8


# --- selectors and options ----------------------------------------------------------------


def test_an_email_list_reports_unknown_addresses(db_session, deps, caller, users, worker):
    targets = lists.parse_target_list(
        "emails", ["USER1@example.com", "nobody@example.com", "user2@example.com", "bad"]
    )

    created = create(db_session, deps, caller, request=request(selector="emails", targets=targets))
    drain(db_session, worker)

    campaign = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert campaign.status == "completed" and campaign.processed == 2
    assert campaign.input is not None
    assert (campaign.input.matched, campaign.input.unknown, campaign.input.rejected) == (2, 1, 1)
    assert campaign.input.unknown_values == ("nobody@example.com",)
    assert db_session.get(User, users[1].id).password_invalidated_at is not None
    assert db_session.get(User, users[0].id).password_invalidated_at is None


def test_before_selectors_pick_older_accounts(db_session, deps, caller, users, worker):
    old = users[0]
    old.created_at = old.password_set_at = utcnow() - timedelta(days=400)
    cutoff = utcnow() - timedelta(days=30)

    by_creation = create(
        db_session, deps, caller, request=request(selector="created_before", before=cutoff)
    )
    drain(db_session, worker)
    by_password = create(
        db_session,
        deps,
        caller,
        request=request(selector="password_set_before", before=cutoff, mode="change_at_next_login"),
    )
    drain(db_session, worker)

    assert by_creation.campaign.targeted == by_password.campaign.targeted == 1
    assert db_session.get(User, old.id).password_change_required is True
    assert count(db_session, User, User.password_invalidated_at.is_not(None)) == 1


def test_reset_mfa_removes_second_factors(db_session, deps, caller, users, worker):
    at = utcnow()
    db_session.add(
        TotpFactor(
            user_id=users[0].id,
            name="phone",
            secret_ciphertext=b"x",
            created_at=at,
            confirmed_at=at,
            confirm_attempts=0,
        )
    )
    db_session.add(RecoveryCode(user_id=users[0].id, code_hash="h" * 64, created_at=at))
    db_session.add(
        TotpFactor(
            user_id=users[1].id,
            name="phone",
            secret_ciphertext=b"x",
            created_at=at,
            confirmed_at=at,
            confirm_attempts=0,
        )
    )
    targets = lists.parse_target_list("user_ids", [users[0].id])

    create(
        db_session,
        deps,
        caller,
        request=request(selector="user_ids", targets=targets, reset_mfa=True),
    )
    drain(db_session, worker)

    assert count(db_session, TotpFactor, TotpFactor.user_id == users[0].id) == 0
    assert count(db_session, RecoveryCode) == 0
    assert count(db_session, TotpFactor, TotpFactor.user_id == users[1].id) == 1


NOTICE = "Security notice: your password was reset"
FACTORS_REMOVED = "Security notice: your two-step verification was removed"
PASSWORD_CHANGED = "Your password was changed"


def add_second_factors(db_session, user) -> None:
    """A confirmed authenticator app and a recovery code."""
    at = utcnow()
    db_session.add(
        TotpFactor(
            user_id=user.id,
            name="phone",
            secret_ciphertext=b"x",
            created_at=at,
            confirmed_at=at,
            confirm_attempts=0,
        )
    )
    db_session.add(RecoveryCode(user_id=user.id, code_hash="h" * 64, created_at=at))
    db_session.flush()


def subjects(mailbox, user) -> list[str]:
    return sorted(m["Subject"] for m in mailbox.messages(user.email))


def factor_notices(db_session, campaign_id: str) -> int:
    """The mails about removed factors that the campaign's events in the trail count."""
    found = [
        json.loads(details or "{}")
        for details in db_session.scalars(
            select(AuditEvent.details).where(AuditEvent.type.like("breach.%"))
        )
    ]
    return sum(d.get("factor_notices", 0) for d in found if d.get("campaign_id") == campaign_id)


def test_a_reset_after_the_batch_took_the_factors_mails_their_removal_instead_of_the_notice(
    db_session, deps, caller, users, make_user, runtime, later_worker, mailbox, walking
):
    # The batch removed the account's second factors and queued its notice, which would have
    # said so; then the user chose a new password, so the notice (your password no longer
    # works) was withdrawn, and nothing told the user that two-step verification was gone.
    quick, bare, kept = users[2], users[3], users[5]
    disabled = make_user(email="gone@example.com", disabled=True)
    for user in (quick, kept, disabled):
        add_second_factors(db_session, user)
    created = create(db_session, deps, caller, request=request(reset_mfa=True))
    campaign_id = created.campaign.id
    while True:  # every batch; the notice job waits in the outbox
        with runtime.sessionmaker.begin() as session:
            if batches.run_next_batch(
                session, deps, campaign_id=campaign_id, now=utcnow()
            ).finished:
                break
    db_session.expire_all()
    assert count(db_session, TotpFactor) == count(db_session, RecoveryCode) == 0
    for user in (quick, bare):
        set_new_password(db_session, deps, caller, db_session.get(User, user.id))

    drain(db_session, later_worker)
    drain(db_session, later_worker)

    assert subjects(mailbox, quick) == [FACTORS_REMOVED, PASSWORD_CHANGED]
    (body,) = [
        m.get_content() for m in mailbox.messages(quick.email) if m["Subject"] == FACTORS_REMOVED
    ]
    assert "authenticator apps, security keys, recovery codes" in body
    assert "set them up again" in body
    assert "/reset-password?" not in body
    assert subjects(mailbox, bare) == [PASSWORD_CHANGED]  # it had no factor to lose
    assert subjects(mailbox, kept) == [NOTICE]  # the notice says the factors went too
    assert "two-step verification methods" in mailbox.last(kept.email).get_content()
    assert mailbox.messages(disabled.email) == []
    view = breach.get_campaign(db_session, campaign_id=campaign_id)
    assert (view.processed, view.completed_resets) == (9, 2)
    assert (view.notices_queued, view.notified) == (6, 6)
    assert factor_notices(db_session, campaign_id) == 1


def test_a_reset_between_the_walk_and_the_batch_that_takes_the_factors_mails_their_removal(
    db_session, deps, caller, users, make_user, runtime, worker, later_worker, mailbox
):
    # The walk flagged the account, its user chose a new password (its target row written
    # then, without a notice), and the batch after the enrolment removed its factors.
    if not on_postgresql(db_session):
        pytest.skip("the page walk is PostgreSQL's")
    quick, bare, kept = users[2], users[3], users[5]
    disabled = make_user(email="gone@example.com", disabled=True)
    for user in (quick, kept, disabled):
        add_second_factors(db_session, user)
    created = walked_whole_table(db_session, deps, caller, runtime, reset_mfa=True)
    db_session.expire_all()
    assert db_session.get(BreachCampaign, created.campaign.id).phase == "enroll"
    for user in (quick, bare):
        set_new_password(db_session, deps, caller, db_session.get(User, user.id))

    drain(db_session, worker)  # the enrolment, then the batches that remove the factors
    drain(db_session, later_worker)
    drain(db_session, later_worker)

    assert count(db_session, TotpFactor) == count(db_session, RecoveryCode) == 0
    assert subjects(mailbox, quick) == [FACTORS_REMOVED, PASSWORD_CHANGED]
    assert subjects(mailbox, bare) == [PASSWORD_CHANGED]
    assert subjects(mailbox, kept) == [NOTICE]
    assert mailbox.messages(disabled.email) == []
    view = breach.get_campaign(db_session, campaign_id=created.campaign.id)
    assert (view.processed, view.completed_resets) == (9, 2)
    assert (view.notices_queued, view.notified) == (6, 6)
    assert factor_notices(db_session, created.campaign.id) == 1


def test_pending_login_steps_die_with_the_password(db_session, deps, caller, users, worker):
    token = user_tokens.issue(
        db_session, user_id=users[0].id, purpose="mfa", ttl=timedelta(minutes=5), now=utcnow()
    )
    create(db_session, deps, caller, request=request())
    drain(db_session, worker)

    with pytest.raises(InvalidToken):
        user_tokens.find(db_session, token=token, purpose="mfa", now=utcnow())


def test_a_racing_login_session_is_swept(db_session, deps, caller, users, worker, later_worker):
    created = create(db_session, deps, caller, request=request())
    drain(db_session, worker)
    straggler = add_session(db_session, users[2])  # as if its login read the account early

    drain(db_session, later_worker)  # the sweep comes due later

    assert db_session.get(Session, straggler.id).revoked_reason == "breach_response"
    assert breach.get_campaign(db_session, campaign_id=created.campaign.id).sessions_revoked == 1


# --- refusals -----------------------------------------------------------------------------


def test_bad_requests_are_refused_before_anything_is_written(db_session, deps, caller, users):
    cases = [
        request(selector="everyone"),
        request(mode="lock"),
        request(reason="  "),
        request(selector="created_before"),
        request(selector="emails"),
    ]
    for bad in cases:
        with pytest.raises(InvalidRequest):
            breach.create_campaign(
                db_session, deps, request=bad, creator=ADMIN, client=caller, now=utcnow()
            )
    empty = lists.parse_target_list("emails", ["nope", ""])
    with pytest.raises(EmptyTargetList) as refused:
        breach.create_campaign(
            db_session,
            deps,
            creator=ADMIN,
            client=caller,
            now=utcnow(),
            request=request(selector="emails", targets=empty),
        )
    assert refused.value.extra["rejected"] == 1
    assert count(db_session, BreachCampaign) == 0


def test_a_list_that_matches_nobody_starts_nothing(db_session, deps, caller, users):
    targets = lists.parse_target_list("emails", ["nobody@example.com"])

    with pytest.raises(NoTargets):
        breach.create_campaign(
            db_session,
            deps,
            creator=ADMIN,
            client=caller,
            now=utcnow(),
            request=request(selector="emails", targets=targets),
        )

    assert count(db_session, BreachCampaign) == 0
    assert count(db_session, BreachTarget) == 0
    assert count(db_session, AuditEvent, AuditEvent.type == "breach.campaign_refused") == 1


def test_an_overlapping_campaign_is_refused_while_one_runs(db_session, deps, caller, users):
    running = create(db_session, deps, caller, request=request())
    targets = lists.parse_target_list("emails", ["user4@example.com"])

    with pytest.raises(CampaignConflict) as refused:
        breach.create_campaign(
            db_session,
            deps,
            creator=ADMIN,
            client=caller,
            now=utcnow(),
            request=request(selector="emails", targets=targets),
        )

    assert refused.value.extra["campaign_id"] == running.campaign.id
    assert count(db_session, BreachCampaign) == 1
    assert count(db_session, BreachTarget) == 0
    with pytest.raises(CampaignConflict):
        breach.force_reset(
            db_session,
            deps,
            user_id=users[4].id,
            mode="invalidate",
            revoke_sessions=True,
            reset_mfa=False,
            notify=False,
            reason="x",
            creator=ADMIN,
            client=caller,
            now=utcnow(),
        )


def test_disjoint_campaigns_may_run_together(db_session, deps, caller, users):
    first = lists.parse_target_list("emails", ["user1@example.com"])
    second = lists.parse_target_list("emails", ["user2@example.com"])

    create(db_session, deps, caller, request=request(selector="emails", targets=first))
    create(db_session, deps, caller, request=request(selector="emails", targets=second))

    assert count(db_session, BreachCampaign, BreachCampaign.status == "pending") == 2


def test_an_idempotency_key_returns_the_same_campaign(db_session, deps, caller, users):
    first = create(db_session, deps, caller, request=request(), idempotency_key="k-1")
    again = create(db_session, deps, caller, request=request(), idempotency_key="k-1")

    assert again.replayed and again.campaign.id == first.campaign.id
    with pytest.raises(IdempotencyKeyReused):
        create(
            db_session,
            deps,
            caller,
            request=request(mode="change_at_next_login"),
            idempotency_key="k-1",
        )
    assert count(db_session, BreachCampaign) == 1


def test_a_dry_run_counts_and_writes_nothing_but_its_audit_event(db_session, deps, caller, users):
    running = create(
        db_session,
        deps,
        caller,
        request=request(
            selector="user_ids", targets=lists.parse_target_list("user_ids", [users[0].id])
        ),
    )

    result = breach.create_campaign(
        db_session,
        deps,
        request=request(),
        creator=ADMIN,
        client=caller,
        now=utcnow(),
        dry_run=True,
    )

    assert result == DryRun(targeted=8, conflicts_with=running.campaign.id, input=None)
    assert count(db_session, BreachCampaign) == 1
    assert count(db_session, BreachTarget) == 1
    assert count(db_session, AuditEvent, AuditEvent.type == "breach.dry_run") == 1


def test_cancel_stops_a_campaign_but_not_a_finished_one(db_session, deps, caller, users, worker):
    created = create(db_session, deps, caller, request=request())
    with pytest.raises(NotFound):
        breach.cancel_campaign(
            db_session, deps, campaign_id="nope", creator=ADMIN, client=caller, now=utcnow()
        )

    cancelled = breach.cancel_campaign(
        db_session,
        deps,
        campaign_id=created.campaign.id,
        creator=ADMIN,
        client=caller,
        now=utcnow(),
    )
    drain(db_session, worker)

    assert cancelled.status == "cancelled"
    assert breach.get_campaign(db_session, campaign_id=cancelled.id).processed == 0
    assert count(db_session, User, User.password_invalidated_at.is_not(None)) == 0
    again = breach.cancel_campaign(
        db_session, deps, campaign_id=cancelled.id, creator=ADMIN, client=caller, now=utcnow()
    )
    assert again.status == "cancelled"
    done = create(db_session, deps, caller, request=request())
    drain(db_session, worker)
    with pytest.raises(CampaignFinished):
        breach.cancel_campaign(
            db_session,
            deps,
            campaign_id=done.campaign.id,
            creator=ADMIN,
            client=caller,
            now=utcnow(),
        )


def test_force_reset_applies_at_once(db_session, deps, caller, users, later_worker, mailbox):
    live = add_session(db_session, users[6])

    view = breach.force_reset(
        db_session,
        deps,
        user_id=users[6].id,
        mode="invalidate",
        revoke_sessions=True,
        reset_mfa=False,
        notify=True,
        reason="phished",
        creator=ADMIN,
        client=caller,
        now=utcnow(),
    ).campaign

    assert (view.status, view.origin, view.processed, view.sessions_revoked) == (
        "completed",
        "force_reset",
        1,
        1,
    )
    db_session.expire_all()
    assert db_session.get(User, users[6].id).password_invalidated_at is not None
    assert db_session.get(Session, live.id).revoked_at is not None
    drain(db_session, later_worker)
    assert mailbox.token("user6@example.com", "reset-password")
    with pytest.raises(NotFound):
        breach.force_reset(
            db_session,
            deps,
            user_id="nobody",
            mode="invalidate",
            revoke_sessions=True,
            reset_mfa=False,
            notify=True,
            reason="x",
            creator=ADMIN,
            client=caller,
            now=utcnow(),
        )


def statements_during(connection, call) -> list[tuple[str, object]]:
    """The SQL statements ``call`` runs, with their parameters (savepoints left out)."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, *_args):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            seen.append((statement, parameters))

    event.listen(connection, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(connection, "before_cursor_execute", record)
    return seen


def test_a_force_reset_asks_each_question_once_and_leaves_the_statistics_alone(
    db_session, connection, deps, caller, users
):
    seen = statements_during(
        connection,
        lambda: breach.force_reset(
            db_session, deps, user_id=users[3].id, mode="invalidate", revoke_sessions=True,
            reset_mfa=False, notify=True, reason="phished", creator=ADMIN, client=caller,
            now=utcnow(),
        ),
    )  # fmt: skip

    def runs(*parts: str) -> int:
        return sum(all(part in statement for part in parts) for statement, _ in seen)

    assert runs("FROM breach_campaigns", "last_page IS NOT NULL") == 1  # the conflict check
    assert runs("count(", "notified_at IS NOT NULL") == 1  # the answer's counts
    assert runs("count(", "reset_at IS NOT NULL") == 1
    # A one-account campaign needs no fresh statistics of every campaign's targets.
    assert runs("ANALYZE") == 0


def test_a_campaign_larger_than_a_batch_analyzes_its_targets_first(
    db_session, connection, deps, caller, users
):
    if not on_postgresql(db_session):
        pytest.skip("ANALYZE is run on PostgreSQL")
    emails = [f"user{i}@example.com" for i in range(5)]  # batches of 3
    targets = lists.parse_target_list("emails", emails)
    created = create(db_session, deps, caller, request=request(selector="emails", targets=targets))

    seen = statements_during(
        connection,
        lambda: batches.run_next_batch(
            db_session, deps, campaign_id=created.campaign.id, now=utcnow()
        ),
    )

    assert ("ANALYZE breach_targets", {}) in seen


def test_the_conflict_check_reads_only_campaigns_that_may_claim_accounts(db_session, connection):
    """However many finished campaigns there are (one per force-reset), the check reads the
    partial index of the few that may still claim accounts."""
    claiming = select(BreachCampaign.id).where(breach_sql.claiming())
    seen = statements_during(connection, lambda: db_session.execute(claiming).all())
    # Constants, not parameters: the index's condition holds on a plan made for any values.
    assert [bool(parameters) for _, parameters in seen] == [False]

    statement = breach_sql.claiming_besides("none").compile(
        db_session.get_bind(), compile_kwargs={"literal_binds": True}
    )
    if on_postgresql(db_session):
        db_session.execute(text("SET LOCAL enable_seqscan = off"))  # the table is small here
        plan = db_session.scalars(text(f"EXPLAIN {statement}")).all()
    else:
        plan = [row[-1] for row in db_session.execute(text(f"EXPLAIN QUERY PLAN {statement}"))]
    assert any("ix_breach_campaigns_claiming" in line for line in plan), plan


def test_notices_go_out_at_the_configured_rate_once_each(
    db_session, deps, caller, users, runtime, mailbox
):
    slow = dataclasses.replace(
        deps, settings=dataclasses.replace(deps.settings, notify_rate_per_second=2.0)
    )
    clock = [utcnow()]
    worker = OutboxWorker(
        sessionmaker=runtime.sessionmaker,
        deps=slow,
        handlers=default_handlers(make_backend(runtime.settings.mail_url)),
        clock=lambda: clock[0],
    )
    created = create(db_session, deps, caller, request=request())

    notified = []
    for _ in range(6):
        drain(db_session, worker)  # batches, then one run of the notice job: two mails
        notified.append(breach.get_campaign(db_session, campaign_id=created.campaign.id).notified)
        pending = db_session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.kind == "breach_notices", OutboxMessage.completed_at.is_(None)
            )
        ).all()
        if notified[-1] < 8:
            assert len(pending) == 1
            assert pending[0].available_at == clock[0] + timedelta(seconds=1)
            assert set(outbox.payload_of(deps.keyring, pending[0])) == {"campaign_id", "after"}
        clock[0] += timedelta(seconds=1)

    assert notified == [2, 4, 6, 8, 8, 8]
    assert pending == []  # done: nothing left to send
    assert all(len(mailbox.messages(f"user{i}@example.com")) == 1 for i in range(8))


def test_tickets_queued_by_earlier_versions_send_one_notice_each(
    db_session, deps, caller, users, worker, mailbox
):
    created = create(db_session, deps, caller, request=request())
    for _ in range(2):  # one ticket per account, as earlier versions queued them
        outbox.enqueue(
            db_session,
            deps.keyring,
            kind="breach_notice",
            payload={"campaign_id": created.campaign.id},
            now=utcnow(),
        )

    drain(db_session, worker)  # the batches, the tickets, then the campaign's notice job

    tickets = (OutboxMessage.kind == "breach_notice", OutboxMessage.completed_at.is_not(None))
    assert count(db_session, OutboxMessage, *tickets) == 2
    assert breach.get_campaign(db_session, campaign_id=created.campaign.id).notified == 8
    assert all(len(mailbox.messages(f"user{i}@example.com")) == 1 for i in range(8))


def test_a_breached_password_at_login_flags_the_account_unless_turned_off(
    db_session, deps, caller, make_user
):
    make_user(email="first@example.com", password="password123")
    make_user(email="second@example.com", password="password123")
    off = dataclasses.replace(
        deps, settings=Settings.from_env({"AUTHSVC_FLAG_BREACHED_AT_LOGIN": "false"})
    )
    off = dataclasses.replace(
        deps,
        settings=dataclasses.replace(
            deps.settings, flag_breached_at_login=off.settings.flag_breached_at_login
        ),
    )

    flagged = accounts.login_with_password(
        db_session,
        deps,
        email="first@example.com",
        password="password123",
        client=caller,
        now=utcnow(),
    )
    allowed = accounts.login_with_password(
        db_session,
        off,
        email="second@example.com",
        password="password123",
        client=caller,
        now=utcnow(),
    )

    assert flagged.status == "password_change_required"
    assert allowed.status == "authenticated"
    assert count(db_session, AuditEvent, AuditEvent.type == "password.breached_at_login") == 1
