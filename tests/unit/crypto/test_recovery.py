import math
import re
import secrets

import pytest

from authsvc.crypto import recovery

FORMAT = re.compile(r"^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){5}$")
CODE_GROUPS = ("abcd", "efgh", "jkmn", "pqrs", "tvwx", "yz01")


def test_ten_distinct_codes_of_at_least_112_bits():
    codes = recovery.generate()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(FORMAT.match(code) for code in codes)
    assert recovery.SYMBOLS * math.log2(len(recovery.ALPHABET)) == recovery.ENTROPY_BITS
    assert recovery.ENTROPY_BITS >= 112  # OWASP ASVS 5.0 6.5.2: a plain keyed hash suffices


def test_symbols_are_spread_over_the_whole_alphabet():
    seen = "".join(code.replace("-", "") for _ in range(20) for code in recovery.generate())
    assert set(seen) == set(recovery.ALPHABET)


@pytest.mark.parametrize(
    "typed",
    [
        "abcd-efgh-jkmn-pqrs-tvwx-yz01",
        "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01",
        "abcd efgh jkmn pqrs tvwx yz01",
        "abcdefghjkmnpqrstvwxyz01",
        " abcd-efgh-jkmn-pqrs-tvwx-yzOI ",  # O read as 0, I as 1 (Crockford)
        "abcd-efgh-jkmn-pqrs-tvwx-yzoL",
    ],
)
def test_normalize_accepts_how_people_type_codes(typed):
    assert recovery.normalize(typed) == "abcdefghjkmnpqrstvwxyz01"


@pytest.mark.parametrize(
    "dash",
    [
        "\u2010",  # hyphen
        "\u2011",  # non-breaking hyphen
        "\u2013",  # en dash
        "\u2014",  # em dash
        "\u2212",  # minus sign
    ],
)
def test_normalize_accepts_the_dashes_that_copying_turns_hyphens_into(dash):
    # Mail clients and word processors replace "-" as a code is copied out of them.
    assert recovery.normalize(dash.join(CODE_GROUPS)) == "abcdefghjkmnpqrstvwxyz01"
    assert recovery.normalize(f" {dash} ".join(CODE_GROUPS)) == "abcdefghjkmnpqrstvwxyz01"


@pytest.mark.parametrize(
    "separator",
    [
        "_",
        ".",
        "/",
        "\u2012",  # figure dash: not among the ones copying makes
        "\uff0d",  # fullwidth hyphen-minus
        "\u00ad",  # soft hyphen
    ],
)
def test_normalize_refuses_other_separators(separator):
    assert recovery.normalize(separator.join(CODE_GROUPS)) is None


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "abcd",
        "abcd-efgh-jkmn-pqrs-tvwx-yz0",
        "abcd-efgh-jkmn-pqrs-tvwx-yz012",
        "abcd-efgh-jkmn-pqrs-tvwx-yz0u",
        "abcd-efgh-jkmn-pqrs-tvwx-yz0!",
        "a" * 100,
    ],
)
def test_normalize_refuses_other_shapes(typed):
    assert recovery.normalize(typed) is None


def test_hash_is_keyed_and_bound_to_the_user():
    key = secrets.token_bytes(32)
    code = recovery.normalize(recovery.generate(1)[0])
    assert code is not None
    digest = recovery.code_hash(key, user_id="u1", code=code)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert code not in digest
    assert recovery.code_hash(key, user_id="u1", code=code) == digest
    assert recovery.code_hash(key, user_id="u2", code=code) != digest
    assert recovery.code_hash(secrets.token_bytes(32), user_id="u1", code=code) != digest


def test_matches_finds_the_index_or_none():
    hashes = [f"{i:064x}" for i in range(10)]
    assert recovery.matches(hashes, hashes[7]) == 7
    assert recovery.matches(hashes, "f" * 64) is None
    assert recovery.matches([], hashes[0]) is None
