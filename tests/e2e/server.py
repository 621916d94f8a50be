"""A real `authsvc serve` (gunicorn) on a free port, for end-to-end tests and benchmarks.

Each server gets its own fresh PostgreSQL database on the server of AUTHSVC_E2E_POSTGRES_URL
(default postgresql://postgres@127.0.0.1/test), so runs never see each other's rows. Its Redis
database is the one AUTHSVC_E2E_REDIS_URL names (default redis://127.0.0.1:6379/1; a URL
without a database number means 1), plus the pytest-xdist worker's number under -n, which each
server empties as it starts: give concurrent runs on one machine numbers far enough apart, and
never ones that hold anything else.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis

from authsvc.crypto.keyring import generate_key_spec

ROOT = Path(__file__).resolve().parents[2]
AUTHSVC = Path(sys.executable).parent / "authsvc"
POSTGRES_URL = os.environ.get("AUTHSVC_E2E_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test")
REDIS_URL = os.environ.get("AUTHSVC_E2E_REDIS_URL", "redis://127.0.0.1:6379/1")


def redis_url(db: int | None = None) -> str:
    """REDIS_URL with database ``db``, else the one it names (1 if none), plus the number of
    the pytest-xdist worker (gw0, gw1, ...): parallel workers of one run empty their own."""
    parts = urlsplit(REDIS_URL)
    if db is None:
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        db = int(parts.path.strip("/") or 1) + worker
    return parts._replace(path=f"/{db}").geturl()


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of POSTGRES_URL, dropped afterwards;
    yields its SQLAlchemy URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    server = POSTGRES_URL.rsplit("/", 1)[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """Start with ``with LiveServer(tmp_path, env={...}) as server: server.url``."""

    def __init__(
        self,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        workers: int = 2,
        threads: int = 4,
        host: str = "127.0.0.1",
        redis_db: int | None = None,
        database: str = "postgresql",
        serve_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.workers = workers
        self.threads = threads
        self.mail_dir = workdir / "mail"
        self.db_name = f"e2e_{secrets.token_hex(6)}"
        self.redis_url = redis_url(redis_db)
        self.database = database
        self.serve_args = serve_args  # extra `authsvc serve` options, e.g. --no-outbox-thread
        self.admin_key = ""
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")},
            "AUTHSVC_ENV": "development",
            "AUTHSVC_VAR_DIR": str(workdir / "var"),
            "AUTHSVC_MAIL_URL": f"file://{self.mail_dir}",
            "AUTHSVC_ENCRYPTION_KEYS": generate_key_spec("e2e1"),
            "AUTHSVC_PUBLIC_URL": self.url,
            "AUTHSVC_OUTBOX_POLL_INTERVAL": "0.05",
            **(env or {}),
        }
        if database == "postgresql":
            self.env["AUTHSVC_DATABASE_URL"] = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{self.db_name}"
            self.env.setdefault("AUTHSVC_REDIS_URL", self.redis_url)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.database == "postgresql":
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            if "AUTHSVC_REDIS_URL" in self.env:
                redis.Redis.from_url(self.env["AUTHSVC_REDIS_URL"]).flushdb()
        self.cli("db", "upgrade")
        self.admin_key = self.cli("admin", "create-key", "--name", "e2e").strip()
        self._log = log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(AUTHSVC),
                "serve",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--threads",
                str(self.threads),
                *self.serve_args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready in 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.database == "postgresql":
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def cli(self, *args: str, check: bool = True) -> str:
        """Run an `authsvc` command against this server's configuration; return stdout."""
        result = subprocess.run(
            [str(AUTHSVC), *args],
            env=self.env,
            capture_output=True,
            cwd=self.workdir,
            check=False,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"authsvc {' '.join(args)} failed: {result.stderr.decode()}")
        return result.stdout.decode()

    # -- convenience ----------------------------------------------------------------------
    def database_url(self) -> str:
        return (
            self.env["AUTHSVC_DATABASE_URL"]
            if "AUTHSVC_DATABASE_URL" in self.env
            else (f"sqlite:///{self.workdir / 'var' / 'authsvc.db'}")
        )

    def mails(self) -> list[Any]:
        return (
            [
                email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted(self.mail_dir.glob("*.eml"))
            ]
            if self.mail_dir.exists()
            else []
        )
