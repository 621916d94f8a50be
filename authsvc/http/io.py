"""Request parsing into dataclasses (shape only) and JSON shaping of results."""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from enum import Enum
from functools import wraps
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from flask import Response, current_app, g, json, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session as DbSession
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from authsvc.errors import AuthsvcError, InvalidRequest, MalformedJson, UnsupportedMediaType
from authsvc.ratelimit import client_address
from authsvc.services.context import Client, Deps

T = TypeVar("T")
V = TypeVar("V", bound=Callable[..., Any])
MAX_STRING = 4096
DIGITS = re.compile(r"[0-9]+")  # ASCII digits only (str.isdigit also takes "²" and "٣")


def field(*, max_length: int = MAX_STRING, **kwargs: Any) -> Any:
    """A dataclass field with a maximum string length."""
    return dataclasses.field(metadata={"max_length": max_length}, **kwargs)


def request_body() -> bytes:
    """The request's body, or 413 when it is longer than ``request.max_content_length``.

    A body sent without Content-Length (chunked) is read here up to one byte past the cap:
    werkzeug would stop reading at the cap without a word, and parse what it had (an upload
    cut there can end in another account's address). Chunks the server cannot decode (a
    size that is no number, a chunk without its terminator, a body cut short) are a 400
    ``bad_request``, as a request the server cannot parse at all is."""
    limit = request.max_content_length
    if (
        request.content_length is not None
        or limit is None
        or not request.environ.get("wsgi.input_terminated")
    ):
        return request.get_data(cache=True)
    stream = request.environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = stream.read(min(1 << 16, limit + 1 - size))
        # The server decodes the chunks as they are read, and each server raises its own
        # error for framing it cannot decode (werkzeug's an OSError, gunicorn's a
        # ParseException of its own, or NoMoreData when the client stops sending).
        except Exception:
            raise BadRequest("The chunked body could not be decoded") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def _unique_names(members: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are all different. JSON leaves the meaning of a repeated name
    open (RFC 8259 section 4; I-JSON, RFC 7493, forbids it): a proxy or an app in front of
    authsvc may check the first value where the parser would keep the last."""
    data = dict(members)
    if len(data) != len(members):
        raise InvalidRequest("a name appears more than once in one JSON object")
    return data


def _json_body(optional: bool) -> Mapping[str, Any]:
    raw = request_body()
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("a JSON object body is required")
    # application/json only, as openapi.yaml says: Flask's is_json also takes any +json type.
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as application/json")
    try:
        # UTF-8 only (RFC 8259 section 8.1), a byte order mark ignored: json.loads would guess
        # UTF-16 or UTF-32 from the bytes, where a filter in front reads them as UTF-8.
        text = raw.decode("utf-8-sig")
        data = json.loads(text, object_pairs_hook=_unique_names)
    # UnicodeDecodeError is a ValueError; RecursionError: nesting deeper than the parser's stack.
    except (ValueError, RecursionError):
        raise MalformedJson("The body could not be parsed as JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def _is_unicode_text(value: str) -> bool:
    """False for strings with lone surrogates (JSON can escape them; no database stores them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(name: str, value: Any, expected: Any, max_length: int) -> Any:
    origin = get_origin(expected)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(expected) if a is not type(None)]
        if value is None:
            # Optional is not nullable: a field is sent with a value or left out (openapi.yaml
            # has no nullable request field), so "password": null beside a password_hash
            # is refused, not read as absent.
            raise InvalidRequest(f"{name} must not be null", field=name)
        errors = []
        for option in options:
            try:
                return _check(name, value, option, max_length)
            except InvalidRequest as exc:
                errors.append(exc)
        raise errors[0]
    if expected is str:
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string", field=name)
        if len(value) > max_length:
            raise InvalidRequest(f"{name} must be at most {max_length} characters", field=name)
        if "\x00" in value:
            raise InvalidRequest(f"{name} must not contain NUL characters", field=name)
        if not _is_unicode_text(value):
            raise InvalidRequest(f"{name} must not contain unpaired surrogates", field=name)
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"{name} must be a boolean", field=name)
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{name} must be an integer", field=name)
        return value
    if expected is dict or origin is dict:
        if not isinstance(value, dict):
            raise InvalidRequest(f"{name} must be an object", field=name)
        return value
    if origin is list:
        (item_type,) = get_args(expected)
        if not isinstance(value, list):
            raise InvalidRequest(f"{name} must be an array", field=name)
        return [_check(f"{name}[]", item, item_type, max_length) for item in value]
    raise TypeError(f"unsupported field type {expected!r}")  # pragma: no cover


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: Any
    max_length: int
    required: bool


