"""Lists of accounts in and out of a breach response: uploaded lists (parsed line by line,
then resolved to accounts set-based) and the report of every affected account."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, literal, select
from sqlalchemy.orm import Session as DbSession

from authsvc.errors import InvalidRequest
from authsvc.models import User
from authsvc.models.breach import BreachTarget
from authsvc.services import accounts
from authsvc.services.breach_sql import COUNTED, TARGETS

MAX_REPORTED = 100  # rejected lines and unknown entries named in a report
LOOKUP_CHUNK = 2000  # list entries resolved per statement
REPORT_COLUMNS = ("user_id", "email", "flagged_at", "notice_queued_at", "notified_at", "reset_at")
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_HEADERS = {"emails": ("email", "email_address", "mail"), "user_ids": ("user_id", "id")}
# What ends an entry in a line that holds more (a combo list's email:password, a row's next
# cell): a rejected line is kept up to it, never what follows, which may be a password.
_AFTER_ENTRY = re.compile(r"[:;|,\s]")


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    reason: str  # invalid_email | invalid_user_id | not_utf8 | missing_column
    value: str


@dataclass(frozen=True, slots=True)
class TargetList:
    """A parsed list: unique normalised values, and what was dropped on the way."""

    kind: str  # emails | user_ids
    values: tuple[str, ...]
    lines: int
    duplicates: int
    rejected: int
    rejections: tuple[Rejection, ...]


def parse_target_list(
    kind: str, lines: Iterable[bytes | str], *, csv_format: bool = False, comments: bool = True
) -> TargetList:
    """One entry per line (blank lines and, with ``comments``, ``#`` comments skipped), or CSV
    whose column is the one headed ``email`` / ``user_id`` (else the first). Bad lines are
    reported, not fatal. A CSV row or a JSON list's entry (``comments=False``) that starts with
    "#" is data: "#" is an address character, and CSV has no comments."""
    if kind not in _HEADERS:
        raise InvalidRequest("selector must be emails or user_ids for a list", field="selector")
    seen: dict[str, None] = {}
    rejections: list[Rejection] = []
    rejected = duplicates = count = 0
    column: int | None = None if csv_format else 0

    def reject(line: int, reason: str, value: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(rejections) < MAX_REPORTED:
            rejections.append(Rejection(line=line, reason=reason, value=_entry_of(value)))

    for count, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            reject(count, "not_utf8", raw.decode("utf-8", "replace"))  # type: ignore[union-attr]
            continue
        line = line.lstrip("\ufeff").strip()
        if not line or (comments and not csv_format and line.startswith("#")):
            continue
        value = line
        if csv_format:
            try:
                cells = [cell.strip() for cell in next(csv.reader([line]), [])]
            except csv.Error:  # a field beyond the csv module's limit, for one
                reject(count, "invalid_csv", line)
                continue
            if column is None:
                headed = [i for i, c in enumerate(cells) if c.lower() in _HEADERS[kind]]
                column = headed[0] if headed else 0
                if headed:
                    continue
            if column >= len(cells):
                reject(count, "missing_column", line)
                continue
            value = cells[column]
        normalised = _normalise(kind, value)
        if normalised is None:
            reject(count, "invalid_email" if kind == "emails" else "invalid_user_id", value)
        elif normalised in seen:
            duplicates += 1
        else:
            seen[normalised] = None
    return TargetList(
        kind=kind,
        values=tuple(seen),
        lines=count,
        duplicates=duplicates,
        rejected=rejected,
        rejections=tuple(rejections),
    )


def _entry_of(value: str) -> str:
    """A rejected line as its report names it: the entry, cut where a separator starts what
    follows it (marked "…"), and at 100 characters. The report is kept with the campaign and
    shown to every admin: a combo list's passwords must not reach it."""
    cut = _AFTER_ENTRY.search(value)
    if cut is None:
        return value[:100]
    return value[: min(cut.start(), 100)] + "…"


def _normalise(kind: str, value: str) -> str | None:
    if kind == "user_ids":
        return value if _USER_ID.fullmatch(value) else None
    try:
        return accounts.normalize_email(value)
    except InvalidRequest:
        return None


@dataclass(frozen=True, slots=True)
class InputReport:
    """What became of an uploaded list."""

    lines: int
    accepted: int  # unique, well-formed entries
    duplicates: int
    rejected: int
    unknown: int  # well-formed entries that name no account
    matched: int
    rejections: tuple[Rejection, ...]
    unknown_values: tuple[str, ...]


def _chunks(values: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for start in range(0, len(values), LOOKUP_CHUNK):
        yield values[start : start + LOOKUP_CHUNK]


def insert_targets(session: DbSession, *, campaign_id: str, targets: TargetList) -> InputReport:
    """Resolve the list to accounts, set-based, and write the campaign's target rows."""
    column = User.email if targets.kind == "emails" else User.id
    matched = 0
    for chunk in _chunks(targets.values):
        result = session.execute(
            insert(TARGETS).from_select(
                ["campaign_id", "user_id"],
                select(literal(campaign_id), User.id).where(column.in_(chunk)),
            ),
            execution_options=COUNTED,
        )
        matched += int(result.rowcount or 0)  # type: ignore[attr-defined]
    unknown: list[str] = []
    if matched < len(targets.values):
        for chunk in _chunks(targets.values):
            found = set(session.scalars(select(column).where(column.in_(chunk))))
            unknown.extend(v for v in chunk if v not in found)
            if len(unknown) >= MAX_REPORTED:
                break
    return InputReport(
        lines=targets.lines,
        accepted=len(targets.values),
        duplicates=targets.duplicates,
        rejected=targets.rejected,
        unknown=len(targets.values) - matched,
        matched=matched,
        rejections=targets.rejections,
        unknown_values=tuple(unknown[:MAX_REPORTED]),
    )


# --- the report ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRow:
    user_id: str
    email: str | None  # None: the account was deleted since
    flagged_at: datetime | None
    notice_queued_at: datetime | None
    notified_at: datetime | None
    reset_at: datetime | None


def report_page(session: DbSession, *, campaign_id: str, after: str, limit: int) -> list[ReportRow]:
    """Affected accounts of a campaign in user-id order, ``limit`` at a time after ``after``."""
    rows = session.execute(
        select(
            BreachTarget.user_id,
            User.email,
            BreachTarget.processed_at,
            BreachTarget.notice_queued_at,
            BreachTarget.notified_at,
            BreachTarget.reset_at,
        )
        .outerjoin(User, User.id == BreachTarget.user_id)
        .where(BreachTarget.campaign_id == campaign_id, BreachTarget.user_id > after)
        .order_by(BreachTarget.user_id)
        .limit(limit)
    ).all()
    return [ReportRow(*row) for row in rows]


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cells(record: dict[str, str | None]) -> list[str]:
    """A report record as CSV cells for a spreadsheet: empty for None, and a text that a
    spreadsheet would run as a formula (an email may start with "=", "+" or "-") gets a leading
    apostrophe (OWASP's CSV injection advice)."""
    cells = []
    for value in record.values():
        text = "" if value is None else value
        cells.append("'" + text if text.startswith(_FORMULA_STARTS) else text)
    return cells


def report_record(row: ReportRow) -> dict[str, str | None]:
    """A report row as text: times in RFC 3339 UTC, None for what did not happen."""
    values: dict[str, Any] = {
        "user_id": row.user_id,
        "email": row.email,
        "flagged_at": row.flagged_at,
        "notice_queued_at": row.notice_queued_at,
        "notified_at": row.notified_at,
        "reset_at": row.reset_at,
    }
    return {
        name: value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
        for name, value in values.items()
    }
