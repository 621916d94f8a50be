"""The by-account audit queries on a large trail, before and after migration 0007.

    python benchmarks/audit_queries.py [--events 2000000] [--hot-events 200000]

On a scratch PostgreSQL database (AUTHSVC_E2E_POSTGRES_URL's server, dropped afterwards) at
migration 0006, the audit trail is filled with --events events of 20,000 accounts, then two
probe accounts are added:

- ``typical``: 100 events, a quarter of them full logins, spread through the trail;
- ``hot``: its 5 full logins come first, then --hot-events failed logins (an account under a
  guessing attack whose owner then signs in).

For both, the three by-account queries the service runs are timed: the new-device check that
every full login makes (``detection.earlier_login_agents``), a page of the user's own security
events and a page of the admin listing filtered by account. Then the schema is upgraded to head
(timed: 0007 builds its index CONCURRENTLY) and the queries are timed again. Prints one JSON
object: the median and the slowest of each query's milliseconds, and the index PostgreSQL plans
to read for the device check with these values. The driver prepares a statement on its fifth
run, and PostgreSQL may then switch to one generic plan for every value: the median is that
steady state, the slowest run is usually one of the first, custom-planned ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc.db import make_engine  # noqa: E402
from authsvc.schema import upgrade  # noqa: E402
from authsvc.services import audit_views, detection  # noqa: E402
from tests.e2e.server import scratch_database  # noqa: E402

ACCOUNTS = 20_000
PAGE = 50
REPEAT = 25

# One event per row of generate_series: a login, a wrong password, an MFA step or a throttled
# request, for account g % ACCOUNTS.
_FILL = """
INSERT INTO audit_events
    (occurred_at, type, outcome, user_id, ip, user_agent, details, prev_hash, row_hash)
SELECT now(),
       (ARRAY['login.success', 'login.failure', 'login.mfa', 'ratelimit.hit'])[1 + g % 4],
       CASE WHEN g % 4 = 0 THEN 'authenticated' ELSE 'failure' END,
       'bench-' || (g / 4) % :accounts, '192.0.2.1', 'Mozilla/5.0 Firefox/' || g % 50,
       '{}', '', ''
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
"""
_PROBE = """
INSERT INTO audit_events
    (occurred_at, type, outcome, user_id, ip, user_agent, details, prev_hash, row_hash)
SELECT now(), :type, :outcome, :user_id, '192.0.2.2', 'Mozilla/5.0 Firefox/120', '{}', '', ''
FROM generate_series(1, :count)
"""


def fill(engine: Engine, *, events: int, hot_events: int) -> None:
    with engine.begin() as conn:
        half = events // 2
        conn.execute(text(_FILL), {"accounts": ACCOUNTS, "first": 1, "last": half})
        for _ in range(25):  # the typical account: 100 events spread through the trail
            for kind, outcome in (
                ("login.success", "authenticated"),
                ("login.failure", "invalid_password"),
                ("login.mfa", "success"),
                ("ratelimit.hit", "refused"),
            ):
                conn.execute(
                    text(_PROBE),
                    {"type": kind, "outcome": outcome, "user_id": "typical", "count": 1},
                )
            conn.execute(text(_FILL), {"accounts": ACCOUNTS, "first": 1, "last": half // 25})
        conn.execute(
            text(_PROBE),
            {"type": "login.success", "outcome": "authenticated", "user_id": "hot", "count": 5},
        )
        conn.execute(
            text(_PROBE),
            {
                "type": "login.failure",
                "outcome": "invalid_password",
                "user_id": "hot",
                "count": hot_events,
            },
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE audit_events"))


def queries(user_id: str) -> dict[str, Callable[[Session], Any]]:
    """The service's by-account queries, as it runs them."""
    return {
        "new_device_check": lambda s: s.scalars(detection.earlier_login_agents(user_id)).all(),
        "security_events_page": lambda s: audit_views.security_events(
            s, user_id=user_id, before_id=None, limit=PAGE
        ),
        "admin_listing_page": lambda s: audit_views.list_events(
            s, where=audit_views.EventFilter(user_id=user_id), before_id=None, limit=PAGE
        ),
    }


def plan_index(session: Session, statement: Select[Any]) -> str:
    """The first index the plan of ``statement`` reads."""
    compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    for line in session.execute(text(f"EXPLAIN {compiled}")).scalars():
        if " using " in line:
            return str(line.split(" using ")[1].split(" on ")[0])
    return "none (sequential scan)"


def measure(engine: Engine) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Session(engine) as session:
        for user_id in ("typical", "hot"):
            for name, run in queries(user_id).items():
                run(session)  # warm: plan cache, buffers
                times = []
                for _ in range(REPEAT):
                    started = time.perf_counter()
                    run(session)
                    times.append((time.perf_counter() - started) * 1000)
                result.setdefault(user_id, {})[name] = {
                    "median_ms": round(statistics.median(times), 3),
                    "max_ms": round(max(times), 3),
                }
            result[user_id]["new_device_check"]["index_planned_for_these_values"] = plan_index(
                session, detection.earlier_login_agents(user_id)
            )
            session.rollback()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--hot-events", type=int, default=200_000)
    options = parser.parse_args()

    with scratch_database("audit_bench") as url:
        upgrade(url, "0006")
        engine = make_engine(url)
        started = time.monotonic()
        fill(engine, events=options.events, hot_events=options.hot_events)
        fill_seconds = time.monotonic() - started
        with engine.connect() as conn:
            total = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        before = measure(engine)
        started = time.monotonic()
        upgrade(url)
        migrate_seconds = time.monotonic() - started
        after = measure(engine)
        engine.dispose()

    print(
        json.dumps(
            {
                "benchmark": "audit_queries",
                "database": "postgresql",
                "cpus": os.cpu_count(),
                "audit_events": total,
                "hot_account_events": options.hot_events + 5,
                "fill_seconds": round(fill_seconds, 1),
                "migration_0007_seconds": round(migrate_seconds, 2),
                "repeat": REPEAT,
                "at_0006_user_id_index": before,
                "at_head_user_id_type_id_index": after,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