@functools.cache
def _fields_of(cls: Hashable) -> tuple[_Field, ...]:
    """The fields of a request dataclass with their resolved types (resolved once per class)."""
    hints = get_type_hints(cls)
    return tuple(
        _Field(
            name=f.name,
            type=hints[f.name],
            max_length=f.metadata.get("max_length", MAX_STRING),
            required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )


def parse(cls: type[T], *, optional: bool = False, known_only: bool = False) -> T:
    """Build ``cls`` from the JSON body, checking presence and types of its fields only. With
    ``known_only``, a member ``cls`` has no field for is refused rather than ignored (as
    ``only_query`` refuses a query parameter): a misspelt flag of an admin action, such as
    ``dryrun``, would otherwise apply the action with the flag's default."""
    data = _json_body(optional)
    fields = _fields_of(cast("Hashable", cls))
    if known_only:
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise InvalidRequest(f"unknown member {unknown[0]!r}", field=unknown[0])
    values: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            if f.required:
                raise InvalidRequest(f"{f.name} is required", field=f.name)
            continue
        values[f.name] = _check(f.name, data[f.name], f.type, f.max_length)
    return cls(**values)


def to_json(value: Any) -> Any:
    """Dataclasses, datetimes (RFC 3339 UTC), tuples and enums to plain JSON values."""
    if value is None or type(value) in (str, int, bool, float):  # most values, checked first
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


def respond(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json.dumps(to_json(body)), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type (Flask's default is text/html)
    response.headers["Cache-Control"] = "no-store"
    return response


def only_query(allowed: frozenset[str], *, repeatable: Mapping[str, int] | None = None) -> None:
    """Refuse a query parameter the endpoint does not take, or one given more often than it
    may be (once, unless ``repeatable`` names it with its most): a misspelt or repeated filter
    answers 400 rather than being ignored or half read."""
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    most = repeatable or {}
    for name in request.args:
        if len(request.args.getlist(name)) > most.get(name, 1):
            raise InvalidRequest(f"{name} is given too often", field=name)


def takes_query(*names: str) -> Callable[[V], V]:
    """Declare the query parameters a /v1 view takes, each once: ``only_declared_query``
    refuses any other before the view runs. A view without it takes none."""

    def declare(view: V) -> V:
        view._takes_query = frozenset(names)  # type: ignore[attr-defined]
        return view

    return declare


def only_declared_query() -> None:
    """Before every /v1 request: refuse a query parameter the route's view does not declare
    (``takes_query``), or one given twice, as ``only_query`` does in each /admin/v1 view; a
    new route takes none until it says so. A CORS preflight (OPTIONS) passes: it carries the
    query of the request it asks about, and refusing it would hide that request's own 400
    from the page. Routes outside /v1 are fetched by others who add parameters of their own
    (a cache-buster on the JWKS, a tracking tag on a mailed link): they ignore them."""
    rule = request.url_rule
    if rule is None or request.method == "OPTIONS" or not rule.rule.startswith("/v1/"):
        return
    view = current_app.view_functions[rule.endpoint]
    only_query(getattr(view, "_takes_query", frozenset()))


def query_limit(*, default: int, maximum: int) -> int:
    """The ``limit`` query parameter of a list, 1 to ``maximum`` in ASCII digits (int() also
    takes "1_0", a sign, spaces around it and other scripts' digits)."""
    raw = request.args.get("limit", str(default))
    if not DIGITS.fullmatch(raw) or len(raw) > 4 or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"limit must be an integer from 1 to {maximum}", field="limit")
    return int(raw)


# --- request-scoped collaborators -------------------------------------------------------


def deps() -> Deps:
    return current_app.extensions["authsvc"].deps


def db() -> DbSession:
    """The request's database session, opened lazily and closed at teardown."""
    if "db" not in g:
        g.db = current_app.extensions["authsvc"].sessionmaker()
    return g.db


def one_statement_db() -> Engine | DbSession:
    """Where a request that is one statement runs (``db.OneStatement``): the autocommit pool
    on PostgreSQL, else the request's session."""
    autocommit: Engine | None = current_app.extensions["authsvc"].autocommit_engine
    return autocommit if autocommit is not None else db()


def client() -> Client:
    return Client(
        ip=client_address(request.remote_addr or ""), user_agent=request.user_agent.string[:256]
    )


def transactional(view: Callable[..., Response]) -> Callable[..., Response]:
    """Run the view in one transaction: commit on success and on domain errors (so audit
    rows and failure counters persist), roll back on anything else, and on domain errors
    that keep no work (``Overloaded``: the client is asked to retry the same request)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        session = db()
        error: AuthsvcError | None = None
        with session.begin():
            try:
                response = view(*args, **kwargs)
            except AuthsvcError as exc:
                if not exc.keeps_work:
                    raise  # out of the block: the transaction rolls back
                error = exc
        if error is not None:
            raise error
        return response

    return wrapper
