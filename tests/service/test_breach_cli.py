"""`authsvc breach-response ...` against a real, committed database."""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
import subprocess
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from authsvc.app import build_runtime
from authsvc.cli import main
from authsvc.db import utcnow
from authsvc.models import AuditEvent, OutboxMessage, User
from authsvc.models.breach import BreachCampaign, BreachTarget
from authsvc.schema import upgrade
from authsvc.settings import Settings
from tests.conftest import start_command


@pytest.fixture
def env(scratch_database_url, key_specs, tmp_path):
    upgrade(scratch_database_url)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield {
        "AUTHSVC_DATABASE_URL": scratch_database_url,
        "AUTHSVC_ENCRYPTION_KEYS": ",".join(key_specs),
        "AUTHSVC_VAR_DIR": str(tmp_path / "var"),
        "AUTHSVC_MAIL_URL": f"file://{tmp_path / 'mail'}",
        "AUTHSVC_LOG_LEVEL": "WARNING",
        "AUTHSVC_BREACH_BATCH_SIZE": "3",
    }
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def accounts(env) -> list[str]:
    runtime = build_runtime(Settings.from_env(env))
    at = utcnow()
    emails = [f"user{i}@example.com" for i in range(7)]
    with runtime.sessionmaker.begin() as session:
        for email in emails:
            session.add(
                User(
                    email=email,
                    password_hash="$argon2id$x",
                    password_set_at=at,
                    email_verified_at=at,
                    created_at=at,
                    updated_at=at,
                )
            )
    runtime.dispose()
    return emails


