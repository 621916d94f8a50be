"""Throughput and p99 latency of the TOTP login step, against GET /healthz in the same run.

    python benchmarks/mfa_step.py [--duration 10] [--connections 8]

A real `authsvc serve` (tests/e2e/server.py: gunicorn, PostgreSQL, Redis) is started. wrk
drives it at the given concurrency, first ``GET /healthz`` (the trivial endpoint), then
``POST /v1/login/mfa`` with a VALID TOTP code. Only that second step is measured; it does the
full work of a real one: mfa_token lookup and spend, per-account rate limits in Redis, AES-GCM
decryption of the factor's secret, the RFC 6238 check, the atomic replay-guarding UPDATE, the
audit events, a new session and a signed access token.

A time step is accepted once per factor and an mfa_token once, so every request needs a fresh
(mfa_token, code) pair. Before the MFA run the script prepares as many users as the run can use
(sized from the /healthz throughput, so it never runs short), directly in the database with the
service's own key ring: each gets a confirmed TOTP factor with its own secret and an mfa_token
issued as the password step would issue it. The codes are computed for the current time step
just before wrk starts (the ±1 step window keeps them valid for at least 30 s). lua/mfa_step.lua
gives each wrk thread its own share of the pairs and sends each once. Afterwards the script
checks in the database that every 200 answer corresponds to one factor whose step was claimed.

Prints one JSON object. The target is at least half the /healthz throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run import CpuMeter, cpu_per_request  # noqa: E402  # benchmarks/run.py, beside this script
from sqlalchemy import func, insert, select  # noqa: E402

from authsvc.app import build_runtime  # noqa: E402
from authsvc.crypto import totp as otp  # noqa: E402
from authsvc.crypto.tokens import new_token, token_hash  # noqa: E402
from authsvc.db import new_id  # noqa: E402
from authsvc.gunicorn_app import DEFAULT_THREADS, default_workers  # noqa: E402
from authsvc.models import TotpFactor, User, UserToken  # noqa: E402
from authsvc.services import audit, totp  # noqa: E402
from authsvc.settings import Settings  # noqa: E402
from tests.e2e.server import LiveServer  # noqa: E402

LUA = ROOT / "benchmarks" / "lua"
MIN_USERS = 2_000
MAX_USERS = 80_000
BATCH = 2_000


def wrk(
    url: str,
    script: str,
    *,
    duration: int,
    connections: int,
    threads: int,
    args: tuple[str, ...] = (),
) -> dict[str, Any]:
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA / script),
        url,
    ]
    if args:
        command += ["--", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("MFA_JSON "))
    raw: dict[str, Any] = json.loads(line.removeprefix("MFA_JSON "))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "requests_per_second": round(raw["requests"] / seconds, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in raw["latency_us"].items()},
        "statuses": raw["statuses"],
        "socket_errors": raw["socket_errors"],
    }


def metered(server: LiveServer, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s result with the CPU that the server, its database backends and Redis
    spent per request while it ran."""
    meter = CpuMeter(server)
    before = meter.snapshot()
    result = run()
    used = CpuMeter.used(before, meter.snapshot())
    result["cpu_ms_per_request"] = cpu_per_request(used, max(1, result["requests"]))
    return result


