"""Password hashing: Argon2id, NFKC, rehash check, dummy verify, legacy hash import.

Nothing here raises a domain error. ``verify`` and ``identify`` never raise for any hash string;
``hash``, ``verify`` and ``dummy_verify`` raise ``HasherBusy`` when no hashing slot frees up in
time (``rehash`` returns None when none is free at once), and ``check_policy`` (in
``blocklist``) raises ``PasswordPolicyViolation``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, TypeVar

import argon2
import bcrypt

PolicyReason = Literal["too_short", "too_long", "breached", "context_word"]
HashFamily = Literal["argon2", "bcrypt", "pbkdf2_sha256"]
_T = TypeVar("_T")

# Ceilings for *stored* hashes, so that one imported hash cannot hold a worker's hashing slot
# for seconds (every wrong-password login with that account's email would) or allocate
# gigabytes. Each admits the common settings of other systems and costs at most about a
# second here. Hashes above them are treated like unknown formats (identify() -> None).
MAX_ARGON2_MEMORY_KIB = 1 << 18  # 256 MiB
MAX_ARGON2_TIME_COST = 10
MAX_ARGON2_PARALLELISM = 8
# memory x passes: admits RFC 9106's 64 MiB x 3 and every OWASP setting, not 1 GiB x 2.
MAX_ARGON2_WORK_KIB = 1 << 18
# The most AUTHSVC_ARGON2_* admit (settings.MAX_ARGON2_*): a hash this service made under any
# earlier settings is within them.
MAX_OWN_ARGON2_MEMORY_KIB = 4 * 1024 * 1024
MAX_OWN_ARGON2_TIME_COST = 20
MAX_BCRYPT_COST = 13  # about 0.6 s per check; 10 to 12 are the usual settings
MAX_PBKDF2_ITERATIONS = 1_200_000  # Django 5.2 uses 1,000,000
BCRYPT_MAX_PASSWORD_BYTES = 72  # bcrypt only ever used the first 72 bytes
# Failed checks are padded to this many times the average check of the costliest stored hash,
# when it costs more than a current one (PasswordHasher.floor): its checks vary by a few per
# cent on a quiet machine, so nearly all of them end before the padded time.
HEADROOM = 1.25
# Current checks whose times padding draws from (see PasswordHasher._pad): about a second's at
# full load with the default settings (a few seconds' on a quieter server), so that a draw
# follows the load as the checks it stands for do.
RECENT_CHECKS = 64

_ARGON2_RE = re.compile(
    r"\$argon2(?:id|i|d)\$(?:v=(?:16|19)\$)?m=([0-9]{1,10}),t=([0-9]{1,10}),p=([0-9]{1,3})"
    r"\$[A-Za-z0-9+/]{11,64}\$[A-Za-z0-9+/]{16,128}",
    re.ASCII,
)
_BCRYPT_RE = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}", re.ASCII)
_PBKDF2_RE = re.compile(
    r"pbkdf2_sha256\$([1-9][0-9]{0,8})\$([!-#%-~]{1,128})\$([A-Za-z0-9+/]{43}=)", re.ASCII
)
# A hash's cost: its text up to the salt (algorithm, version and parameters).
_COST_PREFIX_RE = re.compile(
    r"(\$argon2(id|i|d)\$(?:v=(16|19)\$)?m=([0-9]+),t=([0-9]+),p=([0-9]+)\$)"
    r"|(\$(2[aby])\$([0-9]{2})\$)"
    r"|(pbkdf2_sha256\$([0-9]+)\$)",
    re.ASCII,
)


def cost_prefix(stored_hash: str) -> str | None:
    """The part of a stored hash that fixes what a check of it costs: ``$2b$12$``,
    ``$argon2id$v=19$m=65536,t=3,p=4$``, ``pbkdf2_sha256$600000$``. None for anything
    ``PasswordHasher.identify`` would not accept either."""
    m = _COST_PREFIX_RE.match(stored_hash) if isinstance(stored_hash, str) else None
    return m[0] if m else None


def sample_hash(prefix: str) -> str:
    """A hash of a random password with the cost ``prefix`` names (``cost_prefix``): what a
    check of such a hash costs can be measured without keeping anyone's hash."""
    m = _COST_PREFIX_RE.fullmatch(prefix)
    if m is None:
        raise ValueError("not a cost prefix")
    secret = secrets.token_bytes(16)
    if m[1]:
        variant = {"id": argon2.Type.ID, "i": argon2.Type.I, "d": argon2.Type.D}[m[2]]
        return argon2.low_level.hash_secret(
            secret,
            secrets.token_bytes(16),
            time_cost=int(m[5]),
            memory_cost=int(m[4]),
            parallelism=int(m[6]),
            hash_len=32,
            type=variant,
            version=int(m[3] or 16),
        ).decode("ascii")
    if m[7]:
        # gensalt knows 2a and 2b; 2y is the same algorithm and cost.
        rounds = bcrypt.gensalt(rounds=int(m[9]), prefix=b"2a" if m[8] == "2a" else b"2b")
        return bcrypt.hashpw(secret, rounds).decode("ascii")
    salt = secrets.token_hex(11)
    digest = hashlib.pbkdf2_hmac("sha256", secret, salt.encode("ascii"), int(m[11]))
    return f"{prefix}{salt}${base64.b64encode(digest).decode('ascii')}"


