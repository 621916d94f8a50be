"""How many Argon2id verifications per second this machine can do with given parameters.

    python benchmarks/argon2_ceiling.py --memory-kib 19456 --time-cost 2 --parallelism 1 \
        --seconds 10

Measures plain argon2-cffi (no authsvc code): first one thread alone, to get the latency one login
sees, then one thread per core for --seconds (argon2-cffi releases the GIL), to get the ceiling of
password checks per second a process can sustain. Prints one JSON object. Wall-clock figures are
only meaningful on an otherwise idle machine: the load averages are printed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from importlib.metadata import version

import argon2

PASSWORD = "correct horse battery staple"


def _verify_for(hasher: argon2.PasswordHasher, stored: str, seconds: float) -> int:
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        hasher.verify(stored, PASSWORD)
        done += 1
    return done


def _single_thread_ms(
    hasher: argon2.PasswordHasher, stored: str, seconds: float
) -> tuple[float, float]:
    """Wall-clock and CPU milliseconds (all threads of the process) per verification."""
    started, cpu_started = time.perf_counter(), time.process_time()
    done = _verify_for(hasher, stored, seconds)
    wall = (time.perf_counter() - started) * 1000 / done
    return wall, (time.process_time() - cpu_started) * 1000 / done


def _all_threads_per_second(
    hasher: argon2.PasswordHasher, stored: str, *, threads: int, seconds: float
) -> tuple[float, int]:
    counts = [0] * threads

    def work(index: int) -> None:
        counts[index] = _verify_for(hasher, stored, seconds)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-kib", type=int, required=True)
    parser.add_argument("--time-cost", type=int, required=True)
    parser.add_argument("--parallelism", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    hasher = argon2.PasswordHasher(
        time_cost=args.time_cost,
        memory_cost=args.memory_kib,
        parallelism=args.parallelism,
        type=argon2.Type.ID,
    )
    stored = hasher.hash(PASSWORD)
    hasher.verify(stored, PASSWORD)  # warm-up
    load_before = os.getloadavg()[0]
    single_ms, cpu_ms = _single_thread_ms(hasher, stored, max(1.0, args.seconds / 4))
    per_second, total = _all_threads_per_second(
        hasher, stored, threads=args.threads, seconds=args.seconds
    )
    report = {
        "verifications_per_second": round(per_second, 1),
        "ms_per_verification_single_thread": round(single_ms, 2),
        # CPU time is what other processes on a busy machine cannot inflate much; cores divided
        # by it is the ceiling on an idle machine if memory bandwidth keeps up.
        "cpu_ms_per_verification": round(cpu_ms, 2),
        "cpu_bound_ceiling_per_second": round((os.cpu_count() or 1) * 1000 / cpu_ms, 1),
        "params": {
            "memory_kib": args.memory_kib,
            "time_cost": args.time_cost,
            "parallelism": args.parallelism,
        },
        "threads": args.threads,
        "verifications": total,
        "seconds": args.seconds,
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "python": platform.python_version(),
        "argon2_cffi": version("argon2-cffi"),
        "machine": platform.machine(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
