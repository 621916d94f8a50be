import base64
import hashlib
import statistics
import threading
import time

import argon2
import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authsvc.crypto import passwords
from authsvc.crypto.passwords import (
    MAX_ARGON2_TIME_COST,
    Argon2Params,
    HasherBusy,
    PasswordHasher,
    PasswordPolicyViolation,
    VerifyResult,
    check_length,
    normalize,
)
from authsvc.settings import Settings


def full_width(text: str) -> str:
    """The full-width form of ASCII text, as Japanese and Chinese IMEs type it."""
    return "".join(chr(ord(char) + 0xFEE0) for char in text)


FAST = Argon2Params(time_cost=1, memory_cost_kib=1024, parallelism=1)
OK_CURRENT = VerifyResult(ok=True, needs_rehash=False)
OK_REHASH = VerifyResult(ok=True, needs_rehash=True)
FAILED = VerifyResult(ok=False, needs_rehash=False)

# Django 5.2 PBKDF2PasswordHasher().encode(password, salt, iterations=1000); the second password
# is full-width, which Django hashed as typed (no NFKC).
DJANGO_VECTORS = [
    ("lètmein", "pbkdf2_sha256$1000$seasalt$JgZryXe2Ga8ysg6XbzkLpTdyPQrHqsinbL9BnnhgX4A="),
    (
        full_width("password12"),
        "pbkdf2_sha256$1000$seasalt2$IThohz/itfAZiVXeMuFj0dSL87G86mmMpCbL/3tq5LY=",
    ),
]
# crypt_blowfish test vectors.
BCRYPT_VECTORS = [
    ("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    ("U*U*", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"),
    ("U*U", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    ("U*U", "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
]
SALT_B64 = "c29tZXNhbHRzb21lc2FsdA"
HASH_B64 = "A" * 43


def make_hasher(
    params: Argon2Params = FAST, *, max_concurrent: int = 4, acquire_timeout: float = 5.0
) -> PasswordHasher:
    return PasswordHasher(params, max_concurrent=max_concurrent, acquire_timeout=acquire_timeout)


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return make_hasher()


def pbkdf2_hash(password: str, *, salt: str = "NaCl", iterations: int = 1000) -> str:
    raw = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(raw).decode()}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain", "plain"),
        (full_width("password"), "password"),  # full-width, as Japanese IMEs type it
        ("\ufb01nance", "finance"),  # ligature
        ("e\u0301te\u0301", "été"),  # combining accents compose
        ("\u216b", "XII"),
    ],
)
def test_normalize_is_nfkc(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("password", "kwargs", "expected"),
    [
        ("a" * 7, {}, "too_short"),
        ("a" * 8, {}, None),
        ("a" * 256, {}, None),
        ("a" * 257, {}, "too_long"),
        ("", {}, "too_short"),
        (full_width("passwor"), {}, "too_short"),  # 7 code points after NFKC
        ("e\u0301" * 7, {}, "too_short"),  # 14 code points typed, 7 after NFKC
        ("\ufdfa", {}, None),  # one code point that NFKC expands to 18
        ("😀" * 8, {}, None),  # code points, not UTF-8 or UTF-16 units
        ("a" * 11, {"min_length": 12}, "too_short"),
        ("a" * 65, {"max_length": 64}, "too_long"),
    ],
)
def test_check_length(password: str, kwargs: dict[str, int], expected: str | None) -> None:
    assert check_length(password, **kwargs) == expected


def test_policy_violation_carries_reason() -> None:
    error = PasswordPolicyViolation("breached")
    assert error.reason == "breached"
    assert str(error) == "breached"


def test_hash_is_argon2id_with_the_configured_params(hasher: PasswordHasher) -> None:
    stored = hasher.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert hasher.identify(stored) == "argon2"
    assert stored != hasher.hash("correct horse battery staple")  # salted


