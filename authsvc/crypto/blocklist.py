"""Common and breached password blocklist, and the new-password policy check.

The breached store is a local, read-only file built from the Pwned Passwords SHA-1 corpus by
``import_pwned_file``; lookups never leave the machine. Layout (integers little-endian):

    header   8s magic b"AUTHPWN1", u16 version (1), u16 suffix bytes (8), u32 zero, u64 count
    table    65,536 x u64: index of the first record of each bucket (first 2 bytes of the SHA-1)
    records  count x 8 bytes: SHA-1 bytes 2..9, sorted and unique within each bucket

So each entry keeps 80 bits of the SHA-1 (2 implied by the bucket, 8 stored). A password not in
the corpus is reported as breached with probability count / 2**80 per form looked up (up to
three: see ``_sha1s``), about 1 in 4.5e14 lookups at one billion entries.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import heapq
import mmap
import os
import re
import stat
import struct
import sys
import tempfile
import unicodedata
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from itertools import islice
from pathlib import Path
from typing import IO

from authsvc.crypto.passwords import PasswordPolicyViolation, check_length, normalize

_MAGIC = b"AUTHPWN1"
_VERSION = 1
_SUFFIX = 8
_BUCKETS = 1 << 16
_HEADER = struct.Struct("<8sHHIQ")
_RECORDS_AT = _HEADER.size + 8 * _BUCKETS
_SWAP = sys.byteorder == "little"  # records are big-endian so that bytes and ints sort alike
_MAX_LINE = 4096  # a longer line may be counted as several rejected lines
_LINE_RE = re.compile(r"^[ \t]*([0-9A-F]{20})[0-9A-F]{20}:[0-9]+[ \t\r]*$", re.M | re.ASCII)
_BLANK_RE = re.compile(r"^[ \t\r]*$", re.M)

Progress = Callable[[str, int, int], None]


def _fold(password: str) -> str:
    """The form a common password is listed and looked up in: NFKC, then case folded.
    ``casefold`` rather than ``lower``: lowering leaves "ß" apart from "ss" and the Greek
    final sigma (U+03C2) apart from the other (U+03C3), so "Paßword1", or a Greek word typed
    with the other sigma, passed a list that holds it. The context words are folded the same way."""
    return normalize(password).casefold()


def _sha1s(password: str) -> set[bytes]:
    """The SHA-1s under which *password* may be in the corpus: of the string as typed, of its
    NFKC form (what the service stores and compares) and of its decomposed form. The corpus
    holds the SHA-1 of what was typed elsewhere (full-width letters, a ligature, accents
    decomposed as macOS and some keyboards send them); whoever replays that string here
    logs in with it, since logins normalise too."""
    forms = {password, normalize(password), unicodedata.normalize("NFKD", password)}
    # SHA-1 is the lookup key of the Pwned Passwords corpus, not a protection of anything.
    return {
        hashlib.sha1(form.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
        for form in forms
    }


@functools.lru_cache(maxsize=4)
def _load_words(path: str | None) -> frozenset[str]:
    """Read a list once per process: it is immutable, and every app instance shares it."""
    source: Path | Traversable = (
        files("authsvc") / "data" / "common-passwords.txt.gz" if path is None else Path(path)
    )
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return frozenset(_fold(line.strip()) for line in lines if line.strip())


class CommonPasswords:
    """A gzipped list of common passwords, one per line, compared case folded after NFKC."""

    def __init__(self, path: Path | None = None) -> None:
        self._words = _load_words(str(path) if path is not None else None)

    def __contains__(self, password: object) -> bool:
        return isinstance(password, str) and _fold(password) in self._words

    def __len__(self) -> int:
        return len(self._words)


class InvalidBreachedStore(Exception):  # noqa: N818
    """The file is not a breached-password store written by ``import_pwned_file``."""


class BreachedPasswordStore:
    """Read-only, memory-mapped lookups in a store written by ``import_pwned_file``."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _RECORDS_AT:
                raise InvalidBreachedStore(f"{path}: too short for a breached-password store")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, version, suffix, _, self._count = _HEADER.unpack_from(self._mm, 0)
        table = array("Q", self._mm[_HEADER.size : _RECORDS_AT])
        if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
            table.byteswap()
        if (magic, version, suffix) != (_MAGIC, _VERSION, _SUFFIX) or size != (
            _RECORDS_AT + _SUFFIX * self._count
        ):
            self._mm.close()
            raise InvalidBreachedStore(f"{path}: bad header or size")
        table.append(self._count)
        if table[0] != 0 or any(table[i] > table[i + 1] for i in range(_BUCKETS)):
            self._mm.close()
            raise InvalidBreachedStore(f"{path}: bad bucket table")
        self._table = table

    def contains(self, password: str) -> bool:
        """Whether the SHA-1 of *password* as typed, of its NFKC form or of its decomposed
        form is in the store (80-bit match)."""
        return any(self._contains_digest(digest) for digest in _sha1s(password))

    def _contains_digest(self, digest: bytes) -> bool:
        bucket, key = digest[0] << 8 | digest[1], digest[2 : 2 + _SUFFIX]
        lo, end = self._table[bucket], self._table[bucket + 1]
        hi, mm = end, self._mm
        while lo < hi:  # binary search within the bucket
            mid = (lo + hi) >> 1
            at = _RECORDS_AT + mid * _SUFFIX
            if mm[at : at + _SUFFIX] < key:
                lo = mid + 1
            else:
                hi = mid
        at = _RECORDS_AT + lo * _SUFFIX
        return lo < end and mm[at : at + _SUFFIX] == key

    def count(self) -> int:
        return int(self._count)

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> BreachedPasswordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Blocklist:
    """Common passwords, plus the breached store when one has been imported."""

    def __init__(self, common: CommonPasswords, breached: BreachedPasswordStore | None) -> None:
        self._common = common
        self._breached = breached

    def is_blocked(self, password: str) -> bool:
        if password in self._common:
            return True
        return self._breached is not None and self._breached.contains(password)


