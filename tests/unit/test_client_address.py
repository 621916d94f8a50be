"""One spelling per client address: what the trail records and the detectors compare."""

from __future__ import annotations

import pytest

from authsvc.ratelimit import address_key, client_address


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("203.0.113.5:4711", "203.0.113.5"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("[::FFFF:203.0.113.5]:443", "203.0.113.5"),
        (" 2001:DB8:0::1 ", "2001:db8::1"),
        ("[2001:db8::1]:8443", "2001:db8::1"),
        ("2001:db8::1%eth0", "2001:db8::1"),
        ("", ""),
        ("unknown", "unknown"),
        ("x" * 300, "x" * 64),
    ],
)
def test_client_address(given, recorded):
    assert client_address(given) == recorded


def test_the_rate_limit_key_keeps_a_whole_ipv6_network_as_one_client():
    assert client_address("2001:db8::1") != client_address("2001:db8::2")
    assert address_key("2001:db8::1") == address_key("[2001:db8::2]:80") == "2001:db8::/64"
    assert address_key("203.0.113.5:4711") == "203.0.113.5"
