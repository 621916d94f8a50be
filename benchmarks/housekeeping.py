"""Housekeeping over a large backlog: how fast ended rows go, and what a sweep costs after.

    python benchmarks/housekeeping.py [--sessions 1000000] [--tokens-per-session 4]

On a scratch PostgreSQL database (AUTHSVC_E2E_POSTGRES_URL's server, dropped afterwards) at
head, SQL writes: 10,000 users; --sessions sessions, half of them revoked 30 days ago, each with
--tokens-per-session refresh tokens (all but one spent); as many single-use tokens, half expired
30 days ago; as many outbox messages, nine in ten sent 30 days ago. That is an installation that
ran without housekeeping for a while. Then ``housekeeping.sweep`` (what the outbox worker runs
every 10 minutes) is called until a sweep deletes nothing, and once more on the clean tables:
that last one is what a sweep costs every 10 minutes from then on.

Prints one JSON object: rows before and after, each sweep's deleted sessions, tokens and
messages (refresh tokens go with their sessions, uncounted) and seconds, the rows deleted per
second (all four tables), and the seconds of the sweep with nothing to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc.db import make_engine, make_sessionmaker, utcnow  # noqa: E402
from authsvc.schema import upgrade  # noqa: E402
from authsvc.services import housekeeping  # noqa: E402
from authsvc.settings import Settings  # noqa: E402
from tests.e2e.server import scratch_database  # noqa: E402

USERS = 10_000
TABLES = ("sessions", "refresh_tokens", "user_tokens", "outbox_messages")

_FILL = (
    "INSERT INTO users (id, email, email_verified_at, password_change_required, created_at, "
    "updated_at) SELECT 'u' || i, 'user' || i || '@bench.example', now(), false, now(), now() "
    "FROM generate_series(1, :users) AS i",
    # Even sessions were revoked 30 days ago; odd ones are live.
    "INSERT INTO sessions (id, user_id, created_at, last_used_at, auth_time, amr, expires_at, "
    "revoked_at, revoked_reason) SELECT 's' || i, 'u' || (1 + i % :users), now(), now(), now(), "
    "'pwd', now() + interval '30 days', "
    "CASE WHEN i % 2 = 0 THEN now() - interval '30 days' END, "
    "CASE WHEN i % 2 = 0 THEN 'logout' END FROM generate_series(1, :sessions) AS i",
    "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, used_at) "
    "SELECT 'r' || i || '.' || j, 's' || i, md5(i || '.' || j), now(), "
    "CASE WHEN j < :per_session THEN now() END "
    "FROM generate_series(1, :sessions) AS i, generate_series(1, :per_session) AS j",
    "INSERT INTO user_tokens (id, user_id, purpose, token_hash, created_at, expires_at, attempts) "
    "SELECT 't' || i, 'u' || (1 + i % :users), 'mfa', md5('t' || i), now(), "
    "CASE WHEN i % 2 = 0 THEN now() - interval '30 days' ELSE now() + interval '5 minutes' END, "
    "0 FROM generate_series(1, :sessions) AS i",
    "INSERT INTO outbox_messages (kind, payload_ciphertext, created_at, available_at, attempts, "
    "completed_at) SELECT 'email', '\\x00', now(), now(), 1, "
    "CASE WHEN i % 10 <> 0 THEN now() - interval '30 days' END "
    "FROM generate_series(1, :sessions) AS i",
)


def counts(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--tokens-per-session", type=int, default=4)
    options = parser.parse_args()
    settings = Settings()

    with scratch_database("housekeeping_bench") as url:
        upgrade(url)
        engine = make_engine(url)
        params = {
            "users": USERS,
            "sessions": options.sessions,
            "per_session": options.tokens_per_session,
        }
        started = time.monotonic()
        with engine.begin() as conn:
            for statement in _FILL:
                conn.execute(text(statement), params)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        fill_seconds = time.monotonic() - started
        before = counts(engine)

        factory = make_sessionmaker(engine)
        sweeps: list[dict[str, Any]] = []
        while True:
            started = time.monotonic()
            swept = housekeeping.sweep(
                factory,
                now=utcnow(),
                retention=settings.expired_retention,
                failed_retention=settings.failed_message_retention,
                idle_timeout=settings.session_idle_timeout,
            )
            seconds = time.monotonic() - started
            sweeps.append({**dataclasses.asdict(swept), "seconds": round(seconds, 2)})
            if swept.total == 0:
                break
        after = counts(engine)
        engine.dispose()

    # Counted in the tables: the refresh tokens that went with their sessions included.
    deleted = sum(before.values()) - sum(after.values())
    busy = sum(s["seconds"] for s in sweeps[:-1])
    print(
        json.dumps(
            {
                "benchmark": "housekeeping",
                "database": "postgresql",
                "cpus": os.cpu_count(),
                "retention": str(timedelta(seconds=settings.expired_retention.total_seconds())),
                "batch": housekeeping.BATCH,
                "max_batches_per_table_and_sweep": housekeeping.MAX_BATCHES,
                "fill_seconds": round(fill_seconds, 1),
                "rows_before": before,
                "rows_after": after,
                "rows_deleted": deleted,
                "sweeps": sweeps,
                "rows_deleted_per_second": round(deleted / busy) if busy else None,
                "idle_sweep_seconds": sweeps[-1]["seconds"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
