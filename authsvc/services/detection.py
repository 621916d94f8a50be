"""Detection of guessing and stuffing: sliding-window detectors over the audit events, alerts.

``Detector.observe`` is the audit trail's observer (``audit.Hooks``): ``audit.record`` calls it
for every event, before the event is chained. It counts the event in Prometheus metrics, feeds
the detectors and sends the new-device login mail. The detectors:

- ``enumeration``: more than ``detect_emails_per_ip`` distinct emails in login, sign-up, forgot
  or throttled requests from one IP, an IPv6 /64 counting as one (``ip`` scope), or more than
  ``detect_emails_per_network`` from one /24 or IPv6 /48 (``network`` scope): the postal-service
  pattern, and credential stuffing.
- ``unknown_emails``: of at least ``detect_unknown_email_min_attempts`` login attempts in the
  window, at least ``detect_unknown_email_share`` were for emails with no account.
- ``brute_force``: failed password or second-factor checks on one account from more than
  ``detect_ips_per_account`` distinct IPs (an IPv6 /64 counting as one).
- ``recovery_burst``: more than ``detect_recovery_burst`` recovery-code uses and password resets,
  all accounts together.

The windows live in the rate-limit storage (Redis when configured, so every worker and instance
shares them; process memory otherwise): one sliding-window counter per subject, fed once per
distinct (subject, member) pair. A detection raises an alert at most once per
``alert_cooldown`` for the same detector and subject (claimed in the storage; given back when
the transaction that records the alert does not commit, so that the next detection raises it):
an ``alert.raised`` audit event, the
``authsvc_alerts_total`` metric, a WARNING log line and, when ``AUTHSVC_ALERT_WEBHOOK_URL`` is set,
an HMAC-signed JSON POST queued in the outbox (retried with backoff; a dead receiver delays
nothing but the outbox; a redirect, which is never followed, or a 4xx other than 408, 425 and
429 parks it as failed). Nothing of this changes any answer to the client.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

from limits import RateLimitItemPerSecond, strategies
from sqlalchemy import Table, bindparam, event, func, select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import SessionTransaction

from authsvc.db import new_id
from authsvc.deadline import EXCHANGE_SECONDS, Deadline
from authsvc.metrics import Metrics, Sample
from authsvc.models import AuditEvent, User
from authsvc.models.breach import BreachCampaign
from authsvc.ratelimit import address_key, open_storage, parse_address
from authsvc.services import audit, notices, outbox
from authsvc.services.context import Client, Deps
from authsvc.services.outbox import External, Handler
from authsvc.settings import Settings

log = logging.getLogger("authsvc.detection")

WEBHOOK_KIND = "webhook"
SIGNATURE_HEADER = "X-Authsvc-Signature"
TIMESTAMP_HEADER = "X-Authsvc-Timestamp"
ALERT_EVENT = "alert.raised"

# The event types the detectors read (written by the services).
_EMAIL_ATTEMPTS = frozenset(
    {
        "login.failure",
        "login.success",
        "login.password",
        "signup.requested",
        "password.forgot",
        "ratelimit.hit",
    }
)
_LOGIN_ATTEMPTS = frozenset({"login.failure", "login.success", "login.password"})
_RECOVERY_USES = frozenset({"mfa.recovery_code_used", "password.reset"})
# A wrong second factor at login, or with a mailed reset link (a stolen mailbox guessing codes).
_SECOND_FACTOR_FAILURES = frozenset({("login.mfa", "failure"), ("password.reset", "invalid_mfa")})
_NOT_OBSERVED = frozenset({ALERT_EVENT, "audit.pruned"})
_ACTIVE_CAMPAIGNS = ("pending", "running")
_CAMPAIGN_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_BIG = 1_000_000_000  # "no limit" for plain counters
_STORAGE_ERROR_LOG_INTERVAL = 60.0

notices.register(
    "new_login",
    "New sign-in to your account",
    "Your account was signed in to from a device or browser not seen before.\n\n"
    "When: {when} UTC\nIP address: {ip}\nBrowser: {browser}\n\n"
    "If it was you, there is nothing to do. If it was not, change your password at once, and "
    "review your second factors and sessions.\n",
)


@dataclass(frozen=True, slots=True)
class Alert:
    detector: str  # enumeration | unknown_emails | brute_force | recovery_burst
    scope: str  # ip | network | account | global
    subject: str  # the IP, the network, the account (email digest or user id), or "all"
    threshold: float
    window_seconds: int
    at: datetime
    ip: str | None = None
    user_id: str | None = None
    email_hash: str | None = None
    # Names the alert in its audit event and its webhook POST, every retry included: a
    # receiver tells a retry or a replay of one it already has by it.
    id: str = field(default_factory=new_id)

    def document(self) -> dict[str, Any]:
        """The JSON body of the webhook and the details of the audit event."""
        body = asdict(self)
        body["at"] = self.at.isoformat().replace("+00:00", "Z")
        return {"event": ALERT_EVENT, **body}


def _cooldown(detector: str, scope: str, subject: str) -> tuple[str, ...]:
    """What an alert's cooldown is claimed under: one alert per detector and subject."""
    return ("alert", detector, scope, subject)


