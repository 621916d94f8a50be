"""Shared fixtures: settings, a migrated database per test session, one rolled-back
transaction per test, the app and an API helper whose responses are checked against
openapi.yaml.

AUTHSVC_TEST_DATABASE_URL selects the database (a temporary SQLite file by default);
AUTHSVC_TEST_REDIS_URL selects Redis rate-limit storage (memory by default).
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import EnvironBuilder as FlaskEnvironBuilder
from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session as DbSession
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from authsvc.app import Runtime, create_app
from authsvc.crypto.keyring import generate_key_spec
from authsvc.db import make_engine, utcnow
from authsvc.schema import upgrade
from authsvc.services import admin
from authsvc.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def start_command(
    env: Mapping[str, str | None], *args: str, stdout: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """`authsvc ARGS` in a process of its own (to be interrupted or stopped), with the
    AUTHSVC_* settings of ``env`` and no others, running this checkout's code; stderr (and
    stdout if asked) piped, as text, unbuffered."""
    started = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    started |= {k: v for k, v in env.items() if v is not None}
    started["PYTHONPATH"] = str(ROOT)
    command = "from authsvc.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-u", "-c", command, *args],
        env=started,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_when(
    process: subprocess.Popen[str], ready: Callable[[], bool], signum: int, *, within: float
) -> str:
    """Send ``signum`` to ``process`` once ``ready()`` holds (a failed test if the process
    ends, or ``within`` seconds pass, first); its stderr once it has ended.

    The process runs at the lowest priority meanwhile: on a loaded machine this process could
    otherwise get no turn to see ``ready()`` before the other had finished its work, leaving
    nothing to interrupt (seen once, for a key rotation of 12 batches)."""
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, 19)
        deadline = time.monotonic() + within
        while not ready():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.005)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    return stderr


FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


def _database_url(tmp_root: Path) -> str:
    url = os.environ.get("AUTHSVC_TEST_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{tmp_root / 'test.db'}"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _database_url(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """One connection and an outer transaction per test, rolled back at the end."""
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


@pytest.fixture(scope="session")
def key_specs() -> tuple[str, ...]:
    return (generate_key_spec("test1"),)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, key_specs: tuple[str, ...]) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        database_url=database_url,
        redis_url=os.environ.get("AUTHSVC_TEST_REDIS_URL") or None,
        mail_url=f"file://{tmp_path / 'mail'}",
        encryption_keys=key_specs,
        public_url="http://authsvc.test",
        **FAST_ARGON2,  # type: ignore[arg-type]
    )


@pytest.fixture
def app(settings: Settings, connection: Connection) -> Iterator[Flask]:
    app = create_app(settings, bind=connection)
    app.test_client_class = ContractClient
    runtime(app).deps.limiter.reset()
    yield app
    runtime(app).deps.limiter.reset()


@pytest.fixture
def admin_headers(connection: Connection) -> dict[str, str]:
    """The Authorization header of a new admin key."""
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        _, secret = admin.create_key(session, name="tests", now=utcnow())
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


def runtime(app: Flask) -> Runtime:
    return app.extensions["authsvc"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def openapi_spec() -> OpenAPI:
    # openapi-core reads only application/json as JSON; problem documents are JSON too.
    config = Config(
        extra_media_type_deserializers={
            "application/problem+json": lambda value, **_params: json.loads(value),
            "application/yaml": lambda value, **_params: value.decode("utf-8"),
            "text/plain": lambda value, **_params: value.decode("utf-8"),
            "text/csv": lambda value, **_params: value.decode("utf-8"),
        }
    )
    return OpenAPI.from_file_path(str(ROOT / "openapi.yaml"), config=config)


class ContractClient(FlaskClient):
    """A test client that checks every response against openapi.yaml, and every request the
    service accepted (2xx) against the request schema: the contract may not refuse what the
    service takes."""

    spec: OpenAPI | None = None

    def open(self, *args: Any, **kwargs: Any) -> Any:
        sent = self._copy_of_request(args, kwargs)
        response = super().open(*args, **kwargs)
        if ContractClient.spec is not None and response.request.path not in _UNDOCUMENTED:
            if sent is not None and 200 <= response.status_code < 300:
                ContractClient.spec.validate_request(WerkzeugOpenAPIRequest(sent))
            original = response.request
            bare = Request(
                EnvironBuilder(
                    method=original.method,
                    path=original.path,
                    query_string=original.query_string.decode("latin-1"),
                    headers=dict(original.headers),
                ).get_environ()
            )
            ContractClient.spec.validate_response(
                WerkzeugOpenAPIRequest(bare), WerkzeugOpenAPIResponse(response)
            )
            if response.mimetype == "application/problem+json":
                code = json.loads(response.get_data())["code"]
                documented = documented_codes(self.application, original, response.status_code)
                assert code in documented, (
                    f"{original.method} {original.path} answered {response.status_code} {code!r}, "
                    "which openapi.yaml does not name for that route"
                )
        return response

    def _copy_of_request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Request | None:
        """The request that ``open`` will send, built separately (bodies given as bytes, text
        or JSON only: a stream can be read once)."""
        if ContractClient.spec is None or not args or not isinstance(args[0], str):
            return None
        if not isinstance(kwargs.get("data", b""), (bytes, str)):
            return None
        options = {k: v for k, v in kwargs.items() if k not in ("buffered", "follow_redirects")}
        builder = FlaskEnvironBuilder(self.application, *args, **options)
        try:
            return builder.get_request()
        finally:
            builder.close()


_UNDOCUMENTED = frozenset()


@functools.cache
def _openapi_document() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _texts(node: Any, document: dict[str, Any]) -> Iterator[str]:
    """Every string under ``node``, with each $ref followed."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                target: Any = document
                for part in value.removeprefix("#/").split("/"):
                    target = target[part]
                yield from _texts(target, document)
            else:
                yield from _texts(value, document)
    elif isinstance(node, list):
        for value in node:
            yield from _texts(value, document)
    elif isinstance(node, str):
        yield node


