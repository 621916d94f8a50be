"""Typed settings, read once from ``AUTHSVC_*`` environment variables.

``Settings.from_env`` is the only reader of the environment in the package.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any


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
    database_url: str = ""  # empty: sqlite file under var_dir
    redis_url: str | None = None
    mail_url: str = "console://"
    mail_from: str = "authsvc <no-reply@localhost>"
    encryption_keys: tuple[str, ...] = ()  # "kid:base64url-32-bytes"; empty: dev keys
    public_url: str = "http://127.0.0.1:8000"
    jwt_audience: str = "authsvc"
    access_token_ttl: timedelta = timedelta(minutes=10)
    refresh_token_ttl: timedelta = timedelta(days=30)
    verification_token_ttl: timedelta = timedelta(hours=24)
    reset_token_ttl: timedelta = timedelta(hours=1)
    change_token_ttl: timedelta = timedelta(minutes=10)
    mfa_token_ttl: timedelta = timedelta(minutes=5)
    reauth_window: timedelta = timedelta(minutes=10)
    require_mfa: bool = False
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    argon2_parallelism: int = 1
    max_concurrent_hashes: int = 2
    hash_queue_timeout: float = 2.0
    password_min_length: int = 8
    password_max_length: int = 256
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
    ui_enabled: bool = True
    outbox_poll_interval: float = 0.5
    allow_insecure_production: bool = False
    log_level: str = "INFO"

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
        if self.argon2_memory_kib < 8 * self.argon2_parallelism or self.argon2_time_cost < 1:
            out.append("AUTHSVC_ARGON2_*: invalid Argon2 parameters")
        if self.max_concurrent_hashes < 1:
            out.append("AUTHSVC_MAX_CONCURRENT_HASHES must be >= 1")
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
        for key in self.encryption_keys:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}:[A-Za-z0-9_=-]{43,44}", key):
                out.append("AUTHSVC_ENCRYPTION_KEYS: each entry must be 'kid:base64url(32 bytes)'")
                break
        return out


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _parse_duration(raw: str) -> timedelta:
    match = _DURATION.match(raw.strip())
    if not match:
        raise ValueError(f"expected a duration like 30s, 10m, 24h, got {raw!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _parse_tuple(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


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
    "int": _parse_int,
    "float": _parse_float,
}


def _parse(type_name: str, raw: str) -> Any:
    return _PARSERS[type_name](raw)
