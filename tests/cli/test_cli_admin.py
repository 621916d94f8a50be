"""`authsvc admin create-key`: the key alone on stdout, only its hash in the database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select, text

from authsvc.app import create_app
from authsvc.cli import main
from authsvc.commands import users as users_command
from authsvc.crypto.keyring import generate_key_spec
from authsvc.crypto.tokens import token_hash
from authsvc.db import make_engine
from authsvc.models import AdminKey
from authsvc.schema import upgrade
from authsvc.settings import Settings
from tests.conftest import interrupt_when, start_command
from tests.e2e.server import free_port

AUTHSVC = Path(sys.executable).parent / "authsvc"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """The environment of one `authsvc` run against a migrated SQLite file of its own."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHSVC_")}
    return {
        **unset,
        "AUTHSVC_DATABASE_URL": url,
        "AUTHSVC_VAR_DIR": str(tmp_path / "var"),
        "AUTHSVC_ENCRYPTION_KEYS": generate_key_spec("cli1"),
        "AUTHSVC_MAIL_URL": "console://",
    }


def run(env, *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_create_key_prints_the_key_alone_and_stores_its_hash(env):
    result = run(env, "admin", "create-key", "--name", "deploy bot")

    assert result.exit_code == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n"
    assert key.startswith("ak_") and len(key) > 40
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        [row] = conn.execute(select(AdminKey)).all()
    engine.dispose()
    assert row.name == "deploy bot"
    assert row.key_hash == token_hash(key)
    assert key not in tuple(str(v) for v in row)
    database = Path(env["AUTHSVC_DATABASE_URL"].removeprefix("sqlite:///"))
    assert key.encode() not in database.read_bytes()


def test_the_printed_key_opens_the_admin_api(env):
    key = run(env, "admin", "create-key", "--name", "ops").stdout.strip()
    settings = Settings(
        database_url=env["AUTHSVC_DATABASE_URL"],
        var_dir=Path(env["AUTHSVC_VAR_DIR"]),
        encryption_keys=(env["AUTHSVC_ENCRYPTION_KEYS"],),
    )
    app = create_app(settings)

    allowed = app.test_client().get(
        "/admin/v1/users?email=ada@example.com", headers={"Authorization": f"Bearer {key}"}
    )
    refused = app.test_client().get(
        "/admin/v1/users?email=ada@example.com", headers={"Authorization": f"Bearer {key}x"}
    )

    assert allowed.status_code == 200
    assert allowed.get_json() == {"users": []}
    assert refused.status_code == 401
    app.extensions["authsvc"].dispose()


def test_a_revoked_key_opens_nothing_and_list_keys_shows_it(env):
    key = run(env, "admin", "create-key", "--name", "leaked bot").stdout.strip()
    run(env, "admin", "create-key", "--name", "ops")
    listed = run(env, "admin", "list-keys")
    assert listed.exit_code == 0
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[3], r[4]) for r in rows] == [("-", "leaked bot"), ("-", "ops")]
    assert key not in listed.stdout
    key_id = rows[0][0]

    revoked = run(env, "admin", "revoke-key", key_id)
    again = run(env, "admin", "revoke-key", key_id)
    unknown = run(env, "admin", "revoke-key", "no-such-id")

    assert (revoked.exit_code, revoked.stderr) == (0, f"{key_id} revoked\n")
    assert (again.exit_code, again.stderr) == (0, f"{key_id} was revoked already\n")
    assert unknown.exit_code == 1
    assert unknown.stderr == "Error: no admin key has this id\n"
    rows = [line.split("\t") for line in run(env, "admin", "list-keys").stdout.splitlines()]
    assert rows[0][3] != "-" and rows[1][3] == "-"
    settings = Settings(
        database_url=env["AUTHSVC_DATABASE_URL"],
        var_dir=Path(env["AUTHSVC_VAR_DIR"]),
        encryption_keys=(env["AUTHSVC_ENCRYPTION_KEYS"],),
    )
    app = create_app(settings)
    refused = app.test_client().get("/admin/v1/users", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert refused.get_json()["code"] == "invalid_admin_key"
    app.extensions["authsvc"].dispose()


def test_each_key_is_new(env):
    keys = {run(env, "admin", "create-key", "--name", "k").stdout for _ in range(3)}

    assert len(keys) == 3


@pytest.mark.parametrize(
    ("args", "changes", "reason"),
    [
        (["--name", "  "], {}, "name must be 1 to 128 characters"),
        (["--name", "x" * 129], {}, "name must be 1 to 128 characters"),
        (["--name", "ops\tforged-id"], {}, "must not contain tabs, line breaks"),
        (["--name", "ops\nakFAKE"], {}, "must not contain tabs, line breaks"),
        (["--name", "ops"], {"AUTHSVC_ENV": "production"}, "configuration: "),
        (["--name", "ops"], {"AUTHSVC_ARGON2_TIME_COST": "fast"}, "AUTHSVC_ARGON2_TIME_COST"),
        (["--name", "ops"], {"AUTHSVC_MAIL_URL": "carrier-pigeon://"}, "AUTHSVC_MAIL_URL"),
        (
            ["--name", "ops"],
            {"AUTHSVC_DATABASE_URL": "sqlite:////nonexistent/dir/x.db"},
            "OperationalError",
        ),
        (
            ["--name", "ops"],
            {"AUTHSVC_DATABASE_URL": "postgresql://authsvc@db:5432x/authsvc"},
            "configuration: AUTHSVC_DATABASE_URL",
        ),
        (
            ["--name", "ops"],
            {"AUTHSVC_REDIS_URL": "redis://:s3cret@cache:6379x/0"},
            "configuration: AUTHSVC_REDIS_URL",
        ),
        (
            ["--name", "ops"],
            {"AUTHSVC_REDIS_URL": "redis://cache:6379/0?socket_timeout=soon"},
            "configuration: AUTHSVC_REDIS_URL",
        ),
        (
            ["--name", "ops"],
            {"AUTHSVC_REDIS_URL": "redis+cluster://:s3cret@cache:6379x"},
            "configuration: AUTHSVC_REDIS_URL",
        ),
    ],
    ids=[
        "blank-name",
        "long-name",
        "tab-in-name",
        "newline-in-name",
        "production-guardrails",
        "bad-setting",
        "bad-mail-url",
        "no-database",
        "database-port-not-a-number",
        "redis-port-not-a-number",
        "redis-option-not-a-number",
        "redis-cluster-port-not-a-number",
    ],
)
def test_failures_exit_non_zero_with_one_line(env, args, changes, reason):
    result = run({**env, **changes}, "admin", "create-key", *args)

    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert reason in lines[0]
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


def test_name_is_required(env):
    result = run(env, "admin", "create-key")

    assert result.exit_code == 2
    assert "--name" in result.stderr
    assert result.stdout == ""


def test_an_unmigrated_database_fails_cleanly(env, tmp_path):
    result = run(
        {**env, "AUTHSVC_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"},
        "admin",
        "create-key",
        "--name",
        "ops",
    )

    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no such table" in result.stderr  # the audit trail's head, read at the start


def test_serve_with_more_than_one_worker_needs_shared_rate_limits(env):
    # In-memory counters are per process: N workers would allow N times every limit, the
    # daily cap on failed password checks included.
    result = CliRunner().invoke(main, ["serve", "--workers", "2", "--port", "1"], env=env)

    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: more than one worker needs AUTHSVC_REDIS_URL: rate limits would be per worker"
    ]


