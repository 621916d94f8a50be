"""Named rate-limit policies over ``limits`` (moving window; memory or Redis storage)."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Mapping
from typing import Any

from limits import RateLimitItem, parse, storage, strategies
from limits.storage import StorageTypes

from authsvc.errors import RateLimited

IPV6_PREFIX = 64  # one subscriber's network: a single host can use any address in it


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_ADDRESS_LENGTH = 64  # what the audit trail and the sessions table keep


def parse_address(ip: str) -> IPAddress | None:
    """The address in one of its spellings (case, leading zeros, brackets, a zone id, a port
    some proxies append, an IPv4-mapped IPv6 address), or None if it is not one."""
    text = ip.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(ip: str) -> str:
    """How a client address is recorded and compared: one spelling per address, so that
    limits, detectors and the audit trail count one client once; anything unparsable (only
    possible behind a trusted proxy that passes garbage on) as given, cut to 64 characters."""
    address = parse_address(ip)
    return str(address) if address is not None else ip[:MAX_ADDRESS_LENGTH]


def address_key(ip: str) -> str:
    """The rate-limit key of a client address: one per IPv4 address and one per IPv6 /64, in
    any spelling (see ``parse_address``); anything unparsable is keyed as given."""
    address = parse_address(ip)
    if address is None:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


# How long one Redis command, or opening a connection, may take before the request that needs
# it fails with 503 `unavailable`. redis-py waits without end by default: a Redis that stopped
# answering without closing its connections (a stalled process, a network partition, a failover
# that drops packets) held every request thread that reached it, until the whole server, /healthz
# included, answered nothing. A ``socket_timeout`` or ``socket_connect_timeout`` in the URL's
# query string takes precedence (redis:// and rediss:// URLs).
REDIS_TIMEOUT_SECONDS = 2.0


def open_storage(url: str) -> StorageTypes:
    """The ``limits`` storage behind ``url`` (memory or Redis), with Redis commands and
    connections bounded by ``REDIS_TIMEOUT_SECONDS``."""
    if url.startswith("memory://"):
        return storage.storage_from_string(url)
    timeouts = {
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    }
    options: dict[str, Any] = dict(timeouts)
    if url.startswith("redis+sentinel://"):
        options["sentinel_kwargs"] = timeouts  # the sentinels' own connections
    return storage.storage_from_string(url, **options)


def _key(part: str) -> str:
    # Emails and IPs are keyed by digest so the limiter storage holds no addresses.
    return hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    """``hit``/``test`` raise ``RateLimited(retry_after)`` when a policy is exhausted."""

    def __init__(self, storage_url: str, policies: Mapping[str, str]) -> None:
        self._storage = open_storage(storage_url)
        self._strategy = strategies.MovingWindowRateLimiter(self._storage)
        self._items: dict[str, RateLimitItem] = {
            name: parse(spec) for name, spec in policies.items()
        }

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(self._items)

    def hit(self, policy: str, *parts: str) -> None:
        """Count one event; raise if the policy was already exhausted."""
        item = self._items[policy]
        ident = _key("\x1f".join(parts))
        if not self._strategy.hit(item, policy, ident):
            raise self._refusal(item, policy, ident)

    def test(self, policy: str, *parts: str) -> None:
        """Raise if one more event would exceed the policy; count nothing."""
        item = self._items[policy]
        ident = _key("\x1f".join(parts))
        if not self._strategy.test(item, policy, ident):
            raise self._refusal(item, policy, ident)

    def _refusal(self, item: RateLimitItem, policy: str, ident: str) -> RateLimited:
        stats = self._strategy.get_window_stats(item, policy, ident)
        return RateLimited(max(1, math.ceil(stats.reset_time - time.time())), policy=policy)

    def reset(self) -> None:
        """Forget every counter (tests, and `authsvc` operators after an incident review)."""
        self._storage.reset()

    def check(self) -> bool:
        """Whether the storage counts: one write to a key that expires, as every throttled
        request makes. A Redis that answers PING but refuses writes (a read-only replica after
        a failover, out of memory) refuses every throttled request."""
        self._storage.incr("authsvc-readiness", 10)
        return True
