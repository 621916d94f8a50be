import gzip
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authsvc.crypto.blocklist import (
    Blocklist,
    BreachedPasswordStore,
    CommonPasswords,
    ImportResult,
    InvalidBreachedStore,
    check_policy,
    context_words,
    import_pwned_file,
)
from authsvc.crypto.passwords import PasswordPolicyViolation

BREACHED = ["hunter2 but longer", "Tr0ub4dor&3", "correct horse battery staple", "Ünïcödé pässwörd"]
CLEAN = ["a perfectly unknown phrase 81", "Hunter2 But Longer", "correct horse battery stapler"]


def sha1_hex(password: str) -> str:
    return hashlib.sha1(password.encode()).hexdigest().upper()


def write_lines(path: Path, lines: list[str], *, newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode())
    return path


@pytest.fixture(scope="module")
def common() -> CommonPasswords:
    return CommonPasswords()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BreachedPasswordStore]:
    folder = tmp_path_factory.mktemp("store")
    lines = [f"{sha1_hex(p)}:{i + 1}" for i, p in enumerate(BREACHED)]
    import_pwned_file(write_lines(folder / "pwned.txt", lines), folder / "store.bin")
    with BreachedPasswordStore(folder / "store.bin") as opened:
        yield opened


def full_width(text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) for char in text)


def test_bundled_list_is_the_django_20k_list(common: CommonPasswords) -> None:
    assert 19_000 < len(common) < 21_000


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("password", True),
        ("PassWord", True),
        (full_width("password"), True),
        ("iloveyou", True),
        ("trustno1", True),
        ("password123", True),
        # Case folded, not lowered: a capital sharp s lowers to "ß" but folds to "ss".
        ("PA\u1e9eWORD", True),
        ("pa\u00dfword1", True),
        ("correct horse battery staple 93", False),
        ("password1234567", False),
        ("", False),
    ],
)
def test_common_passwords_match_ignoring_case_after_nfkc(
    common: CommonPasswords, password: str, expected: bool
) -> None:
    assert (password in common) is expected


def test_common_passwords_from_another_file(tmp_path: Path) -> None:
    path = tmp_path / "list.txt.gz"
    path.write_bytes(gzip.compress(f"Sommer2024\n\n  \n{full_width('HONEY')}\n".encode()))
    custom = CommonPasswords(path)
    assert len(custom) == 2
    assert "sommer2024" in custom
    assert "honey" in custom
    assert "password" not in custom
    assert 42 not in custom


@pytest.mark.parametrize(
    ("listed", "typed"),
    [
        ("Stra\u00dfe2024", "STRASSE2024"),
        ("strasse2024", "Stra\u00dfe2024"),
        # Greek sigma: lowering writes the final form (U+03C2) at the end of a word, folding
        # always the other (U+03C3).
        (
            "\u039f\u03b4\u03c5\u03c3\u03c3\u03ad\u03b1\u03c2",
            "\u03bf\u03b4\u03c5\u03c3\u03c3\u03ad\u03b1\u03c3",
        ),
        (
            "\u03bf\u03b4\u03c5\u03c3\u03c3\u03ad\u03b1\u03c3",
            "\u039f\u0394\u03a5\u03a3\u03a3\u0388\u0391\u03a3",
        ),
    ],
)
def test_a_listed_password_matches_in_any_case_variant(
    tmp_path: Path, listed: str, typed: str
) -> None:
    # Both the list and the candidate are case folded, so the variants that lower() leaves
    # apart (German sharp s, Greek final sigma) do not escape the list.
    path = tmp_path / "list.txt.gz"
    path.write_bytes(gzip.compress(f"{listed}\n".encode()))
    assert typed in CommonPasswords(path)


