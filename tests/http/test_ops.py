"""Operations: /healthz, /readyz, /openapi.yaml, /docs (bundled, no CDN), JWKS, headers, 500s."""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import jwt
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, text, update
from sqlalchemy.orm import Session as DbSession

from authsvc.app import create_app
from authsvc.db import utcnow
from authsvc.http.ops import READINESS_WAIT_SECONDS
from authsvc.models import SigningKey
from authsvc.services import signing
from tests.conftest import ROOT, ContractClient


def test_healthz(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_when_ready(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "checks": {
            "database": True,
            "schema": True,
            "signing_key": True,
            "rate_limit_storage": True,
        },
    }


def test_readyz_is_503_while_the_schema_is_behind(settings, tmp_path, caplog):
    empty = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with caplog.at_level(logging.WARNING, logger="authsvc"):
        app = create_app(empty)  # starts although the database has no tables yet
    app.test_client_class = ContractClient

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] is True
    assert body["checks"]["schema"] is False
    assert "authsvc db upgrade" in caplog.text
    app.extensions["authsvc"].dispose()


def test_readyz_is_503_when_the_database_is_unreachable(settings, tmp_path):
    missing = dataclasses.replace(
        settings, database_url=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    )
    app = create_app(missing)
    app.test_client_class = ContractClient

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] is False


@pytest.fixture
def hanging_check(settings, engine, connection, tmp_path) -> Iterator[Flask]:
    """An app whose readiness check waits for as long as the test wants, as it waits for a
    database that stopped answering: its query waits for a lock another connection holds
    (PostgreSQL: the migrations' table; SQLite: a writer in exclusive locking mode, which
    keeps readers out too)."""
    holder: Any
    if engine.dialect.name == "postgresql":
        app = create_app(settings, bind=connection)
        holder = engine.connect()
        holder.execute(text("SET lock_timeout = '10s'"))
        holder.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
    else:
        path = tmp_path / "locked.db"
        app = create_app(dataclasses.replace(settings, database_url=f"sqlite:///{path}"))
        app.extensions["authsvc"].engine.dispose()  # no connection of its own open meanwhile
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("CREATE TABLE held (x)")  # written: the lock keeps readers out
    app.test_client_class = ContractClient
    try:
        yield app
    finally:
        holder.rollback()
        holder.close()
        # The check ends once the lock is free; let it end before the test's connection goes.
        readiness = app.extensions.get("authsvc.readiness")
        if readiness is not None and getattr(readiness, "done", None) is not None:
            readiness.done.wait(30)
        if engine.dialect.name != "postgresql":
            app.extensions["authsvc"].dispose()


def test_readiness_calls_do_not_queue_behind_a_check_that_hangs(hanging_check):
    answers: list[tuple[float, int, str]] = []

    def probe() -> None:
        started = time.monotonic()
        response = hanging_check.test_client().get("/readyz")
        answers.append((time.monotonic() - started, response.status_code, response.json["status"]))

    probes = [threading.Thread(target=probe, daemon=True) for _ in range(6)]
    for thread in probes:
        thread.start()
    for thread in probes:
        thread.join(READINESS_WAIT_SECONDS + 5)

    # Each call waits a bounded time, then says not ready; the check runs once, not per call.
    assert not any(thread.is_alive() for thread in probes), "calls still wait for the check"
    assert [answer[1:] for answer in answers] == [(503, "not_ready")] * 6
    assert max(answer[0] for answer in answers) < READINESS_WAIT_SECONDS + 1
    assert [t.name for t in threading.enumerate()].count("authsvc-readiness") == 1


def test_openapi_yaml_is_the_contract(client):
    response = client.get("/openapi.yaml")

    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.get_data() == (ROOT / "openapi.yaml").read_bytes()
    spec = yaml.safe_load(response.get_data())
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/signup", "/v1/login", "/v1/password/forgot", "/.well-known/jwks.json"):
        assert path in spec["paths"]


def _operations(app: Flask) -> set[tuple[str, str]]:
    """(path, method) of every route the app answers, in openapi.yaml's spelling."""
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        found |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_every_route_is_in_the_contract_and_every_documented_route_is_served(app):
    # Flask's own /static/<filename> was one more: it served nothing and no contract had it.
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    documented = {
        (path, method)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"get", "put", "post", "delete", "patch"}
    }

    assert sorted(_operations(app) - documented) == []
    assert sorted(documented - _operations(app)) == []


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def test_docs_use_only_bundled_assets(client, app):
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    parser = _Assets()
    parser.feed(response.get_data(as_text=True))
    assert any(url.endswith(".js") for url in parser.urls)
    assert any(url.endswith(".css") for url in parser.urls)
    raw = FlaskClient(app, app.response_class)  # file answers: closed here, not by the contract
    for url in (u for u in parser.urls if u != "data:,"):  # data:, the empty favicon
        assert url.startswith("/docs/"), f"{url} is not served locally"
        with raw.get(url) as asset:
            assert asset.status_code == 200, url
            assert asset.get_data()
            policy = asset.headers["Content-Security-Policy"]
            assert policy == response.headers["Content-Security-Policy"]
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert not re.search(
        r"(https?:)?//", response.get_data(as_text=True).replace("<!doctype html>", "")
    )


