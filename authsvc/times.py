"""Reading RFC 3339 times given by clients and operators (query strings, JSON, command lines)."""

from __future__ import annotations

from datetime import UTC, datetime

from authsvc.errors import InvalidRequest

MAX_LENGTH = 40


def parse_time(raw: str, *, field: str, dates: bool = False) -> datetime:
    """An RFC 3339 time with an offset, as an aware UTC datetime; with ``dates``, a date alone
    too (midnight UTC). InvalidRequest (naming ``field``) for anything else, including times
    outside the range a UTC datetime can hold."""
    text = raw.strip().upper()  # RFC 3339 allows "t" and "z"
    what = "an RFC 3339 time or a date" if dates else "an RFC 3339 time"
    try:
        if len(text) > MAX_LENGTH:
            raise ValueError
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{field} must be {what}, such as 2025-01-02T03:04:05Z", field=field
        ) from None
    if moment.tzinfo is None:
        if not dates or len(text) > len("2025-01-02"):
            raise InvalidRequest(f"{field} must carry a time zone (e.g. Z)", field=field)
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first representable UTC time
        raise InvalidRequest(f"{field} is out of range", field=field) from None