def test_import_tolerates_case_crlf_and_whitespace_and_counts_bad_lines(tmp_path: Path) -> None:
    good = [
        f"{sha1_hex(BREACHED[0])}:3",
        f"{sha1_hex(BREACHED[1]).lower()}:1\r",
        f"  {sha1_hex(BREACHED[2])}:12  ",
        f"{sha1_hex(BREACHED[3])}:7",
        f"{sha1_hex(BREACHED[0])}:3",  # a duplicate is stored once
    ]
    bad = [
        "not a hash",
        f"{sha1_hex(CLEAN[0])[:39]}:1",
        f"{sha1_hex(CLEAN[0])}0:1",
        f"{sha1_hex(CLEAN[0])}",
        f"{sha1_hex(CLEAN[0])}:",
        f"{sha1_hex(CLEAN[0])}:1:2",
        f"{sha1_hex(CLEAN[0])}:x",
        f"{sha1_hex(CLEAN[0])} :1",
        "G" + sha1_hex(CLEAN[0])[1:] + ":1",
        "\u00ff" * 45,
    ]
    lines = ["\ufeff" + good[0], good[1], "", *bad, "   ", *good[2:]]  # with a UTF-8 BOM
    src = write_lines(tmp_path / "pwned.txt", lines, newline="\r\n")
    result = import_pwned_file(src, tmp_path / "store.bin")
    assert result == ImportResult(imported=4, rejected=len(bad))
    with BreachedPasswordStore(tmp_path / "store.bin") as store:
        assert store.count() == 4
        assert all(store.contains(p) for p in BREACHED)
        assert not any(store.contains(p) for p in CLEAN)


@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20])
def test_unsorted_input_in_any_chunking_gives_the_same_store(
    tmp_path: Path, chunk_bytes: int
) -> None:
    rng = random.Random(20240601)
    passwords = [f"pw-{rng.getrandbits(64):x}" for _ in range(1000)]
    lines = [f"{sha1_hex(p)}:{rng.randint(1, 99)}" for p in passwords]
    lines += lines[:100]  # duplicates in other runs
    rng.shuffle(lines)
    src = write_lines(tmp_path / "pwned.txt", lines)
    result = import_pwned_file(src, tmp_path / "store.bin", chunk_bytes=chunk_bytes)
    assert result == ImportResult(imported=1000, rejected=0)
    sorted_src = write_lines(tmp_path / "sorted.txt", sorted(set(lines)))
    import_pwned_file(sorted_src, tmp_path / "reference.bin", chunk_bytes=1 << 20)
    assert (tmp_path / "store.bin").read_bytes() == (tmp_path / "reference.bin").read_bytes()
    with BreachedPasswordStore(tmp_path / "store.bin") as store:
        assert all(store.contains(p) for p in passwords)
        assert not any(store.contains(f"other-{i}") for i in range(1000))


def test_a_huge_bucket_is_merged_in_bounded_memory(tmp_path: Path) -> None:
    rng = random.Random(7)
    hashes = [f"ABCD{rng.getrandbits(144):036X}" for _ in range(2000)]
    lines = [f"{h}:1" for h in hashes + hashes[:300]]
    rng.shuffle(lines)
    src = write_lines(tmp_path / "pwned.txt", lines)
    # 4 KiB chunks allow 128 records per bucket in memory: this bucket has 2000.
    assert import_pwned_file(src, tmp_path / "streamed.bin", chunk_bytes=4096).imported == 2000
    assert import_pwned_file(src, tmp_path / "in-memory.bin").imported == 2000
    assert (tmp_path / "streamed.bin").read_bytes() == (tmp_path / "in-memory.bin").read_bytes()


@pytest.mark.parametrize("content", ["", "\n", "\r\n  \r\n"])
def test_empty_input_gives_an_empty_store(tmp_path: Path, content: str) -> None:
    src = tmp_path / "pwned.txt"
    src.write_text(content)
    assert import_pwned_file(src, tmp_path / "store.bin") == ImportResult(0, 0)
    with BreachedPasswordStore(tmp_path / "store.bin") as store:
        assert store.count() == 0
        assert not store.contains("password")


