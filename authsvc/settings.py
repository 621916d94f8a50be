"""Typed settings, read once from ``AUTHSVC_*`` environment variables.

``Settings.from_env`` is the only reader of the environment in the package.
"""

from __future__ import annotations

import base64
import difflib
import email.errors
import email.policy
import enum
import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from limits import parse as parse_limit
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class ConfigError(Exception):
    """Raised with every configuration problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Env(enum.Enum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class Settings:
    env: Env = Env.DEVELOPMENT
    var_dir: Path = Path("var")
    # Secrets, or URLs that may hold a password, are left out of repr(): a settings object in a
    # traceback or a debugger's output shows none of them.
    database_url: str = field(default="", repr=False)  # empty: sqlite file under var_dir
    # PostgreSQL, the web app's requests only (never the outbox worker or a command): how long
    # a statement may wait for a lock, and run in all, before the request answers 503; 0 is
    # no limit. A stalled transaction holding a row would otherwise hold a thread per request.
    db_lock_timeout: timedelta = timedelta(seconds=5)
    db_statement_timeout: timedelta = timedelta(seconds=30)
    redis_url: str | None = field(default=None, repr=False)
    mail_url: str = field(default="console://", repr=False)
    mail_from: str = "authsvc <no-reply@localhost>"
    # "kid:base64url-32-bytes"; empty: dev keys
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    public_url: str = "http://localhost:8000"  # the WebAuthn origin of the defaults too
    jwt_audience: str = "authsvc"
    access_token_ttl: timedelta = timedelta(minutes=10)
    refresh_token_ttl: timedelta = timedelta(days=30)
    # A session not refreshed for this long is over (ASVS 7.3.1); refreshes happen every
    # access_token_ttl while a client is in use.
    session_idle_timeout: timedelta = timedelta(days=7)
    verification_token_ttl: timedelta = timedelta(hours=24)
    reset_token_ttl: timedelta = timedelta(hours=1)
    change_token_ttl: timedelta = timedelta(minutes=10)
    mfa_token_ttl: timedelta = timedelta(minutes=5)
    reauth_window: timedelta = timedelta(minutes=10)
    require_mfa: bool = False
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    argon2_parallelism: int = 1
    max_concurrent_hashes: int = 1  # per process; `authsvc serve` runs one process per core
    hash_queue_timeout: float = 0.5  # seconds waiting for a hashing slot, then 503 overloaded
    password_min_length: int = 8
    password_max_length: int = 256
    # Words refused inside passwords besides the service's own names (ASVS 6.1.2): the
    # organisation, its products, its systems. Comma-separated in the environment.
    password_context_words: tuple[str, ...] = ()
    breached_passwords_file: Path | None = None  # default var_dir/breached-passwords.bin
    # Rate limits, in the `limits` notation ("N per period"); moving window.
    limit_ip: str = "300/minute"
    limit_email: str = "20/minute"
    limit_ip_email: str = "10/minute"
    limit_failures_per_account: str = "100/day"
    trusted_proxies: int = 0
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    webauthn_rp_id: str = "localhost"
    webauthn_rp_name: str = "authsvc"
    webauthn_origins: tuple[str, ...] = ("http://localhost:8000",)
    totp_issuer: str = "authsvc"
    totp_pending_ttl: timedelta = timedelta(minutes=10)  # an unconfirmed TOTP factor dies after
    totp_max_factors: int = 10  # confirmed TOTP factors per user
    # /ui: on by default in development; production serves it only when set to true.
    ui_enabled: bool | None = None
    outbox_poll_interval: float = 0.5
    allow_insecure_production: bool = False
    log_level: str = "INFO"
    # WebAuthn policy (security keys and passkeys).
    webauthn_user_verification: str = "preferred"  # required | preferred | discouraged
    webauthn_attestation: str = "none"  # none (accept any) | direct (verified attestation)
    webauthn_attestation_roots: Path | None = None  # PEM trust anchors for "direct"
    webauthn_aaguid_allow: tuple[str, ...] = ()  # empty: every authenticator model
    webauthn_aaguid_deny: tuple[str, ...] = ()
    webauthn_allow_backup_eligible: bool = True  # synced passkeys
    webauthn_on_counter_regression: str = "reject"  # reject | flag
    webauthn_challenge_ttl: timedelta = timedelta(minutes=5)
    webauthn_max_credentials: int = 20
    # Detection of guessing and stuffing: sliding windows over the audit events.
    detect_window: timedelta = timedelta(minutes=10)
    detect_emails_per_ip: int = 50  # distinct emails tried from one IP in the window
    detect_emails_per_network: int = 200  # ... from one /24 (IPv4) or /48 (IPv6)
    detect_ips_per_account: int = 10  # distinct IPs failing on one account in the window
    detect_unknown_email_share: float = 0.6  # share of login attempts for unknown emails ...
    detect_unknown_email_min_attempts: int = 200  # ... once there are this many attempts
    detect_recovery_burst: int = 30  # recovery-code uses and password resets, all accounts
    alert_cooldown: timedelta = timedelta(minutes=10)  # one alert per detector and source
    # A signed JSON POST per alert, via the outbox.
    alert_webhook_url: str | None = field(default=None, repr=False)
    # The bearer token a Prometheus scrape of /metrics sends; unset: /metrics is off (404).
    # The counters tell outcomes apart (a new account, an unknown email), so they are not public.
    metrics_token: str | None = field(default=None, repr=False)
    # The HMAC-SHA256 key; required with the URL.
    alert_webhook_secret: str | None = field(default=None, repr=False)
    alert_webhook_timeout: float = 3.0  # seconds per read or write; 60 s for the whole POST
    audit_retention: timedelta = timedelta(days=400)  # `authsvc audit prune`; 0 keeps all
    # Ended sessions, expired single-use tokens and sent outbox messages are deleted by the outbox
    # worker this long after they end; 0 keeps them.
    expired_retention: timedelta = timedelta(days=7)
    # Outbox messages parked as failed are deleted by the same sweep this long after they
    # failed: kept for an operator to look at, but their payloads hold recipients' addresses.
    # 0 keeps them.
    failed_message_retention: timedelta = timedelta(days=30)
    # Breach response: forced password resets for many accounts.
    flag_breached_at_login: bool = True  # a login with a blocklisted password must change it
    breach_batch_size: int = 20000  # accounts flagged per committed batch
    notify_rate_per_second: float = 20.0  # breach notices sent per second, per campaign
    breach_notice_token_ttl: timedelta = timedelta(days=3)  # the reset link in a notice
    breach_upload_max_bytes: int = 256 * 1024 * 1024  # uploaded email / user-id lists
    breach_sweep_delay: timedelta = timedelta(seconds=60)  # re-check for racing logins after

    @property
    def ui_served(self) -> bool:
        """Whether /ui is served: an explicit setting wins; otherwise only in development."""
        if self.ui_enabled is None:
            return self.env is Env.DEVELOPMENT
        return self.ui_enabled

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'authsvc.db'}"

    @property
    def rate_limit_storage_url(self) -> str:
        return self.redis_url or "memory://"

    @property
    def breached_passwords_path(self) -> Path:
        return self.breached_passwords_file or self.var_dir / "breached-passwords.bin"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, raw in environ.items():
            if not key.startswith("AUTHSVC_"):
                continue
            name = key[len("AUTHSVC_") :].lower()
            if name not in known:
                if not key.startswith(_NOT_SETTINGS):
                    problems.append(_unknown_setting(key, known))
                continue
            field = next(f for f in fields(cls) if f.name == name)
            try:
                values[name] = _parse(field.type, raw)  # type: ignore[arg-type]
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        settings = cls(**values)
        problems.extend(settings.problems())
        if problems:
            raise ConfigError(problems)
        return settings

    def problems(self) -> list[str]:
        out = []
        if self.password_min_length < 8 or self.password_max_length < self.password_min_length:
            out.append("AUTHSVC_PASSWORD_MIN_LENGTH must be >= 8 and <= the maximum")
        elif self.password_max_length > MAX_PASSWORD_LENGTH:
            out.append(
                f"AUTHSVC_PASSWORD_MAX_LENGTH must be <= {MAX_PASSWORD_LENGTH} (the longest "
                "password a request may carry)"
            )
        if (
            not 1 <= self.argon2_parallelism <= 255
            or not 8 * self.argon2_parallelism <= self.argon2_memory_kib <= MAX_ARGON2_MEMORY_KIB
            or not 1 <= self.argon2_time_cost <= MAX_ARGON2_TIME_COST
        ):
            out.append(
                "AUTHSVC_ARGON2_*: parallelism 1 to 255, memory 8 KiB per lane up to 4 GiB, "
                f"time cost 1 to {MAX_ARGON2_TIME_COST}"
            )
        if (
            self.max_concurrent_hashes < 1
            or not 0 <= self.hash_queue_timeout <= MAX_HASH_QUEUE_TIMEOUT
        ):
            out.append(
                "AUTHSVC_MAX_CONCURRENT_HASHES must be >= 1 and AUTHSVC_HASH_QUEUE_TIMEOUT from 0 "
                f"to {MAX_HASH_QUEUE_TIMEOUT:g} (seconds)"
            )
        if not all(
            limit == timedelta(0) or MIN_DB_TIMEOUT <= limit <= MAX_DB_TIMEOUT
            for limit in (self.db_lock_timeout, self.db_statement_timeout)
        ):
            out.append(
                "AUTHSVC_DB_LOCK_TIMEOUT and AUTHSVC_DB_STATEMENT_TIMEOUT must be 0 (no limit) "
                "or from 100ms to 1d"
            )
        if self.access_token_ttl.total_seconds() < 1:
            out.append("AUTHSVC_ACCESS_TOKEN_TTL must be at least 1s")
        if not self.jwt_audience.strip():
            # Tokens would be issued with an empty aud, which no verifier (PyJWT here) accepts:
            # every login would succeed and every bearer request answer 401.
            out.append("AUTHSVC_JWT_AUDIENCE must not be empty")
        if not MIN_POLL_INTERVAL <= self.outbox_poll_interval <= MAX_POLL_INTERVAL:
            out.append(
                f"AUTHSVC_OUTBOX_POLL_INTERVAL must be from {MIN_POLL_INTERVAL:g} to "
                f"{MAX_POLL_INTERVAL:g} (seconds)"
            )
        if not 0 < self.alert_webhook_timeout <= MAX_EXCHANGE_SECONDS:
            out.append(
                "AUTHSVC_ALERT_WEBHOOK_TIMEOUT must be > 0 and at most "
                f"{MAX_EXCHANGE_SECONDS:g} (seconds, the limit of a whole POST)"
            )
        short = [
            word
            for word in self.password_context_words
            if len(unicodedata.normalize("NFKC", word).casefold()) < MIN_CONTEXT_WORD_LENGTH
        ]
        if short:
            # The password policy leaves shorter pieces out (they would refuse too much): such
            # a word would refuse nothing.
            out.append(
                f"AUTHSVC_PASSWORD_CONTEXT_WORDS: {', '.join(map(repr, short))}: each word must "
                f"be at least {MIN_CONTEXT_WORD_LENGTH} characters"
            )
        if self.log_level.upper() not in _LOG_LEVELS:
            out.append("AUTHSVC_LOG_LEVEL must be one of " + ", ".join(_LOG_LEVELS))
        out.extend(self._store_problems())
        if not self.totp_issuer.strip() or ":" in self.totp_issuer:
            # The Key Uri Format's label is "issuer:account": a colon would split it elsewhere.
            out.append("AUTHSVC_TOTP_ISSUER must not be empty or contain a colon")
        if self.session_idle_timeout < self.access_token_ttl:
            out.append("AUTHSVC_SESSION_IDLE_TIMEOUT must be >= AUTHSVC_ACCESS_TOKEN_TTL")
        if self.refresh_token_ttl < self.access_token_ttl:
            # Every session would end before its first refresh.
            out.append("AUTHSVC_REFRESH_TOKEN_TTL must be >= AUTHSVC_ACCESS_TOKEN_TTL")
        for name in _STEPS_OF_A_PERSON:
            if getattr(self, name) < MIN_STEP:
                # A link, a login's second step or a forced change that ends before anyone
                # could use it would refuse every use, silently.
                out.append(f"AUTHSVC_{name.upper()} must be at least 1m")
        for name in ("audit_retention", "expired_retention", "failed_message_retention"):
            if timedelta(0) < getattr(self, name) < timedelta(days=1):
                # As `authsvc audit prune --before / --older-than`: the last day stays ("400",
                # a number of days without its unit, is 400 seconds; "7" would delete ended
                # sessions and parked mail seconds after they end).
                out.append(f"AUTHSVC_{name.upper()} must be 0 (keep all) or at least 1d")
        for name in ("totp_max_factors", "webauthn_max_credentials"):
            if getattr(self, name) < 1:
                out.append(f"AUTHSVC_{name.upper()} must be >= 1")
        if self.breach_upload_max_bytes < 1024:
            out.append("AUTHSVC_BREACH_UPLOAD_MAX_BYTES must be >= 1024")
        if not _one_address(self.mail_from):
            # Each mail would fail to build (a line break) or be refused by the server, and be
            # retried without end: no link and no security notice would go out.
            out.append(
                "AUTHSVC_MAIL_FROM must be one address on one line, such as "
                "'authsvc <no-reply@example.com>'"
            )
        if self.breach_batch_size < 1 or not self.notify_rate_per_second >= MIN_NOTIFY_RATE:
            out.append(
                "AUTHSVC_BREACH_BATCH_SIZE must be > 0 and AUTHSVC_NOTIFY_RATE_PER_SECOND at least "
                f"{MIN_NOTIFY_RATE:g} (one notice every {1 / MIN_NOTIFY_RATE:g} s)"
            )
        for name in ("limit_ip", "limit_email", "limit_ip_email", "limit_failures_per_account"):
            spec = getattr(self, name)
            # A longer period is an expiry Redis refuses: every request it throttles fails.
            if (
                not _RATE_LIMIT.fullmatch(spec)
                or parse_limit(spec).get_expiry() > MAX_DURATION.total_seconds()
            ):
                out.append(
                    f"AUTHSVC_{name.upper()} must look like '10/minute' or '100 per day', with "
                    f"a period of at most {MAX_DURATION.days} days"
                )
        if not all(_ORIGIN.fullmatch(origin) for origin in self.cors_origins):
            # flask-cors reads "*" as every origin and other strings as patterns.
            out.append("AUTHSVC_CORS_ORIGINS: origins like https://app.example.com, no wildcard")
        if not _is_web_url(self.public_url):
            # The base of every mailed link (and the token issuer): links with no host.
            out.append(
                "AUTHSVC_PUBLIC_URL must be an absolute http:// or https:// URL with a host, "
                "such as https://auth.example.com"
            )
        if self.trusted_proxies < 0 or self.max_body_bytes < 1024:
            out.append("AUTHSVC_TRUSTED_PROXIES must be >= 0 and AUTHSVC_MAX_BODY_BYTES >= 1024")
        if self.env is Env.PRODUCTION and not self.allow_insecure_production:
            if not self.encryption_keys:
                out.append(
                    "AUTHSVC_ENCRYPTION_KEYS is required in production "
                    "(or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
            if self.resolved_database_url.startswith("sqlite"):
                out.append(
                    "SQLite is refused in production: set AUTHSVC_DATABASE_URL to PostgreSQL "
                    "(or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
            if self.mail_url.startswith("console:"):
                out.append(
                    "console:// mail prints one-time links to the terminal; refused in production: "
                    "set AUTHSVC_MAIL_URL (or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
            if _is_web_url(self.public_url) and not _is_https_url(self.public_url):
                out.append(
                    "AUTHSVC_PUBLIC_URL must be an https:// URL in production: it is the base of "
                    "every mailed link, which carries a token (the default names the reader's "
                    "own machine) (or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
            if not all(_is_https_url(origin) for origin in self.webauthn_origins):
                out.append(
                    "AUTHSVC_WEBAUTHN_ORIGINS must be https:// origins in production, and "
                    "AUTHSVC_WEBAUTHN_RP_ID their domain (browsers allow WebAuthn over http only "
                    "on localhost) (or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
            if _skips_certificate_checks(self.mail_url):
                out.append(
                    "AUTHSVC_MAIL_URL: verify=false lets anyone on the way to the mail server read "
                    "every reset link; refused in production: trust its CA with SSL_CERT_FILE "
                    "(or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
            if _plain_smtp_with_credentials(self.mail_url):
                out.append(
                    "AUTHSVC_MAIL_URL: smtp:// with a user name and password sends them, and every "
                    "reset link, unencrypted; refused in production: use smtps:// or "
                    "smtp+starttls:// (plain smtp:// without credentials, to a local relay, is "
                    "accepted) (or set AUTHSVC_ALLOW_INSECURE_PRODUCTION=true)"
                )
        out.extend(self._webauthn_problems())
        out.extend(self._detection_problems())
        out.extend(_keyring_problems(self.encryption_keys))
        return out

    def _store_problems(self) -> list[str]:
        """URLs that would only fail when the database or Redis is first opened."""
        out = []
        try:
            url = make_url(self.resolved_database_url)
            # The port is read when the URL is parsed: a ValueError, not an ArgumentError.
            drivername = url.drivername
        except (ArgumentError, ValueError):
            drivername = None
        if drivername not in _DATABASE_DRIVERS:
            # Another driver (postgresql+psycopg2, +asyncpg) is not installed, and would fail
            # in every process that opens the database, with a traceback.
            out.append("AUTHSVC_DATABASE_URL must be a postgresql:// (or sqlite://) URL")
        if self.redis_url is not None and not _REDIS_URL.match(self.redis_url):
            out.append(
                "AUTHSVC_REDIS_URL must be a redis://, rediss://, redis+unix://, "
                "redis+sentinel:// or redis+cluster:// URL"
            )
        return out

    def _webauthn_problems(self) -> list[str]:
        out = []
        if self.webauthn_user_verification not in {"required", "preferred", "discouraged"}:
            out.append(
                "AUTHSVC_WEBAUTHN_USER_VERIFICATION must be required, preferred or discouraged"
            )
        if self.webauthn_attestation not in {"none", "direct"}:
            out.append("AUTHSVC_WEBAUTHN_ATTESTATION must be none or direct")
        if self.webauthn_attestation == "direct" and self.webauthn_attestation_roots is None:
            out.append(
                "AUTHSVC_WEBAUTHN_ATTESTATION=direct needs "
                "AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS (a PEM file of the vendors' roots)"
            )
        elif self.webauthn_attestation == "direct" and self.webauthn_attestation_roots is not None:
            # Read again at every registration: a file, or a certificate in it, that cannot be
            # read would answer each one 500. (A file without a certificate accepts no key.)
            path = str(self.webauthn_attestation_roots)
            try:
                pem = self.webauthn_attestation_roots.read_bytes()
            except OSError as exc:
                out.append(
                    f"AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS: cannot read {path!r} "
                    f"({exc.strerror or exc})"
                )
            else:
                try:
                    if b"-----BEGIN CERTIFICATE-----" in pem:
                        x509.load_pem_x509_certificates(pem)
                except ValueError:
                    out.append(
                        f"AUTHSVC_WEBAUTHN_ATTESTATION_ROOTS: {path!r} holds a certificate "
                        "that cannot be read"
                    )
        if self.webauthn_on_counter_regression not in {"reject", "flag"}:
            out.append("AUTHSVC_WEBAUTHN_ON_COUNTER_REGRESSION must be reject or flag")
        aaguid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        if not all(
            aaguid.fullmatch(a) for a in (*self.webauthn_aaguid_allow, *self.webauthn_aaguid_deny)
        ):
            out.append("AUTHSVC_WEBAUTHN_AAGUID_ALLOW/DENY: lower-case UUIDs, comma separated")
        if not self.webauthn_rp_name.strip():
            # The name authenticators show; py_webauthn refuses options without one.
            out.append("AUTHSVC_WEBAUTHN_RP_NAME must not be empty")
        if not self.webauthn_rp_id or not self.webauthn_origins:
            out.append("AUTHSVC_WEBAUTHN_RP_ID and AUTHSVC_WEBAUTHN_ORIGINS must not be empty")
        else:
            # Browsers refuse a ceremony whose RP ID is not the page's host or a parent domain
            # of it: such a pair would refuse every security key and passkey, silently.
            for origin in self.webauthn_origins:
                host = _host_of(origin)
                rp_id = self.webauthn_rp_id.lower()
                if host is None or not (host == rp_id or host.endswith("." + rp_id)):
                    out.append(
                        f"AUTHSVC_WEBAUTHN_ORIGINS: {origin!r} is not on AUTHSVC_WEBAUTHN_RP_ID "
                        f"{self.webauthn_rp_id!r} or one of its subdomains"
                    )
                elif (written := origin_of(origin)) != origin:
                    # The client data's origin is compared as a string: another spelling of
                    # the same origin (a URL's slash or path, capitals, the default port)
                    # matches no browser, and refuses every key and passkey just as silently.
                    out.append(
                        f"AUTHSVC_WEBAUTHN_ORIGINS: {origin!r} is not an origin as browsers "
                        "send it (scheme://host[:port], lower case, no default port, no path)"
                        + (f": write {written!r}" if written else "")
                    )
        if not timedelta(seconds=10) <= self.webauthn_challenge_ttl <= timedelta(minutes=10):
            # It is the options' timeout too, which browsers keep within 10 s and 10 minutes:
            # a longer challenge only outlives every ceremony that could answer it (and a
            # timeout past 2**32 ms wraps around).
            out.append("AUTHSVC_WEBAUTHN_CHALLENGE_TTL must be from 10s to 10m")
        return out

    def _detection_problems(self) -> list[str]:
        out = []
        if self.metrics_token is not None and not re.fullmatch(r"[!-~]{32,}", self.metrics_token):
            # A space or line break around it (a secret file's last newline) is stripped from
            # the scraper's header, and other characters arrive as Latin-1: /metrics would
            # answer every scrape 401.
            out.append(
                "AUTHSVC_METRICS_TOKEN must be at least 32 characters, printable ASCII "
                "without spaces"
            )
        if self.alert_webhook_url and not self.alert_webhook_secret:
            out.append("AUTHSVC_ALERT_WEBHOOK_SECRET is required with AUTHSVC_ALERT_WEBHOOK_URL")
        elif self.alert_webhook_secret is not None and len(self.alert_webhook_secret) < 32:
            # A shorter key could be guessed offline from one signed alert, and alerts forged.
            out.append("AUTHSVC_ALERT_WEBHOOK_SECRET must be at least 32 characters")
        if self.alert_webhook_url and not _postable_url(self.alert_webhook_url):
            out.append(
                "AUTHSVC_ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host, a "
                "port that is a number, no user:password@, and a path and query in ASCII "
                "without spaces (percent-encoded)"
            )
        if not 0 < self.detect_unknown_email_share <= 1:
            out.append("AUTHSVC_DETECT_UNKNOWN_EMAIL_SHARE must be in (0, 1]")
        counts = (
            self.detect_emails_per_ip,
            self.detect_emails_per_network,
            self.detect_ips_per_account,
            self.detect_recovery_burst,
            self.detect_unknown_email_min_attempts,
        )
        if min(counts) < 1 or self.detect_window.total_seconds() < 1:
            out.append("AUTHSVC_DETECT_*: thresholds and the window must be positive")
        return out


_DURATION = re.compile(r"^([0-9]{1,12})(ms|s|m|h|d)?$")
# What make_engine opens: psycopg 3 (postgresql:// is read as postgresql+psycopg://) or
# the standard library's sqlite3.
_DATABASE_DRIVERS = frozenset({"postgresql", "postgresql+psycopg", "sqlite", "sqlite+pysqlite"})
_REDIS_URL = re.compile(r"^(redis|rediss|redis\+unix|redis\+sentinel|redis\+cluster)://")
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # a key ring entry's id, "kid:base64url"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name or IPv4 address: flask-cors reads brackets (an IPv6 origin) as a pattern.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")  # WARN: logging's alias
# Beyond any sane setting; stored hashes are verified within these (crypto.passwords.MAX_OWN_*).
MAX_ARGON2_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB per hash
MAX_ARGON2_TIME_COST = 20
# The longest password field a request may carry (http.public.PASSWORD_MAX): a longer policy
# would answer passwords it admits with 400 invalid_request.
MAX_PASSWORD_LENGTH = 1024
# The shortest word the password policy refuses inside a password (crypto.blocklist).
MIN_CONTEXT_WORD_LENGTH = 4
# One item of the `limits` notation: "10/minute", "100 per day", "5/2 hours".
_RATE_LIMIT = re.compile(
    r"^\s*[1-9][0-9]*\s*(/|per)\s*([1-9][0-9]*\s*)?(second|minute|hour|day|month|year)s?\s*$"
)
MAX_DURATION = timedelta(days=36_500)
# The longest a delivery to the outside may take (deadline.EXCHANGE_SECONDS): a timeout per
# read or write beyond it would never be reached.
MAX_EXCHANGE_SECONDS = 60.0
# PostgreSQL's lock_timeout and statement_timeout are integer milliseconds (at most 24.8 days).
MIN_DB_TIMEOUT = timedelta(milliseconds=100)
# Waits computed from settings, kept where they work: a request that waits longer for a
# hashing slot has been given up by its client, and beyond threading.TIMEOUT_MAX the wait
# raises OverflowError; a notice job waits 1/rate seconds after each notice, and a rate
# near 0 put its next run beyond the year 9999 (OverflowError in the job, retried for ever).
MAX_HASH_QUEUE_TIMEOUT = 60.0
# An idle outbox loop's wait between polls: shorter polls the database in a busy loop; the
# housekeeping sweep (mail.worker.SWEEP_EVERY, 10 minutes) wakes it anyway, and a minute is
# as long as a reset link should wait.
MIN_POLL_INTERVAL = 0.01
MAX_POLL_INTERVAL = 60.0
MIN_NOTIFY_RATE = 0.01
# Lifetimes of what a person has to act on: a mailed link, a login's second step, a forced
# password change, an unconfirmed authenticator app, the re-authentication window.
_STEPS_OF_A_PERSON = (
    "verification_token_ttl",
    "reset_token_ttl",
    "breach_notice_token_ttl",
    "change_token_ttl",
    "mfa_token_ttl",
    "totp_pending_ttl",
    "reauth_window",
)
MIN_STEP = timedelta(minutes=1)
MAX_DB_TIMEOUT = timedelta(days=1)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


# Variables of the test suite and benchmarks (tests/e2e/server.py), not of the service.
_NOT_SETTINGS = ("AUTHSVC_TEST_", "AUTHSVC_E2E_")


def _unknown_setting(key: str, known: set[str]) -> str:
    """A variable that names no setting: a typo would otherwise leave the default in force
    (AUTHSVC_TRUSTED_PROXY, AUTHSVC_REQUIRE_MFA=ture is caught by its parser)."""
    close = difflib.get_close_matches(key[len("AUTHSVC_") :].lower(), sorted(known), n=1)
    hint = f" (did you mean AUTHSVC_{close[0].upper()}?)" if close else ""
    return f"{key} is not a setting{hint}"


def _keyring_problems(specs: tuple[str, ...]) -> list[str]:
    """What the key ring would refuse at start-up (a 33-byte key, a repeated kid), and a first
    key, the one that encrypts, that is not random (zeros, a pattern, a passphrase) or is
    another entry under a new id, as a line. Later entries only decrypt what is there: a weak
    one stays accepted, so that a ring can move off it with `authsvc keys rotate`."""
    keys: dict[str, bytes] = {}
    for spec in specs:
        kid, _, b64 = spec.partition(":")
        try:
            raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        except ValueError:  # binascii.Error is one
            raw = b""
        well_formed = KEY_ID.fullmatch(kid) and re.fullmatch(r"[A-Za-z0-9_-]{43}=?", b64)
        if not well_formed or len(raw) != 32:
            return ["AUTHSVC_ENCRYPTION_KEYS: each entry must be 'kid:base64url(32 bytes)'"]
        if kid in keys:
            return ["AUTHSVC_ENCRYPTION_KEYS: key ids must be unique"]
        keys[kid] = raw
    if not keys:
        return []
    (first, raw), *others = keys.items()
    if not _looks_random(raw):
        return [
            f"AUTHSVC_ENCRYPTION_KEYS: the first key {first!r} is not 32 random bytes (a "
            "placeholder, a pattern or text); put one from `authsvc keys generate` first"
        ]
    same = [kid for kid, other in others if other == raw]
    if same:
        return [f"AUTHSVC_ENCRYPTION_KEYS: the first key {first!r} is {same[0]!r} again"]
    return []


def _looks_random(raw: bytes) -> bool:
    """False for 32 bytes that did not come from a random generator: fewer than 16 distinct
    values (zeros, a repeated pattern), or printable ASCII only (a passphrase, hex or base64
    text). Of 32 random bytes, about 2e-15 have fewer than 16 distinct values and 2e-14 are
    all printable ASCII."""
    return len(set(raw)) >= 16 and not all(0x20 <= byte < 0x7F for byte in raw)


def _host_of(origin: str) -> str | None:
    try:
        host = urlsplit(origin.strip()).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def origin_of(url: str) -> str | None:
    """The origin of ``url`` as a browser serialises it (the client data's ``origin``):
    scheme and host in lower case, the port only when it is not the scheme's default, and
    nothing else; None without a host, or with a port that is no port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return None
    if not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    shown = f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else ""
    return f"{scheme}://{host}{shown}"


def _is_https_url(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
        return parts.scheme == "https" and bool(parts.hostname)
    except ValueError:
        return False


def _postable_url(url: str) -> bool:
    """Whether urllib can POST to ``url`` (the alert webhook). It takes ``user:password@``
    for part of the host name, so such a URL never reaches its server, and it refuses a port
    that is no number, a space or control character, and a path or query that is not ASCII:
    every alert would be retried without end."""
    url = url.strip()  # as urllib does
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and all(ch.isprintable() and not ch.isspace() for ch in url)
        and (parts.path + parts.query).isascii()
    )


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
        return parts.scheme in {"http", "https"} and bool(parts.hostname)
    except ValueError:
        return False


def _skips_certificate_checks(mail_url: str) -> bool:
    """An SMTP URL with ``verify=false`` (see mail.backends)."""
    try:
        query = urlsplit(mail_url.strip()).query
    except ValueError:  # refused when the backend is made
        return False
    return any(k == "verify" and v.lower() == "false" for k, v in parse_qsl(query))


def _plain_smtp_with_credentials(mail_url: str) -> bool:
    """A plain ``smtp://`` URL (no TLS) that carries a user name or password."""
    try:
        parts = urlsplit(mail_url.strip())
    except ValueError:  # refused when the backend is made
        return False
    return parts.scheme == "smtp" and (parts.username is not None or parts.password is not None)


def _one_address(value: str) -> bool:
    """Whether a From header holding ``value`` names exactly one mailbox (local part and
    domain), as the mail layer sets it: no line break, no list, no bare name."""
    if value.splitlines() != [value]:  # any line break of str.splitlines, as email refuses
        return False
    try:
        header = email.policy.default.header_factory("From", value)
        addresses = header.addresses
    except Exception:  # the parser raises more than ValueError on odd input (AttributeError)
        return False
    # A non-ASCII local part is fine (sent with SMTPUTF8); any other defect is not.
    if any(not isinstance(d, email.errors.NonASCIILocalPartDefect) for d in header.defects):
        return False
    return len(addresses) == 1 and bool(addresses[0].username and addresses[0].domain)


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _parse_duration(raw: str) -> timedelta:
    # Every duration is added to or taken from the current time somewhere: beyond a century
    # that leaves the calendar (OverflowError in every sweep, not one error at start-up).
    match = _DURATION.fullmatch(raw.strip())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else -1
    if not 0 <= seconds <= MAX_DURATION.total_seconds():
        raise ValueError(
            f"expected a duration like 30s, 10m, 24h, at most {MAX_DURATION.days}d, got {raw!r}"
        )
    return timedelta(seconds=seconds)


def _parse_tuple(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def _parse_env(raw: str) -> Env:
    try:
        return Env(raw.strip().lower())
    except ValueError:
        raise ValueError("expected 'development' or 'production'") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "Env": _parse_env,
    "Path": lambda raw: Path(raw),
    "Path | None": lambda raw: Path(raw) if raw else None,
    "str": str,
    "str | None": lambda raw: raw or None,
    "tuple[str, ...]": _parse_tuple,
    "timedelta": _parse_duration,
    "bool": _parse_bool,
    "bool | None": lambda raw: _parse_bool(raw) if raw.strip() else None,
    "int": _parse_int,
    "float": _parse_float,
}


def _parse(type_name: str, raw: str) -> Any:
    return _PARSERS[type_name](raw)
