"""The CPU, SQL statements and Redis commands that one TOTP login step costs, in process.

    python benchmarks/mfa_step_cpu.py --database-url postgresql://... --redis-url redis://.../3
        [--steps 500] [--profile FILE]

No server and no load generator: the app (``create_app``) runs in this process against the
given PostgreSQL database (emptied and migrated here) and Redis database, and Flask's test
client sends ``POST /v1/login/mfa`` with a valid TOTP code and a fresh mfa_token, once for each of
``--steps`` users prepared beforehand as benchmarks/mfa_step.py prepares them (a confirmed
factor each, an mfa_token issued as the password step issues it). Only the steps are timed,
with ``time.process_time()``: what this process spent, not what the database or Redis did, so
the number holds on a shared machine where wrk's throughput does not. Statements are counted
as they reach the driver, Redis commands as the client sends them.

``--login`` and ``--refresh`` measure a password login (fast Argon2 parameters, so that the
rest of it shows) and a refresh the same way. ``--profile FILE`` writes a cProfile of the
timed steps. Prints one JSON object: the CPU of the cheapest round of 50 steps, and of the
median one.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from flask import Flask  # noqa: E402
from mfa_step import prepare  # noqa: E402  # benchmarks/mfa_step.py, beside this script
from sqlalchemy import Engine, event, text  # noqa: E402

from authsvc.app import create_app  # noqa: E402
from authsvc.crypto import totp as otp  # noqa: E402
from authsvc.crypto.keyring import generate_key_spec  # noqa: E402
from authsvc.db import make_engine  # noqa: E402
from authsvc.schema import upgrade  # noqa: E402
from authsvc.services import admin  # noqa: E402
from authsvc.services.context import SYSTEM  # noqa: E402
from authsvc.settings import Settings  # noqa: E402

WARM_UP = 20
ROUND = 50  # steps timed together
PASSWORD = "Load test passphrase 31"


class Counts:
    """SQL statements (per engine of the app) and Redis commands (by name) while counting."""

    def __init__(self, engines: list[Engine]) -> None:
        self.on = False
        self.show = False
        self.statements = 0
        self.redis: Counter[str] = Counter()
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._statement)
        original = redis.Redis.execute_command
        counts = self

        def execute_command(client: Any, *args: Any, **options: Any) -> Any:
            if counts.on:
                counts.redis[str(args[0]).upper()] += 1
                if counts.show:
                    print("REDIS:", args[0], args[2:4], file=sys.stderr)
            return original(client, *args, **options)

        redis.Redis.execute_command = execute_command  # type: ignore[method-assign]
        # Statements run on the driver's own connection (db.OneStatement: a refresh) pass no
        # SQLAlchemy event; SQLAlchemy's own go through cursors, not this.
        driver_execute = psycopg.Connection.execute

        def execute(connection: Any, query: Any, *args: Any, **options: Any) -> Any:
            counts._statement(connection, None, str(query))
            return driver_execute(connection, query, *args, **options)

        psycopg.Connection.execute = execute  # type: ignore[assignment,method-assign]

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.on:
            self.statements += 1
            if self.show:
                print("SQL:", " ".join(statement.split())[:300], file=sys.stderr)

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.statements, self.redis, self.on = 0, Counter(), True
        try:
            yield
        finally:
            self.on = False


def timed(
    counts: Counts, steps: list[Callable[[], None]], profile: cProfile.Profile | None
) -> dict[str, Any]:
    """Run ``steps`` in rounds of ``ROUND`` and report the CPU per step of the cheapest round
    and the median one (other work on the machine only ever adds to a round's cost)."""
    rounds: list[float] = []
    with counts.counting():
        if profile is not None:
            profile.enable()
        for start in range(0, len(steps), ROUND):
            batch = steps[start : start + ROUND]
            started = time.process_time()
            for step in batch:
                step()
            rounds.append((time.process_time() - started) * 1000 / len(batch))
        if profile is not None:
            profile.disable()
    n = len(steps)
    return {
        "steps": n,
        "cpu_ms_per_step": round(min(rounds), 3),
        "cpu_ms_per_step_median": round(statistics.median(rounds), 3),
        "sql_statements_per_step": round(counts.statements / n, 2),
        "redis_commands_per_step": round(sum(counts.redis.values()) / n, 2),
        "redis_commands": {k: round(v / n, 2) for k, v in sorted(counts.redis.items())},
    }


def mfa_steps(app: Flask, settings: Settings, count: int) -> list[Callable[[], None]]:
    pairs, runtime = prepare(settings, count)
    runtime.engine.dispose()
    client = app.test_client()
    step = otp.step_at(datetime.now(UTC))
    bodies = [{"mfa_token": t, "totp_code": otp.code_at(s, step)} for t, s in pairs]

    def send(body: dict[str, str]) -> Callable[[], None]:
        def run() -> None:
            response = client.post("/v1/login/mfa", json=body)
            assert response.status_code == 200, response.get_data(as_text=True)

        return run

    return [send(body) for body in bodies]


def login_steps(app: Flask, count: int) -> list[Callable[[], None]]:
    runtime = app.extensions["authsvc"]
    with runtime.sessionmaker.begin() as session:
        admin.create_user(
            session,
            runtime.deps,
            admin=admin.AdminIdentity(key_id="bench", name="bench"),
            email="cpu-bench@example.com",
            password=PASSWORD,
            password_hash=None,
            email_verified=True,
            client=SYSTEM,
            now=datetime.now(UTC),
        )
    client = app.test_client()
    body = {"email": "cpu-bench@example.com", "password": PASSWORD}

    def run() -> None:
        response = client.post("/v1/login", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)

    return [run] * count


def refresh_steps(app: Flask, count: int) -> list[Callable[[], None]]:
    client = app.test_client()
    body = {"email": "cpu-bench@example.com", "password": PASSWORD}
    tokens = []
    for _ in range(count):
        tokens.append(client.post("/v1/login", json=body).get_json()["refresh_token"])

    def send(token: str) -> Callable[[], None]:
        def run() -> None:
            response = client.post("/v1/token/refresh", json={"refresh_token": token})
            assert response.status_code == 200, response.get_data(as_text=True)

        return run

    return [send(token) for token in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", required=True, help="a PostgreSQL database of its own (emptied first)"
    )
    parser.add_argument("--redis-url", required=True, help="a Redis database to use")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--login", action="store_true", help="measure password logins too")
    parser.add_argument("--refresh", action="store_true", help="measure refreshes too")
    parser.add_argument(
        "--show", action="store_true", help="print one step's statements and commands first"
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile of the MFA steps here")
    options = parser.parse_args()

    engine = make_engine(options.database_url)
    with engine.begin() as conn:  # a database of its own: emptied, then migrated
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(options.database_url)
    unthrottled = "100000000/minute"
    with tempfile.TemporaryDirectory(prefix="mfa-cpu-") as tmp:
        settings = Settings(
            var_dir=Path(tmp) / "var",
            database_url=options.database_url,
            redis_url=options.redis_url,
            mail_url=f"file://{tmp}/mail",
            encryption_keys=(generate_key_spec("bench1"),),
            public_url="http://authsvc.test",
            argon2_time_cost=1,
            argon2_memory_kib=1024,
            argon2_parallelism=1,
            limit_ip=unthrottled,
            limit_email=unthrottled,
            limit_ip_email=unthrottled,
            limit_failures_per_account="100000000/day",
        )
        app = create_app(settings)
        runtime = app.extensions["authsvc"]
        runtime.deps.limiter.reset()
        engines = [e for e in (runtime.engine, runtime.autocommit_engine) if e is not None]
        counts = Counts(engines)
        profile = cProfile.Profile(time.process_time) if options.profile else None
        result: dict[str, Any] = {"benchmark": "mfa_step_cpu"}

        steps = mfa_steps(app, settings, options.steps + WARM_UP)
        for step in steps[:WARM_UP]:
            step()
        if options.show:
            counts.show = True
            with counts.counting():
                steps.pop()()
            counts.show = False
        result["mfa_step"] = timed(counts, steps[WARM_UP:], profile)
        if profile is not None:
            profile.dump_stats(options.profile)
            # Function calls made: unlike CPU time, the same on a busy machine as on a quiet one.
            calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
            result["mfa_step"]["python_calls_per_step"] = round(calls / options.steps)
        if options.login or options.refresh:
            logins = login_steps(app, options.steps + WARM_UP)
            for step in logins[:WARM_UP]:
                step()
            if options.login:
                result["login"] = timed(counts, logins[WARM_UP:], None)
            if options.refresh:
                refreshes = refresh_steps(app, options.steps + WARM_UP)
                for step in refreshes[:WARM_UP]:
                    step()
                result["refresh"] = timed(counts, refreshes[WARM_UP:], None)
        runtime.deps.limiter.reset()
        runtime.dispose()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