def test_progress_is_reported(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "pwned.txt", [f"{sha1_hex(str(i))}:1" for i in range(500)])
    calls: list[tuple[str, int, int]] = []
    import_pwned_file(
        src, tmp_path / "store.bin", chunk_bytes=1024, progress=lambda *a: calls.append(a)
    )
    reads = [c for c in calls if c[0] == "read"]
    assert len(reads) > 1
    assert reads[-1] == ("read", src.stat().st_size, src.stat().st_size)
    assert calls[-1] == ("write", 65536, 65536)


def _fail_while_writing(stage: str, done: int, total: int) -> None:
    if stage == "write":
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("make_src", "progress", "error"),
    [
        (lambda d: d / "missing.txt", None, FileNotFoundError),
        (lambda d: d, None, IsADirectoryError),
        (
            lambda d: write_lines(d / "x.txt", ["A" * 40 + ":1"]),
            _fail_while_writing,
            KeyboardInterrupt,
        ),
    ],
)
def test_a_failed_import_keeps_the_old_store(
    tmp_path: Path,
    make_src: Callable[[Path], Path],
    progress: Callable[[str, int, int], None] | None,
    error: type[BaseException],
) -> None:
    dest_dir = tmp_path / "var"
    dest_dir.mkdir()
    good = write_lines(tmp_path / "good.txt", [f"{sha1_hex(BREACHED[0])}:1"])
    import_pwned_file(good, dest_dir / "store.bin")
    before = (dest_dir / "store.bin").read_bytes()
    with pytest.raises(error):
        import_pwned_file(make_src(tmp_path), dest_dir / "store.bin", progress=progress)
    assert (dest_dir / "store.bin").read_bytes() == before
    assert sorted(p.name for p in dest_dir.iterdir()) == ["store.bin"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: data[:100],
        lambda data: b"NOTASTORE" + data[9:],
        lambda data: data[:-1],
        lambda data: data + b"\0" * 8,
        lambda data: data[:24] + (10**6).to_bytes(8, "little") + data[32:],  # first bucket not at 0
    ],
)
def test_a_damaged_store_is_refused(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    src = write_lines(tmp_path / "pwned.txt", [f"{sha1_hex(p)}:1" for p in BREACHED])
    import_pwned_file(src, tmp_path / "store.bin")
    data = (tmp_path / "store.bin").read_bytes()
    (tmp_path / "bad.bin").write_bytes(damage(data))
    with pytest.raises(InvalidBreachedStore):
        BreachedPasswordStore(tmp_path / "bad.bin")


@pytest.mark.parametrize(
    ("password", "blocked_by_common", "blocked_by_store"),
    [
        ("password123", True, True),
        (BREACHED[2], False, True),
        (full_width(BREACHED[1]), False, True),  # NFKC before SHA-1
        ("Ünïcödé pässwörd", False, True),
        ("U\u0308nïcödé pässwörd", False, True),  # decomposed: NFKC composes it
        (CLEAN[0], False, False),
        ("\ud800 lone surrogate \udfff", False, False),
    ],
)
def test_blocklist(
    common: CommonPasswords,
    store: BreachedPasswordStore,
    password: str,
    blocked_by_common: bool,
    blocked_by_store: bool,
) -> None:
    assert Blocklist(common, None).is_blocked(password) is blocked_by_common
    assert Blocklist(common, store).is_blocked(password) is blocked_by_store


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "too_short"),
        (full_width("passwo"), "too_short"),
        ("x" * 65, "too_long"),
        ("iloveyou", "breached"),
        ("ILoveYou", "breached"),
        (BREACHED[0], "breached"),
    ],
)
def test_check_policy_refuses(
    common: CommonPasswords, store: BreachedPasswordStore, password: str, reason: str
) -> None:
    with pytest.raises(PasswordPolicyViolation) as caught:
        check_policy(password, blocklist=Blocklist(common, store), min_length=8, max_length=64)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("password", "normalized"),
    [
        (CLEAN[0], CLEAN[0]),
        (full_width("Zebra-Quartz-17"), "Zebra-Quartz-17"),
        ("x" * 64, "x" * 64),
    ],
)
def test_check_policy_returns_the_nfkc_form(
    common: CommonPasswords, store: BreachedPasswordStore, password: str, normalized: str
) -> None:
    blocklist = Blocklist(common, store)
    assert check_policy(password, blocklist=blocklist, min_length=8, max_length=64) == normalized


