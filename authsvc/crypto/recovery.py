"""Recovery codes: generation, normalisation and their keyed hash.

OWASP ASVS 5.0 requirement 6.5.2 allows a standard (keyed) hash for look-up secrets of at least
112 bits. Each code is 24 symbols of Crockford's base32 alphabet, 120 bits from the operating
system's CSPRNG, shown as six groups of four (``7k2m-...``). What is stored is
HMAC-SHA-256(key, user id + code) with a key that never reaches the database, so neither a
dump nor a code from another account helps an attacker. Checks compare every stored hash with
``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford: no i, l, o, u
SYMBOLS = 24  # 24 x 5 bits = 120 bits of entropy
GROUP = 4
COUNT = 10
ENTROPY_BITS = SYMBOLS * 5

# Crockford's decoding rules: case-insensitive, i/l read as 1, o read as 0.
_READ_AS = str.maketrans({"i": "1", "l": "1", "o": "0"})
# Separators dropped: "-" and the dashes that mail clients and word processors turn it into as
# a code is copied (hyphen, non-breaking hyphen, en dash, em dash, minus sign).
_SEPARATORS = str.maketrans(dict.fromkeys("-\u2010\u2011\u2013\u2014\u2212"))
_MAX_INPUT = 64


def generate(count: int = COUNT) -> tuple[str, ...]:
    """``count`` distinct fresh codes, formatted for display."""
    codes: list[str] = []
    while len(codes) < count:
        raw = "".join(secrets.choice(ALPHABET) for _ in range(SYMBOLS))
        if raw not in codes:
            codes.append(raw)
    return tuple(display(code) for code in codes)


def display(code: str) -> str:
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def normalize(raw: str) -> str | None:
    """The canonical 24 symbols of a typed code (any case, spaces and dashes ignored), or None."""
    if len(raw) > _MAX_INPUT:
        return None
    code = "".join(raw.split()).translate(_SEPARATORS)
    if not code.isascii():  # str.lower() would read the Kelvin sign (U+212A) as "k"
        return None
    code = code.lower().translate(_READ_AS)
    if len(code) != SYMBOLS or any(ch not in ALPHABET for ch in code):
        return None
    return code


def code_hash(key: bytes, *, user_id: str, code: str) -> str:
    """Keyed hash of a normalised code, bound to its owner."""
    message = f"{user_id}\x1f{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def matches(expected_hashes: list[str], candidate: str) -> int | None:
    """Index of the stored hash equal to ``candidate``; every entry is compared in constant time."""
    found: int | None = None
    for index, expected in enumerate(expected_hashes):
        if hmac.compare_digest(expected.encode(), candidate.encode()) and found is None:
            found = index
    return found