@pytest.mark.parametrize("keys", ["", "\n", "dev1:tooshort\n", "not a key\n", "\xff\xfe"])
def test_serve_names_a_development_key_file_that_is_no_key_list(env, tmp_path, keys):
    # Emptied, cut short or overwritten: a ValueError traceback from the keyring before.
    var = tmp_path / "var"
    var.mkdir()
    (var / "dev-keys.txt").write_bytes(keys.encode("latin-1"))
    result = CliRunner().invoke(
        main, ["serve", "--port", "1"], env={**env, "AUTHSVC_ENCRYPTION_KEYS": None}
    )

    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: configuration: ") and str(var / "dev-keys.txt") in line


@pytest.mark.parametrize("port", ["65536", "-1"])
@pytest.mark.parametrize("dev", [False, True], ids=["gunicorn", "dev"])
def test_serve_refuses_a_port_that_is_no_port(env, port, dev):
    # Refused by bind() once the server started: a traceback (OverflowError), not a usage line.
    args = ["serve", f"--port={port}", "--no-outbox-thread", *(["--dev"] if dev else [])]
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    server_env |= {k: v for k, v in env.items() if v is not None}
    result = subprocess.run(
        [str(AUTHSVC), *args], env=server_env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--port'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("dev", [False, True], ids=["gunicorn", "dev"])
def test_serve_on_an_address_in_use_fails_at_once_with_one_line(env, dev):
    # gunicorn tried five times, a second apart, and logged each attempt; the development
    # server printed lines of its own.
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    args = ["serve", f"--port={port}", "--no-outbox-thread", *(["--dev"] if dev else [])]
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    server_env |= {k: v for k, v in env.items() if v is not None}
    try:
        result = subprocess.run(
            [str(AUTHSVC), *args], env=server_env, capture_output=True, text=True, timeout=60
        )
    finally:
        holder.close()

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    # No attempt was made to serve: no retries ("Retrying in 1 second"), no server lines.
    assert not [line for line in lines if "gunicorn" in line or "Port" in line or "etry" in line]


def test_serve_opens_no_control_socket_that_could_add_workers(env, tmp_path):
    # gunicorn opens one by default, in the user's home: `gunicornc -c "worker add 2"` then
    # gave a server without Redis three workers, each with its own in-memory limits, and two
    # servers of one user took the same socket from each other.
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    server_env |= {k: v for k, v in env.items() if v is not None}
    server_env |= {"HOME": str(home)}
    server_env.pop("XDG_RUNTIME_DIR", None)
    server = subprocess.Popen(
        [str(AUTHSVC), "serve", "--port", str(port), "--threads", "2", "--no-outbox-thread"],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("authsvc serve did not start")
        time.sleep(1)  # gunicorn opens its socket once the workers are up

        assert not (home / ".gunicorn").exists()
    finally:
        server.terminate()
        server.wait(20)


def test_flask_debug_in_the_environment_does_not_start_the_debugger(env, monkeypatch):
    # Flask reads FLASK_DEBUG by itself: `serve --dev` then ran Werkzeug's interactive
    # debugger, a Python console for whoever reaches /console, and its reloader.
    started = []
    monkeypatch.setattr(Flask, "run", lambda app, **options: started.append((app, options)))

    result = CliRunner().invoke(
        main,
        ["serve", "--dev", "--no-outbox-thread", "--port", str(free_port())],
        env={**env, "FLASK_DEBUG": "1"},
    )

    assert result.exit_code == 0, result.output
    [(app, options)] = started
    assert app.debug is False
    assert options.get("debug") is False and not options.get("use_reloader")
    app.extensions["authsvc"].dispose()


@pytest.mark.parametrize(
    "args",
    [("serve", "--port", "1"), ("worker",), ("keys", "rotate-signing"), ("audit", "verify")],
    ids=["serve", "worker", "keys-rotate-signing", "audit-verify"],
)
@pytest.mark.parametrize("store", ["text", "empty", "directory"])
def test_a_breached_password_store_that_is_not_one_fails_with_one_line(env, tmp_path, args, store):
    # An easy slip: pointing the setting at the downloaded HASH:COUNT text, not the built store.
    path = tmp_path / "pwned"
    if store == "directory":
        path.mkdir()
    else:
        path.write_text("" if store == "empty" else "5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8:3\n")

    result = CliRunner().invoke(
        main, list(args), env={**env, "AUTHSVC_BREACHED_PASSWORDS_FILE": str(path)}
    )

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: configuration: AUTHSVC_BREACHED_PASSWORDS_FILE: ")
    assert "authsvc breached-passwords import" in line


@pytest.mark.parametrize(
    "args",
    [("serve", "--port", "1"), ("worker",), ("keys", "rotate-signing"), ("audit", "verify")],
    ids=["serve", "worker", "keys-rotate-signing", "audit-verify"],
)
def test_a_redis_url_the_client_cannot_read_fails_with_one_line(env, args):
    # Refused by the Redis client when the rate limiter is built: a traceback in every
    # command, and in every gunicorn worker that failed to boot.
    result = CliRunner().invoke(
        main, list(args), env={**env, "AUTHSVC_REDIS_URL": "redis://:s3cret@cache:6379x/0"}
    )

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: configuration: AUTHSVC_REDIS_URL: ")
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "rotate-signing"),
        ("users", "import", "USERS"),
        ("worker",),
        ("admin", "create-key", "--name", "ops"),
        ("admin", "list-keys"),
        ("audit", "verify"),
        ("audit", "prune"),
        ("keys", "rotate"),
    ],
    ids=[
        "keys-rotate-signing",
        "users-import",
        "worker",
        "admin-create-key",
        "admin-list-keys",
        "audit-verify",
        "audit-prune",
        "keys-rotate",
    ],
)
def test_commands_on_an_unmigrated_database_fail_with_one_line(env, tmp_path, args):
    # The worker would otherwise log a failed drain twice a second for good.
    users = tmp_path / "users.csv"
    users.write_text("email,password_hash\nada@example.com,$2b$12$" + "C" * 53 + "\n")
    empty = {**env, "AUTHSVC_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}

    result = CliRunner().invoke(main, [str(users) if a == "USERS" else a for a in args], env=empty)

    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "authsvc db upgrade" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("breach-response", "list"),
        ("users", "import", "USERS"),
        ("keys", "rotate"),
        ("keys", "rotate-signing"),
        ("worker",),
        ("db", "upgrade"),
        ("serve", "--dev", "--port", "1"),
    ],
    ids=[
        "breach-response",
        "users-import",
        "keys-rotate",
        "rotate-signing",
        "worker",
        "db",
        "serve",
    ],
)
def test_a_var_dir_that_cannot_be_made_fails_with_one_line(env, tmp_path, args):
    # AUTHSVC_VAR_DIR under a file (or in a read-only place) was a traceback from os.mkdir.
    users = tmp_path / "users.csv"
    users.write_text("email,password_hash\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**env, "AUTHSVC_VAR_DIR": str(blocker / "var")}

    result = CliRunner().invoke(main, [str(users) if a == "USERS" else a for a in args], env=env)

    assert result.exit_code == 1
    assert not isinstance(result.exception, OSError)  # not a traceback
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and str(blocker) in line


def test_a_users_file_that_is_not_utf8_fails_with_one_line(env, tmp_path):
    users = tmp_path / "legacy.csv"
    users.write_bytes("email,password_hash\nrené@example.com,x\n".encode("latin-1"))

    result = CliRunner().invoke(main, ["users", "import", str(users)], env=env)

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {users} is not UTF-8 text (byte 23); save the CSV as UTF-8"
    ]


