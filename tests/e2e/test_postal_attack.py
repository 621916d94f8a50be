"""The postal-service attack, replayed against a real server: one client tries 5,000 emails.

A handful are registered. The test shows that every answer is the same for registered and
unregistered emails, that the rate limits throttle the run, that an alert fires within the first
few hundred attempts and reaches a real webhook receiver with a valid signature, that the
metrics of every worker add up, and that the audit trail verifies, and stops verifying once a
row is edited in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from tests.e2e.server import AUTHSVC, LiveServer

pytestmark = pytest.mark.e2e

ATTEMPTS = 5000
CLIENTS = 4  # concurrent connections of the one attacking client
REGISTERED = {
    17: "anna.k@post.example",
    133: "ben@post.example",
    240: "chris@post.example",
    1200: "dora@post.example",
    4321: "emil@post.example",
}
SECRET = "postal-webhook-secret-of-32-characters"
VOLATILE_HEADERS = {"date", "x-request-id", "retry-after"}


class Receiver:
    def __init__(self) -> None:
        self.posts: list[tuple[float, dict[str, str], bytes]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.append((time.monotonic(), dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/authsvc"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def email_for(index: int) -> str:
    return REGISTERED.get(index, f"guess{index:05d}@post.example")


def admin_call(server: LiveServer, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        server.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


METRICS_TOKEN = "e2e-metrics-scrape-token-0123456789abcdef"


def test_postal_service_attack(tmp_path):
    receiver = Receiver()
    try:
        env = {
            "AUTHSVC_ALERT_WEBHOOK_URL": receiver.url,
            "AUTHSVC_ALERT_WEBHOOK_SECRET": SECRET,
            "AUTHSVC_METRICS_TOKEN": METRICS_TOKEN,
            # Test speed only: no fsync per commit (the attack writes ~5,000 audit rows).
            "PGOPTIONS": "-c synchronous_commit=off",
        }
        with LiveServer(tmp_path, env=env) as server:
            run_attack(server, receiver)
    finally:
        receiver.close()


def run_attack(server: LiveServer, receiver: Receiver) -> None:
    for email in REGISTERED.values():
        admin_call(
            server,
            "POST",
            "/admin/v1/users",
            {"email": email, "password": "a long registered password"},
        )

    results: list[tuple[int, bytes, tuple, int | None] | None] = [None] * ATTEMPTS
    done = [0]
    first_alert_at: list[int] = []
    lock = threading.Lock()
    indexes = iter(range(ATTEMPTS))

    def client() -> None:
        """One of a few connections of the same client (one IP), like a harvesting script."""
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while True:
            with lock:
                index = next(indexes, None)
            if index is None:
                break
            results[index] = attempt(connection, index)
            with lock:
                done[0] += 1
                if not first_alert_at and receiver.posts:
                    first_alert_at.append(done[0])
        connection.close()

    def attempt(connection: http.client.HTTPConnection, index: int):
        body = json.dumps({"email": email_for(index)})
        for _ in range(3):  # reconnect if the server closed an idle keep-alive connection
            try:
                connection.request(
                    "POST",
                    "/v1/password/forgot",
                    body=body,
                    headers={
                        "Content-Type": "application/json",
                        "User-Agent": "postal-harvester/1.0",
                    },
                )
                response = connection.getresponse()
                payload = response.read()
            except (http.client.HTTPException, ConnectionError):
                connection.close()
                continue
            headers = tuple(
                sorted(
                    (k.lower(), v)
                    for k, v in response.getheaders()
                    if k.lower() not in VOLATILE_HEADERS
                )
            )
            retry = response.getheader("Retry-After")
            return response.status, payload, headers, int(retry) if retry else None
        raise AssertionError(f"attempt {index} failed three times")

    started = time.monotonic()
    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    elapsed = time.monotonic() - started
    assert all(result is not None for result in results)
    shapes: dict[tuple, list[int]] = {}
    for index, (status, payload, headers, _) in enumerate(results):  # type: ignore[misc]
        shapes.setdefault((status, payload, headers), []).append(index)
    statuses = [result[0] for result in results if result]
    retry_after = [result[3] for result in results if result and result[0] == 429]

    # 1. Every answer is one of two shapes, the same for registered and unregistered emails.
    assert {status for status, _, _ in shapes} == {202, 429}
    assert len(shapes) == 2, [(s, b) for s, b, _ in shapes]
    accepted = next(indexes for (status, _, _), indexes in shapes.items() if status == 202)
    assert {17, 133, 240} <= set(accepted)  # registered, answered like everyone else
    throttled = next(indexes for (status, _, _), indexes in shapes.items() if status == 429)
    assert 1200 in throttled  # throttled like everyone else

    # 2. The rate limits slow the harvest: at most 300 answers per minute, then 429s.
    assert statuses.count(202) <= 300 * (1 + int(elapsed // 60))
    assert statuses.count(429) >= ATTEMPTS - 300 * (1 + int(elapsed // 60))
    assert min(retry_after) >= 1
    assert elapsed < 150, f"the attack replay took {elapsed:.0f} s"

    # 3. An alert fired within the first few hundred attempts and reached the receiver.
    deadline = time.monotonic() + 10
    while len(receiver.posts) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first_alert_at and first_alert_at[0] < 400, first_alert_at
    documents = []
    for _, headers, body in receiver.posts:
        timestamp = headers["X-Authsvc-Timestamp"]
        expected = (
            "sha256="
            + hmac.new(
                SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        assert hmac.compare_digest(headers["X-Authsvc-Signature"], expected)
        documents.append(json.loads(body))
    assert sorted((d["detector"], d["scope"], d["subject"]) for d in documents) == [
        ("enumeration", "ip", "127.0.0.1"),
        ("enumeration", "network", "127.0.0.0/24"),
    ]
    assert not any("post.example" in json.dumps(d) for d in documents)

    # The trail shows the alert among the first few hundred attempts, and no email in clear.
    trail = admin_call(server, "GET", "/admin/v1/audit-events?type=alert.raised")["events"]
    ip_alert = next(e for e in trail if e["details"]["scope"] == "ip")
    attempts_before = admin_call(
        server,
        "GET",
        f"/admin/v1/audit-events?type=password.forgot&type=ratelimit.hit"
        f"&limit=500&cursor={ip_alert['id']}",
    )
    assert attempts_before["next_cursor"] is None
    # the threshold is 50 distinct emails; concurrent requests may be chained after the alert
    assert 50 - CLIENTS <= len(attempts_before["events"]) < 300
    assert all(
        e["email_hash"] and "post.example" not in json.dumps(e) for e in attempts_before["events"]
    )

    # 4. The metrics of both workers add up.
    scrape = urllib.request.Request(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(scrape, timeout=10) as response:
        metrics = response.read().decode()
    assert 'authsvc_alerts_total{detector="enumeration"} 2.0' in metrics
    forgot_429 = next(
        line
        for line in metrics.splitlines()
        if line.startswith(
            'authsvc_http_requests_total{method="POST",route="/v1/password/forgot",status="429"}'
        )
    )
    assert float(forgot_429.split()[-1]) == statuses.count(429)

    # 5. The audit trail verifies; an edited row is named.
    assert "audit trail intact" in server.cli("audit", "verify")
    with psycopg.connect(server.database_url(), autocommit=True) as conn:
        conn.execute(
            "UPDATE audit_events SET outcome = 'edited' WHERE id = %s", (int(ip_alert["id"]),)
        )
    check = subprocess.run(
        [str(AUTHSVC), "audit", "verify"],
        env=server.env,
        capture_output=True,
        text=True,
        cwd=server.workdir,
        timeout=120,
        check=False,
    )
    assert check.returncode == 1
    assert f"broken at event {ip_alert['id']}" in check.stderr
