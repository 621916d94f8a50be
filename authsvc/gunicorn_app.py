"""Serving with gunicorn, configured from code (no config file needed)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import time
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from authsvc.app import create_app
from authsvc.crypto import passwords
from authsvc.http.problems import HTTP_CODES, PROBLEM_TYPE_BASE
from authsvc.logging_setup import gunicorn_logconfig
from authsvc.metrics import enable_multiprocess, remove_directory, worker_exited
from authsvc.settings import Settings

# Defaults of `authsvc serve`. One worker process per core, each hashing at most
# Settings.max_concurrent_hashes (1) passwords at a time: hashing keeps every core busy without
# oversubscribing it. More threads than hashing slots, so that database and Redis round trips
# overlap with hashing and so that a burst waits at the hashing slot, where the wait is bounded
# (Settings.hash_queue_timeout, then 503 `overloaded` with Retry-After), not in gunicorn's queue.
DEFAULT_THREADS = 8


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


# glibc serves allocations above 32 MiB (its largest dynamic mmap threshold) with a fresh mmap
# each time, whose pages then fault in one by one: measured 11,777 page faults and +80 % CPU per
# verification at 46 MiB. glibc's hugetlb tunable (2.35+) backs them with transparent huge pages
# (24 faults). Below 32 MiB, as with the defaults, the block is reused and nothing changes.
HUGE_ARGON2_KIB = 32 * 1024
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_hugetlb(settings: Settings) -> None:
    """Re-execute this command with GLIBC_TUNABLES hugetlb when Argon2 blocks exceed 32 MiB.

    glibc reads tunables only when a process starts, so it cannot be switched on in place."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        settings.argon2_memory_kib <= HUGE_ARGON2_KIB
        or "glibc.malloc.hugetlb" in tunables
        or not sys.platform.startswith("linux")
    ):
        return
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, HUGETLB_TUNABLE)))}
    code = "from authsvc.cli import main; main(prog_name='authsvc')"
    argv = [sys.executable, "-c", code, *sys.argv[1:]]
    # The same interpreter and command line again, with one more environment variable.
    os.execve(sys.executable, argv, env)  # noqa: S606  # nosec B606


M_ARENA_MAX = -8  # <malloc.h>


def limit_malloc_arenas(count: int) -> None:
    """Cap glibc's malloc arenas in a worker (call before it starts threads).

    glibc gives each thread its own arena, up to 8 per core, and every arena keeps the last
    Argon2 block it served (19 MiB by default): a worker's memory would grow with its threads,
    not with the hashes it may compute at once. Measured with 16 threads, one hash at a time:
    318 MiB unbounded, 70 MiB with two arenas, same hashing speed. No-op off glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, count)


class _Server(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any], outbox_thread: bool) -> None:
        self._settings = settings
        self._options = options
        self._outbox_thread = outbox_thread
        # Prometheus multiprocess files of this server's workers (one directory per master).
        self._metrics_dir = (settings.var_dir / "metrics" / str(os.getpid())).resolve()
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        metrics_dir = self._metrics_dir
        self.cfg.set("logconfig_dict", gunicorn_logconfig(self._settings.log_level))
        self.cfg.set("on_starting", lambda _server: enable_multiprocess(metrics_dir))
        self.cfg.set("child_exit", lambda _server, worker: worker_exited(worker.pid, metrics_dir))
        self.cfg.set("on_exit", lambda _server: remove_directory(metrics_dir))
        arenas = self._settings.max_concurrent_hashes + 1
        self.cfg.set("post_fork", lambda _server, _worker: limit_malloc_arenas(arenas))
        self.cfg.set("worker_exit", _stop_outbox_thread)
        # gunicorn has no setting for the body of its own error answers; its workers call
        # util.write_error, so that is what is replaced (before the workers are forked).
        gunicorn_util.write_error = _write_problem

    def load(self) -> Any:
        return create_app(
            self._settings, start_worker=self._outbox_thread, metrics_dir=self._metrics_dir
        )


class QueueTimedWorker(ThreadWorker):
    """gunicorn's threaded worker, telling the password hasher when each request was queued.

    The worker queues every request that arrives for its thread pool, without limit. A burst
    larger than the threads would wait there, unseen by the hashing slot's timeout: measured, 300
    logins at once on one worker of 8 threads were all answered, the last after 9.8 s. With the
    time of queueing known, a login that has already waited ``AUTHSVC_HASH_QUEUE_TIMEOUT`` gets
    503 ``overloaded`` at once unless a slot is free."""

    def enqueue_req(self, conn: Any) -> None:
        conn.authsvc_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        # How long the connection waited for this thread. A new connection is queued when it
        # is accepted, before its request arrives: the thread then waits for the client's
        # bytes, and that wait is the client's, not the server's, so it is left out.
        queued_at = getattr(conn, "authsvc_queued_at", None)
        conn.authsvc_queue_wait = None if queued_at is None else time.monotonic() - queued_at
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        # The application runs in this thread, in this context, within this call.
        wait = getattr(conn, "authsvc_queue_wait", None)
        passwords.queued_since.set(None if wait is None else time.monotonic() - wait)
        return super().handle_request(req, conn)


def _write_problem(sock: Any, status_int: int, reason: str, _mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse (a bad request line, header or chunk;
    too long a request line or too many headers) as problem+json, like every other error,
    instead of its HTML page. The detail is the status's reason alone: gunicorn's message may
    quote the request line, and with it a token from the query string."""
    code = HTTP_CODES.get(status_int, "bad_request" if status_int < 500 else "internal_error")
    body = json.dumps(
        {
            "type": PROBLEM_TYPE_BASE + code,
            "title": reason,
            "status": status_int,
            "detail": f"The HTTP server refused the request: {reason}",
            "code": code,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        "Content-Type: application/problem+json\r\nCache-Control: no-store\r\n"
        f"X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _stop_outbox_thread(_server: Any, worker: Any) -> None:
    """A worker that exits (restart, shutdown) lets its outbox thread finish the delivery under
    way and hand the rest of its batch back, instead of holding it until the lease runs out."""
    app = getattr(worker, "wsgi", None)
    runtime = app.extensions.get("authsvc") if app is not None else None
    if runtime is not None:
        runtime.stop_worker(timeout=OUTBOX_STOP_SECONDS)


OUTBOX_STOP_SECONDS = 8.0  # within graceful_timeout (10 s): one SMTP delivery, then the hand-back


def run(
    settings: Settings, *, host: str, port: int, workers: int, threads: int, outbox_thread: bool
) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": QueueTimedWorker if threads > 1 else "sync",
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        # gunicorn opens a control socket in the user's home by default, through which
        # `gunicornc` adds workers: without Redis each would have rate limits of its own, which
        # is why `authsvc serve` refuses more than one; and the servers of one user would all
        # take the same socket from each other.
        "control_socket_disable": True,
    }
    _Server(settings, options, outbox_thread).run()
