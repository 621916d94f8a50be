"""authsvc.times.parse_time: the one reader of client- and operator-given times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from authsvc.errors import InvalidRequest
from authsvc.times import parse_time


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2025-01-02t03:04:05z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),  # RFC 3339 5.6
        ("2025-01-02T04:04:05.5+01:00", datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        (" 2025-01-02T03:04:05Z ", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_times_with_an_offset_are_read_as_utc(raw, expected):
    assert parse_time(raw, field="since") == expected
    assert parse_time(raw, field="since").tzinfo == UTC


@pytest.mark.parametrize(
    ("raw", "dates", "message"),
    [
        ("2025-01-02", False, "must carry a time zone"),
        ("2025-01-02T03:04:05", True, "must carry a time zone"),
        ("last tuesday", True, "must be an RFC 3339 time or a date"),
        ("2025-01-02T03:04:05Z" + " " * 30 + "x", False, "must be an RFC 3339 time"),
        ("0001-01-01T00:00:00+01:00", False, "out of range"),
        ("9999-12-31T23:59:59-05:00", False, "out of range"),
    ],
)
def test_anything_else_is_refused_naming_the_field(raw, dates, message):
    with pytest.raises(InvalidRequest) as refused:
        parse_time(raw, field="before", dates=dates)
    assert message in refused.value.detail
    assert refused.value.extra == {"field": "before"}


def test_a_date_alone_is_midnight_utc_where_dates_are_allowed():
    assert parse_time("2025-01-02", field="before", dates=True) == datetime(2025, 1, 2, tzinfo=UTC)
