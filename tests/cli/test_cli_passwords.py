"""`authsvc breached-passwords import FILE`, then the sign-up refuses what the corpus holds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from authsvc.app import create_app
from authsvc.cli import main
from authsvc.crypto.blocklist import BreachedPasswordStore
from authsvc.logging_setup import JsonFormatter
from tests.conftest import ContractClient, interrupt_when, start_command

LEAKED = ["Tr0ub4dor&3 but longer", "hunter2hunter2hunter2", "Straße mit Passwort 7"]
SAFE = "a password nobody has leaked yet 9f1c"


def pwned_line(password: str, count: int = 42) -> str:
    normalized = unicodedata.normalize("NFKC", password)
    return f"{hashlib.sha1(normalized.encode()).hexdigest().upper()}:{count}"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "pwned-passwords-sha1.txt"
    filler = [f"{hashlib.sha1(str(i).encode()).hexdigest().upper()}:1" for i in range(2000)]
    path.write_text(
        "\r\n".join([*filler[:1000], *map(pwned_line, LEAKED), *filler[1000:]]) + "\r\n"
    )
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHSVC_")}
    return {**unset, "AUTHSVC_VAR_DIR": str(tmp_path / "var")}


def run(env, *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_import_builds_the_store_with_a_progress_bar(env, corpus, tmp_path):
    result = run(env, "breached-passwords", "import", str(corpus))

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "reading" in result.stderr and "100%" in result.stderr  # tqdm, on stderr
    assert "imported 2,003 breached password hashes" in result.stderr
    store_path = tmp_path / "var" / "breached-passwords.bin"
    with BreachedPasswordStore(store_path) as store:
        assert store.count() == 2003
        assert all(store.contains(p) for p in LEAKED)
        assert not store.contains(SAFE)


def test_the_store_location_can_be_configured(env, corpus, tmp_path):
    target = tmp_path / "data" / "pwned.bin"

    result = run(
        {**env, "AUTHSVC_BREACHED_PASSWORDS_FILE": str(target)},
        "breached-passwords",
        "import",
        str(corpus),
    )

    assert result.exit_code == 0, result.stderr
    assert target.exists()
    assert not (tmp_path / "var" / "breached-passwords.bin").exists()


def test_imported_passwords_are_refused(env, corpus, tmp_path, settings, connection):
    target = tmp_path / "pwned.bin"
    run(
        {**env, "AUTHSVC_BREACHED_PASSWORDS_FILE": str(target)},
        "breached-passwords",
        "import",
        str(corpus),
    )
    app = create_app(dataclasses.replace(settings, breached_passwords_file=target), bind=connection)
    app.test_client_class = ContractClient
    client = app.test_client()

    for password in LEAKED:
        response = client.post(
            "/v1/signup", json={"email": "ada@example.com", "password": password}
        )
        assert response.status_code == 400
        assert response.get_json()["code"] == "weak_password"
        assert response.get_json()["reason"] == "breached"
    accepted = client.post("/v1/signup", json={"email": "ada@example.com", "password": SAFE})
    assert accepted.status_code == 202
    app.extensions["authsvc"].deps.limiter.reset()


def test_lines_that_are_not_hashes_are_skipped_and_counted(env, tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text(f"{pwned_line(LEAKED[0])}\nnot a hash\n\n{pwned_line(LEAKED[1])}\n")

    result = run(env, "breached-passwords", "import", str(path))

    assert result.exit_code == 0, result.stderr
    assert "imported 2 breached password hashes" in result.stderr
    assert "1 malformed lines skipped" in result.stderr


@pytest.mark.parametrize(
    "content", [None, "", "password123\nletmein\n"], ids=["missing", "empty", "plaintext"]
)
def test_failures_exit_non_zero_with_one_line_and_keep_the_old_store(
    env, corpus, tmp_path, content
):
    assert run(env, "breached-passwords", "import", str(corpus)).exit_code == 0
    store_path = tmp_path / "var" / "breached-passwords.bin"
    before = store_path.read_bytes()
    bad = tmp_path / "bad.txt"
    if content is not None:
        bad.write_text(content)

    result = run(env, "breached-passwords", "import", str(bad))

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1
    assert str(bad) in error_lines[0]
    assert store_path.read_bytes() == before
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["breached-passwords.bin"]


def test_a_bad_configuration_is_one_line(env, corpus):
    result = run({**env, "AUTHSVC_ENV": "production"}, "breached-passwords", "import", str(corpus))

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: configuration: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unwritable_destination_is_one_line(env, corpus, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")

    result = run(
        {**env, "AUTHSVC_BREACHED_PASSWORDS_FILE": str(blocker / "pwned.bin")},
        "breached-passwords",
        "import",
        str(corpus),
    )

    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("Error: ")


def test_a_named_store_that_is_not_there_is_warned_about_at_start(
    settings, connection, tmp_path, caplog
):
    """AUTHSVC_BREACHED_PASSWORDS_FILE set to a file that is not there (a typo, a volume not
    mounted): the service starts, checks the shipped common passwords only, and says so. The
    default path, before any import, is the usual case and is not warned about."""
    missing = tmp_path / "pwned.bin"
    with caplog.at_level(logging.WARNING, logger="authsvc"):
        app = create_app(
            dataclasses.replace(settings, breached_passwords_file=missing), bind=connection
        )
    app.extensions["authsvc"].deps.limiter.reset()
    # As the log shows it: the JSON formatter cuts the value out of a "password...=value".
    warnings = [
        json.loads(JsonFormatter().format(r))["msg"]
        for r in caplog.records
        if "BREACHED_PASSWORDS_FILE" in r.getMessage()
    ]
    assert len(warnings) == 1 and str(missing) in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="authsvc"):
        create_app(settings, bind=connection)
    assert "BREACHED_PASSWORDS_FILE" not in caplog.text


def test_sigterm_during_an_import_keeps_the_old_store_and_leaves_no_partial_file(
    env, corpus, tmp_path
):
    # A job runner's timeout or `systemctl stop` ends an import with SIGTERM: the staged
    # copies of the new store (as large as the store itself) were left beside it for good.
    assert run(env, "breached-passwords", "import", str(corpus)).exit_code == 0
    var = tmp_path / "var"
    before = (var / "breached-passwords.bin").read_bytes()
    big = tmp_path / "big.txt"
    with big.open("w") as out:
        for i in range(400_000):
            out.write(f"{hashlib.sha1(str(i).encode()).hexdigest().upper()}:1\n")
    importer = start_command(env, "breached-passwords", "import", str(big))

    def staging() -> bool:
        return any(p.name.endswith(".new") for p in var.iterdir())

    stderr = interrupt_when(importer, staging, signal.SIGTERM, within=30)

    assert importer.returncode != 0
    assert "Traceback" not in stderr
    assert sorted(p.name for p in var.iterdir()) == ["breached-passwords.bin"]
    assert (var / "breached-passwords.bin").read_bytes() == before


def test_an_import_reads_a_pipe(env, corpus, tmp_path):
    # The corpus comes compressed: `7z e -so pwned.7z | authsvc breached-passwords import
    # /dev/stdin` (or a named pipe) was refused as "no such file".
    pipe = tmp_path / "pwned.fifo"
    os.mkfifo(pipe)
    text = "\ufeff" + corpus.read_text()  # a byte order mark first, as some tools write

    def feed() -> None:
        with pipe.open("w", encoding="utf-8") as out:
            out.write(text)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        result = run(env, "breached-passwords", "import", str(pipe))
    finally:
        if feeder.is_alive():  # nothing opened the pipe: open it to let the feeder end
            with pipe.open("rb") as drain:
                drain.read()
        feeder.join(10)

    assert result.exit_code == 0, result.stderr
    assert "imported 2,003 breached password hashes" in result.stderr
    assert "malformed" not in result.stderr
    with BreachedPasswordStore(tmp_path / "var" / "breached-passwords.bin") as store:
        assert all(store.contains(p) for p in LEAKED)


@pytest.mark.parametrize(
    ("name", "start"),
    [
        ("pwned.txt.gz", b"\x1f\x8b\x08"),
        ("pwned.7z", b"7z\xbc\xaf\x27\x1c"),
        ("pwned.zip", b"PK\x03\x04"),
    ],
)
def test_a_compressed_download_is_named_as_such(env, tmp_path, name, start):
    # It was "no SHA-1 HASH:COUNT lines found (5 other lines)", as for any other file.
    archive = tmp_path / name
    archive.write_bytes(start + bytes(range(256)) * 4)

    result = run(env, "breached-passwords", "import", str(archive))

    assert result.exit_code == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert "is compressed" in line and "unpack it" in line
    assert not (tmp_path / "var" / "breached-passwords.bin").exists()