def normalize(password: str) -> str:
    """NFKC, so that the same password typed on different keyboards and IMEs is the same."""
    return unicodedata.normalize("NFKC", password)


def _encode(password: str) -> bytes:
    # surrogatepass: lone surrogates (possible in JSON) hash deterministically instead of raising.
    return password.encode("utf-8", "surrogatepass")


class PasswordPolicyViolation(Exception):  # noqa: N818
    """A new password breaks the policy; ``reason`` is too_short, too_long or breached."""

    def __init__(self, reason: PolicyReason) -> None:
        super().__init__(reason)
        self.reason: PolicyReason = reason


class HasherBusy(Exception):  # noqa: N818
    """No hashing slot became free within ``acquire_timeout``; answer 503 with Retry-After."""


def check_length(
    password: str, *, min_length: int = 8, max_length: int = 256
) -> PolicyReason | None:
    """The length problem of *password*, counted in code points after NFKC, or None."""
    length = len(normalize(password))
    if length < min_length:
        return "too_short"
    if length > max_length:
        return "too_long"
    return None


@dataclass(frozen=True, slots=True)
class Argon2Params:
    time_cost: int
    memory_cost_kib: int
    parallelism: int

    def __post_init__(self) -> None:
        if self.time_cost < 1 or not 1 <= self.parallelism <= 255:
            raise ValueError("argon2: time_cost must be >= 1 and parallelism 1..255")
        if self.memory_cost_kib < 8 * self.parallelism:
            raise ValueError("argon2: memory_cost_kib must be >= 8 * parallelism")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    needs_rehash: bool


_FAILED = VerifyResult(ok=False, needs_rehash=False)


# When the request being served started to wait (time.monotonic()), if the server knows: the
# gunicorn worker sets it to when it queued the request for a thread. Time spent in that queue
# counts against the wait for a hashing slot, so a burst larger than the threads waits at most
# ``acquire_timeout`` in all and is then shed, instead of queueing without end before it.
queued_since: ContextVar[float | None] = ContextVar("queued_since", default=None)