def test_a_users_file_that_goes_bad_after_its_first_batches_imports_nothing(env, tmp_path):
    """The file is read a batch at a time, but to its end before the first batch: a byte
    that is not UTF-8 in its last row leaves the database as it was."""
    bcrypt = "$2b$12$" + "C" * 53
    users = tmp_path / "legacy.csv"
    with users.open("wb") as out:
        out.write(b"email,password_hash\n")
        for i in range(2_500):
            out.write(f"user{i}@example.com,{bcrypt}\n".encode())
        out.write("rené@example.com,x\n".encode("latin-1"))

    result = CliRunner().invoke(main, ["users", "import", str(users)], env=env)

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {users} is not UTF-8 text")
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users")) == 0
    engine.dispose()


def test_a_users_file_that_is_a_pipe_fails_with_one_line_that_says_so(env):
    """`authsvc users import <(psql ...)` names a pipe: read to its end by the check, it
    then looked empty to the import, refused as a CSV without its header."""
    bcrypt = "$2b$12$" + "C" * 53
    read_end, write_end = os.pipe()
    os.write(write_end, f"email,password_hash\nada@example.com,{bcrypt}\n".encode())
    os.close(write_end)
    try:
        result = CliRunner().invoke(main, ["users", "import", f"/dev/fd/{read_end}"], env=env)
    finally:
        os.close(read_end)

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "not a regular file" in line and "header" not in line
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users")) == 0
    engine.dispose()


