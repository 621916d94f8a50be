"""Drains the outbox: claims due messages, runs their handler, retries with backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from authsvc.db import rowcount, utcnow
from authsvc.logging_setup import scrub
from authsvc.mail.backends import MailBackend, MailDeliveryError, build_message
from authsvc.models import OutboxMessage
from authsvc.services import accounts, breach, detection, housekeeping, outbox, password_costs
from authsvc.services.context import Deps
from authsvc.services.outbox import External, Handler, PermanentFailure

log = logging.getLogger("authsvc.worker")

# A failure that may pass (a server down, a timeout, a bug fixed by the next release) is retried
# for as long as it lasts, every MAX_BACKOFF at the slowest: a message is never dropped because
# an outage went on for a weekend. Only a permanent failure parks it (failed_at).
MAX_BACKOFF = timedelta(hours=2)
# How long a claimed delivery keeps other workers off its message; a worker that died
# mid-delivery frees it after this. Every send is cut off after deadline.EXCHANGE_SECONDS
# (1 minute), and a delivery starts with at least half the lease left (renewed past half):
# a send never outlives its claim, so no second worker sends the message again meanwhile.
CLAIM_LEASE = timedelta(minutes=5)
FAILURE_REPORT_EVERY = 60.0  # seconds between log lines while drains keep failing
FAILURE_BACKOFF_MAX = 5.0  # seconds between drains while they keep failing
# Failures whose text says what went wrong and nothing secret (see _failed).
_EXPLAINED = (MailDeliveryError, detection.WebhookFailed)
SWEEP_EVERY = 600.0  # seconds between one worker's housekeeping sweeps (services/housekeeping.py)
# A worker's clock and the database's further apart than this are named at start: leases are
# compared on each worker's own clock, so one ahead by more than CLAIM_LEASE takes over a
# message another worker is sending, and it goes out twice.
CLOCK_SKEW_WARN = timedelta(seconds=60)


def backoff(attempts: int) -> timedelta:
    return min(MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(attempts - 1, 20)))


def make_email_handler(backend: MailBackend) -> External:
    def send_email(deps: Deps, payload: dict[str, Any], now: datetime) -> None:
        message = build_message(
            sender=deps.settings.mail_from,
            to=payload["to"],
            subject=payload["subject"],
            text=payload["text"],
            now=now,
        )
        try:
            backend.send(message)
        except MailDeliveryError as exc:
            if exc.permanent:
                raise PermanentFailure(str(exc)) from None
            raise

    return External(send_email)


def default_handlers(backend: MailBackend) -> dict[str, Handler | External]:
    return {
        "email": make_email_handler(backend),
        "signup_request": accounts.process_signup_request,
        "reset_request": accounts.process_reset_request,
        **breach.HANDLERS,
        **detection.HANDLERS,
    }


class OutboxWorker:
    def __init__(
        self,
        *,
        sessionmaker: sessionmaker[DbSession],
        deps: Deps,
        handlers: Mapping[str, Handler | External],
        batch_size: int = 50,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._deps = deps
        self._handlers = dict(handlers)
        self._batch_size = batch_size
        self._clock = clock

    def drain_once(self, stop: threading.Event | None = None) -> int:
        """Process one batch of due messages; return how many were tried. Database work runs
        in one transaction; deliveries to the outside (mail, webhooks) are claimed in it and
        made after it commits, each recorded in a short transaction of its own. Once ``stop``
        is set, the claimed deliveries not yet begun are handed back, due at once."""
        now = self._clock()
        claimed: list[tuple[int, External, dict[str, Any]]] = []
        with self._sessionmaker.begin() as session:
            query = (
                select(OutboxMessage)
                .where(
                    OutboxMessage.completed_at.is_(None),
                    OutboxMessage.failed_at.is_(None),
                    OutboxMessage.available_at <= now,
                )
                .order_by(OutboxMessage.available_at, OutboxMessage.id)
                .limit(self._batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            messages = session.scalars(query).all()
            solo = [m for m in messages if m.kind in breach.SOLO_KINDS]
            if solo:  # a large job commits alone; the others stay due for the next round
                messages = solo[:1]
            for message in messages:
                handler = self._handlers.get(message.kind)
                if isinstance(handler, External):
                    claim = self._claim(message, handler, now)
                    if claim is not None:
                        claimed.append(claim)
                else:
                    self._process(session, message, now)
        for index, (message_id, external, payload) in enumerate(claimed):
            if stop is not None and stop.is_set():
                self._hand_back([claim[0] for claim in claimed[index:]], now + CLAIM_LEASE)
                break
            self._deliver(message_id, external, payload, leased_until=now + CLAIM_LEASE)
        return len(messages)

    def _hand_back(self, message_ids: list[int], leased_until: datetime) -> None:
        """Release claims whose delivery was never begun (the worker is stopping): due again
        now, their attempt not counted, instead of held until the lease runs out."""
        with self._sessionmaker.begin() as session:
            session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id.in_(message_ids),
                    OutboxMessage.available_at == leased_until,
                    OutboxMessage.completed_at.is_(None),
                    OutboxMessage.failed_at.is_(None),
                )
                .values(available_at=self._clock(), attempts=OutboxMessage.attempts - 1),
                execution_options={"synchronize_session": False},
            )
        log.info("outbox: %d claimed messages handed back on stop", len(message_ids))

    def _claim(
        self, message: OutboxMessage, external: External, now: datetime
    ) -> tuple[int, External, dict[str, Any]] | None:
        """Count the attempt and keep other workers off the message while it is delivered; if
        this process dies meanwhile, the message is due again after CLAIM_LEASE."""
        message.attempts += 1
        message.available_at = now + CLAIM_LEASE
        try:
            payload = outbox.payload_of(self._deps.keyring, message)
        except Exception as exc:  # undecryptable: no retry can mend it
            self._failed(message, now, PermanentFailure(f"{type(exc).__name__}: payload"))
            return None
        return message.id, external, payload

    def _deliver(
        self,
        message_id: int,
        external: External,
        payload: dict[str, Any],
        *,
        leased_until: datetime,
    ) -> None:
        now = self._clock()
        # Deliveries of one batch are made one after another: past half the lease, renew it
        # first, unless it ran out and another worker took the message (then that one sends).
        if now >= leased_until - CLAIM_LEASE / 2 and not self._renew(message_id, leased_until, now):
            return
        error: Exception | None = None
        try:
            external.deliver(self._deps, payload, now)
        except Exception as exc:
            error = exc
        now = self._clock()
        with self._sessionmaker.begin() as session:
            message = session.get(OutboxMessage, message_id)
            if message is None:
                return
            if error is None:
                message.completed_at = now
            else:
                self._failed(message, now, error)

    def _renew(self, message_id: int, leased_until: datetime, now: datetime) -> bool:
        with self._sessionmaker.begin() as session:
            renewed = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == message_id,
                    OutboxMessage.available_at == leased_until,
                    OutboxMessage.completed_at.is_(None),
                    OutboxMessage.failed_at.is_(None),
                )
                .values(available_at=now + CLAIM_LEASE),
                execution_options={"synchronize_session": False},
            )
            return rowcount(renewed) == 1

    def drain(self, *, max_rounds: int = 1000) -> int:
        """Process until nothing is due (tests, CLI)."""
        total = 0
        for _ in range(max_rounds):
            done = self.drain_once()
            total += done
            if done == 0:
                break
        return total

    def _process(self, session: DbSession, message: OutboxMessage, now: datetime) -> None:
        handler = self._handlers.get(message.kind)
        message.attempts += 1
        try:
            if handler is None or isinstance(handler, External):
                raise PermanentFailure(f"no handler for kind {message.kind!r}")
            payload = outbox.payload_of(self._deps.keyring, message)
            with session.begin_nested():
                handler(session, self._deps, payload, now)
        except Exception as exc:
            self._failed(message, now, exc)
            return
        message.completed_at = now

    @staticmethod
    def _failed(message: OutboxMessage, now: datetime, exc: Exception) -> None:
        """Park the message for good (a permanent failure), or retry it after a backoff."""
        # The error is kept beside the encrypted payload, for as long as a parked message is:
        # masked like a log line (an SMTP refusal names the recipient, maybe one who has no
        # account and was only mailed a notice).
        # The log line gives the reason too when it is one of the outbox's own, written for
        # it (a server's answer, never a URL or a password); of any other exception, whose
        # text may quote a statement and its values, only the type.
        if isinstance(exc, PermanentFailure):
            message.failed_at = now
            message.last_error = scrub(str(exc))[:500]
            log.error(
                "outbox message %s (%s) failed permanently: %s",
                message.id,
                message.kind,
                message.last_error,
            )
            return
        message.last_error = scrub(f"{type(exc).__name__}: {exc}")[:500]
        message.available_at = now + backoff(message.attempts)
        log.warning(
            "outbox message %s (%s) failed %d times, retrying: %s",
            message.id,
            message.kind,
            message.attempts,
            message.last_error if isinstance(exc, _EXPLAINED) else type(exc).__name__,
        )

    def sweep(self) -> housekeeping.Swept:
        """Delete ended sessions, expired tokens and TOTP enrollments, and sent and failed
        messages past their retention, and the recorded password hash costs that no stored hash
        has any more."""
        settings = self._deps.settings
        with self._sessionmaker.begin() as session:
            gone = password_costs.prune(session, self._deps.hasher)
        if gone:
            log.info("no stored password hash has the cost %s any more", ", ".join(gone))
        return housekeeping.sweep(
            self._sessionmaker,
            now=self._clock(),
            retention=settings.expired_retention,
            failed_retention=settings.failed_message_retention,
            idle_timeout=settings.session_idle_timeout,
        )

    def run(
        self, stop: threading.Event, *, poll_interval: float, sweep_every: float = SWEEP_EVERY
    ) -> None:
        """Drain until ``stop``; sweep when started and every ``sweep_every`` seconds after."""
        self.check_clock()
        next_sweep = time.monotonic()
        failures = 0  # drains failed in a row (a database or network outage, usually)
        reported_at = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_every
                try:
                    self.sweep()
                except Exception:
                    log.exception("housekeeping sweep failed")
            try:
                busy = self.drain_once(stop) > 0
            except Exception as exc:
                failures += 1
                busy = False
                # The first failure with its traceback, then a line a minute: an outage of the
                # database must not fill the log twice a second.
                if failures == 1:
                    log.exception("outbox drain failed")
                    reported_at = time.monotonic()
                elif time.monotonic() - reported_at >= FAILURE_REPORT_EVERY:
                    log.error(
                        "outbox drain still failing (%d times in a row): %s",
                        failures,
                        type(exc).__name__,
                    )
                    reported_at = time.monotonic()
            else:
                if failures:
                    log.warning("outbox drain works again after %d failures", failures)
                failures = 0
            if not busy:
                # After failures, wait longer each time (up to FAILURE_BACKOFF_MAX seconds).
                wait = min(poll_interval * 2 ** min(failures, 10), FAILURE_BACKOFF_MAX)
                stop.wait(min(max(wait, poll_interval), max(0.0, next_sweep - time.monotonic())))

    def check_clock(self) -> None:
        """Log an error when this host's clock and the database's differ by more than
        CLOCK_SKEW_WARN (see there). Never fails: a database down at start is the drain's to
        report."""
        try:
            with self._sessionmaker() as session:
                database_now = session.scalar(select(func.now()))
        except Exception:
            return
        if not isinstance(database_now, datetime):
            return
        if database_now.tzinfo is None:  # SQLite's CURRENT_TIMESTAMP is UTC
            database_now = database_now.replace(tzinfo=UTC)
        skew = (utcnow() - database_now).total_seconds()
        if abs(skew) > CLOCK_SKEW_WARN.total_seconds():
            log.error(
                "this host's clock is %d s %s the database's: a worker ahead by more than %d s "
                "takes over messages other workers are sending, and they go out twice; keep "
                "the clocks in step (NTP)",
                abs(skew),
                "ahead of" if skew > 0 else "behind",
                CLAIM_LEASE.total_seconds(),
            )

    def start_thread(self, *, poll_interval: float) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self.run,
            args=(stop,),
            kwargs={"poll_interval": poll_interval},
            name="authsvc-outbox",
            daemon=True,
        )
        thread.start()
        return thread, stop
