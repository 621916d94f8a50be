"""Serving with gunicorn, configured from code (no config file needed)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from authsvc.app import create_app
from authsvc.settings import Settings


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any], outbox_thread: bool) -> None:
        self._settings = settings
        self._options = options
        self._outbox_thread = outbox_thread
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self._settings, start_worker=self._outbox_thread)


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
