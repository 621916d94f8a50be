"""`authsvc keys rotate-signing`: a new signing key, the old one still published; `keys rotate`
past what no key opens."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from authsvc.app import build_runtime, create_app
from authsvc.cli import main
from authsvc.commands import interrupted_between_steps
from authsvc.crypto.keyring import Keyring, generate_key_spec
from authsvc.db import utcnow
from authsvc.models import OutboxMessage, TotpFactor, User
from authsvc.models.ops import AuditChainHead
from authsvc.schema import upgrade
from authsvc.services import audit, outbox, signing, totp
from authsvc.settings import Settings
from tests.conftest import ContractClient, interrupt_when, start_command
from tests.e2e.server import free_port

AUTHSVC = Path(sys.executable).parent / "authsvc"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
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


LOGIN = {"email": "ada@example.com", "password": "rotating horse 42"}


def _admin_creates_ada(client, env: dict[str, str | None] | None = None) -> str:
    """An admin key made with the command, and the verified account LOGIN names; the key."""
    admin_key = CliRunner().invoke(main, ["admin", "create-key", "--name", "t"], env=env)
    created = client.post(
        "/admin/v1/users",
        json={**LOGIN, "email_verified": True},
        headers={"Authorization": f"Bearer {admin_key.stdout.strip()}"},
    )
    assert created.status_code == 201
    return admin_key.stdout.strip()


def test_rotate_signing_publishes_a_new_key_and_keeps_the_old(env, monkeypatch):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    app = create_app(Settings.from_env())  # creates the first signing key
    client = app.test_client()
    old_kid, next_kid = [k["kid"] for k in client.get("/.well-known/jwks.json").get_json()["keys"]]
    admin_key = _admin_creates_ada(client)
    before = client.post("/v1/login", json=LOGIN).get_json()["access_token"]

    result = CliRunner().invoke(main, ["keys", "rotate-signing"])

    assert result.exit_code == 0, result.output
    new_kid = result.stdout.strip()
    assert new_kid == next_kid  # published before it signs
    [upcoming] = [line for line in result.stderr.splitlines() if line.startswith("next key")]
    kids = [k["kid"] for k in client.get("/.well-known/jwks.json").get_json()["keys"]]
    assert kids[0] == new_kid and kids[2] == old_kid
    assert repr(kids[1]) in upcoming
    # Published only now, when the first key was made: the command says so.
    assert "was published only" in result.stderr
    # A fresh process signs with the new key; a token of the old key still works.
    fresh = create_app(Settings.from_env()).test_client()
    after = fresh.post("/v1/login", json=LOGIN).get_json()["access_token"]
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert jwt.get_unverified_header(before)["kid"] == old_kid
    assert fresh.get("/v1/me", headers={"Authorization": f"Bearer {before}"}).status_code == 200
    events = client.get(
        "/admin/v1/audit-events?type=signing_key.rotated",
        headers={"Authorization": f"Bearer {admin_key}"},
    ).get_json()["events"]
    assert [(e["outcome"], e["details"]) for e in events] == [
        ("success", {"kid": new_kid, "next_kid": kids[1], "retired": [old_kid]})
    ]

    discarding = CliRunner().invoke(main, ["keys", "rotate-signing", "--discard-next"])

    assert discarding.exit_code == 0, discarding.output
    assert discarding.stdout.strip() not in kids
    assert "was not published before" in discarding.stderr
    after = [k["kid"] for k in client.get("/.well-known/jwks.json").get_json()["keys"]]
    assert after[0] == discarding.stdout.strip() and kids[1] not in after


def test_generate_prints_an_entry_the_settings_accept():
    result = CliRunner().invoke(main, ["keys", "generate", "--kid", "2026-12_a"])

    assert result.exit_code == 0
    spec = result.stdout.strip()
    assert spec.startswith("2026-12_a:")
    settings = Settings.from_env({"AUTHSVC_ENCRYPTION_KEYS": f"{spec},{generate_key_spec('old')}"})
    assert settings.encryption_keys[0] == spec


@pytest.mark.parametrize("kid", ["café-2026", "", "a" * 33, "two words", "k:1"])
def test_generate_refuses_a_key_id_the_settings_would_refuse(kid):
    result = CliRunner().invoke(main, ["keys", "generate", "--kid", kid])

    assert result.exit_code != 0
    assert result.stdout == ""
    assert "--kid must be 1 to 32 ASCII letters, digits, '_' or '-'" in result.stderr


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "1"]])
def test_a_ring_without_the_entry_that_keys_the_trail_refuses_to_start(env, command):
    runner = CliRunner()
    created = runner.invoke(main, ["admin", "create-key", "--name", "ops"], env=env)
    assert created.exit_code == 0, created.output  # an audited action: the trail's head is signed
    newer = generate_key_spec("cli2")

    dropped = runner.invoke(main, command, env={**env, "AUTHSVC_ENCRYPTION_KEYS": newer})

    assert dropped.exit_code == 1
    assert "put the key that was last back at the end of the list" in dropped.output
    rotated = Settings.from_env(
        {
            "AUTHSVC_DATABASE_URL": env["AUTHSVC_DATABASE_URL"] or "",
            "AUTHSVC_ENCRYPTION_KEYS": f"{newer},{env['AUTHSVC_ENCRYPTION_KEYS']}",
        }
    )
    runtime = build_runtime(rotated)  # the new key first, the old one kept last: fine
    with runtime.sessionmaker() as session:
        assert audit.head_signed_by(session, runtime.deps.keyring)
    runtime.dispose()


@pytest.mark.parametrize(
    "command",
    [
        ["admin", "create-key", "--name", "second"],
        ["breach-response", "create", "--all", "--mode", "invalidate", "--reason", "x"],
        ["users", "import", "USERS"],
        ["audit", "prune", "--older-than", "400d"],
        ["keys", "rotate-signing"],
        ["keys", "rotate"],
    ],
)
def test_commands_that_write_events_refuse_a_ring_that_did_not_sign_the_trail(
    env, tmp_path, command
):
    # As serve and worker do: an audited action under the wrong ring chained an
    # audit.head_invalid event and signed the head with that ring's key, so that the trail
    # failed `audit verify` for good and serve and worker with the right ring refused to start.
    runner = CliRunner()
    created = runner.invoke(main, ["admin", "create-key", "--name", "ops"], env=env)
    assert created.exit_code == 0, created.output
    users = tmp_path / "users.csv"
    users.write_text("email,password_hash\n")
    args = [str(users) if arg == "USERS" else arg for arg in command]

    refused = runner.invoke(
        main, args, env={**env, "AUTHSVC_ENCRYPTION_KEYS": generate_key_spec("cli2")}
    )

    assert refused.exit_code == 1
    assert "put the key that was last back at the end of the list" in refused.output
    verified = runner.invoke(main, ["audit", "verify"], env=env)
    assert verified.exit_code == 0, verified.output
    assert "audit trail intact: 1 events verified" in verified.output


@pytest.mark.parametrize("command", [["worker"], ["serve", "--no-outbox-thread"]])
def test_a_ring_that_cannot_open_the_signing_key_refuses_to_start(env, tmp_path, command):
    # The key the signing key is encrypted under, taken out of the ring before `keys rotate`
    # moved it: every login and refresh answered 500 while /readyz said ready, and a worker
    # parked every mail encrypted under that key for good.
    last = env["AUTHSVC_ENCRYPTION_KEYS"]
    first, newer = generate_key_spec("cli2"), generate_key_spec("cli3")
    settings = Settings.from_env(
        {
            "AUTHSVC_DATABASE_URL": env["AUTHSVC_DATABASE_URL"] or "",
            "AUTHSVC_ENCRYPTION_KEYS": f"{first},{last}",
        }
    )
    create_app(settings).extensions["authsvc"].dispose()  # the signing key, under cli2
    started = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    started |= {k: v for k, v in env.items() if v is not None}
    started |= {"AUTHSVC_ENCRYPTION_KEYS": f"{newer},{last}"}  # cli2 dropped, cli1 still last
    port = ["--port", str(free_port())] if command[0] == "serve" else []

    result = subprocess.run(
        [str(AUTHSVC), *command, *port], env=started, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: AUTHSVC_ENCRYPTION_KEYS: the access-token signing key is encrypted under key "
        "'cli2', which is not in the list; put it back after the first entry until "
        "`authsvc keys rotate` has moved everything to the first"
    )
    runtime = build_runtime(dataclasses.replace(settings, encryption_keys=(newer, first, last)))
    with runtime.sessionmaker() as session:
        assert signing.unreadable_key_id(session, runtime.deps.keyring) is None
    runtime.dispose()


def test_the_first_start_signs_the_head_so_that_a_later_ring_must_match(env):
    # `db upgrade` leaves the head unsigned; the first start (what each `authsvc serve` worker
    # runs) signs it with the ring's last entry, and from then on a ring without that entry
    # is refused.
    settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
    newer = Keyring.from_specs([generate_key_spec("cli2")])
    runtime = build_runtime(settings)
    with runtime.sessionmaker() as session:
        assert session.get(AuditChainHead, audit.HEAD_ID).head_mac == ""
        assert audit.head_signed_by(session, newer)  # an unsigned head passes the check
    runtime.dispose()

    create_app(settings).extensions["authsvc"].dispose()

    runtime = build_runtime(settings)
    with runtime.sessionmaker() as session:
        assert audit.head_signed_by(session, runtime.deps.keyring)
        assert not audit.head_signed_by(session, newer)
        assert audit.verify(session, keyring=runtime.deps.keyring).ok


def test_rotate_leaves_a_parked_message_no_key_opens_and_moves_the_rest(env):
    # A message the worker parked because no key of the ring opens it (its key was dropped):
    # it can never be sent, and must not stop a rotation (one after a leaked key, say) short
    # of the pending mails behind it, which would then die with the old key.
    old = env["AUTHSVC_ENCRYPTION_KEYS"] or ""
    lost = Keyring.from_specs([generate_key_spec("lost")])
    given = {k: v for k, v in env.items() if v is not None}
    runtime = build_runtime(Settings.from_env(given))
    now = utcnow()
    with runtime.sessionmaker.begin() as session:
        parked = outbox.enqueue(session, lost, kind="email", payload={"to": "a@x.org"}, now=now)
        parked.failed_at = now
        parked.last_error = "DecryptionFailed: payload"
        pending = outbox.enqueue(
            session, runtime.deps.keyring, kind="email", payload={"to": "b@x.org"}, now=now
        )
        session.flush()
        parked_id, pending_id = parked.id, pending.id
    runtime.dispose()
    newer = generate_key_spec("cli2")
    ring = f"{newer},{old}"

    result = CliRunner().invoke(
        main, ["keys", "rotate"], env={**env, "AUTHSVC_ENCRYPTION_KEYS": ring}
    )

    assert result.exit_code == 0, result.output
    assert "outbox_messages=1" in result.stdout
    assert f"1 parked message that no key opens was left as it is (id {parked_id})" in result.stderr
    only_new = Keyring.from_specs([newer])
    runtime = build_runtime(Settings.from_env({**given, "AUTHSVC_ENCRYPTION_KEYS": ring}))
    with runtime.sessionmaker() as session:
        moved = session.get(OutboxMessage, pending_id)
        assert moved is not None
        assert outbox.payload_of(only_new, moved) == {"to": "b@x.org"}
        left = session.get(OutboxMessage, parked_id)
        assert left is not None and lost.key_id_of(left.payload_ciphertext) == "lost"
    runtime.dispose()


def _totp_factors(
    env: dict[str, str | None], made: Callable[[int, Keyring], tuple[str, Keyring]], count: int
) -> None:
    """Sign the trail's head (an admin key), then give one account ``count`` confirmed TOTP
    factors: ``made(number, the ring of env)`` names each and the ring its secret is under."""
    created = CliRunner().invoke(main, ["admin", "create-key", "--name", "ops"], env=env)
    assert created.exit_code == 0, created.output
    runtime = build_runtime(Settings.from_env({k: v for k, v in env.items() if v is not None}))
    now = utcnow()
    with runtime.sessionmaker.begin() as session:
        user = User(email="ada@example.com", email_verified_at=now, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        for number in range(count):
            factor_id, ring = made(number, runtime.deps.keyring)
            session.add(
                TotpFactor(
                    id=factor_id,
                    user_id=user.id,
                    name="app",
                    secret_ciphertext=ring.encrypt(
                        b"S", associated_data=totp.secret_aad(factor_id)
                    ),
                    created_at=now,
                    confirmed_at=now,
                    confirm_attempts=0,
                )
            )
    runtime.dispose()


def test_a_worker_started_without_the_key_of_a_totp_factor_says_so(env, tmp_path):
    # A ring without the key of some TOTP factors (taken out before `keys rotate` moved them,
    # say) started without a word: each of those users was refused every code as a wrong one,
    # and only a log line at each attempt said why.
    last = env["AUTHSVC_ENCRYPTION_KEYS"] or ""
    gone = Keyring.from_specs([generate_key_spec("gone")])
    _totp_factors(env, lambda number, ring: (f"factor{number}", gone if number < 2 else ring), 3)
    process = start_command(
        {**env, "AUTHSVC_ENCRYPTION_KEYS": f"{generate_key_spec('cli2')},{last}"}, "worker"
    )
    lines: list[str] = []

    def draining() -> bool:
        lines.append(process.stderr.readline() if process.stderr else "")
        return "draining the outbox" in lines[-1]

    rest = interrupt_when(process, draining, signal.SIGTERM, within=30)
    stderr = "".join(lines) + rest

    assert process.returncode == 0, stderr
    assert (
        "warning: AUTHSVC_ENCRYPTION_KEYS: 2 TOTP factors are encrypted under keys not in the "
        "list ('gone'): they refuse every code until those keys are back after the first entry "
        "(`authsvc keys rotate` then moves them)"
    ) in stderr.splitlines()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_rotation_says_what_it_leaves_and_a_second_run_finishes(env, signum):
    # Ctrl-C answered a bare "Aborted!" and SIGTERM (a job runner's timeout) ended it without
    # a word, while the batches done stayed re-encrypted and the rest did not.
    _totp_factors(env, lambda number, ring: (f"factor{number:05}", ring), 6000)
    ring = {
        **env,
        "AUTHSVC_ENCRYPTION_KEYS": f"{generate_key_spec('cli2')},{env['AUTHSVC_ENCRYPTION_KEYS']}",
    }
    database = (env["AUTHSVC_DATABASE_URL"] or "").removeprefix("sqlite:///")

    def moved() -> int:
        try:
            with sqlite3.connect(database, timeout=0.05) as conn:
                query = (
                    "SELECT count(*) FROM totp_factors WHERE substr(secret_ciphertext, 1, 6) = ?"
                )
                return int(conn.execute(query, (b"\x01\x04cli2",)).fetchone()[0])
        except sqlite3.OperationalError:  # locked by the rotation's write
            return 0

    process = start_command(ring, "keys", "rotate")
    stderr = interrupt_when(process, lambda: moved() > 0, signum, within=60)

    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "Error: interrupted: what was re-encrypted stays so, the rest is under the keys it was "
        "under; run `authsvc keys rotate` again to finish"
    )
    assert 0 < moved() < 6000
    again = CliRunner().invoke(main, ["keys", "rotate"], env=ring)
    assert again.exit_code == 0, again.output
    assert moved() == 6000


def test_a_running_server_outrun_by_keys_rotate_answers_503_and_says_why(env, caplog):
    # `keys rotate` run with a new ring before this process was restarted with it: the signing
    # key is now under a key this process lacks. Every login answered 500 (DecryptionFailed)
    # while /readyz said ready.
    given = {k: v for k, v in env.items() if v is not None}
    app = create_app(Settings.from_env(given))
    app.test_client_class = ContractClient
    client = app.test_client()
    runtime = app.extensions["authsvc"]
    _admin_creates_ada(client, env)
    assert client.post("/v1/login", json=LOGIN).status_code == 200
    ring = f"{generate_key_spec('cli2')},{env['AUTHSVC_ENCRYPTION_KEYS']}"
    rotated = CliRunner().invoke(
        main, ["keys", "rotate"], env={**env, "AUTHSVC_ENCRYPTION_KEYS": ring}
    )
    assert rotated.exit_code == 0, rotated.output
    signing._caches.clear()  # the minute a process keeps the key it loaded, gone by

    with caplog.at_level(logging.ERROR, logger="authsvc.signing"):
        refused = client.post("/v1/login", json=LOGIN)
        ready = client.get("/readyz")

    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.get_json()["code"] == "unavailable"
    assert "encrypted under key 'cli2'" in caplog.text
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["signing_key"] is False
    runtime.dispose()


def test_the_keys_group_names_each_key_it_manages_in_its_help():
    # It said "The encryption key ring: generate and rotate.", and holds rotate-signing too.
    result = CliRunner().invoke(main, ["--help"])

    [line] = [line for line in result.output.splitlines() if line.strip().startswith("keys ")]
    assert "signing" in line


def test_an_interrupt_waits_for_the_next_step_and_a_second_one_does_not():
    # Raised where the signal landed, it could land inside SQLAlchemy's pool, which logged it
    # with a traceback before the command's own message.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupted_between_steps() as checkpoint:
        checkpoint()  # nothing yet
        signal.raise_signal(signal.SIGTERM)  # noted, not raised here
        with pytest.raises(KeyboardInterrupt):
            checkpoint()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second: at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