@settings(max_examples=300, deadline=None)
@given(password=st.text())
def test_lookups_never_raise(
    common: CommonPasswords, store: BreachedPasswordStore, password: str
) -> None:
    assert isinstance(Blocklist(common, store).is_blocked(password), bool)
    assert isinstance(store.contains(password + "\ud800"), bool)


def test_context_words_take_the_service_names_and_the_parts_of_the_email() -> None:
    words = context_words(
        ("authsvc", "ACME Corp", "io"), email="ada.lovelace+web@analytical.engine.org"
    )
    assert words == {
        "authsvc",
        "acme corp",
        "ada.lovelace+web",
        "lovelace",
        "analytical",
        "engine",
    }  # "io", "ada", "web" and "org" are too short to refuse


@pytest.mark.parametrize(
    "password",
    [
        "my AUTHSVC password 1",
        "lovelace rules forever",
        full_width("ACME") + " " + full_width("CORP") + " is great 7",
    ],
)
def test_passwords_with_a_context_word_are_refused(common: CommonPasswords, password: str) -> None:
    words = context_words(("authsvc", "acme corp"), email="ada.lovelace@example.com")
    with pytest.raises(PasswordPolicyViolation) as excinfo:
        check_policy(
            password, blocklist=Blocklist(common, None), min_length=8, max_length=256, context=words
        )
    assert excinfo.value.reason == "context_word"


def test_a_password_without_context_words_passes(common: CommonPasswords) -> None:
    words = context_words(("authsvc",), email="ada.lovelace@example.com")
    assert (
        check_policy(
            "a perfectly unknown phrase 81",
            blocklist=Blocklist(common, None),
            min_length=8,
            max_length=256,
            context=words,
        )
        == "a perfectly unknown phrase 81"
    )


@pytest.mark.parametrize(
    ("leaked", "typed"),
    [
        # Decomposed accents, as macOS and some keyboards send them, and the composed form
        # that others type for the same password.
        ("Mu\u0308ller-Lu\u0308denscheid", "Mu\u0308ller-Lu\u0308denscheid"),
        ("Mu\u0308ller-Lu\u0308denscheid", "M\u00fcller-L\u00fcdenscheid"),
        (full_width("Hunter2-Forever"), full_width("Hunter2-Forever")),
        ("\ufb01nancial-secret\u00b2", "\ufb01nancial-secret\u00b2"),  # ligature, superscript
    ],
)
def test_a_password_leaked_in_a_form_other_than_nfkc_is_refused(
    tmp_path: Path, common: CommonPasswords, leaked: str, typed: str
) -> None:
    """The corpus holds the SHA-1 of what was typed elsewhere, not of its NFKC form; whoever
    replays the leaked string here logs in with it (it is normalised at login too)."""
    src = write_lines(tmp_path / "pwned.txt", [f"{sha1_hex(leaked)}:5"])
    import_pwned_file(src, tmp_path / "store.bin")
    with BreachedPasswordStore(tmp_path / "store.bin") as store:
        assert store.contains(typed)
        blocklist = Blocklist(common, store)
        assert blocklist.is_blocked(typed)
        with pytest.raises(PasswordPolicyViolation) as caught:
            check_policy(typed, blocklist=blocklist, min_length=8, max_length=64)
        assert caught.value.reason == "breached"
        assert not blocklist.is_blocked(CLEAN[0])
