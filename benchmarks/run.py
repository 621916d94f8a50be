"""Load benchmarks of a real `authsvc serve` (gunicorn, PostgreSQL, Redis); prints one JSON object.

    python benchmarks/run.py [--duration 20] [--connections 8]

In one run it measures:

* the Argon2 ceiling: benchmarks/argon2_ceiling.py with the production parameters from
  ``Settings()`` on every core, no web stack; once plainly and once with
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1;
* ``POST /v1/login`` (successful logins of one registered user), with the peak RSS of the
  gunicorn master and workers sampled from /proc while it runs, and the ratio to the ceiling;
* ``POST /v1/token/refresh`` (each thread rotates real refresh tokens, see lua/refresh.lua),
  ``GET /v1/me`` and ``GET /healthz``, and the ratios of the first two to the last.

After each run that writes (login, refresh), the database is vacuumed and the script waits for
autovacuum on it to finish (``settle``), so that no run pays for the previous one's dead rows.

The server uses the `authsvc serve` defaults for workers, threads and hashing concurrency, and
the production Argon2 parameters; only the rate limits are raised, so that the numbers show the
cost of hashing and of the request path, not throttling. wrk drives it (Lua scripts in lua/).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc.gunicorn_app import DEFAULT_THREADS, default_workers  # noqa: E402
from authsvc.settings import Settings  # noqa: E402
from tests.e2e.server import POSTGRES_URL, LiveServer  # noqa: E402

LUA = ROOT / "benchmarks" / "lua"
CEILING = ROOT / "benchmarks" / "argon2_ceiling.py"
EMAIL = "bench@example.com"
PASSWORD = "Load test passphrase 31"
UNTHROTTLED = {
    "AUTHSVC_LIMIT_IP": "100000000/minute",
    "AUTHSVC_LIMIT_EMAIL": "100000000/minute",
    "AUTHSVC_LIMIT_IP_EMAIL": "100000000/minute",
    "AUTHSVC_LIMIT_FAILURES_PER_ACCOUNT": "100000000/day",
}
HUGETLB = "glibc.malloc.hugetlb=1"


# --- helpers -------------------------------------------------------------------------------


def ceiling(settings: Settings, *, seconds: float, tunables: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run(
        [
            sys.executable,
            str(CEILING),
            "--memory-kib",
            str(settings.argon2_memory_kib),
            "--time-cost",
            str(settings.argon2_time_cost),
            "--parallelism",
            str(settings.argon2_parallelism),
            "--seconds",
            str(seconds),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def call(
    server: LiveServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else {}


def login(server: LiveServer) -> dict[str, Any]:
    status, body = call(server, "POST", "/v1/login", {"email": EMAIL, "password": PASSWORD})
    if status != 200 or body.get("status") != "authenticated":
        raise RuntimeError(f"benchmark login failed: {status} {body}")
    return body


class MemorySampler:
    """Sums VmRSS (and Pss) of the gunicorn master and its workers every *interval* seconds."""

    def __init__(self, master: int, interval: float = 0.2) -> None:
        self.master = master
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def processes(self) -> list[int]:
        return children(self.master)

    @staticmethod
    def _field(path: Path, name: str) -> int:
        try:
            match = re.search(rf"^{name}:\s+(\d+) kB", path.read_text(), re.M)
        except OSError:
            return 0
        return int(match.group(1)) if match else 0

    def sample(self) -> tuple[int, int]:
        rss = pss = 0
        for pid in self.processes():
            rss += self._field(Path(f"/proc/{pid}/status"), "VmRSS")
            pss += self._field(Path(f"/proc/{pid}/smaps_rollup"), "Pss")
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self.sample()
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def children(master: int) -> list[int]:
    pids = [master]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by the server (master + workers), by its PostgreSQL backends, and by
    everything else on the machine, while a run lasts: tells a slow server from a busy box."""

    def __init__(self, server: LiveServer) -> None:
        assert server.process is not None
        self.master = server.process.pid
        self.db_name = server.db_name
        self.redis_port = urlsplit(server.env.get("AUTHSVC_REDIS_URL", "")).port or 6379

    def _db_pids(self) -> list[int]:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
            ).fetchall()
        return [int(row[0]) for row in rows]

    def _redis_pids(self) -> list[int]:
        """The Redis server this server talks to: the process listening on its port (not
        every redis-server on the machine)."""
        listening = sockets(self.redis_port, state=TCP_LISTEN)
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and socket_count(int(entry.name), listening):
                pids.append(int(entry.name))
        return pids

    def snapshot(self) -> dict[str, dict[int, float] | float]:
        return {
            "server": {pid: cpu_seconds(pid) for pid in children(self.master)},
            "database": {pid: cpu_seconds(pid) for pid in self._db_pids()},
            "redis": {pid: cpu_seconds(pid) for pid in self._redis_pids()},
            "machine": machine_busy_seconds(),
        }

    @staticmethod
    def used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        out = {}
        for part in ("server", "database", "redis"):
            out[part] = sum(t - before[part].get(pid, 0.0) for pid, t in after[part].items())
        out["machine"] = after["machine"] - before["machine"]
        return out