CONTEXT_WORD_MIN_LENGTH = 4  # shorter pieces ("ada", "io") would refuse too much


def context_words(words: Iterable[str], *, email: str | None = None) -> frozenset[str]:
    """The words a user's password must not contain (NIST SP 800-63B 5.1.1.2: the service's
    names, and the username and its parts), case-folded; pieces shorter than four characters
    are left out. ``email`` contributes its local part and its domain labels but the last."""
    pieces = list(words)
    if email:
        local, _, domain = email.rpartition("@")
        pieces.append(local)
        pieces += re.split(r"[._+-]+", local)
        pieces += domain.split(".")[:-1]
    return frozenset(
        p
        for p in (normalize(w).casefold().strip() for w in pieces)
        if len(p) >= CONTEXT_WORD_MIN_LENGTH
    )


def check_policy(
    password: str,
    *,
    blocklist: Blocklist,
    min_length: int,
    max_length: int,
    context: frozenset[str] = frozenset(),
) -> str:
    """The NFKC form of a new *password*, or ``PasswordPolicyViolation`` with the reason."""
    normalized = normalize(password)
    reason = check_length(normalized, min_length=min_length, max_length=max_length)
    if reason is not None:
        raise PasswordPolicyViolation(reason)
    if blocklist.is_blocked(password):
        raise PasswordPolicyViolation("breached")
    folded = normalized.casefold()
    if any(word in folded for word in context):
        raise PasswordPolicyViolation("context_word")
    return normalized


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int  # distinct hashes in the new store
    rejected: int  # non-blank lines that are not HASH:COUNT


@dataclass(slots=True)
class _Run:
    offset: int  # byte offset of the run in the spill file
    counts: array[int]  # records per bucket


