"""`authsvc breached-passwords ...`: the local Pwned Passwords store behind the blocklist."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from authsvc.commands import sigterm_as_interrupt
from authsvc.crypto.blocklist import BreachedPasswordStore, InvalidBreachedStore, import_pwned_file
from authsvc.settings import Settings

_STAGES = {"read": ("reading", "B"), "write": ("writing", " buckets")}


@click.group("breached-passwords")
def breached_passwords() -> None:
    """The breached-password store that new passwords are checked against."""


@breached_passwords.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_file(file: Path) -> None:
    """Build the store from FILE, a Pwned Passwords SHA-1 download (HASH:COUNT lines); FILE
    may be a pipe, and '-' reads standard input (`7z e -so pwned.7z | authsvc ... import -`).

    The store goes to AUTHSVC_BREACHED_PASSWORDS_FILE (default: breached-passwords.bin under
    AUTHSVC_VAR_DIR) and replaces the previous one only once complete. Running servers read
    it at start: restart them afterwards.
    """
    settings = Settings.from_env()
    if str(file) == "-":
        file = Path("/dev/stdin")
    if not file.exists():  # a file, or a pipe: /dev/stdin, a FIFO
        raise click.ClickException(f"{file}: no such file")
    dest = settings.breached_passwords_path
    with sigterm_as_interrupt():
        count, rejected = _build(file, dest)
    click.echo(
        f"imported {count:,} breached password hashes into {dest}"
        + (f" ({rejected:,} malformed lines skipped)" if rejected else ""),
        err=True,
    )


def _build(file: Path, dest: Path) -> tuple[int, int]:
    """Import ``file`` into a staging copy, then put it at ``dest``: (hashes, rejected lines)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, staging_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".new", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {dest.parent}: {exc.strerror}") from None
    staging = Path(staging_name)
    try:
        with _ProgressBars() as bars:
            result = import_pwned_file(file, staging, progress=bars.update)
        if result.imported == 0:
            unpack = _unpacker(file)
            if unpack:
                raise click.ClickException(
                    f"{file} is compressed: unpack it first, or as it is read (`{unpack} "
                    f"{file} | authsvc breached-passwords import -`); the previous store is "
                    "unchanged"
                )
            raise click.ClickException(
                f"{file}: no SHA-1 HASH:COUNT lines found ({result.rejected} other lines); "
                "the previous store is unchanged"
            )
        with BreachedPasswordStore(staging) as store:
            count = store.count()
        os.replace(staging, dest)
    except OSError as exc:
        raise click.ClickException(
            f"import failed: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        ) from None
    except InvalidBreachedStore as exc:
        raise click.ClickException(f"import failed: the new store is unreadable: {exc}") from None
    finally:
        staging.unlink(missing_ok=True)
    return count, result.rejected


# How an archive starts, and a command that writes what it holds to standard output.
_PACKED = {b"\x1f\x8b": "gzip -dc", b"7z\xbc\xaf\x27\x1c": "7z e -so", b"PK\x03\x04": "unzip -p"}


def _unpacker(file: Path) -> str | None:
    """The command that unpacks ``file`` if it is an archive (a pipe is not read again)."""
    if not file.is_file():
        return None
    with file.open("rb") as f:
        start = f.read(6)
    return next((unpack for magic, unpack in _PACKED.items() if start.startswith(magic)), None)


class _ProgressBars:
    """One tqdm bar on stderr per stage of ``import_pwned_file``."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            for other in self._bars.values():
                other.close()
            desc, unit = _STAGES.get(stage, (stage, ""))
            bar = tqdm(
                total=total or None,  # a pipe's size is not known
                desc=desc,
                unit=unit,
                unit_scale=stage == "read",
                leave=True,
                file=sys.stderr,
            )
            self._bars[stage] = bar
        bar.update(done - bar.n)

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self._bars.values():
            bar.close()
