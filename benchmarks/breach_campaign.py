"""A breach response over millions of accounts on PostgreSQL, with logins going on meanwhile.

    python benchmarks/breach_campaign.py --users 2600000

Starts a real `authsvc serve` (tests/e2e/server.py: gunicorn, 2 workers with their outbox
threads, a fresh PostgreSQL database and Redis db), seeds the accounts directly with SQL
(INSERT ... SELECT generate_series; one session for every --sessions-every-th account), then:

1. measures the login latency of a bounded loop of real logins (idle);
2. POSTs a campaign (selector all, mode invalidate, revoke_sessions, notify) and polls it until
   it completes: every account flagged, its sessions revoked and its notice queued; the same
   login loop runs meanwhile;
3. uploads a list of --emails addresses (text/plain) as a second campaign and times it.

The probe accounts that log in are created through the admin API and then dated after the
campaign's snapshot (created_at in the future), so `all` leaves them alone and every probe login
does the full work of a successful login. Prints one JSON object: besides the times, the WAL the
campaign wrote (pg_stat_wal), the seconds of each of its phases (from its audit events) and the
phase each of the slowest logins fell in. Wall-clock figures mean little on a busy machine: the
load averages are printed alongside, and so are the PostgreSQL settings that matter most here
(shared_buffers, max_wal_size; the target is the stock settings).
AUTHSVC_E2E_POSTGRES_URL points the run at another PostgreSQL server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import argon2
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.server import LiveServer  # noqa: E402

PASSWORD = "correct horse battery 42"
PROBES = 20


def call(
    server: LiveServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    admin: bool = False,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{server.url}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if admin:
        request.add_header("Authorization", f"Bearer {server.admin_key}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def login_latencies(
    server: LiveServer,
    stop: threading.Event,
    *,
    limit: int,
    seconds: float,
    rate: float,
    starts: list[datetime] | None = None,
) -> list[float]:
    """Real logins of the probe accounts, one at a time at about ``rate`` per second (steady
    traffic rather than a saturating loop), until stopped or bounded. ``starts`` collects when
    each began."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while not stop.is_set() and len(out) < limit and time.monotonic() < deadline:
        email = f"probe{len(out) % PROBES}@bench.example"
        stop.wait(max(0.0, 1 / rate - (out[-1] / 1000 if out else 0.0)))
        if starts is not None:
            starts.append(datetime.now(UTC))
        started = time.perf_counter()
        status, body = call(server, "POST", "/v1/login", {"email": email, "password": PASSWORD})
        out.append((time.perf_counter() - started) * 1000)
        if status != 200 or body.get("status") != "authenticated":
            raise RuntimeError(f"probe login failed: {status} {body}")
    return out


def seed(dsn: str, *, users: int, sessions_every: int, password_hash: str) -> dict[str, float]:
    timings = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO users (id, email, email_verified_at, password_hash, password_set_at, "
            "password_change_required, created_at, updated_at) "
            "SELECT substr(md5(i::text), 1, 22), 'user' || i || '@bench.example', "
            "now() - interval '2 days', %(hash)s, now() - interval '2 days', false, "
            "now() - interval '2 days', now() - interval '2 days' "
            "FROM generate_series(1, %(n)s) AS i",
            {"hash": password_hash, "n": users},
        )
        timings["users_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, auth_time, amr, "
            "expires_at) SELECT substr(md5('s' || i::text), 1, 22), "
            "substr(md5(i::text), 1, 22), now() - interval '1 day', now(), "
            "now() - interval '1 day', 'pwd', now() + interval '29 days' "
            "FROM generate_series(1, %(n)s, %(every)s) AS i",
            {"n": users, "every": sessions_every},
        )
        timings["sessions_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE users")
        conn.execute("VACUUM ANALYZE sessions")
        conn.execute("CHECKPOINT")
        timings["vacuum_s"] = time.perf_counter() - started
    return timings


