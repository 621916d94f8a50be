"""`authsvc worker` as a process: SIGTERM (systemd, docker, kubernetes) stops it between
deliveries, and what it had claimed but not begun is due again at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from authsvc.app import build_runtime
from authsvc.db import utcnow
from authsvc.models import OutboxMessage
from authsvc.models.ops import AuditChainHead
from authsvc.services import audit, outbox
from authsvc.settings import Settings
from tests.cli.test_cli_admin import env  # noqa: F401  # fixture: a migrated SQLite file

AUTHSVC = Path(sys.executable).parent / "authsvc"


def test_sigterm_hands_back_the_claimed_mail_and_exits_cleanly(env, tmp_path):  # noqa: F811
    with socket.socket() as silent:  # accepts connections, never greets: each send times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        variables = {
            **{k: v for k, v in env.items() if v is not None},
            "AUTHSVC_MAIL_URL": f"smtp://127.0.0.1:{silent.getsockname()[1]}?timeout=2",
        }
        runtime = build_runtime(Settings.from_env(variables))
        with runtime.sessionmaker.begin() as session:
            for n in range(5):
                outbox.enqueue(
                    session,
                    runtime.deps.keyring,
                    kind="email",
                    payload={"to": f"u{n}@example.com", "subject": "s", "text": "t"},
                    now=utcnow(),
                )
        process = subprocess.Popen(
            [str(AUTHSVC), "worker"],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")},
                **variables,
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        # Its first connection: it claimed the batch and is stuck on the first mail (however
        # long a loaded machine takes to start it).
        silent.settimeout(60)
        stuck, _ = silent.accept()
        with stuck:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped" in stderr
    with runtime.sessionmaker() as session:
        messages = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        # Its start signed the audit trail's head, which `db upgrade` left unsigned.
        assert session.get(AuditChainHead, audit.HEAD_ID).head_mac
        assert audit.head_signed_by(session, runtime.deps.keyring)
    runtime.dispose()
    tried = [m for m in messages if m.attempts]
    waiting = [m for m in messages if not m.attempts]
    assert 1 <= len(tried) <= 2 and all(m.last_error for m in tried)  # timed out, will retry
    assert len(waiting) >= 3
    assert all(m.available_at <= utcnow() and m.completed_at is None for m in waiting)