def import_pwned_file(
    src: Path, dest: Path, *, progress: Progress | None = None, chunk_bytes: int = 64 << 20
) -> ImportResult:
    """Build a store at *dest* from a Pwned Passwords SHA-1 file (``HASH:COUNT`` lines).

    The input need not be sorted. It is read in chunks of *chunk_bytes* (peak memory is about
    five times that), each chunk sorted into a run in a spill file next to *dest*, and the runs
    merged bucket by bucket. *dest* is replaced atomically only once the new store is complete.
    ``progress(stage, done, total)`` reports ("read", bytes, src bytes), then ("write", buckets,
    65536). *src* may be a pipe (``/dev/stdin``, a FIFO), read once: its total is then 0.
    """
    status = src.stat()
    total_bytes = status.st_size if stat.S_ISREG(status.st_mode) else 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, 0o644)  # public data; the service may run as another user
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile(dir=dest.parent) as spill:
            runs, rejected = _write_runs(src, spill, chunk_bytes, total_bytes, progress)
            imported = _merge_runs(spill, runs, out, chunk_bytes // 32, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return ImportResult(imported=imported, rejected=rejected)


def _write_runs(
    src: Path, spill: IO[bytes], chunk_bytes: int, total: int, progress: Progress | None
) -> tuple[list[_Run], int]:
    runs: list[_Run] = []
    rejected = done = 0
    with src.open("rb") as f:
        head = f.read(3)  # a UTF-8 byte order mark is skipped; a pipe cannot seek back
        pending = b"" if head == b"\xef\xbb\xbf" else head
        while block := pending + f.read(chunk_bytes):
            pending = b""
            if not block.endswith(b"\n"):
                block += f.readline(_MAX_LINE)
            done += len(block)
            text = block.decode("latin-1").upper()
            keys = _LINE_RE.findall(text)
            lines = text.count("\n") + (not text.endswith("\n"))
            if lines != len(keys):
                body = text[:-1] if text.endswith("\n") else text
                rejected += lines - len(keys) - len(_BLANK_RE.findall(body))
            if keys:
                keys.sort()
                records = bytes.fromhex("".join(keys))
                runs.append(_Run(spill.tell(), _bucket_counts(records)))
                spill.write(_suffixes(records))
            if progress is not None:
                progress("read", done, total)
    spill.flush()
    return runs, rejected


def _bucket_counts(records: bytes) -> array[int]:
    """Records per bucket, from the 2-byte big-endian prefixes of 10-byte records."""
    prefixes = bytearray(len(records) // (2 + _SUFFIX) * 2)
    prefixes[0::2], prefixes[1::2] = records[0 :: 2 + _SUFFIX], records[1 :: 2 + _SUFFIX]
    buckets = array("H", prefixes)
    if _SWAP:
        buckets.byteswap()
    counts = array("I", bytes(4 * _BUCKETS))
    for bucket, n in Counter(buckets).items():
        counts[bucket] = n
    return counts


def _suffixes(records: bytes) -> bytes:
    """Drop the 2-byte bucket prefix of each 10-byte record, in C-speed strided copies."""
    width = 2 + _SUFFIX
    out = bytearray(len(records) // width * _SUFFIX)
    for j in range(_SUFFIX):
        out[j::_SUFFIX] = records[2 + j :: width]
    return bytes(out)


def _to_ints(data: bytes) -> array[int]:
    values = array("Q", data)
    if _SWAP:
        values.byteswap()
    return values


def _merge_runs(
    spill: IO[bytes],
    runs: list[_Run],
    out: IO[bytes],
    max_in_memory: int,
    progress: Progress | None,
) -> int:
    out.write(bytes(_RECORDS_AT))
    table = array("Q", bytes(8 * _BUCKETS))
    total = 0
    if runs:  # mmap refuses an empty spill file
        with mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            cursors = [run.offset for run in runs]
            for bucket in range(_BUCKETS):
                table[bucket] = total
                slices = []
                for i, run in enumerate(runs):
                    if n := run.counts[bucket]:
                        slices.append((cursors[i], n))
                        cursors[i] += n * _SUFFIX
                if sum(n for _, n in slices) <= max_in_memory:
                    values = _to_ints(b"".join(mm[at : at + n * _SUFFIX] for at, n in slices))
                    total += _write_values(out, dict.fromkeys(sorted(values)))
                else:  # a huge bucket (never seen with real SHA-1s): stream it
                    total += _write_values(out, _stream_unique(mm, slices, max_in_memory))
                if progress is not None and (bucket + 1) % 1024 == 0:
                    progress("write", bucket + 1, _BUCKETS)
    out.seek(0)
    out.write(_HEADER.pack(_MAGIC, _VERSION, _SUFFIX, 0, total))
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        table.byteswap()
    out.write(table.tobytes())
    return total


def _write_values(out: IO[bytes], values: Iterable[int]) -> int:
    written = 0
    it = iter(values)
    while batch := array("Q", islice(it, 1 << 16)):
        if _SWAP:
            batch.byteswap()
        out.write(batch.tobytes())
        written += len(batch)
    return written


def _stream_unique(mm: mmap.mmap, slices: list[tuple[int, int]], budget: int) -> Iterator[int]:
    step = max(256, budget // len(slices))  # records held per run

    def run_values(at: int, n: int) -> Iterator[int]:
        for start in range(0, n, step):
            lo = at + start * _SUFFIX
            yield from _to_ints(mm[lo : lo + min(step, n - start) * _SUFFIX])

    previous = None
    for value in heapq.merge(*(run_values(at, n) for at, n in slices)):
        if value != previous:
            yield value
            previous = value
