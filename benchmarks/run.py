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

The server uses the `authsvc serve` defaults for workers, threads and hashing concurrency, and
the production Argon2 parameters; only the rate limits are raised, so that the numbers show the
cost of hashing and of the request path, not throttling. wrk drives it (Lua scripts in lua/).
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc.gunicorn_app import DEFAULT_THREADS, default_workers  # noqa: E402
from authsvc.settings import Settings  # noqa: E402
from tests.e2e.server import LiveServer  # noqa: E402

LUA = ROOT / "benchmarks" / "lua"
CEILING = ROOT / "benchmarks" / "argon2_ceiling.py"
EMAIL = "bench@example.com"
PASSWORD = "Benchmark passphrase 31"
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
        [sys.executable, str(CEILING), "--memory-kib", str(settings.argon2_memory_kib),
         "--time-cost", str(settings.argon2_time_cost),
         "--parallelism", str(settings.argon2_parallelism), "--seconds", str(seconds)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def call(server: LiveServer, method: str, path: str, body: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers=headers)
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
        self._thread = threading.Thread(target=self._run, daemon=True)

    def processes(self) -> list[int]:
        pids = [self.master]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.master:
                pids.append(int(entry.name))
        return pids

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
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wrk(server: LiveServer, script: str, *script_args: str, duration: int, connections: int,
        threads: int) -> dict[str, Any]:
    result = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
         "--timeout", "10s", "-s", str(LUA / script), server.url, "--", *script_args],
        capture_output=True, text=True, check=True,
    )
    line = next(
        (x for x in result.stdout.splitlines() if x.startswith("WRK_JSON ")), None
    )
    if line is None:
        raise RuntimeError(f"wrk printed no result: {result.stdout}{result.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    return {
        "requests_per_second": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(raw["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(raw["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(raw["latency_us"]["max"] / 1000, 2),
        "requests": raw["requests"],
        "errors": errors,
        "error_detail": raw["errors"],
        "seconds": round(seconds, 2),
        **({"counters": raw["counters"]} if raw["counters"] else {}),
    }


# --- the run -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="gunicorn workers (default: the `authsvc serve` default)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="threads per worker (default: the `authsvc serve` default)")
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.connections % args.wrk_threads:
        parser.error("--connections must be a multiple of --wrk-threads")

    settings = Settings()
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
    }
    report["argon2_ceiling"] = ceiling(settings, seconds=args.ceiling_seconds, tunables=None)
    report["argon2_ceiling_hugetlb"] = ceiling(
        settings, seconds=args.ceiling_seconds, tunables=HUGETLB
    )

    run = {"duration": args.duration, "connections": args.connections,
           "threads": args.wrk_threads}
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp, LiveServer(
        Path(tmp), workers=args.workers, threads=args.threads,
        env={**UNTHROTTLED, "AUTHSVC_OUTBOX_POLL_INTERVAL": str(settings.outbox_poll_interval)},
    ) as server:
        assert server.process is not None
        status, body = call(server, "POST", "/admin/v1/users",
                            {"email": EMAIL, "password": PASSWORD, "email_verified": True},
                            token=server.admin_key)
        if status != 201:
            raise RuntimeError(f"could not create the benchmark user: {status} {body}")
        sampler = MemorySampler(server.process.pid)
        rss_idle, _ = sampler.sample()
        with sampler:
            report["login"] = wrk(server, "login.lua", EMAIL, PASSWORD, **run)
        report["memory"] = {
            "rss_before_kib": rss_idle,
            "peak_rss_during_login_kib": sampler.peak_rss_kib,
            "peak_pss_during_login_kib": sampler.peak_pss_kib,
            "samples": sampler.samples,
            "processes": len(sampler.processes()),
        }
        tokens = Path(tmp) / "refresh-tokens.txt"
        tokens.write_text(
            "\n".join(
                login(server)["refresh_token"]
                for _ in range(args.connections + args.wrk_threads)  # see lua/refresh.lua
            ) + "\n"
        )
        report["refresh"] = wrk(server, "refresh.lua", str(tokens), str(args.wrk_threads),
                                **run)
        access = login(server)["access_token"]
        report["me"] = wrk(server, "get.lua", "/v1/me", access, **run)
        report["healthz"] = wrk(server, "get.lua", "/healthz", **run)
        report["memory"]["rss_after_all_kib"] = sampler.sample()[0]

    ceiling_rate = report["argon2_ceiling"]["verifications_per_second"]
    healthz = report["healthz"]["requests_per_second"]
    report["ratios"] = {
        "login_to_argon2_ceiling": round(report["login"]["requests_per_second"] / ceiling_rate, 3),
        "refresh_to_healthz": round(report["refresh"]["requests_per_second"] / healthz, 3),
        "me_to_healthz": round(report["me"]["requests_per_second"] / healthz, 3),
        "hugetlb_ceiling_gain": round(
            report["argon2_ceiling_hugetlb"]["verifications_per_second"] / ceiling_rate - 1, 3
        ),
    }
    report["targets"] = {
        "login_at_least_90_percent_of_ceiling": report["ratios"]["login_to_argon2_ceiling"] >= 0.9,
        "refresh_at_least_half_of_healthz": report["ratios"]["refresh_to_healthz"] >= 0.5,
        "me_at_least_half_of_healthz": report["ratios"]["me_to_healthz"] >= 0.5,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