@pytest.mark.parametrize(
    "filename",
    ["index.html", "swagger-initializer.js", "oauth2-redirect.html", "favicon-32x32.png"],
)
def test_docs_serve_only_the_two_files_they_load(client, filename):
    # The package's demo page renders a spec fetched from another origin on this one.
    response = client.get(f"/docs/static/{filename}")
    assert (response.status_code, response.get_json()["code"]) == (404, "not_found")


def test_the_bundled_swagger_script_is_served(app):
    raw = FlaskClient(app, app.response_class)

    with raw.get("/docs/static/swagger-ui-bundle.js") as response:
        assert response.status_code == 200
        assert "javascript" in response.mimetype
        assert b"SwaggerUIBundle" in response.get_data()


def test_a_copy_of_the_jwks_is_kept_no_longer_than_a_retired_key_is_trusted(
    app, client, connection, settings
):
    # A rotation for a leaked key: apps that cache the JWKS as told stop trusting the old key
    # when authsvc does, not up to five minutes later.
    keyring = app.extensions["authsvc"].deps.keyring
    window = signing.published_after_retirement(settings.access_token_ttl)
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        old = signing.active_key(session, keyring, now=utcnow()).kid
        signing.rotate(session, keyring, now=utcnow())
        ends_in_40s = utcnow() - window + timedelta(seconds=40)
        session.execute(
            update(SigningKey).where(SigningKey.kid == old).values(retired_at=ends_in_40s)
        )
        session.commit()

    response = client.get("/.well-known/jwks.json")

    assert old in [key["kid"] for key in response.get_json()["keys"]]
    cache_control = response.headers["Cache-Control"]
    assert cache_control.startswith("public, max-age=")
    assert 30 <= int(cache_control.removeprefix("public, max-age=")) <= 40


def test_jwks_publishes_public_keys_only(api, client):
    response = client.get("/.well-known/jwks.json")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    keys = response.get_json()["keys"]
    assert len(keys) == 2  # the active key and the next one
    for key in keys:
        assert key["kty"] == "OKP"
        assert key["crv"] == "Ed25519"
        assert key["alg"] == "EdDSA"
        assert key["use"] == "sig"
        assert key["kid"]
        assert "d" not in key  # no private part
    api.register()
    token = api.tokens()["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == keys[0]["kid"]  # the signing key first


def test_every_response_carries_the_security_headers(client):
    response = client.get("/healthz", headers={"X-Request-Id": "trace-123"})

    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-Id"] == "trace-123"
    generated = client.get("/healthz").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)


def test_an_unexpected_error_is_a_problem_without_details(app, caplog):
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail: password=hunter2")

    raw = FlaskClient(app, app.response_class)
    with caplog.at_level(logging.ERROR):
        response = raw.get("/boom", headers={"X-Request-Id": "req-42"})

    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "internal_error"
    assert body["request_id"] == "req-42"
    assert "hunter2" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert "RuntimeError" in caplog.text  # logged for the operator instead


def test_readiness_is_checked_at_most_every_two_seconds(client, connection, monkeypatch):
    # Anyone may call /readyz: a flood must not become database work.
    from authsvc.http import ops

    statements: list[str] = []
    event.listen(connection, "before_cursor_execute", lambda *a: statements.append(a[2]))
    clock = [1000.0]
    monkeypatch.setattr(ops.time, "monotonic", lambda: clock[0])

    answers = [client.get("/readyz").status_code for _ in range(50)]
    checked_once = len(statements)
    clock[0] += ops.READINESS_TTL_SECONDS
    client.get("/readyz")

    assert answers == [200] * 50
    assert checked_once >= 1
    assert len(statements) == 2 * checked_once  # checked again only once the answer aged


def test_the_docs_assets_answer_conditional_and_range_requests_as_the_contract_says(client):
    # Browsers revalidate a cached copy and may resume a download: 304, 206 and 416 are the
    # file server's answers to those, each in openapi.yaml.
    # (buffered: read to the end and closed, as a server does with a file's response)
    path = "/docs/static/swagger-ui.css"
    with client.get(path, buffered=True) as first:
        assert first.status_code == 200
        etag, whole = first.headers["ETag"], first.get_data()

    with client.get(path, headers={"If-None-Match": etag}, buffered=True) as cached:
        assert (cached.status_code, cached.get_data()) == (304, b"")

    with client.get(path, headers={"Range": "bytes=0-9"}, buffered=True) as part:
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 0-9/{len(whole)}"
        assert part.get_data() == whole[:10]

    with client.get(path, headers={"Range": f"bytes={len(whole)}-"}, buffered=True) as beyond:
        assert beyond.status_code == 416
        assert beyond.headers["Content-Range"] == f"bytes */{len(whole)}"
        assert beyond.get_json()["code"] == "range_not_satisfiable"
