"""Property tests for request parsing and JSON shaping (authsvc/http/io.py).

Whatever arrives (random bytes, any JSON, wrong types, huge or empty values, lone surrogates,
deep nesting, any content type), ``parse`` returns an instance whose fields have the declared
types and limits, or raises one of the three documented domain errors. ``to_json`` turns any
result value into something ``json.dumps`` accepts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from authsvc.errors import InvalidRequest, MalformedJson, UnsupportedMediaType
from authsvc.http.io import MAX_STRING, parse, to_json
from authsvc.http.public import ChangeBody, EmailPassword, MfaBody, ResetBody, TokenOnly

DOCUMENTED = (InvalidRequest, MalformedJson, UnsupportedMediaType)
EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Everything:
    """Every field type that request bodies use."""

    name: str = dataclasses.field(metadata={"max_length": 16})
    count: int = dataclasses.field()
    flag: bool = dataclasses.field()
    tags: list[str] = dataclasses.field(metadata={"max_length": 8})
    extra: dict[str, Any] = dataclasses.field()
    note: str | None = dataclasses.field(metadata={"max_length": 32}, default=None)
    blob: dict[str, Any] | None = None


BODIES = [Everything, EmailPassword, TokenOnly, MfaBody, ResetBody, ChangeBody]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Strings as JSON can carry them: any code point, lone surrogates included, short and long.
any_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
    max_size=40,
)
huge_text = st.integers(min_value=MAX_STRING - 2, max_value=MAX_STRING * 3).map(lambda n: "x" * n)
field_values = json_values | any_text | huge_text | st.just("") | st.just("\x00")

app = Flask(__name__)


def parse_body(cls: type, data: bytes, content_type: str | None = "application/json") -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    with app.test_request_context("/", method="POST", data=data, headers=headers):
        return parse(cls)


def check_shape(instance: Any, cls: type) -> None:
    """Every field holds its declared type and respects its length limit."""
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        limit = f.metadata.get("max_length", MAX_STRING)
        if isinstance(value, str):
            assert len(value) <= limit
            assert "\x00" not in value
            value.encode("utf-8")  # no lone surrogates got through
        elif isinstance(value, list):
            assert all(isinstance(v, str) and len(v) <= limit for v in value)


@EXAMPLES
@given(
    cls=st.sampled_from(BODIES),
    data=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/json", "text/plain", None, "application/json; charset=latin-1"]
    ),
)
def test_random_bytes_are_parsed_or_refused_with_a_documented_error(cls, data, content_type):
    try:
        instance = parse_body(cls, data, content_type)
    except DOCUMENTED:
        return
    check_shape(instance, cls)


@EXAMPLES
@given(cls=st.sampled_from(BODIES), body=json_values)
def test_any_json_document_is_parsed_or_refused_with_a_documented_error(cls, body):
    try:
        instance = parse_body(cls, json.dumps(body).encode())
    except DOCUMENTED:
        return
    assert isinstance(body, dict)
    check_shape(instance, cls)


@EXAMPLES
@given(cls=st.sampled_from(BODIES), data=st.data())
def test_objects_with_every_field_set_to_anything(cls, data):
    body = {f.name: data.draw(field_values, label=f.name) for f in dataclasses.fields(cls)}
    try:
        raw = json.dumps(body)  # lone surrogates are written as \\ud800 escapes
    except ValueError:
        assume(False)
    try:
        instance = parse_body(cls, raw.encode())
    except InvalidRequest as exc:
        assert exc.extra.get("field") in {f.name for f in dataclasses.fields(cls)}
        return
    check_shape(instance, cls)


@EXAMPLES
@given(
    name=st.text(max_size=16).filter(lambda s: "\x00" not in s),
    count=st.integers(),
    flag=st.booleans(),
    tags=st.lists(st.text(max_size=8).filter(lambda s: "\x00" not in s), max_size=5),
    extra=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    note=st.none() | st.text(max_size=32).filter(lambda s: "\x00" not in s),
)
def test_well_typed_bodies_round_trip_unchanged(name, count, flag, tags, extra, note):
    assume(all(not 0xD800 <= ord(c) <= 0xDFFF for c in name + "".join(tags) + (note or "")))
    body = {"name": name, "count": count, "flag": flag, "tags": tags, "extra": extra}
    if note is not None:  # an optional field is left out, never sent as null
        body["note"] = note

    parsed = parse_body(Everything, json.dumps(body).encode())

    assert dataclasses.asdict(parsed) == {"note": None, **body, "blob": None}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"\xff\xfe\x00",
        b'"just a string"',
        b"null",
        b"1e999999",
        b'{"email": NaN}',
    ],
    ids=[
        "empty",
        "blank",
        "deep-array",
        "deep-object",
        "not-utf8",
        "string",
        "null",
        "huge-number",
        "nan",
    ],
)
def test_pathological_bodies(raw):
    try:
        instance = parse_body(EmailPassword, raw)
    except DOCUMENTED:
        return
    check_shape(instance, EmailPassword)


class Colour(Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    at: datetime
    colour: Colour


@dataclass(frozen=True)
class Outer:
    text: str
    number: int | float
    items: tuple[Inner, ...]
    mapping: dict[str, Any]
    maybe: datetime | None


aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
inners = st.builds(Inner, at=aware, colour=st.just(Colour.RED))
outers = st.builds(
    Outer,
    text=st.text(),
    number=st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    items=st.lists(inners, max_size=4).map(tuple),
    mapping=st.dictionaries(st.text(max_size=5), json_values | inners, max_size=3),
    maybe=st.none() | aware,
)


@EXAMPLES
@given(value=outers | json_values | st.lists(outers, max_size=3))
def test_to_json_always_gives_plain_json(value):
    shaped = to_json(value)

    assert _plain(shaped)
    assert json.loads(json.dumps(shaped)) == shaped or _has_nan(shaped)


@EXAMPLES
@given(at=aware)
def test_datetimes_are_rfc3339_utc(at):
    text = to_json(at)

    assert text.endswith("Z")
    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == at


@EXAMPLES
@given(value=json_values)
def test_plain_json_values_pass_through_unchanged(value):
    assert to_json(value) == value


def test_other_zones_keep_their_offset():
    at = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert to_json(at) == "2030-01-01T12:00:00+02:00"


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _has_nan(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return isinstance(value, float) and value != value