@pytest.mark.parametrize(
    ("typed", "later", "expected"),
    [
        ("correct horse battery staple", "correct horse battery staple", OK_CURRENT),
        ("correct horse battery staple", "Correct horse battery staple", FAILED),
        ("correct horse battery staple", "", FAILED),
        (full_width("password123"), "password123", OK_CURRENT),  # NFKC on both sides
        ("cafe\u0301 au lait", "café au lait", OK_CURRENT),
        ("\ud800 lone surrogate", "\ud800 lone surrogate", OK_CURRENT),
        ("\ud800 lone surrogate", "\udc00 lone surrogate", FAILED),
    ],
)
def test_verify_own_hashes(
    hasher: PasswordHasher, typed: str, later: str, expected: VerifyResult
) -> None:
    assert hasher.verify(hasher.hash(typed), later) == expected


def test_changed_params_ask_for_rehash() -> None:
    old, new = make_hasher(), make_hasher(Argon2Params(2, 2048, 2))
    stored = old.hash("tr0ub4dor&3 sunrise")
    assert new.verify(stored, "tr0ub4dor&3 sunrise") == OK_REHASH
    assert new.verify(stored, "tr0ub4dor&3 sunset") == FAILED
    assert new.verify(new.hash("tr0ub4dor&3 sunrise"), "tr0ub4dor&3 sunrise") == OK_CURRENT


@pytest.mark.parametrize(
    ("kind", "needs_rehash"),
    [(argon2.Type.ID, False), (argon2.Type.I, True), (argon2.Type.D, True)],
)
def test_verify_any_argon2_variant(
    hasher: PasswordHasher, kind: argon2.Type, needs_rehash: bool
) -> None:
    foreign = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=kind)
    stored = foreign.hash("imported from elsewhere")
    assert hasher.identify(stored) == "argon2"
    assert hasher.verify(stored, "imported from elsewhere") == VerifyResult(True, needs_rehash)
    assert hasher.verify(stored, "imported from elsewhere!") == FAILED


@pytest.mark.parametrize(("password", "stored"), BCRYPT_VECTORS)
def test_verify_bcrypt_vectors(hasher: PasswordHasher, password: str, stored: str) -> None:
    assert hasher.identify(stored) == "bcrypt"
    assert hasher.verify(stored, password) == OK_REHASH
    assert hasher.verify(stored, password + "U") == FAILED


@pytest.mark.parametrize("prefix", [b"2a", b"2b", b"2y"])
def test_verify_bcrypt_round_trip(hasher: PasswordHasher, prefix: bytes) -> None:
    stored = bcrypt.hashpw(b"legacy secret", bcrypt.gensalt(4)).decode()
    stored = f"${prefix.decode()}${stored[4:]}"
    assert hasher.verify(stored, "legacy secret") == OK_REHASH
    assert hasher.verify(stored, "legacy secreT") == FAILED


def test_bcrypt_checks_the_first_72_bytes_like_the_legacy_system(hasher: PasswordHasher) -> None:
    long_password = "é" * 50  # 100 UTF-8 bytes
    legacy = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(4)).decode()
    assert hasher.verify(legacy, long_password) == OK_REHASH


@pytest.mark.parametrize(("password", "stored"), DJANGO_VECTORS)
def test_verify_django_pbkdf2_vectors(hasher: PasswordHasher, password: str, stored: str) -> None:
    assert hasher.identify(stored) == "pbkdf2_sha256"
    assert hasher.verify(stored, password) == OK_REHASH
    assert hasher.verify(stored, password[:-1]) == FAILED


