"""services.password_costs: the costs of stored hashes other than the current settings' are
recorded (imports, a start, a login that meets one), timed by each process, and deleted once no
stored hash has them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import bcrypt
import pytest
from sqlalchemy import event, select

from authsvc.crypto.passwords import Argon2Params, PasswordHasher, cost_prefix
from authsvc.errors import InvalidCredentials
from authsvc.models import PasswordHashCost, User
from authsvc.services import accounts, admin, password_costs, user_tokens
from tests.conftest import every_slot_taken_after_the_check
from tests.service.conftest import CLIENT, PASSWORD

OPS = admin.AdminIdentity(key_id="k1", name="ops")


def bcrypt_hash(password: str, cost: int = 6) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def recorded(db_session) -> set[str]:
    return set(db_session.scalars(select(PasswordHashCost.prefix)))


@pytest.fixture(autouse=True)
def fresh_reads(monkeypatch):
    monkeypatch.setattr(password_costs, "REFRESH_SECONDS", 0.0)


def test_an_imported_hash_records_its_cost_and_a_password_does_not(db_session, deps, now):
    own = deps.hasher.hash("made here")
    for email, password, password_hash in (
        ("a@example.com", "a fine password 42", None),
        ("b@example.com", None, own),
        ("c@example.com", None, bcrypt_hash("the old system's")),
        ("d@example.com", None, bcrypt_hash("another of the old system's")),
    ):
        admin.create_user(
            db_session,
            deps,
            admin=OPS,
            email=email,
            password=password,
            password_hash=password_hash,
            email_verified=True,
            client=CLIENT,
            now=now,
        )

    assert recorded(db_session) == {"$2b$06$"}
    [sample] = db_session.scalars(select(PasswordHashCost.sample_hash))
    assert cost_prefix(sample) == "$2b$06$"
    # A sample of a random password, not one of the imported hashes.
    assert sample not in set(db_session.scalars(select(User.password_hash)))


def test_a_login_meeting_an_unrecorded_cost_records_it_and_pads_from_then_on(
    db_session, deps, now, make_user
):
    # Imported before costs were recorded: the first check of it records its cost.
    user = make_user(email="old@example.com")
    user.password_hash = bcrypt_hash("imported long ago", cost=7)
    db_session.flush()
    assert recorded(db_session) == set()

    with pytest.raises(InvalidCredentials):
        accounts.authenticate_password(
            db_session, deps, email=user.email, password="a wrong guess", client=CLIENT, now=now
        )

    assert recorded(db_session) == {"$2b$07$"}
    assert deps.hasher.calibrated() == {"$2b$07$"}
    assert deps.hasher.floor() > 1.0


def test_each_process_times_the_recorded_costs_and_forgets_deleted_ones(db_session, deps, now):
    password_costs.record(db_session, [bcrypt_hash("x", cost=5)], now=now)
    assert deps.hasher.calibrated() == set()

    password_costs.refresh(db_session, deps.hasher)
    assert deps.hasher.calibrated() == {"$2b$05$"}

    db_session.delete(db_session.get(PasswordHashCost, "$2b$05$"))
    db_session.flush()
    password_costs.refresh(db_session, deps.hasher)
    assert deps.hasher.calibrated() == set()
    assert deps.hasher.floor() == 1.0


def test_a_start_records_its_own_cost_which_outlives_a_change_of_settings(
    db_session, deps, now, make_user
):
    password_costs.record_own(db_session, deps.hasher, now=now)
    password_costs.record_own(db_session, deps.hasher, now=now)  # once
    own = deps.hasher.own_cost()
    assert recorded(db_session) == {own}
    password_costs.refresh(db_session, deps.hasher)
    assert deps.hasher.calibrated() == set()  # its own settings: a current check

    make_user(email="current@example.com")
    password_costs.record(db_session, [bcrypt_hash("y", cost=5)], now=now)
    assert password_costs.prune(db_session, deps.hasher) == ["$2b$05$"]  # nobody has it
    assert recorded(db_session) == {own}  # the current settings' stays, whoever has it


def test_a_cost_is_pruned_only_once_no_stored_hash_has_it(db_session, deps, now, make_user):
    user = make_user(email="imported@example.com")
    user.password_hash = bcrypt_hash("imported", cost=5)
    other = make_user(email="other@example.com")
    other.password_hash = bcrypt_hash("imported too", cost=4)
    db_session.flush()
    password_costs.record(db_session, [user.password_hash, other.password_hash], now=now)

    assert password_costs.prune(db_session, deps.hasher) == []
    user.password_hash = deps.hasher.hash("rehashed at login")  # the owner signed in
    db_session.flush()

    assert password_costs.prune(db_session, deps.hasher) == ["$2b$05$"]
    assert recorded(db_session) == {"$2b$04$"}


def test_the_worker_housekeeping_deletes_costs_nobody_has(db_session, deps, now, worker):
    password_costs.record(db_session, [bcrypt_hash("z", cost=4)], now=now)
    db_session.commit()

    worker.sweep()

    assert recorded(db_session) == set()


@pytest.mark.parametrize(
    "refusal",
    [
        {"disabled": True},
        {"verified": False},
        {"password_invalidated_at": datetime(2026, 1, 1, tzinfo=UTC)},
    ],
    ids=["disabled", "unverified", "password_invalidated"],
)
def test_a_refused_login_with_the_right_password_takes_as_long_as_a_wrong_one(
    db_session, deps, now, make_user, refusal
):
    # Such an account answers the right password 401 invalid_credentials like a wrong one: a
    # breach-invalidated account, say, tried with the leaked password. Failed checks are
    # padded to the costliest stored hash's (bcrypt 8 here, several times a current check);
    # a right password was not, so its quicker answer told that the password was right.
    user = make_user(email="refused@example.com", **refusal)
    password_costs.record(db_session, [bcrypt_hash("imported", cost=8)], now=now)

    def took(password: str) -> float:
        started = time.perf_counter()
        with pytest.raises(InvalidCredentials):
            accounts.authenticate_password(
                db_session, deps, email=user.email, password=password, client=CLIENT, now=now
            )
        return time.perf_counter() - started

    took("a wrong guess")  # the first one times the recorded cost
    assert deps.hasher.floor() > 2.0
    wrong = took("another wrong guess")
    assert took(PASSWORD) >= 0.8 * wrong


def test_a_login_makes_the_sample_of_an_unrecorded_cost_in_a_free_hashing_slot(
    db_session, deps, now, make_user, monkeypatch
):
    # A sample is a hash of that cost (an Argon2 one of earlier settings may take gigabytes):
    # made outside the hashing slots, as many requests at once could make one each as there
    # are threads. With every slot taken once the password was checked, it is left to a
    # later login.
    user = make_user(email="old@example.com")
    user.password_hash = bcrypt_hash("imported long ago", cost=5)
    db_session.flush()
    hasher = deps.hasher

    def log_in() -> None:
        with pytest.raises(InvalidCredentials):
            accounts.authenticate_password(
                db_session, deps, email=user.email, password="wrong", client=CLIENT, now=now
            )

    with every_slot_taken_after_the_check(hasher, monkeypatch):
        log_in()

    assert recorded(db_session) == set()
    log_in()
    assert recorded(db_session) == {"$2b$05$"}
    assert hasher.calibrated() == {"$2b$05$"}


def test_two_sweeps_at_once_delete_a_cost_once_and_neither_fails(
    committed, deps, now, database_url
):
    # Each instance's housekeeping prunes; another one deleted the cost after this one listed
    # it. The second sweep failed (it deleted what it could no longer read) and skipped its
    # whole round of housekeeping.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: the other sweep cannot commit between")
    with committed.begin() as session:
        password_costs.record(session, [bcrypt_hash("nobody has it", cost=4)], now=now)
    other: list[list[str]] = []

    with committed.begin() as session:

        @event.listens_for(session, "do_orm_execute")
        def the_other_sweep_ends_first(state) -> None:
            if not other and "users" in str(state.statement):
                with committed.begin() as elsewhere:
                    other.append(password_costs.prune(elsewhere, deps.hasher))

        gone = password_costs.prune(session, deps.hasher)

    assert other == [["$2b$04$"]]
    assert gone == []
    with committed() as session:
        assert recorded(session) == set()


def test_a_cost_a_pending_sign_up_has_is_not_pruned(db_session, deps, now, make_user):
    # A sign-up made before the settings changed holds its hash until its link is opened;
    # the hash then becomes the account's. Pruned meanwhile, its cost was unrecorded, and the
    # account's wrong passwords answered in that hash's own time until one recorded it again.
    earlier = PasswordHasher(Argon2Params(1, 2048, 1), max_concurrent=1, acquire_timeout=1)
    pending = earlier.hash("chosen at sign-up")
    user = make_user(email="signed-up@example.com", password=None, verified=False)
    secret = user_tokens.issue(
        db_session,
        user_id=user.id,
        purpose="verify_email",
        ttl=timedelta(days=1),
        now=now,
        pending_password_hash=pending,
    )
    password_costs.record(db_session, [pending], now=now)

    assert password_costs.prune(db_session, deps.hasher) == []

    row = user_tokens.find(db_session, token=secret, purpose="verify_email", now=now)
    user_tokens.consume(db_session, row=row, now=now)  # the link is opened
    user.password_hash = pending
    db_session.flush()
    assert password_costs.prune(db_session, deps.hasher) == []
