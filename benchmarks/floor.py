"""What this stack reaches with no service logic at all: the floor under the /healthz ratios.

    python benchmarks/floor.py [--duration 20] [--connections 8]

The targets compare `POST /v1/token/refresh` and `POST /v1/login/mfa` with `GET /healthz` of the
same server. This script asks how high such a ratio can go for any endpoint that touches the
database, whatever it does. It serves a bare Flask app under gunicorn with the `authsvc serve`
defaults for workers and threads (gthread), on a fresh PostgreSQL database and a Redis database,
and drives each endpoint with wrk in turn:

- `GET /trivial` answers "ok": the denominator, as /healthz is for the service;
- `POST /one-statement` runs one INSERT ... RETURNING on the driver's connection from a pool in
  autocommit mode, as the service runs a refresh on PostgreSQL (``db.OneStatement``);
- `POST /transaction` runs BEGIN, five INSERTs, COMMIT (about what a login step writes: the
  token spend, the step claim, the session, the refresh token, the audit event);
- `POST /transaction-redis` runs the same transaction after five Redis round trips (the
  per-account limits and detectors of a login step).

No JSON parsing, validation, hashing, crypto, ORM or audit chain: SQLAlchemy Core on psycopg 3
and redis-py, as the service uses them. Each run reports req/s, latency percentiles,
`cpu_ms_per_request` (server, PostgreSQL backends, Redis) and `ratio_to_trivial`. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run import wrk  # noqa: E402  # benchmarks/run.py, beside this script

from authsvc.gunicorn_app import DEFAULT_THREADS, default_workers  # noqa: E402
from tests.e2e.server import free_port, redis_url, scratch_database  # noqa: E402

ENDPOINTS = {  # path: method (lua/plain.lua sends each with no body)
    "/trivial": "GET",
    "/one-statement": "POST",
    "/transaction": "POST",
    "/transaction-redis": "POST",
}
STATEMENTS_PER_TRANSACTION = 5
REDIS_CALLS = 5


def create_app(database_url: str, redis_at: str, pool_size: int) -> Any:
    """The bare app: Flask, SQLAlchemy Core and redis-py, nothing of authsvc."""
    import redis
    from flask import Flask, Response
    from sqlalchemy import (
        Column,
        DateTime,
        MetaData,
        String,
        Table,
        bindparam,
        create_engine,
        func,
        insert,
    )

    engine = create_engine(database_url, pool_size=pool_size, max_overflow=0)
    autocommit = create_engine(  # as db.make_autocommit_engine
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
    )
    rows = Table(
        "floor_rows",
        MetaData(),
        Column("id", String(32), primary_key=True),
        Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    rows.metadata.create_all(engine)
    store = redis.Redis.from_url(redis_at)
    add = insert(rows).values(id=bindparam("id")).returning(rows.c.id)
    app = Flask("floor")

    def new_id() -> str:
        return os.urandom(16).hex()

    @app.get("/trivial")
    def trivial() -> Response:
        return Response("ok", mimetype="text/plain")

    add_sql = str(add.compile(dialect=engine.dialect))

    @app.post("/one-statement")
    def one_statement() -> Response:
        # As the service runs its one-statement requests (db.OneStatement): the statement
        # compiled once, on the driver's own connection from an autocommit pool.
        fairy = autocommit.raw_connection()
        try:
            fairy.driver_connection.execute(add_sql, {"id": new_id()}, prepare=True).fetchone()
        finally:
            fairy.close()
        return Response("ok", mimetype="text/plain")

    def transaction() -> None:
        with engine.begin() as conn:
            for _ in range(STATEMENTS_PER_TRANSACTION):
                conn.execute(add, {"id": new_id()}).scalar_one()

    @app.post("/transaction")
    def transaction_only() -> Response:
        transaction()
        return Response("ok", mimetype="text/plain")

    @app.post("/transaction-redis")
    def transaction_and_redis() -> Response:
        for _ in range(REDIS_CALLS):
            store.incr("floor:" + new_id()[:2])
        transaction()
        return Response("ok", mimetype="text/plain")

    return app


def serve(port: int, workers: int, threads: int, database_url: str, redis_at: str) -> None:
    from gunicorn.app.base import BaseApplication

    class Floor(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"127.0.0.1:{port}",
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "keepalive": 5,
                "accesslog": None,
                "control_socket_disable": True,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(database_url, redis_at, pool_size=threads)

    Floor().run()


class FloorServer:
    """The bare app in a gunicorn of its own, shaped as run.wrk expects a server."""

    def __init__(self, *, database_url: str, redis_at: str, workers: int, threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_name = database_url.rsplit("/", 1)[1]
        self.env = {"AUTHSVC_REDIS_URL": redis_at}
        self.args = [str(self.port), str(workers), str(threads), database_url, redis_at]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FloorServer:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the floor server exited")
            try:
                with urllib.request.urlopen(f"{self.url}/trivial", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError("the floor server did not answer in 30 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, workers, threads, database_url, redis_at = args.serve
        serve(int(port), int(workers), int(threads), database_url, redis_at)
        return

    runs: dict[str, Any] = {}
    with scratch_database("floor") as database_url, FloorServer(
        database_url=database_url,
        redis_at=redis_url(9),
        workers=args.workers,
        threads=args.threads,
    ) as server:  # fmt: skip
        for path, method in ENDPOINTS.items():
            runs[path] = wrk(
                server,  # type: ignore[arg-type]
                "plain.lua",
                method,
                path,
                duration=args.duration,
                connections=args.connections,
                threads=args.wrk_threads,
            )
    trivial = runs["/trivial"]["ok_per_second"]
    for result in runs.values():
        result["ratio_to_trivial"] = round(result["ok_per_second"] / trivial, 3)
    report = {
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "server": {"workers": args.workers, "threads": args.threads, "worker_class": "gthread",
                   "database": "postgresql", "redis": True},
        "load": {"tool": "wrk", "connections": args.connections,
                 "wrk_threads": args.wrk_threads, "seconds_per_run": args.duration},
        "runs": runs,
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