class PasswordHasher:
    """Argon2id hashing with a per-process concurrency limit.

    Verifies Argon2 (any variant), bcrypt ($2a$, $2b$, $2y$) and Django ``pbkdf2_sha256`` hashes.
    Anything but an Argon2id hash of the NFKC form with exactly this hasher's parameters
    needs a rehash.
    """

    def __init__(
        self, params: Argon2Params, *, max_concurrent: int, acquire_timeout: float
    ) -> None:
        if max_concurrent < 1 or acquire_timeout < 0:
            raise ValueError("max_concurrent must be >= 1 and acquire_timeout >= 0")
        self.params = params
        self._argon2 = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
            type=argon2.Type.ID,
        )
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._acquire_timeout = acquire_timeout
        self._dummy_lock = threading.Lock()
        self._dummy_hash: str | None = None
        self._typical_check: float | None = None  # seconds; see _observe
        self._recent_checks: deque[float] = deque(maxlen=RECENT_CHECKS)
        # Stored costs other than ours (``cost_prefix``): what a check of each takes, as a
        # multiple of a current check; see ``calibrate``.
        self._ratios: dict[str, float] = {}
        self._own_cost: str | None = None
        # Our own parameters are always acceptable, even above the module ceilings.
        self._max_memory = max(MAX_ARGON2_MEMORY_KIB, params.memory_cost_kib)
        self._max_time = max(MAX_ARGON2_TIME_COST, params.time_cost)
        self._max_lanes = max(MAX_ARGON2_PARALLELISM, params.parallelism)
        self._max_work = max(MAX_ARGON2_WORK_KIB, params.memory_cost_kib * params.time_cost)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        timeout = self._acquire_timeout
        since = queued_since.get()
        if since is not None:  # a free slot is taken however long the request waited
            timeout = max(0.0, since + timeout - time.monotonic())
        if not self._slots.acquire(timeout=timeout):
            raise HasherBusy(f"no hashing slot free within {self._acquire_timeout} s")
        # The request is served from here on: a second hash it needs (a login's rehash) waits
        # for its slot like any, not against the time the request spent queueing.
        queued_since.set(None)
        try:
            yield
        finally:
            self._slots.release()

    def hash(self, password: str) -> str:
        """An Argon2id PHC string for the NFKC form of *password*."""
        with self._slot():
            return self._hash(normalize(password))

    def rehash(self, password: str) -> str | None:
        """What ``hash`` gives, if a hashing slot is free now; None, without waiting, if not.

        For the upgrade of a stored hash that has just verified (``needs_rehash``): the old
        hash still verifies, so the upgrade can be left to a later login. Waiting for a slot
        would take one from a request that needs it to be answered at all (which would then
        be shed), and failing for want of one would refuse a proven password."""
        return self._now_or_never(lambda: self._hash(normalize(password)))

    def _now_or_never(self, work: Callable[[], _T]) -> _T | None:
        """``work()`` in a hashing slot if one is free now; None, without waiting, if not: for
        optional work of a request whose answer is already decided (``rehash``, ``sample``,
        ``calibrate(wait=False)``), which must neither take a slot from a request that needs
        one to be answered at all nor fail for want of one."""
        if not self._slots.acquire(blocking=False):
            return None
        try:
            return work()
        finally:
            self._slots.release()

    def _hash(self, normalized: str) -> str:
        try:
            return self._argon2.hash(_encode(normalized))
        except argon2.exceptions.HashingError as exc:  # out of memory, in practice
            raise RuntimeError(f"argon2 hashing failed: {exc}") from None

    def verify(self, expected_hash: str, password: str, *, refused: bool = False) -> VerifyResult:
        """Check *password* against a stored hash. Unknown or malformed hashes give ok=False.

        A failed check takes as long as a failed check of the costliest hash stored (``floor``)
        would: it is padded, holding the slot as such a check would (a request alongside would
        otherwise find the slot free sooner). Otherwise, after the cost settings are raised,
        every account not signed in since would answer a wrong password faster than an unknown
        email does (its dummy check is at the new cost), and an account imported with a costlier
        hash (bcrypt 12, say) slower. A correct password is not padded: whoever sends it knows
        the account exists, unless ``refused`` (the answer is a refusal whatever the check
        finds: a disabled account's login): it then costs what a failed check does, the same
        checks (a right password that NFKC changed verifies at the first of the two a wrong one
        costs, so the second is made all the same) and the same padding, since an answer in
        another time would tell that the password was right. Padded where a failed check is
        not, it never came quicker than the average check, where half the failed ones do."""
        family = self._stored_family(expected_hash)
        normalized = normalize(password)
        with self._slot():
            started = time.perf_counter()
            result, current, checks = self._check_stored(
                family, expected_hash, normalized, password
            )
            if refused and checks < _checks_of_a_failure(normalized, password):
                self._check_stored(family, expected_hash, password, password)
                checks += 1
            took = time.perf_counter() - started
            if current:
                self._observe(took / checks)
            else:
                self._observe_stored(expected_hash, took / checks)
            failed = refused or not result.ok
            if failed and (not current or self.floor() > 1.0):
                self._pad(normalized, password, took)
            return result

    def _pad(self, normalized: str, password: str, took: float) -> None:
        """Sleep until the check has taken what a failed one does. With no costlier hash
        stored, that is a current check: an unknown email's dummy check and a wrong password
        of a current hash are not padded, so their times spread as checks do, and the pad is
        the time of a recent current check drawn at random (padded up to the average, a cheaper
        hash's failures never came quicker than it, where half of theirs do). With a costlier
        one every failure is padded, to ``floor`` times the average check."""
        checks = _checks_of_a_failure(normalized, password)
        floor = self.floor()
        if floor > 1.0:
            wanted = checks * self._current_check_seconds() * floor
        else:
            self._current_check_seconds()  # measured once, if nothing was yet
            wanted = sum(secrets.choice(self._recent_checks) for _ in range(checks))
        time.sleep(max(0.0, wanted - took))

    def floor(self) -> float:
        """What a failed check takes at least, as a multiple of a current check: never less
        than a current check, and when a stored hash costs more, ``HEADROOM`` times what a
        check of the costliest (``calibrate``) takes on average. So a failed check of such a
        hash, which takes its own time, is padded to the same time as every other nearly
        always, rather than only when it happened to run faster than its average."""
        costliest = max(self._ratios.values(), default=0.0)
        return costliest * HEADROOM if costliest > 1.0 else 1.0

    def calibrate(self, prefix: str, sample: str, *, wait: bool = True) -> None:
        """Learn what a check of a hash of cost ``prefix`` takes, from ``sample`` (a hash of
        that cost, ``sample_hash``). Failed checks are padded to the costliest learnt
        (``floor``); real checks of such hashes keep the figure current.

        ``wait=False``: only if a hashing slot is free now, else nothing is learnt (for a
        request already answered by its own check, as ``rehash`` is: it must neither take a
        slot from one that needs it nor fail for want of one)."""
        if prefix in self._ratios or self._stored_family(sample) is None:
            return
        if wait:
            with self._slot():
                self._calibrate(prefix, sample)
        else:
            self._now_or_never(lambda: self._calibrate(prefix, sample))

    def _calibrate(self, prefix: str, sample: str) -> None:
        current = self._current_check_seconds()
        took = min(self._timed_check(sample) for _ in range(2))
        self._ratios[prefix] = took / current

    def sample(self, prefix: str) -> str | None:
        """``sample_hash(prefix)``, made in a hashing slot if one is free now; None, without
        waiting, if not. For a request whose check has decided its answer: a sample is a hash
        of that cost (an Argon2 one of earlier settings may take gigabytes), held to the slots
        as every hash is, and optional work, as ``rehash`` is."""
        return self._now_or_never(lambda: sample_hash(prefix))

    def forget(self, prefix: str) -> None:
        """No stored hash has the cost ``prefix`` any more."""
        self._ratios.pop(prefix, None)

    def calibrated(self) -> frozenset[str]:
        return frozenset(self._ratios)

    def own_cost(self) -> str:
        """``cost_prefix`` of the hashes this hasher makes."""
        if self._own_cost is None:
            self._own_cost = cost_prefix(self._dummy())
        assert self._own_cost is not None
        return self._own_cost

    def unknown_cost(self, stored_hash: str) -> str | None:
        """The cost prefix of a stored hash that is neither of the current settings nor
        calibrated: one to record, so that failed logins are padded to it."""
        prefix = cost_prefix(stored_hash)
        if prefix is None or prefix in self._ratios or prefix == self.own_cost():
            return None
        return prefix

    def _timed_check(self, stored_hash: str) -> float:
        guess = secrets.token_urlsafe(12)
        started = time.perf_counter()
        self._check_stored(self._stored_family(stored_hash), stored_hash, guess, guess)
        return time.perf_counter() - started

    def _observe_stored(self, stored_hash: str, seconds: float) -> None:
        """Follow what a check of a calibrated cost takes, relative to a current one."""
        prefix = cost_prefix(stored_hash)
        ratio = self._ratios.get(prefix) if prefix else None
        if prefix and ratio is not None and self._typical_check:
            self._ratios[prefix] = 0.9 * ratio + 0.1 * seconds / self._typical_check

    def _check_stored(
        self, family: HashFamily | None, expected_hash: str, normalized: str, password: str
    ) -> tuple[VerifyResult, bool, int]:
        """The result, whether the hash is a current Argon2id one, and the checks made."""
        if family is None:
            return _FAILED, False, 1
        if family == "argon2":
            outdated = self._needs_rehash(expected_hash)
            if self._check_argon2(expected_hash, normalized):
                return VerifyResult(ok=True, needs_rehash=outdated), not outdated, 1
            if normalized == password:
                return _FAILED, not outdated, 1
            # One made elsewhere (imported, even with these very settings) may be of the
            # password as typed, without NFKC; it is then rehashed in the NFKC form.
            ok = self._check_argon2(expected_hash, password)
            return VerifyResult(ok=ok, needs_rehash=ok), not outdated, 2
        check = _check_bcrypt if family == "bcrypt" else _check_pbkdf2
        # Legacy hashes were made elsewhere, without NFKC: try the password as typed too.
        ok = check(expected_hash, normalized) or (
            normalized != password and check(expected_hash, password)
        )
        return VerifyResult(ok=ok, needs_rehash=ok), False, 1 + (normalized != password)

    def dummy_verify(self, password: str) -> None:
        """Do the work of a failed ``verify`` on a current hash, for accounts that do not exist."""
        normalized = normalize(password)
        with self._slot():
            self._dummy()  # made once, not timed
            started = time.perf_counter()
            self._dummy_check(normalized, password)
            took = time.perf_counter() - started
            self._observe(took / _checks_of_a_failure(normalized, password))
            if self.floor() > 1.0:
                self._pad(normalized, password, took)

    def _dummy_check(self, normalized: str, password: str) -> None:
        dummy = self._dummy()
        self._stored_family(dummy)
        self._needs_rehash(dummy)
        if not self._check_argon2(dummy, normalized) and normalized != password:
            self._check_argon2(dummy, password)  # as verify does for a current hash

    def _observe(self, seconds: float) -> None:
        """Follow the time a current check takes (a moving average: it drifts with load)."""
        typical = self._typical_check
        self._typical_check = seconds if typical is None else 0.9 * typical + 0.1 * seconds
        self._recent_checks.append(seconds)

    def _current_check_seconds(self) -> float:
        """What a current check takes here; measured with a dummy check the first time
        (called holding a slot)."""
        if self._typical_check is None:
            self._dummy()
            started = time.perf_counter()
            guess = secrets.token_urlsafe(12)
            self._dummy_check(guess, guess)
            self._observe(time.perf_counter() - started)
        assert self._typical_check is not None
        return self._typical_check

    def _dummy(self) -> str:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self._hash(secrets.token_urlsafe(24))
            return self._dummy_hash

    def identify(self, stored_hash: str) -> HashFamily | None:
        """The family of a hash that ``verify`` accepts: argon2, bcrypt or pbkdf2_sha256.

        None for anything else, including well-formed hashes above the MAX_* cost ceilings.
        """
        if not isinstance(stored_hash, str):
            return None
        if m := _ARGON2_RE.fullmatch(stored_hash):
            memory, time_cost, lanes = int(m[1]), int(m[2]), int(m[3])
            if (
                1 <= lanes <= self._max_lanes
                and 8 * lanes <= memory <= self._max_memory
                and 1 <= time_cost <= self._max_time
                and memory * time_cost <= self._max_work
            ):
                return "argon2"
            return None
        if m := _BCRYPT_RE.fullmatch(stored_hash):
            return "bcrypt" if 4 <= int(m[1]) <= MAX_BCRYPT_COST else None
        if m := _PBKDF2_RE.fullmatch(stored_hash):
            return "pbkdf2_sha256" if int(m[1]) <= MAX_PBKDF2_ITERATIONS else None
        return None

    def _stored_family(self, stored_hash: str) -> HashFamily | None:
        """``identify`` for a hash already stored. The cost ceilings are for accepting other
        systems' hashes; an Argon2 hash this service made under earlier settings (which may
        have been costlier than the ceilings) must still verify, and be rehashed, after the
        settings are lowered. So stored Argon2 hashes are held to what the settings admit."""
        if isinstance(stored_hash, str) and (m := _ARGON2_RE.fullmatch(stored_hash)):
            memory, time_cost, lanes = int(m[1]), int(m[2]), int(m[3])
            admitted = (
                1 <= lanes <= 255
                and 8 * lanes <= memory <= MAX_OWN_ARGON2_MEMORY_KIB
                and 1 <= time_cost <= MAX_OWN_ARGON2_TIME_COST
            )
            return "argon2" if admitted else None
        return self.identify(stored_hash)

    def _check_argon2(self, expected_hash: str, normalized: str) -> bool:
        try:
            return self._argon2.verify(expected_hash.encode("ascii"), _encode(normalized))
        except (argon2.exceptions.Argon2Error, ValueError):
            return False

    def _needs_rehash(self, expected_hash: str) -> bool:
        try:
            return self._argon2.check_needs_rehash(expected_hash)
        except ValueError:
            return True


def _checks_of_a_failure(normalized: str, password: str) -> int:
    """The Argon2 checks a wrong password costs against a current hash: the password as typed
    is tried as well when NFKC changed it."""
    return 1 if normalized == password else 2


def _check_bcrypt(expected_hash: str, password: str) -> bool:
    secret = _encode(password)[:BCRYPT_MAX_PASSWORD_BYTES]
    try:
        return bcrypt.checkpw(secret, expected_hash.encode("ascii"))
    except ValueError:
        return False


def _check_pbkdf2(expected_hash: str, password: str) -> bool:
    m = _PBKDF2_RE.fullmatch(expected_hash)
    if m is None:
        return False
    try:
        expected = base64.b64decode(m[3], validate=True)
    except ValueError:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", _encode(password), m[2].encode("ascii"), int(m[1]))
    return hmac.compare_digest(actual, expected)
