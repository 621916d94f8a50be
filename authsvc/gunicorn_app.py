"""Serving with gunicorn, configured from code (no config file needed)."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from authsvc.app import create_app
from authsvc.logging_setup import gunicorn_logconfig
from authsvc.metrics import enable_multiprocess, remove_directory, worker_exited
from authsvc.settings import Settings

# Defaults of `authsvc serve`. One worker process per core; in each, a few threads so that
# database and Redis round trips overlap with hashing, while Settings.max_concurrent_hashes
# bounds the Argon2 work (and its memory) per process.
DEFAULT_THREADS = 4


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


class _Server(BaseApplication):  # type: ignore[misc]
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

    def load(self) -> Any:
        return create_app(self._settings, start_worker=self._outbox_thread,
                          metrics_dir=self._metrics_dir)


def run(settings: Settings, *, host: str, port: int, workers: int, threads: int,
        outbox_thread: bool) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
    }
    _Server(settings, options, outbox_thread).run()