def test_a_users_file_saved_with_a_byte_order_mark_imports(env, tmp_path):
    # Spreadsheets save "CSV UTF-8" with a BOM before the header.
    users = tmp_path / "excel.csv"
    bcrypt = "$2b$12$" + "C" * 53
    users.write_bytes(f"email,password_hash\nada@example.com,{bcrypt}\n".encode("utf-8-sig"))

    result = run(env, "users", "import", str(users))

    assert result.exit_code == 0, result.stderr
    assert "imported 1," in result.stderr


def test_a_users_file_the_csv_reader_refuses_fails_with_one_line(env, tmp_path):
    users = tmp_path / "huge.csv"
    users.write_text("email,password_hash\nada@example.com," + "x" * 200_000 + "\n")

    result = CliRunner().invoke(main, ["users", "import", str(users)], env=env)

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {users}: field larger than field limit (131072) (after line 1)"
    ]


def test_users_import_names_each_rejected_row_and_why(env, tmp_path):
    good = "$2b$12$" + "C" * 53
    argon2 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$" + "A" * 43
    users = tmp_path / "users.csv"
    users.write_text(
        "email,password_hash\n"
        f"ada@example.com,{good}\n"
        f"not an address,{good}\n"
        f"bob@example.com,{argon2}\n"  # unquoted: the commas split it
        f'carol@example.com,"{argon2}"\n'
        f"dave@example.com,$2b$14${'C' * 53}\n"  # above the cost ceiling
    )

    result = run(env, "users", "import", str(users))

    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "row 2: not an email address"
    assert lines[1].startswith("row 3: the hash is not argon2, bcrypt or pbkdf2_sha256")
    assert "quote it" in lines[1]
    assert lines[2].startswith("row 5: the hash is not")
    assert lines[3] == "imported 2, skipped 0 existing, rejected 3 invalid"
    assert "$2b$" not in result.stderr and "argon2id" not in result.stderr
    # Failed logins now take as long as a check of the costliest imported hash.
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        costs = set(conn.scalars(text("SELECT prefix FROM password_hash_costs")))
    engine.dispose()
    assert costs == {"$2b$12$", "$argon2id$v=19$m=65536,t=3,p=4$"}


