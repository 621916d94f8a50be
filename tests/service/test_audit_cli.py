"""`authsvc audit verify` and `authsvc audit prune` against a real, committed database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from authsvc.app import build_runtime
from authsvc.cli import main
from authsvc.db import make_engine, utcnow
from authsvc.schema import upgrade
from authsvc.services import audit
from authsvc.services.context import Client
from authsvc.settings import Settings


@pytest.fixture
def env(scratch_database_url, key_specs, tmp_path):
    upgrade(scratch_database_url)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield {
        "AUTHSVC_DATABASE_URL": scratch_database_url,
        "AUTHSVC_ENCRYPTION_KEYS": ",".join(key_specs),
        "AUTHSVC_VAR_DIR": str(tmp_path / "var"),
        "AUTHSVC_LOG_LEVEL": "WARNING",
    }
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def run(env, *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def seed(env, count: int, *, days_ago: int = 0) -> list[int]:
    settings = Settings.from_env(env)
    runtime = build_runtime(settings)
    events = []
    with runtime.sessionmaker.begin() as session:
        for i in range(count):
            event = audit.record(
                session,
                type="login.failure",
                outcome="wrong_password",
                now=utcnow() - timedelta(days=days_ago, seconds=count - i),
                client=Client(ip="192.0.2.1", user_agent="cli-test"),
                user_id=f"user{i}",
            )
            events.append(event)
    runtime.dispose()
    return [event.id for event in events]  # ids are given when the events are written, at commit


def sql(env, statement: str, **params) -> None:
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text(statement), params)
    engine.dispose()


def test_verify_passes_then_names_the_edited_row(env):
    assert run(env, "admin", "create-key", "--name", "cli").exit_code == 0
    ids = seed(env, 5)
    ok = run(env, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "6 events verified" in ok.output
    sql(env, "UPDATE audit_events SET ip = '203.0.113.66' WHERE id = :id", id=ids[2])
    broken = run(env, "audit", "verify")
    assert broken.exit_code == 1
    assert f"broken at event {ids[2]}" in broken.output
    assert "altered" in broken.output


def test_verify_names_the_row_after_a_deleted_one(env):
    ids = seed(env, 5)
    sql(env, "DELETE FROM audit_events WHERE id = :id", id=ids[-1])
    result = run(env, "audit", "verify")
    assert result.exit_code == 1 and "end" in result.output
    sql(env, "DELETE FROM audit_events WHERE id = :id", id=ids[1])
    result = run(env, "audit", "verify")
    assert result.exit_code == 1
    assert f"broken at event {ids[2]}" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_prune_keeps_what_remains_verifiable(env):
    old = seed(env, 4, days_ago=500)
    recent = seed(env, 2)
    result = run(env, "audit", "prune")  # AUTHSVC_AUDIT_RETENTION, 400 days by default
    assert result.exit_code == 0, result.output
    assert "pruned 4 events" in result.output
    verified = run(env, "audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert "3 events verified" in verified.output  # two recent ones and the pruning itself
    sql(env, "DELETE FROM audit_events WHERE id = :id", id=recent[0])
    assert run(env, "audit", "verify").exit_code == 1
    assert old[-1] < recent[0]


def test_pruning_every_event_leaves_a_trail_that_verifies_and_grows(env):
    # Every event older than the cutoff: the table was left empty, and SQLite gives the next
    # row the id 1 again (the largest id + 1), so the prune's own event, and each one after
    # it, lay before the chain's anchor: `audit verify` failed for good.
    old = seed(env, 3, days_ago=500)

    result = run(env, "audit", "prune")

    assert result.exit_code == 0, result.output
    assert "pruned 3 events" in result.output
    later = seed(env, 1)
    assert later[0] > old[-1]
    verified = run(env, "audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert "2 events verified" in verified.output  # the pruning, then the later event


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than", "0d"],
        ["--older-than", "\u00b2d"],  # a digit to str.isdigit, not to int()
        ["--older-than", "1000000d"],  # before year 1
        ["--older-than", "9" * 5000 + "d"],  # past int()'s digit limit
        ["--before", "soon"],
        ["--before", "2025-01-01T00:00:00"],
        ["--before", "2025-01-01T00:00:00Z", "--older-than", "3d"],
        ["--before", "2999-01-01T00:00:00Z"],  # in the future: it would delete everything
        ["--before", (datetime.now(UTC) - timedelta(hours=12)).isoformat()],  # under a day
    ],
)
def test_prune_rejects_bad_arguments(key_specs, tmp_path, args):
    env = {
        "AUTHSVC_DATABASE_URL": f"sqlite:///{tmp_path / 'never-opened.db'}",
        "AUTHSVC_ENCRYPTION_KEYS": ",".join(key_specs),
    }
    result = run(env, "audit", "prune", *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)


def test_retention_zero_keeps_everything(env):
    seed(env, 2, days_ago=900)
    result = run({**env, "AUTHSVC_AUDIT_RETENTION": "0"}, "audit", "prune")
    assert result.exit_code == 0
    assert run(env, "audit", "verify").output.startswith("audit trail intact: 2 events")


def test_prune_works_in_batches(env, monkeypatch):
    from authsvc.commands import audit as audit_command

    monkeypatch.setattr(audit_command, "BATCH", 2)
    seed(env, 5, days_ago=500)
    result = run(env, "audit", "prune", "--older-than", "30d")
    assert result.exit_code == 0 and "pruned 5 events" in result.output
    verified = run(env, "audit", "verify")
    assert verified.exit_code == 0 and "3 events verified" in verified.output  # one per batch


def test_verify_finds_the_trail_cut_back_to_an_earlier_head(env):
    # Whoever can write the database and kept a copy of the head row (with its signature) can
    # delete the events after it and put that copy back: the chain and the signature hold. A
    # run of verify prints where the trail ends; given back, a later run finds the cut.
    seed(env, 3)
    first = run(env, "audit", "verify")
    assert first.exit_code == 0, first.output
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        old_head = conn.execute(text("SELECT * FROM audit_chain_heads")).mappings().one()
    engine.dispose()
    later = seed(env, 2)
    second = run(env, "audit", "verify")
    assert second.exit_code == 0, second.output
    known = second.output.split("--known ")[1].split()[0]
    assert known.startswith(f"{later[-1]}:")
    sql(env, "DELETE FROM audit_events WHERE id > :id", id=old_head["last_id"])
    sql(
        env,
        "UPDATE audit_chain_heads SET last_id = :last_id, last_hash = :last_hash, "
        "head_mac = :head_mac WHERE id = 1",
        **{k: old_head[k] for k in ("last_id", "last_hash", "head_mac")},
    )
    assert run(env, "audit", "verify").exit_code == 0  # the chain alone cannot tell

    cut = run(env, "audit", "verify", "--known", known)

    assert cut.exit_code == 1
    assert cut.output.strip() == (
        f"Error: audit trail broken at event {later[-1]}: the trail ends at event "
        f"{old_head['last_id']}, before event {later[-1]} that an earlier verification saw: "
        f"events at the end were deleted and the head set back to an earlier state "
        f"({old_head['last_id']} events verified before it)"
    )


def test_verify_with_a_known_event_passes_after_it_is_pruned_and_names_one_altered(env):
    old = seed(env, 2, days_ago=500)
    seed(env, 1)
    known = run(env, "audit", "verify").output.split("--known ")[1].split()[0]
    event_id, _ = known.split(":")
    assert run(env, "audit", "verify", "--known", f"{old[0]}:{'0' * 64}").exit_code == 1
    assert run(env, "audit", "prune").exit_code == 0
    pruned = run(env, "audit", "verify", "--known", f"{old[0]}:{'0' * 64}")
    assert pruned.exit_code == 0, pruned.output  # pruned since: nothing left to compare
    assert run(env, "audit", "verify", "--known", known).exit_code == 0
    wrong = run(env, "audit", "verify", "--known", f"{event_id}:{'f' * 64}")
    assert wrong.exit_code == 1
    assert f"event {event_id} is not the event an earlier verification saw" in wrong.output
    for given in ("yesterday", f"{2**63}:{'0' * 64}"):  # no event id is past 2^63 - 1
        bad = run(env, "audit", "verify", "--known", given)
        assert bad.exit_code == 2
        assert "EVENT_ID:HASH as a verification printed it" in bad.output


def test_prune_refuses_to_delete_events_that_were_altered(env):
    # Prune re-anchored the chain on whatever the events it deleted held: recent events
    # backdated past the retention (the trace of an intrusion, say) were deleted by the next
    # run from cron, and the trail that `audit verify` had found altered verified again.
    seed(env, 2, days_ago=500)
    recent = seed(env, 2)
    sql(
        env,
        "UPDATE audit_events SET occurred_at = :at WHERE id = :id",
        at=utcnow() - timedelta(days=500),
        id=recent[0],
    )
    assert f"broken at event {recent[0]}" in run(env, "audit", "verify").output

    result = run(env, "audit", "prune")

    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: nothing pruned: audit trail broken at event {recent[0]}: event {recent[0]} was "
        "altered (see `authsvc audit verify`)"
    )
    assert f"broken at event {recent[0]}" in run(env, "audit", "verify").output


def test_verify_with_a_known_event_finds_the_cut_after_new_events_passed_its_id(env):
    # Cut back as above, then written on: the new events reach the known id again (SQLite
    # numbers them from the largest + 1, so one takes that id) or pass it (a PostgreSQL
    # sequence goes on), and the chain from the old head verifies.
    seed(env, 2)
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        old_head = conn.execute(text("SELECT * FROM audit_chain_heads")).mappings().one()
    engine.dispose()
    seed(env, 2)
    known = run(env, "audit", "verify").output.split("--known ")[1].split()[0]
    sql(env, "DELETE FROM audit_events WHERE id > :id", id=old_head["last_id"])
    sql(
        env,
        "UPDATE audit_chain_heads SET last_id = :last_id, last_hash = :last_hash, "
        "head_mac = :head_mac WHERE id = 1",
        **{k: old_head[k] for k in ("last_id", "last_hash", "head_mac")},
    )
    seed(env, 4)
    assert run(env, "audit", "verify").exit_code == 0  # the chain alone cannot tell

    cut = run(env, "audit", "verify", "--known", known)

    assert cut.exit_code == 1
    assert f"event {known.split(':')[0]}" in cut.output
    assert "an earlier verification saw" in cut.output
