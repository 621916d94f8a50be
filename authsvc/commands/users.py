"""`authsvc users import FILE`: bring existing accounts over with their password hashes."""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from authsvc.app import Runtime, build_runtime
from authsvc.commands import sign_audit_head
from authsvc.crypto.passwords import PasswordHasher
from authsvc.db import utcnow
from authsvc.errors import AuthsvcError
from authsvc.models import User
from authsvc.services import accounts, audit, password_costs
from authsvc.settings import Settings

MAX_REPORTED = 100  # rejected rows named on stderr; the rest are counted
BATCH = 1000
# An email_verified cell, lower-cased; PostgreSQL exports booleans as t and f.
VERIFIED = frozenset({"1", "true", "t", "yes", "y", "on"})
UNVERIFIED = frozenset({"0", "false", "f", "no", "n", "off"})


@click.group("users")
def users() -> None:
    """User accounts."""


@users.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--verified/--unverified",
    default=True,
    show_default=True,
    help="Whether imported emails count as verified (overridden by a column).",
)
def import_users(file: Path, verified: bool) -> None:
    """Import a CSV with a header row: email,password_hash[,email_verified].

    Hashes may be argon2, bcrypt or pbkdf2_sha256 (Django format); they are upgraded to
    Argon2id at each user's next login. Existing emails and bad rows are skipped and counted.
    FILE is read twice (every row is checked before any is imported): a regular file, not a
    pipe.
    """
    if not file.is_file():  # a pipe (<(psql ...), /dev/stdin) read to its end looks empty after
        raise click.ClickException(
            f"{file} is not a regular file: the import reads it twice (every row is checked "
            "before any is imported); save it to a file first"
        )
    runtime = build_runtime(Settings.from_env())
    hasher = runtime.deps.hasher
    imported = skipped = rejected = 0
    refusals: list[str] = []
    first_rows: dict[str, int] = {}  # each email's first row, over every batch
    # Read twice, a batch in memory at a time (a million rows held at once took gigabytes):
    # first to the end, so that a file that turns out not to be UTF-8 or not CSV imports
    # nothing, then batch by batch.
    start = 0  # the rows read into batches so far
    try:
        with _csv_rows(file) as rows:
            for _row in rows:
                pass
        sign_audit_head(runtime)
        with _csv_rows(file) as rows:
            while batch := list(itertools.islice(rows, BATCH)):
                try:
                    counts = _import_batch(
                        runtime,
                        hasher,
                        batch,
                        verified,
                        first=start + 1,
                        refusals=refusals,
                        first_rows=first_rows,
                    )
                except IntegrityError:
                    raise click.ClickException(
                        f"an email of rows {start + 1}-{start + len(batch)} was registered "
                        f"while importing; {imported} imported so far; run the import again "
                        "(existing emails are skipped)"
                    ) from None
                imported, skipped, rejected = (
                    imported + counts[0],
                    skipped + counts[1],
                    rejected + counts[2],
                )
                start += len(batch)
    except KeyboardInterrupt:  # a batch under way is rolled back; those before stay
        raise click.ClickException(
            f"interrupted: {imported} imported, from the first {start} rows; run the import "
            "again to go on (existing emails are skipped)"
        ) from None
    for refusal in refusals:
        click.echo(refusal, err=True)
    if rejected > len(refusals):
        click.echo(f"... and {rejected - len(refusals)} more rejected rows", err=True)
    click.echo(
        f"imported {imported}, skipped {skipped} existing, rejected {rejected} invalid", err=True
    )
    if rejected and not imported:
        sys.exit(1)


@contextmanager
def _csv_rows(file: Path) -> Iterator[Iterator[dict[str, str]]]:
    """The data rows of the CSV ``file``, read as they are asked for; a file that is not
    UTF-8, has no email,password_hash header or that the CSV reader refuses is one line."""
    reader = None
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte order mark before the header.
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"email", "password_hash"} <= set(reader.fieldnames):
                raise click.ClickException("the CSV needs a header with email,password_hash")
            yield reader
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"{file} is not UTF-8 text (byte {exc.start}); save the CSV as UTF-8"
        ) from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 0
        raise click.ClickException(f"{file}: {exc} (after line {line})") from None


def _import_batch(
    runtime: Runtime,
    hasher: PasswordHasher,
    rows: list[dict[str, str]],
    verified: bool,
    *,
    first: int,
    refusals: list[str],
    first_rows: dict[str, int],
) -> tuple[int, int, int]:
    """Import ``rows`` (data rows ``first``... of the file); each rejected one is counted, and
    added to ``refusals`` with its row number and reason (never the hash) while it holds fewer
    than MAX_REPORTED (a file of a million bad rows kept a million messages). A row whose email
    an earlier row had (``first_rows``) is rejected: the earlier one is the one read."""
    now = utcnow()
    imported = skipped = rejected = 0

    def refuse(message: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(refusals) < MAX_REPORTED:
            refusals.append(message)

    with runtime.sessionmaker.begin() as session:
        wanted: dict[str, tuple[str, bool]] = {}
        for number, row in enumerate(rows, start=first):
            try:
                email = accounts.normalize_email(row.get("email") or "")
            except AuthsvcError:
                refuse(f"row {number}: not an email address")
                continue
            password_hash = (row.get("password_hash") or "").strip()
            if hasher.identify(password_hash) is None:
                refuse(
                    f"row {number}: the hash is not argon2, bcrypt or pbkdf2_sha256 within the "
                    "cost ceilings (an Argon2 hash has commas: quote it)"
                )
                continue
            flag = (row.get("email_verified") or "").strip().lower()
            if flag and flag not in VERIFIED and flag not in UNVERIFIED:
                refuse(
                    f"row {number}: email_verified must be true or false (1 or 0, yes or no, "
                    "t or f), or empty"
                )
                continue
            is_verified = flag in VERIFIED if flag else verified
            if email in first_rows:
                refuse(
                    f"row {number}: the same email as row {first_rows[email]} (the first row "
                    "of an email is the one read)"
                )
                continue
            first_rows[email] = number
            wanted[email] = (password_hash, is_verified)
        existing = set(session.scalars(select(User.email).where(User.email.in_(list(wanted)))))
        # Failed logins take as long as a check of the costliest imported hash would.
        password_costs.record(
            session,
            [h for e, (h, _) in wanted.items() if e not in existing],
            now=now,
            own=hasher.own_cost(),
        )
        for email, (password_hash, is_verified) in wanted.items():
            if email in existing:
                skipped += 1
                continue
            session.add(
                User(
                    email=email,
                    password_hash=password_hash,
                    password_set_at=now,
                    email_verified_at=now if is_verified else None,
                    created_at=now,
                    updated_at=now,
                )
            )
            imported += 1
        audit.record(
            session,
            type="admin.users_imported",
            outcome="success",
            now=now,
            details={"imported": imported, "skipped": skipped, "rejected": rejected},
        )
    return imported, skipped, rejected