def test_legacy_hash_of_a_non_nfkc_password_still_verifies(hasher: PasswordHasher) -> None:
    stored = pbkdf2_hash(full_width("password123"))  # hashed as typed by the old system
    assert hasher.verify(stored, full_width("password123")) == OK_REHASH
    assert hasher.verify(stored, "password123") == FAILED
    assert hasher.verify(pbkdf2_hash("password123"), full_width("password123")) == OK_REHASH


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "password",
        "$argon2id$",
        "$argon2id$v=19$m=1024,t=1,p=1$",
        f"$argon2id$v=19$m=1024,t=1,p=1${SALT_B64}",
        f"$argon2id$v=19$m=1024,t=1,p=1${SALT_B64}${HASH_B64}\n",
        f"$argon2id$v=19$m=1024,t=1,p=0${SALT_B64}${HASH_B64}",
        f"$argon2id$v=19$m=4,t=1,p=1${SALT_B64}${HASH_B64}",  # below 8 KiB per lane
        f"$argon2id$v=19$m=1024,t=0,p=1${SALT_B64}${HASH_B64}",
        f"$argon2id$v=19$m=٣٣٣٣,t=1,p=1${SALT_B64}${HASH_B64}",  # non-ASCII digits
        f"$argon2id$v=18$m=1024,t=1,p=1${SALT_B64}${HASH_B64}",
        f"$argon2x$v=19$m=1024,t=1,p=1${SALT_B64}${HASH_B64}",
        f"$argon2id$v=19$m=1024,t=1,p=1${SALT_B64}${HASH_B64[:-1]}!",
        "$2b$04$" + "!" * 53,
        "$2b$03$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",  # cost below 4
        "$2b$17$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",  # above the ceiling
        "$2b$14$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",  # seconds per check
        "$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOe",
        "pbkdf2_sha256$0$salt$" + HASH_B64 + "=",
        "pbkdf2_sha256$10000001$salt$" + HASH_B64 + "=",  # above the ceiling
        "pbkdf2_sha256$1200001$salt$" + HASH_B64 + "=",  # just above it
        "pbkdf2_sha256$1000$$" + HASH_B64 + "=",
        "pbkdf2_sha256$1000$salt$" + HASH_B64,
        "pbkdf2_sha256$1000$salt$" + HASH_B64 + "==",
        "pbkdf2_sha1$1000$salt$" + HASH_B64 + "=",
        "pbkdf2_sha256$1000$sält$" + HASH_B64 + "=",
        "PBKDF2_SHA256$1000$salt$" + HASH_B64 + "=",
        "\udcff\x00",
    ],
)
def test_unknown_or_malformed_hashes_fail_closed(hasher: PasswordHasher, stored: str) -> None:
    assert hasher.identify(stored) is None
    assert hasher.verify(stored, "password") == FAILED


@pytest.mark.parametrize(
    "stored",
    [
        f"$argon2id$v=19$m=2097152,t=1,p=1${SALT_B64}${HASH_B64}",  # 2 GiB: above the ceiling
        f"$argon2id$v=19$m=1024,t={MAX_ARGON2_TIME_COST + 1},p=1${SALT_B64}${HASH_B64}",
        f"$argon2id$v=19$m=1048576,t=2,p=16${SALT_B64}${HASH_B64}",  # 1 GiB x 2: seconds
        f"$argon2id$v=19$m=262144,t=2,p=1${SALT_B64}${HASH_B64}",  # 256 MiB x 2 passes
        f"$argon2id$v=19$m=1024,t=1,p=9${SALT_B64}${HASH_B64}",  # lanes above the ceiling
    ],
)
def test_argon2_hashes_above_the_ceilings_are_not_imported(
    hasher: PasswordHasher, stored: str
) -> None:
    # Refused from other systems; one this service stored under earlier settings is still
    # checked (below), so it is not verified here: the costliest would take seconds.
    assert hasher.identify(stored) is None


def test_hashes_made_under_earlier_costlier_settings_verify_and_are_rehashed() -> None:
    # Settings once above the import ceilings, then lowered: their users must still sign in.
    for earlier in (Argon2Params(MAX_ARGON2_TIME_COST + 1, 64, 1), Argon2Params(1, 1024, 9)):
        stored = make_hasher(earlier).hash("slow but fine")
        assert make_hasher().identify(stored) is None
        assert make_hasher().verify(stored, "slow but fine") == OK_REHASH
        assert make_hasher().verify(stored, "slow but wrong") == FAILED


def test_an_imported_argon2_hash_of_a_non_nfkc_password_still_verifies() -> None:
    # Made elsewhere from the password as typed; this service hashes the NFKC form.
    typed = "Kaffee\u2122 mit Milch\u00b2"
    foreign = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(typed)
    assert make_hasher().verify(foreign, typed) == OK_REHASH
    assert make_hasher().verify(foreign, normalize(typed)) == FAILED
    # Its own hashes (current settings) are of the NFKC form only: one check, not two.
    own = make_hasher().hash(typed)
    assert make_hasher().verify(own, typed) == OK_CURRENT


