"""Prometheus metrics, served at ``GET /metrics`` in the text format.

One ``Metrics`` object per app. Under gunicorn the master calls ``enable_multiprocess`` before
the workers fork: each worker then writes its samples to memory-mapped files in a per-server
directory, and ``render`` aggregates the files of every worker (prometheus-client's
multiprocess mode; dead workers are marked with ``worker_exited``). Anywhere else (the
development server, tests) the samples live in the object's own registry.

Gauges that describe shared state (outbox depth and age, campaign progress) are not kept in any
process: the ``/metrics`` view reads them from the database at scrape time and passes them to
``render`` as ``Sample`` values.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from authsvc.crypto.passwords import Argon2Params, PasswordHasher, VerifyResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client itself
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HASH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0)


def enable_multiprocess(directory: Path) -> None:
    """Switch this process (and the workers it forks) to file-backed metric values.

    Call once in the gunicorn master, before any metric exists. The directory is emptied:
    files left by an earlier server would otherwise be counted again.
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROCESS_ENV] = str(directory)
    # prometheus-client picks its value class when imported; this process imported it before
    # the directory was known, so choose the multiprocess class now.
    values.ValueClass = values.MultiProcessValue()


def worker_exited(pid: int, directory: Path) -> None:
    prom_multiprocess.mark_process_dead(pid, str(directory))


def remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Sample:
    """A gauge read at scrape time."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


class _Samples(Collector):
    def __init__(self, samples: Iterable[Sample]) -> None:
        self._samples = list(samples)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for sample in self._samples:
            family = families.get(sample.name)
            if family is None:
                family = GaugeMetricFamily(sample.name, sample.help, labels=sorted(sample.labels))
                families[sample.name] = family
            family.add_metric([sample.labels[k] for k in sorted(sample.labels)], sample.value)
        yield from families.values()


class Metrics:
    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # In multiprocess mode the values live in files; a registry would only hold this
        # process's share, so the metrics are not registered anywhere.
        self.registry = None if multiprocess_dir else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "authsvc_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=reg,
        )
        self.request_seconds = Histogram(
            "authsvc_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.logins = Counter(
            "authsvc_logins",
            "Password and passkey login outcomes (failures by reason).",
            ["outcome"],
            registry=reg,
        )
        self.mfa = Counter(
            "authsvc_mfa_attempts", "Second-factor step outcomes.", ["outcome"], registry=reg
        )
        self.rate_limit_hits = Counter(
            "authsvc_rate_limit_hits",
            "Requests refused by a rate-limit policy.",
            ["policy"],
            registry=reg,
        )
        self.audit_events = Counter(
            "authsvc_audit_events",
            "Events written to the audit trail, by type.",
            ["type"],
            registry=reg,
        )
        self.alerts = Counter(
            "authsvc_alerts", "Alerts raised by the detectors.", ["detector"], registry=reg
        )
        self.password_hash_seconds = Histogram(
            "authsvc_password_hash_seconds",
            "Time in password hashing calls, waiting for a hashing slot included.",
            ["operation"],
            buckets=_HASH_BUCKETS,
            registry=reg,
        )

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def render(self, samples: Iterable[Sample] = ()) -> bytes:
        """The Prometheus text exposition of every worker's metrics plus ``samples``."""
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        else:
            assert self.registry is not None
            registry = self.registry
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Samples(samples))
        return generate_latest(registry) + generate_latest(scrape)


class TimedPasswordHasher(PasswordHasher):
    """A ``PasswordHasher`` that reports the time of each call to a histogram.

    A dummy verification (unknown account) is reported as ``verify`` like a real one.
    """

    def __init__(
        self,
        params: Argon2Params,
        *,
        max_concurrent: int,
        acquire_timeout: float,
        seconds: Histogram,
    ) -> None:
        super().__init__(params, max_concurrent=max_concurrent, acquire_timeout=acquire_timeout)
        self._seconds = seconds

    def hash(self, password: str) -> str:
        started = time.perf_counter()
        try:
            return super().hash(password)
        finally:
            self._seconds.labels("hash").observe(time.perf_counter() - started)

    def rehash(self, password: str) -> str | None:
        started = time.perf_counter()
        rehashed = super().rehash(password)
        if rehashed is not None:  # else nothing was hashed
            self._seconds.labels("hash").observe(time.perf_counter() - started)
        return rehashed

    def verify(self, expected_hash: str, password: str, *, refused: bool = False) -> VerifyResult:
        started = time.perf_counter()
        try:
            return super().verify(expected_hash, password, refused=refused)
        finally:
            self._seconds.labels("verify").observe(time.perf_counter() - started)

    def dummy_verify(self, password: str) -> None:
        started = time.perf_counter()
        try:
            super().dummy_verify(password)
        finally:
            self._seconds.labels("verify").observe(time.perf_counter() - started)
