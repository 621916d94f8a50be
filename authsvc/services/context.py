"""What every service call needs besides the database session."""

from __future__ import annotations

from dataclasses import dataclass

from authsvc.crypto.blocklist import Blocklist
from authsvc.crypto.keyring import Keyring
from authsvc.crypto.passwords import PasswordHasher
from authsvc.ratelimit import RateLimiter, address_key
from authsvc.settings import Settings


@dataclass(frozen=True, slots=True)
class Deps:
    """App-wide collaborators, built once by ``create_app`` (or the CLI/worker)."""

    settings: Settings
    keyring: Keyring
    hasher: PasswordHasher
    blocklist: Blocklist
    limiter: RateLimiter


@dataclass(frozen=True, slots=True)
class Client:
    """Who is calling: for rate limits and the audit trail."""

    ip: str
    user_agent: str = ""

    @property
    def rate_key(self) -> str:
        """What per-address limits count: the address, or its IPv6 /64."""
        return address_key(self.ip)


SYSTEM = Client(ip="", user_agent="authsvc")