def test_an_imported_argon2_hash_with_the_current_settings_of_a_non_nfkc_password_verifies() -> (
    None
):
    # Another system with the same (common) settings, e.g. OWASP's m=19 MiB, t=2, p=1, hashed
    # the password as typed: its hashes look current here, but are not of the NFKC form.
    typed = "Kaffee\u2122 mit Milch\u00b2"
    foreign = argon2.PasswordHasher(
        time_cost=FAST.time_cost, memory_cost=FAST.memory_cost_kib, parallelism=FAST.parallelism
    ).hash(typed)
    hasher = make_hasher()
    assert not hasher._needs_rehash(foreign)
    assert hasher.verify(foreign, typed) == OK_REHASH  # and stored in the NFKC form next
    assert hasher.verify(foreign, normalize(typed)) == FAILED
    assert hasher.verify(hasher.hash(typed), typed) == OK_CURRENT


@pytest.mark.parametrize("guess", ["a wrong guess", "a wrong guess\u00b2", full_width("guess")])
def test_an_unknown_email_costs_as_many_argon2_checks_as_a_wrong_password(
    monkeypatch: pytest.MonkeyPatch, guess: str
) -> None:
    hasher = make_hasher()
    stored = hasher.hash("the right password")
    hasher.dummy_verify("warm up")  # the dummy hash is made once, outside the count
    calls: list[str] = []
    check = hasher._check_argon2

    def counted(expected_hash: str, password: str) -> bool:
        calls.append(password)
        return check(expected_hash, password)

    monkeypatch.setattr(hasher, "_check_argon2", counted)
    assert hasher.verify(stored, guess) == FAILED
    registered = len(calls)
    calls.clear()
    hasher.dummy_verify(guess)
    assert len(calls) == registered


def test_own_params_above_the_ceilings_still_verify() -> None:
    heavy = make_hasher(Argon2Params(MAX_ARGON2_TIME_COST + 1, 64, 1))
    stored = heavy.hash("slow but fine")
    assert heavy.identify(stored) == "argon2"
    assert heavy.verify(stored, "slow but fine") == OK_CURRENT


def test_dummy_verify_uses_one_lazily_made_hash_with_the_same_params() -> None:
    fresh = make_hasher()
    assert fresh._dummy_hash is None
    fresh.dummy_verify("guess")
    dummy = fresh._dummy_hash
    assert dummy is not None
    assert dummy.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    fresh.dummy_verify("another guess")
    assert fresh._dummy_hash is dummy


def test_busy_hasher_raises_after_the_timeout() -> None:
    busy = make_hasher(max_concurrent=1, acquire_timeout=0.05)
    stored = busy.hash("wait for me please")
    busy._slots.acquire()  # another request holds the only slot
    try:
        with pytest.raises(HasherBusy):
            busy.verify(stored, "wait for me please")
        with pytest.raises(HasherBusy):
            busy.hash("wait for me please")
        with pytest.raises(HasherBusy):
            busy.dummy_verify("wait for me please")
    finally:
        busy._slots.release()
    assert busy.verify(stored, "wait for me please") == OK_CURRENT


def test_a_rehash_takes_only_a_free_slot_and_never_waits() -> None:
    hasher = make_hasher(max_concurrent=1, acquire_timeout=3600)
    hasher._slots.acquire()  # another request holds the only slot
    try:
        started = time.monotonic()
        assert hasher.rehash("upgrade me later") is None
        assert time.monotonic() - started < 60  # at once, not after the hour
    finally:
        hasher._slots.release()
    rehashed = hasher.rehash("upgrade me now")
    assert rehashed is not None
    assert hasher.verify(rehashed, "upgrade me now") == OK_CURRENT


def test_time_already_queued_counts_against_the_wait_for_a_slot() -> None:
    # An hour's timeout, but the request was queued (by the server) long enough ago.
    hasher = make_hasher(max_concurrent=1, acquire_timeout=3600)
    stored = hasher.hash("queued for long")
    queued_long_ago = time.monotonic() - 3600
    token = passwords.queued_since.set(queued_long_ago)
    try:
        assert hasher.verify(stored, "queued for long") == OK_CURRENT  # a free slot is taken
        # Served from then on: the request's next hash (a rehash) is not held to its queue time.
        assert passwords.queued_since.get() is None
        passwords.queued_since.set(queued_long_ago)
        hasher._slots.acquire()
        try:
            started = time.monotonic()
            with pytest.raises(HasherBusy):
                hasher.verify(stored, "queued for long")
            assert time.monotonic() - started < 60  # refused at once, not after the hour
        finally:
            hasher._slots.release()
    finally:
        passwords.queued_since.reset(token)


