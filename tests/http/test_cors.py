"""AUTHSVC_CORS_ORIGINS: browsers may call /v1 from the listed origins only, never the admin
API, without credentials, and can read Retry-After and X-Request-Id."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from authsvc.settings import ConfigError, Settings
from tests.http.test_webauthn_ui import _client

APP = "https://app.example.com"


@pytest.fixture
def cors(settings, connection):
    return _client(settings, connection, cors_origins=(APP,))


def test_a_listed_origin_may_call_v1_and_read_the_retry_headers(cors):
    response = cors.post(
        "/v1/password/forgot", json={"email": "ada@example.com"}, headers={"Origin": APP}
    )

    assert response.status_code == 202
    assert response.headers["Access-Control-Allow-Origin"] == APP
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"retry-after", "x-request-id"} <= exposed
    assert "Access-Control-Allow-Credentials" not in response.headers


def preflight(cors: FlaskClient, path: str) -> Any:
    """A browser's preflight of a GET with a bearer token (not an API call: no contract)."""
    raw = FlaskClient(cors.application, cors.application.response_class)
    return raw.options(
        path,
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )


def test_a_preflight_allows_the_bearer_header(cors):
    response = preflight(cors, "/v1/me")

    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


def test_a_query_parameter_a_route_does_not_take_is_refused_after_the_preflight(cors):
    # The preflight carries the query of the request it asks about: it is answered as ever,
    # and the request's own 400 is readable by the page.
    asked = preflight(cors, "/v1/me?surprise=1")
    response = cors.get("/v1/me?surprise=1", headers={"Origin": APP})

    assert asked.status_code == 200
    assert asked.headers["Access-Control-Allow-Origin"] == APP
    assert response.status_code == 400
    assert response.get_json()["field"] == "surprise"
    assert response.headers["Access-Control-Allow-Origin"] == APP


@pytest.mark.parametrize(
    ("origin", "path"),
    [("https://evil.example", "/v1/password/forgot"), (APP, "/admin/v1/users")],
)
def test_other_origins_and_the_admin_api_get_no_cors_headers(cors, origin, path):
    response = cors.post(path, json={"email": "ada@example.com"}, headers={"Origin": origin})

    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_request_without_an_origin_gets_no_cors_headers(cors):
    """A same-origin or non-browser request names no origin: it is told nothing of the
    listed ones (one Access-Control-Allow-Origin per listed origin is no valid answer)."""
    response = cors.post("/v1/password/forgot", json={"email": "ada@example.com"})

    assert response.status_code == 202
    assert not [name for name, _ in response.headers if name.startswith("Access-Control-")]


@pytest.mark.parametrize(
    "origins",
    ["*", "https://*.example.com", "https://app.example.com/path", "http://[::1]:8000"],
)
def test_wildcards_and_patterns_are_refused(origins):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"AUTHSVC_CORS_ORIGINS": origins})
    assert refused.value.problems[0].startswith("AUTHSVC_CORS_ORIGINS")