def test_users_import_names_the_first_hundred_rejected_rows_across_batches_and_counts_the_rest(
    env, tmp_path, monkeypatch
):
    monkeypatch.setattr(users_command, "BATCH", 7)
    good = "$2b$12$" + "C" * 53
    users = tmp_path / "users.csv"
    with users.open("w") as out:
        out.write("email,password_hash\n")
        for i in range(130):
            out.write(f"user{i}@example.com,not-a-hash\n")
        out.write(f"ada@example.com,{good}\n")

    result = run(env, "users", "import", str(users))

    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:100]] == [f"row {n}" for n in range(1, 101)]
    assert lines[100:] == [
        "... and 30 more rejected rows",
        "imported 1, skipped 0 existing, rejected 130 invalid",
    ]


@pytest.mark.parametrize("batch", [1000, 2], ids=["one-batch", "across-batches"])
def test_users_import_keeps_the_first_row_of_an_email_and_names_the_others(
    env, tmp_path, monkeypatch, batch
):
    # A later row of the same email silently replaced the first one's hash within a batch
    # (counted nowhere: 3 rows, "imported 1, skipped 0, rejected 0"), and was counted as an
    # existing account in a later batch.
    monkeypatch.setattr(users_command, "BATCH", batch)
    first, second = "$2b$12$" + "A" * 53, "$2b$12$" + "B" * 53
    users = tmp_path / "users.csv"
    users.write_text(
        "email,password_hash\n"
        f"ada@example.com,{first}\n"
        f"bob@example.com,{first}\n"
        f"Ada@EXAMPLE.com,{second}\n"
    )

    result = run(env, "users", "import", str(users))

    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "row 3: the same email as row 1 (the first row of an email is the one read)",
        "imported 2, skipped 0 existing, rejected 1 invalid",
    ]
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        stored = conn.scalar(
            text("SELECT password_hash FROM users WHERE email = 'ada@example.com'")
        )
    engine.dispose()
    assert stored == first


@pytest.mark.parametrize(
    "args",
    [("admin", "create-key", "--name", "second"), ("admin", "list-keys")],
    ids=["create-key", "list-keys"],
)
def test_admin_commands_refuse_a_ring_that_did_not_sign_the_trail_in_the_words_of_the_rest(
    env, args
):
    # The refusal was caught as any error and printed as "Error: ClickException: ...".
    assert run(env, "admin", "create-key", "--name", "ops").exit_code == 0

    result = CliRunner().invoke(
        main, list(args), env={**env, "AUTHSVC_ENCRYPTION_KEYS": generate_key_spec("cli2")}
    )

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: AUTHSVC_ENCRYPTION_KEYS: the audit trail was signed with ")


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_serve_refuses_a_number_of_threads_below_one(env, threads):
    # -1 was refused by gunicorn once the runtime was built, in its words ("Value must be
    # positive"), and 0 started a server.
    result = CliRunner().invoke(main, ["serve", "--threads", threads, "--port", "1"], env=env)

    assert result.exit_code == 2, result.output
    assert "Invalid value for '--threads'" in result.stderr