def test_concurrent_verifications_share_the_slots(hasher: PasswordHasher) -> None:
    stored = hasher.hash("many at once")
    results: list[VerifyResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(hasher.verify(stored, "many at once")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [OK_CURRENT] * 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_cost": 0, "memory_cost_kib": 1024, "parallelism": 1},
        {"time_cost": 1, "memory_cost_kib": 1024, "parallelism": 0},
        {"time_cost": 1, "memory_cost_kib": 15, "parallelism": 2},
    ],
)
def test_invalid_params_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="argon2"):
        Argon2Params(**kwargs)


@pytest.mark.parametrize(("slots", "timeout"), [(0, 1.0), (1, -1.0)])
def test_invalid_limits_are_refused(slots: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        PasswordHasher(FAST, max_concurrent=slots, acquire_timeout=timeout)


def test_default_settings_params_meet_owasp_and_round_trip() -> None:
    defaults = Settings()
    params = Argon2Params(
        time_cost=defaults.argon2_time_cost,
        memory_cost_kib=defaults.argon2_memory_kib,
        parallelism=defaults.argon2_parallelism,
    )
    # OWASP: m=19 MiB with t=2, or an equivalent m*t trade-off, never below 7 MiB.
    assert params.memory_cost_kib >= 7168
    assert params.memory_cost_kib * params.time_cost >= 19456 * 2
    real = make_hasher(params, max_concurrent=defaults.max_concurrent_hashes)
    stored = real.hash("Tr0ub4dor&3 but longer")
    prefix = f"$argon2id$v=19$m={params.memory_cost_kib},t={params.time_cost},"
    assert stored.startswith(prefix)
    assert real.verify(stored, "Tr0ub4dor&3 but longer") == OK_CURRENT


def _mutations(draw: st.DrawFn) -> str:
    stored, first = draw(
        st.sampled_from(
            [
                (FAST_HASHES[0], 0),
                (FAST_HASHES[1], 7),  # keep the bcrypt cost: cost 14+ takes seconds
                (FAST_HASHES[2], 0),
            ]
        )
    )
    at = draw(st.integers(first, len(stored) - 1))
    return stored[:at] + draw(st.characters()) + stored[at + 1 :]


FAST_HASHES = [
    PasswordHasher(FAST, max_concurrent=1, acquire_timeout=1).hash("seed"),
    bcrypt.hashpw(b"seed", bcrypt.gensalt(4)).decode(),
    pbkdf2_hash("seed", iterations=100),
]
HASH_STRINGS = st.one_of(
    st.text(),
    st.composite(_mutations)(),
    st.from_regex(
        r"\$argon2(id|i|d)\$v=1[69]\$m=[0-9]{1,4},t=[0-9],p=[0-9]\$[A-Za-z0-9+/]{8,30}"
        r"\$[A-Za-z0-9+/]{12,50}",
        fullmatch=True,
    ),
    st.from_regex(r"\$2[abxy]\$0[3-6]\$[./A-Za-z0-9]{50,56}", fullmatch=True),
    st.from_regex(r"pbkdf2_sha256\$[0-9]{1,4}\$[^$]{0,20}\$[A-Za-z0-9+/=]{40,46}", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(stored=HASH_STRINGS, password=st.text())
def test_verify_identify_and_check_length_never_raise(stored: str, password: str) -> None:
    hasher = make_hasher()
    family = hasher.identify(stored)
    assert family in {None, "argon2", "bcrypt", "pbkdf2_sha256"}
    result = hasher.verify(stored, password)
    assert isinstance(result.ok, bool)
    assert isinstance(result.needs_rehash, bool)
    if family is None:
        assert result == FAILED
    assert check_length(password) in {None, "too_short", "too_long"}
    assert check_length(stored, min_length=0, max_length=10) in {None, "too_short", "too_long"}


@pytest.mark.parametrize(
    "stored",
    [
        f"$argon2id$v=19$m=65536,t=3,p=4${SALT_B64}${HASH_B64}",  # RFC 9106, second choice
        f"$argon2id$v=19$m=47104,t=1,p=1${SALT_B64}${HASH_B64}",  # OWASP
        f"$argon2id$v=19$m=7168,t=5,p=1${SALT_B64}${HASH_B64}",  # OWASP
        f"$argon2id$v=19$m=262144,t=1,p=8${SALT_B64}${HASH_B64}",  # at every ceiling
        "$2b$12$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        "$2b$13$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        "pbkdf2_sha256$1000000$salt$" + HASH_B64 + "=",  # Django 5.2
    ],
)
def test_the_usual_settings_of_other_systems_are_under_the_ceilings(
    hasher: PasswordHasher, stored: str
) -> None:
    assert hasher.identify(stored) is not None


def test_a_check_cheaper_than_a_current_one_takes_as_long() -> None:
    # After the cost settings are raised, an account whose hash was made under the old ones
    # must not answer a wrong password faster than an unknown email (a dummy at the new cost).
    cheap = make_hasher().hash("the old settings")  # m=1024, t=1: well under a millisecond
    current = PasswordHasher(
        Argon2Params(time_cost=2, memory_cost_kib=16 * 1024, parallelism=1),
        max_concurrent=1,
        acquire_timeout=5,
    )
    unknown = []
    for _ in range(3):
        started = time.perf_counter()
        current.dummy_verify("an unknown email's guess")
        unknown.append(time.perf_counter() - started)
    quickest = min(unknown)
    assert quickest > 0.002

    # Each as long as one of the current checks: the pad is one drawn from the recent ones,
    # whose times vary with the load (unpadded, the cheap one would take a millisecond).
    for stored in (cheap, "$2b$04$" + "a" * 53, "not a hash"):
        started = time.perf_counter()
        result = current.verify(stored, "a wrong guess")
        took = time.perf_counter() - started
        assert result.ok is False
        assert took >= 0.5 * quickest, (stored[:10], took, quickest)
    assert current.verify(cheap, "the old settings") == VerifyResult(ok=True, needs_rehash=True)


def test_a_padded_check_holds_the_slot_and_a_correct_password_is_not_padded() -> None:
    # Padding outside the slot would let a request alongside find the slot free sooner when
    # the email is registered (with an outdated hash) than when it is unknown.
    cheap = make_hasher().hash("the old settings")
    current = make_hasher(
        Argon2Params(time_cost=2, memory_cost_kib=1024, parallelism=1), max_concurrent=1
    )
    current._observe(0.4)  # as if current checks took 400 ms here
    padded = threading.Thread(target=current.verify, args=(cheap, "a wrong guess"))
    padded.start()
    time.sleep(0.1)
    try:
        assert current._slots.acquire(timeout=0.05) is False  # still held while padding
    finally:
        padded.join()

    started = time.perf_counter()
    assert current.verify(cheap, "the old settings") == VerifyResult(ok=True, needs_rehash=True)
    assert time.perf_counter() - started < 0.3


@pytest.mark.parametrize(
    "stored",
    [
        "$2b$05$" + "a" * 53,
        "$2a$04$" + "a" * 53,
        "pbkdf2_sha256$1000$NaCl$" + "A" * 43 + "=",
        "$argon2id$v=19$m=1024,t=1,p=1$" + "a" * 22 + "$" + "b" * 43,
        "$argon2i$v=19$m=2048,t=2,p=2$" + "a" * 22 + "$" + "b" * 43,
    ],
)
def test_a_sample_hash_has_the_cost_of_the_hash_it_stands_for(
    hasher: PasswordHasher, stored: str
) -> None:
    prefix = passwords.cost_prefix(stored)
    assert prefix is not None and stored.startswith(prefix) and prefix.endswith("$")

    sample = passwords.sample_hash(prefix)

    assert passwords.cost_prefix(sample) == prefix
    assert sample != stored
    assert hasher.identify(sample) == hasher.identify(stored)


def test_no_cost_prefix_for_what_is_no_hash() -> None:
    for stored in ("not a hash", "", "$2b$", "$argon2id$v=19$m=x,t=1,p=1$", "md5$1$x"):
        assert passwords.cost_prefix(stored) is None
    with pytest.raises(ValueError):
        passwords.sample_hash("$2b$")


def test_failed_checks_take_as_long_as_one_of_the_costliest_stored_hash() -> None:
    # An account imported with a costlier hash (bcrypt) answers a wrong password in bcrypt's
    # time; an unknown email, or a wrong password for an account with a current hash, must too.
    current = make_hasher(max_concurrent=1)  # Argon2id m=1024, t=1: about a millisecond
    costly = bcrypt.hashpw(b"the imported one", bcrypt.gensalt(8)).decode()
    prefix = passwords.cost_prefix(costly)
    assert prefix is not None and current.unknown_cost(costly) == prefix
    assert current.floor() == 1.0

    current.calibrate(prefix, passwords.sample_hash(prefix))

    assert current.unknown_cost(costly) is None and current.calibrated() == {prefix}
    assert current.floor() > 2.0  # bcrypt 8 costs several times an Argon2id check at 1 MiB
    started = time.perf_counter()
    assert current.verify(costly, "a wrong guess").ok is False
    bcrypt_check = time.perf_counter() - started
    own = current.hash("the current one")
    for attempt in (
        lambda: current.dummy_verify("an unknown email's guess"),
        lambda: current.verify(own, "a wrong guess"),
    ):
        started = time.perf_counter()
        attempt()
        assert time.perf_counter() - started >= 0.8 * bcrypt_check
    started = time.perf_counter()
    assert current.verify(own, "the current one").ok  # whoever knows it knows the account
    assert time.perf_counter() - started < 0.5 * bcrypt_check

    current.forget(prefix)
    assert current.floor() == 1.0


@pytest.mark.parametrize("right", ["the right password", full_width("the right one")])
def test_a_refused_right_password_takes_the_time_of_a_wrong_one(right: str) -> None:
    # A disabled, unverified or breach-invalidated account answers its right password as it
    # answers a wrong one, in a wrong one's time: the same checks, so the same spread. Padded
    # up to the average check instead, it never answered faster than that average, where half
    # the wrong passwords do (and every unknown email's dummy check), which a few dozen tries
    # with a leaked password told apart.
    hasher = make_hasher(
        Argon2Params(time_cost=1, memory_cost_kib=4096, parallelism=1), max_concurrent=1
    )
    stored = hasher.hash(right)
    wrong = "a wrong guess" if right.isascii() else full_width("a wrong one")
    for _ in range(5):
        hasher.dummy_verify(wrong)

    def took(password: str, *, refused: bool) -> float:
        started = time.perf_counter()
        hasher.verify(stored, password, refused=refused)
        return time.perf_counter() - started

    refused_times, wrong_times = [], []
    for _ in range(150):
        refused_times.append(took(right, refused=True))
        wrong_times.append(took(wrong, refused=False))
    median_wrong = statistics.median(wrong_times)
    quicker = sum(t < median_wrong for t in refused_times) / len(refused_times)
    assert quicker > 0.3  # about a half, as for any two series of the same checks
    assert statistics.median(refused_times) < 1.1 * median_wrong


def test_a_wrong_password_of_a_cheaper_hash_takes_as_long_as_a_current_check_does() -> None:
    # After the cost settings are raised, an account whose hash was made under the old ones
    # is padded to a current check; an unknown email's dummy check is one, unpadded, and its
    # times spread as checks do. Padded up to the average check, such an account never
    # answered faster than that average, where half the unknown emails do: a few dozen tries
    # told it apart (150 each: median 21% slower, KS p = 6e-17). Its pad is now the time of
    # a recent current check, drawn at random.
    current = make_hasher(
        Argon2Params(time_cost=2, memory_cost_kib=1024, parallelism=1), max_concurrent=1
    )
    cheap = make_hasher().hash("the old settings")  # m=1024, t=1: half a current check
    for seconds in [0.002, 0.06] * (passwords.RECENT_CHECKS // 2):
        current._observe(seconds)  # as if current checks here took either 2 or 60 ms
    assert current.floor() == 1.0

    times = []
    for _ in range(20):
        started = time.perf_counter()
        assert current.verify(cheap, "a wrong guess") == FAILED
        times.append(time.perf_counter() - started)

    assert min(times) < 0.02  # some as quick as the quick checks,
    assert max(times) > 0.05  # some as slow as the slow ones, none bunched at the average