def wait_for(server: LiveServer, campaign_id: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = call(server, "GET", f"/admin/v1/breach-responses/{campaign_id}", admin=True)
        if status == 200 and body["status"] not in ("pending", "running"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.25)
    raise RuntimeError(f"campaign {campaign_id} did not finish in {timeout} s")


def elapsed(body: dict[str, Any]) -> float:
    finished = datetime.fromisoformat(body["finished_at"])
    return (finished - datetime.fromisoformat(body["created_at"])).total_seconds()


def pg_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "shared_buffers", "max_wal_size", "synchronous_commit")
        }


def wal_counters(dsn: str) -> dict[str, float]:
    """Cluster-wide WAL and checkpoint counters (differences are what a run wrote)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT w.wal_bytes, w.wal_fpi, w.wal_records, "
            "b.checkpoints_timed + b.checkpoints_req FROM pg_stat_wal w, pg_stat_bgwriter b"
        ).fetchone()
    assert row is not None
    return {"wal_bytes": float(row[0]), "fpi": row[1], "records": row[2], "checkpoints": row[3]}


def wal_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {name: after[name] - before[name] for name in before}
    delta["wal_mb"] = round(delta.pop("wal_bytes") / 2**20, 1)
    return delta


def phase_starts(dsn: str, campaign_id: str) -> list[tuple[str, datetime, int]]:
    """(phase, its first batch's time, batches) of the campaign, in order."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT details::json->>'phase', min(occurred_at), count(*) FROM audit_events "
            "WHERE type = 'breach.batch_processed' AND details::json->>'campaign_id' = %s "
            "GROUP BY 1 ORDER BY 2",
            (campaign_id,),
        ).fetchall()


def slowest(
    latencies: list[float], starts: list[datetime], marks: list[tuple[str, datetime, int]]
) -> list[dict[str, Any]]:
    """The five slowest logins and the campaign phase each began in."""
    out = []
    for ms, at in sorted(zip(latencies, starts, strict=True), reverse=True)[:5]:
        phase = next((name for name, first, _ in reversed(marks) if first <= at), "before")
        out.append({"ms": round(ms, 1), "phase": phase, "at": at.isoformat()})
    return out