def cpu_per_request(used: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request of the server, its database backends and Redis, from
    ``CpuMeter.used`` over a run of ``requests`` requests."""
    parts = ("server", "database", "redis")
    return {part: round(used[part] * 1000 / requests, 3) for part in parts}


TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"  # states in /proc/net/tcp


def sockets(port: int, *, state: str) -> set[str]:
    """The inodes (as /proc/PID/fd links name them) of local TCP sockets on ``port`` in
    ``state``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(f"socket:[{fields[9]}]")
    return found


def socket_count(pid: int, inodes: set[str]) -> int:
    """How many of ``inodes`` the process holds open."""
    held = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                held += os.readlink(fd) in inodes
    return held


def connections_per_worker(master: int, port: int) -> list[int]:
    """Established client connections that each gunicorn worker holds, most first. A keep-alive
    connection stays with the worker that accepted it, and a worker runs one core's worth of
    Python at a time: 8 connections split 7/1 over 2 workers leave a core half idle (measured
    here: /healthz 2,600-2,900 req/s split 7/1, 3,800 split 4/4)."""
    established = sockets(port, state=TCP_ESTABLISHED)
    held = [socket_count(pid, established) for pid in children(master) if pid != master]
    return sorted(held, reverse=True)


def wrk(
    server: LiveServer,
    script: str,
    *script_args: str,
    duration: int,
    connections: int,
    threads: int,
) -> dict[str, Any]:
    meter = CpuMeter(server)
    before = meter.snapshot()
    assert server.process is not None
    master = server.process.pid
    spread: list[int] = []
    sampler = threading.Timer(
        duration / 3, lambda: spread.extend(connections_per_worker(master, server.port))
    )
    sampler.start()
    result = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
         "--timeout", "10s", "-s", str(LUA / script), server.url, "--", *script_args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited {result.returncode}: {result.stderr or result.stdout}")
    used = CpuMeter.used(before, meter.snapshot())
    sampler.join()
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {result.stdout}{result.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds = raw["duration_us"] / 1e6
    requests = max(1, raw["requests"])
    return {
        "requests_per_second": round(raw["requests"] / seconds, 1),
        # Answers without an HTTP error (a 503 `overloaded` is fast: it must not count).
        "ok_per_second": round((raw["requests"] - raw["errors"]["status"]) / seconds, 1),
        "p50_ms": round(raw["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(raw["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(raw["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(raw["latency_us"]["max"] / 1000, 2),
        "requests": raw["requests"],
        "errors": sum(raw["errors"].values()),
        "error_detail": raw["errors"],
        "seconds": round(seconds, 2),
        "connections_per_worker": spread,
        "cpu_ms_per_request": cpu_per_request(used, requests),
        # Cores kept busy by everything but this server, its database backends and Redis (wrk,
        # and whatever else runs on the machine): high values mean the numbers are depressed.
        "other_cores_busy": round(
            (used["machine"] - used["server"] - used["database"] - used["redis"]) / seconds, 2
        ),
        **({"counters": raw["counters"]} if raw["counters"] else {}),
    }


def settle(server: LiveServer, *, timeout: float = 30.0) -> float:
    """Clean up after a run that wrote (VACUUM ANALYZE, then wait for autovacuum workers on
    this database to finish), so that the next run is not charged for the previous one's dead
    rows: 20,000 refreshes left autovacuum busy during the /v1/me run that followed, which
    doubled the database CPU per request that run reported. Returns the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(server.database_url(), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        while time.monotonic() - started < timeout:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'autovacuum worker' AND datname = current_database()"
            ).fetchone()
            if not busy or not busy[0]:
                break
            time.sleep(0.2)
    return round(time.monotonic() - started, 2)


# --- the run -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="gunicorn workers (default: the `authsvc serve` default)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="threads per worker (default: the `authsvc serve` default)",
    )
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.connections % args.wrk_threads:
        parser.error("--connections must be a multiple of --wrk-threads")

    settings = Settings.from_env()  # production defaults, or AUTHSVC_* given to this command
    env = {
        **UNTHROTTLED,
        "AUTHSVC_OUTBOX_POLL_INTERVAL": str(settings.outbox_poll_interval),
        **{
            k: v
            for k, v in os.environ.items()
            if k.startswith(
                ("AUTHSVC_ARGON2_", "AUTHSVC_MAX_CONCURRENT_HASHES", "AUTHSVC_HASH_QUEUE_TIMEOUT")
            )
        },
    }
    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "argon2": {"time_cost": settings.argon2_time_cost,
                   "memory_kib": settings.argon2_memory_kib,
                   "parallelism": settings.argon2_parallelism},
        "server": {"workers": args.workers, "threads": args.threads,
                   "max_concurrent_hashes_per_worker": settings.max_concurrent_hashes,
                   "hash_queue_timeout_s": settings.hash_queue_timeout,
                   "database": "postgresql", "rate_limit_storage": "redis",
                   "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")},
        "load": {"tool": "wrk", "connections": args.connections,
                 "wrk_threads": args.wrk_threads, "seconds_per_run": args.duration},
        "note": "rate limits raised to 100000000/minute for this run, so that the numbers "
                "measure hashing and the request path, not throttling",
    }  # fmt: skip

    run = {"duration": args.duration, "connections": args.connections,
           "threads": args.wrk_threads}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp, LiveServer(
        Path(tmp), workers=args.workers, threads=args.threads, env=env
    ) as server:  # fmt: skip
        assert server.process is not None
        status, body = call(server, "POST", "/admin/v1/users",
                            {"email": EMAIL, "password": PASSWORD, "email_verified": True},
                            token=server.admin_key)  # fmt: skip
        if status != 201:
            raise RuntimeError(f"could not create the benchmark user: {status} {body}")
        # The ceiling is measured right before and right after the login run, on the same
        # machine in the same minute, and averaged: background load shifts both alike.
        before = ceiling(settings, seconds=args.ceiling_seconds, tunables=None)
        sampler = MemorySampler(server.process.pid)
        rss_idle, pss_idle = sampler.sample()
        with sampler:
            report["login"] = wrk(server, "login.lua", EMAIL, PASSWORD, **run)
        after = ceiling(settings, seconds=args.ceiling_seconds, tunables=None)
        report["argon2_ceiling"] = {
            "verifications_per_second": round(
                (before["verifications_per_second"] + after["verifications_per_second"]) / 2, 1
            ),
            "before_login_run": before,
            "after_login_run": after,
        }
        report["memory"] = {
            "rss_idle_kib": rss_idle,
            "pss_idle_kib": pss_idle,
            "peak_rss_during_login_kib": sampler.peak_rss_kib,
            "peak_pss_during_login_kib": sampler.peak_pss_kib,
            "samples": sampler.samples,
            "processes": len(sampler.processes()),
        }
        settled = {"after_login": settle(server)}
        tokens = Path(tmp) / "refresh-tokens.txt"
        spares = args.connections + args.wrk_threads  # see lua/refresh.lua
        tokens.write_text("\n".join(login(server)["refresh_token"] for _ in range(spares)) + "\n")
        report["refresh"] = wrk(server, "refresh.lua", str(tokens), str(args.wrk_threads), **run)
        settled["after_refresh"] = settle(server)
        access = login(server)["access_token"]
        report["me"] = wrk(server, "plain.lua", "GET", "/v1/me", access, **run)
        report["healthz"] = wrk(server, "plain.lua", "GET", "/healthz", **run)
        report["settle_seconds"] = settled
        with sampler:
            report["login_again"] = wrk(server, "login.lua", EMAIL, PASSWORD, **run)
        report["memory"]["peak_rss_during_both_login_runs_kib"] = sampler.peak_rss_kib
        report["memory"]["rss_after_all_kib"] = sampler.sample()[0]
    report["argon2_ceiling_hugetlb"] = ceiling(
        settings, seconds=args.ceiling_seconds, tunables=HUGETLB
    )

    ceiling_rate = report["argon2_ceiling"]["verifications_per_second"]
    healthz = report["healthz"]["ok_per_second"]
    ratios = {
        "login_to_argon2_ceiling": report["login"]["ok_per_second"] / ceiling_rate,
        "refresh_to_healthz": report["refresh"]["ok_per_second"] / healthz,
        "me_to_healthz": report["me"]["ok_per_second"] / healthz,
        "hugetlb_ceiling_gain": report["argon2_ceiling_hugetlb"]["verifications_per_second"]
        / report["argon2_ceiling"]["after_login_run"]["verifications_per_second"]
        - 1,
    }
    report["ratios"] = {name: round(value, 3) for name, value in ratios.items()}
    report["targets_met"] = {
        "login_at_least_90_percent_of_argon2_ceiling": ratios["login_to_argon2_ceiling"] >= 0.9,
        "refresh_at_least_half_of_healthz": ratios["refresh_to_healthz"] >= 0.5,
        "me_at_least_half_of_healthz": ratios["me_to_healthz"] >= 0.5,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
