"""GET /verify-email and /reset-password: the pages mailed links open, served whether or not
/ui is, with the same strict headers; the browser flows are in tests/e2e/test_link_pages.py."""

from __future__ import annotations

import re

import pytest

from authsvc.settings import Env
from tests.http.test_webauthn_ui import _client

TOKEN = "vt_secret-token-value"


@pytest.mark.parametrize("path", ["/verify-email", "/reset-password"])
@pytest.mark.parametrize(("env", "enabled"), [(Env.DEVELOPMENT, None), (Env.PRODUCTION, False)])
def test_the_pages_mails_link_to_are_always_served(settings, connection, path, env, enabled):
    client = _client(settings, connection, env=env, ui_enabled=enabled)

    response = client.get(path, query_string={"token": TOKEN})

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"  # the token is in the URL
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    assert TOKEN not in html  # the script reads it from the address, nothing echoes it
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="links/client.js">',  # relative: right under a proxy's path too
        '<script src="links/links.js">',
    ]
    assert not re.search(r"\son[a-z]+=", html) and "<style" not in html
    assert "http://" not in html and "https://" not in html
    for asset in ("client.js", "links.js", "style.css"):
        assert client.get(f"/links/{asset}").status_code == 200


def test_the_page_sends_the_token_only_when_asked_and_drops_it_from_the_address(client):
    script = client.get("/links/links.js").get_data(as_text=True)

    assert "history.replaceState" in script
    assert '"/v1/signup/verify"' in script and '"/v1/password/reset"' in script
    assert '"/v1/password/reset/webauthn-options"' in script
    assert "addEventListener" in script
    assert "innerHTML" not in script and "eval(" not in script
    assert "localStorage" not in script and "sessionStorage" not in script


@pytest.mark.parametrize("path", ["/links/app.js", "/links/links.html", "/links/nope.js"])
def test_only_the_link_pages_assets(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"