class Windows:
    """Sliding-window counters in the rate-limit storage (``limits``: memory or Redis)."""

    def __init__(self, storage_url: str, *, window_seconds: int) -> None:
        self._storage = open_storage(storage_url)
        self._counter = strategies.SlidingWindowCounterRateLimiter(self._storage)
        self.window_seconds = window_seconds

    @staticmethod
    def _key(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def first_sight(self, *parts: str) -> bool:
        """True the first time ``parts`` is seen within the window."""
        return self._storage.incr("detect-seen/" + self._key(*parts), self.window_seconds) == 1

    def exceeded(self, name: str, threshold: int, *parts: str) -> bool:
        """Count one; True when more than ``threshold`` were counted within the window."""
        item = RateLimitItemPerSecond(threshold, self.window_seconds)
        return not self._counter.hit(item, "detect-" + name, self._key(*parts))

    def tally(self, name: str) -> None:
        """Count one on a plain counter (one storage round trip; ``count`` takes two)."""
        item = RateLimitItemPerSecond(_BIG, self.window_seconds)
        self._counter.hit(item, "detect-" + name, "all")

    def count(self, name: str) -> int:
        """Count one on a plain counter and return its value within the window."""
        item = RateLimitItemPerSecond(_BIG, self.window_seconds)
        self.tally(name)
        return _BIG - self._counter.get_window_stats(item, "detect-" + name, "all").remaining

    def claim(self, *parts: str, seconds: int) -> bool:
        """True for the first caller in ``seconds`` (across workers when the storage is shared)."""
        return self._storage.incr("detect-claim/" + self._key(*parts), max(1, seconds)) == 1

    def release(self, *parts: str) -> None:
        """Give a claim back: the next ``claim`` of ``parts`` is first again."""
        self._storage.clear("detect-claim/" + self._key(*parts))

    def reset(self) -> None:
        self._storage.reset()


def network_of(ip: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) an address, in any spelling, belongs to. A /48 is what
    one site is given: the per-address limits and detectors count a /64 as one client, so an
    attacker moving over the 65,536 /64s of their /48 is one network here."""
    address = parse_address(ip)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class Detector:
    """The audit observer: metrics, detectors, alerts and the new-device mail."""

    def __init__(self, *, deps: Deps, metrics: Metrics, windows: Windows | None = None) -> None:
        self._deps = deps
        self._settings: Settings = deps.settings
        self._metrics = metrics
        self.windows = windows or Windows(
            deps.settings.rate_limit_storage_url,
            window_seconds=max(1, int(deps.settings.detect_window.total_seconds())),
        )
        self._storage_error_logged_at = -_STORAGE_ERROR_LOG_INTERVAL

    def hooks(self) -> audit.Hooks:
        return audit.Hooks(keyring=self._deps.keyring, observer=self.observe)

    # -- the observer ---------------------------------------------------------------------

    def observe(self, session: DbSession, event: audit.Observed) -> audit.FollowUp | None:
        self._count(event)
        if event.type in _NOT_OBSERVED:
            return None
        self._new_device_mail(session, event)
        try:
            alerts = self.detect(event)
        except Exception as exc:  # detection must never fail a request
            now = time.monotonic()
            if now - self._storage_error_logged_at >= _STORAGE_ERROR_LOG_INTERVAL:
                self._storage_error_logged_at = now
                log.error("detection skipped: the window storage failed (%s)", type(exc).__name__)
            return None
        if not alerts:
            return None
        _hold_claims(session, self.windows, alerts)
        return lambda: self.raise_alerts(session, alerts)

    def _count(self, event: audit.Observed) -> None:
        metrics = self._metrics
        metrics.audit_events.labels(event.type).inc()
        if event.type in _LOGIN_ATTEMPTS or event.type == "login.passkey":
            metrics.logins.labels(event.outcome).inc()
        elif event.type == "login.mfa":
            metrics.mfa.labels(event.outcome).inc()

    # -- detectors ------------------------------------------------------------------------

    def detect(self, event: audit.Observed) -> list[Alert]:
        s, w = self._settings, self.windows
        found: list[Alert] = []

        def alert(detector: str, scope: str, subject: str, threshold: float, **who: Any) -> None:
            if w.claim(
                *_cooldown(detector, scope, subject),
                seconds=int(s.alert_cooldown.total_seconds()),
            ):
                found.append(
                    Alert(
                        detector=detector,
                        scope=scope,
                        subject=subject,
                        threshold=threshold,
                        window_seconds=w.window_seconds,
                        at=event.now,
                        **who,
                    )
                )

        member = event.email_hash or (f"user:{event.user_id}" if event.user_id else None)
        # One client is an IPv4 address or an IPv6 /64, as for the rate limits: a host that
        # moves over its /64 (privacy addresses, or on purpose) stays one.
        client = address_key(event.ip) if event.ip else None
        if event.type in _EMAIL_ATTEMPTS and member and client:
            if w.first_sight("ip-email", client, member) and w.exceeded(
                "emails-per-ip", s.detect_emails_per_ip, client
            ):
                alert("enumeration", "ip", client, s.detect_emails_per_ip, ip=event.ip)
            network = network_of(event.ip or "")
            if (
                network
                and w.first_sight("net-email", network, member)
                and w.exceeded("emails-per-network", s.detect_emails_per_network, network)
            ):
                alert("enumeration", "network", network, s.detect_emails_per_network, ip=event.ip)

        if event.type in _LOGIN_ATTEMPTS:
            if event.type != "login.failure":
                w.tally("login-attempts")  # the share is only computed on failures
            else:
                # Every failure does the same storage work, unknown email or not (two counts
                # here, the account's first sight below), so that both answer equally fast.
                attempts = w.count("login-attempts")
                unknown_email = event.outcome == "unknown_email"
                counted = w.count("login-unknown" if unknown_email else "login-known")
                if unknown_email and (
                    attempts >= s.detect_unknown_email_min_attempts
                    and counted >= s.detect_unknown_email_share * attempts
                ):
                    alert(
                        "unknown_emails",
                        "global",
                        "all",
                        s.detect_unknown_email_share,
                        ip=event.ip,
                    )

        account = None
        if event.type == "login.failure":  # an unknown email too: addresses tried from many IPs
            # An account by its id, as its second-factor failures below: an attack that
            # guesses the password from some addresses and the second factor from others is
            # one attack on one account. An unknown email by its digest (the same storage work).
            account = f"user:{event.user_id}" if event.user_id else event.email_hash
        elif (event.type, event.outcome) in _SECOND_FACTOR_FAILURES and event.user_id:
            account = f"user:{event.user_id}"
        if (
            account
            and client
            and w.first_sight("account-ip", account, client)
            and (w.exceeded("ips-per-account", s.detect_ips_per_account, account))
        ):
            alert(
                "brute_force",
                "account",
                account,
                s.detect_ips_per_account,
                ip=event.ip,
                user_id=event.user_id,
                email_hash=event.email_hash,
            )

        recovery_use = event.type in _RECOVERY_USES and (
            event.type != "password.reset" or event.outcome == "success"
        )
        if recovery_use and w.exceeded("recovery-uses", s.detect_recovery_burst, "all"):
            alert(
                "recovery_burst",
                "global",
                "all",
                s.detect_recovery_burst,
                ip=event.ip,
                user_id=event.user_id,
            )
        return found

    # -- alerts ---------------------------------------------------------------------------

    def raise_alerts(self, session: DbSession, alerts: list[Alert]) -> None:
        for found in alerts:
            document = found.document()
            self._metrics.alerts.labels(found.detector).inc()
            log.warning(
                "security alert: %s (%s %s)",
                found.detector,
                found.scope,
                found.subject,
                extra={"alert": document},
            )
            audit.record(
                session,
                type=ALERT_EVENT,
                outcome=found.detector,
                now=found.at,
                client=Client(ip=found.ip or ""),
                user_id=found.user_id,
                email_hash=found.email_hash,
                details=document,
            )
            if self._settings.alert_webhook_url:
                outbox.enqueue(
                    session,
                    self._deps.keyring,
                    kind=WEBHOOK_KIND,
                    payload={"alert": document},
                    now=found.at,
                )

    # -- the user's own view --------------------------------------------------------------

    def _new_device_mail(self, session: DbSession, event: audit.Observed) -> None:
        """Mail the owner when a full login comes from a browser not seen in earlier logins."""
        if not (
            event.type == "login.success" and event.outcome == "authenticated" and event.user_id
        ):
            return
        earlier = earlier_login_agents(session, event.user_id)
        if not earlier and not _history_pruned(session, event.user_id):
            return  # the first login of an account is not news to its owner
        device = _device(event.user_agent)
        if any(_device(agent) == device for agent in earlier):
            return
        user = session.get(User, event.user_id)
        if user is None:
            return
        notices.send(
            session,
            self._deps,
            to=user.email,
            template="new_login",
            now=event.now,
            when=event.now.strftime("%Y-%m-%d %H:%M"),
            ip=_printable(event.ip or "unknown"),
            browser=describe_device(event.user_agent or ""),
        )


# --- cooldowns of alerts that were not recorded -------------------------------------------

# The alerts' cooldown claims a session's transaction holds, each with the transaction (or
# savepoint) that records its alert. The claim is made when the alert is detected, but its
# audit event and its webhook are written only by the transaction's commit: a transaction that
# rolls back after the observer ran (any unexpected error; a lock or statement timeout, a lost
# connection or a commit refused; a password reset by recovery code that finds no hashing slot
# free, or a login whose step token a parallel request spent) loses the alert, and its claim
# would silence that detector and subject for the whole cooldown. Given back, the next event
# past the threshold raises the alert.
_CLAIMS_KEY = "authsvc.detection.claims"
_Claim = tuple[Windows, tuple[str, ...], SessionTransaction | None]


def _hold_claims(session: DbSession, windows: Windows, alerts: list[Alert]) -> None:
    transaction = session.get_nested_transaction() or session.get_transaction()
    held: list[_Claim] = session.info.setdefault(_CLAIMS_KEY, [])
    held.extend(
        (windows, _cooldown(found.detector, found.scope, found.subject), transaction)
        for found in alerts
    )


def _release(claims: list[_Claim]) -> None:
    for windows, parts, _ in claims:
        try:
            windows.release(*parts)
        except Exception as exc:  # a rollback must not fail on the window storage
            log.error(
                "alert cooldown not released: the window storage failed (%s)", type(exc).__name__
            )


@event.listens_for(DbSession, "after_commit")
def _keep_committed_claims(session: DbSession) -> None:
    # Also called when a savepoint is released: its claims then go with the transaction.
    if session.get_nested_transaction() is None:
        session.info.pop(_CLAIMS_KEY, None)


@event.listens_for(DbSession, "after_soft_rollback")
def _release_rolled_back_claims(session: DbSession, previous: SessionTransaction) -> None:
    held: list[_Claim] | None = session.info.get(_CLAIMS_KEY)
    if not held:
        return
    lost: list[_Claim] = []
    kept: list[_Claim] = []
    for claim in held:
        rolled_back = previous.parent is None or audit.within(claim[2], previous)
        (lost if rolled_back else kept).append(claim)
    session.info[_CLAIMS_KEY] = kept
    _release(lost)


@event.listens_for(DbSession, "after_transaction_end")
def _release_uncommitted_claims(session: DbSession, transaction: SessionTransaction) -> None:
    # A transaction closed without a commit (a session closed with it open, a commit that
    # failed): what is left was not written.
    if transaction.parent is None:
        _release(session.info.pop(_CLAIMS_KEY, []))


_EVENTS = cast("Table", AuditEvent.__table__).c
_LATEST_LOGINS = (
    select(_EVENTS.user_agent)
    .where(
        _EVENTS.user_id == bindparam("user_id"),
        _EVENTS.type == "login.success",
        _EVENTS.outcome == "authenticated",
    )
    .order_by(_EVENTS.id.desc())
    .limit(200)
    .subquery()
)
# Each agent once: an account that signs in often from one browser sends one row, not 200.
_EARLIER_LOGIN_AGENTS = (
    select(_LATEST_LOGINS.c.user_agent)
    .distinct()
    # Earlier logins only: this transaction's own events need not be written first.
    .execution_options(**audit.WITHOUT_PENDING)
)


def earlier_login_agents(session: DbSession, user_id: str) -> list[str | None]:
    """The distinct user agents of an account's latest 200 full logins (an index range:
    ix_audit_events_user_id_type_id). The statement is built once and run with ``user_id``
    as its parameter (not copied with the value bound into it, on every login)."""
    return list(session.scalars(_EARLIER_LOGIN_AGENTS, {"user_id": user_id}))


# The account, when the oldest event kept is younger than the account (pruning may have deleted
# its earlier logins). Older events only: this transaction's own need not be written first
# (that takes the chain lock until the commit).
_HISTORY_PRUNED = (
    select(User.id)
    .where(
        User.id == bindparam("user_id"),
        User.created_at < select(func.min(AuditEvent.occurred_at)).scalar_subquery(),
    )
    .execution_options(**audit.WITHOUT_PENDING)
)


def _history_pruned(session: DbSession, user_id: str) -> bool:
    """Whether pruning may have deleted events of the account: then an account without logins
    in the trail may have had some."""
    found = session.connection().execute(_HISTORY_PRUNED, {"user_id": user_id})
    return found.first() is not None


def _device(user_agent: str | None) -> str:
    """A user agent without version numbers: a browser update is not a new device."""
    return re.sub(r"[\d._]+", "", user_agent or "").strip().lower()


# Tokens of the user agent, checked in order, and the words the new-device mail uses for them.
_BROWSERS = (
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
)
_SYSTEMS = (
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("Macintosh", "macOS"),
    ("Linux", "Linux"),
)


def describe_device(user_agent: str) -> str:
    """The browser and system a user agent names, in fixed words ("Chrome on Windows"). The
    user agent is whatever the client sent: quoted into the new-device mail, it carried the
    links and instructions of whoever signed in, in a mail from this service."""
    browser = next((name for token, name in _BROWSERS if token in user_agent), None)
    system = next((name for token, name in _SYSTEMS if token in user_agent), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser:
        return browser
    if system:
        return f"a browser on {system}"
    return "an unknown program"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:256]


# --- webhooks ------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` HMAC-SHA256 over ``timestamp + "." + body``, as sent in the header."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookFailed(Exception):  # noqa: N818 - named for what happened
    """The receiver did not answer 2xx; the outbox retries with backoff."""


# 4xx answers that say "not now" rather than "never": Request Timeout, Too Early, Too Many
# Requests. Any other 4xx (a wrong URL or secret, a receiver that is gone) answers the same
# however often the alert is sent again, so the message is parked as failed.
_RETRIED_4XX = frozenset({408, 425, 429})


def _refused_for_good(status: int) -> bool:
    return 400 <= status < 500 and status not in _RETRIED_4XX


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def deliver_webhook(deps: Deps, payload: dict[str, Any], now: datetime) -> None:
    """POST one alert to AUTHSVC_ALERT_WEBHOOK_URL (the outbox handler of kind ``webhook``)."""
    url, secret = deps.settings.alert_webhook_url, deps.settings.alert_webhook_secret
    if not url or not secret:
        log.info("alert webhook no longer configured; alert dropped")
        return
    body = json.dumps(payload["alert"], sort_keys=True).encode()
    timestamp = str(int(now.timestamp()))
    request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "authsvc-alerts",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, body),
        },
    )
    # AUTHSVC_ALERT_WEBHOOK_TIMEOUT bounds each read and write; the deadline the whole POST.
    with Deadline(EXCHANGE_SECONDS) as deadline:
        opener = urllib.request.build_opener(_NoRedirects, *deadline.url_handlers())
        try:
            status = _post(opener, request, timeout=deps.settings.alert_webhook_timeout)
        except WebhookFailed:
            if deadline.expired:
                raise WebhookFailed(
                    f"the receiver took longer than {deadline.seconds:g} s"
                ) from None
            raise
    if not 200 <= status < 300:
        raise WebhookFailed(f"the receiver answered HTTP {status}")


def _post(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, *, timeout: float
) -> int:
    """The receiver's status; WebhookFailed or PermanentFailure when it cannot be had."""
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection
        if 300 <= exc.code < 400:  # never followed: an alert goes to the configured URL only
            raise outbox.PermanentFailure(
                f"the receiver redirected the alert (HTTP {exc.code}); redirects are not "
                "followed, so it is not retried: configure the URL it redirects to"
            ) from None
        if _refused_for_good(exc.code):
            raise outbox.PermanentFailure(
                f"the receiver refused the alert with HTTP {exc.code}; not retried"
            ) from None
        raise WebhookFailed(f"the receiver answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookFailed(_unreachable(exc)) from None
    except Exception as exc:
        # Such as http.client's InvalidURL, whose text quotes the URL: its path or query is
        # often the receiver's secret, and the error is kept with the message.
        raise WebhookFailed(f"the alert could not be sent ({type(exc).__name__})") from None


def _unreachable(exc: OSError) -> str:
    """Why the receiver could not be had: the socket's or the TLS library's reason (refused,
    no such host, certificate not trusted), which names at most the host, never the URL's
    path or query (often its secret); else the exception's type alone."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ssl.SSLError):
        return f"TLS with the receiver failed ({_one_line(reason)})"
    if isinstance(reason, OSError) and not isinstance(reason, urllib.error.URLError):
        return f"the receiver is unreachable ({_one_line(reason)})"
    return f"the receiver is unreachable ({type(exc).__name__})"


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())[:200] or type(reason).__name__


# Outbox handlers this capability contributes, by message kind.
HANDLERS: dict[str, Handler | External] = {WEBHOOK_KIND: External(deliver_webhook)}


# --- scrape-time gauges --------------------------------------------------------------------


def gauges(session: DbSession, *, now: datetime) -> list[Sample]:
    """Shared state read at each scrape: the outbox's depth and age, campaign progress."""
    stats = outbox.stats(session)
    age = (now - stats.oldest_pending_at).total_seconds() if stats.oldest_pending_at else 0.0
    by_status = {
        status: int(count)
        for status, count in session.execute(
            select(BreachCampaign.status, func.count()).group_by(BreachCampaign.status)
        ).all()
    }
    active = session.execute(
        select(BreachCampaign.id, BreachCampaign.targeted, BreachCampaign.processed)
        .where(BreachCampaign.status.in_(_ACTIVE_CAMPAIGNS))
        .order_by(BreachCampaign.created_at)
        .limit(50)
    ).all()
    campaigns = [
        Sample(
            "authsvc_breach_campaigns",
            "Breach-response campaigns by status.",
            float(by_status.get(status, 0)),
            {"status": status},
        )
        for status in sorted({*_CAMPAIGN_STATUSES, *by_status})
    ]
    for campaign_id, targeted, processed in active:
        labels = {"campaign": campaign_id}
        campaigns += [
            Sample(
                "authsvc_breach_campaign_targeted",
                "Accounts an active campaign targets.",
                float(targeted or 0),
                labels,
            ),
            Sample(
                "authsvc_breach_campaign_processed",
                "Accounts an active campaign has processed.",
                float(processed or 0),
                labels,
            ),
        ]
    return [
        *campaigns,
        Sample(
            "authsvc_outbox_pending",
            "Outbox messages waiting to be processed.",
            float(stats.pending),
        ),
        Sample(
            "authsvc_outbox_oldest_pending_age_seconds",
            "Age of the oldest waiting outbox message.",
            max(0.0, age),
        ),
        Sample("authsvc_outbox_failed", "Outbox messages parked as failed.", float(stats.failed)),
    ]