def phases(dsn: str, campaign_id: str) -> dict[str, dict[str, float]]:
    """Batches per phase and seconds from the phase's first batch to the next phase's first
    (from the campaign's audit events; the last phase ends at the campaign's end)."""
    rows = phase_starts(dsn, campaign_id)
    with psycopg.connect(dsn) as conn:
        times = conn.execute(
            "SELECT created_at, finished_at FROM breach_campaigns WHERE id = %s", (campaign_id,)
        ).fetchone()
    assert times is not None and rows
    ends = [row[1] for row in rows[1:]] + [times[1]]
    result = {"created": {"batches": 0, "seconds": (rows[0][1] - times[0]).total_seconds()}}
    for (phase, first, n), end in zip(rows, ends, strict=True):
        result[phase] = {"batches": n, "seconds": (end - first).total_seconds()}
    return {name: {**v, "seconds": round(v["seconds"], 2)} for name, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_600_000)
    parser.add_argument("--sessions-every", type=int, default=4)
    parser.add_argument("--emails", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--notify-rate", type=float, default=20.0)
    parser.add_argument("--idle-logins", type=int, default=200)
    parser.add_argument("--max-logins", type=int, default=3000)
    parser.add_argument(
        "--login-rate",
        type=float,
        default=5.0,
        help="Logins per second while measuring (one at a time).",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    env = {
        "AUTHSVC_NOTIFY_RATE_PER_SECOND": str(args.notify_rate),
        # The probes log in from one address far more often than a person would.
        "AUTHSVC_LIMIT_IP": "100000/minute",
        "AUTHSVC_LIMIT_EMAIL": "100000/minute",
        "AUTHSVC_LIMIT_IP_EMAIL": "100000/minute",
        "AUTHSVC_LIMIT_FAILURES_PER_ACCOUNT": "100000/day",
    }
    if args.batch_size:
        env["AUTHSVC_BREACH_BATCH_SIZE"] = str(args.batch_size)
    result: dict[str, Any] = {
        "users": args.users,
        "sessions_every": args.sessions_every,
        "login_rate_per_second": args.login_rate,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Path(tmp), env=env) as server:
        dsn = server.database_url()
        result["postgresql"] = pg_settings(dsn)
        for i in range(PROBES):
            status, body = call(
                server,
                "POST",
                "/admin/v1/users",
                admin=True,
                body={"email": f"probe{i}@bench.example", "password": PASSWORD},
            )
            assert status == 201, body
        stored = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
        result["seed"] = seed(
            dsn,
            users=args.users,
            sessions_every=args.sessions_every,
            password_hash=stored.hash(PASSWORD),
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE users SET created_at = now() + interval '1 day' "
                "WHERE email LIKE 'probe%%@bench.example'"
            )

        idle = login_latencies(
            server, threading.Event(), limit=args.idle_logins, seconds=300, rate=args.login_rate
        )

        stop = threading.Event()
        during: list[float] = []
        during_starts: list[datetime] = []
        loop = threading.Thread(
            target=lambda: during.extend(
                login_latencies(
                    server,
                    stop,
                    limit=args.max_logins,
                    seconds=args.timeout,
                    rate=args.login_rate,
                    starts=during_starts,
                )
            )
        )
        wal_before = wal_counters(dsn)
        started = time.perf_counter()
        status, created = call(
            server,
            "POST",
            "/admin/v1/breach-responses",
            admin=True,
            body={
                "reason": "benchmark: every account",
                "selector": "all",
                "mode": "invalidate",
                "revoke_sessions": True,
                "notify": True,
            },
        )
        assert status == 202, created
        loop.start()
        done = wait_for(server, created["id"], timeout=args.timeout)
        wall = time.perf_counter() - started
        wal = wal_delta(wal_before, wal_counters(dsn))
        load_during = os.getloadavg()
        stop.set()
        loop.join()

        with psycopg.connect(dsn) as conn:
            flagged, live, tickets = conn.execute(
                "SELECT (SELECT count(*) FROM users WHERE password_invalidated_at IS NOT NULL),"
                " (SELECT count(*) FROM sessions WHERE revoked_at IS NULL"
                "  AND user_id NOT IN (SELECT id FROM users WHERE email LIKE 'probe%%')),"
                " (SELECT count(*) FROM breach_targets WHERE campaign_id = %s"
                "  AND notice_queued_at IS NOT NULL)",
                (created["id"],),
            ).fetchone()  # type: ignore[misc]
        result["campaign_all"] = {
            "status": done["status"],
            "processed": done["processed"],
            "sessions_revoked": done["sessions_revoked"],
            "notices_queued": done["notices_queued"],
            "seconds": round(elapsed(done), 2),
            "wall_seconds": round(wall, 2),
            "check": {"flagged": flagged, "live_sessions_left": live, "notices_queued": tickets},
            "wal": wal,
            "phases": phases(dsn, created["id"]),
            "load_at_end": load_during,
        }
        result["login_ms"] = {
            "idle": {
                "n": len(idle),
                "p50": round(statistics.median(idle), 1),
                "p99": round(percentile(idle, 0.99), 1),
            },
            "during": {
                "n": len(during),
                "p50": round(statistics.median(during), 1),
                "p99": round(percentile(during, 0.99), 1),
            },
        }
        result["login_ms"]["slowest_during"] = slowest(
            during, during_starts, phase_starts(dsn, created["id"])
        )
        result["login_ms"]["p99_ratio"] = round(
            result["login_ms"]["during"]["p99"] / result["login_ms"]["idle"]["p99"], 2
        )

        listed = "\n".join(
            f"user{i}@bench.example" for i in range(1, min(args.emails, args.users) + 1)
        ).encode()
        wal_before = wal_counters(dsn)
        started = time.perf_counter()
        status, created = call(
            server,
            "POST",
            "/admin/v1/breach-responses?selector=emails&mode=invalidate"
            "&reason=benchmark%3A+uploaded+list&notify=true",
            raw=listed,
            content_type="text/plain",
            admin=True,
        )
        assert status == 202, created
        upload = time.perf_counter() - started
        done = wait_for(server, created["id"], timeout=args.timeout)
        result["campaign_list"] = {
            "emails": args.emails,
            "matched": done["input"]["matched"],
            "status": done["status"],
            "upload_seconds": round(upload, 2),
            "seconds": round(elapsed(done), 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "wal": wal_delta(wal_before, wal_counters(dsn)),
        }
        result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