def run(env, *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def query(env, statement):
    runtime = build_runtime(Settings.from_env(env))
    with runtime.sessionmaker.begin() as session:
        result = session.execute(statement).all()
    runtime.dispose()
    return result


def test_create_from_an_emails_file_runs_to_completion(env, accounts, tmp_path):
    leaked = tmp_path / "leaked.txt"
    leaked.write_text(
        "user1@example.com\nuser2@example.com\nnobody@example.com\nbroken\n"
        "user5@example.com\nuser6@example.com\n"
    )

    result = run(
        env,
        "breach-response",
        "create",
        "--emails-file",
        str(leaked),
        "--mode",
        "invalidate",
        "--notify",
        "--reason",
        "dump on a forum",
    )

    assert result.exit_code == 0, result.output
    campaign_id = result.stdout.splitlines()[0]
    assert "list: 6 lines, 4 accounts, 1 unknown, 0 duplicates, 1 rejected" in result.stderr
    assert "line 4: invalid_email: broken" in result.stderr
    assert "completed: 4 of 4 accounts flagged" in result.stderr
    assert "4/4" in result.stderr  # the progress bar
    flagged = query(env, select(User.email).where(User.password_invalidated_at.is_not(None)))
    assert sorted(e for (e,) in flagged) == [f"user{i}@example.com" for i in (1, 2, 5, 6)]
    queued = query(
        env,
        select(func.count())
        .select_from(BreachTarget)
        .where(BreachTarget.campaign_id == campaign_id, BreachTarget.notice_queued_at.is_not(None)),
    )
    assert queued == [(4,)]
    notice_jobs = query(
        env,
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.kind == "breach_notices"),
    )
    assert notice_jobs == [(1,)]

    status = run(env, "breach-response", "status", campaign_id, "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["status"] == "completed", status.output
    assert json.loads(status.stdout)["origin"] == "cli"


def test_create_all_from_standard_input_csv_and_without_waiting(env, accounts):
    result = run(
        env,
        "breach-response",
        "create",
        "--emails-file",
        "-",
        "--csv",
        "--mode",
        "change_at_next_login",
        "--no-wait",
        "--reason",
        "x",
        input="email,name\nuser3@example.com,Ann\n",
    )

    assert result.exit_code == 0, result.output
    (status,) = query(env, select(BreachCampaign.status, BreachCampaign.targeted))
    assert tuple(status) == ("pending", 1)


def test_a_dry_run_prints_counts(env, accounts):
    result = run(
        env,
        "breach-response",
        "create",
        "--all",
        "--mode",
        "invalidate",
        "--dry-run",
        "--reason",
        "how many?",
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["targeted"] == 7
    assert query(env, select(func.count()).select_from(BreachCampaign)) == [(0,)]


def test_list_cancel_and_report(env, accounts):
    created = run(
        env,
        "breach-response",
        "create",
        "--all",
        "--mode",
        "invalidate",
        "--no-wait",
        "--reason",
        "stolen backup",
    )
    campaign_id = created.stdout.strip()

    listed = run(env, "breach-response", "list")
    cancelled = run(env, "breach-response", "cancel", campaign_id)
    again = run(env, "breach-response", "cancel", campaign_id)
    done = run(
        env, "breach-response", "create", "--all", "--mode", "invalidate", "--reason", "second try"
    )
    done_id = done.stdout.splitlines()[0]
    report = run(env, "breach-response", "report", done_id)
    finished = CliRunner().invoke(main, ["breach-response", "cancel", done_id], env=env)

    assert campaign_id in listed.stdout and "pending" in listed.stdout
    assert "cancelled: 0 of 7" in cancelled.stderr and again.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert sorted(r["email"] for r in rows) == accounts
    assert all(r["flagged_at"] for r in rows)
    assert finished.exit_code == 1
    assert "campaign_finished" in finished.output


def test_bad_invocations_fail_with_one_line(env, accounts, tmp_path):
    both = CliRunner().invoke(
        main,
        [
            "breach-response",
            "create",
            "--all",
            "--created-before",
            "2020-01-01",
            "--mode",
            "invalidate",
            "--reason",
            "x",
        ],
        env=env,
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    nothing = CliRunner().invoke(
        main,
        [
            "breach-response",
            "create",
            "--emails-file",
            str(empty),
            "--mode",
            "invalidate",
            "--reason",
            "x",
        ],
        env=env,
    )
    unknown = CliRunner().invoke(main, ["breach-response", "status", "nope"], env=env)
    bad_date = CliRunner().invoke(
        main,
        [
            "breach-response",
            "create",
            "--created-before",
            "yesterday",
            "--mode",
            "invalidate",
            "--reason",
            "x",
        ],
        env=env,
    )

    assert both.exit_code == 2 and "exactly one of" in both.output
    assert nothing.exit_code == 1 and "empty_target_list" in nothing.output
    assert unknown.exit_code == 1 and "not_found" in unknown.output
    assert bad_date.exit_code == 2 and "--created-before" in bad_date.output


def test_a_report_that_cannot_be_written_fails_with_one_line(env, accounts, tmp_path):
    created = run(
        env, "breach-response", "create", "--all", "--mode", "invalidate", "--reason", "leak"
    )
    campaign_id = created.stdout.splitlines()[0]

    result = CliRunner().invoke(
        main,
        ["breach-response", "report", campaign_id, "--output", str(tmp_path / "no" / "r.csv")],
        env=env,
    )

    assert result.exit_code == 1
    assert not isinstance(result.exception, OSError)  # not a traceback
    assert result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
    assert "No such file or directory" in result.output


def test_a_report_that_fails_half_way_leaves_the_file_as_it_was(
    env, accounts, tmp_path, monkeypatch
):
    # Written in place: a connection lost after the first page left a CSV that read as a
    # complete report of fewer accounts, over the one exported before.
    from authsvc.commands import breach as breach_command

    created = run(
        env, "breach-response", "create", "--all", "--mode", "invalidate", "--reason", "leak"
    )
    campaign_id = created.stdout.splitlines()[0]
    output = tmp_path / "report.csv"
    output.write_text("the report exported yesterday\n")
    monkeypatch.setattr(breach_command, "REPORT_PAGE", 2)
    pages = []
    report_page = breach_command.lists.report_page

    def lost_after_the_first_page(session, **kwargs):
        pages.append(kwargs)
        if len(pages) > 1:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return report_page(session, **kwargs)

    monkeypatch.setattr(breach_command.lists, "report_page", lost_after_the_first_page)

    result = CliRunner().invoke(
        main, ["breach-response", "report", campaign_id, "--output", str(output)], env=env
    )

    assert result.exit_code == 1
    assert "server closed the connection" in result.output
    assert output.read_text() == "the report exported yesterday\n"
    assert sorted(p.name for p in tmp_path.iterdir() if "report" in p.name) == ["report.csv"]
    monkeypatch.undo()
    again = run(env, "breach-response", "report", campaign_id, "--output", str(output))
    assert again.exit_code == 0, again.output
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert sorted(r["email"] for r in rows) == accounts


def test_a_report_to_a_missing_directory_reads_and_records_nothing(env, accounts, tmp_path):
    created = run(
        env, "breach-response", "create", "--all", "--mode", "invalidate", "--reason", "leak"
    )
    campaign_id = created.stdout.splitlines()[0]
    exported = select(func.count()).where(AuditEvent.type == "breach.report_exported")

    result = CliRunner().invoke(
        main,
        ["breach-response", "report", campaign_id, "--output", str(tmp_path / "no" / "r.csv")],
        env=env,
    )

    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'no' / 'r.csv'}: No such file or directory"
    assert query(env, exported) == [(0,)]


@pytest.mark.parametrize(
    "operator",
    ["", "  ", "x" * 129, "ops\nstatus: completed"],
    ids=["empty", "blank", "long", "newline"],
)
@pytest.mark.parametrize("command", ["create", "cancel", "report"])
def test_an_operator_name_that_cannot_be_shown_is_a_usage_error(env, accounts, operator, command):
    # The campaign kept the first 128 characters and the trail all of them, and a line
    # break forged a line of `status`: admin key names are refused the same way.
    args = {
        "create": ["create", "--all", "--mode", "invalidate", "--reason", "leak", "--no-wait"],
        "cancel": ["cancel", "some-id"],
        "report": ["report", "some-id"],
    }[command]

    result = CliRunner().invoke(main, ["breach-response", *args, "--operator", operator], env=env)

    assert result.exit_code == 2, result.output
    assert "Invalid value for '--operator'" in result.output
    assert query(env, select(func.count()).select_from(BreachCampaign)) == [(0,)]


def test_a_reason_over_several_lines_stays_on_its_own_line_in_status_and_list(env, accounts):
    # A reason is the admin's own words, line breaks included (the API takes them); written
    # out as it was, it forged a line of `status`, broke `list`'s one line per campaign, and
    # sent its escape sequences to the operator's terminal.
    reason = "leak INC-7\nstatus: completed\x1b[2J"
    created = run(
        env, "breach-response", "create", "--all", "--mode", "invalidate", "--no-wait",
        "--reason", reason,
    )  # fmt: skip
    campaign_id = created.stdout.strip()

    status = run(env, "breach-response", "status", campaign_id)
    listed = run(env, "breach-response", "list")
    as_json = run(env, "breach-response", "status", campaign_id, "--json")

    lines = status.stdout.splitlines()
    assert [line for line in lines if line.startswith("status:")] == ["status: pending"]
    assert "reason: leak INC-7\\nstatus: completed\\x1b[2J" in lines
    assert "\x1b" not in status.stdout and "\x1b" not in listed.stdout
    [line] = listed.stdout.splitlines()
    assert line.startswith(campaign_id) and line.endswith("leak INC-7\\nstatus: completed\\x1b[2J")
    assert json.loads(as_json.stdout)["reason"] == reason


def test_a_rejected_line_of_a_list_is_named_without_its_control_characters(env, accounts, tmp_path):
    # The list comes from a dump found elsewhere: its lines are anyone's.
    leaked = tmp_path / "leaked.txt"
    leaked.write_bytes(b"user1@example.com\n\x1b[2J\x07broken\n")

    result = run(
        env, "breach-response", "create", "--emails-file", str(leaked), "--mode", "invalidate",
        "--reason", "dump", "--no-wait",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "line 2: invalid_email: \\x1b[2J\\x07broken" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_ctrl_c_while_waiting_says_the_campaign_goes_on_and_how_to_stop_it(env, tmp_path):
    # "Aborted!" alone read as if the campaign had stopped, while the workers kept flagging
    # accounts, revoking sessions and sending notices.
    runtime = build_runtime(Settings.from_env(env))
    at = utcnow()
    with runtime.sessionmaker.begin() as session:
        session.add_all(
            User(
                email=f"user{i}@example.com",
                password_hash="$argon2id$x",
                password_set_at=at,
                email_verified_at=at,
                created_at=at,
                updated_at=at,
            )
            for i in range(3000)
        )
    runtime.dispose()
    args = ["breach-response", "create", "--all", "--mode", "invalidate", "--reason", "leak"]
    creating = start_command(
        env | {"AUTHSVC_BREACH_BATCH_SIZE": "1"}, *args, stdout=subprocess.PIPE
    )
    try:
        assert creating.stdout is not None
        campaign_id = creating.stdout.readline().strip()
        time.sleep(0.5)  # some batches in
        creating.send_signal(signal.SIGINT)
        _, stderr = creating.communicate(timeout=30)
    finally:
        creating.kill()

    assert creating.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: interrupted: breach response {campaign_id} is not stopped")
    assert f"authsvc breach-response cancel {campaign_id}" in last
    [(status,)] = query(env, select(BreachCampaign.status))
    assert status in {"pending", "running"}


@pytest.mark.parametrize("as_json", [False, True], ids=["lines", "json"])
def test_status_watch_exits_non_zero_when_the_campaign_failed(env, accounts, as_json):
    # As `create --wait` does: a script that waited with `status --watch` read a failed
    # campaign as done.
    created = run(
        env, "breach-response", "create", "--all", "--mode", "invalidate", "--reason", "x"
    )
    campaign_id = created.stdout.splitlines()[0]
    runtime = build_runtime(Settings.from_env(env))
    with runtime.sessionmaker.begin() as session:
        campaign = session.get(BreachCampaign, campaign_id)
        campaign.status, campaign.last_error = "failed", "the database went away"
    runtime.dispose()

    watched = CliRunner().invoke(
        main,
        ["breach-response", "status", campaign_id, "--watch", *(["--json"] if as_json else [])],
        env=env,
    )
    looked = run(env, "breach-response", "status", campaign_id)

    assert watched.exit_code == 1
    assert "failed" in watched.stdout  # the status is printed all the same
    assert watched.stderr.strip().splitlines() == [
        "Error: breach response failed: the database went away"
    ]
    assert looked.exit_code == 0  # without --watch it only shows the status


@pytest.mark.parametrize("command", ["create", "cancel", "report"])
def test_operator_says_what_it_is_for_in_every_command(command):
    result = CliRunner().invoke(main, ["breach-response", command, "--help"])

    assert result.exit_code == 0
    assert "audit trail" in result.output.split("--operator", 1)[1]