def prepare(settings: Settings, count: int) -> tuple[list[tuple[str, str]], Any]:
    """``count`` users, each with a confirmed TOTP factor and a fresh mfa_token.
    Return (mfa_token, secret) pairs and the runtime (for the check afterwards)."""
    runtime = build_runtime(settings)
    keyring = runtime.deps.keyring
    now = datetime.now(UTC)
    pairs: list[tuple[str, str]] = []
    for start in range(0, count, BATCH):
        users, factors, tokens = [], [], []
        for i in range(start, min(start + BATCH, count)):
            user_id, factor_id = new_id(), new_id()
            secret = otp.generate_secret()
            token = new_token("mfa")
            users.append(
                {
                    "id": user_id,
                    "email": f"mfa-bench-{i}@example.com",
                    "email_verified_at": now,
                    "password_change_required": False,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            factors.append(
                {
                    "id": factor_id,
                    "user_id": user_id,
                    "name": "bench",
                    "secret_ciphertext": keyring.encrypt(
                        secret.encode(), associated_data=totp.secret_aad(factor_id)
                    ),
                    "created_at": now,
                    "confirmed_at": now,
                    "confirm_attempts": 0,
                }
            )
            tokens.append(
                {
                    "id": new_id(),
                    "user_id": user_id,
                    "purpose": "mfa",
                    "token_hash": token_hash(token),
                    "created_at": now,
                    "expires_at": now + settings.mfa_token_ttl,
                    "attempts": 0,
                    "context": json.dumps({"amr": ["pwd"]}),
                }
            )
            pairs.append((token, secret))
        with runtime.sessionmaker.begin() as session:
            session.execute(insert(User), users)
            session.execute(insert(TotpFactor), factors)
            session.execute(insert(UserToken), tokens)
            # In the trail as an account's creation always is: without it, an account older
            # than the trail's first event looks pruned, and its first login mails a
            # new-device notice, which a real first login does not.
            for user in users:
                audit.record(
                    session,
                    type="admin.user_created",
                    outcome="success",
                    now=now,
                    user_id=user["id"],
                    details={"hash_source": "password"},
                )
    return pairs, runtime


def claimed_steps(runtime: Any) -> int:
    """Factors whose time step was claimed: one per accepted code. Waits a moment first, for
    requests still in flight when wrk stopped (their answers are not in wrk's counts)."""
    time.sleep(1.5)
    with runtime.sessionmaker() as session:
        return int(
            session.scalar(select(func.count()).where(TotpFactor.last_used_at.is_not(None))) or 0
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=8, help="concurrency")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="gunicorn workers (serve default)"
    )
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="threads per worker (serve default)"
    )
    options = parser.parse_args()
    wrk_threads = min(options.wrk_threads, options.connections)
    load_before = os.getloadavg()[0]

    with (
        tempfile.TemporaryDirectory(prefix="mfa-bench-") as tmp,
        LiveServer(
            Path(tmp),
            workers=options.workers,
            threads=options.threads,
            # The `authsvc serve` default, not the tests' fast polling (which costs CPU).
            env={"AUTHSVC_OUTBOX_POLL_INTERVAL": str(Settings().outbox_poll_interval)},
        ) as server,
    ):
        run = {
            "duration": options.duration,
            "connections": options.connections,
            "threads": wrk_threads,
        }
        wrk(server.url, "mfa_healthz.lua", **{**run, "duration": 2})  # warm-up
        healthz = metered(server, lambda: wrk(server.url, "mfa_healthz.lua", **run))

        settings = Settings.from_env(server.env)
        users = int(healthz["requests_per_second"] * (options.duration + 5))
        users = max(MIN_USERS, min(MAX_USERS, users))
        started = time.monotonic()
        pairs, runtime = prepare(settings, users + 50)
        prepare_seconds = round(time.monotonic() - started, 1)

        # The first 50 pairs warm the MFA path up (one-time imports, pools); not measured.
        step = otp.step_at(datetime.now(UTC))
        warm = Path(tmp) / "warm.txt"
        warm.write_text("".join(f"{t} {otp.code_at(s, step)}\n" for t, s in pairs[:50]))
        wrk(
            server.url, "mfa_step.lua", **{**run, "duration": 1}, args=(str(warm), str(wrk_threads))
        )
        warmed = claimed_steps(runtime)

        step = otp.step_at(datetime.now(UTC))
        measured = Path(tmp) / "pairs.txt"
        measured.write_text("".join(f"{t} {otp.code_at(s, step)}\n" for t, s in pairs[50:]))
        mfa = metered(
            server,
            lambda: wrk(server.url, "mfa_step.lua", **run, args=(str(measured), str(wrk_threads))),
        )
        accepted_in_db = claimed_steps(runtime) - warmed
        runtime.engine.dispose()

    ratio = mfa["requests_per_second"] / healthz["requests_per_second"]
    print(
        json.dumps(
            {
                "benchmark": "mfa_step",
                "server": {
                    "database": "postgresql",
                    "rate_limits": "redis",
                    "gunicorn_workers": options.workers,
                    "threads_per_worker": options.threads,
                    "cpus": os.cpu_count(),
                    "load_average_1min_before": round(load_before, 2),
                },
                "load": {
                    "tool": "wrk",
                    "connections": options.connections,
                    "threads": wrk_threads,
                    "seconds_per_endpoint": options.duration,
                },
                "healthz": {"endpoint": "GET /healthz", **healthz},
                "mfa_step": {
                    "endpoint": "POST /v1/login/mfa",
                    "path": "valid TOTP code; fresh mfa_token and user per request",
                    **mfa,
                    "users_prepared": users,
                    "prepare_seconds": prepare_seconds,
                    # Equals statuses.ok, plus at most one request per connection still in flight
                    # when wrk stopped.
                    "steps_claimed_in_database": accepted_in_db,
                },
                "ratio_to_healthz": round(ratio, 3),
                "target": ">= 0.5 of /healthz throughput",
                "target_met": ratio >= 0.5,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
