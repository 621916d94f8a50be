"""A burst of logins beyond the hashing capacity is shed with 503 `overloaded` + Retry-After,
not queued without end, and the server answers normally again once the burst is over."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e

EMAIL = "burst@example.com"
PASSWORD = "Overload passphrase 77"
BURST = 24


def _post(server: LiveServer, path: str, body: dict[str, object],
          token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_burst_is_shed_with_503_and_the_server_recovers(tmp_path: Path) -> None:
    env = {
        # One Argon2 computation at a time per process, and almost no waiting for a slot.
        "AUTHSVC_MAX_CONCURRENT_HASHES": "1",
        "AUTHSVC_HASH_QUEUE_TIMEOUT": "0.005",
        "AUTHSVC_LIMIT_IP": "100000/minute",
        "AUTHSVC_LIMIT_EMAIL": "100000/minute",
        "AUTHSVC_LIMIT_IP_EMAIL": "100000/minute",
    }
    with LiveServer(tmp_path, env=env, workers=1, threads=8) as server:
        status, _, body = _post(server, "/admin/v1/users",
                                {"email": EMAIL, "password": PASSWORD, "email_verified": True},
                                token=server.admin_key)
        assert status == 201, body

        results: list[tuple[int, dict[str, str], bytes]] = []
        lock = threading.Lock()
        start = threading.Barrier(BURST)

        def login() -> None:
            start.wait()
            answer = _post(server, "/v1/login", {"email": EMAIL, "password": PASSWORD})
            with lock:
                results.append(answer)

        threads = [threading.Thread(target=login) for _ in range(BURST)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == BURST

        statuses = sorted(status for status, _, _ in results)
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses, statuses  # capacity is used, not refused wholesale
        shed = [(headers, body) for status, headers, body in results if status == 503]
        assert shed, f"a burst of {BURST} was not shed: {statuses}"
        for headers, raw in shed:
            assert headers["content-type"] == "application/problem+json"
            assert int(headers["retry-after"]) >= 1
            problem = json.loads(raw)
            assert problem["code"] == "overloaded"
            assert problem["status"] == 503

        # The burst is over: sequential logins succeed again.
        for _ in range(3):
            status, _, raw = _post(server, "/v1/login", {"email": EMAIL, "password": PASSWORD})
            assert status == 200, raw
            assert json.loads(raw)["status"] == "authenticated"