def _contract_path(document: dict[str, Any], path: str, method: str) -> str:
    """The path of openapi.yaml that declares ``method`` and matches ``path``, a parameter
    standing for any one segment (PATCH /v1/me/mfa/totp: /v1/me/mfa/{factor_id})."""
    for template, operations in document["paths"].items():
        pieces = re.split(r"\{[^/}]+\}", template)
        if method in operations and re.fullmatch("[^/]+".join(map(re.escape, pieces)), path):
            return str(template)
    raise AssertionError(f"openapi.yaml has no {method.upper()} for {path}")


def documented_codes(app: Flask, request: Request, status: int) -> set[str]:
    """The problem codes openapi.yaml names, as `code`, for one route and status: in the
    operation's own text and request body, the response it declares for the status, and the
    security schemes it takes."""
    document = _openapi_document()
    try:
        rule, _ = app.url_map.bind("authsvc").match(request.path, request.method, return_rule=True)
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
    except MethodNotAllowed:  # the router's 405: the contract may read the path as another's
        path = _contract_path(document, request.path, request.method.lower())
    operation = document["paths"][path][request.method.lower()]
    schemes = document["components"]["securitySchemes"]
    parts = [
        operation.get("summary", ""),
        operation.get("description", ""),
        operation.get("requestBody", {}),
        operation["responses"].get(str(status), {}),
        [schemes[name] for option in operation.get("security", []) for name in option],
    ]
    text = "\n".join(_texts(parts, document))
    return set(re.findall(r"`([a-z_]+)`", text))


@pytest.fixture(autouse=True)
def _contract(openapi_spec: OpenAPI) -> Iterator[None]:
    ContractClient.spec = openapi_spec
    yield
    ContractClient.spec = None


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Mailbox:
    """The file:// mail backend's directory, read back as parsed messages."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        if not self.directory.exists():
            return []
        found = []
        for path in sorted(self.directory.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            if to is None or message["To"] == to:
                found.append(message)
        return found

    def last(self, to: str) -> EmailMessage:
        messages = self.messages(to)
        assert messages, f"no mail for {to}"
        return messages[-1]

    def token(self, to: str, path: str) -> str:
        body = self.last(to).get_content()
        match = re.search(rf"/{path}\?token=([A-Za-z0-9_\-%.~]+)", body)
        assert match, f"no {path} link in the last mail to {to}"
        return match.group(1)


class Api:
    """Drives the HTTP API like a client app would (flaskr's AuthActions)."""

    def __init__(self, app: Flask, client: FlaskClient, mailbox: Mailbox) -> None:
        self.app = app
        self.client = client
        self.mailbox = mailbox

    def drain(self) -> int:
        return runtime(self.app).worker.drain()

    def signup(self, email_: str, password: str) -> Any:
        response = self.client.post("/v1/signup", json={"email": email_, "password": password})
        self.drain()
        return response

    def register(self, email_: str = "ada@example.com", password: str = "correct horse 42") -> str:
        """Sign up and verify; return the user's email."""
        assert self.signup(email_, password).status_code == 202
        token = self.mailbox.token(email_, "verify-email")
        assert self.client.post("/v1/signup/verify", json={"token": token}).status_code == 200
        return email_

    def login(self, email_: str, password: str) -> Any:
        return self.client.post("/v1/login", json={"email": email_, "password": password})

    def tokens(
        self, email_: str = "ada@example.com", password: str = "correct horse 42"
    ) -> dict[str, Any]:
        response = self.login(email_, password)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["status"] == "authenticated", body
        return body  # type: ignore[no-any-return]

    @staticmethod
    def bearer(access_token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {access_token}"}


@pytest.fixture
def mailbox(settings: Settings) -> Mailbox:
    return Mailbox(Path(settings.mail_url.removeprefix("file://")))


@pytest.fixture
def api(app: Flask, client: FlaskClient, mailbox: Mailbox) -> Api:
    return Api(app, client, mailbox)


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


def answered_within(seconds: float, call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or a failed test when it has not returned after ``seconds`` (the
    call goes on in a daemon thread until whatever holds it lets go)."""
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(call()), daemon=True)
    waiter.start()
    waiter.join(seconds)
    assert not waiter.is_alive(), f"no answer within {seconds} s"
    return result[0]


ONE_SECOND = timedelta(seconds=1)


@contextmanager
def every_slot_taken_after_the_check(hasher: Any, monkeypatch: Any) -> Iterator[None]:
    """Within: once a password has been checked, a flood of logins takes every hashing slot
    (and waiting for one gives up at once). Asserts that the check ran."""
    hasher._acquire_timeout = 0.01
    verify, taken = hasher.verify, []

    def verify_then_every_slot_is_taken(expected_hash, password, **options):
        result = verify(expected_hash, password, **options)
        while hasher._slots.acquire(blocking=False):
            taken.append(1)
        return result

    monkeypatch.setattr(hasher, "verify", verify_then_every_slot_is_taken)
    try:
        yield
    finally:
        for _ in taken:
            hasher._slots.release()
        monkeypatch.undo()
    assert taken


def statements_during(connection: Connection, call: Callable[[], Any]) -> list[str]:
    """The SQL statements ``call`` runs on ``connection`` (savepoints of the per-test
    transaction left out)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            seen.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(connection, "before_cursor_execute", record)
    return seen
