"""Force-resets and campaign creation on a database with years of finished campaigns.

    python benchmarks/breach_history.py [--campaigns 0,10000,100000,300000] [--repeat 15]

Every admin force-reset is a one-account campaign, so an installation accumulates one
breach_campaigns row per force-reset. On a scratch PostgreSQL database (AUTHSVC_E2E_POSTGRES_URL's
server, dropped afterwards) at head, --users accounts are written with SQL; then, for each number
in --campaigns, finished campaigns are added with SQL up to that number: completed, cancelled
and failed, mostly force-resets of one account, every 50th an API campaign of --api-targets
accounts (a third of those walked, with their walk and enrolment done), every 97th a CLI list.
After VACUUM ANALYZE, it times:

- ``force_reset``: ``breach.force_reset`` of an account not flagged yet, each in its own
  committed transaction, as the admin route runs it (its campaign is added to the history);
  ``statements`` is how many SQL statements the median run ran, ``statements_ms`` their
  milliseconds together, ``slowest_statements`` the three that took longest;
- ``dry_run_all``: ``breach.create_campaign`` of an ``all`` campaign with ``dry_run``: the
  targeting count and the conflict check, rolled back;
- ``completing_a_reset``: the two statements over breach_targets that a password reset or
  change of a flagged account runs (``breach_batches.lock_targets`` and
  ``record_password_set``), rolled back;

and names the index PostgreSQL plans for the conflict check (``breach_sql.claiming_besides``).
Prints one JSON object: the median and slowest milliseconds of each, per number of campaigns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit_queries import plan_index  # noqa: E402

from authsvc.app import build_runtime  # noqa: E402
from authsvc.crypto.keyring import generate_key_spec  # noqa: E402
from authsvc.db import utcnow  # noqa: E402
from authsvc.schema import upgrade  # noqa: E402
from authsvc.services import breach, breach_batches, breach_sql  # noqa: E402
from authsvc.services.context import SYSTEM  # noqa: E402
from authsvc.settings import Settings  # noqa: E402
from tests.e2e.server import scratch_database  # noqa: E402

ADMIN = breach.Creator(name="benchmark")

_USERS = """
INSERT INTO users (id, email, email_verified_at, password_hash, password_set_at,
                   password_change_required, created_at, updated_at)
SELECT 'u' || g, 'user' || g || '@example.com', now(), 'unused', now() - interval '400 days',
       false, now() - interval '500 days', now() - interval '500 days'
FROM generate_series(1, CAST(:users AS integer)) AS g
"""
# Campaign g: a force-reset of one account, every 50th an API campaign (a third of those
# walked: last_page set), every 97th a CLI list; all finished, a minute apart.
_CAMPAIGNS = """
INSERT INTO breach_campaigns
    (id, origin, reason, selector, selector_before, mode, revoke_sessions, reset_mfa, notify,
     status, targeted, processed, sessions_revoked, notices_queued, batches, failures, cursor,
     boundaries, phase, next_page, last_page, created_by, created_at, started_at, finished_at)
SELECT 'c' || g,
       CASE WHEN g % 50 = 0 THEN 'api' WHEN g % 97 = 0 THEN 'cli' ELSE 'force_reset' END,
       'phished',
       CASE WHEN g % 50 = 0 THEN (ARRAY['all', 'created_before', 'emails'])[1 + g / 50 % 3]
            WHEN g % 97 = 0 THEN 'emails' ELSE 'user_ids' END,
       CASE WHEN g % 50 = 0 AND g / 50 % 3 = 1 THEN now() - interval '450 days' END,
       CASE WHEN g % 3 = 0 THEN 'change_at_next_login' ELSE 'invalidate' END,
       true, false, g % 2 = 0,
       (ARRAY['completed', 'completed', 'completed', 'completed', 'completed', 'completed',
              'cancelled', 'failed'])[1 + g % 8],
       1, 1, 0, 0, 1, 0, NULL, '[]', 'done',
       CASE WHEN g % 50 = 0 AND g / 50 % 3 = 0 THEN 100 END,
       CASE WHEN g % 50 = 0 AND g / 50 % 3 = 0 THEN 100 END,
       'admin', t, t, t + interval '1 minute'
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g,
     LATERAL (SELECT now() - interval '1 minute' * (2000000 - g) AS t) AS at
"""
# One target row per force-reset and CLI campaign, --api-targets per API campaign.
_TARGETS = """
INSERT INTO breach_targets (campaign_id, user_id, processed_at, notice_queued_at)
SELECT 'c' || g, 'u' || (1 + (CAST(g AS bigint) * 7919 + k) % CAST(:users AS integer)), now(), now()
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g,
     generate_series(1, CASE WHEN g % 50 = 0 THEN CAST(:api_targets AS integer) ELSE 1 END) AS k
