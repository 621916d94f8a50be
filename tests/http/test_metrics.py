"""GET /metrics: Prometheus text format, request/login/limit counters, scrape-time gauges."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from authsvc.http.ops import GAUGES_TIMEOUT
from tests.conftest import answered_within, replace_settings

TOKEN = "prometheus-scrape-token-0123456789abcdef"


@pytest.fixture
def settings(settings):
    return replace_settings(settings, metrics_token=TOKEN)


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "version=0.0.4" in response.headers["Content-Type"]
    values = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(values, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_logins_and_hashing_are_counted(api, client):
    api.register("ada@example.com")
    api.login("ada@example.com", "wrong password 1")
    api.login("ghost@example.com", "wrong password 1")
    api.tokens()
    values = scrape(client)
    assert (
        value(values, "authsvc_http_requests_total", route="/v1/login", method="POST", status="401")
        == 2
    )
    assert (
        value(values, "authsvc_http_requests_total", route="/v1/login", method="POST", status="200")
        == 1
    )
    assert (
        value(
            values, "authsvc_http_request_duration_seconds_count", route="/v1/login", method="POST"
        )
        == 3
    )
    assert value(values, "authsvc_logins_total", outcome="wrong_password") == 1
    assert value(values, "authsvc_logins_total", outcome="unknown_email") == 1
    assert value(values, "authsvc_logins_total", outcome="authenticated") == 1
    assert value(values, "authsvc_audit_events_total", type="login.failure") == 2
    assert value(values, "authsvc_password_hash_seconds_count", operation="verify") == 3
    assert value(values, "authsvc_password_hash_seconds_count", operation="hash") >= 1


def test_unmatched_routes_share_one_label(app, client):
    raw = FlaskClient(app)  # these paths are not in the contract
    for path in ("/nope", "/nope/2", "/x" * 10):
        assert raw.get(path).status_code == 404
    values = scrape(client)
    assert (
        value(values, "authsvc_http_requests_total", route="unmatched", method="GET", status="404")
        == 3
    )
    assert not any("/nope" in str(key) for key in values)


def test_rate_limit_hits_are_counted(app, client):
    for _i in range(12):
        client.post("/v1/password/forgot", json={"email": "same@example.com"})
    values = scrape(client)
    assert value(values, "authsvc_rate_limit_hits_total", policy="ip_email") == 2
    assert (
        value(
            values,
            "authsvc_http_requests_total",
            route="/v1/password/forgot",
            method="POST",
            status="429",
        )
        == 2
    )


def test_outbox_and_campaign_gauges_are_read_at_scrape_time(api, client):
    for i in range(3):
        client.post("/v1/password/forgot", json={"email": f"q{i}@example.com"})
    values = scrape(client)
    assert value(values, "authsvc_outbox_pending") == 3
    assert value(values, "authsvc_outbox_oldest_pending_age_seconds") >= 0
    assert value(values, "authsvc_breach_campaigns", status="running") == 0
    api.drain()
    assert value(scrape(client), "authsvc_outbox_pending") == 0


def test_gauges_the_database_does_not_read_in_time_are_left_out(client, engine, connection, caplog):
    """A table held by another transaction (a migration's ALTER TABLE, a stalled LOCK TABLE):
    the scrape answers within its bound, with the counters and without the database gauges,
    rather than waiting as long as the lock is held."""
    if connection.dialect.name != "postgresql":
        pytest.skip("a bound on statements: PostgreSQL (SQLite's gauges wait for no writer)")
    # Nothing in the test's transaction may touch the table: the lock would wait for it.
    assert client.get("/healthz").status_code == 200
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE outbox_messages IN ACCESS EXCLUSIVE MODE"))
        try:
            started = time.monotonic()
            values = answered_within(3 * GAUGES_TIMEOUT.total_seconds(), lambda: scrape(client))
            elapsed = time.monotonic() - started
        finally:
            holder.rollback()

    assert GAUGES_TIMEOUT.total_seconds() <= elapsed
    assert "authsvc_outbox_pending" not in {name for name, _labels in values}
    assert (
        value(values, "authsvc_http_requests_total", route="/healthz", method="GET", status="200")
        == 1
    )
    assert "metrics: database gauges unavailable (QueryCanceled)" in caplog.text
    # Once the lock is gone, they are back.
    assert ("authsvc_outbox_pending", ()) in scrape(client)


def test_alerts_are_counted(settings, connection):
    from authsvc.app import create_app
    from tests.conftest import ContractClient

    app = create_app(replace_settings(settings, detect_emails_per_ip=3), bind=connection)
    app.test_client_class = ContractClient
    app.extensions["authsvc"].deps.limiter.reset()
    client = app.test_client()
    for i in range(5):
        client.post("/v1/password/forgot", json={"email": f"a{i}@example.com"})
    assert value(scrape(client), "authsvc_alerts_total", detector="enumeration") == 1
    app.extensions["authsvc"].deps.limiter.reset()


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer "])
def test_only_the_scraper_reads_the_metrics(client, header):
    # Counters by outcome, read before and after one login, would tell whether an email exists.
    headers = {"Authorization": header} if header else {}

    response = client.get("/metrics", headers=headers)

    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="authsvc"')
    assert ("invalid_token" in response.headers["WWW-Authenticate"]) == (
        header == "Bearer wrong-token"
    )
    assert "authsvc_logins_total" not in response.get_data(as_text=True)


def test_metrics_are_off_without_a_token(app, settings, connection):
    from authsvc.app import create_app
    from tests.conftest import ContractClient

    off = create_app(replace_settings(settings, metrics_token=None), bind=connection)
    off.test_client_class = ContractClient

    response = off.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert (response.status_code, response.get_json()["code"]) == (404, "not_found")


def test_multiprocess_mode_adds_up_every_worker(tmp_path):
    """As under gunicorn: the parent switches modes, forked workers count, one scrape sums."""
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from authsvc import metrics
        directory = Path({str(tmp_path / "prom")!r})
        metrics.enable_multiprocess(directory)
        pids = []
        for n in (1, 2):
            pid = os.fork()
            if pid == 0:
                m = metrics.Metrics(multiprocess_dir=directory)
                for _ in range(n):
                    m.observe_request(route="/v1/login", method="POST", status=401, seconds=0.01)
                m.alerts.labels("enumeration").inc()
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
            metrics.worker_exited(pid, directory)
        sys.stdout.write(metrics.Metrics(multiprocess_dir=directory).render().decode())
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    values = {}
    for family in text_string_to_metric_families(result.stdout):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert (
        value(values, "authsvc_http_requests_total", route="/v1/login", method="POST", status="401")
        == 3
    )
    assert value(values, "authsvc_alerts_total", detector="enumeration") == 2
    assert value(values, "authsvc_outbox_pending") == 0  # no scrape-time samples given