def test_users_import_reads_email_verified_as_exported_and_names_a_cell_it_cannot_read(
    env, tmp_path
):
    # A PostgreSQL export writes booleans as t and f: every account was imported unverified,
    # as was one whose cell was a typo, silently.
    bcrypt = "$2b$12$" + "C" * 53
    users = tmp_path / "users.csv"
    users.write_text(
        "email,password_hash,email_verified\n"
        f"ada@example.com,{bcrypt},t\n"
        f"bob@example.com,{bcrypt},f\n"
        f"carol@example.com,{bcrypt},Y\n"
        f"dave@example.com,{bcrypt},maybe\n"
        f"erin@example.com,{bcrypt},\n"
    )

    result = run(env, "users", "import", "--unverified", str(users))

    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "row 4: email_verified must be true or false (1 or 0, yes or no, t or f), or empty",
        "imported 4, skipped 0 existing, rejected 1 invalid",
    ]
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.connect() as conn:
        verified = dict(
            conn.execute(text("SELECT email, email_verified_at IS NOT NULL FROM users")).all()
        )
    engine.dispose()
    assert verified == {
        "ada@example.com": True,
        "bob@example.com": False,
        "carol@example.com": True,
        "erin@example.com": False,
    }


def test_ctrl_c_during_users_import_says_what_was_imported_and_that_a_rerun_is_safe(env, tmp_path):
    # "Aborted!" alone: whether anything had been imported, and whether the import could be
    # run again, was left to guess.
    users = tmp_path / "users.csv"
    with users.open("w") as out:
        out.write("email,password_hash\n")
        for i in range(60_000):
            out.write(f"user{i}@example.com,$2b$12${'C' * 53}\n")
    importer = start_command(env, "users", "import", str(users))

    def count() -> int:  # a plain reader: the service's engine begins each transaction as a writer
        with contextlib.closing(sqlite3.connect(tmp_path / "cli.db", timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM users").fetchone()[0])

    stderr = interrupt_when(importer, count, signal.SIGINT, within=60)
    imported = count()

    assert importer.returncode == 1
    assert 0 < imported < 60_000
    assert stderr.strip().splitlines()[-1] == (
        f"Error: interrupted: {imported} imported, from the first {imported} rows; run the "
        "import again to go on (existing emails are skipped)"
    )


@pytest.mark.parametrize("args", [("serve", "--dev", "--port", "1"), ("db", "upgrade")])
def test_a_sqlite_database_of_a_newer_release_fails_with_one_line(env, args):
    # After going back to an earlier release: serve, which upgrades SQLite by itself, ended
    # in a traceback from Alembic.
    engine = make_engine(env["AUTHSVC_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()

    result = CliRunner().invoke(main, list(args), env=env)

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not a traceback
    [line] = [line for line in result.stderr.splitlines() if not line.startswith('{"ts"')]
    assert line == "Error: upgrade failed: CommandError: Can't locate revision identified by '0099'"


@pytest.mark.parametrize(
    "args",
    [("serve", "--port", "1"), ("worker",), ("audit", "verify")],
    ids=["serve", "worker", "audit-verify"],
)
@pytest.mark.parametrize("roots", ["missing", "directory", "not-a-certificate"])
def test_attestation_roots_that_cannot_be_read_fail_with_one_line(env, tmp_path, args, roots):
    # Read at each registration only: the server started, and every security key or passkey
    # registration then answered 500.
    path = tmp_path / "roots.pem"
    if roots == "directory":
        path.mkdir()
    elif roots == "not-a-certificate":
        path.write_text(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
    changes = {
        "AUTHSVC_WEBAUTHN_ATTESTATION": "direct",
        "AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS": str(path),
    }

    result = CliRunner().invoke(main, list(args), env={**env, **changes})

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: configuration: AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS: ")
    assert str(path) in line


def test_attestation_roots_with_a_certificate_are_taken(env, tmp_path):
    from tests.support_webauthn import AttestationCa

    path = tmp_path / "roots.pem"
    path.write_bytes(b"vendor A\n" + AttestationCa(aaguid=bytes(16)).root_pem())
    changes = {
        "AUTHSVC_WEBAUTHN_ATTESTATION": "direct",
        "AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS": str(path),
    }

    result = CliRunner().invoke(main, ["audit", "verify"], env={**env, **changes})

    assert result.exit_code == 0, result.output