ON CONFLICT DO NOTHING
"""


def fill(engine: Engine, *, first: int, last: int, users: int, api_targets: int) -> None:
    if last >= first:
        values = {"first": first, "last": last, "users": users, "api_targets": api_targets}
        with engine.begin() as conn:
            conn.execute(text(_CAMPAIGNS), values)
            conn.execute(text(_TARGETS), values)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


class Statements:
    """The SQL statements the engine runs, with their milliseconds."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[float, str]] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, *_args: Any) -> None:
        conn.info["started"] = time.perf_counter()

    def _after(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        milliseconds = (time.perf_counter() - conn.info.pop("started")) * 1000
        self.seen.append((milliseconds, " ".join(statement.split())))


def timed(
    sessions: Callable[[], Any], statements: Statements, run: Callable[[Session, int], Any], n: int
) -> dict[str, Any]:
    """Run ``run`` ``n`` times plus one warm-up, each in its own transaction (committed when
    ``sessions`` begins one, rolled back otherwise)."""
    times: list[float] = []
    runs: list[list[tuple[float, str]]] = []
    for i in range(n + 1):
        statements.seen.clear()
        started = time.perf_counter()
        with sessions() as session:
            run(session, i)
        if i:
            times.append((time.perf_counter() - started) * 1000)
            runs.append(list(statements.seen))
    median_run = runs[sorted(range(n), key=times.__getitem__)[n // 2]]
    return {
        "median_ms": round(statistics.median(times), 2),
        "max_ms": round(max(times), 2),
        "statements": len(median_run),
        "statements_ms": round(sum(ms for ms, _sql in median_run), 2),
        "slowest_statements": [
            {"ms": round(ms, 2), "sql": sql[:100]} for ms, sql in sorted(median_run)[::-1][:3]
        ],
    }


def measure(runtime: Any, statements: Statements, *, step: int, repeat: int) -> dict[str, Any]:
    factory = runtime.sessionmaker
    first_user = step * (repeat + 1) + 1  # accounts no earlier step flagged

    def force_reset(session: Session, i: int) -> None:
        breach.force_reset(
            session, runtime.deps, user_id=f"u{first_user + i}", mode="invalidate",
            revoke_sessions=True, reset_mfa=False, notify=True, reason="phished",
            creator=ADMIN, client=SYSTEM, now=utcnow(),
        )  # fmt: skip

    def dry_run_all(session: Session, _i: int) -> None:
        request = breach.CampaignRequest(reason="dump", selector="all", mode="invalidate")
        breach.create_campaign(
            session, runtime.deps, request=request, creator=ADMIN, client=SYSTEM, now=utcnow(),
            dry_run=True,
        )  # fmt: skip
        session.rollback()

    def completing_a_reset(session: Session, _i: int) -> None:
        user_id = f"u{first_user}"  # flagged by the first force-reset above
        breach_batches.lock_targets(session, user_id=user_id)
        breach_batches.record_password_set(session, user_id=user_id, now=utcnow())
        session.rollback()

    result = {
        "force_reset": timed(factory.begin, statements, force_reset, repeat),
        "dry_run_all": timed(factory, statements, dry_run_all, repeat),
        "completing_a_reset": timed(factory, statements, completing_a_reset, repeat),
    }
    with factory() as session:
        result["conflict_check_index"] = plan_index(session, breach_sql.claiming_besides("none"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", default="0,10000,100000,300000")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--api-targets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=15)
    options = parser.parse_args()
    steps = [int(n) for n in options.campaigns.split(",")]

    results = []
    with scratch_database("breach_history") as url, tempfile.TemporaryDirectory() as var:
        upgrade(url)
        settings = Settings(
            var_dir=Path(var),
            database_url=url,
            mail_url=f"file://{var}/mail",
            encryption_keys=(generate_key_spec("bench"),),
            public_url="http://authsvc.invalid",
        )
        runtime = build_runtime(settings)
        runtime.sign_audit_head()
        engine = runtime.engine
        with engine.begin() as conn:
            conn.execute(text(_USERS), {"users": options.users})
        statements = Statements(engine)
        done = 0
        for step, campaigns in enumerate(steps):
            fill(
                engine,
                first=done + 1,
                last=campaigns,
                users=options.users,
                api_targets=options.api_targets,
            )
            done = max(done, campaigns)
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM breach_campaigns),"
                        " (SELECT count(*) FROM breach_targets)"
                    )
                ).one()
            results.append(
                {
                    "finished_campaigns": rows[0],
                    "target_rows": rows[1],
                    **measure(runtime, statements, step=step, repeat=options.repeat),
                }
            )
        runtime.dispose()

    print(
        json.dumps(
            {
                "benchmark": "breach_history",
                "database": "postgresql",
                "cpus": os.cpu_count(),
                "users": options.users,
                "repeat": options.repeat,
                "load": os.getloadavg(),
                "steps": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
