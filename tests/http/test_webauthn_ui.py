"""GET /ui/: the enrollment and login page, its assets, CSP and the production switch."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
from flask.testing import FlaskClient

from authsvc.app import create_app
from authsvc.settings import Env, Settings
from tests.conftest import ContractClient


def test_page_is_served_with_a_strict_csp(client):
    response = client.get("/ui/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    html = response.get_data(as_text=True)
    # No inline script or style, nothing from another origin.
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/ui/client.js">',
        '<script src="/ui/app.js">',
    ]
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert "http://" not in html and "https://" not in html


@pytest.mark.parametrize(
    ("asset", "mimetype"),
    [("app.js", "text/javascript"), ("client.js", "text/javascript"), ("style.css", "text/css")],
)
def test_assets(client, asset, mimetype):
    response = client.get(f"/ui/{asset}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert "Content-Security-Policy" in response.headers
    assert b"https://" not in response.data and b"http://" not in response.data


SCRIPTS = ("client.js", "app.js")


def test_the_script_uses_the_json_helpers_and_keeps_a_fallback(client):
    script = "".join(client.get(f"/ui/{name}").get_data(as_text=True) for name in SCRIPTS)
    for needle in (
        "parseCreationOptionsFromJSON",
        "parseRequestOptionsFromJSON",
        "toJSON",
        "/v1/passkeys/login-options",
        "/v1/login/mfa/webauthn-options",
        "/v1/me/mfa/webauthn/registration-options",
        "qr_svg",
    ):
        assert needle in script
    assert "eval(" not in script and "innerHTML" not in script


@pytest.mark.parametrize("page", ["/ui/", "/reset-password"])
def test_a_form_sent_without_its_script_keeps_secrets_out_of_the_url(app, client, page):
    # The script sends every form; a browser that submits one itself (the script not loaded
    # yet, blocked or failing) would put a form without a method, password included, into
    # the query string, and with it into the history and every proxy's access log.
    html = client.get(page).get_data(as_text=True)
    forms = re.findall(r"<form\b[^>]*>", html)

    assert forms
    assert [f for f in forms if 'method="post"' not in f] == []
    sent = FlaskClient(app, app.response_class).post(page, data={"password": "correct horse 42"})
    assert sent.status_code == 405  # not served, and the password stays out of every log


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/app.js.map", "/ui/nope.js"])
def test_only_known_assets(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


def _client(settings: Settings, connection, **changes):
    app = create_app(dataclasses.replace(settings, **changes), bind=connection)
    app.test_client_class = ContractClient
    return app.test_client()


@pytest.mark.parametrize(
    ("env", "enabled", "served"),
    [
        (Env.PRODUCTION, None, False),
        (Env.PRODUCTION, True, True),
        (Env.DEVELOPMENT, None, True),
        (Env.DEVELOPMENT, False, False),
    ],
)
def test_production_needs_an_explicit_opt_in(settings, connection, env, enabled, served):
    client = _client(settings, connection, env=env, ui_enabled=enabled)
    for path in ("/ui/", "/ui/app.js"):
        response = client.get(path)
        assert response.status_code == (200 if served else 404)


@pytest.mark.parametrize(("raw", "value"), [("", None), ("true", True), ("0", False)])
def test_ui_enabled_parses_an_explicit_choice(raw, value):
    assert Settings.from_env({"AUTHSVC_UI_ENABLED": raw}).ui_enabled is value


@pytest.mark.parametrize(
    ("public_url", "origins", "warned"),
    [
        ("http://localhost:8000", ("http://localhost:8000",), False),  # the defaults
        (
            "https://auth.example.com/",
            ("https://app.example.com", "https://auth.example.com"),
            False,
        ),
        ("https://auth.example.com", ("https://app.example.com",), True),
        ("https://auth.example.com:8443/id", ("https://auth.example.com",), True),
    ],
)
def test_pages_on_an_origin_webauthn_refuses_are_named_at_start(
    settings, connection, caplog, public_url, origins, warned
):
    # The mailed /reset-password page asks for a security key when the account has one, on
    # AUTHSVC_PUBLIC_URL: on an origin the ceremonies refuse, pressing it only failed.
    changes = {"public_url": public_url, "webauthn_rp_id": "example.com"}
    if public_url.startswith("http://localhost"):
        changes["webauthn_rp_id"] = "localhost"
    with caplog.at_level(logging.WARNING, logger="authsvc"):
        create_app(
            dataclasses.replace(settings, webauthn_origins=origins, **changes), bind=connection
        )
    said = [r.getMessage() for r in caplog.records if "AUTHSVC_WEBAUTHN_ORIGINS" in r.getMessage()]
    assert len(said) == warned, said
    if warned:
        assert said[0].startswith("AUTHSVC_PUBLIC_URL: its origin ")
        assert "/reset-password" in said[0]


@pytest.mark.parametrize("field", ["mfa-totp", "mfa-recovery", "totp-code"])
def test_a_code_field_cannot_be_sent_empty(client, field):
    # An empty code is no answer: sent, the API refuses it in its own words ("send one of
    # totp_code, recovery_code or webauthn"), which say nothing to a person at the page.
    html = client.get("/ui/").get_data(as_text=True)
    (tag,) = re.findall(rf'<input id="{field}"[^>]*>', html)

    assert re.search(r"\srequired[\s>]", tag), tag
